//! The world model: the static container tree, entities and their graph, regions and the
//! versioned region map. Pure data and rules: no clock, no I/O, no threads.

pub mod container;
pub mod cut;
pub mod entity;
pub mod generate;
pub mod grid;
pub mod region;
pub mod stream;
pub mod tick;

pub use container::{Aabb, Container, ContainerKind, ContainerTree, WorldError};
pub use cut::{plan_cut, plane_crosses, Cut, RegionLoad};
pub use entity::{EntityId, EntityKind, EntityMap, EntityState, Forest};
pub use generate::{populate, Population};
pub use grid::Grid;
pub use region::{MapError, Region, RegionId, RegionMap, ServerId};
pub use stream::{is_streamed, ContainerId, StreamIndex};
pub use tick::Tick;
