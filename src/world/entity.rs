//! Entities (players, NPCs, items, ships, projectiles) and the entity graph: an item in a
//! backpack carried by a player aboard a ship moves with its parent, and authority over an
//! entity always covers its whole subtree.
//!
//! Invariants: the graph is a forest (no cycles, depth at most `GRAPH_DEPTH_MAX`), a child's
//! kind may sit in its parent's kind (`can_hold`), and an item has exactly one parent or none,
//! so it can never be in two inventories.

use glam::{Quat, Vec3};

use super::Tick;
use crate::limits::{GRAPH_DEPTH_MAX, HANDS_CAPACITY_COUNT, SHIP_CAPACITY_COUNT};

/// Globally unique without coordination: the high 32 bits are the incarnation of the server
/// that created the entity (0 for the world file), the low 32 bits its counter. The highest
/// "incarnation", `ACCOUNT_INCARNATION`, is no server's: its ids are accounts' players, the low
/// 32 bits the account, so an account's player is known by its id alone, after any restart.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord))]
pub struct EntityId(pub u64);

/// Entities by id where the hot path looks one up per message (the slice's records, a server's
/// held entities): a hash map, one or two cache misses a lookup where a B-tree of thousands
/// walks four nodes and shifts large values on every insert and removal. Its iteration order
/// is the table's, the same for the same changes (the simulator stays deterministic) but not by
/// id: whatever needs an order sorts.
pub type EntityMap<V> = rustc_hash::FxHashMap<EntityId, V>;

impl EntityId {
    pub fn new(creator_incarnation: u32, counter: u32) -> Self {
        Self(((creator_incarnation as u64) << 32) | counter as u64)
    }
    pub fn creator_incarnation(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The player of account `account` (a connect token's client id).
    pub fn of_account(account: u32) -> Self {
        Self::new(ACCOUNT_INCARNATION, account)
    }
    /// The account whose player this is, if it is one.
    pub fn account(self) -> Option<u32> {
        (self.creator_incarnation() == ACCOUNT_INCARNATION).then_some(self.0 as u32)
    }
}

/// The id space of accounts' players (see [`EntityId`]); server incarnations stay below it.
pub const ACCOUNT_INCARNATION: u32 = u32::MAX;

impl std::fmt::Display for EntityId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "e{}:{}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub enum EntityKind {
    Player,
    Npc,
    /// An item; `capacity` > 0 makes it a container (a backpack) that holds plain items.
    Item {
        capacity: u8,
    },
    Ship,
    Projectile,
}

impl EntityKind {
    /// Whether an entity of this kind may be the parent of one of `child`'s kind, and how many
    /// children it takes.
    pub fn capacity_for(self, child: EntityKind) -> usize {
        match (self, child) {
            (EntityKind::Ship, EntityKind::Player | EntityKind::Npc | EntityKind::Item { .. }) => SHIP_CAPACITY_COUNT,
            (EntityKind::Player | EntityKind::Npc, EntityKind::Item { .. }) => HANDS_CAPACITY_COUNT,
            (EntityKind::Item { capacity }, EntityKind::Item { capacity: 0 }) => capacity as usize,
            _ => 0,
        }
    }
    pub fn is_item(self) -> bool {
        matches!(self, EntityKind::Item { .. })
    }
    /// Entities that act on their own (bots drive them).
    pub fn is_driven(self) -> bool {
        matches!(self, EntityKind::Player | EntityKind::Npc | EntityKind::Ship)
    }
}

/// The full state of one entity: what is replicated, handed off and committed.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EntityState {
    pub kind: EntityKind,
    /// World position in metres; a child's equals its root's.
    pub position: [f32; 3],
    /// Orientation as a unit quaternion (x, y, z, w); movers face where they go.
    pub rotation: [f32; 4],
    pub velocity: [f32; 3],
    pub parent: Option<EntityId>,
    pub health: u16,
    /// Ticks left to live (projectiles); 0 for everything else.
    pub ttl_ticks: u16,
    /// Who fired a projectile.
    pub source: Option<EntityId>,
    /// Tick of the last change made by the entity's authority.
    pub changed_tick: Tick,
}

impl EntityState {
    pub fn new(kind: EntityKind, position: Vec3) -> Self {
        Self {
            kind,
            position: position.to_array(),
            rotation: Quat::IDENTITY.to_array(),
            velocity: [0.0; 3],
            parent: None,
            health: 100,
            ttl_ticks: 0,
            source: None,
            changed_tick: Tick::ZERO,
        }
    }
    pub fn pos(&self) -> Vec3 {
        Vec3::from_array(self.position)
    }
    pub fn vel(&self) -> Vec3 {
        Vec3::from_array(self.velocity)
    }
    pub fn rot(&self) -> Quat {
        Quat::from_array(self.rotation)
    }
    /// Turns to face `direction` (kept as is if `direction` is zero).
    pub fn face(&mut self, direction: Vec3) {
        if let Some(d) = direction.try_normalize() {
            self.rotation = Quat::from_rotation_arc(Vec3::X, d).to_array();
        }
    }
    /// Whether every number in the state is finite: a state that is not came from a broken or
    /// hostile writer and is refused.
    pub fn is_finite(&self) -> bool {
        self.pos().is_finite() && self.vel().is_finite() && self.rot().is_finite()
    }
}

/// The parent-to-children index of an entity graph. The parent pointer lives in each entity's
/// state; the forest mirrors it so subtrees are found without a scan. Looked up for every moving
/// root every tick (does it carry anything?), so by hash; a parent's children are few (hands,
/// a backpack, a ship's seats) and kept sorted in a vector.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Forest {
    children: EntityMap<Vec<EntityId>>,
}

impl Forest {
    pub fn link(&mut self, child: EntityId, parent: EntityId) {
        let children = self.children.entry(parent).or_default();
        match children.binary_search(&child) {
            Ok(_) => debug_assert!(false, "{child} linked twice under {parent}"),
            Err(at) => children.insert(at, child),
        }
    }

    pub fn unlink(&mut self, child: EntityId, parent: EntityId) {
        if let Some(children) = self.children.get_mut(&parent) {
            if let Ok(at) = children.binary_search(&child) {
                children.remove(at);
            }
            if children.is_empty() {
                self.children.remove(&parent);
            }
        }
    }

    /// `parent`'s children, by id.
    pub fn children(&self, parent: EntityId) -> impl Iterator<Item = EntityId> + '_ {
        self.children.get(&parent).into_iter().flat_map(|c| c.iter().copied())
    }

    pub fn child_count(&self, parent: EntityId) -> usize {
        self.children.get(&parent).map_or(0, |c| c.len())
    }

    /// `root` and everything under it, parents before children.
    pub fn subtree(&self, root: EntityId) -> Vec<EntityId> {
        let mut out = Vec::new();
        self.subtree_into(root, &mut out);
        out
    }

    /// Appends `root` and everything under it to `out`, parents before children.
    pub fn subtree_into(&self, root: EntityId, out: &mut Vec<EntityId>) {
        let start = out.len();
        out.push(root);
        let mut next = start;
        while next < out.len() {
            if let Some(children) = self.children.get(&out[next]) {
                out.extend_from_slice(children);
            }
            next += 1;
            assert!(
                out.len() - start <= 1 + SHIP_CAPACITY_COUNT * HANDS_CAPACITY_COUNT * 256,
                "entity graph under {root} is not a tree"
            );
        }
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Every (parent, child) pair, parents in no particular order.
    pub fn edges(&self) -> impl Iterator<Item = (EntityId, EntityId)> + '_ {
        self.children.iter().flat_map(|(p, cs)| cs.iter().map(move |c| (*p, *c)))
    }
}

/// Walks up from `id` through `parent_of` to the root, refusing chains deeper than the graph
/// may be (a cycle or a corrupt record). `None` if a link is missing or the chain is too deep.
pub fn root_of(id: EntityId, parent_of: impl Fn(EntityId) -> Option<Option<EntityId>>) -> Option<EntityId> {
    let mut at = id;
    for _ in 0..=GRAPH_DEPTH_MAX {
        match parent_of(at)? {
            None => return Some(at),
            Some(p) => at = p,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn ids_carry_their_creator() {
        let id = EntityId::new(7, 42);
        assert_eq!(id.creator_incarnation(), 7);
        assert_eq!(id.to_string(), "e7:42");
    }

    #[test]
    fn holding_rules() {
        let backpack = EntityKind::Item { capacity: 4 };
        let item = EntityKind::Item { capacity: 0 };
        assert_eq!(backpack.capacity_for(item), 4);
        assert_eq!(backpack.capacity_for(backpack), 0, "no backpack in a backpack");
        assert_eq!(item.capacity_for(item), 0);
        assert!(EntityKind::Ship.capacity_for(EntityKind::Player) > 0);
        assert_eq!(EntityKind::Player.capacity_for(EntityKind::Ship), 0);
        assert_eq!(EntityKind::Ship.capacity_for(EntityKind::Projectile), 0);
    }

    #[test]
    fn subtree_is_parents_first_and_roots_are_found() {
        let (ship, player, pack, coin) = (EntityId(1), EntityId(2), EntityId(3), EntityId(4));
        let mut f = Forest::default();
        f.link(player, ship);
        f.link(pack, player);
        f.link(coin, pack);
        assert_eq!(f.subtree(ship), vec![ship, player, pack, coin]);
        let parents: BTreeMap<EntityId, Option<EntityId>> =
            [(ship, None), (player, Some(ship)), (pack, Some(player)), (coin, Some(pack))].into();
        assert_eq!(root_of(coin, |e| parents.get(&e).copied()), Some(ship));
        let cyclic: BTreeMap<EntityId, Option<EntityId>> = [(ship, Some(player)), (player, Some(ship))].into();
        assert_eq!(root_of(ship, |e| cyclic.get(&e).copied()), None);
        f.unlink(coin, pack);
        assert_eq!(f.subtree(pack), vec![pack]);
    }
}
