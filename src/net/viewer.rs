//! What a client makes of its updates, without a socket: it applies each to the update it was
//! made against, keeps what it knew after the last `SNAPSHOTS_KEPT`, and counts glitches: a
//! teleport (an entity moved further between two of its states than its speed allows), an entity
//! that vanished from well inside the bubble and came back, and an entity shown twice in one
//! update. The bots run one per connection; the simulator runs one per simulated client.

use std::collections::VecDeque;

use glam::Vec3;
use rustc_hash::FxHashMap;

use super::wire::{Known, Snapshot, Update, WireError};
use crate::limits::{BOARD_REACH_M, REACH_M, SNAPSHOTS_KEPT, TICK_DURATION_US};
use crate::protocol::server::speed_of;
use crate::world::{EntityId, EntityKind, Tick};

/// What a client saw go wrong in its updates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViewCounts {
    pub updates: u64,
    pub teleports: u64,
    pub vanished: u64,
    pub duplicates: u64,
    /// Updates that did not fit what the client knew (a baseline it does not hold, places that
    /// do not add up).
    pub undecodable: u64,
}

impl ViewCounts {
    pub fn add(&mut self, o: &ViewCounts) {
        self.updates += o.updates;
        self.teleports += o.teleports;
        self.vanished += o.vanished;
        self.duplicates += o.duplicates;
        self.undecodable += o.undecodable;
    }

    pub fn glitches(&self) -> u64 {
        self.teleports + self.vanished + self.duplicates
    }
}

#[derive(Default)]
pub struct Viewer {
    last_tick: Tick,
    snapshots: VecDeque<Snapshot>,
    /// Each entity in view, as the client knows it, by id.
    view: Vec<Known>,
    /// What left the view from well inside it: when it left, and its last state.
    gone: FxHashMap<EntityId, (Tick, Known)>,
    /// Where the client's own entity is, whether it is aboard a ship, where it was first seen,
    /// and the furthest it has been from there.
    pub me: Option<Vec3>,
    pub aboard: bool,
    pub home: Option<Vec3>,
    pub travel_m: f32,
    pub counts: ViewCounts,
    /// What the last glitch was, in words.
    pub last_glitch: Option<String>,
}

impl Viewer {
    /// A new connection: nothing known, no baseline held.
    pub fn reset(&mut self) {
        self.view.clear();
        self.gone.clear();
        self.snapshots.clear();
        self.last_tick = Tick::ZERO;
    }

    /// The tick of the newest update taken in.
    pub fn last_tick(&self) -> Tick {
        self.last_tick
    }

    /// Game time a tick is, as the updates say (`TICK_DURATION_US` until one has).
    pub fn tick_us(&self) -> u32 {
        self.snapshots.back().map_or(TICK_DURATION_US as u32, |s| s.tick_us)
    }

    /// What the client held after the newest update it took in.
    pub fn last_snapshot(&self) -> Option<&Snapshot> {
        self.snapshots.back()
    }

    /// Each entity in view, by id.
    pub fn view(&self) -> &[Known] {
        &self.view
    }

    /// Takes in an update: what the client holds after it, if it was new and fitted what the
    /// client knew (then it is the tick to acknowledge).
    pub fn take_update(&mut self, update: &Update) -> Option<&Snapshot> {
        if update.tick <= self.last_tick {
            return None;
        }
        let base = self.snapshots.iter().rev().find(|s| s.tick == update.baseline);
        let snapshot = match Snapshot::apply(base, update) {
            Ok(s) => s,
            Err(WireError::Duplicate(id)) => {
                self.counts.duplicates += 1;
                self.last_glitch = Some(format!("tick {}: {id:?} shown twice", update.tick));
                return None;
            }
            Err(_) => {
                self.counts.undecodable += 1;
                return None;
            }
        };
        self.take_snapshot(&snapshot);
        if self.snapshots.len() == SNAPSHOTS_KEPT {
            self.snapshots.pop_front();
        }
        self.snapshots.push_back(snapshot);
        self.snapshots.back()
    }

    fn take_snapshot(&mut self, snapshot: &Snapshot) {
        let tick = snapshot.tick;
        self.counts.updates += 1;
        if let Some(me) = snapshot.get(snapshot.player) {
            let at = me.position_m_at(tick, snapshot.tick_us);
            self.me = Some(at);
            self.aboard = me.seen.carried;
            let home = *self.home.get_or_insert(at);
            self.travel_m = self.travel_m.max(home.distance(at));
        }
        let dt = snapshot.tick_us as f32 / 1e6;
        // How far an entity can have got from a state of its, `ticks` later. What carries it
        // moves it at a ship's speed at most, and being taken up is a jump to the carrier: a
        // player boards a ship within `BOARD_REACH_M`, an item is picked up within `REACH_M`. An
        // entity last seen on the ground may have been taken up since, unseen (by a carrier out
        // of view, too), so its reach is the larger of its own and a carried one's. A carried
        // entity also jumps with its carrier when that boards a ship.
        let jump = |kind: EntityKind| match kind {
            EntityKind::Player | EntityKind::Npc => Some(BOARD_REACH_M),
            EntityKind::Item { .. } => Some(REACH_M),
            EntityKind::Ship | EntityKind::Projectile => None,
        };
        let reach = |k: &Known, ticks: u64| {
            let own = speed_of(k.seen.kind) * dt * ticks as f32;
            let carried = speed_of(EntityKind::Ship) * dt * ticks as f32;
            let reach = match (k.seen.carried, jump(k.seen.kind)) {
                (true, _) => carried + BOARD_REACH_M,
                (false, Some(jump)) => own.max(carried + jump),
                (false, None) => own,
            };
            reach + 1.0
        };
        if self.last_tick > Tick::ZERO {
            // The view and the snapshot are both by id: walked side by side.
            let mut at = 0;
            for k in &snapshot.known {
                // A new state: no further from the last one than its speed allows. Between two
                // states on the ground it may have been taken up (a jump to its carrier) and
                // carried off (at a ship's speed at most) without the client seeing it carried,
                // if an update was skipped or its state waited for room in one. An item is taken
                // up and put down in a tick each; a player boards in one tick and disembarks in
                // a later one.
                while self.view.get(at).is_some_and(|p| p.seen.id < k.seen.id) {
                    at += 1;
                }
                if let Some(prev) = self.view.get(at).filter(|p| p.seen.id == k.seen.id) {
                    if k.as_of > prev.as_of && !prev.seen.carried && !k.seen.carried {
                        let ticks = k.as_of.since(prev.as_of);
                        let own = speed_of(k.seen.kind) * dt * ticks as f32;
                        let carried = speed_of(EntityKind::Ship) * dt * (ticks - 1) as f32;
                        let allowed = match (k.seen.kind, jump(k.seen.kind)) {
                            (EntityKind::Item { .. }, Some(jump)) => jump + carried,
                            (_, Some(jump)) if ticks >= 2 => own.max(jump + carried),
                            _ => own,
                        } + 0.5;
                        let moved = prev.seen.position_m().distance(k.seen.position_m());
                        if moved > allowed {
                            self.counts.teleports += 1;
                            self.last_glitch = Some(format!(
                                "tick {tick}: {} ({:?}) moved {moved:.1} m in {ticks} ticks, {allowed:.1} m at most",
                                k.seen.id, k.seen.kind
                            ));
                        }
                    }
                }
                // Back as it was, and where it could have got by itself: a vanish. Back picked up,
                // put down, aboard or ashore, or carried somewhere meanwhile: it jumped to (or
                // with) what carries it, which can take it out of view for a while.
                if let Some((_, last)) = self.gone.remove(&k.seen.id) {
                    let ticks = k.as_of.since(last.as_of) + 1;
                    let by_itself = last.seen.position_m().distance(k.seen.position_m())
                        <= speed_of(k.seen.kind) * dt * ticks as f32 + 1.0;
                    if last.seen.carried == k.seen.carried && (last.seen.carried || by_itself) {
                        self.counts.vanished += 1;
                        self.last_glitch = Some(format!(
                            "tick {tick}: {} ({:?}) came back, gone from well inside the view since tick {}",
                            k.seen.id, k.seen.kind, last.as_of
                        ));
                    }
                }
            }
            // What left the view from well inside it (not a projectile, which ends) is watched:
            // coming back soon is a vanish. Well inside: where it was, plus as far as it can have
            // gone since, is still inside the horizon the update gives (the bubble, or its
            // nearest part when crowded). A ship at the edge may leave in one tick; a player
            // walking in the middle not.
            if let Some(me) = self.me {
                let horizon = snapshot.horizon_dm as f32 / 10.0;
                let mut at = 0;
                for prev in &self.view {
                    while snapshot.known.get(at).is_some_and(|k| k.seen.id < prev.seen.id) {
                        at += 1;
                    }
                    if snapshot.known.get(at).is_some_and(|k| k.seen.id == prev.seen.id)
                        || prev.seen.kind == EntityKind::Projectile
                    {
                        continue;
                    }
                    let inside = prev.seen.position_m().distance(me) + reach(prev, tick.since(prev.as_of)) < horizon;
                    if inside {
                        self.gone.insert(prev.seen.id, (tick, *prev));
                    }
                }
            }
            if !self.gone.is_empty() {
                self.gone.retain(|_, (at, _)| tick < at.after(60));
            }
        }
        self.view.clear();
        self.view.extend_from_slice(&snapshot.known);
        self.last_tick = tick;
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::Seen;
    use super::*;

    fn seen(id: u64, kind: EntityKind, at: [f32; 3], carried: bool) -> Seen {
        let (position, velocity) = Seen::quantize(at, [0.0; 3]);
        Seen { id: EntityId(id), kind, position, velocity, carried, age: 0 }
    }

    /// A whole update (no baseline): everything in it is new as of its tick.
    fn update(tick: u64, seen: Vec<Seen>) -> Update {
        let (gone, moved) = (vec![], vec![]);
        let tick_us = TICK_DURATION_US as u32;
        Update {
            tick: Tick(tick),
            baseline: Tick::ZERO,
            player: EntityId(1),
            input_ack: 0,
            horizon_dm: 400,
            tick_us,
            gone,
            moved,
            entered: seen,
        }
    }

    const ME: u64 = 1;

    #[test]
    fn the_glitch_detector_sees_a_teleport_a_vanish_and_a_duplicate() {
        let mut b = Viewer::default();
        let me = |x: f32| seen(ME, EntityKind::Player, [x, 0.0, 0.0], false);
        let other = |x: f32| seen(2, EntityKind::Player, [x, 10.0, 0.0], false);
        // Walking at full speed (1 m a tick) is no teleport; ten metres in a tick is.
        b.take_update(&update(1, vec![me(0.0), other(5.0)]));
        b.take_update(&update(2, vec![me(0.0), other(6.0)]));
        assert_eq!(b.counts.teleports, 0);
        b.take_update(&update(3, vec![me(0.0), other(16.0)]));
        assert_eq!(b.counts.teleports, 1);
        // Gone from 11 m away, where neither walking nor boarding a ship takes it out of a 40 m
        // bubble in a tick, and back.
        let near = |x: f32| seen(6, EntityKind::Player, [x, 10.0, 0.0], false);
        b.take_update(&update(4, vec![me(0.0), near(5.0)]));
        b.take_update(&update(5, vec![me(0.0)]));
        b.take_update(&update(6, vec![me(0.0)]));
        b.take_update(&update(7, vec![me(0.0), near(6.0)]));
        assert_eq!(b.counts.vanished, 1);
        // Shown twice in one update.
        b.take_update(&update(8, vec![me(0.0), near(6.0), near(6.0)]));
        assert_eq!(b.counts.duplicates, 1);
        // An item on the floor that is somewhere else on the floor a tick later, further than
        // any pickup reaches.
        let item = |x: f32| seen(3, EntityKind::Item { capacity: 0 }, [x, -10.0, 0.0], false);
        b.take_update(&update(9, vec![me(0.0), item(0.0)]));
        b.take_update(&update(10, vec![me(0.0), item(REACH_M + 1.0)]));
        assert_eq!(b.counts.teleports, 2);
    }

    #[test]
    fn what_carries_an_entity_away_is_no_glitch() {
        let mut b = Viewer::default();
        let me = seen(ME, EntityKind::Player, [0.0; 3], false);
        let item = |at: [f32; 3], carried| seen(3, EntityKind::Item { capacity: 0 }, at, carried);
        // An item on the floor, picked up and carried off out of view, put down again elsewhere.
        b.take_update(&update(1, vec![me, item([20.0, 0.0, 0.0], false)]));
        b.take_update(&update(2, vec![me]));
        b.take_update(&update(30, vec![me, item([-25.0, 0.0, 0.0], false)]));
        // Picked up and put down again between two updates, the carry itself not seen: a jump
        // within reach, and a tick of a carrier's motion.
        b.take_update(&update(40, vec![me, item([3.0, 0.0, 0.0], false)]));
        b.take_update(&update(42, vec![me, item([3.0 + REACH_M + 4.0, 0.0, 0.0], false)]));
        // A passenger next to the bubble's edge, carried out of it by a ship in one tick.
        let passenger = |x: f32| seen(4, EntityKind::Player, [x, 0.0, 0.0], true);
        b.take_update(&update(31, vec![me, passenger(36.0)]));
        b.take_update(&update(32, vec![me]));
        b.take_update(&update(33, vec![me, passenger(38.0)]));
        // Boarding: a jump to the ship, carried from then on.
        let boarder = |x: f32, carried| seen(5, EntityKind::Player, [x, 5.0, 0.0], carried);
        b.take_update(&update(34, vec![me, boarder(10.0, false)]));
        b.take_update(&update(35, vec![me, boarder(25.0, true)]));
        // Boarding a ship out of view (the jump takes it out of the bubble at once), riding, and
        // walking back in once ashore.
        let rider = |x: f32| seen(7, EntityKind::Player, [x, -5.0, 0.0], false);
        b.take_update(&update(36, vec![me, rider(20.0)]));
        b.take_update(&update(37, vec![me]));
        b.take_update(&update(60, vec![me, rider(22.0)]));
        // Aboard and ashore again between two updates: the jump to the ship, and its motion.
        b.take_update(&update(61, vec![me, rider(22.0)]));
        b.take_update(&update(63, vec![me, rider(22.0 + BOARD_REACH_M + 4.0)]));
        assert_eq!((b.counts.teleports, b.counts.vanished, b.counts.duplicates), (0, 0, 0));
    }
}
