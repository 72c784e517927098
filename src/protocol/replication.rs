//! The replication layer (RL): the master record of every entity, the authority table and the
//! region map, with the mesh controller's region operations. Servers are disposable; this is not.
//!
//! The layer is cut into slices, one per core: a slice holds the records of the entities whose
//! authority is a server on its core (server `s` lives on core `s mod slices`), so a server's
//! deltas never leave its core and no lock or thread is shared by all. A subtree whose new
//! authority lives on another core moves there whole (`SliceMsg::Transfer`). Slice 0 is also the
//! controller: it alone changes the region map and sends it to the others.
//!
//! It commits a server's write only if the server holds the entity's current authority epoch,
//! so a late message from a former owner changes nothing. It gives a dead server's regions and
//! entities to live servers only after the server's lease has surely run out, so two servers
//! never act on one entity at once.
//!
//! Invariants (checked by `check`): the entity graph is a forest whose children share their
//! parent's authority; every committed state was written under the entity's current epoch; the
//! regions tile the world.

mod check;
mod checkpoint;
mod controller;
mod ghosts;
mod inputs;
mod placement;
mod sessions;
mod streaming;
mod writes;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use super::journal::{Checkpointing, JournalOp, SliceSnapshot};
use super::messages::{
    subtree_ranges, Committed, Delta, Epoch, Ghost, Incarnation, Owned, Presence, ReplicationMsg, ServerMsg, SliceId,
    SliceMsg, ToReplication, ToServer,
};
pub use crate::limits::{BALANCE_PERIOD_US, BALANCE_SLACK_ENTITIES};
use crate::limits::{
    BATCH_ENTITIES_MAX, BATCH_LOOKBACK, CRASH_RESTART_WAIT_MAX_US, LEASE_DURATION_US, TRANSFER_HOPS_MAX,
};
use crate::world::{
    is_streamed, ContainerId, EntityId, EntityKind, EntityMap, EntityState, Forest, MapError, RegionId, RegionLoad,
    RegionMap, ServerId, StreamIndex,
};

#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub state: EntityState,
    pub authority: Option<ServerId>,
    pub epoch: Epoch,
    /// The epoch the committed state was written under.
    pub committed_epoch: Epoch,
    /// Bumped on every committed change; never goes back.
    pub commit_seq: u64,
}

/// A slice's count of what it holds per region, taken a share each tick over a balancing period
/// (`Replication::census_step`).
#[derive(Debug, Default)]
struct Census {
    /// Counting this period (the records of its start are in `ids`).
    counting: bool,
    /// The map epoch the count is of.
    epoch: u64,
    ids: Vec<EntityId>,
    /// How far into `ids` the count is.
    next: usize,
    loads: BTreeMap<RegionId, RegionLoad>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServerSlot {
    pub incarnation: Incarnation,
    pub create_epoch: Epoch,
    pub last_heard_us: u64,
    pub live: bool,
    fenced_sent: bool,
    /// Crashed, with a fresh incarnation due: the controller is told only if none registers by
    /// this time (see `CRASH_RESTART_WAIT_MAX_US`).
    restart_due_us: Option<u64>,
}

/// Deliberate bugs, for tests that prove the simulator catches a broken protocol. Off in every
/// real configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// Commit writes without checking the writer's authority and epoch.
    pub skip_authority_check: bool,
    /// Declare a silent server dead after a third of its lease, while it may still be acting.
    pub short_lease: bool,
    /// Take accounts' logins and logouts in the order heard, not by session number.
    pub sessions_out_of_order: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicationStats {
    pub commits: u64,
    pub created: u64,
    pub destroyed: u64,
    pub handoffs: u64,
    pub grants: u64,
    /// Writes refused because the writer no longer had authority: expected after failovers.
    pub stale_rejected: u64,
    /// Messages that a correct live server never sends; counted, refused, and an alarm.
    pub protocol_errors: u64,
    pub servers_declared_dead: u64,
    /// Controller: logical servers it started and retired (the lifecycle).
    pub servers_started: u64,
    pub servers_retired: u64,
    /// Controller: regions it split, merged, and gave to another live server (balancing, a
    /// retirement, or asked; a dead server's regions given to heirs are failovers, not moves).
    pub regions_split: u64,
    pub regions_merged: u64,
    /// Splits that cut through a room (a crowd in one room, cut into cells of space); the other
    /// splits ran along walls or through open space.
    pub rooms_cut: u64,
    /// Load moved between servers by the controller: a region given to another server, or the
    /// border between two regions moved (`RegionMap::shift_border`, the slab between changing
    /// server).
    pub regions_moved: u64,
    pub map_changes: u64,
    /// Subtrees sent to and taken from other slices.
    pub transfers_out: u64,
    pub transfers_in: u64,
    /// Item roots put to rest in an unloaded container, and woken when a server loaded it.
    pub parked: u64,
    pub woken: u64,
    /// Client inputs passed to the entity's server, and those whose entity was nowhere here
    /// (in flight between cores, or not a client's at all).
    pub inputs_routed: u64,
    /// Border ghosts given to this core's servers, and sent to other cores (the cost of cutting
    /// a crowd between servers: each side sees the other's edge every tick).
    pub ghosts_to_servers: u64,
    pub ghosts_to_cores: u64,
    pub inputs_lost: u64,
    /// Accounts: players made at a first login, sessions begun and ended as heard here, and
    /// players parked because their account logged out.
    pub players_created: u64,
    pub logins: u64,
    pub logouts: u64,
    pub players_parked: u64,
}

/// What a node does with its server slots, at its slice's word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Host this logical server from now on.
    Start(ServerId),
    /// Stop it for good: it holds nothing and owns no region.
    Retire(ServerId),
}

/// The controller's server lifecycle: how many logical servers it may run, and its hysteresis.
#[derive(Clone, Debug, Default)]
struct Lifecycles {
    /// Bounds on live servers; `max == 0` turns the lifecycle off (a fixed set of servers).
    min: usize,
    max: usize,
    /// Started and not yet registered; asked to retire and not yet gone.
    starting: BTreeSet<ServerId>,
    draining: BTreeSet<ServerId>,
    /// Balancing periods in a row the average load was over the high mark, under the low one.
    crowded: u32,
    quiet: u32,
    /// Balancing periods left to only watch after a move by measured work (`balance_by_work`).
    rest: u32,
    /// The map's epoch after the controller's last cuts: balancing waits for every slice's report
    /// under it (the sides' loads), not for a period of rest (a cut moves no work).
    cut_epoch: u64,
    /// Game time a tick is (the budget measured work is held against).
    tick_us: u64,
}

/// The work a core's servers and slice did, as its driver measured it (wall time): summed over
/// the ticks since the last load report.
#[derive(Clone, Copy, Debug, Default)]
struct Work {
    us: u64,
    ticks: u32,
}

/// The slice (core) that server `server` lives on, of `slices`.
pub fn home_slice(server: ServerId, slices: u16) -> SliceId {
    SliceId((server.0 % slices as u32) as u16)
}

pub struct Replication {
    slice: SliceId,
    slices: u16,
    /// The controller's view of which servers are live on any core (slice 0 only).
    live_everywhere: BTreeSet<ServerId>,
    peer_outbox: VecDeque<(SliceId, SliceMsg)>,
    /// Clients' inputs for the other slices: they carry no state of this slice's, so they may
    /// leave before the tick's commit (see `poll_peer_input`).
    input_outbox: VecDeque<(SliceId, SliceMsg)>,
    /// Controller: the last load report of each slice (where its entities are, per region), and
    /// the map epoch it was counted under.
    loads: Vec<(u64, BTreeMap<RegionId, RegionLoad>)>,
    /// Controller: each slice's last reported work a tick (µs; `None`: not measured).
    work_reported: Vec<Option<u32>>,
    /// The work noted since this slice's last load report.
    work: Work,
    /// This tick's border ghosts of each live local server, and the last of each other slice.
    ghosts_local: BTreeMap<ServerId, Vec<Ghost>>,
    ghosts_remote: Vec<Vec<Ghost>>,
    /// Where each live local server's players stand near a border (its last report), and each
    /// other slice's servers' (by slice).
    presence_local: BTreeMap<ServerId, Vec<[f32; 3]>>,
    presence_remote: Vec<Vec<Presence>>,
    ticks: u64,
    /// Ticks between load reports and balancing moves (`BALANCE_PERIOD_US` of game time).
    balance_every_ticks: u64,
    /// The load report being counted over the period.
    census: Census,
    map: RegionMap,
    records: EntityMap<Record>,
    forest: Forest,
    servers: BTreeMap<ServerId, ServerSlot>,
    next_epoch: u64,
    /// Roots whose region has no live server yet.
    orphans: BTreeSet<EntityId>,
    outbox: VecDeque<ToServer>,
    pub stats: ReplicationStats,
    pub planted: PlantedBugs,
    /// Whether the controller evens out load (on by default; a benchmark that lays out regions
    /// by hand turns it off).
    pub balancing: bool,
    /// Controller: servers started and retired with the load.
    lifecycles: Lifecycles,
    /// Home slice: servers to retire once they hold nothing, those retired (a registration still
    /// on its way from one is refused), and what the node is to do.
    retiring: BTreeSet<ServerId>,
    retired: BTreeSet<ServerId>,
    lifecycle: VecDeque<Lifecycle>,
    /// What the first protocol error was, for the report.
    pub first_protocol_error: Option<String>,
    /// Changes for the replication log, in order (`None`: no log).
    journal: Option<Vec<JournalOp>>,
    checkpoints: Checkpointing,
    /// Container streaming, when on: which containers each local server has loaded, and the
    /// loose item roots at rest (no authority) in containers their region's server has not.
    streaming: Option<Arc<StreamIndex>>,
    loaded: BTreeMap<ServerId, BTreeSet<ContainerId>>,
    dormant: BTreeMap<ContainerId, BTreeSet<EntityId>>,
    /// Accounts' players: the newest session heard of each (number, logged in), and those
    /// parked here while their account is logged out (see `sessions`).
    sessions: EntityMap<(u64, bool)>,
    offline: BTreeSet<EntityId>,
}

impl Replication {
    /// A layer of one slice holding the world's starting entities (parents listed before
    /// children), none of them assigned until servers register.
    pub fn new(map: RegionMap, initial: Vec<(EntityId, EntityState)>) -> Self {
        Self::new_slice(SliceId(0), 1, map, initial)
    }

    /// Slice `slice` of `slices`. The starting entities go to slice 0, which places them.
    pub fn new_slice(slice: SliceId, slices: u16, map: RegionMap, initial: Vec<(EntityId, EntityState)>) -> Self {
        let initial = initial.into_iter().map(|(id, state)| Committed { id, state, commit_seq: 1 }).collect();
        Self::restore_slice(slice, slices, map, initial)
    }

    /// Slice `slice` of `slices`, holding `initial` (slice 0 only, parents first) with the commit
    /// counters they had: a world read back from the replication log.
    pub fn restore_slice(slice: SliceId, slices: u16, map: RegionMap, initial: Vec<Committed>) -> Self {
        assert!(slice.0 < slices && slices <= 256, "slice {slice} of {slices}");
        assert!(slice.0 == 0 || initial.is_empty(), "starting entities belong to slice 0");
        let mut rl = Self {
            slice,
            slices,
            live_everywhere: BTreeSet::new(),
            peer_outbox: VecDeque::new(),
            input_outbox: VecDeque::new(),
            loads: vec![(0, BTreeMap::new()); slices as usize],
            work_reported: vec![None; slices as usize],
            work: Work::default(),
            ghosts_local: BTreeMap::new(),
            ghosts_remote: vec![Vec::new(); slices as usize],
            presence_local: BTreeMap::new(),
            presence_remote: vec![Vec::new(); slices as usize],
            ticks: 0,
            balance_every_ticks: crate::limits::ticks_in(BALANCE_PERIOD_US, crate::limits::TICK_DURATION_US),
            census: Census::default(),
            map,
            records: EntityMap::default(),
            forest: Forest::default(),
            servers: BTreeMap::new(),
            next_epoch: 1,
            orphans: BTreeSet::new(),
            outbox: VecDeque::new(),
            stats: ReplicationStats::default(),
            planted: PlantedBugs::default(),
            balancing: true,
            lifecycles: Lifecycles { tick_us: crate::limits::TICK_DURATION_US, ..Default::default() },
            retiring: BTreeSet::new(),
            retired: BTreeSet::new(),
            lifecycle: VecDeque::new(),
            first_protocol_error: None,
            journal: None,
            checkpoints: Checkpointing::new(slices, 0),
            streaming: None,
            loaded: BTreeMap::new(),
            dormant: BTreeMap::new(),
            sessions: EntityMap::default(),
            offline: BTreeSet::new(),
        };
        for Committed { id, state, commit_seq } in initial {
            match state.parent {
                Some(p) => {
                    assert!(rl.records.contains_key(&p), "initial entity {id} listed before its parent {p}");
                    rl.forest.link(id, p);
                }
                // Nobody is logged in yet: accounts' players rest until their accounts are.
                None if id.account().is_some() && state.kind == EntityKind::Player => {
                    rl.offline.insert(id);
                }
                None => {
                    rl.orphans.insert(id);
                }
            }
            let record = Record { state, authority: None, epoch: Epoch(0), committed_epoch: Epoch(0), commit_seq };
            assert!(rl.records.insert(id, record).is_none(), "entity {id} listed twice");
        }
        rl
    }

    pub fn map(&self) -> &RegionMap {
        &self.map
    }

    /// A slice whose ticks are `tick_us` of game time each: its periods (load reports and
    /// balancing) last as long at any tick rate.
    pub fn set_tick_us(&mut self, tick_us: u64) {
        self.balance_every_ticks = crate::limits::ticks_in(BALANCE_PERIOD_US, tick_us);
        self.lifecycles.tick_us = tick_us;
    }

    /// The wall time this core's servers and slice worked in the tick just run, as the driver
    /// measured it (the runtime does; the simulator and tests do not, and the controller then
    /// judges load by entity counts alone). Reported to the controller with the load, a period's
    /// mean: what a crowd costs, which a count cannot tell.
    pub fn note_work(&mut self, us: u64) {
        self.work.us = self.work.us.saturating_add(us);
        self.work.ticks = self.work.ticks.saturating_add(1);
    }

    /// Turns container streaming on (servers must stream with the same index): a loose item
    /// goes to its region's server only while that server has its container loaded, and rests
    /// here, with no authority, while it has not.
    pub fn with_streaming(mut self, index: Arc<StreamIndex>) -> Self {
        self.streaming = Some(index);
        self
    }

    /// Loose item roots at rest, by container.
    pub fn dormant(&self) -> &BTreeMap<ContainerId, BTreeSet<EntityId>> {
        &self.dormant
    }

    /// Entities at rest: the dormant roots and their contents.
    pub fn dormant_entities(&self) -> usize {
        self.dormant.values().flatten().map(|root| self.forest.subtree(*root).len()).sum()
    }

    /// The containers `server` (on this core) has loaded.
    pub fn loaded_by(&self, server: ServerId) -> Option<&BTreeSet<ContainerId>> {
        self.loaded.get(&server)
    }

    pub fn records(&self) -> &EntityMap<Record> {
        &self.records
    }

    pub fn forest(&self) -> &Forest {
        &self.forest
    }

    pub fn servers(&self) -> &BTreeMap<ServerId, ServerSlot> {
        &self.servers
    }

    /// Controller: every live server, on any core.
    pub fn live_everywhere(&self) -> &BTreeSet<ServerId> {
        &self.live_everywhere
    }

    /// Live servers on this slice's core.
    pub fn live_servers(&self) -> impl Iterator<Item = ServerId> + '_ {
        self.servers.iter().filter(|(_, s)| s.live).map(|(id, _)| *id)
    }

    pub fn orphans(&self) -> &BTreeSet<EntityId> {
        &self.orphans
    }

    /// Controller: run between `min` and `max` logical servers, starting one where load cannot be
    /// evened out and retiring one once load stays low (`max == 0`: a fixed set, the default).
    pub fn set_server_bounds(&mut self, min: usize, max: usize) {
        self.lifecycles.min = min;
        self.lifecycles.max = max;
    }

    /// What the node is to do with its server slots (servers to start and to retire).
    pub fn poll_lifecycle(&mut self) -> Option<Lifecycle> {
        self.lifecycle.pop_front()
    }

    /// Whether `id` is at rest on this slice: in a container no server has loaded, held by no
    /// server by design (not waiting for one).
    pub fn is_at_rest(&self, id: EntityId) -> bool {
        let Some(index) = &self.streaming else { return false };
        let Some(root) = crate::world::entity::root_of(id, |e| self.records.get(&e).map(|r| r.state.parent)) else {
            return false;
        };
        let Some(record) = self.records.get(&root) else { return false };
        record.authority.is_none()
            && self.dormant.get(&index.locate(record.state.pos())).is_some_and(|roots| roots.contains(&root))
    }

    /// What this slice has `server` hold, as committed, projectiles left out (they end by
    /// themselves): what must be simulated again if it dies.
    pub fn held_by(&self, server: ServerId) -> Vec<EntityId> {
        let mut held: Vec<EntityId> = self
            .records
            .iter()
            .filter(|(_, r)| r.authority == Some(server) && r.state.kind != EntityKind::Projectile)
            .map(|(id, _)| *id)
            .collect();
        held.sort_unstable();
        held
    }

    /// The subtrees waiting for a server (their last holder died or handed them off, or they
    /// arrived from another slice), as committed: what a client is shown of them meanwhile.
    pub fn in_flight(&self) -> impl Iterator<Item = (EntityId, &EntityState)> + '_ {
        self.orphans
            .iter()
            .flat_map(|root| self.forest.subtree(*root))
            .filter_map(|id| self.records.get(&id).map(|r| (id, &r.state)))
    }

    pub fn poll_message(&mut self) -> Option<ToServer> {
        self.outbox.pop_front()
    }

    /// The next message for another slice (clients' inputs first).
    pub fn poll_peer(&mut self) -> Option<(SliceId, SliceMsg)> {
        self.input_outbox.pop_front().or_else(|| self.peer_outbox.pop_front())
    }

    /// The next client input for another slice. Inputs change no record, so nothing of them needs
    /// to be in the log before they leave: a shard sends them on as soon as its gateway routes
    /// them, and the slice that holds the player applies them in the same tick.
    pub fn poll_peer_input(&mut self) -> Option<(SliceId, SliceMsg)> {
        self.input_outbox.pop_front()
    }

    pub fn slice(&self) -> SliceId {
        self.slice
    }

    pub fn is_controller(&self) -> bool {
        self.slice.0 == 0
    }

    /// The slice (core) a server lives on.
    pub fn home_of(&self, server: ServerId) -> SliceId {
        home_slice(server, self.slices)
    }

    /// Epochs carry the slice in their low byte, so slices never draw the same one.
    fn fresh_epoch(&mut self) -> Epoch {
        self.next_epoch += 1;
        Epoch((self.next_epoch << 8) | self.slice.0 as u64)
    }

    fn send(&mut self, server: ServerId, body: ReplicationMsg) {
        let Some(slot) = self.servers.get(&server) else { return };
        self.outbox.push_back(ToServer { server, incarnation: slot.incarnation, body });
    }

    fn is_live(&self, server: ServerId, incarnation: Incarnation) -> bool {
        self.servers.get(&server).is_some_and(|s| s.live && s.incarnation == incarnation)
    }

    pub fn handle(&mut self, now_us: u64, msg: ToReplication) {
        let (server, inc) = (msg.server, msg.incarnation);
        match msg.body {
            ServerMsg::Register => self.register(now_us, server, inc),
            ServerMsg::Heartbeat { sent_at_us } => {
                if self.is_live(server, inc) {
                    self.servers.get_mut(&server).expect("live").last_heard_us = now_us;
                    self.send(server, ReplicationMsg::Lease { sent_at_us });
                }
            }
            ServerMsg::Deltas { entries, .. } => {
                for entry in entries {
                    match entry {
                        Delta::Upsert(owned) => self.upsert(server, inc, owned),
                        Delta::Destroy { id, epoch } => self.destroy(server, inc, id, epoch),
                    }
                }
            }
            ServerMsg::Handoff { entities } => self.handoff(server, inc, entities),
            ServerMsg::Ghosts { ghosts, presence } => {
                if self.is_live(server, inc) {
                    self.ghosts_local.insert(server, ghosts);
                    self.presence_local.insert(server, presence);
                }
            }
            ServerMsg::Hit { target, damage } => {
                if self.is_live(server, inc) && !self.deliver_damage(target, damage) {
                    for slice in (0..self.slices).map(SliceId).filter(|s| *s != self.slice) {
                        self.peer_outbox.push_back((slice, SliceMsg::Hit { target, damage }));
                    }
                }
            }
            ServerMsg::Load { container } => self.load_container(server, inc, container),
            ServerMsg::Unload { container, roots } => self.unload_container(server, inc, container, roots),
        }
        self.tell_fenced(server, inc);
    }

    /// A dead incarnation that is still talking learns it is dead, once.
    fn tell_fenced(&mut self, server: ServerId, inc: Incarnation) {
        let Some(slot) = self.servers.get_mut(&server) else { return };
        if slot.incarnation == inc && !slot.live && !slot.fenced_sent {
            slot.fenced_sent = true;
            self.send(server, ReplicationMsg::Fenced);
        }
    }

    fn register(&mut self, now_us: u64, server: ServerId, inc: Incarnation) {
        if self.retired.contains(&server) {
            self.stats.stale_rejected += 1;
            return;
        }
        if let Some(slot) = self.servers.get(&server) {
            if inc <= slot.incarnation {
                self.stats.stale_rejected += 1;
                return;
            }
            if slot.live {
                // A new incarnation proves the old one is gone.
                self.declare_dead(server);
            }
        }
        // Back within the wait after a crash: it takes over the containers its predecessor had
        // loaded, so their items go to it with everything else, at once.
        let restarting = self.servers.get(&server).is_some_and(|s| s.restart_due_us.is_some());
        let loaded: Vec<ContainerId> = match restarting {
            true => self.loaded.get(&server).map(|l| l.iter().copied().collect()).unwrap_or_default(),
            false => {
                self.loaded.remove(&server);
                Vec::new()
            }
        };
        let create_epoch = self.fresh_epoch();
        let slot = ServerSlot {
            incarnation: inc,
            create_epoch,
            last_heard_us: now_us,
            live: true,
            fenced_sent: false,
            restart_due_us: None,
        };
        self.servers.insert(server, slot);
        let map = self.map.clone();
        self.send(server, ReplicationMsg::Welcome { create_epoch, map, loaded });
        self.tell_controller(SliceMsg::ServerUp { server });
    }

    /// The host's supervisor saw this incarnation die (its thread or process is gone), so it
    /// cannot act any more and nothing need wait for its lease: its regions and entities move
    /// now, within the tick.
    ///
    /// When the host restarts it by `restart_at_us` and that is soon (`CRASH_RESTART_WAIT_MAX_US`),
    /// its regions wait for the fresh incarnation, which adopts its entities here; the controller
    /// is told only if it is not back in time.
    pub fn handle_crash_report(
        &mut self,
        now_us: u64,
        server: ServerId,
        incarnation: Incarnation,
        restart_at_us: Option<u64>,
    ) {
        if !self.is_live(server, incarnation) {
            return;
        }
        let wait_until = now_us + CRASH_RESTART_WAIT_MAX_US;
        match restart_at_us.filter(|at| *at <= wait_until) {
            Some(_) => {
                self.servers.get_mut(&server).expect("live").restart_due_us = Some(wait_until);
                self.fence_and_orphan(server, true);
            }
            None => self.declare_dead(server),
        }
    }

    /// One subtree transferred from another slice: recorded, then placed.
    fn receive_transfer(&mut self, entities: Vec<Committed>, hops: u8) {
        let root = entities[0].id;
        if let Some(dup) = entities.iter().find(|c| self.records.contains_key(&c.id)) {
            // Two slices holding one entity is a duplicate: refuse it loudly, never panic.
            let (id, slice) = (dup.id, self.slice);
            self.protocol_error(|| format!("{id} transferred to {slice}, which already holds it"));
            return;
        }
        for c in entities {
            if let Some(p) = c.state.parent {
                self.forest.link(c.id, p);
            }
            let epoch = Epoch(0);
            let record =
                Record { state: c.state, authority: None, epoch, committed_epoch: epoch, commit_seq: c.commit_seq };
            if let Some(j) = &mut self.journal {
                j.push(JournalOp::Put(c.id));
            }
            self.records.insert(c.id, record);
        }
        self.stats.transfers_in += 1;
        self.place(root, hops);
    }

    /// A message from another slice.
    pub fn handle_peer(&mut self, from: SliceId, msg: SliceMsg) {
        match msg {
            SliceMsg::Transfer { hops, entities } => {
                let Some(subtrees) = subtree_ranges(&entities, |c| c.state.parent.is_none()) else {
                    let slice = self.slice;
                    self.protocol_error(|| format!("a transfer to {slice} that does not begin with a root"));
                    return;
                };
                let mut entities = entities.into_iter();
                for range in subtrees {
                    let subtree: Vec<Committed> = entities.by_ref().take(range.len()).collect();
                    self.receive_transfer(subtree, hops);
                }
            }
            SliceMsg::Map(map) => self.apply_map(map),
            SliceMsg::ServerUp { server } => self.controller_server_up(server),
            SliceMsg::ServerDown { server } => self.controller_server_down(server),
            SliceMsg::StartServer { server } => {
                if self.home_of(server) == self.slice && !self.servers.get(&server).is_some_and(|s| s.live) {
                    self.retired.remove(&server);
                    self.lifecycle.push_back(Lifecycle::Start(server));
                }
            }
            SliceMsg::RetireServer { server } => {
                if self.home_of(server) == self.slice {
                    self.retiring.insert(server);
                }
            }
            SliceMsg::Ghosts { ghosts, presence } => {
                if let Some(slot) = self.ghosts_remote.get_mut(from.0 as usize) {
                    *slot = ghosts;
                }
                if let Some(slot) = self.presence_remote.get_mut(from.0 as usize) {
                    *slot = presence;
                }
            }
            SliceMsg::Hit { target, damage } => {
                self.deliver_damage(target, damage);
            }
            SliceMsg::Load { epoch, regions, work_us } => {
                if let Some(load) = self.loads.get_mut(from.0 as usize) {
                    *load = (epoch, regions.into_iter().map(|r| (r.region, r)).collect());
                }
                if let Some(work) = self.work_reported.get_mut(from.0 as usize) {
                    *work = work_us;
                }
            }
            SliceMsg::Marker { round } => {
                if self.journal.is_none() {
                    return;
                }
                if round > self.checkpoints.taken {
                    self.take_snapshot(round);
                }
                if let Some(m) = self.checkpoints.markers.get_mut(from.0 as usize) {
                    *m = (*m).max(round);
                }
                self.complete_checkpoint();
            }
            SliceMsg::Session { player, session, online } => self.apply_session(player, session, online),
            SliceMsg::Input { entity, seq, action } => {
                // Every other slice hears it; only the one that holds the entity acts.
                if self.records.contains_key(&entity) && !self.deliver_input(entity, seq, &action) {
                    self.stats.inputs_lost += 1;
                }
            }
            SliceMsg::Checkpointed { round } => {
                if let Some(c) = self.checkpoints.completed.get_mut(from.0 as usize) {
                    *c = (*c).max(round);
                }
            }
        }
    }

    /// Lease checks, then the controller's standing policy: every region has a live server,
    /// an idle server takes a region from the busiest, orphans find their new owner.
    pub fn tick(&mut self, now_us: u64) {
        let lease = if self.planted.short_lease { LEASE_DURATION_US / 3 } else { LEASE_DURATION_US };
        let expired: Vec<ServerId> = self
            .servers
            .iter()
            .filter(|(_, s)| s.live && now_us > s.last_heard_us + lease)
            .map(|(id, _)| *id)
            .collect();
        for server in expired {
            self.declare_dead(server);
        }
        let overdue: Vec<ServerId> = self
            .servers
            .iter_mut()
            .filter(|(_, s)| !s.live && s.restart_due_us.is_some_and(|due| now_us > due))
            .map(|(id, s)| {
                s.restart_due_us = None;
                *id
            })
            .collect();
        for server in overdue {
            self.loaded.remove(&server);
            self.tell_controller(SliceMsg::ServerDown { server });
        }
        self.retire_drained();
        self.ticks += 1;
        let period_done = self.ticks % self.balance_every_ticks;
        if period_done != 0 {
            self.census_step(self.balance_every_ticks - period_done + 1);
        } else {
            let regions = self.region_counts();
            let work = std::mem::take(&mut self.work);
            let work_us = (work.ticks > 0).then(|| (work.us / work.ticks as u64).min(u32::MAX as u64) as u32);
            self.tell_controller(SliceMsg::Load { epoch: self.map.epoch, regions, work_us });
        }
        if self.is_controller() {
            self.controller_tick();
        }
        self.place_orphans();
        self.share_ghosts();
    }
}
