//! What crosses a region border: the ghosts shown to neighbours, the deltas of a tick, and the subtrees handed off.

use super::*;

/// What one pass over a server's entities finds at its borders (`Server::border_pass`).
#[derive(Debug, Default)]
pub(super) struct Borders {
    /// The roots to hand off, each with how far it stands from this server's regions.
    pub leaving: Vec<(f32, EntityId)>,
    pub ghosts: Vec<Ghost>,
    pub presence: Vec<[f32; 3]>,
}

impl Server {
    /// One pass over what this server holds, one region lookup each: the roots to hand off
    /// (outside this server's regions by more than `HANDOFF_SLACK_M`, at rest outside them, or
    /// projectiles, stopped at a border to be handed on: a walker milling across a border stays
    /// with its server until it is well past it or stands still, so a crowd on a cut does not
    /// hand its players back and forth); the players, NPCs and ships within their ghost margin
    /// (`ghost_margin_m`) of a region another server owns, what neighbouring servers must see
    /// (entities deep inside this server's area, or by the world's edge, are nobody else's
    /// business); and the cells (`PRESENCE_CELL_M`) where held players stand within
    /// `STREAM_UNLOAD_RADIUS_M` of such a region, for the neighbours' streaming, in order.
    ///
    /// Without `hand_off_loose` (the map just changed) loose items stay where they are held: the
    /// server that now owns their region loads their container once it hears where the players
    /// are, and an item handed to it before then would be put to rest by a player.
    pub(super) fn border_pass(&self, hand_off_loose: bool) -> Borders {
        let map = self.map.as_ref().expect("active servers have a map");
        let walker_margin = crate::limits::walker_ghost_margin_m(self.tick_us);
        let widest = GHOST_MARGIN_M.max(STREAM_UNLOAD_RADIUS_M).max(walker_margin);
        let margin = Vec3::splat(widest);
        let mine: Vec<crate::world::Aabb> = map.regions_of(self.id).map(|r| r.bounds).collect();
        // For each region of this server, its box, the foreign regions within the widest margin
        // of it, nearest first, and how many of them lie within a walker's margin: a walker
        // inside the region is no nearer a foreign box than the region is, so only those few can
        // see it, and a test of reach stops at the first box in reach. What stands in one of
        // these boxes (most of what a server holds) is placed by them, without a map lookup.
        type Near = (crate::world::RegionId, crate::world::Aabb, Vec<crate::world::Aabb>, usize);
        let mut near: Vec<Near> = Vec::new();
        for own in map.regions_of(self.id) {
            let reach = crate::world::Aabb::new(own.bounds.min() - margin, own.bounds.max() + margin);
            let mut foreign: Vec<(f32, crate::world::Aabb)> = map
                .regions()
                .iter()
                .filter(|r| r.server != Some(self.id) && r.bounds.overlaps(&reach))
                .map(|r| (box_gap(&own.bounds, &r.bounds), r.bounds))
                .collect();
            foreign.sort_by(|a, b| a.0.total_cmp(&b.0));
            let walkers = foreign.iter().take_while(|(gap, _)| *gap <= walker_margin).count();
            near.push((own.id, own.bounds, foreign.into_iter().map(|(_, b)| b).collect(), walkers));
        }
        let ghosts = self.sent_last_tick.1;
        let mut out = Borders { ghosts: Vec::with_capacity(ghosts + ghosts / 8), ..Borders::default() };
        let mut cells: rustc_hash::FxHashSet<glam::IVec3> = Default::default();
        for (id, h) in &self.entities {
            let kind = h.state.kind;
            let margin = ghost_margin_m(kind, self.tick_us);
            let player = kind == EntityKind::Player;
            let root = h.state.parent.is_none();
            if margin.is_none() && !player && !root {
                continue;
            }
            let p = h.state.pos();
            let home = match near.iter().find(|(_, b, _, _)| b.contains(p)) {
                Some(own) => Some(own),
                None => {
                    let region = map.region_at(p);
                    (region.server == Some(self.id)).then(|| near.iter().find(|(r, _, _, _)| *r == region.id)).flatten()
                }
            };
            let (ghost, present) = if let Some((_, _, foreign, walkers)) = home {
                if foreign.is_empty() {
                    continue;
                }
                let ghost = margin.is_some_and(|m| {
                    let boxes = if m <= walker_margin { &foreign[..*walkers] } else { &foreign[..] };
                    within_any(p, boxes, m)
                });
                let present = player
                    && ((ghost && margin.is_some_and(|m| m <= STREAM_UNLOAD_RADIUS_M))
                        || within_any(p, foreign, STREAM_UNLOAD_RADIUS_M));
                (ghost, present)
            } else {
                if root && (hand_off_loose || !is_streamed(&h.state)) {
                    let past = mine.iter().map(|b| distance_to_box(p, b)).fold(f32::INFINITY, f32::min);
                    if kind == EntityKind::Projectile
                        || h.state.vel() == Vec3::ZERO
                        || past > crate::limits::HANDOFF_SLACK_M
                    {
                        out.leaving.push((past, *id));
                    }
                }
                // Held past a border: in another server's region.
                (margin.is_some(), player)
            };
            if ghost {
                out.ghosts.push(Ghost { id: *id, kind, position: h.state.position, server: self.id });
            }
            if present {
                cells.insert(presence_cell(p));
            }
        }
        let mut cells: Vec<glam::IVec3> = cells.into_iter().collect();
        cells.sort_unstable_by_key(|c| (c.x, c.y, c.z));
        out.presence = cells.into_iter().map(|c| presence_centre(c).to_array()).collect();
        out
    }

    /// Where (0..1) the path `from..to` first leaves this server's regions into another's, or
    /// `None` where it stays in them (or leaves only the world, where the projectile ends).
    pub(super) fn path_leaves_regions_at(&self, from: Vec3, to: Vec3) -> Option<f32> {
        let map = self.map.as_ref().expect("active servers have a map");
        let length = from.distance(to);
        if length <= 1e-3 || !length.is_finite() {
            return None;
        }
        // Just past a wall, so the point is in the next region (regions are half-open).
        let nudge = 1e-3 / length;
        let mut t = 0.0f32;
        for _ in 0..crate::limits::PATH_REGIONS_MAX {
            let p = from.lerp(to, t);
            if !map.world.contains(p) {
                return None;
            }
            let region = map.region_at(p);
            if region.server != Some(self.id) {
                return Some(t);
            }
            let exit = leaves_box_at(&region.bounds, from, to);
            if exit >= 1.0 {
                return None;
            }
            t = (exit.max(t) + nudge).min(1.0);
        }
        Some(t)
    }

    /// Every change of the tick, leaving entities included: a handoff may only carry what the
    /// layer already knows the shape of, or a child dropped this tick would travel with it.
    pub(super) fn flush_deltas(&mut self, tick: Tick) {
        let expected = self.sent_last_tick.0;
        let mut entries: Vec<Delta> = Vec::with_capacity(expected + expected / 8);
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
        self.sent_last_tick.0 = entries.len();
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

    /// Server 0, welcomed, owning the left half of a 200 m world whose right half is server 1's;
    /// and what wraps a message for it.
    fn left_of_two() -> (Server, impl Fn(ReplicationMsg) -> ToServer) {
        let (id, inc) = (ServerId(0), Incarnation(1));
        let mut map = RegionMap::kd_split(Aabb::new(Vec3::ZERO, Vec3::new(200.0, 20.0, 20.0)), 2);
        let (left, right) =
            (map.region_at(Vec3::new(10.0, 10.0, 10.0)).id, map.region_at(Vec3::new(190.0, 10.0, 10.0)).id);
        map.assign(left, Some(id)).unwrap();
        map.assign(right, Some(ServerId(1))).unwrap();
        let mut s = Server::new(id, inc, 0);
        let to = move |body| ToServer { server: id, incarnation: inc, body };
        s.handle(0, to(ReplicationMsg::Welcome { create_epoch: Epoch(1), map, loaded: Vec::new() }));
        (s, to)
    }

    #[test]
    fn only_roots_outside_the_servers_regions_are_handed_off_with_their_children() {
        let (mut s, to) = left_of_two();
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
        let leaving: Vec<EntityId> = s.border_pass(true).leaving.iter().map(|(_, id)| *id).collect();
        assert_eq!(leaving, vec![EntityId(2)], "the ship, not its rider, not the NPC at home");
        let subtree: Vec<EntityId> = s.remove_subtree(EntityId(2)).iter().map(|o| o.id).collect();
        assert_eq!(subtree, vec![EntityId(2), EntityId(3)], "parents first");
        assert!(!s.held().contains_key(&EntityId(3)), "removed before the message leaves");
    }

    /// Over the tick's cap, the roots farthest past the server's regions leave first: a region
    /// that moved (all of it deep in another server's) drains, while walkers milling just past
    /// a border wait, and most walk back.
    #[test]
    fn over_the_cap_the_farthest_past_the_border_leave_first() {
        let (mut s, to) = left_of_two();
        s.handoffs_per_tick_max = 2;
        let walker = |x: f32| {
            let mut state = EntityState::new(EntityKind::Npc, Vec3::new(x, 10.0, 1.0));
            state.velocity = [0.0, 0.1, 0.0];
            state
        };
        let xs = [104.5, 150.0, 105.0, 180.0, 104.0, 20.0];
        let owned = xs
            .iter()
            .enumerate()
            .map(|(i, x)| Owned { id: EntityId(i as u64 + 1), epoch: Epoch(2), state: walker(*x) })
            .collect();
        s.handle(0, to(ReplicationMsg::Adopt { entities: owned }));
        s.tick(TICK_DURATION_US);
        let mut left: Vec<EntityId> = s.leaving().iter().map(|(id, _)| *id).collect();
        left.sort();
        assert_eq!(left, vec![EntityId(2), EntityId(4)], "the two deep in the neighbour's region");
        s.tick(2 * TICK_DURATION_US);
        assert_eq!(s.leaving().len(), 2, "then two of the three just past the border");
        assert!(s.held().contains_key(&EntityId(6)), "what stands at home stays");
    }
}
