//! The deterministic simulator: the replication layer and many servers in one thread, over a
//! network that loses, duplicates, delays and reorders, with servers crashing and restarting and
//! the controller reshaping the map, all drawn from one seed. After every step it checks the
//! invariants (`check`); a failure names the seed, which replays the run exactly.
//!
//! A run has two phases: faults for `fault_ticks` (safety is checked throughout), then calm for
//! `calm_ticks` with the network clean, crashed servers back and bots at rest (liveness: the
//! world must settle with every entity where it belongs).

mod accounts;
pub mod clients;
pub mod faults;
pub mod lossy;
pub mod network;

use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rkyv::rancor;
use rkyv::util::AlignedVec;

pub use crate::node::Checker;
use clients::{ClientStats, SimClients};
pub use faults::FaultPlan;
use lossy::Lossy;
use rustc_hash::FxHashSet;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use crate::limits::{SETTLE_ROUNDS_MAX, SIM_REGION_COUNT_MAX, SIM_SEGMENT_BYTES, TICK_DURATION_US};
use crate::log::{CrashImage, Durability, LogOp, OpenOptions, SliceLog};
use crate::node::ViewEntity;
use crate::node::{Bots, Durable, LogRecord, Node, NodeConfig, NodeEvent, NodeIo, Step};
use crate::protocol::replication::home_slice;
use crate::protocol::{Action, Committed, PlantedBugs, Replication, Server, SliceId, SliceMsg};
use crate::world::{populate, ContainerTree, EntityId, Population, RegionMap, ServerId, StreamIndex, Tick};

/// How the simulator opens its logs: synced only when it says (every `sync_every_ticks`).
fn log_options(plan: &FaultPlan, cfg: &SimConfig) -> OpenOptions {
    OpenOptions {
        slices: plan.slices,
        // Never on a timer: the simulator syncs at the ticks it draws, so a run is deterministic.
        durability: Durability::Interval(std::time::Duration::from_secs(365 * 86_400)),
        segment_bytes: SIM_SEGMENT_BYTES,
        salvage: false,
        planted_replay_twice: cfg.planted_replay_twice,
    }
}

/// The initial k-d cells of the world.
const INITIAL_REGIONS: usize = 16;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub fault_ticks: u64,
    /// The calm phase, in ticks of 30 Hz: as long in game time at the seed's tick rate.
    pub calm_ticks: u64,
    /// Log every event, not just the outcome.
    pub verbose: bool,
    pub planted: PlantedBugs,
    /// Test-only planted bug: servers keep acting after their lease ran out.
    pub planted_server_ignores_lease: bool,
    /// Test-only planted bug: recovery replays a frame twice.
    pub planted_replay_twice: bool,
    /// Test-only planted bug: the gateways make updates against the newest sent, not the one
    /// the client acknowledged.
    pub planted_delta_from_newest: bool,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            fault_ticks: 300,
            calm_ticks: 120,
            verbose: false,
            planted: PlantedBugs::default(),
            planted_server_ignores_lease: false,
            planted_replay_twice: false,
            planted_delta_from_newest: false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub ticks: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub fenced: u64,
    pub partitions: u64,
    pub region_ops: u64,
    /// Region ops that moved the border between two regions (`shift_border`).
    pub borders_moved: u64,
    /// Servers the controller started and retired (drawn among the region operations).
    pub servers_started: u64,
    pub servers_retired: u64,
    pub inputs: u64,
    pub handoffs: u64,
    pub adopted: u64,
    pub hits: u64,
    pub decode_errors: u64,
    /// Packets put on the network (before loss and duplication).
    pub packets: u64,
    /// Subtrees moved between replication slices (cores).
    pub transfers: u64,
    /// Projectiles that hit another server's entity through its ghost, and damage so applied.
    pub remote_hits: u64,
    pub damage_received: u64,
    /// Projectiles stopped where their path left their server's regions and handed on there.
    pub shots_handed_on: u64,
    /// Applied bot actions, by kind (see `Action::index`).
    pub actions: [u64; 8],
    /// Item roots put to rest in unloaded containers, and woken when a server loaded them.
    pub parked: u64,
    pub woken: u64,
    /// Whole-process crashes, each followed by recovery from the simulated disk.
    pub mesh_restarts: u64,
    /// Accounts' logins and logouts, and players parked because their account logged out.
    pub logins: u64,
    pub logouts: u64,
    pub players_parked: u64,
    /// What the simulated clients sent, were sent and saw.
    pub clients: clients::ClientStats,
}

#[derive(Clone, Debug)]
pub struct SimOutcome {
    pub seed: u64,
    pub plan: FaultPlan,
    /// The first broken invariant, with the tick it broke at.
    pub failure: Option<(Tick, String)>,
    pub stats: SimStats,
    pub entities: usize,
    pub items: usize,
    /// Everything the run printed (the verbose log, or header and outcome).
    pub log: String,
}

/// The simulator's I/O for one node: a mailbox per node for the messages between them (on one
/// host, shared-memory rings: reliable and in order; here they cross as rkyv bytes).
struct SimIo<'a> {
    me: SliceId,
    mailboxes: &'a mut [VecDeque<(SliceId, Vec<u8>)>],
    decode_errors: &'a mut u64,
    disk: Option<NodeDisk<'a>>,
    clients: Option<ClientIo<'a>>,
}

/// A node's side of the simulated clients: their inputs to it, the players they drive, and
/// where it publishes its view.
struct ClientIo<'a> {
    inputs: &'a mut Vec<(EntityId, u32, Action)>,
    sessions: &'a mut Vec<crate::node::Session>,
    seats: &'a FxHashSet<EntityId>,
    view: &'a mut Option<(Tick, Vec<ViewEntity>)>,
}

/// One node's log on the simulated disk, and what the simulator keeps to check recovery by.
struct NodeDisk<'a> {
    log: &'a mut SliceLog,
    /// This tick the log is synced (else what it writes is only in the page cache).
    sync: bool,
    /// What the log said is durable at its last sync.
    durable: &'a mut Durable,
    /// Changes written since the last sync, by entity.
    unsynced: &'a mut Vec<(EntityId, u64)>,
    /// The newest change of each entity that a sync made durable.
    durable_seqs: &'a mut BTreeMap<EntityId, u64>,
}

impl NodeDisk<'_> {
    fn write(&mut self, tick: Tick, records: &mut Vec<LogRecord>) -> Result<Durable, crate::log::LogError> {
        for record in records.drain(..) {
            match record {
                LogRecord::Batch(batch) => {
                    for op in &batch.ops {
                        match op {
                            LogOp::Put(c) => self.unsynced.push((c.id, c.commit_seq)),
                            LogOp::Out { entities, .. } => {
                                self.unsynced.extend(entities.iter().map(|c| (c.id, c.commit_seq)))
                            }
                            _ => {}
                        }
                    }
                    self.log.append(&batch)?;
                }
                LogRecord::Checkpoint(snapshot) => self.log.checkpoint(snapshot)?,
            }
        }
        self.log.commit(tick)?;
        if self.sync {
            // The flusher has done everything before this: what it reports now is deterministic.
            self.log.sync_now()?;
            *self.durable = Durable {
                tick: self.log.state.durable(),
                stored_round: self.log.state.stored_round.load(Ordering::Acquire),
            };
            for (id, seq) in self.unsynced.drain(..) {
                let d = self.durable_seqs.entry(id).or_default();
                *d = (*d).max(seq);
            }
        }
        Ok(*self.durable)
    }
}

impl NodeIo for SimIo<'_> {
    fn receive(&mut self, into: &mut Vec<(SliceId, SliceMsg)>) {
        for (from, bytes) in self.mailboxes[self.me.0 as usize].drain(..) {
            match decode::<SliceMsg>(&bytes) {
                Ok(msg) => into.push((from, msg)),
                Err(_) => *self.decode_errors += 1,
            }
        }
    }

    fn send(&mut self, to: SliceId, msg: &SliceMsg) {
        self.mailboxes[to.0 as usize].push_back((self.me, encode(msg)));
    }

    fn log(&mut self, tick: Tick, records: &mut Vec<LogRecord>) -> Option<Result<Durable, String>> {
        let disk = self.disk.as_mut()?;
        Some(disk.write(tick, records).map_err(|e| e.to_string()))
    }

    /// The nodes take part in the clients' input barrier (it carries the simulated clients'
    /// inputs), and it is where the simulator checks what crashed servers' successors adopted,
    /// before they simulate it.
    fn has_clients(&self) -> bool {
        true
    }

    fn client_inputs(&mut self, into: &mut Vec<(EntityId, u32, Action)>) {
        if let Some(c) = self.clients.as_mut() {
            into.append(c.inputs);
        }
    }

    fn client_sessions(&mut self, into: &mut Vec<crate::node::Session>) {
        if let Some(c) = self.clients.as_mut() {
            into.append(c.sessions);
        }
    }

    fn seats(&mut self, into: &mut FxHashSet<EntityId>) {
        if let Some(c) = self.clients.as_ref() {
            into.extend(c.seats.iter().copied());
        }
    }

    fn publish_view(&mut self, tick: Tick, view: Vec<ViewEntity>) {
        if let Some(c) = self.clients.as_mut() {
            *c.view = Some((tick, view));
        }
    }
}

pub struct Simulator {
    cfg: SimConfig,
    plan: FaultPlan,
    rng: ChaCha8Rng,
    tick: Tick,
    /// One node per replication slice; node 0's slice is also the controller.
    nodes: Vec<Node<Lossy>>,
    mailboxes: Vec<VecDeque<(SliceId, Vec<u8>)>>,
    checker: Checker,
    calm: bool,
    pub stats: SimStats,
    log: String,
    streaming: Arc<StreamIndex>,
    incarnations: Arc<AtomicU32>,
    /// The simulated disk: it keeps what was written and, apart, what a sync made durable.
    disk: CrashImage,
    /// Each node's log writer.
    logs: Vec<Option<SliceLog>>,
    durable: Vec<Durable>,
    unsynced: Vec<Vec<(EntityId, u64)>>,
    durable_seqs: BTreeMap<EntityId, u64>,
    /// Clients driving a few players, through the gateways' update logic.
    clients: SimClients,
    /// Accounts logging in and out, and where their players are made.
    accounts: accounts::SimAccounts,
    spawn: glam::Vec3,
}

impl Simulator {
    pub fn new(cfg: SimConfig) -> Self {
        let plan = FaultPlan::draw(cfg.seed);
        // Four buildings to a city: some rooms are far from every player, so streaming has
        // containers to unload and load back as bots roam.
        let tree = ContainerTree::generate(cfg.seed, 2, 2, 4);
        let streaming = std::sync::Arc::new(StreamIndex::new(tree.clone()));
        let counts = Population {
            players: plan.players,
            npcs: plan.players / 4,
            items: plan.players,
            ships: 1 + plan.players / 10,
        };
        let entities = populate(&tree, cfg.seed, counts);
        let clients =
            SimClients::new(cfg.seed, plan.slices as usize, plan.tick_us, &entities, cfg.planted_delta_from_newest);
        let map = RegionMap::kd_split(tree.bounds(), INITIAL_REGIONS);
        let initial = entities.into_iter().map(|(id, state)| Committed { id, state, commit_seq: 1 }).collect();
        let disk = CrashImage::default();
        let opened = crate::log::open(Arc::new(disk.clone()), &log_options(&plan, &cfg), || (map, initial))
            .expect("a world is created on an empty simulated disk");
        let mut sim = Self {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            plan,
            tick: Tick::ZERO,
            mailboxes: Vec::new(),
            nodes: Vec::new(),
            checker: Checker::new(&[]),
            calm: false,
            stats: SimStats::default(),
            log: String::new(),
            streaming,
            incarnations: Arc::new(AtomicU32::new(1)),
            disk,
            logs: Vec::new(),
            durable: Vec::new(),
            unsynced: Vec::new(),
            durable_seqs: BTreeMap::new(),
            clients,
            accounts: accounts::SimAccounts::new(cfg.seed, plan.slices as usize),
            spawn: tree
                .of_kind(crate::world::ContainerKind::City)
                .next()
                .map_or(tree.bounds().center(), |c| c.bounds.center()),
            cfg,
        };
        sim.start_nodes(opened);
        let slices: Vec<&Replication> = sim.nodes.iter().map(|n| n.slice()).collect();
        sim.checker = Checker::new(&slices);
        let _ = writeln!(
            sim.log,
            "seed={} {} {} {}",
            sim.cfg.seed,
            sim.plan,
            sim.clients.describe(),
            sim.accounts.describe()
        );
        let _ = sim.drain_events();
        sim
    }

    /// The nodes over the world `opened` read from the disk (or created on it), each with its
    /// log writer; servers start now.
    fn start_nodes(&mut self, opened: crate::log::Opened) {
        let now = self.now_us();
        let slices = self.plan.slices;
        self.incarnations.fetch_max(opened.incarnation_floor, Ordering::Relaxed);
        let mut initial = Some(opened.entities);
        self.nodes.clear();
        for i in 0..slices {
            let mut slice =
                Replication::restore_slice(SliceId(i), slices, opened.map.clone(), initial.take().unwrap_or_default())
                    .with_streaming(self.streaming.clone());
            slice.planted = self.cfg.planted;
            slice.enable_journal(opened.round);
            let node_cfg = NodeConfig {
                streaming: Some(self.streaming.clone()),
                bots: if self.calm { Bots::Rest } else { Bots::Random { activity: crate::bots::SIM_ACTIVITY } },
                planted_server_ignores_lease: self.cfg.planted_server_ignores_lease,
                checkpoint_every_us: Some(self.plan.checkpoint_every_ticks * self.plan.tick_us),
                tick_us: self.plan.tick_us,
                spawn: self.spawn,
                ..NodeConfig::new(i as usize, self.cfg.seed ^ self.stats.mesh_restarts << 48)
            };
            // The first servers, and every server the recovered map gives a region (one the
            // controller started since).
            let mut ids: BTreeSet<ServerId> = (0..self.plan.servers).map(ServerId).collect();
            ids.extend(opened.map.regions().iter().filter_map(|r| r.server));
            let servers = ids.into_iter().filter(|s| home_slice(*s, slices).0 == i);
            let wire_seed = self.cfg.seed ^ ((i as u64 + 1) << 40) ^ (self.stats.mesh_restarts << 48);
            let wire = Lossy::new(wire_seed, if self.calm { self.plan.calm() } else { self.plan });
            self.nodes.push(Node::new(node_cfg, slice, servers, wire, self.incarnations.clone(), now));
        }
        self.mailboxes = (0..slices).map(|_| VecDeque::new()).collect();
        self.logs = opened.logs.into_iter().map(Some).collect();
        let floor = Durable { tick: opened.start_tick.before(1), stored_round: opened.round };
        self.durable = vec![floor; slices as usize];
        self.unsynced = vec![Vec::new(); slices as usize];
    }

    /// The whole process dies: every node and every byte no sync covered. The world starts
    /// again from what the disk kept, and what was reported durable must all be there, once.
    fn process_crash(&mut self) -> Result<(), String> {
        let image = self.disk.durable_image();
        self.nodes.clear();
        self.logs.clear();
        let reported_tick = self.durable.iter().map(|d| d.tick).min().unwrap_or_default();
        self.disk = CrashImage::from_image(image);
        let opened = crate::log::open(Arc::new(self.disk.clone()), &log_options(&self.plan, &self.cfg), || {
            unreachable!("the simulated disk holds a world")
        })
        .map_err(|e| format!("recovery after a process crash failed: {e}"))?;
        let r = &opened.report;
        if let Some(e) = r.errors.first() {
            return Err(format!("recovery after a process crash: {e}"));
        }
        if r.last_committed_tick < reported_tick {
            return Err(format!(
                "recovery reached tick {}, but every slice had reported tick {reported_tick} durable",
                r.last_committed_tick
            ));
        }
        let mut recovered: BTreeMap<EntityId, u64> = BTreeMap::new();
        for c in &opened.entities {
            if recovered.insert(c.id, c.commit_seq).is_some() {
                return Err(format!("{} is twice in the recovered world", c.id));
            }
        }
        for (id, seq) in &self.durable_seqs {
            match recovered.get(id) {
                Some(r) if r >= seq => {}
                Some(r) => {
                    return Err(format!("{id}: change {seq} was reported durable, recovery brought back change {r}"))
                }
                None if self.checker.is_persistent(*id) => {
                    return Err(format!("{id}: change {seq} was reported durable, recovery lost it"))
                }
                None => {}
            }
        }
        self.stats.mesh_restarts += 1;
        self.event(format_args!(
            "the process crashes; recovered {} entities at tick {} (tick {reported_tick} was reported durable)",
            opened.entities.len(),
            r.last_committed_tick
        ));
        self.start_nodes(opened);
        self.checker.restarted();
        // Durable changes were all brought back (checked above): an account's player missing
        // now was made after the last sync, and its first login is undone with the crash.
        self.checker.forget_accounts_not_in(&self.nodes.iter().map(|n| n.slice()).collect::<Vec<_>>());
        Ok(())
    }

    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// Every node's slice, in node order.
    pub fn slices(&self) -> Vec<&Replication> {
        self.nodes.iter().map(|n| n.slice()).collect()
    }

    fn node_of(&mut self, server: ServerId) -> &mut Node<Lossy> {
        let i = home_slice(server, self.nodes.len() as u16).0 as usize;
        &mut self.nodes[i]
    }

    fn layer_total(&self, f: impl Fn(&crate::protocol::ReplicationStats) -> u64) -> u64 {
        self.nodes.iter().map(|n| f(&n.slice().stats)).sum()
    }

    pub fn servers(&self) -> impl Iterator<Item = &Server> + Clone {
        self.nodes.iter().flat_map(|n| n.servers())
    }

    fn now_us(&self) -> u64 {
        self.tick.game_us(self.plan.tick_us)
    }

    fn event(&mut self, text: std::fmt::Arguments<'_>) {
        if self.cfg.verbose {
            let _ = writeln!(self.log, "t={:05} {text}", self.tick);
        }
    }

    /// Runs both phases; stops at the first broken invariant.
    pub fn run(cfg: SimConfig) -> SimOutcome {
        let mut sim = Simulator::new(cfg);
        let failure = sim.run_phases().err();
        sim.stats.handoffs = sim.layer_total(|s| s.handoffs);
        sim.stats.transfers = sim.layer_total(|s| s.transfers_out);
        sim.stats.parked = sim.layer_total(|s| s.parked);
        sim.stats.woken = sim.layer_total(|s| s.woken);
        sim.stats.logins = sim.accounts.logins;
        sim.stats.logouts = sim.accounts.logouts;
        sim.stats.players_parked = sim.layer_total(|s| s.players_parked);
        let mut servers = crate::protocol::ServerStats::default();
        for node in &sim.nodes {
            crate::node::add_stats(&mut servers, &node.stats.ended);
            for s in node.servers() {
                crate::node::add_stats(&mut servers, &s.stats);
            }
            sim.stats.packets += node.wire().net.stats.sent;
            sim.stats.decode_errors += node.wire().decode_errors;
            sim.stats.inputs += node.stats.bot_inputs;
            sim.stats.restarts += node.stats.restarts;
            sim.stats.fenced += node.stats.fenced;
        }
        sim.stats.adopted = servers.adopted;
        sim.stats.hits = servers.hits;
        sim.stats.remote_hits = servers.remote_hits;
        sim.stats.shots_handed_on = servers.shots_handed_on;
        sim.stats.damage_received = servers.damage_received;
        sim.stats.actions = servers.actions;
        sim.stats.clients = ClientStats { glitches: sim.clients.glitches(), ..sim.clients.stats };
        if let Some((tick, e)) = &failure {
            let _ = writeln!(sim.log, "FAIL seed={} tick={tick}: {e}", sim.cfg.seed);
        } else {
            let s = sim.stats;
            let _ = writeln!(
                sim.log,
                "ok seed={} ticks={} handoffs={} adopted={} crashes={} fenced={} restarts={} partitions={} region_ops={} servers_started={} servers_retired={} hits={} parked={} woken={} commits={} stale_rejected={} mesh_restarts={} logins={} logouts={} players_parked={} client_updates={}/{} client_glitches={} client_settled_checks={}",
                sim.cfg.seed,
                s.ticks,
                s.handoffs,
                s.adopted,
                s.crashes,
                s.fenced,
                s.restarts,
                s.partitions,
                s.region_ops,
                s.servers_started,
                s.servers_retired,
                s.hits,
                s.parked,
                s.woken,
                sim.layer_total(|s| s.commits),
                sim.layer_total(|s| s.stale_rejected),
                s.mesh_restarts,
                s.logins,
                s.logouts,
                s.players_parked,
                s.clients.updates_taken,
                s.clients.updates_sent,
                s.clients.glitches,
                s.clients.settled_checks,
            );
        }
        SimOutcome {
            seed: sim.cfg.seed,
            plan: sim.plan,
            failure,
            stats: sim.stats,
            entities: sim.nodes.iter().map(|n| n.slice().records().len()).sum(),
            items: sim.checker.item_count(),
            log: sim.log,
        }
    }

    fn run_phases(&mut self) -> Result<(), (Tick, String)> {
        for _ in 0..self.cfg.fault_ticks {
            self.step().map_err(|e| (self.tick, e))?;
        }
        self.calm = true;
        self.event(format_args!("calm: faults off, bots at rest"));
        let now = self.now_us();
        let calm = self.plan.calm();
        for node in &mut self.nodes {
            node.wire_mut().set_plan(calm);
            node.set_bots(Bots::Rest);
            node.restart_all(now);
        }
        // The calm phase lasts as long in game time at every tick rate.
        let calm_ticks = (self.cfg.calm_ticks * TICK_DURATION_US).div_ceil(self.plan.tick_us);
        for _ in 0..calm_ticks {
            self.step().map_err(|e| (self.tick, e))?;
        }
        self.settle();
        let now = self.now_us();
        self.checker
            .check_settled(now, &self.slices(), self.servers())
            .and_then(|()| self.accounts.check_settled(&self.slices()))
            .map_err(|e| (self.tick, format!("liveness: {e}")))
    }

    /// Every node advanced to the same point of tick `tick`; with `crash_after`, the process
    /// dies once that many nodes have.
    fn advance_all(&mut self, tick: Tick, expect: Step, crash_after: Option<usize>) -> Result<bool, String> {
        let sync = tick.is_every(self.plan.sync_every_ticks);
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if crash_after == Some(i) {
                return Ok(true);
            }
            let disk = match self.logs[i].as_mut() {
                Some(log) => Some(NodeDisk {
                    log,
                    sync,
                    durable: &mut self.durable[i],
                    unsynced: &mut self.unsynced[i],
                    durable_seqs: &mut self.durable_seqs,
                }),
                None => None,
            };
            let clients = ClientIo {
                inputs: &mut self.clients.inputs[i],
                sessions: &mut self.accounts.pending[i],
                seats: &self.clients.seats,
                view: &mut self.clients.views[i],
            };
            let mut io = SimIo {
                me: SliceId(node.index() as u16),
                mailboxes: &mut self.mailboxes,
                decode_errors: &mut self.stats.decode_errors,
                disk,
                clients: Some(clients),
            };
            let step = node.advance(tick, &mut io);
            if step != expect {
                return Err(format!("node {} stopped at {step:?}, not {expect:?}", node.index()));
            }
            if let Some(e) = node.log_error() {
                return Err(format!("node {}'s log: {e}", node.index()));
            }
        }
        Ok(crash_after == Some(self.nodes.len()))
    }

    /// One tick of the whole world, then the checks.
    pub fn step(&mut self) -> Result<(), String> {
        let now = self.now_us();
        // Faults strike between ticks: what a crash report or a region change makes the layer
        // send goes out in this tick's order, as it would on a live core.
        if !self.calm {
            self.inject_faults(now);
        }
        // The whole process may die in this tick, after any number of nodes committed it.
        let crash_after = (!self.calm && self.rng.random_bool(self.plan.process_crash_per_tick))
            .then(|| self.rng.random_range(0..=self.nodes.len()));
        self.clients.before_tick(self.tick, self.calm)?;
        if !self.calm {
            self.accounts.before_tick();
        }
        self.advance_all(self.tick, Step::AwaitInputs, None)?;
        self.checker.check_restored(now, &self.slices(), self.servers())?;
        self.clients.views.iter_mut().for_each(|v| *v = None);
        if self.advance_all(self.tick, Step::AwaitViews, crash_after)? {
            self.process_crash()?;
            self.clients.process_crashed();
            let slices: Vec<&Replication> = self.nodes.iter().map(|n| n.slice()).collect();
            self.accounts.process_crashed(&slices);
            self.stats.ticks += 1;
            self.tick = self.tick.next();
            return Ok(());
        }
        if self.nodes.iter().any(|n| n.wire().net.any_partitioned(now)) {
            self.clients.disturbed();
        }
        self.clients.after_views(self.tick)?;
        for e in std::mem::take(&mut self.clients.events) {
            self.event(format_args!("{e}"));
        }
        self.advance_all(self.tick, Step::Done, None)?;
        self.drain_events()?;
        if let Some(e) = self.nodes.iter().find_map(|n| n.wire_error()) {
            return Err(e.to_string());
        }
        self.stats.ticks += 1;
        if self.cfg.verbose && self.tick.get() % 30 == 29 {
            self.status_line(now);
        }
        let in_transit = self.in_transit();
        let slices: Vec<&Replication> = self.nodes.iter().map(|n| n.slice()).collect();
        let servers = self.nodes.iter().flat_map(|n| n.servers());
        self.checker.check_step(now, &slices, &in_transit, servers)?;
        self.tick = self.tick.next();
        Ok(())
    }

    /// The records in subtrees between slices, still in their receivers' mailboxes.
    fn in_transit(&self) -> Vec<Committed> {
        let mut records = Vec::new();
        for (_, bytes) in self.mailboxes.iter().flatten() {
            if let Ok(SliceMsg::Transfer { entities, .. }) = decode::<SliceMsg>(bytes) {
                records.extend(entities);
            }
        }
        records
    }

    /// Messages between nodes, delivered until none is left (as a stopping mesh settles).
    fn settle(&mut self) {
        let now = self.now_us();
        for _ in 0..SETTLE_ROUNDS_MAX {
            if self.mailboxes.iter().all(|m| m.is_empty()) {
                return;
            }
            for node in &mut self.nodes {
                let mut io = SimIo {
                    me: SliceId(node.index() as u16),
                    mailboxes: &mut self.mailboxes,
                    decode_errors: &mut self.stats.decode_errors,
                    disk: None,
                    clients: None,
                };
                node.exchange(now, &mut io);
            }
        }
    }

    /// Once a simulated second, in verbose runs: where the world stands.
    fn status_line(&mut self, now: u64) {
        let servers = self.nodes.iter().map(|n| n.hosted().len()).sum::<usize>();
        let acting = self.servers().filter(|s| s.is_acting(now)).count();
        let held: usize = self.servers().filter(|s| s.is_acting(now)).map(|s| s.held().len()).sum();
        let entities: usize = self.nodes.iter().map(|n| n.slice().records().len()).sum();
        let orphans: usize = self.nodes.iter().map(|n| n.slice().orphans().len()).sum();
        let map = self.nodes[0].slice().map();
        let (regions, epoch) = (map.regions().len(), map.epoch);
        let transfers = self.layer_total(|s| s.transfers_out);
        let (handoffs, commits, stale) =
            (self.layer_total(|s| s.handoffs), self.layer_total(|s| s.commits), self.layer_total(|s| s.stale_rejected));
        let in_flight: usize = self.nodes.iter().map(|n| n.wire().net.in_flight()).sum();
        self.event(format_args!(
            "status: servers={acting}/{servers} entities={entities} held={held} orphans={orphans} regions={regions} map_epoch={epoch} handoffs={handoffs} transfers={transfers} commits={commits} stale_rejected={stale} packets_in_flight={in_flight}",
        ));
    }

    /// What happened to servers, into the verbose log; a server's panic is a failure.
    fn drain_events(&mut self) -> Result<(), String> {
        let mut events = Vec::new();
        for node in &mut self.nodes {
            while let Some(event) = node.poll_event() {
                events.push(event);
            }
        }
        if !events.is_empty() {
            // A server started, fenced or crashed: the clients' world is not settled yet.
            self.clients.disturbed();
        }
        for event in events {
            match event {
                NodeEvent::Started { server, incarnation } => {
                    self.event(format_args!("{server} starts as incarnation {}", incarnation.0))
                }
                NodeEvent::Fenced { server, incarnation } => {
                    self.event(format_args!("{server} incarnation {} fenced, restarting", incarnation.0))
                }
                NodeEvent::Crashed { server, incarnation, reported, down_ticks } => {
                    let how = if reported { "reported" } else { "silent" };
                    self.event(format_args!(
                        "{server} incarnation {} crashes ({how}), down {down_ticks} ticks",
                        incarnation.0
                    ))
                }
                NodeEvent::Panicked { server, incarnation, why, .. } => {
                    return Err(format!("{server} incarnation {} panicked: {why}", incarnation.0))
                }
                NodeEvent::Retired { server, .. } => self.event(format_args!("{server} retired")),
            }
        }
        Ok(())
    }

    fn inject_faults(&mut self, now: u64) {
        let ids: Vec<ServerId> = self
            .nodes
            .iter()
            .flat_map(|n| n.hosted().iter().map(|h| h.id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for id in ids {
            if self.rng.random_bool(self.plan.crash_per_tick) {
                let running = self.node_of(id).hosted().iter().any(|h| h.id == id && h.server.is_some());
                if running {
                    let down = self.rng.random_range(self.plan.restart_ticks.0..=self.plan.restart_ticks.1);
                    let reported = self.rng.random_bool(self.plan.crash_reported);
                    self.node_of(id).crash(id, now, down, reported);
                    self.stats.crashes += 1;
                }
            }
            if self.rng.random_bool(self.plan.partition) {
                let ticks = self.rng.random_range(self.plan.partition_ticks.0..=self.plan.partition_ticks.1);
                let until = now + ticks * self.plan.tick_us;
                self.node_of(id).wire_mut().partition(id, until);
                self.stats.partitions += 1;
                self.event(format_args!("{id} cut off for {ticks} ticks"));
            }
        }
        let _ = self.drain_events();
        if self.rng.random_bool(self.plan.region_ops_per_tick) {
            self.region_op();
        }
    }

    /// A random split, merge, move or moved border, as a controller reacting to load would make.
    fn region_op(&mut self) {
        let controller = self.nodes[0].slice_mut();
        let regions: Vec<_> = controller.map().regions().iter().map(|r| r.id).collect();
        let live: Vec<ServerId> = controller.live_everywhere().iter().copied().collect();
        let pick = self.rng.random_range(0..6);
        let region = regions[self.rng.random_range(0..regions.len())];
        let controller = self.nodes[0].slice_mut();
        let result = match pick {
            0 if regions.len() < SIM_REGION_COUNT_MAX => {
                controller.split_region(region).map(|(a, b)| format!("split {region} into {a} and {b}"))
            }
            1 => {
                let pairs = controller.map().mergeable_pairs();
                if pairs.is_empty() {
                    return;
                }
                let (a, b) = pairs[self.rng.random_range(0..pairs.len())];
                controller.merge_regions(a, b).map(|m| format!("merge {a} and {b} into {m}"))
            }
            2 if !live.is_empty() => {
                let to = live[self.rng.random_range(0..live.len())];
                controller.move_region(region, to).map(|_| format!("move {region} to {to}"))
            }
            // The server lifecycle: a start where load would call for one, a retirement where it
            // is low (the controller's policy decides when; the simulator decides at random).
            3 if live.len() < self.plan.servers as usize + 3 => {
                if !controller.start_server(&BTreeMap::new()) {
                    return;
                }
                self.stats.servers_started += 1;
                Ok(format!("start a server ({} started this seed)", self.stats.servers_started))
            }
            4 if live.len() > 1 => {
                let victim = live[self.rng.random_range(0..live.len())];
                let before = controller.stats.servers_retired;
                controller.retire_server(victim);
                if controller.stats.servers_retired == before {
                    return;
                }
                self.stats.servers_retired += 1;
                Ok(format!("retire {victim}"))
            }
            // A border between two regions that form a box, moved to a random plane between
            // their far faces (refused where a side would be under the smallest edge).
            5 => {
                let pairs = controller.map().mergeable_pairs();
                if pairs.is_empty() {
                    return;
                }
                let (a, b) = pairs[self.rng.random_range(0..pairs.len())];
                let map = controller.map();
                let (Some(ra), Some(rb)) = (map.get(a), map.get(b)) else { return };
                let Some(union) = ra.bounds.union_if_box(&rb.bounds) else { return };
                let Some(axis) = (0..3).find(|x| ra.bounds.min[*x] != rb.bounds.min[*x]) else { return };
                let at = self.rng.random_range(union.min[axis]..union.max[axis]);
                let moved = controller.shift_border(a, b, axis, at);
                self.stats.borders_moved += moved.is_ok() as u64;
                moved.map(|(a2, b2)| format!("move the border of {a} and {b} to {at:.1} on axis {axis}: {a2} and {b2}"))
            }
            _ => return,
        };
        self.stats.region_ops += 1;
        match result {
            Ok(text) => {
                let epoch = self.nodes[0].slice().map().epoch;
                self.event(format_args!("controller: {text} (map epoch {epoch})"))
            }
            Err(e) => self.event(format_args!("controller: refused: {e}")),
        }
    }
}

fn encode<T>(msg: &T) -> Vec<u8>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
    >,
{
    rkyv::to_bytes::<rancor::Error>(msg).expect("protocol messages always serialize").to_vec()
}

/// Decodes with validation: the bytes crossed a network.
fn decode<T>(bytes: &[u8]) -> Result<T, rancor::Error>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rancor::Error>(&aligned)
}
