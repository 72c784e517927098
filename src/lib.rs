//! shardmesh: a server mesh for MMO worlds, emulated on one multi-core host.
//!
//! The layout follows the architecture: [`world`] is the data model, [`protocol`] the sans-IO
//! state machines that move authority and commit state, [`sim`] the deterministic simulator
//! that drives them under faults, [`runtime`] the part that runs them on real cores (shared
//! memory rings so far). Only the runtime and the binary touch clocks, threads or files.

pub mod bots;
pub mod limits;
pub mod log;
pub mod net;
pub mod node;
pub mod profile;
pub mod progress;
pub mod protocol;
pub mod report;
pub mod runtime;
pub mod sim;
pub mod world;

// Unit tests run with the allocator the binary runs with (what `runtime::alloc` tunes).
#[cfg(test)]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub use protocol::{Replication, Server};
pub use sim::{FaultPlan, SimConfig, SimOutcome, Simulator};
pub use world::{ContainerTree, EntityId, EntityKind, EntityState, RegionMap, ServerId, Tick};
