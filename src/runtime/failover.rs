//! Crashes on purpose, and how long the mesh takes to get over them.
//!
//! `Chaos` carries a crash drill to the core a victim server lives on: the mesh's main thread
//! picks a server at random every period (`--chaos-crash-every`), and that core's shard has the
//! server's next tick panic halfway through. The panic is caught as the server's crash
//! (`node::panic`), its slice takes back what it held, and live servers simulate it again.
//!
//! `FailoverWatch` measures that, for every crash of a server's code, drilled or not: the ticks
//! from the crash to the first tick at whose end every entity its slice had it hold (committed
//! state, projectiles left out) is held by a live server again, on any core (or, an item, is at
//! rest in a container its new holder has not loaded).

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;

use rustc_hash::FxHashSet;

use crate::world::{EntityId, ServerId, Tick};

/// Crash drills waiting for their core: `requests[core]` is the server to crash plus one (0: none).
pub struct Chaos {
    requests: Vec<AtomicU32>,
    asked: AtomicU32,
    done: AtomicU32,
}

impl Chaos {
    pub fn new(cores: usize) -> Self {
        Self {
            requests: (0..cores).map(|_| AtomicU32::new(0)).collect(),
            asked: AtomicU32::new(0),
            done: AtomicU32::new(0),
        }
    }

    /// Server `server`, on core `core`, is to crash in its next tick. A drill not yet taken up
    /// is replaced.
    pub fn ask(&self, core: usize, server: ServerId) {
        self.requests[core].store(server.0 + 1, Ordering::Release);
        self.asked.fetch_add(1, Ordering::Relaxed);
    }

    /// The drill waiting for core `core`, taken.
    pub fn take(&self, core: usize) -> Option<ServerId> {
        match self.requests[core].swap(0, Ordering::AcqRel) {
            0 => None,
            n => Some(ServerId(n - 1)),
        }
    }

    /// A drill reached its server (it was running, and will panic in this tick).
    pub fn carried_out(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// Drills asked for, and those that reached a running server.
    pub fn counts(&self) -> (u32, u32) {
        (self.asked.load(Ordering::Relaxed), self.done.load(Ordering::Relaxed))
    }
}

struct Pending {
    server: ServerId,
    crashed_at: Tick,
    remaining: FxHashSet<EntityId>,
}

#[derive(Default)]
struct Watched {
    pending: Vec<Pending>,
    /// Ticks each finished failover took.
    done: Vec<u64>,
    crashes: u64,
}

/// Every crash's failover, from the crash to every entity held again.
#[derive(Default)]
pub struct FailoverWatch {
    watched: Mutex<Watched>,
    /// Failovers not finished: the cores look at their servers only while one is.
    active: AtomicUsize,
}

/// What the watch saw over a run.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct FailoverReport {
    /// Crashes of a server's code (each a failover).
    pub crashes: u64,
    /// Ticks each finished failover took, in the order they finished.
    pub ticks: Vec<u64>,
    /// Failovers still waiting when the run ended: the server, the tick it crashed at, and how
    /// many of its entities no live server held yet.
    pub unfinished: Vec<(u32, Tick, usize)>,
}

impl FailoverWatch {
    /// Server `server` crashed in tick `tick`, its slice having had it hold `held`.
    pub fn crashed(&self, server: ServerId, tick: Tick, held: Vec<EntityId>) {
        let mut w = self.watched.lock().expect("not poisoned");
        w.crashes += 1;
        if held.is_empty() {
            w.done.push(0);
            return;
        }
        w.pending.push(Pending { server, crashed_at: tick, remaining: held.into_iter().collect() });
        self.active.store(w.pending.len(), Ordering::Release);
    }

    /// Whether a failover is under way (the cores then call `seen_held` every tick).
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire) > 0
    }

    /// At the end of tick `tick`, a core's servers hold what `holds` says: what they hold is
    /// taken off every failover's list, and a failover whose list is empty is finished.
    pub fn seen_held(&self, tick: Tick, holds: impl Fn(EntityId) -> bool) {
        let mut w = self.watched.lock().expect("not poisoned");
        let mut finished = Vec::new();
        w.pending.retain_mut(|p| {
            p.remaining.retain(|id| !holds(*id));
            if p.remaining.is_empty() {
                finished.push(tick.since(p.crashed_at));
                false
            } else {
                true
            }
        });
        w.done.extend(finished);
        self.active.store(w.pending.len(), Ordering::Release);
    }

    pub fn report(&self) -> FailoverReport {
        let w = self.watched.lock().expect("not poisoned");
        FailoverReport {
            crashes: w.crashes,
            ticks: w.done.clone(),
            unfinished: w.pending.iter().map(|p| (p.server.0, p.crashed_at, p.remaining.len())).collect(),
        }
    }
}

impl FailoverReport {
    /// The `q` quantile (0 to 1) of the finished failovers' ticks, if any finished.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let mut t = self.ticks.clone();
        t.sort_unstable();
        let last = t.len().checked_sub(1)?;
        Some(t[((last as f64) * q).round() as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failover_ends_when_every_entity_is_held_again_on_any_core() {
        let w = FailoverWatch::default();
        let ids = |r: std::ops::Range<u64>| r.map(EntityId).collect::<Vec<_>>();
        w.crashed(ServerId(3), Tick(10), ids(0..4));
        assert!(w.active());
        // Core 0 holds two of them at the end of tick 11, core 1 the rest at tick 12.
        w.seen_held(Tick(11), |id| id.0 < 2);
        w.seen_held(Tick(11), |_| false);
        assert!(w.active());
        w.seen_held(Tick(12), |id| id.0 >= 2);
        assert!(!w.active());
        // A crash holding nothing is over at once; one never taken over stays unfinished.
        w.crashed(ServerId(4), Tick(20), Vec::new());
        w.crashed(ServerId(5), Tick(30), ids(9..10));
        let r = w.report();
        assert_eq!((r.crashes, r.ticks.clone()), (3, vec![2, 0]));
        assert_eq!(r.unfinished, vec![(5, Tick(30), 1)]);
        assert_eq!((r.quantile(0.5), r.quantile(1.0)), (Some(2), Some(2)));
        assert_eq!(FailoverReport::default().quantile(0.99), None, "nothing measured is no figure");
    }

    #[test]
    fn a_drill_reaches_its_core_once() {
        let c = Chaos::new(2);
        c.ask(1, ServerId(7));
        assert_eq!(c.take(0), None);
        assert_eq!(c.take(1), Some(ServerId(7)));
        assert_eq!(c.take(1), None);
        assert_eq!(c.counts(), (1, 0));
    }
}
