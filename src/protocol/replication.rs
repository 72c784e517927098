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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use super::journal::{Checkpointing, JournalOp, SliceSnapshot};
use super::messages::{
    Committed, Delta, Epoch, Ghost, Incarnation, Owned, ReplicationMsg, ServerMsg, SliceId, SliceMsg, ToReplication,
    ToServer,
};
pub use crate::limits::{BALANCE_PERIOD_TICKS, BALANCE_SLACK_ENTITIES};
use crate::limits::{LEASE_DURATION_US, TRANSFER_HOPS_MAX};
use crate::world::{
    is_streamed, ContainerId, EntityId, EntityKind, EntityState, Forest, MapError, RegionId, RegionMap, ServerId,
    StreamIndex,
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

#[derive(Clone, Debug, PartialEq)]
pub struct ServerSlot {
    pub incarnation: Incarnation,
    pub create_epoch: Epoch,
    pub last_heard_us: u64,
    pub live: bool,
    fenced_sent: bool,
}

/// Deliberate bugs, for tests that prove the simulator catches a broken protocol. Off in every
/// real configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// Commit writes without checking the writer's authority and epoch.
    pub skip_authority_check: bool,
    /// Declare a silent server dead after a third of its lease, while it may still be acting.
    pub short_lease: bool,
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
    pub inputs_lost: u64,
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
    /// Controller: the last load report of each slice (entities per region).
    loads: Vec<BTreeMap<RegionId, u32>>,
    /// This tick's border ghosts of each live local server, and the last of each other slice.
    ghosts_local: BTreeMap<ServerId, Vec<Ghost>>,
    ghosts_remote: Vec<Vec<Ghost>>,
    ticks: u64,
    map: RegionMap,
    records: BTreeMap<EntityId, Record>,
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
            loads: vec![BTreeMap::new(); slices as usize],
            ghosts_local: BTreeMap::new(),
            ghosts_remote: vec![Vec::new(); slices as usize],
            ticks: 0,
            map,
            records: BTreeMap::new(),
            forest: Forest::default(),
            servers: BTreeMap::new(),
            next_epoch: 1,
            orphans: BTreeSet::new(),
            outbox: VecDeque::new(),
            stats: ReplicationStats::default(),
            planted: PlantedBugs::default(),
            balancing: true,
            first_protocol_error: None,
            journal: None,
            checkpoints: Checkpointing::new(slices, 0),
            streaming: None,
            loaded: BTreeMap::new(),
            dormant: BTreeMap::new(),
        };
        for Committed { id, state, commit_seq } in initial {
            match state.parent {
                Some(p) => {
                    assert!(rl.records.contains_key(&p), "initial entity {id} listed before its parent {p}");
                    rl.forest.link(id, p);
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

    /// Turns the journal on: from now every change is recorded for the replication log, and
    /// checkpoints continue from `round` (the one the log was last opened at).
    pub fn enable_journal(&mut self, round: u64) {
        self.journal = Some(Vec::new());
        self.checkpoints = Checkpointing::new(self.slices, round);
    }

    /// The changes recorded since the last call, in order.
    pub fn drain_journal(&mut self) -> Vec<JournalOp> {
        self.journal.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn journal(&mut self, op: JournalOp) {
        if let Some(j) = &mut self.journal {
            j.push(op);
        }
    }

    /// The newest checkpoint round this slice has completed.
    pub fn checkpoint_done(&self) -> u64 {
        self.checkpoints.done
    }

    /// Controller: starts checkpoint round `n + 1` if the journal is on and every slice has
    /// completed round `n`; the round's number if it started.
    pub fn begin_checkpoint(&mut self) -> Option<u64> {
        let c = &self.checkpoints;
        if !self.is_controller() || self.journal.is_none() || c.completed.iter().any(|r| *r < c.taken) {
            return None;
        }
        let round = c.taken + 1;
        self.take_snapshot(round);
        Some(round)
    }

    /// The driver has stored this slice's snapshot for `round` durably.
    pub fn snapshot_stored(&mut self, round: u64) {
        self.checkpoints.stored = self.checkpoints.stored.max(round);
        self.complete_checkpoint();
    }

    /// Snapshots every record for `round`, then sends the round's marker on every link, so the
    /// snapshot holds exactly what this slice did before the marker.
    fn take_snapshot(&mut self, round: u64) {
        let mut entities = Vec::with_capacity(self.records.len());
        for (id, r) in &self.records {
            if r.state.parent.is_none() {
                for e in self.forest.subtree(*id) {
                    let r = &self.records[&e];
                    entities.push(Committed { id: e, state: r.state.clone(), commit_seq: r.commit_seq });
                }
            }
        }
        let snapshot = SliceSnapshot { round, slice: self.slice, slices: self.slices, map: self.map.clone(), entities };
        self.journal(JournalOp::Snapshot(Box::new(snapshot)));
        self.checkpoints.taken = round;
        self.checkpoints.markers[self.slice.0 as usize] = round;
        for slice in (0..self.slices).map(SliceId).filter(|s| *s != self.slice) {
            self.peer_outbox.push_back((slice, SliceMsg::Marker { round }));
        }
        self.complete_checkpoint();
    }

    /// This slice's part of the round is complete: the log records it. The controller hears of it
    /// only once that record is durable (`round_done_durable`): the next round lets each slice
    /// delete the files of the round before this one, which recovery needs until then.
    fn complete_checkpoint(&mut self) {
        if self.journal.is_some() && self.checkpoints.ready_to_complete() {
            let round = self.checkpoints.taken;
            self.checkpoints.done = round;
            self.journal(JournalOp::RoundDone(round));
        }
    }

    /// The driver has made this slice's record that `round` is complete durable.
    pub fn round_done_durable(&mut self, round: u64) {
        if round > self.checkpoints.reported && round <= self.checkpoints.done {
            self.checkpoints.reported = round;
            self.tell_controller(SliceMsg::Checkpointed { round });
        }
    }

    pub fn records(&self) -> &BTreeMap<EntityId, Record> {
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
            ServerMsg::Handoff { root, entities } => self.handoff(server, inc, root, entities),
            ServerMsg::Ghosts { ghosts } => {
                if self.is_live(server, inc) {
                    self.ghosts_local.insert(server, ghosts);
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
        self.loaded.remove(&server);
        let create_epoch = self.fresh_epoch();
        let slot = ServerSlot { incarnation: inc, create_epoch, last_heard_us: now_us, live: true, fenced_sent: false };
        self.servers.insert(server, slot);
        let map = self.map.clone();
        self.send(server, ReplicationMsg::Welcome { create_epoch, map });
        self.tell_controller(SliceMsg::ServerUp { server });
    }

    /// The host's supervisor saw this incarnation die (its thread or process is gone), so it
    /// cannot act any more and nothing need wait for its lease: its regions and entities move
    /// now, within the tick.
    pub fn handle_crash_report(&mut self, server: ServerId, incarnation: Incarnation) {
        if self.is_live(server, incarnation) {
            self.declare_dead(server);
        }
    }

    /// Whether `server` may write `id` under `epoch`.
    fn authorized(&self, server: ServerId, id: EntityId, epoch: Epoch) -> bool {
        if self.planted.skip_authority_check {
            return self.records.contains_key(&id);
        }
        self.records.get(&id).is_some_and(|r| r.authority == Some(server) && r.epoch == epoch)
    }

    fn refuse(&mut self, server: ServerId, inc: Incarnation, why: impl FnOnce() -> String) {
        if self.is_live(server, inc) {
            self.protocol_error(why);
        } else {
            self.stats.stale_rejected += 1;
        }
    }

    fn protocol_error(&mut self, why: impl FnOnce() -> String) {
        self.stats.protocol_errors += 1;
        if self.first_protocol_error.is_none() {
            self.first_protocol_error = Some(why());
        }
    }

    /// A projectile the server made: its id must carry the server's incarnation and its epoch
    /// the incarnation's creation epoch.
    fn admit_new(&mut self, server: ServerId, inc: Incarnation, owned: &Owned) -> bool {
        let slot_ok =
            self.servers.get(&server).is_some_and(|s| s.live && s.incarnation == inc && s.create_epoch == owned.epoch);
        let ok = self.planted.skip_authority_check
            || (slot_ok
                && owned.state.is_finite()
                && owned.state.kind == EntityKind::Projectile
                && owned.state.parent.is_none()
                && owned.id.creator_incarnation() == inc.0);
        if !ok {
            self.refuse(server, inc, || {
                format!("{server} created {} under {:?}, not its creation epoch", owned.id, owned.epoch)
            });
            return false;
        }
        let record = Record {
            state: owned.state.clone(),
            authority: Some(server),
            epoch: owned.epoch,
            committed_epoch: owned.epoch,
            commit_seq: 1,
        };
        self.records.insert(owned.id, record);
        self.journal(JournalOp::Put(owned.id));
        self.stats.created += 1;
        true
    }

    /// Whether `child` may sit under `parent` for a write by `server`.
    fn parent_allowed(&self, server: ServerId, child: EntityId, kind: EntityKind, parent: EntityId) -> bool {
        let Some(p) = self.records.get(&parent) else { return false };
        let siblings = self.forest.children(parent).filter(|c| *c != child).count();
        // No cycle: `child` must not be `parent` or above it (a walk up, at most the graph's depth).
        let mut above = Some(parent);
        for _ in 0..=crate::limits::GRAPH_DEPTH_MAX {
            match above {
                Some(a) if a == child => return false,
                Some(a) => above = self.records.get(&a).and_then(|r| r.state.parent),
                None => break,
            }
        }
        p.authority == Some(server) && p.state.kind.capacity_for(kind) > siblings && above.is_none()
    }

    fn commit(&mut self, owned: Owned) {
        let record = self.records.get_mut(&owned.id).expect("committed entities exist");
        let (old_parent, new_parent) = (record.state.parent, owned.state.parent);
        record.state = owned.state;
        record.committed_epoch = owned.epoch;
        record.commit_seq += 1;
        self.journal(JournalOp::Put(owned.id));
        if old_parent != new_parent {
            if let Some(p) = old_parent {
                self.forest.unlink(owned.id, p);
            }
            if let Some(p) = new_parent {
                self.forest.link(owned.id, p);
            }
        }
        self.stats.commits += 1;
    }

    /// Checks one write; true if it may be committed.
    fn admit_write(&mut self, server: ServerId, inc: Incarnation, owned: &Owned) -> bool {
        if !self.authorized(server, owned.id, owned.epoch) {
            self.stats.stale_rejected += 1;
            return false;
        }
        if !owned.state.is_finite() {
            self.refuse(server, inc, || format!("{server} wrote a non-finite state for {}", owned.id));
            return false;
        }
        let record = &self.records[&owned.id];
        if owned.state.changed_tick < record.state.changed_tick || owned.state.kind != record.state.kind {
            // Older than what is committed (a reordered or replayed write), or a kind change.
            self.stats.stale_rejected += 1;
            return false;
        }
        if let Some(p) = owned.state.parent {
            if !self.parent_allowed(server, owned.id, owned.state.kind, p) && !self.planted.skip_authority_check {
                self.refuse(server, inc, || format!("{server} put {} in {p}, which it may not", owned.id));
                return false;
            }
        }
        true
    }

    fn upsert(&mut self, server: ServerId, inc: Incarnation, owned: Owned) {
        // The common write, an entity that keeps its parent (anything moving, every tick), in
        // one lookup: its place in the graph was checked when it got that parent, and a child
        // shares its parent's authority, so only the writer's authority needs checking.
        if !self.planted.skip_authority_check && owned.state.is_finite() {
            match self.records.get_mut(&owned.id) {
                None => {
                    self.admit_new(server, inc, &owned);
                    return;
                }
                Some(r) if r.state.parent == owned.state.parent => {
                    let current = r.authority == Some(server) && r.epoch == owned.epoch;
                    if !current || owned.state.changed_tick < r.state.changed_tick || owned.state.kind != r.state.kind {
                        self.stats.stale_rejected += 1;
                        return;
                    }
                    r.state = owned.state;
                    r.committed_epoch = owned.epoch;
                    r.commit_seq += 1;
                    if let Some(j) = &mut self.journal {
                        j.push(JournalOp::Put(owned.id));
                    }
                    self.stats.commits += 1;
                    return;
                }
                Some(_) => {}
            }
        }
        if !self.records.contains_key(&owned.id) {
            self.admit_new(server, inc, &owned);
            return;
        }
        if self.admit_write(server, inc, &owned) {
            self.commit(owned);
        }
    }

    fn destroy(&mut self, server: ServerId, inc: Incarnation, id: EntityId, epoch: Epoch) {
        if !self.authorized(server, id, epoch) {
            self.stats.stale_rejected += 1;
            return;
        }
        if self.forest.child_count(id) > 0 {
            self.refuse(server, inc, || format!("{server} destroyed {id}, which still holds entities"));
            return;
        }
        let record = self.records.remove(&id).expect("authorized entities exist");
        if let Some(p) = record.state.parent {
            self.forest.unlink(id, p);
        }
        self.journal(JournalOp::Destroy { id, seq: record.commit_seq + 1 });
        self.orphans.remove(&id);
        self.stats.destroyed += 1;
    }

    fn handoff(&mut self, server: ServerId, inc: Incarnation, root: EntityId, entities: Vec<Owned>) {
        let first_is_root = entities.first().is_some_and(|o| o.id == root && o.state.parent.is_none());
        let all_authorized =
            entities.iter().all(|o| !self.records.contains_key(&o.id) || self.authorized(server, o.id, o.epoch));
        if !first_is_root || !all_authorized {
            self.refuse(server, inc, || format!("{server} handed off {root} without authority over all of it"));
            return;
        }
        let requested: BTreeSet<EntityId> = entities.iter().map(|o| o.id).collect();
        for owned in entities {
            if !self.records.contains_key(&owned.id) {
                if !self.admit_new(server, inc, &owned) {
                    continue;
                }
            } else if self.admit_write(server, inc, &owned) {
                self.commit(owned);
            }
        }
        if !self.records.contains_key(&root) {
            return;
        }
        let moving: BTreeSet<EntityId> = self.forest.subtree(root).into_iter().collect();
        if moving != requested {
            // Deltas travel before handoffs on one ordered link, so both views agree unless a
            // server is broken. The layer's own view is the one that moves.
            self.protocol_error(|| format!("{server} handed off {root} as {requested:?}, the layer has {moving:?}"));
        }
        self.stats.handoffs += 1;
        self.place(root, 0);
    }

    /// Gives `root`'s subtree to the owner of the region it is in: here, if that server lives on
    /// this core; by transfer to its core's slice if not; as an orphan if the region has no
    /// live owner yet.
    fn place(&mut self, root: EntityId, hops: u8) {
        let target = self.map.owner_at(self.records[&root].state.pos());
        match target {
            Some(t) if self.home_of(t) != self.slice && hops < TRANSFER_HOPS_MAX => self.transfer(root, t, hops),
            _ => self.grant(root, target),
        }
    }

    fn transfer(&mut self, root: EntityId, target: ServerId, hops: u8) {
        let ids = self.forest.subtree(root);
        let mut entities = Vec::with_capacity(ids.len());
        for id in ids {
            let record = self.records.remove(&id).expect("subtree entities exist");
            if let Some(p) = record.state.parent {
                self.forest.unlink(id, p);
            }
            entities.push(Committed { id, state: record.state, commit_seq: record.commit_seq });
        }
        self.orphans.remove(&root);
        self.stats.transfers_out += 1;
        let to = self.home_of(target);
        if self.journal.is_some() {
            self.journal(JournalOp::Out { to, entities: entities.clone() });
        }
        self.peer_outbox.push_back((to, SliceMsg::Transfer { hops: hops + 1, entities }));
    }

    /// A message from another slice.
    pub fn handle_peer(&mut self, from: SliceId, msg: SliceMsg) {
        match msg {
            SliceMsg::Transfer { hops, entities } => {
                let Some(root) = entities.first().map(|c| c.id) else { return };
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
                    let record = Record {
                        state: c.state,
                        authority: None,
                        epoch,
                        committed_epoch: epoch,
                        commit_seq: c.commit_seq,
                    };
                    if let Some(j) = &mut self.journal {
                        j.push(JournalOp::Put(c.id));
                    }
                    self.records.insert(c.id, record);
                }
                self.stats.transfers_in += 1;
                self.orphans.insert(root);
                self.place(root, hops);
            }
            SliceMsg::Map(map) => self.apply_map(map),
            SliceMsg::ServerUp { server } => self.controller_server_up(server),
            SliceMsg::ServerDown { server } => self.controller_server_down(server),
            SliceMsg::Ghosts(ghosts) => {
                if let Some(slot) = self.ghosts_remote.get_mut(from.0 as usize) {
                    *slot = ghosts;
                }
            }
            SliceMsg::Hit { target, damage } => {
                self.deliver_damage(target, damage);
            }
            SliceMsg::Load { counts } => {
                if let Some(load) = self.loads.get_mut(from.0 as usize) {
                    *load = counts.into_iter().collect();
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

    /// A client's input from a gateway on this core: to the server that holds the entity, here
    /// or through the slice of its core.
    pub fn route_input(&mut self, entity: EntityId, seq: u32, action: crate::protocol::Action) {
        if self.deliver_input(entity, seq, &action) {
            return;
        }
        for slice in (0..self.slices).map(SliceId).filter(|s| *s != self.slice) {
            self.input_outbox.push_back((slice, SliceMsg::Input { entity, seq, action: action.clone() }));
        }
    }

    /// False if no server on this core holds the entity.
    fn deliver_input(&mut self, entity: EntityId, seq: u32, action: &crate::protocol::Action) -> bool {
        let Some(holder) = self.records.get(&entity).and_then(|r| r.authority) else { return false };
        self.stats.inputs_routed += 1;
        self.send(holder, ReplicationMsg::Input { entity, seq, action: action.clone() });
        true
    }

    fn tell_controller(&mut self, msg: SliceMsg) {
        if self.is_controller() {
            self.handle_peer(self.slice, msg);
        } else {
            self.peer_outbox.push_back((SliceId(0), msg));
        }
    }

    fn controller_server_up(&mut self, server: ServerId) {
        debug_assert!(self.is_controller());
        self.live_everywhere.insert(server);
    }

    /// Controller: a server died; its regions go to the least loaded live servers.
    fn controller_server_down(&mut self, server: ServerId) {
        debug_assert!(self.is_controller());
        self.live_everywhere.remove(&server);
        let regions: Vec<RegionId> = self.map.regions_of(server).map(|r| r.id).collect();
        for region in regions {
            let heir = self.least_loaded();
            self.map.assign(region, heir).expect("region exists");
        }
        self.broadcast_map();
    }

    /// A newer map (from the controller, or the controller's own): pass it to this core's
    /// servers and place the orphans it gives owners to.
    fn apply_map(&mut self, map: RegionMap) {
        if map.epoch <= self.map.epoch {
            return;
        }
        self.map = map;
        self.publish_map();
    }

    /// A server loads a container: the items at rest in it, in that server's regions, go to it.
    fn load_container(&mut self, server: ServerId, inc: Incarnation, container: ContainerId) {
        if !self.is_live(server, inc) {
            self.stats.stale_rejected += 1;
            return;
        }
        let Some(index) = self.streaming.clone() else {
            self.protocol_error(|| format!("{server} streams containers, this layer does not"));
            return;
        };
        if index.bounds(container).is_none() {
            self.protocol_error(|| format!("{server} loaded container {container}, which does not exist"));
            return;
        }
        self.loaded.entry(server).or_default().insert(container);
        let Some(resting) = self.dormant.get(&container) else { return };
        let waking: Vec<EntityId> = resting
            .iter()
            .copied()
            .filter(|root| self.map.owner_at(self.records[root].state.pos()) == Some(server))
            .collect();
        for root in waking {
            self.wake(root, container);
            self.stats.woken += 1;
            self.grant(root, Some(server));
        }
    }

    /// A server unloaded a container and gave back the item roots it held in it.
    fn unload_container(
        &mut self,
        server: ServerId,
        inc: Incarnation,
        container: ContainerId,
        roots: Vec<(EntityId, Epoch)>,
    ) {
        if !self.is_live(server, inc) {
            self.stats.stale_rejected += 1;
            return;
        }
        if let Some(loaded) = self.loaded.get_mut(&server) {
            loaded.remove(&container);
        }
        for (root, epoch) in roots {
            if !self.authorized(server, root, epoch) {
                self.stats.stale_rejected += 1;
                continue;
            }
            if self.streaming.is_none() || !is_streamed(&self.records[&root].state) {
                self.protocol_error(|| format!("{server} unloaded {root}, which is not a loose item"));
                continue;
            }
            self.park(root);
        }
        // The map may have moved the item's region to a server on another core (or to one that
        // has the container loaded) while the unload was on its way: with the map settled, no
        // later change would send the item there, and it would rest by a player for good.
        self.place_dormant();
    }

    /// Puts a loose item root (with its contents) to rest: no server has authority over it (a
    /// fresh epoch makes any late write by its last holder stale) until one loads its container.
    fn park(&mut self, root: EntityId) {
        let index = self.streaming.clone().expect("parking needs streaming");
        let epoch = self.fresh_epoch();
        for id in self.forest.subtree(root) {
            let record = self.records.get_mut(&id).expect("subtree entities exist");
            record.authority = None;
            record.epoch = epoch;
            record.committed_epoch = epoch;
        }
        self.orphans.remove(&root);
        let container = index.locate(self.records[&root].state.pos());
        self.dormant.entry(container).or_default().insert(root);
        self.stats.parked += 1;
    }

    fn wake(&mut self, root: EntityId, container: ContainerId) {
        if let Some(resting) = self.dormant.get_mut(&container) {
            resting.remove(&root);
            if resting.is_empty() {
                self.dormant.remove(&container);
            }
        }
    }

    /// The map changed: an item at rest whose region's server now lives on another core moves
    /// to that core's slice (where that server's loads are heard), and one whose region's new
    /// server has its container loaded goes to it. Containers whose regions all belong to local
    /// servers that have not loaded them are passed over whole.
    fn place_dormant(&mut self) {
        let containers: Vec<ContainerId> = self.dormant.keys().copied().collect();
        let index = match &self.streaming {
            Some(index) => index.clone(),
            None => return,
        };
        for container in containers {
            let bounds = index.bounds(container).expect("dormant containers exist");
            let unsettled = self.map.regions().iter().filter(|r| r.bounds.overlaps(&bounds)).any(|r| {
                r.server.is_some_and(|s| {
                    self.home_of(s) != self.slice || self.loaded.get(&s).is_some_and(|l| l.contains(&container))
                })
            });
            if !unsettled {
                continue;
            }
            let roots: Vec<EntityId> = self.dormant[&container].iter().copied().collect();
            for root in roots {
                let Some(owner) = self.map.owner_at(self.records[&root].state.pos()) else { continue };
                let remote = self.home_of(owner) != self.slice;
                if remote || self.loaded.get(&owner).is_some_and(|l| l.contains(&container)) {
                    self.wake(root, container);
                    self.place(root, 0);
                }
            }
        }
    }

    fn publish_map(&mut self) {
        self.stats.map_changes += 1;
        self.journal(JournalOp::Map);
        let live: Vec<ServerId> = self.live_servers().collect();
        for server in live {
            self.send(server, ReplicationMsg::Map(self.map.clone()));
        }
        self.place_orphans();
        self.place_dormant();
    }

    fn place_orphans(&mut self) {
        let orphans: Vec<EntityId> = self.orphans.iter().copied().collect();
        for root in orphans {
            let Some(record) = self.records.get(&root) else { continue };
            let placeable = self
                .map
                .owner_at(record.state.pos())
                .is_some_and(|t| self.home_of(t) != self.slice || self.servers.get(&t).is_some_and(|s| s.live));
            if placeable {
                self.place(root, 0);
            }
        }
    }

    /// Gives the subtree under `root` to `target` under a fresh epoch, from committed state.
    fn grant(&mut self, root: EntityId, target: Option<ServerId>) {
        let target = target.filter(|t| self.servers.get(t).is_some_and(|s| s.live) && self.home_of(*t) == self.slice);
        if let (Some(t), Some(index)) = (target, &self.streaming) {
            let state = &self.records[&root].state;
            if is_streamed(state) && !self.loaded.get(&t).is_some_and(|l| l.contains(&index.locate(state.pos()))) {
                self.park(root);
                return;
            }
        }
        let epoch = self.fresh_epoch();
        let ids = self.forest.subtree(root);
        let mut entities = Vec::with_capacity(ids.len());
        for id in ids {
            let record = self.records.get_mut(&id).expect("subtree entities exist");
            record.authority = target;
            record.epoch = epoch;
            record.committed_epoch = epoch;
            entities.push(Owned { id, epoch, state: record.state.clone() });
        }
        match target {
            Some(t) => {
                self.orphans.remove(&root);
                self.stats.grants += 1;
                self.send(t, ReplicationMsg::Adopt { entities });
            }
            None => {
                self.orphans.insert(root);
            }
        }
    }

    /// The incarnation is gone (its lease ran out, or a newer one registered): its entities are
    /// fenced at once under fresh epochs, and once the controller has given its regions to live
    /// servers they go to them, from the committed state.
    fn declare_dead(&mut self, server: ServerId) {
        let Some(slot) = self.servers.get_mut(&server) else { return };
        if !slot.live {
            return;
        }
        slot.live = false;
        self.stats.servers_declared_dead += 1;
        self.loaded.remove(&server);
        let roots: Vec<EntityId> = self
            .records
            .iter()
            .filter(|(_, r)| r.authority == Some(server) && r.state.parent.is_none())
            .map(|(id, _)| *id)
            .collect();
        for root in roots {
            self.grant(root, None);
        }
        // The controller reassigns the regions and sends the map back, which places the orphans.
        self.tell_controller(SliceMsg::ServerDown { server });
    }

    /// Controller: the live server with the fewest regions.
    fn least_loaded(&self) -> Option<ServerId> {
        self.live_everywhere.iter().copied().min_by_key(|s| (self.map.regions_of(*s).count(), *s))
    }

    fn busiest(&self) -> Option<ServerId> {
        self.live_everywhere.iter().copied().max_by_key(|s| (self.map.regions_of(*s).count(), std::cmp::Reverse(*s)))
    }

    /// Controller: the map changed; every slice (this one included) gets it.
    fn broadcast_map(&mut self) {
        debug_assert!(self.is_controller());
        for slice in 1..self.slices {
            self.peer_outbox.push_back((SliceId(slice), SliceMsg::Map(self.map.clone())));
        }
        self.publish_map();
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
        self.ticks += 1;
        if self.ticks % BALANCE_PERIOD_TICKS == 0 {
            let counts = self.region_counts();
            self.tell_controller(SliceMsg::Load { counts });
        }
        if self.is_controller() {
            self.controller_tick();
        }
        self.place_orphans();
        self.share_ghosts();
    }

    /// Damage for an entity whose record is here goes to its authority; false if the record is
    /// not here (another slice may hold it). A hit on an entity in flight is lost, as a shot at
    /// someone stepping through a door might miss.
    fn deliver_damage(&mut self, target: EntityId, damage: u16) -> bool {
        let Some(record) = self.records.get(&target) else { return false };
        if let Some(holder) = record.authority {
            self.send(holder, ReplicationMsg::Damage { target, damage });
        }
        true
    }

    /// Every live local server sees every other server's border entities of the last tick; the
    /// other slices get this core's.
    fn share_ghosts(&mut self) {
        self.ghosts_local.retain(|s, _| self.servers.get(s).is_some_and(|slot| slot.live));
        let local: Vec<Ghost> = self.ghosts_local.values().flatten().copied().collect();
        let margin = glam::Vec3::splat(crate::limits::GHOST_MARGIN_M);
        for slice in (0..self.slices).map(SliceId).filter(|s| *s != self.slice) {
            // Only what stands near the regions of that core's servers crosses to it.
            let reach: Vec<crate::world::Aabb> = self
                .map
                .regions()
                .iter()
                .filter(|r| r.server.is_some_and(|s| self.home_of(s) == slice))
                .map(|r| crate::world::Aabb::new(r.bounds.min() - margin, r.bounds.max() + margin))
                .collect();
            let seen: Vec<Ghost> = local
                .iter()
                .filter(|g| reach.iter().any(|b| b.contains(glam::Vec3::from_array(g.position))))
                .copied()
                .collect();
            self.peer_outbox.push_back((slice, SliceMsg::Ghosts(seen)));
        }
        let mut all = local;
        for (i, remote) in self.ghosts_remote.iter().enumerate() {
            if i != self.slice.0 as usize {
                all.extend_from_slice(remote);
            }
        }
        // Each server gets only the ghosts within the margin of its own regions.
        let margin = glam::Vec3::splat(crate::limits::GHOST_MARGIN_M);
        let live: Vec<ServerId> = self.live_servers().collect();
        for server in live {
            let reach: Vec<crate::world::Aabb> = self
                .map
                .regions_of(server)
                .map(|r| crate::world::Aabb::new(r.bounds.min() - margin, r.bounds.max() + margin))
                .collect();
            let seen: Vec<Ghost> = all
                .iter()
                .filter(|g| g.server != server && reach.iter().any(|b| b.contains(glam::Vec3::from_array(g.position))))
                .copied()
                .collect();
            self.send(server, ReplicationMsg::Ghosts(seen));
        }
    }

    /// Entities this slice holds, per region.
    fn region_counts(&self) -> Vec<(RegionId, u32)> {
        let mut counts: BTreeMap<RegionId, u32> = BTreeMap::new();
        // Items at rest cost a server nothing: with streaming, only what servers hold counts.
        let streaming = self.streaming.is_some();
        for record in self.records.values().filter(|r| !streaming || r.authority.is_some()) {
            *counts.entry(self.map.region_at(record.state.pos()).id).or_default() += 1;
        }
        counts.into_iter().collect()
    }

    /// Controller: entities per region, from every slice's last report.
    pub fn region_loads(&self) -> BTreeMap<RegionId, u32> {
        let mut total: BTreeMap<RegionId, u32> = BTreeMap::new();
        for load in &self.loads {
            for (region, n) in load {
                *total.entry(*region).or_default() += n;
            }
        }
        total
    }

    /// Controller, once a period: if the busiest live server holds well more than the quietest,
    /// give the quietest the busiest's region that best halves the gap; if every region of the
    /// busiest is too big for that, split its biggest so the next period can move half.
    fn balance(&mut self) {
        let loads = self.region_loads();
        let load_of =
            |s: ServerId| -> u32 { self.map.regions_of(s).map(|r| loads.get(&r.id).copied().unwrap_or(0)).sum() };
        let by_load: Vec<(u32, ServerId)> = self.live_everywhere.iter().map(|s| (load_of(*s), *s)).collect();
        let (Some(&(high, busiest)), Some(&(low, quietest))) = (by_load.iter().max(), by_load.iter().min()) else {
            return;
        };
        let gap = high - low;
        if busiest == quietest || gap < BALANCE_SLACK_ENTITIES || gap * 10 < high {
            return;
        }
        let mut regions: Vec<(u32, RegionId)> =
            self.map.regions_of(busiest).map(|r| (loads.get(&r.id).copied().unwrap_or(0), r.id)).collect();
        regions.sort();
        // The biggest region that moves less than the gap: both sides end nearer the middle.
        let movable = regions.iter().rev().find(|(n, _)| *n > 0 && *n < gap && regions.len() > 1);
        match movable {
            Some(&(_, region)) => {
                self.map.assign(region, Some(quietest)).expect("region exists");
                self.broadcast_map();
            }
            None => {
                if let Some(&(_, biggest)) = regions.last() {
                    if self.map.split(biggest).is_ok() {
                        // The halves' loads are unknown until the next reports.
                        for load in &mut self.loads {
                            load.remove(&biggest);
                        }
                        self.broadcast_map();
                    }
                }
            }
        }
    }

    /// The controller's standing policy: every region has a live server, an idle server takes a
    /// region from the busiest.
    fn controller_tick(&mut self) {
        let mut changed = false;
        let unowned: Vec<RegionId> = self.map.regions().iter().filter(|r| r.server.is_none()).map(|r| r.id).collect();
        for region in unowned {
            if let Some(heir) = self.least_loaded() {
                self.map.assign(region, Some(heir)).expect("region exists");
                changed = true;
            }
        }
        if let (Some(idle), Some(busiest)) = (self.least_loaded(), self.busiest()) {
            let regions_of_busiest: Vec<RegionId> = self.map.regions_of(busiest).map(|r| r.id).collect();
            if self.map.regions_of(idle).count() == 0 && regions_of_busiest.len() >= 2 {
                self.map.assign(regions_of_busiest[0], Some(idle)).expect("region exists");
                changed = true;
            }
        }
        if changed {
            self.broadcast_map();
        }
        if self.balancing && self.ticks % BALANCE_PERIOD_TICKS == 1 {
            self.balance();
        }
    }

    /// Controller: cut a region in two (both halves keep its server).
    pub fn split_region(&mut self, region: RegionId) -> Result<(RegionId, RegionId), MapError> {
        assert!(self.is_controller(), "only the controller changes the map");
        let halves = self.map.split(region)?;
        self.broadcast_map();
        Ok(halves)
    }

    /// Controller: join two regions that form a box; the union takes `a`'s server.
    pub fn merge_regions(&mut self, a: RegionId, b: RegionId) -> Result<RegionId, MapError> {
        assert!(self.is_controller(), "only the controller changes the map");
        let merged = self.map.merge(a, b)?;
        self.broadcast_map();
        Ok(merged)
    }

    /// Controller: give a region to another live server; its entities follow by handoff.
    pub fn move_region(&mut self, region: RegionId, server: ServerId) -> Result<(), MapError> {
        assert!(self.is_controller(), "only the controller changes the map");
        if !self.live_everywhere.contains(&server) {
            return Ok(());
        }
        self.map.assign(region, Some(server))?;
        self.broadcast_map();
        Ok(())
    }

    /// The layer's own invariants; a description of each breach.
    pub fn check(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(e) = self.map.check_tiling() {
            errors.push(e);
        }
        for (id, r) in &self.records {
            if r.committed_epoch != r.epoch {
                errors.push(format!(
                    "{id}: committed under epoch {:?} but authority epoch is {:?}",
                    r.committed_epoch, r.epoch
                ));
            }
            if let Some(p) = r.state.parent {
                match self.records.get(&p) {
                    None => errors.push(format!("{id}: parent {p} does not exist")),
                    Some(parent) => {
                        if parent.authority != r.authority {
                            errors.push(format!(
                                "{id}: authority {:?} differs from its parent {p}'s {:?}",
                                r.authority, parent.authority
                            ));
                        }
                        if parent.state.kind.capacity_for(r.state.kind) == 0 {
                            errors.push(format!("{id}: a {:?} cannot sit in a {:?}", r.state.kind, parent.state.kind));
                        }
                    }
                }
                if !self.forest.children(p).any(|c| c == *id) {
                    errors.push(format!("{id}: missing from its parent {p}'s children"));
                }
            }
            if let Some(s) = r.authority.filter(|s| self.home_of(*s) != self.slice) {
                errors.push(format!("{id}: held by {s}, which lives on {}, not on {}", self.home_of(s), self.slice));
            }
            let dormant = self.streaming.as_ref().is_some_and(|index| {
                self.dormant.get(&index.locate(r.state.pos())).is_some_and(|roots| roots.contains(id))
            });
            if r.authority.is_none() && r.state.parent.is_none() && !self.orphans.contains(id) && !dormant {
                errors.push(format!("{id}: has no authority and is neither an orphan nor at rest"));
            }
            if dormant && (r.authority.is_some() || self.orphans.contains(id) || !is_streamed(&r.state)) {
                errors.push(format!("{id}: at rest, but held by {:?} or an orphan or not a loose item", r.authority));
            }
        }
        if let Some(id) = self.dormant.values().flatten().find(|id| !self.records.contains_key(id)) {
            errors.push(format!("{id}: at rest here but not recorded here"));
        }
        for (p, c) in self.forest.edges() {
            if self.records.get(&c).and_then(|r| r.state.parent) != Some(p) {
                errors.push(format!("forest says {c} is in {p}, its record disagrees"));
            }
        }
        if self.stats.protocol_errors > 0 {
            let first = self.first_protocol_error.as_deref().unwrap_or("");
            errors.push(format!("{} protocol errors, the first: {first}", self.stats.protocol_errors));
        }
        errors
    }
}
