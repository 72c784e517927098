//! The layering, checked on the sources. The core (the node, the protocol state machines and the
//! world model) is sans-IO: no clock, threads, sockets, files, global randomness, printing or
//! runtime in it, and it imports none of the modules that have them. The runtime does not use the
//! simulator, and the replication log writes and reads records without driving a state machine.

use std::path::Path;

const FORBIDDEN: &[&str] = &[
    "Instant::now",
    "SystemTime",
    "std::time",
    "std::thread",
    "thread::spawn",
    "std::net",
    "UdpSocket",
    "TcpStream",
    "std::fs",
    "File::open",
    "File::create",
    "std::io::stdin",
    "println!",
    "glommio",
    "tokio",
    "thread_rng",
    "rand::rng(",
    "from_entropy",
    "from_os_rng",
    "getrandom",
    "std::env",
    "eprintln!",
    "crate::net",
    "crate::runtime",
    "crate::sim",
    "log::writer",
    "log::media",
];

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn offences(text: &str) -> Vec<&'static str> {
    FORBIDDEN.iter().copied().filter(|f| text.contains(f)).collect()
}

#[test]
fn the_core_touches_no_clock_thread_socket_file_or_runtime() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for core in ["node", "protocol", "world"] {
        sources(&root.join(core), &mut files);
    }
    // What each client is sent, and what a client makes of it, are worked out without sockets,
    // beside the gateway that sends it and the bots that read it.
    files.push(root.join("net").join("update.rs"));
    files.push(root.join("net").join("viewer.rs"));
    assert!(files.len() >= 8, "found the core's sources");
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for f in offences(&text) {
            found.push(format!("{}: {f}", file.display()));
        }
    }
    assert!(found.is_empty(), "the sans-IO core must not use these:\n{}", found.join("\n"));
}

/// `(directory, what its sources must not name, why)`.
const LAYERS: &[(&str, &[&str], &str)] = &[
    ("runtime", &["crate::sim", "sim::"], "the runtime runs nodes; the simulator is a driver of its own"),
    (
        "log",
        &["Replication", "crate::node", "crate::protocol::replication"],
        "the log stores what a node gives it and reads it back; it drives no state machine",
    ),
    ("net", &["crate::sim", "Replication"], "the gateway's sockets hold no game logic"),
];

#[test]
fn each_layer_uses_only_what_is_below_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for (dir, names, why) in LAYERS {
        let mut files = Vec::new();
        sources(&root.join(dir), &mut files);
        assert!(!files.is_empty(), "found {dir}'s sources");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for name in names.iter().filter(|n| text.contains(*n)) {
                found.push(format!("{}: {name} ({why})", file.display()));
            }
        }
    }
    assert!(found.is_empty(), "layering broken:\n{}", found.join("\n"));
}

/// Every bound (a name ending in `_MAX` or `_MIN`, or with `_MAX_`/`_MIN_` in it) is defined in
/// src/limits.rs, with its reason, and nowhere else.
#[test]
fn every_limit_lives_in_limits_rs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut found = Vec::new();
    for file in files.iter().filter(|f| !f.ends_with("limits.rs")) {
        let text = std::fs::read_to_string(file).unwrap();
        for line in text.lines() {
            if let Some(name) = bound_defined(line) {
                found.push(format!("{}: {name}", file.display()));
            }
        }
    }
    assert!(found.is_empty(), "limits defined outside src/limits.rs:\n{}", found.join("\n"));
    let limits = std::fs::read_to_string(root.join("limits.rs")).unwrap();
    let lines: Vec<&str> = limits.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("pub const ") {
            assert!(i > 0 && lines[i - 1].starts_with("///"), "src/limits.rs: `{line}` has no reason above it");
        }
    }
}

/// The name of a bound a line defines, if it does.
fn bound_defined(line: &str) -> Option<&str> {
    let rest = line.trim_start().trim_start_matches("pub(crate) ").trim_start_matches("pub ");
    let name = rest.strip_prefix("const ")?.split(':').next()?.trim();
    let bound = name.ends_with("_MAX") || name.ends_with("_MIN") || name.contains("_MAX_") || name.contains("_MIN_");
    bound.then_some(name)
}

/// A tick number is a `Tick`, never a bare integer: outside tests, no source names a tick (a
/// `tick`, `*_tick`, `as_of` or `baseline` value) as `u64`. Counts of ticks (`*_ticks`) and
/// shared atomics stay integers.
#[test]
fn tick_numbers_are_ticks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (i, line) in code.lines().enumerate() {
            if let Some(name) = bare_tick(line) {
                found.push(format!("{}:{}: {name}", file.display(), i + 1));
            }
        }
    }
    assert!(found.is_empty(), "tick numbers as bare integers (use world::Tick):\n{}", found.join("\n"));
}

/// The tick a line declares as a bare `u64`, if it does.
fn bare_tick(line: &str) -> Option<&str> {
    let (before, _) = line.split_once(": u64")?;
    let name = before.rsplit(|c: char| !(c.is_alphanumeric() || c == '_')).next()?;
    let tick = name == "tick" || name.ends_with("_tick") || name == "as_of" || name == "baseline";
    tick.then_some(name)
}

#[test]
fn the_tidy_check_itself_catches_an_offence() {
    assert_eq!(bare_tick("    pub tick: u64,"), Some("tick"));
    assert_eq!(bare_tick("fn f(&self, last_tick: u64) {"), Some("last_tick"));
    assert_eq!(bare_tick("    pub down_ticks: u64,"), None);
    assert_eq!(bare_tick("    tick_us: u64,"), None);
    assert_eq!(bare_tick("    tick: Tick,"), None);
    assert_eq!(bound_defined("    const QUEUE_DEPTH_MAX: usize = 4;"), Some("QUEUE_DEPTH_MAX"));
    assert_eq!(bound_defined("pub const RING_CAPACITY_MIN_BYTES: usize = 1;"), Some("RING_CAPACITY_MIN_BYTES"));
    assert_eq!(bound_defined("pub const PROTOCOL_ID: u64 = 1;"), None);
    assert_eq!(offences("let t = std::time::Instant::now();"), vec!["Instant::now", "std::time"]);
    assert_eq!(offences("glommio::LocalExecutor::default()"), vec!["glommio"]);
    assert!(offences("let x = 1;").is_empty());
}
