//! What crosses a region border: the ghosts shown to neighbours, the deltas of a tick, and the subtrees handed off.

use super::*;

impl Server {
    /// Held players, NPCs and ships within `GHOST_MARGIN_M` of a region another server owns:
    /// what neighbouring servers must see. Entities deep inside this server's area, or by the
    /// world's edge, are nobody else's business.
    pub(super) fn border_ghosts(&self) -> Vec<Ghost> {
        let map = self.map.as_ref().expect("active servers have a map");
        let margin = Vec3::splat(GHOST_MARGIN_M);
        // For each region of this server, the foreign regions within the margin of it.
        let mut near: Vec<(crate::world::RegionId, Vec<crate::world::Aabb>)> = Vec::new();
        for mine in map.regions_of(self.id) {
            let reach = crate::world::Aabb::new(mine.bounds.min() - margin, mine.bounds.max() + margin);
            let foreign: Vec<_> = map
                .regions()
                .iter()
                .filter(|r| r.server != Some(self.id) && r.bounds.overlaps(&reach))
                .map(|r| r.bounds)
                .collect();
            if !foreign.is_empty() {
                near.push((mine.id, foreign));
            }
        }
        if near.is_empty() {
            return Vec::new();
        }
        self.entities
            .iter()
            .filter(|(_, h)| matches!(h.state.kind, EntityKind::Player | EntityKind::Npc | EntityKind::Ship))
            .filter(|(_, h)| {
                let p = h.state.pos();
                let region = map.region_at(p).id;
                near.iter()
                    .find(|(r, _)| *r == region)
                    .is_some_and(|(_, foreign)| foreign.iter().any(|b| distance_to_box(p, b) <= GHOST_MARGIN_M))
            })
            .map(|(id, h)| Ghost { id: *id, kind: h.state.kind, position: h.state.position, server: self.id })
            .collect()
    }

    pub(super) fn roots_outside_regions(&self) -> Vec<EntityId> {
        let map = self.map.as_ref().expect("active servers have a map");
        self.entities
            .iter()
            .filter(|(_, h)| h.state.parent.is_none() && map.owner_at(h.state.pos()) != Some(self.id))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Every change of the tick, leaving entities included: a handoff may only carry what the
    /// layer already knows the shape of, or a child dropped this tick would travel with it.
    pub(super) fn flush_deltas(&mut self, tick: Tick) {
        let mut entries: Vec<Delta> = Vec::new();
        // Every root first, then the children, parents before their own children: whatever left
        // a parent this tick (and is a root now) is off its parent's list before anything joins
        // it, so the layer never counts a parent over its capacity, nor sees an unknown parent.
        let mut carrying: Vec<EntityId> = Vec::new();
        for (id, held) in self.entities.iter_mut().filter(|(_, h)| h.state.parent.is_none()) {
            if held.dirty {
                held.dirty = false;
                entries.push(Delta::Upsert(Owned { id: *id, epoch: held.epoch, state: held.state.clone() }));
            }
            if self.forest.child_count(*id) > 0 {
                carrying.push(*id);
            }
        }
        let mut below: Vec<EntityId> = Vec::new();
        for root in carrying {
            for child in self.forest.children(root) {
                self.forest.subtree_into(child, &mut below);
            }
        }
        for id in below {
            let held = self.entities.get_mut(&id).expect("ordered entities are held");
            if held.dirty {
                held.dirty = false;
                entries.push(Delta::Upsert(Owned { id, epoch: held.epoch, state: held.state.clone() }));
            }
        }
        for (id, epoch) in self.destroyed.drain(..) {
            entries.push(Delta::Destroy { id, epoch });
        }
        if !entries.is_empty() {
            self.stats.deltas_sent += entries.len() as u64;
            self.send(ServerMsg::Deltas { tick, entries });
        }
    }

    /// Gives up `roots` and their subtrees, batched: one message for up to `BATCH_ENTITIES_MAX`
    /// entities (a larger subtree goes alone).
    pub(super) fn hand_off(&mut self, roots: Vec<EntityId>) {
        let mut batch: Vec<Owned> = Vec::new();
        for root in roots {
            let start = batch.len();
            self.remove_subtree_into(root, &mut batch);
            let moved = &batch[start..];
            self.stats.handed_off += moved.len() as u64;
            self.leaving.extend(moved.iter().map(|o| (o.id, o.state.clone())));
            if start > 0 && batch.len() > BATCH_ENTITIES_MAX {
                let this = batch.split_off(start);
                self.send(ServerMsg::Handoff { entities: std::mem::replace(&mut batch, this) });
            }
        }
        if !batch.is_empty() {
            self.send(ServerMsg::Handoff { entities: batch });
        }
    }

    /// Drops `root` and everything in it, parents first.
    pub(super) fn remove_subtree(&mut self, root: EntityId) -> Vec<Owned> {
        let mut entities = Vec::new();
        self.remove_subtree_into(root, &mut entities);
        entities
    }

    /// Drops `root` and everything in it, appending them to `out`, parents first.
    fn remove_subtree_into(&mut self, root: EntityId, out: &mut Vec<Owned>) {
        if self.forest.child_count(root) == 0 {
            let held = self.entities.remove(&root).expect("subtree entities are held");
            out.push(Owned { id: root, epoch: held.epoch, state: held.state });
            return;
        }
        for id in self.forest.subtree(root) {
            let held = self.entities.remove(&id).expect("subtree entities are held");
            if let Some(p) = held.state.parent {
                self.forest.unlink(id, p);
            }
            out.push(Owned { id, epoch: held.epoch, state: held.state });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::Aabb;

    #[test]
    fn only_roots_outside_the_servers_regions_are_handed_off_with_their_children() {
        let (id, inc) = (ServerId(0), Incarnation(1));
        let mut map = RegionMap::kd_split(Aabb::new(Vec3::ZERO, Vec3::new(200.0, 20.0, 20.0)), 2);
        let (left, right) =
            (map.region_at(Vec3::new(10.0, 10.0, 10.0)).id, map.region_at(Vec3::new(190.0, 10.0, 10.0)).id);
        map.assign(left, Some(id)).unwrap();
        map.assign(right, Some(ServerId(1))).unwrap();
        let mut s = Server::new(id, inc, 0);
        let to = |body| ToServer { server: id, incarnation: inc, body };
        s.handle(0, to(ReplicationMsg::Welcome { create_epoch: Epoch(1), map, loaded: Vec::new() }));
        let at = |kind, x: f32| EntityState::new(kind, Vec3::new(x, 10.0, 10.0));
        let mut rider = at(EntityKind::Player, 150.0);
        rider.parent = Some(EntityId(2));
        let entities = vec![
            (EntityId(1), at(EntityKind::Npc, 20.0)),
            (EntityId(2), at(EntityKind::Ship, 150.0)),
            (EntityId(3), rider),
        ];
        let owned = entities.into_iter().map(|(id, state)| Owned { id, epoch: Epoch(2), state }).collect();
        s.handle(0, to(ReplicationMsg::Adopt { entities: owned }));
        assert_eq!(s.roots_outside_regions(), vec![EntityId(2)], "the ship, not its rider, not the NPC at home");
        let subtree: Vec<EntityId> = s.remove_subtree(EntityId(2)).iter().map(|o| o.id).collect();
        assert_eq!(subtree, vec![EntityId(2), EntityId(3)], "parents first");
        assert!(!s.held().contains_key(&EntityId(3)), "removed before the message leaves");
    }
}
