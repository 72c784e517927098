//! Inputs under the game rules: moving, firing, picking up, dropping, stowing, boarding, and the entity graph they change.

use super::*;

impl Server {
    /// Applies one input under the game rules; false if refused.
    pub(super) fn apply(&mut self, tick: Tick, input: &Input) -> bool {
        if let Action::Move(dir) = &input.action {
            // Most inputs: one lookup, no copy of the actor.
            let Some(held) = self.entities.get_mut(&input.entity) else { return false };
            let dir = Vec3::from_array(*dir);
            if held.state.parent.is_some() || !held.state.kind.is_driven() || !dir.is_finite() {
                return false;
            }
            let v = (dir.clamp_length_max(1.0) * speed_of(held.state.kind)).to_array();
            if v != held.state.velocity {
                let state = held.touch(tick);
                state.velocity = v;
                state.face(Vec3::from_array(v));
            }
            return true;
        }
        let Some(actor) = self.state(input.entity).cloned() else { return false };
        match &input.action {
            Action::Move(_) => unreachable!("moves are applied above"),
            Action::Fire(dir) => {
                let dir = Vec3::from_array(*dir).normalize_or_zero();
                if dir == Vec3::ZERO || !matches!(actor.kind, EntityKind::Player | EntityKind::Ship) {
                    return false;
                }
                let id = EntityId::new(self.incarnation.0, self.next_counter);
                self.next_counter += 1;
                let mut state = EntityState::new(EntityKind::Projectile, actor.pos() + dir * (HIT_RADIUS_M + 0.5));
                state.velocity = (dir * speed_of(EntityKind::Projectile)).to_array();
                state.face(dir);
                state.ttl_ticks = PROJECTILE_TTL_US.div_ceil(self.tick_us).min(u16::MAX as u64) as u16;
                state.source = Some(input.entity);
                state.changed_tick = tick;
                let held = Held {
                    state,
                    epoch: self.create_epoch,
                    adopted_at_us: 0,
                    input_seq: 0,
                    moved_until_tick: Tick::ZERO,
                    dirty: true,
                };
                self.entities.insert(id, held);
                self.stats.created += 1;
                true
            }
            Action::PickUp => {
                let (grid, entities) = (&self.item_grid, &self.entities);
                let item = grid.nearest_by_id(actor.pos(), REACH_M, |id| {
                    id != input.entity
                        && entities.get(&id).is_some_and(|h| h.state.kind.is_item() && h.state.parent.is_none())
                });
                match item {
                    Some(item) => self.attach(tick, item, input.entity),
                    None => false,
                }
            }
            Action::Drop => {
                let item = self.forest.children(input.entity).find(|c| self.is_item(*c));
                match item {
                    Some(item) => self.detach(tick, item),
                    None => false,
                }
            }
            Action::Stow => {
                let hand: Vec<EntityId> = self.forest.children(input.entity).collect();
                let pack = hand.iter().copied().find(
                    |c| matches!(self.state(*c).map(|s| s.kind), Some(EntityKind::Item { capacity }) if capacity > 0),
                );
                let loose = hand
                    .iter()
                    .copied()
                    .find(|c| matches!(self.state(*c).map(|s| s.kind), Some(EntityKind::Item { capacity: 0 })));
                match (pack, loose) {
                    (Some(pack), Some(item)) => self.attach(tick, item, pack),
                    _ => false,
                }
            }
            Action::Unstow => {
                let packed =
                    self.forest.children(input.entity).flat_map(|c| self.forest.children(c).collect::<Vec<_>>()).next();
                match packed {
                    Some(item) => self.attach(tick, item, input.entity),
                    None => false,
                }
            }
            Action::Board => {
                if actor.parent.is_some() {
                    return false;
                }
                let (grid, entities) = (&self.ship_grid, &self.entities);
                let ship = grid.nearest_by_id(actor.pos(), BOARD_REACH_M, |id| {
                    entities.get(&id).is_some_and(|h| h.state.kind == EntityKind::Ship)
                });
                match ship {
                    Some(ship) => self.attach(tick, input.entity, ship),
                    None => false,
                }
            }
            Action::Disembark => {
                let aboard = actor.parent.and_then(|p| self.state(p)).is_some_and(|p| p.kind == EntityKind::Ship);
                aboard && self.detach(tick, input.entity)
            }
        }
    }

    pub(super) fn is_item(&self, id: EntityId) -> bool {
        self.state(id).is_some_and(|s| s.kind.is_item())
    }

    /// Moves `child` (and its subtree) under `parent`, if the graph rules allow it.
    pub(super) fn attach(&mut self, tick: Tick, child: EntityId, parent: EntityId) -> bool {
        let (Some(c), Some(p)) = (self.state(child), self.state(parent)) else { return false };
        if child == parent || p.kind.capacity_for(c.kind) <= self.forest.child_count(parent) {
            return false;
        }
        if self.forest.subtree(child).contains(&parent) {
            return false;
        }
        let position = p.position;
        if let Some(old) = c.parent {
            self.forest.unlink(child, old);
        }
        self.forest.link(child, parent);
        let state = self.touch(child, tick);
        state.parent = Some(parent);
        state.velocity = [0.0; 3];
        self.place_subtree(tick, child, position);
        true
    }

    pub(super) fn detach(&mut self, tick: Tick, child: EntityId) -> bool {
        let Some(parent) = self.state(child).and_then(|s| s.parent) else { return false };
        self.forest.unlink(child, parent);
        self.touch(child, tick).parent = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::Aabb;

    /// A server that owns the whole world and holds `entities` (parents first).
    fn holding(entities: Vec<(EntityId, EntityState)>) -> Server {
        let (id, inc) = (ServerId(0), Incarnation(1));
        let mut map = RegionMap::kd_split(Aabb::new(Vec3::ZERO, Vec3::splat(200.0)), 1);
        map.assign(map.regions()[0].id, Some(id)).unwrap();
        let mut s = Server::new(id, inc, 0);
        let to = |body| ToServer { server: id, incarnation: inc, body };
        s.handle(0, to(ReplicationMsg::Welcome { create_epoch: Epoch(1), map, loaded: Vec::new() }));
        let owned = entities.into_iter().map(|(id, state)| Owned { id, epoch: Epoch(2), state }).collect();
        s.handle(0, to(ReplicationMsg::Adopt { entities: owned }));
        s
    }

    fn at(kind: EntityKind, x: f32) -> EntityState {
        EntityState::new(kind, Vec3::new(x, 10.0, 10.0))
    }

    #[test]
    fn an_item_within_reach_is_picked_up_and_one_out_of_reach_is_not() {
        let (player, near, far) = (EntityId(1), EntityId(2), EntityId(3));
        let mut s = holding(vec![
            (player, at(EntityKind::Player, 50.0)),
            (near, at(EntityKind::Item { capacity: 0 }, 50.5)),
            (far, at(EntityKind::Item { capacity: 0 }, 50.0 + REACH_M * 4.0)),
        ]);
        s.rebuild_input_grids();
        assert!(s.apply(Tick(1), &Input { entity: player, action: Action::PickUp }), "the near item");
        assert_eq!(s.held()[&near].state.parent, Some(player));
        assert_eq!(s.held()[&far].state.parent, None, "out of reach stays where it is");
    }

    /// A client sends at its own rate: six inputs in one tick are too many at 30 Hz, and what a
    /// 30 Hz client sends in a tick of a world at 5 Hz.
    #[test]
    fn the_cap_on_a_client_s_inputs_a_tick_follows_the_tick_rate() {
        for (tick_us, limited) in [(33_333, 2), (200_000, 0)] {
            let mut s = holding(vec![(EntityId(1), at(EntityKind::Player, 50.0))]).with_tick_us(tick_us);
            for seq in 1..=6 {
                let dir = if seq % 2 == 0 { [1.0, 0.0, 0.0] } else { [0.0, 1.0, 0.0] };
                s.handle_client_input(Input { entity: EntityId(1), action: Action::Move(dir) }, seq);
            }
            s.tick(tick_us);
            assert_eq!(s.stats.inputs_rate_limited, limited, "at {tick_us} us a tick");
            assert_eq!(s.stats.inputs_applied, 6 - limited);
        }
    }

    #[test]
    fn an_input_for_an_entity_the_server_does_not_hold_is_refused() {
        let mut s = holding(vec![(EntityId(1), at(EntityKind::Player, 50.0))]);
        s.rebuild_input_grids();
        assert!(!s.apply(Tick(1), &Input { entity: EntityId(9), action: Action::Move([1.0, 0.0, 0.0]) }));
    }
}
