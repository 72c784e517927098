use glam::Vec3;
use shardmesh::log::{Batch, LogOp};
use shardmesh::protocol::Committed;
use shardmesh::world::{EntityId, EntityKind, EntityState};
use std::time::Instant;
fn main() {
    let b = Batch {
        tick: 1,
        ops: (0..1000)
            .map(|i| {
                let mut s = EntityState::new(EntityKind::Player, Vec3::new(i as f32, 1.0, 3.0));
                s.velocity = [1.0, 0.5, 0.0];
                LogOp::Put(Committed { id: EntityId::new(1, i), state: s, commit_seq: 5 })
            })
            .collect(),
    };
    let mut buf = rkyv::util::AlignedVec::<16>::new();
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..2000 {
            buf.clear();
            buf = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&b, buf).unwrap();
        }
        let s = t.elapsed().as_secs_f64();
        let c = Instant::now();
        let mut x = 0u32;
        for _ in 0..2000 {
            x ^= crc32c::crc32c(&buf);
        }
        let cs = c.elapsed().as_secs_f64();
        let mut dst = vec![0u8; buf.len()];
        let m = Instant::now();
        for _ in 0..2000 {
            dst.copy_from_slice(&buf);
            std::hint::black_box(&dst);
        }
        let ms = m.elapsed().as_secs_f64();
        println!(
            "serialize {:.1} us/tick ({:.0} MB/s), crc {:.1} us/tick, memcpy {:.1} us/tick, {} bytes {x}",
            s / 2000.0 * 1e6,
            buf.len() as f64 * 2000.0 / s / 1e6,
            cs / 2000.0 * 1e6,
            ms / 2000.0 * 1e6,
            buf.len()
        );
    }
}
