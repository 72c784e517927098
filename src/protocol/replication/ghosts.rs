//! Border ghosts shared between servers, and hits on entities another server holds.

use super::*;

impl Replication {
    /// Damage for an entity whose record is here goes to its authority; false if the record is
    /// not here (another slice may hold it). A hit on an entity in flight is lost, as a shot at
    /// someone stepping through a door might miss.
    pub(super) fn deliver_damage(&mut self, target: EntityId, damage: u16) -> bool {
        let Some(record) = self.records.get(&target) else { return false };
        if let Some(holder) = record.authority {
            self.send(holder, ReplicationMsg::Damage { target, damage });
        }
        true
    }

    /// Every live local server sees every other server's border entities of the last tick; the
    /// other slices get this core's.
    pub(super) fn share_ghosts(&mut self) {
        self.ghosts_local.retain(|s, _| self.servers.get(s).is_some_and(|slot| slot.live));
        let local: Vec<Ghost> = self.ghosts_local.values().flatten().copied().collect();
        let margin = glam::Vec3::splat(crate::limits::GHOST_MARGIN_M);
        for slice in (0..self.slices).map(SliceId).filter(|s| *s != self.slice) {
            // Only what stands near the regions of that core's servers crosses to it.
            let reach: Vec<crate::world::Aabb> = self
                .map
                .regions()
                .iter()
                .filter(|r| r.server.is_some_and(|s| self.home_of(s) == slice))
                .map(|r| crate::world::Aabb::new(r.bounds.min() - margin, r.bounds.max() + margin))
                .collect();
            let seen: Vec<Ghost> = local
                .iter()
                .filter(|g| reach.iter().any(|b| b.contains(glam::Vec3::from_array(g.position))))
                .copied()
                .collect();
            self.stats.ghosts_to_cores += seen.len() as u64;
            self.peer_outbox.push_back((slice, SliceMsg::Ghosts(seen)));
        }
        let mut all = local;
        for (i, remote) in self.ghosts_remote.iter().enumerate() {
            if i != self.slice.0 as usize {
                all.extend_from_slice(remote);
            }
        }
        // Each server gets only the ghosts within the margin of its own regions.
        let margin = glam::Vec3::splat(crate::limits::GHOST_MARGIN_M);
        let live: Vec<ServerId> = self.live_servers().collect();
        for server in live {
            let reach: Vec<crate::world::Aabb> = self
                .map
                .regions_of(server)
                .map(|r| crate::world::Aabb::new(r.bounds.min() - margin, r.bounds.max() + margin))
                .collect();
            let seen: Vec<Ghost> = all
                .iter()
                .filter(|g| g.server != server && reach.iter().any(|b| b.contains(glam::Vec3::from_array(g.position))))
                .copied()
                .collect();
            self.stats.ghosts_to_servers += seen.len() as u64;
            self.send(server, ReplicationMsg::Ghosts(seen));
        }
    }
}
