//! Simulator throughput: seeds per second on one thread and on every core, with the work per
//! seed (ticks, messages, handoffs) so the figure can be checked against what it should cost.
//!
//! Run: cargo bench --bench sim_seeds -- [SEEDS]

use std::time::Instant;

use shardmesh::sim::{SimConfig, Simulator};
use side_by_side::{json_path, write_json};

#[allow(dead_code)]
mod side_by_side;

fn run(seeds: u64, threads: usize, progress: &shardmesh::progress::Progress) -> (f64, u64, u64, u64) {
    // (seconds, ticks, handoffs, packets)
    let next = std::sync::atomic::AtomicU64::new(0);
    let totals = std::sync::Mutex::new((0u64, 0u64, 0u64));
    let began = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seed >= seeds {
                    break;
                }
                let o = Simulator::run(SimConfig::new(seed));
                progress.advance(o.failure.is_some());
                assert!(o.failure.is_none(), "seed {seed} failed: {:?}", o.failure);
                let mut t = totals.lock().unwrap();
                t.0 += o.stats.ticks;
                t.1 += o.stats.handoffs;
                t.2 += o.stats.packets;
            });
        }
    });
    let (ticks, handoffs, packets) = totals.into_inner().unwrap();
    (began.elapsed().as_secs_f64(), ticks, handoffs, packets)
}

fn main() {
    let seeds: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(400);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("sim_seeds: {seeds} seeds, 300 fault ticks + 120 calm ticks each, {cores} cores");
    let mut runs = Vec::new();
    let progress = shardmesh::progress::Progress::new("seeds", 2 * seeds);
    for threads in [1, cores] {
        let (secs, ticks, handoffs, packets) = run(seeds, threads, &progress);
        runs.push(serde_json::json!({
            "threads": threads,
            "seeds_per_s": seeds as f64 / secs,
            "us_per_tick": secs * 1e6 / ticks as f64 * threads as f64,
            "packets_per_tick": packets as f64 / ticks as f64,
            "ticks": ticks,
            "handoffs": handoffs,
        }));
        println!(
            "  threads={threads:<3} {:>8.1} seeds/s  {:>7.2} ms/seed  {:>6.1} us/tick  {:>5.1} packets/tick  ({} ticks, {} handoffs)",
            seeds as f64 / secs,
            secs * 1e3 / seeds as f64 * threads as f64,
            secs * 1e6 / ticks as f64 * threads as f64,
            packets as f64 / ticks as f64,
            ticks,
            handoffs
        );
    }
    progress.finish();
    let command = format!("cargo bench --bench sim_seeds -- {seeds}");
    write_json(
        &json_path("sim_seeds"),
        &serde_json::json!({"bench": "sim_seeds", "command": command, "seeds": seeds, "cores": cores, "runs": runs}),
    );
    println!("reproduce: {command}");
}
