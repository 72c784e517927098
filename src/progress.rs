//! Progress of long work (a simulator sweep, a bot run, a benchmark's trials): a bar on a terminal, and plain lines
//! every `PROGRESS_LINE_EVERY` otherwise (a CI log, a file), so a run that takes minutes says how
//! far it is and when it will end, wherever its output goes.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::limits::PROGRESS_LINE_EVERY;

pub struct Progress {
    what: &'static str,
    total: u64,
    done: AtomicU64,
    failed: AtomicU64,
    began: Instant,
    bar: Option<indicatif::ProgressBar>,
    /// Plain lines: when the last was written.
    last_line: Mutex<Instant>,
    /// What the work says of itself besides how far it is (a bot run's connected bots).
    message: Mutex<String>,
}

impl Progress {
    /// Progress of `total` units of `what` (e.g. "seeds"), on standard error: a bar if it is a
    /// terminal, lines if not.
    pub fn new(what: &'static str, total: u64) -> Self {
        Self::with_bar(what, total, std::io::stderr().is_terminal())
    }

    /// Progress of work whose end is not known ahead (a search that stops where a trial fails):
    /// how many units are done and for how long, with no estimate of what is left.
    pub fn open_ended(what: &'static str) -> Self {
        Self::with_bar(what, 0, std::io::stderr().is_terminal())
    }

    fn with_bar(what: &'static str, total: u64, bar: bool) -> Self {
        let bar = bar.then(|| {
            let (bar, template) = match total {
                0 => (indicatif::ProgressBar::new_spinner(), "{elapsed_precise} {spinner} {pos} {msg}"),
                _ => (
                    indicatif::ProgressBar::new(total),
                    "{elapsed_precise} [{wide_bar}] {pos}/{len} {msg} ({per_sec}, {eta} left)",
                ),
            };
            let style = indicatif::ProgressStyle::with_template(template).expect("a valid template");
            bar.set_style(style.progress_chars("=> "));
            bar.set_message(what);
            bar
        });
        let began = Instant::now();
        Self {
            what,
            total,
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            began,
            bar,
            last_line: Mutex::new(began),
            message: Mutex::new(String::new()),
        }
    }

    /// One unit done (`failed`: and it failed).
    pub fn advance(&self, failed: bool) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let failures = self.failed.fetch_add(failed as u64, Ordering::Relaxed) + failed as u64;
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                if failed {
                    bar.set_message(format!("{} ({failures} failed)", self.what));
                }
            }
            None => {
                let mut last = self.last_line.lock().expect("no panic while holding it");
                if last.elapsed() >= PROGRESS_LINE_EVERY && (done < self.total || self.total == 0) {
                    *last = Instant::now();
                    eprintln!("{}", self.line(done, failures));
                }
            }
        }
    }

    /// The plain line for `done` units, `failures` of them failed.
    fn line(&self, done: u64, failures: u64) -> String {
        let elapsed = self.began.elapsed();
        if self.total == 0 {
            return format!(
                "progress: {done} {} done, {failures} failed, {:.0} s in",
                self.what,
                elapsed.as_secs_f64()
            );
        }
        let left = match done {
            0 => String::from("?"),
            _ => {
                let per = elapsed.as_secs_f64() / done as f64;
                format!("{:.0} s", per * (self.total.saturating_sub(done)) as f64)
            }
        };
        let line = format!(
            "progress: {done}/{} {} ({:.0}%), {failures} failed, {:.0} s in, about {left} left",
            self.total,
            self.what,
            100.0 * done as f64 / self.total.max(1) as f64,
            elapsed.as_secs_f64(),
        );
        let message = self.message.lock().expect("no panic while holding it");
        if message.is_empty() {
            line
        } else {
            format!("{line}; {message}")
        }
    }

    /// What the work says of itself now, shown beside the count (the bar's message, the end of
    /// a plain line).
    pub fn set_message(&self, message: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{} {message}", self.what));
        }
        *self.message.lock().expect("no panic while holding it") = message;
    }

    /// The work is over: the bar is cleared (the caller prints its own summary).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.began.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_line_says_how_far_and_how_long_is_left() {
        let p = Progress::with_bar("seeds", 200, false);
        assert!(p.line(0, 0).starts_with("progress: 0/200 seeds (0%), 0 failed"));
        assert!(p.line(0, 0).ends_with("about ? left"), "nothing done, nothing to reckon by");
        for i in 0..50 {
            p.advance(i == 7);
        }
        assert_eq!(p.done.load(Ordering::Relaxed), 50);
        assert_eq!(p.failed.load(Ordering::Relaxed), 1);
        assert!(p.line(50, 1).starts_with("progress: 50/200 seeds (25%), 1 failed"), "{}", p.line(50, 1));
    }

    #[test]
    fn open_ended_work_says_how_much_is_done_and_guesses_nothing() {
        let p = Progress::with_bar("trials", 0, false);
        p.advance(false);
        p.advance(true);
        let line = p.line(2, 1);
        assert!(line.starts_with("progress: 2 trials done, 1 failed, "), "{line}");
        assert!(!line.contains("left") && !line.contains('%'), "{line}");
    }

    #[test]
    fn a_message_goes_at_the_end_of_the_plain_line() {
        let p = Progress::with_bar("s", 30, false);
        p.set_message("bots=10 connected=9".into());
        let line = p.line(3, 0);
        assert!(line.starts_with("progress: 3/30 s (10%)") && line.ends_with("; bots=10 connected=9"), "{line}");
    }
}
