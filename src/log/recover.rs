//! Reading the log back: every slice's segments and snapshots are checked, the newest checkpoint
//! round that every slice completed is chosen, each slice's log is replayed on its snapshot from
//! where the snapshot stands, and the slices' views are merged into one world.
//!
//! Merging: an entity can appear in two slices' views only around a transfer (the sender logged
//! it leaving, the receiver may have logged it arriving). Commit counters never go back, so the
//! entry with the higher counter is the newer; at a tie a destruction beats a record, and a record
//! beats a departure.
//!
//! A frame that fails its checks at the very end of a slice's last segment is a torn write (the
//! process died while writing it): the log is cut back to the frame before. A bad frame with whole
//! frames after it, or a segment missing from the sequence, is corruption: an error naming the
//! file and offset, unless salvage is asked for, which cuts the log there and says what it lost.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap;

use super::format::{self, Batch, Frame, LogOp, SnapshotFile, SEGMENT_HEADER_BYTES};
use super::media::Media;
use super::LogError;
use crate::limits::GRAPH_DEPTH_MAX;
use crate::protocol::Committed;
use crate::world::{EntityId, EntityKind, EntityState, RegionMap, Tick};

pub fn slice_dir(slice: u16) -> String {
    format!("slice-{slice}")
}

pub fn segment_path(slice: u16, first_seq: u64) -> String {
    format!("slice-{slice}/seg-{first_seq:016}.log")
}

pub fn snapshot_path(slice: u16, round: u64) -> String {
    format!("slice-{slice}/snap-{round:012}.snap")
}

/// A change the next writer must make before it writes: cut a torn tail, drop what salvage cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repair {
    ZeroFrom { path: String, offset: usize },
    Remove { path: String },
}

/// What reading the log found, for `log verify` and the start-up line.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Report {
    pub slices: usize,
    pub segments: usize,
    pub records: u64,
    pub snapshots: usize,
    pub round: u64,
    pub entities: usize,
    pub items: usize,
    /// Players: the world's own and one per account that ever joined, logged in or not.
    pub players: usize,
    /// Entities recorded by more than one slice, each resolved to its newest change (a transfer
    /// whose departure was lost with an unsynced tail).
    pub duplicates: usize,
    pub last_committed_tick: Tick,
    /// Where a slice's log was cut back to its last whole record (a crash mid-write).
    pub torn_tails: Vec<String>,
    /// What salvage cut away.
    pub salvaged: Vec<String>,
    /// Anything wrong: corruption, broken references. Empty for a healthy log.
    pub errors: Vec<String>,
}

/// The world as the log holds it.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// The checkpoint round replayed from (0: the log was empty).
    pub round: u64,
    /// Parents before children.
    pub entities: Vec<Committed>,
    pub map: Option<RegionMap>,
    /// Every slice has committed every tick up to this one.
    pub last_committed_tick: Tick,
    /// The newest tick any slice committed.
    pub last_tick: Tick,
    pub incarnation_floor: u32,
    /// The next sequence number of each slice directory found (by slice number).
    pub next_seq: BTreeMap<u16, u64>,
    /// Every file of the log, by slice, for the writer to clear away once it has checkpointed.
    pub files: Vec<String>,
    pub repairs: Vec<Repair>,
    pub report: Report,
}

/// One slice's log as read.
#[derive(Default)]
struct SliceScan {
    segments: usize,
    /// Whole frames, decoded, in sequence order.
    batches: Vec<(u64, Batch)>,
    snapshots: BTreeMap<u64, Result<SnapshotFile, String>>,
    next_seq: u64,
    /// A watermark was written: the writer promised something durable.
    promised: bool,
}

fn parse_numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok()
}

/// Whether any whole frame with a sequence number above `seq` lies in `bytes` after `offset`.
fn whole_frame_after(bytes: &[u8], offset: usize, seq: u64) -> bool {
    let mut at = format::align(offset + 1);
    while at + format::FRAME_HEADER_BYTES <= bytes.len() {
        if let Frame::Whole { seq: s, .. } = format::decode_frame(bytes, at) {
            if s > seq {
                return true;
            }
        }
        at += format::FRAME_ALIGN;
    }
    false
}

fn scan_slice(media: &dyn Media, slice: u16, salvage: bool, out: &mut Recovered) -> Result<SliceScan, LogError> {
    let dir = slice_dir(slice);
    let io = |path: &str| {
        let path = path.to_string();
        move |source| LogError::Io { path, source }
    };
    let mut scan = SliceScan::default();
    let mut segments = Vec::new();
    for name in media.list(&dir).map_err(io(&dir))? {
        let path = format!("{dir}/{name}");
        out.files.push(path.clone());
        if let Some(first) = parse_numbered(&name, "seg-", ".log") {
            segments.push((first, path));
        } else if let Some(round) = parse_numbered(&name, "snap-", ".snap") {
            let bytes = media.read(&path).map_err(io(&path))?;
            let snap = format::decode_snapshot(&bytes).and_then(|s| {
                if s.slice == slice && s.round == round {
                    Ok(s)
                } else {
                    Err(format!("holds slice {} round {}, its name says otherwise", s.slice, s.round))
                }
            });
            scan.snapshots.insert(round, snap.map_err(|e| format!("{path}: {e}")));
        }
    }
    segments.sort();
    scan.segments = segments.len();
    let mut files = Vec::with_capacity(segments.len());
    for (_, path) in &segments {
        files.push(media.read(path).map_err(io(path))?);
    }
    // The watermark: every frame below it was synced, so a damaged or missing one there is
    // corruption, never a torn write. Each segment's header says how far it got.
    let mut durable_below = 0u64;
    for (bytes, (_, path)) in files.iter().zip(&segments) {
        if bytes.len() >= SEGMENT_HEADER_BYTES {
            match format::decode_watermark(bytes) {
                Ok(mark) => {
                    durable_below = durable_below.max(mark.map_or(0, |m| m.durable_below));
                    scan.promised |= mark.is_some();
                }
                Err(why) if format::decode_segment_header(bytes).is_ok() => {
                    // Without it, what was promised is unknown: frames are still checked whole.
                    lost_or_fail(out, salvage, path, format::WATERMARK_AT, why)?;
                }
                Err(_) => {}
            }
        }
    }
    let mut expected: Option<u64> = None;
    let mut sealed: Option<(u64, &str)> = None;
    let last_index = segments.len().saturating_sub(1);
    'segments: for (index, (named_first, path)) in segments.iter().enumerate() {
        let bytes = &files[index];
        let is_last = index == last_index;
        let first = match format::decode_segment_header(bytes) {
            Ok((s, first)) if s == slice && first == *named_first => first,
            Ok((s, first)) => {
                let why = format!("header says slice {s} from record {first}, the name says otherwise");
                cut_or_fail(out, salvage, path, 0, why, &segments[index..])?;
                break 'segments;
            }
            Err(_) if is_last && bytes.iter().all(|b| *b == 0) => {
                // Created, not yet written: a crash right after the file was made. The next run
                // writes its first segment over it (or clears it away).
                out.report.torn_tails.push(format!("{path}: empty segment"));
                sealed = None;
                break 'segments;
            }
            Err(why) => {
                cut_or_fail(out, salvage, path, 0, why, &segments[index..])?;
                break 'segments;
            }
        };
        if !format::header_reserved_is_zero(bytes) {
            out.report.errors.push(format!("{path}: header bytes the writer leaves zero are not"));
        }
        if let Some(e) = expected.filter(|e| *e != first) {
            let why = format!("records {e}..{first} are missing (a segment is missing or was cut short)");
            cut_or_fail(out, salvage, path, 0, why, &segments[index..])?;
            break 'segments;
        }
        let mark = format::decode_watermark(bytes).ok().flatten();
        sealed = mark.and_then(|m| m.sealed_next).map(|n| (n, path.as_str()));
        let closed = mark.is_some_and(|m| m.closed);
        let mut seq = first;
        let mut offset = SEGMENT_HEADER_BYTES;
        loop {
            let frame = format::decode_frame(bytes, offset);
            if let Frame::Whole { seq: s, payload, next } = frame {
                if s == seq {
                    match format::decode_batch(payload) {
                        Ok(batch) => {
                            let padding = &bytes[offset + format::FRAME_HEADER_BYTES + payload.len()..next];
                            if padding.iter().any(|b| *b != 0) {
                                out.report
                                    .errors
                                    .push(format!("{path} at offset {offset}: record {s}'s padding is not zeros"));
                            }
                            scan.batches.push((s, batch));
                            out.report.records += 1;
                            seq += 1;
                            offset = next;
                            continue;
                        }
                        Err(why) => {
                            // Whole by its checksum, yet undecodable: written so, never torn.
                            cut_or_fail(out, salvage, path, offset, why, &segments[index + 1..])?;
                            out.repairs.push(Repair::ZeroFrom { path: path.clone(), offset });
                            expected = Some(seq);
                            sealed = None;
                            break 'segments;
                        }
                    }
                }
            }
            let why = match frame {
                Frame::End => None,
                Frame::Bad(why) => Some(why),
                _ => Some(format!("record {seq} expected, found another")),
            };
            // A segment the log moved on from whose last records were never synced (they are at
            // or past the watermark), cut off by a power loss: the next segment was made (its
            // name is synced at once) but nothing in it can have been synced before this one was
            // sealed, and nothing in it was written back. The log ends here; what follows it
            // goes. (Whole records after the gap are damage, as anywhere else.)
            let nothing_whole_after = files[index + 1..]
                .iter()
                .all(|b| !matches!(format::decode_frame(b, SEGMENT_HEADER_BYTES), Frame::Whole { .. }));
            if why.is_none()
                && !is_last
                && segments[index + 1].0 != seq
                && seq >= durable_below
                && !closed
                && nothing_whole_after
            {
                let next_first = segments[index + 1].0;
                out.report.torn_tails.push(format!(
                    "{path} at offset {offset}: records {seq}..{next_first} were never synced (the watermark is \
                     {durable_below}): the log ends at record {seq}"
                ));
                for (_, later) in &segments[index + 1..] {
                    out.repairs.push(Repair::Remove { path: later.clone() });
                }
                expected = Some(seq);
                sealed = None;
                break 'segments;
            }
            // What ends the segment here: the end of its records (a segment the log moved on
            // from ends where the next begins, which the next one's header says), a torn write,
            // or damage.
            let damage = if why.is_none() && !is_last {
                let next_first = segments[index + 1].0;
                if whole_frame_after(bytes, offset, seq) {
                    Some("whole records follow a blank frame header".to_string())
                } else if next_first != seq {
                    Some(format!("records {seq}..{next_first} are missing: the segment ends before {seq}, the next begins at {next_first}"))
                } else {
                    None
                }
            } else if seq < durable_below {
                Some(format!(
                    "record {seq} was synced (the watermark is {durable_below}) but is {}",
                    why.as_deref().unwrap_or("a blank frame header")
                ))
            } else if whole_frame_after(bytes, offset, seq) {
                Some(format!("whole records follow {}", why.as_deref().unwrap_or("a blank frame header")))
            } else if why.is_some() && !is_last {
                Some(format!("{} in a segment the log had moved on from", why.clone().unwrap_or_default()))
            } else {
                None
            };
            if let Some(damage) = damage {
                cut_or_fail(out, salvage, path, offset, damage, &segments[index + 1..])?;
                out.repairs.push(Repair::ZeroFrom { path: path.clone(), offset });
                expected = Some(seq);
                sealed = None;
                break 'segments;
            }
            match why {
                Some(why) => {
                    out.report.torn_tails.push(format!(
                        "{path} at offset {offset}: {why} (after the watermark {durable_below}: a write cut short)"
                    ));
                    out.repairs.push(Repair::ZeroFrom { path: path.clone(), offset });
                    expected = Some(seq);
                    break 'segments;
                }
                None => {
                    // The writer leaves nothing but zeros past the last record. At the end of
                    // the log (after the watermark), bytes there are a write cut short; in a
                    // segment the log moved on from, they are damage (nothing whole is lost).
                    if let Some(at) = bytes[offset.min(bytes.len())..].iter().position(|b| *b != 0) {
                        if is_last && !closed {
                            out.report.torn_tails.push(format!(
                                "{path} at offset {offset}: a blank frame header with bytes after it, at offset {} \
                                 (after the watermark {durable_below}: a write cut short)",
                                offset + at
                            ));
                            out.repairs.push(Repair::ZeroFrom { path: path.clone(), offset });
                        } else {
                            out.report.errors.push(format!(
                                "{path} at offset {}: a byte past the last record is not zero",
                                offset + at
                            ));
                        }
                    }
                    break;
                }
            }
        }
        expected = Some(seq);
    }
    scan.next_seq = expected.unwrap_or(0);
    if let Some((next, path)) = sealed {
        // A sealed segment's successor existed, durably named, before anything in it was synced.
        let why = format!("it was sealed with records from {next} in a next segment, which is missing");
        lost_or_fail(out, salvage, path, 0, why)?;
    }
    if scan.next_seq < durable_below && out.report.salvaged.is_empty() {
        let why = format!("records {}..{durable_below} were synced and are missing", scan.next_seq);
        let path = segments.last().map_or(dir.as_str(), |(_, p)| p.as_str());
        lost_or_fail(out, salvage, path, 0, why)?;
    }
    Ok(scan)
}

/// Damage with nothing to cut (a segment missing, a watermark unreadable): an error, or with
/// salvage a note of what was lost.
fn lost_or_fail(out: &mut Recovered, salvage: bool, path: &str, offset: usize, why: String) -> Result<(), LogError> {
    if !salvage {
        return Err(LogError::Corrupt { path: path.to_string(), offset, why });
    }
    out.report.salvaged.push(format!("{path} at offset {offset}: {why}; going on without it"));
    Ok(())
}

/// A corrupt record: an error, or with salvage the log cut at it and what follows dropped.
fn cut_or_fail(
    out: &mut Recovered,
    salvage: bool,
    path: &str,
    offset: usize,
    why: String,
    later: &[(u64, String)],
) -> Result<(), LogError> {
    if !salvage {
        return Err(LogError::Corrupt { path: path.to_string(), offset, why });
    }
    out.report.salvaged.push(format!("{path} at offset {offset}: {why}; cut there"));
    for (_, p) in later.iter().filter(|(_, p)| p != path) {
        out.report.salvaged.push(format!("{p}: dropped, it follows the cut"));
        out.repairs.push(Repair::Remove { path: p.clone() });
    }
    if offset == 0 {
        out.repairs.push(Repair::Remove { path: path.to_string() });
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Entry {
    Present(EntityState, u64),
    Transit(EntityState, u64),
    Gone(u64),
}

impl Entry {
    /// Higher is newer: the commit counter, then destruction over record over departure.
    fn rank(&self) -> (u64, u8) {
        match self {
            Entry::Gone(s) => (*s, 2),
            Entry::Present(_, s) => (*s, 1),
            Entry::Transit(_, s) => (*s, 0),
        }
    }
}

/// Reads the log in `media` back into a world. With `salvage`, corruption cuts the log instead of
/// failing.
pub fn recover(media: &dyn Media, salvage: bool) -> Result<Recovered, LogError> {
    recover_planted(media, salvage, false)
}

/// `recover`, with a bug planted for the simulator to catch when `replay_first_twice`: each
/// slice's first frame with a record in it after its checkpoint is replayed again after the last.
#[doc(hidden)]
pub fn recover_planted(media: &dyn Media, salvage: bool, replay_first_twice: bool) -> Result<Recovered, LogError> {
    let mut out = Recovered::default();
    let mut scans: BTreeMap<u16, SliceScan> = BTreeMap::new();
    for name in media.list("").map_err(|source| LogError::Io { path: ".".into(), source })? {
        if let Some(slice) = name.strip_prefix("slice-").and_then(|n| n.parse::<u16>().ok()) {
            let scan = scan_slice(media, slice, salvage, &mut out)?;
            out.next_seq.insert(slice, scan.next_seq);
            out.report.segments += scan.segments;
            out.report.snapshots += scan.snapshots.len();
            scans.insert(slice, scan);
        }
    }
    if scans.values().all(|s| s.batches.is_empty() && s.snapshots.is_empty()) {
        return Ok(out);
    }
    let rounds: BTreeSet<u64> = scans.values().flat_map(|s| s.snapshots.keys().copied()).collect();
    let mut why_not = Vec::new();
    let chosen = rounds.iter().rev().find_map(|round| match complete(&scans, *round) {
        Ok(slices) => Some((*round, slices)),
        Err(why) => {
            why_not.push(format!("round {round}: {why}"));
            None
        }
    });
    // A snapshot that cannot be read is damage, said so even when an older round serves.
    for (round, snap) in scans.values().flat_map(|s| s.snapshots.iter()) {
        if let Err(e) = snap {
            out.report.errors.push(format!("round {round}: {e}"));
        }
    }
    let Some((round, slices)) = chosen else {
        // Interrupted only if some slice never promised anything: creation ends with every
        // slice's first records synced and watermarked. If all did, round 1 was complete and
        // something has damaged it since.
        if rounds.iter().all(|r| *r == 1) && !scans.values().all(|s| s.promised) {
            // The world's creation was cut short (its first checkpoint never completed, and a
            // start removes nothing before its checkpoint completes): there is no world yet.
            out.report.torn_tails.push("the world's creation was interrupted; it starts over".into());
            out.repairs.extend(out.files.iter().map(|path| Repair::Remove { path: path.clone() }));
            out.next_seq.clear();
            return Ok(out);
        }
        return Err(LogError::NoCheckpoint(why_not.join("; ")));
    };
    out.round = round;
    out.report.round = round;
    out.report.slices = slices as usize;

    let mut merged: FxHashMap<EntityId, Entry> = FxHashMap::default();
    let mut present_in = FxHashMap::<EntityId, u32>::default();
    let mut map: Option<RegionMap> = None;
    let mut ticks = Vec::new();
    for slice in 0..slices {
        let mut scan = scans.remove(&slice).expect("checked complete");
        let snap = scan.snapshots.remove(&round).expect("checked complete").expect("checked readable");
        out.incarnation_floor = out.incarnation_floor.max(snap.incarnation_floor);
        if map.as_ref().is_none_or(|m| snap.map.epoch > m.epoch) {
            map = Some(snap.map);
        }
        let mut view: FxHashMap<EntityId, Entry> = FxHashMap::default();
        view.reserve(snap.entities.len());
        for c in snap.entities {
            view.insert(c.id, Entry::Present(c.state, c.commit_seq));
        }
        let mut tick = snap.tick;
        let mut batches: Vec<(u64, Batch)> =
            scan.batches.into_iter().filter(|(seq, _)| *seq >= snap.covers_below).collect();
        if replay_first_twice {
            let first = batches.iter().find(|(_, b)| b.ops.iter().any(|op| matches!(op, LogOp::Put(_)))).cloned();
            batches.extend(first);
        }
        for (_, batch) in batches {
            tick = tick.max(batch.tick);
            for op in batch.ops {
                match op {
                    LogOp::Put(c) => {
                        view.insert(c.id, Entry::Present(c.state, c.commit_seq));
                    }
                    LogOp::Destroy { id, seq } => {
                        view.insert(id, Entry::Gone(seq));
                    }
                    LogOp::Out { entities, .. } => {
                        for c in entities {
                            view.insert(c.id, Entry::Transit(c.state, c.commit_seq));
                        }
                    }
                    LogOp::Map(m) => {
                        if map.as_ref().is_none_or(|old| m.epoch > old.epoch) {
                            map = Some(m);
                        }
                    }
                    LogOp::RoundDone { .. } => {}
                }
            }
        }
        ticks.push(tick);
        if merged.is_empty() && slices == 1 {
            merged = view;
            continue;
        }
        for (id, entry) in view {
            if let Entry::Present(state, seq) = &entry {
                *present_in.entry(id).or_default() += 1;
                // Two slices' records of one change that differ: no order of events explains it.
                if let Some(Entry::Present(other, other_seq)) = merged.get(&id) {
                    if other_seq == seq && other != state && out.report.errors.len() < 20 {
                        out.report
                            .errors
                            .push(format!("{id} is held by two slices with different states at change {seq}"));
                    }
                }
            }
            match merged.get(&id) {
                Some(old) if old.rank() >= entry.rank() => {}
                _ => {
                    merged.insert(id, entry);
                }
            }
        }
    }
    // An entity recorded by two slices is one whose transfer's departure was in the sender's
    // unsynced tail when the receiver's arrival was synced (the sender logs the departure before
    // it sends, so the receiver's record is the newer): the newest change is kept, and counted.
    out.report.duplicates = present_in.values().filter(|n| **n > 1).count();
    out.map = map;
    out.last_committed_tick = ticks.iter().copied().min().unwrap_or_default();
    out.last_tick = ticks.iter().copied().max().unwrap_or_default();
    out.report.last_committed_tick = out.last_committed_tick;

    let live: Vec<Committed> = merged
        .into_iter()
        .filter_map(|(id, entry)| match entry {
            Entry::Present(state, commit_seq) | Entry::Transit(state, commit_seq) => {
                Some(Committed { id, state, commit_seq })
            }
            Entry::Gone(_) => None,
        })
        .collect();
    out.entities = parents_first(live, &mut out.report.errors);
    out.report.entities = out.entities.len();
    out.report.items = out.entities.iter().filter(|c| matches!(c.state.kind, EntityKind::Item { .. })).count();
    out.report.players = out.entities.iter().filter(|c| c.state.kind == EntityKind::Player).count();
    // Accounts' players are made by no server: their ids' high half is no incarnation.
    let max_creator =
        out.entities.iter().filter(|c| c.id.account().is_none()).map(|c| c.id.creator_incarnation()).max().unwrap_or(0);
    out.incarnation_floor = out.incarnation_floor.max(max_creator.saturating_add(1));
    if out.incarnation_floor == crate::world::entity::ACCOUNT_INCARNATION {
        out.report.errors.push(format!("incarnation numbers run out: the next would be {}", out.incarnation_floor));
    }
    Ok(out)
}

/// Whether every slice of `round` has its snapshot and logged the round done; the slice count.
fn complete(scans: &BTreeMap<u16, SliceScan>, round: u64) -> Result<u16, String> {
    let Some(Ok(first)) = scans.get(&0).and_then(|s| s.snapshots.get(&round)) else {
        return Err("slice 0 has no readable snapshot".into());
    };
    for slice in 0..first.slices {
        let scan = scans.get(&slice).ok_or_else(|| format!("slice {slice} has no directory"))?;
        let snap = match scan.snapshots.get(&round) {
            Some(Ok(s)) => s,
            Some(Err(e)) => return Err(e.clone()),
            None => return Err(format!("slice {slice} has no snapshot")),
        };
        if snap.slices != first.slices {
            return Err(format!("slice {slice} says {} slices, slice 0 says {}", snap.slices, first.slices));
        }
        if let Some(first) = scan.batches.first().map(|(seq, _)| *seq).filter(|s| *s > snap.covers_below) {
            return Err(format!(
                "slice {slice}'s log starts after record {}: records {}..{first} are missing",
                snap.covers_below, snap.covers_below
            ));
        }
        let done = scan
            .batches
            .iter()
            .any(|(seq, b)| *seq >= snap.covers_below && b.ops.contains(&LogOp::RoundDone { round }));
        if !done {
            return Err(format!("slice {slice} did not log it complete"));
        }
    }
    Ok(first.slices)
}

/// Orders entities parents first (by depth, then id). A child whose parent is missing (or a
/// loop) becomes a root and is reported: the log never holds one unless it is damaged.
fn parents_first(mut live: Vec<Committed>, errors: &mut Vec<String>) -> Vec<Committed> {
    let index: FxHashMap<EntityId, usize> = live.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
    let mut depth = vec![usize::MAX; live.len()];
    let mut broken = Vec::new();
    for i in 0..live.len() {
        let (mut d, mut at) = (0, i);
        loop {
            if depth[at] != usize::MAX {
                d += depth[at];
                break;
            }
            match live[at].state.parent {
                None => break,
                Some(p) => match index.get(&p) {
                    Some(&pi) if d <= GRAPH_DEPTH_MAX => {
                        d += 1;
                        at = pi;
                    }
                    _ => {
                        broken.push(at);
                        break;
                    }
                },
            }
        }
        if broken.last() != Some(&at) {
            depth[i] = d;
        }
    }
    if !broken.is_empty() {
        broken.sort_unstable();
        broken.dedup();
        for &b in &broken {
            if errors.len() < 20 {
                let (id, parent) = (live[b].id, live[b].state.parent);
                errors.push(format!("{id}: its parent {parent:?} is not in the log; kept as a root"));
            }
            live[b].state.parent = None;
        }
        return parents_first(live, errors);
    }
    let mut order: Vec<(usize, EntityId, usize)> = live.iter().enumerate().map(|(i, c)| (depth[i], c.id, i)).collect();
    order.sort_unstable();
    let mut slots: Vec<Option<Committed>> = live.into_iter().map(Some).collect();
    order.into_iter().map(|(_, _, i)| slots[i].take().expect("each once")).collect()
}

/// One slice's log as read, for `log inspect`: its frames and snapshots, damaged parts noted
/// rather than fatal.
pub struct SliceContents {
    pub slice: u16,
    pub batches: Vec<(u64, Batch)>,
    pub snapshots: Vec<(u64, Result<SnapshotFile, String>)>,
    pub notes: Vec<String>,
}

pub fn read_slices(media: &dyn Media) -> Result<Vec<SliceContents>, LogError> {
    let mut out = Vec::new();
    for name in media.list("").map_err(|source| LogError::Io { path: ".".into(), source })? {
        if let Some(slice) = name.strip_prefix("slice-").and_then(|n| n.parse::<u16>().ok()) {
            let mut rec = Recovered::default();
            let scan = scan_slice(media, slice, true, &mut rec)?;
            let mut notes = rec.report.torn_tails;
            notes.extend(rec.report.salvaged);
            out.push(SliceContents {
                slice,
                batches: scan.batches,
                snapshots: scan.snapshots.into_iter().collect(),
                notes,
            });
        }
    }
    Ok(out)
}
