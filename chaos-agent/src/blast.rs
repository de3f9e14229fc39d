//! `blast`: apply a policy in the foreground, show live counters once a
//! second, revert at the end of the duration, on Ctrl-C or on SIGTERM.
//!
//! The loop ([`drive`]) is shared by `blast net` and `blast syscall`; what
//! each of them holds in force between apply and revert is an [`InForce`].

use std::{
    io::{IsTerminal, Write},
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    apply::{self, Applied, FaultCounters, Options},
    error::{Error, Result},
    metrics::MetricsServer,
    policy::model::{AbortWhen, Direction, Policy},
    steady,
};

/// Writes a line to stdout, ignoring errors: a reader that went away (as
/// `| head -1` does) must not stop a blast before it reverts. `println!`
/// would panic there, and release builds abort on panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// As `out!`, on stderr; `err!(raw ...)` writes without a newline.
macro_rules! err {
    (raw $($arg:tt)*) => {{
        let _ = write!(std::io::stderr().lock(), $($arg)*);
    }};
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

const TICK: Duration = Duration::from_millis(50);
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// What a blast holds in force between apply and revert: the parts of
/// the run loop that differ between network faults and syscall faults.
pub(crate) trait InForce {
    /// One entry per fault (or row), in the order of the fault list.
    type Counters;
    /// Whether the live line on a terminal starts with a progress bar.
    const PROGRESS_BAR: bool;

    /// What the announcing line counts: "2 fault(s)".
    fn count_label(&self) -> String;
    /// How the faults are attached: the `mode` of the `applied` event.
    fn mode(&self) -> String;
    /// CLOCK_MONOTONIC nanoseconds at which the kernel stops acting.
    fn deadline_ns(&self) -> u64;
    /// Time left until that deadline.
    fn remaining(&self) -> Duration;
    fn counters(&self) -> Vec<Self::Counters>;
    /// The `faults` array of the `counters` and `reverted` events.
    fn counters_json(&self, counters: &[Self::Counters]) -> serde_json::Value;
    /// The human counter line, faults separated by ` | `.
    fn human_line(&self, counters: &[Self::Counters]) -> String;
    /// Registers the faults with the metrics server, once after apply.
    fn publish_faults(&self, metrics: &MetricsServer);
    /// Refreshes the metrics snapshot with these counters.
    fn publish_counters(&self, metrics: &MetricsServer, counters: &[Self::Counters]);
    /// Called at every tick of the loop.
    fn tick(&mut self) {}
    /// Removes everything applied; returns what could not be removed.
    fn revert(self) -> Vec<String>;
}

fn direction_label(d: Direction) -> &'static str {
    match d {
        Direction::Egress => "egress",
        Direction::Ingress => "ingress",
        Direction::Both => "both",
    }
}

/// Share of matched packets or calls that were injected, in percent.
pub(crate) fn share(matched: u64, injected: u64) -> f64 {
    if matched > 0 {
        100.0 * injected as f64 / matched as f64
    } else {
        0.0
    }
}

impl InForce for Applied {
    type Counters = FaultCounters;
    const PROGRESS_BAR: bool = true;

    fn count_label(&self) -> String {
        format!("{} fault(s)", self.faults.len())
    }

    fn mode(&self) -> String {
        self.mode.to_owned()
    }

    fn deadline_ns(&self) -> u64 {
        self.deadline_ns
    }

    fn remaining(&self) -> Duration {
        Applied::remaining(self)
    }

    fn counters(&self) -> Vec<FaultCounters> {
        Applied::counters(self)
    }

    fn counters_json(&self, counters: &[FaultCounters]) -> serde_json::Value {
        let faults: Vec<_> = self
            .faults
            .iter()
            .zip(counters)
            .map(|(f, c)| {
                json!({
                    "policy": f.policy, "fault": f.fault, "action": f.action,
                    "interface": f.interface, "netns": f.netns, "direction": direction_label(f.direction),
                    "matched": c.matched, "injected": c.injected, "guard_passed": c.guard_passed,
                })
            })
            .collect();
        json!(faults)
    }

    fn human_line(&self, counters: &[FaultCounters]) -> String {
        self.faults
            .iter()
            .zip(counters)
            .map(|(f, c)| {
                let share = share(c.matched, c.injected);
                let verb = match f.action {
                    "corrupt" => "corrupted",
                    "duplicate" => "duplicated",
                    _ => "dropped",
                };
                format!(
                    "{} {} {}: matched {} {verb} {} ({share:.1}%) guard-passed {}",
                    f.interface,
                    direction_label(f.direction),
                    f.fault,
                    c.matched,
                    c.injected,
                    c.guard_passed
                )
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }

    fn publish_faults(&self, metrics: &MetricsServer) {
        metrics.set_faults(&self.faults);
    }

    fn publish_counters(&self, metrics: &MetricsServer, counters: &[FaultCounters]) {
        metrics.update(&self.faults, counters);
    }

    /// Forwards the kernel's log records (`--debug-kernel`).
    fn tick(&mut self) {
        self.flush_logs();
    }

    fn revert(self) -> Vec<String> {
        Applied::revert(self)
    }
}

/// Runs the network blast; the exit code follows CONTRACT section 2.
/// With `metrics`, its snapshot is refreshed at every report (once a second)
/// and at the end.
pub fn run(
    policy: &Policy,
    opts: &Options,
    json_out: bool,
    metrics: Option<&MetricsServer>,
) -> Result<ExitCode> {
    drive(policy, json_out, metrics, policy.abort_when.clone(), || {
        apply::apply(policy, opts)
    })
}

/// The blast lifecycle: waits out `startAfter`, applies, reports counters
/// once a second (JSON events, a live line on a terminal, or a line per
/// second), and reverts at the deadline, on SIGINT or SIGTERM, or when the
/// steady-state `guard` fails. The exit code follows CONTRACT section 2.
pub(crate) fn drive<A: InForce>(
    policy: &Policy,
    json_out: bool,
    metrics: Option<&MetricsServer>,
    guard: Option<AbortWhen>,
    apply: impl FnOnce() -> Result<A>,
) -> Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| Error::Runtime(format!("cannot install signal handler: {e}")))?;
    }
    if policy.start_after > Duration::ZERO {
        let until = Instant::now() + policy.start_after;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(TICK);
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let mut applied = apply()?;
    let aborted: Arc<Mutex<Option<String>>> = Arc::default();
    let _prober = guard.map(|guard| {
        let aborted = Arc::clone(&aborted);
        steady::Prober::spawn(policy.name.clone(), guard, move |reason| {
            if let Ok(mut a) = aborted.lock() {
                *a = Some(reason);
            }
        })
    });
    if let Some(m) = metrics {
        applied.publish_faults(m);
    }
    let total = policy.duration;
    let tty = std::io::stderr().is_terminal() && !json_out;
    if json_out {
        out!(
            "{}",
            json!({"event": "applied", "policy": policy.name, "mode": applied.mode(),
                   "deadline_ns": applied.deadline_ns(), "pid": std::process::id()})
        );
    } else {
        err!(
            "chaos-agent: {} of {} in force via {}; reverting in {} (Ctrl-C to stop now)",
            applied.count_label(),
            policy.name,
            applied.mode(),
            humantime::format_duration(total)
        );
    }
    let started = Instant::now();
    let mut next_report = started + REPORT_EVERY;
    let reason = loop {
        if stop.load(Ordering::Relaxed) {
            break "signal";
        }
        if let Some(why) = aborted.lock().ok().and_then(|a| a.clone()) {
            err!("chaos-agent: steady-state guard failed: {why}; reverting");
            break "steady-state guard";
        }
        if applied.remaining().is_zero() {
            break "deadline";
        }
        std::thread::sleep(TICK);
        applied.tick();
        if Instant::now() >= next_report {
            next_report += REPORT_EVERY;
            let counters = applied.counters();
            if let Some(m) = metrics {
                applied.publish_counters(m, &counters);
            }
            let elapsed = started.elapsed().min(total);
            if json_out {
                out!(
                    "{}",
                    json!({"event": "counters", "elapsed_ms": elapsed.as_millis() as u64,
                           "faults": applied.counters_json(&counters)})
                );
            } else if tty {
                err!(raw
                    "\r\x1b[K{}",
                    live_line(A::PROGRESS_BAR, elapsed, total, &applied.human_line(&counters))
                );
            } else {
                err!(
                    "[{:.0}s/{}s] {}",
                    elapsed.as_secs_f64(),
                    total.as_secs(),
                    applied.human_line(&counters)
                );
            }
            let _ = std::io::stdout().flush();
        }
    };
    let counters = applied.counters();
    let final_json = applied.counters_json(&counters);
    let final_text = applied.human_line(&counters);
    if tty {
        err!();
    }
    if let Some(m) = metrics {
        applied.publish_counters(m, &counters);
    }
    let failures = applied.revert();
    if let Some(m) = metrics {
        m.clear_active();
    }
    if json_out {
        out!(
            "{}",
            json!({"event": "reverted", "reason": reason, "faults": final_json, "left": failures})
        );
    } else {
        err!("chaos-agent: reverted ({reason})");
        out!("{final_text}");
    }
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Error::Runtime(format!(
            "revert incomplete; left behind: {}",
            failures.join("; ")
        )))
    }
}

/// The live line on a terminal, redrawn in place once a second.
fn live_line(bar: bool, elapsed: Duration, total: Duration, counters: &str) -> String {
    if !bar {
        return format!(
            "[{:>5.0}s/{}s] {counters}",
            elapsed.as_secs_f64(),
            total.as_secs()
        );
    }
    let width = 20usize;
    let done = ((elapsed.as_secs_f64() / total.as_secs_f64()) * width as f64) as usize;
    format!(
        "[{}{}] {:>5.0}s/{}s  {counters}",
        "#".repeat(done.min(width)),
        "-".repeat(width - done.min(width)),
        elapsed.as_secs_f64(),
        total.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_line_with_and_without_bar() {
        let line = live_line(true, Duration::from_secs(5), Duration::from_secs(10), "x");
        assert_eq!(line, "[##########----------]     5s/10s  x");
        let line = live_line(false, Duration::from_secs(5), Duration::from_secs(10), "x");
        assert_eq!(line, "[    5s/10s] x");
    }
}
