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
        for id in self.forest.subtree(root) {
            let held = self.entities.get_mut(&id).expect("subtree entities are held");
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
        let roots: Vec<EntityId> = self
            .entities
            .iter()
            .filter(|(_, h)| {
                h.state.parent.is_none() && (h.state.vel() != Vec3::ZERO || h.state.ttl_ticks > 0 || simulated(h))
            })
            .filter(|(_, h)| h.moved_until_tick < tick)
            .map(|(id, _)| *id)
            .collect();
        for id in roots {
            let current = &self.entities[&id].state;
            let (mut next, mut velocity) = match self.physics.motion(id) {
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
            let state = self.touch(id, tick);
            state.velocity = velocity.to_array();
            if state.kind == EntityKind::Projectile {
                state.ttl_ticks = state.ttl_ticks.saturating_sub(1);
                if state.ttl_ticks == 0 || !world.contains(next) {
                    self.destroy(id);
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
            self.place_subtree(tick, id, clamped.to_array());
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
    pub(super) fn resolve_hits(&mut self, tick: Tick) {
        let dt = self.tick_us as f32 / 1e6;
        let projectiles: Vec<(EntityId, Vec3, Vec3, Option<EntityId>)> = self
            .entities
            .iter()
            .filter(|(_, h)| h.state.kind == EntityKind::Projectile)
            .map(|(id, h)| (*id, h.state.pos() - h.state.vel() * dt, h.state.pos(), h.state.source))
            .collect();
        let walker = |kind: EntityKind| matches!(kind, EntityKind::Player | EntityKind::Npc);
        for (projectile, from, to, source) in projectiles {
            let pad = Vec3::splat(HIT_RADIUS_M);
            // (how far along the path, target, a ghost)
            let mut hits: Vec<(f32, EntityId, bool)> = Vec::new();
            let entities = &self.entities;
            self.grid.query(from.min(to) - pad, from.max(to) + pad, |id, at| {
                if Some(id) != source
                    && distance_to_segment(at, from, to) <= HIT_RADIUS_M
                    && entities.get(&id).is_some_and(|h| walker(h.state.kind))
                {
                    hits.push((along_segment(at, from, to), id, false));
                }
            });
            // The ghost grid holds walkers only.
            self.ghost_grid.query(from.min(to) - pad, from.max(to) + pad, |id, at| {
                if Some(id) != source
                    && distance_to_segment(at, from, to) <= HIT_RADIUS_M
                    && !entities.contains_key(&id)
                {
                    hits.push((along_segment(at, from, to), id, true));
                }
            });
            if let Some((ship, along)) = self.physics.first_hull_on(from, to, source) {
                hits.push((along, ship, !entities.contains_key(&ship)));
            }
            let first = hits.into_iter().min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
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
                None => {}
            }
        }
    }
}
