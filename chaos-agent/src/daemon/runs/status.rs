//! What `status` shows of the runs: every policy with its state and time
//! left, every fault with where it acts, whether it is in force (or why
//! not) and its counters.

use std::time::Duration;

use tokio::time::Instant;

use super::{FaultRun, PolicyRun, Problem, RunState, Runs};
use crate::{
    control::proto::{FaultState, FaultStatus, PolicyState, PolicyStatus, Status},
    fault::{Counts, Hook, monotonic_ns},
    policy::model::{FaultKind, Mode},
};

impl Runs {
    /// The policies part of `status`.
    pub fn status(&self, into: &mut Status) {
        let now = Instant::now();
        for (name, r) in &self.runs {
            let faults: Vec<FaultStatus> =
                r.faults.iter().map(|f| self.fault_status(r, f)).collect();
            let in_force = faults
                .iter()
                .filter(|f| f.state == FaultState::Active)
                .count();
            let state = match &r.state {
                RunState::Pending => PolicyState::Pending,
                RunState::Active if in_force == 0 => PolicyState::Failed,
                RunState::Active => PolicyState::Active,
                RunState::Expired => PolicyState::Expired,
                RunState::Stopped => PolicyState::Stopped,
                RunState::Aborted(_) => PolicyState::Aborted,
            };
            let live = matches!(r.state, RunState::Active | RunState::Pending);
            into.policies.push(PolicyStatus {
                name: name.clone(),
                file: r.file.display().to_string(),
                state,
                reason: match &r.state {
                    RunState::Aborted(why) => Some(why.clone()),
                    _ => None,
                },
                time_left_ms: live.then(|| ms(r.deadline.saturating_duration_since(now))),
                starts_in_ms: (r.state == RunState::Pending)
                    .then(|| ms(r.start_at.saturating_duration_since(now))),
                shadow: r.policy.faults.iter().all(|f| f.mode == Mode::Shadow),
                faults,
            });
        }
    }

    fn fault_status(&self, r: &PolicyRun, f: &FaultRun) -> FaultStatus {
        let counts = match f.id {
            Some(id) => {
                let mut sum = Counts::default();
                for c in self.engine.counters(id) {
                    sum += c;
                }
                sum
            }
            None => f.last,
        };
        let state = match (&f.id, &f.problem, &r.state) {
            (Some(_), ..) => FaultState::Active,
            (None, Some(Problem::Unsupported(_)), _) => FaultState::Unsupported,
            (None, Some(Problem::Failed(_)), _) => FaultState::Failed,
            (None, None, RunState::Active | RunState::Pending) => FaultState::Pending,
            (None, None, RunState::Expired) => FaultState::Expired,
            (None, None, RunState::Stopped) => FaultState::Stopped,
            (None, None, RunState::Aborted(_)) => FaultState::Aborted,
        };
        let problem = f.problem.as_ref().map(|p| match p {
            Problem::Unsupported(m) | Problem::Failed(m) => m.clone(),
        });
        let mut s = FaultStatus {
            fault: f.fault.name.clone(),
            action: f.fault.kind.action_kind().to_string(),
            interface: None,
            netns: None,
            direction: None,
            syscall: None,
            errno: None,
            target: None,
            backend: f.backend.clone(),
            state,
            problem,
            matched: counts.matched,
            injected: counts.injected,
            guard_passed: counts.guard_passed,
            shadow: f.fault.mode == Mode::Shadow,
            phase: f.id.and_then(|id| {
                let row = self.engine.rows(id).first()?;
                row.schedule?;
                Some(
                    if row.is_on(monotonic_ns()) {
                        "on"
                    } else {
                        "off"
                    }
                    .to_owned(),
                )
            }),
        };
        match &f.fault.kind {
            FaultKind::Network(n) => {
                s.interface = Some(n.interface.clone());
                s.netns = n.netns.clone();
                s.direction = Some(n.direction.to_string());
            }
            FaultKind::Syscall(sc) => {
                s.syscall = Some(sc.names.join(","));
                s.errno = Some(sc.errno);
                s.target = f.id.and_then(|id| {
                    self.engine.rows(id).iter().find_map(|row| match &row.hook {
                        Hook::Syscall { target, .. } => Some(target.clone()),
                        Hook::Net { .. } => None,
                    })
                });
            }
        }
        s
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}
