//! The messages of the mesh protocol. All are rkyv types: on one host they cross cores archived
//! in shared memory and are read in place; between hosts the same bytes go on the wire.
//!
//! Every message a server sends names its incarnation, and every entity write names the
//! authority epoch it was made under, so the replication layer can tell a late message from a
//! former owner and refuse it.

use crate::world::{ContainerId, EntityId, EntityState, RegionLoad, RegionMap, ServerId, Tick};

/// One life of a logical server: a restart is a new incarnation, never reused.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord))]
pub struct Incarnation(pub u32);

/// Identifies one grant of authority. The replication layer draws epochs from one counter, so an
/// epoch names exactly one (entity subtree, server) grant; a write under any other is stale.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord))]
pub struct Epoch(pub u64);

/// One slice of the replication layer: one per core, each the master record of the entities
/// held by the servers on its core.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord))]
pub struct SliceId(pub u16);

impl std::fmt::Display for SliceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "slice{}", self.0)
    }
}

/// An entity's state together with the epoch its holder has authority under.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Owned {
    pub id: EntityId,
    pub epoch: Epoch,
    pub state: EntityState,
}

#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Delta {
    /// The entity's full state as of this tick (a new entity if the layer has never seen it).
    Upsert(Owned),
    /// The entity is gone (a projectile that hit or expired).
    Destroy { id: EntityId, epoch: Epoch },
}

/// Server to replication layer.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ToReplication {
    pub server: ServerId,
    pub incarnation: Incarnation,
    pub body: ServerMsg,
}

#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ServerMsg {
    /// First message of an incarnation: "I am up, with nothing".
    Register,
    /// Sent every tick; the answer extends the lease.
    Heartbeat { sent_at_us: u64 },
    /// What changed this tick, parents before children.
    Deltas { tick: Tick, entries: Vec<Delta> },
    /// The server gives up root entities that left its regions, each with its subtree: a batch
    /// (see [`subtree_ranges`]). Sent after the tick's deltas, on the same ordered link.
    Handoff { entities: Vec<Owned> },
    /// What this server holds near its regions' borders this tick, for its neighbours to see:
    /// ghosts, and where its players stand near a border (cells, see [`Presence`]).
    Ghosts { ghosts: Vec<Ghost>, presence: Vec<[f32; 3]> },
    /// A projectile of this server hit a ghost: the target's authority applies the damage.
    Hit { target: EntityId, damage: u16 },
    /// A player came near the container: the server wants its loose items (those in its
    /// regions) back from the layer.
    Load { container: ContainerId },
    /// No player is near the container any more: the server has dropped these loose item roots
    /// (each with its contents, under the epoch it held them by) and the layer keeps them.
    /// Sent after the tick's deltas, so the layer has their last state.
    Unload { container: ContainerId, roots: Vec<(EntityId, Epoch)> },
}

/// Replication layer to server.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ToServer {
    pub server: ServerId,
    pub incarnation: Incarnation,
    pub body: ReplicationMsg,
}

#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ReplicationMsg {
    /// Registration accepted. Entities the server creates are held under `create_epoch`.
    /// `loaded`: the containers a crashed incarnation had loaded, which this one takes over with
    /// its entities (empty for a server starting afresh).
    Welcome { create_epoch: Epoch, map: RegionMap, loaded: Vec<ContainerId> },
    /// Answer to a heartbeat: authority holds until `sent_at_us` plus the lease duration.
    Lease { sent_at_us: u64 },
    /// The region map changed.
    Map(RegionMap),
    /// Authority over subtrees, a batch (see [`subtree_ranges`]), each subtree under one new
    /// epoch of its own, from the layer's committed state.
    Adopt { entities: Vec<Owned> },
    /// This incarnation has been declared dead: stop, drop everything, restart.
    Fenced,
    /// Every other server's border entities as of the last tick: read-only, never simulated;
    /// and where their players stand near this server's regions, for its streaming.
    Ghosts { ghosts: Vec<Ghost>, presence: Vec<[f32; 3]> },
    /// Damage to an entity this server holds, from a projectile on another server.
    Damage { target: EntityId, damage: u16 },
    /// A client's input for the entity it drives, which this server holds; `seq` is the
    /// client's number for it.
    Input { entity: EntityId, seq: u32, action: crate::protocol::Action },
    /// The account driving this player logged out: hand its subtree back (the layer parks it).
    LogOut { entity: EntityId },
}

/// A read-only view of an entity near a border, as its server last saw it: enough to be seen
/// and to be hit, never to be simulated.
#[derive(Clone, Copy, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Ghost {
    pub id: EntityId,
    pub kind: crate::world::EntityKind,
    pub position: [f32; 3],
    pub server: ServerId,
}

/// Where a server's players stand near a border, for its neighbours' streaming (which loads
/// containers a player comes near, whoever holds the player): the centre of a
/// `PRESENCE_CELL_M` cell holding at least one player within `STREAM_UNLOAD_RADIUS_M` of another
/// server's region. A crowd is a few dozen cells, not thousands of ghosts.
#[derive(Clone, Copy, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Presence {
    pub server: ServerId,
    pub at: [f32; 3],
}

/// A committed entity moving between slices with its history counter.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Committed {
    pub id: EntityId,
    pub state: EntityState,
    pub commit_seq: u64,
}

/// Slice to slice. On one host these cross cores on shared-memory rings: reliable and in order.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum SliceMsg {
    /// Subtrees whose new authority lives on the receiving slice's core, a batch (see
    /// [`subtree_ranges`]). The sender has forgotten them; the receiver grants each by its own
    /// map. `hops` bounds forwarding while two slices' maps disagree.
    Transfer { hops: u8, entities: Vec<Committed> },
    /// The controller's region map, to every slice.
    Map(RegionMap),
    /// To the controller: a server registered on the sender's core.
    ServerUp { server: ServerId },
    /// To the controller: a server on the sender's core is dead (or retired); its regions need
    /// new owners.
    ServerDown { server: ServerId },
    /// From the controller to a server's home slice: start this logical server (load it cannot
    /// even out among the servers it has).
    StartServer { server: ServerId },
    /// From the controller to a server's home slice: the server's regions went to others; once
    /// it holds nothing, retire it.
    RetireServer { server: ServerId },
    /// To the controller, once a second: how many entities the sender holds in each region and
    /// where, counted under the map of `epoch`, and the mean wall time its servers and slice
    /// worked a tick over the period (`None`: its driver does not measure it).
    Load { epoch: u64, regions: Vec<RegionLoad>, work_us: Option<u32> },
    /// Every tick, to every other slice: the border entities of the sender's servers, and
    /// where their players stand near a border.
    Ghosts { ghosts: Vec<Ghost>, presence: Vec<Presence> },
    /// A hit on an entity the sender does not hold, for the slice that does.
    Hit { target: EntityId, damage: u16 },
    /// A checkpoint marker: the sender took its snapshot for `round` just before sending this,
    /// so everything it sent earlier on this link belongs before the checkpoint.
    Marker { round: u64 },
    /// To the controller: this slice's part of checkpoint `round` is stored and complete.
    Checkpointed { round: u64 },
    /// A client's input that reached a gateway on the sender's core, for the slice whose core
    /// holds the client's entity.
    Input { entity: EntityId, seq: u32, action: crate::protocol::Action },
    /// An account's player logged in (`online`) or out, in the account's `session` (numbered
    /// across the mesh in the order logins happened): to every other slice.
    Session { player: EntityId, session: u64, online: bool },
}

/// Where each subtree of a batch lies. A handoff, a transfer and an adoption carry subtrees one
/// after another, each led by its root (the one entity of it without a parent) and listed
/// parents first. `None`: the batch is empty or does not begin with a root.
pub fn subtree_ranges<T>(items: &[T], is_root: impl Fn(&T) -> bool) -> Option<Vec<std::ops::Range<usize>>> {
    if !items.first().is_some_and(&is_root) {
        return None;
    }
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if is_root(item) {
            if let Some(last) = ranges.last_mut() {
                last.end = i;
            }
            ranges.push(i..items.len());
        }
    }
    Some(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{Aabb, EntityKind};
    use glam::Vec3;

    #[test]
    fn messages_round_trip_and_read_in_place() {
        let msg = ToServer {
            server: ServerId(2),
            incarnation: Incarnation(9),
            body: ReplicationMsg::Adopt {
                entities: vec![Owned {
                    id: EntityId::new(0, 5),
                    epoch: Epoch(44),
                    state: EntityState::new(EntityKind::Item { capacity: 4 }, Vec3::new(1.0, 2.0, 3.0)),
                }],
            },
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&msg).unwrap();
        let archived = rkyv::access::<ArchivedToServer, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(archived.incarnation.0, 9);
        let back = rkyv::from_bytes::<ToServer, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(back, msg);

        let map = RegionMap::kd_split(Aabb::new(Vec3::ZERO, Vec3::splat(64.0)), 4);
        let welcome = ReplicationMsg::Welcome { create_epoch: Epoch(1), map, loaded: vec![3] };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&welcome).unwrap();
        assert_eq!(rkyv::from_bytes::<ReplicationMsg, rkyv::rancor::Error>(&bytes).unwrap(), welcome);
    }

    #[test]
    fn a_batch_splits_at_its_roots() {
        let roots = |b: &[Option<u8>]| subtree_ranges(b, |p| p.is_none());
        assert_eq!(roots(&[]), None, "empty");
        assert_eq!(roots(&[Some(0), None]), None, "a child before any root");
        assert_eq!(roots(&[None]).map(|r| r.len()), Some(1));
        assert_eq!(roots(&[None, Some(0), Some(1), None, None, Some(4)]), Some(vec![0..3, 3..4, 4..6]));
    }

    #[test]
    fn corrupt_bytes_are_an_error_never_a_panic() {
        let msg = ToReplication {
            server: ServerId(1),
            incarnation: Incarnation(1),
            body: ServerMsg::Heartbeat { sent_at_us: 7 },
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&msg).unwrap();
        let decode = |b: &[u8]| {
            let mut aligned = rkyv::util::AlignedVec::<16>::new();
            aligned.extend_from_slice(b);
            rkyv::from_bytes::<ToReplication, rkyv::rancor::Error>(&aligned)
        };
        assert!(decode(&bytes[..bytes.len() - 4]).is_err(), "truncated");
        assert!(decode(&[]).is_err(), "empty");
        let mut rejected = 0;
        for i in 0..bytes.len() {
            let mut bad = bytes.to_vec();
            bad[i] = 0xff;
            if decode(&bad).is_err() {
                rejected += 1;
            }
        }
        assert!(rejected > 0, "an invalid tag or offset is caught by validation");
    }
}
