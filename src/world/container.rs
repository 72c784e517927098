//! The static world tree: object containers (system > planet > city > building > room), each
//! with bounds inside its parent's. Loaded from a TOML world file or generated from a seed.
//!
//! Invariants: the tree has one root, the system; kinds strictly descend; every child's bounds
//! lie inside its parent's. A file that breaks one is refused with an error naming the container.

pub use crate::limits::CONTAINER_COUNT_MAX;
use glam::Vec3;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

/// An axis-aligned box, half open: `min <= p < max` on every axis, so the boxes of a tiling
/// own every point exactly once.
#[derive(Clone, Copy, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Deserialize)]
pub struct Aabb {
    pub min: [f32; 3],
    pub max: [f32; 3],
}

impl Aabb {
    pub fn new(min: Vec3, max: Vec3) -> Self {
        Self { min: min.to_array(), max: max.to_array() }
    }
    pub fn min(&self) -> Vec3 {
        Vec3::from_array(self.min)
    }
    pub fn max(&self) -> Vec3 {
        Vec3::from_array(self.max)
    }
    pub fn size(&self) -> Vec3 {
        self.max() - self.min()
    }
    pub fn center(&self) -> Vec3 {
        (self.min() + self.max()) * 0.5
    }
    /// In f64 from the corners: the halves of a box cut anywhere sum to it exactly (edges taken
    /// in f32 would round differently on either side of the cut).
    pub fn volume(&self) -> f64 {
        let edge = |a: usize| self.max[a] as f64 - self.min[a] as f64;
        edge(0) * edge(1) * edge(2)
    }
    pub fn contains(&self, p: Vec3) -> bool {
        p.cmpge(self.min()).all() && p.cmplt(self.max()).all()
    }
    pub fn contains_box(&self, other: &Aabb) -> bool {
        other.min().cmpge(self.min()).all() && other.max().cmple(self.max()).all()
    }
    pub fn overlaps(&self, other: &Aabb) -> bool {
        self.min().cmplt(other.max()).all() && other.min().cmplt(self.max()).all()
    }
    pub fn is_valid(&self) -> bool {
        self.min().is_finite() && self.max().is_finite() && self.min().cmplt(self.max()).all()
    }
    /// The point inside the box nearest to `p` (the half-open max face pulled in a little).
    pub fn clamp(&self, p: Vec3) -> Vec3 {
        let inner_max = self.max() - Vec3::splat(1e-3);
        p.clamp(self.min(), inner_max)
    }
    /// The two halves of the box cut across its longest axis.
    pub fn split_longest(&self) -> (Aabb, Aabb) {
        let size = self.size();
        let axis = if size.x >= size.y && size.x >= size.z {
            0
        } else if size.y >= size.z {
            1
        } else {
            2
        };
        let mid = (self.min[axis] + self.max[axis]) * 0.5;
        let mut low = *self;
        let mut high = *self;
        low.max[axis] = mid;
        high.min[axis] = mid;
        (low, high)
    }
    /// The box covering both, if together they are exactly a box (they share a whole face).
    pub fn union_if_box(&self, other: &Aabb) -> Option<Aabb> {
        for axis in 0..3 {
            let others_equal =
                (0..3).filter(|&a| a != axis).all(|a| self.min[a] == other.min[a] && self.max[a] == other.max[a]);
            if !others_equal {
                continue;
            }
            if self.max[axis] == other.min[axis] {
                let mut merged = *self;
                merged.max[axis] = other.max[axis];
                return Some(merged);
            }
            if other.max[axis] == self.min[axis] {
                let mut merged = *other;
                merged.max[axis] = self.max[axis];
                return Some(merged);
            }
        }
        None
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerKind {
    System,
    Planet,
    City,
    Building,
    Room,
}

impl ContainerKind {
    fn child(self) -> Option<ContainerKind> {
        match self {
            ContainerKind::System => Some(ContainerKind::Planet),
            ContainerKind::Planet => Some(ContainerKind::City),
            ContainerKind::City => Some(ContainerKind::Building),
            ContainerKind::Building => Some(ContainerKind::Room),
            ContainerKind::Room => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Container {
    pub name: String,
    pub kind: ContainerKind,
    pub bounds: Aabb,
    pub parent: Option<usize>,
}

/// The container tree, stored flat in depth-first order: index 0 is the system.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerTree {
    pub containers: Vec<Container>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("world file is not valid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("container `{name}`: bounds {bounds:?} are empty or not finite")]
    BadBounds { name: String, bounds: Aabb },
    #[error("container `{name}` ({kind:?}) lies outside its parent `{parent}`")]
    OutsideParent { name: String, kind: ContainerKind, parent: String },
    #[error(
        "container `{name}` is a {kind:?} inside a {parent_kind:?}: kinds go system > planet > city > building > room"
    )]
    BadNesting { name: String, kind: ContainerKind, parent_kind: ContainerKind },
    #[error("the world's root must be a system, found a {0:?}")]
    RootNotSystem(ContainerKind),
    #[error("world has {0} containers, more than the {max} allowed", max = CONTAINER_COUNT_MAX)]
    TooLarge(usize),
}

#[derive(Deserialize)]
struct ContainerSpec {
    name: String,
    kind: ContainerKind,
    min: [f32; 3],
    max: [f32; 3],
    #[serde(default)]
    children: Vec<ContainerSpec>,
}

#[derive(Deserialize)]
struct WorldFile {
    system: ContainerSpec,
}

/// The default world, embedded so `shardmesh demo` runs with no files.
pub const DEFAULT_WORLD_TOML: &str = include_str!("default_world.toml");

impl ContainerTree {
    pub fn from_toml(text: &str) -> Result<Self, WorldError> {
        let file: WorldFile = toml::from_str(text)?;
        let mut containers = Vec::new();
        flatten(&file.system, None, &mut containers)?;
        let tree = ContainerTree { containers };
        tree.validate()?;
        Ok(tree)
    }

    pub fn default_world() -> Self {
        Self::from_toml(DEFAULT_WORLD_TOML).expect("the embedded world file is valid")
    }

    pub fn system(&self) -> &Container {
        &self.containers[0]
    }

    pub fn bounds(&self) -> Aabb {
        self.system().bounds
    }

    pub fn of_kind(&self, kind: ContainerKind) -> impl Iterator<Item = &Container> {
        self.containers.iter().filter(move |c| c.kind == kind)
    }

    /// The deepest container holding `p`.
    pub fn locate(&self, p: Vec3) -> Option<usize> {
        let mut best = None;
        for (i, c) in self.containers.iter().enumerate() {
            if c.bounds.contains(p) && best.is_none_or(|b: usize| self.containers[b].kind < c.kind) {
                best = Some(i);
            }
        }
        best
    }

    pub fn validate(&self) -> Result<(), WorldError> {
        if self.containers.len() > CONTAINER_COUNT_MAX {
            return Err(WorldError::TooLarge(self.containers.len()));
        }
        for c in &self.containers {
            if !c.bounds.is_valid() {
                return Err(WorldError::BadBounds { name: c.name.clone(), bounds: c.bounds });
            }
            match c.parent {
                None if c.kind != ContainerKind::System => return Err(WorldError::RootNotSystem(c.kind)),
                None => {}
                Some(p) => {
                    let parent = &self.containers[p];
                    if parent.kind.child() != Some(c.kind) {
                        return Err(WorldError::BadNesting {
                            name: c.name.clone(),
                            kind: c.kind,
                            parent_kind: parent.kind,
                        });
                    }
                    if !parent.bounds.contains_box(&c.bounds) {
                        return Err(WorldError::OutsideParent {
                            name: c.name.clone(),
                            kind: c.kind,
                            parent: parent.name.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// A world generated from a seed: planets side by side along x, cities on each planet,
    /// buildings in each city and rooms in each building, every box inside its parent.
    pub fn generate(seed: u64, planets: usize, cities: usize, buildings: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let planet_edge = 400.0;
        let size = Vec3::new(planet_edge * planets.max(1) as f32, planet_edge, 100.0);
        let mut containers = vec![Container {
            name: format!("system-{seed}"),
            kind: ContainerKind::System,
            bounds: Aabb::new(Vec3::ZERO, size),
            parent: None,
        }];
        for p in 0..planets.max(1) {
            let min = Vec3::new(p as f32 * planet_edge, 0.0, 0.0);
            let planet = Aabb::new(min, min + Vec3::new(planet_edge, planet_edge, 100.0));
            let planet_index = push(&mut containers, format!("planet-{p}"), ContainerKind::Planet, planet, 0);
            for c in 0..cities {
                let city = inner_box(&mut rng, &planet, 0.35);
                let city_name = format!("planet-{p}/city-{c}");
                let city_index = push(&mut containers, city_name.clone(), ContainerKind::City, city, planet_index);
                for b in 0..buildings {
                    let building = inner_box(&mut rng, &city, 0.3);
                    let building_name = format!("{city_name}/building-{b}");
                    let building_index =
                        push(&mut containers, building_name.clone(), ContainerKind::Building, building, city_index);
                    let (low, high) = building.split_longest();
                    push(&mut containers, format!("{building_name}/room-0"), ContainerKind::Room, low, building_index);
                    push(&mut containers, format!("{building_name}/room-1"), ContainerKind::Room, high, building_index);
                }
            }
        }
        let tree = ContainerTree { containers };
        debug_assert!(tree.validate().is_ok());
        tree
    }
}

fn push(out: &mut Vec<Container>, name: String, kind: ContainerKind, bounds: Aabb, parent: usize) -> usize {
    out.push(Container { name, kind, bounds, parent: Some(parent) });
    out.len() - 1
}

/// A box of `fraction` of the parent's horizontal size, placed at random inside it, full height.
fn inner_box(rng: &mut ChaCha8Rng, parent: &Aabb, fraction: f32) -> Aabb {
    let size = parent.size() * Vec3::new(fraction, fraction, 1.0);
    let slack = parent.size() - size;
    let min = parent.min() + slack * Vec3::new(rng.random::<f32>(), rng.random::<f32>(), 0.0);
    Aabb::new(min, (min + size).min(parent.max()))
}

fn flatten(spec: &ContainerSpec, parent: Option<usize>, out: &mut Vec<Container>) -> Result<(), WorldError> {
    if out.len() >= CONTAINER_COUNT_MAX {
        return Err(WorldError::TooLarge(out.len() + 1));
    }
    out.push(Container {
        name: spec.name.clone(),
        kind: spec.kind,
        bounds: Aabb { min: spec.min, max: spec.max },
        parent,
    });
    let me = out.len() - 1;
    for child in &spec.children {
        flatten(child, Some(me), out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_world_loads_and_nests() {
        let tree = ContainerTree::default_world();
        assert_eq!(tree.system().kind, ContainerKind::System);
        assert!(tree.of_kind(ContainerKind::Room).count() >= 4);
    }

    #[test]
    fn generated_worlds_are_valid_and_seeded() {
        let a = ContainerTree::generate(7, 2, 2, 2);
        assert!(a.validate().is_ok());
        assert_eq!(a, ContainerTree::generate(7, 2, 2, 2));
        assert_ne!(a, ContainerTree::generate(8, 2, 2, 2));
        assert_eq!(a.of_kind(ContainerKind::Room).count(), 2 * 2 * 2 * 2);
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        assert!(matches!(ContainerTree::from_toml("system = 3"), Err(WorldError::Toml(_))));
        let outside = r#"
            [system]
            name = "s"
            kind = "system"
            min = [0, 0, 0]
            max = [10, 10, 10]
            [[system.children]]
            name = "p"
            kind = "planet"
            min = [5, 5, 5]
            max = [20, 10, 10]
        "#;
        assert!(matches!(ContainerTree::from_toml(outside), Err(WorldError::OutsideParent { .. })));
        let nesting = outside.replace("\"planet\"", "\"room\"").replace("[20, 10, 10]", "[9, 9, 9]");
        assert!(matches!(ContainerTree::from_toml(&nesting), Err(WorldError::BadNesting { .. })));
        let empty = outside.replace("[20, 10, 10]", "[5, 9, 9]");
        assert!(matches!(ContainerTree::from_toml(&empty), Err(WorldError::BadBounds { .. })));
    }

    #[test]
    fn split_and_union_are_inverse() {
        let b = Aabb::new(Vec3::ZERO, Vec3::new(40.0, 20.0, 10.0));
        let (low, high) = b.split_longest();
        assert_eq!(low.max[0], 20.0);
        assert_eq!(low.union_if_box(&high), Some(b));
        assert_eq!(high.union_if_box(&low), Some(b));
        assert!(!low.overlaps(&high));
        assert!(low.contains(Vec3::new(19.9, 1.0, 1.0)) && !low.contains(Vec3::new(20.0, 1.0, 1.0)));
    }
}
