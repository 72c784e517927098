//! The replication log: the replication layer's memory across restarts.
//!
//! Each slice has a directory of memory-mapped segment files, one checksummed frame per tick
//! (the tick's group commit), and a snapshot file per checkpoint round. A process that starts on
//! a log directory reads it back ([`recover`]), writes a fresh checkpoint of what it found, and
//! clears the older files away; so a crash during start-up leaves the old files, and a crash
//! after leaves the new.

pub mod format;
pub mod media;
pub mod recover;
pub mod writer;

use std::sync::Arc;

pub use format::{Batch, LogOp, SnapshotFile};
pub use media::{CrashImage, Disk, Media};
pub use recover::{recover, Recovered, Repair, Report};
pub use writer::{Durability, SliceLog, SEGMENT_BYTES};

use crate::protocol::Committed;
use crate::world::{RegionMap, Tick};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(
        "corrupt log record in {path} at offset {offset}: {why} (start with salvage to cut the log there, losing what follows)"
    )]
    Corrupt { path: String, offset: usize, why: String },
    #[error("the log has no complete checkpoint: {0}")]
    NoCheckpoint(String),
}

#[derive(Clone, Debug)]
pub struct OpenOptions {
    pub slices: u16,
    pub durability: Durability,
    pub segment_bytes: usize,
    pub salvage: bool,
    /// A planted recovery bug, for the simulator to catch (see `recover_planted`).
    #[doc(hidden)]
    pub planted_replay_twice: bool,
}

/// A log directory opened for a run: the world it holds and a writer per slice.
pub struct Opened {
    /// Whether the world was created now (the directory held no log).
    pub created: bool,
    pub round: u64,
    /// The world, parents first; all on slice 0, which places it.
    pub entities: Vec<Committed>,
    pub map: RegionMap,
    /// The first tick this run commits.
    pub start_tick: Tick,
    pub incarnation_floor: u32,
    pub logs: Vec<SliceLog>,
    /// What reading the log found.
    pub report: Report,
}

/// Opens the log in `media`: reads it back (or, if it is empty, takes the world `create` makes),
/// then checkpoints that world as a new round and removes every older file.
pub fn open(
    media: Arc<dyn Media>,
    opts: &OpenOptions,
    create: impl FnOnce() -> (RegionMap, Vec<Committed>),
) -> Result<Opened, LogError> {
    let rec = recover::recover_planted(&*media, opts.salvage, opts.planted_replay_twice)?;
    for repair in &rec.repairs {
        let (path, result) = match repair {
            Repair::ZeroFrom { path, offset } => (path, media.zero_from(path, *offset)),
            Repair::Remove { path } => (path, media.remove(path)),
        };
        result.map_err(|source| LogError::Io { path: path.clone(), source })?;
    }
    let created = rec.round == 0;
    let (map, entities, last_tick) = if created {
        let (map, entities) = create();
        (map, entities, Tick::ZERO)
    } else {
        let map = rec.map.clone().ok_or_else(|| LogError::NoCheckpoint("no region map".into()))?;
        (map, rec.entities.clone(), rec.last_tick)
    };
    let round = rec.round + 1;
    let floor = rec.incarnation_floor.max(1);
    let io = |path: String| move |source| LogError::Io { path, source };
    let mut report = rec.report.clone();
    if created {
        report.entities = entities.len();
        report.items = entities.iter().filter(|c| c.state.kind.is_item()).count();
        report.players = entities.iter().filter(|c| c.state.kind == crate::world::EntityKind::Player).count();
    }
    // The new round: every slice's snapshot first, then each slice's log saying it is complete.
    for slice in 0..opts.slices {
        let snapshot = SnapshotFile {
            round,
            slice,
            slices: opts.slices,
            covers_below: rec.next_seq.get(&slice).copied().unwrap_or(0),
            tick: last_tick,
            incarnation_floor: floor,
            map: map.clone(),
            entities: if slice == 0 { entities.clone() } else { Vec::new() },
        };
        let path = recover::snapshot_path(slice, round);
        media.put_atomic(&path, &format::encode_snapshot(&snapshot)).map_err(io(path))?;
    }
    let mut logs = Vec::new();
    let mut keep = Vec::new();
    for slice in 0..opts.slices {
        let next_seq = rec.next_seq.get(&slice).copied().unwrap_or(0);
        let mut log = SliceLog::create(media.clone(), slice, next_seq, round, opts.durability, opts.segment_bytes)?;
        log.append(&Batch { tick: last_tick, ops: vec![LogOp::RoundDone { round }] })?;
        log.commit(last_tick)?;
        keep.push(recover::snapshot_path(slice, round));
        keep.push(recover::segment_path(slice, next_seq));
        logs.push(log);
    }
    // Durable before the old files go: a crash from here on recovers this round.
    for log in &mut logs {
        log.sync_now()?;
    }
    for path in rec.files.iter().filter(|p| !keep.contains(p)) {
        media.remove(path).map_err(io(path.clone()))?;
    }
    for name in media.list("").map_err(io(".".into()))? {
        let stale = name.strip_prefix("slice-").and_then(|n| n.parse::<u16>().ok()).is_some_and(|s| s >= opts.slices);
        if stale {
            media.remove(&name).map_err(io(name.clone()))?;
        }
    }
    Ok(Opened { created, round, entities, map, start_tick: last_tick.next(), incarnation_floor: floor, logs, report })
}

/// Reads a log directory and says what it holds and whether it is whole.
pub fn verify(media: &dyn Media) -> Report {
    match recover(media, false) {
        Ok(rec) => rec.report,
        Err(e) => Report { errors: vec![e.to_string()], ..Report::default() },
    }
}

/// Prints a log directory readably: each slice's snapshots, then every record.
pub fn inspect(media: &dyn Media, out: &mut dyn std::io::Write) -> Result<(), LogError> {
    let io = |source| LogError::Io { path: "output".into(), source };
    for slice in recover::read_slices(media)? {
        writeln!(out, "slice {}", slice.slice).map_err(io)?;
        for note in &slice.notes {
            writeln!(out, "  note: {note}").map_err(io)?;
        }
        for (round, snap) in &slice.snapshots {
            match snap {
                Ok(s) => writeln!(
                    out,
                    "  snapshot round {round}: {} entities, tick {}, covers records below {}, {} slices, map epoch {}",
                    s.entities.len(),
                    s.tick,
                    s.covers_below,
                    s.slices,
                    s.map.epoch
                ),
                Err(e) => writeln!(out, "  snapshot round {round}: unreadable: {e}"),
            }
            .map_err(io)?;
        }
        for (seq, batch) in &slice.batches {
            writeln!(out, "  record {seq} tick {}: {} ops", batch.tick, batch.ops.len()).map_err(io)?;
            for op in &batch.ops {
                let line = match op {
                    LogOp::Put(c) => {
                        let p = c.state.position;
                        format!(
                            "put {} {:?} at ({:.1}, {:.1}, {:.1}) in {:?} commit {}",
                            c.id, c.state.kind, p[0], p[1], p[2], c.state.parent, c.commit_seq
                        )
                    }
                    LogOp::Destroy { id, seq } => format!("destroy {id} commit {seq}"),
                    LogOp::Out { to, entities } => {
                        format!(
                            "out to slice {to}: {} entities, root {:?}",
                            entities.len(),
                            entities.first().map(|c| c.id)
                        )
                    }
                    LogOp::Map(m) => format!("map epoch {}, {} regions", m.epoch, m.regions().len()),
                    LogOp::RoundDone { round } => format!("checkpoint round {round} complete"),
                };
                writeln!(out, "    {line}").map_err(io)?;
            }
        }
    }
    Ok(())
}
