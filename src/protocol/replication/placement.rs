//! Where a subtree goes: a server's handoff, the region owner it is granted to, a transfer to the slice of another core, and orphans waiting for a live owner.

use super::*;

impl Replication {
    /// A server's handoff: subtrees that left its regions, a batch (each root, then its subtree).
    pub(super) fn handoff(&mut self, server: ServerId, inc: Incarnation, entities: Vec<Owned>) {
        let subtrees = subtree_ranges(&entities, |o| o.state.parent.is_none());
        let all_authorized =
            entities.iter().all(|o| !self.records.contains_key(&o.id) || self.authorized(server, o.id, o.epoch));
        let Some(subtrees) = subtrees.filter(|_| all_authorized) else {
            let first = entities.first().map(|o| o.id);
            self.refuse(server, inc, || format!("{server} handed off {first:?}.. without authority over all of it"));
            return;
        };
        let mut requested: Vec<EntityId> = Vec::new();
        let mut entities = entities.into_iter();
        for range in subtrees {
            requested.clear();
            for owned in entities.by_ref().take(range.len()) {
                requested.push(owned.id);
                if !self.records.contains_key(&owned.id) {
                    if !self.admit_new(server, inc, &owned) {
                        continue;
                    }
                } else if self.admit_write(server, inc, &owned) {
                    self.commit(owned);
                }
            }
            let root = requested[0];
            if !self.records.contains_key(&root) {
                continue;
            }
            // Compared as sorted lists: most subtrees are one entity, and a set per handoff was a
            // few percent of the handoff's cost.
            if requested.len() > 1 || self.forest.child_count(root) > 0 {
                let mut moving = self.forest.subtree(root);
                moving.sort_unstable();
                requested.sort_unstable();
                requested.dedup();
                if moving != requested {
                    // Deltas travel before handoffs on one ordered link, so both views agree
                    // unless a server is broken. The layer's own view is the one that moves.
                    self.protocol_error(|| {
                        format!("{server} handed off {root} as {requested:?}, the layer has {moving:?}")
                    });
                }
            }
            self.stats.handoffs += 1;
            self.place(root, 0);
        }
    }

    /// Gives `root`'s subtree to the owner of the region it is in: here, if that server lives on
    /// this core; by transfer to its core's slice if not; as an orphan if the region has no
    /// live owner yet.
    pub(super) fn place(&mut self, root: EntityId, hops: u8) {
        if self.parks_offline(root) {
            self.log_off(root);
            return;
        }
        let target = self.map.owner_at(self.records[&root].state.pos());
        match target {
            Some(t) if self.home_of(t) != self.slice && hops < TRANSFER_HOPS_MAX => self.transfer(root, t, hops),
            _ => self.grant(root, target),
        }
    }

    pub(super) fn transfer(&mut self, root: EntityId, target: ServerId, hops: u8) {
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
        // Onto the last message for that slice if it is a transfer of as many hops with room:
        // the link's order stays what it was.
        let hops = hops + 1;
        let last = self.peer_outbox.iter_mut().rev().take(BATCH_LOOKBACK).find(|(s, _)| *s == to);
        match last {
            Some((_, SliceMsg::Transfer { hops: h, entities: batch }))
                if *h == hops && batch.len() + entities.len() <= BATCH_ENTITIES_MAX =>
            {
                batch.extend(entities)
            }
            _ => self.peer_outbox.push_back((to, SliceMsg::Transfer { hops, entities })),
        }
    }

    pub(super) fn place_orphans(&mut self) {
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
    pub(super) fn grant(&mut self, root: EntityId, target: Option<ServerId>) {
        if self.parks_offline(root) {
            self.log_off(root);
            return;
        }
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
                if entities.len() > 1 {
                    self.log_out_passengers(t, &entities);
                }
                self.send_adopt(t, entities);
            }
            None => {
                self.orphans.insert(root);
            }
        }
    }

    /// Onto the last message for `server` if it is an adoption with room, else a new one.
    fn send_adopt(&mut self, server: ServerId, entities: Vec<Owned>) {
        let Some(slot) = self.servers.get(&server) else { return };
        let incarnation = slot.incarnation;
        let last = self.outbox.iter_mut().rev().take(BATCH_LOOKBACK).find(|m| m.server == server);
        match last {
            Some(ToServer { incarnation: i, body: ReplicationMsg::Adopt { entities: batch }, .. })
                if *i == incarnation && batch.len() + entities.len() <= BATCH_ENTITIES_MAX =>
            {
                batch.extend(entities)
            }
            _ => self.outbox.push_back(ToServer { server, incarnation, body: ReplicationMsg::Adopt { entities } }),
        }
    }
}
