//! `blast`: apply a policy in the foreground, show live counters once a
//! second, revert at the end of the duration, on Ctrl-C or on SIGTERM.

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
    policy::model::{Direction, Policy},
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

fn direction_label(d: Direction) -> &'static str {
    match d {
        Direction::Egress => "egress",
        Direction::Ingress => "ingress",
        Direction::Both => "both",
    }
}

fn counters_json(applied: &Applied, counters: &[FaultCounters]) -> serde_json::Value {
    let faults: Vec<_> = applied
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

fn human_line(applied: &Applied, counters: &[FaultCounters]) -> String {
    applied
        .faults
        .iter()
        .zip(counters)
        .map(|(f, c)| {
            let share = if c.matched > 0 {
                100.0 * c.injected as f64 / c.matched as f64
            } else {
                0.0
            };
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

/// Runs the blast; the exit code follows CONTRACT section 2.
/// With `metrics`, its snapshot is refreshed at every report (once a second)
/// and at the end.
pub fn run(
    policy: &Policy,
    opts: &Options,
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
    let mut applied = apply::apply(policy, opts)?;
    // The steady-state guard, when the policy or the --abort-* flags have one.
    let aborted: Arc<Mutex<Option<String>>> = Arc::default();
    let _prober = policy.abort_when.clone().map(|guard| {
        let aborted = Arc::clone(&aborted);
        steady::Prober::spawn(policy.name.clone(), guard, move |reason| {
            if let Ok(mut a) = aborted.lock() {
                *a = Some(reason);
            }
        })
    });
    if let Some(m) = metrics {
        m.set_faults(&applied.faults);
    }
    let total = policy.duration;
    let tty = std::io::stderr().is_terminal() && !json_out;
    if json_out {
        out!(
            "{}",
            json!({"event": "applied", "policy": policy.name, "mode": applied.mode,
                   "deadline_ns": applied.deadline_ns, "pid": std::process::id()})
        );
    } else {
        err!(
            "chaos-agent: {} fault(s) of {} in force via {}; reverting in {} (Ctrl-C to stop now)",
            applied.faults.len(),
            policy.name,
            applied.mode,
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
        applied.flush_logs();
        if Instant::now() >= next_report {
            next_report += REPORT_EVERY;
            let counters = applied.counters();
            if let Some(m) = metrics {
                m.update(&applied.faults, &counters);
            }
            let elapsed = started.elapsed().min(total);
            if json_out {
                out!(
                    "{}",
                    json!({"event": "counters", "elapsed_ms": elapsed.as_millis() as u64, "faults": counters_json(&applied, &counters)})
                );
            } else if tty {
                let width = 20usize;
                let done = ((elapsed.as_secs_f64() / total.as_secs_f64()) * width as f64) as usize;
                err!(raw
                    "\r\x1b[K[{}{}] {:>5.0}s/{}s  {}",
                    "#".repeat(done.min(width)),
                    "-".repeat(width - done.min(width)),
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
        m.update(&applied.faults, &counters);
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
