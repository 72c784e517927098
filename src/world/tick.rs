//! The world's clock: a tick number. Game time is derived from it (`tick × tick_us`), so the tick
//! rate changes how often the world is simulated, not how fast it moves. A tick is never a count
//! of ticks, a duration or a wall-clock time: those stay plain numbers, and the methods here are
//! the only ways between them.

/// One tick of the world: the first is 0, each node's next is one more.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord))]
#[serde(transparent)]
pub struct Tick(pub u64);

impl Tick {
    pub const ZERO: Tick = Tick(0);

    /// The tick number, for encodings and printing.
    pub const fn get(self) -> u64 {
        self.0
    }

    pub const fn next(self) -> Tick {
        Tick(self.0.saturating_add(1))
    }

    /// `ticks` ticks later.
    pub const fn after(self, ticks: u64) -> Tick {
        Tick(self.0.saturating_add(ticks))
    }

    /// `ticks` ticks earlier, or the first tick.
    pub const fn before(self, ticks: u64) -> Tick {
        Tick(self.0.saturating_sub(ticks))
    }

    /// How many ticks `earlier` is before this one (0 when it is not earlier).
    pub const fn since(self, earlier: Tick) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Whether this is one of every `period` ticks (counted from the first; a period of 0 is 1):
    /// what runs once a period runs at these.
    pub const fn is_every(self, period: u64) -> bool {
        self.0 % if period == 0 { 1 } else { period } == 0
    }

    /// How many ticks `earlier` is before this one; `None` when it is later.
    pub const fn checked_since(self, earlier: Tick) -> Option<u64> {
        self.0.checked_sub(earlier.0)
    }

    /// `ticks` ticks earlier; `None` before the first tick.
    pub const fn checked_before(self, ticks: u64) -> Option<Tick> {
        match self.0.checked_sub(ticks) {
            Some(t) => Some(Tick(t)),
            None => None,
        }
    }

    /// The game time this tick starts at, in microseconds, when a tick is `tick_us`.
    pub const fn game_us(self, tick_us: u64) -> u64 {
        self.0.saturating_mul(tick_us)
    }

    /// The tick game time `game_us` falls in, when a tick is `tick_us` (at least 1).
    pub const fn at_game_us(game_us: u64, tick_us: u64) -> Tick {
        Tick(game_us / if tick_us == 0 { 1 } else { tick_us })
    }
}

impl std::fmt::Display for Tick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_and_game_time() {
        let t = Tick(10);
        assert_eq!(t.next(), Tick(11));
        assert_eq!(t.after(5).since(t), 5);
        assert_eq!(t.since(t.after(5)), 0, "a later tick is not before");
        assert_eq!(Tick(2).before(5), Tick::ZERO);
        assert_eq!(Tick(2).checked_before(3), None);
        assert!(Tick(30).is_every(15) && !Tick(31).is_every(15) && Tick(31).is_every(0));
        assert_eq!(Tick(5).checked_since(Tick(2)), Some(3));
        assert_eq!(Tick(2).checked_since(Tick(5)), None);
        assert_eq!(t.game_us(33_333), 333_330);
        assert_eq!(Tick::at_game_us(333_330, 33_333), t);
        assert_eq!(Tick::at_game_us(333_329, 33_333), Tick(9));
        assert_eq!(Tick::at_game_us(7, 0), Tick(7), "a zero tick length is read as 1");
        assert_eq!(Tick(u64::MAX).next(), Tick(u64::MAX), "saturates");
        // The same game time is fewer ticks at a slower rate: the world moves as fast.
        assert_eq!(Tick::at_game_us(1_000_000, 16_667).get(), 59);
        assert_eq!(Tick::at_game_us(1_000_000, 50_000).get(), 20);
    }
}
