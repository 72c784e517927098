//! A bounded single-producer single-consumer ring of byte frames in shared memory (a memmap2
//! mapping, anonymous or backed by a file under /dev/shm), for rkyv messages between two pinned
//! cores: the producer serializes straight into the ring and the consumer reads the archive in
//! place, with no copy and no decode.
//!
//! Layout: a 192-byte header (magic, capacity, then the head and the tail each on its own cache
//! line), then `capacity` bytes of frames. A frame is a 16-byte header (payload length, magic,
//! sequence number) and its payload, padded to 16 bytes so every payload is aligned for rkyv. A
//! frame never wraps: when one does not fit before the end, a padding frame fills the end and
//! the frame starts again at offset 0.
//!
//! Invariants: `tail <= head <= tail + capacity` (positions count bytes forever; the offset is the
//! position modulo the capacity); the producer writes only in `[head, tail + capacity)` and the
//! consumer reads only in `[tail, head)`; the head is published with Release after the frames are
//! written, the tail with Release after they are read. Every frame header is checked on read
//! (magic, length, sequence), so a corrupt ring is an error, never a wild read.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use crate::limits::{RING_CAPACITY_MAX_BYTES, RING_CAPACITY_MIN_BYTES};
use memmap2::{MmapMut, MmapOptions};
use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::writer::Buffer;
use rkyv::Portable;

const RING_MAGIC: u64 = u64::from_le_bytes(*b"SHMRING1");
const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"FRM1");
const PAD_MAGIC: u32 = u32::from_le_bytes(*b"PAD1");
const HEADER_BYTES: usize = 192;
const FRAME_HEADER_BYTES: usize = 16;
const FRAME_ALIGN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("ring is full: the consumer is behind (backpressure)")]
    Full,
    #[error("a {len}-byte frame cannot fit a ring of {capacity} bytes")]
    TooLarge { len: usize, capacity: usize },
    #[error("corrupt frame at byte {offset} of the ring: {reason}")]
    Corrupt { offset: u64, reason: &'static str },
    #[error("not a ring: {0}")]
    BadHeader(String),
    #[error("frame payload is not a valid archive: {0}")]
    Invalid(String),
    #[error("ring file: {0}")]
    Io(#[from] std::io::Error),
}

#[repr(C)]
struct Header {
    magic: u64,
    capacity: u64,
    _pad0: [u8; 48],
    head: AtomicU64,
    _pad1: [u8; 56],
    tail: AtomicU64,
    _pad2: [u8; 56],
}

const _: () = assert!(std::mem::size_of::<Header>() == HEADER_BYTES);

struct Shared {
    _map: MmapMut,
    header: *const Header,
    data: *mut u8,
    capacity: usize,
}

// SAFETY: `Shared` only hands out its pointers to one `Producer` and one `Consumer`, which touch
// disjoint byte ranges of the data (see the module invariants) and synchronise through the
// atomics in the header; the mapping lives as long as any `Arc<Shared>`.
unsafe impl Send for Shared {}
// SAFETY: as above; shared access goes through atomics or disjoint ranges.
unsafe impl Sync for Shared {}

impl Shared {
    fn header(&self) -> &Header {
        // SAFETY: `header` points at the first HEADER_BYTES of the live mapping, which is page
        // aligned and initialised (by `init` or checked by `open`).
        unsafe { &*self.header }
    }
}

/// A ring in shared memory, before it is split into its two ends.
pub struct Ring {
    shared: Arc<Shared>,
}

fn check_capacity(capacity: usize) -> Result<(), RingError> {
    if !capacity.is_power_of_two() || !(RING_CAPACITY_MIN_BYTES..=RING_CAPACITY_MAX_BYTES).contains(&capacity) {
        return Err(RingError::BadHeader(format!(
            "capacity {capacity} must be a power of two between {RING_CAPACITY_MIN_BYTES} and {RING_CAPACITY_MAX_BYTES}"
        )));
    }
    Ok(())
}

impl Ring {
    /// A ring in an anonymous shared mapping, for two threads of this process.
    pub fn anonymous(capacity: usize) -> Result<Self, RingError> {
        check_capacity(capacity)?;
        let map = MmapOptions::new().len(HEADER_BYTES + capacity).map_anon()?;
        Ok(Self::init(map, capacity))
    }

    /// A ring in a new file (under /dev/shm it never touches a disk), which another process can
    /// `open`.
    pub fn create(path: &Path, capacity: usize) -> Result<Self, RingError> {
        check_capacity(capacity)?;
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        file.set_len((HEADER_BYTES + capacity) as u64)?;
        // SAFETY: the file was just created and sized by us; no one else maps it yet.
        let map = unsafe { MmapOptions::new().map_mut(&file)? };
        Ok(Self::init(map, capacity))
    }

    /// Attaches to a ring another process created. The file is untrusted: its header is checked.
    pub fn open(path: &Path) -> Result<Self, RingError> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len() as usize;
        if len < HEADER_BYTES {
            return Err(RingError::BadHeader(format!("{} is {len} bytes, shorter than a header", path.display())));
        }
        // SAFETY: the mapping is only read through the checks below and then used under the
        // ring's protocol; another process changing its size under us is outside the contract.
        let mut map = unsafe { MmapOptions::new().map_mut(&file)? };
        let header = map.as_mut_ptr() as *const Header;
        // SAFETY: the mapping is at least HEADER_BYTES long and page aligned.
        let (magic, capacity) = unsafe { ((*header).magic, (*header).capacity as usize) };
        if magic != RING_MAGIC {
            return Err(RingError::BadHeader(format!("{} has magic {magic:#x}", path.display())));
        }
        check_capacity(capacity)?;
        if len != HEADER_BYTES + capacity {
            return Err(RingError::BadHeader(format!(
                "{} is {len} bytes, its header says {capacity} + {HEADER_BYTES}",
                path.display()
            )));
        }
        let data = map.as_mut_ptr().wrapping_add(HEADER_BYTES);
        Ok(Self { shared: Arc::new(Shared { _map: map, header, data, capacity }) })
    }

    fn init(mut map: MmapMut, capacity: usize) -> Self {
        let header = map.as_mut_ptr() as *mut Header;
        // SAFETY: the mapping is HEADER_BYTES + capacity long, page aligned, and not shared yet.
        unsafe {
            header.write(Header {
                magic: RING_MAGIC,
                capacity: capacity as u64,
                _pad0: [0; 48],
                head: AtomicU64::new(0),
                _pad1: [0; 56],
                tail: AtomicU64::new(0),
                _pad2: [0; 56],
            });
        }
        let data = map.as_mut_ptr().wrapping_add(HEADER_BYTES);
        Self { shared: Arc::new(Shared { _map: map, header, data, capacity }) }
    }

    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// The two ends. Each may move to its own thread; there is exactly one of each.
    pub fn split(self) -> (Producer, Consumer) {
        let h = self.shared.header();
        let (head, tail) = (h.head.load(Ordering::Acquire), h.tail.load(Ordering::Acquire));
        let producer = Producer { shared: self.shared.clone(), head, cached_tail: tail, seq: 0, frames: 0 };
        let consumer = Consumer { shared: self.shared, tail, cached_head: head, seq: 0, poisoned: false };
        (producer, consumer)
    }

    /// Test support: the raw bytes of the data area, to plant corruption.
    #[doc(hidden)]
    pub fn corrupt_for_test(producer: &Producer, offset: usize, byte: u8) {
        assert!(offset < producer.shared.capacity);
        // SAFETY: in bounds of the data area; tests call this with no consumer reading.
        unsafe { producer.shared.data.add(offset).write_volatile(byte) };
    }
}

fn round_up(n: usize) -> usize {
    (n + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

pub struct Producer {
    shared: Arc<Shared>,
    /// Where the next frame goes; published to the consumer by `flush`.
    head: u64,
    cached_tail: u64,
    seq: u64,
    frames: u64,
}

impl Producer {
    fn free(&self) -> usize {
        self.shared.capacity - (self.head - self.cached_tail) as usize
    }

    fn write_frame_header(&mut self, offset: usize, len: usize, magic: u32, seq: u64) {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        header[4..8].copy_from_slice(&magic.to_le_bytes());
        header[8..16].copy_from_slice(&seq.to_le_bytes());
        // SAFETY: `offset + 16 <= capacity` (frames are 16-aligned and at least a header long),
        // and the range is in `[head, tail + capacity)`, which only the producer touches.
        unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), self.shared.data.add(offset), FRAME_HEADER_BYTES) };
    }

    /// Writes one frame whose payload `write` puts into the slice it is given, returning its
    /// length, or `None` if the slice is too small. Not visible to the consumer until `flush`.
    pub fn try_push_with(&mut self, mut write: impl FnMut(&mut [u8]) -> Option<usize>) -> Result<(), RingError> {
        let capacity = self.shared.capacity;
        // The consumer's tail is read only when the cached one says there is no room: reading
        // it on every push would pull its cache line across cores every time.
        let mut refreshed = false;
        for _ in 0..4 {
            let offset = (self.head as usize) & (capacity - 1);
            let to_end = capacity - offset;
            let room = self.free().min(to_end);
            if room > FRAME_HEADER_BYTES {
                // SAFETY: `[offset, offset + room)` lies inside the data area and inside
                // `[head, tail + capacity)`, which the consumer does not read until published.
                let payload = unsafe {
                    std::slice::from_raw_parts_mut(
                        self.shared.data.add(offset + FRAME_HEADER_BYTES),
                        room - FRAME_HEADER_BYTES,
                    )
                };
                if let Some(len) = write(payload) {
                    assert!(len <= room - FRAME_HEADER_BYTES, "a writer claimed more than it was given");
                    self.write_frame_header(offset, len, FRAME_MAGIC, self.seq);
                    self.seq += 1;
                    self.head += round_up(FRAME_HEADER_BYTES + len) as u64;
                    self.frames += 1;
                    return Ok(());
                }
            }
            if !refreshed && self.free() < to_end {
                self.cached_tail = self.shared.header().tail.load(Ordering::Acquire);
                refreshed = true;
                continue;
            }
            if to_end < capacity && to_end <= self.free() {
                // Does not fit before the end: pad the end and start again at offset 0.
                self.write_frame_header(offset, to_end - FRAME_HEADER_BYTES, PAD_MAGIC, 0);
                self.head += to_end as u64;
                continue;
            }
            if !refreshed {
                self.cached_tail = self.shared.header().tail.load(Ordering::Acquire);
                refreshed = true;
                continue;
            }
            break;
        }
        let empty_at_start = self.free() == capacity && (self.head as usize) & (capacity - 1) == 0;
        Err(if empty_at_start { RingError::TooLarge { len: capacity, capacity } } else { RingError::Full })
    }

    pub fn try_push_bytes(&mut self, bytes: &[u8]) -> Result<(), RingError> {
        if round_up(FRAME_HEADER_BYTES + bytes.len()) > self.shared.capacity {
            return Err(RingError::TooLarge { len: bytes.len(), capacity: self.shared.capacity });
        }
        self.try_push_with(|buf| {
            let dst = buf.get_mut(..bytes.len())?;
            dst.copy_from_slice(bytes);
            Some(bytes.len())
        })
    }

    /// Serializes `value` with rkyv straight into the ring.
    pub fn try_push<T>(&mut self, value: &T) -> Result<(), RingError>
    where
        T: for<'a, 'b> rkyv::Serialize<HighSerializer<Buffer<'b>, ArenaHandle<'a>, rancor::Error>>,
    {
        self.try_push_with(|buf| {
            rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, Buffer::from(buf)).ok().map(|b| b.len())
        })
    }

    /// Publishes every frame pushed since the last flush: one Release store per batch.
    pub fn flush(&mut self) {
        self.shared.header().head.store(self.head, Ordering::Release);
    }

    pub fn frames_pushed(&self) -> u64 {
        self.frames
    }
}

pub struct Consumer {
    shared: Arc<Shared>,
    tail: u64,
    cached_head: u64,
    seq: u64,
    poisoned: bool,
}

impl Consumer {
    /// Hands each published frame's payload to `f`, in order, up to `max` frames, then frees
    /// their space: one Release store per batch. The payload borrows the ring and is valid only
    /// inside `f`. A corrupt frame header stops the ring for good (nothing after it can be
    /// trusted) and is returned as an error.
    pub fn read_batch(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> Result<usize, RingError> {
        if self.poisoned {
            return Err(RingError::Corrupt { offset: self.tail, reason: "ring stopped at an earlier corrupt frame" });
        }
        let capacity = self.shared.capacity;
        if self.tail == self.cached_head {
            self.cached_head = self.shared.header().head.load(Ordering::Acquire);
        }
        let mut read = 0;
        while self.tail < self.cached_head && read < max {
            let offset = (self.tail as usize) & (capacity - 1);
            let mut header = [0u8; FRAME_HEADER_BYTES];
            // SAFETY: `offset + 16 <= capacity` and the range is in `[tail, head)`, published by
            // the producer's Release store that our Acquire load observed.
            unsafe {
                std::ptr::copy_nonoverlapping(self.shared.data.add(offset), header.as_mut_ptr(), FRAME_HEADER_BYTES)
            };
            let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
            let magic = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
            let seq = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
            let span = round_up(FRAME_HEADER_BYTES + len);
            let corrupt = if span > capacity - offset || self.tail + span as u64 > self.cached_head {
                Some("frame length runs past the published data")
            } else if magic == PAD_MAGIC || (magic == FRAME_MAGIC && seq == self.seq) {
                None
            } else if magic == FRAME_MAGIC {
                Some("frame sequence number out of order")
            } else {
                Some("bad frame magic")
            };
            if let Some(reason) = corrupt {
                // Free what was read before it; nothing after it can be trusted.
                self.poisoned = true;
                self.shared.header().tail.store(self.tail, Ordering::Release);
                return Err(RingError::Corrupt { offset: self.tail, reason });
            }
            match magic {
                PAD_MAGIC => {}
                _ => {
                    // SAFETY: bounds checked just above; the producer does not touch
                    // `[tail, head)` until we publish a new tail after `f` returns.
                    let payload =
                        unsafe { std::slice::from_raw_parts(self.shared.data.add(offset + FRAME_HEADER_BYTES), len) };
                    f(payload);
                    self.seq += 1;
                    read += 1;
                }
            }
            self.tail += span as u64;
        }
        self.shared.header().tail.store(self.tail, Ordering::Release);
        Ok(read)
    }
}

/// Reads an archived `T` from a frame payload with full validation: for bytes that could come
/// from anyone (a file, another process, a peer).
pub fn access<T>(payload: &[u8]) -> Result<&T, RingError>
where
    T: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    rkyv::access::<T, rancor::Error>(payload).map_err(|e| RingError::Invalid(e.to_string()))
}

/// Reads an archived `T` from a frame payload without validation.
///
/// # Safety
/// The payload must have been written by `Producer::try_push` with a value of the type `T`
/// archives, in this process (or one as trusted), and not modified since.
pub unsafe fn access_trusted<T: Portable>(payload: &[u8]) -> &T {
    // SAFETY: the caller guarantees the bytes are a valid archive of `T`; frame payloads are
    // 16-byte aligned, which covers every archived type of the protocol.
    unsafe { rkyv::access_unchecked::<T>(payload) }
}
