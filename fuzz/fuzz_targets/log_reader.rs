//! The replication log's reader on arbitrary bytes: a segment whose frames are the input, after a
//! valid header and the world's first checkpoint. Any input must give a world, a torn tail or a
//! corruption error; never a panic, a hang or an allocation the input's size does not justify.
//!
//! Run: cargo +nightly fuzz run log_reader (from the repository root, with cargo-fuzz installed)

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use shardmesh::log::{self as smlog, CrashImage, Durability, OpenOptions};
use shardmesh::world::{Aabb, RegionMap};

/// A log holding an empty world's first checkpoint: the image every input is spliced into.
fn base() -> &'static std::collections::BTreeMap<String, Vec<u8>> {
    static BASE: OnceLock<std::collections::BTreeMap<String, Vec<u8>>> = OnceLock::new();
    BASE.get_or_init(|| {
        let media = CrashImage::default();
        let opts = OpenOptions {
            slices: 1,
            durability: Durability::Off,
            segment_bytes: 1 << 16,
            salvage: false,
            planted_replay_twice: false,
        };
        let map = RegionMap::kd_split(Aabb::new(glam::Vec3::ZERO, glam::Vec3::splat(100.0)), 2);
        drop(smlog::open(Arc::new(media.clone()), &opts, || (map, Vec::new())).expect("opens"));
        media.image()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut image = base().clone();
    let seg = image.keys().find(|k| k.ends_with(".log")).cloned().expect("a segment");
    let bytes = image.get_mut(&seg).expect("listed");
    // Keep the header and the checkpoint's record; the input is everything after.
    let keep = match smlog::format::decode_frame(bytes, smlog::format::SEGMENT_HEADER_BYTES) {
        smlog::format::Frame::Whole { next, .. } => next,
        _ => unreachable!("the base image is whole"),
    };
    bytes.truncate(keep);
    // An odd first byte: the next 36 bytes also replace the header's watermark and the bytes
    // around it (what the writer leaves zero), so the header's every byte is fuzzed too.
    let data = match data.split_first() {
        Some((flag, rest)) if flag % 2 == 1 && rest.len() >= 36 => {
            bytes[28..64].copy_from_slice(&rest[..36]);
            &rest[36..]
        }
        _ => data,
    };
    bytes.extend_from_slice(data);
    let media = CrashImage::from_image(image);
    let _ = smlog::recover(&media, false);
    let _ = smlog::recover(&media, true);
    let _ = smlog::inspect(&media, &mut std::io::sink());
});
