//! The allocator as the binary runs it: memory faulted in before the first tick is reused later
//! without page faults. Alone in its process, so no other test's memory is in the count.

use shardmesh::runtime::alloc::{keep_freed_memory, prefault};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Page faults this thread has taken so far.
fn faults() -> i64 {
    // SAFETY: `getrusage` writes one `rusage` into the value it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) }, 0);
    usage.ru_minflt + usage.ru_majflt
}

/// Touches every page of a new `bytes`-long block; the faults that took.
fn faults_to_touch(bytes: usize) -> i64 {
    let before = faults();
    let mut block = vec![0u8; bytes];
    for i in (0..bytes).step_by(4096) {
        block[i] = 1;
    }
    std::hint::black_box(&block);
    faults() - before
}

#[test]
fn memory_prefaulted_is_reused_without_faults_and_too_much_is_skipped() {
    keep_freed_memory();
    // More than any system has: skipped, not an abort.
    prefault(usize::MAX);
    // A block the size of one a world grows into mid-run: without a prefault its pages fault in
    // as it is first written (one fault a page, or one a 2 MiB huge page).
    let fresh = faults_to_touch(24 << 20);
    assert!(fresh >= 12, "{fresh} faults for a fresh 24 MiB");
    // Four times that, past anything touched before but within the prefault: about none.
    prefault(128 << 20);
    let reused = faults_to_touch(96 << 20);
    assert!(reused <= fresh, "{reused} faults for 96 MiB after the prefault, {fresh} for a fresh 24 MiB");
}
