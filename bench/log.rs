//! The replication log, three figures:
//!
//! 1. Append throughput: a slice's group commits (1,000 entity writes a tick, serialized with
//!    rkyv and framed) appended through the memory-mapped log, against a plain sequential
//!    `write` of the same framed bytes to a file in the same directory, side by side, each ending
//!    with a sync so both reach the disk.
//! 2. Commit latency per durability mode: ticks at 30 Hz, from a tick's append until the flusher
//!    says it is durable.
//! 3. Recovery: a log holding a checkpoint of N entities and a tail of ticks, read back into a
//!    world; entities per second.
//!
//! Run: cargo bench --bench log -- [DIR] [--only append|latency|recovery] (default: a directory
//! under the system's temp dir; give one on the disk you care about).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glam::Vec3;
use shardmesh::log::{self as smlog, format, Batch, Disk, Durability, LogOp, OpenOptions, SliceLog};
use shardmesh::protocol::Committed;
use shardmesh::world::{Aabb, EntityId, EntityKind, EntityState, RegionMap};
use side_by_side::{json_path, write_json};

#[allow(dead_code)]
mod side_by_side;

const PUTS_PER_TICK: u32 = 1_000;

fn entity(i: u32, t: u64) -> Committed {
    let mut state = EntityState::new(EntityKind::Player, Vec3::new(i as f32, t as f32 * 0.1, 3.0));
    state.velocity = [1.0, 0.5, 0.0];
    state.changed_tick = shardmesh::Tick(t);
    Committed { id: EntityId::new(1, i), state, commit_seq: t }
}

fn tick_batch(t: u64) -> Batch {
    Batch { tick: shardmesh::Tick(t), ops: (0..PUTS_PER_TICK).map(|i| LogOp::Put(entity(i, t))).collect() }
}

fn map() -> RegionMap {
    RegionMap::kd_split(Aabb::new(Vec3::ZERO, Vec3::splat(4000.0)), 8)
}

fn open_fresh(dir: &std::path::Path, durability: Durability, world: u32) -> SliceLog {
    let _ = std::fs::remove_dir_all(dir);
    let media = Arc::new(Disk::open(dir).expect("bench directory"));
    let opts = OpenOptions {
        slices: 1,
        durability,
        segment_bytes: smlog::SEGMENT_BYTES,
        salvage: false,
        planted_replay_twice: false,
    };
    let opened = smlog::open(media, &opts, || (map(), (0..world).map(|i| entity(i, 1)).collect())).expect("opens");
    opened.logs.into_iter().next().expect("one slice")
}

/// One run: the log and the plain write of the same bytes, the log first if `log_first` (runs
/// alternate, so neither always pays for what the run before left the file system to do).
fn append_vs_write(root: &std::path::Path, ticks: u64, log_first: bool) -> (f64, f64, usize) {
    let batches: Vec<Batch> = (1..=ticks).map(tick_batch).collect();
    let mut framed = Vec::new();
    for (seq, b) in batches.iter().enumerate() {
        let payload = rkyv::to_bytes::<rkyv::rancor::Error>(b).expect("serializes");
        format::encode_frame(seq as u64, &payload, &mut framed);
    }
    let ((log_s, bytes, stalls), plain_s) = if log_first {
        let log = time_log(root, &batches);
        (log, time_plain(root, &framed))
    } else {
        let plain_s = time_plain(root, &framed);
        (time_log(root, &batches), plain_s)
    };
    assert_eq!(framed.len() as u64, bytes, "the same bytes");
    let mb = bytes as f64 / 1e6;
    (mb / log_s, mb / plain_s, stalls)
}

/// Lets the file system finish what earlier runs left it (freeing deleted files' blocks,
/// journal commits) before a timed part starts, so neither side pays for the other.
fn quiesce() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// The log: serialize, frame, copy into the mapping; roll segments; sync at the end.
/// Also counts the appends that took over a millisecond: a writer that caught up with the
/// flusher's page preparation waits on the kernel there.
fn time_log(root: &std::path::Path, batches: &[Batch]) -> (f64, u64, usize) {
    let dir = root.join("append");
    let mut log = open_fresh(&dir, Durability::Off, 0);
    quiesce();
    let before = log.bytes_appended;
    let began = Instant::now();
    let mut stalls = 0;
    for b in batches {
        let t = Instant::now();
        log.append(b).expect("append");
        log.commit(b.tick).expect("commit");
        stalls += (t.elapsed() > Duration::from_millis(1)) as usize;
    }
    let bytes = log.bytes_appended - before;
    log.close().expect("close syncs");
    let log_s = began.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    (log_s, bytes, stalls)
}

/// The same framed bytes, written with write(2) to one file, then fdatasync.
fn time_plain(root: &std::path::Path, framed: &[u8]) -> f64 {
    let path = root.join("plain.bin");
    let _ = std::fs::remove_file(&path);
    quiesce();
    let began = Instant::now();
    let mut file = std::fs::File::create(&path).expect("plain file");
    for chunk in framed.chunks(128 << 10) {
        file.write_all(chunk).expect("write");
    }
    file.sync_data().expect("fdatasync");
    let plain_s = began.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    plain_s
}

fn commit_latency(root: &std::path::Path, durability: Durability, secs: f64) -> (f64, f64, f64, u64) {
    let dir = root.join("latency");
    let mut log = open_fresh(&dir, durability, 0);
    let tick = Duration::from_secs_f64(1.0 / 30.0);
    let mut next = Instant::now();
    let mut t = 0;
    let until = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < until {
        t += 1;
        log.append(&tick_batch(t)).expect("append");
        log.commit(shardmesh::Tick(t)).expect("commit");
        next += tick;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let state = log.state.clone();
    log.close().expect("close");
    let h = state.commit_latency_us.lock().expect("not poisoned").clone().expect("histogram");
    let _ = std::fs::remove_dir_all(&dir);
    (h.value_at_quantile(0.5) as f64 / 1e3, h.value_at_quantile(0.99) as f64 / 1e3, h.max() as f64 / 1e3, h.len())
}

fn recovery(root: &std::path::Path, world: u32, tail_ticks: u64) -> (usize, f64, f64) {
    let dir = root.join("recovery");
    let mut log = open_fresh(&dir, Durability::Off, world);
    for t in 2..2 + tail_ticks {
        log.append(&tick_batch(t)).expect("append");
        log.commit(shardmesh::Tick(t)).expect("commit");
    }
    log.close().expect("close");
    let media = Disk::open(&dir).expect("dir");
    let began = Instant::now();
    let rec = smlog::recover(&media, false).expect("recovers");
    let s = began.elapsed().as_secs_f64();
    assert_eq!(rec.entities.len(), world as usize);
    assert!(rec.report.errors.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
    (rec.entities.len(), s, rec.entities.len() as f64 / s)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let root = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with('-') && (*i == 0 || !matches!(args[i - 1].as_str(), "--only" | "--json")))
        .map(|(_, a)| std::path::PathBuf::from(a))
        .unwrap_or_else(|| std::env::temp_dir().join("shardmesh-log-bench"));
    std::fs::create_dir_all(&root).expect("bench directory");
    let part = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let sample = rkyv::to_bytes::<rkyv::rancor::Error>(&tick_batch(1)).expect("serializes").len();
    println!(
        "log bench in {}: {PUTS_PER_TICK} entity writes a tick, {sample} bytes a tick ({} bytes a write)",
        root.display(),
        sample / PUTS_PER_TICK as usize
    );

    let mut json = serde_json::json!({"bench": "log", "writes_per_tick": PUTS_PER_TICK, "bytes_per_tick": sample});
    if part("append") {
        json["append"] = append_part(&root).into();
    }
    if part("latency") {
        json["commit_latency"] = latency_part(&root).into();
    }
    if part("recovery") {
        json["recovery"] = recovery_part(&root).into();
    }
    let command = format!(
        "cargo bench --bench log -- {}{}",
        root.display(),
        only.map_or(String::new(), |o| format!(" --only {o}"))
    );
    json["command"] = command.clone().into();
    write_json(&json_path("log"), &json);
    println!("reproduce: {command}");
}

/// Each run's throughput, the log's and the plain write's, as rows for the report.
fn append_part(root: &std::path::Path) -> Vec<serde_json::Value> {
    const RUNS: usize = 6;
    let mut rows = Vec::new();
    println!("append vs plain write of the same bytes ({RUNS} runs of 2,000 ticks, each ending in a sync):");
    let mut ratios = Vec::new();
    for run in 0..RUNS {
        let (log_mbs, plain_mbs, stalls) = append_vs_write(root, 2_000, run % 2 == 0);
        ratios.push(log_mbs / plain_mbs);
        let first = if run % 2 == 0 { "log" } else { "plain" };
        for (writer, mb_per_s) in [("log", log_mbs), ("plain write", plain_mbs)] {
            rows.push(serde_json::json!({"run": run, "writer": writer, "mb_per_s": mb_per_s, "first": first}));
        }
        println!(
            "  run {run} ({first} first): log {log_mbs:.0} MB/s, plain write {plain_mbs:.0} MB/s, log/plain {:.2}, appends over 1 ms: {stalls}",
            log_mbs / plain_mbs
        );
    }
    ratios.sort_by(f64::total_cmp);
    let median = (ratios[RUNS / 2 - 1] + ratios[RUNS / 2]) / 2.0;
    println!("  median log/plain: {median:.2}");
    rows
}

fn latency_part(root: &std::path::Path) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    println!("commit latency at 30 Hz, 6 s per mode (append to durable):");
    for (name, mode) in [
        ("tick", Durability::EveryTick),
        ("100ms", Durability::Interval(Duration::from_millis(100))),
        ("off", Durability::Off),
    ] {
        let (p50, p99, max, n) = commit_latency(root, mode, 6.0);
        println!("  {name:<6} p50 {p50:>7.3} ms  p99 {p99:>7.3} ms  max {max:>7.3} ms  ({n} ticks)");
        rows.push(serde_json::json!({"durability": name, "p50_ms": p50, "p99_ms": p99, "max_ms": max, "ticks": n}));
    }
    rows
}

fn recovery_part(root: &std::path::Path) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    println!("recovery (checkpoint of N entities plus a tail of 300 ticks x {PUTS_PER_TICK} writes):");
    for world in [100_000u32, 1_000_000] {
        let (n, s, rate) = recovery(root, world, 300);
        println!("  {n} entities in {:.3} s: {:.2} M entities/s", s, rate / 1e6);
        rows.push(serde_json::json!({"entities": n, "seconds": s, "m_entities_per_s": rate / 1e6}));
    }
    rows
}
