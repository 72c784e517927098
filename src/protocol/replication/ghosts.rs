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

    /// Every live local server sees every other server's border entities of the last tick, and
    /// where their players stand near its regions; the other slices get this core's. Each
    /// ghost within its kind's margin (`ghost_margin_m`) of a region of the server or core it
    /// goes to, each presence cell within streaming's reach of one.
    pub(super) fn share_ghosts(&mut self) {
        let tick_us = self.lifecycles.tick_us;
        self.ghosts_local.retain(|s, _| self.servers.get(s).is_some_and(|slot| slot.live));
        self.presence_local.retain(|s, _| self.servers.get(s).is_some_and(|slot| slot.live));
        let local: Vec<Ghost> = self.ghosts_local.values().flatten().copied().collect();
        let local_presence: Vec<Presence> = self
            .presence_local
            .iter()
            .flat_map(|(server, cells)| cells.iter().map(|at| Presence { server: *server, at: *at }))
            .collect();
        for slice in (0..self.slices).map(SliceId).filter(|s| *s != self.slice) {
            // Only what stands near the regions of that core's servers crosses to it.
            let regions: Vec<crate::world::Aabb> = self
                .map
                .regions()
                .iter()
                .filter(|r| r.server.is_some_and(|s| self.home_of(s) == slice))
                .map(|r| r.bounds)
                .collect();
            let ghosts: Vec<Ghost> = local.iter().filter(|g| near_any(g, &regions, tick_us)).copied().collect();
            let presence: Vec<Presence> =
                local_presence.iter().filter(|p| present_near_any(p, &regions)).copied().collect();
            self.stats.ghosts_to_cores += ghosts.len() as u64;
            self.peer_outbox.push_back((slice, SliceMsg::Ghosts { ghosts, presence }));
        }
        let mut all = local;
        let mut all_presence = local_presence;
        for (i, (remote, presence)) in self.ghosts_remote.iter().zip(&self.presence_remote).enumerate() {
            if i != self.slice.0 as usize {
                all.extend_from_slice(remote);
                all_presence.extend_from_slice(presence);
            }
        }
        // Each server gets only what is within reach of its own regions.
        let live: Vec<ServerId> = self.live_servers().collect();
        for server in live {
            let regions: Vec<crate::world::Aabb> = self.map.regions_of(server).map(|r| r.bounds).collect();
            let ghosts: Vec<Ghost> =
                all.iter().filter(|g| g.server != server && near_any(g, &regions, tick_us)).copied().collect();
            let presence: Vec<[f32; 3]> = all_presence
                .iter()
                .filter(|p| p.server != server && present_near_any(p, &regions))
                .map(|p| p.at)
                .collect();
            self.stats.ghosts_to_servers += ghosts.len() as u64;
            self.send(server, ReplicationMsg::Ghosts { ghosts, presence });
        }
    }
}

/// Whether `ghost` stands within its kind's margin (in a world whose ticks are `tick_us` long)
/// of any of `regions`.
fn near_any(ghost: &Ghost, regions: &[crate::world::Aabb], tick_us: u64) -> bool {
    let Some(margin) = crate::protocol::server::ghost_margin_m(ghost.kind, tick_us) else { return false };
    crate::protocol::server::within_any(glam::Vec3::from_array(ghost.position), regions, margin)
}

/// Whether a presence cell is within streaming's reach (widened by the cell's half diagonal)
/// of any of `regions`.
fn present_near_any(presence: &Presence, regions: &[crate::world::Aabb]) -> bool {
    let reach = crate::limits::STREAM_UNLOAD_RADIUS_M + crate::protocol::server::presence_slack_m();
    crate::protocol::server::within_any(glam::Vec3::from_array(presence.at), regions, reach)
}
