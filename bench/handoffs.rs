//! Handoffs per second between two cores: the live mesh's `BorderRun` scenario, a corridor of
//! regions owned in turn by a server on core 0 and one on core 1, with NPCs flying along it at
//! 1,500 m/s, so every NPC crosses into the other core's region every tick. Ticks run back to
//! back (free-running: each tick one tick of game time, the cores in lockstep). Each handoff is
//! the whole protocol: the server gives up the entity, its slice commits it and transfers the
//! record through the shared-memory ring, the other slice grants it, the other server adopts it.
//! The audit at the end counts lost and duplicated ones.
//!
//! Run: cargo bench --bench handoffs -- [SECONDS] [--runners N,N,...] [--json PATH]
//!      [--against BIN]... [--rounds R]
//!
//! With `--against`, each runner count runs on this build and on every other handoffs bench
//! binary named (built from another commit, e.g. `cargo bench --bench handoffs --no-run` there),
//! alternating, `R` rounds (default 3), and the medians are compared: builds side by side on
//! the same machine's noise. Each of those runs is `BIN SECONDS --one RUNNERS`, which measures
//! once and prints one JSON line.

use std::time::Duration;

use serde_json::{json, Value};
use shardmesh::runtime::mesh::{run, MeshConfig, Scenario};
use side_by_side::{median, run_binary, write_json};

#[allow(dead_code)]
mod side_by_side;

// The allocator the shardmesh binary runs with, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    secs: f64,
    runners: Vec<usize>,
    json: String,
    against: Vec<String>,
    rounds: usize,
    one: Option<usize>,
}

fn args() -> Args {
    let mut a = Args {
        secs: 4.0,
        runners: vec![1_000, 4_000, 16_000, 64_000],
        json: "target/bench-handoffs.json".into(),
        against: Vec::new(),
        rounds: 3,
        one: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--runners" => {
                a.runners = value("--runners").split(',').map(|n| n.parse().expect("runner counts")).collect()
            }
            "--json" => a.json = value("--json"),
            "--against" => a.against.push(value("--against")),
            "--rounds" => a.rounds = value("--rounds").parse().expect("a number of rounds"),
            "--one" => a.one = Some(value("--one").parse().expect("a runner count")),
            "--bench" => {}
            other => {
                if let Ok(secs) = other.parse() {
                    a.secs = secs;
                }
            }
        }
    }
    a
}

/// One run of `runners` NPCs for `secs` seconds.
fn measure(runners: usize, secs: f64) -> Value {
    let cfg = MeshConfig {
        warmup: Duration::from_secs_f64(secs / 4.0),
        // Free-running: every tick at once, each one tick of game time.
        tick: Duration::ZERO,
        servers_per_core: 1,
        seed: 3,
        bot_activity: 0.0,
        scenario: Scenario::BorderRun,
        handoffs_per_tick_max: Some(usize::MAX),
        ..MeshConfig::bots(2, runners, Duration::from_secs_f64(secs))
    };
    let s = run(cfg).expect("the mesh starts");
    json!({
        "runners": runners,
        "seconds": s.duration_s,
        "handoffs": s.handoffs,
        "handoffs_per_s": s.handoffs as f64 / s.duration_s,
        "transfers_per_s": s.transfers as f64 / s.duration_s,
        "ticks_per_s_per_core": s.ticks as f64 / (s.duration_s * 0.75),
        "tick_p50_ms": s.tick_p50_ms,
        "held_per_core": s.held_per_core,
        "server_restarts": s.server_restarts,
        "servers_declared_dead": s.servers_declared_dead,
        "lost": s.lost_entities,
        "duplicated": s.duplicate_entities,
        "audit": s.audit_error.clone().unwrap_or_else(|| "clean".into()),
    })
}

fn line(label: &str, v: &Value) -> String {
    format!(
        "  {label}runners={:<6} {:>6.3} M handoffs/s  transfers/s={:>6.3} M  ticks/s/core={:>7.0}  tick p50={:.3} ms  held={}  restarts={} lost={} duplicated={} audit={}",
        v["runners"],
        v["handoffs_per_s"].as_f64().unwrap_or(0.0) / 1e6,
        v["transfers_per_s"].as_f64().unwrap_or(0.0) / 1e6,
        v["ticks_per_s_per_core"].as_f64().unwrap_or(0.0),
        v["tick_p50_ms"].as_f64().unwrap_or(0.0),
        v["held_per_core"],
        v["server_restarts"],
        v["lost"],
        v["duplicated"],
        v["audit"].as_str().unwrap_or("?"),
    )
}

/// A run that handed nothing off, or lost or duplicated anything, failed.
fn failed(v: &Value) -> bool {
    v["handoffs"].as_u64().unwrap_or(0) == 0
        || v["lost"].as_u64() != Some(0)
        || v["duplicated"].as_u64() != Some(0)
        || v["audit"].as_str() != Some("clean")
}

fn main() {
    let a = args();
    if let Some(runners) = a.one {
        let v = measure(runners, a.secs);
        println!("{v}");
        std::process::exit(if failed(&v) { 1 } else { 0 });
    }
    let mut results = Vec::new();
    let mut any_failed = false;
    if a.against.is_empty() {
        println!("handoffs: 2 cores, 1 server each, ticks back to back, {} s per run", a.secs);
        let progress = shardmesh::progress::Progress::new("runs", a.runners.len() as u64);
        for &runners in &a.runners {
            let v = measure(runners, a.secs);
            println!("{}", line("", &v));
            any_failed |= failed(&v);
            progress.advance(failed(&v));
            results.push(v);
        }
        progress.finish();
    } else {
        let this = std::env::current_exe().expect("this binary's path").display().to_string();
        let bins: Vec<String> = std::iter::once(this).chain(a.against.iter().cloned()).collect();
        println!(
            "handoffs side by side: {} builds, {} rounds, {} s per run (build 0 is this one)",
            bins.len(),
            a.rounds,
            a.secs
        );
        for (i, b) in bins.iter().enumerate() {
            println!("  build {i}: {b}");
        }
        let mut runs: Vec<(usize, usize, Value)> = Vec::new();
        let progress = shardmesh::progress::Progress::new("runs", (a.rounds * a.runners.len() * bins.len()) as u64);
        for round in 0..a.rounds {
            for &runners in &a.runners {
                // Each round starts with a different build, so none always runs first.
                for k in 0..bins.len() {
                    let i = (k + round) % bins.len();
                    match run_binary(&bins[i], a.secs, &runners.to_string(), "handoffs") {
                        Ok(v) => {
                            println!("{}", line(&format!("round {round} build {i} "), &v));
                            any_failed |= failed(&v);
                            progress.advance(failed(&v));
                            runs.push((i, runners, v));
                        }
                        Err(e) => {
                            println!("  round {round} build {i} runners={runners}: FAILED: {e}");
                            any_failed = true;
                            progress.advance(true);
                        }
                    }
                }
            }
        }
        progress.finish();
        println!("medians (M handoffs/s):");
        for &runners in &a.runners {
            let mut row = format!("  runners={runners:<6}");
            for (i, _) in bins.iter().enumerate() {
                let xs: Vec<f64> = runs
                    .iter()
                    .filter(|(b, r, _)| *b == i && *r == runners)
                    .filter_map(|(_, _, v)| v["handoffs_per_s"].as_f64())
                    .collect();
                let m = median(xs.clone());
                row += &format!("  build {i}: {:.3} (n={})", m / 1e6, xs.len());
                results.push(
                    json!({"build": i, "bin": bins[i], "runners": runners, "median_handoffs_per_s": m, "runs": xs}),
                );
            }
            println!("{row}");
        }
    }
    let runners: Vec<String> = a.runners.iter().map(|r| r.to_string()).collect();
    let mut against: String = a.against.iter().map(|b| format!(" --against {b}")).collect();
    if !a.against.is_empty() {
        against += &format!(" --rounds {}", a.rounds);
    }
    let command = format!("cargo bench --bench handoffs -- {} --runners {}{against}", a.secs, runners.join(","));
    let out = json!({ "bench": "handoffs", "command": command, "seconds": a.secs, "results": results });
    write_json(&a.json, &out);
    println!("reproduce: {command}");
    if any_failed {
        println!("FAILED: a run handed nothing off, lost or duplicated entities, or did not run");
        std::process::exit(1);
    }
}
