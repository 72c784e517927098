//! The starting population of a world, drawn from a seed: players in cities, NPCs in
//! buildings, items in rooms, ships over planets; some players start with a backpack holding an
//! item, some aboard a ship, so the entity graph is deep from the first tick.

use glam::Vec3;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::container::{Aabb, ContainerKind, ContainerTree};
use super::entity::{EntityId, EntityKind, EntityState};

#[derive(Clone, Copy, Debug)]
pub struct Population {
    pub players: usize,
    pub npcs: usize,
    pub items: usize,
    pub ships: usize,
}

/// Entities in creation order (parents before children), ids `EntityId::new(0, n)`.
pub fn populate(tree: &ContainerTree, seed: u64, counts: Population) -> Vec<(EntityId, EntityState)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0005_eed0_fa11);
    let mut out: Vec<(EntityId, EntityState)> = Vec::new();
    let mut next = 0u32;
    let mut spawn = |out: &mut Vec<(EntityId, EntityState)>, kind, pos: Vec3, parent: Option<EntityId>| {
        let id = EntityId::new(0, next);
        next += 1;
        let mut state = EntityState::new(kind, pos);
        state.parent = parent;
        out.push((id, state));
        id
    };
    let boxes = |kind| tree.of_kind(kind).map(|c| c.bounds).collect::<Vec<_>>();
    let (cities, buildings, rooms, planets) = (
        boxes(ContainerKind::City),
        boxes(ContainerKind::Building),
        boxes(ContainerKind::Room),
        boxes(ContainerKind::Planet),
    );
    let world = [tree.bounds()];
    let pick = |rng: &mut ChaCha8Rng, set: &[Aabb]| -> Vec3 {
        let set = if set.is_empty() { &world[..] } else { set };
        let b = set[rng.random_range(0..set.len())];
        b.min() + b.size() * Vec3::new(rng.random(), rng.random(), rng.random::<f32>() * 0.1)
    };

    let mut ships = Vec::new();
    for _ in 0..counts.ships {
        let p = pick(&mut rng, &planets);
        ships.push((spawn(&mut out, EntityKind::Ship, p, None), p));
    }
    let mut carried = 0;
    let mut crew = vec![0usize; ships.len()];
    for i in 0..counts.players {
        // Every fifth player starts aboard a ship, the ships taking turns, none over capacity.
        let seat = (i % 5 == 1 && !ships.is_empty())
            .then(|| (i / 5) % ships.len())
            .filter(|s| crew[*s] < EntityKind::Ship.capacity_for(EntityKind::Player));
        let player = match seat {
            Some(s) => {
                crew[s] += 1;
                let (ship, at) = ships[s];
                spawn(&mut out, EntityKind::Player, at, Some(ship))
            }
            None => {
                let p = pick(&mut rng, &cities);
                spawn(&mut out, EntityKind::Player, p, None)
            }
        };
        if i % 3 == 0 && carried + 2 <= counts.items {
            let at = out.last().map(|(_, s)| s.pos()).unwrap_or_default();
            let pack = spawn(&mut out, EntityKind::Item { capacity: 4 }, at, Some(player));
            spawn(&mut out, EntityKind::Item { capacity: 0 }, at, Some(pack));
            carried += 2;
        }
    }
    for _ in 0..counts.npcs {
        let p = pick(&mut rng, &buildings);
        spawn(&mut out, EntityKind::Npc, p, None);
    }
    for i in carried..counts.items {
        let capacity = if i % 4 == 0 { 4 } else { 0 };
        let p = pick(&mut rng, &rooms);
        spawn(&mut out, EntityKind::Item { capacity }, p, None);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn population_is_seeded_and_well_formed() {
        let tree = ContainerTree::default_world();
        // Five ships: a count that once put every passenger on the same ship.
        let counts = Population { players: 200, npcs: 5, items: 140, ships: 5 };
        let a = populate(&tree, 1, counts);
        assert_eq!(a, populate(&tree, 1, counts));
        assert_eq!(a.iter().filter(|(_, s)| s.kind.is_item()).count(), 140);
        assert!(a.iter().any(|(_, s)| s.kind == EntityKind::Player && s.parent.is_some()));
        for (i, (_, s)) in a.iter().enumerate() {
            if let Some(p) = s.parent {
                let parent = a[..i].iter().find(|(id, _)| *id == p).expect("parents come first");
                let siblings = a.iter().filter(|(_, c)| c.parent == Some(p)).count();
                assert!(parent.1.kind.capacity_for(s.kind) >= siblings, "{p} holds {siblings}, over its capacity");
                assert_eq!(parent.1.position, s.position, "children sit at their parent");
            }
            assert!(tree.bounds().contains(s.pos()));
        }
    }
}
