//! Server-side container streaming: which containers a server keeps loaded.
//!
//! A container is loaded on a server while a player is within `STREAM_LOAD_RADIUS_M` of its
//! bounds, and unloaded once no player is within `STREAM_UNLOAD_RADIUS_M` (the gap between
//! the two keeps a player on a doorstep from loading and unloading a room every period).
//! What streams is the loose item: a root item with its contents. Players, NPCs, ships and
//! projectiles act on their own and stay loaded wherever they are. An item belongs to the
//! deepest container holding it (a room, else its building, city, planet or the system).
//!
//! The index walks the container tree from the system down, visiting only containers that
//! hold (or come near) the point: every container lies inside its parent, so a container
//! near a point has every ancestor near it too.

use glam::Vec3;

use super::container::{Aabb, ContainerTree};
use super::entity::{EntityKind, EntityState};
pub use crate::limits::{STREAM_LOAD_RADIUS_M, STREAM_PERIOD_US, STREAM_UNLOAD_RADIUS_M};

/// Index of a container in its tree (depth-first order; 0 is the system).
pub type ContainerId = u32;

pub struct StreamIndex {
    tree: ContainerTree,
    children: Vec<Vec<ContainerId>>,
}

impl StreamIndex {
    pub fn new(tree: ContainerTree) -> Self {
        let mut children = vec![Vec::new(); tree.containers.len()];
        for (i, c) in tree.containers.iter().enumerate() {
            if let Some(p) = c.parent {
                children[p].push(i as ContainerId);
            }
        }
        Self { tree, children }
    }

    pub fn tree(&self) -> &ContainerTree {
        &self.tree
    }

    pub fn bounds(&self, c: ContainerId) -> Option<Aabb> {
        self.tree.containers.get(c as usize).map(|c| c.bounds)
    }

    /// The deepest container holding `p`; the system for a point outside every container.
    /// Among overlapping siblings the first in the tree wins, as in `ContainerTree::locate`.
    pub fn locate(&self, p: Vec3) -> ContainerId {
        let mut best: ContainerId = 0;
        let mut stack: Vec<ContainerId> = vec![0];
        while let Some(c) = stack.pop() {
            let container = &self.tree.containers[c as usize];
            if !container.bounds.contains(p) {
                continue;
            }
            let current = &self.tree.containers[best as usize];
            if container.kind > current.kind || (container.kind == current.kind && c < best) {
                best = c;
            }
            stack.extend(self.children[c as usize].iter().rev());
        }
        best
    }

    /// Calls `f` with every container whose bounds come within `radius` of `p`.
    pub fn near(&self, p: Vec3, radius: f32, mut f: impl FnMut(ContainerId)) {
        let mut stack: Vec<ContainerId> = vec![0];
        while let Some(c) = stack.pop() {
            let b = &self.tree.containers[c as usize].bounds;
            if p.distance_squared(p.clamp(b.min(), b.max())) > radius * radius {
                continue;
            }
            f(c);
            stack.extend(self.children[c as usize].iter());
        }
    }

    /// Whether a player at `p` is near enough to `c` to need it loaded (`radius` is one of the
    /// two stream radii).
    pub fn is_near(&self, c: ContainerId, p: Vec3, radius: f32) -> bool {
        self.bounds(c).is_some_and(|b| p.distance_squared(p.clamp(b.min(), b.max())) <= radius * radius)
    }
}

/// Whether an entity streams with its container: a loose item (its contents go with it).
pub fn is_streamed(state: &EntityState) -> bool {
    state.parent.is_none() && matches!(state.kind, EntityKind::Item { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_agrees_with_the_linear_scan() {
        let tree = ContainerTree::generate(3, 3, 3, 4);
        let index = StreamIndex::new(tree.clone());
        let size = tree.bounds().size();
        for i in 0..2000u32 {
            let f = |k: u32| ((i.wrapping_mul(2654435761).rotate_left(k) % 1000) as f32) / 1000.0;
            let p = tree.bounds().min() + size * Vec3::new(f(0), f(11), f(23));
            assert_eq!(Some(index.locate(p) as usize), tree.locate(p), "at {p}");
        }
    }

    #[test]
    fn near_finds_every_container_within_the_radius_and_no_other() {
        let tree = ContainerTree::generate(5, 2, 3, 4);
        let index = StreamIndex::new(tree.clone());
        let p = tree.containers[5].bounds.center() + Vec3::new(30.0, -20.0, 0.0);
        let mut found = Vec::new();
        index.near(p, STREAM_LOAD_RADIUS_M, |c| found.push(c));
        found.sort();
        let expected: Vec<ContainerId> =
            (0..tree.containers.len() as ContainerId).filter(|c| index.is_near(*c, p, STREAM_LOAD_RADIUS_M)).collect();
        assert_eq!(found, expected);
        assert!(found.len() > 1 && found.len() < tree.containers.len());
    }
}
