//! Failover under load: `shardmesh serve` with a world of PLAYERS (played by in-process bots),
//! a random server crashed halfway through a tick every EVERY seconds (`--chaos-crash-every`),
//! and CLIENTS UDP bots attached through the gateway the whole time. For every crash: the ticks
//! until every entity the crashed server held is held by a live server again. Then the audit
//! (lost and duplicated entities) and what the clients saw (disconnects, reconnects, glitches).
//!
//! Run: cargo bench --bench failover -- [SECONDS] [--players N] [--every S] [--clients C]
//!      [--json PATH]
//! (default 60 s, 10,000 players, a crash every 2 s, 200 clients; writes
//! `target/bench-failover.json`). Targets (the issue's): failover within 2 ticks at p99, no
//! entity lost or duplicated, no client disconnected and no glitch. The run fails (exit 1) when
//! nothing was measured or the world broke; a missed target is printed as missed.

use serde_json::json;
use serve::{read_json, serve_listening};
use side_by_side::write_json;

mod serve;
// Only its JSON writer is used here.
#[allow(dead_code)]
mod side_by_side;

const BIN: &str = env!("CARGO_BIN_EXE_shardmesh");

fn main() {
    let (mut secs, mut players, mut every, mut clients) = (60u64, 10_000usize, 2.0f64, 200usize);
    let mut json_path = "target/bench-failover.json".to_string();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--players" => players = value("--players").parse().expect("a player count"),
            "--every" => every = value("--every").parse().expect("seconds between crashes"),
            "--clients" => clients = value("--clients").parse().expect("a client count"),
            "--json" => json_path = value("--json"),
            "--bench" => {}
            other => secs = other.parse().unwrap_or_else(|_| panic!("unknown argument {other}")),
        }
    }
    let dir = std::env::temp_dir().join("shardmesh-failover-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench directory");
    // The clients' seats are among the world's players; in-process bots play the rest. Serve
    // runs past the clients by its warm-up and a little, so the clients see the whole run.
    let args: Vec<String> = [
        "--bots".to_string(),
        (players + clients).to_string(),
        "--durability".into(),
        "100ms".into(),
        "--chaos-crash-every".into(),
        every.to_string(),
        "--duration".into(),
        (secs + 6).to_string(),
        "--json".into(),
        dir.join("serve.json").display().to_string(),
    ]
    .into();
    let (mut server, addr) = serve_listening(BIN, &dir, &args);
    let bots = serve::bots(BIN, &addr, &dir, clients, secs).status().expect("bots run");
    let serve_status = server.wait().expect("serve ends");
    let (summary, report) = (read_json(&dir, "serve.json"), read_json(&dir, "bots.json"));
    let n = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let crashes = n(&summary, "server_crashes");
    let (p50, p99, max) =
        (n(&summary, "failover_ticks_p50"), n(&summary, "failover_ticks_p99"), n(&summary, "failover_ticks_max"));
    let unfinished = summary["failovers_unfinished"].as_array().map_or(0, Vec::len);
    let (lost, duplicates) = (n(&summary, "lost_entities"), n(&summary, "duplicate_entities"));
    let disconnects = n(&report, "ever_connected") - n(&report, "connected");
    let (reconnects, glitches) = (n(&report, "reconnects"), n(&report, "glitches"));
    println!(
        "failover: {players} players, {clients} clients, a crash every {every} s for {secs} s on {} cores",
        summary["cores"]
    );
    println!(
        "  crashes={crashes} failover_ticks p50={p50} p99={p99} max={max} unfinished={unfinished} tick_p99_ms={:.2} lost={lost} duplicates={duplicates}",
        n(&summary, "tick_p99_ms")
    );
    println!(
        "  clients: connected={}/{clients} disconnects={disconnects} reconnects={reconnects} glitches={glitches} latency_p99_ms={:.1} (bots exit {:?})",
        report["connected"],
        n(&report, "latency_p99_ms"),
        bots.code()
    );
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("  target failover p99 <= 2 ticks: {}", met(p99 <= 2.0));
    println!("  target no entity lost or duplicated: {}", met(lost == 0.0 && duplicates == 0.0));
    println!(
        "  target no client disconnected, no glitch: {}",
        met(disconnects == 0.0 && reconnects == 0.0 && glitches == 0.0)
    );
    let command =
        format!("cargo bench --bench failover -- {secs} --players {players} --every {every} --clients {clients}");
    // Each finished failover by the order it finished in, and the clients' latency distribution,
    // as lists the report plots.
    let failovers: Vec<serde_json::Value> = summary["failover_ticks"]
        .as_array()
        .map(|t| t.iter().enumerate().map(|(i, ticks)| json!({"failover": i + 1, "ticks": ticks})).collect())
        .unwrap_or_default();
    write_json(
        &json_path,
        &json!({
            "bench": "failover",
            "command": command,
            "players": players,
            "clients": clients,
            "every_s": every,
            "secs": secs,
            "failovers": failovers,
            "latency_distribution": report["latency_distribution"],
            "serve": summary,
            "bots": report,
        }),
    );
    println!("reproduce: {command}");
    let measured = crashes >= 1.0 && p99.is_finite();
    let broken = !serve_status.success() || !summary["audit_error"].is_null();
    let _ = std::fs::remove_dir_all(&dir);
    if !measured || broken {
        println!("FAILED: {}", if measured { "the world broke (see the summary)" } else { "no failover was measured" });
        std::process::exit(1);
    }
}
