//! The mesh's invariant checks, with a view of every node: what the protocol promises, checked
//! from outside it. The simulator runs them after every step, the runtime at the end of a run.
//!
//! Safety (every step): one authority per live entity and it is the layer's; nothing committed
//! is lost or goes back; items are the same set, by identity, as at the start; every server's
//! entity graph is whole; an adopted entity starts from exactly the committed state.
//! Liveness (after the faults stop and the world settles): every entity is simulated by the
//! server that owns its region, and the layer's record matches what that server holds.

use std::collections::{BTreeMap, BTreeSet};

use crate::protocol::replication::Record;
use crate::protocol::{Committed, Replication, Server};
use crate::world::stream::STREAM_LOAD_RADIUS_M;
use crate::world::{EntityId, EntityKind};

/// Every slice's records in one view; an entity in two slices is a duplicate.
fn union<'a>(slices: &[&'a Replication]) -> Result<BTreeMap<EntityId, &'a Record>, String> {
    let mut all = BTreeMap::new();
    for slice in slices {
        for (id, r) in slice.records() {
            if all.insert(*id, r).is_some() {
                return Err(format!("{id} is recorded by two slices"));
            }
        }
    }
    Ok(all)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Audit {
    pub entities: usize,
    pub items: usize,
    pub lost: usize,
    pub duplicates: usize,
}

pub struct Checker {
    /// Items and every other entity that is never destroyed, by identity.
    persistent: BTreeMap<EntityId, EntityKind>,
    items: usize,
    commit_seq: BTreeMap<EntityId, u64>,
}

impl Checker {
    pub fn new(slices: &[&Replication]) -> Self {
        // Projectiles expire; a world read back from its log may start with some in flight.
        let persistent: BTreeMap<EntityId, EntityKind> = slices
            .iter()
            .flat_map(|s| s.records().iter())
            .filter(|(_, r)| r.state.kind != EntityKind::Projectile)
            .map(|(id, r)| (*id, r.state.kind))
            .collect();
        let items = persistent.values().filter(|k| k.is_item()).count();
        Self { persistent, items, commit_seq: BTreeMap::new() }
    }

    /// Whether `id` is one of the entities that are never destroyed (all but projectiles).
    pub fn is_persistent(&self, id: EntityId) -> bool {
        self.persistent.contains_key(&id)
    }

    /// The process restarted from its log: committed changes since the last sync may be gone
    /// (the simulator checks those reported durable are not), so the per-entity order starts over.
    pub fn restarted(&mut self) {
        self.commit_seq.clear();
    }

    /// After a restart: accounts' players the recovered `slices` do not have were made after the
    /// last sync (the simulator checks everything reported durable came back), and are no more.
    pub fn forget_accounts_not_in(&mut self, slices: &[&Replication]) {
        self.persistent.retain(|id, _| id.account().is_none() || slices.iter().any(|s| s.records().contains_key(id)));
    }

    pub fn item_count(&self) -> usize {
        self.items
    }

    /// Counts for a report: entities and items recorded, the persistent ones no slice has, and
    /// the ones recorded by two slices or held by two servers.
    pub fn audit<'a>(&self, slices: &[&Replication], servers: impl Iterator<Item = &'a Server>) -> Audit {
        let mut recorded: BTreeMap<EntityId, usize> = BTreeMap::new();
        for slice in slices {
            for id in slice.records().keys() {
                *recorded.entry(*id).or_default() += 1;
            }
        }
        let mut held: BTreeMap<EntityId, usize> = BTreeMap::new();
        for server in servers {
            for id in server.held().keys() {
                *held.entry(*id).or_default() += 1;
            }
        }
        let items = slices.iter().flat_map(|s| s.records().values()).filter(|r| r.state.kind.is_item()).count();
        Audit {
            entities: recorded.len(),
            items,
            lost: self.persistent.keys().filter(|id| !recorded.contains_key(id)).count(),
            duplicates: recorded.values().chain(held.values()).filter(|n| **n > 1).count(),
        }
    }

    /// Safety checks after a step at `now_us`; `in_transit` are the records in subtrees on their
    /// way from one slice to another.
    pub fn check_step<'a>(
        &mut self,
        now_us: u64,
        slices: &[&Replication],
        in_transit: &[Committed],
        servers: impl Iterator<Item = &'a Server> + Clone,
    ) -> Result<(), String> {
        for slice in slices {
            if let Some(e) = slice.check().first() {
                return Err(format!("replication layer {}: {e}", slice.slice()));
            }
        }
        let records = union(slices)?;
        // What the layer holds: its records, and the subtrees on their way between slices (a ring
        // between cores is reliable: a transfer sent is the receiver's, not lost).
        let mut layer: BTreeMap<EntityId, (EntityKind, u64)> =
            records.iter().map(|(id, r)| (*id, (r.state.kind, r.commit_seq))).collect();
        for c in in_transit {
            if layer.insert(c.id, (c.state.kind, c.commit_seq)).is_some() {
                return Err(format!("{} is both recorded and in transit between slices", c.id));
            }
        }
        // Accounts' players are made as accounts first log in, and never end.
        for (id, (kind, _)) in layer.iter().filter(|(id, _)| id.account().is_some()) {
            self.persistent.entry(*id).or_insert(*kind);
        }
        for (id, kind) in &self.persistent {
            match layer.get(id) {
                None => return Err(format!("{id} ({kind:?}) is lost: the layer has no record of it")),
                Some((k, _)) if k != kind => return Err(format!("{id} changed kind from {kind:?} to {k:?}")),
                Some(_) => {}
            }
        }
        let items_now = layer.values().filter(|(k, _)| k.is_item()).count();
        if items_now != self.items {
            return Err(format!("the world has {items_now} items, it started with {}", self.items));
        }
        for (id, (_, commit_seq)) in &layer {
            let seen = self.commit_seq.entry(*id).or_insert(*commit_seq);
            if *commit_seq < *seen {
                return Err(format!("{id}: committed state went back from change {} to {commit_seq}", *seen));
            }
            *seen = *commit_seq;
        }
        self.commit_seq.retain(|id, _| layer.contains_key(id));

        let mut holder: BTreeMap<EntityId, crate::world::ServerId> = BTreeMap::new();
        for server in servers.filter(|s| s.is_acting(now_us)) {
            check_graph(server)?;
            let home = &slices[crate::protocol::replication::home_slice(server.id(), slices.len() as u16).0 as usize];
            let create_epoch = home.servers().get(&server.id()).map(|s| s.create_epoch);
            for (id, held) in server.held() {
                if let Some(other) = holder.insert(*id, server.id()) {
                    return Err(format!("{id} is simulated by both {other} and {}", server.id()));
                }
                match home.records().get(id) {
                    Some(r) if r.authority == Some(server.id()) && r.epoch == held.epoch => {}
                    Some(r) => {
                        return Err(format!(
                            "{} acts on {id} under epoch {:?}, but the layer gives it to {:?} under {:?}",
                            server.id(),
                            held.epoch,
                            r.authority,
                            r.epoch
                        ))
                    }
                    // A projectile made this tick that the layer has not heard of yet.
                    None if held.state.kind == EntityKind::Projectile && Some(held.epoch) == create_epoch => {}
                    None => {
                        return Err(format!(
                            "{} acts on {id}, which its core's slice {} does not hold",
                            server.id(),
                            home.slice()
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// Right after delivery: whatever a server adopted at `now_us` is exactly the committed state.
    pub fn check_restored<'a>(
        &self,
        now_us: u64,
        slices: &[&Replication],
        servers: impl Iterator<Item = &'a Server>,
    ) -> Result<(), String> {
        let records = union(slices)?;
        for server in servers {
            for (id, held) in server.held().iter().filter(|(_, h)| h.adopted_at_us == now_us) {
                let Some(r) = records.get(id) else { continue };
                if r.epoch == held.epoch && r.state != held.state {
                    return Err(format!("{} adopted {id} with a state other than the committed one", server.id()));
                }
            }
        }
        Ok(())
    }

    /// After the calm phase: every entity is held by the owner of its region, as committed.
    pub fn check_settled<'a>(
        &self,
        now_us: u64,
        slices: &[&Replication],
        servers: impl Iterator<Item = &'a Server> + Clone,
    ) -> Result<(), String> {
        let orphans: usize = slices.iter().map(|s| s.orphans().len()).sum();
        if orphans > 0 {
            return Err(format!("{orphans} entities have no server after the world settled"));
        }
        let map = slices[0].map();
        if let Some(s) = slices.iter().find(|s| s.map() != map) {
            return Err(format!("{} has map epoch {}, the controller {}", s.slice(), s.map().epoch, map.epoch));
        }
        if let Some(r) = map.regions().iter().find(|r| r.server.is_none()) {
            return Err(format!("region {} has no server after the world settled", r.id));
        }
        let acting: BTreeMap<_, _> = servers.filter(|s| s.is_acting(now_us)).map(|s| (s.id(), s)).collect();
        let records = union(slices)?;
        let parked: BTreeSet<EntityId> = slices.iter().flat_map(|s| s.offline().iter().copied()).collect();
        let players: Vec<glam::Vec3> = records
            .iter()
            .filter(|(id, r)| r.state.kind == EntityKind::Player && !parked.contains(id))
            .map(|(_, r)| r.state.pos())
            .collect();
        let mut resting = BTreeSet::new();
        for slice in slices {
            for root in slice.offline() {
                resting.extend(slice.forest().subtree(*root));
            }
        }
        for slice in slices {
            for root in slice.dormant().values().flatten() {
                // Every player's bubble has reached the items near it by now.
                let at = records[root].state.pos();
                if let Some(p) = players.iter().find(|p| p.distance(at) <= STREAM_LOAD_RADIUS_M) {
                    return Err(format!("{root} is still at rest {:.1} m from a player", p.distance(at)));
                }
                resting.extend(slice.forest().subtree(*root));
            }
        }
        for server in acting.values() {
            let home = &slices[crate::protocol::replication::home_slice(server.id(), slices.len() as u16).0 as usize];
            let layer_view = home.loaded_by(server.id()).cloned().unwrap_or_default();
            if &layer_view != server.loaded() {
                return Err(format!(
                    "{} has containers {:?} loaded, its slice thinks {:?}",
                    server.id(),
                    server.loaded(),
                    layer_view
                ));
            }
        }
        for (id, r) in &records {
            if resting.contains(id) {
                continue;
            }
            let Some(owner) = r.authority else { return Err(format!("{id} has no authority")) };
            let Some(server) = acting.get(&owner) else {
                return Err(format!("{id} belongs to {owner}, which is not running"));
            };
            let Some(held) = server.held().get(id) else {
                return Err(format!("{id} belongs to {owner}, which does not hold it"));
            };
            if held.state != r.state {
                return Err(format!("{id}: {owner} holds a state the layer never committed"));
            }
            if r.state.parent.is_none() && map.owner_at(r.state.pos()) != Some(owner) {
                return Err(format!("{id} rests outside the regions of {owner}, its holder"));
            }
        }
        let held_total: usize = acting.values().map(|s| s.held().len()).sum();
        if held_total + resting.len() != records.len() {
            return Err(format!(
                "servers hold {held_total} entities and {} are at rest, the layer has {}",
                resting.len(),
                records.len()
            ));
        }
        Ok(())
    }
}

/// A server's own graph: every child's parent is held by the same server, the index agrees with
/// the parent pointers, children sit where their parent is, and the kinds fit.
fn check_graph(server: &Server) -> Result<(), String> {
    let held = server.held();
    let mut linked = BTreeSet::new();
    for (p, c) in server.forest().edges() {
        linked.insert(c);
        if held.get(&c).and_then(|h| h.state.parent) != Some(p) {
            return Err(format!("{}: its index puts {c} in {p}, the entity disagrees", server.id()));
        }
    }
    for (id, h) in held {
        let Some(p) = h.state.parent else { continue };
        let Some(parent) = held.get(&p) else {
            return Err(format!("{} holds {id} but not its parent {p}", server.id()));
        };
        if !linked.contains(id) {
            return Err(format!("{}: {id} is missing from its parent's children", server.id()));
        }
        if parent.state.position != h.state.position {
            return Err(format!("{}: {id} does not move with its parent {p}", server.id()));
        }
        if parent.state.kind.capacity_for(h.state.kind) < server.forest().child_count(p) {
            return Err(format!("{}: {p} holds more than a {:?} may", server.id(), parent.state.kind));
        }
    }
    Ok(())
}
