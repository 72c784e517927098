//! One core's share of the mesh as a sans-IO state machine: its replication slice, the logical
//! servers that live on it, and the order of one tick, written here once. The runtime's shard
//! drives a node with the real clock, rings, sockets and log; the simulator drives the same nodes
//! over its lossy network; the protocol tests drive them directly. Time comes in as a tick number,
//! messages and clients' inputs through [`NodeIo`], and what the node gives out (messages for
//! other nodes, log records, the view clients are sent) goes back through it.
//!
//! One tick ([`Node::advance`]), in order:
//! 1. servers due to start start; other nodes' messages are handled; servers and slice exchange
//!    messages until none are left;
//! 2. clients' inputs are routed (to the server holding the player, here or on another node) and
//!    those for other nodes sent at once; the node yields [`Step::AwaitInputs`] so the driver can
//!    wait for the other nodes' inputs of this tick, then takes them in;
//! 3. bots play; servers tick (or, under overload, hold: leases kept, nothing simulated);
//! 4. the slice ticks (leases, the controller), a checkpoint begins if one is due, the tick's
//!    changes become one group commit, and messages for other nodes go out;
//! 5. the node's view of this tick is published and it yields [`Step::AwaitViews`] so the driver
//!    can send clients updates of one tick across all nodes.
//!
//! A server whose code panics has crashed: its slice is told, as a crash report tells it, and a
//! fresh incarnation starts at the next tick. A fenced server restarts the same way.

pub mod check;
pub mod panic;
pub mod view;
pub mod wire;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashSet;

use crate::limits::TICK_DURATION_US;
use crate::log::{Batch, LogOp, SnapshotFile};
use crate::protocol::{
    Action, Committed, Incarnation, Input, JournalOp, Lifecycle, Replication, Server, ServerEvent, ServerStats,
    SliceId, SliceMsg,
};
use crate::world::{EntityId, EntityKind, ServerId, StreamIndex, Tick};
pub use check::Checker;
pub use panic::guarded;
pub use view::ViewEntity;
pub use wire::{Direct, Wire};

/// How the bots that stand in for players drive the node's driven entities.
#[derive(Clone)]
pub enum Bots {
    /// Nobody drives them (clients may).
    Off,
    /// They stand still (the simulator's calm phase).
    Rest,
    /// Random actions at `activity` (the simulator's fault phase).
    Random { activity: f64 },
    /// Players commute between cities, rush a rally point, wander (the live mesh).
    Roam { activity: f64, places: Arc<crate::bots::Places> },
}

/// What a node's servers are made with.
#[derive(Clone)]
pub struct NodeConfig {
    pub index: usize,
    pub seed: u64,
    pub streaming: Option<Arc<StreamIndex>>,
    pub handoffs_per_tick_max: Option<usize>,
    pub bots: Bots,
    /// Game time between checkpoints; `None`: never.
    pub checkpoint_every_us: Option<u64>,
    /// A planted bug for the simulator to catch: servers act past their lease.
    pub planted_server_ignores_lease: bool,
    /// Game time a tick is. The tick rate changes how often the world is simulated, not how fast
    /// it moves: every motion, lifetime and lease is in game time.
    pub tick_us: u64,
    /// Where an account's player is made at its first login.
    pub spawn: glam::Vec3,
}

impl NodeConfig {
    pub fn new(index: usize, seed: u64) -> Self {
        Self {
            index,
            seed,
            streaming: None,
            handoffs_per_tick_max: None,
            bots: Bots::Off,
            checkpoint_every_us: None,
            planted_server_ignores_lease: false,
            tick_us: TICK_DURATION_US,
            spawn: glam::Vec3::ZERO,
        }
    }
}

/// An account's login or logout at a gateway (see `net::Seats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub player: EntityId,
    /// Numbered across the mesh in the order logins happened; a logout carries its login's.
    pub session: u64,
    pub online: bool,
    /// A first login: the player is to be made, at the spawn point.
    pub create: bool,
}

/// A record for the slice's log: a group commit, or the slice's part of a checkpoint.
#[derive(Debug)]
pub enum LogRecord {
    Batch(Batch),
    Checkpoint(SnapshotFile),
}

/// What the log says is safe on disk after a commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    /// Every group commit up to this tick is synced.
    pub tick: Tick,
    /// The latest checkpoint round whose snapshot is synced.
    pub stored_round: u64,
}

/// The stages of a tick, for the driver's timing of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Receive = 0,
    Inputs = 1,
    Servers = 2,
    Slice = 3,
    Send = 4,
    Clients = 5,
}

/// What drives a node: the other nodes, the clients and the log. Every method but the messages'
/// has a default for a driver without clients or log.
pub trait NodeIo {
    /// Messages from other nodes that have arrived.
    fn receive(&mut self, into: &mut Vec<(SliceId, SliceMsg)>);
    /// A message for node `to`.
    fn send(&mut self, to: SliceId, msg: &SliceMsg);
    /// What was sent goes out now (a ring's batch is published).
    fn flush(&mut self) {}
    /// Whether messages for another node wait past their bound: servers hold back this tick.
    fn overloaded(&self) -> bool {
        false
    }
    /// Whether clients are connected through this node (their inputs are taken, views published).
    fn has_clients(&self) -> bool {
        false
    }
    /// Clients' inputs (player, the client's sequence number, action) taken since the last tick.
    fn client_inputs(&mut self, _into: &mut Vec<(EntityId, u32, Action)>) {}
    /// Accounts' logins and logouts at this node's gateway since the last tick, in order.
    fn client_sessions(&mut self, _into: &mut Vec<Session>) {}
    /// Players a client drives (bots leave them alone).
    fn seats(&mut self, _into: &mut FxHashSet<EntityId>) {}
    /// This node's entities as of `tick`, for the clients' updates.
    fn publish_view(&mut self, _tick: Tick, _view: Vec<ViewEntity>) {}
    /// The tick's records into the log and its group commit; `None` when there is no log.
    fn log(&mut self, _tick: Tick, _records: &mut Vec<LogRecord>) -> Option<Result<Durable, String>> {
        None
    }
    /// A stage of the tick ended (the runtime times them).
    fn stage_done(&mut self, _stage: Stage) {}
}

/// Where a node stopped in its tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Clients' inputs for other nodes are sent; call `advance` again once the other nodes'
    /// inputs of this tick are in (or a short wait has passed).
    AwaitInputs,
    /// The view of this tick is published; call `advance` again once the other nodes' views are
    /// (or a short wait has passed), after sending clients their updates.
    AwaitViews,
    /// The tick is done.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Start,
    Simulate,
    Publish,
}

/// Something that happened to one of the node's servers, for the driver to report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    Started {
        server: ServerId,
        incarnation: Incarnation,
    },
    Fenced {
        server: ServerId,
        incarnation: Incarnation,
    },
    /// The server was retired: it owned no region and held nothing (its incarnation, if one ran).
    Retired {
        server: ServerId,
        incarnation: Option<Incarnation>,
    },
    /// The server's code panicked: a crash. `held` is what its slice had it hold (committed
    /// state, projectiles left out), which live servers take over.
    Panicked {
        server: ServerId,
        incarnation: Incarnation,
        why: String,
        held: Vec<EntityId>,
    },
    Crashed {
        server: ServerId,
        incarnation: Incarnation,
        reported: bool,
        down_ticks: u64,
    },
}

/// Counters of a node's life.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeStats {
    pub ticks: u64,
    /// Server incarnations started after the first.
    pub restarts: u64,
    pub fenced: u64,
    pub server_panics: u64,
    /// Crashes a driver made (the simulator's faults).
    pub crashes: u64,
    /// Ticks whose simulation was held back under overload.
    pub ticks_held_back: u64,
    pub bot_inputs: u64,
    /// Messages from the slice for a server not on this node; dropped.
    pub misrouted: u64,
    /// The counters of server incarnations that have ended, summed.
    pub ended: ServerStats,
}

/// One logical server slot: the incarnation running now, if any, and when the next one starts.
pub struct Hosted {
    pub id: ServerId,
    pub server: Option<Server>,
    restart_at_us: Option<u64>,
    /// An incarnation of it has run (so the next is a restart).
    ran: bool,
}

pub struct Node<W: Wire = Direct> {
    cfg: NodeConfig,
    slice: Replication,
    hosted: Vec<Hosted>,
    wire: W,
    incarnations: Arc<AtomicU32>,
    rng: ChaCha8Rng,
    phase: Phase,
    tick: Tick,
    overloaded: bool,
    clients: bool,
    received: Vec<(SliceId, SliceMsg)>,
    client_inputs: Vec<(EntityId, u32, Action)>,
    sessions: Vec<Session>,
    /// With clients: what this tick sent to other nodes' slices, shown in flight until they
    /// place it.
    transferred: Vec<ViewEntity>,
    seats: FxHashSet<EntityId>,
    inputs: Vec<Input>,
    records: Vec<LogRecord>,
    ops: Vec<LogOp>,
    last_log_tick: Tick,
    last_checkpoint_us: u64,
    /// A checkpoint round whose last record is in the log at this tick; done once that is durable.
    round_done_at: Option<(u64, Tick)>,
    log_error: Option<String>,
    wire_error: Option<String>,
    inject_server_panic: bool,
    events: VecDeque<NodeEvent>,
    pub stats: NodeStats,
}

impl<W: Wire> Node<W> {
    /// A node over `slice` hosting `servers`, whose first incarnations start at the first tick.
    /// Incarnation numbers come from `incarnations`, shared by every node of the mesh.
    pub fn new(
        cfg: NodeConfig,
        slice: Replication,
        servers: impl IntoIterator<Item = ServerId>,
        wire: W,
        incarnations: Arc<AtomicU32>,
        start_us: u64,
    ) -> Self {
        let mut cfg = cfg;
        cfg.tick_us = cfg.tick_us.max(1);
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ (cfg.index as u64) << 32);
        let mut slice = slice;
        slice.set_tick_us(cfg.tick_us);
        let hosted = servers
            .into_iter()
            .map(|id| Hosted { id, server: None, restart_at_us: Some(start_us), ran: false })
            .collect();
        let mut node = Self {
            slice,
            hosted,
            wire,
            incarnations,
            rng,
            phase: Phase::Start,
            tick: Tick::at_game_us(start_us, cfg.tick_us),
            overloaded: false,
            clients: false,
            received: Vec::new(),
            client_inputs: Vec::new(),
            sessions: Vec::new(),
            transferred: Vec::new(),
            seats: FxHashSet::default(),
            inputs: Vec::new(),
            records: Vec::new(),
            ops: Vec::new(),
            last_log_tick: Tick::at_game_us(start_us, cfg.tick_us),
            last_checkpoint_us: start_us,
            round_done_at: None,
            log_error: None,
            wire_error: None,
            inject_server_panic: false,
            events: VecDeque::new(),
            stats: NodeStats::default(),
            cfg,
        };
        node.start_due(start_us);
        node.stats.restarts = 0;
        node
    }

    pub fn index(&self) -> usize {
        self.cfg.index
    }
    pub fn slice(&self) -> &Replication {
        &self.slice
    }
    /// The slice, for a driver's controller actions and a test's setup.
    pub fn slice_mut(&mut self) -> &mut Replication {
        &mut self.slice
    }
    pub fn wire(&self) -> &W {
        &self.wire
    }
    pub fn wire_mut(&mut self) -> &mut W {
        &mut self.wire
    }
    /// The servers running now.
    pub fn servers(&self) -> impl Iterator<Item = &Server> + Clone {
        self.hosted.iter().filter_map(|h| h.server.as_ref())
    }
    pub fn servers_mut(&mut self) -> impl Iterator<Item = &mut Server> {
        self.hosted.iter_mut().filter_map(|h| h.server.as_mut())
    }
    /// Server `id`, if it runs on this node now.
    pub fn server(&self, id: ServerId) -> Option<&Server> {
        self.servers().find(|s| s.id() == id)
    }
    pub fn server_mut(&mut self, id: ServerId) -> Option<&mut Server> {
        self.servers_mut().find(|s| s.id() == id)
    }
    pub fn hosted(&self) -> &[Hosted] {
        &self.hosted
    }
    pub fn set_bots(&mut self, bots: Bots) {
        self.cfg.bots = bots;
    }
    /// The next tick's first server panics in its tick (an injected fault).
    pub fn inject_server_panic(&mut self) {
        self.inject_server_panic = true;
    }
    /// Server `id`'s next tick panics halfway through (a crash drill); false if it is not running
    /// on this node now.
    pub fn panic_server_mid_tick(&mut self, id: ServerId) -> bool {
        match self.server_mut(id) {
            Some(server) => {
                server.panic_mid_tick();
                true
            }
            None => false,
        }
    }
    /// Why the log stopped taking commits, if it did.
    pub fn log_error(&self) -> Option<&str> {
        self.log_error.as_deref()
    }
    /// The first error of the wire between servers and slice, if any.
    pub fn wire_error(&self) -> Option<&str> {
        self.wire_error.as_deref()
    }
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }
    /// The slice and the servers running now, for the end-of-run audit.
    pub fn into_parts(self) -> (Replication, Vec<Server>) {
        (self.slice, self.hosted.into_iter().filter_map(|h| h.server).collect())
    }

    /// Game time a tick is.
    pub fn tick_us(&self) -> u64 {
        self.cfg.tick_us
    }

    /// Runs tick `tick` until it ends or waits for the other nodes (see [`Step`]); call again
    /// with the same tick to go on.
    pub fn advance(&mut self, tick: Tick, io: &mut impl NodeIo) -> Step {
        let now = tick.game_us(self.cfg.tick_us);
        loop {
            match self.phase {
                Phase::Start => {
                    self.tick = tick;
                    self.transferred.clear();
                    self.start_due(now);
                    self.receive(io);
                    self.pump(now);
                    io.stage_done(Stage::Receive);
                    self.overloaded = io.overloaded();
                    self.clients = io.has_clients();
                    self.phase = Phase::Simulate;
                    // Logins and logouts first: a player made now takes this tick's inputs. (A
                    // driver with no clients may have sessions too: a scripted event's.)
                    let mut sessions = std::mem::take(&mut self.sessions);
                    io.client_sessions(&mut sessions);
                    for s in sessions.drain(..) {
                        self.slice.session(s.player, s.session, s.online);
                        if s.create {
                            self.slice.create_player(s.player, self.cfg.spawn);
                        }
                    }
                    self.sessions = sessions;
                    if self.clients {
                        // An input is applied in the tick that took it in, whichever node holds
                        // the player: those for other nodes leave at once, ahead of the commit.
                        let mut inputs = std::mem::take(&mut self.client_inputs);
                        io.client_inputs(&mut inputs);
                        for (entity, seq, action) in inputs.drain(..) {
                            self.slice.route_input(entity, seq, action);
                        }
                        self.client_inputs = inputs;
                        self.pump(now);
                        while let Some((to, msg)) = self.slice.poll_peer_input() {
                            io.send(to, &msg);
                        }
                        io.flush();
                        return Step::AwaitInputs;
                    }
                }
                Phase::Simulate => {
                    if self.clients {
                        self.receive(io);
                        self.pump(now);
                    }
                    if !self.overloaded {
                        self.drive_bots(now, io);
                    }
                    io.stage_done(Stage::Inputs);
                    if self.overloaded {
                        self.hold_servers(now);
                    } else {
                        self.tick_servers(now);
                    }
                    self.pump(now);
                    self.reap_fenced(now);
                    io.stage_done(Stage::Servers);
                    self.slice.tick(now);
                    self.apply_lifecycle(now);
                    if self.cfg.checkpoint_every_us.is_some_and(|every| now >= self.last_checkpoint_us + every)
                        && self.slice.begin_checkpoint().is_some()
                    {
                        self.last_checkpoint_us = now;
                    }
                    self.pump(now);
                    self.commit(now, io);
                    io.stage_done(Stage::Slice);
                    self.send(now, io);
                    io.stage_done(Stage::Send);
                    self.stats.ticks += 1;
                    self.phase = Phase::Publish;
                    if self.clients {
                        let view = self.view(tick);
                        io.publish_view(tick, view);
                        return Step::AwaitViews;
                    }
                }
                Phase::Publish => {
                    io.stage_done(Stage::Clients);
                    self.phase = Phase::Start;
                    return Step::Done;
                }
            }
        }
    }

    /// One round of a stopping node: no simulation, but messages between nodes still move and
    /// what arrives is committed. Returns how many messages arrived.
    pub fn settle(&mut self, now_us: u64, io: &mut impl NodeIo) -> usize {
        let received = self.receive(io);
        self.pump(now_us);
        if received > 0 {
            self.commit(now_us, io);
        }
        self.send(now_us, io);
        received
    }

    /// Messages move (from other nodes, between servers and slice, to other nodes) and nothing
    /// else happens: what a test does between ticks to see a message land.
    pub fn exchange(&mut self, now_us: u64, io: &mut impl NodeIo) -> usize {
        let received = self.receive(io);
        self.pump(now_us);
        self.send(now_us, io);
        received
    }

    /// The last group commit before the node closes.
    pub fn commit_last(&mut self, now_us: u64, io: &mut impl NodeIo) {
        self.commit(now_us, io);
    }

    fn receive(&mut self, io: &mut impl NodeIo) -> usize {
        let mut received = std::mem::take(&mut self.received);
        io.receive(&mut received);
        let n = received.len();
        for (from, msg) in received.drain(..) {
            self.slice.handle_peer(from, msg);
        }
        self.received = received;
        n
    }

    fn send(&mut self, now_us: u64, io: &mut impl NodeIo) {
        while let Some((to, msg)) = self.slice.poll_peer() {
            if let (true, SliceMsg::Transfer { entities, .. }) = (self.clients, &msg) {
                let tick = self.tick;
                self.transferred.extend(entities.iter().map(|c| ViewEntity {
                    carried: c.state.parent.is_some(),
                    leaving: true,
                    behind: tick.since(c.state.changed_tick).min(u8::MAX as u64) as u8,
                    ..ViewEntity::new(c.id, c.state.kind, c.state.position, c.state.velocity)
                }));
            }
            io.send(to, &msg);
        }
        io.flush();
        if let Err(e) = self.wire.flush(now_us) {
            self.wire_error.get_or_insert(e);
        }
    }

    /// Messages between the servers and the slice, until none are left.
    fn pump(&mut self, now: u64) {
        loop {
            let mut moved = false;
            for i in 0..self.hosted.len() {
                let Some(server) = self.hosted[i].server.as_mut() else { continue };
                let id = server.id();
                loop {
                    match guarded(|| server.poll_message()) {
                        Ok(Some(msg)) => {
                            if let Err(e) = self.wire.to_slice(now, id, msg) {
                                self.wire_error.get_or_insert(e);
                            }
                            moved = true;
                        }
                        Ok(None) => break,
                        Err(why) => {
                            self.server_panicked(i, now, why);
                            break;
                        }
                    }
                }
            }
            while let Some((_, msg)) = self.wire.recv_for_slice(now) {
                self.slice.handle(now, msg);
                moved = true;
            }
            while let Some(msg) = self.slice.poll_message() {
                if let Err(e) = self.wire.to_server(now, msg) {
                    self.wire_error.get_or_insert(e);
                }
                moved = true;
            }
            while let Some(msg) = self.wire.recv_for_server(now) {
                moved = true;
                let Some(i) = self.hosted.iter().position(|h| h.id == msg.server) else {
                    self.stats.misrouted += 1;
                    continue;
                };
                let Some(server) = self.hosted[i].server.as_mut() else { continue };
                if let Err(why) = guarded(|| server.handle(now, msg)) {
                    self.server_panicked(i, now, why);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn drive_bots(&mut self, now: u64, io: &mut impl NodeIo) {
        if matches!(self.cfg.bots, Bots::Off) {
            return;
        }
        self.seats.clear();
        io.seats(&mut self.seats);
        let mut panicked = Vec::new();
        for (i, hosted) in self.hosted.iter_mut().enumerate() {
            let Some(server) = hosted.server.as_mut() else { continue };
            if !server.is_acting(now) {
                continue;
            }
            self.inputs.clear();
            for (id, held) in server.held() {
                if !held.state.kind.is_driven() || self.seats.contains(id) {
                    continue;
                }
                match &self.cfg.bots {
                    Bots::Off => {}
                    Bots::Rest => {
                        if held.state.parent.is_none() {
                            self.inputs.push(Input { entity: *id, action: Action::Move([0.0; 3]) });
                        }
                    }
                    Bots::Random { activity } => {
                        crate::bots::inputs_for(&mut self.rng, *id, held.state.kind, *activity, &mut self.inputs)
                    }
                    Bots::Roam { activity, places } => crate::bots::inputs_with_behaviour(
                        &mut self.rng,
                        *id,
                        &held.state,
                        places,
                        now,
                        *activity,
                        &mut self.inputs,
                    ),
                }
            }
            self.stats.bot_inputs += self.inputs.len() as u64;
            let inputs = &mut self.inputs;
            if let Err(why) = guarded(|| inputs.drain(..).for_each(|input| server.handle_input(input))) {
                panicked.push((i, why));
            }
        }
        for (i, why) in panicked {
            self.server_panicked(i, now, why);
        }
    }

    /// Every server's tick, each guarded: a panic is that server's crash.
    fn tick_servers(&mut self, now: u64) {
        for i in 0..self.hosted.len() {
            let inject = std::mem::take(&mut self.inject_server_panic);
            let Some(server) = self.hosted[i].server.as_mut() else {
                self.inject_server_panic = inject;
                continue;
            };
            let ticked = guarded(|| {
                if inject {
                    panic!("a panic injected into server {}'s tick", server.id());
                }
                server.tick(now)
            });
            if let Err(why) = ticked {
                self.server_panicked(i, now, why);
            }
        }
    }

    /// A tick held back under overload: no server simulates, each renews its lease (a server
    /// that stopped heartbeating would be failed over by its own slice), and the count says so.
    fn hold_servers(&mut self, now: u64) {
        for i in 0..self.hosted.len() {
            let Some(server) = self.hosted[i].server.as_mut() else { continue };
            if let Err(why) = guarded(|| server.hold(now)) {
                self.server_panicked(i, now, why);
            }
        }
        self.stats.ticks_held_back += 1;
    }

    /// Server slots whose next incarnation is due start it: it holds nothing until its slice
    /// grants it regions.
    fn start_due(&mut self, now: u64) {
        for i in 0..self.hosted.len() {
            let h = &self.hosted[i];
            if h.server.is_some() || h.restart_at_us.is_none_or(|at| at > now) {
                continue;
            }
            let incarnation = Incarnation(self.incarnations.fetch_add(1, Ordering::Relaxed));
            // Four billion restarts away: past it, a server's entities would take accounts' ids.
            assert!(incarnation.0 < crate::world::entity::ACCOUNT_INCARNATION, "incarnation numbers ran out");
            let mut server = Server::new(h.id, incarnation, now).with_tick_us(self.cfg.tick_us);
            if let Some(index) = &self.cfg.streaming {
                server = server.with_streaming(index.clone());
            }
            if let Some(max) = self.cfg.handoffs_per_tick_max {
                server.handoffs_per_tick_max = max;
            }
            server.planted_ignore_lease = self.cfg.planted_server_ignores_lease;
            let id = h.id;
            self.wire.server_started(id, incarnation);
            self.hosted[i].server = Some(server);
            self.hosted[i].restart_at_us = None;
            self.stats.restarts += self.hosted[i].ran as u64;
            self.hosted[i].ran = true;
            self.events.push_back(NodeEvent::Started { server: id, incarnation });
        }
    }

    /// A down server slot's next incarnation starts no sooner than `at_us` (a driver's host that
    /// is slower to bring it back than it said). False if the slot is running.
    pub fn postpone_restart(&mut self, id: ServerId, at_us: u64) -> bool {
        match self.hosted.iter_mut().find(|h| h.id == id && h.server.is_none()) {
            Some(h) => {
                h.restart_at_us = Some(at_us);
                true
            }
            None => false,
        }
    }

    /// What the slice says to do with server slots: a started server's first incarnation starts
    /// next tick; a retired one (it owns no region and holds nothing) stops for good.
    fn apply_lifecycle(&mut self, now: u64) {
        while let Some(change) = self.slice.poll_lifecycle() {
            match change {
                Lifecycle::Start(id) => {
                    if self.hosted.iter().all(|h| h.id != id) {
                        self.hosted.push(Hosted {
                            id,
                            server: None,
                            restart_at_us: Some(now + self.cfg.tick_us),
                            ran: false,
                        });
                    }
                }
                Lifecycle::Retire(id) => {
                    let Some(i) = self.hosted.iter().position(|h| h.id == id) else { continue };
                    let incarnation = self.hosted[i].server.as_ref().map(|s| s.incarnation());
                    self.stop(i, u64::MAX);
                    self.hosted.remove(i);
                    self.events.push_back(NodeEvent::Retired { server: id, incarnation });
                }
            }
        }
    }

    /// Every server slot restarts at once if it is down (the simulator's calm phase).
    pub fn restart_all(&mut self, now_us: u64) {
        for h in &mut self.hosted {
            if h.server.is_none() {
                h.restart_at_us = Some(now_us);
            }
        }
    }

    /// Stops server slot `i`'s incarnation; the next starts at `restart_at_us`.
    fn stop(&mut self, i: usize, restart_at_us: u64) -> Option<Server> {
        let server = self.hosted[i].server.take()?;
        add_stats(&mut self.stats.ended, &server.stats);
        self.wire.server_stopped(server.id());
        self.hosted[i].restart_at_us = Some(restart_at_us);
        Some(server)
    }

    fn reap_fenced(&mut self, now: u64) {
        for i in 0..self.hosted.len() {
            let Some(server) = self.hosted[i].server.as_mut() else { continue };
            if let Some(ServerEvent::Fenced) = server.poll_event() {
                let incarnation = server.incarnation();
                self.stop(i, now + self.cfg.tick_us);
                self.stats.fenced += 1;
                self.events.push_back(NodeEvent::Fenced { server: self.hosted[i].id, incarnation });
            }
        }
    }

    /// Server slot `i`'s code panicked: that is its crash. Its slice is told, as a crash report
    /// tells it, and takes back what it held (committed state: what the server had not written
    /// through is lost, as a crashed process's would be); a fresh incarnation starts next tick.
    fn server_panicked(&mut self, i: usize, now: u64, why: String) {
        let restart_at = now + self.cfg.tick_us;
        let Some(server) = self.stop(i, restart_at) else { return };
        let held = self.slice.held_by(server.id());
        self.slice.handle_crash_report(now, server.id(), server.incarnation(), Some(restart_at));
        self.stats.server_panics += 1;
        self.events.push_back(NodeEvent::Panicked {
            server: server.id(),
            incarnation: server.incarnation(),
            why,
            held,
        });
    }

    /// A driver crashes server `id` (a fault): it is down for `down_ticks`, and its slice is told
    /// at once if `reported`, else finds out when its lease runs out.
    pub fn crash(&mut self, id: ServerId, now_us: u64, down_ticks: u64, reported: bool) -> bool {
        let Some(i) = self.hosted.iter().position(|h| h.id == id) else { return false };
        let restart_at = now_us + down_ticks * self.cfg.tick_us;
        let Some(server) = self.stop(i, restart_at) else { return false };
        if reported {
            self.slice.handle_crash_report(now_us, id, server.incarnation(), Some(restart_at));
        }
        self.stats.crashes += 1;
        self.events.push_back(NodeEvent::Crashed {
            server: id,
            incarnation: server.incarnation(),
            reported,
            down_ticks,
        });
        true
    }

    /// The slice's changes since the last commit become this tick's group commit. It runs before
    /// `send`: what leaves for another node is in this node's log before the other can log it.
    fn commit(&mut self, now_us: u64, io: &mut impl NodeIo) {
        if self.log_error.is_some() {
            return;
        }
        let tick = Tick::at_game_us(now_us, self.cfg.tick_us).max(self.last_log_tick.next());
        let floor = self.incarnations.load(Ordering::Relaxed);
        self.records.clear();
        self.ops.clear();
        for op in self.slice.drain_journal() {
            match op {
                JournalOp::Put(id) => {
                    if let Some(r) = self.slice.records().get(&id) {
                        self.ops.push(LogOp::Put(Committed { id, state: r.state.clone(), commit_seq: r.commit_seq }));
                    }
                }
                JournalOp::Destroy { id, seq } => self.ops.push(LogOp::Destroy { id, seq }),
                JournalOp::Out { to, entities } => self.ops.push(LogOp::Out { to: to.0, entities }),
                JournalOp::Map => self.ops.push(LogOp::Map(self.slice.map().clone())),
                JournalOp::RoundDone(round) => {
                    self.ops.push(LogOp::RoundDone { round });
                    self.round_done_at = Some((round, tick));
                }
                JournalOp::Snapshot(s) => {
                    if !self.ops.is_empty() {
                        self.records.push(LogRecord::Batch(Batch { tick, ops: std::mem::take(&mut self.ops) }));
                    }
                    let s = *s;
                    self.records.push(LogRecord::Checkpoint(SnapshotFile {
                        round: s.round,
                        slice: s.slice.0,
                        slices: s.slices,
                        covers_below: 0,
                        tick,
                        incarnation_floor: floor,
                        map: s.map,
                        entities: s.entities,
                    }));
                }
            }
        }
        self.records.push(LogRecord::Batch(Batch { tick, ops: std::mem::take(&mut self.ops) }));
        let mut records = std::mem::take(&mut self.records);
        let durable = io.log(tick, &mut records);
        self.records = records;
        match durable {
            None => {}
            Some(Err(e)) => self.log_error = Some(e),
            Some(Ok(durable)) => {
                self.last_log_tick = tick;
                self.slice.snapshot_stored(durable.stored_round);
                if let Some((round, at)) = self.round_done_at {
                    if durable.tick >= at {
                        self.round_done_at = None;
                        self.slice.round_done_durable(round);
                    }
                }
            }
        }
    }

    /// This node's entities for every gateway, as of tick `tick`: what its slice has committed,
    /// never a move a server made that a crash could still take back, so a client sees at most a
    /// hold when a server dies, never a step back.
    fn view(&self, tick: Tick) -> Vec<ViewEntity> {
        let world = self.slice.map().world;
        let dt = self.cfg.tick_us as f32 / 1e6;
        let mut view = Vec::new();
        for (id, record) in self.slice.records() {
            let Some(holder) = record.authority else { continue };
            let state = &record.state;
            // The newest input its server applied, for the client's acknowledgement.
            let input_seq = match state.kind {
                EntityKind::Player => self.server(holder).and_then(|s| s.held().get(id)).map_or(0, |h| h.input_seq),
                _ => 0,
            };
            // Committed by a core that ticks ahead (adopted from it within one tick): as of
            // `tick` it is that many ticks' motion back.
            let ahead = state.changed_tick.since(tick);
            let position = match ahead {
                0 => state.position,
                _ => world.clamp(state.pos() - state.vel() * dt * ahead as f32).to_array(),
            };
            view.push(ViewEntity {
                carried: state.parent.is_some(),
                input_seq,
                behind: tick.since(state.changed_tick).min(u8::MAX as u64) as u8,
                ..ViewEntity::new(*id, state.kind, position, state.velocity)
            });
        }
        for server in self.servers().filter(|s| s.map().is_some()) {
            for (id, state) in server.leaving() {
                view.push(ViewEntity {
                    carried: state.parent.is_some(),
                    leaving: true,
                    ..ViewEntity::new(*id, state.kind, state.position, state.velocity)
                });
            }
        }
        // Sent to another node's slice this tick: shown where it left, as a handoff is.
        view.extend_from_slice(&self.transferred);
        // Waiting for a server (its holder crashed or was fenced, or it is between slices): held
        // still at its committed state, where the next holder takes it up.
        for (id, state) in self.slice.in_flight() {
            view.push(ViewEntity {
                carried: state.parent.is_some(),
                leaving: true,
                ..ViewEntity::new(id, state.kind, state.position, [0.0; 3])
            });
        }
        view
    }
}

/// Folds an ended incarnation's counters into a sum.
pub fn add_stats(total: &mut ServerStats, s: &ServerStats) {
    total.ticks += s.ticks;
    total.adopted += s.adopted;
    total.handed_off += s.handed_off;
    total.logged_out += s.logged_out;
    total.created += s.created;
    total.destroyed += s.destroyed;
    total.hits += s.hits;
    total.remote_hits += s.remote_hits;
    total.shots_handed_on += s.shots_handed_on;
    total.damage_received += s.damage_received;
    total.inputs_applied += s.inputs_applied;
    for (t, n) in total.actions.iter_mut().zip(s.actions) {
        *t += n;
    }
    total.inputs_refused += s.inputs_refused;
    total.inputs_rate_limited += s.inputs_rate_limited;
    total.inputs_held_back += s.inputs_held_back;
    total.deltas_sent += s.deltas_sent;
    total.containers_loaded += s.containers_loaded;
    total.roots_unloaded += s.roots_unloaded;
    total.tables_shrunk += s.tables_shrunk;
}
