//! Simulator throughput: seeds per second on one thread and on every core, with the work per
//! seed (ticks, messages, handoffs) so the figure can be checked against what it should cost.
//!
//! Run: cargo bench --bench sim_seeds -- [SEEDS]

use std::time::Instant;

use shardmesh::sim::{SimConfig, Simulator};

fn run(seeds: u64, threads: usize) -> (f64, u64, u64, u64) {
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
    for threads in [1, cores] {
        let (secs, ticks, handoffs, packets) = run(seeds, threads);
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
    println!("reproduce: cargo bench --bench sim_seeds -- {seeds}");
}
