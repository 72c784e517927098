//! The replication log against damaged storage, on the crash-image backend: a torn write at every
//! byte offset of a record, a flipped bit, a missing or truncated segment, a full disk; and a
//! property test of the reader on random logs and random bytes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use glam::Vec3;
use proptest::prelude::*;
use shardmesh::log::format::{self, Frame, SEGMENT_HEADER_BYTES};
use shardmesh::log::{self as smlog, Batch, CrashImage, Durability, LogError, LogOp, Media, OpenOptions, SliceLog};
use shardmesh::protocol::Committed;
use shardmesh::world::{Aabb, EntityId, EntityKind, EntityState, RegionMap, Tick};

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
    OpenOptions { slices: 1, durability: Durability::Off, segment_bytes, salvage: false, planted_replay_twice: false }
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
    log_written(records, options(segment_bytes))
}

fn log_written(records: u64, opts: OpenOptions) -> CrashImage {
    let media = CrashImage::default();
    let opened = smlog::open(Arc::new(media.clone()), &opts, || world(10)).unwrap();
    let mut log = opened.logs.into_iter().next().unwrap();
    for t in 1..=records {
        log.append(&Batch { tick: Tick(t), ops: vec![put((t % 10) as u32, 1000.0 + t as f32, 1 + t)] }).unwrap();
        log.commit(Tick(t)).unwrap();
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

/// The image as a crash would leave it had the flusher synced only the records below `below`
/// (`None`: nothing at all, not even the world's creation): every segment's watermark lowered
/// to it, and no segment sealed past it. A clean close syncs and watermarks everything, so a
/// crash image of a record not yet synced needs this.
fn synced_below(image: &mut BTreeMap<String, Vec<u8>>, below: Option<u64>) {
    for (path, bytes) in image.iter_mut().filter(|(k, _)| k.ends_with(".log")) {
        let Ok(Some(mark)) = format::decode_watermark(bytes) else { continue };
        let at = format::WATERMARK_AT..format::WATERMARK_AT + format::WATERMARK_BYTES;
        match below {
            None => bytes[at].fill(0),
            Some(below) => {
                let lowered = format::Watermark {
                    closed: mark.closed && mark.durable_below <= below,
                    durable_below: mark.durable_below.min(below),
                    // Sealed only once it was synced whole and before anything after it.
                    sealed_next: mark.sealed_next.filter(|n| *n < below),
                };
                let header = bytes[..24].to_vec();
                bytes[at].copy_from_slice(&format::encode_watermark(&header, lowered));
            }
        }
        let _ = path;
    }
}

#[test]
fn a_clean_log_reads_back_whole() {
    let media = log_with_records(25, 1 << 20);
    let rec = smlog::recover(&media, false).unwrap();
    assert_eq!(rec.entities.len(), 10);
    assert_eq!(rec.last_committed_tick.get(), 25);
    for t in 16..=25u64 {
        assert_eq!(x_of(&rec.entities, (t % 10) as u32), Some(1000.0 + t as f32));
    }
    assert!(rec.report.errors.is_empty() && rec.report.torn_tails.is_empty(), "{:?}", rec.report);
}

#[test]
fn a_torn_write_at_every_byte_of_a_record_cuts_back_to_the_record_before() {
    let mut image = log_with_records(5, 1 << 20).image();
    // The last record (5) was being written, so not yet synced.
    synced_below(&mut image, Some(5));
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
        assert_eq!(rec.last_committed_tick.get(), 4);
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
    assert_eq!(rec.last_committed_tick.get(), 3);
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
            // Named where the gap begins: the end of the segment before the missing one.
            assert_eq!(path, segs[0]);
            assert!(why.contains("missing"), "{why}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }

    let mut truncated = image.clone();
    let middle = truncated.get_mut(&segs[1]).unwrap();
    middle.truncate(middle.len() / 2);
    assert!(matches!(smlog::recover(&CrashImage::from_image(truncated), false), Err(LogError::Corrupt { .. })));

    // The last segment cut short, past what was synced, is a torn tail: what is whole before
    // the cut is kept.
    let mut short_tail = image.clone();
    synced_below(&mut short_tail, Some(40));
    let last = short_tail.get_mut(segs.last().unwrap()).unwrap();
    let (start, end) = *frames(last).last().unwrap();
    last.truncate(start + (end - start) / 2);
    let rec = smlog::recover(&CrashImage::from_image(short_tail), false).unwrap();
    assert_eq!(rec.report.torn_tails.len(), 1);
    assert_eq!(rec.last_committed_tick.get(), 39);
}

#[test]
fn a_full_disk_is_a_clear_error_and_what_was_committed_stays() {
    let media = CrashImage::with_capacity(40 << 10);
    let opened = smlog::open(Arc::new(media.clone()), &options(8 << 10), || world(10)).unwrap();
    let mut log: SliceLog = opened.logs.into_iter().next().unwrap();
    let mut last_ok = 0;
    let error = (1..10_000u64)
        .find_map(|t| {
            let result =
                log.append(&Batch { tick: Tick(t), ops: vec![put((t % 10) as u32, 1000.0 + t as f32, 1 + t)] });
            match result.and_then(|()| log.commit(Tick(t))) {
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
    assert_eq!(rec.last_committed_tick.get(), last_ok);
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
            log.append(&Batch { tick: Tick(1 + t as u64), ops }).unwrap();
            log.commit(Tick(1 + t as u64)).unwrap();
        }
        log.close().unwrap();
        let mut image = media.image();
        // The crash came before anything after the start-up record was synced.
        synced_below(&mut image, Some(1));
        let segs = segments(&image);
        let last = image.get_mut(segs.last().unwrap()).unwrap();
        // After the start-up checkpoint's record (a cut inside it is the next test's case).
        let all = frames(last);
        let from = if segs.len() == 1 { all[0].1 } else { SEGMENT_HEADER_BYTES };
        let used = all.last().map_or(from, |f| f.1);
        let cut = from + ((used - from) as f64 * cut_at) as usize;
        last[cut..].fill(0);
        let rec = smlog::recover(&CrashImage::from_image(image), false).unwrap();
        let upto = rec.last_committed_tick.get() as usize;
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
    let mut image = log_with_records(0, 1 << 16).image();
    // Creation had not synced its first record (nothing was promised yet).
    synced_below(&mut image, None);
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
        log.append(&Batch { tick: Tick(t), ops: vec![put((t % 10) as u32, 1000.0 + t as f32, 1 + t)] }).unwrap();
        log.commit(Tick(t)).unwrap();
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
    assert_eq!(rec.last_committed_tick.get(), 120);
    assert_eq!(x_of(&rec.entities, 0), Some(1120.0));

    // A crash with a prepared segment in place: it is not part of the log, and the next start
    // clears it away.
    let (t, image) = crashed_with_prepared.expect("a segment was prepared");
    let stale: Vec<String> = image.keys().filter(|k| k.ends_with(".tmp")).cloned().collect();
    assert_eq!(stale.len(), 1);
    let rec = smlog::recover(&CrashImage::from_image(image.clone()), false).unwrap();
    assert_eq!(rec.last_committed_tick.get(), t);
    assert!(rec.report.errors.is_empty(), "{:?}", rec.report);
    let restarted = CrashImage::from_image(image);
    let opened = smlog::open(Arc::new(restarted.clone()), &options(4096), || world(10)).unwrap();
    for log in opened.logs {
        log.close().unwrap();
    }
    assert!(restarted.image().keys().all(|k| !stale.contains(k)), "the stale prepared segment is gone");
}

fn options_synced(segment_bytes: usize) -> OpenOptions {
    OpenOptions { durability: Durability::EveryTick, ..options(segment_bytes) }
}

/// A one-slice log as `log_with_records` makes, but synced every tick: segments rolled away are
/// sealed, and every header carries the watermark.
fn log_synced(records: u64, segment_bytes: usize) -> CrashImage {
    log_written(records, options_synced(segment_bytes))
}

/// Every record of the log: (segment, offset, sequence number), in order.
fn records(image: &BTreeMap<String, Vec<u8>>) -> Vec<(String, usize, u64)> {
    let mut out = Vec::new();
    for seg in segments(image) {
        let bytes = &image[&seg];
        let mut at = SEGMENT_HEADER_BYTES;
        while let Frame::Whole { seq, next, .. } = format::decode_frame(bytes, at) {
            out.push((seg.clone(), at, seq));
            at = next;
        }
    }
    out
}

/// Damage at record `victim` of a log synced below `watermark`: it must read back as a torn
/// tail (only where nothing after it is whole and nothing at or after it was synced), or fail
/// with corruption naming the file and offset; never fewer records without a word.
fn check_damage(
    what: &str,
    damaged: BTreeMap<String, Vec<u8>>,
    all: &[(String, usize, u64)],
    victim: usize,
    watermark: u64,
) {
    let (path, offset, seq) = all[victim].clone();
    let last = victim + 1 == all.len();
    match smlog::recover(&CrashImage::from_image(damaged), false) {
        Ok(rec) => {
            assert!(seq >= watermark && last, "{what} at record {seq} (watermark {watermark}) was read as a torn tail");
            let said =
                rec.report.torn_tails.iter().any(|t| t.contains(&path) && t.contains(&format!("offset {offset}")));
            assert!(said, "{what} at record {seq}: the torn tail is not reported: {:?}", rec.report);
            assert_eq!(rec.report.records, seq, "{what}: every record before it is kept");
        }
        Err(LogError::Corrupt { path: p, offset: o, .. }) => {
            assert!(seq < watermark || !last, "{what} at the last record {seq}, after the watermark, is a torn tail");
            assert_eq!((p, o), (path, offset), "{what} at record {seq}: the error names the file and offset");
        }
        Err(e) => panic!("{what} at record {seq}: {e}"),
    }
}

#[test]
fn a_zeroed_header_or_a_flipped_byte_at_every_record_before_and_after_the_watermark_is_never_a_silent_loss() {
    let clean = log_synced(30, 1024).image();
    let all = records(&clean);
    assert!(segments(&clean).len() >= 4 && all.len() == 31, "{} records", all.len());
    // Synced to the end (a clean close), synced to the middle, and synced only at creation.
    for watermark in [31u64, 17, 1] {
        let mut base = clean.clone();
        synced_below(&mut base, Some(watermark));
        for victim in 0..all.len() {
            let (path, offset, _) = &all[victim];
            let mut zeroed = base.clone();
            zeroed.get_mut(path).unwrap()[*offset..offset + format::FRAME_HEADER_BYTES].fill(0);
            check_damage("a zeroed frame header", zeroed, &all, victim, watermark);
            for at in [4usize, 9, format::FRAME_HEADER_BYTES + 3] {
                let mut flipped = base.clone();
                flipped.get_mut(path).unwrap()[offset + at] ^= 0x20;
                check_damage(&format!("byte {at} flipped"), flipped, &all, victim, watermark);
            }
        }
    }
}

#[test]
fn a_missing_segment_anywhere_is_a_named_error_unless_nothing_in_it_was_synced() {
    let clean = log_synced(30, 1024).image();
    let segs = segments(&clean);
    let all = records(&clean);
    for (i, seg) in segs.iter().enumerate() {
        let mut missing = clean.clone();
        missing.remove(seg);
        match smlog::recover(&CrashImage::from_image(missing), false) {
            Ok(rec) => {
                panic!("{seg} missing read back {} records without a word: {:?}", rec.report.records, rec.report)
            }
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("missing") || text.contains("starts after"), "{seg}: {text}");
            }
        }
        // Had its records never been synced (the roll-over that made it was the crash's last
        // step), the last segment's loss is a crash's, not damage.
        if i + 1 == segs.len() {
            let first = all.iter().find(|r| &r.0 == seg).unwrap().2;
            let mut unsynced = clean.clone();
            synced_below(&mut unsynced, Some(first));
            unsynced.remove(seg);
            let rec = smlog::recover(&CrashImage::from_image(unsynced), false).unwrap();
            assert_eq!(rec.report.records, first);
        }
    }
}

#[test]
fn a_crash_image_at_every_step_of_a_roll_over_reopens() {
    let clean = log_synced(30, 1024).image();
    let segs = segments(&clean);
    let (prev, last) = (&segs[segs.len() - 2], segs.last().unwrap());
    let all = records(&clean);
    let first_of_last = all.iter().find(|r| &r.0 == last).unwrap().2;
    // Before the roll-over: the log ends with `prev`, not sealed, nothing of `last` synced.
    let mut before = clean.clone();
    synced_below(&mut before, Some(first_of_last));
    let header = before[last][..SEGMENT_HEADER_BYTES].to_vec();
    let len = before[last].len();
    let prepared = "slice-0/prepared-0000000000000001-1.tmp".to_string();
    let mut steps: Vec<(&str, BTreeMap<String, Vec<u8>>)> = Vec::new();
    let mut s = before.clone();
    s.remove(last);
    steps.push(("nothing of the next segment yet", s.clone()));
    s.insert(prepared.clone(), vec![0; len]);
    steps.push(("the next segment prepared", s.clone()));
    let zeros = s.remove(&prepared).unwrap();
    s.insert(last.clone(), zeros);
    steps.push(("renamed, no header yet", s.clone()));
    s.get_mut(last).unwrap()[..SEGMENT_HEADER_BYTES].copy_from_slice(&header);
    steps.push(("header written, no record", s.clone()));
    let (_, offset, _) = all.iter().find(|r| &r.0 == last).unwrap().clone();
    s.get_mut(last).unwrap()[offset..offset + 10].copy_from_slice(&clean[last][offset..offset + 10]);
    steps.push(("its first record half written", s.clone()));
    // The old segment sealed (synced whole, the new one's name durable), its new one empty.
    let mut sealed = clean.clone();
    synced_below(&mut sealed, Some(first_of_last));
    let mark = format::Watermark { durable_below: first_of_last, sealed_next: Some(first_of_last), closed: false };
    let prev_header = sealed[prev][..24].to_vec();
    sealed.get_mut(prev).unwrap()[format::WATERMARK_AT..format::WATERMARK_AT + format::WATERMARK_BYTES]
        .copy_from_slice(&format::encode_watermark(&prev_header, mark));
    sealed.get_mut(last).unwrap()[SEGMENT_HEADER_BYTES..].fill(0);
    steps.push(("the old segment sealed, the new one empty", sealed));
    for (step, image) in steps {
        let media = CrashImage::from_image(image);
        let rec = smlog::recover(&media, false).unwrap_or_else(|e| panic!("{step}: {e}"));
        assert_eq!(rec.report.records, first_of_last, "{step}");
        let opened = smlog::open(Arc::new(media.clone()), &options_synced(1024), || world(10))
            .unwrap_or_else(|e| panic!("{step}: reopening: {e}"));
        assert!(!opened.created, "{step}");
        let mut log = opened.logs.into_iter().next().unwrap();
        let t = rec.last_tick.get() + 1;
        log.append(&Batch { tick: Tick(t), ops: vec![put(3, 7.0, 500)] }).unwrap();
        log.commit(Tick(t)).unwrap();
        log.close().unwrap();
        let again = smlog::recover(&media, false).unwrap_or_else(|e| panic!("{step}: after a run: {e}"));
        assert!(again.report.errors.is_empty(), "{step}: {:?}", again.report);
        assert_eq!(x_of(&again.entities, 3), Some(7.0), "{step}");
    }
}

#[test]
fn a_failing_sync_never_advances_the_durable_tick() {
    let media = CrashImage::default();
    let opened = smlog::open(Arc::new(media.clone()), &options_synced(1 << 16), || world(10)).unwrap();
    let mut log = opened.logs.into_iter().next().unwrap();
    let durable = |log: &SliceLog| log.state.durable_tick.load(std::sync::atomic::Ordering::Acquire);
    let wait_for = |log: &SliceLog, tick: u64| {
        let began = std::time::Instant::now();
        while durable(log) < tick && began.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    };
    for t in 1..=5 {
        log.append(&Batch { tick: Tick(t), ops: vec![put(1, t as f32, 10 + t)] }).unwrap();
        log.commit(Tick(t)).unwrap();
    }
    wait_for(&log, 5);
    assert_eq!(durable(&log), 5);
    media.fail_syncs.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut refused = None;
    for t in 6..=40 {
        let result = log
            .append(&Batch { tick: Tick(t), ops: vec![put(1, t as f32, 10 + t)] })
            .and_then(|()| log.commit(Tick(t)));
        if let Err(e) = result {
            refused = Some(e);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let e = refused.expect("a commit after a failed sync is refused");
    assert!(e.to_string().contains("msync"), "{e}");
    assert_eq!(durable(&log), 5, "no tick after the failed sync counts as durable");
    assert!(log.close().is_err(), "closing reports the failed sync");
}

#[test]
fn verify_reads_every_byte_and_reports_what_the_writer_would_not_have_left() {
    let clean = log_synced(5, 4096).image();
    assert!(smlog::verify(&CrashImage::from_image(clean.clone())).errors.is_empty());
    let seg = segments(&clean).pop().unwrap();
    let (_, offset, _) = records(&clean).last().unwrap().clone();
    let len = clean[&seg].len();
    let payload = u32::from_le_bytes(clean[&seg][offset..offset + 4].try_into().unwrap()) as usize;
    let padding = offset + format::FRAME_HEADER_BYTES + payload;
    let mut places = vec![("the unused end", len - 1), ("a header byte left zero", 60)];
    if payload % format::FRAME_ALIGN != 0 {
        places.push(("a record's padding", padding));
    }
    for (what, at) in places {
        let mut bad = clean.clone();
        bad.get_mut(&seg).unwrap()[at] ^= 0x01;
        let report = smlog::verify(&CrashImage::from_image(bad));
        assert!(!report.errors.is_empty(), "{what} (byte {at}) changed, verify says nothing: {report:?}");
    }
    // The watermark's own bytes are checked too.
    let mut bad = clean.clone();
    bad.get_mut(&seg).unwrap()[format::WATERMARK_AT + 2] ^= 0x01;
    assert!(smlog::recover(&CrashImage::from_image(bad), false).is_err());
}

/// Found by the simulator's whole-process crashes (seeds 239, 304, 356): a power loss right
/// after a roll-over. The old segment's last records were written but not synced; the new
/// segment exists (its name is made durable first) and holds nothing synced. That is a torn
/// tail, not corruption: the log ends at the first record never synced, every synced one is
/// there, and the run that opens it goes on from there.
#[test]
fn a_power_loss_right_after_a_roll_over_is_a_torn_tail() {
    let media = CrashImage::default();
    let opts = OpenOptions { durability: Durability::Interval(Duration::from_secs(3600)), ..options(16 << 10) };
    let opened = smlog::open(Arc::new(media.clone()), &opts, || world(10)).unwrap();
    let mut log = opened.logs.into_iter().next().unwrap();
    let segments = |m: &CrashImage| m.image().keys().filter(|k| k.contains("seg-")).count();
    let before = segments(&media);
    let mut t = 0;
    let mut synced_to = 0;
    // Records until the log rolls to a new segment; the sync stops a few records short of it.
    while segments(&media) == before {
        t += 1;
        log.append(&Batch { tick: Tick(t), ops: vec![put((t % 10) as u32, 1000.0 + t as f32, 1 + t)] }).unwrap();
        log.commit(Tick(t)).unwrap();
        if t % 8 == 0 {
            log.sync_now().unwrap();
            synced_to = t;
        }
    }
    assert!(t > synced_to, "records after the last sync were written");
    let image = media.durable_image();
    drop(log);
    let rec = smlog::recover(&CrashImage::from_image(image.clone()), false).expect("a torn tail, not corruption");
    assert!(rec.report.torn_tails.iter().any(|t| t.contains("never synced")), "{:?}", rec.report);
    assert!(
        rec.last_committed_tick.get() >= synced_to,
        "synced to {synced_to}, recovered {}",
        rec.last_committed_tick.get()
    );
    for i in 0..10u32 {
        let last_synced = (1..=synced_to).rev().find(|s| s % 10 == i as u64);
        if let Some(s) = last_synced {
            assert!(x_of(&rec.entities, i).unwrap() >= 1000.0 + s as f32, "item {i} lost its synced move at {s}");
        }
    }
    // The next run opens it, and the one after that finds it whole.
    let media = CrashImage::from_image(image);
    let opened = smlog::open(Arc::new(media.clone()), &opts, || unreachable!()).unwrap();
    for log in opened.logs {
        log.close().unwrap();
    }
    assert!(smlog::verify(&media).errors.is_empty(), "{:?}", smlog::verify(&media));
}
