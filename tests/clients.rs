//! Clients over real UDP on loopback: `shardmesh serve --listen` and `shardmesh bots` as separate
//! processes. Bots commute across region borders and must see no glitch while the server's audit
//! stays clean; and every kind of bad input, sent while bots play, is dropped and counted without
//! disturbing them.

use std::collections::{BTreeMap, BTreeSet};
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
use shardmesh::world::{EntityId, EntityKind};

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
fn serve(dir: &Path, seconds: u32) -> (Child, SocketAddr) {
    let seconds = seconds.to_string();
    serve_with(dir, &["--bots", "300", "--cores", "2", "--listen", "127.0.0.1:0", "--duration", &seconds])
}

/// `serve --data DIR` with `args`, its summary to DIR/serve.json; returns the child and the
/// address it listens on. The caller waits for the child (the lint cannot see past the return).
#[allow(clippy::zombie_processes)]
fn serve_with(dir: &Path, args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["serve", "--data"])
        .arg(dir)
        .args(args)
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
            // Shown with a failing test's output.
            eprintln!("serve: {line}");
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
    // Seats 0..5 are held by the first bots; ids past u32::MAX are no accounts.
    let taken = bots(&dir, addr, 5, "wander", 3, 0);
    let missing = Command::new(BIN)
        .args(["bots", "--connect", &addr.to_string(), "--key-file"])
        .arg(dir.join("gateway.key"))
        .args(["--count", "5", "--first-seat", "4294967296", "--duration", "3", "--threads", "1", "--json"])
        .arg(dir.join("bots-none.json"))
        .output()
        .unwrap();
    let taken = taken.wait_with_output().unwrap();
    assert!(!taken.status.success(), "bots refused every seat must fail");
    assert!(!missing.status.success(), "bots refused every seat must fail");
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(said.contains("accounts are 0..=4294967295"), "{said}");
    let report = json(&dir.join("bots-none.json"));
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
    assert!(format!("{report}").contains("another client is logged in with it"), "{report}");
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

/// `serve` on a fresh world with no bots, its gateway's key the harness's, until it is killed.
#[allow(clippy::zombie_processes)]
fn serve_world(dir: &Path) -> (Child, SocketAddr) {
    serve_world_with(dir, &[])
}

/// `serve_world` with more arguments.
fn serve_world_with(dir: &Path, more: &[&str]) -> (Child, SocketAddr) {
    let key_file = dir.join("gateway.key");
    let hex: String = shardmesh::net::harness::KEY.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&key_file, format!("{hex}\n")).unwrap();
    let key = key_file.to_str().unwrap();
    let args: Vec<&str> = ["--cores", "2", "--listen", "127.0.0.1:0", "--key-file", key]
        .into_iter()
        .chain(more.iter().copied())
        .collect();
    serve_with(dir, &args)
}

/// An account's client: its connection, what it made of its updates, its inputs' numbers.
struct Account {
    client: RawClient,
    viewer: shardmesh::net::viewer::Viewer,
    seq: u32,
}

impl Account {
    fn connect(addr: SocketAddr, account: u64) -> Self {
        let client = RawClient::connect(addr, account, &shardmesh::net::harness::KEY).expect("the account connects");
        Self { client, viewer: Default::default(), seq: 0 }
    }

    /// Takes in what arrived and acknowledges the newest update.
    fn pump(&mut self) {
        self.client.pump();
        let mut ack = None;
        while let Some(bytes) = self.client.renet.receive_message(wire::UPDATE_CHANNEL) {
            if let Ok(update) = wire::decode::<wire::Update>(&bytes) {
                ack = self.viewer.take_update(&update).map(|s| s.tick).or(ack);
            }
        }
        if let Some(tick) = ack {
            self.client.renet.send_message(INPUT_CHANNEL, wire::encode(&ClientMsg::Ack { tick }));
        }
    }

    fn act(&mut self, action: Action) {
        self.seq += 1;
        self.client.send(wire::encode(&ClientMsg::Input { seq: self.seq, action }));
    }

    fn me(&self) -> Option<glam::Vec3> {
        self.viewer.me
    }

    /// What the player carries, as it sees it: items shown carried where it stands.
    fn carrying(&self) -> usize {
        let Some(me) = self.me() else { return 0 };
        let at = |k: &wire::Known| glam::Vec3::from_array(k.seen.position.map(|c| c as f32 / 100.0));
        self.viewer
            .view()
            .iter()
            .filter(|k| k.seen.kind.is_item() && k.seen.carried && at(k).distance(me) < 0.5)
            .count()
    }
}

/// Pumps every account for `seconds` at the clients' 30 Hz, calling `each` once a tick for each.
fn play(accounts: &mut [Account], seconds: f64, each: impl FnMut(usize, &mut Account)) {
    play_until(accounts, seconds, each, |_| false)
}

/// `play`, ending early once `done` holds for them all.
fn play_until(
    accounts: &mut [Account],
    seconds: f64,
    mut each: impl FnMut(usize, &mut Account),
    done: impl Fn(&[Account]) -> bool,
) {
    let began = Instant::now();
    while began.elapsed().as_secs_f64() < seconds && !done(accounts) {
        for (i, a) in accounts.iter_mut().enumerate() {
            a.pump();
            each(i, a);
        }
        std::thread::sleep(Duration::from_millis(33));
    }
}

/// The world as its log holds it: each account's player (where it is, what it carries).
fn accounts_in_log(dir: &Path) -> BTreeMap<u32, (glam::Vec3, BTreeSet<EntityId>)> {
    let disk = shardmesh::log::Disk::open(dir).unwrap();
    let world = shardmesh::log::recover(&disk, false).expect("the log reads back");
    let mut out: BTreeMap<u32, (glam::Vec3, BTreeSet<EntityId>)> = BTreeMap::new();
    for c in &world.entities {
        if let Some(account) = c.id.account() {
            assert_eq!(c.state.kind, EntityKind::Player, "{c:?}");
            out.entry(account).or_default().0 = c.state.pos();
        }
    }
    for c in &world.entities {
        if let Some(account) = c.state.parent.and_then(|p| p.account()) {
            out.get_mut(&account).expect("a carrier recorded").1.insert(c.id);
        }
    }
    out
}

/// Accounts are players that persist: 50 accounts join a fresh world with no bots, walk to an
/// item each, pick it up (half drop it again), and log out; the server is killed outright and
/// restarted; the same accounts log in again and find their players where the log committed
/// them, carrying what they carried: 50 players, not 100.
#[test]
fn accounts_log_out_and_back_in_after_a_kill_where_they_were_with_what_they_carried() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const ACCOUNTS: u64 = 50;
    const FIRST: u64 = 1_000;
    let dir = temp_dir("accounts");
    let (mut server, addr) = serve_world(&dir);
    let mut accounts: Vec<Account> = Vec::new();
    for k in 0..ACCOUNTS {
        accounts.push(Account::connect(addr, FIRST + k));
        accounts.iter_mut().for_each(Account::pump);
    }
    let all_shown = |a: &[Account]| a.iter().all(|a| a.me().is_some());
    play_until(&mut accounts, 10.0, |_, _| {}, all_shown);
    let shown = accounts.iter().filter(|a| a.me().is_some()).count();
    let updates: u64 = accounts.iter().map(|a| a.viewer.counts.updates).sum();
    assert_eq!(shown, ACCOUNTS as usize, "every account's player was made and shown to it ({updates} updates)");
    let spawn = accounts[0].me().unwrap();

    // An item each, the nearest to the spawn point first, from the world the log was made with.
    let disk = shardmesh::log::Disk::open(&dir).unwrap();
    let world = shardmesh::log::recover(&disk, false).unwrap();
    let mut loose: Vec<(EntityId, glam::Vec3)> = world
        .entities
        .iter()
        .filter(|c| c.state.kind.is_item() && c.state.parent.is_none())
        .map(|c| (c.id, c.state.pos()))
        .collect();
    loose.sort_by(|a, b| a.1.distance(spawn).total_cmp(&b.1.distance(spawn)));
    let targets: Vec<glam::Vec3> = loose.iter().take(ACCOUNTS as usize).map(|(_, at)| *at).collect();
    assert_eq!(targets.len(), ACCOUNTS as usize, "the world has items enough");

    // Walk there (slowing down on the way in), stop, pick it up; the even accounts drop it again.
    let mut stopped = vec![false; ACCOUNTS as usize];
    let dropping = std::cell::RefCell::new(vec![false; ACCOUNTS as usize]);
    let done = |a: &[Account]| {
        let dropped = dropping.borrow();
        // All but a few: two targets side by side may both be taken by one of their walkers.
        let done = a.iter().enumerate().filter(|(i, a)| if i % 2 == 0 { dropped[*i] } else { a.carrying() > 0 });
        done.count() + 3 >= a.len()
    };
    play_until(
        &mut accounts,
        30.0,
        |i, a| {
            let dropped = &mut dropping.borrow_mut();
            let Some(me) = a.me() else { return };
            let to = targets[i] - me;
            if dropped[i] || (i % 2 == 1 && a.carrying() > 0) {
                a.act(Action::Move([0.0; 3]));
            } else if a.carrying() > 0 {
                a.act(Action::Drop);
                dropped[i] = true;
            } else if to.length() > 1.5 {
                a.act(Action::Move((to.normalize() * (to.length() / 3.0).min(1.0)).to_array()));
                stopped[i] = false;
            } else if !stopped[i] {
                a.act(Action::Move([0.0; 3]));
                stopped[i] = true;
            } else {
                a.act(Action::PickUp);
            }
        },
        done,
    );
    let dropped = dropping.into_inner();
    play(&mut accounts, 1.0, |_, a| a.act(Action::Move([0.0; 3])));
    play(&mut accounts, 1.0, |_, _| {});
    // What each carries, as its client sees it: an account that asked to pick up again before it
    // saw its first item carried may hold two.
    let carrying: Vec<usize> = accounts.iter().map(Account::carrying).collect();
    let carriers = carrying.iter().filter(|n| **n > 0).count();
    let droppers = dropped.iter().filter(|d| **d).count();
    assert!(carriers >= 10 && droppers >= 10, "{carriers} carry an item, {droppers} dropped theirs");
    let seen: Vec<glam::Vec3> = accounts.iter().map(|a| a.me().unwrap()).collect();
    for a in &mut accounts {
        a.client.disconnect();
    }
    drop(accounts);
    // Long enough for every logout to be handed back, parked and synced (the log syncs every tick).
    std::thread::sleep(Duration::from_secs(2));
    server.kill().unwrap();
    server.wait().unwrap();

    let before = accounts_in_log(&dir);
    assert_eq!(before.len(), ACCOUNTS as usize, "one player an account");
    for (k, at) in seen.iter().enumerate() {
        let (committed, _) = &before[&((FIRST + k as u64) as u32)];
        assert!(committed.distance(*at) < 0.5, "account {k}: committed at {committed}, last seen at {at}");
    }
    for (k, seen) in carrying.iter().enumerate() {
        let (_, items) = &before[&((FIRST + k as u64) as u32)];
        assert_eq!(items.len(), *seen, "account {k}: the log has it carrying {items:?}, its client saw {seen}");
    }

    let (server, addr) = serve_world(&dir);
    let mut accounts: Vec<Account> = Vec::new();
    for k in 0..ACCOUNTS {
        accounts.push(Account::connect(addr, FIRST + k));
        accounts.iter_mut().for_each(Account::pump);
    }
    let back = |a: &[Account]| {
        a.iter()
            .enumerate()
            .all(|(k, a)| a.me().is_some() && a.carrying() == before[&((FIRST + k as u64) as u32)].1.len())
    };
    play_until(&mut accounts, 10.0, |_, _| {}, back);
    for (k, a) in accounts.iter().enumerate() {
        let (committed, items) = &before[&((FIRST + k as u64) as u32)];
        let me = a.me().unwrap_or_else(|| panic!("account {k} was shown its player"));
        assert!(me.distance(*committed) < 0.5, "account {k}: back at {me}, committed at {committed}");
        assert_eq!(a.carrying(), items.len(), "account {k} carries what it carried");
    }
    for a in &mut accounts {
        a.client.disconnect();
    }
    drop(accounts);
    std::thread::sleep(Duration::from_secs(1));
    // SIGTERM: commit, sync, summary.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    finish(server, "serve");
    let summary = json(&dir.join("serve.json"));
    assert_clean_server(&summary);
    assert_eq!(summary["players"], ACCOUNTS, "{summary}");
    assert_eq!(summary["players_offline"], ACCOUNTS, "all logged out at the end: {summary}");
    assert_eq!(summary["players_created"], 0, "none made anew: {summary}");
    let after = accounts_in_log(&dir);
    for (account, (_, items)) in &before {
        assert_eq!(&after[account].1, items, "account {account} still carries what it carried");
    }
    let out = Command::new(BIN).args(["log", "verify", "--json"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["players"], ACCOUNTS, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bots are accounts: `bots --behaviour churn` on a fresh world with no in-process players logs
/// each bot in (its player made at the spawn point), out a few seconds later (parked with what it
/// carries) and in again, over and over: one player an account however often it comes back, and
/// no bot is ever refused, disturbed or shown a glitch.
#[test]
fn churning_bots_log_out_and_back_in_as_accounts_one_player_each() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const COUNT: usize = 24;
    const FIRST: u64 = 5_000;
    let dir = temp_dir("churn");
    let (server, addr) = serve_world_with(&dir, &["--duration", "17"]);
    let client = bots(&dir, addr, COUNT, "churn", 12, FIRST);
    finish(client, "bots");
    finish(server, "serve");
    let report = json(&dir.join(format!("bots-{FIRST}.json")));
    assert_eq!(report["held"], true, "{report}");
    assert_eq!(report["ever_connected"], COUNT, "{report}");
    // Each leaves 3-8 s after it connects and is back a second later: in 12 s, most twice.
    let reconnects = report["reconnects"].as_u64().unwrap();
    assert!(reconnects >= COUNT as u64, "{reconnects} reconnects: {report}");
    assert_eq!(report["glitches"], 0, "{report}");
    assert_eq!(report["undecodable"], 0, "{report}");
    assert_eq!(report["never_connected"]["refused_seat"], 0, "{report}");
    let summary = json(&dir.join("serve.json"));
    assert_clean_server(&summary);
    assert_eq!(summary["players"], COUNT, "one player an account: {summary}");
    assert_eq!(summary["players_created"], COUNT, "{summary}");
    let logins = summary["gateway"]["connects"].as_u64().unwrap();
    assert!(logins >= COUNT as u64 + reconnects / 2, "{logins} logins for {reconnects} reconnects: {summary}");
    // The log agrees: every account's player is in it, once.
    let log = accounts_in_log(&dir);
    assert_eq!(log.len(), COUNT, "{log:?}");
    assert!(log.keys().all(|a| (FIRST..FIRST + COUNT as u64).contains(&u64::from(*a))), "{log:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
