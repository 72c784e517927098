//! Fuzz target for what a client can put in front of the gateway: the messages inside renet
//! payloads (inputs), and the updates and notices a client decodes. None may panic on any bytes.
//!
//! Run: cargo +nightly fuzz run client_packet

#![no_main]

use libfuzzer_sys::fuzz_target;
use shardmesh::net::wire::{self, ClientMsg, Known, Notice, Seen, Snapshot, Update};
use shardmesh::world::{EntityId, EntityKind};

fuzz_target!(|data: &[u8]| {
    if let Ok(notice) = wire::decode::<Notice>(data) {
        // A notice a bot prints: any that decodes says something.
        assert!(!notice.to_string().is_empty());
    }
    if let Ok(msg) = wire::decode::<ClientMsg>(data) {
        // Whatever decodes encodes back to bytes that decode to the same bytes (compared as
        // bytes: a NaN in a move is not equal to itself, and the gateway refuses it anyway).
        let bytes = wire::encode(&msg);
        let again = wire::decode::<ClientMsg>(&bytes).expect("what was encoded decodes");
        assert_eq!(wire::encode(&again), bytes);
    }
    if let Ok(update) = wire::decode::<Update>(data) {
        // Applied to nothing, and to a baseline of a few entities: an error or a snapshot.
        let seen = |id| Seen {
            id: EntityId(id),
            kind: EntityKind::Player,
            position: [i32::MAX, 0, i32::MIN],
            velocity: [i16::MAX, i16::MIN, 0],
            carried: false,
            age: 0,
        };
        let base = Snapshot {
            tick: update.baseline,
            player: EntityId(1),
            input_ack: 0,
            horizon_dm: 400,
            tick_us: update.tick_us,
            known: (1..4).map(|id| Known { seen: seen(id), as_of: update.baseline.before(id) }).collect(),
        };
        for base in [None, Some(&base)] {
            if let Ok(snapshot) = Snapshot::apply(base, &update) {
                for k in &snapshot.known {
                    let _ = k.position_m_at(update.tick.after(40), snapshot.tick_us);
                }
            }
        }
    }
});
