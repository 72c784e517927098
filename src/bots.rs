//! Headless bots, for the simulator and the live runtime alike: each tick every player, NPC and
//! ship held by an acting server may change course, fire, pick up, drop, stow, unstow, board or
//! leave a ship. Inputs go to the server that holds the entity, as the gateway would route them.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use crate::protocol::{Action, Input};
use crate::world::{EntityId, EntityKind};

/// How busy bots are: 1.0 is the simulator's stress level (an action every few ticks); the live
/// demo uses less, closer to people playing.
pub const SIM_ACTIVITY: f64 = 1.0;

/// The inputs for one driven entity this tick, drawn from the run's random source.
pub fn inputs_for(rng: &mut ChaCha8Rng, id: EntityId, kind: EntityKind, activity: f64, out: &mut Vec<Input>) {
    let mut push = |action| out.push(Input { entity: id, action });
    let roll: f64 = rng.random::<f64>() / activity;
    let a = rng.random_range(0.0..std::f32::consts::TAU);
    let z = rng.random_range(-0.2..0.2);
    let dir = || [a.cos(), a.sin(), z];
    match kind {
        EntityKind::Player => match roll {
            r if r < 0.08 => push(Action::Move(dir())),
            r if r < 0.10 => push(Action::Fire(dir())),
            r if r < 0.16 => push(Action::PickUp),
            r if r < 0.19 => push(Action::Drop),
            r if r < 0.22 => push(Action::Stow),
            r if r < 0.24 => push(Action::Unstow),
            r if r < 0.27 => push(Action::Board),
            r if r < 0.29 => push(Action::Disembark),
            _ => {}
        },
        EntityKind::Npc => match roll {
            r if r < 0.05 => push(Action::Move(dir())),
            r if r < 0.08 => push(Action::PickUp),
            r if r < 0.10 => push(Action::Drop),
            _ => {}
        },
        EntityKind::Ship => match roll {
            r if r < 0.04 => push(Action::Move(dir())),
            r if r < 0.05 => push(Action::Fire(dir())),
            r if r < 0.06 => push(Action::Move([0.0; 3])),
            _ => {}
        },
        EntityKind::Item { .. } | EntityKind::Projectile => {}
    }
}
