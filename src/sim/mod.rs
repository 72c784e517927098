//! The deterministic simulator: the replication layer and many servers in one thread, over a
//! network that loses, duplicates, delays and reorders, with servers crashing and restarting and
//! the controller reshaping the map, all drawn from one seed. After every step it checks the
//! invariants (`check`); a failure names the seed, which replays the run exactly.
//!
//! A run has two phases: faults for `fault_ticks` (safety is checked throughout), then calm for
//! `calm_ticks` with the network clean, crashed servers back and bots at rest (liveness: the
//! world must settle with every entity where it belongs).

pub mod check;
pub mod faults;
pub mod network;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rkyv::rancor;
use rkyv::util::AlignedVec;

pub use check::Checker;
pub use faults::FaultPlan;
use network::{Endpoint, Network};

use crate::limits::TICK_DURATION_US;
use crate::protocol::replication::home_slice;
use crate::protocol::{
    Action, Incarnation, Input, Link, PlantedBugs, Replication, Server, ServerEvent, SliceId, SliceMsg, ToReplication,
    ToServer,
};
use crate::world::{populate, ContainerTree, Population, RegionMap, ServerId, StreamIndex};

/// The replication layer's link session; it never restarts in the simulator.
const REPLICATION_SESSION: u32 = 1;

/// The initial k-d cells of the world.
const INITIAL_REGIONS: usize = 16;

/// Regions the controller may split up to in a run.
const SIM_REGION_COUNT_MAX: usize = 48;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub fault_ticks: u64,
    pub calm_ticks: u64,
    /// Log every event, not just the outcome.
    pub verbose: bool,
    pub planted: PlantedBugs,
    /// Test-only planted bug: servers keep acting after their lease ran out.
    pub planted_server_ignores_lease: bool,
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
    /// Applied bot actions, by kind (see `Action::index`).
    pub actions: [u64; 8],
    /// Item roots put to rest in unloaded containers, and woken when a server loaded them.
    pub parked: u64,
    pub woken: u64,
}

#[derive(Clone, Debug)]
pub struct SimOutcome {
    pub seed: u64,
    pub plan: FaultPlan,
    /// The first broken invariant, with the tick it broke at.
    pub failure: Option<(u64, String)>,
    pub stats: SimStats,
    pub entities: usize,
    pub items: usize,
    /// Everything the run printed (the verbose log, or header and outcome).
    pub log: String,
}

struct Node {
    server: Option<(Server, Link)>,
    restart_at_tick: Option<u64>,
}

pub struct Simulator {
    cfg: SimConfig,
    plan: FaultPlan,
    /// What the network does now: the plan's faults, then calm.
    net_plan: FaultPlan,
    rng: ChaCha8Rng,
    tick: u64,
    /// The replication layer's slices; slice 0 is also the controller.
    slices: Vec<Replication>,
    rl_links: BTreeMap<ServerId, Link>,
    nodes: BTreeMap<ServerId, Node>,
    net: Network,
    next_incarnation: u32,
    checker: Checker,
    /// The world's containers, which servers and slices stream by.
    streaming: std::sync::Arc<StreamIndex>,
    calm: bool,
    pub stats: SimStats,
    log: String,
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
        let map = RegionMap::kd_split(tree.bounds(), INITIAL_REGIONS);
        let mut slices = Vec::new();
        let mut initial = Some(entities);
        for i in 0..plan.slices {
            let mut slice =
                Replication::new_slice(SliceId(i), plan.slices, map.clone(), initial.take().unwrap_or_default())
                    .with_streaming(streaming.clone());
            slice.planted = cfg.planted;
            slices.push(slice);
        }
        let checker = Checker::new(&slices);
        let mut sim = Self {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            plan,
            net_plan: plan,
            tick: 0,
            slices,
            rl_links: BTreeMap::new(),
            nodes: BTreeMap::new(),
            net: Network::default(),
            next_incarnation: 1,
            checker,
            streaming,
            calm: false,
            stats: SimStats::default(),
            log: String::new(),
            cfg,
        };
        let _ = writeln!(sim.log, "seed={} {}", sim.cfg.seed, sim.plan);
        for s in 0..sim.plan.servers {
            sim.nodes.insert(ServerId(s), Node { server: None, restart_at_tick: Some(0) });
        }
        sim
    }

    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    pub fn slices(&self) -> &[Replication] {
        &self.slices
    }

    fn home(&mut self, server: ServerId) -> &mut Replication {
        let i = home_slice(server, self.slices.len() as u16).0 as usize;
        &mut self.slices[i]
    }

    /// Delivers slice-to-slice messages until none are left. On one host slices talk over
    /// shared-memory rings, reliable and in order, within the tick; they cross as rkyv bytes.
    fn pump_peers(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.slices.len() {
                while let Some((to, msg)) = self.slices[i].poll_peer() {
                    let from = self.slices[i].slice();
                    match decode::<SliceMsg>(&encode(&msg)) {
                        Ok(msg) => self.slices[to.0 as usize].handle_peer(from, msg),
                        Err(_) => self.stats.decode_errors += 1,
                    }
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn layer_total(&self, f: impl Fn(&crate::protocol::ReplicationStats) -> u64) -> u64 {
        self.slices.iter().map(|s| f(&s.stats)).sum()
    }

    pub fn servers(&self) -> impl Iterator<Item = &Server> + Clone {
        self.nodes.values().filter_map(|n| n.server.as_ref().map(|(s, _)| s))
    }

    fn now_us(&self) -> u64 {
        self.tick * TICK_DURATION_US
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
        sim.stats.packets = sim.net.stats.sent;
        let live: Vec<_> = sim.servers().map(|s| s.stats).collect();
        for s in live {
            Self::add(&mut sim.stats, &s);
        }
        if let Some((tick, e)) = &failure {
            let _ = writeln!(sim.log, "FAIL seed={} tick={tick}: {e}", sim.cfg.seed);
        } else {
            let s = sim.stats;
            let _ = writeln!(
                sim.log,
                "ok seed={} ticks={} handoffs={} adopted={} crashes={} fenced={} restarts={} partitions={} region_ops={} hits={} parked={} woken={} commits={} stale_rejected={}",
                sim.cfg.seed,
                s.ticks,
                s.handoffs,
                s.adopted,
                s.crashes,
                s.fenced,
                s.restarts,
                s.partitions,
                s.region_ops,
                s.hits,
                s.parked,
                s.woken,
                sim.layer_total(|s| s.commits),
                sim.layer_total(|s| s.stale_rejected)
            );
        }
        SimOutcome {
            seed: sim.cfg.seed,
            plan: sim.plan,
            failure,
            stats: sim.stats,
            entities: sim.slices.iter().map(|s| s.records().len()).sum(),
            items: sim.checker.item_count(),
            log: sim.log,
        }
    }

    fn run_phases(&mut self) -> Result<(), (u64, String)> {
        for _ in 0..self.cfg.fault_ticks {
            self.step().map_err(|e| (self.tick, e))?;
        }
        self.calm = true;
        self.event(format_args!("calm: faults off, bots at rest"));
        self.net_plan = self.plan.calm();
        for node in self.nodes.values_mut() {
            if node.server.is_none() {
                node.restart_at_tick = Some(self.tick);
            }
        }
        for _ in 0..self.cfg.calm_ticks {
            self.step().map_err(|e| (self.tick, e))?;
        }
        let now = self.now_us();
        let servers: Vec<&Server> = self.nodes.values().filter_map(|n| n.server.as_ref().map(|(s, _)| s)).collect();
        self.checker
            .check_settled(now, &self.slices, servers.into_iter())
            .map_err(|e| (self.tick, format!("liveness: {e}")))
    }

    /// One tick of the whole world, then the checks.
    pub fn step(&mut self) -> Result<(), String> {
        let now = self.now_us();
        self.restart_due();
        self.deliver(now)?;
        self.checker.check_restored(now, &self.slices, self.servers())?;
        self.drive_bots(now);
        let ids: Vec<ServerId> = self.nodes.keys().copied().collect();
        for id in &ids {
            if let Some((server, _)) = self.nodes.get_mut(id).and_then(|n| n.server.as_mut()) {
                server.tick(now);
            }
            self.drain_events(*id);
        }
        for slice in &mut self.slices {
            slice.tick(now);
        }
        self.pump_peers();
        if !self.calm {
            self.inject_faults(now);
        }
        self.pump_peers();
        self.transmit(now)?;
        self.stats.ticks += 1;
        if self.cfg.verbose && self.tick % 30 == 29 {
            self.status_line(now);
        }
        let servers = self.nodes.values().filter_map(|n| n.server.as_ref().map(|(s, _)| s));
        self.checker.check_step(now, &self.slices, servers)?;
        self.tick += 1;
        Ok(())
    }

    /// Once a simulated second, in verbose runs: where the world stands.
    fn status_line(&mut self, now: u64) {
        let acting = self.servers().filter(|s| s.is_acting(now)).count();
        let held: usize = self.servers().filter(|s| s.is_acting(now)).map(|s| s.held().len()).sum();
        let entities: usize = self.slices.iter().map(|s| s.records().len()).sum();
        let orphans: usize = self.slices.iter().map(|s| s.orphans().len()).sum();
        let map = self.slices[0].map();
        let (regions, epoch) = (map.regions().len(), map.epoch);
        let transfers = self.layer_total(|s| s.transfers_out);
        let (handoffs, commits, stale) =
            (self.layer_total(|s| s.handoffs), self.layer_total(|s| s.commits), self.layer_total(|s| s.stale_rejected));
        let in_flight = self.net.in_flight();
        self.event(format_args!(
            "status: servers={acting}/{} entities={entities} held={held} orphans={orphans} regions={regions} map_epoch={epoch} handoffs={handoffs} transfers={transfers} commits={commits} stale_rejected={stale} packets_in_flight={in_flight}",
            self.nodes.len(),
        ));
    }

    fn restart_due(&mut self) {
        let now = self.now_us();
        let due: Vec<ServerId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.server.is_none() && n.restart_at_tick.is_some_and(|t| t <= self.tick))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let inc = self.next_incarnation;
            self.next_incarnation += 1;
            let mut server = Server::new(id, Incarnation(inc), now).with_streaming(self.streaming.clone());
            server.planted_ignore_lease = self.cfg.planted_server_ignores_lease;
            let node = self.nodes.get_mut(&id).expect("node exists");
            node.server = Some((server, Link::new(inc)));
            node.restart_at_tick = None;
            self.stats.restarts += 1;
            self.event(format_args!("{id} starts as incarnation {inc}"));
        }
    }

    fn deliver(&mut self, now: u64) -> Result<(), String> {
        while let Some((from, to, packet)) = self.net.pop_due(now) {
            match to {
                Endpoint::Replication => {
                    let Endpoint::Server(sid) = from else { unreachable!("the layer talks only to servers") };
                    let link = self.rl_links.entry(sid).or_insert_with(|| Link::new(REPLICATION_SESSION));
                    link.handle_packet(&packet);
                    let mut messages = Vec::new();
                    while let Some(bytes) = link.poll_deliver() {
                        messages.push(bytes);
                    }
                    for bytes in messages {
                        match decode::<ToReplication>(&bytes) {
                            Ok(msg) => self.home(sid).handle(now, msg),
                            Err(_) => self.stats.decode_errors += 1,
                        }
                    }
                    self.pump_peers();
                }
                Endpoint::Server(sid) => {
                    let Some((server, link)) = self.nodes.get_mut(&sid).and_then(|n| n.server.as_mut()) else {
                        continue;
                    };
                    link.handle_packet(&packet);
                    while let Some(bytes) = link.poll_deliver() {
                        match decode::<ToServer>(&bytes) {
                            Ok(msg) => {
                                let adopted_before = server.stats.adopted;
                                server.handle(now, msg);
                                self.stats.adopted += server.stats.adopted - adopted_before;
                            }
                            Err(_) => self.stats.decode_errors += 1,
                        }
                    }
                    self.drain_events(sid);
                }
            }
        }
        Ok(())
    }

    /// Folds the counters of a server incarnation that has ended (or the run has) into the run's.
    fn add(stats: &mut SimStats, server: &crate::protocol::ServerStats) {
        stats.hits += server.hits;
        stats.remote_hits += server.remote_hits;
        stats.damage_received += server.damage_received;
        for (total, n) in stats.actions.iter_mut().zip(server.actions) {
            *total += n;
        }
    }

    fn drain_events(&mut self, id: ServerId) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let Some((server, _)) = node.server.as_mut() else { return };
        let stats = server.stats;
        if let Some(ServerEvent::Fenced) = server.poll_event() {
            let inc = server.incarnation();
            Self::add(&mut self.stats, &stats);
            node.server = None;
            node.restart_at_tick = Some(self.tick + 1);
            self.stats.fenced += 1;
            self.event(format_args!("{id} incarnation {} fenced, restarting", inc.0));
        }
    }

    fn drive_bots(&mut self, now: u64) {
        let mut inputs = Vec::new();
        for node in self.nodes.values_mut() {
            let Some((server, _)) = node.server.as_mut() else { continue };
            if !server.is_acting(now) {
                continue;
            }
            inputs.clear();
            for (id, held) in server.held() {
                if !held.state.kind.is_driven() {
                    continue;
                }
                if self.calm {
                    if held.state.parent.is_none() {
                        inputs.push(Input { entity: *id, action: Action::Move([0.0; 3]) });
                    }
                } else {
                    crate::bots::inputs_for(
                        &mut self.rng,
                        *id,
                        held.state.kind,
                        crate::bots::SIM_ACTIVITY,
                        &mut inputs,
                    );
                }
            }
            self.stats.inputs += inputs.len() as u64;
            for input in inputs.drain(..) {
                server.handle_input(input);
            }
        }
    }

    fn inject_faults(&mut self, now: u64) {
        let ids: Vec<ServerId> = self.nodes.keys().copied().collect();
        for id in ids {
            if self.rng.random_bool(self.plan.crash_per_tick) {
                let node = self.nodes.get_mut(&id).expect("node exists");
                if let Some((server, _)) = node.server.take() {
                    Self::add(&mut self.stats, &server.stats);
                    let down = self.rng.random_range(self.plan.restart_ticks.0..=self.plan.restart_ticks.1);
                    node.restart_at_tick = Some(self.tick + down);
                    self.stats.crashes += 1;
                    let reported = self.rng.random_bool(self.plan.crash_reported);
                    if reported {
                        self.home(id).handle_crash_report(id, server.incarnation());
                    }
                    let how = if reported { "reported" } else { "silent" };
                    self.event(format_args!(
                        "{id} incarnation {} crashes ({how}), down {down} ticks",
                        server.incarnation().0
                    ));
                }
            }
            if self.rng.random_bool(self.plan.partition) {
                let ticks = self.rng.random_range(self.plan.partition_ticks.0..=self.plan.partition_ticks.1);
                self.net.partition(id, now + ticks * TICK_DURATION_US);
                self.stats.partitions += 1;
                self.event(format_args!("{id} cut off for {ticks} ticks"));
            }
        }
        if self.rng.random_bool(self.plan.region_ops_per_tick) {
            self.region_op();
        }
    }

    /// A random split, merge or move, as a controller reacting to load would make.
    fn region_op(&mut self) {
        let controller = &mut self.slices[0];
        let regions: Vec<_> = controller.map().regions().iter().map(|r| r.id).collect();
        let live: Vec<ServerId> = controller.live_everywhere().iter().copied().collect();
        let pick = self.rng.random_range(0..3);
        let region = regions[self.rng.random_range(0..regions.len())];
        let result = match pick {
            0 if regions.len() < SIM_REGION_COUNT_MAX => {
                self.slices[0].split_region(region).map(|(a, b)| format!("split {region} into {a} and {b}"))
            }
            1 => {
                let pairs = self.slices[0].map().mergeable_pairs();
                if pairs.is_empty() {
                    return;
                }
                let (a, b) = pairs[self.rng.random_range(0..pairs.len())];
                self.slices[0].merge_regions(a, b).map(|m| format!("merge {a} and {b} into {m}"))
            }
            2 if !live.is_empty() => {
                let to = live[self.rng.random_range(0..live.len())];
                self.slices[0].move_region(region, to).map(|_| format!("move {region} to {to}"))
            }
            _ => return,
        };
        self.stats.region_ops += 1;
        match result {
            Ok(text) => {
                let epoch = self.slices[0].map().epoch;
                self.event(format_args!("controller: {text} (map epoch {epoch})"))
            }
            Err(e) => self.event(format_args!("controller: refused: {e}")),
        }
    }

    fn transmit(&mut self, now: u64) -> Result<(), String> {
        for slice in &mut self.slices {
            while let Some(msg) = slice.poll_message() {
                let server = msg.server;
                let Some(link) = self.rl_links.get_mut(&server) else { continue };
                link.send(encode(&msg)).map_err(|e| format!("link to {server}: {e}"))?;
            }
        }
        let sids: Vec<ServerId> = self.rl_links.keys().copied().collect();
        for sid in sids {
            while let Some(packet) = self.rl_links.get_mut(&sid).expect("listed").poll_transmit(now) {
                self.net.send(&mut self.rng, &self.net_plan, now, Endpoint::Replication, Endpoint::Server(sid), packet);
            }
        }
        let ids: Vec<ServerId> = self.nodes.keys().copied().collect();
        for sid in ids {
            let Some((server, link)) = self.nodes.get_mut(&sid).and_then(|n| n.server.as_mut()) else { continue };
            while let Some(msg) = server.poll_message() {
                link.send(encode(&msg)).map_err(|e| format!("link from {sid}: {e}"))?;
            }
            let mut packets = Vec::new();
            while let Some(packet) = link.poll_transmit(now) {
                packets.push(packet);
            }
            for packet in packets {
                self.net.send(&mut self.rng, &self.net_plan, now, Endpoint::Server(sid), Endpoint::Replication, packet);
            }
        }
        Ok(())
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
