//! Handoffs per second between two cores: the live mesh's `BorderRun` scenario, a corridor of
//! regions owned in turn by a server on core 0 and one on core 1, with NPCs flying along it at
//! 1,500 m/s, so every NPC crosses into the other core's region every tick. Ticks run back to
//! back (no 30 Hz wait). Each handoff is the whole protocol: the server gives up the entity, its
//! slice commits it and transfers the record through the shared-memory ring, the other slice
//! grants it, the other server adopts it. The audit at the end counts lost and duplicated ones.
//!
//! Run: cargo bench --bench handoffs -- [SECONDS]

use std::time::Duration;

use shardmesh::runtime::mesh::{run, MeshConfig, Scenario};

fn main() {
    let secs: f64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(4.0);
    println!("handoffs: 2 cores, 1 server each, ticks back to back, {secs} s per run");
    for runners in [1_000usize, 4_000, 16_000, 64_000] {
        let cfg = MeshConfig {
            warmup: Duration::from_secs_f64(secs / 4.0),
            tick: Duration::from_micros(1),
            servers_per_core: 1,
            seed: 3,
            bot_activity: 0.0,
            scenario: Scenario::BorderRun,
            handoffs_per_tick_max: Some(usize::MAX),
            ..MeshConfig::bots(2, runners, Duration::from_secs_f64(secs))
        };
        let s = run(cfg).expect("the mesh starts");
        println!(
            "  runners={runners:<6} handoffs={:<9} {:>6.3} M handoffs/s  transfers/s={:>6.3} M  ticks/s/core={:>7.0}  tick p50={:.3} ms  lost={} duplicated={} audit={}",
            s.handoffs,
            s.handoffs as f64 / s.duration_s / 1e6,
            s.transfers as f64 / s.duration_s / 1e6,
            s.ticks as f64 / (s.duration_s * 0.75),
            s.tick_p50_ms,
            s.lost_entities,
            s.duplicate_entities,
            s.audit_error.as_deref().unwrap_or("clean"),
        );
    }
    println!("reproduce: cargo bench --bench handoffs -- {secs}");
}
