//! Crowd comes and goes: players go about a two-planet world, rush the tavern (from a fifth of
//! the run to three fifths), then scatter. The dynamic mesh (servers started and retired by the
//! work the cores measure, regions cut and merged) and the static mesh, one after the other, the
//! same seed; a table of both over time: servers, regions, tick p99, time dilation. With
//! `--leave SHARE`, that share of the players log out when the rush ends (a crowd that leaves
//! the game after an event), and the rest scatter.
//!
//! Run: cargo bench --bench crowd -- [SECONDS] [--players N] [--cores C] [--leave SHARE]
//!      [--servers-max-per-core N] [--json PATH]

use std::time::Duration;

use serde_json::json;
use shardmesh::runtime::mesh::{run, MeshConfig, MeshSummary, Sample, Scenario};
use side_by_side::write_json;

// The allocator the shardmesh binary runs with, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(dead_code)]
mod side_by_side;

fn trial(cores: usize, players: usize, secs: f64, leave: f64, servers_max: Option<usize>) -> MeshSummary {
    let cfg = MeshConfig {
        warmup: Duration::from_secs(2),
        seed: 7,
        scenario: Scenario::Rush,
        leave_after_rush: leave,
        static_mesh: servers_max.is_none(),
        servers_max,
        ..MeshConfig::bots(cores, players, Duration::from_secs_f64(secs))
    };
    run(cfg).expect("the mesh starts")
}

fn clean(s: &MeshSummary) -> bool {
    s.audit_error.is_none() && s.lost_entities == 0 && s.duplicate_entities == 0 && !s.timeline.is_empty()
}

fn at(timeline: &[Sample], t: f64) -> Option<&Sample> {
    timeline.iter().min_by(|a, b| (a.t_s - t).abs().total_cmp(&(b.t_s - t).abs()))
}

fn main() {
    let (mut secs, mut players, mut servers_max_per_core, mut leave) = (90.0f64, 6000usize, 4usize, 0.0f64);
    let mut json_path = "target/bench-crowd.json".to_string();
    let mut cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(2);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--json" => json_path = value("--json"),
            "--players" => players = value("--players").parse().expect("a number of players"),
            "--cores" => cores = value("--cores").parse().expect("a number of cores"),
            "--leave" => leave = value("--leave").parse().expect("a share of the players"),
            "--servers-max-per-core" => {
                servers_max_per_core = value("--servers-max-per-core").parse().expect("a number")
            }
            "--bench" => {}
            other => {
                if let Ok(s) = other.parse() {
                    secs = s;
                }
            }
        }
    }
    println!(
        "crowd: {players} players on {cores} cores for {secs} s; the rush from {:.0} s to {:.0} s{}; dynamic (up to {} servers a core) then static (2 a core)",
        secs * 0.2,
        secs * 0.6,
        if leave > 0.0 { format!(", then {:.0}% log out", leave * 100.0) } else { String::new() },
        servers_max_per_core
    );
    let progress = shardmesh::progress::Progress::new("runs", 2);
    let dynamic = trial(cores, players, secs, leave, Some(cores * servers_max_per_core));
    progress.advance(!clean(&dynamic));
    let fixed = trial(cores, players, secs, leave, None);
    progress.advance(!clean(&fixed));
    progress.finish();
    println!(
        "{:>5} {:<7} {:>7} | {:>7} {:>7} {:>7} {:>7} {:>6} {:>6} {:>5} {:>8} {:>8} | {:>5} {:>8} {:>8}",
        "t (s)",
        "phase",
        "players",
        "servers",
        "started",
        "retired",
        "regions",
        "splits",
        "merges",
        "work",
        "p99 (ms)",
        "dilation",
        "work",
        "static",
        "dilation"
    );
    let mut t = 5.0;
    while t <= secs {
        let phase = if t < secs * 0.2 {
            "about"
        } else if t < secs * 0.6 {
            "rush"
        } else {
            "scatter"
        };
        if let (Some(d), Some(f)) = (at(&dynamic.timeline, t), at(&fixed.timeline, t)) {
            let dil = |s: &Sample| s.time_dilation.map_or("-".to_string(), |d| format!("{d:.2}"));
            let work = |s: &Sample| s.work.map_or("-".to_string(), |w| format!("{w:.2}"));
            println!(
                "{:>5.0} {:<7} {:>7} | {:>7} {:>7} {:>7} {:>7} {:>6} {:>6} {:>5} {:>8.1} {:>8} | {:>5} {:>8.1} {:>8}",
                d.t_s,
                phase,
                d.players,
                d.servers,
                d.servers_started,
                d.servers_retired,
                d.regions,
                d.regions_split,
                d.regions_merged,
                work(d),
                d.tick_p99_ms,
                dil(d),
                work(f),
                f.tick_p99_ms,
                dil(f)
            );
        }
        t += 5.0;
    }
    for (name, s) in [("dynamic", &dynamic), ("static", &fixed)] {
        println!(
            "{name}: tick p50 {:.2} ms p99 {:.2} ms max {:.2} ms; servers started {} retired {}; regions split {} (rooms cut {}) merged {} moved {}; time dilation min {}; lost {} duplicated {}; audit {}",
            s.tick_p50_ms,
            s.tick_p99_ms,
            s.tick_max_ms,
            s.servers_started,
            s.servers_retired,
            s.regions_split,
            s.rooms_cut,
            s.regions_merged,
            s.regions_moved,
            s.time_dilation_min.map_or("-".to_string(), |d| format!("{d:.2}")),
            s.lost_entities,
            s.duplicate_entities,
            if clean(s) { "clean" } else { "FAILED" }
        );
    }
    let command = format!(
        "cargo bench --bench crowd -- {secs} --players {players} --cores {cores} --servers-max-per-core {servers_max_per_core} --leave {leave}"
    );
    write_json(
        &json_path,
        &json!({"bench": "crowd", "command": command, "seconds": secs, "players": players, "leave": leave, "cores": cores, "servers_max_per_core": servers_max_per_core, "dynamic": dynamic, "static": fixed}),
    );
    println!("reproduce: {command}");
    if !clean(&dynamic) || !clean(&fixed) {
        println!("FAILED: an audit was not clean, or a run recorded nothing");
        std::process::exit(1);
    }
}
