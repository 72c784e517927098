//! Container streaming on the server side: loading the containers a player comes near, unloading those none is near.

use super::*;

impl Server {
    /// One streaming pass: load the containers in this server's regions that a player (held,
    /// or a neighbour's near the border, from its presence cells) has come near; unload the
    /// loaded ones no player is near any more, giving their loose items back to the layer. A
    /// loose item held in a container that is not loaded (adopted while an unload was on its
    /// way) goes back too. Without `give_back` (the map just changed) nothing is unloaded.
    pub(super) fn stream(&mut self, give_back: bool) {
        const KEEP: u8 = 1;
        const WANT: u8 = 2;
        let index = self.streaming.clone().expect("streaming is on");
        // Players by the `PRESENCE_CELL_M` cell they stand in, this server's and its
        // neighbours' alike: a crowd is a few dozen cells, each looked up once. A cell stands
        // for players anywhere in it, so the radii widen by half its diagonal: a container
        // loads no later than for the players themselves.
        let widen = presence_slack_m();
        let cells: rustc_hash::FxHashSet<glam::IVec3> = self
            .entities
            .values()
            .filter(|h| h.state.kind == EntityKind::Player)
            .map(|h| presence_cell(h.state.pos()))
            .chain(self.presence.iter().map(|p| presence_cell(Vec3::from_array(*p))))
            .collect();
        let mut cells: Vec<glam::IVec3> = cells.into_iter().collect();
        cells.sort_unstable_by_key(|c| (c.x, c.y, c.z));
        let mut touched: Vec<ContainerId> = Vec::new();
        for p in cells.into_iter().map(presence_centre) {
            let marks = &mut self.marks;
            index.near(p, STREAM_UNLOAD_RADIUS_M + widen, |c| {
                let mark = &mut marks[c as usize];
                if *mark == 0 {
                    touched.push(c);
                }
                *mark |= KEEP;
                if *mark & WANT == 0 && index.is_near(c, p, STREAM_LOAD_RADIUS_M + widen) {
                    *mark |= WANT;
                }
            });
        }
        let map = self.map.as_ref().expect("active servers have a map");
        let mine: Vec<crate::world::Aabb> = map.regions_of(self.id).map(|r| r.bounds).collect();
        let mut loads = Vec::new();
        for &c in &touched {
            let in_my_regions = || index.bounds(c).is_some_and(|b| mine.iter().any(|r| r.overlaps(&b)));
            if self.marks[c as usize] & WANT != 0 && !self.loaded.contains(&c) && in_my_regions() {
                loads.push(c);
            }
        }
        let dropped: Vec<ContainerId> = if give_back {
            self.loaded.iter().copied().filter(|c| self.marks[*c as usize] & KEEP == 0).collect()
        } else {
            Vec::new()
        };
        for c in touched {
            self.marks[c as usize] = 0;
        }
        for c in &dropped {
            self.loaded.remove(c);
        }
        self.loaded.extend(loads.iter().copied());
        let mut unloads: BTreeMap<ContainerId, Vec<(EntityId, Epoch)>> =
            dropped.into_iter().map(|c| (c, Vec::new())).collect();
        // While the map settles, no pass over the entities at all: nothing goes back.
        if give_back {
            for (id, h) in &self.entities {
                if !is_streamed(&h.state) {
                    continue;
                }
                // Most are in a loaded container: that lookup first, the region's only for the rest.
                let c = index.locate(h.state.pos());
                if !self.loaded.contains(&c) && map.owner_at(h.state.pos()) == Some(self.id) {
                    unloads.entry(c).or_default().push((*id, h.epoch));
                }
            }
        }
        for (container, roots) in unloads {
            for (root, _) in &roots {
                self.stats.roots_unloaded += 1;
                self.remove_subtree(*root);
            }
            self.send(ServerMsg::Unload { container, roots });
        }
        for container in loads {
            self.stats.containers_loaded += 1;
            self.send(ServerMsg::Load { container });
        }
    }
}
