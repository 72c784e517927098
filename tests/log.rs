//! The replication log against damaged storage, on the crash-image backend: a torn write at every
//! byte offset of a record, a flipped bit, a missing or truncated segment, a full disk; and a
//! property test of the reader on random logs and random bytes.

use std::collections::BTreeMap;
use std::sync::Arc;

use glam::Vec3;
use proptest::prelude::*;
use shardmesh::log::format::{self, Frame, SEGMENT_HEADER_BYTES};
use shardmesh::log::{self as smlog, Batch, CrashImage, Durability, LogError, LogOp, Media, OpenOptions, SliceLog};
use shardmesh::protocol::Committed;
use shardmesh::world::{Aabb, EntityId, EntityKind, EntityState, RegionMap};

fn world(n: u32) -> (RegionMap, Vec<Committed>) {
    let map = RegionMap::kd_split(Aabb::new(Vec3::ZERO, Vec3::splat(100.0)), 2);
    let entities = (0..n)
        .map(|i| Committed {
            id: EntityId::new(0, i),
            state: EntityState::new(EntityKind::Item { capacity: 0 }, Vec3::new(i as f32, 1.0, 1.0)),
            commit_seq: 1,
        })
        .collect();
    (map, entities)
}

fn options(segment_bytes: usize) -> OpenOptions {
    OpenOptions { slices: 1, durability: Durability::Off, segment_bytes, salvage: false }
}

/// A put of entity `i` at x = `x`, as commit `seq`.
fn put(i: u32, x: f32, seq: u64) -> LogOp {
    let state = EntityState::new(EntityKind::Item { capacity: 0 }, Vec3::new(x, 1.0, 1.0));
    LogOp::Put(Committed { id: EntityId::new(0, i), state, commit_seq: seq })
}

fn x_of(entities: &[Committed], i: u32) -> Option<f32> {
    entities.iter().find(|c| c.id == EntityId::new(0, i)).map(|c| c.state.position[0])
}

/// A one-slice log of 10 items, then one record per tick moving item `t % 10` to x = 1000 + t.
fn log_with_records(records: u64, segment_bytes: usize) -> CrashImage {
    let media = CrashImage::default();
    let opened = smlog::open(Arc::new(media.clone()), &options(segment_bytes), || world(10)).unwrap();
    let mut log = opened.logs.into_iter().next().unwrap();
    for t in 1..=records {
        log.append(&Batch { tick: t, ops: vec![put((t % 10) as u32, 1000.0 + t as f32, 1 + t)] }).unwrap();
        log.commit(t).unwrap();
    }
    log.close().unwrap();
    media
}

/// Every whole frame of a segment: (offset, end).
fn frames(segment: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    while let Frame::Whole { next, .. } = format::decode_frame(segment, at) {
        out.push((at, next));
        at = next;
    }
    out
}

fn segments(image: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    image.keys().filter(|k| k.ends_with(".log")).cloned().collect()
}

#[test]
fn a_clean_log_reads_back_whole() {
    let media = log_with_records(25, 1 << 20);
    let rec = smlog::recover(&media, false).unwrap();
    assert_eq!(rec.entities.len(), 10);
    assert_eq!(rec.last_committed_tick, 25);
    for t in 16..=25u64 {
        assert_eq!(x_of(&rec.entities, (t % 10) as u32), Some(1000.0 + t as f32));
    }
    assert!(rec.report.errors.is_empty() && rec.report.torn_tails.is_empty(), "{:?}", rec.report);
}

#[test]
fn a_torn_write_at_every_byte_of_a_record_cuts_back_to_the_record_before() {
    let image = log_with_records(5, 1 << 20).image();
    let seg = segments(&image).pop().unwrap();
    let (start, _) = *frames(&image[&seg]).last().unwrap();
    let len = u32::from_le_bytes(image[&seg][start..start + 4].try_into().unwrap()) as usize;
    // Past the payload is padding, which no check covers and no reader reads.
    let end = start + format::FRAME_HEADER_BYTES + len;
    for cut in start..end {
        let mut torn = image.clone();
        torn.get_mut(&seg).unwrap()[cut..end].fill(0);
        let rec = smlog::recover(&CrashImage::from_image(torn), false)
            .unwrap_or_else(|e| panic!("torn at byte {cut} of {start}..{end}: {e}"));
        if image[&seg][cut..end].iter().all(|b| *b == 0) {
            // What the write did not reach was zeros anyway: the record is whole.
            assert_eq!(x_of(&rec.entities, 5), Some(1005.0), "torn at {cut}");
            continue;
        }
        // The last record moved item 5 to x = 1005; torn, item 5 is where the world began.
        assert_eq!(x_of(&rec.entities, 5), Some(5.0), "torn at {cut}");
        assert_eq!(x_of(&rec.entities, 4), Some(1004.0), "the record before survives (torn at {cut})");
        assert_eq!(rec.last_committed_tick, 4);
        assert_eq!(rec.report.torn_tails.len(), usize::from(cut > start), "torn at {cut}: {:?}", rec.report);
    }
}

#[test]
fn a_flipped_bit_in_the_middle_is_an_error_naming_file_and_offset_and_salvage_cuts_there() {
    let image = log_with_records(8, 1 << 20).image();
    let seg = segments(&image).pop().unwrap();
    let (start, _) = frames(&image[&seg])[4];
    let mut bad = image.clone();
    bad.get_mut(&seg).unwrap()[start + 20] ^= 0x10;
    match smlog::recover(&CrashImage::from_image(bad.clone()), false) {
        Err(LogError::Corrupt { path, offset, .. }) => assert_eq!((path, offset), (seg.clone(), start)),
        other => panic!("expected corruption, got {other:?}"),
    }
    let rec = smlog::recover(&CrashImage::from_image(bad.clone()), true).unwrap();
    assert_eq!(rec.report.salvaged.len(), 1, "{:?}", rec.report);
    // Frame 0 is the start-up checkpoint's; frames 1..=3 are ticks 1..=3, and tick 4 is cut.
    assert_eq!(rec.last_committed_tick, 3);
    assert_eq!(x_of(&rec.entities, 3), Some(1003.0));
    assert_eq!(x_of(&rec.entities, 4), Some(4.0));

    // Starting on it with salvage repairs the log, and the next start reads it clean.
    let media = CrashImage::from_image(bad);
    assert!(smlog::open(Arc::new(media.clone()), &options(1 << 20), || world(10)).is_err());
    let salvage = OpenOptions { salvage: true, ..options(1 << 20) };
    let opened = smlog::open(Arc::new(media.clone()), &salvage, || world(10)).unwrap();
    assert!(!opened.created);
    drop(opened);
    let rec = smlog::recover(&media, false).unwrap();
    assert!(rec.report.errors.is_empty() && rec.report.salvaged.is_empty(), "{:?}", rec.report);
    assert_eq!(x_of(&rec.entities, 3), Some(1003.0));
}

#[test]
fn a_missing_or_truncated_segment_is_found() {
    // Small segments: a few records each.
    let image = log_with_records(40, 1024).image();
    let segs = segments(&image);
    assert!(segs.len() >= 4, "{segs:?}");

    let mut missing = image.clone();
    missing.remove(&segs[1]);
    match smlog::recover(&CrashImage::from_image(missing), false) {
        Err(LogError::Corrupt { path, why, .. }) => {
            assert_eq!(path, segs[2]);
            assert!(why.contains("missing"), "{why}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }

    let mut truncated = image.clone();
    let middle = truncated.get_mut(&segs[1]).unwrap();
    middle.truncate(middle.len() / 2);
    assert!(matches!(smlog::recover(&CrashImage::from_image(truncated), false), Err(LogError::Corrupt { .. })));

    // The last segment cut short is a torn tail: what is whole before the cut is kept.
    let mut short_tail = image.clone();
    let last = short_tail.get_mut(segs.last().unwrap()).unwrap();
    let (start, end) = *frames(last).last().unwrap();
    last.truncate(start + (end - start) / 2);
    let rec = smlog::recover(&CrashImage::from_image(short_tail), false).unwrap();
    assert_eq!(rec.report.torn_tails.len(), 1);
    assert_eq!(rec.last_committed_tick, 39);
}

#[test]
fn a_full_disk_is_a_clear_error_and_what_was_committed_stays() {
    let media = CrashImage::with_capacity(40 << 10);
    let opened = smlog::open(Arc::new(media.clone()), &options(8 << 10), || world(10)).unwrap();
    let mut log: SliceLog = opened.logs.into_iter().next().unwrap();
    let mut last_ok = 0;
    let error = (1..10_000u64)
        .find_map(|t| {
            let result = log.append(&Batch { tick: t, ops: vec![put((t % 10) as u32, 1000.0 + t as f32, 1 + t)] });
            match result.and_then(|()| log.commit(t)) {
                Ok(()) => {
                    last_ok = t;
                    None
                }
                Err(e) => Some(e),
            }
        })
        .expect("the disk fills");
    match &error {
        LogError::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{error}"),
        other => panic!("expected an I/O error, got {other}"),
    }
    drop(log);
    let rec = smlog::recover(&media, false).unwrap();
    assert_eq!(rec.last_committed_tick, last_ok);
    assert_eq!(x_of(&rec.entities, (last_ok % 10) as u32), Some(1000.0 + last_ok as f32));
}

/// A model of what the log should read back: entity -> x, after each tick.
fn model_after(ticks: &[Vec<(u32, Option<f32>)>], upto: usize) -> BTreeMap<u32, f32> {
    let mut m: BTreeMap<u32, f32> = (0..10).map(|i| (i, i as f32)).collect();
    for tick in &ticks[..upto] {
        for (i, x) in tick {
            match x {
                Some(x) => m.insert(*i, *x),
                None => m.remove(i),
            };
        }
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random ticks of puts and destroys, then a crash image cut at a random byte: the log reads
    /// back exactly the world after some whole prefix of the ticks, never anything else.
    #[test]
    fn any_cut_reads_back_a_prefix_of_the_ticks(
        ticks in prop::collection::vec(prop::collection::vec((0u32..10, prop::option::of(0f32..500.0)), 0..6), 1..30),
        cut_at in 0.0f64..1.0,
    ) {
        let media = CrashImage::default();
        let opened = smlog::open(Arc::new(media.clone()), &options(2048), || world(10)).unwrap();
        let mut log = opened.logs.into_iter().next().unwrap();
        let mut seq = 100;
        for (t, tick) in ticks.iter().enumerate() {
            let ops = tick.iter().map(|(i, x)| {
                seq += 1;
                match x {
                    Some(x) => put(*i, *x, seq),
                    None => LogOp::Destroy { id: EntityId::new(0, *i), seq },
                }
            }).collect();
            log.append(&Batch { tick: 1 + t as u64, ops }).unwrap();
            log.commit(1 + t as u64).unwrap();
        }
        log.close().unwrap();
        let mut image = media.image();
        let segs = segments(&image);
        let last = image.get_mut(segs.last().unwrap()).unwrap();
        // After the start-up checkpoint's record (a cut inside it is the next test's case).
        let all = frames(last);
        let from = if segs.len() == 1 { all[0].1 } else { SEGMENT_HEADER_BYTES };
        let used = all.last().map_or(from, |f| f.1);
        let cut = from + ((used - from) as f64 * cut_at) as usize;
        last[cut..].fill(0);
        let rec = smlog::recover(&CrashImage::from_image(image), false).unwrap();
        let upto = rec.last_committed_tick as usize;
        prop_assert!(upto <= ticks.len());
        let got: BTreeMap<u32, f32> = rec.entities.iter().map(|c| ((c.id.0 & 0xffff_ffff) as u32, c.state.position[0])).collect();
        prop_assert_eq!(got, model_after(&ticks, upto));
    }

    /// Random bytes where a segment's frames should be: an error or a cut, never a panic.
    #[test]
    fn random_bytes_never_panic_the_reader(garbage in prop::collection::vec(any::<u8>(), 0..4096), at in 0usize..4096) {
        let mut image = log_with_records(6, 1 << 16).image();
        let seg = segments(&image).pop().unwrap();
        let bytes = image.get_mut(&seg).unwrap();
        let at = SEGMENT_HEADER_BYTES + at.min(bytes.len() - SEGMENT_HEADER_BYTES);
        let end = (at + garbage.len()).min(bytes.len());
        bytes[at..end].copy_from_slice(&garbage[..end - at]);
        let media = CrashImage::from_image(image);
        let _ = smlog::recover(&media, false);
        let _ = smlog::recover(&media, true);
        let _ = smlog::inspect(&media, &mut std::io::sink());
    }
}

#[test]
fn a_crash_while_the_world_is_created_starts_it_over() {
    let image = log_with_records(0, 1 << 16).image();
    let seg = segments(&image).pop().unwrap();
    let (start, end) = frames(&image[&seg])[0];
    for cut in [start, start + 1, start + 17, start + 40] {
        let mut torn = image.clone();
        torn.get_mut(&seg).unwrap()[cut..end].fill(0);
        let media = CrashImage::from_image(torn);
        assert_eq!(smlog::recover(&media, false).unwrap().round, 0, "cut at {cut}");
        let opened = smlog::open(Arc::new(media.clone()), &options(1 << 16), || world(10)).unwrap();
        assert!(opened.created);
        drop(opened);
        assert_eq!(smlog::recover(&media, false).unwrap().entities.len(), 10);
    }
}

#[test]
fn media_lists_what_it_holds() {
    let media = log_with_records(1, 1 << 16);
    let names = media.list("slice-0").unwrap();
    assert!(names.iter().any(|n| n.starts_with("seg-")) && names.iter().any(|n| n.starts_with("snap-")), "{names:?}");
}

#[test]
fn the_next_segment_is_prepared_ahead_and_a_crash_with_it_in_place_recovers_cleanly() {
    let media = CrashImage::default();
    let opened = smlog::open(Arc::new(media.clone()), &options(4096), || world(10)).unwrap();
    let mut log = opened.logs.into_iter().next().unwrap();
    let mut crashed_with_prepared = None;
    for t in 1..=120u64 {
        log.append(&Batch { tick: t, ops: vec![put((t % 10) as u32, 1000.0 + t as f32, 1 + t)] }).unwrap();
        log.commit(t).unwrap();
        // Give the flusher a moment, as the ticks between two commits would.
        for _ in 0..20 {
            if log.next_segment_ready() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if crashed_with_prepared.is_none() && log.next_segment_ready() {
            crashed_with_prepared = Some((t, media.image()));
        }
    }
    assert!(log.rolls >= 3 && log.rolls_prepared >= 2, "{} rolls, {} prepared", log.rolls, log.rolls_prepared);
    log.close().unwrap();
    assert!(!media.image().keys().any(|k| k.ends_with(".tmp")), "closing removes the unused prepared segment");
    let rec = smlog::recover(&media, false).unwrap();
    assert_eq!(rec.last_committed_tick, 120);
    assert_eq!(x_of(&rec.entities, 0), Some(1120.0));

    // A crash with a prepared segment in place: it is not part of the log, and the next start
    // clears it away.
    let (t, image) = crashed_with_prepared.expect("a segment was prepared");
    let stale: Vec<String> = image.keys().filter(|k| k.ends_with(".tmp")).cloned().collect();
    assert_eq!(stale.len(), 1);
    let rec = smlog::recover(&CrashImage::from_image(image.clone()), false).unwrap();
    assert_eq!(rec.last_committed_tick, t);
    assert!(rec.report.errors.is_empty(), "{:?}", rec.report);
    let restarted = CrashImage::from_image(image);
    let opened = smlog::open(Arc::new(restarted.clone()), &options(4096), || world(10)).unwrap();
    for log in opened.logs {
        log.close().unwrap();
    }
    assert!(restarted.image().keys().all(|k| !stale.contains(k)), "the stale prepared segment is gone");
}
