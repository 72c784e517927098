//! Ring throughput and latency between two pinned cores, side by side with crossbeam-channel in
//! the same run: 64-byte and 1 KiB messages copied across, and a real protocol message
//! serialized with rkyv into the ring and read in place.
//!
//! Run: cargo bench --bench ring -- [MESSAGES]
//!
//! Expected cost: a 64-byte message is 80 bytes of ring (16 of header) written on one core and
//! read on the other; the cache lines move between cores once each, about 1.25 lines a message,
//! with the head and tail published once per batch of 32. At some 10-20 ns per line moved that is
//! 15-30 M messages/s per pair; crossbeam's bounded channel takes a CAS and a slot handshake per
//! message, some 30-60 ns: 15-30 M/s at best, less when both ends contend.

use std::hint::black_box;
use std::time::Instant;

use shardmesh::protocol::{Incarnation, ServerMsg, ToReplication};
use shardmesh::runtime::ring::{access_trusted, Producer, Ring, RingError};
use shardmesh::world::ServerId;
use side_by_side::{json_path, write_json};

#[allow(dead_code)]
mod side_by_side;

const BATCH: usize = 32;

/// The machine's cores, read once before anything is pinned: read later, from a pinned thread,
/// the list would hold only that thread's core.
static CORES: std::sync::OnceLock<Vec<core_affinity::CoreId>> = std::sync::OnceLock::new();

fn pin(core: usize) {
    let cores = CORES.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default());
    if let Some(id) = cores.get(core % cores.len().max(1)) {
        assert!(core_affinity::set_for_current(*id), "could not pin to core {}", id.id);
    }
}

/// Messages per second through the ring between the two pinned cores: the producer pushes
/// message `i` with `push` (retrying while the ring is full, flushing every `BATCH`), the
/// consumer hands every payload to `read`.
fn ring_run(
    count: u64,
    push: impl Fn(&mut Producer, u64) -> Result<(), RingError> + Send + 'static,
    mut read: impl FnMut(&[u8]),
) -> f64 {
    let (mut tx, mut rx) = Ring::anonymous(1 << 20).unwrap().split();
    let began = Instant::now();
    let producer = std::thread::spawn(move || {
        pin(0);
        for i in 0..count {
            while let Err(RingError::Full) = push(&mut tx, i) {
                tx.flush();
                std::hint::spin_loop();
            }
            if i as usize % BATCH == BATCH - 1 {
                tx.flush();
            }
        }
        tx.flush();
    });
    pin(1);
    let mut seen = 0u64;
    while seen < count {
        seen += rx.read_batch(1024, &mut read).unwrap() as u64;
    }
    producer.join().unwrap();
    count as f64 / began.elapsed().as_secs_f64()
}

/// Payloads of `N` bytes copied in and out.
fn ring_throughput<const N: usize>(count: u64) -> f64 {
    let mut sum = 0u64;
    let rate = ring_run(count, |tx, _| tx.try_push_bytes(&[7u8; N]), |p| sum += p[N - 1] as u64);
    black_box(sum);
    rate
}

fn crossbeam_throughput<const N: usize>(count: u64) -> f64 {
    let (tx, rx) = crossbeam_channel::bounded::<[u8; N]>(4096);
    let began = Instant::now();
    let producer = std::thread::spawn(move || {
        pin(0);
        let payload = [7u8; N];
        for _ in 0..count {
            tx.send(payload).unwrap();
        }
    });
    pin(1);
    let mut sum = 0u64;
    for _ in 0..count {
        sum += rx.recv().unwrap()[N - 1] as u64;
    }
    producer.join().unwrap();
    black_box(sum);
    count as f64 / began.elapsed().as_secs_f64()
}

/// A heartbeat serialized with rkyv into the ring and read in place (no decode).
fn ring_rkyv_throughput(count: u64) -> (f64, usize) {
    let (mut sum, mut size) = (0u64, 0usize);
    let push = |tx: &mut Producer, i: u64| {
        let msg = ToReplication {
            server: ServerId(1),
            incarnation: Incarnation(1),
            body: ServerMsg::Heartbeat { sent_at_us: i },
        };
        tx.try_push(&msg)
    };
    let rate = ring_run(count, push, |p| {
        size = p.len();
        // SAFETY: the producer above wrote only `ToReplication` archives.
        let m = unsafe { access_trusted::<shardmesh::protocol::messages::ArchivedToReplication>(p) };
        sum += m.incarnation.0.to_native() as u64;
    });
    black_box(sum);
    (rate, size)
}

/// One-way latency from round trips of one 64-byte message (half the round trip): p50, p99 ns.
fn ring_latency(rounds: usize) -> (f64, f64) {
    let (mut ping_tx, mut ping_rx) = Ring::anonymous(1 << 16).unwrap().split();
    let (mut pong_tx, mut pong_rx) = Ring::anonymous(1 << 16).unwrap().split();
    let echo = std::thread::spawn(move || {
        pin(0);
        let mut done = 0;
        while done < rounds {
            let n = ping_rx.read_batch(1, |p| pong_tx.try_push_bytes(p).unwrap()).unwrap();
            if n > 0 {
                pong_tx.flush();
                done += n;
            }
        }
    });
    pin(1);
    let payload = [1u8; 64];
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        ping_tx.try_push_bytes(&payload).unwrap();
        ping_tx.flush();
        while pong_rx.read_batch(1, |_| {}).unwrap() == 0 {
            std::hint::spin_loop();
        }
        samples.push(t.elapsed().as_nanos() as f64 / 2.0);
    }
    echo.join().unwrap();
    percentiles(samples)
}

fn crossbeam_latency(rounds: usize) -> (f64, f64) {
    let (ping_tx, ping_rx) = crossbeam_channel::bounded::<[u8; 64]>(16);
    let (pong_tx, pong_rx) = crossbeam_channel::bounded::<[u8; 64]>(16);
    let echo = std::thread::spawn(move || {
        pin(0);
        for _ in 0..rounds {
            pong_tx.send(ping_rx.recv().unwrap()).unwrap();
        }
    });
    pin(1);
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        ping_tx.send([1u8; 64]).unwrap();
        pong_rx.recv().unwrap();
        samples.push(t.elapsed().as_nanos() as f64 / 2.0);
    }
    echo.join().unwrap();
    percentiles(samples)
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let count: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5_000_000);
    let cores = CORES.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default()).len();
    println!(
        "ring: {count} messages per run, median of 3 runs, producer on core 0, consumer on core 1 ({cores} cores)"
    );
    let m = |f: &dyn Fn() -> f64| median((0..3).map(|_| f()).collect());
    let r64 = m(&|| ring_throughput::<64>(count));
    let c64 = m(&|| crossbeam_throughput::<64>(count));
    let r1k = m(&|| ring_throughput::<1024>(count / 4));
    let c1k = m(&|| crossbeam_throughput::<1024>(count / 4));
    let mut size = 0;
    let rk = median(
        (0..3)
            .map(|_| {
                let (rate, s) = ring_rkyv_throughput(count);
                size = s;
                rate
            })
            .collect(),
    );
    println!("  {:<34} {:>10} {:>10} {:>8}", "throughput (M msgs/s)", "ring", "crossbeam", "ratio");
    println!("  {:<34} {:>10.1} {:>10.1} {:>7.2}x", "64 B, batches of 32", r64 / 1e6, c64 / 1e6, r64 / c64);
    println!("  {:<34} {:>10.1} {:>10.1} {:>7.2}x", "1 KiB, batches of 32", r1k / 1e6, c1k / 1e6, r1k / c1k);
    println!("  {:<34} {:>10.1} {:>10} {:>8}", format!("rkyv heartbeat ({size} B) in place"), rk / 1e6, "-", "-");
    let (rl50, rl99) = ring_latency(100_000);
    let (cl50, cl99) = crossbeam_latency(100_000);
    println!("  {:<34} {:>10} {:>10}", "one-way latency, 64 B (ns)", "ring", "crossbeam");
    println!("  {:<34} {:>10.0} {:>10.0}", "p50", rl50, cl50);
    println!("  {:<34} {:>10.0} {:>10.0}", "p99", rl99, cl99);
    let command = format!("cargo bench --bench ring -- {count}");
    write_json(
        &json_path("ring"),
        &serde_json::json!({
            "bench": "ring",
            "command": command,
            "messages": count,
            "throughput": [
                {"payload": "64 B", "channel": "ring", "m_msgs_per_s": r64 / 1e6},
                {"payload": "64 B", "channel": "crossbeam", "m_msgs_per_s": c64 / 1e6},
                {"payload": "1 KiB", "channel": "ring", "m_msgs_per_s": r1k / 1e6},
                {"payload": "1 KiB", "channel": "crossbeam", "m_msgs_per_s": c1k / 1e6},
                {"payload": format!("rkyv heartbeat {size} B"), "channel": "ring", "m_msgs_per_s": rk / 1e6},
            ],
            "latency": [
                {"channel": "ring", "p50_ns": rl50, "p99_ns": rl99},
                {"channel": "crossbeam", "p50_ns": cl50, "p99_ns": cl99},
            ],
        }),
    );
    println!("reproduce: {command}");
}
