//! `blast`: apply a policy in the foreground, show live counters once a
//! second, revert at the end of the duration, on Ctrl-C or SIGTERM, or when
//! the steady-state guard fails. Network and syscall faults, alone or mixed
//! in one policy, go through the same engine and the same loop.

use std::{
    io::{IsTerminal, Write},
    process::ExitCode,
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{Instant, sleep_until},
};

use crate::{
    engine::{Engine, FaultId},
    error::{Error, Result},
    fault::{Counts, Hook, Row, monotonic_ns},
    metrics::{Metrics, Tally},
    policy::{
        model::{Mode, Policy},
        values,
    },
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

const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The faults a blast holds in force, with their rows in fault order.
struct InForce {
    ids: Vec<FaultId>,
}

impl InForce {
    fn rows<'e>(&self, engine: &'e Engine) -> Vec<&'e Row> {
        self.ids.iter().flat_map(|id| engine.rows(*id)).collect()
    }

    fn counters(&self, engine: &Engine) -> Vec<Counts> {
        self.ids
            .iter()
            .flat_map(|id| engine.counters(*id))
            .collect()
    }
}

fn errno_text(errno: i32) -> String {
    values::errno_name(errno)
        .map(str::to_owned)
        .unwrap_or_else(|| errno.to_string())
}

/// "on" or "off" for a flapping row at `now_ns`, `None` for one without a
/// schedule.
fn phase(r: &Row, now_ns: u64) -> Option<&'static str> {
    r.schedule?;
    Some(if r.is_on(now_ns) { "on" } else { "off" })
}

/// The `faults` array of the `counters` and `reverted` events.
fn counters_json(rows: &[&Row], counters: &[Counts]) -> Value {
    let now = monotonic_ns();
    let rows: Vec<Value> = rows
        .iter()
        .zip(counters)
        .map(|(r, c)| {
            let mut v = json!({
                "policy": r.policy, "fault": r.fault, "action": r.action.to_string(),
                "backend": r.backend.to_string(),
                "matched": c.matched, "injected": c.injected,
                "shadow": r.mode == Mode::Shadow, "phase": phase(r, now),
            });
            match &r.hook {
                Hook::Net {
                    interface,
                    netns,
                    direction,
                } => {
                    v["interface"] = json!(interface);
                    v["netns"] = json!(netns);
                    v["direction"] = json!(direction.to_string());
                    v["guard_passed"] = json!(c.guard_passed);
                }
                Hook::Syscall {
                    names,
                    errno,
                    target,
                } => {
                    v["syscall"] = json!(names);
                    v["errno"] = json!(errno);
                    v["errno_name"] = json!(values::errno_name(*errno));
                    v["target"] = json!(target);
                }
            }
            v
        })
        .collect();
    json!(rows)
}

/// The human counter line, rows separated by ` | `. A shadow row says
/// what it would do ("would drop"), a flapping one its phase.
fn human_line(rows: &[&Row], counters: &[Counts]) -> String {
    let now = monotonic_ns();
    rows.iter()
        .zip(counters)
        .map(|(r, c)| {
            let share = c.share();
            let verb = match r.mode {
                Mode::Shadow => r.action.shadow_verb(),
                Mode::Enforce => r.action.verb(),
            };
            let phase = phase(r, now)
                .map(|p| format!(" (flap {p})"))
                .unwrap_or_default();
            let line = match &r.hook {
                Hook::Net {
                    interface,
                    direction,
                    ..
                } => format!(
                    "{interface} {direction} {}: matched {} {verb} {} ({share:.1}%) guard-passed {}",
                    r.fault, c.matched, c.injected, c.guard_passed
                ),
                Hook::Syscall { names, errno, .. } => format!(
                    "{} {names} via {}: matched {} {verb} {} ({share:.1}%) with {}",
                    r.fault,
                    r.backend,
                    c.matched,
                    c.injected,
                    errno_text(*errno)
                ),
            };
            format!("{line}{phase}")
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// How a blast reports and what it serves.
pub struct Output {
    /// JSON lines on stdout instead of the human report.
    pub json: bool,
    /// The metrics listener, bound before anything is applied.
    pub metrics: Option<Metrics>,
}

/// Why the run loop ended.
enum End {
    Signal,
    Deadline,
    Guard(String),
    /// The lease ran out before the loop renewed it (the blast was stopped
    /// or starved): its faults were inert for a while.
    Lapsed(Duration),
}

impl End {
    fn reason(&self) -> &'static str {
        match self {
            End::Signal => "signal",
            End::Deadline => "deadline",
            End::Guard(_) => "steady-state guard",
            End::Lapsed(_) => "lease lapsed",
        }
    }
}

/// Runs a blast of `policy` through `engine`: waits out `startAfter`,
/// applies every fault, reports, reverts. The exit code follows
/// docs/cli.md: 0 when everything was reverted.
pub async fn run(policy: &Policy, mut engine: Engine, output: Output) -> Result<ExitCode> {
    let Output { json, metrics } = output;
    let mut sigint = signal(SignalKind::interrupt())
        .map_err(|e| Error::Runtime(format!("cannot install signal handler: {e}")))?;
    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|e| Error::Runtime(format!("cannot install signal handler: {e}")))?;
    // What this kernel cannot do is said before any waiting.
    for f in &policy.faults {
        engine.check(policy, f)?;
    }
    if !policy.start_after.is_zero() {
        // A countdown, so a waiting blast is not mistaken for a hung one.
        let tty = std::io::stderr().is_terminal() && !json;
        let start = Instant::now() + policy.start_after;
        loop {
            let left = start.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let secs = left.as_secs_f64().ceil() as u64;
            if json {
                out!(
                    "{}",
                    json!({"event": "waiting", "policy": policy.name,
                           "starts_in_ms": left.as_millis() as u64})
                );
            } else if tty {
                err!(raw "\r\x1b[Kchaos-agent: {} starts in {secs}s (startAfter; Ctrl-C to cancel)", policy.name);
            } else {
                err!(
                    "chaos-agent: {} starts in {secs}s (startAfter)",
                    policy.name
                );
            }
            let tick = left.min(REPORT_EVERY);
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = sigint.recv() => return Ok(ExitCode::SUCCESS),
                _ = sigterm.recv() => return Ok(ExitCode::SUCCESS),
            }
        }
        if tty {
            err!();
        }
    }
    // Nothing was in force while waiting: the lease starts now.
    engine.restart_lease();
    let deadline_ns = monotonic_ns() + policy.duration.as_nanos() as u64;
    let all: Vec<&crate::policy::model::Fault> = policy.faults.iter().collect();
    let force = InForce {
        ids: engine.apply(policy, &all, deadline_ns)?,
    };
    let (abort_tx, mut abort_rx) = mpsc::unbounded_channel::<String>();
    let _prober = policy.abort_when.clone().map(|guard| {
        steady::Prober::spawn(policy.name.clone(), guard, move |reason| {
            let _ = abort_tx.send(reason);
        })
    });
    let rows: Vec<Row> = force.rows(&engine).into_iter().cloned().collect();
    let row_refs: Vec<&Row> = rows.iter().collect();
    // One deadline for every fault of a blast.
    let publish = |counters: &[Counts], in_force: bool| {
        if let Some(m) = &metrics {
            let mut tally = Tally::default();
            for (r, c) in rows.iter().zip(counters) {
                tally.add(r, *c, in_force.then_some(deadline_ns));
            }
            m.set(tally);
        }
    };
    publish(&vec![Counts::default(); rows.len()], true);
    let mode = engine.mode(&force.ids);
    let total = policy.duration;
    let tty = std::io::stderr().is_terminal() && !json;
    // A policy has one mode for all its faults.
    let shadow = policy.faults.iter().all(|f| f.mode == Mode::Shadow);
    if json {
        out!(
            "{}",
            json!({"event": "applied", "policy": policy.name, "mode": mode,
                   "shadow": shadow, "deadline_ns": deadline_ns, "pid": std::process::id()})
        );
    } else {
        err!(
            "chaos-agent: {} fault(s) of {} in force via {mode}{}; reverting in {} (Ctrl-C to stop now)",
            policy.faults.len(),
            policy.name,
            if shadow {
                " in shadow mode (nothing is done: the counters say what would be)"
            } else {
                ""
            },
            humantime::format_duration(total)
        );
    }
    let started = Instant::now();
    let deadline = started + total;
    let mut next_report = started + REPORT_EVERY;
    let mut next_renew = started + engine.renew_every();
    let bar = rows.iter().any(|r| matches!(r.hook, Hook::Net { .. }));
    let end = loop {
        tokio::select! {
            _ = sigint.recv() => break End::Signal,
            _ = sigterm.recv() => break End::Signal,
            Some(why) = abort_rx.recv() => break End::Guard(why),
            _ = sleep_until(deadline.min(next_report).min(next_renew)) => {}
        }
        engine.flush_logs();
        if Instant::now() >= next_renew {
            match engine.renew() {
                // Ran out after the faults' own deadline: no harm done.
                Err(lapsed) if lapsed.at_ns >= deadline_ns => break End::Deadline,
                Err(lapsed) => break End::Lapsed(lapsed.late),
                Ok(()) => {}
            }
            next_renew = Instant::now() + engine.renew_every();
        }
        if Instant::now() >= deadline {
            break End::Deadline;
        }
        if Instant::now() < next_report {
            continue;
        }
        next_report += REPORT_EVERY;
        let counters = force.counters(&engine);
        publish(&counters, true);
        let elapsed = started.elapsed().min(total);
        if json {
            out!(
                "{}",
                json!({"event": "counters", "elapsed_ms": elapsed.as_millis() as u64,
                       "faults": counters_json(&row_refs, &counters)})
            );
        } else if tty {
            err!(raw
                "\r\x1b[K{}",
                live_line(bar, elapsed, total, &human_line(&row_refs, &counters))
            );
        } else {
            err!(
                "[{:.0}s/{}s] {}",
                elapsed.as_secs_f64(),
                total.as_secs(),
                human_line(&row_refs, &counters)
            );
        }
        let _ = std::io::stdout().flush();
    };
    match &end {
        End::Guard(why) => err!("chaos-agent: steady-state guard failed: {why}; reverting"),
        End::Lapsed(late) => err!(
            "chaos-agent: the lease lapsed: this blast did not renew it for {} past its {} lease (stopped or starved), so its faults were inert for that long; reverting",
            humantime::format_duration(Duration::from_millis(late.as_millis() as u64)),
            humantime::format_duration(engine.lease())
        ),
        _ => {}
    }
    let counters = force.counters(&engine);
    if tty {
        err!();
    }
    let failures = engine.revert_all();
    publish(&counters, false);
    let reason = end.reason();
    if json {
        out!(
            "{}",
            json!({"event": "reverted", "reason": reason,
                   "faults": counters_json(&row_refs, &counters), "left": failures})
        );
    } else {
        err!("chaos-agent: reverted ({reason})");
        out!("{}", human_line(&row_refs, &counters));
    }
    // The last counters go out over OTLP too (bounded: a collector that
    // does not answer delays the exit by at most a moment, with every
    // fault already reverted).
    if let Some(m) = metrics {
        m.finish().await;
    }
    if !failures.is_empty() {
        return Err(Error::Runtime(format!(
            "revert incomplete; left behind: {}",
            failures.join("; ")
        )));
    }
    if let End::Lapsed(late) = end {
        return Err(Error::Runtime(format!(
            "the lease lapsed ({} late): the blast was stopped or starved and its faults went inert; everything is reverted",
            humantime::format_duration(Duration::from_millis(late.as_millis() as u64))
        )));
    }
    Ok(ExitCode::SUCCESS)
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
    use crate::{
        fault::Backend,
        policy::model::{ActionKind, Direction},
    };

    #[test]
    fn live_line_with_and_without_bar() {
        let line = live_line(true, Duration::from_secs(5), Duration::from_secs(10), "x");
        assert_eq!(line, "[##########----------]     5s/10s  x");
        let line = live_line(false, Duration::from_secs(5), Duration::from_secs(10), "x");
        assert_eq!(line, "[    5s/10s] x");
    }

    #[test]
    fn one_line_for_both_kinds() {
        let net = Row {
            policy: "p".into(),
            fault: "net".into(),
            action: ActionKind::Loss,
            backend: Backend::Tcx,
            hook: Hook::Net {
                interface: "eth0".into(),
                netns: None,
                direction: Direction::Egress,
            },
            mode: Mode::Enforce,
            schedule: None,
        };
        let sys = Row {
            policy: "p".into(),
            fault: "refuse".into(),
            action: ActionKind::Errno,
            backend: Backend::Cgroup,
            hook: Hook::Syscall {
                names: "connect".into(),
                errno: 111,
                target: "cgroup /x".into(),
            },
            mode: Mode::Enforce,
            schedule: None,
        };
        let c = Counts {
            matched: 10,
            injected: 3,
            guard_passed: 1,
        };
        assert_eq!(
            human_line(&[&net, &sys], &[c, c]),
            "eth0 egress net: matched 10 dropped 3 (30.0%) guard-passed 1 | refuse connect via cgroup: matched 10 failed 3 (30.0%) with ECONNREFUSED"
        );
        let v = counters_json(&[&net, &sys], &[c, c]);
        assert_eq!(v[0]["direction"], "egress");
        assert_eq!(v[1]["errno_name"], "ECONNREFUSED");
        assert_eq!(v[1]["backend"], "cgroup");
        assert_eq!(v[0]["shadow"], false);
        assert_eq!(v[0]["phase"], Value::Null);
    }

    #[test]
    fn shadow_rows_say_what_they_would_do_and_flapping_ones_their_phase() {
        let now = monotonic_ns();
        let row = |action, hook, schedule| Row {
            policy: "p".into(),
            fault: "f".into(),
            action,
            backend: Backend::Cgroup,
            hook,
            mode: Mode::Shadow,
            schedule,
        };
        let net = row(
            ActionKind::Loss,
            Hook::Net {
                interface: "eth0".into(),
                netns: None,
                direction: Direction::Ingress,
            },
            None,
        );
        // A schedule that started now with 1 h on: on.
        let on = chaos_common::Schedule {
            start_ns: now,
            on_ns: 3_600_000_000_000,
            period_ns: 7_200_000_000_000,
        };
        let sys = row(
            ActionKind::Errno,
            Hook::Syscall {
                names: "connect".into(),
                errno: 111,
                target: "cgroup /x".into(),
            },
            Some(on),
        );
        let c = Counts {
            matched: 4,
            injected: 4,
            guard_passed: 0,
        };
        assert_eq!(
            human_line(&[&net, &sys], &[c, c]),
            "eth0 ingress f: matched 4 would drop 4 (100.0%) guard-passed 0 | f connect via cgroup: matched 4 would fail 4 (100.0%) with ECONNREFUSED (flap on)"
        );
        let v = counters_json(&[&net, &sys], &[c, c]);
        assert_eq!(v[0]["shadow"], true);
        assert_eq!(v[1]["phase"], "on");
        // Started 1.5 h ago: in the off half.
        let off = chaos_common::Schedule {
            start_ns: now.saturating_sub(5_400_000_000_000),
            ..on
        };
        let late = row(ActionKind::Errno, sys.hook.clone(), Some(off));
        if now > 5_400_000_000_000 {
            assert_eq!(phase(&late, monotonic_ns()), Some("off"));
        }
    }
}
