//! What travels between a client and the gateway, inside renet messages: rkyv types, checked on
//! decode (a client's bytes are untrusted), with positions quantized to centimetres.

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::protocol::Action;
use crate::world::{EntityId, EntityKind};

/// renet channel for client inputs (unreliable: a lost input is overtaken by the next).
pub const INPUT_CHANNEL: u8 = 0;
/// renet channel for bubble updates (unreliable: each is whole, a lost one is overtaken).
pub const UPDATE_CHANNEL: u8 = 1;

/// A message is refused unread past this size: an update is a few kilobytes, an input a few
/// dozen bytes.
pub const MESSAGE_BYTES_MAX: usize = 16 << 10;

/// An input message is refused unread past this size (the largest is under 40 bytes).
pub const INPUT_BYTES_MAX: usize = 256;

/// Client to gateway.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ClientMsg {
    /// An input for the client's own entity; `seq` counts up from 1, and updates acknowledge
    /// the newest one its server applied.
    Input { seq: u32, action: Action },
}

/// One entity in a client's bubble, quantized.
#[derive(Clone, Copy, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Seen {
    pub id: EntityId,
    pub kind: EntityKind,
    /// Centimetres.
    pub position: [i32; 3],
    /// Decimetres a second.
    pub velocity: [i16; 3],
    /// Carried by another entity (it moves with its parent, and jumps when it boards).
    pub carried: bool,
}

impl Seen {
    pub fn quantize(position: [f32; 3], velocity: [f32; 3]) -> ([i32; 3], [i16; 3]) {
        let p = position.map(|v| (v * 100.0).round() as i32);
        let v = velocity.map(|v| (v * 10.0).round().clamp(i16::MIN as f32, i16::MAX as f32) as i16);
        (p, v)
    }
    pub fn position_m(&self) -> glam::Vec3 {
        glam::Vec3::from_array(self.position.map(|v| v as f32 / 100.0))
    }
}

/// Gateway to client, once a tick: the entities in the client's bubble, nearest first.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Update {
    pub tick: u64,
    /// The client's own entity, and the newest of its inputs that its server applied.
    pub player: EntityId,
    pub input_ack: u32,
    pub seen: Vec<Seen>,
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

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let input = ClientMsg::Input { seq: 7, action: Action::Move([1.0, 0.0, 0.0]) };
        assert_eq!(decode::<ClientMsg>(&encode(&input)), Ok(input.clone()));
        let (position, velocity) = Seen::quantize([1.234, -5.0, 99.99], [30.0, -1500.0, 0.0]);
        let update = Update {
            tick: 9,
            player: EntityId(3),
            input_ack: 7,
            seen: vec![Seen { id: EntityId(3), kind: EntityKind::Player, position, velocity, carried: false }],
        };
        let back = decode::<Update>(&encode(&update)).unwrap();
        assert_eq!(back, update);
        assert!((back.seen[0].position_m() - glam::Vec3::new(1.23, -5.0, 99.99)).length() < 0.01);
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
}
