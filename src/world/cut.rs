//! Where to cut a busy region: along the world's own walls first, through space last.
//!
//! A region's load is reported as a histogram per axis (`RegionLoad`); the container tree gives
//! the walls. A cut is a plane across one axis. Its cost is the deepest kind of container it
//! passes through (containers that enclose the whole region do not count: every cut passes
//! through them). A cut along walls only costs nothing; a cut between two buildings passes
//! through their city; only a cut inside one room passes through a room. The planner takes the
//! cheapest cut, then the one that leaves the heavier side lightest (counting the strip of the
//! other side it sees across the cut), then the one that leaves the heavier side smallest: a hot
//! room in a larger region is first walled off (the cuts that hug it), and only once a region is
//! that one room is it cut into cells of space, at the bin edge that best halves its load, down to
//! `REGION_EDGE_MIN_M`.

use glam::Vec3;

use super::container::{Aabb, ContainerKind, ContainerTree};
use super::region::RegionId;
use crate::limits::{walker_ghost_margin_m, LOAD_BINS, REGION_EDGE_MIN_M, TICK_DURATION_US};

/// What a slice holds in one region: its entities and where they are along each axis.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RegionLoad {
    pub region: RegionId,
    pub entities: u32,
    /// Entities per bin along x, y and z, the region's extent cut into `LOAD_BINS` equal bins.
    pub bins: [[u32; LOAD_BINS]; 3],
}

impl RegionLoad {
    pub fn new(region: RegionId) -> Self {
        Self { region, entities: 0, bins: [[0; LOAD_BINS]; 3] }
    }

    /// Counts an entity at `p` in the region `bounds` (clamped into it).
    pub fn add(&mut self, bounds: &Aabb, p: Vec3) {
        self.entities = self.entities.saturating_add(1);
        for axis in 0..3 {
            let (lo, hi) = (bounds.min[axis], bounds.max[axis]);
            let f = if p[axis].is_finite() { ((p[axis] - lo) / (hi - lo)).clamp(0.0, 1.0) } else { 0.0 };
            let bin = ((f * LOAD_BINS as f32) as usize).min(LOAD_BINS - 1);
            self.bins[axis][bin] = self.bins[axis][bin].saturating_add(1);
        }
    }

    /// Adds another slice's report of the same region.
    pub fn absorb(&mut self, other: &RegionLoad) {
        self.entities = self.entities.saturating_add(other.entities);
        for (mine, theirs) in self.bins.iter_mut().zip(&other.bins) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a = a.saturating_add(*b);
            }
        }
    }

    /// The entities estimated to lie below `at` along `axis` (spread evenly within a bin).
    pub fn below(&self, bounds: &Aabb, axis: usize, at: f32) -> f64 {
        let (lo, hi) = (bounds.min[axis], bounds.max[axis]);
        let f = (((at - lo) / (hi - lo)).clamp(0.0, 1.0) * LOAD_BINS as f32) as f64;
        let whole = (f.floor() as usize).min(LOAD_BINS);
        let bins = &self.bins[axis];
        let mut sum: f64 = bins[..whole].iter().map(|n| *n as f64).sum();
        if whole < LOAD_BINS {
            sum += bins[whole] as f64 * (f - whole as f64);
        }
        sum
    }

    /// The entities in the bin that holds the plane `at` along `axis`: how far `below` may be
    /// off for a cut there (they may lie on either side of it).
    pub fn straddling(&self, bounds: &Aabb, axis: usize, at: f32) -> u32 {
        let (lo, hi) = (bounds.min[axis], bounds.max[axis]);
        let f = ((at - lo) / (hi - lo)).clamp(0.0, 1.0) * LOAD_BINS as f32;
        if (f - f.round()).abs() < 1e-3 {
            // On a bin edge the count below is exact.
            return 0;
        }
        self.bins[axis][(f as usize).min(LOAD_BINS - 1)]
    }

    /// An estimate of this load within `sub`, a box inside `bounds` (a side of a cut): along
    /// each axis the entities between `sub`'s faces, re-binned over its extent, and scaled to the
    /// share `sub` holds (the axes taken as independent). For planning the next cut of a side
    /// before its own report comes.
    pub fn restrict(&self, bounds: &Aabb, sub: &Aabb) -> RegionLoad {
        let share = |axis: usize| {
            let all: f64 = self.bins[axis].iter().map(|n| *n as f64).sum();
            let inside = self.below(bounds, axis, sub.max[axis]) - self.below(bounds, axis, sub.min[axis]);
            if all > 0.0 {
                inside / all
            } else {
                0.0
            }
        };
        let kept = (0..3).map(share).fold(1.0, |a, b| a * b);
        let mut out = RegionLoad::new(self.region);
        out.entities = (self.entities as f64 * kept).round() as u32;
        for axis in 0..3 {
            let (lo, hi) = (sub.min[axis], sub.max[axis]);
            let width = (hi - lo) / LOAD_BINS as f32;
            let inside = self.below(bounds, axis, hi) - self.below(bounds, axis, lo);
            let scale = if inside > 0.0 { out.entities as f64 / inside } else { 0.0 };
            for (j, bin) in out.bins[axis].iter_mut().enumerate() {
                let (a, b) = (lo + j as f32 * width, lo + (j + 1) as f32 * width);
                *bin = ((self.below(bounds, axis, b) - self.below(bounds, axis, a)) * scale).round() as u32;
            }
        }
        out
    }

    /// The bin edge along `axis` that best halves the load, among those `fits` allows (on a bin
    /// edge the count below is exact, not spread over a bin); `None` if no edge fits. An empty
    /// region's is the edge nearest its middle.
    pub fn balanced_edge(&self, bounds: &Aabb, axis: usize, fits: impl Fn(f32) -> bool) -> Option<f32> {
        let (lo, hi) = (bounds.min[axis], bounds.max[axis]);
        let width = (hi - lo) / LOAD_BINS as f32;
        let bins = &self.bins[axis];
        let total: i64 = bins.iter().map(|n| *n as i64).sum();
        let mut below = 0i64;
        let mut best: Option<(i64, usize, f32)> = None;
        for (edge, n) in bins.iter().enumerate().skip(1).map(|(i, _)| (i, bins[i - 1])) {
            below += n as i64;
            let at = lo + edge as f32 * width;
            if !fits(at) {
                continue;
            }
            let key = ((2 * below - total).abs(), edge.abs_diff(LOAD_BINS / 2));
            if best.is_none_or(|(b, d, _)| key < (b, d)) {
                best = Some((key.0, key.1, at));
            }
        }
        best.map(|(_, _, at)| at)
    }
}

/// A plane across `axis` at `at`, and the deepest kind of container whose inside it crosses
/// (`None`: open space only). A cut between two rooms crosses their building, not a room.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cut {
    pub axis: usize,
    pub at: f32,
    pub through: Option<ContainerKind>,
}

/// The cut for a busy region, or `None` when no cut leaves both sides `REGION_EDGE_MIN_M` wide.
/// Without a tree every cut is through space; without a load every side is as heavy as any other,
/// so the cut halves the region's volume.
pub fn plan_cut(bounds: &Aabb, tree: Option<&ContainerTree>, load: Option<&RegionLoad>) -> Option<Cut> {
    // The containers a cut may pass through, and whether each encloses the whole region (every
    // cut passes through those, so they cost nothing).
    let near: Vec<(&Aabb, ContainerKind, bool)> = tree
        .map(|t| {
            t.containers
                .iter()
                .filter(|c| c.bounds.overlaps(bounds))
                .map(|c| (&c.bounds, c.kind, c.bounds.contains_box(bounds)))
                .collect()
        })
        .unwrap_or_default();
    let fits =
        |axis: usize, at: f32| at >= bounds.min[axis] + REGION_EDGE_MIN_M && at <= bounds.max[axis] - REGION_EDGE_MIN_M;
    let mut candidates: Vec<(usize, f32)> = Vec::new();
    for (b, _, _) in near.iter().filter(|(_, _, encloses)| !encloses) {
        for axis in 0..3 {
            for at in [b.min[axis], b.max[axis]] {
                if fits(axis, at) {
                    candidates.push((axis, at));
                }
            }
        }
    }
    for axis in 0..3 {
        if bounds.size()[axis] < 2.0 * REGION_EDGE_MIN_M {
            continue;
        }
        let middle = (bounds.min[axis] + bounds.max[axis]) / 2.0;
        let at = load.and_then(|l| l.balanced_edge(bounds, axis, |at| fits(axis, at))).unwrap_or(middle);
        candidates.push((axis, at));
    }
    let total = load.map_or(0.0, |l| l.entities as f64);
    candidates
        .into_iter()
        .map(|(axis, at)| {
            let crossed = near.iter().filter(|(b, _, _)| b.min[axis] < at && at < b.max[axis]);
            let cost = crossed.clone().filter(|(_, _, encloses)| !encloses).map(|(_, kind, _)| *kind).max();
            let through = crossed.map(|(_, kind, _)| *kind).max();
            let below = load.map_or(0.0, |l| l.below(bounds, axis, at));
            let above = total - below;
            // Each side also sees the other's walkers within their ghost margin of the cut (at
            // the default rate) as ghosts, and hands off the ones that cross it: a side's cost is
            // its load and that strip. Through a crowd, the cut across its longest extent shows
            // the shortest border.
            let margin = walker_ghost_margin_m(TICK_DURATION_US);
            let strip =
                |from: f32, to: f32| load.map_or(0.0, |l| l.below(bounds, axis, to) - l.below(bounds, axis, from));
            let below_sees = below + strip(at, at + margin);
            let above_sees = above + strip(at - margin, at);
            let share = |side: f64| if total > 0.0 { side / total } else { 0.0 };
            let (below_v, above_v) = side_volumes(bounds, axis, at);
            // The heavier side's load with the strip it sees, in 32nds of the whole (so rounding in
            // the bins does not outweigh the volume), then its volume (the larger side when the
            // loads tie).
            let heavy = (share(below_sees.max(above_sees)) * 32.0).round() as u32;
            let heavy_volume = if (below - above).abs() < total / 64.0 {
                below_v.max(above_v)
            } else if below > above {
                below_v
            } else {
                above_v
            };
            (cost, heavy, heavy_volume, Cut { axis, at, through })
        })
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.total_cmp(&b.2)))
        .map(|(_, _, _, cut)| cut)
}

/// The containers (their indices in `tree`) whose inside a plane across `axis` at `at` crosses
/// within `bounds`, leaving out those that enclose all of `bounds` (every plane crosses those).
/// A border may move only to where it crosses nothing it did not cross already: a border between
/// two cells of a room moves within the room, and one along walls is never dragged through a
/// room (that room is walled off and cut instead).
pub fn plane_crosses(bounds: &Aabb, tree: &ContainerTree, axis: usize, at: f32) -> Vec<usize> {
    (0..tree.containers.len())
        .filter(|i| {
            let c = &tree.containers[*i].bounds;
            c.overlaps(bounds) && !c.contains_box(bounds) && c.min[axis] < at && at < c.max[axis]
        })
        .collect()
}

fn side_volumes(bounds: &Aabb, axis: usize, at: f32) -> (f64, f64) {
    let whole = bounds.volume();
    let f = ((at - bounds.min[axis]) / bounds.size()[axis]) as f64;
    (whole * f, whole * (1.0 - f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::container::Container;

    fn aabb(min: [f32; 3], max: [f32; 3]) -> Aabb {
        Aabb { min, max }
    }

    /// A city with one building of two rooms side by side along x, with space around them.
    fn city() -> ContainerTree {
        let c = |name: &str, kind, bounds, parent| Container { name: name.into(), kind, bounds, parent };
        ContainerTree {
            containers: vec![
                c("system", ContainerKind::System, aabb([0.0; 3], [200.0, 200.0, 100.0]), None),
                c("planet", ContainerKind::Planet, aabb([0.0; 3], [200.0, 200.0, 100.0]), Some(0)),
                c("city", ContainerKind::City, aabb([20.0, 20.0, 0.0], [180.0, 180.0, 100.0]), Some(1)),
                c("building", ContainerKind::Building, aabb([60.0, 60.0, 0.0], [140.0, 100.0, 100.0]), Some(2)),
                c("room-0", ContainerKind::Room, aabb([60.0, 60.0, 0.0], [100.0, 100.0, 100.0]), Some(3)),
                c("room-1", ContainerKind::Room, aabb([100.0, 60.0, 0.0], [140.0, 100.0, 100.0]), Some(3)),
            ],
        }
    }

    fn load_of(bounds: &Aabb, points: impl IntoIterator<Item = Vec3>) -> RegionLoad {
        let mut load = RegionLoad::new(RegionId(0));
        for p in points {
            load.add(bounds, p);
        }
        load
    }

    /// What a cut inside a bin may leave on either side is bounded by that bin's count; on a bin
    /// edge the estimate is exact. A crowd in one coarse bin, cut through it, is a guess of the
    /// bin's whole count.
    #[test]
    fn a_cut_inside_a_bin_is_unsure_by_what_the_bin_holds() {
        let b = aabb([0.0; 3], [1600.0, 160.0, 100.0]);
        // Bins of 100 m along x: a crowd of 300 within 40..70 m, 10 more at 450 m.
        let points = (0..300).map(|i| Vec3::new(40.0 + (i % 30) as f32, 50.0, 1.0));
        let load = load_of(&b, points.chain((0..10).map(|_| Vec3::new(450.0, 50.0, 1.0))));
        assert_eq!(load.straddling(&b, 0, 30.0), 300, "a cut through the crowd's bin");
        assert!((load.below(&b, 0, 30.0) - 90.0).abs() < 1.0, "the guess: {}", load.below(&b, 0, 30.0));
        assert_eq!(load.straddling(&b, 0, 100.0), 0, "on a bin edge");
        assert_eq!(load.straddling(&b, 0, 250.0), 0, "through an empty bin");
        assert_eq!(load.straddling(&b, 0, 420.0), 10);
        assert_eq!(load.straddling(&b, 1, 55.0), 310, "along y every point shares the bin");
    }

    /// A crowd in a disk around `centre`, on the floor.
    fn crowd(centre: Vec3, radius: f32, n: usize) -> impl Iterator<Item = Vec3> {
        (0..n).map(move |i| {
            let a = i as f32 * 2.399;
            let r = radius * ((i as f32 + 0.5) / n as f32).sqrt();
            centre + Vec3::new(a.cos() * r, a.sin() * r, -centre.z + 1.0)
        })
    }

    #[test]
    fn the_histogram_places_load_and_the_edge_that_halves_it() {
        let b = aabb([0.0; 3], [160.0, 160.0, 100.0]);
        let load = load_of(&b, (0..100).map(|i| Vec3::new(i as f32 + 0.5, 50.0, 1.0)));
        assert_eq!(load.entities, 100);
        assert!((load.below(&b, 0, 50.0) - 50.0).abs() < 1.0, "{}", load.below(&b, 0, 50.0));
        assert_eq!(load.balanced_edge(&b, 0, |_| true), Some(50.0));
        assert_eq!(load.balanced_edge(&b, 0, |at| at >= 60.0), Some(60.0), "the best edge that fits");
        assert_eq!(load.balanced_edge(&b, 0, |_| false), None);
        // A point mass is never split by the estimate: the edge falls beside it.
        let lump = load_of(&b, (0..100).map(|i| Vec3::new(if i < 50 { 30.0 } else { 95.0 }, 1.0, 1.0)));
        let at = lump.balanced_edge(&b, 0, |_| true).unwrap();
        assert!(at > 30.0 && at < 95.0 && lump.below(&b, 0, at) == 50.0, "{at}");
        assert_eq!(load.below(&b, 0, 160.0), 100.0);
        assert_eq!(load.below(&b, 0, -5.0), 0.0);
        let mut twice = load.clone();
        twice.absorb(&load);
        assert_eq!(twice.entities, 200);
        // Points outside the bounds (or not finite) are counted at the edge, never lost.
        let mut odd = RegionLoad::new(RegionId(1));
        odd.add(&b, Vec3::new(f32::NAN, 1e9, -1e9));
        assert_eq!(odd.bins[0][0] + odd.bins[1][LOAD_BINS - 1] + odd.bins[2][0], 3);
    }

    /// A side's load estimated from its parent's report keeps what lies in it.
    #[test]
    fn a_sides_load_is_estimated_from_its_parents() {
        let b = aabb([0.0; 3], [160.0, 160.0, 100.0]);
        let load = load_of(&b, crowd(Vec3::new(120.0, 80.0, 50.0), 10.0, 1000));
        let (low, high) = halves(&b, Cut { axis: 0, at: 80.0, through: None });
        let (l, h) = (load.restrict(&b, &low), load.restrict(&b, &high));
        assert!(l.entities < 20 && h.entities > 980, "{} / {}", l.entities, h.entities);
        let y_total: u32 = h.bins[1].iter().sum();
        assert!((y_total as i64 - h.entities as i64).abs() < 20, "{y_total} of {}", h.entities);
        // The crowd's middle along y, in the side's own bins.
        let at = h.balanced_edge(&high, 1, |_| true).unwrap();
        assert!((at - 80.0).abs() <= 10.0, "{at}");
    }

    /// A hot room in a bigger region is walled off first: every cut runs along walls until the
    /// region is the room, and only then is the room cut, through its crowd.
    #[test]
    fn a_hot_room_is_walled_off_before_it_is_cut() {
        let tree = city();
        let room = tree.containers[5].bounds;
        let mut region = tree.bounds();
        let mut wall_cuts = 0;
        loop {
            let load = load_of(&region, crowd(room.center(), 15.0, 2000));
            let cut = plan_cut(&region, Some(&tree), Some(&load)).expect("a cut");
            if region == room {
                assert_eq!(cut.through, Some(ContainerKind::Room), "the room alone is cut through: {cut:?}");
                assert!(cut.axis < 2, "the crowd is on the floor: cut across x or y, not z: {cut:?}");
                assert!((cut.at - room.center()[cut.axis]).abs() < 2.0, "at the crowd's middle: {cut:?}");
                break;
            }
            assert!(cut.through < Some(ContainerKind::Room), "walls while the region is more than the room: {cut:?}");
            let (low, high) = halves(&region, cut);
            region = if low.contains(room.center()) { low } else { high };
            assert!(region.contains_box(&room), "the crowd's side keeps the whole room");
            wall_cuts += 1;
            assert!(wall_cuts < 12, "the region closes on the room");
        }
        assert!(wall_cuts >= 4, "four walls came first ({wall_cuts})");
    }

    /// Load in two rooms of one building: the cut between them passes through the building only,
    /// and balances the load.
    #[test]
    fn load_in_two_rooms_is_cut_between_them() {
        let tree = city();
        let building = tree.containers[3].bounds;
        let load = load_of(
            &building,
            crowd(Vec3::new(80.0, 80.0, 0.0), 8.0, 500).chain(crowd(Vec3::new(120.0, 80.0, 0.0), 8.0, 500)),
        );
        let cut = plan_cut(&building, Some(&tree), Some(&load)).unwrap();
        assert_eq!(cut, Cut { axis: 0, at: 100.0, through: Some(ContainerKind::Building) });
    }

    /// No tree: a cut through space where it best halves the load; no load: the middle of the longest
    /// axis; a region too small on every axis is not cut.
    #[test]
    fn without_walls_space_is_cut_where_it_halves_the_load() {
        let b = aabb([0.0; 3], [64.0, 32.0, 20.0]);
        // A line of load along x, near the floor and a wall: only a cut across x splits it.
        let load = load_of(&b, (0..64).map(|i| Vec3::new(10.0 + i as f32 / 8.0, 3.0, 3.0)));
        let cut = plan_cut(&b, None, Some(&load)).unwrap();
        assert_eq!(cut.axis, 0);
        assert!(cut.at == 12.0 || cut.at == 16.0, "a bin edge beside the middle of the line: {cut:?}");
        let cut = plan_cut(&b, None, None).unwrap();
        assert_eq!((cut.axis, cut.at), (0, 32.0));
        assert_eq!(plan_cut(&aabb([0.0; 3], [15.0, 15.0, 15.0]), None, None), None);
        // Load hard against a side: the cut is pulled in to leave the smallest region's width.
        let edge = load_of(&b, (0..64).map(|_| Vec3::new(0.5, 16.0, 10.0)));
        let cut = plan_cut(&b, None, Some(&edge)).unwrap();
        assert!(cut.at >= REGION_EDGE_MIN_M, "{cut:?}");
    }

    /// A crowd over a floor twice as long as it is wide (a room cut once already) is cut across
    /// its length, whichever axis that is: a border half as long, half the ghosts and crossings.
    #[test]
    fn a_crowd_is_cut_across_its_longest_extent() {
        for (size, long) in [([21.0, 42.0, 50.0], 1), ([42.0, 21.0, 50.0], 0)] {
            let b = aabb([0.0; 3], size);
            let points = (0..4000).map(|i| {
                let (u, v) = ((i % 63) as f32 / 63.0, (i / 63) as f32 / 64.0);
                Vec3::new(0.5 + u * (size[0] - 1.0), 0.5 + v * (size[1] - 1.0), 25.0)
            });
            let load = load_of(&b, points);
            let cut = plan_cut(&b, None, Some(&load)).expect("a cut");
            assert_eq!(cut.axis, long, "{size:?}: {cut:?}");
            assert!((cut.at - size[long] / 2.0).abs() < 3.0, "through the middle: {cut:?}");
        }
    }

    /// A plane through the city crosses a room, or the wall between two rooms (their building);
    /// containers around the whole box are not counted.
    #[test]
    fn a_plane_crosses_the_containers_it_passes_through() {
        let tree = city();
        let city_box = tree.containers[2].bounds;
        assert_eq!(plane_crosses(&city_box, &tree, 0, 80.0), vec![3, 4], "the building and its first room");
        assert_eq!(plane_crosses(&city_box, &tree, 0, 100.0), vec![3], "the wall between the rooms");
        assert!(plane_crosses(&city_box, &tree, 0, 40.0).is_empty(), "the city encloses the box");
        assert!(plane_crosses(&tree.containers[3].bounds, &tree, 0, 100.0).is_empty(), "between its rooms");
        assert!(plane_crosses(&tree.containers[4].bounds, &tree, 0, 80.0).is_empty(), "inside one room");
    }

    fn halves(b: &Aabb, cut: Cut) -> (Aabb, Aabb) {
        let (mut low, mut high) = (*b, *b);
        low.max[cut.axis] = cut.at;
        high.min[cut.axis] = cut.at;
        (low, high)
    }
}
