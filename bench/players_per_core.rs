//! Players per core: the most bots the live mesh carries with tick p99 under the budget (33 ms
//! at 30 Hz), on 1 core and on 2 cores in one run, and the 2-core/1-core ratio.
//!
//! Run: cargo bench --bench players_per_core -- [SECONDS_PER_TRIAL] [--json PATH]
//!      [--against BIN]... [--at CORES:PLAYERS,...] [--rounds R]
//!
//! With `--against`, no search: each `--at` point (default 1:10000,2:16000) runs on this build and
//! on every other players_per_core bench binary named (built from another commit), alternating,
//! `R` rounds (default 3), and the median tick p50 and p99 of each build are compared. Each of
//! those trials is `BIN SECONDS --one CORES:PLAYERS`, which runs one trial and prints one JSON line.
//!
//! Each trial runs the mesh for the given seconds (the first fifth is warm-up and not counted)
//! and passes if tick p99 is under budget and the audit is clean. The search doubles the players
//! until a trial fails, then bisects to within 10%.

use std::time::Duration;

use serde_json::{json, Value};
use shardmesh::runtime::mesh::{run, MeshConfig, MeshSummary};
use side_by_side::{median, run_binary, write_json};

// The allocator the shardmesh binary runs with, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(dead_code)]
mod side_by_side;

const BUDGET_MS: f64 = 33.0;

/// One trial: the mesh for `secs` seconds, the first fifth warm-up.
fn run_trial(cores: usize, players: usize, secs: f64) -> MeshSummary {
    let cfg = MeshConfig {
        warmup: Duration::from_secs_f64(secs / 5.0),
        seed: 7,
        ..MeshConfig::bots(cores, players, Duration::from_secs_f64(secs))
    };
    run(cfg).expect("the mesh starts")
}

fn clean(s: &MeshSummary) -> bool {
    s.audit_error.is_none() && s.lost_entities == 0 && s.duplicate_entities == 0
}

/// A trial passes if it ticked, its audit is clean and tick p99 is under budget.
fn passed(s: &MeshSummary) -> bool {
    clean(s) && s.ticks > 0 && s.tick_p99_ms < BUDGET_MS
}

/// One trial, as JSON: cores, players, tick p50 and p99, whether the audit was clean and the
/// trial passed.
fn trial_json(cores: usize, players: usize, secs: f64) -> Value {
    let s = run_trial(cores, players, secs);
    json!({
        "cores": cores,
        "players": players,
        "ticks": s.ticks,
        "tick_p50_ms": s.tick_p50_ms,
        "tick_p99_ms": s.tick_p99_ms,
        "clean": clean(&s),
        "pass": passed(&s),
    })
}

/// The search's trials, as JSON rows, and its progress.
struct Trials {
    rows: Vec<Value>,
    progress: shardmesh::progress::Progress,
}

/// One trial of the search, printed and recorded in `trials`: passed, p50, p99.
fn trial(cores: usize, players: usize, secs: f64, trials: &mut Trials) -> (bool, f64, f64) {
    let s = run_trial(cores, players, secs);
    let (clean, ok) = (clean(&s), passed(&s));
    trials.progress.advance(!ok);
    trials.rows.push(json!({
        "cores": cores,
        "players": players,
        "ticks": s.ticks,
        "tick_p50_ms": s.tick_p50_ms,
        "tick_p99_ms": s.tick_p99_ms,
        "tick_max_ms": s.tick_max_ms,
        "handoffs": s.handoffs,
        "clean": clean,
        "pass": ok,
    }));
    println!(
        "  cores={cores} players={players:<6} p50={:>6.2}ms p99={:>6.2}ms max={:>6.2}ms per-core p99={:?} held={:?} handoffs={} transfers={} audit={} -> {}",
        s.tick_p50_ms,
        s.tick_p99_ms,
        s.tick_max_ms,
        s.tick_p99_ms_per_core.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>(),
        s.held_per_core,
        s.handoffs,
        s.transfers,
        if clean { "clean" } else { "FAILED" },
        if ok { "pass" } else { "fail" }
    );
    (ok, s.tick_p50_ms, s.tick_p99_ms)
}

fn search(cores: usize, secs: f64, trials: &mut Trials) -> usize {
    let mut good = 0;
    let mut players = 2000 * cores;
    let bad = loop {
        if trial(cores, players, secs, trials).0 {
            good = players;
            players *= 2;
        } else {
            break players;
        }
        if players > 400_000 {
            return good;
        }
    };
    let (mut lo, mut hi) = (good, bad);
    while hi - lo > hi / 10 {
        let mid = (lo + hi) / 2;
        if trial(cores, mid, secs, trials).0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

fn point(text: &str) -> (usize, usize) {
    let (c, p) = text.split_once(':').expect("CORES:PLAYERS");
    (c.parse().expect("cores"), p.parse().expect("players"))
}

/// Builds side by side at fixed points; false if any trial did not run or was not clean.
fn side_by_side(secs: f64, against: &[String], at: &[(usize, usize)], rounds: usize, json_path: &str) -> bool {
    let this = std::env::current_exe().expect("this binary's path").display().to_string();
    let bins: Vec<String> = std::iter::once(this).chain(against.iter().cloned()).collect();
    println!(
        "players_per_core side by side: {} builds, {rounds} rounds, {secs} s trials (build 0 is this one)",
        bins.len()
    );
    for (i, b) in bins.iter().enumerate() {
        println!("  build {i}: {b}");
    }
    let mut ok = true;
    let mut runs: Vec<(usize, (usize, usize), Value)> = Vec::new();
    let progress = shardmesh::progress::Progress::new("trials", (rounds * at.len() * bins.len()) as u64);
    for round in 0..rounds {
        for &(cores, players) in at {
            for k in 0..bins.len() {
                let i = (k + round) % bins.len();
                match run_binary(&bins[i], secs, &format!("{cores}:{players}"), "players_per_core") {
                    Ok(v) => {
                        println!(
                            "  round {round} build {i} cores={cores} players={players} p50={:.2}ms p99={:.2}ms clean={}",
                            v["tick_p50_ms"].as_f64().unwrap_or(0.0),
                            v["tick_p99_ms"].as_f64().unwrap_or(0.0),
                            v["clean"]
                        );
                        let this_ok = v["clean"].as_bool() == Some(true) && v["ticks"].as_u64().unwrap_or(0) > 0;
                        progress.advance(!this_ok);
                        ok &= this_ok;
                        runs.push((i, (cores, players), v));
                    }
                    Err(e) => {
                        println!("  round {round} build {i} cores={cores} players={players}: FAILED: {e}");
                        progress.advance(true);
                        ok = false;
                    }
                }
            }
        }
    }
    progress.finish();
    let mut results = Vec::new();
    let points: Vec<String> = at.iter().map(|(c, p)| format!("{c}:{p}")).collect();
    let others: String = against.iter().map(|b| format!(" --against {b}")).collect();
    let command =
        format!("cargo bench --bench players_per_core -- {secs} --at {}{others} --rounds {rounds}", points.join(","));
    println!("medians (tick p50 / p99, ms):");
    for &(cores, players) in at {
        let mut row = format!("  cores={cores} players={players:<6}");
        for (i, bin) in bins.iter().enumerate() {
            let of = |key: &str| -> Vec<f64> {
                runs.iter()
                    .filter(|(b, p, _)| *b == i && *p == (cores, players))
                    .filter_map(|(_, _, v)| v[key].as_f64())
                    .collect()
            };
            let (p50, p99) = (median(of("tick_p50_ms")), median(of("tick_p99_ms")));
            row += &format!("  build {i}: {p50:.2} / {p99:.2} (n={})", of("tick_p99_ms").len());
            results.push(json!({"build": i, "bin": bin, "cores": cores, "players": players, "tick_p50_ms": p50, "tick_p99_ms": p99, "runs": of("tick_p99_ms")}));
        }
        println!("{row}");
    }
    write_json(
        json_path,
        &json!({"bench": "players_per_core", "command": command, "seconds": secs, "side_by_side": results}),
    );
    ok
}

fn main() {
    let mut secs: f64 = 15.0;
    let (mut json_path, mut against, mut at, mut rounds, mut one) =
        ("target/bench-players_per_core.json".to_string(), Vec::new(), vec![(1, 10_000), (2, 16_000)], 3, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--json" => json_path = value("--json"),
            "--against" => against.push(value("--against")),
            "--at" => at = value("--at").split(',').map(point).collect(),
            "--rounds" => rounds = value("--rounds").parse().expect("a number of rounds"),
            "--one" => one = Some(point(&value("--one"))),
            "--bench" => {}
            other => {
                if let Ok(s) = other.parse() {
                    secs = s;
                }
            }
        }
    }
    if let Some((cores, players)) = one {
        let v = trial_json(cores, players, secs);
        println!("{v}");
        std::process::exit(if v["clean"].as_bool() == Some(true) { 0 } else { 1 });
    }
    if !against.is_empty() {
        let ok = side_by_side(secs, &against, &at, rounds, &json_path);
        let points: Vec<String> = at.iter().map(|(c, p)| format!("{c}:{p}")).collect();
        let others: String = against.iter().map(|b| format!(" --against {b}")).collect();
        println!(
            "reproduce: cargo bench --bench players_per_core -- {secs} --at {}{others} --rounds {rounds}",
            points.join(",")
        );
        if !ok {
            println!("FAILED: a trial did not run or its audit was not clean");
            std::process::exit(1);
        }
        return;
    }
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("players_per_core: tick budget {BUDGET_MS} ms (30 Hz), {secs} s trials, 2 servers per core, {available} cores here");
    let mut trials = Trials { rows: Vec::new(), progress: shardmesh::progress::Progress::open_ended("trials") };
    let one = search(1, secs, &mut trials);
    let two = if available >= 2 { search(2, secs, &mut trials) } else { 0 };
    trials.progress.finish();
    println!(
        "result: 1 core {one} players; 2 cores {two} players ({} per core); 2-core/1-core ratio {:.2}",
        two / 2,
        two as f64 / one.max(1) as f64
    );
    write_json(
        &json_path,
        &json!({
            "bench": "players_per_core",
            "command": format!("cargo bench --bench players_per_core -- {secs}"),
            "seconds": secs,
            "budget_ms": BUDGET_MS,
            "one_core_players": one,
            "two_core_players": two,
            "trials": trials.rows,
        }),
    );
    println!("reproduce: cargo bench --bench players_per_core -- {secs}");
    if one == 0 {
        println!("FAILED: no trial passed on one core");
        std::process::exit(1);
    }
}
