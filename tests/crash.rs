//! Kill -9 of the whole process, again and again: `shardmesh serve` with bots runs as a child
//! process, is killed with SIGKILL at a random moment and started again, 20 times in a row. After
//! every kill the log must hold every tick the process reported committed, no entity twice, and
//! as many items as the world was created with. A last run ends with SIGTERM, which must commit,
//! sync and exit 0 with a clean audit.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_shardmesh");

fn serve(dir: &Path) -> Child {
    Command::new(BIN)
        .args(["serve", "--data"])
        .arg(dir)
        .args(["--bots", "300", "--cores", "2", "--checkpoint-secs", "0.5", "--activity", "0.5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

type Shared<T> = Arc<Mutex<T>>;

/// Reads the child's status lines in the background; the newest `committed_tick=` and every line.
fn watch(child: &mut Child) -> (Shared<Option<u64>>, Shared<Vec<String>>) {
    let committed = Arc::new(Mutex::new(None));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("piped");
    let (c, l) = (committed.clone(), lines.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(t) = line.split("committed_tick=").nth(1) {
                if let Ok(t) = t.split_whitespace().next().unwrap_or("").parse::<u64>() {
                    *c.lock().unwrap() = Some(t);
                }
            }
            l.lock().unwrap().push(line);
        }
    });
    (committed, lines)
}

fn verify(dir: &Path) -> serde_json::Value {
    let out = Command::new(BIN).args(["log", "verify"]).arg(dir).arg("--json").output().expect("verify runs");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify prints JSON");
    assert!(out.status.success(), "log verify failed: {report}");
    report
}

#[test]
fn kill_9_twenty_times_loses_nothing_committed() {
    let dir = std::env::temp_dir().join(format!("shardmesh-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(std::process::id() as u64);
    let mut items_at_creation = None;
    let mut kills_after_a_commit = 0;
    for round in 0..20 {
        let mut child = serve(&dir);
        let (committed, lines) = watch(&mut child);
        // Up to about three seconds in: sometimes before the first status line, sometimes in the
        // middle of start-up, a checkpoint or a commit.
        let wait = Duration::from_millis(rng.random_range(300..3_000));
        let began = Instant::now();
        while began.elapsed() < wait {
            assert!(child.try_wait().unwrap().is_none(), "serve exited early: {:?}", lines.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        let reported = *committed.lock().unwrap();
        let report = verify(&dir);
        let items = report["items"].as_u64().unwrap();
        if report["round"].as_u64().unwrap() == 0 {
            // Killed before the world's first checkpoint was written: nothing was committed.
            assert_eq!(reported, None, "round {round}: a commit was reported but the log is empty");
            continue;
        }
        let created = *items_at_creation.get_or_insert(items);
        assert_eq!(items, created, "round {round}: item count changed: {report}");
        assert_eq!(report["duplicates"].as_u64(), Some(0), "round {round}: {report}");
        assert_eq!(report["errors"].as_array().map(Vec::len), Some(0), "round {round}: {report}");
        if let Some(tick) = reported {
            kills_after_a_commit += 1;
            let recovered = report["last_committed_tick"].as_u64().unwrap();
            assert!(
                recovered >= tick,
                "round {round}: tick {tick} was reported committed, the log ends at {recovered}"
            );
        }
    }
    assert!(kills_after_a_commit >= 10, "only {kills_after_a_commit} kills came after a reported commit");

    // A clean stop: SIGTERM commits, syncs, exits 0, and the audit of the last run is clean.
    let mut child = serve(&dir);
    let (committed, lines) = watch(&mut child);
    let began = Instant::now();
    while committed.lock().unwrap().is_none() && began.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: a plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM: exit {status:?}\n{stdout}\n{:?}", lines.lock().unwrap());
    assert!(stdout.contains("audit: every entity accounted for"), "{stdout}");
    let report = verify(&dir);
    assert_eq!(report["torn_tails"].as_array().map(Vec::len), Some(0), "a clean stop leaves no torn tail: {report}");
    assert_eq!(report["items"].as_u64(), items_at_creation);
    let _ = std::fs::remove_dir_all(&dir);
}
