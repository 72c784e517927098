//! What travels between a client and the gateway, inside renet messages: rkyv types, checked on
//! decode (a client's bytes are untrusted), with positions quantized to centimetres.

use rkyv::rancor;
use rkyv::util::AlignedVec;

pub use crate::limits::{EXTRAPOLATE_US_MAX, INPUT_BYTES_MAX, KNOWN_MAX, MESSAGE_BYTES_MAX};
use crate::protocol::Action;
use crate::world::{EntityId, EntityKind, Tick};

/// renet channel for client inputs (unreliable: a lost input is overtaken by the next).
pub const INPUT_CHANNEL: u8 = 0;
/// renet channel for bubble updates (unreliable: each is whole, a lost one is overtaken).
pub const UPDATE_CHANNEL: u8 = 1;

/// renet channel for the gateway's notices (unreliable: a refusal is sent, then the connection
/// is closed a tick later).
pub const NOTICE_CHANNEL: u8 = 2;

/// Gateway to client, beside updates: why the gateway is about to close the connection.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Notice {
    /// The token's seat has no player: the world has `seats` players (seats `0..seats`).
    NoSuchSeat { seat: u64, seats: u64 },
    /// Another client holds the seat.
    SeatHeld { seat: u64 },
    /// The token's client id is neither one of the world's players nor an account (accounts are
    /// `0..=u32::MAX`).
    NoSuchAccount { account: u64 },
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::NoSuchSeat { seat, seats } => write!(
                f,
                "seat {seat} refused: the world has {seats} players (seats 0..{seats}), fewer than the seats asked for"
            ),
            Notice::SeatHeld { seat } => write!(f, "account {seat} refused: another client is logged in with it"),
            Notice::NoSuchAccount { account } => {
                write!(f, "client id {account} refused: accounts are 0..={}", u32::MAX)
            }
        }
    }
}

/// Client to gateway.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ClientMsg {
    /// An input for the client's own entity; `seq` counts up from 1, and updates acknowledge
    /// the newest one its server applied.
    Input { seq: u32, action: Action },
    /// The newest update the client took in: the gateway sends later ones as differences from it.
    Ack { tick: Tick },
}

/// One entity in a client's bubble, quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Seen {
    pub id: EntityId,
    pub kind: EntityKind,
    /// Centimetres.
    pub position: [i32; 3],
    /// Decimetres a second.
    pub velocity: [i16; 3],
    /// Carried by another entity (it moves with its parent, and jumps when it boards).
    pub carried: bool,
    /// Ticks before the update's tick that this state is of (0 in a `Known`, which says when).
    pub age: u8,
}

impl Seen {
    pub fn quantize(position: [f32; 3], velocity: [f32; 3]) -> ([i32; 3], [i16; 3]) {
        crate::node::view::quantize(position, velocity)
    }
    pub fn position_m(&self) -> glam::Vec3 {
        glam::Vec3::from_array(self.position.map(|v| v as f32 / 100.0))
    }
}

/// Gateway to client, once a tick: what changed in the client's bubble since the update the
/// client last acknowledged (its baseline), or the whole bubble when there is none.
///
/// The client knows each entity as a state and the tick that state is of, and moves it on at its
/// velocity between states (`Known::position_at`, computed the same way on both sides, in
/// integers). An entity that goes on as the baseline predicts is not sent at all; one that strayed
/// is sent as a difference from where the baseline puts it.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Update {
    pub tick: Tick,
    /// The tick of the update this one is a difference from; 0 for none.
    pub baseline: Tick,
    /// The client's own entity, and the newest of its inputs that its server applied.
    pub player: EntityId,
    pub input_ack: u32,
    /// Decimetres from the player within which the client is shown every entity (or will be, as
    /// its turn to enter comes): the bubble's radius, or less where the bubble is crowded.
    pub horizon_dm: u16,
    /// Microseconds of game time a tick is: ticks are the update's clock, and the client moves
    /// entities on between states by it. It stays the same for a connection.
    pub tick_us: u32,
    /// Entities of the baseline no longer shown, by their place in it (ordered by id).
    pub gone: Vec<u8>,
    /// Entities of the baseline with a new state, by their place in it.
    pub moved: Vec<Moved>,
    /// Entities the baseline does not have, whole.
    pub entered: Vec<Seen>,
}

/// A new state for an entity of the baseline.
#[derive(Clone, Copy, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Moved {
    /// The entity's place in the baseline, which is ordered by id.
    pub index: u8,
    pub carried: bool,
    /// Ticks before the update's tick that the state is of.
    pub age: u8,
    /// Centimetres from where the baseline puts it at that tick.
    pub offset: [i16; 3],
    /// Decimetres a second.
    pub velocity: [i16; 3],
}

/// One entity as a client knows it: a state, and the tick it is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    pub seen: Seen,
    pub as_of: Tick,
}

impl Known {
    /// Where the entity is at `tick` (ticks of `tick_us`), in centimetres: moved on from its
    /// state at its velocity, for `EXTRAPOLATE_US_MAX` at most.
    pub fn position_at(&self, tick: Tick, tick_us: u32) -> [i32; 3] {
        let us = (tick.since(self.as_of).saturating_mul(tick_us as u64)).min(EXTRAPOLATE_US_MAX) as i64;
        // Decimetres a second times microseconds, in centimetres: divided by 100,000, rounded.
        std::array::from_fn(|i| {
            let moved = (self.seen.velocity[i] as i64 * us + 50_000).div_euclid(100_000);
            let cm = self.seen.position[i] as i64 + moved;
            cm.clamp(i32::MIN as i64, i32::MAX as i64) as i32
        })
    }
    pub fn position_m_at(&self, tick: Tick, tick_us: u32) -> glam::Vec3 {
        glam::Vec3::from_array(self.position_at(tick, tick_us).map(|v| v as f32 / 100.0))
    }
}

/// What a client knows after an update: the update's tick, its own entity and input
/// acknowledgement, and every entity in its bubble, ordered by id.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub tick: Tick,
    pub player: EntityId,
    pub input_ack: u32,
    pub horizon_dm: u16,
    /// Microseconds of game time a tick is (the update's `tick_us`).
    pub tick_us: u32,
    pub known: Vec<Known>,
}

impl Snapshot {
    pub fn empty(tick_us: u32) -> Self {
        Self { tick: Tick::ZERO, player: EntityId(0), input_ack: 0, horizon_dm: 0, tick_us, known: Vec::new() }
    }

    pub fn get(&self, id: EntityId) -> Option<&Known> {
        self.known.binary_search_by_key(&id, |k| k.seen.id).ok().map(|i| &self.known[i])
    }

    /// Restates, as of this snapshot's tick, every entity whose state is too old for an update
    /// to name its tick (and differs from `base`'s, so it must be sent).
    pub fn settle(&mut self, base: Option<&Snapshot>) {
        for k in &mut self.known {
            let old = self.tick.since(k.as_of) > u8::MAX as u64;
            if old && base.and_then(|b| b.get(k.seen.id)) != Some(k) {
                k.seen.position = k.position_at(self.tick, self.tick_us);
                k.as_of = self.tick;
            }
        }
    }

    /// The update that takes a client from `base` (nothing, if `None`) to `self`, once settled
    /// against it. An entity with the same state in both is left out; one whose new state is
    /// too far from the baseline's prediction for a `Moved` is sent as gone and entered again.
    pub fn delta_from(&self, base: Option<&Snapshot>) -> Update {
        debug_assert!(self.known.len() <= KNOWN_MAX && self.known.windows(2).all(|w| w[0].seen.id < w[1].seen.id));
        let empty = Snapshot::empty(self.tick_us);
        let b = base.unwrap_or(&empty);
        let mut update = Update {
            tick: self.tick,
            baseline: base.map_or(Tick::ZERO, |b| b.tick),
            player: self.player,
            input_ack: self.input_ack,
            horizon_dm: self.horizon_dm,
            tick_us: self.tick_us,
            gone: Vec::new(),
            moved: Vec::new(),
            entered: Vec::new(),
        };
        let age = |k: &Known| self.tick.since(k.as_of).min(u8::MAX as u64) as u8;
        let (mut i, mut j) = (0, 0);
        while i < b.known.len() || j < self.known.len() {
            match (b.known.get(i), self.known.get(j)) {
                (Some(o), Some(n)) if o.seen.id == n.seen.id => {
                    if o != n {
                        match moved(i, o, n, self.tick, self.tick_us) {
                            Some(m) => update.moved.push(m),
                            None => {
                                update.gone.push(i as u8);
                                update.entered.push(Seen { age: age(n), ..n.seen });
                            }
                        }
                    }
                    i += 1;
                    j += 1;
                }
                (Some(o), Some(n)) if o.seen.id < n.seen.id => {
                    update.gone.push(i as u8);
                    i += 1;
                }
                (Some(_), None) => {
                    update.gone.push(i as u8);
                    i += 1;
                }
                (_, Some(n)) => {
                    update.entered.push(Seen { age: age(n), ..n.seen });
                    j += 1;
                }
                (None, None) => unreachable!("the loop runs while either has more"),
            }
        }
        update
    }

    /// What a client that holds `base` (the update's baseline, or `None` when it names none)
    /// knows after `update`. Checked: an update that does not fit its baseline is an error.
    pub fn apply(base: Option<&Snapshot>, update: &Update) -> Result<Snapshot, WireError> {
        let empty = Snapshot::empty(update.tick_us);
        let b = match (update.baseline, base) {
            (Tick::ZERO, _) => &empty,
            (tick, Some(b)) if b.tick == tick && tick < update.tick => b,
            (tick, _) => return Err(WireError::Baseline(tick)),
        };
        if b.tick_us != update.tick_us {
            // A connection's tick rate does not change.
            return Err(WireError::Malformed);
        }
        let as_of = |age: u8| update.tick.checked_before(age as u64).ok_or(WireError::Malformed);
        // Each place of the baseline: kept, gone, or moved; touched at most once (a bit each:
        // a baseline has 255 places at most).
        let mut touched = [0u64; 4];
        let mut gone = [0u64; 4];
        let mut touch = |index: u8| -> Result<usize, WireError> {
            let (i, word, bit) = (index as usize, index as usize / 64, 1u64 << (index % 64));
            if i >= b.known.len() || touched[word] & bit != 0 {
                return Err(WireError::Malformed);
            }
            touched[word] |= bit;
            Ok(i)
        };
        for &index in &update.gone {
            let i = touch(index)?;
            gone[i / 64] |= 1 << (i % 64);
        }
        let mut known: Vec<Known> = Vec::with_capacity(b.known.len() + update.entered.len());
        known.extend_from_slice(&b.known);
        for m in &update.moved {
            let i = touch(m.index)?;
            let o = b.known[i];
            let as_of = as_of(m.age)?;
            let at = o.position_at(as_of, update.tick_us);
            let position = std::array::from_fn(|k| at[k].saturating_add(m.offset[k] as i32));
            let seen = Seen { position, velocity: m.velocity, carried: m.carried, ..o.seen };
            known[i] = Known { seen, as_of };
        }
        if gone != [0; 4] {
            let mut i = 0;
            known.retain(|_| {
                let kept = gone[i / 64] & (1 << (i % 64)) == 0;
                i += 1;
                kept
            });
        }
        for s in &update.entered {
            known.push(Known { seen: Seen { age: 0, ..*s }, as_of: as_of(s.age)? });
        }
        known.sort_unstable_by_key(|k| k.seen.id);
        if let Some(w) = known.windows(2).find(|w| w[0].seen.id == w[1].seen.id) {
            return Err(WireError::Duplicate(w[0].seen.id));
        }
        if known.len() > KNOWN_MAX {
            return Err(WireError::Malformed);
        }
        let (tick, player, input_ack, horizon_dm) = (update.tick, update.player, update.input_ack, update.horizon_dm);
        Ok(Snapshot { tick, player, input_ack, horizon_dm, tick_us: update.tick_us, known })
    }
}

/// Whether `new` can be sent as a difference from `old` in the update of `tick`.
pub fn fits_moved(old: &Known, new: &Known, tick: Tick, tick_us: u32) -> bool {
    old.seen.id == new.seen.id && moved(0, old, new, tick, tick_us).is_some()
}

/// `new` as a difference from `old` (at place `index` of the baseline), if it fits.
fn moved(index: usize, old: &Known, new: &Known, tick: Tick, tick_us: u32) -> Option<Moved> {
    let age = u8::try_from(tick.checked_since(new.as_of)?).ok()?;
    if old.seen.kind != new.seen.kind {
        return None;
    }
    let at = old.position_at(new.as_of, tick_us);
    let mut offset = [0i16; 3];
    for k in 0..3 {
        offset[k] = i16::try_from(new.seen.position[k] as i64 - at[k] as i64).ok()?;
    }
    Some(Moved { index: index as u8, carried: new.seen.carried, age, offset, velocity: new.seen.velocity })
}

pub fn encode<T>(value: &T) -> Vec<u8>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
    >,
{
    rkyv::to_bytes::<rancor::Error>(value).expect("wire messages serialize").into_vec()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message of {0} bytes, more than the {max} allowed", max = MESSAGE_BYTES_MAX)]
    TooLarge(usize),
    #[error("malformed message")]
    Malformed,
    #[error("an update against baseline {0}, which the client does not hold")]
    Baseline(Tick),
    #[error("entity {0:?} twice in one update")]
    Duplicate(EntityId),
}

/// Decodes untrusted bytes: checked, never a panic.
pub fn decode<T>(bytes: &[u8]) -> Result<T, WireError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rancor::Error>(&aligned).map_err(|_| WireError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn known(id: u64, position: [i32; 3], velocity: [i16; 3], as_of: u64) -> Known {
        let seen = Seen { id: EntityId(id), kind: EntityKind::Player, position, velocity, carried: false, age: 0 };
        Known { seen, as_of: Tick(as_of) }
    }

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let input = ClientMsg::Input { seq: 7, action: Action::Move([1.0, 0.0, 0.0]) };
        assert_eq!(decode::<ClientMsg>(&encode(&input)), Ok(input.clone()));
        let ack = ClientMsg::Ack { tick: Tick(12) };
        assert_eq!(decode::<ClientMsg>(&encode(&ack)), Ok(ack));
        let (position, velocity) = Seen::quantize([1.234, -5.0, 99.99], [30.0, -1500.0, 0.0]);
        let update = Update {
            tick: Tick(9),
            baseline: Tick::ZERO,
            player: EntityId(3),
            input_ack: 7,
            horizon_dm: 400,
            tick_us: 33_333,
            gone: vec![],
            moved: vec![],
            entered: vec![Seen {
                id: EntityId(3),
                kind: EntityKind::Player,
                position,
                velocity,
                carried: false,
                age: 0,
            }],
        };
        let back = decode::<Update>(&encode(&update)).unwrap();
        assert_eq!(back, update);
        assert!((back.entered[0].position_m() - glam::Vec3::new(1.23, -5.0, 99.99)).length() < 0.01);
        let bytes = encode(&input);
        assert_eq!(decode::<ClientMsg>(&bytes[..bytes.len() - 1]), Err(WireError::Malformed));
        assert_eq!(decode::<ClientMsg>(&[]), Err(WireError::Malformed));
        assert_eq!(
            decode::<ClientMsg>(&vec![0u8; MESSAGE_BYTES_MAX + 1]),
            Err(WireError::TooLarge(MESSAGE_BYTES_MAX + 1))
        );
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0xff;
            let _ = decode::<ClientMsg>(&bad);
        }
    }

    #[test]
    fn what_goes_on_as_predicted_is_not_sent() {
        // Walking at 3 m/s along x, as of tick 10.
        let walker = known(1, [0, 0, 0], [30, 0, 0], 10);
        let base = Snapshot {
            tick: Tick(10),
            player: EntityId(1),
            input_ack: 0,
            horizon_dm: 400,
            tick_us: 33_333,
            known: vec![walker],
        };
        assert_eq!(walker.position_at(Tick(13), 33_333), [30, 0, 0]);
        // At 60 Hz, three ticks are half the time, and half the way.
        assert_eq!(walker.position_at(Tick(13), 16_667), [15, 0, 0]);
        // Three ticks on, still walking the same way: nothing to send.
        let mut next = Snapshot { tick: Tick(13), ..base.clone() };
        next.settle(Some(&base));
        let update = next.delta_from(Some(&base));
        assert!(update.moved.is_empty() && update.gone.is_empty() && update.entered.is_empty());
        // It stopped 10 cm short of the prediction: 10 cm back from where it is predicted.
        let mut next = Snapshot { tick: Tick(13), known: vec![known(1, [20, 0, 0], [0, 0, 0], 13)], ..base.clone() };
        next.settle(Some(&base));
        let update = next.delta_from(Some(&base));
        assert_eq!(
            update.moved,
            vec![Moved { index: 0, carried: false, age: 0, offset: [-10, 0, 0], velocity: [0; 3] }]
        );
        assert_eq!(Snapshot::apply(Some(&base), &update), Ok(next));
        // Against a baseline the client does not hold: an error, not a guess.
        assert_eq!(Snapshot::apply(None, &update), Err(WireError::Baseline(Tick(10))));
        let other = Snapshot { tick: Tick(11), ..base.clone() };
        assert_eq!(Snapshot::apply(Some(&other), &update), Err(WireError::Baseline(Tick(10))));
        // A place named twice, or past the end of the baseline: malformed.
        let twice = Update { gone: vec![0], ..update.clone() };
        assert_eq!(Snapshot::apply(Some(&base), &twice), Err(WireError::Malformed));
        let past = Update { gone: vec![1], moved: vec![], ..update.clone() };
        assert_eq!(Snapshot::apply(Some(&base), &past), Err(WireError::Malformed));
    }

    fn snapshot(tick: u64) -> impl Strategy<Value = Snapshot> {
        let entity = (0u64..40, proptest::array::uniform3(-40_000i32..40_000), proptest::array::uniform3(-300i16..300));
        proptest::collection::vec((entity, 0..=tick), 0..60).prop_map(move |entities| {
            let mut known: Vec<Known> =
                entities.into_iter().map(|((id, p, v), as_of)| known(id, p, v, as_of)).collect();
            known.sort_by_key(|k| k.seen.id);
            known.dedup_by_key(|k| k.seen.id);
            Snapshot { tick: Tick(tick), player: EntityId(0), input_ack: 0, horizon_dm: 400, tick_us: 33_333, known }
        })
    }

    proptest! {
        /// Whatever the baseline and the next state, the client rebuilds exactly what the gateway
        /// holds for it, through the bytes.
        #[test]
        fn a_delta_rebuilds_the_snapshot(base in snapshot(20), next in snapshot(400), from_base in any::<bool>()) {
            let mut next = next;
            if from_base {
                // Some entities exactly as the baseline has them.
                for k in &mut next.known {
                    if let Some(b) = base.get(k.seen.id) {
                        if k.seen.id.0 % 2 == 0 {
                            *k = *b;
                        }
                    }
                }
            }
            next.settle(Some(&base));
            let update = decode::<Update>(&encode(&next.delta_from(Some(&base)))).unwrap();
            prop_assert_eq!(Snapshot::apply(Some(&base), &update), Ok(next.clone()));
            next.settle(None);
            let whole = next.delta_from(None);
            prop_assert_eq!(whole.entered.len(), next.known.len());
            prop_assert_eq!(Snapshot::apply(None, &whole), Ok(next));
        }
    }
}
