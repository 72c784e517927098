//! What a node shows its clients of a tick: each entity its servers hold, quantized as clients
//! are sent it, once a tick rather than once for every client that sees it.

use glam::Vec3;

use crate::world::{EntityId, EntityKind};

/// Metres to the wire's centimetres, metres a second to its decimetres a second.
pub fn quantize(position: [f32; 3], velocity: [f32; 3]) -> ([i32; 3], [i16; 3]) {
    let p = position.map(|v| (v * 100.0).round() as i32);
    let v = velocity.map(|v| (v * 10.0).round().clamp(i16::MIN as f32, i16::MAX as f32) as i16);
    (p, v)
}

/// One entity as a node's servers hold it at the end of a tick.
#[derive(Clone, Copy, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ViewEntity {
    pub id: EntityId,
    pub kind: EntityKind,
    /// Centimetres.
    pub position: [i32; 3],
    /// Decimetres a second.
    pub velocity: [i16; 3],
    pub carried: bool,
    pub input_seq: u32,
    /// Handed off this tick: where it is until another server adopts it.
    pub leaving: bool,
    /// Ticks before the view's tick that this state is of: a committed state is of the tick its
    /// holder last changed it in (255: that long or longer).
    pub behind: u8,
}

impl ViewEntity {
    /// An entity at `position` (metres) moving at `velocity` (metres a second).
    pub fn new(id: EntityId, kind: EntityKind, position: [f32; 3], velocity: [f32; 3]) -> Self {
        let (position, velocity) = quantize(position, velocity);
        Self { id, kind, position, velocity, carried: false, input_seq: 0, leaving: false, behind: 0 }
    }
    pub fn position_m(&self) -> Vec3 {
        Vec3::from_array(self.position.map(|v| v as f32)) / 100.0
    }
    /// The tick this state is of, in a view of tick `view_tick`.
    pub fn as_of(&self, view_tick: crate::world::Tick) -> crate::world::Tick {
        view_tick.before(self.behind as u64)
    }
    pub fn velocity_m_s(&self) -> Vec3 {
        Vec3::from_array(self.velocity.map(|v| v as f32)) / 10.0
    }
}
