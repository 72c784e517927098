//! Where the log's bytes live. `Disk` is the real one: segment files preallocated and mapped with
//! memmap2, snapshots written to a temporary name, synced and renamed. `CrashImage` keeps files
//! in memory for tests: it can run out of space, and it hands out the image a crash would leave
//! so a test can tear, flip or drop bytes and recover from it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bytes read back from a medium; 16-byte aligned, so archived data can be read in place.
pub type Bytes = Box<dyn Deref<Target = [u8]> + Send>;

/// A file system for the log, by relative path (`slice-0/seg-…`).
pub trait Media: Send + Sync {
    /// Names of the entries in a directory (`""`: the root); empty if it does not exist.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;
    fn read(&self, path: &str) -> io::Result<Bytes>;
    /// A new segment of `len` bytes, all zeros, with its space reserved: a full disk is an error
    /// here, never a fault on a later write through the mapping. A file of that name is replaced
    /// atomically (a crash leaves the old file or the new): a segment a crash left with no frame
    /// in it is where the next run starts writing.
    fn create_segment(&self, path: &str, len: usize) -> io::Result<Arc<dyn Segment>>;
    /// Writes a whole file so that a crash leaves either the old file or the new one.
    fn put_atomic(&self, path: &str, bytes: &[u8]) -> io::Result<()>;
    fn remove(&self, path: &str) -> io::Result<()>;
    /// Zeros a file from `offset` to its end: cuts a torn tail so nothing after it is read again.
    fn zero_from(&self, path: &str, offset: usize) -> io::Result<()>;
    /// Renames a file; durable only once `sync_entry` of the new name returns.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes the directory entry of `path` durable (the file's name, not its contents).
    fn sync_entry(&self, path: &str) -> io::Result<()>;
}

/// A segment being written. One writer writes, each byte once, in increasing offsets; `sync` may
/// be called from another thread for bytes already written.
pub trait Segment: Send + Sync {
    fn write(&self, offset: usize, bytes: &[u8]) -> io::Result<()>;
    /// Makes `from..to` durable.
    fn sync(&self, from: usize, to: usize) -> io::Result<()>;
    /// Gets `from..to` ready to be written, so the writer's stores there do not fault. Only an
    /// optimisation: the writer is correct without it.
    fn prefault(&self, _from: usize, _to: usize) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A directory on disk.
pub struct Disk {
    root: PathBuf,
}

impl Disk {
    pub fn open(root: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(root)?;
        Ok(Self { root: root.to_path_buf() })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn sync_dir(&self, rel_file: &str) -> io::Result<()> {
        let dir = self.path(rel_file).parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
        File::open(dir)?.sync_all()
    }

    fn ensure_parent(&self, rel: &str) -> io::Result<()> {
        if let Some(parent) = self.path(rel).parent() {
            std::fs::create_dir_all(parent)?;
        }
        Ok(())
    }
}

struct MappedBytes(memmap2::Mmap);
impl Deref for MappedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Media for Disk {
    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let read = match std::fs::read_dir(self.path(dir)) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in read {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn read(&self, path: &str) -> io::Result<Bytes> {
        let file = File::open(self.path(path))?;
        if file.metadata()?.len() == 0 {
            return Ok(Box::new(Vec::new()));
        }
        // SAFETY: the log's files are written only by this process's log writers, which never
        // touch a file that is being read (recovery runs before any writer starts); a mapping
        // of a file another program truncates could fault, which is the same for any reader.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Box::new(MappedBytes(map)))
    }

    fn create_segment(&self, path: &str, len: usize) -> io::Result<Arc<dyn Segment>> {
        self.ensure_parent(path)?;
        let replace = self.path(path).exists();
        let made = if replace { self.path(&format!("{path}.new")) } else { self.path(path) };
        if replace {
            let _ = std::fs::remove_file(&made);
        }
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&made)?;
        // Reserve the blocks now: a mapping of a sparse file that hits a full disk faults with
        // SIGBUS on a later store; this fails here with ENOSPC instead.
        // SAFETY: a plain system call on an open descriptor.
        let rc = unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, len as libc::off_t) };
        if rc != 0 {
            let err = io::Error::from_raw_os_error(rc);
            drop(file);
            let _ = std::fs::remove_file(&made);
            return Err(err);
        }
        let map = memmap2::MmapOptions::new().len(len).map_raw(&file)?;
        if replace {
            std::fs::rename(&made, self.path(path))?;
        }
        self.sync_dir(path)?;
        Ok(Arc::new(DiskSegment { map, len }))
    }

    fn put_atomic(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.ensure_parent(path)?;
        let tmp = self.path(&format!("{path}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_data()?;
        std::fs::rename(&tmp, self.path(path))?;
        self.sync_dir(path)
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        let p = self.path(path);
        if p.is_dir() {
            std::fs::remove_dir_all(p)
        } else {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        }
    }

    fn zero_from(&self, path: &str, offset: usize) -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).open(self.path(path))?;
        let len = file.metadata()?.len() as usize;
        if offset < len {
            use std::io::Seek;
            file.seek(io::SeekFrom::Start(offset as u64))?;
            let zeros = vec![0u8; (len - offset).min(1 << 20)];
            let mut left = len - offset;
            while left > 0 {
                let n = left.min(zeros.len());
                file.write_all(&zeros[..n])?;
                left -= n;
            }
            file.sync_data()?;
        }
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path(from), self.path(to))
    }

    fn sync_entry(&self, path: &str) -> io::Result<()> {
        self.sync_dir(path)
    }
}

struct DiskSegment {
    map: memmap2::MmapRaw,
    len: usize,
}

impl Segment for DiskSegment {
    fn write(&self, offset: usize, bytes: &[u8]) -> io::Result<()> {
        let end = offset.checked_add(bytes.len()).filter(|e| *e <= self.len);
        if end.is_none() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "write past the end of a segment"));
        }
        // SAFETY: in bounds (checked above). Two threads write a segment, never the same bytes
        // at once: the shard's writer appends frames (and writes a new segment's header before
        // it hands the segment to the flusher, through a channel); the flusher writes only the
        // header's watermark bytes, after that. Nothing in this process reads the bytes through
        // a reference while it runs: msync takes the range.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.map.as_mut_ptr().add(offset), bytes.len()) };
        Ok(())
    }

    fn sync(&self, from: usize, to: usize) -> io::Result<()> {
        if to > from {
            self.map.flush_range(from, to - from)?;
        }
        Ok(())
    }

    /// MADV_POPULATE_WRITE: the kernel allocates the page-cache pages and maps them writable
    /// now, on the calling thread (the flusher), instead of one page fault per 4 KiB on the
    /// writer's. The pages hold zeros until written, as the file does.
    fn prefault(&self, from: usize, to: usize) -> io::Result<()> {
        const PAGE: usize = 4096;
        let from = from / PAGE * PAGE;
        let to = to.min(self.len).div_ceil(PAGE) * PAGE;
        if to > from && to <= self.len {
            self.map.advise_range(memmap2::Advice::PopulateWrite, from, to - from)?;
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.len
    }
}

type Files = BTreeMap<String, Arc<Mutex<Vec<u8>>>>;

/// Files in memory, for tests and the simulator: a full disk past `capacity` bytes, and crash
/// images. Two views of every file are kept: what was written (the page cache: `image`) and what
/// a power loss would leave (`durable_image`): a segment's bytes only once a sync covered them,
/// whole files and names at once (they are written to a temporary name, synced and renamed).
#[derive(Clone, Default)]
pub struct CrashImage {
    files: Arc<Mutex<Files>>,
    durable: Arc<Mutex<Files>>,
    capacity: Option<usize>,
    /// Every segment sync fails (EIO) while this is set: a disk that stopped taking writes.
    pub fail_syncs: Arc<std::sync::atomic::AtomicBool>,
}

impl CrashImage {
    pub fn with_capacity(bytes: usize) -> Self {
        Self { capacity: Some(bytes), ..Self::default() }
    }

    /// Every file's bytes as a crash now would leave them.
    pub fn image(&self) -> BTreeMap<String, Vec<u8>> {
        let files = self.files.lock().expect("not poisoned");
        files.iter().map(|(k, v)| (k.clone(), v.lock().expect("not poisoned").clone())).collect()
    }

    /// What a power loss now would leave: every segment as its syncs made it.
    pub fn durable_image(&self) -> BTreeMap<String, Vec<u8>> {
        let files = self.durable.lock().expect("not poisoned");
        files.iter().map(|(k, v)| (k.clone(), v.lock().expect("not poisoned").clone())).collect()
    }

    pub fn from_image(image: BTreeMap<String, Vec<u8>>) -> Self {
        let copy = |image: &BTreeMap<String, Vec<u8>>| -> Files {
            image.iter().map(|(k, v)| (k.clone(), Arc::new(Mutex::new(v.clone())))).collect()
        };
        Self {
            files: Arc::new(Mutex::new(copy(&image))),
            durable: Arc::new(Mutex::new(copy(&image))),
            ..Self::default()
        }
    }

    fn used(files: &Files) -> usize {
        files.values().map(|f| f.lock().expect("not poisoned").len()).sum()
    }

    fn full(&self, files: &Files, more: usize) -> io::Result<()> {
        match self.capacity {
            Some(cap) if Self::used(files) + more > cap => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            _ => Ok(()),
        }
    }
}

struct Aligned(rkyv::util::AlignedVec<16>);
impl Deref for Aligned {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Media for CrashImage {
    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let files = self.files.lock().expect("not poisoned");
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        let mut names: Vec<String> = files
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
            .collect();
        names.dedup();
        Ok(names)
    }

    fn read(&self, path: &str) -> io::Result<Bytes> {
        let files = self.files.lock().expect("not poisoned");
        let file = files.get(path).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, path.to_string()))?;
        let mut v = rkyv::util::AlignedVec::<16>::new();
        v.extend_from_slice(&file.lock().expect("not poisoned"));
        Ok(Box::new(Aligned(v)))
    }

    fn create_segment(&self, path: &str, len: usize) -> io::Result<Arc<dyn Segment>> {
        let mut files = self.files.lock().expect("not poisoned");
        let replaced = files.get(path).map_or(0, |f| f.lock().expect("not poisoned").len());
        self.full(&files, len.saturating_sub(replaced))?;
        let data = Arc::new(Mutex::new(vec![0u8; len]));
        let durable = Arc::new(Mutex::new(vec![0u8; len]));
        files.insert(path.to_string(), data.clone());
        self.durable.lock().expect("not poisoned").insert(path.to_string(), durable.clone());
        Ok(Arc::new(MemSegment { data, durable, len, fail_syncs: self.fail_syncs.clone() }))
    }

    fn put_atomic(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        let mut files = self.files.lock().expect("not poisoned");
        self.full(&files, bytes.len())?;
        files.insert(path.to_string(), Arc::new(Mutex::new(bytes.to_vec())));
        self.durable.lock().expect("not poisoned").insert(path.to_string(), Arc::new(Mutex::new(bytes.to_vec())));
        Ok(())
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        let prefix = format!("{path}/");
        for files in [&self.files, &self.durable] {
            files.lock().expect("not poisoned").retain(|k, _| k != path && !k.starts_with(&prefix));
        }
        Ok(())
    }

    fn zero_from(&self, path: &str, offset: usize) -> io::Result<()> {
        // Recovery's cut, synced before the log is written again.
        for files in [&self.files, &self.durable] {
            if let Some(f) = files.lock().expect("not poisoned").get(path) {
                let mut f = f.lock().expect("not poisoned");
                let len = f.len();
                f[offset.min(len)..].fill(0);
            }
        }
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut files = self.files.lock().expect("not poisoned");
        let file = files.remove(from).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, from.to_string()))?;
        files.insert(to.to_string(), file);
        // The new name is taken as durable at once (the writer syncs it before anything in it).
        let mut durable = self.durable.lock().expect("not poisoned");
        if let Some(file) = durable.remove(from) {
            durable.insert(to.to_string(), file);
        }
        Ok(())
    }

    fn sync_entry(&self, _path: &str) -> io::Result<()> {
        Ok(())
    }
}

struct MemSegment {
    data: Arc<Mutex<Vec<u8>>>,
    /// The bytes syncs have covered.
    durable: Arc<Mutex<Vec<u8>>>,
    len: usize,
    fail_syncs: Arc<std::sync::atomic::AtomicBool>,
}

impl Segment for MemSegment {
    fn write(&self, offset: usize, bytes: &[u8]) -> io::Result<()> {
        let mut d = self.data.lock().expect("not poisoned");
        let end = offset.checked_add(bytes.len()).filter(|e| *e <= d.len());
        let Some(end) = end else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "write past the end of a segment"));
        };
        d[offset..end].copy_from_slice(bytes);
        Ok(())
    }

    fn sync(&self, from: usize, to: usize) -> io::Result<()> {
        if self.fail_syncs.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let data = self.data.lock().expect("not poisoned");
        let mut durable = self.durable.lock().expect("not poisoned");
        let to = to.min(data.len());
        if from < to {
            durable[from..to].copy_from_slice(&data[from..to]);
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.len
    }
}
