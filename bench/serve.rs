//! `shardmesh serve --listen` as a child process for the benchmarks that attach clients to it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `bin serve --data DIR --listen 127.0.0.1:0 ARGS...` and waits until it listens: the
/// child, and the address its clients connect to. Its status lines are read and dropped.
pub fn serve_listening(bin: &str, dir: &Path, args: &[String]) -> (Child, String) {
    let mut server = Command::new(bin)
        .args(["serve", "--data"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
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
        assert!(began.elapsed() < Duration::from_secs(120), "serve never listened");
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (server, addr)
}

/// `bin bots` with `count` wandering bots against `addr` for `secs`, its report in
/// `dir/bots.json`, signing tokens with the key `serve` left in `dir`; quiet.
pub fn bots(bin: &str, addr: &str, dir: &Path, count: usize, secs: u64) -> Command {
    let mut bots = Command::new(bin);
    bots.args(["bots", "--connect", addr, "--key-file"])
        .arg(dir.join("gateway.key"))
        .args(["--count", &count.to_string(), "--behaviour", "wander", "--duration", &secs.to_string(), "--json"])
        .arg(dir.join("bots.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    bots
}

/// A JSON report a child wrote into `dir`.
pub fn read_json(dir: &Path, name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}")))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}
