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
use rustc_hash::FxHashSet;

use super::panics::Watch;
use super::ring::{access_trusted, Consumer, Producer, RingError};
pub use crate::limits::{FRAMES_PER_PEER_PER_TICK_MAX, PENDING_BYTES_PER_PEER_MAX, SETTLE};
use crate::limits::{GATEWAY_DRAIN_EVERY, INPUT_WAIT_MAX, LOCKSTEP_POLL, TIME_DILATION_WINDOW_US, VIEW_WAIT_MAX};
use crate::node::{Bots, Direct, Durable, LogRecord, Node, NodeConfig, NodeEvent, NodeIo, Stage, Step};
use crate::protocol::messages::ArchivedSliceMsg;
use crate::protocol::{Action, Replication, Server, SliceId, SliceMsg};
use crate::world::{EntityId, ServerId, Tick};

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
    /// Logical servers this core hosts now.
    pub servers: AtomicU64,
    /// The controller's counters (core 0 only): servers started and retired, regions split and
    /// merged.
    pub servers_started: AtomicU64,
    pub servers_retired: AtomicU64,
    pub regions_split: AtomicU64,
    pub regions_merged: AtomicU64,
    pub regions_moved: AtomicU64,
    /// Regions in the map now.
    pub regions: AtomicU64,
    /// Microseconds the servers and the slice have worked, in all (waits for other cores
    /// excluded): what the controller starts and retires servers by.
    pub work_us: AtomicU64,
    /// The world's speed against real time over the last window, in millionths (0: no window
    /// closed yet): 1,000,000 while every tick keeps the schedule.
    pub time_dilation_ppm: AtomicU64,
    /// This core's servers and slice at work over the last second, as a share of the tick's
    /// budget, in millionths.
    pub work_share_ppm: AtomicU64,
    /// Servers this core's slice declared dead (failovers).
    pub failovers: AtomicU64,
    /// Bytes of this core's log synced.
    pub log_bytes: AtomicU64,
    /// This core's gateway's counters, copied once a second.
    pub gateway: std::sync::Mutex<crate::net::GatewayStats>,
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
    /// Where this core posts its part of the live map (`--http`; `None`: no map).
    pub map: Option<Arc<super::map::MapBoard>>,
    /// Where each tick's duration goes for `--metrics` (`None`: no metrics).
    pub tick_histogram: Option<prometheus_client::metrics::histogram::Histogram>,
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
    /// The last tick each core finished. A core starts its next tick only once every core has
    /// finished the one before, so the cores' game clocks stay together (and a world that
    /// cannot keep up slows down evenly).
    pub lockstep: Arc<Vec<AtomicU64>>,
    /// Crash drills for this core's servers (`--chaos-crash-every`).
    pub chaos: Option<Arc<super::failover::Chaos>>,
    /// Every server crash's failover, measured across the cores.
    pub failovers: Arc<super::failover::FailoverWatch>,
    /// Scripted logins and logouts (`MeshConfig::leave_after_rush`; one core's only).
    pub sessions: Option<SessionScript>,
}

/// Accounts that log in at the start and out at a game time: a crowd that leaves after an
/// event. Their sessions are numbered 1.. in the order of `players`.
pub struct SessionScript {
    players: Vec<EntityId>,
    logout_at_us: u64,
    logged_in: bool,
    logged_out: bool,
}

impl SessionScript {
    pub fn new(players: Vec<EntityId>, logout_at_us: u64) -> Self {
        Self { players, logout_at_us, logged_in: false, logged_out: false }
    }

    /// The sessions due at game time `now_us`.
    fn due(&mut self, now_us: u64, into: &mut Vec<crate::node::Session>) {
        let at = |online: bool| {
            move |(i, player): (usize, &EntityId)| crate::node::Session {
                player: *player,
                session: i as u64 + 1,
                online,
                create: false,
            }
        };
        if !self.logged_in {
            self.logged_in = true;
            into.extend(self.players.iter().enumerate().map(at(true)));
        } else if !self.logged_out && now_us >= self.logout_at_us {
            self.logged_out = true;
            into.extend(self.players.iter().enumerate().map(at(false)));
        }
    }
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
    /// The lowest time dilation of a window after the warm-up (`None`: none closed, or a
    /// free-running run, which keeps no real time).
    pub time_dilation_min: Option<f64>,
    /// Where the ticks after the warm-up went: wall time in each of `STAGES`, summed, and the
    /// ticks it is over.
    pub stage_us: [u64; STAGES.len()],
    pub stage_ticks: u64,
    /// Border ghosts this core's slice gave its servers and sent to other cores over the same
    /// ticks (after the warm-up): the slice's counters are the whole run's.
    pub ghosts_after_warmup: (u64, u64),
}

/// The node's I/O on a real core: the rings to other cores, the gateway's clients, the log.
struct ShardIo {
    index: usize,
    producers: Vec<Option<Producer>>,
    consumers: Vec<Option<Consumer>>,
    /// Messages for each peer that did not fit its ring, archived, and their bytes.
    pending: Vec<VecDeque<rkyv::util::AlignedVec>>,
    pending_bytes: Vec<usize>,
    pending_bytes_max: usize,
    ring_errors: u64,
    log: Option<crate::log::SliceLog>,
    gateway: Option<ShardGateway>,
    /// Clients are let in (the warm-up is over).
    accepting: bool,
    lap: Instant,
    stage_us: [u64; STAGES.len()],
    sessions: Option<SessionScript>,
    /// The game time of the tick being run.
    now_us: u64,
}

impl NodeIo for ShardIo {
    /// Frames from other cores.
    fn receive(&mut self, into: &mut Vec<(SliceId, SliceMsg)>) {
        for (from, consumer) in self.consumers.iter_mut().enumerate() {
            let Some(consumer) = consumer else { continue };
            let mut undecodable = 0;
            let result = consumer.read_batch(FRAMES_PER_PEER_PER_TICK_MAX, |payload| {
                // SAFETY: the only producer of this ring is the shard runtime on core `from`,
                // which writes nothing but `SliceMsg` archives with `Producer::try_push`.
                let archived = unsafe { access_trusted::<ArchivedSliceMsg>(payload) };
                match rkyv::deserialize::<SliceMsg, rkyv::rancor::Error>(archived) {
                    Ok(msg) => into.push((SliceId(from as u16), msg)),
                    Err(_) => undecodable += 1,
                }
            });
            self.ring_errors += undecodable;
            if result.is_err() {
                self.ring_errors += 1;
            }
        }
    }

    /// Into `to`'s ring straight away (archived in place) when nothing waits before it; else
    /// archived into its queue.
    fn send(&mut self, to: SliceId, msg: &SliceMsg) {
        let to = to.0 as usize;
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

    fn flush(&mut self) {
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

    fn overloaded(&self) -> bool {
        self.overloaded_peer().is_some()
    }

    fn has_clients(&self) -> bool {
        self.gateway.is_some() && self.accepting
    }

    fn client_inputs(&mut self, into: &mut Vec<(EntityId, u32, Action)>) {
        if let Some(gw) = self.gateway.as_mut() {
            into.extend(gw.gateway.poll());
        }
    }

    fn client_sessions(&mut self, into: &mut Vec<crate::node::Session>) {
        if let Some(gw) = self.gateway.as_mut() {
            gw.gateway.take_sessions(into);
        }
        if let Some(script) = self.sessions.as_mut() {
            script.due(self.now_us, into);
        }
    }

    fn seats(&mut self, into: &mut FxHashSet<EntityId>) {
        // A copy: other cores' gateways take seats meanwhile, and must not wait for the bots.
        if let Some(gw) = self.gateway.as_ref() {
            into.extend(gw.seats.taken().iter().copied());
        }
    }

    fn publish_view(&mut self, tick: Tick, view: Vec<crate::net::ViewEntity>) {
        if let Some(gw) = self.gateway.as_mut() {
            gw.views.publish(self.index, tick, view);
        }
    }

    fn log(&mut self, tick: Tick, records: &mut Vec<LogRecord>) -> Option<Result<Durable, String>> {
        let log = self.log.as_mut()?;
        let mut write = || -> Result<Durable, crate::log::LogError> {
            for record in records.drain(..) {
                match record {
                    LogRecord::Batch(batch) => log.append(&batch)?,
                    LogRecord::Checkpoint(snapshot) => log.checkpoint(snapshot)?,
                }
            }
            log.commit(tick)?;
            Ok(Durable { tick: log.state.durable(), stored_round: log.state.stored_round.load(Ordering::Acquire) })
        };
        Some(write().map_err(|e| e.to_string()))
    }

    fn stage_done(&mut self, stage: Stage) {
        self.stage_us[stage as usize] = self.lap.elapsed().as_micros() as u64;
        self.lap = Instant::now();
    }
}

impl ShardIo {
    /// The peer whose queue is over its bound, if any.
    fn overloaded_peer(&self) -> Option<usize> {
        self.pending_bytes.iter().position(|b| *b > self.pending_bytes_max)
    }

    fn in_flight(&self) -> usize {
        self.pending.iter().map(|q| q.len()).sum()
    }
}

/// Ticks between a core's posts to the live map.
const MAP_PERIOD_TICKS: u64 = crate::limits::MAP_PERIOD_TICKS;

/// This core's part of the live map: its servers, its players (thinned past a bound), and the
/// region map if it is the controller's.
fn post_map(board: &super::map::MapBoard, core: usize, tick: Tick, node: &Node) {
    use super::map::{xy, MapRegion, MapServer};
    let servers = node.servers().map(|s| MapServer { id: s.id().0, entities: s.held().len() }).collect();
    let players: Vec<[f32; 2]> = node
        .servers()
        .flat_map(|s| s.held().values())
        .filter(|h| h.state.kind == crate::world::EntityKind::Player)
        .map(|h| xy(h.state.pos()))
        .collect();
    let total = players.len();
    let every = total.div_ceil(crate::limits::MAP_PLAYERS_PER_CORE_MAX).max(1);
    let regions = if core == 0 {
        let region = |r: &crate::world::Region| MapRegion {
            id: r.id.0,
            min: xy(r.bounds.min()),
            max: xy(r.bounds.max()),
            server: r.server.map(|s| s.0),
        };
        node.slice().map().regions().iter().map(region).collect()
    } else {
        Vec::new()
    };
    let map = super::map::CoreMap {
        tick,
        servers,
        players: players.into_iter().step_by(every).collect(),
        players_total: total,
        regions,
    };
    *board.cores[core].lock().expect("no request panics holding it") = map;
}

/// Game time a tick is at the wall-clock tick `tick`: the same, so the world moves at the same
/// speed whatever the rate; a free-running schedule (zero) runs ticks of the default length.
pub fn game_tick_us(tick: Duration) -> u64 {
    match tick.as_micros() {
        0 => crate::limits::TICK_DURATION_US,
        us => us.min(u64::MAX as u128) as u64,
    }
}

/// Runs a shard until `stop`, then lets in-flight messages settle and reports.
/// Which tick a core runs next, and when. Tick numbers are the protocol's clock (a core that runs
/// a tick late still runs it as that tick, so every core agrees which tick a move was made in),
/// and the gateways match the cores' views by them.
#[derive(Debug)]
struct Schedule {
    tick: Duration,
    /// When the next tick is due.
    next: Instant,
    /// The last tick's number.
    number: u64,
}

impl Schedule {
    /// A schedule whose first tick is the one after `first`.
    fn new(start: Instant, tick: Duration, first: u64) -> Self {
        Self { tick, next: start, number: first }
    }

    /// The next tick's number, and when it is due.
    fn next_tick(&mut self) -> (Tick, Instant) {
        self.number += 1;
        if self.tick.is_zero() {
            // Free-running: each tick at once, one tick of game time after the last.
            self.next = Instant::now();
            return (Tick(self.number), self.next);
        }
        let at = self.next;
        self.next += self.tick;
        (Tick(self.number), at)
    }

    /// After a tick that ended at `now`: far behind (more than a tick), take up the schedule
    /// from now rather than run the late ticks back to back, and say how much wall time the world
    /// lost (it ran slower than real time: time dilation). Tick numbers never skip: game time is
    /// ticks, so a world that cannot keep up slows down evenly (every core waits for the others'
    /// last tick, so none runs ahead on a clock its peers have not reached) instead of jumping.
    fn catch_up(&mut self, now: Instant) -> Duration {
        if self.tick.is_zero() || now <= self.next + self.tick {
            return Duration::ZERO;
        }
        let lost = now - self.next;
        self.next = now;
        lost
    }
}

/// How fast the world ran against real time, a window at a time: game time over game time plus
/// the wall time lost to ticks that could not keep the schedule (EVE Online's time dilation).
/// 1.0 while every tick keeps the schedule.
#[derive(Debug)]
struct Dilation {
    game_us: u64,
    lost_us: u64,
    /// The lowest of the windows since the warm-up; `None` until one closed.
    min: Option<f64>,
}

impl Dilation {
    fn new() -> Self {
        Self { game_us: 0, lost_us: 0, min: None }
    }

    /// One tick of `tick_us` game time that lost `lost` to the schedule; the window's figure when
    /// this tick closed one.
    fn record(&mut self, tick_us: u64, lost: Duration, warm: bool) -> Option<f64> {
        self.game_us += tick_us;
        self.lost_us += lost.as_micros().min(u64::MAX as u128) as u64;
        if self.game_us + self.lost_us < TIME_DILATION_WINDOW_US {
            return None;
        }
        let ratio = self.game_us as f64 / (self.game_us + self.lost_us) as f64;
        self.game_us = 0;
        self.lost_us = 0;
        if warm {
            self.min = Some(self.min.map_or(ratio, |m| m.min(ratio)));
        }
        Some(ratio)
    }
}

pub async fn run(mut setup: ShardSetup) -> ShardReport {
    // A panic that unwinds out of the shard (not a server's, which is caught as its crash)
    // records the core and stops the mesh.
    let _watch = Watch { core: setup.index, fatal: setup.fatal.clone(), stop: setup.stop.clone() };
    let (log, checkpoint_every) = match setup.log {
        Some(l) => (Some(l.log), Some(l.checkpoint_every)),
        None => (None, None),
    };
    let offset_us = setup.clock_offset_us;
    let tick_us = game_tick_us(setup.tick);
    let cfg = NodeConfig {
        streaming: setup.streaming.clone(),
        handoffs_per_tick_max: setup.handoffs_per_tick_max,
        bots: if setup.bot_activity > 0.0 {
            Bots::Roam { activity: setup.bot_activity, places: setup.places.clone() }
        } else {
            Bots::Off
        },
        checkpoint_every_us: checkpoint_every.map(|d| d.as_micros().min(u64::MAX as u128) as u64),
        tick_us,
        // Accounts' players start where the bots rally: the world's first city.
        spawn: setup.places.rally,
        ..NodeConfig::new(setup.index, setup.seed)
    };
    let mut node =
        Node::new(cfg, setup.slice, setup.servers.iter().copied(), Direct::default(), setup.incarnations, offset_us);
    let mut io = ShardIo {
        index: setup.index,
        producers: setup.producers,
        consumers: setup.consumers,
        pending: (0..setup.cores).map(|_| VecDeque::new()).collect(),
        pending_bytes: vec![0; setup.cores],
        pending_bytes_max: setup.pending_bytes_per_peer_max,
        ring_errors: 0,
        log,
        gateway: setup.gateway,
        accepting: false,
        lap: Instant::now(),
        stage_us: [0; STAGES.len()],
        sessions: setup.sessions.take(),
        now_us: 0,
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
    let mut window = hist.clone();
    let mut window_began = Instant::now();
    // The work and ticks counted when the window began, for the window's share of work.
    let (mut window_work_us, mut window_ticks) = (0u64, 0u64);
    let mut dilation = Dilation::new();
    // The last tick run: settling and the last commit happen at its game time, not the wall's
    // (a world that ran slower than real time is behind the wall clock).
    let mut last_tick = Tick(offset_us / tick_us);
    let mut stalls = 0u64;
    let mut stall_reports = Vec::new();
    let (mut stage_totals, mut stage_ticks) = ([0u64; STAGES.len()], 0u64);
    // The slice's ghost counters as the first tick after the warm-up began.
    let mut ghosts_at_warmup: Option<(u64, u64)> = None;
    let budget_us = setup.tick.as_micros() as u64;
    let mut schedule = Schedule::new(setup.start, setup.tick, offset_us / tick_us);
    while !setup.stop.load(Ordering::Relaxed) {
        let (tick, at) = schedule.next_tick();
        let next = schedule.next;
        let now_instant = Instant::now();
        if at > now_instant {
            // Clients' sockets are read while the core waits, so a flood is read and dropped by
            // the gateway rather than overflowing the kernel's queue over clients' packets.
            match io.gateway.as_mut() {
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
        // No core starts a tick before every core has finished the one before: the cores' game
        // clocks stay together, and a core that cannot keep up slows every core alike.
        let behind = |done: &[AtomicU64]| done.iter().any(|d| d.load(Ordering::Acquire) + 1 < tick.get());
        while behind(&setup.lockstep) && !setup.stop.load(Ordering::Relaxed) {
            if setup.tick.is_zero() {
                glommio::yield_if_needed().await;
                std::hint::spin_loop();
            } else {
                if let Some(gw) = io.gateway.as_mut() {
                    gw.gateway.drain();
                }
                glommio::timer::sleep(LOCKSTEP_POLL).await;
            }
        }
        let began = Instant::now();
        io.lap = began;
        io.stage_us = [0; STAGES.len()];
        // Clients are let in once the world is placed (the warm-up), as a game lets players in
        // once its world is loaded; until then their connection requests wait.
        io.accepting = setup.start.elapsed() >= setup.warmup;
        if let Some(p) = setup.inject_panic.filter(|p| p.core == setup.index && tick >= p.tick) {
            setup.inject_panic = None;
            if p.in_server {
                node.inject_server_panic();
            } else {
                panic!("a panic injected into core {}'s shard at tick {tick}", setup.index);
            }
        }
        if let Some(server) = setup.chaos.as_ref().and_then(|c| c.take(setup.index)) {
            if node.panic_server_mid_tick(server) {
                setup.chaos.as_ref().expect("taken from it").carried_out();
            }
        }
        let held_back_before = node.stats.ticks_held_back;
        io.now_us = tick.get().saturating_mul(tick_us);
        // The protocol's clock is the schedule's, not the wall's: a core that runs a tick late
        // still runs it as that tick, so every core agrees which tick a move was made in.
        let mut step = node.advance(tick, &mut io);
        if step == Step::AwaitInputs {
            // Wait (briefly) for the other cores' clients' inputs of this tick before the servers
            // tick: an input is applied in the tick that took it in, whichever core holds the player.
            if let Some(views) = io.gateway.as_ref().map(|gw| gw.views.clone()) {
                views.inputs_sent(setup.index, tick);
                let wait_until = (Instant::now() + INPUT_WAIT_MAX).min(next);
                while !views.all_inputs_sent(tick) && Instant::now() < wait_until {
                    glommio::timer::sleep(Duration::from_micros(100)).await;
                }
            }
            step = node.advance(tick, &mut io);
        }
        if step == Step::AwaitViews {
            // Every client's update is of one tick across all cores, so an entity that moves from
            // one core to another moves smoothly: wait (briefly) for the other cores' view of this
            // tick, never past the next tick's start (a core already behind sends what every core
            // has reached rather than fall further behind).
            if let Some(gw) = io.gateway.as_mut() {
                let wait_until = (Instant::now() + VIEW_WAIT_MAX).min(next);
                while !gw.views.all_reached(tick) && Instant::now() < wait_until {
                    glommio::timer::sleep(Duration::from_micros(200)).await;
                }
                gw.gateway.send_updates(tick, &gw.views);
            }
            step = node.advance(tick, &mut io);
        }
        debug_assert_eq!(step, Step::Done);
        // What the servers and the slice cost this tick (waits for other cores excluded): the
        // controller starts and retires servers by it.
        let work_us = io.stage_us[Stage::Servers as usize] + io.stage_us[Stage::Slice as usize];
        node.slice_mut().note_work(work_us);
        setup.gauges.work_us.fetch_add(work_us, Ordering::Relaxed);
        while let Some(event) = node.poll_event() {
            if let NodeEvent::Panicked { server, incarnation, why, held } = event {
                eprintln!(
                    "core {}: server {server} incarnation {} panicked: {why}; its slice took back its regions \
                     and {} entities, live servers take them over",
                    setup.index,
                    incarnation.0,
                    held.len(),
                );
                setup.failovers.crashed(server, tick, held);
            }
        }
        if setup.failovers.active() {
            // Held by a live server again, or put to rest (an item whose container its new holder
            // has not loaded is where it belongs: at rest, not lost).
            setup.failovers.seen_held(tick, |id| {
                node.servers().any(|s| s.held().contains_key(&id)) || node.slice().is_at_rest(id)
            });
        }
        let held_back = node.stats.ticks_held_back;
        if held_back > held_back_before && (held_back == 1 || held_back % 300 == 0) {
            if let Some(peer) = io.overloaded_peer() {
                eprintln!(
                    "core {}: overloaded: {} MiB wait for core {peer}'s ring; servers' ticks are held back \
                     (leases kept) until it drains ({held_back} ticks so far)",
                    setup.index,
                    io.pending_bytes[peer] >> 20,
                );
            }
        }
        if let Some(e) = node.log_error() {
            eprintln!("core {}: the replication log failed, stopping: {e}", setup.index);
            setup.stop.store(true, Ordering::Relaxed);
        }
        let took_us = began.elapsed().as_micros() as u64;
        let warm = setup.start.elapsed() >= setup.warmup;
        if warm {
            let stats = &node.slice().stats;
            ghosts_at_warmup.get_or_insert((stats.ghosts_to_servers, stats.ghosts_to_cores));
            hist.saturating_record(took_us.max(1));
            for (total, us) in stage_totals.iter_mut().zip(io.stage_us) {
                *total += us;
            }
            stage_ticks += 1;
        }
        let g = &setup.gauges;
        window.saturating_record(took_us.max(1));
        if let Some(h) = &setup.tick_histogram {
            h.observe(took_us as f64 / 1e6);
        }
        if window_began.elapsed() >= Duration::from_secs(1) {
            if let Some(gw) = &io.gateway {
                *g.gateway.lock().expect("not poisoned") = gw.gateway.stats;
            }
            let (work, ticks) = (g.work_us.load(Ordering::Relaxed), g.ticks.load(Ordering::Relaxed));
            let budget = ticks.saturating_sub(window_ticks).saturating_mul(budget_us);
            if let Some(ppm) = work.saturating_sub(window_work_us).saturating_mul(1_000_000).checked_div(budget) {
                g.work_share_ppm.store(ppm, Ordering::Relaxed);
            }
            (window_work_us, window_ticks) = (work, ticks);
            g.p50_us.store(window.value_at_quantile(0.5), Ordering::Relaxed);
            g.p99_us.store(window.value_at_quantile(0.99), Ordering::Relaxed);
            window.reset();
            window_began = Instant::now();
        }
        g.ticks.fetch_add(1, Ordering::Relaxed);
        g.worst_tick_us.fetch_max(took_us, Ordering::Relaxed);
        let held: usize = node.servers().map(|s| s.held().len()).sum();
        let players: usize = node
            .servers()
            .map(|s| s.held().values().filter(|h| h.state.kind == crate::world::EntityKind::Player).count())
            .sum();
        g.held.store(held as u64, Ordering::Relaxed);
        g.players.store(players as u64, Ordering::Relaxed);
        g.handoffs.store(node.slice().stats.handoffs, Ordering::Relaxed);
        g.transfers.store(node.slice().stats.transfers_out, Ordering::Relaxed);
        if let Some(log) = &io.log {
            g.committed_tick.store(log.state.durable_tick.load(Ordering::Acquire), Ordering::Relaxed);
            g.log_bytes.store(log.state.synced_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        g.failovers.store(node.slice().stats.servers_declared_dead, Ordering::Relaxed);
        g.checkpoint_round.store(node.slice().checkpoint_done(), Ordering::Relaxed);
        g.server_panics.store(node.stats.server_panics, Ordering::Relaxed);
        g.ticks_held_back.store(node.stats.ticks_held_back, Ordering::Relaxed);
        g.servers.store(node.hosted().len() as u64, Ordering::Relaxed);
        let controller = &node.slice().stats;
        g.servers_started.store(controller.servers_started, Ordering::Relaxed);
        g.servers_retired.store(controller.servers_retired, Ordering::Relaxed);
        g.regions_split.store(controller.regions_split, Ordering::Relaxed);
        g.regions_merged.store(controller.regions_merged, Ordering::Relaxed);
        g.regions_moved.store(controller.regions_moved, Ordering::Relaxed);
        g.regions.store(node.slice().map().regions().len() as u64, Ordering::Relaxed);
        if let Some(gw) = &io.gateway {
            g.clients.store(gw.gateway.stats.connected, Ordering::Relaxed);
        }
        if let Some(board) = setup.map.as_ref().filter(|_| tick.is_every(MAP_PERIOD_TICKS)) {
            post_map(board, setup.index, tick, &node);
        }
        if took_us > budget_us && warm && budget_us > 0 {
            stalls += 1;
            g.stalls.fetch_add(1, Ordering::Relaxed);
            let (worst, worst_us) = io
                .stage_us
                .iter()
                .enumerate()
                .max_by_key(|(_, us)| **us)
                .map(|(i, us)| (STAGES[i], *us))
                .unwrap_or(("", 0));
            if stall_reports.len() < 20 {
                stall_reports.push(format!(
                    "core {} tick at {:.3} s took {:.1} ms, budget {:.1} ms; most in `{worst}` ({:.1} ms)",
                    setup.index,
                    tick.game_us(tick_us) as f64 / 1e6,
                    took_us as f64 / 1e3,
                    budget_us as f64 / 1e3,
                    worst_us as f64 / 1e3
                ));
            }
        }
        setup.lockstep[setup.index].store(tick.get(), Ordering::Release);
        let lost = schedule.catch_up(Instant::now());
        if let Some(ratio) = dilation.record(tick_us, lost, warm) {
            g.time_dilation_ppm.store((ratio * 1e6) as u64, Ordering::Relaxed);
        }
        last_tick = tick;
    }
    // Settle: no more simulation, but keep moving messages for a while so that what was between
    // cores when the world stopped (a transfer, a map) reaches its slice. A handoff chain settles
    // in a few hops; the window is generous.
    let settle_until = Instant::now() + SETTLE;
    // After another core's fatal panic, what waits for it will never be read: settle only what
    // the live cores can take, and let the process end within a second.
    let peer_died = setup.fatal.first().is_some();
    while Instant::now() < settle_until || (io.in_flight() > 0 && !peer_died) {
        let received = node.settle(last_tick.game_us(tick_us), &mut io);
        if received == 0 {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        if Instant::now() > settle_until + SETTLE * 10 {
            break;
        }
    }
    let in_flight = io.in_flight();
    if let Some(gw) = io.gateway.as_mut() {
        gw.gateway.disconnect_all();
    }
    node.commit_last(last_tick.game_us(tick_us), &mut io);
    let mut log_error = node.log_error().map(str::to_string);
    if let Some(log) = io.log.take() {
        if let Err(e) = log.close() {
            log_error.get_or_insert(e.to_string());
        }
    }
    let stats = node.stats;
    let (slice, servers) = node.into_parts();
    let ghosts_after_warmup = ghosts_at_warmup.map_or((0, 0), |(to_servers, to_cores)| {
        (slice.stats.ghosts_to_servers - to_servers, slice.stats.ghosts_to_cores - to_cores)
    });
    ShardReport {
        index: setup.index,
        slice,
        servers,
        tick_us: hist,
        stalls,
        stall_reports,
        in_flight,
        ring_errors: io.ring_errors,
        restarts: stats.restarts,
        server_panics: stats.server_panics,
        ticks_held_back: stats.ticks_held_back,
        log_error,
        gateway: io.gateway.map(|gw| gw.gateway.stats),
        time_dilation_min: if setup.tick.is_zero() { None } else { dilation.min },
        stage_us: stage_totals,
        stage_ticks,
        ghosts_after_warmup,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_that_fell_far_behind_slows_the_world_and_skips_no_tick() {
        let (start, tick) = (Instant::now(), Duration::from_millis(33));
        let mut s = Schedule::new(start, tick, 0);
        assert_eq!(s.next_tick(), (Tick(1), start));
        assert_eq!(s.next_tick(), (Tick(2), start + tick));
        // A little late: the schedule holds, the next tick runs at once to make it up.
        assert_eq!(s.catch_up(start + tick * 2 + Duration::from_millis(20)), Duration::ZERO);
        assert_eq!(s.next_tick(), (Tick(3), start + tick * 2));
        // Stalled for ten ticks: the next tick is the next one, due now; the ten ticks' time is
        // lost to the world (it ran slower than real time), not skipped over.
        let now = start + tick * 13 + Duration::from_millis(5);
        assert_eq!(s.catch_up(now), tick * 10 + Duration::from_millis(5));
        assert_eq!(s.next_tick(), (Tick(4), now));
        assert_eq!(s.next_tick(), (Tick(5), now + tick));
        // A run restarted at an offset numbers on from it.
        let mut s = Schedule::new(start, tick, 100);
        assert_eq!(s.next_tick().0, Tick(101));
    }

    /// Dilation is game time over game time plus the time lost, a window at a time; the lowest
    /// window after the warm-up is kept.
    #[test]
    fn time_dilation_is_the_share_of_real_time_the_world_kept() {
        let mut d = Dilation::new();
        let tick = 25_000;
        let windows: Vec<f64> = (0..40).filter_map(|_| d.record(tick, Duration::ZERO, true)).collect();
        assert_eq!(windows, vec![1.0], "a second on schedule is one window at full speed");
        // Every tick takes twice its time: the world runs at half speed.
        let half: Vec<f64> = (0..40).filter_map(|_| d.record(tick, Duration::from_micros(tick), true)).collect();
        assert_eq!(half, vec![0.5, 0.5], "{half:?}");
        assert_eq!(d.min, Some(0.5));
        // Windows before the warm-up count in the gauge, not in the minimum.
        let mut cold = Dilation::new();
        assert!((0..120).filter_map(|_| cold.record(tick, Duration::from_micros(3 * tick), false)).count() > 0);
        assert_eq!(cold.min, None);
    }

    /// A benchmark's free-running schedule (a zero tick): however far the wall clock runs ahead,
    /// each tick is the next one, so game time (leases among it) moves a tick at a time.
    #[test]
    fn a_free_running_schedule_numbers_every_tick_and_never_skips() {
        let start = Instant::now();
        let mut s = Schedule::new(start, Duration::ZERO, 0);
        assert_eq!(s.next_tick().0, Tick(1));
        assert_eq!(s.catch_up(start + Duration::from_secs(5)), Duration::ZERO);
        assert_eq!(s.next_tick().0, Tick(2));
        assert!(s.next_tick().1 >= start);
    }
}
