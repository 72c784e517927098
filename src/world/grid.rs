//! A uniform spatial grid: entities bucketed by cell, so "what is near this point" or "what did
//! this projectile's path pass" looks at a few cells instead of every entity. Rebuilt from
//! scratch when positions change (a pass over the entities), queried many times.
//!
//! Deterministic: cells are found by key, never iterated, and callers choose among candidates by
//! id, so results do not depend on hashing.

use glam::{IVec3, Vec3};
use rustc_hash::FxHashMap;

use super::entity::EntityId;

/// Entities by cell; each is known by a `T` (its id, or a place in the caller's own list).
#[derive(Debug)]
pub struct Grid<T = EntityId> {
    cell_m: f32,
    cells: FxHashMap<IVec3, Vec<(T, Vec3)>>,
    len: usize,
}

impl<T: Copy> Grid<T> {
    pub fn new(cell_m: f32) -> Self {
        assert!(cell_m > 0.0 && cell_m.is_finite());
        Self { cell_m, cells: FxHashMap::default(), len: 0 }
    }

    fn key(&self, p: Vec3) -> IVec3 {
        (p / self.cell_m).floor().as_ivec3()
    }

    /// Empties the grid, keeping its memory.
    pub fn clear(&mut self) {
        for bucket in self.cells.values_mut() {
            bucket.clear();
        }
        self.len = 0;
    }

    pub fn insert(&mut self, id: T, p: Vec3) {
        if !p.is_finite() {
            return;
        }
        let key = self.key(p);
        self.cells.entry(key).or_default().push((id, p));
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entity in the cells that overlap the box `min..max`, with its position. Bounded by
    /// the box: a query never visits more cells than the box covers.
    pub fn query(&self, min: Vec3, max: Vec3, mut f: impl FnMut(T, Vec3)) {
        if !min.is_finite() || !max.is_finite() {
            return;
        }
        let (lo, hi) = (self.key(min), self.key(max));
        for x in lo.x..=hi.x {
            for y in lo.y..=hi.y {
                for z in lo.z..=hi.z {
                    if let Some(bucket) = self.cells.get(&IVec3::new(x, y, z)) {
                        for (id, p) in bucket {
                            f(*id, *p);
                        }
                    }
                }
            }
        }
    }
}

impl<T: Copy + Ord> Grid<T> {
    /// The entity with the smallest id within `radius` of `p` that `accept` takes.
    pub fn nearest_by_id(&self, p: Vec3, radius: f32, mut accept: impl FnMut(T) -> bool) -> Option<T> {
        let mut best: Option<T> = None;
        self.query(p - Vec3::splat(radius), p + Vec3::splat(radius), |id, at| {
            if at.distance(p) <= radius && best.is_none_or(|b| id < b) && accept(id) {
                best = Some(id);
            }
        });
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_is_near_and_only_that() {
        let mut g = Grid::new(8.0);
        g.insert(EntityId(3), Vec3::new(1.0, 1.0, 1.0));
        g.insert(EntityId(2), Vec3::new(7.9, 1.0, 1.0));
        g.insert(EntityId(1), Vec3::new(40.0, 1.0, 1.0));
        g.insert(EntityId(9), Vec3::new(-3.0, -3.0, 0.0));
        assert_eq!(g.nearest_by_id(Vec3::new(5.0, 1.0, 1.0), 5.0, |_| true), Some(EntityId(2)));
        assert_eq!(g.nearest_by_id(Vec3::new(5.0, 1.0, 1.0), 5.0, |id| id != EntityId(2)), Some(EntityId(3)));
        assert_eq!(g.nearest_by_id(Vec3::new(20.0, 1.0, 1.0), 5.0, |_| true), None);
        assert_eq!(g.nearest_by_id(Vec3::new(-2.5, -2.5, 0.0), 1.0, |_| true), Some(EntityId(9)), "negative cells");
        let mut seen = Vec::new();
        g.query(Vec3::ZERO, Vec3::new(50.0, 2.0, 2.0), |id, _| seen.push(id));
        seen.sort();
        assert_eq!(seen, vec![EntityId(1), EntityId(2), EntityId(3)]);
        g.clear();
        assert!(g.is_empty());
        assert_eq!(g.nearest_by_id(Vec3::new(1.0, 1.0, 1.0), 5.0, |_| true), None);
    }
}
