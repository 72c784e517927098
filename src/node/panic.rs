//! A server's code panicking is that server's crash, not its node's: `guarded` runs it and turns
//! a panic into its message. The message and place come from the process's panic hook (the
//! runtime installs one) when there is one, else from the panic's payload.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    /// The message and place of this thread's last panic, as the hook saw it.
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keeps this thread's last panic message (called by a panic hook).
pub fn remember(what: String) {
    LAST.with(|last| *last.borrow_mut() = Some(what));
}

/// This thread's last panic message, taken.
pub fn take_last() -> String {
    LAST.with(|last| last.borrow_mut().take()).unwrap_or_else(|| "a panic (no hook installed)".into())
}

/// Runs `f`; a panic in it comes back as its message. For code whose state a panic may leave
/// half-changed only when the caller throws that state away (a crashed server is replaced).
pub fn guarded<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let hooked = LAST.with(|last| last.borrow_mut().take());
        hooked.unwrap_or_else(|| {
            payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with no message".into())
        })
    })
}
