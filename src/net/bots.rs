//! Load-generating clients: many bots per thread, each a real netcode client on its own UDP
//! socket, connecting with a token signed by the gateway's key, sending an input every tick and
//! reading its bubble.
//!
//! Per bot it measures the time to connect, input-to-visible latency (from sending an input
//! until an update shows its server applied it), updates and bytes a second, and glitches:
//! a teleport (an entity moved further between two of its states than its speed allows), an
//! entity that vanished from well inside the bubble and came back, and an entity shown twice in
//! one update. Updates are differences from one the bot acknowledged: it keeps what it knew after
//! each of the last `SNAPSHOTS_KEPT`, and acknowledges the newest it took in.

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glam::Vec3;
use hdrhistogram::Histogram;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use renet::RenetClient;
use renet_netcode::{ClientAuthentication, ConnectToken};
use rustc_hash::FxHashMap;

use super::gateway::{connection_config, unix_now, PROTOCOL_ID};
use super::key::Key;
use super::transport::ClientTransport;
use super::wire::{
    self, ClientMsg, Known, Notice, Snapshot, Update, WireError, INPUT_CHANNEL, NOTICE_CHANNEL, UPDATE_CHANNEL,
};
use crate::limits::{BOARD_REACH_M, NEVER_CONNECTED_REASONS_MAX, REACH_M, SNAPSHOTS_KEPT, TICK_DURATION_US};
use crate::protocol::server::speed_of;
use crate::protocol::Action;
use crate::world::{EntityId, EntityKind};

/// A run holds its bots only if each gets at least this share of the tick rate in updates.
const HELD_UPDATE_SHARE: f64 = 0.9;

/// Steps of a bot's loop per server tick: it reads what arrived twice a tick.
const STEPS_PER_TICK: u64 = 2;

/// Groups a thread's bots step in, each at its own moment of the step: players' clients keep no
/// common clock, so their packets spread over a tick rather than arrive together, and the
/// server's tick finds some bots' inputs just sent and some a tick old, not all alike.
const STEP_GROUPS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Walk in a random direction, changing every few seconds.
    Wander,
    /// Walk to a point a few hundred metres away, then to another.
    Commute,
    /// Every bot walks to one rally point.
    Swarm,
    /// Wander and shoot at the nearest other player in view.
    Fight,
    /// Play a few seconds, disconnect, reconnect, again.
    Churn,
}

impl std::str::FromStr for Behaviour {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "wander" => Ok(Behaviour::Wander),
            "commute" => Ok(Behaviour::Commute),
            "swarm" => Ok(Behaviour::Swarm),
            "fight" => Ok(Behaviour::Fight),
            "churn" => Ok(Behaviour::Churn),
            _ => Err(format!("behaviour `{s}`: one of wander, commute, swarm, fight, churn")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct BotsConfig {
    pub connect: SocketAddr,
    pub key: Key,
    pub count: usize,
    /// Seats `first_seat..first_seat + count` (seat `k` drives the world's `k`th player).
    pub first_seat: u64,
    pub behaviour: Behaviour,
    pub duration: Duration,
    pub threads: usize,
    pub seed: u64,
    /// Print a progress line each second.
    pub progress: bool,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BotsReport {
    pub count: usize,
    /// Whether the world held every bot: each connected at the end (churn: each got a seat),
    /// none lost its connection, and updates came at the tick rate. The run fails when not.
    pub held: bool,
    /// Why not, when not held.
    pub not_held: Vec<String>,
    /// Bots holding a seat at the end.
    pub connected: usize,
    /// Bots that held a seat at some time.
    pub ever_connected: usize,
    /// Bots that never held a seat, by why.
    pub never_connected: NeverConnected,
    /// Connection attempts that never connected (retried).
    pub connect_failures: u64,
    pub duration_s: f64,
    pub connect_ms_p50: f64,
    pub connect_ms_p99: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_samples: u64,
    /// Updates each connected bot received a second, on average.
    pub updates_per_s: f64,
    /// Update bytes each connected bot received a second (message payloads).
    pub bytes_per_client_s: f64,
    pub glitches: u64,
    pub teleports: u64,
    pub vanished: u64,
    pub duplicates: u64,
    /// Updates that did not fit what the bot knew (a baseline it does not hold, places that do
    /// not exist): each is an update lost.
    pub undecodable: u64,
    /// Connections lost without the bot asking (timeouts, refusals).
    pub dropped: u64,
    pub reconnects: u64,
    /// The farthest any bot got from where it started, in metres (regions are a few hundred
    /// metres wide: a bot that went further crossed a border).
    pub max_travel_m: f64,
}

#[derive(Default)]
struct Totals {
    connect_us: Option<Histogram<u64>>,
    latency_us: Option<Histogram<u64>>,
    connected: usize,
    ever_connected: usize,
    never: NeverConnected,
    counts: Counts,
    connected_s: f64,
    max_travel_m: f64,
}

/// What a bot counts, and all bots together.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    updates: u64,
    bytes: u64,
    teleports: u64,
    vanished: u64,
    duplicates: u64,
    undecodable: u64,
    dropped: u64,
    connect_failures: u64,
    reconnects: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.updates += o.updates;
        self.bytes += o.bytes;
        self.teleports += o.teleports;
        self.vanished += o.vanished;
        self.duplicates += o.duplicates;
        self.undecodable += o.undecodable;
        self.dropped += o.dropped;
        self.connect_failures += o.connect_failures;
        self.reconnects += o.reconnects;
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

struct Bot {
    seat: u64,
    client: RenetClient,
    transport: Option<ClientTransport>,
    attempt_began: Instant,
    connected_at: Option<Instant>,
    ever_connected: bool,
    connected_for: Duration,
    /// The gateway refused the bot's seat, and why (it stops trying).
    refused: Option<String>,
    /// Why its last connection ended or never began.
    last_failure: Option<String>,
    seq: u32,
    sent: VecDeque<(u32, Instant)>,
    me: Option<Vec3>,
    /// The player is aboard a ship (it cannot walk until it disembarks).
    aboard: bool,
    home: Option<Vec3>,
    travel_m: f32,
    target: Option<Vec3>,
    heading: Vec3,
    next_turn: u64,
    ticks: u64,
    steps: u64,
    /// Churn: when to leave, and when to come back.
    leave_at: Option<Instant>,
    back_at: Option<Instant>,
    rng: ChaCha8Rng,
    last_tick: u64,
    snapshots: VecDeque<Snapshot>,
    /// The newest update taken in and not yet acknowledged.
    ack: Option<u64>,
    /// Each entity in view, as the bot knows it, by id.
    view: Vec<Known>,
    /// What left the view from well inside it: when it left, its last state, and whether it was
    /// carried then.
    gone: FxHashMap<EntityId, (u64, Known)>,
    counts: Counts,
    /// Time not yet given to renet and netcode.
    since_update: Duration,
    connect_us: Vec<u64>,
    /// Input-to-visible latencies measured since the thread last took them into its histogram
    /// (one histogram a thread: one a bot would be 150 KB each).
    latency_us: Vec<u64>,
}

impl Bot {
    fn new(seat: u64, cfg: &BotsConfig) -> std::io::Result<Self> {
        let mut bot = Self {
            seat,
            client: RenetClient::new(connection_config()),
            transport: None,
            attempt_began: Instant::now(),
            connected_at: None,
            ever_connected: false,
            connected_for: Duration::ZERO,
            refused: None,
            last_failure: None,
            seq: 0,
            sent: VecDeque::new(),
            me: None,
            aboard: false,
            home: None,
            travel_m: 0.0,
            target: None,
            heading: Vec3::X,
            next_turn: 0,
            ticks: 0,
            steps: 0,
            leave_at: None,
            back_at: None,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ seat.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            last_tick: 0,
            snapshots: VecDeque::with_capacity(SNAPSHOTS_KEPT),
            ack: None,
            view: Vec::new(),
            gone: FxHashMap::default(),
            counts: Counts::default(),
            since_update: Duration::ZERO,
            connect_us: Vec::new(),
            latency_us: Vec::new(),
        };
        bot.connect(cfg)?;
        Ok(bot)
    }

    fn connect(&mut self, cfg: &BotsConfig) -> std::io::Result<()> {
        let now = unix_now();
        let token = ConnectToken::generate(now, PROTOCOL_ID, 300, self.seat, 15, vec![cfg.connect], None, &cfg.key)
            .map_err(|e| std::io::Error::other(format!("connect token: {e}")))?;
        let bind: SocketAddr = if cfg.connect.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("valid");
        let socket = UdpSocket::bind(bind)?;
        let transport = ClientTransport::new(now, ClientAuthentication::Secure { connect_token: token }, socket)?;
        self.client = RenetClient::new(connection_config());
        self.transport = Some(transport);
        self.attempt_began = Instant::now();
        self.since_update = Duration::ZERO;
        self.connected_at = None;
        self.view.clear();
        self.gone.clear();
        self.sent.clear();
        self.snapshots.clear();
        self.ack = None;
        self.last_tick = 0;
        Ok(())
    }

    fn step(&mut self, cfg: &BotsConfig, dt: Duration, rally: &Mutex<Option<Vec3>>) {
        let now = Instant::now();
        if let Some(back) = self.back_at {
            if now >= back {
                self.back_at = None;
                self.counts.reconnects += 1;
                if self.connect(cfg).is_err() {
                    self.counts.dropped += 1;
                }
            }
            return;
        }
        let Some(transport) = self.transport.as_mut() else { return };
        // renet and netcode keep time (timeouts, keep-alives) on the input steps; the steps
        // between only read what arrived.
        self.since_update += dt;
        let input_step = (self.steps + 1) % STEPS_PER_TICK == 0;
        let result = if input_step || !self.client.is_connected() {
            let dt = std::mem::take(&mut self.since_update);
            self.client.update(dt);
            transport.update(dt, &mut self.client)
        } else {
            transport.receive(&mut self.client)
        };
        if result.is_err() || self.client.is_disconnected() {
            let was_connected = self.connected_at.is_some();
            if let Some(at) = self.connected_at.take() {
                self.connected_for += at.elapsed();
            }
            let reason = transport.disconnect_reason();
            self.transport = None;
            if self.refused.is_some() {
                // Refused a seat: asking again gets the same answer.
                return;
            }
            if was_connected {
                self.counts.dropped += 1;
            } else {
                self.counts.connect_failures += 1;
            }
            self.last_failure = Some(failure(reason, was_connected));
            // Try again shortly, as a player's client would.
            self.back_at = Some(now + Duration::from_millis(500));
            return;
        }
        if !self.client.is_connected() {
            if let Some(t) = self.transport.as_mut() {
                let _ = t.send_packets(&mut self.client, self.ticks);
            }
            return;
        }
        if self.connected_at.is_none() {
            self.connected_at = Some(now);
            self.ever_connected = true;
            self.connect_us.push(self.attempt_began.elapsed().as_micros() as u64);
            if cfg.behaviour == Behaviour::Churn {
                self.leave_at = Some(now + Duration::from_millis(self.rng.random_range(3000..8000)));
            }
        }
        while let Some(bytes) = self.client.receive_message(NOTICE_CHANNEL) {
            match wire::decode::<Notice>(&bytes) {
                Ok(notice) => self.refused = Some(notice.to_string()),
                Err(_) => self.counts.undecodable += 1,
            }
        }
        while let Some(bytes) = self.client.receive_message(UPDATE_CHANNEL) {
            self.counts.bytes += bytes.len() as u64;
            match wire::decode::<Update>(&bytes) {
                Ok(update) => self.ack = self.take_update(now, &update).or(self.ack),
                Err(_) => self.counts.undecodable += 1,
            }
        }
        // Updates are read every step, as a client rendering at 60 frames a second would; inputs go
        // out every other step, at the server's 30 Hz.
        self.steps += 1;
        let input_step = self.steps % STEPS_PER_TICK == 0;
        if input_step {
            // The acknowledgement goes with the input, in one packet.
            if let Some(tick) = self.ack.take() {
                self.client.send_message(INPUT_CHANNEL, wire::encode(&ClientMsg::Ack { tick }));
            }
            if let Some(action) = self.decide(cfg.behaviour, rally) {
                self.send(now, action);
            }
            if cfg.behaviour == Behaviour::Fight && self.ticks % 20 == 7 {
                if let Some(dir) = self.nearest_other_player() {
                    self.send(now, Action::Fire(dir.to_array()));
                }
            }
            self.ticks += 1;
        }
        // Packets go out with the inputs only: renet acknowledges every packet it receives with
        // one of its own on each send (paced to one a second by the transport).
        if let Some(t) = self.transport.as_mut().filter(|_| input_step) {
            let _ = t.send_packets(&mut self.client, self.ticks);
        }
        if self.leave_at.is_some_and(|at| now >= at) {
            self.leave_at = None;
            if let Some(mut t) = self.transport.take() {
                t.disconnect();
            }
            if let Some(at) = self.connected_at.take() {
                self.connected_for += at.elapsed();
            }
            self.back_at = Some(now + Duration::from_millis(1000));
        }
    }

    fn send(&mut self, now: Instant, action: Action) {
        self.seq += 1;
        let bytes = wire::encode(&ClientMsg::Input { seq: self.seq, action });
        self.client.send_message(INPUT_CHANNEL, bytes);
        self.sent.push_back((self.seq, now));
        while self.sent.len() > 256 {
            self.sent.pop_front();
        }
    }

    /// Takes in an update; the tick to acknowledge if it was new and fitted what the bot knew.
    fn take_update(&mut self, now: Instant, update: &Update) -> Option<u64> {
        if update.tick <= self.last_tick {
            return None;
        }
        let base = self.snapshots.iter().rev().find(|s| s.tick == update.baseline);
        let snapshot = match Snapshot::apply(base, update) {
            Ok(s) => s,
            Err(WireError::Duplicate(_)) => {
                self.counts.duplicates += 1;
                return None;
            }
            Err(_) => {
                self.counts.undecodable += 1;
                return None;
            }
        };
        self.take_snapshot(now, &snapshot);
        if self.snapshots.len() == SNAPSHOTS_KEPT {
            self.snapshots.pop_front();
        }
        self.snapshots.push_back(snapshot);
        Some(update.tick)
    }

    fn take_snapshot(&mut self, now: Instant, snapshot: &Snapshot) {
        let tick = snapshot.tick;
        self.counts.updates += 1;
        // The input the update shows applied is measured; older ones its server refused (a move
        // while aboard, a pickup with nothing in reach) had no effect to see.
        while self.sent.front().is_some_and(|(seq, _)| *seq <= snapshot.input_ack) {
            let (seq, at) = self.sent.pop_front().expect("checked");
            if seq == snapshot.input_ack {
                self.latency_us.push(now.duration_since(at).as_micros().max(1) as u64);
            }
        }
        if let Some(me) = snapshot.get(snapshot.player) {
            let at = me.position_m_at(tick);
            self.me = Some(at);
            self.aboard = me.seen.carried;
            let home = *self.home.get_or_insert(at);
            self.travel_m = self.travel_m.max(home.distance(at));
        }
        let dt = TICK_DURATION_US as f32 / 1e6;
        // How far an entity can have got from a state of its, `ticks` later. What carries it
        // moves it at a ship's speed at most, and being taken up is a jump to the carrier: a
        // player boards a ship within `BOARD_REACH_M`, an item is picked up within `REACH_M`. An
        // entity last seen on the ground may have been taken up since, unseen (by a carrier out
        // of view, too), so its reach is the larger of its own and a carried one's. A carried
        // entity also jumps with its carrier when that boards a ship.
        let jump = |kind: EntityKind| match kind {
            EntityKind::Player | EntityKind::Npc => Some(BOARD_REACH_M),
            EntityKind::Item { .. } => Some(REACH_M),
            EntityKind::Ship | EntityKind::Projectile => None,
        };
        let reach = |k: &Known, ticks: u64| {
            let own = speed_of(k.seen.kind) * dt * ticks as f32;
            let carried = speed_of(EntityKind::Ship) * dt * ticks as f32;
            let reach = match (k.seen.carried, jump(k.seen.kind)) {
                (true, _) => carried + BOARD_REACH_M,
                (false, Some(jump)) => own.max(carried + jump),
                (false, None) => own,
            };
            reach + 1.0
        };
        if self.last_tick > 0 {
            // The view and the snapshot are both by id: walked side by side.
            let mut at = 0;
            for k in &snapshot.known {
                // A new state: no further from the last one than its speed allows. Between two
                // states on the ground it may have been taken up (a jump to its carrier) and
                // carried off (at a ship's speed at most) without the client seeing it carried,
                // if an update was skipped or its state waited for room in one. An item is taken
                // up and put down in a tick each; a player boards in one tick and disembarks in
                // a later one.
                while self.view.get(at).is_some_and(|p| p.seen.id < k.seen.id) {
                    at += 1;
                }
                if let Some(prev) = self.view.get(at).filter(|p| p.seen.id == k.seen.id) {
                    if k.as_of > prev.as_of && !prev.seen.carried && !k.seen.carried {
                        let ticks = k.as_of - prev.as_of;
                        let own = speed_of(k.seen.kind) * dt * ticks as f32;
                        let carried = speed_of(EntityKind::Ship) * dt * (ticks - 1) as f32;
                        let allowed = match (k.seen.kind, jump(k.seen.kind)) {
                            (EntityKind::Item { .. }, Some(jump)) => jump + carried,
                            (_, Some(jump)) if ticks >= 2 => own.max(jump + carried),
                            _ => own,
                        } + 0.5;
                        if prev.seen.position_m().distance(k.seen.position_m()) > allowed {
                            self.counts.teleports += 1;
                        }
                    }
                }
                // Back as it was, and where it could have got by itself: a vanish. Back picked up,
                // put down, aboard or ashore, or carried somewhere meanwhile: it jumped to (or
                // with) what carries it, which can take it out of view for a while.
                if let Some((_, last)) = self.gone.remove(&k.seen.id) {
                    let ticks = k.as_of.saturating_sub(last.as_of) + 1;
                    let by_itself = last.seen.position_m().distance(k.seen.position_m())
                        <= speed_of(k.seen.kind) * dt * ticks as f32 + 1.0;
                    if last.seen.carried == k.seen.carried && (last.seen.carried || by_itself) {
                        self.counts.vanished += 1;
                    }
                }
            }
            // What left the view from well inside it (not a projectile, which ends) is watched:
            // coming back soon is a vanish. Well inside: where it was, plus as far as it can have
            // gone since, is still inside the horizon the update gives (the bubble, or its
            // nearest part when crowded). A ship at the edge may leave in one tick; a player
            // walking in the middle not.
            if let Some(me) = self.me {
                let horizon = snapshot.horizon_dm as f32 / 10.0;
                let mut at = 0;
                for prev in &self.view {
                    while snapshot.known.get(at).is_some_and(|k| k.seen.id < prev.seen.id) {
                        at += 1;
                    }
                    if snapshot.known.get(at).is_some_and(|k| k.seen.id == prev.seen.id)
                        || prev.seen.kind == EntityKind::Projectile
                    {
                        continue;
                    }
                    let inside =
                        prev.seen.position_m().distance(me) + reach(prev, tick - prev.as_of.min(tick)) < horizon;
                    if inside {
                        self.gone.insert(prev.seen.id, (tick, *prev));
                    }
                }
            }
            if !self.gone.is_empty() {
                self.gone.retain(|_, (at, _)| tick < *at + 60);
            }
        }
        self.view.clear();
        self.view.extend_from_slice(&snapshot.known);
        self.last_tick = tick;
    }

    fn nearest_other_player(&self) -> Option<Vec3> {
        let me = self.me?;
        self.view
            .iter()
            .filter(|k| k.seen.kind == EntityKind::Player)
            .map(|k| k.position_m_at(self.last_tick) - me)
            .filter(|d| d.length() > 1.0)
            .min_by(|a, b| a.length().total_cmp(&b.length()))
            .map(|d| d.normalize())
    }

    fn decide(&mut self, behaviour: Behaviour, rally: &Mutex<Option<Vec3>>) -> Option<Action> {
        let me = self.me?;
        if self.aboard {
            return Some(Action::Disembark);
        }
        let toward = |target: Vec3| {
            let d = target - me;
            let flat = Vec3::new(d.x, d.y, 0.0);
            if flat.length() < 3.0 {
                Vec3::ZERO
            } else {
                flat.normalize()
            }
        };
        let dir = match behaviour {
            Behaviour::Wander | Behaviour::Fight | Behaviour::Churn => {
                if self.ticks >= self.next_turn {
                    let a = self.rng.random_range(0.0..std::f32::consts::TAU);
                    self.heading = Vec3::new(a.cos(), a.sin(), 0.0);
                    self.next_turn = self.ticks + self.rng.random_range(60..150);
                }
                self.heading
            }
            Behaviour::Commute => {
                let home = self.home.unwrap_or(me);
                let target = *self.target.get_or_insert_with(|| {
                    let a = self.rng.random_range(0.0..std::f32::consts::TAU);
                    home + Vec3::new(a.cos(), a.sin(), 0.0) * 250.0
                });
                let dir = toward(target);
                if dir == Vec3::ZERO {
                    // Arrived: head back home, then out somewhere new.
                    self.target = if target == home { None } else { Some(home) };
                }
                dir
            }
            Behaviour::Swarm => {
                let point = *rally.lock().expect("not poisoned").get_or_insert(me);
                toward(point)
            }
        };
        Some(Action::Move(dir.to_array()))
    }
}

/// Why a connection ended (`connected`) or never began, in words a user can act on.
fn failure(reason: Option<renetcode::DisconnectReason>, connected: bool) -> String {
    use renetcode::DisconnectReason as R;
    match reason {
        Some(R::ConnectionRequestTimedOut) => {
            "no answer to the connection request (a token signed with another key, for another address, or no server there)".into()
        }
        Some(R::ConnectTokenExpired) => "the connect token expired before the server answered".into(),
        Some(R::ConnectionResponseTimedOut) => "the handshake timed out".into(),
        Some(R::ConnectionDenied) => "denied: the server is full".into(),
        Some(R::ConnectionTimedOut) => "timed out: nothing heard from the server".into(),
        Some(R::DisconnectedByServer) => "closed by the server".into(),
        Some(R::DisconnectedByClient) => "closed by the bot".into(),
        None if connected => "the connection failed".into(),
        None => "the connection could not begin".into(),
    }
}

/// Bots that never held a seat, by why.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct NeverConnected {
    /// The gateway refused the seat (no such player, or another client holds it).
    pub refused_seat: usize,
    /// No answer to the connection request: a bad token or no server.
    pub no_answer: usize,
    /// The handshake or the connection timed out, or the server was full.
    pub timed_out_or_denied: usize,
    /// Still connecting when the run ended.
    pub still_connecting: usize,
    /// Each distinct reason given, with how many bots gave it (the first few).
    pub reasons: Vec<(String, usize)>,
}

/// Runs `cfg.count` bots for `cfg.duration` and reports what they measured.
pub fn run(cfg: &BotsConfig) -> std::io::Result<BotsReport> {
    let threads = cfg.threads.clamp(1, cfg.count.max(1));
    let totals = Arc::new(Mutex::new(Totals {
        connect_us: Some(histogram()),
        latency_us: Some(histogram()),
        ..Totals::default()
    }));
    let rally = Arc::new(Mutex::new(None));
    let live = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let mut handles = Vec::new();
    for t in 0..threads {
        let seats: Vec<u64> = (0..cfg.count as u64).filter(|i| (*i as usize) % threads == t).collect();
        let (cfg, totals, rally, live) = (cfg.clone(), totals.clone(), rally.clone(), live.clone());
        handles.push(std::thread::spawn(move || -> std::io::Result<()> {
            let mut bots = Vec::with_capacity(seats.len());
            for seat in seats {
                bots.push(Bot::new(cfg.first_seat + seat, &cfg)?);
            }
            let step = Duration::from_micros(TICK_DURATION_US / STEPS_PER_TICK);
            let slot = step / STEP_GROUPS as u32;
            let mut next = Instant::now();
            let mut last = [Instant::now(); STEP_GROUPS];
            let end = began + cfg.duration;
            let mut connected_before = 0u64;
            let mut latency_us = histogram();
            let mut group = 0;
            while Instant::now() < end {
                let dt = last[group].elapsed();
                last[group] = Instant::now();
                for bot in bots.iter_mut().skip(group).step_by(STEP_GROUPS) {
                    bot.step(&cfg, dt, &rally);
                    for us in bot.latency_us.drain(..) {
                        latency_us.saturating_record(us);
                    }
                }
                group = (group + 1) % STEP_GROUPS;
                if group == 0 {
                    let connected = bots.iter().filter(|b| b.connected_at.is_some()).count() as u64;
                    live.fetch_add(connected.wrapping_sub(connected_before), Ordering::Relaxed);
                    connected_before = connected;
                }
                next += slot;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let mut t = totals.lock().expect("not poisoned");
            t.latency_us.as_mut().expect("set").add(&latency_us).expect("same bounds");
            for mut bot in bots {
                let seated = bot.refused.is_none();
                t.connected += (seated && bot.connected_at.is_some()) as usize;
                if seated && bot.ever_connected {
                    t.ever_connected += 1;
                } else {
                    let n = &mut t.never;
                    let why = match (&bot.refused, &bot.last_failure) {
                        (Some(notice), _) => {
                            n.refused_seat += 1;
                            notice.clone()
                        }
                        (None, Some(failure)) => {
                            if failure.starts_with("no answer") || failure.contains("expired") {
                                n.no_answer += 1;
                            } else {
                                n.timed_out_or_denied += 1;
                            }
                            failure.clone()
                        }
                        (None, None) => {
                            n.still_connecting += 1;
                            "still connecting when the run ended".into()
                        }
                    };
                    if let Some(i) = n.reasons.iter().position(|(w, _)| *w == why) {
                        n.reasons[i].1 += 1;
                    } else if n.reasons.len() < NEVER_CONNECTED_REASONS_MAX {
                        n.reasons.push((why, 1));
                    }
                }
                if let Some(at) = bot.connected_at.take() {
                    bot.connected_for += at.elapsed();
                }
                if let Some(mut transport) = bot.transport.take() {
                    transport.disconnect();
                }
                for us in &bot.connect_us {
                    t.connect_us.as_mut().expect("set").saturating_record((*us).max(1));
                }
                t.counts.add(&bot.counts);
                t.connected_s += bot.connected_for.as_secs_f64();
                t.max_travel_m = t.max_travel_m.max(bot.travel_m as f64);
            }
            Ok(())
        }));
    }
    if cfg.progress {
        let mut next = began + Duration::from_secs(1);
        while handles.iter().any(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
            if Instant::now() >= next {
                next += Duration::from_secs(1);
                eprintln!(
                    "t={:>5.1}s bots={} connected={}",
                    began.elapsed().as_secs_f64(),
                    cfg.count,
                    live.load(Ordering::Relaxed) as i64
                );
            }
        }
    }
    for h in handles {
        h.join().map_err(|_| std::io::Error::other("a bot thread panicked"))??;
    }
    let t = totals.lock().expect("not poisoned");
    let c = &t.counts;
    let (connect, latency) = (t.connect_us.as_ref().expect("set"), t.latency_us.as_ref().expect("set"));
    let ms = |h: &Histogram<u64>, q: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1e3 };
    let per_s = |n: u64| if t.connected_s > 0.0 { n as f64 / t.connected_s } else { 0.0 };
    let updates_per_s = per_s(c.updates);
    let mut not_held = Vec::new();
    let stayed = if cfg.behaviour == Behaviour::Churn { t.ever_connected } else { t.connected };
    if stayed < cfg.count {
        not_held.push(format!("{} of {} bots connected at the end", stayed, cfg.count));
    }
    if t.never.refused_seat + t.never.no_answer + t.never.timed_out_or_denied + t.never.still_connecting > 0 {
        not_held.push(format!("{} never held a seat: {:?}", cfg.count - t.ever_connected, t.never.reasons));
    }
    if c.dropped > 0 {
        not_held.push(format!("{} connections lost without the bot asking", c.dropped));
    }
    let tick_rate = 1e6 / TICK_DURATION_US as f64;
    if updates_per_s < HELD_UPDATE_SHARE * tick_rate {
        not_held.push(format!("{updates_per_s:.1} updates a second, under {:.0}", HELD_UPDATE_SHARE * tick_rate));
    }
    if latency.is_empty() {
        not_held.push("no input was ever seen applied (no latency sample)".into());
    }
    Ok(BotsReport {
        count: cfg.count,
        held: not_held.is_empty() && cfg.count > 0,
        not_held,
        connected: t.connected,
        ever_connected: t.ever_connected,
        never_connected: t.never.clone(),
        connect_failures: c.connect_failures,
        duration_s: began.elapsed().as_secs_f64(),
        connect_ms_p50: ms(connect, 0.5),
        connect_ms_p99: ms(connect, 0.99),
        latency_p50_ms: ms(latency, 0.5),
        latency_p99_ms: ms(latency, 0.99),
        latency_samples: latency.len(),
        updates_per_s,
        bytes_per_client_s: per_s(c.bytes),
        glitches: c.teleports + c.vanished + c.duplicates,
        teleports: c.teleports,
        vanished: c.vanished,
        duplicates: c.duplicates,
        undecodable: c.undecodable,
        dropped: c.dropped,
        reconnects: c.reconnects,
        max_travel_m: t.max_travel_m,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::wire::Seen;

    fn bot() -> Bot {
        let cfg = BotsConfig {
            connect: "127.0.0.1:9".parse().unwrap(),
            key: [1; 32],
            count: 1,
            first_seat: 0,
            behaviour: Behaviour::Wander,
            duration: Duration::from_secs(1),
            threads: 1,
            seed: 1,
            progress: false,
        };
        Bot::new(0, &cfg).expect("a client needs no server to be made")
    }

    fn seen(id: u64, kind: EntityKind, at: [f32; 3], carried: bool) -> Seen {
        let (position, velocity) = Seen::quantize(at, [0.0; 3]);
        Seen { id: EntityId(id), kind, position, velocity, carried, age: 0 }
    }

    /// A whole update (no baseline): everything in it is new as of its tick.
    fn update(tick: u64, seen: Vec<Seen>) -> Update {
        let (gone, moved) = (vec![], vec![]);
        Update { tick, baseline: 0, player: EntityId(1), input_ack: 0, horizon_dm: 400, gone, moved, entered: seen }
    }

    const ME: u64 = 1;

    #[test]
    fn the_glitch_detector_sees_a_teleport_a_vanish_and_a_duplicate() {
        let mut b = bot();
        let now = Instant::now();
        let me = |x: f32| seen(ME, EntityKind::Player, [x, 0.0, 0.0], false);
        let other = |x: f32| seen(2, EntityKind::Player, [x, 10.0, 0.0], false);
        // Walking at full speed (1 m a tick) is no teleport; ten metres in a tick is.
        b.take_update(now, &update(1, vec![me(0.0), other(5.0)]));
        b.take_update(now, &update(2, vec![me(0.0), other(6.0)]));
        assert_eq!(b.counts.teleports, 0);
        b.take_update(now, &update(3, vec![me(0.0), other(16.0)]));
        assert_eq!(b.counts.teleports, 1);
        // Gone from 11 m away, where neither walking nor boarding a ship takes it out of a 40 m
        // bubble in a tick, and back.
        let near = |x: f32| seen(6, EntityKind::Player, [x, 10.0, 0.0], false);
        b.take_update(now, &update(4, vec![me(0.0), near(5.0)]));
        b.take_update(now, &update(5, vec![me(0.0)]));
        b.take_update(now, &update(6, vec![me(0.0)]));
        b.take_update(now, &update(7, vec![me(0.0), near(6.0)]));
        assert_eq!(b.counts.vanished, 1);
        // Shown twice in one update.
        b.take_update(now, &update(8, vec![me(0.0), near(6.0), near(6.0)]));
        assert_eq!(b.counts.duplicates, 1);
        // An item on the floor that is somewhere else on the floor a tick later, further than
        // any pickup reaches.
        let item = |x: f32| seen(3, EntityKind::Item { capacity: 0 }, [x, -10.0, 0.0], false);
        b.take_update(now, &update(9, vec![me(0.0), item(0.0)]));
        b.take_update(now, &update(10, vec![me(0.0), item(REACH_M + 1.0)]));
        assert_eq!(b.counts.teleports, 2);
    }

    #[test]
    fn what_carries_an_entity_away_is_no_glitch() {
        let mut b = bot();
        let now = Instant::now();
        let me = seen(ME, EntityKind::Player, [0.0; 3], false);
        let item = |at: [f32; 3], carried| seen(3, EntityKind::Item { capacity: 0 }, at, carried);
        // An item on the floor, picked up and carried off out of view, put down again elsewhere.
        b.take_update(now, &update(1, vec![me, item([20.0, 0.0, 0.0], false)]));
        b.take_update(now, &update(2, vec![me]));
        b.take_update(now, &update(30, vec![me, item([-25.0, 0.0, 0.0], false)]));
        // Picked up and put down again between two updates, the carry itself not seen: a jump
        // within reach, and a tick of a carrier's motion.
        b.take_update(now, &update(40, vec![me, item([3.0, 0.0, 0.0], false)]));
        b.take_update(now, &update(42, vec![me, item([3.0 + REACH_M + 4.0, 0.0, 0.0], false)]));
        // A passenger next to the bubble's edge, carried out of it by a ship in one tick.
        let passenger = |x: f32| seen(4, EntityKind::Player, [x, 0.0, 0.0], true);
        b.take_update(now, &update(31, vec![me, passenger(36.0)]));
        b.take_update(now, &update(32, vec![me]));
        b.take_update(now, &update(33, vec![me, passenger(38.0)]));
        // Boarding: a jump to the ship, carried from then on.
        let boarder = |x: f32, carried| seen(5, EntityKind::Player, [x, 5.0, 0.0], carried);
        b.take_update(now, &update(34, vec![me, boarder(10.0, false)]));
        b.take_update(now, &update(35, vec![me, boarder(25.0, true)]));
        // Boarding a ship out of view (the jump takes it out of the bubble at once), riding, and
        // walking back in once ashore.
        let rider = |x: f32| seen(7, EntityKind::Player, [x, -5.0, 0.0], false);
        b.take_update(now, &update(36, vec![me, rider(20.0)]));
        b.take_update(now, &update(37, vec![me]));
        b.take_update(now, &update(60, vec![me, rider(22.0)]));
        // Aboard and ashore again between two updates: the jump to the ship, and its motion.
        b.take_update(now, &update(61, vec![me, rider(22.0)]));
        b.take_update(now, &update(63, vec![me, rider(22.0 + BOARD_REACH_M + 4.0)]));
        assert_eq!((b.counts.teleports, b.counts.vanished, b.counts.duplicates), (0, 0, 0));
    }
}
