//! What each client is sent, without a socket in sight: the world of a tick merged from every
//! core's view, each client's bubble in it, and from the bubble and the update the client last
//! acknowledged, the next update within its byte budget. Entities are weighed by size and nearness
//! and by how long they have waited; one that moves as the client predicts costs nothing; the
//! client's own entity always goes. The gateway feeds it views and sends what it makes; the
//! simulator feeds it the same way and checks what its simulated clients make of it.

use std::collections::VecDeque;

use glam::Vec3;
use rustc_hash::FxHashMap;

use super::wire::{ArchivedMoved, ArchivedSeen, ArchivedUpdate, Known, Seen, Snapshot, Update};
use crate::limits::{
    ticks_in, BUBBLE_RADIUS_M, CLIENT_BYTES_SAVED_US, EXTRAPOLATE_US_MAX, HANDOFF_HOLD_US, PREDICTION_TOLERANCE_CM,
    SEEN_PER_UPDATE_MAX, SENT_KEPT,
};
use crate::node::ViewEntity;
use crate::world::grid::Grid;
use crate::world::{EntityId, EntityKind, Tick};

/// An entity in a client's bubble this tick: its distance, its state, and the tick of the view that
/// state is from (earlier than now for one held through a handoff, whose state is where it left).
#[derive(Clone, Copy, Debug)]
pub(super) struct Near {
    pub(super) d: f32,
    pub(super) e: ViewEntity,
    pub(super) last_tick: Tick,
}

/// Bytes an update takes before its entities, and each entity in it: gone, moved, entered.
pub(super) const UPDATE_BYTES: usize = std::mem::size_of::<ArchivedUpdate>();
pub(super) const GONE_BYTES: usize = 1;
pub(super) const MOVED_BYTES: usize = std::mem::size_of::<ArchivedMoved>();
pub(super) const ENTERED_BYTES: usize = std::mem::size_of::<ArchivedSeen>();
/// Padding the encoding may add between the update's lists and before its root, which the
/// per-entity costs do not count: kept free under the budget, so an update never exceeds it.
pub(super) const PADDING_BYTES: usize =
    std::mem::align_of::<ArchivedMoved>() - 1 + std::mem::align_of::<ArchivedSeen>() - 1
        + std::mem::align_of::<ArchivedUpdate>()
        - 1;

/// The update the client acknowledged, if it is still kept.
pub(super) fn baseline(sent: &VecDeque<Snapshot>, acked: Tick) -> Option<&Snapshot> {
    sent.iter().rev().find(|s| acked > Tick::ZERO && s.tick == acked)
}

/// How much sending an entity matters each tick it waits: larger and nearer first, and even the
/// smallest at the edge of the bubble gets its turn.
pub(super) fn weight(kind: EntityKind, distance_m: f32) -> f32 {
    let size = match kind {
        EntityKind::Ship => 4.0,
        EntityKind::Projectile => 2.0,
        EntityKind::Player | EntityKind::Npc => 1.0,
        EntityKind::Item { capacity } if capacity > 0 => 0.75,
        EntityKind::Item { .. } => 0.5,
    };
    let nearness = 1.0 - (distance_m / BUBBLE_RADIUS_M).clamp(0.0, 1.0);
    size * (0.1 + nearness * nearness)
}

/// Bytes an entity costs in the update of `tick` (ticks of `tick_us`): `state` what the client
/// is to hold, `base` what its baseline has. A new state too far from the baseline's for a
/// `Moved` goes as gone and entered again.
pub(super) fn cost(state: Option<&Known>, base: Option<&Known>, tick: Tick, tick_us: u32) -> usize {
    match (state, base) {
        (None, None) => 0,
        (None, Some(_)) => GONE_BYTES,
        (Some(s), Some(b)) if s == b => 0,
        (Some(s), Some(b)) if super::wire::fits_moved(b, s, tick, tick_us) => MOVED_BYTES,
        (Some(_), Some(_)) => GONE_BYTES + ENTERED_BYTES,
        (Some(_), None) => ENTERED_BYTES,
    }
}

/// Whether a client holding `k` sees `fresh`'s state well enough (ticks of `tick_us`).
pub(super) fn predicts(k: &Known, fresh: &Known, tick_us: u32) -> bool {
    let at = k.position_at(fresh.as_of, tick_us);
    k.seen.velocity == fresh.seen.velocity
        && k.seen.carried == fresh.seen.carried
        && (0..3).all(|i| (at[i] as i64 - fresh.seen.position[i] as i64).abs() <= PREDICTION_TOLERANCE_CM as i64)
}

/// What a client is to hold after this tick's update, `near` being its bubble now (which this
/// sorts by id). It starts from what the last update gave it; an entity whose state there has
/// strayed from the truth gets the truth (or the baseline's, if that predicts it well), by
/// priority, while the update stays within `bytes_max` against the baseline. The client's own
/// entity always goes. Every list here is ordered by id and walked side by side.
/// An entity of the bubble as `next_snapshot` weighs it.
struct Candidate {
    current: Option<Known>,
    /// What the client should have, and the bytes it costs against what it has.
    preferred: Known,
    extra: isize,
    priority: f32,
}

/// What `next_snapshot` works in, kept from one client to the next for its memory.
#[derive(Default)]
pub(super) struct Scratch {
    candidates: Vec<Candidate>,
    priorities: Vec<(EntityId, f32)>,
    order: Vec<usize>,
    /// Room for the next snapshot's entities (the oldest snapshot kept gives up its own).
    pub(super) known: Vec<Known>,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn next_snapshot(
    sent: &VecDeque<Snapshot>,
    acked: Tick,
    priority: &mut Vec<(EntityId, f32)>,
    player: EntityId,
    (tick, tick_us, input_ack, horizon_dm): (Tick, u32, u32, u16),
    near: &mut [Near],
    bytes_max: usize,
    scratch: &mut Scratch,
) -> Snapshot {
    /// The entry for `id` in `list` (by id), from place `*at` on, which it moves past.
    fn find<T: Copy>(list: &[T], at: &mut usize, id: EntityId, key: impl Fn(&T) -> EntityId) -> Option<T> {
        while *at < list.len() && key(&list[*at]) < id {
            *at += 1;
        }
        list.get(*at).filter(|t| key(t) == id).copied()
    }
    near.sort_unstable_by_key(|n| n.e.id);
    let bytes_max = bytes_max.saturating_sub(PADDING_BYTES);
    let base = baseline(sent, acked);
    let base_known = base.map_or(&[][..], |b| &b.known[..]);
    let last_known = sent.back().map_or(&[][..], |l| &l.known[..]);
    let (mut at_base, mut at_last, mut at_priority, mut in_base) = (0, 0, 0, 0);
    let mut bytes = UPDATE_BYTES;
    // Bytes if every entity got what it should have.
    let mut wanted = 0;
    let candidates = &mut scratch.candidates;
    candidates.clear();
    let mut priorities = std::mem::take(&mut scratch.priorities);
    priorities.clear();
    for n in near.iter() {
        let e = &n.e;
        let seen =
            Seen { id: e.id, kind: e.kind, position: e.position, velocity: e.velocity, carried: e.carried, age: 0 };
        let fresh = Known { seen, as_of: n.last_tick.min(tick) };
        let current = find(last_known, &mut at_last, e.id, |k| k.seen.id);
        let base = find(base_known, &mut at_base, e.id, |k| k.seen.id);
        in_base += base.is_some() as usize;
        let old = cost(current.as_ref(), base.as_ref(), tick, tick_us);
        bytes += old;
        let preferred = match (base, current) {
            (Some(b), _) if predicts(&b, &fresh, tick_us) => b,
            (_, Some(k)) if predicts(&k, &fresh, tick_us) => k,
            _ => fresh,
        };
        let extra = cost(Some(&preferred), base.as_ref(), tick, tick_us) as isize - old as isize;
        wanted += extra.max(0) as usize;
        let waited = find(priority, &mut at_priority, e.id, |p| p.0).map_or(0.0, |p| p.1);
        let p = waited + weight(e.kind, n.d);
        priorities.push((e.id, p));
        let priority = if e.id == player { f32::INFINITY } else { p };
        candidates.push(Candidate { current, preferred, extra, priority });
    }
    // What the baseline has and the bubble no longer does.
    bytes += GONE_BYTES * (base_known.len() - in_base);
    let take = |c: &mut Candidate, bytes: &mut usize, waited: &mut f32| {
        *bytes = (*bytes as isize + c.extra) as usize;
        c.current = Some(c.preferred);
        *waited = 0.0;
    };
    if bytes + wanted <= bytes_max {
        // Everything fits, in whatever order.
        for (c, p) in candidates.iter_mut().zip(priorities.iter_mut()) {
            take(c, &mut bytes, &mut p.1);
        }
    } else {
        let order = &mut scratch.order;
        order.clear();
        order.extend(0..candidates.len());
        order.sort_by(|a, b| candidates[*b].priority.total_cmp(&candidates[*a].priority));
        for &i in order.iter() {
            let c = &mut candidates[i];
            let fits = (bytes as isize + c.extra) as usize <= bytes_max;
            if c.current == Some(c.preferred) || c.extra <= 0 || fits || c.priority.is_infinite() {
                take(c, &mut bytes, &mut priorities[i].1);
            }
        }
    }
    // The client's old priorities become the next client's room for its own.
    scratch.priorities = std::mem::replace(priority, priorities);
    let mut known = std::mem::take(&mut scratch.known);
    known.clear();
    known.extend(candidates.iter().filter_map(|c| c.current));
    let mut next = Snapshot { tick, player, input_ack, horizon_dm, tick_us, known };
    next.settle(base);
    next
}

/// One client's side of the updates: what it was last shown, the updates it was sent lately, the
/// newest it acknowledged, and each entity's claim to be sent.
pub struct ClientView {
    pub player: EntityId,
    /// What the last update showed, with the tick each entity was last in a core's view, by id.
    shown: Vec<(ViewEntity, Tick)>,
    /// Whether anything in `shown` was leaving its server.
    shown_leaving: bool,
    /// The updates sent lately, as the client holds each once it takes it in, oldest first.
    sent: VecDeque<Snapshot>,
    /// The newest update the client acknowledged.
    acked: Tick,
    /// Each entity's claim to be sent, by id: it grows by the entity's weight every tick it
    /// waits.
    priority: Vec<(EntityId, f32)>,
    /// Update bytes saved up from its byte rate (less than nothing after an update that had to
    /// go over).
    saved: i64,
    /// The budget the latest update was made within.
    last_budget: usize,
    /// The newest of the client's inputs an update said was applied. An update never says less:
    /// while its player is between servers (or just adopted, before its new server applied one)
    /// the views say none, and the client would take its applied inputs for lost.
    input_ack: u32,
}

/// An acknowledgement of an update that was never sent.
#[derive(Debug, PartialEq, Eq)]
pub struct NeverSent;

impl ClientView {
    pub fn new(player: EntityId) -> Self {
        Self {
            player,
            shown: Vec::new(),
            shown_leaving: false,
            sent: VecDeque::with_capacity(SENT_KEPT),
            acked: Tick::ZERO,
            priority: Vec::new(),
            saved: 0,
            last_budget: 0,
            input_ack: 0,
        }
    }

    /// The budget the latest update was made within.
    pub fn last_budget(&self) -> usize {
        self.last_budget
    }

    /// Update bytes the client may be sent now (its latest update was made within it).
    pub fn budget(&self) -> usize {
        self.saved.max(0) as usize
    }

    /// The client took in the update of `tick`: it is the baseline of the next ones, and those
    /// older are dropped.
    pub fn ack(&mut self, tick: Tick) -> Result<(), NeverSent> {
        if self.sent.back().is_none_or(|s| tick > s.tick) {
            return Err(NeverSent);
        }
        if tick > self.acked {
            self.acked = tick;
            while self.sent.front().is_some_and(|s| s.tick < tick) {
                self.sent.pop_front();
            }
        }
        Ok(())
    }

    pub fn acked(&self) -> Tick {
        self.acked
    }

    /// What the client holds once it takes in the newest update sent.
    pub fn last_sent(&self) -> Option<&Snapshot> {
        self.sent.back()
    }

    /// The updates sent lately that are still kept (a baseline is one of them), oldest first.
    pub fn sent(&self) -> &VecDeque<Snapshot> {
        &self.sent
    }
}

/// The world of one tick as every core's view has it, and the clients' updates made from it.
pub struct Bubbles {
    /// Places in `merged`, by position.
    grid: Grid<u32>,
    /// A client's bubble, kept between clients for its memory.
    near: Vec<Near>,
    scratch: Scratch,
    /// Every entity in the views of the tick being sent, with the tick of the view it is from.
    merged: Vec<(ViewEntity, Tick)>,
    index: FxHashMap<EntityId, usize>,
    /// Update bytes a client is given each tick, and how many it may have saved up at most.
    bytes_per_tick: usize,
    bytes_saved_max: usize,
    /// Game time a tick is.
    tick_us: u32,
    /// Test-only planted bug: updates are made against the newest update sent, acknowledged or
    /// not (a client that lost it cannot apply them).
    pub planted_delta_from_newest: bool,
}

impl Bubbles {
    /// Bubbles for clients sent `bytes_per_s` of updates a second at most, by a world whose
    /// ticks are `tick_us` of game time each.
    pub fn new(bytes_per_s: u32, tick_us: u64) -> Self {
        let tick_us = tick_us.clamp(1, u32::MAX as u64);
        Self {
            grid: Grid::new(BUBBLE_RADIUS_M),
            near: Vec::new(),
            scratch: Scratch::default(),
            merged: Vec::new(),
            index: FxHashMap::default(),
            bytes_per_tick: (bytes_per_s as u64 * tick_us / 1_000_000) as usize,
            bytes_saved_max: (bytes_per_s as u64 * CLIENT_BYTES_SAVED_US.max(tick_us) / 1_000_000) as usize,
            tick_us: tick_us as u32,
            planted_delta_from_newest: false,
        }
    }

    /// Update bytes a client is given each tick.
    pub fn bytes_per_tick(&self) -> usize {
        self.bytes_per_tick
    }

    /// The world of a tick: `entities` with the tick of the view each is from, what servers
    /// hold first and what is in flight between them after (the first of an id counts, so an
    /// entity caught mid-handoff in two views counts once, where it is held).
    pub fn merge(&mut self, entities: impl IntoIterator<Item = (ViewEntity, Tick)>) {
        self.merged.clear();
        self.index.clear();
        for (e, view_tick) in entities {
            if self.index.contains_key(&e.id) {
                continue;
            }
            self.index.insert(e.id, self.merged.len());
            self.merged.push((e, view_tick));
        }
        self.grid.rebuild(self.merged.iter().enumerate().map(|(i, (e, _))| (i as u32, e.position_m())));
    }

    /// The merged world's entity `id`, with the tick of its view.
    pub fn get(&self, id: EntityId) -> Option<(ViewEntity, Tick)> {
        self.index.get(&id).map(|i| self.merged[*i])
    }

    /// The update of `tick` for `client`, from the merged world, and its bytes; `None` while its
    /// player is in no view (between cores: the next update catches up). It stays within what
    /// the client has saved of its byte rate (see `ClientView::budget`).
    pub fn update(&mut self, tick: Tick, client: &mut ClientView) -> Option<(Update, Vec<u8>)> {
        client.saved = (client.saved + self.bytes_per_tick as i64).min(self.bytes_saved_max as i64);
        let Some((me, me_tick)) = self.get(client.player) else {
            // What it was shown that is on its way between servers now is remembered, for the
            // next update to hold it where it left (its neighbours often cross with it).
            for (last, last_tick) in client.shown.iter_mut() {
                if let Some((e, t)) = self.index.get(&last.id).map(|i| self.merged[*i]) {
                    if e.leaving {
                        (*last, *last_tick) = (e, t);
                        client.shown_leaving = true;
                    }
                }
            }
            return None;
        };
        let pad = Vec3::splat(BUBBLE_RADIUS_M);
        // The bubble is around where the player is at `tick`, as the client reckons it (moved on
        // for `EXTRAPOLATE_US_MAX` at most): from a core whose view is behind (it skipped ticks
        // under load), or a state committed a while ago, the player's state is of an earlier
        // tick, up to a few metres back along its way.
        let ahead_s = (tick.since(me_tick).saturating_mul(self.tick_us as u64)).min(EXTRAPOLATE_US_MAX) as f32 / 1e6;
        let at = me.position_m() + me.velocity_m_s() * ahead_s;
        let mut near = std::mem::take(&mut self.near);
        near.clear();
        let merged = &self.merged;
        self.grid.query(at - pad, at + pad, |i, p| {
            let d = p.distance(at);
            if d <= BUBBLE_RADIUS_M {
                let (e, last_tick) = merged[i as usize];
                near.push(Near { d, e, last_tick });
            }
        });
        if !near.iter().any(|n| n.e.id == me.id) {
            // Its own entity, whatever its reckoning: always shown.
            near.push(Near { d: 0.0, e: me, last_tick: me_tick });
        }
        // Held through a handoff: what was last shown leaving its server stays where it left
        // until a server adopts it. In flight it is not simulated: shown where it left (the
        // views carry the state a handoff gave up), as of when it left.
        for (last, last_tick) in client.shown.iter().filter(|_| client.shown_leaving) {
            let in_flight = last.leaving && tick <= last_tick.after(ticks_in(HANDOFF_HOLD_US, self.tick_us as u64));
            if !in_flight || self.index.contains_key(&last.id) {
                continue;
            }
            let d = last.position_m().distance(at);
            if d <= BUBBLE_RADIUS_M {
                near.push(Near { d, e: *last, last_tick: *last_tick });
            }
        }
        let budget = client.budget();
        client.last_budget = budget;
        // Crowded: the nearest are shown (selected, not sorted: `next_snapshot` orders them by
        // id), and the horizon is the first left out.
        let horizon_m = if near.len() > SEEN_PER_UPDATE_MAX {
            // Its own entity first, whatever else stands as near (a crowd on one spot).
            let mine = |n: &Near| n.e.id != me.id;
            near.select_nth_unstable_by(SEEN_PER_UPDATE_MAX, |a, b| {
                mine(a).cmp(&mine(b)).then(a.d.total_cmp(&b.d)).then(a.e.id.cmp(&b.e.id))
            });
            let horizon = near[SEEN_PER_UPDATE_MAX].d;
            near.truncate(SEEN_PER_UPDATE_MAX);
            horizon
        } else {
            BUBBLE_RADIUS_M
        };
        let acked = if self.planted_delta_from_newest {
            client.sent.back().map_or(Tick::ZERO, |s| s.tick)
        } else {
            client.acked
        };
        client.input_ack = client.input_ack.max(me.input_seq);
        let next = next_snapshot(
            &client.sent,
            acked,
            &mut client.priority,
            client.player,
            (tick, self.tick_us, client.input_ack, (horizon_m * 10.0) as u16),
            &mut near,
            budget,
            &mut self.scratch,
        );
        // What the client is shown (`near` is by id now, as is `next`).
        client.shown.clear();
        client.shown_leaving = false;
        let mut at = 0;
        for n in near.iter() {
            while next.known.get(at).is_some_and(|k| k.seen.id < n.e.id) {
                at += 1;
            }
            if next.known.get(at).is_some_and(|k| k.seen.id == n.e.id) {
                client.shown.push((n.e, n.last_tick));
                client.shown_leaving |= n.e.leaving;
            }
        }
        self.near = near;
        let update = next.delta_from(baseline(&client.sent, acked));
        let bytes = super::wire::encode(&update);
        client.saved -= bytes.len() as i64;
        if client.sent.len() == SENT_KEPT {
            if let Some(oldest) = client.sent.pop_front() {
                self.scratch.known = oldest.known;
            }
        }
        client.sent.push_back(next);
        Some((update, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire;
    use super::*;

    const TICK_US: u32 = crate::limits::TICK_DURATION_US as u32;

    fn entity(id: u64, kind: EntityKind, x: f32, vx: f32) -> ViewEntity {
        ViewEntity::new(EntityId(id), kind, [x, 0.0, 0.0], [vx, 0.0, 0.0])
    }

    /// One tick of a client that acknowledges every update at once: the update's bytes, and what
    /// the client holds after it.
    fn tick(
        sent: &mut VecDeque<Snapshot>,
        priority: &mut Vec<(EntityId, f32)>,
        tick: u64,
        near: &[(f32, ViewEntity)],
        bytes_max: usize,
    ) -> (usize, Snapshot) {
        let tick = Tick(tick);
        let acked = sent.back().map_or(Tick::ZERO, |s| s.tick);
        let mut near: Vec<Near> = near.iter().map(|(d, e)| Near { d: *d, e: *e, last_tick: tick }).collect();
        let next = next_snapshot(
            sent,
            acked,
            priority,
            EntityId(1),
            (tick, TICK_US, 0, 400),
            &mut near,
            bytes_max,
            &mut Scratch::default(),
        );
        let update = next.delta_from(baseline(sent, acked));
        let bytes = wire::encode(&update);
        let base = baseline(sent, acked).cloned();
        assert_eq!(Snapshot::apply(base.as_ref(), &wire::decode(&bytes).unwrap()), Ok(next.clone()));
        sent.push_back(next.clone());
        (bytes.len(), next)
    }

    #[test]
    fn a_crowd_enters_by_priority_within_the_budget_and_then_costs_nothing() {
        let me = entity(1, EntityKind::Player, 0.0, 0.0);
        // Twenty items at rest, from 1 m to 20 m, and a ship at the far end.
        let mut near: Vec<(f32, ViewEntity)> = vec![(0.0, me)];
        near.extend(
            (0..20).map(|i| (1.0 + i as f32, entity(10 + i, EntityKind::Item { capacity: 0 }, 1.0 + i as f32, 0.0))),
        );
        near.push((20.0, entity(99, EntityKind::Ship, 20.0, 0.0)));
        let bytes_max = 2 * UPDATE_BYTES + 3 * ENTERED_BYTES;
        let (mut sent, mut priority) = (VecDeque::new(), Vec::new());
        let mut entered_order = Vec::new();
        for t in 1..=12 {
            let (bytes, next) = tick(&mut sent, &mut priority, t, &near, bytes_max);
            assert!(bytes <= bytes_max, "tick {t}: {bytes} bytes");
            // The client's own entity always; nothing once shown leaves while in view.
            assert!(next.get(EntityId(1)).is_some());
            if let Some(before) = sent.iter().rev().nth(1) {
                assert!(before.known.iter().all(|k| next.get(k.seen.id).is_some()));
            }
            for k in &next.known {
                if !entered_order.contains(&k.seen.id) {
                    entered_order.push(k.seen.id);
                }
            }
        }
        assert_eq!(entered_order.len(), 22, "everything entered: {entered_order:?}");
        // The ship, four times an item's size at the far end, is among the first in; the items
        // enter nearest first.
        let place = |id| entered_order.iter().position(|e| *e == EntityId(id)).unwrap();
        assert!(place(99) <= 4, "{entered_order:?}");
        assert!((10..29).all(|i| place(i) < place(i + 1)), "{entered_order:?}");
        // Nothing moves: an update is its header alone.
        let (bytes, _) = tick(&mut sent, &mut priority, 13, &near, bytes_max);
        assert!(bytes <= UPDATE_BYTES + 8, "{bytes}");
    }

    #[test]
    fn what_moves_as_predicted_is_not_sent_and_a_turn_is() {
        let me = entity(1, EntityKind::Player, 0.0, 0.0);
        let walker = |x, vx| (x, entity(2, EntityKind::Player, x, vx));
        let (mut sent, mut priority) = (VecDeque::new(), Vec::new());
        let budget = 4096;
        tick(&mut sent, &mut priority, 1, &[(0.0, me), walker(10.0, 3.0)], budget);
        // Walking on at 3 m/s, a tenth of a metre a tick: as predicted.
        for t in 2..=20 {
            let x = 10.0 + 0.1 * (t - 1) as f32;
            let (_, next) = tick(&mut sent, &mut priority, t, &[(0.0, me), walker(x, 3.0)], budget);
            assert_eq!(next.get(EntityId(2)).unwrap().as_of, Tick(1), "tick {t}: not sent again");
        }
        // It turns back: sent at once.
        let (_, next) = tick(&mut sent, &mut priority, 21, &[(0.0, me), walker(11.9, -3.0)], budget);
        let k = next.get(EntityId(2)).unwrap();
        assert_eq!((k.as_of, k.seen.velocity), (Tick(21), [-30, 0, 0]));
    }

    #[test]
    fn an_entity_held_through_a_handoff_is_as_of_when_it_left_and_sent_once() {
        let me = Near { d: 0.0, e: entity(1, EntityKind::Player, 0.0, 0.0), last_tick: Tick::ZERO };
        let (mut sent, mut priority) = (VecDeque::new(), Vec::new());
        // Walking at 3 m/s until tick 4; at tick 5 it turns back, and is handed off: the views of
        // ticks 6 to 9 show it leaving from where it turned at 5 (the client moves it on).
        for t in 1..=9u64 {
            let e = match t {
                1..=4 => entity(2, EntityKind::Player, 10.0 + 0.1 * (t - 1) as f32, 3.0),
                _ => entity(2, EntityKind::Player, 10.4, -3.0),
            };
            let near = Near { d: 10.0, e, last_tick: Tick(t.min(5)) };
            let acked = sent.back().map_or(Tick::ZERO, |s: &Snapshot| s.tick);
            let mut near = vec![Near { last_tick: Tick(t), ..me }, near];
            let next = next_snapshot(
                &sent,
                acked,
                &mut priority,
                EntityId(1),
                (Tick(t), TICK_US, 0, 400),
                &mut near,
                4096,
                &mut Scratch::default(),
            );
            let update = next.delta_from(baseline(&sent, acked));
            let k = *next.get(EntityId(2)).unwrap();
            match t {
                2..=4 => assert!(k.as_of == Tick(1) && update.moved.is_empty(), "tick {t}: as predicted from tick 1"),
                5 => assert!(k.as_of == Tick(5) && update.moved.len() == 1, "tick 5: turned, sent"),
                6.. => assert!(k.as_of == Tick(5) && update.moved.is_empty(), "tick {t}: held as of 5, not sent again"),
                _ => {}
            }
            sent.push_back(next);
        }
    }

    #[test]
    fn a_client_is_shown_its_own_player_in_a_crowd_standing_on_one_spot() {
        // More players than an update shows, every one where the others are (accounts' players
        // made at one spawn point): the client's own, of the highest id, is shown all the same.
        let mut bubbles = Bubbles::new(crate::limits::CLIENT_BYTES_PER_S_DEFAULT, TICK_US as u64);
        let crowd = SEEN_PER_UPDATE_MAX as u64 + 10;
        let mut client = ClientView::new(EntityId(crowd));
        bubbles.merge((1..=crowd).map(|id| (entity(id, EntityKind::Player, 5.0, 0.0), Tick(1))));
        let (update, _) = bubbles.update(Tick(1), &mut client).expect("its player is in the view");
        assert!(update.entered.iter().any(|s| s.id == EntityId(crowd)), "its own player is among those shown");
    }

    #[test]
    fn an_acknowledged_input_stays_acknowledged_while_the_player_is_between_servers() {
        let mut bubbles = Bubbles::new(crate::limits::CLIENT_BYTES_PER_S_DEFAULT, TICK_US as u64);
        let mut client = ClientView::new(EntityId(1));
        // Its server applied input 7, then handed it off: the next views say none (0), until
        // its new server applies input 9.
        for (t, seq, shown) in [(1, 7, 7), (2, 0, 7), (3, 0, 7), (4, 9, 9)] {
            let me = ViewEntity { input_seq: seq, ..entity(1, EntityKind::Player, 0.0, 0.0) };
            bubbles.merge([(me, Tick(t))]);
            let (update, _) = bubbles.update(Tick(t), &mut client).expect("its player is in the view");
            assert_eq!(update.input_ack, shown, "tick {t}");
        }
    }
}
