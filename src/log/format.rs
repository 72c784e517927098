//! The bytes of the replication log: segment headers, record frames, snapshot files.
//!
//! A segment file is a 64-byte header followed by frames, 16-byte aligned, up to its
//! preallocated length; the unwritten rest is zeros. The header is
//!
//! ```text
//! 0   [u8; 8]  magic "SMLOGSEG"
//! 8   u32      format version
//! 12  u16      slice
//! 14  [u8; 2]  zero
//! 16  u64      sequence number of the segment's first frame
//! 24  u32      CRC32C of bytes 0..24
//! 28  [u8; 4]  zero
//! 32  u64      watermark: every frame below this sequence number was synced (durable)
//! 40  u64      the next segment's first sequence number, once sealed
//! 48  u8       bit 0: sealed (every frame synced, and the next segment exists); bit 1: closed
//!              (a clean stop: every frame synced, and nothing follows the last)
//! 49  [u8; 3]  zero
//! 52  u32      CRC32C of bytes 0..24 and 32..52 (zero with 32..52 before the first watermark)
//! 56  [u8; 8]  zero
//! ```
//!
//! The flusher writes the watermark only after the frames below it were synced, so a watermark
//! that reached the disk proves those frames did: a damaged or missing frame below it is
//! corruption, never a torn write. A frame is
//!
//! ```text
//! 0   u32  payload length
//! 4   u32  CRC32C of (length, sequence number, payload)
//! 8   u64  sequence number (per slice, one more than the frame before, across segments)
//! 16  ..   payload: an rkyv-archived `Batch`, padded with zeros to 16 bytes
//! ```
//!
//! A frame of all zeros ends the log. The checksum covers the length and sequence number, so a
//! torn or shifted frame is never taken for a whole one, and the payload is validated by rkyv's
//! checker before anything reads it. A snapshot file is a 32-byte header (magic, version, CRC32C,
//! length) followed by an rkyv-archived `SnapshotFile`.

pub use crate::limits::FRAME_PAYLOAD_MAX;
use crate::protocol::Committed;
use crate::world::{EntityId, RegionMap, Tick};

pub const SEGMENT_MAGIC: &[u8; 8] = b"SMLOGSEG";
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"SMSNAPSH";
pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 64;
pub const FRAME_HEADER_BYTES: usize = 16;
pub const FRAME_ALIGN: usize = 16;
pub const SNAPSHOT_HEADER_BYTES: usize = 32;

/// Where the watermark lies in a segment header, and its bytes (checksum included).
pub const WATERMARK_AT: usize = 32;
pub const WATERMARK_BYTES: usize = 24;

/// What a segment header says was synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermark {
    /// Every frame below this sequence number (in this segment and before it) is durable.
    pub durable_below: u64,
    /// Set once the segment is sealed: every frame in it is durable, and the next segment
    /// (starting at this sequence number) exists.
    pub sealed_next: Option<u64>,
    /// Written by a clean stop: nothing follows the last frame, so bytes past it are damage,
    /// never a write cut short.
    pub closed: bool,
}

/// The watermark bytes (`WATERMARK_AT..WATERMARK_AT + WATERMARK_BYTES`) for a segment whose
/// header begins with `header` (its first 24 bytes are covered by the checksum too).
pub fn encode_watermark(header: &[u8], mark: Watermark) -> [u8; WATERMARK_BYTES] {
    let mut w = [0u8; WATERMARK_BYTES];
    w[0..8].copy_from_slice(&mark.durable_below.to_le_bytes());
    w[8..16].copy_from_slice(&mark.sealed_next.unwrap_or(0).to_le_bytes());
    w[16] = mark.sealed_next.is_some() as u8 | (mark.closed as u8) << 1;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[0..24]), &w[0..20]);
    w[20..24].copy_from_slice(&crc.to_le_bytes());
    w
}

/// The watermark a segment header holds: `None` before the first one was written (all zeros),
/// an error if its bytes are neither.
pub fn decode_watermark(header: &[u8]) -> Result<Option<Watermark>, String> {
    let w = header.get(WATERMARK_AT..WATERMARK_AT + WATERMARK_BYTES).ok_or("segment header cut short")?;
    if w.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[0..24]), &w[0..20]);
    if u32::from_le_bytes(w[20..24].try_into().expect("4 bytes")) != crc {
        return Err("segment watermark checksum mismatch".into());
    }
    if w[16] > 3 || w[17..20] != [0, 0, 0] {
        return Err("segment watermark flags are not ones the writer sets".into());
    }
    let u64_at = |i: usize| u64::from_le_bytes(w[i..i + 8].try_into().expect("8 bytes"));
    Ok(Some(Watermark {
        durable_below: u64_at(0),
        sealed_next: (w[16] & 1 == 1).then(|| u64_at(8)),
        closed: w[16] & 2 == 2,
    }))
}

/// Bytes of a segment header the writer always leaves zero.
pub fn header_reserved_is_zero(header: &[u8]) -> bool {
    header.len() >= SEGMENT_HEADER_BYTES
        && header[14..16] == [0, 0]
        && header[28..32] == [0; 4]
        && header[WATERMARK_AT + WATERMARK_BYTES..SEGMENT_HEADER_BYTES].iter().all(|b| *b == 0)
}

/// One change in a slice's history.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum LogOp {
    /// The entity's committed state and commit counter.
    Put(Committed),
    /// The entity is gone; `seq` is past its last commit.
    Destroy { id: EntityId, seq: u64 },
    /// A subtree left for slice `to`: still here as far as recovery knows, unless `to`'s log has
    /// it at the same or a later commit.
    Out { to: u16, entities: Vec<Committed> },
    /// The region map changed.
    Map(RegionMap),
    /// This slice's part of checkpoint `round` is complete.
    RoundDone { round: u64 },
}

/// One group commit: a slice's changes in one tick.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Batch {
    pub tick: Tick,
    pub ops: Vec<LogOp>,
}

/// One slice's records at a checkpoint, with where in its log the checkpoint stands.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SnapshotFile {
    pub round: u64,
    pub slice: u16,
    pub slices: u16,
    /// The first log sequence number the snapshot does not cover: recovery replays from here.
    pub covers_below: u64,
    pub tick: Tick,
    /// Server incarnations below this may have created entities: a new process starts above.
    pub incarnation_floor: u32,
    pub map: RegionMap,
    /// Parents before children.
    pub entities: Vec<Committed>,
}

pub fn align(n: usize) -> usize {
    n.div_ceil(FRAME_ALIGN) * FRAME_ALIGN
}

fn frame_crc(len: u32, seq: u64, payload: &[u8]) -> u32 {
    let c = crc32c::crc32c(&len.to_le_bytes());
    let c = crc32c::crc32c_append(c, &seq.to_le_bytes());
    crc32c::crc32c_append(c, payload)
}

/// The header of the frame for `payload` at `seq`.
pub fn frame_header(seq: u64, payload: &[u8]) -> [u8; FRAME_HEADER_BYTES] {
    let len = u32::try_from(payload.len()).expect("a frame payload fits in u32");
    let mut h = [0u8; FRAME_HEADER_BYTES];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&frame_crc(len, seq, payload).to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h
}

/// Appends a frame for `payload` at `seq` to `out`, padded to the frame alignment.
pub fn encode_frame(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&frame_header(seq, payload));
    out.extend_from_slice(payload);
    out.resize(out.len() + align(payload.len()) - payload.len(), 0);
}

pub fn encode_segment_header(slice: u16, first_seq: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..14].copy_from_slice(&slice.to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// `(slice, first_seq)` of a segment header, or why it is not one.
pub fn decode_segment_header(bytes: &[u8]) -> Result<(u16, u64), String> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(format!("{} bytes, shorter than a segment header", bytes.len()));
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    if &bytes[0..8] != SEGMENT_MAGIC {
        return Err("not a segment (bad magic)".into());
    }
    if u32_at(24) != crc32c::crc32c(&bytes[0..24]) {
        return Err("segment header checksum mismatch".into());
    }
    if u32_at(8) != FORMAT_VERSION {
        return Err(format!("segment format version {}, this build reads {FORMAT_VERSION}", u32_at(8)));
    }
    let slice = u16::from_le_bytes(bytes[12..14].try_into().expect("2 bytes"));
    Ok((slice, u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"))))
}

/// What is at one offset of a segment.
#[derive(Debug, PartialEq)]
pub enum Frame<'a> {
    /// A whole frame: its sequence number, payload, and the offset of the next frame.
    Whole { seq: u64, payload: &'a [u8], next: usize },
    /// Zeros: the log ends here.
    End,
    /// Not a whole frame, and why.
    Bad(String),
}

/// Reads the frame at `offset` of `segment` (a whole segment file, header included).
pub fn decode_frame(segment: &[u8], offset: usize) -> Frame<'_> {
    let rest = segment.get(offset..).unwrap_or(&[]);
    if rest.len() < FRAME_HEADER_BYTES {
        return if rest.iter().all(|b| *b == 0) { Frame::End } else { Frame::Bad("frame header cut short".into()) };
    }
    if rest[..FRAME_HEADER_BYTES].iter().all(|b| *b == 0) {
        return Frame::End;
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(rest[8..16].try_into().expect("8 bytes"));
    let body = len as usize;
    if body > FRAME_PAYLOAD_MAX || FRAME_HEADER_BYTES + body > rest.len() {
        return Frame::Bad(format!("frame length {len} runs past the end of the segment"));
    }
    let payload = &rest[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + body];
    if frame_crc(len, seq, payload) != crc {
        return Frame::Bad("frame checksum mismatch".into());
    }
    Frame::Whole { seq, payload, next: offset + FRAME_HEADER_BYTES + align(body) }
}

/// Validates and decodes archived bytes, in place when they are aligned (a mapped file's frames
/// are), from an aligned copy when not.
fn decode_archived<T>(bytes: &[u8]) -> Result<T, rkyv::rancor::Error>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    if (bytes.as_ptr() as usize) % FRAME_ALIGN == 0 {
        return rkyv::from_bytes::<T, rkyv::rancor::Error>(bytes);
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rkyv::rancor::Error>(&aligned)
}

/// Validates and decodes a frame payload.
pub fn decode_batch(payload: &[u8]) -> Result<Batch, String> {
    decode_archived::<Batch>(payload).map_err(|e| format!("undecodable batch: {e}"))
}

pub fn encode_snapshot(snapshot: &SnapshotFile) -> Vec<u8> {
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(snapshot).expect("snapshots serialize");
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + payload.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.resize(SNAPSHOT_HEADER_BYTES, 0);
    out.extend_from_slice(&payload);
    out
}

pub fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotFile, String> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES || &bytes[0..8] != SNAPSHOT_MAGIC {
        return Err("not a snapshot (bad magic or too short)".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(format!("snapshot format version {version}, this build reads {FORMAT_VERSION}"));
    }
    let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    let len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let payload = &bytes[SNAPSHOT_HEADER_BYTES..];
    if payload.len() as u64 != len {
        return Err(format!("snapshot holds {} bytes, its header says {len}", payload.len()));
    }
    if crc32c::crc32c(payload) != crc {
        return Err("snapshot checksum mismatch".into());
    }
    decode_archived::<SnapshotFile>(payload).map_err(|e| format!("undecodable snapshot: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_any_flipped_bit_is_caught() {
        let mut seg = encode_segment_header(3, 40).to_vec();
        let batch = Batch { tick: Tick(7), ops: vec![LogOp::RoundDone { round: 2 }] };
        let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&batch).unwrap();
        encode_frame(40, &payload, &mut seg);
        let end = seg.len();
        seg.resize(end + 64, 0);
        assert_eq!(decode_segment_header(&seg), Ok((3, 40)));
        let Frame::Whole { seq, payload: p, next } = decode_frame(&seg, SEGMENT_HEADER_BYTES) else { panic!() };
        assert_eq!((seq, next), (40, end));
        assert_eq!(decode_batch(p).unwrap(), batch);
        assert_eq!(decode_frame(&seg, end), Frame::End);
        for byte in SEGMENT_HEADER_BYTES..end {
            for bit in 0..8 {
                let mut bad = seg.clone();
                bad[byte] ^= 1 << bit;
                match decode_frame(&bad, SEGMENT_HEADER_BYTES) {
                    Frame::Whole { .. } if byte >= SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES + payload.len() => {}
                    Frame::Whole { .. } => panic!("flipped bit {bit} of byte {byte} went unnoticed"),
                    _ => {}
                }
            }
        }
    }
}
