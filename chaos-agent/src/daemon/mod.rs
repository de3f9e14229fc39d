//! `chaos-agent run`: the daemon.
//!
//! One loop on a current-thread tokio runtime owns the engine and every
//! policy run (`runs.rs`); everything else reaches it through one `select`:
//! signals (SIGHUP reloads, SIGTERM/SIGINT revert everything and exit),
//! the directory watcher (`watch.rs`, the same reload as SIGHUP), control
//! socket requests (`control::server`, one task per connection), verdicts
//! of the steady-state probes, and the timers of `startAfter`, deadlines,
//! metrics and the systemd watchdog. The metrics listener serves scrapes
//! and the health probes from the same runtime without touching the kernel;
//! each round of the loop marks it live, each reload ready or not (ready
//! when no policy file of the directory is refused).

mod files;
mod lock;
mod notify;
mod runs;
mod watch;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{Instant, sleep_until},
};
use tracing::{error, info, warn};

use crate::{
    control::{
        self,
        proto::{Reply, Request, Status},
        server::{Asked, Server},
    },
    engine::{self, AttachMode, Engine, NetOptions},
    error::{Error, Result},
    metrics::{Metrics, otlp},
};
use files::Files;
use runs::Runs;

pub struct DaemonArgs {
    pub policies: PathBuf,
    pub metrics_addr: SocketAddr,
    pub attach: AttachMode,
    /// The daemon's lease (policies may shorten it while in force).
    pub lease: Duration,
    /// Push the metrics over OTLP too.
    pub otlp: Option<otlp::Config>,
}

/// How often counters are read for metrics when nothing else happens.
const METRICS_EVERY: Duration = Duration::from_secs(1);

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

/// The daemon's loop state besides the runs.
struct Daemon {
    dir: PathBuf,
    files: Files,
    runs: Runs,
    metrics: Metrics,
    metrics_addr: SocketAddr,
    notifier: notify::Notifier,
    kill: Arc<AtomicBool>,
}

/// `chaos-agent run`, on the current runtime.
pub async fn run(args: DaemonArgs) -> Result<ExitCode> {
    let run_dir = control::run_dir();
    create_run_dir(&run_dir)?;
    let _lock = lock::PidLock::acquire(&run_dir)?;
    if !args.policies.is_dir() {
        return Err(Error::Invalid(format!(
            "--policies {}: not a directory (create it, even empty)",
            args.policies.display()
        )));
    }
    let metrics = Metrics::new(Some(args.metrics_addr), args.otlp.as_ref())?;
    metrics.health().starting();
    let metrics_addr = metrics.local_addr().unwrap_or(args.metrics_addr);
    let engine = Engine::new(engine::Options {
        net: NetOptions {
            attach: args.attach,
            debug_kernel: false,
            extra_default_ports: metrics.guarded_ports(),
        },
        syscall_backend: None,
        lease: args.lease,
    });
    let signal_err = |e| Error::Runtime(format!("cannot install signal handlers: {e}"));
    let mut sighup = signal(SignalKind::hangup()).map_err(signal_err)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(signal_err)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut changes = watch::spawn(&args.policies)?;
    let kill = Arc::new(AtomicBool::new(false));
    let (ask_tx, mut asks) = mpsc::channel::<Asked>(64);
    let server = Server::bind(&run_dir, ask_tx, Arc::clone(&kill))?;
    let (abort_tx, mut aborts) = mpsc::unbounded_channel();
    let mut d = Daemon {
        dir: args.policies.clone(),
        files: Files::default(),
        runs: Runs::new(engine, abort_tx),
        metrics,
        metrics_addr,
        notifier: notify::Notifier::from_env(),
        kill,
    };
    info!(
        policies = %args.policies.display(),
        metrics = %d.metrics_addr,
        otlp = args.otlp.as_ref().map(|o| o.url.as_str()),
        socket = %server.path().display(),
        pid = std::process::id(),
        "daemon starting"
    );
    d.reload("start", &[]).await;
    d.notifier.ready();
    let mut next_metrics = Instant::now() + METRICS_EVERY;
    let mut next_renew = Instant::now() + d.runs.engine().renew_every();
    let reason = loop {
        let mut wake = next_metrics.min(next_renew);
        if let Some(t) = d.runs.next_wake() {
            wake = wake.min(t);
        }
        if let Some(t) = d.notifier.watchdog_due() {
            wake = wake.min(Instant::from_std(t));
        }
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => d.reload_notified("SIGHUP", &[]).await,
            Some(mut seen) = changes.recv() => {
                // Bursts that queued up meanwhile: one reload for all.
                while let Ok(more) = changes.try_recv() {
                    seen.extend(more);
                }
                d.reload_notified("file change", &seen).await
            }
            Some(asked) = asks.recv() => {
                let reply = d.control(asked.request);
                let _ = asked.reply.send(reply);
            }
            Some(a) = aborts.recv() => {
                let policy = a.policy.clone();
                if d.runs.abort(a) {
                    d.metrics.policy_aborted(&policy);
                    d.publish();
                }
            }
            _ = sleep_until(wake) => {}
        }
        if Instant::now() >= next_renew {
            if let Err(lapsed) = d.runs.engine().renew() {
                d.lapsed(lapsed.late).await;
            }
            next_renew = Instant::now() + d.runs.engine().renew_every();
        }
        d.runs.advance(&d.kill).await;
        if Instant::now() >= next_metrics {
            d.publish();
            next_metrics = Instant::now() + METRICS_EVERY;
        }
        d.notifier.tick();
        // `/healthz` (metrics/health.rs).
        d.metrics.health().tick();
    };
    d.notifier.stopping();
    info!(reason, "shutting down: reverting every fault");
    let left = d.runs.revert_everything();
    d.publish();
    drop(server);
    d.metrics.finish().await;
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

impl Daemon {
    /// A reload the service manager hears about (RELOADING, then READY).
    async fn reload_notified(&mut self, cause: &str, seen: &[(PathBuf, String)]) {
        self.notifier.reloading();
        self.reload(cause, seen).await;
        self.notifier.ready();
    }

    /// Reads the directory and brings what is in force in line with it.
    async fn reload(&mut self, cause: &str, seen: &[(PathBuf, String)]) {
        let started = std::time::Instant::now();
        let mut rejected = self.files.read(&self.dir, seen);
        let (desired, clashes) = self.files.desired();
        rejected.extend(clashes);
        for file in &rejected {
            self.metrics.policy_error(file);
        }
        self.metrics.reloaded(rejected.is_empty());
        self.runs.reload(desired, &self.kill).await;
        // Ready when every file of the directory is accepted: a file
        // refused earlier and not fixed since still counts.
        self.metrics.health().reloaded(self.files.errors().len());
        self.metrics.health().tick();
        self.publish();
        info!(
            cause,
            policies = self.runs.len(),
            elapsed_ms = format!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
            "reloaded"
        );
    }

    /// The lease ran out before the loop renewed it: the daemon was stopped
    /// or starved, and every fault went inert. Reverts everything and
    /// applies the policies again as at start-up (new windows).
    async fn lapsed(&mut self, late: Duration) {
        error!(
            late_ms = late.as_millis() as u64,
            lease_ms = self.runs.engine().lease().as_millis() as u64,
            "the lease lapsed: the daemon did not renew it in time (stopped or starved) and every fault went inert; reverting and applying the policies again"
        );
        self.metrics.lease_lapsed();
        for left in self.runs.revert_everything() {
            warn!("{left}");
        }
        self.runs.forget();
        self.files.forget();
        self.runs.engine().restart_lease();
        self.reload("lease lapsed", &[]).await;
    }

    fn publish(&mut self) {
        self.metrics.set(self.runs.tally());
    }

    fn control(&mut self, request: Request) -> Reply {
        match request {
            Request::Status => {
                self.runs.tally();
                let mut status = Status {
                    pid: std::process::id(),
                    policies_dir: self.dir.display().to_string(),
                    metrics_addr: self.metrics_addr.to_string(),
                    policies: Vec::new(),
                    file_errors: self.files.errors(),
                };
                self.runs.status(&mut status);
                Reply::Status(status)
            }
            Request::Stop { policies, all } => {
                let stopped = self.runs.stop(policies, all);
                if all {
                    // Cleared only once the kill switch was handled.
                    self.kill.store(false, Ordering::SeqCst);
                }
                self.publish();
                Reply::Stopped(stopped)
            }
        }
    }
}
