//! Accounts' sessions: a player whose account is logged out is parked here, held by no server
//! and costing nothing, with what it carries; logging in again gives it back to the owner of the
//! region it was left in.
//!
//! Whether an account is logged in is the state of its newest session, which every slice hears
//! (`SliceMsg::Session`, numbered by the gateways in the order logins happened, so a slice that
//! hears an old session's end after a new one's start keeps the new). The rule is applied
//! wherever a player is placed: a logged-out player's subtree is parked instead of granted, a
//! logged-in one's is granted. So a logout that finds its player in flight between servers or
//! cores, or a restart that finds every account logged out, parks it as surely as a logout that
//! finds it held: the holder is told (`ReplicationMsg::LogOut`), hands it back, and its placing
//! parks it.

use super::*;

impl Replication {
    /// An account's session began (`online`) or ended at a gateway on this core: applied here
    /// and sent on to every other slice at once, as clients' inputs are.
    pub fn session(&mut self, player: EntityId, session: u64, online: bool) {
        self.apply_session(player, session, online);
        for slice in (0..self.slices).map(SliceId).filter(|s| *s != self.slice) {
            self.input_outbox.push_back((slice, SliceMsg::Session { player, session, online }));
        }
    }

    /// A new account's first login at a gateway on this core: its player is made at `at` (a
    /// spawn point) and placed. Its session must have begun first. Nothing happens if this slice
    /// already records it.
    pub fn create_player(&mut self, player: EntityId, at: glam::Vec3) {
        if player.account().is_none() || self.records.contains_key(&player) {
            self.protocol_error(|| format!("{player} is no new account's player"));
            return;
        }
        let state = EntityState::new(EntityKind::Player, at);
        let record = Record { state, authority: None, epoch: Epoch(0), committed_epoch: Epoch(0), commit_seq: 1 };
        self.records.insert(player, record);
        self.journal(JournalOp::Put(player));
        self.stats.created += 1;
        self.stats.players_created += 1;
        self.orphans.insert(player);
        self.place(player, 0);
    }

    /// Whether `player`'s account is logged in, as this slice last heard.
    pub fn is_online(&self, player: EntityId) -> bool {
        self.sessions.get(&player).is_some_and(|(_, online)| *online)
    }

    /// Players parked here, logged out.
    pub fn offline(&self) -> &BTreeSet<EntityId> {
        &self.offline
    }

    pub(super) fn apply_session(&mut self, player: EntityId, session: u64, online: bool) {
        if player.account().is_none() {
            self.protocol_error(|| format!("a session for {player}, which is no account's player"));
            return;
        }
        let (last, _) = self.sessions.get(&player).copied().unwrap_or((0, false));
        // A login opens a newer session; a logout ends the newest heard or a newer one.
        let newer = self.planted.sessions_out_of_order || if online { session > last } else { session >= last };
        if !newer {
            return;
        }
        self.sessions.insert(player, (session, online));
        if online {
            self.stats.logins += 1;
            if self.offline.remove(&player) {
                self.orphans.insert(player);
                self.place(player, 0);
            }
            return;
        }
        self.stats.logouts += 1;
        let Some(record) = self.records.get(&player) else { return };
        match record.authority {
            Some(holder) => self.send(holder, ReplicationMsg::LogOut { entity: player }),
            None if self.orphans.contains(&player) => self.log_off(player),
            // At rest already, or in an orphan's subtree (aboard a ship in flight): its placing
            // tells the new holder.
            None => {}
        }
    }

    /// Whether placing `root` must park it: a player whose account is logged out.
    pub(super) fn parks_offline(&self, root: EntityId) -> bool {
        root.account().is_some() && !self.is_online(root)
    }

    /// Parks a logged-out player's subtree: no server has authority over it (a fresh epoch
    /// makes any late write by its last holder stale) until its account logs in.
    pub(super) fn log_off(&mut self, root: EntityId) {
        self.hold_by_none(root);
        self.offline.insert(root);
        self.stats.players_parked += 1;
    }

    /// After `entities` were granted to `server`: logged-out players among them (aboard
    /// something, so not parked whole) are to be handed back.
    pub(super) fn log_out_passengers(&mut self, server: ServerId, entities: &[Owned]) {
        let offline: Vec<EntityId> = entities
            .iter()
            .filter(|o| o.state.parent.is_some() && o.state.kind == EntityKind::Player && self.parks_offline(o.id))
            .map(|o| o.id)
            .collect();
        for entity in offline {
            self.send(server, ReplicationMsg::LogOut { entity });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::ToReplication;
    use crate::world::Aabb;
    use glam::Vec3;

    fn layer() -> (Replication, ServerId, Incarnation) {
        let map = RegionMap::kd_split(Aabb::new(Vec3::ZERO, Vec3::splat(100.0)), 1);
        let mut rl = Replication::new(map, Vec::new());
        let (s, inc) = (ServerId(0), Incarnation(1));
        rl.handle(0, ToReplication { server: s, incarnation: inc, body: ServerMsg::Register });
        rl.tick(0);
        while rl.poll_message().is_some() {}
        (rl, s, inc)
    }

    fn sent(rl: &mut Replication) -> Vec<ReplicationMsg> {
        std::iter::from_fn(|| rl.poll_message()).map(|m| m.body).collect()
    }

    #[test]
    fn a_new_account_is_made_at_the_spawn_point_and_given_to_its_regions_server() {
        let (mut rl, s, _) = layer();
        let p = EntityId::of_account(7);
        rl.session(p, 1, true);
        rl.create_player(p, Vec3::splat(10.0));
        assert_eq!(rl.records()[&p].authority, Some(s));
        assert!(matches!(&sent(&mut rl)[..], [ReplicationMsg::Adopt { entities }] if entities[0].id == p));
        assert_eq!(rl.stats.players_created, 1);
        assert!(rl.check().is_empty(), "{:?}", rl.check());
    }

    #[test]
    fn a_logout_hands_the_player_back_and_its_handoff_parks_it_until_the_login() {
        let (mut rl, s, inc) = layer();
        let p = EntityId::of_account(7);
        rl.session(p, 1, true);
        rl.create_player(p, Vec3::splat(10.0));
        let adopted = match sent(&mut rl).pop() {
            Some(ReplicationMsg::Adopt { entities }) => entities,
            other => panic!("{other:?}"),
        };
        rl.session(p, 1, false);
        assert_eq!(sent(&mut rl), vec![ReplicationMsg::LogOut { entity: p }]);
        let mut moved = adopted[0].clone();
        moved.state.position = [20.0, 20.0, 20.0];
        rl.handle(1, ToReplication { server: s, incarnation: inc, body: ServerMsg::Handoff { entities: vec![moved] } });
        assert!(rl.offline().contains(&p));
        assert_eq!(rl.records()[&p].authority, None);
        assert_eq!(rl.records()[&p].state.pos(), Vec3::splat(20.0), "parked where it was handed back");
        assert!(sent(&mut rl).is_empty(), "given to nobody");
        assert!(rl.check().is_empty(), "{:?}", rl.check());
        rl.session(p, 2, true);
        assert!(!rl.offline().contains(&p));
        assert_eq!(rl.records()[&p].authority, Some(s), "back with its region's server");
        assert!(rl.check().is_empty(), "{:?}", rl.check());
    }

    #[test]
    fn an_old_sessions_end_heard_after_a_new_ones_start_changes_nothing() {
        let (mut rl, s, _) = layer();
        let p = EntityId::of_account(3);
        rl.session(p, 1, true);
        rl.create_player(p, Vec3::splat(10.0));
        sent(&mut rl);
        rl.handle_peer(SliceId(0), SliceMsg::Session { player: p, session: 2, online: true });
        rl.handle_peer(SliceId(0), SliceMsg::Session { player: p, session: 1, online: false });
        assert!(rl.is_online(p));
        assert!(sent(&mut rl).is_empty(), "the player is not handed back");
        assert_eq!(rl.records()[&p].authority, Some(s));
    }

    #[test]
    fn a_restored_world_has_every_accounts_player_parked_until_it_logs_in() {
        let map = RegionMap::kd_split(Aabb::new(Vec3::ZERO, Vec3::splat(100.0)), 1);
        let p = EntityId::of_account(1);
        let mut item = EntityState::new(EntityKind::Item { capacity: 0 }, Vec3::splat(5.0));
        item.parent = Some(p);
        let initial = vec![
            Committed { id: p, state: EntityState::new(EntityKind::Player, Vec3::splat(5.0)), commit_seq: 4 },
            Committed { id: EntityId(9), state: item, commit_seq: 2 },
        ];
        let mut rl = Replication::restore_slice(SliceId(0), 1, map, initial);
        assert!(rl.offline().contains(&p) && rl.orphans().is_empty());
        assert!(rl.check().is_empty(), "{:?}", rl.check());
        rl.handle(0, ToReplication { server: ServerId(0), incarnation: Incarnation(1), body: ServerMsg::Register });
        rl.tick(0);
        assert_eq!(rl.records()[&p].authority, None, "a server's start does not wake it");
        rl.session(p, 1, true);
        assert_eq!(rl.records()[&EntityId(9)].authority, Some(ServerId(0)), "it comes back with what it carried");
    }

    #[test]
    fn a_session_for_an_entity_that_is_no_accounts_player_is_refused() {
        let (mut rl, _, _) = layer();
        rl.handle_peer(SliceId(0), SliceMsg::Session { player: EntityId(5), session: 1, online: false });
        assert_eq!(rl.stats.protocol_errors, 1);
    }
}
