//! The replication layer (RL): the master record of every entity, the authority table and the
//! region map, with the mesh controller's region operations. Servers are disposable; this is not.
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

use super::messages::{Delta, Epoch, Incarnation, Owned, ReplicationMsg, ServerMsg, ToReplication, ToServer};
use crate::limits::LEASE_DURATION_US;
use crate::world::{EntityId, EntityKind, EntityState, Forest, MapError, RegionId, RegionMap, ServerId};

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
}

pub struct Replication {
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
    /// What the first protocol error was, for the report.
    pub first_protocol_error: Option<String>,
}

impl Replication {
    /// A layer holding the world's starting entities (parents listed before children), none
    /// of them assigned until servers register.
    pub fn new(map: RegionMap, initial: Vec<(EntityId, EntityState)>) -> Self {
        let mut rl = Self {
            map,
            records: BTreeMap::new(),
            forest: Forest::default(),
            servers: BTreeMap::new(),
            next_epoch: 1,
            orphans: BTreeSet::new(),
            outbox: VecDeque::new(),
            stats: ReplicationStats::default(),
            planted: PlantedBugs::default(),
            first_protocol_error: None,
        };
        for (id, state) in initial {
            match state.parent {
                Some(p) => {
                    assert!(rl.records.contains_key(&p), "initial entity {id} listed before its parent {p}");
                    rl.forest.link(id, p);
                }
                None => {
                    rl.orphans.insert(id);
                }
            }
            let record = Record { state, authority: None, epoch: Epoch(0), committed_epoch: Epoch(0), commit_seq: 1 };
            assert!(rl.records.insert(id, record).is_none(), "entity {id} listed twice");
        }
        rl
    }

    pub fn map(&self) -> &RegionMap {
        &self.map
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

    pub fn live_servers(&self) -> impl Iterator<Item = ServerId> + '_ {
        self.servers.iter().filter(|(_, s)| s.live).map(|(id, _)| *id)
    }

    pub fn orphans(&self) -> &BTreeSet<EntityId> {
        &self.orphans
    }

    pub fn poll_message(&mut self) -> Option<ToServer> {
        self.outbox.pop_front()
    }

    fn fresh_epoch(&mut self) -> Epoch {
        self.next_epoch += 1;
        Epoch(self.next_epoch)
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
        let create_epoch = self.fresh_epoch();
        let slot = ServerSlot { incarnation: inc, create_epoch, last_heard_us: now_us, live: true, fenced_sent: false };
        self.servers.insert(server, slot);
        let map = self.map.clone();
        self.send(server, ReplicationMsg::Welcome { create_epoch, map });
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
        self.stats.created += 1;
        true
    }

    /// Whether `child` may sit under `parent` for a write by `server`.
    fn parent_allowed(&self, server: ServerId, child: EntityId, kind: EntityKind, parent: EntityId) -> bool {
        let Some(p) = self.records.get(&parent) else { return false };
        let siblings = self.forest.children(parent).filter(|c| *c != child).count();
        p.authority == Some(server)
            && p.state.kind.capacity_for(kind) > siblings
            && !self.forest.subtree(child).contains(&parent)
    }

    fn commit(&mut self, owned: Owned) {
        let record = self.records.get_mut(&owned.id).expect("committed entities exist");
        let (old_parent, new_parent) = (record.state.parent, owned.state.parent);
        record.state = owned.state;
        record.committed_epoch = owned.epoch;
        record.commit_seq += 1;
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
        let target = self.map.owner_at(self.records[&root].state.pos());
        self.grant(root, target);
    }

    /// Gives the subtree under `root` to `target` under a fresh epoch, from committed state.
    fn grant(&mut self, root: EntityId, target: Option<ServerId>) {
        let target = target.filter(|t| self.servers.get(t).is_some_and(|s| s.live));
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

    /// The incarnation is gone (its lease ran out, or a newer one registered): its regions and
    /// entities go to live servers, from the committed state.
    fn declare_dead(&mut self, server: ServerId) {
        let Some(slot) = self.servers.get_mut(&server) else { return };
        if !slot.live {
            return;
        }
        slot.live = false;
        self.stats.servers_declared_dead += 1;
        let regions: Vec<RegionId> = self.map.regions_of(server).map(|r| r.id).collect();
        for region in regions {
            let heir = self.least_loaded();
            self.map.assign(region, heir).expect("region exists");
        }
        self.broadcast_map();
        let roots: Vec<EntityId> = self
            .records
            .iter()
            .filter(|(_, r)| r.authority == Some(server) && r.state.parent.is_none())
            .map(|(id, _)| *id)
            .collect();
        for root in roots {
            let target = self.map.owner_at(self.records[&root].state.pos());
            self.grant(root, target);
        }
    }

    fn least_loaded(&self) -> Option<ServerId> {
        self.live_servers().min_by_key(|s| (self.map.regions_of(*s).count(), *s))
    }

    fn broadcast_map(&mut self) {
        self.stats.map_changes += 1;
        let live: Vec<ServerId> = self.live_servers().collect();
        for server in live {
            self.send(server, ReplicationMsg::Map(self.map.clone()));
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
        let orphans: Vec<EntityId> = self.orphans.iter().copied().collect();
        for root in orphans {
            if let Some(target) = self.map.owner_at(self.records[&root].state.pos()) {
                self.grant(root, Some(target));
            }
        }
    }

    fn busiest(&self) -> Option<ServerId> {
        self.live_servers().max_by_key(|s| (self.map.regions_of(*s).count(), std::cmp::Reverse(*s)))
    }

    /// Controller: cut a region in two (both halves keep its server).
    pub fn split_region(&mut self, region: RegionId) -> Result<(RegionId, RegionId), MapError> {
        let halves = self.map.split(region)?;
        self.broadcast_map();
        Ok(halves)
    }

    /// Controller: join two regions that form a box; the union takes `a`'s server.
    pub fn merge_regions(&mut self, a: RegionId, b: RegionId) -> Result<RegionId, MapError> {
        let merged = self.map.merge(a, b)?;
        self.broadcast_map();
        Ok(merged)
    }

    /// Controller: give a region to another live server; its entities follow by handoff.
    pub fn move_region(&mut self, region: RegionId, server: ServerId) -> Result<(), MapError> {
        if !self.servers.get(&server).is_some_and(|s| s.live) {
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
            if r.authority.is_none() && r.state.parent.is_none() && !self.orphans.contains(id) {
                errors.push(format!("{id}: has no authority and is not an orphan"));
            }
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
