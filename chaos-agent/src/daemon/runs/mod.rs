//! What the daemon holds in force: one run per policy (its window, its
//! steady-state probe, its faults), all applied through the one engine.
//!
//! A reload is a diff against what is in force, keyed by policy name and
//! fault name:
//! - a policy whose file did not change keeps its faults, counters and
//!   deadline;
//! - a policy whose `duration`, `startAfter`, `guard` or `abortWhen`
//!   changed is replaced as a whole (a new experiment window);
//! - otherwise faults are compared one by one: unchanged ones stay, a new
//!   percent, burst, latency, rate or errno, a new schedule or mode
//!   (shadow to enforce) is written in place (one map write),
//!   removed ones are reverted, new or otherwise changed ones are applied
//!   for the rest of the policy's window (a changed fault is reverted
//!   before its new version goes in, never both at once).
//!
//! Faults this kernel cannot do are reported as unsupported (with what is
//! missing); faults whose apply failed (an interface that does not exist
//! yet) are retried at the next reload. The rest of the policy applies.

mod status;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use tokio::{sync::mpsc, time::Instant};
use tracing::{error, info, warn};

use crate::{
    control::proto::Stopped,
    engine::{Engine, FaultId},
    error::Error,
    fault::{Counts, monotonic_ns},
    metrics::{Labels, Tally},
    policy::model::{Fault, Policy},
    steady,
};

/// A steady-state probe failed often enough: revert the policy.
pub struct Abort {
    pub policy: String,
    /// Which run of the policy the probe belonged to.
    pub generation: u64,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq)]
enum RunState {
    /// Waiting for `startAfter`.
    Pending,
    Active,
    Expired,
    /// Stopped over the control socket; stays so until its file changes.
    Stopped,
    /// Reverted by the steady-state guard.
    Aborted(String),
}

/// Why a fault is not in force.
#[derive(Clone, Debug, PartialEq)]
enum Problem {
    /// This kernel cannot do it; not retried.
    Unsupported(String),
    /// Applying it failed; retried at the next reload.
    Failed(String),
}

struct FaultRun {
    fault: Fault,
    id: Option<FaultId>,
    problem: Option<Problem>,
    /// Counters when last read or reverted.
    last: Counts,
    /// How it reached the kernel, once applied.
    backend: Option<String>,
}

impl FaultRun {
    fn new(fault: &Fault) -> FaultRun {
        FaultRun {
            fault: fault.clone(),
            id: None,
            problem: None,
            last: Counts::default(),
            backend: None,
        }
    }
}

struct PolicyRun {
    policy: Policy,
    file: PathBuf,
    /// Tells this run apart from an earlier one of the same name (probes
    /// of a replaced run must not abort the new one).
    generation: u64,
    start_at: Instant,
    deadline: Instant,
    state: RunState,
    faults: Vec<FaultRun>,
    probe: Option<steady::Prober>,
}

/// Policy-level fields equal (the faults and the file name aside).
fn same_window(a: &Policy, b: &Policy) -> bool {
    a.duration == b.duration
        && a.start_after == b.start_after
        && a.guard == b.guard
        && a.abort_when == b.abort_when
}

pub struct Runs {
    engine: Engine,
    runs: BTreeMap<String, PolicyRun>,
    /// Counters of reverted faults, per label set, so exported counters
    /// never go backwards when a fault is replaced.
    retired: BTreeMap<Labels, Counts>,
    next_generation: u64,
    aborts: mpsc::UnboundedSender<Abort>,
    /// The daemon's own lease (`--lease`); in-force policies may shorten it.
    base_lease: Duration,
}

impl Runs {
    pub fn new(engine: Engine, aborts: mpsc::UnboundedSender<Abort>) -> Runs {
        Runs {
            base_lease: engine.lease(),
            engine,
            runs: BTreeMap::new(),
            retired: BTreeMap::new(),
            next_generation: 1,
            aborts,
        }
    }

    /// The engine's lease, for the loop's renewal timer.
    pub fn engine(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Drops every run (their faults already reverted), as at start-up.
    pub fn forget(&mut self) {
        self.runs.clear();
    }

    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// Brings what is in force in line with `desired` (policy name ->
    /// file, policy). The kill switch (`kill`) cuts it short between two
    /// faults.
    pub async fn reload(
        &mut self,
        desired: BTreeMap<String, (PathBuf, Policy)>,
        kill: &AtomicBool,
    ) {
        let current: Vec<String> = self.runs.keys().cloned().collect();
        for name in current {
            if !desired.contains_key(&name) {
                info!(policy = %name, "policy removed: reverting");
                self.revert_run(&name, RunState::Stopped);
                self.runs.remove(&name);
            }
        }
        for (name, (file, policy)) in desired {
            if kill.load(Ordering::SeqCst) {
                warn!("reload interrupted by the kill switch");
                break;
            }
            self.reconcile(&name, file, policy, kill).await;
        }
        self.prioritize();
        // The shortest `spec.lease` of the live policies, if shorter.
        let lease = self
            .runs
            .values()
            .filter(|r| matches!(r.state, RunState::Active | RunState::Pending))
            .filter_map(|r| r.policy.lease)
            .fold(self.base_lease, Duration::min);
        self.engine.set_lease(lease);
    }

    /// Network faults act in policy file name order, then fault order.
    fn prioritize(&mut self) {
        let mut runs: Vec<&PolicyRun> = self.runs.values().collect();
        runs.sort_by(|a, b| a.file.cmp(&b.file));
        let order: Vec<FaultId> = runs
            .iter()
            .flat_map(|r| r.faults.iter().filter_map(|f| f.id))
            .collect();
        if let Err(e) = self.engine.prioritize(&order) {
            warn!("fault order not updated: {e}");
        }
    }

    fn new_run(&mut self, file: PathBuf, policy: Policy) -> PolicyRun {
        let start_at = Instant::now() + policy.start_after;
        let generation = self.next_generation;
        self.next_generation += 1;
        PolicyRun {
            faults: policy.faults.iter().map(FaultRun::new).collect(),
            deadline: start_at + policy.duration,
            start_at,
            state: RunState::Pending,
            policy,
            file,
            generation,
            probe: None,
        }
    }

    async fn reconcile(&mut self, name: &str, file: PathBuf, policy: Policy, kill: &AtomicBool) {
        let Some(run) = self.runs.get_mut(name) else {
            info!(policy = %name, file = %file.display(), "policy loaded");
            let run = self.new_run(file, policy);
            self.runs.insert(name.to_owned(), run);
            self.start_if_due(name, kill).await;
            return;
        };
        let unchanged = {
            let mut a = run.policy.clone();
            let mut b = policy.clone();
            a.origin.clear();
            b.origin.clear();
            a == b
        };
        run.file = file.clone();
        if unchanged {
            // Same policy: keep everything; retry faults that failed for a
            // reason that may have gone (an interface created since).
            if run.state == RunState::Active {
                self.apply_pending(name, true, kill).await;
            }
            return;
        }
        let live = matches!(run.state, RunState::Active | RunState::Pending);
        if !live || !same_window(&run.policy, &policy) {
            info!(policy = %name, "policy changed: replacing it as a whole");
            self.revert_run(name, RunState::Stopped);
            let run = self.new_run(file, policy);
            self.runs.insert(name.to_owned(), run);
            self.start_if_due(name, kill).await;
            return;
        }
        // Same window: fault by fault.
        let mut old: BTreeMap<String, FaultRun> = std::mem::take(&mut run.faults)
            .into_iter()
            .map(|f| (f.fault.name.clone(), f))
            .collect();
        let mut faults = Vec::new();
        for f in &policy.faults {
            let existing = old.remove(&f.name);
            match existing {
                Some(existing) if existing.fault == *f => faults.push(existing),
                Some(mut existing) if existing.id.is_some() => {
                    let id = existing.id.expect("checked");
                    // A new mode starts the fault's counters afresh under
                    // its new `mode` label; what it counted so far stays
                    // under the old one.
                    let before: Vec<_> = self
                        .engine
                        .rows(id)
                        .iter()
                        .map(Labels::of)
                        .zip(self.engine.counters(id))
                        .collect();
                    match self.engine.set_action(id, f) {
                        Ok(()) => {
                            if existing.fault.mode != f.mode {
                                info!(policy = %name, fault = %f.name, mode = %f.mode, "fault mode changed in place");
                                for (labels, c) in before {
                                    *self.retired.entry(labels).or_default() += c;
                                }
                            } else {
                                info!(policy = %name, fault = %f.name, "fault action changed in place");
                            }
                            existing.fault = f.clone();
                            faults.push(existing);
                        }
                        Err(_) => {
                            info!(policy = %name, fault = %f.name, "fault changed: replacing it");
                            self.retire(&mut existing);
                            faults.push(FaultRun::new(f));
                        }
                    }
                }
                Some(_) => faults.push(FaultRun::new(f)),
                None => {
                    info!(policy = %name, fault = %f.name, "fault added");
                    faults.push(FaultRun::new(f));
                }
            }
        }
        for (fault, mut prev) in old {
            info!(policy = %name, fault = %fault, "fault removed: reverting");
            self.retire(&mut prev);
        }
        let run = self.runs.get_mut(name).expect("checked above");
        run.faults = faults;
        run.policy = policy;
        if run.state == RunState::Active {
            self.apply_pending(name, false, kill).await;
        }
    }

    async fn start_if_due(&mut self, name: &str, kill: &AtomicBool) {
        let Some(r) = self.runs.get(name) else {
            return;
        };
        if r.state == RunState::Pending && Instant::now() >= r.start_at {
            self.activate(name, kill).await;
        } else {
            let wait = r.start_at.saturating_duration_since(Instant::now());
            info!(policy = %name, start_in = %humantime::format_duration(wait), "waiting for startAfter");
        }
    }

    async fn activate(&mut self, name: &str, kill: &AtomicBool) {
        let Some(run) = self.runs.get_mut(name) else {
            return;
        };
        run.state = RunState::Active;
        if let Some(guard) = &run.policy.abort_when {
            let aborts = self.aborts.clone();
            let (policy, generation) = (name.to_owned(), run.generation);
            run.probe = Some(steady::Prober::spawn(
                name.to_owned(),
                guard.clone(),
                move |reason| {
                    let _ = aborts.send(Abort {
                        policy,
                        generation,
                        reason,
                    });
                },
            ));
        }
        self.apply_pending(name, false, kill).await;
    }

    /// Applies every fault of an active run that is not in force yet (with
    /// `retry_failed`, also those whose apply failed before), one at a time,
    /// letting the control socket in between.
    async fn apply_pending(&mut self, name: &str, retry_failed: bool, kill: &AtomicBool) {
        let count = self.runs.get(name).map_or(0, |r| r.faults.len());
        for i in 0..count {
            if kill.load(Ordering::SeqCst) {
                return;
            }
            let Some(run) = self.runs.get_mut(name) else {
                return;
            };
            let remaining = run.deadline.saturating_duration_since(Instant::now());
            let f = &mut run.faults[i];
            let retry = match &f.problem {
                None => true,
                Some(Problem::Failed(_)) => retry_failed,
                Some(Problem::Unsupported(_)) => false,
            };
            if f.id.is_some() || !retry || remaining.is_zero() {
                continue;
            }
            if let Err(e) = self.engine.check(&run.policy, &f.fault) {
                // What is missing in the kernel stays missing; what is
                // missing on the host (an interface) may come.
                let (p, what) = match e {
                    Error::Unsupported(_) => (Problem::Unsupported(e.to_string()), "unsupported"),
                    _ => (
                        Problem::Failed(format!("apply failed: {e}")),
                        "apply failed",
                    ),
                };
                if f.problem.as_ref() != Some(&p) {
                    warn!(policy = %name, fault = %f.fault.name, "{what}: {e}");
                }
                f.problem = Some(p);
                continue;
            }
            let t = std::time::Instant::now();
            let deadline_ns = monotonic_ns() + remaining.as_nanos() as u64;
            match self.engine.apply(&run.policy, &[&f.fault], deadline_ns) {
                Ok(ids) => {
                    let mode = self.engine.mode(&ids);
                    info!(
                        policy = %name,
                        fault = %f.fault.name,
                        mode,
                        elapsed_ms = format!("{:.1}", t.elapsed().as_secs_f64() * 1000.0),
                        "fault in force"
                    );
                    f.id = ids.first().copied();
                    f.backend = Some(mode);
                    f.problem = None;
                }
                Err(Error::Unsupported(m)) => {
                    warn!(policy = %name, fault = %f.fault.name, "unsupported: {m}");
                    f.problem = Some(Problem::Unsupported(format!(
                        "not supported on this host: {m}"
                    )));
                }
                Err(e) => {
                    error!(policy = %name, fault = %f.fault.name, "apply failed: {e}");
                    f.problem = Some(Problem::Failed(format!("apply failed: {e}")));
                }
            }
            tokio::task::yield_now().await;
        }
    }

    /// Reverts one fault, keeping its counters for the metrics; returns
    /// its last counters and what could not be removed.
    fn retire_id(&mut self, id: FaultId) -> (Counts, Vec<String>) {
        let mut total = Counts::default();
        for (row, c) in self.engine.rows(id).iter().zip(self.engine.counters(id)) {
            *self.retired.entry(Labels::of(row)).or_default() += c;
            total += c;
        }
        let left = self.engine.revert(id);
        for l in &left {
            warn!("{l}");
        }
        (total, left)
    }

    fn retire(&mut self, f: &mut FaultRun) -> Vec<String> {
        let Some(id) = f.id.take() else {
            return Vec::new();
        };
        let (last, left) = self.retire_id(id);
        f.last = last;
        left
    }

    /// Reverts the given faults (policy name, index), the last applied
    /// first.
    fn retire_all(&mut self, faults: Vec<(String, usize)>) -> Vec<String> {
        let mut order: Vec<(FaultId, String, usize)> = faults
            .into_iter()
            .filter_map(|(name, i)| {
                let id = self.runs.get(&name)?.faults.get(i)?.id?;
                Some((id, name, i))
            })
            .collect();
        order.sort_by_key(|o| std::cmp::Reverse(o.0));
        let mut left = Vec::new();
        for (id, name, i) in order {
            let (last, l) = self.retire_id(id);
            left.extend(l);
            if let Some(f) = self.runs.get_mut(&name).and_then(|r| r.faults.get_mut(i)) {
                f.id = None;
                f.last = last;
            }
        }
        left
    }

    /// Reverts every fault of a run and sets its state.
    fn revert_run(&mut self, name: &str, state: RunState) -> Vec<String> {
        let Some(run) = self.runs.get_mut(name) else {
            return Vec::new();
        };
        run.state = state;
        run.probe = None;
        let faults = (0..run.faults.len())
            .map(|i| (name.to_owned(), i))
            .collect();
        self.retire_all(faults)
    }

    /// Reverts everything (shutdown), the last applied first across runs.
    pub fn revert_everything(&mut self) -> Vec<String> {
        let mut faults = Vec::new();
        for (name, r) in &mut self.runs {
            if matches!(r.state, RunState::Active | RunState::Pending) {
                r.state = RunState::Stopped;
            }
            r.probe = None;
            faults.extend((0..r.faults.len()).map(|i| (name.clone(), i)));
        }
        let mut left = self.retire_all(faults);
        left.extend(self.engine.revert_all());
        left
    }

    /// Starts runs whose `startAfter` passed, expires those whose deadline
    /// did.
    pub async fn advance(&mut self, kill: &AtomicBool) {
        let now = Instant::now();
        let names: Vec<String> = self.runs.keys().cloned().collect();
        for name in names {
            let Some(run) = self.runs.get(&name) else {
                continue;
            };
            match run.state {
                RunState::Pending if now >= run.start_at => {
                    info!(policy = %name, "startAfter passed: applying");
                    self.activate(&name, kill).await;
                    self.prioritize();
                }
                RunState::Active if now >= run.deadline => {
                    self.revert_run(&name, RunState::Expired);
                    info!(policy = %name, "expired: duration reached, faults reverted");
                }
                _ => {}
            }
        }
    }

    /// When `advance` has something to do next.
    pub fn next_wake(&self) -> Option<Instant> {
        self.runs
            .values()
            .filter_map(|r| match r.state {
                RunState::Pending => Some(r.start_at),
                RunState::Active => Some(r.deadline),
                _ => None,
            })
            .min()
    }

    /// A probe's verdict: reverts its policy if the run is still the one
    /// probed. True when it did.
    pub fn abort(&mut self, a: Abort) -> bool {
        let Some(run) = self.runs.get(&a.policy) else {
            return false;
        };
        if run.generation != a.generation || run.state != RunState::Active {
            return false;
        }
        error!(policy = %a.policy, "steady-state guard failed: {}; reverting the policy", a.reason);
        self.revert_run(&a.policy, RunState::Aborted(a.reason));
        true
    }

    /// `stop POLICY...` / `stop --all`.
    pub fn stop(&mut self, policies: Vec<String>, all: bool) -> Stopped {
        let mut out = Stopped::default();
        let names: Vec<String> = if all {
            self.runs.keys().cloned().collect()
        } else {
            policies
        };
        for name in names {
            match self.runs.get(&name).map(|r| r.state.clone()) {
                None => out.unknown.push(name),
                Some(RunState::Active | RunState::Pending) => {
                    out.left.extend(self.revert_run(&name, RunState::Stopped));
                    info!(policy = %name, "stopped over the control socket");
                    out.stopped.push(name);
                }
                Some(_) => {}
            }
        }
        if all {
            warn!(
                stopped = out.stopped.len(),
                "kill switch: every fault reverted"
            );
        }
        out
    }

    /// Faults in force per policy, counters (live plus retired) and the
    /// kernel deadlines of live faults, for the metrics; refreshes what
    /// `status` shows of live faults.
    pub fn tally(&mut self) -> Tally {
        self.engine.flush_logs();
        let mut tally = Tally::default();
        for (labels, c) in &self.retired {
            tally.add_counts(labels, *c);
        }
        for (name, r) in &mut self.runs {
            tally.policy(name);
            for f in &mut r.faults {
                let Some(id) = f.id else { continue };
                let mut total = Counts::default();
                // In force while the engine holds it (its deadline may
                // have passed a moment before `advance` reverts it).
                let deadline = self.engine.deadline_ns(id);
                for (row, c) in self.engine.rows(id).iter().zip(self.engine.counters(id)) {
                    tally.add(row, c, deadline);
                    total += c;
                }
                f.last = total;
            }
        }
        tally
    }
}
