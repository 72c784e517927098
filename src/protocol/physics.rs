//! Rigid-body physics of one server: rapier3d simulates its ships and projectiles, and its
//! neighbours' ships seen across a border (ghosts) are in the same world, so a projectile here
//! finds a ship there.
//!
//! - Ships are dynamic bodies with a spherical hull: they fly at the velocity their pilots set
//!   and collide with each other. Rotation is locked (a ship faces where it flies; facing is game
//!   state, not physics).
//! - Projectiles are dynamic bodies that collide with nothing: rapier moves them ballistically,
//!   and what they hit is found by a ray cast along the path each swept this tick. At 1,500 m/s a
//!   projectile moves 50 m a tick, so a test of where it ends would let it pass through a hull.
//! - Ghost ships are kinematic bodies placed where their own server last reported them. They
//!   push nothing and are only there to be hit.
//!
//! The entity state is the authority: each tick the bodies are set from it (inputs change
//! velocities, a handoff brings a new body with the state it had), rapier steps, and the state is
//! read back. A projectile handed to another server keeps its trajectory there because its state
//! is its whole motion. Bodies go in and out in id order, so a server's physics is deterministic.

use std::collections::BTreeMap;

use glam::Vec3;
use rapier3d::prelude::{
    ColliderBuilder, Group, InteractionGroups, InteractionTestMode, PhysicsWorld, QueryFilter, Ray, RigidBodyBuilder,
    RigidBodyHandle, Vector,
};

use crate::world::{EntityId, EntityKind};

/// A ship's hull, as a sphere: what a projectile must pass through to hit it, and what another
/// ship bumps into.
pub const SHIP_HULL_RADIUS_M: f32 = 4.0;

/// A projectile's own size (it collides with nothing; it only needs a shape to be a body).
const PROJECTILE_RADIUS_M: f32 = 0.1;

const SHIPS: Group = Group::GROUP_1;
const GHOSTS: Group = Group::GROUP_2;
const PROJECTILES: Group = Group::GROUP_3;
/// What a projectile's ray cast looks for.
const HIT_QUERY: Group = Group::GROUP_4;

fn v(p: Vec3) -> Vector {
    Vector::new(p.x, p.y, p.z)
}

fn g(p: Vector) -> Vec3 {
    Vec3::new(p.x, p.y, p.z)
}

pub struct Physics {
    world: PhysicsWorld,
    /// Bodies of the ships and projectiles this server holds.
    bodies: BTreeMap<EntityId, RigidBodyHandle>,
    /// Bodies of other servers' ships seen as ghosts.
    ghosts: BTreeMap<EntityId, RigidBodyHandle>,
}

impl Default for Physics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Physics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Physics").field("bodies", &self.bodies.len()).field("ghosts", &self.ghosts.len()).finish()
    }
}

/// Whether rapier moves entities of this kind.
pub fn is_simulated(kind: EntityKind) -> bool {
    matches!(kind, EntityKind::Ship | EntityKind::Projectile)
}

/// Removes from `world` the bodies in `bodies` whose ids are not in `seen` (in id order).
fn remove_unseen(world: &mut PhysicsWorld, bodies: &mut BTreeMap<EntityId, RigidBodyHandle>, seen: &[EntityId]) {
    if seen.len() == bodies.len() {
        return;
    }
    let gone: Vec<EntityId> = bodies.keys().filter(|id| seen.binary_search(id).is_err()).copied().collect();
    for id in gone {
        let handle = bodies.remove(&id).expect("listed");
        world.remove_body(handle);
    }
}

impl Physics {
    pub fn new() -> Self {
        Self::with_tick_us(crate::limits::TICK_DURATION_US)
    }

    /// A world stepped once a tick of `tick_us` of game time.
    pub fn with_tick_us(tick_us: u64) -> Self {
        let mut world = PhysicsWorld::new();
        // Space: no gravity. One step a tick.
        world.gravity = Vector::ZERO;
        world.integration_parameters.dt = tick_us as f32 / 1e6;
        // rapier caps speeds at 400 m/s by default; a projectile flies at 1,500.
        world.integration_parameters.normalized_max_linear_velocity = f32::MAX;
        Self { world, bodies: BTreeMap::new(), ghosts: BTreeMap::new() }
    }

    /// Sets the bodies from the state of the ships and projectiles this server holds (in id
    /// order): a body for each new one, state for each known one, none for one gone.
    pub fn sync<'a>(&mut self, held: impl Iterator<Item = (EntityId, EntityKind, Vec3, Vec3)> + 'a) {
        let mut seen = Vec::new();
        for (id, kind, position, velocity) in held {
            seen.push(id);
            match self.bodies.get(&id) {
                Some(handle) => {
                    let body = &mut self.world.bodies[*handle];
                    if g(body.translation()) != position {
                        body.set_translation(v(position), true);
                    }
                    if g(body.linvel()) != velocity {
                        body.set_linvel(v(velocity), true);
                    }
                }
                None => {
                    let body = RigidBodyBuilder::dynamic()
                        .translation(v(position))
                        .linvel(v(velocity))
                        .lock_rotations()
                        .can_sleep(false)
                        .user_data(id.0 as u128);
                    let collider = match kind {
                        EntityKind::Ship => ColliderBuilder::ball(SHIP_HULL_RADIUS_M)
                            .collision_groups(InteractionGroups::new(
                                SHIPS,
                                SHIPS | HIT_QUERY,
                                InteractionTestMode::And,
                            ))
                            .friction(0.0)
                            .restitution(0.5),
                        _ => ColliderBuilder::ball(PROJECTILE_RADIUS_M).collision_groups(InteractionGroups::new(
                            PROJECTILES,
                            Group::NONE,
                            InteractionTestMode::And,
                        )),
                    };
                    let (handle, _) = self.world.insert(body, collider.user_data(id.0 as u128));
                    self.bodies.insert(id, handle);
                }
            }
        }
        remove_unseen(&mut self.world, &mut self.bodies, &seen);
    }

    /// Places other servers' ships seen as ghosts (in id order); those no longer seen go.
    pub fn set_ghosts(&mut self, ships: impl Iterator<Item = (EntityId, Vec3)>) {
        let mut seen = Vec::new();
        for (id, position) in ships {
            seen.push(id);
            match self.ghosts.get(&id) {
                Some(handle) => self.world.bodies[*handle].set_next_kinematic_translation(v(position)),
                None => {
                    let body = RigidBodyBuilder::kinematic_position_based().translation(v(position));
                    let collider = ColliderBuilder::ball(SHIP_HULL_RADIUS_M)
                        .collision_groups(InteractionGroups::new(GHOSTS, HIT_QUERY, InteractionTestMode::And))
                        .user_data(id.0 as u128);
                    let (handle, _) = self.world.insert(body, collider);
                    self.ghosts.insert(id, handle);
                }
            }
        }
        remove_unseen(&mut self.world, &mut self.ghosts, &seen);
    }

    /// One tick of simulation.
    pub fn step(&mut self) {
        self.world.step();
    }

    /// A held ship's or projectile's position and velocity after the step.
    pub fn motion(&self, id: EntityId) -> Option<(Vec3, Vec3)> {
        let body = &self.world.bodies[*self.bodies.get(&id)?];
        Some((g(body.translation()), g(body.linvel())))
    }

    /// The first ship hull (held or ghost, other than `except`) on the path `from`..`to`, with
    /// how far along the path it is hit (0 at `from`, 1 at `to`).
    pub fn first_hull_on(&self, from: Vec3, to: Vec3, except: Option<EntityId>) -> Option<(EntityId, f32)> {
        let path = to - from;
        if path == Vec3::ZERO || !path.is_finite() {
            return None;
        }
        let groups = InteractionGroups::new(HIT_QUERY, SHIPS | GHOSTS, InteractionTestMode::And);
        let mut filter = QueryFilter::default().groups(groups);
        if let Some(body) = except.and_then(|e| self.bodies.get(&e).or(self.ghosts.get(&e))) {
            filter = filter.exclude_rigid_body(*body);
        }
        let (handle, toi) = self.world.cast_ray(&Ray::new(v(from), v(path)), 1.0, true, filter)?;
        let id = EntityId(self.world.colliders[handle].user_data as u64);
        Some((id, toi))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DT: f32 = crate::limits::TICK_DURATION_US as f32 / 1e6;

    #[test]
    fn a_projectile_flies_straight_and_a_ship_at_its_velocity() {
        let mut p = Physics::new();
        let (shot, ship) = (EntityId(1), EntityId(2));
        let bodies = [
            (shot, EntityKind::Projectile, Vec3::ZERO, Vec3::new(1500.0, 0.0, 0.0)),
            (ship, EntityKind::Ship, Vec3::new(0.0, 100.0, 0.0), Vec3::new(0.0, 0.0, 30.0)),
        ];
        p.sync(bodies.into_iter());
        for _ in 0..3 {
            p.step();
        }
        let (at, vel) = p.motion(shot).unwrap();
        assert!((at - Vec3::new(1500.0 * 3.0 * DT, 0.0, 0.0)).length() < 1e-2, "{at}");
        assert_eq!(vel, Vec3::new(1500.0, 0.0, 0.0));
        let (at, _) = p.motion(ship).unwrap();
        assert!((at - Vec3::new(0.0, 100.0, 90.0 * DT)).length() < 1e-3, "{at}");
        // Gone from the state: gone from the world.
        p.sync(bodies.into_iter().skip(1));
        assert!(p.motion(shot).is_none());
    }

    #[test]
    fn ships_collide_and_a_path_finds_the_first_hull_held_or_ghost() {
        let mut p = Physics::new();
        // Two ships flying head-on at 30 m/s, 10 m apart: their hulls (4 m) meet within a tick or two.
        let (a, b) = (EntityId(1), EntityId(2));
        p.sync(
            [
                (a, EntityKind::Ship, Vec3::new(-5.0, 0.0, 0.0), Vec3::new(30.0, 0.0, 0.0)),
                (b, EntityKind::Ship, Vec3::new(5.0, 0.0, 0.0), Vec3::new(-30.0, 0.0, 0.0)),
            ]
            .into_iter(),
        );
        for _ in 0..10 {
            p.step();
        }
        let (pa, va) = p.motion(a).unwrap();
        let (pb, _) = p.motion(b).unwrap();
        assert!(va.x < 0.0, "bounced back: {va}");
        assert!(pb.x - pa.x >= 2.0 * SHIP_HULL_RADIUS_M - 0.1, "hulls do not overlap: {pa} {pb}");
        // A ghost ship 60 m down the x axis, and the path of a shot from the origin through it.
        p.set_ghosts([(EntityId(9), Vec3::new(60.0, 30.0, 0.0))].into_iter());
        p.step();
        let hit = p.first_hull_on(Vec3::new(40.0, 30.0, 0.0), Vec3::new(90.0, 30.0, 0.0), None);
        let (id, along) = hit.expect("the ghost's hull is on the path");
        assert_eq!(id, EntityId(9));
        assert!((along - 16.0 / 50.0).abs() < 1e-3, "{along}");
        // The shooter's own hull does not stop its shot; a path that misses finds nothing.
        assert!(p.first_hull_on(pa, pa + Vec3::new(0.0, 0.0, 50.0), Some(a)).is_none());
        assert!(p.first_hull_on(Vec3::new(40.0, 40.0, 0.0), Vec3::new(90.0, 40.0, 0.0), None).is_none());
        p.set_ghosts(std::iter::empty());
        p.step();
        assert!(p.first_hull_on(Vec3::new(40.0, 30.0, 0.0), Vec3::new(90.0, 30.0, 0.0), None).is_none());
    }
}
