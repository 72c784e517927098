//! What a replication slice tells its log, and the checkpoint protocol between slices.
//!
//! A slice with journaling on records, in order, every change to its records: a write, a
//! destruction, a subtree leaving for another slice, a new region map. Its driver writes these to
//! the slice's replication log once a tick (one group commit).
//!
//! Checkpoints are consistent cuts across all slices (Chandy and Lamport, "Distributed
//! Snapshots", 1985). The controller snapshots its records and sends a marker on every
//! slice-to-slice link; a slice snapshots on the first marker of a round and sends its own. Links
//! are ordered, so a transfer sent before a marker is received before it: an entity in flight at
//! the cut is in no snapshot, and its arrival is in the receiver's log after its snapshot. A
//! slice's part of a round is complete when its snapshot is stored and every peer's marker has
//! come in, and it tells the controller once its log's record of that is durable. The controller
//! starts the next round only when every slice has, so the round before the newest is always
//! whole on disk and its files can be the only older ones kept.
//!
//! The transfer in flight is why a slice logs `Out` rather than forgetting the entities: until
//! the receiver's log shows them, the sender's log is the only place they are written.

use super::messages::{Committed, SliceId};
use crate::world::{EntityId, RegionMap};

#[derive(Clone, Debug, PartialEq)]
pub enum JournalOp {
    /// This entity's record changed or appeared; its state is read when the op is written.
    Put(EntityId),
    /// The entity is gone; `seq` is past its last commit.
    Destroy { id: EntityId, seq: u64 },
    /// A subtree left for another slice, as it was when it left.
    Out { to: SliceId, entities: Vec<Committed> },
    /// The region map changed.
    Map,
    /// A snapshot of every record, taken at this point of the slice's history.
    Snapshot(Box<SliceSnapshot>),
    /// This slice's part of checkpoint `round` is complete.
    RoundDone(u64),
}

/// One slice's records at a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceSnapshot {
    pub round: u64,
    pub slice: SliceId,
    pub slices: u16,
    pub map: RegionMap,
    /// Parents before children.
    pub entities: Vec<Committed>,
}

/// Where a slice is in the checkpoint protocol.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Checkpointing {
    /// The newest round this slice has snapshotted.
    pub taken: u64,
    /// The newest round each slice's marker has been received for (this slice's own entry is
    /// `taken`).
    pub markers: Vec<u64>,
    /// The newest round whose snapshot the driver has stored.
    pub stored: u64,
    /// The newest round this slice has completed, and the newest it has told the controller of
    /// (once its completion was durable).
    pub done: u64,
    pub reported: u64,
    /// Controller: the newest round each slice has completed.
    pub completed: Vec<u64>,
}

impl Checkpointing {
    pub fn new(slices: u16, round: u64) -> Self {
        Self {
            taken: round,
            markers: vec![round; slices as usize],
            stored: round,
            done: round,
            reported: round,
            completed: vec![round; slices as usize],
        }
    }

    /// Whether this slice's part of the round it last snapshotted is now complete.
    pub fn ready_to_complete(&self) -> bool {
        self.done < self.taken && self.stored >= self.taken && self.markers.iter().all(|m| *m >= self.taken)
    }
}
