//! The faults of one simulated run, all drawn from its seed: what the network does to packets,
//! how often servers crash, how often the controller reshapes the map.

use std::fmt;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::limits::{LEASE_DURATION_US, TICK_DURATION_US};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultPlan {
    pub servers: u32,
    /// Replication-layer slices (cores); server `s` lives on slice `s mod slices`.
    pub slices: u16,
    pub players: usize,
    pub loss: f64,
    pub duplication: f64,
    /// Every packet is delayed by a uniform draw from this range; different delays reorder.
    pub delay_us: (u64, u64),
    /// Now and then a packet is held far longer than a lease, so it lands after the world has
    /// moved on: the late message from a former owner.
    pub spike: f64,
    pub spike_us: (u64, u64),
    /// Chance per tick that a server's link goes dark both ways, and for how long.
    pub partition: f64,
    pub partition_ticks: (u64, u64),
    pub crash_per_tick: f64,
    /// Share of crashes the supervisor reports at once (a crash on this host); the rest are
    /// found by lease expiry (a crash on another host).
    pub crash_reported: f64,
    pub restart_ticks: (u64, u64),
    /// Chance per tick of a split, a merge or a move by the controller.
    pub region_ops_per_tick: f64,
    /// Each slice's log is synced every this many ticks; a crash loses the ticks since.
    pub sync_every_ticks: u64,
    /// Chance per tick that the whole process dies (every node, every unsynced byte) and starts
    /// again from its log.
    pub process_crash_per_tick: f64,
    /// Game time between the controller's checkpoints, in ticks.
    pub checkpoint_every_ticks: u64,
    /// Game time a tick is: the world runs at 20, 30 or 60 Hz, and must move as fast at each.
    pub tick_us: u64,
}

impl FaultPlan {
    /// Faults drawn from `seed`. Every kind of fault is on in every plan; the seed sets how hard.
    pub fn draw(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xfa17_5eed);
        let tick = TICK_DURATION_US;
        let max_delay = rng.random_range(1..=4) * tick;
        let servers = rng.random_range(2..=6);
        Self {
            servers,
            slices: rng.random_range(1..=3u16).min(servers as u16),
            players: rng.random_range(8..=40),
            loss: rng.random_range(0.01..0.2),
            duplication: rng.random_range(0.01..0.1),
            delay_us: (rng.random_range(0..=max_delay / 2), max_delay),
            spike: rng.random_range(0.0005..0.004),
            spike_us: (LEASE_DURATION_US + tick, 3 * LEASE_DURATION_US),
            partition: rng.random_range(0.001..0.01),
            partition_ticks: (2, rng.random_range(3..=60)),
            crash_per_tick: rng.random_range(0.001..0.01),
            crash_reported: rng.random_range(0.2..0.9),
            restart_ticks: (1, rng.random_range(2..=30)),
            region_ops_per_tick: rng.random_range(0.01..0.1),
            sync_every_ticks: rng.random_range(1..=6),
            process_crash_per_tick: rng.random_range(0.0005..0.005),
            checkpoint_every_ticks: rng.random_range(20..=120),
            tick_us: [TICK_DURATION_US, 1_000_000 / 60, 1_000_000 / 20][rng.random_range(0..3usize)],
        }
    }

    /// The same run with the network clean and the faults stopped: the liveness phase.
    pub fn calm(&self) -> Self {
        Self {
            loss: 0.0,
            duplication: 0.0,
            delay_us: (0, TICK_DURATION_US),
            spike: 0.0,
            partition: 0.0,
            crash_per_tick: 0.0,
            region_ops_per_tick: 0.0,
            process_crash_per_tick: 0.0,
            ..*self
        }
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        write!(
            f,
            "servers={} slices={} players={} loss={:.3} dup={:.3} delay={:.0}-{:.0}ms spike={:.4}x{:.0}-{:.0}ms partition={:.4}x{}-{}t crash={:.4}/t reported={:.2} restart={}-{}t region_ops={:.3}/t sync={}t process_crash={:.4}/t checkpoint={}t hz={:.0}",
            self.servers,
            self.slices,
            self.players,
            self.loss,
            self.duplication,
            ms(self.delay_us.0),
            ms(self.delay_us.1),
            self.spike,
            ms(self.spike_us.0),
            ms(self.spike_us.1),
            self.partition,
            self.partition_ticks.0,
            self.partition_ticks.1,
            self.crash_per_tick,
            self.crash_reported,
            self.restart_ticks.0,
            self.restart_ticks.1,
            self.region_ops_per_tick,
            self.sync_every_ticks,
            self.process_crash_per_tick,
            self.checkpoint_every_ticks,
            1e6 / self.tick_us as f64,
        )
    }
}
