//! Clients over real UDP on loopback: `shardmesh serve --listen` and `shardmesh bots` as separate
//! processes. Bots commute across region borders and must see no glitch while the server's audit
//! stays clean; and every kind of bad input, sent while bots play, is dropped and counted without
//! disturbing them.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use renetcode::{ClientAuthentication, ConnectToken, NetcodeClient};
use shardmesh::net::gateway::{unix_now, PROTOCOL_ID};
// A client of our own, driving netcode and renet by hand so it can misbehave.
use shardmesh::net::harness::Client as RawClient;
use shardmesh::net::wire::{self, ClientMsg, INPUT_CHANNEL};
use shardmesh::protocol::Action;

const BIN: &str = env!("CARGO_BIN_EXE_shardmesh");

/// One world at a time: each test runs a server and a bot process, which is what this 2-core
/// machine is for; two at once would measure the machine's overload, not the mesh.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardmesh-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `serve` with in-process bots and a gateway on a free loopback port; returns the child and the
/// address it listens on. The caller waits for the child (the lint cannot see past the return).
#[allow(clippy::zombie_processes)]
fn serve(dir: &Path, seconds: u32) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["serve", "--data"])
        .arg(dir)
        .args(["--bots", "300", "--cores", "2", "--listen", "127.0.0.1:0", "--duration", &seconds.to_string()])
        .arg("--json")
        .arg(dir.join("serve.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().expect("piped");
    let addr: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let found = addr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("listening for clients on ") {
                let a = a.split_whitespace().next().unwrap_or("");
                *found.lock().unwrap() = a.parse().ok();
            }
        }
    });
    let began = Instant::now();
    loop {
        if let Some(a) = *addr.lock().unwrap() {
            return (child, a);
        }
        if began.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve never said where it listens");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn bots(dir: &Path, addr: SocketAddr, count: usize, behaviour: &str, seconds: u32, first_seat: u64) -> Child {
    Command::new(BIN)
        .args(["bots", "--connect", &addr.to_string(), "--key-file"])
        .arg(dir.join("gateway.key"))
        .args(["--count", &count.to_string(), "--behaviour", behaviour, "--duration", &seconds.to_string()])
        .args(["--first-seat", &first_seat.to_string(), "--threads", "1", "--json"])
        .arg(dir.join(format!("bots-{first_seat}.json")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts")
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn finish(mut child: Child, what: &str) {
    let status = child.wait().unwrap();
    assert!(status.success(), "{what} exited with {status}");
}

fn assert_clean_server(summary: &serde_json::Value) {
    assert_eq!(summary["lost_entities"], 0, "{summary}");
    assert_eq!(summary["duplicate_entities"], 0, "{summary}");
    assert!(summary["audit_error"].is_null(), "{summary}");
    assert_eq!(summary["items_start"], summary["items_end"], "{summary}");
}

fn assert_undisturbed(report: &serde_json::Value, count: u64) {
    assert_eq!(report["connected"], count, "{report}");
    assert_eq!(report["glitches"], 0, "{report}");
    assert_eq!(report["undecodable"], 0, "{report}");
    assert_eq!(report["dropped"], 0, "{report}");
    assert!(report["updates_per_s"].as_f64().unwrap() > 25.0, "{report}");
    assert!(report["latency_samples"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn bots_over_udp_cross_borders_without_a_glitch_and_the_audit_stays_clean() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("clients");
    let (server, addr) = serve(&dir, 14);
    let client = bots(&dir, addr, 40, "commute", 8, 0);
    finish(client, "bots");
    finish(server, "serve");
    let report = json(&dir.join("bots-0.json"));
    assert_undisturbed(&report, 40);
    // Regions are 200 m across; a bot that went 150 m from its start crossed at least one border
    // on most headings, and forty of them cross many.
    assert!(report["max_travel_m"].as_f64().unwrap() > 150.0, "{report}");
    let summary = json(&dir.join("serve.json"));
    assert_clean_server(&summary);
    assert!(summary["handoffs"].as_u64().unwrap() > 0, "{summary}");
    let gateway = &summary["gateway"];
    assert_eq!(gateway["connects"], 40, "{summary}");
    assert!(gateway["inputs"].as_u64().unwrap() > 40 * 100, "{summary}");
    // Updates are differences from what each client acknowledged, within its byte budget.
    let (updates, deltas) = (gateway["updates"].as_u64().unwrap(), gateway["delta_updates"].as_u64().unwrap());
    assert!(deltas * 10 > updates * 9, "{summary}");
    let per_update = gateway["update_bytes"].as_u64().unwrap() / updates;
    let budget = shardmesh::net::CLIENT_BYTES_PER_S_DEFAULT as u64 * shardmesh::limits::TICK_DURATION_US / 1_000_000;
    assert!(per_update <= budget, "{per_update} bytes an update, over {budget}: {summary}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The gateway fuzz target's seed inputs, each as the datagrams it sends raw (the parts sent
/// inside a session are left out: only the target's session can encrypt them).
fn seeds() -> Vec<Vec<Vec<u8>>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/gateway_session");
    let mut inputs = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        let mut parts = Vec::new();
        let mut rest = &data[..];
        // The target's framing: a mode byte (even: raw), a length in 8-byte units, the bytes.
        while let [mode, len, tail @ ..] = rest {
            let len = (*len as usize * 8).min(tail.len());
            let (part, tail) = tail.split_at(len);
            if mode % 2 == 0 {
                parts.push(part.to_vec());
            }
            rest = tail;
        }
        inputs.push(parts);
    }
    assert!(!inputs.is_empty(), "no seeds in {}", dir.display());
    inputs
}

#[test]
fn bad_input_is_dropped_and_counted_while_bots_play_undisturbed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("bad-input");
    let (server, addr) = serve(&dir, 15);
    let players = bots(&dir, addr, 20, "wander", 9, 0);
    std::thread::sleep(Duration::from_secs(2));
    let key: [u8; 32] = shardmesh::net::key::load_or_create(&dir.join("gateway.key")).unwrap();
    // Each kind from its own address, so the flood limit counts only the flood.
    let socket = || UdpSocket::bind("127.0.0.1:0").unwrap();
    // Garbage, truncated packets, and a datagram larger than netcode allows.
    let raw = socket();
    for i in 0..20u8 {
        raw.send_to(&[i.wrapping_mul(37); 64], addr).unwrap();
        raw.send_to(&[5], addr).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    socket().send_to(&[0u8; 1800], addr).unwrap();
    // Connection requests with a token signed by another key, and with an expired one.
    let wrong_key = [7u8; 32];
    let expired_at = unix_now() - Duration::from_secs(3600);
    for (time, key) in [(unix_now(), &wrong_key), (expired_at, &key)] {
        let token = ConnectToken::generate(time, PROTOCOL_ID, 30, 25, 5, vec![addr], None, key).unwrap();
        let mut netcode = NetcodeClient::new(time, ClientAuthentication::Secure { connect_token: token }).unwrap();
        if let Some((packet, to)) = netcode.update(Duration::from_millis(1)) {
            socket().send_to(packet, to).unwrap();
        }
    }
    // A flood from one address of what only a client would send (dropped by its kind), and one
    // of connection requests (well formed, so counted against the address's share).
    let flood = socket();
    for _ in 0..1500 {
        let _ = flood.send_to(&[1u8; 100], addr);
    }
    let requests = socket();
    for _ in 0..1500 {
        let _ = requests.send_to(&[0u8; shardmesh::net::guard::REQUEST_BYTES], addr);
    }
    // A real client that cheats: a move at ten times full speed, an input replayed, a message
    // that is not one, a message far too large, a burst of inputs, and a datagram replayed.
    let mut cheat = RawClient::connect(addr, 30, &key).expect("the raw client connects");
    let input = |seq, action| wire::encode(&ClientMsg::Input { seq, action });
    cheat.send(input(1, Action::Move([10.0, 0.0, 0.0])));
    cheat.send(input(2, Action::Move([1.0, 0.0, 0.0])));
    cheat.send(input(2, Action::Move([1.0, 0.0, 0.0])));
    cheat.send(vec![0xff; 40]);
    cheat.send(vec![0u8; 900]);
    for seq in 3..40 {
        cheat.renet.send_message(INPUT_CHANNEL, input(seq, Action::Move([0.0, 1.0, 0.0])));
    }
    cheat.pump();
    let replay = cheat.last_sent.clone();
    for _ in 0..5 {
        cheat.socket.send_to(&replay, addr).unwrap();
    }
    // From a connected client's address: every kind of datagram that once reached a panic in
    // renetcode (a sequence longer than 8 bytes, no room for the MAC, the top of the sequence
    // range), kinds a client never sends, and the fuzz target's seeds.
    let mut datagrams: Vec<Vec<u8>> = vec![
        [vec![0x95], vec![0; 17]].concat(),
        [vec![0xf5], vec![0xaa; 60]].concat(),
        [vec![0x85], vec![1; 17]].concat(),
        [vec![0x85], vec![0xff; 8], vec![0; 30]].concat(),
        vec![0x07; 40],
        [vec![0x02], vec![0; 324]].concat(),
        vec![0; shardmesh::net::guard::REQUEST_BYTES],
        vec![0x15; 17],
        [vec![0x15, 9], vec![0x33; 60]].concat(),
    ];
    datagrams.extend(seeds().into_iter().flatten());
    for (i, d) in datagrams.iter().enumerate() {
        cheat.socket.send_to(d, addr).unwrap();
        if i % 64 == 0 {
            cheat.pump();
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // A few ticks, so that the cheat's own renet packets above (its acknowledgements) do not use
    // up its authenticated share of the tick the next ones arrive in.
    for _ in 0..5 {
        cheat.pump();
        std::thread::sleep(Duration::from_millis(30));
    }
    // And inside its session: renet packets no client sends (a slice whose index is past its
    // count reached an unchecked index in renet) or that renet cannot read.
    for payload in
        [vec![3u8, 1, INPUT_CHANNEL, 0, 9, 2, 1, 0], vec![2, 1, INPUT_CHANNEL, 0, 0, 1, 1, 0], vec![4, 1, 2, 5, 0]]
    {
        let (to, bytes) = cheat.netcode.generate_payload_packet(&payload).unwrap();
        cheat.socket.send_to(bytes, to).unwrap();
    }
    for _ in 0..20 {
        cheat.pump();
        std::thread::sleep(Duration::from_millis(30));
    }

    assert!(cheat.netcode.is_connected(), "the cheat's own junk never disconnects it");

    finish(players, "bots");
    finish(server, "serve");
    assert_undisturbed(&json(&dir.join("bots-0.json")), 20);
    let summary = json(&dir.join("serve.json"));
    assert_clean_server(&summary);
    let g = &summary["gateway"];
    let count = |k: &str| g[k].as_u64().unwrap_or_else(|| panic!("{k} in {g}"));
    let refused = |k: &str| g["refused"][k].as_u64().unwrap_or_else(|| panic!("refused.{k} in {g}"));
    let refused_total: u64 = g["refused"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert!(count("bad_packets") + refused_total >= 40, "garbage, truncated and replayed datagrams: {g}");
    assert!(refused("sequence") >= 3, "{g}");
    assert!(refused("wrong_size") >= 1, "{g}");
    assert!(refused("unknown_kind") >= 1, "{g}");
    assert!(refused("wrong_peer") >= 100, "the flood of client-only datagrams: {g}");
    assert!(refused("renet_kind") >= 3, "{g}");
    assert!(count("oversized_packets") >= 1, "{g}");
    assert!(count("bad_tokens") >= 2, "a wrong key and an expired token: {g}");
    // The kernel drops part of a flood this fast before the socket is read; what is read past
    // the address's share of a tick is counted.
    assert!(count("flooded_packets") >= 100, "{g}");
    assert!(count("speed_hacks") >= 1, "{g}");
    assert!(count("replayed") >= 1, "{g}");
    assert!(count("malformed") >= 1, "{g}");
    assert!(count("oversized") >= 1, "{g}");
    assert!(count("flooded") >= 1, "{g}");
    assert_eq!(count("connects"), 21, "the bots and the cheat: {g}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn seats_refused_are_said_why_and_never_disturb_their_holders() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("seats");
    let (server, addr) = serve(&dir, 14);
    let holders = bots(&dir, addr, 20, "wander", 9, 0);
    std::thread::sleep(Duration::from_secs(3));
    // Seats 0..5 are held by the first bots; seats 300..305 do not exist (the world has 300).
    let taken = bots(&dir, addr, 5, "wander", 3, 0);
    let missing = Command::new(BIN)
        .args(["bots", "--connect", &addr.to_string(), "--key-file"])
        .arg(dir.join("gateway.key"))
        .args(["--count", "5", "--first-seat", "300", "--duration", "3", "--threads", "1", "--json"])
        .arg(dir.join("bots-300.json"))
        .output()
        .unwrap();
    let taken = taken.wait_with_output().unwrap();
    assert!(!taken.status.success(), "bots refused every seat must fail");
    assert!(!missing.status.success(), "bots refused every seat must fail");
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(said.contains("the world has 300 players"), "{said}");
    let report = json(&dir.join("bots-300.json"));
    assert_eq!(report["held"], false, "{report}");
    assert_eq!(report["never_connected"]["refused_seat"], 5, "{report}");
    assert_eq!(report["connected"], 0, "{report}");
    let report = json(&dir.join("bots-0.json"));
    // (The holders, still playing, have not written theirs yet.) A second connection for a held
    // seat that lands on another endpoint is told why; one that lands on the holder's own
    // endpoint gets no answer at all from netcode, which ignores a request for an id it has.
    let never = &report["never_connected"];
    assert!(never["refused_seat"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(never["refused_seat"].as_u64().unwrap() + never["still_connecting"].as_u64().unwrap(), 5, "{report}");
    assert!(format!("{report}").contains("another client holds it"), "{report}");
    finish(holders, "the seats' holders");
    let report = json(&dir.join("bots-0.json"));
    assert_undisturbed(&report, 20);
    assert_eq!(report["held"], true, "{report}");
    finish(server, "serve");
    let summary = json(&dir.join("serve.json"));
    assert_clean_server(&summary);
    assert!(summary["gateway"]["bad_seats"].as_u64().unwrap() >= 6, "{summary}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_flood_of_random_datagrams_from_strangers_disconnects_nobody() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("flood");
    let (server, addr) = serve(&dir, 13);
    let players = bots(&dir, addr, 60, "wander", 9, 0);
    std::thread::sleep(Duration::from_secs(2));
    // Random datagrams of random sizes from a few addresses that are not clients, as fast as one
    // thread sends them, for five seconds.
    let began = Instant::now();
    let mut sent = 0u64;
    let sockets: Vec<UdpSocket> = (0..4).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut buf = [0u8; 1500];
    while began.elapsed() < Duration::from_secs(5) {
        for b in buf.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        let len = (state >> 20) as usize % buf.len();
        if sockets[sent as usize % 4].send_to(&buf[..len], addr).is_ok() {
            sent += 1;
        }
    }
    finish(players, "bots");
    finish(server, "serve");
    assert!(sent > 50_000, "the flood sent only {sent} datagrams");
    let report = json(&dir.join("bots-0.json"));
    assert_undisturbed(&report, 60);
    assert_eq!(report["held"], true, "{report}");
    let summary = json(&dir.join("serve.json"));
    assert_clean_server(&summary);
    let g = &summary["gateway"];
    let refused: u64 = g["refused"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    let dropped = refused
        + g["bad_packets"].as_u64().unwrap()
        + g["flooded_packets"].as_u64().unwrap()
        + g["oversized_packets"].as_u64().unwrap()
        + g["bad_tokens"].as_u64().unwrap();
    eprintln!("flood: {sent} datagrams sent, {dropped} dropped and counted by the gateway");
    assert!(dropped > sent / 2, "most of the flood reaches the gateway and is counted: {dropped} of {sent}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `shardmesh token` prints what a login service hands a client: a token for that client id,
/// signed with the gateway's key file, that connects to the gateway; a missing key file is an
/// error that names it, never a token signed with a key the gateway does not have.
#[test]
fn a_token_the_token_command_prints_connects() {
    let dir = temp_dir("token");
    let key_file = dir.join("gateway.key");
    let hex: String = shardmesh::net::harness::KEY.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&key_file, format!("{hex}\n")).unwrap();
    let mut session = shardmesh::net::harness::Session::connect(4).expect("a session");
    let token = |key_file: &Path| {
        Command::new(BIN)
            .arg("token")
            .arg("--key-file")
            .arg(key_file)
            .args(["--client-id", "2", "--connect", &session.server_addr.to_string()])
            .output()
            .unwrap()
    };
    let out = token(&key_file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    let token = shardmesh::net::key::token_from_hex(&printed).expect("a token, in hex");
    assert_eq!(token.client_id, 2);
    assert_eq!(token.server_addresses[0], Some(session.server_addr));
    session.connect_another(token).expect("the printed token connects");

    let missing = dir.join("no-such.key");
    let out = Command::new(BIN)
        .arg("token")
        .arg("--key-file")
        .arg(&missing)
        .args(["--client-id", "2", "--connect", "127.0.0.1:7777"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "no token without the gateway's key");
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such.key"), "the error names the file");
    let _ = std::fs::remove_dir_all(&dir);
}
