//! What the benchmarks with a side-by-side mode share: running another build's bench binary for
//! one measurement, the median of a build's runs, and the JSON file each run writes.

use std::process::Command;

use serde_json::Value;

/// `bin SECS --one POINT`: the last JSON line it printed. `what` names the bench, for the error
/// when the binary is not one that takes `--one`.
pub fn run_binary(bin: &str, secs: f64, point: &str, what: &str) -> Result<Value, String> {
    let out = Command::new(bin)
        .args([secs.to_string(), "--one".into(), point.to_string()])
        .output()
        .map_err(|e| format!("{bin}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().find(|l| l.starts_with('{')).ok_or_else(|| {
        format!(
            "{bin} printed no JSON line (is it a {what} bench with --one?): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    serde_json::from_str(last).map_err(|e| format!("{bin}: {e}: {last}"))
}

/// The median; 0 for no runs (the caller reports the count beside it).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

/// Where a bench writes its JSON: `--json PATH` among its arguments, else
/// `target/bench-NAME.json` (where `shardmesh report` looks).
pub fn json_path(name: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| format!("target/bench-{name}.json"))
}

pub fn write_json(path: &str, value: &Value) {
    match std::fs::write(path, serde_json::to_string_pretty(value).expect("JSON")) {
        Ok(()) => println!("wrote {path}"),
        Err(e) => println!("could not write {path}: {e}"),
    }
}
