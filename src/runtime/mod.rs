//! The runtime: the only part of shardmesh that touches threads, cores, clocks and shared
//! memory. It drives the same protocol state machines the simulator drives.

pub mod ring;

pub use ring::{Consumer, Producer, Ring, RingError};
