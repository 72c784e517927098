//! Tavern: the most players one room holds at 30 Hz with tick p99 under the budget (33 ms), the
//! static mesh and the dynamic mesh side by side in one run, on 1 and on 2 cores.
//!
//! Run: cargo bench --bench tavern -- [SECONDS_PER_TRIAL] [--cores 1,2] [--start PLAYERS_PER_CORE]
//!      [--servers-max-per-core N] [--repeat N] [--json PATH]
//!
//! Every player is in one room of the first city (`demo --scenario tavern`), milling about,
//! fighting and trading. Static: two servers a core, regions as configured, nothing moves.
//! Dynamic: the same start, then the controller balances, cuts the room's region (along walls
//! first, then the room into cells) and starts servers up to `--servers-max-per-core` a core.
//! For each core count, the two searches step together (static, then dynamic, the order
//! alternating each step): players double from the start until a trial fails, then bisect to
//! within 10%. A trial passes when the slowest core's tick p99 is under budget and the audit is
//! clean (the cores tick in step, so the world's tick is its slowest core's; the p99 of every
//! core's ticks together would count a static mesh's idle core as half the world's ticks); the
//! first 40% of a trial is warm-up (the dynamic mesh spreads the crowd then) and is not counted.
//! With `--repeat N` each count is tried N times, with seeds 7, 8, ..., and holds when more than
//! half the trials pass: on a shared machine one trial's p99 moves by more than the search's 10%
//! step. The two modes' trials of a step take turns (static, dynamic, static, ...), so a slow
//! spell of the machine falls on both.
//!
//! Each trial prints what splitting the room cost: handoffs a second and border ghosts a tick
//! (given to servers, and sent between cores), and the lowest time dilation.

use std::time::Duration;

use serde_json::{json, Value};
use shardmesh::runtime::mesh::{run, MeshConfig, MeshSummary, Scenario};
use side_by_side::write_json;

// The allocator the shardmesh binary runs with, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(dead_code)]
mod side_by_side;

const BUDGET_MS: f64 = 33.0;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Static,
    Dynamic,
}

struct Settings {
    secs: f64,
    servers_max_per_core: usize,
    repeat: usize,
}

fn run_trial(cores: usize, players: usize, mode: Mode, seed: u64, s: &Settings) -> MeshSummary {
    let cfg = MeshConfig {
        warmup: Duration::from_secs_f64(s.secs * 0.4),
        seed,
        scenario: Scenario::Tavern,
        static_mesh: mode == Mode::Static,
        servers_max: (mode == Mode::Dynamic).then_some(cores * s.servers_max_per_core),
        ..MeshConfig::bots(cores, players, Duration::from_secs_f64(s.secs))
    };
    run(cfg).expect("the mesh starts")
}

fn clean(s: &MeshSummary) -> bool {
    s.audit_error.is_none() && s.lost_entities == 0 && s.duplicate_entities == 0
}

fn trial(cores: usize, players: usize, mode: Mode, repeat: usize, settings: &Settings) -> (bool, Value) {
    // Repeats try the world from different seeds as well as the machine at different moments.
    let seed = 7 + repeat as u64;
    let s = run_trial(cores, players, mode, seed, settings);
    let slowest = s.tick_p99_ms_per_core.iter().copied().fold(f64::NAN, f64::max);
    let ok = clean(&s) && s.ticks > 0 && slowest < BUDGET_MS;
    let v = json!({
        "cores": cores,
        "mode": format!("{mode:?}").to_lowercase(),
        "players": players,
        "repeat": repeat,
        "seed": seed,
        "ticks": s.ticks,
        "tick_p50_ms": s.tick_p50_ms,
        "tick_p99_ms": s.tick_p99_ms,
        "tick_max_ms": s.tick_max_ms,
        "tick_p99_ms_per_core": s.tick_p99_ms_per_core,
        "tick_p99_ms_slowest_core": slowest,
        "stage_ms_per_core": s.stage_ms_per_core,
        "held_per_core": s.held_per_core,
        "servers_started": s.servers_started,
        "servers_retired": s.servers_retired,
        "regions_split": s.regions_split,
        "rooms_cut": s.rooms_cut,
        "regions_merged": s.regions_merged,
        "regions_moved": s.regions_moved,
        "handoffs_per_s": s.handoffs as f64 / s.duration_s.max(1e-9),
        "ghosts_to_servers_per_tick": s.ghosts_to_servers_per_tick,
        "ghosts_to_cores_per_tick": s.ghosts_to_cores_per_tick,
        "time_dilation_min": s.time_dilation_min,
        "clean": clean(&s),
        "pass": ok,
    });
    println!(
        "  cores={cores} {:<7} players={players:<6} seed={} p50={:>6.2}ms p99={:>6.2}ms (slowest core {:.2}) max={:>6.2}ms held/core={:?} servers+{} splits={} rooms_cut={} merges={} moves={} handoffs/s={:.0} ghosts/tick={:.0} (cross-core {:.0}) dilation={} audit={} -> {}",
        format!("{mode:?}").to_lowercase(),
        seed,
        s.tick_p50_ms,
        s.tick_p99_ms,
        slowest,
        s.tick_max_ms,
        s.held_per_core,
        s.servers_started,
        s.regions_split,
        s.rooms_cut,
        s.regions_merged,
        s.regions_moved,
        v["handoffs_per_s"].as_f64().unwrap_or(0.0),
        v["ghosts_to_servers_per_tick"].as_f64().unwrap_or(0.0),
        v["ghosts_to_cores_per_tick"].as_f64().unwrap_or(0.0),
        s.time_dilation_min.map_or("-".into(), |d| format!("{d:.2}")),
        if clean(&s) { "clean" } else { "FAILED" },
        if ok { "pass" } else { "fail" }
    );
    (ok, v)
}

/// One mode's search: doubling until a failure, then bisecting to within 10%.
#[derive(Debug)]
struct Search {
    mode: Mode,
    good: usize,
    bad: Option<usize>,
    next: Option<usize>,
}

impl Search {
    fn new(mode: Mode, start: usize) -> Self {
        Self { mode, good: 0, bad: None, next: Some(start) }
    }

    fn record(&mut self, players: usize, ok: bool) {
        if ok {
            self.good = self.good.max(players);
        } else {
            self.bad = Some(self.bad.map_or(players, |b| b.min(players)));
        }
        self.next = match self.bad {
            None if players * 2 <= 400_000 => Some(players * 2),
            None => None,
            Some(bad) if bad - self.good > bad / 10 => Some((self.good + bad) / 2),
            Some(_) => None,
        };
    }
}

fn main() {
    let mut settings = Settings { secs: 25.0, servers_max_per_core: 4, repeat: 1 };
    let (mut json_path, mut cores_list, mut start_per_core) =
        ("target/bench-tavern.json".to_string(), vec![1usize, 2], 4000usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--json" => json_path = value("--json"),
            "--cores" => cores_list = value("--cores").split(',').map(|c| c.parse().expect("a core count")).collect(),
            "--start" => start_per_core = value("--start").parse().expect("players per core"),
            "--servers-max-per-core" => {
                settings.servers_max_per_core = value("--servers-max-per-core").parse().expect("a number")
            }
            "--repeat" => settings.repeat = value("--repeat").parse::<usize>().expect("a number").max(1),
            "--bench" => {}
            other => {
                if let Ok(s) = other.parse() {
                    settings.secs = s;
                }
            }
        }
    }
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores_list.retain(|c| *c >= 1 && *c <= available);
    println!(
        "tavern: every player in one room; tick budget {BUDGET_MS} ms (30 Hz), {} s trials (40% warm-up), {} a count, static (2 servers a core) against dynamic (up to {} a core), {available} cores here",
        settings.secs, settings.repeat, settings.servers_max_per_core
    );
    let mut trials = Vec::new();
    let mut results = Vec::new();
    let mut failed_audit = false;
    let progress = shardmesh::progress::Progress::open_ended("trials");
    for &cores in &cores_list {
        let mut searches =
            [Search::new(Mode::Static, start_per_core * cores), Search::new(Mode::Dynamic, start_per_core * cores)];
        let mut step = 0;
        while searches.iter().any(|s| s.next.is_some()) {
            // This step's counts, one a mode; their trials take turns.
            let probes: Vec<(usize, usize)> =
                (0..2).map(|k| (k + step) % 2).filter_map(|i| searches[i].next.map(|p| (i, p))).collect();
            let mut passed = [0usize; 2];
            for repeat in 0..settings.repeat {
                for &(i, players) in &probes {
                    let (ok, v) = trial(cores, players, searches[i].mode, repeat, &settings);
                    progress.advance(!ok);
                    failed_audit |= v["clean"].as_bool() != Some(true);
                    passed[i] += ok as usize;
                    trials.push(v);
                }
            }
            for &(i, players) in &probes {
                let (search, passed) = (&mut searches[i], passed[i]);
                let holds = passed * 2 > settings.repeat;
                if settings.repeat > 1 {
                    println!(
                        "  cores={cores} {:<7} players={players:<6} {passed} of {} passed -> {}",
                        format!("{:?}", search.mode).to_lowercase(),
                        settings.repeat,
                        if holds { "holds" } else { "does not hold" }
                    );
                }
                search.record(players, holds);
            }
            step += 1;
        }
        let (st, dy) = (searches[0].good, searches[1].good);
        progress.finish();
        let ratio = dy as f64 / st.max(1) as f64;
        println!("result: {cores} core(s): static holds {st} players in the room, dynamic {dy} ({ratio:.2}x)");
        results
            .push(json!({"cores": cores, "static_players": st, "dynamic_players": dy, "dynamic_over_static": ratio}));
    }
    let two = results.iter().find(|r| r["cores"] == 2);
    if let Some(two) = two {
        let ratio = two["dynamic_over_static"].as_f64().unwrap_or(0.0);
        let dynamic = two["dynamic_players"].as_u64().unwrap_or(0);
        println!(
            "target: dynamic at least 1.8x static on 2 cores: {ratio:.2}x -> {}",
            if ratio >= 1.8 { "met" } else { "NOT met" }
        );
        println!(
            "target: at least 2,000 players in one room: {dynamic} -> {}",
            if dynamic >= 2000 { "met" } else { "NOT met" }
        );
    }
    let cores_arg: Vec<String> = cores_list.iter().map(|c| c.to_string()).collect();
    let command = format!(
        "cargo bench --bench tavern -- {} --cores {} --start {start_per_core} --servers-max-per-core {} --repeat {}",
        settings.secs,
        cores_arg.join(","),
        settings.servers_max_per_core,
        settings.repeat
    );
    write_json(
        &json_path,
        &json!({"bench": "tavern", "command": command, "seconds": settings.secs, "servers_max_per_core": settings.servers_max_per_core, "repeat": settings.repeat, "results": results, "trials": trials}),
    );
    println!("reproduce: {command}");
    if failed_audit || results.iter().all(|r| r["static_players"] == 0 && r["dynamic_players"] == 0) {
        println!("FAILED: a trial's audit was not clean, or no trial passed");
        std::process::exit(1);
    }
}
