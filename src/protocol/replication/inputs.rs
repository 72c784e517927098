//! Clients' inputs, routed to the server that holds the player, here or through the slice that records it.

use super::*;

impl Replication {
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
    pub(super) fn deliver_input(&mut self, entity: EntityId, seq: u32, action: &crate::protocol::Action) -> bool {
        let Some(holder) = self.records.get(&entity).and_then(|r| r.authority) else { return false };
        self.stats.inputs_routed += 1;
        self.send(holder, ReplicationMsg::Input { entity, seq, action: action.clone() });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Action;
    use crate::world::Aabb;
    use glam::Vec3;

    fn slice(i: u16, entities: Vec<(EntityId, EntityState)>) -> Replication {
        let map = RegionMap::kd_split(Aabb::new(Vec3::ZERO, Vec3::splat(100.0)), 2);
        Replication::new_slice(SliceId(i), 2, map, entities)
    }

    #[test]
    fn an_input_for_a_player_no_server_here_holds_goes_to_every_other_slice_alone() {
        let mut rl = slice(1, Vec::new());
        rl.route_input(EntityId(5), 3, Action::Move([1.0, 0.0, 0.0]));
        let sent: Vec<_> = std::iter::from_fn(|| rl.poll_peer_input()).collect();
        assert_eq!(sent.len(), 1, "one other slice, one copy");
        assert!(matches!(&sent[0], (SliceId(0), SliceMsg::Input { entity: EntityId(5), seq: 3, .. })));
        assert!(rl.poll_peer().is_none(), "inputs do not wait with the tick's other messages");
        assert_eq!(rl.stats.inputs_routed, 0);
    }

    #[test]
    fn an_input_for_an_entity_without_authority_is_not_delivered() {
        let mut rl = slice(0, vec![(EntityId(5), EntityState::new(EntityKind::Player, Vec3::splat(10.0)))]);
        assert!(!rl.deliver_input(EntityId(5), 1, &Action::Move([0.0; 3])), "no server holds it yet");
        assert!(rl.poll_message().is_none());
    }
}
