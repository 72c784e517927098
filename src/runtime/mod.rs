//! The runtime: the only part of shardmesh that touches threads, cores, clocks and shared
//! memory. It drives the same protocol state machines the simulator drives.

pub mod alloc;
pub mod failover;
pub mod map;
pub mod mesh;
pub mod metrics;
pub mod panics;
pub mod ring;
pub mod shard;

pub use mesh::{MeshConfig, MeshError, MeshSummary};
pub use ring::{Consumer, Producer, Ring, RingError};
