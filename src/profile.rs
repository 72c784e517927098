//! `--flamegraph FILE`: the run sampled in-process (a profiling timer signal, `SIGPROF`, at
//! `FLAMEGRAPH_HZ`; no perf privileges needed), written as a flamegraph SVG when it ends. Every
//! thread of the process is sampled: shards, flushers, gateways, bots.

use std::path::{Path, PathBuf};

use crate::limits::FLAMEGRAPH_HZ;

pub struct Flamegraph {
    guard: pprof::ProfilerGuard<'static>,
    path: PathBuf,
}

impl Flamegraph {
    /// Starts sampling the process, for a flamegraph at `path`.
    pub fn start(path: &Path) -> Result<Self, String> {
        // Unwinding from a signal must not stop inside the C library's locks.
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(FLAMEGRAPH_HZ)
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
            .map_err(|e| format!("flamegraph: cannot start sampling: {e}"))?;
        Ok(Self { guard, path: path.to_path_buf() })
    }

    /// Stops sampling and writes the SVG; the number of samples in it. No sample is an error:
    /// an empty flamegraph would say nothing ran.
    pub fn finish(self) -> Result<usize, String> {
        let report = self.guard.report().build().map_err(|e| format!("flamegraph: {e}"))?;
        let samples: usize = report.data.values().sum::<isize>().max(0) as usize;
        if samples == 0 {
            return Err(format!("flamegraph: no sample was taken, {} not written", self.path.display()));
        }
        let file = std::fs::File::create(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        report.flamegraph(file).map_err(|e| format!("{}: {e}", self.path.display()))?;
        Ok(samples)
    }
}
