//! Throughput of 64-byte and 1 KiB messages between two pinned cores: the shardmesh ring and
//! iceoryx2 publish-subscribe (zero-copy: the publisher loans a sample in shared memory, writes
//! the payload, sends; the subscriber reads it in place), side by side in one run.
//!
//! Run (from this folder): cargo run --release -- [MESSAGES]

use std::hint::black_box;
use std::time::Instant;

use iceoryx2::prelude::*;
use shardmesh::runtime::ring::{Ring, RingError};

static CORES: std::sync::OnceLock<Vec<core_affinity::CoreId>> = std::sync::OnceLock::new();

fn pin(core: usize) {
    let cores = CORES.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default());
    if let Some(id) = cores.get(core % cores.len().max(1)) {
        assert!(core_affinity::set_for_current(*id));
    }
}

fn ring<const N: usize>(count: u64) -> f64 {
    let (mut tx, mut rx) = Ring::anonymous(1 << 20).unwrap().split();
    let began = Instant::now();
    let producer = std::thread::spawn(move || {
        pin(0);
        let payload = [7u8; N];
        for i in 0..count {
            while let Err(RingError::Full) = tx.try_push_bytes(&payload) {
                tx.flush();
                std::hint::spin_loop();
            }
            if i % 32 == 31 {
                tx.flush();
            }
        }
        tx.flush();
    });
    pin(1);
    let (mut seen, mut sum) = (0u64, 0u64);
    while seen < count {
        seen += rx.read_batch(1024, |p| sum += p[N - 1] as u64).unwrap() as u64;
    }
    producer.join().unwrap();
    black_box(sum);
    count as f64 / began.elapsed().as_secs_f64()
}

fn iceoryx<const N: usize>(count: u64, name: &str) -> f64 {
    let service_name = format!("shardmesh/bench/{name}");
    let ready = std::sync::Arc::new(std::sync::Barrier::new(2));
    let began_cell = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let (ready2, began2, name2) = (ready.clone(), began_cell.clone(), service_name.clone());
    let producer = std::thread::spawn(move || {
        pin(0);
        let node = NodeBuilder::new().create::<ipc::Service>().unwrap();
        let service = node
            .service_builder(&name2.as_str().try_into().unwrap())
            .publish_subscribe::<[u8; N]>()
            .subscriber_max_buffer_size(1024)
            .enable_safe_overflow(false)
            .open_or_create()
            .unwrap();
        let publisher = service
            .publisher_builder()
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()
            .unwrap();
        ready2.wait();
        *began2.lock().unwrap() = Some(Instant::now());
        for _ in 0..count {
            let sample = publisher.loan_uninit().unwrap();
            let sample = sample.write_payload([7u8; N]);
            sample.send().unwrap();
        }
    });
    pin(1);
    let node = NodeBuilder::new().create::<ipc::Service>().unwrap();
    // The producer creates the service with its settings; wait until it can be opened.
    let service = loop {
        match node
            .service_builder(&service_name.as_str().try_into().unwrap())
            .publish_subscribe::<[u8; N]>()
            .subscriber_max_buffer_size(1024)
            .enable_safe_overflow(false)
            .open_or_create()
        {
            Ok(s) => break s,
            Err(_) => std::thread::yield_now(),
        }
    };
    let subscriber = service.subscriber_builder().buffer_size(1024).create().unwrap();
    ready.wait();
    let (mut seen, mut sum) = (0u64, 0u64);
    while seen < count {
        while let Some(sample) = subscriber.receive().unwrap() {
            sum += sample.payload()[N - 1] as u64;
            seen += 1;
        }
    }
    producer.join().unwrap();
    black_box(sum);
    let began = began_cell.lock().unwrap().unwrap();
    count as f64 / began.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let count: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2_000_000);
    println!("ring vs iceoryx2: {count} messages per run (1/4 for 1 KiB), median of 3, cores 0 -> 1");
    let r64 = median((0..3).map(|_| ring::<64>(count)).collect());
    let i64 = median((0..3).map(|i| iceoryx::<64>(count, &format!("b64-{i}"))).collect());
    let r1k = median((0..3).map(|_| ring::<1024>(count / 4)).collect());
    let i1k = median((0..3).map(|i| iceoryx::<1024>(count / 4, &format!("b1k-{i}"))).collect());
    println!("  {:<22} {:>10} {:>10} {:>8}", "M msgs/s", "ring", "iceoryx2", "ratio");
    println!("  {:<22} {:>10.1} {:>10.1} {:>7.2}x", "64 B", r64 / 1e6, i64 / 1e6, r64 / i64);
    println!("  {:<22} {:>10.1} {:>10.1} {:>7.2}x", "1 KiB", r1k / 1e6, i1k / 1e6, r1k / i1k);
    println!("reproduce: (cd bench/iceoryx2-compare && cargo run --release -- {count})");
}
