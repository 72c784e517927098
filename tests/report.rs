//! `shardmesh report` renders every benchmark's JSON: each bench in Cargo.toml has a recorded
//! run in docs/bench (its `bench-NAME.json`, written by the bench itself), and the report command
//! turns every one into plots and tables, the figures the benchmarks exist for among them.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_shardmesh");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `[[bench]]` name in Cargo.toml.
fn benches() -> Vec<String> {
    let manifest: toml::Value = toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    manifest["bench"]
        .as_array()
        .expect("Cargo.toml lists its benches")
        .iter()
        .map(|b| b["name"].as_str().expect("a bench has a name").to_string())
        .collect()
}

fn svg(out: &Path, name: &str) -> String {
    std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn the_report_command_renders_every_benchmarks_json() {
    let recorded = root().join("docs/bench");
    let names = benches();
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        let file = recorded.join(format!("bench-{name}.json"));
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&file).unwrap_or_else(|e| panic!("bench {name} has no recorded JSON ({e})")),
        )
        .unwrap();
        assert_eq!(v["bench"], name.as_str(), "{}: the bench names itself", file.display());
        assert!(v["command"].as_str().is_some_and(|c| c.starts_with("cargo bench --bench")), "{name}: its command");
    }
    let out = std::env::temp_dir().join(format!("shardmesh-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(BIN).args(["report", "--from"]).arg(&recorded).arg("--out").arg(&out).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    // Every bench rendered, each with a plot and a table.
    for name in &names {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("{name} not rendered: {stdout}"));
        assert!(!line.contains(" 0 plots") && !line.contains(" 0 tables"), "{line}");
    }
    let md = std::fs::read_to_string(out.join("REPORT.md")).unwrap();
    for link in md.lines().filter_map(|l| l.strip_prefix("![")) {
        let file = link.rsplit_once("](").unwrap().1.trim_end_matches(')');
        assert!(svg(&out, file).starts_with("<svg"), "{file}");
    }
    // The figures the benchmarks are for: players against tick p99, a line per core count; the
    // tavern, static against dynamic; each failover's ticks; the bots' latency distribution; the
    // log's throughput against a plain write of the same bytes.
    let p = svg(&out, "players_per_core-trials-tick_p99_ms.svg");
    assert!(p.contains(">cores=1<") && p.contains(">cores=2<"), "{p}");
    let t = svg(&out, "tavern-trials-tick_p99_ms.svg");
    assert!(t.contains("mode=static") && t.contains("mode=dynamic"), "{t}");
    assert!(svg(&out, "failover-failovers-ticks.svg").contains("<polyline"));
    let l = svg(&out, "clients-latency_distribution-ms.svg");
    assert!(l.contains("against quantile"), "{l}");
    let a = svg(&out, "log-append-mb_per_s.svg");
    assert!(a.contains(">writer=log<") && a.contains(">writer=plain write<"), "{a}");
    let c = svg(&out, "crowd-timeline-tick_p99_ms.svg");
    assert!(c.contains(">dynamic<") && c.contains(">static<"), "{c}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_report_command_fails_with_nothing_to_render_or_a_broken_file() {
    let dir = std::env::temp_dir().join(format!("shardmesh-report-empty-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let run = |dir: &Path| {
        Command::new(BIN).args(["report", "--from"]).arg(dir).arg("--out").arg(dir.join("out")).output().unwrap()
    };
    let empty = run(&dir);
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("no bench-*.json"));
    std::fs::write(dir.join("bench-cut.json"), "{\"bench\": \"cut\", \"trials\": [").unwrap();
    let broken = run(&dir);
    assert!(!broken.status.success());
    assert!(String::from_utf8_lossy(&broken.stderr).contains("bench-cut.json"));
    let _ = std::fs::remove_dir_all(&dir);
}
