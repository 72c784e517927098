//! Connected clients at 30 Hz: `shardmesh serve --listen` and `shardmesh bots` as two processes
//! on this machine, over loopback UDP, at growing bot counts. For each: how many connected, the
//! input-to-visible latency p50/p99, updates a second, bytes a client a second, glitches, and the
//! server's tick p99. The most bots held with every one connected, about 30 updates a second and
//! latency p99 under 100 ms is the figure.
//!
//! Each trial also reports the CPU each process used (cores, read from /proc over 5 s of the
//! steady state, from 3 s after the bots start).
//!
//! Run: cargo bench --bench clients -- [SECONDS_PER_TRIAL] [COUNTS...] [--bin PATH]... [--rounds R]
//! (default 10 s; counts 500 1000 2000 3000 5000; the shardmesh this bench built). Given `--bin`
//! more than once, each count runs on every binary in turn, `R` rounds (default 1): builds
//! compared side by side, on the same machine's noise. The server and the bots share the
//! machine's cores, so the figure is for both.

use std::time::Duration;

use serve::{bots, read_json, serve_listening};
use side_by_side::write_json;

mod serve;
#[allow(dead_code)]
mod side_by_side;

const BIN: &str = env!("CARGO_BIN_EXE_shardmesh");

struct Trial {
    report: serde_json::Value,
    summary: serde_json::Value,
    /// Cores the server and the bots used in the steady state.
    cpu: (f64, f64),
}

/// CPU time a process has used so far, in seconds (user and system, from /proc).
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), from the state on: utime is the
    // 12th of them, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf takes a constant and reads nothing of ours.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / per_s
}

fn trial(bin: &str, count: usize, secs: u64) -> Trial {
    let dir = std::env::temp_dir().join(format!("shardmesh-clients-bench-{count}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench directory");
    // The world's players are the seats: one per bot and a few hundred driven in-process.
    let players = count + 300;
    let args: Vec<String> =
        ["--bots", &players.to_string(), "--durability", "100ms", "--duration", &(secs + 12).to_string()]
            .iter()
            .map(|s| s.to_string())
            .chain(["--json".to_string(), dir.join("serve.json").display().to_string()])
            .collect();
    let (mut server, addr) = serve_listening(bin, &dir, &args);
    let mut bots = bots(bin, &addr, &dir, count, secs).spawn().expect("bots start");
    std::thread::sleep(Duration::from_secs(3));
    let window = 5.0;
    let before = (cpu_s(server.id()), cpu_s(bots.id()));
    std::thread::sleep(Duration::from_secs_f64(window));
    let after = (cpu_s(server.id()), cpu_s(bots.id()));
    let cpu = ((after.0 - before.0) / window, (after.1 - before.1) / window);
    // The bots exit non-zero when the world did not hold them; their report says how, and the
    // trial reads it (a missing report is the failure).
    let _ = bots.wait().expect("bots run");
    // A server that ends with a failed audit says so in its summary, which the trial reports.
    let _ = server.wait().expect("serve ends");
    let trial = Trial { report: read_json(&dir, "bots.json"), summary: read_json(&dir, "serve.json"), cpu };
    let _ = std::fs::remove_dir_all(&dir);
    trial
}

fn main() {
    // (cargo bench passes `--bench` along.)
    let all: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mut bins = Vec::new();
    let mut rounds = 1;
    let mut json_path = "target/bench-clients.json".to_string();
    let mut args = Vec::new();
    let mut it = all.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bin" => bins.extend(it.next().cloned()),
            "--rounds" => rounds = it.next().and_then(|r| r.parse().ok()).unwrap_or(1),
            "--json" => json_path = it.next().cloned().unwrap_or(json_path),
            _ if a.starts_with('-') => {}
            _ => args.push(a.clone()),
        }
    }
    if bins.is_empty() {
        bins.push(BIN.to_string());
    }
    let secs: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10);
    let mut counts: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    if counts.is_empty() {
        counts = vec![500, 1000, 2000, 3000, 5000];
    }
    println!("clients over loopback UDP, {secs} s a trial, bots wandering, server and bots on this machine:");
    let mut held = vec![0; bins.len()];
    let (mut trials, mut latency) = (Vec::new(), Vec::new());
    let progress = shardmesh::progress::Progress::new("trials", (counts.len() * rounds * bins.len()) as u64);
    for count in counts {
        for _ in 0..rounds {
            for (b, bin) in bins.iter().enumerate() {
                let t = trial(bin, count, secs);
                let (r, s) = (&t.report, &t.summary);
                let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
                let connected = r["connected"].as_u64().unwrap_or(0) as usize;
                let ok = connected == count
                    && f(r, "latency_p99_ms") < 100.0
                    && f(r, "updates_per_s") > 28.0
                    && r["glitches"] == 0
                    && s["audit_error"].is_null();
                if ok {
                    held[b] = held[b].max(count);
                }
                progress.advance(!ok);
                trials.push(serde_json::json!({
                    "binary": b,
                    "bots": count,
                    "connected": connected,
                    "latency_p50_ms": f(r, "latency_p50_ms"),
                    "latency_p99_ms": f(r, "latency_p99_ms"),
                    "updates_per_s": f(r, "updates_per_s"),
                    "bytes_per_client_s": f(r, "bytes_per_client_s"),
                    "glitches": r["glitches"],
                    "server_tick_p99_ms": f(s, "tick_p99_ms"),
                    "cpu_server_cores": t.cpu.0,
                    "cpu_bots_cores": t.cpu.1,
                    "held": ok,
                }));
                for point in r["latency_distribution"].as_array().into_iter().flatten() {
                    latency.push(serde_json::json!({
                        "binary": b,
                        "bots": count,
                        "quantile": point["quantile"],
                        "ms": point["ms"],
                    }));
                }
                let which = if bins.len() > 1 { format!("bin={b} ") } else { String::new() };
                // Which kind, when there were any.
                let glitches = match r["glitches"].as_u64().unwrap_or(0) {
                    0 => "0".to_string(),
                    n => format!("{n} (t{} v{} d{})", r["teleports"], r["vanished"], r["duplicates"]),
                };
                println!(
                    "  {which}bots={count:<5} connected={connected:<5} latency p50={:>6.1} ms p99={:>6.1} ms updates/s={:>5.1} bytes/client/s={:>7.0} glitches={} server tick p99={:>6.2} ms cpu server={:.2} bots={:.2} audit={} -> {}",
                    f(r, "latency_p50_ms"),
                    f(r, "latency_p99_ms"),
                    f(r, "updates_per_s"),
                    f(r, "bytes_per_client_s"),
                    glitches,
                    f(s, "tick_p99_ms"),
                    t.cpu.0,
                    t.cpu.1,
                    s["audit_error"].as_str().unwrap_or("clean"),
                    if ok { "held" } else { "not held" }
                );
            }
        }
    }
    progress.finish();
    for (b, bin) in bins.iter().enumerate() {
        let which = if bins.len() > 1 { format!(" (bin={b}: {bin})") } else { String::new() };
        println!("most bots held at 30 Hz with latency p99 under 100 ms{which}: {}", held[b]);
    }
    let command = format!("cargo bench --bench clients -- {}", all.join(" "));
    let bins_json: Vec<serde_json::Value> = bins
        .iter()
        .enumerate()
        .map(|(b, bin)| serde_json::json!({"binary": b, "path": bin, "most_bots_held": held[b]}))
        .collect();
    write_json(
        &json_path,
        &serde_json::json!({
            "bench": "clients",
            "command": command,
            "seconds": secs,
            "binaries": bins_json,
            "trials": trials,
            "latency_distribution": latency,
        }),
    );
    println!("reproduce: {command}");
}
