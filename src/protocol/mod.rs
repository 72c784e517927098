//! The sans-IO protocol core: messages, the reliable link, the game server and the replication
//! layer. No clock, threads, sockets, files or global randomness: time and input come in as
//! arguments, output goes out as values, so the simulator and the runtime drive the same code.

pub mod journal;
pub mod link;
pub mod messages;
pub mod physics;
pub mod replication;
pub mod server;

pub use journal::{JournalOp, SliceSnapshot};
pub use link::{Link, LinkPacket};
pub use messages::{
    subtree_ranges, Committed, Delta, Epoch, Ghost, Incarnation, Owned, Presence, ReplicationMsg, ServerMsg, SliceId,
    SliceMsg, ToReplication, ToServer,
};
pub use replication::{Lifecycle, PlantedBugs, Record, Replication, ReplicationStats};
pub use server::{Action, Input, Server, ServerEvent, ServerStats};
