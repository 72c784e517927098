//! Players per core: the most bots the live mesh carries with tick p99 under the budget (33 ms
//! at 30 Hz), on 1 core and on 2 cores in one run, and the 2-core/1-core ratio.
//!
//! Run: cargo bench --bench players_per_core -- [SECONDS_PER_TRIAL]
//!
//! Each trial runs the mesh for the given seconds (the first fifth is warm-up and not counted)
//! and passes if tick p99 is under budget and the audit is clean. The search doubles the players
//! until a trial fails, then bisects to within 10%.

use std::time::Duration;

use shardmesh::runtime::mesh::{run, MeshConfig};

const BUDGET_MS: f64 = 33.0;

fn trial(cores: usize, players: usize, secs: f64) -> (bool, f64, f64) {
    let cfg = MeshConfig {
        warmup: Duration::from_secs_f64(secs / 5.0),
        seed: 7,
        ..MeshConfig::bots(cores, players, Duration::from_secs_f64(secs))
    };
    let s = run(cfg).expect("the mesh starts");
    let clean = s.audit_error.is_none() && s.lost_entities == 0 && s.duplicate_entities == 0;
    let ok = clean && s.tick_p99_ms < BUDGET_MS;
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

fn search(cores: usize, secs: f64) -> usize {
    let mut good = 0;
    let mut players = 2000 * cores;
    let bad = loop {
        if trial(cores, players, secs).0 {
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
        if trial(cores, mid, secs).0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

fn main() {
    let secs: f64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(15.0);
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("players_per_core: tick budget {BUDGET_MS} ms (30 Hz), {secs} s trials, 2 servers per core, {available} cores here");
    let one = search(1, secs);
    let two = if available >= 2 { search(2, secs) } else { 0 };
    println!(
        "result: 1 core {one} players; 2 cores {two} players ({} per core); 2-core/1-core ratio {:.2}",
        two / 2,
        two as f64 / one.max(1) as f64
    );
    println!("reproduce: cargo bench --bench players_per_core -- {secs}");
}
