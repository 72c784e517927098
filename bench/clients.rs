//! Connected clients at 30 Hz: `shardmesh serve --listen` and `shardmesh bots` as two processes
//! on this machine, over loopback UDP, at growing bot counts. For each: how many connected, the
//! input-to-visible latency p50/p99, updates a second, bytes a client a second, glitches, and the
//! server's tick p99. The most bots held with every one connected, about 30 updates a second and
//! latency p99 under 100 ms is the figure.
//!
//! Run: cargo bench --bench clients -- [SECONDS_PER_TRIAL] [COUNTS...]
//! (default 10 s; counts 500 1000 2000 3000 5000). The server and the bots share the machine's
//! cores, so the figure is for both.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shardmesh");

struct Trial {
    report: serde_json::Value,
    summary: serde_json::Value,
}

fn trial(count: usize, secs: u64) -> Trial {
    let dir = std::env::temp_dir().join(format!("shardmesh-clients-bench-{count}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench directory");
    // The world's players are the seats: one per bot and a few hundred driven in-process.
    let players = count + 300;
    let mut server = Command::new(BIN)
        .args(["serve", "--data"])
        .arg(&dir)
        .args(["--bots", &players.to_string(), "--listen", "127.0.0.1:0", "--durability", "100ms"])
        .args(["--duration", &(secs + 12).to_string(), "--json"])
        .arg(dir.join("serve.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stderr = server.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines();
    let began = Instant::now();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(a) = line.strip_prefix("listening for clients on ") {
                    break a.split_whitespace().next().unwrap_or("").to_string();
                }
            }
            _ => panic!("serve stopped before it listened"),
        }
        assert!(began.elapsed() < Duration::from_secs(60), "serve never listened");
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    let status = Command::new(BIN)
        .args(["bots", "--connect", &addr, "--key-file"])
        .arg(dir.join("gateway.key"))
        .args(["--count", &count.to_string(), "--behaviour", "wander", "--duration", &secs.to_string(), "--json"])
        .arg(dir.join("bots.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("bots run");
    assert!(status.success(), "bots failed");
    // A server that ends with a failed audit says so in its summary, which the trial reports.
    let _ = server.wait().expect("serve ends");
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join(name)).expect("a report")).expect("JSON")
    };
    let trial = Trial { report: read("bots.json"), summary: read("serve.json") };
    let _ = std::fs::remove_dir_all(&dir);
    trial
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let secs: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10);
    let mut counts: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    if counts.is_empty() {
        counts = vec![500, 1000, 2000, 3000, 5000];
    }
    println!("clients over loopback UDP, {secs} s a trial, bots wandering, server and bots on this machine:");
    let mut held = 0;
    for count in counts {
        let t = trial(count, secs);
        let (r, s) = (&t.report, &t.summary);
        let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let connected = r["connected"].as_u64().unwrap_or(0) as usize;
        let ok = connected == count
            && f(r, "latency_p99_ms") < 100.0
            && f(r, "updates_per_s") > 28.0
            && r["glitches"] == 0
            && s["audit_error"].is_null();
        if ok {
            held = count;
        }
        println!(
            "  bots={count:<5} connected={connected:<5} latency p50={:>6.1} ms p99={:>6.1} ms updates/s={:>5.1} bytes/client/s={:>7.0} glitches={} server tick p99={:>6.2} ms audit={} -> {}",
            f(r, "latency_p50_ms"),
            f(r, "latency_p99_ms"),
            f(r, "updates_per_s"),
            f(r, "bytes_per_client_s"),
            r["glitches"],
            f(s, "tick_p99_ms"),
            s["audit_error"].as_str().unwrap_or("clean"),
            if ok { "held" } else { "not held" }
        );
    }
    println!("most bots held at 30 Hz with latency p99 under 100 ms: {held}");
    println!("reproduce: cargo bench --bench clients -- {secs}");
}
