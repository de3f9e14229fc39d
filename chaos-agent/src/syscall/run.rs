//! `blast syscall` (and `blast --policy` with syscall faults): apply in the
//! foreground, live counters once a second, revert at the end of the
//! duration, on Ctrl-C or on SIGTERM. Same lifecycle and JSON events as
//! `blast net`: the loop is [`blast::drive`]; this file holds what differs.

use std::{process::ExitCode, time::Duration};

use serde_json::json;

use super::{RowCounters, SyscallApplied, SyscallOptions};
use crate::{
    blast::{self, InForce},
    error::Result,
    metrics::MetricsServer,
    policy::{model::Policy, values},
};

fn errno_text(errno: i32) -> String {
    values::errno_name(errno)
        .map(str::to_owned)
        .unwrap_or_else(|| errno.to_string())
}

impl InForce for SyscallApplied {
    type Counters = RowCounters;
    const PROGRESS_BAR: bool = false;

    fn count_label(&self) -> String {
        format!("{} syscall fault row(s)", self.rows.len())
    }

    fn mode(&self) -> String {
        self.backends()
    }

    fn deadline_ns(&self) -> u64 {
        self.deadline_ns
    }

    fn remaining(&self) -> Duration {
        SyscallApplied::remaining(self)
    }

    fn counters(&self) -> Vec<RowCounters> {
        SyscallApplied::counters(self)
    }

    fn counters_json(&self, counters: &[RowCounters]) -> serde_json::Value {
        let rows: Vec<_> = self
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

    fn human_line(&self, counters: &[RowCounters]) -> String {
        self.rows
            .iter()
            .zip(counters)
            .map(|(r, c)| {
                let share = blast::share(c.matched, c.injected);
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

    fn publish_faults(&self, metrics: &MetricsServer) {
        metrics.set_syscall_faults(&self.rows);
    }

    fn publish_counters(&self, metrics: &MetricsServer, counters: &[RowCounters]) {
        metrics.update_syscalls(&self.rows, counters);
    }

    fn revert(self) -> Vec<String> {
        SyscallApplied::revert(self)
    }
}

/// Runs the blast; the exit code follows CONTRACT section 2.
///
/// No steady-state guard here: a syscall blast has never run `abortWhen`
/// (the guard probes the network, which these faults do not touch).
pub fn run(
    policy: &Policy,
    opts: &SyscallOptions,
    json_out: bool,
    metrics: Option<&MetricsServer>,
) -> Result<ExitCode> {
    blast::drive(policy, json_out, metrics, None, || {
        super::apply(policy, opts)
    })
}
