//! A uniform spatial grid: entities bucketed by cell, so "what is near this point" or "what did
//! this projectile's path pass" looks at a few cells instead of every entity. Rebuilt from
//! scratch when positions change (a pass over the entities), queried many times.
//!
//! Deterministic: cells are found by key, never iterated, and callers choose among candidates by
//! id, so results do not depend on hashing.

use glam::{IVec3, Vec3};
use rustc_hash::FxHashMap;

use super::entity::EntityId;
use crate::limits::SEGMENT_PIECES_MAX;

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

    /// Empties the grid, keeping the memory of the cells in use (the next build fills most of
    /// them again) and dropping those that were empty: a grid rebuilt every tick as players
    /// wander a large world holds the cells of one tick, not of every place ever visited.
    pub fn clear(&mut self) {
        self.cells.retain(|_, bucket| {
            let used = !bucket.is_empty();
            bucket.clear();
            used
        });
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

impl<T: Copy> Grid<T> {
    /// Everything within `pad` of the segment `from..to`, walked from `from` in pieces a cell
    /// long: each piece visits the cells around it (padded) that no earlier piece visited, then
    /// asks `done` with how far along the segment (0..1) the piece ends. Whatever lies within
    /// `pad` of the segment at or before that point has been visited by then, so a search for the
    /// first thing on a path stops as soon as it has found something no later than there: in a
    /// crowd, a cell or two, not every entity in the path's bounding box.
    pub fn walk_segment<S>(
        &self,
        from: Vec3,
        to: Vec3,
        pad: f32,
        state: &mut S,
        mut visit: impl FnMut(&mut S, T, Vec3),
        mut done: impl FnMut(&S, f32) -> bool,
    ) {
        if !from.is_finite() || !to.is_finite() || !pad.is_finite() {
            return;
        }
        let pieces = (from.distance(to) / self.cell_m).ceil().clamp(1.0, SEGMENT_PIECES_MAX as f32) as u32;
        // A hair wider than asked, so rounding at a piece's end never leaves out what lies on it.
        let pad = Vec3::splat(pad.max(0.0) + self.cell_m * 1e-3);
        let mut visited: Option<(IVec3, IVec3)> = None;
        for k in 0..pieces {
            let a = from.lerp(to, k as f32 / pieces as f32);
            let end = (k + 1) as f32 / pieces as f32;
            let b = if k + 1 == pieces { to } else { from.lerp(to, end) };
            let (lo, hi) = (self.key(a.min(b) - pad), self.key(a.max(b) + pad));
            for x in lo.x..=hi.x {
                for y in lo.y..=hi.y {
                    for z in lo.z..=hi.z {
                        let cell = IVec3::new(x, y, z);
                        if visited.is_some_and(|(vlo, vhi)| cell.cmpge(vlo).all() && cell.cmple(vhi).all()) {
                            continue;
                        }
                        if let Some(bucket) = self.cells.get(&cell) {
                            for (id, p) in bucket {
                                visit(state, *id, *p);
                            }
                        }
                    }
                }
            }
            // The pieces run along one line, so a cell left out here lies inside the last box.
            visited = Some((lo, hi));
            if done(state, end) {
                return;
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

    /// The first entity within `r` of the segment, by how far along it lies, then id: by
    /// looking at every entity.
    fn first_by_scan(points: &[(EntityId, Vec3)], a: Vec3, b: Vec3, r: f32) -> Option<(f32, EntityId)> {
        let ab = b - a;
        points
            .iter()
            .filter_map(|(id, p)| {
                let t = if ab.length_squared() > 0.0 {
                    ((*p - a).dot(ab) / ab.length_squared()).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                (p.distance(a + ab * t) <= r).then_some((t, *id))
            })
            .min_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)))
    }

    proptest::proptest! {
        /// Walking a segment from its start and stopping at the first hit finds what a scan of
        /// every entity finds, in crowds and in empty space, along any axis and across cells'
        /// borders (negative coordinates too).
        #[test]
        fn a_walk_from_the_muzzle_finds_the_first_hit_a_full_scan_finds(
            points in proptest::collection::vec((-40.0f32..40.0, -6.0f32..6.0, -40.0f32..40.0), 0..300),
            a in (-50.0f32..50.0, -5.0f32..5.0, -50.0f32..50.0),
            b in (-50.0f32..50.0, -5.0f32..5.0, -50.0f32..50.0),
            cell in 1.0f32..16.0,
        ) {
            let r = 2.0;
            let points: Vec<(EntityId, Vec3)> =
                points.into_iter().enumerate().map(|(i, (x, y, z))| (EntityId(i as u64), Vec3::new(x, y, z))).collect();
            let mut g = Grid::new(cell);
            for (id, p) in &points {
                g.insert(*id, *p);
            }
            let (a, b) = (Vec3::new(a.0, a.1, a.2), Vec3::new(b.0, b.1, b.2));
            let mut first = None;
            let ab = b - a;
            g.walk_segment(
                a,
                b,
                r,
                &mut first,
                |first: &mut Option<(f32, EntityId)>, id, p| {
                    let t = if ab.length_squared() > 0.0 { ((p - a).dot(ab) / ab.length_squared()).clamp(0.0, 1.0) } else { 0.0 };
                    if p.distance(a + ab * t) <= r && first.is_none_or(|f| (t, id) < f) {
                        *first = Some((t, id));
                    }
                },
                |first, end| first.is_some_and(|f| f.0 <= end),
            );
            proptest::prop_assert_eq!(first, first_by_scan(&points, a, b, r));
        }
    }
}
