//! What `/healthz` and `/readyz` on the metrics listener answer, for
//! Kubernetes probes (and anyone else with curl). The daemon's loop writes
//! it, the listener reads it; both are on one runtime, but the state is
//! plain atomics so neither ever waits for the other.
//!
//! - `/healthz` (live): the loop went round within [`STALE_AFTER`]. It
//!   wakes at least once a second (metrics, lease renewal), so a stale
//!   tick means it is stuck; a reload holds it for as long as the reload
//!   takes.
//! - `/readyz` (ready): live, the first reload is done, and the last
//!   reload left no policy file refused (bad YAML, a field out of range, a
//!   name clash): the directory as it stands is what is in force. A file
//!   refused stays refused until it is fixed or removed, whatever other
//!   file changes meanwhile. Faults that are in a good file but not in
//!   force on this node (unsupported by its kernel, or an interface it
//!   does not have) do not count: one fleet-wide policy would otherwise
//!   keep some nodes unready for good. `status` and the metrics say which.
//!
//! A blast never ticks nor reloads: both answer 200 while it runs.

use std::{
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use crate::fault::monotonic_ns;

/// How old the loop's last round may be before `/healthz` fails.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Health {
    /// CLOCK_MONOTONIC of the loop's last round; 0 while nothing ticks.
    tick_ns: AtomicU64,
    /// A first reload finished.
    loaded: AtomicBool,
    /// Policy files refused as the last reload left the directory.
    refused: AtomicU32,
}

impl Default for Health {
    /// Live and ready, as a blast is while it runs.
    fn default() -> Health {
        Health {
            tick_ns: AtomicU64::new(0),
            loaded: AtomicBool::new(true),
            refused: AtomicU32::new(0),
        }
    }
}

/// An answer: 200 (true) or 503, and a line saying why.
pub type Answer = (bool, String);

impl Health {
    /// A daemon starting: live, not ready until its first reload.
    pub fn starting(&self) {
        self.loaded.store(false, Ordering::Relaxed);
        self.tick();
    }

    /// The loop went round.
    pub fn tick(&self) {
        self.tick_ns.store(monotonic_ns(), Ordering::Relaxed);
    }

    /// A reload finished; `refused` policy files of the directory are
    /// refused (newly or still).
    pub fn reloaded(&self, refused: usize) {
        self.refused.store(
            u32::try_from(refused).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
        self.loaded.store(true, Ordering::Relaxed);
    }

    /// `/healthz` at `now_ns` (CLOCK_MONOTONIC).
    pub fn live(&self, now_ns: u64) -> Answer {
        let tick = self.tick_ns.load(Ordering::Relaxed);
        let age = Duration::from_nanos(now_ns.saturating_sub(tick));
        if tick == 0 || age <= STALE_AFTER {
            return (true, "ok\n".into());
        }
        (
            false,
            format!(
                "the daemon's loop has not gone round for {} ms (limit {} ms)\n",
                age.as_millis(),
                STALE_AFTER.as_millis()
            ),
        )
    }

    /// `/readyz` at `now_ns` (CLOCK_MONOTONIC).
    pub fn ready(&self, now_ns: u64) -> Answer {
        let live = self.live(now_ns);
        if !live.0 {
            return live;
        }
        if !self.loaded.load(Ordering::Relaxed) {
            return (false, "starting: the policies are not loaded yet\n".into());
        }
        match self.refused.load(Ordering::Relaxed) {
            0 => (true, "ok\n".into()),
            n => (
                false,
                format!(
                    "{n} policy file(s) refused by the last reload (`chaos-agent status` says which and why)\n"
                ),
            ),
        }
    }

    /// `/healthz` now.
    pub fn live_now(&self) -> Answer {
        self.live(monotonic_ns())
    }

    /// `/readyz` now.
    pub fn ready_now(&self) -> Answer {
        self.ready(monotonic_ns())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = STALE_AFTER.as_nanos() as u64;

    #[test]
    fn a_blast_is_live_and_ready() {
        let h = Health::default();
        assert_eq!(h.live(u64::MAX), (true, "ok\n".into()));
        assert_eq!(h.ready(u64::MAX), (true, "ok\n".into()));
    }

    #[test]
    fn a_daemon_is_ready_after_its_first_clean_reload() {
        let h = Health::default();
        h.starting();
        let t = h.tick_ns.load(Ordering::Relaxed);
        assert!(t > 0);
        assert!(h.live(t).0);
        let (ok, why) = h.ready(t);
        assert!(!ok);
        assert!(why.starts_with("starting"), "{why}");
        h.reloaded(0);
        assert_eq!(h.ready(t), (true, "ok\n".into()));
    }

    #[test]
    fn a_loop_that_stops_going_round_is_neither_live_nor_ready() {
        let h = Health::default();
        h.starting();
        h.reloaded(0);
        let t = h.tick_ns.load(Ordering::Relaxed);
        assert!(h.live(t + LIMIT).0);
        assert!(h.ready(t + LIMIT).0);
        let (ok, why) = h.live(t + LIMIT + 1_000_000);
        assert!(!ok);
        assert_eq!(
            why,
            "the daemon's loop has not gone round for 10001 ms (limit 10000 ms)\n"
        );
        assert_eq!(h.ready(t + LIMIT + 1_000_000), (false, why));
        // A clock read before the tick (another thread's) is not stale.
        assert!(h.live(t - 1).0);
        // The loop goes round again.
        h.tick();
        assert!(h.live_now().0);
        assert!(h.ready_now().0);
    }

    #[test]
    fn a_refused_file_is_not_ready_until_the_directory_is_clean() {
        let h = Health::default();
        h.starting();
        h.reloaded(2);
        let (ok, why) = h.ready_now();
        assert!(!ok);
        assert!(why.starts_with("2 policy file(s) refused"), "{why}");
        // Still live: the loop runs, with the last good versions in force.
        assert!(h.live_now().0);
        h.reloaded(1);
        assert!(!h.ready_now().0);
        h.reloaded(0);
        assert_eq!(h.ready_now(), (true, "ok\n".into()));
    }
}
