//! Allocator settings for the shards. A tick frees and allocates megabytes of short-lived
//! vectors (deltas, messages); by default mimalloc hands freed pages back to the kernel after a
//! delay (10 ms in mimalloc 2, 1 s in mimalloc 3), and a later tick faults them in again, zeroed by the kernel (7% of a loaded tick in a
//! profile, and a source of tail latency). The shards keep them instead.

/// mimalloc's `mi_option_purge_delay`: its position in the `mi_option_t` enum of mimalloc 2 and 3
/// (`mimalloc.h`: after `mi_option_eager_commit_delay` = 14). The Rust bindings do not name it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never return freed memory to the kernel: the process keeps its high-water mark, which for a
/// shard is a few ticks' worth of buffers.
pub fn keep_freed_memory() {
    // SAFETY: `mi_option_set` only stores an option value; any value is valid for this option
    // (-1 means never purge), and it may be called at any time from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Faults in `bytes` of the allocator's memory now and hands it back to the allocator, which
/// keeps it (`keep_freed_memory`): the tables and buffers a loaded world grows into later reuse
/// pages the kernel has already given out instead of faulting fresh ones in halfway through a
/// tick. (The allocator asks for transparent huge pages: a first touch there zeroes 2 MiB, which
/// measured 3-6 ms a fault on a virtual machine, and a table that doubles past its high-water mark
/// took up to 31 ms in one tick.) Memory the system cannot give is not faulted in.
pub fn prefault(bytes: usize) {
    let mut block: Vec<u8> = Vec::new();
    if block.try_reserve_exact(bytes).is_err() {
        return;
    }
    let base = block.as_mut_ptr();
    for offset in (0..bytes).step_by(4096) {
        // SAFETY: `offset` < `bytes` <= the block's capacity, so the byte is inside the block.
        unsafe { base.add(offset).write_volatile(0) };
    }
}

/// The option this module sets, as mimalloc reports it: 10 or 1000 (the defaults of mimalloc 2
/// and 3) or -1 (ours). Any other value means the enum moved and `MI_OPTION_PURGE_DELAY` names
/// another option.
pub fn purge_delay() -> i64 {
    // SAFETY: reading an option has no preconditions.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) as i64 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_option_is_the_purge_delay() {
        let before = super::purge_delay();
        assert!([10, 1000, -1].contains(&before), "option 15 is not mimalloc's purge delay (it reads {before})");
        super::keep_freed_memory();
        assert_eq!(super::purge_delay(), -1);
    }
}
