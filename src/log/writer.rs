//! Writing one slice's log: frames appended into a memory-mapped segment on the shard's thread,
//! made durable by a flusher thread, so the tick never waits for the disk.
//!
//! Durability is `msync` of the written range on the slice's own flusher thread. The shard's
//! writes are plain stores into the mapping (the page cache), which already survive the process
//! being killed; `msync` is what makes them survive the machine going down. It runs on a thread
//! of its own because it blocks for the device's write latency, which a 33 ms tick cannot absorb,
//! and the shard's executor must not block. glommio's io_uring ring would take an `fdatasync`
//! too, but the mapping needs `msync` to be the call that writes it, and a plain thread keeps the
//! memory budget of the executors' io_uring rings (locked memory) for sockets.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use hdrhistogram::Histogram;

use super::format::{self, Batch, SnapshotFile, Watermark, SEGMENT_HEADER_BYTES};
use super::media::{Media, Segment};
use super::recover::{segment_path, snapshot_path};
use super::LogError;
pub use crate::limits::{PREFAULT_AHEAD_BYTES, SEGMENT_BYTES};
use crate::limits::{PREFAULT_GAP_BYTES, PREFAULT_STEP_BYTES};
use crate::world::Tick;

/// When committed ticks are made durable, and what each mode can lose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every tick's group commit is synced before the tick counts as durable. A power loss loses
    /// only ticks whose sync had not finished (the last one or two).
    EveryTick,
    /// Synced every so often: a power loss loses up to that much.
    Interval(Duration),
    /// Never synced while running (the kernel writes back in its own time, within about 30 s);
    /// a kill of the process loses nothing written, a power loss can lose everything since the
    /// kernel last wrote back. Closing still syncs.
    Off,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tick" => Ok(Durability::EveryTick),
            "off" | "none" => Ok(Durability::Off),
            ms => ms
                .strip_suffix("ms")
                .and_then(|n| n.parse::<u64>().ok())
                .map(|n| Durability::Interval(Duration::from_millis(n)))
                .ok_or_else(|| format!("durability `{s}`: one of tick, off, or a period like 100ms")),
        }
    }
}

/// What the flusher reports back; read by the shard and the status line.
#[derive(Default)]
pub struct FlushState {
    /// The newest tick whose group commit is durable (per the mode).
    pub durable_tick: AtomicU64,
    /// The newest checkpoint round whose snapshot is stored.
    pub stored_round: AtomicU64,
    pub synced_bytes: AtomicU64,
    /// The first I/O error the flusher met.
    pub error: Mutex<Option<String>>,
    /// Time from a tick's write to its durability, in microseconds.
    pub commit_latency_us: Mutex<Option<Histogram<u64>>>,
    /// The next segment, created and prefaulted by the flusher while the active one fills, under
    /// a temporary name until the writer rolls over to it.
    prepared: Mutex<Option<Prepared>>,
}

impl FlushState {
    /// The newest tick whose group commit is durable.
    pub fn durable(&self) -> Tick {
        Tick(self.durable_tick.load(Ordering::Acquire))
    }
}

struct Prepared {
    path: String,
    segment: Arc<dyn Segment>,
}

enum FlushMsg {
    Written {
        segment: Arc<dyn Segment>,
        /// The segment's first sequence number (its header's), and the sequence number after the
        /// last frame below `end`.
        first_seq: u64,
        seq_end: u64,
        end: usize,
        /// The tick whose group commit this is; `None` for a segment's last write at a rollover.
        tick: Option<Tick>,
        at: Instant,
    },
    Snapshot {
        path: String,
        snapshot: Box<SnapshotFile>,
    },
    Remove(Vec<String>),
    /// A prepared segment took its final name: make the name durable before anything in it.
    Renamed(String),
    /// Sync (and watermark) everything written so far now, whatever the mode; answer whether it
    /// worked.
    SyncNow(Sender<bool>),
}

/// One slice's log writer.
pub struct SliceLog {
    media: Arc<dyn Media>,
    slice: u16,
    segment_bytes: usize,
    active: Arc<dyn Segment>,
    offset: usize,
    next_seq: u64,
    /// First sequence number and path of each segment, oldest first.
    segments: Vec<(u64, String)>,
    /// Where each retained checkpoint round stands in this log.
    rounds: BTreeMap<u64, u64>,
    /// The serializer's buffer, kept from tick to tick.
    scratch: rkyv::util::AlignedVec,
    tx: Option<Sender<FlushMsg>>,
    flusher: Option<JoinHandle<()>>,
    pub state: Arc<FlushState>,
    pub bytes_appended: u64,
    /// Segment roll-overs, and those that took a segment the flusher had prepared.
    pub rolls: u64,
    pub rolls_prepared: u64,
}

impl SliceLog {
    /// A log for `slice` continuing at `next_seq` in a new segment, whose round `round` stands at
    /// `next_seq` (the snapshot for it is already stored).
    pub fn create(
        media: Arc<dyn Media>,
        slice: u16,
        next_seq: u64,
        round: u64,
        durability: Durability,
        segment_bytes: usize,
    ) -> Result<Self, LogError> {
        let path = segment_path(slice, next_seq);
        let active = new_segment(&*media, &path, slice, next_seq, segment_bytes)?;
        let state = Arc::new(FlushState::default());
        *state.commit_latency_us.lock().expect("not poisoned") =
            Some(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"));
        state.stored_round.store(round, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(1024);
        let flusher = {
            let (media, state) = (media.clone(), state.clone());
            std::thread::Builder::new()
                .name(format!("log-flush-{slice}"))
                .spawn(move || flush_loop(rx, &*media, &state, durability, (slice, next_seq, segment_bytes)))
                .map_err(|source| LogError::Io { path: "flusher thread".into(), source })?
        };
        Ok(Self {
            media,
            slice,
            segment_bytes,
            active,
            offset: SEGMENT_HEADER_BYTES,
            next_seq,
            segments: vec![(next_seq, path)],
            rounds: [(round, next_seq)].into(),
            scratch: rkyv::util::AlignedVec::new(),
            tx: Some(tx),
            flusher: Some(flusher),
            state,
            bytes_appended: 0,
            rolls: 0,
            rolls_prepared: 0,
        })
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends one group commit. It is in the page cache when this returns; `commit` hands it to
    /// the flusher.
    pub fn append(&mut self, batch: &Batch) -> Result<(), LogError> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let buf = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(batch, buf).expect("log batches serialize");
        let result = self.append_payload(&buf);
        self.scratch = buf;
        result
    }

    /// Writes the frame straight into the mapping: header, then payload. The segment is zeros
    /// past what was written, so the padding is already there.
    fn append_payload(&mut self, payload: &[u8]) -> Result<(), LogError> {
        let frame_len = format::FRAME_HEADER_BYTES + format::align(payload.len());
        if self.offset + frame_len > self.active.len() {
            self.roll(frame_len)?;
        }
        let path = &self.segments.last().expect("one segment at least").1;
        let io = |source| LogError::Io { path: path.clone(), source };
        self.active.write(self.offset, &format::frame_header(self.next_seq, payload)).map_err(io)?;
        self.active.write(self.offset + format::FRAME_HEADER_BYTES, payload).map_err(io)?;
        self.offset += frame_len;
        self.next_seq += 1;
        self.bytes_appended += frame_len as u64;
        Ok(())
    }

    /// The tick's appends are all in: let the flusher make them durable.
    pub fn commit(&mut self, tick: Tick) -> Result<(), LogError> {
        self.check_flusher()?;
        let first_seq = self.segments.last().expect("one segment at least").0;
        let msg = FlushMsg::Written {
            segment: self.active.clone(),
            first_seq,
            seq_end: self.next_seq,
            end: self.offset,
            tick: Some(tick),
            at: Instant::now(),
        };
        self.send(msg)
    }

    fn send(&mut self, msg: FlushMsg) -> Result<(), LogError> {
        let tx = self.tx.as_ref().expect("open");
        // A full queue means the disk is behind: the tick waits here rather than queue without
        // bound (1,024 ticks is half a minute of ticks behind).
        tx.send(msg).map_err(|_| LogError::Io {
            path: format!("slice-{} flusher", self.slice),
            source: std::io::Error::other("the flusher thread stopped"),
        })
    }

    fn check_flusher(&self) -> Result<(), LogError> {
        match &*self.state.error.lock().expect("not poisoned") {
            Some(e) => {
                Err(LogError::Io { path: format!("slice-{}", self.slice), source: std::io::Error::other(e.clone()) })
            }
            None => Ok(()),
        }
    }

    fn roll(&mut self, frame_len: usize) -> Result<(), LogError> {
        let path = segment_path(self.slice, self.next_seq);
        let len = self.segment_bytes.max(SEGMENT_HEADER_BYTES + frame_len);
        let prepared = self.state.prepared.lock().expect("not poisoned").take();
        let segment = match prepared {
            // The usual case: the flusher made the segment ready; it only needs its name and
            // header. The flusher syncs the name before anything written in it.
            Some(p) if p.segment.len() >= len => {
                let io = |source| LogError::Io { path: path.clone(), source };
                self.media.rename(&p.path, &path).map_err(io)?;
                p.segment.write(0, &format::encode_segment_header(self.slice, self.next_seq)).map_err(io)?;
                self.send(FlushMsg::Renamed(path.clone()))?;
                self.rolls_prepared += 1;
                p.segment
            }
            other => {
                if let Some(p) = other {
                    let _ = self.media.remove(&p.path);
                }
                new_segment(&*self.media, &path, self.slice, self.next_seq, len)?
            }
        };
        self.rolls += 1;
        // The old segment's last range still goes to the flusher, which syncs it and seals it
        // before anything in the new one.
        let old = std::mem::replace(&mut self.active, segment);
        let first_seq = self.segments.last().expect("one segment at least").0;
        let (seq_end, end, at) = (self.next_seq, self.offset, Instant::now());
        self.send(FlushMsg::Written { segment: old, first_seq, seq_end, end, tick: None, at })?;
        self.segments.push((self.next_seq, path));
        self.offset = SEGMENT_HEADER_BYTES;
        Ok(())
    }

    /// The slice snapshotted for `round`: everything appended so far is before it. The flusher
    /// stores it; segments only older rounds need are reclaimed.
    pub fn checkpoint(&mut self, snapshot: SnapshotFile) -> Result<(), LogError> {
        let round = snapshot.round;
        self.rounds.insert(round, self.next_seq);
        let path = snapshot_path(self.slice, round);
        let mut snapshot = Box::new(snapshot);
        snapshot.covers_below = self.next_seq;
        self.send(FlushMsg::Snapshot { path, snapshot })?;
        // Round `round - 1` is complete everywhere (the controller starts a round only then), so
        // recovery needs at most it and this one.
        let keep_from = round.saturating_sub(1);
        let old_rounds: Vec<u64> = self.rounds.range(..keep_from).map(|(r, _)| *r).collect();
        let mut remove: Vec<String> = old_rounds.iter().map(|r| snapshot_path(self.slice, *r)).collect();
        for r in old_rounds {
            self.rounds.remove(&r);
        }
        let needed_from = self.rounds.values().copied().min().unwrap_or(self.next_seq);
        while self.segments.len() > 1 && self.segments[1].0 <= needed_from {
            remove.push(self.segments.remove(0).1);
        }
        if !remove.is_empty() {
            self.send(FlushMsg::Remove(remove))?;
        }
        Ok(())
    }

    /// Syncs what is written on this thread, now (start-up, before anything else runs).
    /// The flusher does it (it alone writes watermarks), and this waits for it.
    pub fn sync_now(&mut self) -> Result<(), LogError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(FlushMsg::SyncNow(tx))?;
        match rx.recv() {
            Ok(true) => Ok(()),
            _ => {
                self.check_flusher()?;
                Err(LogError::Io {
                    path: format!("slice-{} flusher", self.slice),
                    source: std::io::Error::other("the flusher thread stopped"),
                })
            }
        }
    }

    /// Syncs everything and stops the flusher.
    pub fn close(mut self) -> Result<(), LogError> {
        self.shutdown();
        self.check_flusher()
    }

    fn shutdown(&mut self) {
        drop(self.tx.take());
        if let Some(f) = self.flusher.take() {
            let _ = f.join();
        }
        if let Some(p) = self.state.prepared.lock().expect("not poisoned").take() {
            let _ = self.media.remove(&p.path);
        }
    }

    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Whether the flusher has the next segment ready for the roll-over.
    pub fn next_segment_ready(&self) -> bool {
        self.state.prepared.lock().expect("not poisoned").is_some()
    }
}

impl Drop for SliceLog {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Writes `mark` into the header of `segment` (slice `slice`, first frame `first_seq`): into the
/// page cache; durable once the header's page is synced.
fn write_watermark(segment: &dyn Segment, slice: u16, first_seq: u64, mark: Watermark) -> std::io::Result<()> {
    let header = format::encode_segment_header(slice, first_seq);
    segment.write(format::WATERMARK_AT, &format::encode_watermark(&header, mark))
}

fn new_segment(
    media: &dyn Media,
    path: &str,
    slice: u16,
    first_seq: u64,
    len: usize,
) -> Result<Arc<dyn Segment>, LogError> {
    let io = |source| LogError::Io { path: path.to_string(), source };
    let segment = media.create_segment(path, len).map_err(io)?;
    segment.write(0, &format::encode_segment_header(slice, first_seq)).map_err(io)?;
    Ok(segment)
}

/// Where the flusher prepares slice `slice`'s `n`th next segment for a writer that started at
/// sequence number `run`: unlike any name an earlier run left behind, which the start-up clears.
fn prepared_path(slice: u16, run: u64, n: u64) -> String {
    format!("slice-{slice}/prepared-{run:016}-{n}.tmp")
}

/// The flusher: syncs written ranges per the mode, stores snapshots, removes reclaimed files,
/// and prepares the next segment (`(slice, first sequence number of the run, segment_bytes)`)
/// once the active one is half full.
fn flush_loop(
    rx: Receiver<FlushMsg>,
    media: &dyn Media,
    state: &FlushState,
    durability: Durability,
    (slice, run, segment_bytes): (u16, u64, usize),
) {
    struct Pending {
        segment: Arc<dyn Segment>,
        first_seq: u64,
        synced: usize,
        end: usize,
        /// The sequence number after the last frame below `end`.
        seq_end: u64,
        /// The header holds a watermark not yet synced.
        header_dirty: bool,
        /// Pages before this are ready for the writer.
        prefaulted: usize,
    }
    let mut current: Option<Pending> = None;
    let mut older: Vec<Pending> = Vec::new();
    let mut latest_tick = Tick::ZERO;
    let mut waiting: Vec<(Tick, Instant)> = Vec::new();
    let period = match durability {
        Durability::Interval(d) => Some(d),
        _ => None,
    };
    let mut next_sync = Instant::now() + period.unwrap_or_default();
    let mut prepared_count = 0u64;
    // The active segment a next one was prepared for (compared by address only).
    let mut prepared_after: Option<*const ()> = None;
    let fail = |e: String| {
        let mut err = state.error.lock().expect("not poisoned");
        if err.is_none() {
            *err = Some(e);
        }
    };
    // Syncs what was written: each segment rolled away first, whole, and then sealed (its
    // watermark, durable, says every frame in it is and that the next segment exists); then the
    // active one, after which its header gets the new watermark, made durable by the next sync.
    // False if any sync failed: nothing more is durable then, and the error is kept.
    let sync_all = |current: &mut Option<Pending>, older: &mut Vec<Pending>| -> bool {
        let sync = |p: &mut Pending| -> std::io::Result<()> {
            let from = if p.header_dirty { 0 } else { p.synced };
            if p.end > from {
                p.segment.sync(from, p.end)?;
                state.synced_bytes.fetch_add((p.end - p.synced) as u64, Ordering::Relaxed);
                p.synced = p.end;
                p.header_dirty = false;
            }
            Ok(())
        };
        for p in older.iter_mut() {
            let sealed = Watermark { durable_below: p.seq_end, sealed_next: Some(p.seq_end), closed: false };
            let result = sync(p)
                .and_then(|()| write_watermark(&*p.segment, slice, p.first_seq, sealed))
                .and_then(|()| p.segment.sync(0, SEGMENT_HEADER_BYTES));
            if let Err(e) = result {
                fail(format!("msync: {e}"));
                return false;
            }
        }
        older.clear();
        if let Some(p) = current {
            let before = p.synced;
            if let Err(e) = sync(p) {
                fail(format!("msync: {e}"));
                return false;
            }
            if p.synced > before {
                let mark = Watermark { durable_below: p.seq_end, sealed_next: None, closed: false };
                if let Err(e) = write_watermark(&*p.segment, slice, p.first_seq, mark) {
                    fail(format!("watermark: {e}"));
                    return false;
                }
                p.header_dirty = true;
            }
        }
        true
    };
    let mut open = true;
    let mut replies: Vec<Sender<bool>> = Vec::new();
    while open {
        let first = match period {
            Some(_) => match rx.recv_timeout(next_sync.saturating_duration_since(Instant::now())) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    None
                }
            },
            None => match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => {
                    open = false;
                    None
                }
            },
        };
        // Take everything queued: one sync covers all the ticks written meanwhile (group commit).
        for msg in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match msg {
                FlushMsg::Written { segment, first_seq, seq_end, end, tick, at } => {
                    match &mut current {
                        Some(p) if Arc::ptr_eq(&p.segment, &segment) => {
                            p.end = p.end.max(end);
                            p.seq_end = p.seq_end.max(seq_end);
                        }
                        _ => {
                            if let Some(old) = current.take() {
                                older.push(old);
                            }
                            current = Some(Pending {
                                segment,
                                first_seq,
                                synced: 0,
                                end,
                                seq_end,
                                header_dirty: false,
                                prefaulted: 0,
                            });
                        }
                    }
                    if let Some(tick) = tick {
                        latest_tick = latest_tick.max(tick);
                        waiting.push((tick, at));
                    }
                }
                FlushMsg::Snapshot { path, snapshot } => {
                    let bytes = format::encode_snapshot(&snapshot);
                    match media.put_atomic(&path, &bytes) {
                        Ok(()) => state.stored_round.fetch_max(snapshot.round, Ordering::Release),
                        Err(e) => {
                            fail(format!("{path}: {e}"));
                            0
                        }
                    };
                }
                FlushMsg::Remove(paths) => {
                    for p in paths {
                        if let Err(e) = media.remove(&p) {
                            fail(format!("{p}: {e}"));
                        }
                    }
                }
                FlushMsg::Renamed(path) => {
                    if let Err(e) = media.sync_entry(&path) {
                        fail(format!("{path}: {e}"));
                    }
                }
                FlushMsg::SyncNow(reply) => replies.push(reply),
            }
        }
        let forced = !replies.is_empty();
        let due = forced
            || match durability {
                Durability::EveryTick => true,
                Durability::Interval(_) => Instant::now() >= next_sync || !open,
                Durability::Off => !open,
            };
        // A failed sync stops durability for good: the error is kept (the writer's next commit
        // fails with it) and no tick after it is ever counted durable.
        let mut synced = state.error.lock().expect("not poisoned").is_none();
        if due && synced {
            synced = sync_all(&mut current, &mut older);
            if synced && (!open || forced) {
                // The watermark, durable now: a clean stop (closed: nothing follows) or a sync
                // asked for promises everything written.
                if let Some(p) = current.as_mut() {
                    let mark = Watermark { durable_below: p.seq_end, sealed_next: None, closed: !open };
                    let result = write_watermark(&*p.segment, slice, p.first_seq, mark)
                        .and_then(|()| p.segment.sync(0, SEGMENT_HEADER_BYTES));
                    if let Err(e) = result {
                        fail(format!("msync: {e}"));
                        synced = false;
                    }
                }
            }
            if let Some(p) = period {
                next_sync = Instant::now() + p;
            }
        }
        if durability == Durability::Off && open {
            // `Off` promises nothing before the close: a segment rolled away is neither synced
            // nor sealed (the kernel writes it back in its own time).
            older.clear();
        }
        if synced && (due || durability == Durability::Off) {
            let now = Instant::now();
            if let Some(h) = state.commit_latency_us.lock().expect("not poisoned").as_mut() {
                for (_, at) in waiting.drain(..) {
                    h.saturating_record((now - at).as_micros().max(1) as u64);
                }
            }
            state.durable_tick.fetch_max(latest_tick.get(), Ordering::Release);
        }
        // Answered only now, so a writer that asked for a sync reads the durable tick it made
        // (the simulator found one reading the tick before, a race that changed a replay).
        for reply in replies.drain(..) {
            let _ = reply.send(synced);
        }
        // Durability first, then the pages the writer will need next, off its thread. A failed
        // prefault (an old kernel) only leaves the faults to the writer.
        if let Some(p) = &mut current {
            // At most a step a pass, so a sync due next never waits long behind it; never on the
            // pages the writer is about to store into.
            let from = p.prefaulted.max(p.end + PREFAULT_GAP_BYTES);
            let want = (p.end + PREFAULT_AHEAD_BYTES).min(p.segment.len()).min(from + PREFAULT_STEP_BYTES);
            if want > from {
                let _ = p.segment.prefault(from, want);
                p.prefaulted = want;
            }
            // Half full: get the next segment ready, so rolling over is a rename on the writer's
            // thread instead of creating, reserving and mapping 64 MiB. A failure here (a full
            // disk) is left for the writer's own attempt to report.
            let active = Arc::as_ptr(&p.segment) as *const ();
            if p.end > p.segment.len() / 2 && prepared_after != Some(active) && open {
                prepared_after = Some(active);
                prepared_count += 1;
                let path = prepared_path(slice, run, prepared_count);
                if let Ok(segment) = media.create_segment(&path, segment_bytes) {
                    let _ = segment.prefault(0, PREFAULT_STEP_BYTES.min(segment_bytes));
                    let mut slot = state.prepared.lock().expect("not poisoned");
                    match slot.as_ref() {
                        None => *slot = Some(Prepared { path, segment }),
                        Some(_) => {
                            drop(slot);
                            let _ = media.remove(&path);
                        }
                    }
                }
            }
        }
    }
}
