//! The live mesh for real: pinned glommio shards on two cores, shared-memory rings between
//! them, bots crossing server and core borders for a few seconds; then the audit of every entity.

use std::time::Duration;

use shardmesh::runtime::mesh::{run, MeshConfig};

/// The tests here share this machine's cores with one another. One whose assertion reads the
/// cores' measured work (a start that only a busy mesh makes) takes this for writing and runs
/// alone; every other takes it for reading, so they still run side by side. With every test
/// pinning its shards to the same cores, a busy mesh measured among the others runs several
/// times slower than alone, and its balancing periods (a second of game time each) can outlast
/// the run.
static CORES: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn cores_shared() -> std::sync::RwLockReadGuard<'static, ()> {
    CORES.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn cores_alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    CORES.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn two_cores_for_a_few_seconds_lose_and_duplicate_nothing() {
    let _cores = cores_shared();
    let cfg = MeshConfig {
        warmup: Duration::from_millis(500),
        seed: 11,
        bot_activity: 0.5,
        ..MeshConfig::bots(2, 600, Duration::from_secs(3))
    };
    let summary = run(cfg).expect("the mesh starts");
    assert_eq!(summary.audit_error, None);
    assert_eq!(summary.lost_entities, 0);
    assert_eq!(summary.duplicate_entities, 0);
    assert_eq!(summary.items_end, summary.items_start, "the same items as at the start");
    assert!(summary.handoffs > 50, "bots crossed server borders: {} handoffs", summary.handoffs);
    assert!(summary.transfers > 50, "and core borders: {} transfers between slices", summary.transfers);
    // A liveness check, not a timing one: a loaded machine may drop ticks, never all of them.
    assert!(summary.ticks >= 10, "{} ticks counted in 2.5 s at 30 Hz", summary.ticks);
    assert_eq!(summary.ring_errors, 0);
    // Each core's profile names every stage, and its servers' stage did the simulating.
    let stages = shardmesh::runtime::shard::STAGES;
    let servers = stages.iter().position(|s| *s == "servers").expect("a servers stage");
    assert_eq!(summary.stage_ms_per_core.len(), 2);
    for profile in &summary.stage_ms_per_core {
        assert_eq!(profile.len(), stages.len(), "{:?}", summary.stage_ms_per_core);
        assert!(profile[servers] > 0.0, "300 players a core took no time: {profile:?}");
    }
    // Ghosts a tick are counted over the ticks after the warm-up, as `ticks` is: no more than
    // the whole run's ghosts spread over those ticks, and some (bots cross borders).
    let warm = summary.ghosts_to_servers_per_tick * summary.ticks as f64;
    assert!(warm > 0.0, "ghosts were given to servers after the warm-up: {}", summary.ghosts_to_servers);
    assert!(
        warm <= summary.ghosts_to_servers as f64 + 0.5,
        "{warm} ghosts after the warm-up, {} in the whole run",
        summary.ghosts_to_servers
    );
    assert!(summary.ghosts_to_cores_per_tick * summary.ticks as f64 <= summary.ghosts_to_cores as f64 + 0.5);
}

#[test]
fn a_server_whose_code_panics_is_crashed_replaced_and_loses_nothing_committed() {
    let _cores = cores_shared();
    let cfg = MeshConfig {
        warmup: Duration::from_millis(500),
        seed: 12,
        bot_activity: 0.5,
        inject_panic: Some("server@40@1".parse().unwrap()),
        ..MeshConfig::bots(2, 600, Duration::from_secs(3))
    };
    let summary = run(cfg).expect("a server's panic does not stop the mesh");
    assert_eq!(summary.server_panics, 1);
    // Its slice took back what it held, at the state committed, and handed it on: every entity
    // is held once at the end, as committed.
    assert_eq!(summary.audit_error, None);
    assert_eq!(summary.lost_entities, 0);
    assert_eq!(summary.duplicate_entities, 0);
    assert_eq!(summary.items_end, summary.items_start);
    assert!(summary.ticks >= 10, "the world went on ticking: {} ticks", summary.ticks);
}

/// Crash drills every quarter second: each crashes a random server halfway through a tick; a
/// fresh incarnation takes over what it held from the committed state, and the audit finds
/// every entity held once, as committed. The failovers are measured, and each ends.
#[test]
fn servers_crashed_mid_tick_again_and_again_are_replaced_and_lose_nothing() {
    let _cores = cores_shared();
    let cfg = MeshConfig {
        warmup: Duration::from_millis(500),
        seed: 13,
        bot_activity: 0.5,
        chaos_crash_every: Some(Duration::from_millis(250)),
        ..MeshConfig::bots(2, 600, Duration::from_secs(3))
    };
    let summary = run(cfg).expect("crashed servers do not stop the mesh");
    assert!(summary.chaos_drills >= 5, "{} drills in 2.5 s", summary.chaos_drills);
    assert!(summary.chaos_drills_carried_out >= 5, "{} drills reached a server", summary.chaos_drills_carried_out);
    assert_eq!(summary.server_crashes, summary.chaos_drills_carried_out as u64, "every drill was one crash");
    assert_eq!(summary.audit_error, None);
    assert_eq!((summary.lost_entities, summary.duplicate_entities), (0, 0));
    assert_eq!(summary.items_end, summary.items_start);
    // Every failover ended, but perhaps one from the last ticks; none took a second of game time
    // (a liveness bound, not a timing one: the figures are the benchmark's).
    let max = summary.failover_ticks_max.expect("failovers were measured");
    assert!(max <= 30, "a failover took {max} ticks");
    assert!(summary.failovers_unfinished.len() <= 1, "unfinished: {:?}", summary.failovers_unfinished);
}

#[test]
fn a_shard_that_panics_ends_the_process_non_zero_naming_its_core_and_the_log_reopens() {
    let _cores = cores_shared();
    use std::process::Command;
    const BIN: &str = env!("CARGO_BIN_EXE_shardmesh");
    let dir = std::env::temp_dir().join(format!("shardmesh-shard-panic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = Command::new(BIN)
        .args(["serve", "--data"])
        .arg(&dir)
        .args(["--bots", "300", "--cores", "2", "--duration", "60", "--inject-panic", "shard@45@1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut stderr = String::new();
    let mut panicked_at = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap())) {
        let line = line.unwrap();
        if panicked_at.is_none() && line.contains("the shard panicked") {
            panicked_at = Some(std::time::Instant::now());
        }
        stderr += &line;
        stderr.push('\n');
    }
    let status = child.wait().unwrap();
    let panicked_at = panicked_at.unwrap_or_else(|| panic!("the panic was never reported: {stderr}"));
    assert!(!status.success(), "a shard's panic must end the process non-zero: {stderr}");
    // The other slices commit and sync, and the process is gone, within a second.
    assert!(panicked_at.elapsed() < Duration::from_secs(1), "exited {:?} after the panic", panicked_at.elapsed());
    assert!(stderr.contains("the shard for core 1 panicked"), "{stderr}");
    assert!(stderr.contains("injected into core 1's shard"), "{stderr}");
    // What the other slices committed is there for a supervisor's restart.
    let verify = Command::new(BIN).args(["log", "verify"]).arg(&dir).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    let again = Command::new(BIN)
        .args(["serve", "--data"])
        .arg(&dir)
        .args(["--cores", "2", "--duration", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&again.stdout).to_string() + &String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{text}");
    assert!(text.contains("audit: every entity accounted for"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// More load than the servers it starts with can carry: the controller starts servers (up to
/// `servers_max`), which take regions and entities; nothing is lost or held twice. The cores'
/// measured work is what says so: at 500 Hz, 3,000 players keep every core busier than the start
/// mark, about 2.5 times over on the machine this was written on (the world runs slower than real
/// time, and says so; a balancing period is a second of game time).
#[test]
fn a_loaded_mesh_starts_servers_and_loses_nothing() {
    let _cores = cores_alone();
    let cfg = MeshConfig {
        warmup: Duration::from_millis(500),
        seed: 14,
        servers_per_core: 1,
        servers_max: Some(4),
        tick: Duration::from_millis(2),
        ..MeshConfig::bots(2, 3_000, Duration::from_secs(16))
    };
    let summary = run(cfg).expect("the mesh starts");
    let seconds: Vec<String> = summary
        .timeline
        .iter()
        .map(|s| format!("{:.0}s work {:?} dilation {:?} servers {}", s.t_s, s.work, s.time_dilation, s.servers))
        .collect();
    assert!(
        summary.servers_started >= 1,
        "{} entities on 2 busy servers start more; {} ticks: {}",
        summary.entities_start,
        summary.ticks,
        seconds.join("; ")
    );
    assert!(summary.time_dilation_min.is_some_and(|d| d < 1.0), "the world slowed: {:?}", summary.time_dilation_min);
    assert!(summary.servers_started <= 2, "never past servers_max: {} started", summary.servers_started);
    assert_eq!(summary.servers_max, 4);
    assert_eq!(summary.audit_error, None);
    assert_eq!((summary.lost_entities, summary.duplicate_entities), (0, 0));
}

/// A crowd that leaves after an event: players rush the tavern, and when the rush ends
/// three quarters of them log out. Their players are parked by the replication layer with what
/// they carry (held by no server, costing nothing), the rest play on, and the audit finds every
/// entity where it belongs.
#[test]
fn a_crowd_that_logs_out_after_the_rush_is_parked_and_the_rest_play_on() {
    let _cores = cores_shared();
    let cfg = MeshConfig {
        warmup: Duration::from_millis(500),
        seed: 16,
        scenario: shardmesh::runtime::mesh::Scenario::Rush,
        leave_after_rush: 0.75,
        servers_max: Some(8),
        ..MeshConfig::bots(2, 2_000, Duration::from_secs(6))
    };
    let summary = run(cfg).expect("the mesh starts");
    assert_eq!(summary.audit_error, None);
    assert_eq!((summary.lost_entities, summary.duplicate_entities), (0, 0));
    assert_eq!(summary.players, 2_000, "{summary:?}");
    assert_eq!(summary.players_offline, 1_500, "three quarters logged out");
    let last = summary.timeline.last().expect("a timeline");
    assert!(last.players <= 500, "only those who stayed are held at the end: {}", last.players);
    let before = summary.timeline.iter().map(|s| s.players).max().unwrap_or(0);
    assert!(before >= 1_900, "every player was in the world before: {before} at most");
    assert_eq!(summary.items_end, summary.items_start, "what they carried is parked with them");
}

/// `--static`: the region map stays as configured for the whole run, however the load sits.
#[test]
fn the_static_mesh_never_changes_the_region_map() {
    let _cores = cores_shared();
    let cfg = MeshConfig {
        warmup: Duration::from_millis(500),
        seed: 15,
        servers_per_core: 1,
        servers_max: Some(4),
        static_mesh: true,
        ..MeshConfig::bots(2, 3_000, Duration::from_secs(4))
    };
    let summary = run(cfg).expect("the mesh starts");
    assert_eq!(summary.map_epoch_end, summary.map_epoch_start, "the map changed");
    assert_eq!((summary.servers_started, summary.servers_retired), (0, 0));
    assert_eq!((summary.regions_split, summary.regions_merged, summary.regions_moved), (0, 0, 0));
    assert_eq!(summary.audit_error, None);
    assert!(summary.handoffs > 0, "the world was not idle: {} handoffs", summary.handoffs);
}

/// `demo` with `args`, and the address it says it serves on in the line beginning `announces`
/// (its stderr drained meanwhile, so it never blocks on a full pipe).
fn demo_serving(args: &[&str], announces: &'static str) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_shardmesh"))
        .arg("demo")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok);
    let addr = lines
        .find_map(|l| l.strip_prefix(announces).and_then(|a| a.split('/').next()).map(str::to_string))
        .unwrap_or_else(|| panic!("demo never said `{announces}`"));
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

/// `GET path` from `addr`: the whole answer, head and body.
fn get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// `demo --metrics`: a scrape while the world runs parses as Prometheus text and says what runs.
#[test]
fn the_metrics_endpoint_serves_prometheus_text_of_the_running_world() {
    let _cores = cores_shared();
    let args = ["--players", "400", "--cores", "2", "--duration", "8", "--metrics", "127.0.0.1:0"];
    let (mut child, addr) = demo_serving(&args, "metrics on http://");
    std::thread::sleep(Duration::from_secs(3));
    let scrape = |path: &str| get(&addr, path);
    let answer = scrape("/metrics");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let scraped = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text");
    let value = |name: &str| {
        scraped.samples.iter().find(|s| s.metric == name).map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
    };
    assert!(value("shardmesh_ticks_total").unwrap() > 0.0, "{body}");
    // Held by servers now: a player between servers at the scrape is held by none.
    let players = value("shardmesh_players").unwrap();
    assert!((350.0..=400.0).contains(&players), "{body}");
    assert!(value("shardmesh_entities").unwrap() >= 400.0, "{body}");
    assert_eq!(value("shardmesh_servers"), Some(4.0), "{body}");
    assert!(value("shardmesh_handoffs_total").is_some(), "{body}");
    for core in ["0", "1"] {
        let count = scraped
            .samples
            .iter()
            .find(|s| s.metric == "shardmesh_tick_duration_seconds_count" && s.labels.get("core") == Some(core));
        assert!(count.is_some(), "core {core}'s tick histogram: {body}");
    }
    assert!(scrape("/elsewhere").starts_with("HTTP/1.1 404"));
    assert!(child.wait().unwrap().success());
}

/// `demo --flamegraph`: sampled in-process, the SVG names the tick's own functions.
#[test]
fn the_flamegraph_flag_writes_an_svg_naming_the_ticks_functions() {
    let _cores = cores_shared();
    let svg = std::env::temp_dir().join(format!("shardmesh-flamegraph-{}.svg", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardmesh"))
        .args(["demo", "--players", "2000", "--cores", "2", "--duration", "4", "--flamegraph"])
        .arg(&svg)
        .output()
        .expect("the binary starts");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("flamegraph: "), "{said}");
    let text = std::fs::read_to_string(&svg).expect("the flamegraph is written");
    assert!(text.starts_with("<?xml") && text.contains("<svg"), "an SVG");
    // The tick's order lives in `Node::advance` (named with or without its path, as the build's
    // symbols have it).
    let frames: Vec<&str> = text.split("<title>").skip(1).map(|t| t.split("</title>").next().unwrap_or("")).collect();
    assert!(frames.iter().any(|f| f.contains("advance") && f.contains("shardmesh::")), "the node's tick is in it");
    assert!(text.contains("samples"), "with its sample counts");
    let _ = std::fs::remove_file(&svg);
}

/// The headless browser the map test drives: `$CHROMIUM`, or Chromium from the system's packages
/// (`.ci/run` installs it where it is missing).
fn chromium() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return path.into();
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .expect("the live map's test needs Chromium: apt-get install chromium (or set CHROMIUM)")
}

/// `demo --http`: the map's JSON says what runs, and the page, loaded in a real headless
/// Chromium, draws the regions and the players without a console error.
#[test]
fn the_live_map_draws_in_a_headless_browser() {
    let _cores = cores_shared();
    let browser = chromium();
    let args = ["--players", "1500", "--cores", "2", "--duration", "12", "--http", "127.0.0.1:0"];
    let (mut child, addr) = demo_serving(&args, "live map on http://");
    std::thread::sleep(Duration::from_secs(3));
    let answer = get(&addr, "/map.json");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let map: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert!(map["regions"].as_array().unwrap().len() >= 4, "{map}");
    assert!(map["containers"].as_array().unwrap().iter().any(|c| c["kind"] == "room"), "{map}");
    let cores = map["cores"].as_array().unwrap();
    assert_eq!(cores.len(), 2);
    let players: u64 = cores.iter().map(|c| c["players_total"].as_u64().unwrap()).sum();
    assert!(players >= 1400, "{players} players on the map");

    let profile = std::env::temp_dir().join(format!("shardmesh-chromium-{}", std::process::id()));
    let out = std::process::Command::new(&browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000"])
        .args(["--enable-logging=stderr", "--v=0", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("http://{addr}/"))
        .output()
        .expect("Chromium starts");
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    let drawn = |what: &str| -> u64 {
        let key = format!("data-{what}=\"");
        let at = dom.find(&key).unwrap_or_else(|| panic!("the page never drew ({what}): {dom}\n{log}"));
        dom[at + key.len()..].split('"').next().unwrap().parse().unwrap()
    };
    assert!(drawn("regions") >= 4, "{dom}");
    assert!(drawn("players") >= 1000, "{dom}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE") || l.contains("Uncaught")).collect();
    assert!(errors.is_empty(), "the page logged: {errors:?}");
    assert!(child.wait().unwrap().success());
}
