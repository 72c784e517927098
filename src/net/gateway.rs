//! The gateway: where clients connect, on the replication layer's side of the mesh, so a server
//! crash or a handoff disconnects nobody.
//!
//! Clients speak netcode (renetcode: connect tokens signed with the private key, encrypted and
//! authenticated packets, replay protection) under renet's channels. Each core runs its own
//! gateway endpoints: UDP sockets bound to one address with SO_REUSEPORT, so the kernel shares
//! clients out across cores by their address and each client stays with one core.
//!
//! A client's token names its seat: seat `k` drives the `k`th player of the world. Its inputs go
//! to the replication slice of the gateway's core, which passes them to whichever server holds
//! the player (here or on another core). Once a tick the gateway sends each client its bubble:
//! the entities within `BUBBLE_RADIUS_M` of its player, read from every core's view of the tick,
//! the nearest `SEEN_PER_UPDATE_MAX`, positions quantized. An entity that vanishes from every view
//! while it is handed between servers (or cores) is shown where it was heading for up to
//! `HANDOFF_HOLD_US`, so the client sees no gap.
//!
//! An update is a difference from the last one the client acknowledged (`wire::Snapshot`): what
//! goes on as the client predicts from that one costs nothing. What has strayed is sent under a
//! byte budget per client: each entity's priority grows every tick it waits, by a weight for its
//! size and nearness, and the highest go first. What does not fit stays as the client last had
//! it, and an entity new to the bubble waits its turn to enter.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use glam::Vec3;
use renet::{ChannelConfig, ClientId, ConnectionConfig, RenetServer, SendType, ServerEvent};
use renetcode::{NetcodeServer, ServerAuthentication, ServerConfig, ServerResult, NETCODE_MAX_PACKET_BYTES};
use rustc_hash::{FxHashMap, FxHashSet};

use super::guard::{self, Refusal, Refused};
use super::key::Key;
use super::transport::AckPacer;
use super::update::{Bubbles, ClientView};
use super::wire::{self, ClientMsg, Notice, INPUT_BYTES_MAX, INPUT_CHANNEL, NOTICE_CHANNEL, UPDATE_CHANNEL};
pub use crate::limits::{
    BUBBLE_RADIUS_M, CLIENTS_PER_ENDPOINT_MAX, CLIENT_BYTES_PER_S_DEFAULT, RECEIVE_BUFFER_BYTES, SEEN_PER_UPDATE_MAX,
};
use crate::limits::{
    CONTROL_PACKETS_PER_CLIENT_PER_TICK_MAX, MESSAGES_PER_CLIENT_PER_TICK_MAX, PACKETS_PER_ADDRESS_PER_TICK_MAX,
    PACKETS_PER_ENDPOINT_PER_TICK_MAX, TICK_DURATION_US, VIEWS_KEPT,
};
pub use crate::node::Session;
use crate::protocol::Action;
use crate::world::{EntityId, Tick};

/// Identifies shardmesh's netcode traffic (and its version): a token for another protocol is
/// refused.
pub const PROTOCOL_ID: u64 = 0x5348_4d45_5348_0001;

/// Client inputs and server updates, both unreliable: each is overtaken by the next.
pub fn connection_config() -> ConnectionConfig {
    let channel = |channel_id, bytes| ChannelConfig {
        channel_id,
        max_memory_usage_bytes: bytes,
        send_type: SendType::Unreliable,
    };
    ConnectionConfig {
        available_bytes_per_tick: 64 << 10,
        server_channels_config: vec![channel(UPDATE_CHANNEL, 256 << 10), channel(NOTICE_CHANNEL, 4 << 10)],
        client_channels_config: vec![channel(INPUT_CHANNEL, 16 << 10)],
    }
}

/// Time since the Unix epoch, which connect tokens are stamped with.
pub fn unix_now() -> Duration {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
}

/// Binds `count` UDP sockets to `addr` with SO_REUSEPORT (one port: the first socket's, when
/// `addr` asks for any port).
pub fn bind_endpoints(addr: SocketAddr, count: usize) -> std::io::Result<Vec<UdpSocket>> {
    let mut sockets: Vec<UdpSocket> = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        size_receive_buffer(&socket);
        socket.bind(&addr.into())?;
        let socket: UdpSocket = socket.into();
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Asks for `RECEIVE_BUFFER_BYTES` of receive queue: past the system's `rmem_max` where the
/// process may (SO_RCVBUFFORCE, as root), else as much as `rmem_max` allows. Returns the size the
/// kernel granted (which it reports doubled, for its bookkeeping).
pub fn size_receive_buffer(socket: &socket2::Socket) -> usize {
    use std::os::fd::AsRawFd;
    let bytes = RECEIVE_BUFFER_BYTES as libc::c_int;
    // SAFETY: a valid socket descriptor, and a pointer to a c_int that outlives the call with its
    // size; the kernel reads it and writes nothing.
    let forced = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if forced != 0 {
        let _ = socket.set_recv_buffer_size(RECEIVE_BUFFER_BYTES);
    }
    socket.recv_buffer_size().unwrap_or(0)
}

/// Which player each connecting client drives, and which players clients drive now (the
/// in-process bots leave those alone). Shared by every core.
///
/// A token's client id is an account. The world's own players (made with it, `--bots N`) are
/// accounts `0..N`, seats the in-process bots drive while no client does. Any other id up to
/// `u32::MAX` is an account whose player (`EntityId::of_account`) is made at the spawn point the
/// first time it logs in, parked by the replication layer when it logs out, and given back where
/// it was when it logs in again.
#[derive(Default)]
pub struct Seats {
    players: Vec<EntityId>,
    taken: RwLock<FxHashSet<EntityId>>,
    /// Accounts' players that exist (read back from the log, or made since).
    known: Mutex<FxHashSet<EntityId>>,
    /// The last session number handed out: logins are numbered across every core.
    sessions: AtomicU64,
}

impl Seats {
    pub fn new(players: Vec<EntityId>) -> Self {
        Self { players, ..Self::default() }
    }
    /// Seats for the world's own `players`, and the accounts' players it already has.
    pub fn with_accounts(players: Vec<EntityId>, known: impl IntoIterator<Item = EntityId>) -> Self {
        Self { players, known: Mutex::new(known.into_iter().collect()), ..Self::default() }
    }
    /// The player account `account` drives: a seat, or the account's own.
    pub fn player(&self, account: u64) -> Option<EntityId> {
        match usize::try_from(account).ok().and_then(|a| self.players.get(a)) {
            Some(seat) => Some(*seat),
            None => u32::try_from(account).ok().map(EntityId::of_account),
        }
    }
    /// The world's own players (seats).
    pub fn len(&self) -> usize {
        self.players.len()
    }
    pub fn is_empty(&self) -> bool {
        self.players.is_empty()
    }
    /// Accounts' players that exist.
    pub fn accounts(&self) -> usize {
        self.known.lock().expect("not poisoned").len()
    }
    /// The players clients drive now.
    pub fn taken(&self) -> std::sync::RwLockReadGuard<'_, FxHashSet<EntityId>> {
        self.taken.read().expect("not poisoned")
    }
    fn take(&self, player: EntityId) -> bool {
        self.taken.write().expect("not poisoned").insert(player)
    }
    fn free(&self, player: EntityId) {
        self.taken.write().expect("not poisoned").remove(&player);
    }
    /// A login of `player` (an account's, just taken): its session number, and whether the
    /// account is new (its player is to be made).
    fn log_in(&self, player: EntityId) -> (u64, bool) {
        let session = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        (session, self.known.lock().expect("not poisoned").insert(player))
    }
}

pub use crate::node::view::{ArchivedViewEntity, ViewEntity};

/// Every core's view of its entities, as of its last tick: each core replaces its own, and every
/// gateway reads them all. A view is a compact spatial snapshot: an rkyv archive in a shared
/// memory mapping of its own (anonymous, like the rings between cores), made read-only once
/// written, that gateways read in place on whichever core they run, without copying or decoding.
pub struct Views {
    /// Each core's newest views, newest first, with the tick each is of.
    slots: Vec<Mutex<[View; VIEWS_KEPT]>>,
    /// The newest tick whose clients' inputs each core has sent on to the others.
    inputs_sent: Vec<AtomicU64>,
}

type View = Arc<CoreSnapshot>;

/// One core's entities as of one tick, archived in a read-only shared mapping.
pub struct CoreSnapshot {
    tick: Tick,
    map: memmap2::Mmap,
    /// The archive's length (the mapping is whole pages).
    len: usize,
}

impl CoreSnapshot {
    fn new(tick: Tick, entities: &Vec<ViewEntity>) -> Self {
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(entities).expect("plain data serializes");
        // A mapping is page-aligned, so the archive keeps the alignment rkyv gave it. Failing to
        // map a few pages is running out of memory, as failing to allocate is.
        let mut map = memmap2::MmapOptions::new().len(archive.len().max(1)).map_anon().expect("a mapping for a view");
        map[..archive.len()].copy_from_slice(&archive);
        let map = map.make_read_only().expect("a view's mapping made read-only");
        Self { tick, map, len: archive.len() }
    }
    /// The entities, read in place.
    pub fn entities(&self) -> &rkyv::Archived<Vec<ViewEntity>> {
        // SAFETY: the mapping's first `len` bytes are what `rkyv::to_bytes` made of a
        // `Vec<ViewEntity>` in `new`, copied to a page-aligned start, and the mapping is
        // read-only from then on: only `new` makes a snapshot.
        unsafe { rkyv::access_unchecked::<rkyv::Archived<Vec<ViewEntity>>>(&self.map[..self.len]) }
    }
}

/// An archived entity as the gateway works with it.
fn unpack(e: &ArchivedViewEntity) -> ViewEntity {
    rkyv::deserialize::<ViewEntity, rkyv::rancor::Infallible>(e).unwrap_or_else(|never| match never {})
}

impl Views {
    pub fn new(cores: usize) -> Self {
        let empty = || Arc::new(CoreSnapshot::new(Tick::ZERO, &Vec::new()));
        Self {
            slots: (0..cores).map(|_| Mutex::new(std::array::from_fn(|_| empty()))).collect(),
            inputs_sent: (0..cores).map(|_| AtomicU64::new(0)).collect(),
        }
    }
    /// Core `core` has sent the other cores the inputs its gateway took in tick `tick`.
    pub fn inputs_sent(&self, core: usize, tick: Tick) {
        self.inputs_sent[core].fetch_max(tick.get(), Ordering::Release);
    }
    /// Whether every core has sent on its clients' inputs of `tick` (or a later one).
    pub fn all_inputs_sent(&self, tick: Tick) -> bool {
        self.inputs_sent.iter().all(|t| t.load(Ordering::Acquire) >= tick.get())
    }
    /// Core `core`'s entities as of the end of its tick `tick`.
    pub fn publish(&self, core: usize, tick: Tick, view: Vec<ViewEntity>) {
        let snapshot = Arc::new(CoreSnapshot::new(tick, &view));
        let mut slot = self.slots[core].lock().expect("not poisoned");
        slot.rotate_right(1);
        slot[0] = snapshot;
    }
    /// Whether every core has published its view of `tick` (or a later one).
    pub fn all_reached(&self, tick: Tick) -> bool {
        self.slots.iter().all(|s| s.lock().expect("not poisoned")[0].tick >= tick)
    }
    /// The newest tick every core has a view of, up to `tick`.
    fn common_tick(&self, tick: Tick) -> Tick {
        self.slots.iter().map(|s| s.lock().expect("not poisoned")[0].tick).min().unwrap_or_default().min(tick)
    }
    /// What every core handed off in its views of the ticks after `after` and before `before`:
    /// a gateway that skipped those ticks still learns where those entities left from.
    /// Each with the tick of its view.
    fn leaving_between(&self, after: Tick, before: Tick) -> Vec<(ViewEntity, Tick)> {
        let mut out = Vec::new();
        for s in &self.slots {
            let slot = s.lock().expect("not poisoned");
            for view in slot.iter().filter(|v| v.tick > after && v.tick < before) {
                out.extend(view.entities().iter().filter(|e| e.leaving).map(|e| {
                    let e = unpack(e);
                    (e, e.as_of(view.tick))
                }));
            }
        }
        out
    }

    /// Each core's view of `tick` (or, if it has run too far ahead to keep it, its oldest).
    fn at(&self, tick: Tick) -> Vec<View> {
        self.slots
            .iter()
            .map(|s| {
                let slot = s.lock().expect("not poisoned");
                slot.iter().find(|v| v.tick <= tick).unwrap_or(&slot[VIEWS_KEPT - 1]).clone()
            })
            .collect()
    }
}

/// What the gateway counted: clients, and every kind of bad input it dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GatewayStats {
    pub connected: u64,
    pub connects: u64,
    pub disconnects: u64,
    pub inputs: u64,
    pub updates: u64,
    /// Updates sent as differences from one the client acknowledged.
    pub delta_updates: u64,
    pub update_bytes: u64,
    /// Messages that did not decode, or were too large.
    pub malformed: u64,
    pub oversized: u64,
    /// A client's inputs beyond what one tick reads.
    pub flooded: u64,
    /// Inputs numbered no higher than one already taken (a replay or a reorder).
    pub replayed: u64,
    /// Tokens for an id that is no account, or for a player another client drives.
    pub bad_seats: u64,
    /// Accounts logged in (a seat taken is not counted).
    pub logins: u64,
    /// Connection requests refused: a token expired, signed with another key, for another
    /// protocol or address, or unreadable.
    pub bad_tokens: u64,
    /// Datagrams netcode refused: failing authentication, replayed, or a challenge response
    /// it did not issue.
    pub bad_packets: u64,
    /// Datagrams (and renet packets inside authenticated ones) dropped before either library saw
    /// them, by why (`guard`).
    pub refused: Refused,
    /// Datagrams larger than netcode allows.
    pub oversized_packets: u64,
    /// Datagrams past one address's share of a tick.
    pub flooded_packets: u64,
    /// Moves asking for more than full speed.
    pub speed_hacks: u64,
    /// Socket errors.
    pub transport_errors: u64,
    /// Cores' views newer than the tick sent, the core having run more than the views kept ahead
    /// of the slowest: their entities are shown as of the tick sent.
    pub late_views: u64,
    /// renet acknowledgement packets not sent (one a second goes; see `transport`).
    pub acks_paced: u64,
}

impl GatewayStats {
    pub fn add(&mut self, other: &GatewayStats) {
        self.connected += other.connected;
        self.connects += other.connects;
        self.disconnects += other.disconnects;
        self.inputs += other.inputs;
        self.updates += other.updates;
        self.delta_updates += other.delta_updates;
        self.update_bytes += other.update_bytes;
        self.malformed += other.malformed;
        self.oversized += other.oversized;
        self.flooded += other.flooded;
        self.replayed += other.replayed;
        self.bad_seats += other.bad_seats;
        self.logins += other.logins;
        self.bad_tokens += other.bad_tokens;
        self.bad_packets += other.bad_packets;
        self.refused.add(&other.refused);
        self.oversized_packets += other.oversized_packets;
        self.flooded_packets += other.flooded_packets;
        self.speed_hacks += other.speed_hacks;
        self.transport_errors += other.transport_errors;
        self.late_views += other.late_views;
        self.acks_paced += other.acks_paced;
    }
}

/// One socket with its netcode server and renet connections. (renet_netcode's transport does the
/// same loop, but drops what it refuses without a word; this one counts it.)
struct Endpoint {
    socket: UdpSocket,
    netcode: NetcodeServer,
    server: RenetServer,
    /// Connected clients by address.
    addrs: FxHashMap<SocketAddr, ClientId>,
    /// Datagrams from each address this tick that were counted before authentication: every
    /// datagram from an address with no connection, and a client's keep-alives and disconnects.
    per_addr: FxHashMap<SocketAddr, u32>,
    /// What each connection sent this tick, counted once netcode has authenticated it.
    peers: FxHashMap<ClientId, PeerCount>,
    /// Each connection's pace of renet acknowledgements, and the tick its packets were last sent.
    acks: FxHashMap<ClientId, (AckPacer, Tick)>,
    /// Game time a tick is.
    tick_us: u64,
}

/// A connection's authenticated traffic: its packets this tick.
#[derive(Default)]
struct PeerCount {
    packets: u32,
}

/// Where a netcode server's answer goes: the socket, renet, and the endpoint's books.
struct Sink<'a> {
    socket: &'a UdpSocket,
    server: &'a mut RenetServer,
    addrs: &'a mut FxHashMap<SocketAddr, ClientId>,
    peers: &'a mut FxHashMap<ClientId, PeerCount>,
}

impl Sink<'_> {
    fn send(&self, payload: &[u8], addr: SocketAddr, stats: &mut GatewayStats) {
        if self.socket.send_to(payload, addr).is_err() {
            stats.transport_errors += 1;
        }
    }

    /// Does what a netcode server's answer asks for: a datagram out, a payload for renet (if it is
    /// one a client sends, within its share of the tick), a connection. Whether it asked anything.
    fn apply(&mut self, result: ServerResult, stats: &mut GatewayStats) -> bool {
        match result {
            ServerResult::None => return false,
            ServerResult::PacketToSend { addr, payload } => self.send(payload, addr, stats),
            ServerResult::Payload { client_id, payload } => {
                let peer = self.peers.entry(client_id).or_default();
                peer.packets += 1;
                if peer.packets > PACKETS_PER_ADDRESS_PER_TICK_MAX {
                    stats.flooded_packets += 1;
                    return true;
                }
                if let Err(why) = guard::client_payload(payload) {
                    stats.refused.count(why);
                    return true;
                }
                if self.server.process_packet_from(payload, client_id).is_err() {
                    stats.bad_packets += 1;
                }
            }
            ServerResult::ClientConnected { client_id, addr, payload, .. } => {
                self.server.add_connection(client_id);
                self.addrs.insert(addr, client_id);
                self.peers.insert(client_id, PeerCount::default());
                self.send(payload, addr, stats);
            }
            ServerResult::ClientDisconnected { client_id, addr, payload } => {
                self.server.remove_connection(client_id);
                self.addrs.remove(&addr);
                self.peers.remove(&client_id);
                if let Some(payload) = payload {
                    self.send(payload, addr, stats);
                }
            }
        }
        true
    }
}

impl Endpoint {
    fn sink(&mut self) -> (Sink<'_>, &mut NetcodeServer) {
        let sink =
            Sink { socket: &self.socket, server: &mut self.server, addrs: &mut self.addrs, peers: &mut self.peers };
        (sink, &mut self.netcode)
    }

    /// Starts a tick: every address's share is new, netcode's clock moves on, what arrived is
    /// read, and netcode's timers (keep-alives, time-outs) and renet's disconnections are served.
    fn receive(&mut self, elapsed: Duration, stats: &mut GatewayStats) {
        self.netcode.update(elapsed);
        self.per_addr.clear();
        for peer in self.peers.values_mut() {
            peer.packets = 0;
        }
        self.drain(stats);
        for client_id in self.netcode.clients_id() {
            let (mut sink, netcode) = self.sink();
            let result = netcode.update_client(client_id);
            sink.apply(result, stats);
        }
        for client_id in self.server.disconnections_id() {
            let (mut sink, netcode) = self.sink();
            let result = netcode.disconnect(client_id);
            sink.apply(result, stats);
        }
    }

    /// Reads what arrived (at most `PACKETS_PER_ENDPOINT_PER_TICK_MAX`), checking each datagram
    /// before netcode sees it and counting what either refuses. Between ticks too, so that a
    /// flood does not fill the socket's queue and push real clients' packets out of it.
    fn drain(&mut self, stats: &mut GatewayStats) -> usize {
        let mut buffer = [0u8; 2 * NETCODE_MAX_PACKET_BYTES];
        for read in 0..PACKETS_PER_ENDPOINT_PER_TICK_MAX {
            let (len, addr) = match self.socket.recv_from(&mut buffer) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return read,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
                Err(_) => {
                    stats.transport_errors += 1;
                    return read;
                }
            };
            self.take(addr, &mut buffer[..len], stats);
        }
        PACKETS_PER_ENDPOINT_PER_TICK_MAX
    }

    /// One datagram from `addr`.
    fn take(&mut self, addr: SocketAddr, datagram: &mut [u8], stats: &mut GatewayStats) {
        let known = self.addrs.contains_key(&addr);
        let peer = if known { guard::Peer::Client } else { guard::Peer::Stranger };
        let kind = match guard::datagram(datagram, peer) {
            Ok(kind) => kind,
            Err(Refusal::Oversized) => {
                stats.oversized_packets += 1;
                return;
            }
            Err(why) => {
                stats.refused.count(why);
                return;
            }
        };
        // What cannot carry a client's inputs is counted against its address before netcode
        // spends a decryption on it. A client's payloads are counted once authenticated: junk
        // spoofed from its address must not use up its share.
        if kind != guard::NETCODE_PAYLOAD {
            let count = self.per_addr.entry(addr).or_default();
            *count += 1;
            let share = if known { CONTROL_PACKETS_PER_CLIENT_PER_TICK_MAX } else { PACKETS_PER_ADDRESS_PER_TICK_MAX };
            if *count > share {
                stats.flooded_packets += 1;
                return;
            }
        }
        let (mut sink, netcode) = self.sink();
        let result = netcode.process_packet(addr, datagram);
        if !sink.apply(result, stats) {
            match kind {
                // A connection request that earned no challenge.
                guard::NETCODE_REQUEST => stats.bad_tokens += 1,
                // A keep-alive from a client needs no answer (one that failed its
                // authentication cannot be told from it here).
                guard::NETCODE_KEEP_ALIVE => {}
                _ => stats.bad_packets += 1,
            }
        }
    }

    /// Sends what renet has queued for every client not yet sent to in `tick`.
    fn send(&mut self, tick: Tick, stats: &mut GatewayStats) {
        if tick.is_every(AckPacer::new(self.tick_us).every()) {
            let server = &self.server;
            self.acks.retain(|id, _| server.is_connected(*id));
        }
        for client_id in self.server.clients_id() {
            if self.acks.get(&client_id).is_none_or(|a| a.1 != tick) {
                self.send_client(client_id, tick, stats);
            }
        }
    }

    /// Sends what renet has queued for one client (once a tick: each call has renet make an
    /// acknowledgement packet).
    fn send_client(&mut self, client_id: ClientId, tick: Tick, stats: &mut GatewayStats) {
        let Ok(packets) = self.server.get_packets_to_send(client_id) else { return };
        let tick_us = self.tick_us;
        let (acks, sent) = self.acks.entry(client_id).or_insert_with(|| (AckPacer::new(tick_us), Tick::ZERO));
        *sent = tick;
        for packet in packets {
            if !acks.pass(&packet, tick) {
                stats.acks_paced += 1;
                continue;
            }
            match self.netcode.generate_payload_packet(client_id, &packet) {
                Ok((addr, payload)) => {
                    if self.socket.send_to(payload, addr).is_err() {
                        stats.transport_errors += 1;
                        break;
                    }
                }
                Err(_) => {
                    stats.transport_errors += 1;
                    break;
                }
            }
        }
    }

    fn disconnect_all(&mut self, stats: &mut GatewayStats) {
        for client_id in self.netcode.clients_id() {
            let (mut sink, netcode) = self.sink();
            let result = netcode.disconnect(client_id);
            sink.apply(result, stats);
        }
    }
}

struct Client {
    endpoint: usize,
    last_seq: u32,
    view: ClientView,
    /// The account's session, for an account's player (not a seat).
    session: Option<u64>,
}

impl Client {
    fn new(endpoint: usize, player: EntityId) -> Self {
        Self { endpoint, last_seq: 0, view: ClientView::new(player), session: None }
    }
}

pub struct Gateway {
    endpoints: Vec<Endpoint>,
    clients: FxHashMap<ClientId, Client>,
    seats: Arc<Seats>,
    last_poll: Instant,
    /// The tick of the last updates sent: each tick's go out once.
    last_sent_tick: Tick,
    client_bytes_per_s: u32,
    bubbles: Bubbles,
    /// Connections refused a seat, told why this tick, closed at the next poll.
    refusing: Vec<(usize, ClientId)>,
    /// Accounts' logins and logouts since the node last took them.
    sessions: Vec<Session>,
    pub stats: GatewayStats,
}

impl Gateway {
    /// A gateway on `sockets` (bound to `public`), taking tokens signed with `key`; `insecure`
    /// accepts clients with no token at all, for development only. Each client is sent
    /// `client_bytes_per_s` of updates at most.
    pub fn new(
        sockets: Vec<UdpSocket>,
        public: SocketAddr,
        key: Key,
        insecure: bool,
        client_bytes_per_s: u32,
        seats: Arc<Seats>,
    ) -> std::io::Result<Self> {
        let mut endpoints = Vec::new();
        for socket in sockets {
            let config = ServerConfig {
                current_time: unix_now(),
                max_clients: CLIENTS_PER_ENDPOINT_MAX,
                protocol_id: PROTOCOL_ID,
                public_addresses: vec![public],
                authentication: if insecure {
                    ServerAuthentication::Unsecure
                } else {
                    ServerAuthentication::Secure { private_key: key }
                },
            };
            socket.set_nonblocking(true)?;
            endpoints.push(Endpoint {
                socket,
                netcode: NetcodeServer::new(config),
                server: RenetServer::new(connection_config()),
                addrs: FxHashMap::default(),
                per_addr: FxHashMap::default(),
                peers: FxHashMap::default(),
                acks: FxHashMap::default(),
                tick_us: TICK_DURATION_US,
            });
        }
        Ok(Self {
            endpoints,
            clients: FxHashMap::default(),
            seats,
            last_poll: Instant::now(),
            last_sent_tick: Tick::ZERO,
            client_bytes_per_s,
            bubbles: Bubbles::new(client_bytes_per_s, TICK_DURATION_US),
            refusing: Vec::new(),
            sessions: Vec::new(),
            stats: GatewayStats::default(),
        })
    }

    /// A gateway of a world whose ticks are `tick_us` of game time each (the default is
    /// `TICK_DURATION_US`): the clients' byte budget a tick, the updates' clock and how long a
    /// handoff is held follow it.
    pub fn with_tick_us(mut self, tick_us: u64) -> Self {
        self.bubbles = Bubbles::new(self.client_bytes_per_s, tick_us);
        for e in &mut self.endpoints {
            e.tick_us = tick_us;
        }
        self
    }

    /// Takes in what arrived: connections, disconnections, and the clients' inputs, checked,
    /// as (player, input number, action).
    pub fn poll(&mut self) -> Vec<(EntityId, u32, Action)> {
        let elapsed = self.last_poll.elapsed();
        self.last_poll = Instant::now();
        for (e, client_id) in std::mem::take(&mut self.refusing) {
            self.endpoints[e].server.disconnect(client_id);
        }
        let mut inputs = Vec::new();
        for (e, endpoint) in self.endpoints.iter_mut().enumerate() {
            endpoint.server.update(elapsed);
            endpoint.receive(elapsed, &mut self.stats);
            while let Some(event) = endpoint.server.get_event() {
                match event {
                    ServerEvent::ClientConnected { client_id } => match self.seats.player(client_id) {
                        Some(player) if self.seats.take(player) => {
                            self.stats.connects += 1;
                            let mut client = Client::new(e, player);
                            if player.account().is_some() {
                                let (session, create) = self.seats.log_in(player);
                                self.sessions.push(Session { player, session, online: true, create });
                                self.stats.logins += 1;
                                client.session = Some(session);
                            }
                            self.clients.insert(client_id, client);
                        }
                        found => {
                            // Told why, then closed once the notice has gone out (next poll).
                            self.stats.bad_seats += 1;
                            let notice = match found {
                                Some(_) => Notice::SeatHeld { seat: client_id },
                                None => Notice::NoSuchAccount { account: client_id },
                            };
                            endpoint.server.send_message(client_id, NOTICE_CHANNEL, wire::encode(&notice));
                            self.refusing.push((e, client_id));
                        }
                    },
                    ServerEvent::ClientDisconnected { client_id, .. } => {
                        // Only this endpoint's own: a second connection with a held seat's id,
                        // refused here, must not end the holder's record on another endpoint.
                        if self.clients.get(&client_id).is_some_and(|c| c.endpoint == e) {
                            let client = self.clients.remove(&client_id).expect("just found");
                            self.seats.free(client.view.player);
                            self.stats.disconnects += 1;
                            if let Some(session) = client.session {
                                let player = client.view.player;
                                self.sessions.push(Session { player, session, online: false, create: false });
                            }
                        }
                    }
                }
            }
            let messages_max = MESSAGES_PER_CLIENT_PER_TICK_MAX
                .max(2 * crate::limits::client_inputs_per_tick(endpoint.tick_us) as usize);
            for client_id in endpoint.server.clients_id() {
                let Some(client) = self.clients.get_mut(&client_id).filter(|c| c.endpoint == e) else { continue };
                let mut read = 0;
                while let Some(bytes) = endpoint.server.receive_message(client_id, INPUT_CHANNEL) {
                    read += 1;
                    if read > messages_max {
                        self.stats.flooded += 1;
                        continue;
                    }
                    if bytes.len() > INPUT_BYTES_MAX {
                        self.stats.oversized += 1;
                        continue;
                    }
                    match wire::decode::<ClientMsg>(&bytes) {
                        Ok(ClientMsg::Input { seq, action }) => {
                            if seq <= client.last_seq {
                                self.stats.replayed += 1;
                                continue;
                            }
                            if !action_is_finite(&action) {
                                self.stats.malformed += 1;
                                continue;
                            }
                            if let Action::Move(v) = action {
                                // More than full speed: the server would clamp it, the gateway
                                // refuses it and counts the client's attempt.
                                if Vec3::from_array(v).length() > 1.0 + 1e-3 {
                                    self.stats.speed_hacks += 1;
                                    continue;
                                }
                            }
                            client.last_seq = seq;
                            self.stats.inputs += 1;
                            inputs.push((client.view.player, seq, action));
                        }
                        Ok(ClientMsg::Ack { tick }) => {
                            if client.view.ack(tick).is_err() {
                                self.stats.malformed += 1;
                            }
                        }
                        Err(_) => self.stats.malformed += 1,
                    }
                }
            }
        }
        self.stats.connected = self.clients.len() as u64;
        inputs
    }

    /// Reads what arrived since the last read, between ticks: netcode and renet take it in, and
    /// `poll` hands it on. Returns the datagrams read.
    pub fn drain(&mut self) -> usize {
        self.endpoints.iter_mut().map(|endpoint| endpoint.drain(&mut self.stats)).sum()
    }

    /// Sends every client its bubble as of `tick`, from every core's view of it; if a core has
    /// not got that far, as of the newest tick every core has (and nothing if that was sent).
    pub fn send_updates(&mut self, now_tick: Tick, views: &Views) {
        let tick = views.common_tick(now_tick);
        if tick <= self.last_sent_tick {
            for endpoint in &mut self.endpoints {
                endpoint.send(now_tick, &mut self.stats);
            }
            return;
        }
        let skipped_from = self.last_sent_tick;
        self.last_sent_tick = tick;
        if self.clients.is_empty() {
            for endpoint in &mut self.endpoints {
                endpoint.send(now_tick, &mut self.stats);
            }
            return;
        }
        // One world from every core's view: what a server holds first, then what was handed off
        // and is not held anywhere yet (in this tick's views, or in those of ticks this gateway
        // skipped). A core that ran too far ahead of `tick` has only a later view: its states
        // count as of `tick`.
        let all = views.at(tick);
        self.stats.late_views += all.iter().filter(|v| v.tick > tick).count() as u64;
        let as_of = |e: &ArchivedViewEntity, v: &View| {
            let e = unpack(e);
            (e, e.as_of(v.tick.min(tick)))
        };
        let held = all.iter().flat_map(|v| v.entities().iter().filter(|e| !e.leaving).map(move |e| as_of(e, v)));
        let left = all.iter().flat_map(|v| v.entities().iter().filter(|e| e.leaving).map(move |e| as_of(e, v)));
        let skipped = if skipped_from > Tick::ZERO { views.leaving_between(skipped_from, tick) } else { Vec::new() };
        self.bubbles.merge(held.chain(left).chain(skipped));
        for (client_id, client) in self.clients.iter_mut() {
            let Some((update, bytes)) = self.bubbles.update(tick, &mut client.view) else { continue };
            self.stats.updates += 1;
            self.stats.delta_updates += (update.baseline > Tick::ZERO) as u64;
            self.stats.update_bytes += bytes.len() as u64;
            // Out at once: the clients after this one do not hold it up.
            let endpoint = &mut self.endpoints[client.endpoint];
            endpoint.server.send_message(*client_id, UPDATE_CHANNEL, bytes);
            endpoint.send_client(*client_id, now_tick, &mut self.stats);
        }
        for endpoint in &mut self.endpoints {
            endpoint.send(now_tick, &mut self.stats);
        }
    }

    /// Accounts' logins and logouts since the last call, in order, for the node.
    pub fn take_sessions(&mut self, into: &mut Vec<Session>) {
        into.append(&mut self.sessions);
    }

    /// Tells every client the gateway is going away.
    pub fn disconnect_all(&mut self) {
        for endpoint in &mut self.endpoints {
            endpoint.disconnect_all(&mut self.stats);
        }
        for client in self.clients.values() {
            self.seats.free(client.view.player);
        }
        self.clients.clear();
    }
}

fn action_is_finite(action: &Action) -> bool {
    match action {
        Action::Move(v) | Action::Fire(v) => v.iter().all(|x| x.is_finite()),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::EntityKind;

    fn entity(id: u64, kind: EntityKind, x: f32, vx: f32) -> ViewEntity {
        ViewEntity::new(EntityId(id), kind, [x, 0.0, 0.0], [vx, 0.0, 0.0])
    }

    #[test]
    fn a_published_view_reads_back_in_place_as_each_core_left_it() {
        let views = Views::new(2);
        let mut leaving = entity(7, EntityKind::Ship, -12.345, 150.0);
        leaving.leaving = true;
        views.publish(0, Tick(5), vec![entity(1, EntityKind::Player, 1.0, 3.0), leaving]);
        views.publish(1, Tick(5), vec![]);
        views.publish(1, Tick(6), vec![entity(2, EntityKind::Item { capacity: 4 }, 2.5, 0.0)]);
        let at5 = views.at(Tick(5));
        assert_eq!((at5[0].tick, at5[1].tick), (Tick(5), Tick(5)));
        let read: Vec<ViewEntity> = at5[0].entities().iter().map(unpack).collect();
        assert_eq!(read, vec![entity(1, EntityKind::Player, 1.0, 3.0), leaving]);
        assert_eq!(read[1].position, [-1235, 0, 0], "centimetres");
        assert!(at5[1].entities().is_empty());
        assert_eq!(views.at(Tick(6))[1].entities().len(), 1);
        assert_eq!(views.leaving_between(Tick(4), Tick(6)), vec![(leaving, Tick(5))]);
    }

    /// A player crossing between cores with a neighbour: in the tick the player is in flight the
    /// client gets no update, and the neighbour's handoff shows only in that tick's views. The
    /// next update still holds the neighbour where it left, until its new server adopts it.
    #[test]
    fn a_neighbour_handed_off_while_the_player_is_between_cores_is_held() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let public = socket.local_addr().unwrap();
        let seats = Arc::new(Seats::new(vec![EntityId(1)]));
        let mut g = Gateway::new(vec![socket], public, [7; 32], false, CLIENT_BYTES_PER_S_DEFAULT, seats).unwrap();
        g.clients.insert(1, Client::new(0, EntityId(1)));
        let views = Views::new(2);
        let me = |x: f32| entity(1, EntityKind::Player, x, 0.0);
        let neighbour = |leaving| ViewEntity { leaving, ..entity(2, EntityKind::Player, 3.0, 0.0) };
        let shown = |g: &Gateway| g.clients[&1].view.last_sent().and_then(|s| s.get(EntityId(2)).copied());
        views.publish(0, Tick(1), vec![me(0.0), neighbour(false)]);
        views.publish(1, Tick(1), vec![]);
        g.send_updates(Tick(1), &views);
        assert!(shown(&g).is_some());
        // Tick 2: both handed from core 0 to core 1; the player is in no view.
        views.publish(0, Tick(2), vec![neighbour(true)]);
        views.publish(1, Tick(2), vec![]);
        g.send_updates(Tick(2), &views);
        assert_eq!(
            g.clients[&1].view.last_sent().map(|s| s.tick),
            Some(Tick(1)),
            "no update while the player is in flight"
        );
        // Tick 3: core 1 has adopted the player, not yet the neighbour.
        views.publish(0, Tick(3), vec![]);
        views.publish(1, Tick(3), vec![me(0.1)]);
        g.send_updates(Tick(3), &views);
        assert_eq!(g.clients[&1].view.last_sent().map(|s| s.tick), Some(Tick(3)));
        assert!(shown(&g).is_some(), "the neighbour in flight is held where it left");
    }
}
