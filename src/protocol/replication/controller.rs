//! The controller (slice 0): servers up and down, the region map and its broadcast, failover of dead servers, and load balancing by moving and splitting regions.

use super::*;
use crate::limits::{
    BALANCE_REST_PERIODS, BALANCE_WORK_FRACTION_MIN, BALANCE_WORK_GAP_FRACTION, CUTS_PER_PERIOD_MAX,
    MERGES_PER_PERIOD_MAX, MERGE_COLD_ENTITIES_MAX, REGION_EDGE_MIN_M, SERVER_ENTITIES_HIGH_MAX,
    SERVER_ENTITIES_LOW_MIN, SERVER_IDLE_SHARE, SERVER_RETIRE_AFTER_PERIODS_MIN, SERVER_START_AFTER_PERIODS_MIN,
    SERVER_WORK_HIGH_FRACTION, SERVER_WORK_LOW_FRACTION, SERVER_WORK_SURPLUS_FRACTION,
};
use crate::world::{plan_cut, plane_crosses, ContainerKind};

impl Replication {
    pub(super) fn tell_controller(&mut self, msg: SliceMsg) {
        if self.is_controller() {
            self.handle_peer(self.slice, msg);
        } else {
            self.peer_outbox.push_back((SliceId(0), msg));
        }
    }

    pub(super) fn controller_server_up(&mut self, server: ServerId) {
        debug_assert!(self.is_controller());
        self.lifecycles.starting.remove(&server);
        self.live_everywhere.insert(server);
    }

    /// Controller: a server died; its regions go to the least loaded live servers.
    pub(super) fn controller_server_down(&mut self, server: ServerId) {
        debug_assert!(self.is_controller());
        self.live_everywhere.remove(&server);
        self.lifecycles.starting.remove(&server);
        self.lifecycles.draining.remove(&server);
        let regions: Vec<RegionId> = self.map.regions_of(server).map(|r| r.id).collect();
        for region in regions {
            let heir = self.least_loaded();
            self.map.assign(region, heir).expect("region exists");
        }
        self.broadcast_map();
    }

    /// A newer map (from the controller, or the controller's own): pass it to this core's
    /// servers and place the orphans it gives owners to.
    pub(super) fn apply_map(&mut self, map: RegionMap) {
        if map.epoch <= self.map.epoch {
            return;
        }
        self.map = map;
        self.publish_map();
    }

    pub(super) fn publish_map(&mut self) {
        self.stats.map_changes += 1;
        self.journal(JournalOp::Map);
        let live: Vec<ServerId> = self.live_servers().collect();
        for server in live {
            self.send(server, ReplicationMsg::Map(self.map.clone()));
        }
        self.place_orphans();
        self.place_dormant();
    }

    /// The incarnation is gone (its lease ran out, or a newer one registered): its entities are
    /// fenced at once under fresh epochs, and once the controller has given its regions to live
    /// servers they go to them, from the committed state.
    pub(super) fn declare_dead(&mut self, server: ServerId) {
        if self.fence_and_orphan(server, false) {
            // The controller reassigns the regions and sends the map back, which places the orphans.
            self.tell_controller(SliceMsg::ServerDown { server });
        }
    }

    /// The incarnation is gone: its entities are fenced under fresh epochs and wait for a server.
    /// The containers it had loaded are kept for its next incarnation if `keep_loaded`. False if
    /// it was not live.
    pub(super) fn fence_and_orphan(&mut self, server: ServerId, keep_loaded: bool) -> bool {
        let Some(slot) = self.servers.get_mut(&server) else { return false };
        if !slot.live {
            return false;
        }
        slot.live = false;
        self.stats.servers_declared_dead += 1;
        if !keep_loaded {
            self.loaded.remove(&server);
        }
        let roots: Vec<EntityId> = self
            .records
            .iter()
            .filter(|(_, r)| r.authority == Some(server) && r.state.parent.is_none())
            .map(|(id, _)| *id)
            .collect();
        for root in roots {
            self.grant(root, None);
        }
        true
    }

    /// Controller: the live servers that take regions (not those being retired).
    fn serving(&self) -> impl Iterator<Item = ServerId> + '_ {
        self.live_everywhere.iter().copied().filter(|s| !self.lifecycles.draining.contains(s))
    }

    /// Controller: the live server with the fewest regions.
    pub(super) fn least_loaded(&self) -> Option<ServerId> {
        self.serving().min_by_key(|s| (self.map.regions_of(*s).count(), *s))
    }

    /// Controller, once a balancing period: start a server when the mesh is crowded for a while,
    /// retire the quietest when it is quiet for a while. True if it did either.
    ///
    /// Crowded and quiet are judged by what the cores' drivers measured when every core reports
    /// it: the mesh is crowded when a core's servers work more than `SERVER_WORK_HIGH_FRACTION`
    /// of a tick (a crowd in one room costs far more than its count: every one of them near
    /// every other) and no core has room to take load (every one past
    /// `SERVER_WORK_SURPLUS_FRACTION`; while one has, balancing evens the load out among the
    /// servers there are, and a start would only interrupt it), and every core under
    /// `SERVER_WORK_LOW_FRACTION` is quiet; every core under
    /// `SERVER_WORK_SURPLUS_FRACTION` lets a server beyond the starting number retire into a
    /// sibling on its core, and so does one that sits idle (under `SERVER_IDLE_SHARE` of the
    /// average server's entities) while no core is crowded. Without measurements (the simulator,
    /// tests), by entity counts: more than `SERVER_ENTITIES_HIGH_MAX` a live server on average, or
    /// fewer than `SERVER_ENTITIES_LOW_MIN` if one were retired. A retiring server's regions go to
    /// a server on its own core where it has one.
    fn lifecycle_step(&mut self, loads: &BTreeMap<ServerId, u32>) -> bool {
        let load_of = |s: ServerId| loads.get(&s).copied().unwrap_or(0);
        let (min, max) = (self.lifecycles.min, self.lifecycles.max);
        if max == 0 {
            return false;
        }
        let serving: Vec<ServerId> = self.serving().collect();
        let running = serving.len() + self.lifecycles.starting.len();
        let work: Option<Vec<u32>> = self.work_reported.iter().copied().collect();
        // Surplus: servers beyond the starting number on a core that has another, while no core
        // is past the surplus mark. A server's regions go to a server on its own core, so its
        // core's work stays (less the borders between them): one started for a crowd that has
        // gone retires even while the cores stay busy, and its retirement cannot crowd a core.
        let (crowded, quiet, surplus) = match &work {
            Some(work) => {
                let budget = self.lifecycles.tick_us as f64;
                let busiest = work.iter().copied().max().unwrap_or(0) as f64;
                let quietest = work.iter().copied().min().unwrap_or(0) as f64;
                (
                    busiest > SERVER_WORK_HIGH_FRACTION * budget && quietest > SERVER_WORK_SURPLUS_FRACTION * budget,
                    busiest < SERVER_WORK_LOW_FRACTION * budget,
                    busiest < SERVER_WORK_SURPLUS_FRACTION * budget,
                )
            }
            None => {
                let total: u64 = serving.iter().map(|s| load_of(*s) as u64).sum();
                (
                    total > SERVER_ENTITIES_HIGH_MAX as u64 * serving.len() as u64,
                    total < SERVER_ENTITIES_LOW_MIN as u64 * (serving.len() as u64).saturating_sub(1),
                    false,
                )
            }
        };
        let busy = crowded;
        let crowded = crowded && running < max;
        self.lifecycles.crowded = if crowded { self.lifecycles.crowded + 1 } else { 0 };
        let settled = self.lifecycles.starting.is_empty() && serving.len() > min.max(1);
        // The quietest server that has a sibling on its core (one that can take its regions
        // without moving work between cores).
        let with_sibling = serving
            .iter()
            .copied()
            .filter(|s| serving.iter().any(|o| o != s && self.home_of(*o) == self.home_of(*s)))
            .min_by_key(|s| (load_of(*s), std::cmp::Reverse(*s)));
        // Idle: it holds under `SERVER_IDLE_SHARE` of what a serving server holds on average (the
        // crowd it took a part of has gone), and no core is crowded.
        let total: u64 = serving.iter().map(|s| load_of(*s) as u64).sum();
        let idle = |s: ServerId| {
            work.is_some()
                && !busy
                && (load_of(s) as f64) < SERVER_IDLE_SHARE * total as f64 / serving.len().max(1) as f64
        };
        let retirable = match (quiet, surplus) {
            (true, _) => serving.iter().copied().min_by_key(|s| (load_of(*s), std::cmp::Reverse(*s))),
            (false, true) => with_sibling,
            (false, false) => with_sibling.filter(|s| idle(*s)),
        };
        let retire = settled && retirable.is_some();
        self.lifecycles.quiet = if retire { self.lifecycles.quiet + 1 } else { 0 };
        if self.lifecycles.crowded >= SERVER_START_AFTER_PERIODS_MIN {
            self.lifecycles.crowded = 0;
            return self.start_server(loads);
        }
        if self.lifecycles.quiet >= SERVER_RETIRE_AFTER_PERIODS_MIN {
            self.lifecycles.quiet = 0;
            if let Some(server) = with_sibling.or(retirable) {
                self.retire_server_to(server, loads);
                return true;
            }
        }
        false
    }

    /// Controller: start a logical server on the core with the most headroom (the least measured
    /// work, or without measurements the least load on its live servers). It takes regions once
    /// it registers (`region_for_idle`).
    pub fn start_server(&mut self, loads: &BTreeMap<ServerId, u32>) -> bool {
        assert!(self.is_controller(), "only the controller starts servers");
        let mut per_slice = vec![0u64; self.slices as usize];
        match self.work_reported.iter().copied().collect::<Option<Vec<u32>>>() {
            Some(work) => per_slice.iter_mut().zip(work).for_each(|(p, w)| *p = w as u64),
            None => {
                for s in self.serving() {
                    per_slice[self.home_of(s).0 as usize] += loads.get(&s).copied().unwrap_or(0) as u64;
                }
            }
        }
        // Ties (cores that measured the same work) go to the core running the fewest servers.
        let running_on = |c: u16| self.serving().filter(|s| self.home_of(*s).0 == c).count();
        let Some(core) = (0..self.slices).min_by_key(|c| (per_slice[*c as usize], running_on(*c), *c)) else {
            return false;
        };
        let in_use = |id: ServerId| {
            self.live_everywhere.contains(&id)
                || self.lifecycles.starting.contains(&id)
                || self.lifecycles.draining.contains(&id)
                || self.map.regions().iter().any(|r| r.server == Some(id))
        };
        let Some(server) =
            (0..u32::MAX / 2).map(|k| ServerId(k * self.slices as u32 + core as u32)).find(|id| !in_use(*id))
        else {
            return false;
        };
        self.lifecycles.starting.insert(server);
        self.stats.servers_started += 1;
        let msg = SliceMsg::StartServer { server };
        if core == self.slice.0 {
            self.handle_peer(self.slice, msg);
        } else {
            self.peer_outbox.push_back((SliceId(core), msg));
        }
        true
    }

    /// Controller: retire `server`: its regions go to the other live servers at once (their
    /// entities follow by handoff), and its home slice stops it once it holds nothing.
    pub fn retire_server(&mut self, server: ServerId) {
        self.retire_server_to(server, &BTreeMap::new());
    }

    /// `retire_server`, its regions going to the least loaded (by `loads`) of the servers on its
    /// own core, or where it has none there, to the least loaded live server.
    fn retire_server_to(&mut self, server: ServerId, loads: &BTreeMap<ServerId, u32>) {
        assert!(self.is_controller(), "only the controller retires servers");
        if !self.live_everywhere.contains(&server) || self.serving().count() < 2 {
            return;
        }
        self.lifecycles.draining.insert(server);
        self.stats.servers_retired += 1;
        let home = self.home_of(server);
        let sibling = self
            .serving()
            .filter(|s| self.home_of(*s) == home)
            .min_by_key(|s| (loads.get(s).copied().unwrap_or(0), self.map.regions_of(*s).count(), *s));
        let regions: Vec<RegionId> = self.map.regions_of(server).map(|r| r.id).collect();
        for region in regions {
            let heir = sibling.or_else(|| self.least_loaded());
            self.map.assign(region, heir).expect("region exists");
            self.stats.regions_moved += 1;
        }
        self.broadcast_map();
        let msg = SliceMsg::RetireServer { server };
        if home == self.slice {
            self.handle_peer(self.slice, msg);
        } else {
            self.peer_outbox.push_back((home, msg));
        }
    }

    /// Home slice: servers being retired that own no region and hold nothing any more are
    /// stopped (the node is told) and the controller forgets them.
    pub(super) fn retire_drained(&mut self) {
        if self.retiring.is_empty() {
            return;
        }
        let drained: Vec<ServerId> = self
            .retiring
            .iter()
            .copied()
            .filter(|s| {
                self.map.regions_of(*s).next().is_none() && self.records.values().all(|r| r.authority != Some(*s))
            })
            .collect();
        for server in drained {
            self.retiring.remove(&server);
            self.retired.insert(server);
            // The slot stays, not live, so a late or duplicated registration of a retired
            // incarnation is refused as stale rather than bring it back.
            if let Some(slot) = self.servers.get_mut(&server) {
                slot.live = false;
                slot.restart_due_us = None;
            }
            self.loaded.remove(&server);
            self.ghosts_local.remove(&server);
            self.lifecycle.push_back(Lifecycle::Retire(server));
            self.tell_controller(SliceMsg::ServerDown { server });
        }
    }

    /// Controller: the map changed; every slice (this one included) gets it.
    pub(super) fn broadcast_map(&mut self) {
        debug_assert!(self.is_controller());
        for slice in 1..self.slices {
            self.peer_outbox.push_back((SliceId(slice), SliceMsg::Map(self.map.clone())));
        }
        self.publish_map();
    }

    /// One tick's share of the census of what this slice holds, per region and where in it, that
    /// it reports at the end of each balancing period (`ticks_left` ticks from now, this one
    /// included): the records as they were when the period began, a share each tick, so no tick
    /// of a crowded core pays a pass over every record. A changed map starts the count again
    /// (its regions are new).
    pub(super) fn census_step(&mut self, ticks_left: u64) {
        let census = &mut self.census;
        if !census.counting || census.epoch != self.map.epoch {
            census.ids.clear();
            census.ids.extend(self.records.keys().copied());
            census.next = 0;
            census.loads.clear();
            census.epoch = self.map.epoch;
            census.counting = true;
        }
        // Items at rest cost a server nothing: with streaming, only what servers hold counts.
        let streaming = self.streaming.is_some();
        let share = (census.ids.len() - census.next).div_ceil(ticks_left.max(1) as usize);
        for id in &census.ids[census.next..census.next + share] {
            let Some(record) = self.records.get(id).filter(|r| !streaming || r.authority.is_some()) else {
                continue;
            };
            let p = record.state.pos();
            let region = self.map.region_at(p);
            census.loads.entry(region.id).or_insert_with(|| RegionLoad::new(region.id)).add(&region.bounds, p);
        }
        census.next += share;
    }

    /// The period's census, counted to its end: entities this slice holds, per region.
    pub(super) fn region_counts(&mut self) -> Vec<RegionLoad> {
        self.census_step(1);
        self.census.counting = false;
        std::mem::take(&mut self.census.loads).into_values().collect()
    }

    /// Controller: every slice's last report of each region, added up.
    fn region_load_reports(&self) -> BTreeMap<RegionId, RegionLoad> {
        let mut total: BTreeMap<RegionId, RegionLoad> = BTreeMap::new();
        for (_, load) in &self.loads {
            for (region, l) in load {
                total.entry(*region).or_insert_with(|| RegionLoad::new(*region)).absorb(l);
            }
        }
        total
    }

    /// Controller: entities per region, from every slice's last report.
    pub fn region_loads(&self) -> BTreeMap<RegionId, u32> {
        self.region_load_reports().into_iter().map(|(id, l)| (id, l.entities)).collect()
    }

    /// Controller, once a period: if the busiest live server holds well more than the quietest,
    /// give the quietest the busiest's region that best halves the gap; if every region of the
    /// busiest is too big for that, cut its busiest (along walls first: `plan_cut`) so the next
    /// period can move a part. Cold neighbours merge back first.
    pub(super) fn balance(&mut self) {
        let reports = self.region_load_reports();
        let loads: BTreeMap<RegionId, u32> = reports.iter().map(|(id, l)| (*id, l.entities)).collect();
        let per_server: BTreeMap<ServerId, u32> = self
            .live_everywhere
            .iter()
            .map(|s| (*s, self.map.regions_of(*s).map(|r| loads.get(&r.id).copied().unwrap_or(0)).sum()))
            .collect();
        if self.lifecycle_step(&per_server) {
            return;
        }
        // After cuts, every slice reports the sides before anything is judged on them.
        if self.loads.iter().any(|(epoch, _)| *epoch < self.lifecycles.cut_epoch) {
            return;
        }
        // Cold fragments first (they move nothing, and they change no server's load), while the
        // reports are of the current map; then balancing.
        self.merge_cold(&loads);
        let by_load: Vec<(u32, ServerId)> =
            self.serving().map(|s| (per_server.get(&s).copied().unwrap_or(0), s)).collect();
        let pair = match self.work_reported.iter().copied().collect::<Option<Vec<u32>>>() {
            Some(work) => self.balance_by_work(&by_load, &work),
            None => self.balance_pair(&by_load).filter(|(high, _, low, _)| (high - low) * 10 >= *high),
        };
        let Some((high, busiest, low, quietest)) = pair else { return };
        let gap = high - low;
        if busiest == quietest || gap < BALANCE_SLACK_ENTITIES {
            return;
        }
        // A move changes the work the next period measures (part of it still from before).
        let measured = self.work_reported.iter().all(|w| w.is_some());
        let mut regions: Vec<(u32, RegionId)> =
            self.map.regions_of(busiest).map(|r| (loads.get(&r.id).copied().unwrap_or(0), r.id)).collect();
        regions.sort();
        // The biggest region that moves at most three quarters of the gap, so the sides end
        // at least half again as near each other. A region near the whole gap would only swap
        // which side is hot, and crumbs (under a quarter of it) would take a period each while
        // the load that matters stays put: with nothing in between, the biggest is cut.
        let movable = regions
            .iter()
            .rev()
            .find(|(n, _)| *n > 0 && *n as u64 * 4 <= gap as u64 * 3 && regions.len() > 1)
            .filter(|(n, _)| *n as u64 * 4 >= gap as u64 || !self.cuttable(regions.last().map(|(_, r)| *r)));
        // Nothing the right size to move: where the busiest's load lies against a region of the
        // other side, the border between them moves instead of a new one being cut.
        if movable.is_none() && self.shift_border_toward(&reports, (busiest, &regions), quietest, gap, measured) {
            return;
        }
        match movable {
            Some(&(_, region)) => {
                self.map.assign(region, Some(quietest)).expect("region exists");
                self.stats.regions_moved += 1;
                if measured {
                    self.lifecycles.rest = BALANCE_REST_PERIODS;
                }
                self.broadcast_map();
            }
            None => {
                let Some(&(_, busiest_region)) = regions.last() else { return };
                let Some(bounds) = self.map.get(busiest_region).map(|r| r.bounds) else { return };
                let tree = self.streaming.as_ref().map(|index| index.tree());
                // Cut, and cut the heavier side again while (by the estimate) it is still too
                // big to move: walling off a hot room takes one period, not one per wall.
                let (mut region, mut bounds) = (busiest_region, bounds);
                let mut load = reports.get(&busiest_region).cloned();
                let mut cuts = 0;
                // Every side a cut left, by its estimated load: one that fits the gap moves now.
                // Only the first cut's sides, estimated from the region's own report: a later
                // cut's come from marginals re-binned over a side (a crowd in one coarse bin
                // looks spread over it), so they wait for their own reports. A side's estimate
                // is off by at most what the bin holding the cut holds.
                let mut sides: Vec<(u32, RegionId, u32)> = Vec::new();
                while cuts < CUTS_PER_PERIOD_MAX {
                    let Some(cut) = plan_cut(&bounds, tree, load.as_ref()) else { break };
                    if cuts > 0 && cut.through == Some(ContainerKind::Room) {
                        // A room walled off this period is cut on its own report, the next.
                        break;
                    }
                    let Ok((low, high)) = self.map.split_at(region, cut.axis, cut.at) else { break };
                    cuts += 1;
                    self.stats.regions_split += 1;
                    self.stats.rooms_cut += (cut.through == Some(ContainerKind::Room)) as u64;
                    let Some(parent) = load.take() else { break };
                    let unsure = parent.straddling(&bounds, cut.axis, cut.at);
                    let side = |id: RegionId| self.map.get(id).map(|r| r.bounds);
                    let (Some(lb), Some(hb)) = (side(low), side(high)) else { break };
                    let (ll, hl) = (parent.restrict(&bounds, &lb), parent.restrict(&bounds, &hb));
                    if cuts == 1 {
                        sides.extend([(ll.entities, low, unsure), (hl.entities, high, unsure)]);
                    }
                    let (next, next_bounds, next_load) =
                        if ll.entities >= hl.entities { (low, lb, ll) } else { (high, hb, hl) };
                    // The heavier side fits by the estimate: stop, unless the estimate is a later
                    // cut's in a world of walls (there the next cut is along one, and a room is
                    // only ever cut on its own report): a crowd in one room of a city is walled
                    // off in one period, not one period per guess.
                    let most = next_load.entities as u64 + if cuts == 1 { unsure as u64 } else { u64::MAX / 8 };
                    let fits = next_load.entities as u64 * 4 <= gap as u64 * 3
                        && (tree.is_none() || most * 4 <= gap as u64 * 3);
                    if fits || cut.through == Some(ContainerKind::Room) {
                        break;
                    }
                    (region, bounds, load) = (next, next_bounds, Some(next_load));
                }
                if cuts > 0 {
                    // The sides' loads are known from the next reports.
                    for (_, load) in &mut self.loads {
                        load.remove(&busiest_region);
                    }
                    // The biggest side (still a region: not cut again) that moves between a
                    // quarter and three quarters of the gap by the estimate goes now, not a
                    // period later: a crowd that came at once is shared in one period fewer.
                    let fits = |n: u32, unsure: u32| {
                        let (least, most) = (n.saturating_sub(unsure) as u64, n as u64 + unsure as u64);
                        n > 0 && most * 4 <= gap as u64 * 3 && least * 4 >= gap as u64
                    };
                    let side = sides.iter().filter(|(n, r, u)| fits(*n, *u) && self.map.get(*r).is_some()).max();
                    if let Some(&(_, side, _)) = side {
                        self.map.assign(side, Some(quietest)).expect("region exists");
                        self.stats.regions_moved += 1;
                        if measured {
                            self.lifecycles.rest = BALANCE_REST_PERIODS;
                        }
                    }
                    self.lifecycles.cut_epoch = self.map.epoch;
                    self.broadcast_map();
                }
            }
        }
    }

    /// Controller: evens load out by moving a border instead of cutting a new one. The busiest
    /// server's most loaded region (of `from`, by load) that forms a box with a region of a server
    /// on `quietest`'s core gives that neighbour the slab along their shared face that holds about
    /// half the gap, by the region's report (its entities along the axis). A room cut in two is
    /// then evened out by its one border moving, not cut into ever more cells (each cell's
    /// border shows its neighbours a strip of the crowd as ghosts, and every crossing is a
    /// handoff). True if a border moved.
    fn shift_border_toward(
        &mut self,
        reports: &BTreeMap<RegionId, RegionLoad>,
        (busiest, from): (ServerId, &[(u32, RegionId)]),
        quietest: ServerId,
        gap: u32,
        measured: bool,
    ) -> bool {
        let core = self.home_of(quietest);
        let want = gap as f64 / 2.0;
        for &(n, region) in from.iter().rev() {
            let (Some(report), Some(bounds)) = (reports.get(&region), self.map.get(region).map(|r| r.bounds)) else {
                continue;
            };
            if (n as f64) <= want {
                break;
            }
            let neighbour = self
                .map
                .regions()
                .iter()
                .filter(|q| q.server.is_some_and(|s| s != busiest && self.home_of(s) == core))
                .filter(|q| bounds.union_if_box(&q.bounds).is_some())
                .min_by_key(|q| (q.server != Some(quietest), q.id));
            let Some((neighbour, other)) = neighbour.map(|q| (q.id, q.bounds)) else { continue };
            let Some(axis) = (0..3).find(|a| bounds.max[*a] == other.min[*a] || other.max[*a] == bounds.min[*a]) else {
                continue;
            };
            let total: f64 = report.bins[axis].iter().map(|n| *n as f64).sum();
            // The slab next to the neighbour that holds `want`: the entities beyond the plane
            // fall as it moves towards the neighbour, so a bisection finds it.
            let beyond = |at: f32| {
                let below = report.below(&bounds, axis, at);
                if other.min[axis] >= bounds.max[axis] {
                    total - below
                } else {
                    below
                }
            };
            let (mut near, mut far) = if other.min[axis] >= bounds.max[axis] {
                (bounds.max[axis], bounds.min[axis] + REGION_EDGE_MIN_M)
            } else {
                (bounds.min[axis], bounds.max[axis] - REGION_EDGE_MIN_M)
            };
            if beyond(far) < want {
                near = far;
            } else {
                for _ in 0..32 {
                    let mid = (near + far) / 2.0;
                    if beyond(mid) < want {
                        near = mid;
                    } else {
                        far = mid;
                    }
                }
            }
            // Walls first: the border moves only where it crosses no container it did not cross
            // already (a border through a room moves within the room; one along walls is not
            // dragged through a room, which is walled off and cut instead).
            let union = bounds.union_if_box(&other).unwrap_or(bounds);
            let tree = self.streaming.as_ref().map(|index| index.tree());
            let old_at = if other.min[axis] >= bounds.max[axis] { bounds.max[axis] } else { bounds.min[axis] };
            if tree.is_some_and(|t| {
                let before = plane_crosses(&union, t, axis, old_at);
                plane_crosses(&union, t, axis, near).iter().any(|c| !before.contains(c))
            }) {
                continue;
            }
            if near == bounds.min[axis]
                || near == bounds.max[axis]
                || self.shift_border(region, neighbour, axis, near).is_err()
            {
                continue;
            }
            if measured {
                self.lifecycles.rest = BALANCE_REST_PERIODS;
            }
            // The moved regions' loads are known from the next reports.
            for (_, load) in &mut self.loads {
                load.remove(&region);
                load.remove(&neighbour);
            }
            self.lifecycles.cut_epoch = self.map.epoch;
            return true;
        }
        false
    }

    /// Controller: whether `region` could be cut (both sides at least the smallest edge).
    fn cuttable(&self, region: Option<RegionId>) -> bool {
        let tree = self.streaming.as_ref().map(|index| index.tree());
        region.and_then(|r| self.map.get(r)).is_some_and(|r| plan_cut(&r.bounds, tree, None).is_some())
    }

    /// Controller, where the cores' drivers measure their work: the two servers load should go
    /// between, with an entity gap that stands for the work to even out, or `None` when nothing
    /// should move. Load moves only while the busiest core works past `BALANCE_WORK_FRACTION_MIN`
    /// of a tick and at least `BALANCE_WORK_GAP_FRACTION` of one more than the quietest: a mesh
    /// within its budget keeps its map, since every cut and move between servers adds borders, and
    /// with them ghosts and handoffs (a crowd's scatter measured 60% more work on a dynamic mesh
    /// that had evened out its counts than on the static one, BENCHMARKS.md). Only between cores:
    /// servers on one core tick one after the other, so evening them out saves nothing. After a
    /// move the next `BALANCE_REST_PERIODS` periods only watch: a period's work lags the move.
    fn balance_by_work(&mut self, by_load: &[(u32, ServerId)], work: &[u32]) -> Option<(u32, ServerId, u32, ServerId)> {
        if self.lifecycles.rest > 0 {
            self.lifecycles.rest -= 1;
            return None;
        }
        let budget = self.lifecycles.tick_us as f64;
        let hot = (0..work.len()).max_by_key(|c| (work[*c], std::cmp::Reverse(*c)))?;
        let cold = (0..work.len()).min_by_key(|c| (work[*c], *c))?;
        let (hot_us, cold_us) = (work[hot] as f64, work[cold] as f64);
        if hot == cold
            || hot_us < BALANCE_WORK_FRACTION_MIN * budget
            || hot_us - cold_us < BALANCE_WORK_GAP_FRACTION * budget
        {
            return None;
        }
        let slices = self.slices;
        let on = |core: usize| by_load.iter().filter(move |(_, s)| home_slice(*s, slices).0 as usize == core);
        let hot_entities: u64 = on(hot).map(|(n, _)| *n as u64).sum();
        let (&(high, busiest), &(low, quietest)) = (on(hot).max()?, on(cold).min()?);
        if hot_entities == 0 {
            return None;
        }
        // What the hot core's entities cost each, on average: the gap in work, in entities of it.
        let gap = ((hot_us - cold_us) / (hot_us / hot_entities as f64)) as u32;
        if high == 0 || busiest == quietest || gap < BALANCE_SLACK_ENTITIES {
            return None;
        }
        Some((low.saturating_add(gap), busiest, low, quietest))
    }

    /// Controller: the two servers load should go between, with their loads. Cores first: a
    /// core's work is what its servers do together, so while one core's servers hold well more
    /// than another's, load goes from the busiest core's busiest server to the quietest core's
    /// quietest; with the cores even (or one core), from the busiest server to the quietest.
    fn balance_pair(&self, by_load: &[(u32, ServerId)]) -> Option<(u32, ServerId, u32, ServerId)> {
        let global = || {
            let (&(high, busiest), &(low, quietest)) = (by_load.iter().max()?, by_load.iter().min()?);
            Some((high, busiest, low, quietest))
        };
        let slices = self.slices as usize;
        if slices < 2 {
            return global();
        }
        let mut per_core = vec![0u64; slices];
        for (n, s) in by_load {
            per_core[self.home_of(*s).0 as usize] += *n as u64;
        }
        // By what the cores' servers hold, not by measured work: a move shifts entities, and the
        // work a period measures lags the last move and varies with whatever else the machine
        // runs, so judging moves by it sends regions back and forth.
        let cost = per_core;
        let hot = (0..slices).max_by_key(|c| (cost[*c], std::cmp::Reverse(*c)))?;
        let cold = (0..slices).min_by_key(|c| (cost[*c], *c))?;
        // Well busier: by a tenth of the busier core, as between servers.
        if hot == cold || (cost[hot] - cost[cold]) * 10 < cost[hot] {
            return global();
        }
        let on = |core: usize| by_load.iter().filter(move |(_, s)| self.home_of(*s).0 as usize == core);
        match (on(hot).max(), on(cold).min()) {
            (Some(&(high, busiest)), Some(&(low, quietest))) if high > low => Some((high, busiest, low, quietest)),
            _ => global(),
        }
    }

    /// Controller: neighbouring regions of one server that together hold at most
    /// `MERGE_COLD_ENTITIES_MAX` merge back into one (nothing moves: a crowd's fragments go,
    /// the servers keep what they hold; balancing and retirement move load), up to
    /// `MERGES_PER_PERIOD_MAX` a period. Only on reports counted under the current map: a region
    /// missing from them is then empty, not merely unreported.
    fn merge_cold(&mut self, loads: &BTreeMap<RegionId, u32>) {
        if self.loads.iter().any(|(epoch, _)| *epoch != self.map.epoch) {
            return;
        }
        let mut loads = loads.clone();
        let mut merged = 0;
        while merged < MERGES_PER_PERIOD_MAX {
            let load = |id: RegionId| loads.get(&id).copied().unwrap_or(0);
            let server = |id: RegionId| self.map.get(id).and_then(|r| r.server);
            let pair = self
                .map
                .mergeable_pairs()
                .into_iter()
                .filter(|(a, b)| server(*a) == server(*b) && load(*a) + load(*b) <= MERGE_COLD_ENTITIES_MAX)
                .min_by_key(|(a, b)| (load(*a) + load(*b), *a, *b));
            let Some((a, b)) = pair else { break };
            let Ok(union) = self.map.merge(a, b) else { break };
            loads.insert(union, load(a) + load(b));
            self.stats.regions_merged += 1;
            merged += 1;
        }
        if merged > 0 {
            self.broadcast_map();
        }
    }

    /// The controller's standing policy: every region has a live server; with balancing on, an
    /// idle server takes a region from the busiest.
    pub(super) fn controller_tick(&mut self) {
        let mut changed = false;
        let unowned: Vec<RegionId> = self.map.regions().iter().filter(|r| r.server.is_none()).map(|r| r.id).collect();
        for region in unowned {
            if let Some(heir) = self.least_loaded() {
                self.map.assign(region, Some(heir)).expect("region exists");
                changed = true;
            }
        }
        if let (true, Some(idle)) = (self.balancing, self.least_loaded()) {
            if self.map.regions_of(idle).count() == 0 {
                if let Some(region) = self.region_for_idle(idle) {
                    self.map.assign(region, Some(idle)).expect("region exists");
                    self.stats.regions_moved += 1;
                    changed = true;
                }
            }
        }
        if changed {
            self.broadcast_map();
        }
        if self.balancing && self.ticks % self.balance_every_ticks == 1 % self.balance_every_ticks {
            self.balance();
        }
    }

    /// Controller: the region a server with none (one just started) takes, where the cores do
    /// not measure their work (the simulator, tests by counts): from the busiest server that has
    /// two or more, its biggest region holding at most half of what that server holds, else its
    /// smallest, so load moves toward the middle, never a whole crowd at once.
    ///
    /// Where the cores measure their work, none: a start adds a server, not CPU (the cores are
    /// the host's). A region taken across cores that work alike only loads the other core, which
    /// balancing then undoes, each move a burst of handoffs (the tavern's dynamic trials that
    /// started servers failed on it, BENCHMARKS.md), and one taken on its own core only adds a
    /// border there. A started server stands ready as the quietest server of its core, which is
    /// where `balance_by_work` sends load once one core works well past another.
    fn region_for_idle(&self, idle: ServerId) -> Option<RegionId> {
        if self.work_reported.iter().all(|w| w.is_some()) {
            return None;
        }
        let loads = self.region_loads();
        let load = |r: RegionId| loads.get(&r).copied().unwrap_or(0);
        let held = |s: ServerId| -> u64 { self.map.regions_of(s).map(|r| load(r.id) as u64).sum() };
        let donor = self
            .serving()
            .filter(|s| *s != idle && self.map.regions_of(*s).count() >= 2)
            .max_by_key(|s| (held(*s), std::cmp::Reverse(*s)))?;
        let half = held(donor) / 2;
        let mut regions: Vec<(u32, RegionId)> = self.map.regions_of(donor).map(|r| (load(r.id), r.id)).collect();
        regions.sort();
        regions.iter().rev().find(|(n, _)| *n as u64 <= half && *n > 0).or(regions.first()).map(|(_, r)| *r)
    }

    /// Controller: cut a region in two (both halves keep its server).
    pub fn split_region(&mut self, region: RegionId) -> Result<(RegionId, RegionId), MapError> {
        assert!(self.is_controller(), "only the controller changes the map");
        let halves = self.map.split(region)?;
        self.stats.regions_split += 1;
        self.broadcast_map();
        Ok(halves)
    }

    /// Controller: join two regions that form a box; the union takes `a`'s server.
    pub fn merge_regions(&mut self, a: RegionId, b: RegionId) -> Result<RegionId, MapError> {
        assert!(self.is_controller(), "only the controller changes the map");
        let merged = self.map.merge(a, b)?;
        self.stats.regions_merged += 1;
        self.broadcast_map();
        Ok(merged)
    }

    /// Controller: move the border between two regions that form a box to the plane across `axis`
    /// at `at` (`RegionMap::shift_border`); what lies between changes server, its entities follow
    /// by handoff. Counted as a move.
    pub fn shift_border(
        &mut self,
        a: RegionId,
        b: RegionId,
        axis: usize,
        at: f32,
    ) -> Result<(RegionId, RegionId), MapError> {
        assert!(self.is_controller(), "only the controller changes the map");
        let moved = self.map.shift_border(a, b, axis, at)?;
        self.stats.regions_moved += 1;
        self.broadcast_map();
        Ok(moved)
    }

    /// Controller: give a region to another live server; its entities follow by handoff.
    pub fn move_region(&mut self, region: RegionId, server: ServerId) -> Result<(), MapError> {
        assert!(self.is_controller(), "only the controller changes the map");
        if !self.live_everywhere.contains(&server) {
            return Ok(());
        }
        self.map.assign(region, Some(server))?;
        self.stats.regions_moved += 1;
        self.broadcast_map();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::Aabb;
    use glam::Vec3;

    #[test]
    fn every_region_operation_bumps_the_epoch_and_reaches_every_other_slice() {
        let map = RegionMap::kd_split(Aabb::new(Vec3::ZERO, Vec3::splat(100.0)), 2);
        let mut s: Vec<Replication> =
            (0..3).map(|i| Replication::new_slice(SliceId(i), 3, map.clone(), Vec::new())).collect();
        let epoch = s[0].map().epoch;
        let first = s[0].map().regions()[0].id;
        let (a, b) = s[0].split_region(first).unwrap();
        let merged = s[0].merge_regions(a, b).unwrap();
        assert!(s[0].map().epoch >= epoch + 2, "{} after {epoch}", s[0].map().epoch);
        assert!(s[0].map().get(merged).is_some());
        let mut maps = 0;
        while let Some((to, msg)) = s[0].poll_peer() {
            maps += matches!(msg, SliceMsg::Map(_)) as usize;
            s[to.0 as usize].handle_peer(SliceId(0), msg);
        }
        assert!(maps >= 2, "the map went to both other slices");
        assert_eq!(s[1].map(), s[0].map());
        assert_eq!(s[2].map(), s[0].map());
    }

    /// A region operation asked of a slice other than 0 is a bug in the caller, not a message
    /// from outside: it stops loudly.
    #[test]
    #[should_panic(expected = "only the controller")]
    fn only_the_controller_changes_the_map() {
        let map = RegionMap::kd_split(Aabb::new(Vec3::ZERO, Vec3::splat(100.0)), 2);
        let mut s1 = Replication::new_slice(SliceId(1), 2, map.clone(), Vec::new());
        let _ = s1.split_region(map.regions()[0].id);
    }
}
