//! `blast syscall` (and `blast --policy` with syscall faults): apply in the
//! foreground, live counters once a second, revert at the end of the
//! duration, on Ctrl-C or on SIGTERM. Same lifecycle and JSON events as
//! `blast net`.

use std::{
    io::{IsTerminal, Write},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;

use super::{RowCounters, SyscallApplied, SyscallOptions};
use crate::{
    error::{Error, Result},
    metrics::MetricsServer,
    policy::{model::Policy, values},
};

/// Writes a line, ignoring errors: a reader that went away must not stop a
/// blast before it reverts.
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

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

fn errno_text(errno: i32) -> String {
    values::errno_name(errno)
        .map(str::to_owned)
        .unwrap_or_else(|| errno.to_string())
}

fn counters_json(applied: &SyscallApplied, counters: &[RowCounters]) -> serde_json::Value {
    let rows: Vec<_> = applied
        .rows
        .iter()
        .zip(counters)
        .map(|(r, c)| {
            json!({
                "policy": r.policy, "fault": r.fault, "action": "errno",
                "syscall": r.syscall, "backend": r.backend.name(),
                "errno": r.errno, "errno_name": values::errno_name(r.errno),
                "target": r.target, "matched": c.matched, "injected": c.injected,
            })
        })
        .collect();
    json!(rows)
}

fn human_line(applied: &SyscallApplied, counters: &[RowCounters]) -> String {
    applied
        .rows
        .iter()
        .zip(counters)
        .map(|(r, c)| {
            let share = if c.matched > 0 {
                100.0 * c.injected as f64 / c.matched as f64
            } else {
                0.0
            };
            format!(
                "{} {} via {}: matched {} failed {} ({share:.1}%) with {}",
                r.fault,
                r.syscall,
                r.backend.name(),
                c.matched,
                c.injected,
                errno_text(r.errno)
            )
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Runs the blast; the exit code follows CONTRACT section 2.
pub fn run(
    policy: &Policy,
    opts: &SyscallOptions,
    json_out: bool,
    metrics: Option<&MetricsServer>,
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
    let applied = super::apply(policy, opts)?;
    if let Some(m) = metrics {
        m.set_syscall_faults(&applied.rows);
    }
    let total = policy.duration;
    let tty = std::io::stderr().is_terminal() && !json_out;
    if json_out {
        out!(
            "{}",
            json!({"event": "applied", "policy": policy.name, "mode": applied.backends(),
                   "deadline_ns": applied.deadline_ns, "pid": std::process::id()})
        );
    } else {
        err!(
            "chaos-agent: {} syscall fault row(s) of {} in force via {}; reverting in {} (Ctrl-C to stop now)",
            applied.rows.len(),
            policy.name,
            applied.backends(),
            humantime::format_duration(total)
        );
    }
    let started = Instant::now();
    let mut next_report = started + REPORT_EVERY;
    let reason = loop {
        if stop.load(Ordering::Relaxed) {
            break "signal";
        }
        if applied.remaining().is_zero() {
            break "deadline";
        }
        std::thread::sleep(TICK);
        if Instant::now() >= next_report {
            next_report += REPORT_EVERY;
            let counters = applied.counters();
            if let Some(m) = metrics {
                m.update_syscalls(&applied.rows, &counters);
            }
            let elapsed = started.elapsed().min(total);
            if json_out {
                out!(
                    "{}",
                    json!({"event": "counters", "elapsed_ms": elapsed.as_millis() as u64,
                           "faults": counters_json(&applied, &counters)})
                );
            } else if tty {
                err!(raw
                    "\r\x1b[K[{:>5.0}s/{}s] {}",
                    elapsed.as_secs_f64(),
                    total.as_secs(),
                    human_line(&applied, &counters)
                );
            } else {
                err!(
                    "[{:.0}s/{}s] {}",
                    elapsed.as_secs_f64(),
                    total.as_secs(),
                    human_line(&applied, &counters)
                );
            }
            let _ = std::io::stdout().flush();
        }
    };
    let counters = applied.counters();
    let final_json = counters_json(&applied, &counters);
    let final_text = human_line(&applied, &counters);
    if tty {
        err!();
    }
    if let Some(m) = metrics {
        m.update_syscalls(&applied.rows, &counters);
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
