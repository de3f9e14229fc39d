//! `chaos-agent run`: the daemon (CONTRACT section 1).
//!
//! One thread owns every applied fault and runs the main loop; the others
//! only send it [`Event`]s: the inotify watcher (debounced) and SIGHUP both
//! send `Reload`, so there is one reload path; SIGTERM/SIGINT send
//! `Shutdown`, which reverts everything before exit; the control socket
//! sends `Control` requests; steady-state probes send `Abort`.
//!
//! A reload is a diff against what is in force, keyed by policy name and
//! fault name. Each fault is applied as its own program instance, so it can
//! be added, replaced or reverted without touching its neighbours:
//! - a policy whose file did not change keeps its faults, counters and
//!   deadline;
//! - a policy whose `duration`, `startAfter`, `guard` or `abortWhen`
//!   changed is replaced as a whole (a new experiment window);
//! - otherwise faults are compared one by one: unchanged ones stay, removed
//!   ones are reverted, new or changed ones are applied for the rest of the
//!   policy's window;
//! - a file that turns invalid is reported (file:line:column: field) and
//!   counted, and its last good version stays in force.
//!
//! Faults the apply layer cannot do (syscall faults today; delay and
//! bandwidth on a kernel without fq) are reported as unsupported in
//! `status` and the log; the rest of the policy still applies.

mod lock;
mod notify;
mod watch;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, RecvTimeoutError, Sender, channel},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tracing::{error, info, warn};

use crate::{
    apply::{self, Applied, AttachMode, FaultCounters, Options},
    control::{self, Request},
    error::{Error, Result},
    metrics::{Labels, MetricsServer, labels_of},
    policy::{
        self,
        model::{Direction, Fault, FaultKind, NetworkAction, Policy},
    },
    steady,
};

/// What the main loop is asked to do.
pub enum Event {
    /// Read the policies directory again (file watcher, SIGHUP).
    Reload(&'static str),
    /// Revert everything and exit (SIGTERM, SIGINT).
    Shutdown(&'static str),
    /// A control socket request and where to send the answer.
    Control(Request, Sender<Value>),
    /// A steady-state probe failed often enough: revert the policy.
    Abort {
        policy: String,
        generation: u64,
        reason: String,
    },
}

pub struct DaemonArgs {
    pub policies: PathBuf,
    pub metrics_addr: SocketAddr,
    pub attach: AttachMode,
}

/// How often counters are read for metrics when nothing else happens.
const METRICS_EVERY: Duration = Duration::from_secs(1);

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

impl RunState {
    fn name(&self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Active => "active",
            RunState::Expired => "expired",
            RunState::Stopped => "stopped",
            RunState::Aborted(_) => "aborted",
        }
    }
}

struct FaultRun {
    fault: Fault,
    applied: Option<Applied>,
    /// Why it is not in force: unsupported by this build, or apply failed.
    problem: Option<String>,
    /// Whether `problem` is permanent (unsupported) or worth a retry at the
    /// next reload (an interface that did not exist yet).
    retry: bool,
    /// Counters when it was last read or reverted.
    last: FaultCounters,
    /// Order of application, for reverting last-applied first.
    seq: u64,
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

/// A policy file as last read.
struct FileState {
    text: String,
    /// The last version that validated, still in force when `error` is set.
    good: Option<Policy>,
    error: Option<String>,
}

pub struct Daemon {
    dir: PathBuf,
    opts: Options,
    files: BTreeMap<PathBuf, FileState>,
    runs: BTreeMap<String, PolicyRun>,
    /// Counters of reverted faults, per label set, so exported counters
    /// never go backwards when a fault is replaced.
    retired: BTreeMap<Labels, FaultCounters>,
    metrics: MetricsServer,
    notifier: notify::Notifier,
    kill: Arc<AtomicBool>,
    events: Sender<Event>,
    next_generation: u64,
}

/// Policy-level fields equal (the faults and the file name aside).
fn same_window(a: &Policy, b: &Policy) -> bool {
    a.duration == b.duration
        && a.start_after == b.start_after
        && a.guard == b.guard
        && a.abort_when == b.abort_when
}

fn fault_action(f: &Fault) -> &'static str {
    match &f.kind {
        FaultKind::Network(n) => match n.action {
            NetworkAction::Loss { .. } => "loss",
            NetworkAction::Delay { .. } => "delay",
            NetworkAction::Corrupt { .. } => "corrupt",
            NetworkAction::Duplicate { .. } => "duplicate",
            NetworkAction::Bandwidth { .. } => "bandwidth",
        },
        FaultKind::Syscall(_) => "errno",
    }
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Egress => "egress",
        Direction::Ingress => "ingress",
        Direction::Both => "both",
    }
}

/// Whether `new` differs from the applied `old` only in its network
/// action, and both actions are ones the kernel side can take: then the
/// rule is rewritten in place (same keys, hooks and deadline).
fn only_action_changed(old: &FaultRun, new: &Fault) -> bool {
    let (FaultKind::Network(a), FaultKind::Network(b)) = (&old.fault.kind, &new.kind) else {
        return false;
    };
    let loss = |x: &NetworkAction| matches!(x, NetworkAction::Loss { .. });
    old.applied.is_some()
        && old.fault.name == new.name
        && loss(&a.action)
        && loss(&b.action)
        && a.interface == b.interface
        && a.netns == b.netns
        && a.direction == b.direction
        && a.matcher == b.matcher
}

fn add(a: &mut FaultCounters, b: &FaultCounters) {
    a.matched += b.matched;
    a.injected += b.injected;
    a.guard_passed += b.guard_passed;
}

fn sum(counters: &[FaultCounters]) -> FaultCounters {
    let mut total = FaultCounters::default();
    for c in counters {
        add(&mut total, c);
    }
    total
}

/// `chaos-agent run`.
pub fn run(args: DaemonArgs) -> Result<ExitCode> {
    let run_dir = control::run_dir();
    create_run_dir(&run_dir)?;
    let _lock = lock::PidLock::acquire(&run_dir)?;
    if !args.policies.is_dir() {
        return Err(Error::Invalid(format!(
            "--policies {}: not a directory (create it, even empty)",
            args.policies.display()
        )));
    }
    let metrics = MetricsServer::bind(args.metrics_addr)?;
    let opts = Options {
        attach: args.attach,
        debug_kernel: false,
        extra_default_ports: vec![metrics.local_addr().port()],
    };
    let (tx, rx) = channel();
    let kill = Arc::new(AtomicBool::new(false));
    spawn_signals(tx.clone())?;
    watch::spawn(&args.policies, tx.clone())?;
    let socket = control::serve(&run_dir, tx.clone(), Arc::clone(&kill))?;
    let mut daemon = Daemon {
        dir: args.policies.clone(),
        opts,
        files: BTreeMap::new(),
        runs: BTreeMap::new(),
        retired: BTreeMap::new(),
        metrics,
        notifier: notify::Notifier::from_env(),
        kill,
        events: tx,
        next_generation: 1,
    };
    info!(
        policies = %args.policies.display(),
        metrics = %daemon.metrics.local_addr(),
        socket = %socket.display(),
        pid = std::process::id(),
        "daemon starting"
    );
    daemon.reload("start");
    daemon.notifier.ready();
    let reason = daemon.main_loop(&rx);
    daemon.notifier.stopping();
    info!(reason, "shutting down: reverting every fault");
    let left = daemon.revert_everything(RunState::Stopped);
    let _ = std::fs::remove_file(&socket);
    if left.is_empty() {
        info!("all faults reverted");
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Error::Runtime(format!(
            "revert incomplete; left behind: {}",
            left.join("; ")
        )))
    }
}

fn create_run_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::Runtime(format!("cannot create {}: {e}", dir.display())))?;
    // An existing directory keeps its owner; make sure only root gets in.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::Runtime(format!("chmod {}: {e}", dir.display())))
}

fn spawn_signals(events: Sender<Event>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM])
        .map_err(|e| Error::Runtime(format!("cannot install signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let event = match sig {
                    SIGHUP => Event::Reload("SIGHUP"),
                    SIGINT => Event::Shutdown("SIGINT"),
                    _ => Event::Shutdown("SIGTERM"),
                };
                if events.send(event).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| Error::Runtime(format!("cannot start the signal thread: {e}")))?;
    Ok(())
}

impl Daemon {
    fn main_loop(&mut self, rx: &Receiver<Event>) -> &'static str {
        let mut next_metrics = Instant::now();
        loop {
            let now = Instant::now();
            self.advance(now);
            if now >= next_metrics {
                self.publish_metrics();
                next_metrics = now + METRICS_EVERY;
            }
            self.notifier.tick();
            let mut wake = next_metrics;
            for r in self.runs.values() {
                match r.state {
                    RunState::Pending => wake = wake.min(r.start_at),
                    RunState::Active => wake = wake.min(r.deadline),
                    _ => {}
                }
            }
            if let Some(due) = self.notifier.watchdog_due() {
                wake = wake.min(due);
            }
            let timeout = wake.saturating_duration_since(Instant::now());
            match rx.recv_timeout(timeout) {
                Ok(Event::Reload(cause)) => {
                    self.notifier.reloading();
                    self.reload(cause);
                    self.notifier.ready();
                }
                Ok(Event::Shutdown(why)) => return why,
                Ok(Event::Control(req, reply)) => {
                    let answer = self.control(req);
                    let _ = reply.send(answer);
                }
                Ok(Event::Abort {
                    policy,
                    generation,
                    reason,
                }) => self.abort(&policy, generation, reason),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return "event channel closed",
            }
        }
    }

    /// Starts policies whose `startAfter` passed, expires those whose
    /// deadline did.
    fn advance(&mut self, now: Instant) {
        let names: Vec<String> = self.runs.keys().cloned().collect();
        for name in names {
            let Some(run) = self.runs.get(&name) else {
                continue;
            };
            match run.state {
                RunState::Pending if now >= run.start_at => {
                    info!(policy = %name, "startAfter passed: applying");
                    self.activate(&name);
                }
                RunState::Active if now >= run.deadline => {
                    let left = self.revert_run(&name, RunState::Expired);
                    info!(policy = %name, "expired: duration reached, faults reverted");
                    for l in left {
                        warn!(policy = %name, "{l}");
                    }
                }
                _ => {}
            }
        }
    }

    /// Reads the directory and brings what is in force in line with it.
    pub fn reload(&mut self, cause: &str) {
        let started = Instant::now();
        // The kill flag is cleared only once `stop --all` has been handled.
        self.read_files();
        let desired = self.desired();
        let current: Vec<String> = self.runs.keys().cloned().collect();
        for name in current {
            if !desired.contains_key(&name) {
                info!(policy = %name, "policy removed: reverting");
                let left = self.revert_run(&name, RunState::Stopped);
                for l in left {
                    warn!(policy = %name, "{l}");
                }
                self.runs.remove(&name);
            }
        }
        for (name, (file, policy)) in desired {
            if self.kill.load(Ordering::SeqCst) {
                warn!("reload interrupted by the kill switch");
                break;
            }
            self.reconcile(&name, file, policy);
        }
        self.publish_metrics();
        info!(
            cause,
            policies = self.runs.len(),
            elapsed_ms = format!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
            "reloaded"
        );
    }

    /// Reads every policy file whose text changed since the last read.
    fn read_files(&mut self) {
        let paths = match policy::policy_files_in(&self.dir) {
            Ok(p) => p,
            Err(e) => {
                error!(dir = %self.dir.display(), "cannot read the policies directory: {e}; keeping what is in force");
                return;
            }
        };
        self.files.retain(|p, _| paths.contains(p));
        for path in paths {
            let origin = path.display().to_string();
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    // Gone between listing and reading (an editor's rename):
                    // the next event reads it again.
                    warn!(file = %origin, "cannot read: {e}");
                    continue;
                }
            };
            if self.files.get(&path).is_some_and(|f| f.text == text) {
                continue;
            }
            let previous = self.files.remove(&path).and_then(|f| f.good);
            let state = match policy::load_str(&origin, &text) {
                Ok(p) => FileState {
                    text,
                    good: Some(p),
                    error: None,
                },
                Err(e) => {
                    let kept = if previous.is_some() {
                        "; its last good version stays in force"
                    } else {
                        "; nothing from it is applied"
                    };
                    error!(file = %origin, "policy rejected: {e}{kept}");
                    self.metrics.policy_error(&origin);
                    FileState {
                        text,
                        good: previous,
                        error: Some(e.to_string()),
                    }
                }
            };
            self.files.insert(path, state);
        }
    }

    /// Policy name -> (file, policy) of every good file; a name declared by
    /// two files is kept from the first (by file name) and the other is an
    /// error.
    fn desired(&mut self) -> BTreeMap<String, (PathBuf, Policy)> {
        let mut out: BTreeMap<String, (PathBuf, Policy)> = BTreeMap::new();
        let mut clashes = Vec::new();
        for (path, f) in &self.files {
            let Some(p) = &f.good else { continue };
            if let Some((first, _)) = out.get(&p.name) {
                clashes.push((path.clone(), p.name.clone(), first.clone()));
                continue;
            }
            out.insert(p.name.clone(), (path.clone(), p.clone()));
        }
        for (path, name, first) in clashes {
            let msg = format!(
                "{}: metadata.name: policy {name} is already loaded from {}; names must be unique",
                path.display(),
                first.display()
            );
            if let Some(f) = self.files.get_mut(&path)
                && f.error.as_deref() != Some(msg.as_str())
            {
                error!("policy rejected: {msg}");
                self.metrics.policy_error(&path.display().to_string());
                f.error = Some(msg);
            }
        }
        out
    }

    fn new_run(&mut self, file: PathBuf, policy: Policy) -> PolicyRun {
        let now = Instant::now();
        let start_at = now + policy.start_after;
        let generation = self.next_generation;
        self.next_generation += 1;
        PolicyRun {
            faults: policy
                .faults
                .iter()
                .map(|f| FaultRun {
                    fault: f.clone(),
                    applied: None,
                    problem: None,
                    retry: true,
                    last: FaultCounters::default(),
                    seq: 0,
                })
                .collect(),
            deadline: start_at + policy.duration,
            start_at,
            state: RunState::Pending,
            policy,
            file,
            generation,
            probe: None,
        }
    }

    fn reconcile(&mut self, name: &str, file: PathBuf, policy: Policy) {
        let Some(run) = self.runs.get_mut(name) else {
            info!(policy = %name, file = %file.display(), "policy loaded");
            let run = self.new_run(file, policy);
            self.runs.insert(name.to_owned(), run);
            self.start_if_due(name);
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
                self.apply_pending_faults(name, true);
            }
            return;
        }
        let live = run.state == RunState::Active || run.state == RunState::Pending;
        if !live || !same_window(&run.policy, &policy) {
            info!(policy = %name, "policy changed: replacing it as a whole");
            let left = self.revert_run(name, RunState::Stopped);
            for l in left {
                warn!(policy = %name, "{l}");
            }
            let run = self.new_run(file, policy);
            self.runs.insert(name.to_owned(), run);
            self.start_if_due(name);
            return;
        }
        // Same window: fault by fault.
        let mut old: BTreeMap<String, FaultRun> = std::mem::take(&mut run.faults)
            .into_iter()
            .map(|f| (f.fault.name.clone(), f))
            .collect();
        let mut faults = Vec::new();
        for f in &policy.faults {
            match old.remove(&f.name) {
                Some(existing) if existing.fault == *f => faults.push(existing),
                Some(mut existing) if only_action_changed(&existing, f) => {
                    let applied = existing.applied.as_mut().expect("checked");
                    let FaultKind::Network(n) = &f.kind else {
                        unreachable!("checked")
                    };
                    match applied.set_action(&n.action, !policy.guard.disable_defaults) {
                        Ok(()) => {
                            info!(policy = %name, fault = %f.name, "fault action changed in place");
                            existing.fault = f.clone();
                            faults.push(existing);
                        }
                        Err(e) => {
                            warn!(policy = %name, fault = %f.name, "in-place change failed ({e}); replacing it");
                            self.retire(existing);
                            faults.push(FaultRun {
                                fault: f.clone(),
                                applied: None,
                                problem: None,
                                retry: true,
                                last: FaultCounters::default(),
                                seq: 0,
                            });
                        }
                    }
                }
                other => {
                    if let Some(prev) = other {
                        info!(policy = %name, fault = %f.name, "fault changed: replacing it");
                        self.retire(prev);
                    } else {
                        info!(policy = %name, fault = %f.name, "fault added");
                    }
                    faults.push(FaultRun {
                        fault: f.clone(),
                        applied: None,
                        problem: None,
                        retry: true,
                        last: FaultCounters::default(),
                        seq: 0,
                    });
                }
            }
        }
        for (fault, prev) in old {
            info!(policy = %name, fault = %fault, "fault removed: reverting");
            self.retire(prev);
        }
        let run = self.runs.get_mut(name).expect("checked above");
        run.faults = faults;
        run.policy = policy;
        if run.state == RunState::Active {
            self.apply_pending_faults(name, false);
        }
    }

    fn start_if_due(&mut self, name: &str) {
        if self
            .runs
            .get(name)
            .is_some_and(|r| r.state == RunState::Pending && Instant::now() >= r.start_at)
        {
            self.activate(name);
        } else if let Some(r) = self.runs.get(name) {
            info!(policy = %name, start_in = %humantime::format_duration(r.start_at.saturating_duration_since(Instant::now())), "waiting for startAfter");
        }
    }

    fn activate(&mut self, name: &str) {
        let Some(run) = self.runs.get_mut(name) else {
            return;
        };
        run.state = RunState::Active;
        if let Some(guard) = &run.policy.abort_when {
            let events = self.events.clone();
            let (policy, generation) = (name.to_owned(), run.generation);
            run.probe = Some(steady::Prober::spawn(
                name.to_owned(),
                guard.clone(),
                move |reason| {
                    let _ = events.send(Event::Abort {
                        policy,
                        generation,
                        reason,
                    });
                },
            ));
        }
        self.apply_pending_faults(name, false);
    }

    /// Applies every fault of an active run that is not in force yet (with
    /// `retry_failed`, also those whose apply failed before).
    fn apply_pending_faults(&mut self, name: &str, retry_failed: bool) {
        let Some(run) = self.runs.get_mut(name) else {
            return;
        };
        let remaining = run.deadline.saturating_duration_since(Instant::now());
        for f in &mut run.faults {
            if self.kill.load(Ordering::SeqCst) {
                return;
            }
            if f.applied.is_some() || (f.problem.is_some() && !(retry_failed && f.retry)) {
                continue;
            }
            if remaining.is_zero() {
                continue;
            }
            let single = Policy {
                duration: remaining,
                start_after: Duration::ZERO,
                faults: vec![f.fault.clone()],
                ..run.policy.clone()
            };
            if let Err(e) = apply::check_supported(&single) {
                let msg = format!("unsupported: {e}");
                if f.problem.as_deref() != Some(msg.as_str()) {
                    warn!(policy = %name, fault = %f.fault.name, "{msg}");
                }
                f.problem = Some(msg);
                f.retry = false;
                continue;
            }
            let t = Instant::now();
            match apply::apply(&single, &self.opts) {
                Ok(applied) => {
                    info!(
                        policy = %name,
                        fault = %f.fault.name,
                        mode = applied.mode,
                        elapsed_ms = format!("{:.1}", t.elapsed().as_secs_f64() * 1000.0),
                        "fault in force"
                    );
                    f.applied = Some(applied);
                    self.next_generation += 1;
                    f.seq = self.next_generation;
                    f.problem = None;
                }
                Err(e) => {
                    let msg = format!("apply failed: {e}");
                    error!(policy = %name, fault = %f.fault.name, "{msg}");
                    f.problem = Some(msg);
                    f.retry = true;
                }
            }
        }
    }

    /// Reverts one fault, keeping its counters for the metrics.
    fn retire(&mut self, mut f: FaultRun) -> Vec<String> {
        let Some(applied) = f.applied.take() else {
            return Vec::new();
        };
        let counters = applied.counters();
        for (h, c) in applied.faults.iter().zip(&counters) {
            add(self.retired.entry(labels_of(h)).or_default(), c);
        }
        f.last = sum(&counters);
        applied.revert()
    }

    /// Reverts every fault of a run and sets its state.
    fn revert_run(&mut self, name: &str, state: RunState) -> Vec<String> {
        let Some(run) = self.runs.get_mut(name) else {
            return Vec::new();
        };
        run.state = state;
        run.probe = None;
        let faults = std::mem::take(&mut run.faults);
        let mut left = Vec::new();
        let mut kept = Vec::new();
        for mut f in faults {
            if let Some(applied) = f.applied.take() {
                let counters = applied.counters();
                for (h, c) in applied.faults.iter().zip(&counters) {
                    add(self.retired.entry(labels_of(h)).or_default(), c);
                }
                f.last = sum(&counters);
                left.extend(applied.revert());
            }
            kept.push(f);
        }
        if let Some(run) = self.runs.get_mut(name) {
            run.faults = kept;
        }
        left
    }

    /// Reverts every fault, the last applied first: with netlink
    /// attachment the first fault on an interface may have added the clsact
    /// qdisc, which goes only once no filter is left on it.
    fn revert_everything(&mut self, state: RunState) -> Vec<String> {
        let mut order: Vec<(u64, String, usize)> = Vec::new();
        for (name, r) in &self.runs {
            for (i, f) in r.faults.iter().enumerate() {
                if f.applied.is_some() {
                    order.push((f.seq, name.clone(), i));
                }
            }
        }
        order.sort_by_key(|o| std::cmp::Reverse(o.0));
        let mut left = Vec::new();
        for (_, name, i) in order {
            let Some(f) = self.runs.get_mut(&name).and_then(|r| r.faults.get_mut(i)) else {
                continue;
            };
            let Some(applied) = f.applied.take() else {
                continue;
            };
            let counters = applied.counters();
            for (h, c) in applied.faults.iter().zip(&counters) {
                add(self.retired.entry(labels_of(h)).or_default(), c);
            }
            f.last = sum(&counters);
            left.extend(applied.revert());
        }
        let names: Vec<String> = self.runs.keys().cloned().collect();
        for name in names {
            let was = self.runs.get(&name).map(|r| r.state.clone());
            if matches!(was, Some(RunState::Active) | Some(RunState::Pending)) {
                left.extend(self.revert_run(&name, state.clone()));
            }
        }
        self.publish_metrics();
        left
    }

    fn abort(&mut self, name: &str, generation: u64, reason: String) {
        let Some(run) = self.runs.get(name) else {
            return;
        };
        if run.generation != generation || run.state != RunState::Active {
            return;
        }
        error!(policy = %name, "steady-state guard failed: {reason}; reverting the policy");
        let left = self.revert_run(name, RunState::Aborted(reason));
        for l in left {
            warn!(policy = %name, "{l}");
        }
        self.metrics.policy_aborted(name);
        self.publish_metrics();
    }

    fn control(&mut self, req: Request) -> Value {
        match req {
            Request::Status => self.status(),
            Request::Stop { policies, all } => {
                let mut stopped = Vec::new();
                let mut unknown = Vec::new();
                let mut left = Vec::new();
                let names: Vec<String> = if all {
                    self.runs.keys().cloned().collect()
                } else {
                    policies
                };
                for name in names {
                    match self.runs.get(&name).map(|r| r.state.clone()) {
                        None => unknown.push(name),
                        Some(RunState::Active) | Some(RunState::Pending) => {
                            left.extend(self.revert_run(&name, RunState::Stopped));
                            info!(policy = %name, "stopped over the control socket");
                            stopped.push(name);
                        }
                        Some(_) => {}
                    }
                }
                if all {
                    warn!(stopped = stopped.len(), "kill switch: every fault reverted");
                    self.kill.store(false, Ordering::SeqCst);
                }
                self.publish_metrics();
                json!({"stopped": stopped, "unknown": unknown, "left": left})
            }
        }
    }

    fn status(&self) -> Value {
        let now = Instant::now();
        let policies: Vec<Value> = self
            .runs
            .iter()
            .map(|(name, r)| {
                let faults: Vec<Value> = r
                    .faults
                    .iter()
                    .map(|f| {
                        let c = f
                            .applied
                            .as_ref()
                            .map(|a| sum(&a.counters()))
                            .unwrap_or(f.last);
                        let (interface, netns, direction) = match &f.fault.kind {
                            FaultKind::Network(n) => (
                                Some(n.interface.clone()),
                                n.netns.clone(),
                                Some(direction_name(n.direction)),
                            ),
                            FaultKind::Syscall(_) => (None, None, None),
                        };
                        let state = if f.applied.is_some() {
                            "active"
                        } else if f.problem.as_deref().is_some_and(|p| p.starts_with("unsupported")) {
                            "unsupported"
                        } else if f.problem.is_some() {
                            "failed"
                        } else {
                            r.state.name()
                        };
                        json!({
                            "fault": f.fault.name, "action": fault_action(&f.fault),
                            "interface": interface, "netns": netns, "direction": direction,
                            "state": state, "problem": f.problem,
                            "matched": c.matched, "injected": c.injected, "guard_passed": c.guard_passed,
                        })
                    })
                    .collect();
                let time_left = match r.state {
                    RunState::Active | RunState::Pending => {
                        Some(r.deadline.saturating_duration_since(now).as_millis() as u64)
                    }
                    _ => None,
                };
                let starts_in = (r.state == RunState::Pending)
                    .then(|| r.start_at.saturating_duration_since(now).as_millis() as u64);
                let reason = match &r.state {
                    RunState::Aborted(why) => Some(why.clone()),
                    _ => None,
                };
                json!({
                    "name": name, "file": r.file.display().to_string(), "state": r.state.name(),
                    "reason": reason, "time_left_ms": time_left, "starts_in_ms": starts_in,
                    "faults": faults,
                })
            })
            .collect();
        let file_errors: Vec<Value> = self
            .files
            .iter()
            .filter_map(|(p, f)| {
                f.error.as_ref().map(|e| {
                    json!({"file": p.display().to_string(), "error": e, "kept_last_good": f.good.is_some()})
                })
            })
            .collect();
        json!({
            "pid": std::process::id(),
            "policies_dir": self.dir.display().to_string(),
            "metrics_addr": self.metrics.local_addr().to_string(),
            "policies": policies,
            "file_errors": file_errors,
        })
    }

    /// Reads every live fault's counters and hands the metrics their
    /// snapshot: live counters plus those of reverted faults.
    fn publish_metrics(&mut self) {
        let mut counters = self.retired.clone();
        let mut active: BTreeMap<String, u64> = BTreeMap::new();
        for (name, r) in &mut self.runs {
            let entry = active.entry(name.clone()).or_default();
            for f in &mut r.faults {
                let Some(applied) = &mut f.applied else {
                    continue;
                };
                applied.flush_logs();
                let live = applied.counters();
                for (h, c) in applied.faults.iter().zip(&live) {
                    *entry += 1;
                    add(counters.entry(labels_of(h)).or_default(), c);
                }
                f.last = sum(&live);
            }
        }
        self.metrics.replace(active, counters);
    }
}
