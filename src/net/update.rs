//! What each client is sent, without a socket in sight: from the entities in its bubble and the
//! update it last acknowledged, the next update within its byte budget. Entities are weighed by
//! size and nearness and by how long they have waited; one that moves as the client predicts costs
//! nothing; the client's own entity always goes.

use std::collections::VecDeque;

use super::wire::{ArchivedMoved, ArchivedSeen, ArchivedUpdate, Known, Seen, Snapshot};
use crate::limits::{BUBBLE_RADIUS_M, PREDICTION_TOLERANCE_CM};
use crate::node::ViewEntity;
use crate::world::{EntityId, EntityKind};

/// An entity in a client's bubble this tick: its distance, its state, and the tick of the view that
/// state is from (earlier than now for one held through a handoff, whose state is where it left).
#[derive(Clone, Copy, Debug)]
pub(super) struct Near {
    pub(super) d: f32,
    pub(super) e: ViewEntity,
    pub(super) last_tick: u64,
}

/// Bytes an update takes before its entities, and each entity in it: gone, moved, entered.
pub(super) const UPDATE_BYTES: usize = std::mem::size_of::<ArchivedUpdate>();
pub(super) const GONE_BYTES: usize = 1;
pub(super) const MOVED_BYTES: usize = std::mem::size_of::<ArchivedMoved>();
pub(super) const ENTERED_BYTES: usize = std::mem::size_of::<ArchivedSeen>();

/// The update the client acknowledged, if it is still kept.
pub(super) fn baseline(sent: &VecDeque<Snapshot>, acked: u64) -> Option<&Snapshot> {
    sent.iter().rev().find(|s| acked > 0 && s.tick == acked)
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

/// Bytes an entity costs in an update: `state` what the client is to hold, `base` what its
/// baseline has.
pub(super) fn cost(state: Option<&Known>, base: Option<&Known>) -> usize {
    match (state, base) {
        (None, None) => 0,
        (None, Some(_)) => GONE_BYTES,
        (Some(s), Some(b)) if s == b => 0,
        (Some(_), Some(_)) => MOVED_BYTES,
        (Some(_), None) => ENTERED_BYTES,
    }
}

/// Whether a client holding `k` sees `fresh`'s state well enough.
pub(super) fn predicts(k: &Known, fresh: &Known) -> bool {
    let at = k.position_at(fresh.as_of);
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
    acked: u64,
    priority: &mut Vec<(EntityId, f32)>,
    player: EntityId,
    (tick, input_ack, horizon_dm): (u64, u32, u16),
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
        let old = cost(current.as_ref(), base.as_ref());
        bytes += old;
        let preferred = match (base, current) {
            (Some(b), _) if predicts(&b, &fresh) => b,
            (_, Some(k)) if predicts(&k, &fresh) => k,
            _ => fresh,
        };
        let extra = cost(Some(&preferred), base.as_ref()) as isize - old as isize;
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
    let mut next = Snapshot { tick, player, input_ack, horizon_dm, known };
    next.settle(base);
    next
}
