//! Regions, the unit of authority, and the versioned region map that assigns them to servers.
//!
//! Invariants: the regions tile the world (disjoint, volumes summing to the world's), every
//! change bumps the epoch, and there are at most `REGION_COUNT_MAX` regions.

use glam::Vec3;

use super::container::Aabb;
use crate::limits::{LOOKUP_CELLS_MAX, REGION_COUNT_MAX, REGION_EDGE_MIN_M};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord))]
pub struct ServerId(pub u32);

impl std::fmt::Display for ServerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}", self.0)
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord))]
pub struct RegionId(pub u32);

impl std::fmt::Display for RegionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "r{}", self.0)
    }
}

#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Region {
    pub id: RegionId,
    pub bounds: Aabb,
    /// The server with authority over the region; `None` while no live server can take it.
    pub server: Option<ServerId>,
}

#[derive(Clone, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RegionMap {
    pub epoch: u64,
    pub world: Aabb,
    next_region: u32,
    /// Sorted by id.
    regions: Vec<Region>,
    /// Where each point's region is, built on the first lookup after the regions change (never
    /// sent or stored: a map read back builds its own). Boxed, so a map is small to move.
    #[rkyv(with = rkyv::with::Skip)]
    lookup: std::sync::OnceLock<Box<Lookup>>,
}

/// Two maps are the same map whether or not either has built its lookup.
impl PartialEq for RegionMap {
    fn eq(&self, other: &Self) -> bool {
        self.epoch == other.epoch
            && self.world == other.world
            && self.next_region == other.next_region
            && self.regions == other.regions
    }
}

/// The grid the regions' own boundaries cut the world into: every cell lies inside exactly one
/// region, so a point's region is a cell per axis and one read. Regions made by halving (a k-d
/// tiling) share their boundaries, so the grid stays small: 64 regions along a corridor are 64
/// cells, a 4x4x4 tiling 64. A point's cell along an axis is found from an even bucketing of the
/// axis (the cell each bucket starts in), then a step or two: a binary search over 64 cuts was
/// 4% of a handoff.
#[derive(Clone, Debug, Default)]
struct Lookup {
    /// Each axis's boundaries, sorted, the world's own included.
    cuts: [Vec<f32>; 3],
    /// Each axis's buckets: the cell each starts in, and the buckets' width.
    buckets: [(Vec<u16>, f32); 3],
    /// The index (into `regions`) of each cell's region, x-major; empty: too many cells.
    cells: Vec<u16>,
}

/// Buckets per cell along an axis.
const BUCKETS_PER_CELL: usize = 4;
/// Steps from a bucket's first cell before the search turns binary (cuts bunched in a bucket).
const BUCKET_STEPS: usize = 8;

impl Lookup {
    fn axis_buckets(cut: &[f32]) -> (Vec<u16>, f32) {
        let (lo, hi) = (cut[0], cut[cut.len() - 1]);
        let count = (cut.len() - 1) * BUCKETS_PER_CELL;
        let width = (hi - lo) / count as f32;
        if !(width > 0.0 && width.is_finite()) {
            return (vec![0], f32::INFINITY);
        }
        let table = (0..count)
            .map(|b| {
                let start = lo + b as f32 * width;
                (cut.partition_point(|c| *c <= start).saturating_sub(1).min(cut.len() - 2)) as u16
            })
            .collect();
        (table, width)
    }

    /// The cell along `axis` that `x` (inside the world) is in.
    fn cell(&self, axis: usize, x: f32) -> usize {
        let cut = &self.cuts[axis];
        let last = cut.len() - 2;
        let (table, width) = &self.buckets[axis];
        let b = (((x - cut[0]) / width) as usize).min(table.len() - 1);
        let mut i = table[b] as usize;
        // Rounding may put `x` a bucket late: step back.
        while i > 0 && cut[i] > x {
            i -= 1;
        }
        for _ in 0..BUCKET_STEPS {
            if i >= last || cut[i + 1] > x {
                return i;
            }
            i += 1;
        }
        (i + cut[i + 1..].partition_point(|c| *c <= x)).min(last)
    }
}

impl Lookup {
    fn build(world: &Aabb, regions: &[Region]) -> Self {
        let mut cuts: [Vec<f32>; 3] = Default::default();
        for (axis, cut) in cuts.iter_mut().enumerate() {
            cut.push(world.min()[axis]);
            cut.push(world.max()[axis]);
            for r in regions {
                cut.push(r.bounds.min()[axis]);
                cut.push(r.bounds.max()[axis]);
            }
            cut.sort_by(f32::total_cmp);
            cut.dedup();
        }
        let n = [cuts[0].len() - 1, cuts[1].len() - 1, cuts[2].len() - 1];
        let count = n[0].saturating_mul(n[1]).saturating_mul(n[2]);
        if count == 0 || count > LOOKUP_CELLS_MAX || regions.len() > u16::MAX as usize {
            return Lookup { cuts, buckets: Default::default(), cells: Vec::new() };
        }
        let buckets = [0, 1, 2].map(|axis| Lookup::axis_buckets(&cuts[axis]));
        let mut cells = Vec::with_capacity(count);
        for i in 0..n[0] {
            for j in 0..n[1] {
                for k in 0..n[2] {
                    let mid = |axis: usize, c: usize| (cuts[axis][c] + cuts[axis][c + 1]) / 2.0;
                    let centre = Vec3::new(mid(0, i), mid(1, j), mid(2, k));
                    match regions.iter().position(|r| r.bounds.contains(centre)) {
                        Some(at) => cells.push(at as u16),
                        None => return Lookup { cuts, buckets, cells: Vec::new() },
                    }
                }
            }
        }
        Lookup { cuts, buckets, cells }
    }

    /// The index of `p`'s region, if the grid has one for it.
    fn find(&self, p: Vec3) -> Option<usize> {
        if self.cells.is_empty() {
            return None;
        }
        let cell = |axis: usize| self.cell(axis, p[axis]);
        let (n1, n2) = (self.cuts[1].len() - 1, self.cuts[2].len() - 1);
        self.cells.get((cell(0) * n1 + cell(1)) * n2 + cell(2)).map(|i| *i as usize)
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum MapError {
    #[error("no region {0}")]
    NoSuchRegion(RegionId),
    #[error("region {0} is already at the smallest size a region may have")]
    TooSmall(RegionId),
    #[error("the map already has {REGION_COUNT_MAX} regions")]
    TooMany,
    #[error("regions {0} and {1} do not form a box together")]
    NotAdjacent(RegionId, RegionId),
}

impl RegionMap {
    /// The world cut into `cells` regions by repeated halving of the largest region (a k-d
    /// split), none assigned yet.
    pub fn kd_split(world: Aabb, cells: usize) -> Self {
        let mut map = RegionMap { epoch: 1, world, next_region: 1, regions: Vec::new(), lookup: Default::default() };
        map.regions.push(Region { id: RegionId(0), bounds: world, server: None });
        while map.regions.len() < cells.clamp(1, REGION_COUNT_MAX) {
            let largest = map
                .regions
                .iter()
                .max_by(|a, b| a.bounds.volume().total_cmp(&b.bounds.volume()).then(b.id.cmp(&a.id)))
                .map(|r| r.id)
                .expect("a map has a region");
            if map.split(largest).is_err() {
                break;
            }
        }
        map.epoch = 1;
        map
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    pub fn get(&self, id: RegionId) -> Option<&Region> {
        self.regions.binary_search_by_key(&id, |r| r.id).ok().map(|i| &self.regions[i])
    }

    fn index(&self, id: RegionId) -> Result<usize, MapError> {
        self.regions.binary_search_by_key(&id, |r| r.id).map_err(|_| MapError::NoSuchRegion(id))
    }

    /// The region owning `p` (clamped into the world first; a non-finite point counts as the
    /// world's corner, so no input can make the lookup fail).
    pub fn region_at(&self, p: Vec3) -> &Region {
        let p = if p.is_finite() { self.world.clamp(p) } else { self.world.min() };
        let lookup = self.lookup.get_or_init(|| Box::new(Lookup::build(&self.world, &self.regions)));
        if let Some(r) = lookup.find(p).map(|i| &self.regions[i]).filter(|r| r.bounds.contains(p)) {
            return r;
        }
        self.regions
            .iter()
            .find(|r| r.bounds.contains(p))
            .expect("regions tile the world, so every clamped point has one")
    }

    pub fn owner_at(&self, p: Vec3) -> Option<ServerId> {
        self.region_at(p).server
    }

    pub fn regions_of(&self, server: ServerId) -> impl Iterator<Item = &Region> {
        self.regions.iter().filter(move |r| r.server == Some(server))
    }

    pub fn assign(&mut self, id: RegionId, server: Option<ServerId>) -> Result<(), MapError> {
        let i = self.index(id)?;
        self.regions[i].server = server;
        self.epoch += 1;
        Ok(())
    }

    /// Cuts a region in two across its longest axis; both halves keep its server.
    pub fn split(&mut self, id: RegionId) -> Result<(RegionId, RegionId), MapError> {
        let i = self.index(id)?;
        if self.regions.len() >= REGION_COUNT_MAX {
            return Err(MapError::TooMany);
        }
        let region = self.regions[i].clone();
        if region.bounds.size().max_element() < 2.0 * REGION_EDGE_MIN_M {
            return Err(MapError::TooSmall(id));
        }
        let (low, high) = region.bounds.split_longest();
        Ok(self.replace_by_halves(i, low, high))
    }

    /// Cuts a region in two across `axis` at `at` (a planned cut: see `cut::plan_cut`); both
    /// halves keep its server. Refused if either half would be under `REGION_EDGE_MIN_M` across.
    pub fn split_at(&mut self, id: RegionId, axis: usize, at: f32) -> Result<(RegionId, RegionId), MapError> {
        let i = self.index(id)?;
        if self.regions.len() >= REGION_COUNT_MAX {
            return Err(MapError::TooMany);
        }
        let region = self.regions[i].clone();
        let (lo, hi) = (region.bounds.min[axis.min(2)], region.bounds.max[axis.min(2)]);
        if axis > 2 || !(at >= lo + REGION_EDGE_MIN_M && at <= hi - REGION_EDGE_MIN_M) {
            return Err(MapError::TooSmall(id));
        }
        let (mut low, mut high) = (region.bounds, region.bounds);
        low.max[axis] = at;
        high.min[axis] = at;
        Ok(self.replace_by_halves(i, low, high))
    }

    fn replace_by_halves(&mut self, i: usize, low: Aabb, high: Aabb) -> (RegionId, RegionId) {
        let server = self.regions[i].server;
        let (a, b) = (RegionId(self.next_region), RegionId(self.next_region + 1));
        self.next_region += 2;
        self.regions.remove(i);
        self.regions.push(Region { id: a, bounds: low, server });
        self.regions.push(Region { id: b, bounds: high, server });
        self.lookup = Default::default();
        self.epoch += 1;
        (a, b)
    }

    /// Joins two regions that together form a box; the result takes `a`'s server.
    pub fn merge(&mut self, a: RegionId, b: RegionId) -> Result<RegionId, MapError> {
        let (ia, ib) = (self.index(a)?, self.index(b)?);
        let merged_bounds =
            self.regions[ia].bounds.union_if_box(&self.regions[ib].bounds).ok_or(MapError::NotAdjacent(a, b))?;
        let server = self.regions[ia].server;
        let id = RegionId(self.next_region);
        self.next_region += 1;
        self.regions.retain(|r| r.id != a && r.id != b);
        self.regions.push(Region { id, bounds: merged_bounds, server });
        self.lookup = Default::default();
        self.epoch += 1;
        Ok(id)
    }

    /// Moves the border between two regions that together form a box to the plane across `axis`
    /// at `at`: what lies between the old border and the new one changes server, and the number of
    /// regions and borders stays the same (a split, a move and a merge in one, without the sliver a
    /// split would leave). Both come back under new ids, each with its server; refused if they do
    /// not share a face across `axis`, or if either would be under `REGION_EDGE_MIN_M` across.
    pub fn shift_border(
        &mut self,
        a: RegionId,
        b: RegionId,
        axis: usize,
        at: f32,
    ) -> Result<(RegionId, RegionId), MapError> {
        let (ia, ib) = (self.index(a)?, self.index(b)?);
        let (ra, rb) = (self.regions[ia].clone(), self.regions[ib].clone());
        let union = ra.bounds.union_if_box(&rb.bounds).ok_or(MapError::NotAdjacent(a, b))?;
        if axis > 2
            || (0..3)
                .any(|x| x != axis && (ra.bounds.min[x] != rb.bounds.min[x] || ra.bounds.max[x] != rb.bounds.max[x]))
        {
            return Err(MapError::NotAdjacent(a, b));
        }
        if !(at >= union.min[axis] + REGION_EDGE_MIN_M && at <= union.max[axis] - REGION_EDGE_MIN_M) {
            return Err(MapError::TooSmall(if ra.bounds.min[axis] < rb.bounds.min[axis] { a } else { b }));
        }
        let (mut low, mut high) = (union, union);
        low.max[axis] = at;
        high.min[axis] = at;
        let (new_a, new_b) = if ra.bounds.min[axis] < rb.bounds.min[axis] { (low, high) } else { (high, low) };
        let (id_a, id_b) = (RegionId(self.next_region), RegionId(self.next_region + 1));
        self.next_region += 2;
        self.regions.retain(|r| r.id != a && r.id != b);
        self.regions.push(Region { id: id_a, bounds: new_a, server: ra.server });
        self.regions.push(Region { id: id_b, bounds: new_b, server: rb.server });
        self.lookup = Default::default();
        self.epoch += 1;
        Ok((id_a, id_b))
    }

    /// Pairs of regions that could merge, in a stable order.
    pub fn mergeable_pairs(&self) -> Vec<(RegionId, RegionId)> {
        let mut out = Vec::new();
        for (i, a) in self.regions.iter().enumerate() {
            for b in &self.regions[i + 1..] {
                if a.bounds.union_if_box(&b.bounds).is_some() {
                    out.push((a.id, b.id));
                }
            }
        }
        out
    }

    /// Checks the tiling invariant; a description of the first breach.
    pub fn check_tiling(&self) -> Result<(), String> {
        let total: f64 = self.regions.iter().map(|r| r.bounds.volume()).sum();
        let world = self.world.volume();
        if (total - world).abs() > world * 1e-9 {
            return Err(format!("region volumes sum to {total}, the world's is {world}"));
        }
        for (i, a) in self.regions.iter().enumerate() {
            if !self.world.contains_box(&a.bounds) {
                return Err(format!("region {} lies outside the world", a.id));
            }
            if let Some(b) = self.regions[i + 1..].iter().find(|b| a.bounds.overlaps(&b.bounds)) {
                return Err(format!("regions {} and {} overlap", a.id, b.id));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> Aabb {
        Aabb::new(Vec3::ZERO, Vec3::new(400.0, 200.0, 100.0))
    }

    /// Cuts anywhere (walls and load medians fall on no grid) keep the tiling exact, and a
    /// cut that would leave a side under the smallest width is refused.
    #[test]
    fn a_shifted_border_keeps_the_tiling_and_both_servers() {
        let mut map = RegionMap::kd_split(Aabb::new(Vec3::ZERO, Vec3::new(100.0, 40.0, 40.0)), 2);
        let ids: Vec<RegionId> = map.regions().iter().map(|r| r.id).collect();
        map.assign(ids[0], Some(ServerId(0))).unwrap();
        map.assign(ids[1], Some(ServerId(1))).unwrap();
        let epoch = map.epoch;
        let (a, b) = map.shift_border(ids[0], ids[1], 0, 70.0).unwrap();
        map.check_tiling().unwrap();
        assert_eq!(map.regions().len(), 2);
        assert!(map.epoch > epoch);
        assert_eq!((map.get(a).unwrap().server, map.get(b).unwrap().server), (Some(ServerId(0)), Some(ServerId(1))));
        assert_eq!(map.get(a).unwrap().bounds.max[0], 70.0);
        assert_eq!(map.owner_at(Vec3::new(60.0, 1.0, 1.0)), Some(ServerId(0)), "what lay past the old border moved");
        // Back the other way, from the high side's id first.
        let (b2, a2) = map.shift_border(b, a, 0, 30.0).unwrap();
        map.check_tiling().unwrap();
        assert_eq!(map.get(a2).unwrap().bounds.max[0], 30.0);
        assert_eq!(map.get(b2).unwrap().server, Some(ServerId(1)));
        // Too near either end, across an axis they do not share, or not neighbours: refused.
        assert!(matches!(map.shift_border(a2, b2, 0, 3.0), Err(MapError::TooSmall(_))));
        assert!(matches!(map.shift_border(a2, b2, 0, 97.0), Err(MapError::TooSmall(_))));
        assert!(matches!(map.shift_border(a2, b2, 1, 20.0), Err(MapError::NotAdjacent(..))));
        let (c, _) = map.split_at(b2, 1, 20.0).unwrap();
        assert!(matches!(map.shift_border(a2, c, 0, 40.0), Err(MapError::NotAdjacent(..))));
        map.check_tiling().unwrap();
    }

    #[test]
    fn cuts_at_any_coordinate_keep_the_tiling() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut map = RegionMap::kd_split(world(), 2);
        for _ in 0..200 {
            let ids: Vec<RegionId> = map.regions().iter().map(|r| r.id).collect();
            let id = ids[rng.random_range(0..ids.len())];
            let axis = rng.random_range(0..3usize);
            let b = map.get(id).unwrap().bounds;
            let at = b.min[axis] + rng.random::<f32>() * (b.max[axis] - b.min[axis]);
            match map.split_at(id, axis, at) {
                Ok(_) => assert!(at - b.min[axis] >= REGION_EDGE_MIN_M && b.max[axis] - at >= REGION_EDGE_MIN_M),
                Err(e) => assert!(matches!(e, MapError::TooSmall(_) | MapError::TooMany), "{e}"),
            }
            if rng.random::<f32>() < 0.3 {
                if let Some(&(a, b)) = map.mergeable_pairs().first() {
                    map.merge(a, b).unwrap();
                }
            }
            map.check_tiling().unwrap();
        }
        assert!(map.regions().len() > 8, "{} regions", map.regions().len());
        assert_eq!(map.split_at(map.regions()[0].id, 3, 1.0), Err(MapError::TooSmall(map.regions()[0].id)));
    }

    #[test]
    fn kd_split_tiles_the_world() {
        let map = RegionMap::kd_split(world(), 8);
        assert_eq!(map.regions().len(), 8);
        map.check_tiling().unwrap();
        for p in [Vec3::ZERO, Vec3::new(399.99, 199.99, 99.99), Vec3::new(1e9, -5.0, 50.0)] {
            let _ = map.region_at(p);
        }
    }

    /// The lookup grid finds the region a search of every region finds, for points anywhere
    /// (boundaries, corners, outside the world), through splits and merges.
    #[test]
    fn the_lookup_grid_agrees_with_a_search_of_every_region() {
        let scan = |map: &RegionMap, p: Vec3| {
            let p = if p.is_finite() { map.world.clamp(p) } else { map.world.min() };
            map.regions().iter().find(|r| r.bounds.contains(p)).unwrap().id
        };
        let mut map = RegionMap::kd_split(world(), 13);
        let probe = |map: &RegionMap| {
            for i in 0..2000u32 {
                let f = |k: u32, n: f32| {
                    ((i.wrapping_mul(2654435761).rotate_left(k) % 1000) as f32 / 1000.0) * n * 1.2 - n * 0.1
                };
                let mut p = Vec3::new(f(0, 400.0), f(7, 200.0), f(13, 100.0));
                if i % 7 == 0 {
                    // On a boundary: a region's own corner.
                    let r = &map.regions()[i as usize % map.regions().len()];
                    p = r.bounds.min();
                }
                assert_eq!(map.region_at(p).id, scan(map, p), "at {p}");
                // The grid itself answers, without the search `region_at` falls back on.
                let clamped = if p.is_finite() { map.world.clamp(p) } else { map.world.min() };
                let lookup = map.lookup.get().expect("built by region_at");
                if !lookup.cells.is_empty() {
                    let found = lookup.find(clamped).map(|i| map.regions[i].id);
                    assert_eq!(found, Some(scan(map, p)), "the grid at {p}");
                }
            }
        };
        probe(&map);
        let first = map.regions()[0].id;
        let (a, b) = map.split(first).unwrap();
        probe(&map);
        map.merge(a, b).unwrap();
        probe(&map);
        let corridor = RegionMap::kd_split(Aabb::new(Vec3::ZERO, Vec3::new(3200.0, 20.0, 20.0)), 64);
        probe(&corridor);
        // Cuts bunched in one corner: one region halved again and again, many cuts to a bucket.
        let mut bunched = RegionMap::kd_split(world(), 4);
        for _ in 0..10 {
            let smallest = bunched
                .regions()
                .iter()
                .min_by(|a, b| a.bounds.size().length().total_cmp(&b.bounds.size().length()))
                .unwrap()
                .id;
            if bunched.split(smallest).is_err() {
                break;
            }
        }
        assert!(bunched.regions().len() > 8, "{} regions", bunched.regions().len());
        probe(&bunched);
        assert!(!corridor.lookup.get().unwrap().cells.is_empty(), "the corridor has a grid");
    }

    #[test]
    fn every_change_bumps_the_epoch_and_keeps_the_tiling() {
        let mut map = RegionMap::kd_split(world(), 2);
        let e0 = map.epoch;
        let first = map.regions()[0].id;
        map.assign(first, Some(ServerId(3))).unwrap();
        assert_eq!(map.epoch, e0 + 1);
        let (a, b) = map.split(first).unwrap();
        assert_eq!(map.epoch, e0 + 2);
        assert_eq!(map.get(a).unwrap().server, Some(ServerId(3)));
        map.check_tiling().unwrap();
        let merged = map.merge(b, a).unwrap();
        assert_eq!(map.epoch, e0 + 3);
        map.check_tiling().unwrap();
        assert_eq!(map.get(merged).unwrap().server, Some(ServerId(3)));
        assert_eq!(map.merge(merged, RegionId(999)), Err(MapError::NoSuchRegion(RegionId(999))));
    }

    #[test]
    fn regions_stop_splitting_at_the_minimum_edge() {
        let mut map = RegionMap::kd_split(Aabb::new(Vec3::ZERO, Vec3::splat(REGION_EDGE_MIN_M * 1.5)), 1);
        let only = map.regions()[0].id;
        assert_eq!(map.split(only), Err(MapError::TooSmall(only)));
    }

    #[test]
    fn only_face_sharing_regions_merge() {
        let map = RegionMap::kd_split(world(), 4);
        let pairs = map.mergeable_pairs();
        assert!(!pairs.is_empty());
        let mut m = map.clone();
        let (a, b) = pairs[0];
        m.merge(a, b).unwrap();
        m.check_tiling().unwrap();
    }
}
