//! Regions, the unit of authority, and the versioned region map that assigns them to servers.
//!
//! Invariants: the regions tile the world (disjoint, volumes summing to the world's), every
//! change bumps the epoch, and there are at most `REGION_COUNT_MAX` regions.

use glam::Vec3;

use super::container::Aabb;
use crate::limits::{REGION_COUNT_MAX, REGION_EDGE_MIN_M};

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

#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RegionMap {
    pub epoch: u64,
    pub world: Aabb,
    next_region: u32,
    /// Sorted by id.
    regions: Vec<Region>,
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
        let mut map = RegionMap { epoch: 1, world, next_region: 1, regions: Vec::new() };
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
        let (a, b) = (RegionId(self.next_region), RegionId(self.next_region + 1));
        self.next_region += 2;
        self.regions.remove(i);
        self.regions.push(Region { id: a, bounds: low, server: region.server });
        self.regions.push(Region { id: b, bounds: high, server: region.server });
        self.epoch += 1;
        Ok((a, b))
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
        self.epoch += 1;
        Ok(id)
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

    #[test]
    fn kd_split_tiles_the_world() {
        let map = RegionMap::kd_split(world(), 8);
        assert_eq!(map.regions().len(), 8);
        map.check_tiling().unwrap();
        for p in [Vec3::ZERO, Vec3::new(399.99, 199.99, 99.99), Vec3::new(1e9, -5.0, 50.0)] {
            let _ = map.region_at(p);
        }
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
