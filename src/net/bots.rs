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
use renet_netcode::ClientAuthentication;

use super::gateway::{connection_config, unix_now};
use super::key::Key;
use super::transport::ClientTransport;
use super::viewer::{ViewCounts, Viewer};
use super::wire::{self, ClientMsg, Notice, Update, INPUT_CHANNEL, NOTICE_CHANNEL, UPDATE_CHANNEL};
use crate::limits::{NEVER_CONNECTED_REASONS_MAX, TICK_DURATION_US};
use crate::protocol::Action;
use crate::world::{EntityKind, Tick};

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
    /// Accounts `first_seat..first_seat + count` (account `k` below the world's own players drives
    /// its `k`th player; any other is an account's player, see `Seats`).
    pub first_seat: u64,
    pub behaviour: Behaviour,
    pub duration: Duration,
    pub threads: usize,
    pub seed: u64,
    /// Show progress: a bar on a terminal, plain lines otherwise (`crate::progress`).
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
    /// The latency's distribution: its value in milliseconds at each of `LATENCY_QUANTILES`
    /// (empty with no sample).
    pub latency_distribution: Vec<LatencyQuantile>,
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

/// One point of the latency's distribution: `ms` at quantile `quantile` (0 to 1).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LatencyQuantile {
    pub quantile: f64,
    pub ms: f64,
}

/// The quantiles a report gives the latency at.
const LATENCY_QUANTILES: [f64; 11] = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0];

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
    /// The world's tick, as its updates said (0: no update came).
    tick_us: u32,
}

/// What a bot counts, and all bots together.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    bytes: u64,
    /// Messages that did not decode (what did but did not fit the bot's baselines is in `view`).
    undecodable: u64,
    dropped: u64,
    connect_failures: u64,
    reconnects: u64,
    /// What the bots' viewers counted: updates taken in and glitches.
    view: ViewCounts,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.view.add(&o.view);
        self.bytes += o.bytes;
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
    target: Option<Vec3>,
    heading: Vec3,
    next_turn: u64,
    ticks: u64,
    steps: u64,
    /// Churn: when to leave, and when to come back.
    leave_at: Option<Instant>,
    back_at: Option<Instant>,
    rng: ChaCha8Rng,
    /// The newest update taken in and not yet acknowledged.
    ack: Option<Tick>,
    /// What it makes of its updates (and where its player is).
    viewer: Viewer,
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
            target: None,
            heading: Vec3::X,
            next_turn: 0,
            ticks: 0,
            steps: 0,
            leave_at: None,
            back_at: None,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ seat.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            ack: None,
            viewer: Viewer::default(),
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
        let token = crate::net::key::connect_token(
            &cfg.key,
            self.seat,
            cfg.connect,
            crate::limits::TOKEN_EXPIRE_SECS_DEFAULT,
            now,
        )
        .map_err(std::io::Error::other)?;
        let bind: SocketAddr = if cfg.connect.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("valid");
        let socket = UdpSocket::bind(bind)?;
        let transport = ClientTransport::new(now, ClientAuthentication::Secure { connect_token: token }, socket)?;
        self.client = RenetClient::new(connection_config());
        self.transport = Some(transport);
        self.attempt_began = Instant::now();
        self.since_update = Duration::ZERO;
        self.connected_at = None;
        self.viewer.reset();
        self.sent.clear();
        self.ack = None;
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
                let _ = t.send_packets(&mut self.client, Tick(self.ticks));
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
            let _ = t.send_packets(&mut self.client, Tick(self.ticks));
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
    fn take_update(&mut self, now: Instant, update: &Update) -> Option<Tick> {
        let input_ack = self.viewer.take_update(update)?.input_ack;
        // The input the update shows applied is measured; older ones its server refused (a move
        // while aboard, a pickup with nothing in reach) had no effect to see.
        while self.sent.front().is_some_and(|(seq, _)| *seq <= input_ack) {
            let (seq, at) = self.sent.pop_front().expect("checked");
            if seq == input_ack {
                self.latency_us.push(now.duration_since(at).as_micros().max(1) as u64);
            }
        }
        Some(update.tick)
    }

    fn nearest_other_player(&self) -> Option<Vec3> {
        let me = self.viewer.me?;
        self.viewer
            .view()
            .iter()
            .filter(|k| k.seen.kind == EntityKind::Player)
            .map(|k| k.position_m_at(self.viewer.last_tick(), self.viewer.tick_us()) - me)
            .filter(|d| d.length() > 1.0)
            .min_by(|a, b| a.length().total_cmp(&b.length()))
            .map(|d| d.normalize())
    }

    fn decide(&mut self, behaviour: Behaviour, rally: &Mutex<Option<Vec3>>) -> Option<Action> {
        let me = self.viewer.me?;
        if self.viewer.aboard {
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
                let home = self.viewer.home.unwrap_or(me);
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
                t.counts.add(&Counts { view: bot.viewer.counts, ..bot.counts });
                t.connected_s += bot.connected_for.as_secs_f64();
                t.max_travel_m = t.max_travel_m.max(bot.viewer.travel_m as f64);
                if bot.viewer.last_tick() > Tick::ZERO {
                    t.tick_us = t.tick_us.max(bot.viewer.tick_us());
                }
            }
            Ok(())
        }));
    }
    if cfg.progress {
        // Seconds of the run, with how many bots are connected.
        let progress = crate::progress::Progress::new("s", cfg.duration.as_secs_f64().ceil().max(1.0) as u64);
        let mut next = began + Duration::from_secs(1);
        while handles.iter().any(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
            if Instant::now() >= next {
                next += Duration::from_secs(1);
                progress.set_message(format!("bots={} connected={}", cfg.count, live.load(Ordering::Relaxed) as i64));
                progress.advance(false);
            }
        }
        progress.finish();
    }
    for h in handles {
        h.join().map_err(|_| std::io::Error::other("a bot thread panicked"))??;
    }
    let t = totals.lock().expect("not poisoned");
    let c = &t.counts;
    let (connect, latency) = (t.connect_us.as_ref().expect("set"), t.latency_us.as_ref().expect("set"));
    let ms = |h: &Histogram<u64>, q: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1e3 };
    let per_s = |n: u64| if t.connected_s > 0.0 { n as f64 / t.connected_s } else { 0.0 };
    let updates_per_s = per_s(c.view.updates);
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
    // The world's tick rate, as its updates said: an update a tick is what holding means.
    let tick_rate = 1e6 / if t.tick_us > 0 { t.tick_us as f64 } else { TICK_DURATION_US as f64 };
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
        latency_distribution: if latency.is_empty() {
            Vec::new()
        } else {
            LATENCY_QUANTILES.iter().map(|&q| LatencyQuantile { quantile: q, ms: ms(latency, q) }).collect()
        },
        updates_per_s,
        bytes_per_client_s: per_s(c.bytes),
        glitches: c.view.glitches(),
        teleports: c.view.teleports,
        vanished: c.view.vanished,
        duplicates: c.view.duplicates,
        undecodable: c.undecodable + c.view.undecodable,
        dropped: c.dropped,
        reconnects: c.reconnects,
        max_travel_m: t.max_travel_m,
    })
}
