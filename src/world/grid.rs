//! A uniform spatial grid: entities bucketed by cell, so "what is near this point" or "what did
//! this projectile's path pass" looks at a few cells instead of every entity. Rebuilt from
//! scratch when positions change (a pass over the entities), queried many times.
//!
//! A build is a counting sort: every entry's cell is found once, and the entries are laid out
//! cell after cell in one list. Where the cells in use fill a small box (a crowd in a room, a
//! server's part of a city) each cell's place in that list is read from an array over the box,
//! with no map in the build or in a query; where they are spread over a large world, from a map
//! keyed by cell (one lookup an entry in a build, one a cell in a query).
//!
//! Deterministic: cells are found by key, never iterated, and callers choose among candidates by
//! id, so results do not depend on hashing.

use glam::{IVec3, Vec3};
use rustc_hash::FxHashMap;

use super::entity::EntityId;
use crate::limits::{GRID_DENSE_CELLS_MAX, SEGMENT_PIECES_MAX};

/// Entities by cell; each is known by a `T` (its id, or a place in the caller's own list).
#[derive(Debug)]
pub struct Grid<T = EntityId> {
    cell_m: f32,
    /// The entries, cell after cell (within a cell, in the order they were given): cell `i`
    /// holds `entries[starts[i]..starts[i + 1]]`.
    entries: Vec<(T, Vec3)>,
    starts: Vec<u32>,
    /// Cells numbered over the box `lo..=hi` (x-major, z fastest), where it is small enough to
    /// lay out; otherwise numbered as first met, found in `slots` by key.
    dense: Option<(IVec3, IVec3)>,
    slots: FxHashMap<IVec3, u32>,
    /// A build's working lists, kept for the next one: each entry's key, the entries as given,
    /// each entry's cell, and each cell's next free place.
    keys: Vec<IVec3>,
    unsorted: Vec<(T, Vec3)>,
    cell_of: Vec<u32>,
    free: Vec<u32>,
}

/// `x.floor()` as an integer (saturating), without a call into libm: the grid finds a cell for
/// every entity every tick.
fn floor_i32(x: f32) -> i32 {
    let t = x as i32;
    t.saturating_sub(((t as f32) > x) as i32)
}

impl<T: Copy> Grid<T> {
    pub fn new(cell_m: f32) -> Self {
        assert!(cell_m > 0.0 && cell_m.is_finite());
        Self {
            cell_m,
            entries: Vec::new(),
            starts: vec![0],
            dense: None,
            slots: FxHashMap::default(),
            keys: Vec::new(),
            unsorted: Vec::new(),
            cell_of: Vec::new(),
            free: Vec::new(),
        }
    }

    fn key(&self, p: Vec3) -> IVec3 {
        let q = p / self.cell_m;
        IVec3::new(floor_i32(q.x), floor_i32(q.y), floor_i32(q.z))
    }

    /// Empties the grid and fills it with `items` (those at a non-finite position are left out).
    /// Memory is kept for the next build, so a grid rebuilt every tick allocates only as it
    /// grows.
    pub fn rebuild(&mut self, items: impl IntoIterator<Item = (T, Vec3)>) {
        self.keys.clear();
        self.unsorted.clear();
        let (mut lo, mut hi) = (IVec3::MAX, IVec3::MIN);
        for (id, p) in items {
            if !p.is_finite() {
                continue;
            }
            let key = self.key(p);
            lo = lo.min(key);
            hi = hi.max(key);
            self.keys.push(key);
            self.unsorted.push((id, p));
        }
        let n = self.unsorted.len();
        // The box's volume in cells, if small enough to lay out (in i64: a box may span the
        // whole i32 range on every axis).
        let dims = (hi.as_i64vec3() - lo.as_i64vec3()) + glam::I64Vec3::ONE;
        let volume = (n > 0)
            .then(|| dims.x.checked_mul(dims.y).and_then(|v| v.checked_mul(dims.z)))
            .flatten()
            .filter(|v| (*v as u64) <= dense_cells_max(n) as u64);
        // Each entry's cell, and each cell's count (in the place after its own).
        self.cell_of.clear();
        self.starts.clear();
        self.slots.clear();
        self.starts.push(0);
        if let Some(volume) = volume {
            self.dense = Some((lo, hi));
            self.starts.resize(volume as usize + 1, 0);
            let (dy, dz) = (dims.y as usize, dims.z as usize);
            for k in &self.keys {
                let d = *k - lo;
                let cell = (d.x as usize * dy + d.y as usize) * dz + d.z as usize;
                self.starts[cell + 1] += 1;
                self.cell_of.push(cell as u32);
            }
        } else {
            self.dense = None;
            for k in &self.keys {
                let starts = &mut self.starts;
                let cell = *self.slots.entry(*k).or_insert_with(|| {
                    starts.push(0);
                    starts.len() as u32 - 2
                });
                starts[cell as usize + 1] += 1;
                self.cell_of.push(cell);
            }
        }
        for i in 1..self.starts.len() {
            self.starts[i] += self.starts[i - 1];
        }
        // Each entry to its cell's next free place.
        self.free.clear();
        self.free.extend_from_slice(&self.starts[..self.starts.len() - 1]);
        self.entries.clear();
        if let Some(first) = self.unsorted.first() {
            self.entries.resize(n, *first);
        }
        for (cell, e) in self.cell_of.iter().zip(&self.unsorted) {
            let place = &mut self.free[*cell as usize];
            self.entries[*place as usize] = *e;
            *place += 1;
        }
    }

    /// The entries of one cell.
    fn cell(&self, key: IVec3) -> &[(T, Vec3)] {
        let i = match self.dense {
            Some((lo, hi)) => {
                if key.cmplt(lo).any() || key.cmpgt(hi).any() {
                    return &[];
                }
                let (dims, d) = (hi - lo + IVec3::ONE, key - lo);
                (d.x as usize * dims.y as usize + d.y as usize) * dims.z as usize + d.z as usize
            }
            None => match self.slots.get(&key) {
                Some(i) => *i as usize,
                None => return &[],
            },
        };
        &self.entries[self.starts[i] as usize..self.starts[i + 1] as usize]
    }

    /// The cell keys of the box `min..max`, cut to the cells in use (a query of a huge box
    /// visits no more cells than the grid has in it, where the grid is dense).
    fn key_box(&self, min: Vec3, max: Vec3) -> (IVec3, IVec3) {
        let (lo, hi) = (self.key(min), self.key(max));
        match self.dense {
            Some((in_lo, in_hi)) => (lo.max(in_lo), hi.min(in_hi)),
            None => (lo, hi),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entity in the cells that overlap the box `min..max`, with its position. Bounded by
    /// the box: a query never visits more cells than the box covers.
    pub fn query(&self, min: Vec3, max: Vec3, mut f: impl FnMut(T, Vec3)) {
        if !min.is_finite() || !max.is_finite() || self.entries.is_empty() {
            return;
        }
        let (lo, hi) = self.key_box(min, max);
        for x in lo.x..=hi.x {
            for y in lo.y..=hi.y {
                for z in lo.z..=hi.z {
                    for (id, p) in self.cell(IVec3::new(x, y, z)) {
                        f(*id, *p);
                    }
                }
            }
        }
    }
}

/// The most cells a dense build lays out for `n` entries: counting and summing a cell is cheaper
/// than finding one by key, so up to a few per entry (a crowd's server, whose entries fill a room
/// and a stretch of street), never more than `GRID_DENSE_CELLS_MAX`.
fn dense_cells_max(n: usize) -> usize {
    (8 * n + 4096).min(GRID_DENSE_CELLS_MAX)
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
                        for (id, p) in self.cell(cell) {
                            visit(state, *id, *p);
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
        g.rebuild([
            (EntityId(3), Vec3::new(1.0, 1.0, 1.0)),
            (EntityId(2), Vec3::new(7.9, 1.0, 1.0)),
            (EntityId(1), Vec3::new(40.0, 1.0, 1.0)),
            (EntityId(9), Vec3::new(-3.0, -3.0, 0.0)),
            (EntityId(7), Vec3::new(f32::NAN, 0.0, 0.0)),
        ]);
        assert_eq!(g.len(), 4, "a position that is not finite is left out");
        assert_eq!(g.nearest_by_id(Vec3::new(5.0, 1.0, 1.0), 5.0, |_| true), Some(EntityId(2)));
        assert_eq!(g.nearest_by_id(Vec3::new(5.0, 1.0, 1.0), 5.0, |id| id != EntityId(2)), Some(EntityId(3)));
        assert_eq!(g.nearest_by_id(Vec3::new(20.0, 1.0, 1.0), 5.0, |_| true), None);
        assert_eq!(g.nearest_by_id(Vec3::new(-2.5, -2.5, 0.0), 1.0, |_| true), Some(EntityId(9)), "negative cells");
        let mut seen = Vec::new();
        g.query(Vec3::ZERO, Vec3::new(50.0, 2.0, 2.0), |id, _| seen.push(id));
        seen.sort();
        assert_eq!(seen, vec![EntityId(1), EntityId(2), EntityId(3)]);
        g.rebuild([]);
        assert!(g.is_empty());
        assert_eq!(g.nearest_by_id(Vec3::new(1.0, 1.0, 1.0), 5.0, |_| true), None);
    }

    #[test]
    fn a_cell_is_found_by_floor_to_the_last_bit() {
        for x in [
            0.0f32,
            -0.0,
            0.5,
            -0.5,
            1.0,
            -1.0,
            -1e-30,
            1e-30,
            2.999_999_8,
            -2.999_999_8,
            16_777_215.0,
            -16_777_217.0,
            3e9,
            -3e9,
            f32::MAX,
            f32::MIN,
        ] {
            assert_eq!(floor_i32(x), x.floor() as i32, "{x}");
        }
    }

    #[test]
    fn a_crowd_in_a_room_and_a_world_of_strays_are_found_alike() {
        // One grid's entries fill a small box (laid out dense); the other's spread over the
        // world's width (sparse); both answer every query as a scan of the entries would.
        for spread in [20.0f32, 1e6] {
            let points: Vec<(EntityId, Vec3)> = (0..500u64)
                .map(|i| {
                    let f = |k: u64| ((i * 7919 + k * 104_729) % 1000) as f32 / 1000.0 - 0.5;
                    (EntityId(i), Vec3::new(f(1) * spread, f(2) * spread, f(3) * 4.0))
                })
                .collect();
            let mut g = Grid::new(4.0);
            g.rebuild(points.iter().copied());
            let dense = g.dense.is_some();
            assert_eq!(dense, spread < 100.0, "the layout follows the spread");
            for (_, centre) in points.iter().step_by(25) {
                let (min, max) = (*centre - Vec3::splat(6.0), *centre + Vec3::splat(6.0));
                let mut seen = Vec::new();
                g.query(min, max, |id, _| seen.push(id));
                seen.sort();
                let (lo, hi) = (g.key(min), g.key(max));
                let mut want: Vec<EntityId> = points
                    .iter()
                    .filter(|(_, p)| g.key(*p).cmpge(lo).all() && g.key(*p).cmple(hi).all())
                    .map(|(id, _)| *id)
                    .collect();
                want.sort();
                assert_eq!(seen, want);
            }
            // A box far outside the entries' finds nothing and visits no cell of it.
            let mut none = 0;
            g.query(Vec3::splat(1e7), Vec3::splat(1e7 + 8.0), |_, _| none += 1);
            assert_eq!(none, 0);
        }
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
            g.rebuild(points.iter().copied());
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
