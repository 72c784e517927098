//! The `shardmesh` command: `sim` runs the deterministic simulator over seeds, `demo` runs the
//! main job on the embedded default world, `world` checks a world file.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use std::time::Duration;

use clap::{Parser, Subcommand};
use shardmesh::runtime::MeshConfig;
use shardmesh::sim::{SimConfig, SimOutcome, Simulator};
use shardmesh::world::{ContainerKind, ContainerTree};

#[derive(Parser)]
#[command(name = "shardmesh", version, about = "A server mesh for MMO worlds, emulated on one host")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the deterministic simulator: many seeds (`--seeds N`) or one, verbosely (`--seed S`).
    Sim {
        /// Run this many seeds, starting at `--start`.
        #[arg(long, conflicts_with = "seed")]
        seeds: Option<u64>,
        /// First seed of a `--seeds` sweep.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Replay one seed and print every event.
        #[arg(long)]
        seed: Option<u64>,
        /// Ticks with faults on, before the calm phase.
        #[arg(long, default_value_t = 300)]
        fault_ticks: u64,
        /// Ticks of the calm phase at 30 Hz (as long in game time at the seed's rate), after which
        /// the world must have settled.
        #[arg(long, default_value_t = 120)]
        calm_ticks: u64,
        /// Worker threads for a sweep (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// The main job: a live mesh on this machine's cores (one pinned shard per core, servers and a
    /// replication slice on each, shared-memory rings between them) with bots playing; a status
    /// line each second, then a summary and an audit of every entity.
    Demo {
        /// Bots, each a player.
        #[arg(long, default_value_t = 2000)]
        players: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// bots (a world of cities, bots wandering, commuting, gathering and fighting), tavern
        /// (every player in one room of the first city, milling about, fighting and trading) or
        /// rush (a crowd that comes and goes: from a fifth of the run to three fifths every player
        /// rushes the tavern, then they scatter).
        #[arg(long, default_value = "bots", value_parser = ["bots", "tavern", "rush"])]
        scenario: String,
        /// With `--scenario rush`: this share of the players (0 to 1) log out when the rush ends,
        /// as a crowd leaves after an event (their players parked, costing nothing); the rest
        /// scatter.
        #[arg(long, value_name = "SHARE", default_value_t = 0.0)]
        leave: f64,
        #[command(flatten)]
        mesh: MeshArgs,
    },
    /// Run a persistent world kept in a replication log in `--data DIR` (created on first start),
    /// with bots if asked, until SIGINT or SIGTERM, which commit, sync and exit 0.
    Serve {
        /// The world's directory: its replication log and what it was generated from.
        #[arg(long)]
        data: std::path::PathBuf,
        /// Take options from this TOML file: each key is one of these options' names (`hz = 60`,
        /// `listen = "127.0.0.1:7777"`, `static = true`); one given on the command line as well
        /// wins. An unknown key or a bad value is an error that names it.
        #[arg(long, value_name = "FILE")]
        config: Option<std::path::PathBuf>,
        /// Bots: on first start, the world gets this many players, which bots drive.
        #[arg(long, default_value_t = 0)]
        bots: usize,
        #[command(flatten)]
        mesh: MeshArgs,
        /// When commits are synced: `tick` (every tick), a period such as `100ms`, or `off`
        /// (only on shutdown; a killed process still loses nothing written, a power loss can).
        #[arg(long, default_value = "tick")]
        durability: shardmesh::log::Durability,
        /// Seconds between checkpoints.
        #[arg(long, default_value_t = 10.0)]
        checkpoint_secs: f64,
        /// Start even if the log is corrupt in the middle, cutting it at the first bad record
        /// (what follows it is lost, and said so).
        #[arg(long)]
        salvage: bool,
        /// Stop after this many seconds (default: run until a signal).
        #[arg(long)]
        duration: Option<f64>,
        /// Accept clients over UDP (netcode) on this address, e.g. 127.0.0.1:7777. A connect
        /// token's client id is an account: ids below `--bots` drive the world's own players (the
        /// bots drive those no client holds); any other account's player is made at the spawn
        /// point on its first login, parked with what it carries when it logs out, and back
        /// where it was at its next login, after any restart.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The private key that signs connect tokens (created on first start if missing;
        /// default: gateway.key in the data directory).
        #[arg(long)]
        key_file: Option<std::path::PathBuf>,
        /// Accept clients with no connect token. For development only: anyone can be any account.
        #[arg(long)]
        insecure_dev: bool,
        /// Netcode endpoints per core (one port, SO_REUSEPORT); each holds 1,024 clients.
        #[arg(long, default_value_t = 4)]
        endpoints_per_core: usize,
        /// Bytes of updates a second each client is sent at most: what does not fit waits, the
        /// nearest, largest and longest-waiting first.
        #[arg(long, default_value_t = shardmesh::net::CLIENT_BYTES_PER_S_DEFAULT)]
        client_budget: u32,
    },
    /// Render the benchmarks' JSON (`bench-*.json`, as each `cargo bench` writes it) as SVG plots
    /// and one Markdown report, `REPORT.md`, that shows every table and links every plot.
    Report {
        /// Where the benchmarks wrote their JSON (read: every `bench-*.json` there).
        #[arg(long, default_value = "target")]
        from: std::path::PathBuf,
        /// Where the plots and REPORT.md go.
        #[arg(long, default_value = "target/report")]
        out: std::path::PathBuf,
        /// Render these files instead of those in --from.
        files: Vec<std::path::PathBuf>,
    },
    /// Print a connect token for one client of `serve --listen`, signed with the gateway's key
    /// (hex; the client hands it to netcode's handshake): what a login service hands out. The
    /// library call behind it is `shardmesh::net::key::connect_token`.
    Token {
        /// The gateway's private key file (`serve --key-file`, default gateway.key in its data
        /// directory). It must exist.
        #[arg(long)]
        key_file: std::path::PathBuf,
        /// The client's id: its account (see `serve --listen`).
        #[arg(long)]
        client_id: u64,
        /// The gateway's address, as clients reach it (`serve --listen`).
        #[arg(long)]
        connect: std::net::SocketAddr,
        /// Seconds the token is good for.
        #[arg(long, default_value_t = shardmesh::limits::TOKEN_EXPIRE_SECS_DEFAULT)]
        expire_secs: u64,
    },
    /// Load-generating clients: many bots per thread, each a real netcode client over UDP,
    /// connecting to `serve --listen`; prints progress, then a report.
    Bots {
        /// The gateway's address.
        #[arg(long)]
        connect: std::net::SocketAddr,
        /// The gateway's private key file, to sign the bots' connect tokens.
        #[arg(long)]
        key_file: std::path::PathBuf,
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// The first bot's account (bots are accounts first..first+count: those below the
        /// world's own players drive them, the others are accounts' players, made at the spawn
        /// point on their first login and kept).
        #[arg(long, default_value_t = 0)]
        first_seat: u64,
        /// wander, commute, swarm, fight or churn.
        #[arg(long, default_value = "wander")]
        behaviour: shardmesh::net::bots::Behaviour,
        /// Seconds to run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Threads to run the bots on (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write the report as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Sample the bots' process and write a flamegraph SVG here when it ends.
        #[arg(long, value_name = "FILE")]
        flamegraph: Option<std::path::PathBuf>,
    },
    /// Read a world's replication log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Load a TOML world file, check it and print its container tree.
    World { file: std::path::PathBuf },
}

/// What `demo` and `serve` share: where the mesh runs and how its bots play.
#[derive(clap::Args)]
struct MeshArgs {
    /// Cores to run on (default: all).
    #[arg(long)]
    cores: Option<usize>,
    /// Logical servers on each core.
    #[arg(long, default_value_t = 2)]
    servers_per_core: usize,
    /// Tick rate.
    #[arg(long, default_value_t = 30.0, value_parser = positive_finite)]
    hz: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Bot activity; 1.0 is the simulator's stress level.
    #[arg(long, default_value_t = 0.25, value_parser = positive_finite)]
    activity: f64,
    /// Write the final summary as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// A drill: panic in server code (`server@TICK`, a server crash the mesh survives) or in a
    /// shard (`shard@TICK`, which ends the process non-zero); `@CORE` picks a core other than 0.
    #[arg(long, hide = true)]
    inject_panic: Option<shardmesh::runtime::panics::InjectPanic>,
    /// Logical servers the controller may run at most: it starts one where load cannot be evened
    /// out among those it has, and retires one once load stays low (default: the starting number,
    /// `--servers-per-core` a core, a fixed set; from that number to 1,024).
    #[arg(long)]
    servers_max: Option<usize>,
    /// Turn every dynamic action off (balancing, splits and merges, servers started or retired):
    /// regions and servers stay as configured, for comparison.
    #[arg(long = "static")]
    static_mesh: bool,
    /// Crash a random server every SECONDS (its code panics halfway through a tick) once the
    /// warm-up is over: live servers take over what it held from the committed state, and the
    /// summary gives the ticks each failover took.
    #[arg(long, value_name = "SECONDS", value_parser = positive_finite)]
    chaos_crash_every: Option<f64>,
    /// Serve Prometheus metrics at http://ADDR/metrics while the world runs (tick durations per
    /// core, players, entities, servers, regions, handoffs, failovers, log bytes and durable tick,
    /// clients, bytes sent, bad packets by kind). Port 0 picks a free one, which is printed.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Sample the run in-process (no perf privileges needed) and write a flamegraph SVG here
    /// when it ends.
    #[arg(long, value_name = "FILE")]
    flamegraph: Option<std::path::PathBuf>,
    /// Serve a live map of the world at http://ADDR/ (its data at /map.json): containers,
    /// regions coloured by server, servers per core with their load, players as dots.
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
}

impl MeshArgs {
    /// A bots run of `players` for `duration`, everything else as these arguments say.
    fn config(&self, players: usize, duration: Duration, warmup: Duration) -> MeshConfig {
        let cores = self.cores.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        MeshConfig {
            warmup,
            tick: Duration::from_secs_f64(1.0 / self.hz.clamp(1.0, 1000.0)),
            servers_per_core: self.servers_per_core,
            seed: self.seed,
            bot_activity: if players == 0 { 0.0 } else { self.activity.clamp(1e-3, 1.0) },
            status: true,
            inject_panic: self.inject_panic,
            servers_max: self.servers_max,
            static_mesh: self.static_mesh,
            chaos_crash_every: self.chaos_crash_every.map(|s| Duration::from_secs_f64(s.clamp(0.01, 86_400.0))),
            metrics: self.metrics,
            http: self.http,
            ..MeshConfig::bots(cores, players, duration)
        }
    }
}

#[derive(Subcommand)]
enum LogCommand {
    /// Check every record and snapshot; print segments, records, entities, items,
    /// last_committed_tick and errors. Exits non-zero on corruption.
    Verify {
        dir: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print every snapshot and record readably.
    Inspect { dir: std::path::PathBuf },
}

/// A number that is finite and above zero (a rate, a period): NaN or infinity from a command line
/// would reach `Duration::from_secs_f64`, which panics on them.
fn positive_finite(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(_) => Err(format!("`{s}`: a finite number above zero")),
        Err(e) => Err(format!("`{s}`: {e}")),
    }
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `serve --config FILE`: the command line with the file's options added as flags (those the
/// command line gives win); an unknown key, a value of the wrong kind or a file that cannot be
/// read is an error naming it.
fn with_config(args: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>, String> {
    if args.get(1).and_then(|a| a.to_str()) != Some("serve") {
        return Ok(args);
    }
    let given: Vec<String> = args.iter().filter_map(|a| a.to_str()).map(str::to_string).collect();
    let path = given.iter().enumerate().find_map(|(i, a)| match a.strip_prefix("--config") {
        Some("") => given.get(i + 1).cloned(),
        Some(rest) => rest.strip_prefix('=').map(str::to_string),
        None => None,
    });
    let Some(path) = path else { return Ok(args) };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("config {path}: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| format!("config {path}: {e}"))?;
    let serve = <Cli as clap::CommandFactory>::command();
    let serve = serve.find_subcommand("serve").expect("serve is a command");
    let options: Vec<(String, bool)> = serve
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| (l.to_string(), matches!(a.get_action(), clap::ArgAction::SetTrue))))
        .filter(|(l, _)| l != "config" && l != "help")
        .collect();
    let mut out = args;
    for (key, value) in table {
        let flag = key.replace('_', "-");
        let Some((_, switch)) = options.iter().find(|(l, _)| *l == flag) else {
            let names: Vec<&str> = options.iter().map(|(l, _)| l.as_str()).collect();
            return Err(format!("config {path}: unknown key `{key}`; serve's options are {}", names.join(", ")));
        };
        let on_command_line = given.iter().any(|a| *a == format!("--{flag}") || a.starts_with(&format!("--{flag}=")));
        if on_command_line {
            continue;
        }
        let value = match (&value, switch) {
            (toml::Value::Boolean(true), true) => None,
            (toml::Value::Boolean(false), true) => continue,
            (_, true) => return Err(format!("config {path}: key `{key}` is a switch: true or false, not {value}")),
            (toml::Value::String(s), false) => Some(s.clone()),
            (toml::Value::Integer(_) | toml::Value::Float(_), false) => Some(value.to_string()),
            (_, false) => return Err(format!("config {path}: key `{key}` takes a string or a number, not {value}")),
        };
        out.push(match value {
            Some(v) => format!("--{flag}={v}").into(),
            None => format!("--{flag}").into(),
        });
    }
    Ok(out)
}

fn main() -> ExitCode {
    let args = match with_config(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("shardmesh: {e}");
            return ExitCode::from(2);
        }
    };
    match Cli::parse_from(args).command {
        Command::Sim { seeds, start, seed, fault_ticks, calm_ticks, threads } => {
            let base = |s| SimConfig { fault_ticks, calm_ticks, ..SimConfig::new(s) };
            match (seeds, seed) {
                (_, Some(seed)) => {
                    let outcome = Simulator::run(SimConfig { verbose: true, ..base(seed) });
                    print!("{}", outcome.log);
                    if outcome.failure.is_some() {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                (seeds, None) => sweep(start, seeds.unwrap_or(100), threads, base),
            }
        }
        Command::Demo { players, duration, scenario, leave, mesh } => {
            let mut cfg = mesh.config(
                players,
                Duration::from_secs_f64(duration.max(0.1)),
                Duration::from_secs_f64((duration / 5.0).min(2.0)),
            );
            cfg.scenario = match scenario.as_str() {
                "tavern" => shardmesh::runtime::mesh::Scenario::Tavern,
                "rush" => shardmesh::runtime::mesh::Scenario::Rush,
                _ => shardmesh::runtime::mesh::Scenario::Bots,
            };
            cfg.leave_after_rush = leave;
            profiled(mesh.flamegraph.as_deref(), || demo(cfg, mesh.json))
        }
        Command::Serve {
            data,
            config: _,
            bots,
            mesh,
            durability,
            checkpoint_secs,
            salvage,
            duration,
            listen,
            key_file,
            insecure_dev,
            endpoints_per_core,
            client_budget,
        } => {
            let gateway = match listen {
                None => None,
                Some(listen) => {
                    if let Err(e) = std::fs::create_dir_all(&data) {
                        eprintln!("{}: {e}", data.display());
                        return ExitCode::FAILURE;
                    }
                    let path = key_file.unwrap_or_else(|| data.join("gateway.key"));
                    match shardmesh::net::key::load_or_create(&path) {
                        Ok(key) => Some(shardmesh::runtime::mesh::GatewayConfig {
                            listen,
                            key,
                            insecure: insecure_dev,
                            endpoints_per_core,
                            client_bytes_per_s: client_budget,
                        }),
                        Err(e) => {
                            eprintln!("{e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
            };
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
                    eprintln!("cannot handle signal {signal}: {e}");
                    return ExitCode::FAILURE;
                }
            }
            let duration = duration.map_or(Duration::MAX, |d| Duration::from_secs_f64(d.max(0.1)));
            let cfg = MeshConfig {
                persist: Some(shardmesh::runtime::mesh::PersistConfig {
                    dir: data,
                    durability,
                    checkpoint_every: Duration::from_secs_f64(checkpoint_secs.max(0.05)),
                    segment_bytes: shardmesh::log::SEGMENT_BYTES,
                    salvage,
                }),
                stop_signal: Some(stop),
                gateway,
                ..mesh.config(bots, duration, Duration::from_secs(2))
            };
            profiled(mesh.flamegraph.as_deref(), || demo(cfg, mesh.json))
        }
        Command::Report { from, out, files } => report(&from, &out, files),
        Command::Token { key_file, client_id, connect, expire_secs } => {
            let key = match shardmesh::net::key::load(&key_file) {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let now = shardmesh::net::gateway::unix_now();
            match shardmesh::net::key::connect_token(&key, client_id, connect, expire_secs, now) {
                Ok(token) => {
                    println!("{}", shardmesh::net::key::token_to_hex(&token));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bots {
            connect,
            key_file,
            count,
            first_seat,
            behaviour,
            duration,
            threads,
            seed,
            json,
            flamegraph,
        } => {
            let key = match std::fs::metadata(&key_file) {
                Ok(_) => shardmesh::net::key::load_or_create(&key_file),
                Err(e) => {
                    eprintln!("{}: {e}", key_file.display());
                    return ExitCode::FAILURE;
                }
            };
            let key = match key {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let cfg = shardmesh::net::bots::BotsConfig {
                connect,
                key,
                count,
                first_seat,
                behaviour,
                duration: Duration::from_secs_f64(duration.max(0.1)),
                threads: threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                seed,
                progress: true,
            };
            profiled(flamegraph.as_deref(), || match shardmesh::net::bots::run(&cfg) {
                Ok(report) => {
                    println!(
                        "bots={} held={} connected={} ever_connected={} never_connected={} connect_failures={} connect_ms_p50={:.1} latency_p50_ms={:.1} latency_p99_ms={:.1} updates_per_s={:.1} bytes_per_client_s={:.0} glitches={} (teleports={} vanished={} duplicates={}) dropped={} reconnects={}",
                        report.count,
                        report.held,
                        report.connected,
                        report.ever_connected,
                        report.count - report.ever_connected,
                        report.connect_failures,
                        report.connect_ms_p50,
                        report.latency_p50_ms,
                        report.latency_p99_ms,
                        report.updates_per_s,
                        report.bytes_per_client_s,
                        report.glitches,
                        report.teleports,
                        report.vanished,
                        report.duplicates,
                        report.dropped,
                        report.reconnects
                    );
                    for (why, n) in &report.never_connected.reasons {
                        eprintln!("{n} bot(s) never held a seat: {why}");
                    }
                    for why in &report.not_held {
                        eprintln!("not held: {why}");
                    }
                    if let Some(path) = json {
                        let text = serde_json::to_string_pretty(&report).expect("the report serializes");
                        if let Err(e) = std::fs::write(&path, text) {
                            eprintln!("{}: {e}", path.display());
                            return ExitCode::FAILURE;
                        }
                    }
                    // A load test that did not hold its bots failed, whatever else it measured.
                    if report.held {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("bots failed: {e}");
                    ExitCode::FAILURE
                }
            })
        }
        Command::Log { command: LogCommand::Verify { dir, json } } => {
            let report = match shardmesh::log::Disk::open(&dir) {
                Ok(disk) => shardmesh::log::verify(&disk),
                Err(e) => {
                    shardmesh::log::Report { errors: vec![format!("{}: {e}", dir.display())], ..Default::default() }
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report).expect("the report serializes"));
            } else {
                println!(
                    "slices={} segments={} records={} snapshots={} round={} entities={} items={} players={} duplicates={} last_committed_tick={} errors={}",
                    report.slices,
                    report.segments,
                    report.records,
                    report.snapshots,
                    report.round,
                    report.entities,
                    report.items,
                    report.players,
                    report.duplicates,
                    report.last_committed_tick,
                    report.errors.len()
                );
                for t in &report.torn_tails {
                    println!("torn tail (a crash mid-write; cut back on start): {t}");
                }
                for e in &report.errors {
                    println!("error: {e}");
                }
            }
            if report.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Log { command: LogCommand::Inspect { dir } } => {
            let result = shardmesh::log::Disk::open(&dir).map_err(|e| e.to_string()).and_then(|disk| {
                shardmesh::log::inspect(&disk, &mut std::io::stdout().lock()).map_err(|e| e.to_string())
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::World { file } => match std::fs::read_to_string(&file)
            .map_err(|e| e.to_string())
            .and_then(|t| ContainerTree::from_toml(&t).map_err(|e| e.to_string()))
        {
            Ok(tree) => {
                for c in &tree.containers {
                    let depth = match c.kind {
                        ContainerKind::System => 0,
                        ContainerKind::Planet => 1,
                        ContainerKind::City => 2,
                        ContainerKind::Building => 3,
                        ContainerKind::Room => 4,
                    };
                    println!(
                        "{:indent$}{:?} {} {:?}..{:?}",
                        "",
                        c.kind,
                        c.name,
                        c.bounds.min,
                        c.bounds.max,
                        indent = depth * 2
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs seeds `start..start+count` on worker threads; prints a line per failure (in seed order)
/// and a summary with seeds per second.
fn sweep(start: u64, count: u64, threads: Option<usize>, config: impl Fn(u64) -> SimConfig + Sync) -> ExitCode {
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let next = AtomicU64::new(start);
    let failures: Mutex<Vec<SimOutcome>> = Mutex::new(Vec::new());
    let totals = Mutex::new([0u64; 11]);
    let progress = shardmesh::progress::Progress::new("seeds", count);
    let began = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= start + count {
                    break;
                }
                let outcome = Simulator::run(config(seed));
                {
                    let mut t = totals.lock().expect("no worker panics while holding it");
                    t[0] += outcome.stats.ticks;
                    t[1] += outcome.stats.handoffs;
                    t[2] += outcome.stats.crashes + outcome.stats.fenced;
                    t[3] += outcome.stats.mesh_restarts;
                    t[4] += outcome.stats.clients.updates_taken;
                    t[5] += outcome.stats.clients.glitches;
                    t[6] += outcome.stats.clients.settled_checks;
                    t[7] += outcome.stats.servers_started;
                    t[8] += outcome.stats.servers_retired;
                    t[9] += outcome.stats.logins;
                    t[10] += outcome.stats.players_parked;
                }
                progress.advance(outcome.failure.is_some());
                if outcome.failure.is_some() {
                    failures.lock().expect("no worker panics while holding it").push(outcome);
                }
            });
        }
    });
    progress.finish();
    let elapsed = began.elapsed().as_secs_f64();
    let mut failures = failures.into_inner().expect("workers are done");
    failures.sort_by_key(|o| o.seed);
    for f in &failures {
        let (tick, e) = f.failure.as_ref().expect("only failures are kept");
        println!("FAIL seed={} tick={tick}: {e}  [{}]", f.seed, f.plan);
    }
    let [ticks, handoffs, crashes, mesh_restarts, client_updates, glitches, settled_checks, started, retired, logins, parked] =
        totals.into_inner().expect("workers are done");
    println!(
        "{} seeds ({}..{}), {} failed, {:.1} s, {:.1} seeds/s, {} ticks, {} handoffs, {} crashes and fences, {} servers started and {} retired, {} whole-process crashes recovered (mesh_restarts), {} accounts' logins and {} players parked at logouts, {} updates taken in by simulated clients ({} glitches seen under faults, {} ticks of settled-world checks), {} threads",
        count,
        start,
        start + count,
        failures.len(),
        elapsed,
        count as f64 / elapsed,
        ticks,
        handoffs,
        crashes,
        started,
        retired,
        mesh_restarts,
        logins,
        parked,
        client_updates,
        glitches,
        settled_checks,
        threads
    );
    // The simulated clients' settled-world checks must have run somewhere in a sweep of any
    // size: a sweep where the world never settled for them checked nothing of the clients.
    let unchecked = count >= 50 && settled_checks == 0;
    if unchecked {
        println!("FAIL: no seed's clients reached a settled world, so their settled checks never ran");
    }
    // Likewise the accounts: a sweep in which none logged out and was parked checked nothing of them.
    let unchecked = unchecked || (count >= 50 && parked == 0);
    if count >= 50 && parked == 0 {
        println!("FAIL: no account logged out and was parked in any seed");
    }
    if failures.is_empty() && !unchecked {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `run`, sampled for a flamegraph at `flamegraph` if asked: a flamegraph that could not be
/// made fails the run, whatever it did.
fn profiled(flamegraph: Option<&std::path::Path>, run: impl FnOnce() -> ExitCode) -> ExitCode {
    let profile = match flamegraph.map(shardmesh::profile::Flamegraph::start).transpose() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let code = run();
    match (profile, flamegraph) {
        (Some(profile), Some(path)) => match profile.finish() {
            Ok(samples) => {
                eprintln!("flamegraph: {samples} samples, in {}", path.display());
                code
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        _ => code,
    }
}

fn demo(cfg: MeshConfig, json: Option<std::path::PathBuf>) -> ExitCode {
    eprintln!(
        "shardmesh: {} bots' players, {} cores x {} servers, {:.0} Hz, {}",
        cfg.players,
        cfg.cores,
        cfg.servers_per_core,
        1.0 / cfg.tick.as_secs_f64(),
        match cfg.duration {
            Duration::MAX => String::from("until stopped"),
            d => format!("{:.1} s", d.as_secs_f64()),
        },
    );
    let summary = match shardmesh::runtime::mesh::run(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shardmesh: the mesh stopped: {e}");
            return ExitCode::FAILURE;
        }
    };
    for stall in summary.stall_reports.iter().take(5) {
        eprintln!("stall: {stall}");
    }
    println!(
        "players={} servers={} cores={} duration_s={:.1} ticks={} tick_p50_ms={:.2} tick_p99_ms={:.2} tick_max_ms={:.2} over_budget={} handoffs={} transfers={} entities={}/{} at_rest={} items={}/{} lost={} duplicates={} restarts={}",
        summary.players,
        summary.servers,
        summary.cores,
        summary.duration_s,
        summary.ticks,
        summary.tick_p50_ms,
        summary.tick_p99_ms,
        summary.tick_max_ms,
        summary.ticks_over_budget,
        summary.handoffs,
        summary.transfers,
        summary.entities_end,
        summary.entities_start,
        summary.entities_at_rest,
        summary.items_end,
        summary.items_start,
        summary.lost_entities,
        summary.duplicate_entities,
        summary.server_restarts,
    );
    for (core, stages) in summary.stage_ms_per_core.iter().enumerate() {
        if stages.is_empty() {
            println!("core {core}: no tick after the warm-up");
            continue;
        }
        let parts: Vec<String> =
            shardmesh::runtime::shard::STAGES.iter().zip(stages).map(|(name, ms)| format!("{name}={ms:.2}")).collect();
        println!("core {core}: mean ms a tick after the warm-up: {}", parts.join(" "));
    }
    if let (Some(tick), Some(round)) = (summary.committed_tick, summary.checkpoint_round) {
        println!("committed_tick={tick} checkpoint={round}");
    }
    println!(
        "servers_started={} servers_retired={} servers_max={} regions_split={} rooms_cut={} regions_merged={} regions_moved={} time_dilation_min={}",
        summary.servers_started,
        summary.servers_retired,
        summary.servers_max,
        summary.regions_split,
        summary.rooms_cut,
        summary.regions_merged,
        summary.regions_moved,
        summary.time_dilation_min.map_or("-".to_string(), |d| format!("{d:.3}")),
    );
    if summary.server_crashes > 0 || summary.chaos_drills > 0 {
        let ticks = |t: Option<u64>| t.map_or("-".to_string(), |t| t.to_string());
        println!(
            "server_crashes={} failover_ticks_p50={} failover_ticks_p99={} failover_ticks_max={} unfinished={} chaos_drills={}/{}",
            summary.server_crashes,
            ticks(summary.failover_ticks_p50),
            ticks(summary.failover_ticks_p99),
            ticks(summary.failover_ticks_max),
            summary.failovers_unfinished.len(),
            summary.chaos_drills_carried_out,
            summary.chaos_drills,
        );
    }
    if let Some(e) = &summary.log_error {
        println!("replication log FAILED: {e}");
    }
    match &summary.audit_error {
        None => println!("audit: every entity accounted for, held once, as committed"),
        Some(e) => println!("audit FAILED: {e}"),
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&summary).expect("the summary serializes");
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let clean = summary.audit_error.is_none() && summary.log_error.is_none();
    if clean && summary.lost_entities == 0 && summary.duplicate_entities == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `shardmesh report`: fails when there was nothing to render or a file could not be.
fn report(from: &std::path::Path, out: &std::path::Path, files: Vec<std::path::PathBuf>) -> ExitCode {
    let files = if files.is_empty() {
        match shardmesh::report::bench_files(from) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        files
    };
    if files.is_empty() {
        eprintln!("report: no bench-*.json in {} (run a benchmark first: cargo bench --bench NAME)", from.display());
        return ExitCode::FAILURE;
    }
    match shardmesh::report::render(&files, out) {
        Ok(r) => {
            for (name, plots, tables) in &r.benches {
                println!("  {name}: {plots} plots, {tables} tables");
            }
            for e in &r.errors {
                eprintln!("report: not rendered: {e}");
            }
            println!("report: {} benchmarks, {} plots -> {}", r.benches.len(), r.plots(), r.markdown.display());
            if r.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("report: {e}");
            ExitCode::FAILURE
        }
    }
}
