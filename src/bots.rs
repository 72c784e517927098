//! Headless bots, for the simulator and the live runtime alike: each tick every player, NPC and
//! ship held by an acting server may change course, fire, pick up, drop, stow, unstow, board or
//! leave a ship. Inputs go to the server that holds the entity, as the gateway would route them.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

pub use crate::limits::COMMUTE_LEG_US;
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

/// What a bot does with its time. Drawn from its id, so a bot keeps its habit for the whole run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Random walks, with the usual pickups, boarding and shots.
    Wander,
    /// Travels from city to city, a new destination every `COMMUTE_LEG_US`.
    Commute,
    /// Heads for the rally point and mills about there: a crowd.
    Gather,
    /// Wanders and shoots five times as often.
    Fight,
}

/// Where bots go: city centres to commute between and one rally point to gather at.
#[derive(Clone, Debug, Default)]
pub struct Places {
    pub cities: Vec<glam::Vec3>,
    pub rally: glam::Vec3,
    /// A crowd in one room (its bounds): every player heads there and mills about, fights and
    /// trades items, whatever its habit.
    pub crowd: Option<crate::world::Aabb>,
    /// When the crowd is in the room, in game time (µs, from inclusive, until exclusive);
    /// `None`: always. Outside it, players go about their habits.
    pub crowd_during: Option<(u64, u64)>,
}

fn mix(a: u64, b: u64) -> u64 {
    // SplitMix64's finaliser: spreads ids so habits do not follow id order.
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 40% wander, 30% commute, 20% gather, 10% fight.
pub fn behaviour_of(id: EntityId) -> Behaviour {
    match mix(id.0, 1) % 10 {
        0..=3 => Behaviour::Wander,
        4..=6 => Behaviour::Commute,
        7 | 8 => Behaviour::Gather,
        _ => Behaviour::Fight,
    }
}

/// Inputs for a player following its behaviour; NPCs and ships act as in `inputs_for`.
#[allow(clippy::too_many_arguments)]
pub fn inputs_with_behaviour(
    rng: &mut ChaCha8Rng,
    id: EntityId,
    state: &crate::world::EntityState,
    places: &Places,
    now_us: u64,
    activity: f64,
    out: &mut Vec<Input>,
) {
    let crowding = places.crowd_during.is_none_or(|(from, until)| (from..until).contains(&now_us));
    if let (Some(room), EntityKind::Player, true) = (places.crowd, state.kind, crowding) {
        // In the room: everything a wanderer does; near its walls (the outer tenth of the floor
        // on either side) or outside, towards the middle.
        let before = out.len();
        inputs_for(rng, id, state.kind, activity, out);
        let (centre, half) = (room.center(), room.size() / 2.0);
        let mut to = centre - state.pos();
        to.z = 0.0;
        let near_wall = to.x.abs() > half.x * 0.8 || to.y.abs() > half.y * 0.8;
        if state.parent.is_none() && near_wall {
            let mine = out.split_off(before);
            out.extend(mine.into_iter().filter(|i| !matches!(i.action, Action::Move(_))));
            out.push(Input { entity: id, action: Action::Move(to.normalize_or_zero().to_array()) });
        }
        return;
    }
    let behaviour = if state.kind == EntityKind::Player { behaviour_of(id) } else { Behaviour::Wander };
    let destination = match behaviour {
        Behaviour::Commute if !places.cities.is_empty() => {
            let leg = now_us / COMMUTE_LEG_US;
            Some(places.cities[(mix(id.0, leg) % places.cities.len() as u64) as usize])
        }
        Behaviour::Gather => Some(places.rally),
        _ => None,
    };
    let before = out.len();
    inputs_for(rng, id, state.kind, activity, out);
    if behaviour == Behaviour::Fight && rng.random_bool((0.08 * activity).min(1.0)) {
        let a = rng.random_range(0.0..std::f32::consts::TAU);
        out.push(Input { entity: id, action: Action::Fire([a.cos(), a.sin(), 0.0]) });
    }
    let Some(destination) = destination else { return };
    // Steer instead of wandering: drop random moves, head for the destination when off course.
    let mut i = before;
    while i < out.len() {
        if matches!(out[i].action, Action::Move(_)) {
            out.remove(i);
        } else {
            i += 1;
        }
    }
    if state.parent.is_some() {
        return;
    }
    let to = destination - state.pos();
    let far = to.length() > 15.0;
    let heading = state.vel().normalize_or_zero();
    let want = if far { to.normalize_or_zero() } else { glam::Vec3::ZERO };
    if heading.dot(want) < 0.95 || (!far && state.vel() != glam::Vec3::ZERO) {
        out.push(Input { entity: id, action: Action::Move(want.to_array()) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn habits_are_mixed_and_fixed_per_bot() {
        let mut counts = [0usize; 4];
        for i in 0..10_000 {
            let b = behaviour_of(EntityId(i));
            assert_eq!(b, behaviour_of(EntityId(i)));
            counts[b as usize] += 1;
        }
        for (got, want) in counts.iter().zip([4000, 3000, 2000, 1000]) {
            assert!((*got as i64 - want).abs() < 300, "{counts:?}");
        }
    }

    #[test]
    fn gatherers_head_for_the_rally_point_and_stop_there() {
        let id = (0..).map(EntityId).find(|id| behaviour_of(*id) == Behaviour::Gather).unwrap();
        let places =
            Places { cities: vec![], rally: glam::Vec3::new(100.0, 0.0, 0.0), crowd: None, crowd_during: None };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let far = crate::world::EntityState::new(EntityKind::Player, glam::Vec3::ZERO);
        let mut out = Vec::new();
        inputs_with_behaviour(&mut rng, id, &far, &places, 0, 1.0, &mut out);
        let moves: Vec<_> =
            out.iter().filter_map(|i| if let Action::Move(d) = i.action { Some(d) } else { None }).collect();
        assert_eq!(moves, vec![[1.0, 0.0, 0.0]]);
        let mut there = crate::world::EntityState::new(EntityKind::Player, glam::Vec3::new(95.0, 0.0, 0.0));
        there.velocity = [30.0, 0.0, 0.0];
        out.clear();
        inputs_with_behaviour(&mut rng, id, &there, &places, 0, 1.0, &mut out);
        assert!(out.iter().any(|i| i.action == Action::Move([0.0; 3])), "stops on arrival: {out:?}");
    }

    #[test]
    fn a_crowd_stays_in_its_room() {
        let room = crate::world::Aabb::new(glam::Vec3::new(-10.0, -20.0, 0.0), glam::Vec3::new(10.0, 20.0, 10.0));
        let places = Places { cities: vec![], rally: glam::Vec3::ZERO, crowd: Some(room), crowd_during: None };
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut out = Vec::new();
        // At the wall, every bot (whatever its habit) heads back in; inside, it moves as it likes.
        for i in 0..50 {
            let at_wall = crate::world::EntityState::new(EntityKind::Player, glam::Vec3::new(9.5, 0.0, 5.0));
            out.clear();
            inputs_with_behaviour(&mut rng, EntityId(i), &at_wall, &places, 0, 1.0, &mut out);
            let moves: Vec<_> =
                out.iter().filter_map(|i| if let Action::Move(d) = i.action { Some(d) } else { None }).collect();
            assert_eq!(moves, vec![[-1.0, 0.0, 0.0]], "bot {i}: {out:?}");
        }
    }
}
