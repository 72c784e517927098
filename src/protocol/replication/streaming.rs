//! Container streaming: loose items at rest in the layer while no player is near their container, granted again when a server loads it.

use super::*;

impl Replication {
    /// A server loads a container: the items at rest in it, in that server's regions, go to it.
    pub(super) fn load_container(&mut self, server: ServerId, inc: Incarnation, container: ContainerId) {
        if !self.is_live(server, inc) {
            self.stats.stale_rejected += 1;
            return;
        }
        let Some(index) = self.streaming.clone() else {
            self.protocol_error(|| format!("{server} streams containers, this layer does not"));
            return;
        };
        if index.bounds(container).is_none() {
            self.protocol_error(|| format!("{server} loaded container {container}, which does not exist"));
            return;
        }
        self.loaded.entry(server).or_default().insert(container);
        let Some(resting) = self.dormant.get(&container) else { return };
        let waking: Vec<EntityId> = resting
            .iter()
            .copied()
            .filter(|root| self.map.owner_at(self.records[root].state.pos()) == Some(server))
            .collect();
        for root in waking {
            self.wake(root, container);
            self.stats.woken += 1;
            self.grant(root, Some(server));
        }
    }

    /// A server unloaded a container and gave back the item roots it held in it.
    pub(super) fn unload_container(
        &mut self,
        server: ServerId,
        inc: Incarnation,
        container: ContainerId,
        roots: Vec<(EntityId, Epoch)>,
    ) {
        if !self.is_live(server, inc) {
            self.stats.stale_rejected += 1;
            return;
        }
        if let Some(loaded) = self.loaded.get_mut(&server) {
            loaded.remove(&container);
        }
        for (root, epoch) in roots {
            if !self.authorized(server, root, epoch) {
                self.stats.stale_rejected += 1;
                continue;
            }
            if self.streaming.is_none() || !is_streamed(&self.records[&root].state) {
                self.protocol_error(|| format!("{server} unloaded {root}, which is not a loose item"));
                continue;
            }
            self.park(root);
        }
        // The map may have moved the item's region to a server on another core (or to one that
        // has the container loaded) while the unload was on its way: with the map settled, no
        // later change would send the item there, and it would rest by a player for good.
        self.place_dormant();
    }

    /// Puts a loose item root (with its contents) to rest: no server has authority over it (a
    /// fresh epoch makes any late write by its last holder stale) until one loads its container.
    pub(super) fn park(&mut self, root: EntityId) {
        let index = self.streaming.clone().expect("parking needs streaming");
        self.hold_by_none(root);
        let container = index.locate(self.records[&root].state.pos());
        self.dormant.entry(container).or_default().insert(root);
        self.stats.parked += 1;
    }

    /// Takes `root`'s subtree from whoever held it, under a fresh epoch (a late write by its last
    /// holder is stale), and from the orphans: held by no server, by design, until it is placed.
    pub(super) fn hold_by_none(&mut self, root: EntityId) {
        let epoch = self.fresh_epoch();
        for id in self.forest.subtree(root) {
            let record = self.records.get_mut(&id).expect("subtree entities exist");
            record.authority = None;
            record.epoch = epoch;
            record.committed_epoch = epoch;
        }
        self.orphans.remove(&root);
    }

    pub(super) fn wake(&mut self, root: EntityId, container: ContainerId) {
        if let Some(resting) = self.dormant.get_mut(&container) {
            resting.remove(&root);
            if resting.is_empty() {
                self.dormant.remove(&container);
            }
        }
    }

    /// The map changed: an item at rest whose region's server now lives on another core moves
    /// to that core's slice (where that server's loads are heard), and one whose region's new
    /// server has its container loaded goes to it. Containers whose regions all belong to local
    /// servers that have not loaded them are passed over whole.
    pub(super) fn place_dormant(&mut self) {
        let containers: Vec<ContainerId> = self.dormant.keys().copied().collect();
        let index = match &self.streaming {
            Some(index) => index.clone(),
            None => return,
        };
        for container in containers {
            let bounds = index.bounds(container).expect("dormant containers exist");
            let unsettled = self.map.regions().iter().filter(|r| r.bounds.overlaps(&bounds)).any(|r| {
                r.server.is_some_and(|s| {
                    self.home_of(s) != self.slice || self.loaded.get(&s).is_some_and(|l| l.contains(&container))
                })
            });
            if !unsettled {
                continue;
            }
            let roots: Vec<EntityId> = self.dormant[&container].iter().copied().collect();
            for root in roots {
                let Some(owner) = self.map.owner_at(self.records[&root].state.pos()) else { continue };
                let remote = self.home_of(owner) != self.slice;
                if remote || self.loaded.get(&owner).is_some_and(|l| l.contains(&container)) {
                    self.wake(root, container);
                    self.place(root, 0);
                }
            }
        }
    }
}
