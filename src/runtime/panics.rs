//! Panics in a shard. A panic inside one logical server's code is that server's crash: it is
//! caught, the server's slice is told (as the simulator's crash report does) and takes its
//! regions back, and a fresh incarnation replaces it. A panic anywhere else in a shard is fatal
//! to the process: the shard records which core and what panic, and stops the mesh, so the other
//! slices commit what they can and the process exits non-zero for a supervisor to restart it
//! from the log. Nothing freezes with its clients attached.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};

pub use crate::node::panic::guarded;
use crate::node::panic::{remember, take_last};
use crate::world::Tick;

/// Installs (once per process) a panic hook that keeps each thread's last panic message for
/// `guarded` and `Watch`, then does what the previous hook did (print it).
pub fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let what = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with no message".into());
            let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            let drill = what.starts_with(crate::protocol::server::DRILL_PANIC);
            remember(format!("{what}{at}"));
            if !drill {
                previous(info);
            }
        }));
    });
}

/// The first fatal panic of the process, by core.
#[derive(Default)]
pub struct Fatal {
    first: Mutex<Option<(usize, String)>>,
}

impl Fatal {
    pub fn first(&self) -> Option<(usize, String)> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn record(&self, core: usize, what: String) {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert((core, what));
    }
}

/// Held by a shard for as long as it runs: if the shard's thread unwinds, it records the panic
/// and stops the mesh.
pub struct Watch {
    pub core: usize,
    pub fatal: Arc<Fatal>,
    pub stop: Arc<AtomicBool>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let what = take_last();
            eprintln!("core {}: the shard panicked: {what}; stopping the mesh", self.core);
            self.fatal.record(self.core, what);
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// A panic a test or a drill asks for, to see that the mesh survives it: in a server's code (a
/// crash) or elsewhere in a shard (fatal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InjectPanic {
    pub core: usize,
    pub tick: Tick,
    pub in_server: bool,
}

impl std::str::FromStr for InjectPanic {
    type Err = String;
    /// `server@TICK` or `shard@TICK`, on core 0; `server@TICK@CORE` for another core.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}`: expected server@TICK or shard@TICK, optionally @CORE");
        let mut parts = s.split('@');
        let in_server = match parts.next() {
            Some("server") => true,
            Some("shard") => false,
            _ => return Err(bad()),
        };
        let tick = Tick(parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?);
        let core = match parts.next() {
            Some(c) => c.parse().map_err(|_| bad())?,
            None => 0,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self { core, tick, in_server })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guarded_panic_comes_back_as_its_message() {
        install_hook();
        assert_eq!(guarded(|| 7), Ok(7));
        let why = guarded(|| -> u32 { panic!("server {} broke", 3) }).unwrap_err();
        assert!(why.starts_with("server 3 broke at "), "{why}");
    }

    #[test]
    fn a_shard_that_unwinds_records_its_core_and_stops_the_mesh() {
        install_hook();
        let (fatal, stop) = (Arc::new(Fatal::default()), Arc::new(AtomicBool::new(false)));
        let watch = Watch { core: 2, fatal: fatal.clone(), stop: stop.clone() };
        let joined = std::thread::spawn(move || {
            let _watch = watch;
            panic!("the ring broke");
        })
        .join();
        assert!(joined.is_err());
        assert!(stop.load(Ordering::Relaxed));
        let (core, what) = fatal.first().expect("recorded");
        assert_eq!(core, 2);
        assert!(what.starts_with("the ring broke"), "{what}");
    }

    #[test]
    fn injections_parse() {
        assert_eq!("server@90".parse(), Ok(InjectPanic { core: 0, tick: Tick(90), in_server: true }));
        assert_eq!("shard@5@1".parse(), Ok(InjectPanic { core: 1, tick: Tick(5), in_server: false }));
        assert!("server".parse::<InjectPanic>().is_err());
        assert!("disk@4".parse::<InjectPanic>().is_err());
    }
}
