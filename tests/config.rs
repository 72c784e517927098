//! `serve --config FILE`: every option from a TOML file, the command line winning, and a bad
//! file, key or value an error that names it.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_shardmesh");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardmesh-config-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `serve --config` with `toml` as the file, and `extra` flags; (success, stderr).
fn serve(dir: &std::path::Path, toml: &str, extra: &[&str]) -> (bool, String) {
    let file = dir.join("world.toml");
    std::fs::write(&file, toml).unwrap();
    let out = Command::new(BIN).args(["serve", "--config"]).arg(&file).args(extra).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_world_runs_from_its_config_file_and_the_command_line_wins() {
    let dir = temp_dir("good");
    let data = dir.join("data");
    let json = dir.join("summary.json");
    let toml = format!(
        "data = {:?}\nbots = 50\ncores = 1\nhz = 20\nduration = 60.0\nstatic = true\nservers_per_core = 3\njson = {:?}\n",
        data.to_str().unwrap(),
        json.to_str().unwrap()
    );
    // The command line's duration wins over the file's minute.
    let (ok, err) = serve(&dir, &toml, &["--duration", "1.5"]);
    assert!(ok, "{err}");
    assert!(err.contains("50 bots' players, 1 cores x 3 servers, 20 Hz, 1.5 s"), "{err}");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(summary["players"], 50, "{summary}");
    assert_eq!(summary["servers"], 3, "{summary}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_config_is_an_error_that_names_the_key() {
    let dir = temp_dir("bad");
    let data = format!("data = {:?}\n", dir.join("data").to_str().unwrap());
    for (toml, says) in [
        (format!("{data}hertz = 60\n"), "unknown key `hertz`"),
        (format!("{data}hz = \"fast\"\n"), "--hz"),
        (format!("{data}static = 1\n"), "key `static` is a switch"),
        (format!("{data}cores = [1, 2]\n"), "key `cores` takes a string or a number"),
        (format!("{data}bots = \n"), "world.toml"),
    ] {
        let (ok, err) = serve(&dir, &toml, &[]);
        assert!(!ok, "{toml}");
        assert!(err.contains(says), "{toml}: {err}");
    }
    let out = Command::new(BIN).args(["serve", "--config", "/no/such/file.toml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/file.toml"));
    assert!(!dir.join("data").exists(), "no world is made from a bad config");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server bounds are taken as asked or refused, never quietly changed: a bound below the
/// servers the mesh starts with, above what a mesh runs, or a starting number past that.
#[test]
fn server_bounds_out_of_range_are_refused() {
    for (args, says) in [
        (&["--cores", "1", "--servers-per-core", "2", "--servers-max", "1"][..], "--servers-max 1: from the 2 servers"),
        (&["--cores", "1", "--servers-max", "0"][..], "--servers-max 0"),
        (&["--cores", "1", "--servers-max", "1025"][..], "to 1024"),
        (&["--cores", "2", "--servers-per-core", "600"][..], "more than the 1024 servers"),
        (&["--cores", "2", "--servers-per-core", "18446744073709551615"][..], "more than the 1024 servers"),
    ] {
        let out = Command::new(BIN).args(["demo", "--players", "10", "--duration", "1"]).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} ran: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
