//! One shard: a glommio executor pinned to one core, running the core's replication slice and the
//! logical servers that live on it, at a fixed tick rate. Servers and their slice share the
//! thread, so their messages are plain moves; what crosses to another core (transfers, maps,
//! server liveness) goes through the shared-memory rings as rkyv frames.
//!
//! Each tick: take what other cores sent, let the bots play, tick the servers, tick the slice,
//! send what other cores need. A tick that runs past its budget is reported with the stage that
//! took the time. A full ring holds messages back in a bounded queue; while it is over its bound
//! the shard stops ticking its servers, so overload slows the world instead of growing memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::panics::{guarded, Watch};
use super::ring::{access_trusted, Consumer, Producer, RingError};
use crate::protocol::messages::ArchivedSliceMsg;
use crate::protocol::{Incarnation, Input, Replication, Server, ServerEvent, SliceId, SliceMsg};
use crate::world::ServerId;

/// Bytes of messages held back per destination while its ring is full; past this the shard
/// holds its servers' ticks back (they keep their leases, and simulate nothing) until the ring
/// drains: the world slows, no server fails over, and the queue stops growing (what fills it
/// comes from the servers' ticks).
pub const PENDING_BYTES_PER_PEER_MAX: usize = 64 << 20;

/// Ring frames one tick takes from each peer before moving on (the rest wait a tick).
pub const FRAMES_PER_PEER_PER_TICK_MAX: usize = 65_536;

/// How long a stopping shard keeps moving messages between cores.
pub const SETTLE: Duration = Duration::from_millis(150);

/// How often a core reads its gateway's sockets while it waits for its next tick.
const GATEWAY_DRAIN_EVERY: Duration = Duration::from_millis(2);

/// How long a gateway waits for the other cores' view of its tick before it sends what it has.
const VIEW_WAIT_MAX: Duration = Duration::from_millis(15);

/// How long a core waits for the other cores' clients' inputs of its tick before its servers tick
/// without them (those late wait for the next tick).
const INPUT_WAIT_MAX: Duration = Duration::from_millis(3);

/// The stages of a tick, for the stall report.
pub const STAGES: [&str; 6] = ["receive", "inputs", "servers", "slice", "send", "clients"];

/// What the status line reads while the shard runs (relaxed atomics: a dashboard, not a protocol).
#[derive(Default)]
pub struct ShardGauges {
    pub ticks: AtomicU64,
    pub held: AtomicU64,
    pub players: AtomicU64,
    pub handoffs: AtomicU64,
    pub transfers: AtomicU64,
    pub stalls: AtomicU64,
    /// The slowest tick since the status line last read it, in microseconds.
    pub worst_tick_us: AtomicU64,
    /// Tick time percentiles over the last second, in microseconds.
    pub p50_us: AtomicU64,
    pub p99_us: AtomicU64,
    /// The newest tick of this core's slice that its log holds durably (0: no log).
    pub committed_tick: AtomicU64,
    /// The newest checkpoint round this core's slice has completed.
    pub checkpoint_round: AtomicU64,
    /// Clients connected to this core's gateway.
    pub clients: AtomicU64,
    /// Servers whose code panicked (each replaced by a fresh incarnation).
    pub server_panics: AtomicU64,
    /// Ticks this core held its servers' simulation back under overload.
    pub ticks_held_back: AtomicU64,
}

/// What a shard with a gateway needs: its endpoints, the seats every core shares, and every
/// core's view of its entities.
pub struct ShardGateway {
    pub gateway: crate::net::Gateway,
    pub seats: Arc<crate::net::Seats>,
    pub views: Arc<crate::net::Views>,
}

/// What a shard with a replication log needs.
pub struct ShardLog {
    pub log: crate::log::SliceLog,
    /// The controller's shard starts a checkpoint round this often.
    pub checkpoint_every: Duration,
}

pub struct ShardSetup {
    pub index: usize,
    pub cores: usize,
    pub slice: Replication,
    pub servers: Vec<ServerId>,
    /// `producers[c]` sends to core `c` (`None` for this core).
    pub producers: Vec<Option<Producer>>,
    pub consumers: Vec<Option<Consumer>>,
    pub tick: Duration,
    pub warmup: Duration,
    pub bot_activity: f64,
    pub places: Arc<crate::bots::Places>,
    pub handoffs_per_tick_max: Option<usize>,
    pub seed: u64,
    pub start: Instant,
    pub stop: Arc<AtomicBool>,
    pub incarnations: Arc<AtomicU32>,
    pub gauges: Arc<ShardGauges>,
    /// Added to the run's clock: a world read back from its log continues its ticks.
    pub clock_offset_us: u64,
    pub log: Option<ShardLog>,
    /// Container streaming for the servers (`None`: servers hold every entity of their regions).
    pub streaming: Option<Arc<crate::world::StreamIndex>>,
    pub gateway: Option<ShardGateway>,
    /// Where a shard's fatal panic is recorded for the mesh to report.
    pub fatal: Arc<super::panics::Fatal>,
    /// A panic to inject, for tests and drills.
    pub inject_panic: Option<super::panics::InjectPanic>,
    /// Bytes queued for a peer past which the servers' ticks are held back.
    pub pending_bytes_per_peer_max: usize,
}

/// What a shard hands back when it stops.
pub struct ShardReport {
    pub index: usize,
    pub slice: Replication,
    pub servers: Vec<Server>,
    pub tick_us: Histogram<u64>,
    pub stalls: u64,
    pub stall_reports: Vec<String>,
    /// Frames still unsent or unread when the shard stopped (in flight between cores).
    pub in_flight: usize,
    pub ring_errors: u64,
    pub restarts: u64,
    /// Servers whose code panicked and were replaced.
    pub server_panics: u64,
    /// Ticks whose simulation was held back under overload.
    pub ticks_held_back: u64,
    /// Why the log stopped taking commits, if it did (the shard stops the mesh then).
    pub log_error: Option<String>,
    pub gateway: Option<crate::net::GatewayStats>,
}

struct Shard {
    index: usize,
    slice: Replication,
    servers: Vec<Server>,
    producers: Vec<Option<Producer>>,
    consumers: Vec<Option<Consumer>>,
    /// Messages for each peer that did not fit its ring, archived, and their bytes.
    pending: Vec<VecDeque<rkyv::util::AlignedVec>>,
    pending_bytes: Vec<usize>,
    pending_bytes_max: usize,
    rng: ChaCha8Rng,
    bot_activity: f64,
    places: Arc<crate::bots::Places>,
    handoffs_per_tick_max: Option<usize>,
    streaming: Option<Arc<crate::world::StreamIndex>>,
    incarnations: Arc<AtomicU32>,
    inputs: Vec<Input>,
    ring_errors: u64,
    restarts: u64,
    server_panics: u64,
    /// Ticks whose simulation was held back under overload.
    ticks_held_back: u64,
    /// The next tick of the first server panics (an injected fault).
    inject_server_panic: bool,
    log: Option<crate::log::SliceLog>,
    log_ops: Vec<crate::log::LogOp>,
    log_error: Option<String>,
    last_log_tick: u64,
    gateway: Option<ShardGateway>,
}

impl Shard {
    /// The slice's changes since the last commit become this tick's group commit. It runs before
    /// `send`: what leaves for another core is in this core's log before the other can log it.
    fn commit(&mut self, now_us: u64) {
        let Some(log) = self.log.as_mut() else { return };
        if self.log_error.is_some() {
            return;
        }
        let tick = (now_us / crate::limits::TICK_DURATION_US).max(self.last_log_tick + 1);
        self.last_log_tick = tick;
        let floor = self.incarnations.load(Ordering::Relaxed);
        if let Err(e) = crate::log::commit_tick(&mut self.slice, log, tick, floor, &mut self.log_ops) {
            self.log_error = Some(e.to_string());
        }
    }

    fn now_us(start: Instant, offset_us: u64) -> u64 {
        offset_us + start.elapsed().as_micros() as u64
    }

    /// Frames from other cores into the slice.
    fn receive(&mut self) -> usize {
        let mut received = Vec::new();
        for (from, consumer) in self.consumers.iter_mut().enumerate() {
            let Some(consumer) = consumer else { continue };
            let result = consumer.read_batch(FRAMES_PER_PEER_PER_TICK_MAX, |payload| {
                // SAFETY: the only producer of this ring is the shard runtime on core `from`,
                // which writes nothing but `SliceMsg` archives with `Producer::try_push`.
                let archived = unsafe { access_trusted::<ArchivedSliceMsg>(payload) };
                match rkyv::deserialize::<SliceMsg, rkyv::rancor::Error>(archived) {
                    Ok(msg) => received.push((from, msg)),
                    Err(_) => received.push((usize::MAX, SliceMsg::ServerUp { server: ServerId(u32::MAX) })),
                }
            });
            if result.is_err() {
                self.ring_errors += 1;
            }
        }
        let n = received.len();
        for (from, msg) in received {
            if from == usize::MAX {
                self.ring_errors += 1;
                continue;
            }
            self.slice.handle_peer(SliceId(from as u16), msg);
        }
        n
    }

    /// Messages between this core's servers and its slice, until none are left.
    fn pump_local(&mut self, now: u64) {
        loop {
            let mut moved = false;
            for i in 0..self.servers.len() {
                loop {
                    let server = &mut self.servers[i];
                    match guarded(|| server.poll_message()) {
                        Ok(Some(msg)) => {
                            self.slice.handle(now, msg);
                            moved = true;
                        }
                        Ok(None) => break,
                        Err(why) => {
                            self.server_panicked(i, now, &why);
                            break;
                        }
                    }
                }
            }
            while let Some(msg) = self.slice.poll_message() {
                if let Some(i) = self.servers.iter().position(|s| s.id() == msg.server) {
                    let server = &mut self.servers[i];
                    if let Err(why) = guarded(|| server.handle(now, msg)) {
                        self.server_panicked(i, now, &why);
                    }
                }
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    /// Clients' inputs from this core's gateway, to the servers that hold their players.
    fn client_inputs(&mut self, now: u64) {
        let Some(gw) = self.gateway.as_mut() else { return };
        for (entity, seq, action) in gw.gateway.poll() {
            self.slice.route_input(entity, seq, action);
        }
        self.pump_local(now);
    }

    /// This core's entities for every gateway, as of its tick `tick`.
    fn publish_view(&mut self, tick: u64) {
        let Some(gw) = self.gateway.as_mut() else { return };
        let mut view = Vec::new();
        for server in self.servers.iter().filter(|s| s.map().is_some()) {
            let world = server.world();
            for (id, held) in server.held() {
                let position = held.position_at(tick, &world);
                view.push(crate::net::ViewEntity {
                    carried: held.state.parent.is_some(),
                    input_seq: held.input_seq,
                    ..crate::net::ViewEntity::new(*id, held.state.kind, position, held.state.velocity)
                });
            }
            for (id, state) in server.leaving() {
                view.push(crate::net::ViewEntity {
                    carried: state.parent.is_some(),
                    leaving: true,
                    ..crate::net::ViewEntity::new(*id, state.kind, state.position, state.velocity)
                });
            }
        }
        gw.views.publish(self.index, tick, view);
    }

    fn drive_bots(&mut self, now: u64) {
        if self.bot_activity <= 0.0 {
            return;
        }
        // A copy: other cores' gateways take seats meanwhile, and must not wait for this loop.
        let taken = self.gateway.as_ref().map(|gw| gw.seats.taken().clone());
        let mut panicked = Vec::new();
        for (i, server) in self.servers.iter_mut().enumerate() {
            if !server.is_acting(now) {
                continue;
            }
            self.inputs.clear();
            for (id, held) in server.held() {
                if held.state.kind.is_driven() && !taken.as_ref().is_some_and(|t| t.contains(id)) {
                    crate::bots::inputs_with_behaviour(
                        &mut self.rng,
                        *id,
                        &held.state,
                        &self.places,
                        now,
                        self.bot_activity,
                        &mut self.inputs,
                    );
                }
            }
            let inputs = &mut self.inputs;
            if let Err(why) = guarded(|| inputs.drain(..).for_each(|input| server.handle_input(input))) {
                panicked.push((i, why));
            }
        }
        for (i, why) in panicked {
            self.server_panicked(i, now, &why);
        }
    }

    fn restart_fenced(&mut self, now: u64) {
        for i in 0..self.servers.len() {
            if let Some(ServerEvent::Fenced) = self.servers[i].poll_event() {
                self.servers[i] = self.fresh_server(self.servers[i].id(), now);
                self.restarts += 1;
            }
        }
    }

    /// A new incarnation of server `id`: it holds nothing until its slice grants it regions.
    fn fresh_server(&self, id: ServerId, now: u64) -> Server {
        let inc = self.incarnations.fetch_add(1, Ordering::Relaxed);
        let mut fresh = Server::new(id, Incarnation(inc), now);
        if let Some(index) = &self.streaming {
            fresh = fresh.with_streaming(index.clone());
        }
        if let Some(max) = self.handoffs_per_tick_max {
            fresh.handoffs_per_tick_max = max;
        }
        fresh
    }

    /// Server `i`'s code panicked: that is its crash. Its slice is told, as a crash report
    /// tells it, and takes back what it held (committed state: what the server had not written
    /// through is lost, as a crashed process's would be); a fresh incarnation takes its place.
    fn server_panicked(&mut self, i: usize, now: u64, why: &str) {
        let (id, incarnation) = (self.servers[i].id(), self.servers[i].incarnation());
        self.slice.handle_crash_report(id, incarnation);
        self.servers[i] = self.fresh_server(id, now);
        self.server_panics += 1;
        eprintln!(
            "core {}: server {id} incarnation {} panicked: {why}; its slice took back its regions, \
             incarnation {} replaces it",
            self.index,
            incarnation.0,
            self.servers[i].incarnation().0
        );
    }

    /// Every server's tick, each guarded: a panic is that server's crash.
    fn tick_servers(&mut self, now: u64) {
        for i in 0..self.servers.len() {
            let inject = i == 0 && std::mem::take(&mut self.inject_server_panic);
            let server = &mut self.servers[i];
            let ticked = guarded(|| {
                if inject {
                    panic!("a panic injected into server {}'s tick", server.id());
                }
                server.tick(now)
            });
            if let Err(why) = ticked {
                self.server_panicked(i, now, &why);
            }
        }
    }

    /// The slice's messages for other cores into their rings; what does not fit waits.
    fn send(&mut self) {
        while let Some((to, msg)) = self.slice.poll_peer() {
            self.queue_for(to.0 as usize, &msg);
        }
        self.push_pending();
    }

    /// Only the clients' inputs for other cores into their rings, ahead of the tick's commit.
    fn send_inputs(&mut self) {
        while let Some((to, msg)) = self.slice.poll_peer_input() {
            self.queue_for(to.0 as usize, &msg);
        }
        self.push_pending();
    }

    /// Into `to`'s ring straight away (archived in place) when nothing waits before it; else
    /// archived into its queue.
    fn queue_for(&mut self, to: usize, msg: &SliceMsg) {
        if self.pending[to].is_empty() {
            if let Some(producer) = self.producers[to].as_mut() {
                match producer.try_push(msg) {
                    Ok(()) => return,
                    Err(RingError::Full) => {}
                    Err(_) => {
                        // A message larger than the ring: a configuration error, counted.
                        self.ring_errors += 1;
                        return;
                    }
                }
            }
        }
        match rkyv::to_bytes::<rkyv::rancor::Error>(msg) {
            Ok(bytes) => {
                self.pending_bytes[to] += bytes.len();
                self.pending[to].push_back(bytes);
            }
            Err(_) => self.ring_errors += 1,
        }
    }

    fn push_pending(&mut self) {
        for (to, queue) in self.pending.iter_mut().enumerate() {
            let Some(producer) = self.producers[to].as_mut() else { continue };
            while let Some(bytes) = queue.front() {
                match producer.try_push_bytes(bytes) {
                    Ok(()) => {}
                    Err(RingError::Full) => break,
                    // A message larger than the ring: a configuration error, counted.
                    Err(_) => self.ring_errors += 1,
                }
                self.pending_bytes[to] -= bytes.len();
                queue.pop_front();
            }
            producer.flush();
        }
    }

    /// The peer whose queue is over its bound, if any.
    fn overloaded(&self) -> Option<usize> {
        self.pending_bytes.iter().position(|b| *b > self.pending_bytes_max)
    }

    /// A tick held back under overload: no server simulates, each renews its lease (a server
    /// that stopped heartbeating would be failed over by its own slice), and the count says so.
    fn hold_servers(&mut self, now: u64) {
        for i in 0..self.servers.len() {
            let server = &mut self.servers[i];
            if let Err(why) = guarded(|| server.hold(now)) {
                self.server_panicked(i, now, &why);
            }
        }
        self.ticks_held_back += 1;
    }

    fn in_flight(&self) -> usize {
        self.pending.iter().map(|q| q.len()).sum()
    }
}

/// Runs a shard until `stop`, then lets in-flight messages settle and reports.
/// Which tick a core runs next, and when. Tick numbers are the protocol's clock (a core that runs
/// a tick late still runs it as that tick, so every core agrees which tick a move was made in),
/// and the gateways match the cores' views by them.
#[derive(Debug)]
struct Schedule {
    start: Instant,
    tick: Duration,
    /// The tick number before the first this run.
    first: u64,
    /// When the next tick is due.
    next: Instant,
    number: u64,
}

impl Schedule {
    fn new(start: Instant, tick: Duration, offset_us: u64) -> Self {
        let first = offset_us / crate::limits::TICK_DURATION_US;
        Self { start, tick, first, next: start, number: first }
    }

    /// The next tick's number, and when it is due.
    fn next_tick(&mut self) -> (u64, Instant) {
        self.number += 1;
        let at = self.next;
        self.next += self.tick;
        (self.number, at)
    }

    /// After a tick that ended at `now`: far behind (more than a tick), skip the ticks that
    /// cannot be made up rather than run them back to back, and take up the schedule where it is
    /// now. A core whose tick numbers fell behind for good would run on a clock its peers had
    /// left: leases it still believed in, the layer on another core had already given away.
    fn catch_up(&mut self, now: Instant) -> bool {
        if now <= self.next + self.tick {
            return false;
        }
        self.next = now;
        let elapsed = now.saturating_duration_since(self.start).as_nanos() / self.tick.as_nanos().max(1);
        self.number = self.first + elapsed as u64;
        true
    }
}

pub async fn run(mut setup: ShardSetup) -> ShardReport {
    // A panic that unwinds out of the shard (not a server's, which is caught as its crash)
    // records the core and stops the mesh.
    let _watch = Watch { core: setup.index, fatal: setup.fatal.clone(), stop: setup.stop.clone() };
    let servers: Vec<Server> = setup
        .servers
        .iter()
        .map(|id| {
            let inc = Incarnation(setup.incarnations.fetch_add(1, Ordering::Relaxed));
            let mut server = Server::new(*id, inc, setup.clock_offset_us);
            if let Some(index) = &setup.streaming {
                server = server.with_streaming(index.clone());
            }
            if let Some(max) = setup.handoffs_per_tick_max {
                server.handoffs_per_tick_max = max;
            }
            server
        })
        .collect();
    let (log, checkpoint_every) = match setup.log {
        Some(l) => (Some(l.log), Some(l.checkpoint_every)),
        None => (None, None),
    };
    let offset_us = setup.clock_offset_us;
    let mut last_checkpoint = Instant::now();
    let mut shard = Shard {
        index: setup.index,
        slice: setup.slice,
        servers,
        producers: setup.producers,
        consumers: setup.consumers,
        pending: (0..setup.cores).map(|_| VecDeque::new()).collect(),
        pending_bytes: vec![0; setup.cores],
        pending_bytes_max: setup.pending_bytes_per_peer_max,
        ticks_held_back: 0,
        rng: ChaCha8Rng::seed_from_u64(setup.seed ^ (setup.index as u64) << 32),
        bot_activity: setup.bot_activity,
        places: setup.places,
        handoffs_per_tick_max: setup.handoffs_per_tick_max,
        streaming: setup.streaming.clone(),
        incarnations: setup.incarnations,
        inputs: Vec::new(),
        ring_errors: 0,
        restarts: 0,
        server_panics: 0,
        inject_server_panic: false,
        log,
        log_ops: Vec::new(),
        log_error: None,
        last_log_tick: offset_us / crate::limits::TICK_DURATION_US,
        gateway: setup.gateway,
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
    let mut window = hist.clone();
    let mut window_began = Instant::now();
    let mut stalls = 0u64;
    let mut stall_reports = Vec::new();
    let budget_us = setup.tick.as_micros() as u64;
    let mut schedule = Schedule::new(setup.start, setup.tick, offset_us);
    while !setup.stop.load(Ordering::Relaxed) {
        let (scheduled_tick, at) = schedule.next_tick();
        let next = schedule.next;
        let now_instant = Instant::now();
        if at > now_instant {
            // Clients' sockets are read while the core waits, so a flood is read and dropped by
            // the gateway rather than overflowing the kernel's queue over clients' packets.
            match shard.gateway.as_mut() {
                Some(gw) => loop {
                    gw.gateway.drain();
                    let now = Instant::now();
                    if now >= at {
                        break;
                    }
                    glommio::timer::sleep((at - now).min(GATEWAY_DRAIN_EVERY)).await;
                },
                None => glommio::timer::sleep(at - now_instant).await,
            }
        }
        let began = Instant::now();
        // The protocol's clock is the schedule's, not the wall's: a core that runs a tick late
        // still runs it as that tick, so every core agrees which tick a move was made in.
        let now = scheduled_tick * crate::limits::TICK_DURATION_US;
        let mut stage_us = [0u64; STAGES.len()];
        let mut lap = Instant::now();
        let mut mark = |i: usize| {
            stage_us[i] = lap.elapsed().as_micros() as u64;
            lap = Instant::now();
        };
        shard.receive();
        shard.pump_local(now);
        mark(0);
        let overloaded = shard.overloaded();
        // Clients are let in once the world is placed (the warm-up), as a game lets players in
        // once its world is loaded; until then their connection requests wait.
        let accepting = setup.start.elapsed() >= setup.warmup;
        if accepting {
            // Inputs for a player another core holds go there at once, and this core waits
            // (briefly) for the other cores' inputs of this tick before its servers tick: an
            // input is applied in the tick that took it in, whichever core holds the player.
            shard.client_inputs(now);
            shard.send_inputs();
            let views = shard.gateway.as_ref().map(|gw| gw.views.clone());
            if let Some(views) = views {
                views.inputs_sent(shard.index, scheduled_tick);
                let wait_until = (Instant::now() + INPUT_WAIT_MAX).min(next);
                while !views.all_inputs_sent(scheduled_tick) && Instant::now() < wait_until {
                    glommio::timer::sleep(Duration::from_micros(100)).await;
                }
                shard.receive();
                shard.pump_local(now);
            }
        }
        if overloaded.is_none() {
            shard.drive_bots(now);
        }
        mark(1);
        if let Some(p) = setup.inject_panic.filter(|p| p.core == shard.index && scheduled_tick >= p.tick) {
            setup.inject_panic = None;
            if p.in_server {
                shard.inject_server_panic = true;
            } else {
                panic!("a panic injected into core {}'s shard at tick {scheduled_tick}", shard.index);
            }
        }
        match overloaded {
            None => shard.tick_servers(now),
            Some(peer) => {
                if shard.ticks_held_back == 0 || shard.ticks_held_back % 300 == 0 {
                    eprintln!(
                        "core {}: overloaded: {} MiB wait for core {peer}'s ring; servers' ticks are held back \
                         (leases kept) until it drains ({} ticks so far)",
                        shard.index,
                        shard.pending_bytes[peer] >> 20,
                        shard.ticks_held_back
                    );
                }
                shard.hold_servers(now);
            }
        }
        shard.pump_local(now);
        shard.restart_fenced(now);
        mark(2);
        shard.slice.tick(now);
        if checkpoint_every.is_some_and(|every| last_checkpoint.elapsed() >= every)
            && shard.slice.begin_checkpoint().is_some()
        {
            last_checkpoint = Instant::now();
        }
        shard.pump_local(now);
        shard.commit(now);
        mark(3);
        shard.send();
        mark(4);
        if shard.gateway.is_some() && accepting {
            // Every client's update is of one tick across all cores, so an entity that moves
            // from one core to another moves smoothly: wait (briefly) for the other cores' view
            // of this tick.
            shard.publish_view(scheduled_tick);
            let gw = shard.gateway.as_mut().expect("checked");
            let tick = scheduled_tick;
            // Never past the next tick's start: a core already behind its schedule sends what
            // every core has reached rather than fall further behind.
            let wait_until = (Instant::now() + VIEW_WAIT_MAX).min(next);
            while !gw.views.all_reached(tick) && Instant::now() < wait_until {
                glommio::timer::sleep(Duration::from_micros(200)).await;
            }
            gw.gateway.send_updates(tick, &gw.views);
        }
        mark(5);
        if let Some(e) = &shard.log_error {
            eprintln!("core {}: the replication log failed, stopping: {e}", shard.index);
            setup.stop.store(true, Ordering::Relaxed);
        }
        let took_us = began.elapsed().as_micros() as u64;
        let warm = setup.start.elapsed() >= setup.warmup;
        if warm {
            hist.saturating_record(took_us.max(1));
        }
        let g = &setup.gauges;
        window.saturating_record(took_us.max(1));
        if window_began.elapsed() >= Duration::from_secs(1) {
            g.p50_us.store(window.value_at_quantile(0.5), Ordering::Relaxed);
            g.p99_us.store(window.value_at_quantile(0.99), Ordering::Relaxed);
            window.reset();
            window_began = Instant::now();
        }
        g.ticks.fetch_add(1, Ordering::Relaxed);
        g.worst_tick_us.fetch_max(took_us, Ordering::Relaxed);
        let held: usize = shard.servers.iter().map(|s| s.held().len()).sum();
        let players: usize = shard
            .servers
            .iter()
            .map(|s| s.held().values().filter(|h| h.state.kind == crate::world::EntityKind::Player).count())
            .sum();
        g.held.store(held as u64, Ordering::Relaxed);
        g.players.store(players as u64, Ordering::Relaxed);
        g.handoffs.store(shard.slice.stats.handoffs, Ordering::Relaxed);
        g.transfers.store(shard.slice.stats.transfers_out, Ordering::Relaxed);
        if let Some(log) = &shard.log {
            g.committed_tick.store(log.state.durable_tick.load(Ordering::Acquire), Ordering::Relaxed);
        }
        g.checkpoint_round.store(shard.slice.checkpoint_done(), Ordering::Relaxed);
        g.server_panics.store(shard.server_panics, Ordering::Relaxed);
        g.ticks_held_back.store(shard.ticks_held_back, Ordering::Relaxed);
        if let Some(gw) = &shard.gateway {
            g.clients.store(gw.gateway.stats.connected, Ordering::Relaxed);
        }
        if took_us > budget_us && warm {
            stalls += 1;
            g.stalls.fetch_add(1, Ordering::Relaxed);
            let (worst, worst_us) = stage_us
                .iter()
                .enumerate()
                .max_by_key(|(_, us)| **us)
                .map(|(i, us)| (STAGES[i], *us))
                .unwrap_or(("", 0));
            if stall_reports.len() < 20 {
                stall_reports.push(format!(
                    "core {} tick at {:.3} s took {:.1} ms, budget {:.1} ms; most in `{worst}` ({:.1} ms)",
                    shard.index,
                    now as f64 / 1e6,
                    took_us as f64 / 1e3,
                    budget_us as f64 / 1e3,
                    worst_us as f64 / 1e3
                ));
            }
        }
        schedule.catch_up(Instant::now());
    }
    // Settle: no more simulation, but keep moving messages for a while so that what was between
    // cores when the world stopped (a transfer, a map) reaches its slice. A handoff chain settles
    // in a few hops; the window is generous.
    let settle_until = Instant::now() + SETTLE;
    // After another core's fatal panic, what waits for it will never be read: settle only what
    // the live cores can take, and let the process end within a second.
    let peer_died = setup.fatal.first().is_some();
    while Instant::now() < settle_until || (shard.in_flight() > 0 && !peer_died) {
        let now = Shard::now_us(setup.start, offset_us);
        let received = shard.receive();
        shard.pump_local(now);
        if received > 0 {
            shard.commit(now);
        }
        shard.send();
        if received == 0 {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        if Instant::now() > settle_until + SETTLE * 10 {
            break;
        }
    }
    let in_flight = shard.in_flight();
    if let Some(gw) = shard.gateway.as_mut() {
        gw.gateway.disconnect_all();
    }
    shard.commit(Shard::now_us(setup.start, offset_us));
    if let Some(log) = shard.log.take() {
        if let Err(e) = log.close() {
            shard.log_error.get_or_insert(e.to_string());
        }
    }
    ShardReport {
        index: shard.index,
        slice: shard.slice,
        servers: shard.servers,
        tick_us: hist,
        stalls,
        stall_reports,
        in_flight,
        ring_errors: shard.ring_errors,
        restarts: shard.restarts,
        server_panics: shard.server_panics,
        ticks_held_back: shard.ticks_held_back,
        log_error: shard.log_error,
        gateway: shard.gateway.map(|gw| gw.gateway.stats),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_that_fell_far_behind_takes_up_the_schedule_where_it_is_now() {
        let (start, tick) = (Instant::now(), Duration::from_millis(33));
        let mut s = Schedule::new(start, tick, 0);
        assert_eq!(s.next_tick(), (1, start));
        assert_eq!(s.next_tick(), (2, start + tick));
        // A little late: the schedule holds, the next tick runs at once to make it up.
        assert!(!s.catch_up(start + tick * 2 + Duration::from_millis(20)));
        assert_eq!(s.next_tick(), (3, start + tick * 2));
        // Stalled for ten ticks: the next tick is the one the wall clock is in, as on every
        // other core, not the one after the last this core ran.
        let now = start + tick * 13 + Duration::from_millis(5);
        assert!(s.catch_up(now));
        assert_eq!(s.next_tick(), (14, now));
        assert_eq!(s.next_tick().0, 15);
        // A run restarted at an offset numbers on from it.
        let mut s = Schedule::new(start, tick, 100 * crate::limits::TICK_DURATION_US);
        assert_eq!(s.next_tick().0, 101);
    }
}
