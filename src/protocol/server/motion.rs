//! One tick of motion: roots moved by their velocity or by rapier, children riding along, projectiles aging and their hits resolved.

use super::*;

impl Server {
    pub(super) fn place_subtree(&mut self, tick: Tick, root: EntityId, position: [f32; 3]) {
        if self.forest.child_count(root) == 0 {
            let held = self.entities.get_mut(&root).expect("placed entities are held");
            if held.state.position != position {
                held.state.position = position;
                held.state.changed_tick = tick;
                held.dirty = true;
            }
            return;
        }
        self.subtree.clear();
        self.forest.subtree_into(root, &mut self.subtree);
        for id in &self.subtree {
            let held = self.entities.get_mut(id).expect("subtree entities are held");
            if held.state.position != position {
                held.state.position = position;
                held.state.changed_tick = tick;
                held.dirty = true;
            }
        }
    }

    /// Moves every root; children ride along. rapier moves ships and projectiles (ships collide
    /// with ships); walkers and loose items move by their velocity. Projectiles age and vanish at
    /// the world's edge; everything else bounces off it.
    pub(super) fn integrate(&mut self, tick: Tick) {
        let dt = self.tick_us as f32 / 1e6;
        let world = self.world();
        let simulated = |h: &Held| h.state.parent.is_none() && physics::is_simulated(h.state.kind);
        self.physics.sync(
            self.entities
                .iter()
                .filter(|(_, h)| simulated(h))
                .map(|(id, h)| (*id, h.state.kind, h.state.pos(), h.state.vel())),
        );
        self.physics.step();
        // Each root moves where it lies in the table, in one pass: a lookup by id a root (three
        // before) cost more than the motion. What rides on a root is placed after the pass, and
        // projectiles that vanish are removed after it.
        let mut carriers: Vec<(EntityId, [f32; 3])> = Vec::new();
        let mut vanished: Vec<EntityId> = Vec::new();
        let (physics, forest) = (&self.physics, &self.forest);
        for (&id, held) in self.entities.iter_mut() {
            let current = &held.state;
            let moving = current.vel() != Vec3::ZERO || current.ttl_ticks > 0 || simulated(held);
            if current.parent.is_some() || !moving || held.moved_until_tick >= tick {
                continue;
            }
            let (mut next, mut velocity) = match physics.motion(id) {
                Some((next, velocity)) => governed(current, next, velocity, dt),
                None => (current.pos() + current.vel() * dt, current.vel()),
            };
            // Hulls resting against each other are nudged apart by the solver a hair each tick,
            // forever; at rest is at rest.
            if current.kind != EntityKind::Projectile && velocity.length() < crate::limits::REST_SPEED_M_S {
                velocity = Vec3::ZERO;
                if next.distance(current.pos()) < crate::limits::REST_SPEED_M_S * dt {
                    next = current.pos();
                }
            }
            if current.kind != EntityKind::Projectile && next == current.pos() && velocity == current.vel() {
                // A ship at rest that nothing bumped.
                continue;
            }
            let state = held.touch(tick);
            state.velocity = velocity.to_array();
            if state.kind == EntityKind::Projectile {
                state.ttl_ticks = state.ttl_ticks.saturating_sub(1);
                if state.ttl_ticks == 0 || !world.contains(next) {
                    vanished.push(id);
                    continue;
                }
                state.position = next.to_array();
                continue;
            }
            let clamped = world.clamp(next);
            if clamped != next {
                let bounce = Vec3::select(clamped.cmpne(next), -Vec3::ONE, Vec3::ONE);
                state.velocity = (state.vel() * bounce).to_array();
            }
            state.position = clamped.to_array();
            if forest.child_count(id) > 0 {
                carriers.push((id, state.position));
            }
        }
        for id in vanished {
            self.destroy(id);
        }
        for (id, position) in carriers {
            self.place_subtree(tick, id, position);
        }
    }

    pub(super) fn destroy(&mut self, id: EntityId) {
        let held = self.entities.remove(&id).expect("destroyed entities are held");
        debug_assert_eq!(self.forest.child_count(id), 0, "only leaf entities are destroyed");
        self.destroyed.push((id, held.epoch));
        self.stats.destroyed += 1;
    }

    /// A projectile hits the first thing on the path it swept this tick (not what fired it): a
    /// player or NPC that came within reach of the path, or a ship's hull (rapier's ray cast),
    /// held here or seen as a ghost. At 1500 m/s it moves 50 m a tick, so testing only where it
    /// ends would let it pass through. Two at the same point of the path: the smaller id.
    ///
    /// Only the part of the path in this server's regions is this server's to test: where it
    /// leaves them into another server's, a projectile that hit nothing stops just past the
    /// border and is handed on with the tick's other leavers; the next server flies it on from
    /// there. So a neighbour's walkers matter here only within `HIT_RADIUS_M` of the border (the
    /// narrow `walker_ghost_margin_m`), not within a tick's flight of it.
    pub(super) fn resolve_hits(&mut self, tick: Tick) {
        let dt = self.tick_us as f32 / 1e6;
        let projectiles: Vec<(EntityId, Vec3, Vec3, Option<EntityId>)> = self
            .entities
            .iter()
            .filter(|(_, h)| h.state.kind == EntityKind::Projectile)
            .map(|(id, h)| (*id, h.state.pos() - h.state.vel() * dt, h.state.pos(), h.state.source))
            .collect();
        let walker = |kind: EntityKind| matches!(kind, EntityKind::Player | EntityKind::Npc);
        for (projectile, from, full_to, source) in projectiles {
            let leaves = self.path_leaves_regions_at(from, full_to);
            let to = leaves.map_or(full_to, |t| from.lerp(full_to, t));
            // (how far along the path, target, a ghost): the first, the smaller id at a tie.
            let mut first: Option<(f32, EntityId, bool)> = None;
            let consider = |first: &mut Option<(f32, EntityId, bool)>, hit: (f32, EntityId, bool)| {
                if first.is_none_or(|f| hit.0.total_cmp(&f.0).then(hit.1.cmp(&f.1)).is_lt()) {
                    *first = Some(hit);
                }
            };
            let entities = &self.entities;
            if let Some((ship, along)) = self.physics.first_hull_on(from, to, source) {
                consider(&mut first, (along, ship, !entities.contains_key(&ship)));
            }
            // Each grid is walked from the muzzle until what it has found (or the other grid, or
            // a hull) is nearer than anything still ahead.
            let found_by = |first: &Option<(f32, EntityId, bool)>, end: f32| first.is_some_and(|f| f.0 <= end);
            self.grid.walk_segment(
                from,
                to,
                HIT_RADIUS_M,
                &mut first,
                |first, id, at| {
                    if Some(id) != source
                        && distance_to_segment(at, from, to) <= HIT_RADIUS_M
                        && entities.get(&id).is_some_and(|h| walker(h.state.kind))
                    {
                        consider(first, (along_segment(at, from, to), id, false));
                    }
                },
                found_by,
            );
            // The ghost grid holds walkers only.
            self.ghost_grid.walk_segment(
                from,
                to,
                HIT_RADIUS_M,
                &mut first,
                |first, id, at| {
                    if Some(id) != source
                        && distance_to_segment(at, from, to) <= HIT_RADIUS_M
                        && !entities.contains_key(&id)
                    {
                        consider(first, (along_segment(at, from, to), id, true));
                    }
                },
                found_by,
            );
            match first {
                Some((_, ghost, true)) => {
                    self.destroy(projectile);
                    self.stats.hits += 1;
                    self.stats.remote_hits += 1;
                    self.send(ServerMsg::Hit { target: ghost, damage: PROJECTILE_DAMAGE });
                }
                Some((_, target, false)) => {
                    let state = self.touch(target, tick);
                    // Damage; at zero health the entity is restored, never removed, so counts hold.
                    state.health = state.health.checked_sub(PROJECTILE_DAMAGE).filter(|h| *h > 0).unwrap_or(100);
                    self.destroy(projectile);
                    self.stats.hits += 1;
                }
                None => {
                    if leaves.is_some() {
                        let state = self.touch(projectile, tick);
                        state.position = to.to_array();
                        self.stats.shots_handed_on += 1;
                    }
                }
            }
        }
    }
}
