//! Metrics, through the OpenTelemetry SDK: its Prometheus exporter served
//! by `http.rs` on the blast's or daemon's runtime, and an OTLP/HTTP push
//! to a collector (`otlp.rs`), either or both; one meter provider, so both
//! carry the same instruments.
//!
//! Data flow: the blast or daemon loop reads the kernel's per-CPU counters
//! once a second (the same read that feeds its own report) and hands the
//! sums, per fault row, to [`Metrics::set`] as a [`Tally`]. The
//! instruments are observable counters and gauges whose callbacks read
//! that snapshot when a scrape collects, so a scrape never touches the
//! kernel maps and values are at most one report interval old.
//!
//! Labels come only from the applied faults' typed rows (`fault::Row`:
//! policy, fault, action, and interface, netns and direction, or syscall
//! and backend), never from packet data, so the label set is bounded by
//! the policies.

pub mod health;
mod http;
pub mod otlp;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use opentelemetry::{
    KeyValue,
    metrics::{AsyncInstrument, MeterProvider},
};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use tracing::debug;

use crate::{
    error::{Error, Result},
    fault::{Counts, Hook, Row, monotonic_ns},
};

/// Exposition names, before the exporter's `_total` suffix on counters.
pub const PACKETS_MATCHED: &str = "chaos_agent_packets_matched";
pub const PACKETS_INJECTED: &str = "chaos_agent_packets_injected";
pub const GUARD_PASSED: &str = "chaos_agent_guard_passed";
pub const ACTIVE_FAULTS: &str = "chaos_agent_active_faults";
pub const POLICY_ERRORS: &str = "chaos_agent_policy_errors";
pub const POLICY_ABORTS: &str = "chaos_agent_policy_aborts";
pub const SYSCALLS_MATCHED: &str = "chaos_agent_syscalls_matched";
pub const SYSCALLS_INJECTED: &str = "chaos_agent_syscalls_injected";
pub const LEASE_LAPSES: &str = "chaos_agent_lease_lapses";
pub const BUILD_INFO: &str = "chaos_agent_build_info";
pub const FAULT_DEADLINE: &str = "chaos_agent_fault_deadline_seconds";
pub const RELOADS: &str = "chaos_agent_reloads";
pub const FAULT_PHASE: &str = "chaos_agent_fault_phase";

/// Which family of counters a label set belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// `chaos_agent_packets_*`, `chaos_agent_guard_passed`.
    Net,
    /// `chaos_agent_syscalls_*`.
    Syscall,
}

/// The label values of one row: (family, [(key, value)]). Counters with
/// the same labels (a replaced fault's, kept, and its successor's) are
/// summed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Labels {
    pub family: Family,
    pub pairs: Vec<(&'static str, String)>,
}

impl Labels {
    pub fn of(row: &Row) -> Labels {
        let mut pairs = vec![
            ("policy", row.policy.clone()),
            ("fault", row.fault.clone()),
            ("action", row.action.to_string()),
        ];
        let family = match &row.hook {
            Hook::Net {
                interface,
                netns,
                direction,
            } => {
                pairs.push(("interface", interface.clone()));
                // Only where the fault names one: the Prometheus exporter
                // would print an empty value as `netns=""` (which Prometheus
                // treats as no label anyway), and OTLP would carry it as an
                // attribute of its own.
                if let Some(ns) = netns {
                    pairs.push(("netns", ns.clone()));
                }
                pairs.push(("direction", direction.to_string()));
                Family::Net
            }
            Hook::Syscall { names, .. } => {
                pairs.push(("syscall", names.clone()));
                pairs.push(("backend", row.backend.to_string()));
                Family::Syscall
            }
        };
        // Shadow counts are what would have been done: never summed with
        // what was done.
        pairs.push(("mode", row.mode.to_string()));
        Labels { family, pairs }
    }

    fn attributes(&self) -> Vec<KeyValue> {
        self.pairs
            .iter()
            .map(|(k, v)| KeyValue::new(*k, v.clone()))
            .collect()
    }
}

/// What the instruments report: faults in force per policy, counters per
/// label set, and the kernel deadline of the rows in force.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub active: BTreeMap<String, u64>,
    pub counters: BTreeMap<Labels, Counts>,
    /// CLOCK_MONOTONIC ns at which the kernel stops acting, per label set
    /// of a row in force (the earliest, should two rows share labels).
    pub deadlines: BTreeMap<Labels, u64>,
    /// The schedule of each label set in force (`None`: always on), for
    /// the phase gauge, computed when it is read.
    pub schedules: BTreeMap<Labels, Option<chaos_common::Schedule>>,
    faults: BTreeSet<(String, String)>,
}

impl Tally {
    /// Adds one row's counters. `deadline_ns` is `Some` while its fault is
    /// in force: the fault counts (once, however many rows it has) in
    /// `active_faults` and the row gets a deadline.
    pub fn add(&mut self, row: &Row, counts: Counts, deadline_ns: Option<u64>) {
        let labels = Labels::of(row);
        *self.counters.entry(labels.clone()).or_default() += counts;
        let active = self.active.entry(row.policy.clone()).or_default();
        if let Some(d) = deadline_ns {
            if self.faults.insert((row.policy.clone(), row.fault.clone())) {
                *active += 1;
            }
            self.schedules.insert(labels.clone(), row.schedule);
            let at = self.deadlines.entry(labels).or_insert(d);
            *at = (*at).min(d);
        }
    }

    /// Adds counters kept from faults no longer in force.
    pub fn add_counts(&mut self, labels: &Labels, counts: Counts) {
        *self.counters.entry(labels.clone()).or_default() += counts;
    }

    /// Names a policy in `active_faults` (0 until faults of it are added).
    pub fn policy(&mut self, policy: &str) {
        self.active.entry(policy.to_owned()).or_default();
    }
}

#[derive(Debug, Default)]
struct Snapshot {
    tally: Tally,
    /// Policy file -> times it was rejected (daemon).
    policy_errors: BTreeMap<String, u64>,
    /// Policy -> times its steady-state guard reverted it.
    policy_aborts: BTreeMap<String, u64>,
    /// Times the agent found its lease lapsed.
    lease_lapses: u64,
    /// "ok" / "error" -> reloads of the policies directory (daemon; empty
    /// in a blast, so a blast exports no reload counter).
    reloads: BTreeMap<String, u64>,
}

type Shared = Arc<Mutex<Snapshot>>;

fn observe_counter(
    shared: &Shared,
    family: Family,
    pick: fn(&Counts) -> u64,
) -> impl Fn(&dyn AsyncInstrument<u64>) + Send + Sync + 'static {
    let shared = Arc::clone(shared);
    move |observer| {
        let Ok(snap) = shared.lock() else { return };
        for (labels, c) in &snap.tally.counters {
            if labels.family == family {
                observer.observe(pick(c), &labels.attributes());
            }
        }
    }
}

fn observe_map(
    shared: &Shared,
    key: &'static str,
    pick: fn(&Snapshot) -> &BTreeMap<String, u64>,
) -> impl Fn(&dyn AsyncInstrument<u64>) + Send + Sync + 'static {
    let shared = Arc::clone(shared);
    move |observer| {
        let Ok(snap) = shared.lock() else { return };
        for (value, n) in pick(&snap) {
            observer.observe(*n, &[KeyValue::new(key, value.clone())]);
        }
    }
}

/// Seconds since the Unix epoch of the CLOCK_MONOTONIC instant
/// `deadline_ns`, by the offset between the two clocks now (so a wall
/// clock set meanwhile moves the answer with it, as it moves the moment
/// the deadline is reached in wall time).
pub fn unix_seconds(deadline_ns: u64, monotonic_now_ns: u64, realtime_now: SystemTime) -> f64 {
    let real = realtime_now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let left_ns = deadline_ns as i128 - monotonic_now_ns as i128;
    real + left_ns as f64 / 1e9
}

/// The meter provider, its exporters and the listener task. Dropping it
/// stops the listener and the push.
pub struct Metrics {
    addr: Option<SocketAddr>,
    shared: Shared,
    _provider: SdkMeterProvider,
    server: Option<tokio::task::JoinHandle<()>>,
    push: Option<otlp::Push>,
    /// The collector's port, when pushing.
    push_port: Option<u16>,
    health: Arc<health::Health>,
}

/// Binds `addr` for the listener. A bind failure is a usage error (exit
/// 2) naming the address.
fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| Error::Invalid(format!("--metrics-addr {addr}: cannot listen: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Runtime(format!("--metrics-addr {addr}: {e}")))?;
    tokio::net::TcpListener::from_std(listener)
        .map_err(|e| Error::Runtime(format!("--metrics-addr {addr}: {e}")))
}

impl Metrics {
    /// Serves `GET /metrics` on `addr` and pushes to the OTLP endpoint of
    /// `push`, either or both, on the current tokio runtime.
    pub fn new(addr: Option<SocketAddr>, push: Option<&otlp::Config>) -> Result<Metrics> {
        let push_port = push.map(otlp::Config::port);
        let listener = addr.map(listen).transpose()?;
        let addr = listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()
            .map_err(|e| Error::Runtime(format!("--metrics-addr: {e}")))?;
        let mut push = push.map(otlp::Push::new).transpose()?;

        let mut builder =
            SdkMeterProvider::builder().with_resource(otlp::resource(crate::version::VERSION));
        let registry = prometheus::Registry::new();
        if listener.is_some() {
            let exporter = opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .without_target_info()
                .without_units()
                .scope_info_enabled(false)
                .build()
                .map_err(|e| Error::Runtime(format!("metrics exporter: {e}")))?;
            builder = builder.with_reader(exporter);
        }
        if let Some(p) = &push {
            builder = builder.with_reader(p.reader());
        }
        let provider = builder.build();
        let shared: Shared = Arc::default();
        instruments(&provider, &shared);

        let health = Arc::new(health::Health::default());
        let server = listener.map(|l| tokio::spawn(http::serve(l, registry, Arc::clone(&health))));
        if let Some(p) = &mut push {
            p.start();
        }
        debug!(
            ?addr,
            otlp = push.as_ref().map(|p| p.url()),
            "metrics ready"
        );
        Ok(Metrics {
            addr,
            shared,
            _provider: provider,
            server,
            push,
            push_port,
            health,
        })
    }

    /// `new` with the listener only.
    pub fn bind(addr: SocketAddr) -> Result<Metrics> {
        Metrics::new(Some(addr), None)
    }

    /// The bound address (the real port when `:0` was asked for), if
    /// metrics are served.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The ports of the agent's own metrics traffic (the listener's and
    /// the collector's), for the built-in guard.
    pub fn guarded_ports(&self) -> Vec<u16> {
        self.addr
            .map(|a| a.port())
            .into_iter()
            .chain(self.push_port)
            .collect()
    }

    /// What `/healthz` and `/readyz` answer: live and ready unless the
    /// owner (the daemon) says otherwise.
    pub fn health(&self) -> &health::Health {
        &self.health
    }

    /// Replaces the faults and counters reported.
    pub fn set(&self, tally: Tally) {
        if let Ok(mut snap) = self.shared.lock() {
            snap.tally = tally;
        }
    }

    /// Counts one rejection of policy file `file`.
    pub fn policy_error(&self, file: &str) {
        if let Ok(mut snap) = self.shared.lock() {
            *snap.policy_errors.entry(file.to_owned()).or_default() += 1;
        }
    }

    /// Counts one lapse of the agent's lease.
    pub fn lease_lapsed(&self) {
        if let Ok(mut snap) = self.shared.lock() {
            snap.lease_lapses += 1;
        }
    }

    /// Counts one steady-state abort of `policy`.
    pub fn policy_aborted(&self, policy: &str) {
        if let Ok(mut snap) = self.shared.lock() {
            *snap.policy_aborts.entry(policy.to_owned()).or_default() += 1;
        }
    }

    /// Counts one reload of the policies directory: `ok` unless a file was
    /// rejected in it. Both results are reported from the first on.
    pub fn reloaded(&self, ok: bool) {
        if let Ok(mut snap) = self.shared.lock() {
            for result in ["ok", "error"] {
                snap.reloads.entry(result.to_owned()).or_default();
            }
            *snap
                .reloads
                .entry(if ok { "ok" } else { "error" }.to_owned())
                .or_default() += 1;
        }
    }

    /// The end of the run: stops the listener and pushes the last values
    /// (waiting at most [`otlp::FINAL_EXPORT_WAIT`]).
    pub async fn finish(mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        if let Some(push) = self.push.take() {
            push.finish().await;
        }
    }
}

/// Registers every instrument with `provider`. The observable instruments
/// stay registered with it; their handles need not be kept.
fn instruments(provider: &SdkMeterProvider, shared: &Shared) {
    let meter = provider.meter("chaos-agent");
    type Pick = fn(&Counts) -> u64;
    let counters: [(&str, &str, &str, Family, Pick); 5] = [
        (
            PACKETS_MATCHED,
            "Packets that matched a network fault's filter",
            "{packet}",
            Family::Net,
            |c| c.matched,
        ),
        (
            PACKETS_INJECTED,
            "Packets dropped, delayed, corrupted, duplicated or shaped by a network fault",
            "{packet}",
            Family::Net,
            |c| c.injected,
        ),
        (
            GUARD_PASSED,
            "Packets the guard let through untouched",
            "{packet}",
            Family::Net,
            |c| c.guard_passed,
        ),
        (
            SYSCALLS_MATCHED,
            "Calls that matched a syscall fault's target",
            "{call}",
            Family::Syscall,
            |c| c.matched,
        ),
        (
            SYSCALLS_INJECTED,
            "Calls a syscall fault made to fail",
            "{call}",
            Family::Syscall,
            |c| c.injected,
        ),
    ];
    for (name, description, unit, family, pick) in counters {
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_unit(unit)
            .with_callback(observe_counter(shared, family, pick))
            .build();
    }
    meter
        .u64_observable_gauge(ACTIVE_FAULTS)
        .with_description("Faults currently in force")
        .with_unit("{fault}")
        .with_callback(observe_map(shared, "policy", |s| &s.tally.active))
        .build();
    meter
        .u64_observable_counter(POLICY_ERRORS)
        .with_description(
            "Policy files rejected by the daemon (the last good version stays in force)",
        )
        .with_unit("{file}")
        .with_callback(observe_map(shared, "file", |s| &s.policy_errors))
        .build();
    meter
        .u64_observable_counter(POLICY_ABORTS)
        .with_description("Policies reverted by their steady-state guard (spec.abortWhen)")
        .with_unit("{policy}")
        .with_callback(observe_map(shared, "policy", |s| &s.policy_aborts))
        .build();
    meter
        .u64_observable_counter(RELOADS)
        .with_description(
            "Reloads of the policies directory (start, SIGHUP, file change): error when a file was rejected in it",
        )
        .with_unit("{reload}")
        .with_callback(observe_map(shared, "result", |s| &s.reloads))
        .build();

    let lapses = Arc::clone(shared);
    meter
        .u64_observable_counter(LEASE_LAPSES)
        .with_description(
            "Times the agent found its lease lapsed (it was stopped or starved, and its faults went inert)",
        )
        .with_unit("{lapse}")
        .with_callback(move |observer| {
            if let Ok(snap) = lapses.lock() {
                observer.observe(snap.lease_lapses, &[]);
            }
        })
        .build();

    let deadlines = Arc::clone(shared);
    meter
        .f64_observable_gauge(FAULT_DEADLINE)
        .with_description(
            "When the kernel stops acting for a fault in force, in seconds since the Unix epoch",
        )
        .with_unit("s")
        .with_callback(move |observer| {
            let Ok(snap) = deadlines.lock() else { return };
            let (mono, real) = (monotonic_ns(), SystemTime::now());
            for (labels, d) in &snap.tally.deadlines {
                observer.observe(unix_seconds(*d, mono, real), &labels.attributes());
            }
        })
        .build();

    let phases = Arc::clone(shared);
    meter
        .u64_observable_gauge(FAULT_PHASE)
        .with_description(
            "1 while a fault in force acts, 0 in the off part of its schedule (flapping); always 1 without one",
        )
        .with_unit("1")
        .with_callback(move |observer| {
            let Ok(snap) = phases.lock() else { return };
            let now = monotonic_ns();
            for (labels, s) in &snap.tally.schedules {
                let on = s.is_none_or(|s| s.is_on(now));
                observer.observe(u64::from(on), &labels.attributes());
            }
        })
        .build();

    let build = [
        KeyValue::new("version", crate::version::VERSION),
        KeyValue::new("commit", crate::version::COMMIT),
    ];
    meter
        .u64_observable_gauge(BUILD_INFO)
        .with_description("The agent's version and the commit it was built from; always 1")
        .with_unit("1")
        .with_callback(move |observer| observer.observe(1, &build))
        .build();
}

impl Drop for Metrics {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        fault::Backend,
        policy::model::{ActionKind, Direction, Mode},
    };

    fn net_row(netns: Option<&str>) -> Row {
        Row {
            policy: "p".into(),
            fault: "f".into(),
            action: ActionKind::Loss,
            backend: Backend::Tcx,
            hook: Hook::Net {
                interface: "eth0".into(),
                netns: netns.map(str::to_owned),
                direction: Direction::Egress,
            },
            mode: Mode::Enforce,
            schedule: None,
        }
    }

    #[test]
    fn netns_label_only_where_the_fault_has_one() {
        let keys = |l: Labels| l.pairs.iter().map(|(k, _)| *k).collect::<Vec<_>>();
        assert_eq!(
            keys(Labels::of(&net_row(None))),
            [
                "policy",
                "fault",
                "action",
                "interface",
                "direction",
                "mode"
            ]
        );
        let with = Labels::of(&net_row(Some("edge")));
        assert_eq!(
            keys(with.clone()),
            [
                "policy",
                "fault",
                "action",
                "interface",
                "netns",
                "direction",
                "mode"
            ]
        );
        assert_eq!(with.pairs[4].1, "edge");
    }

    #[test]
    fn only_rows_in_force_have_a_deadline() {
        let mut t = Tally::default();
        let c = Counts {
            matched: 3,
            injected: 1,
            guard_passed: 0,
        };
        t.add(&net_row(None), c, Some(50));
        t.add(&net_row(Some("edge")), c, None);
        assert_eq!(t.active["p"], 1);
        assert_eq!(t.counters.len(), 2);
        assert_eq!(
            t.deadlines.into_iter().collect::<Vec<_>>(),
            [(Labels::of(&net_row(None)), 50)]
        );
    }

    #[test]
    fn deadline_in_unix_seconds() {
        let real = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = unix_seconds(5_000_000_000 + 30_500_000_000, 5_000_000_000, real);
        assert!((at - 1_700_000_030.5).abs() < 1e-3, "{at}");
        // A deadline already passed lies before now.
        let past = unix_seconds(1_000_000_000, 3_000_000_000, real);
        assert!((past - 1_699_999_998.0).abs() < 1e-3, "{past}");
        // With the real clocks: a deadline 10 s ahead is 10 s after now.
        let now = SystemTime::now();
        let ahead = unix_seconds(monotonic_ns() + 10_000_000_000, monotonic_ns(), now);
        let want = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            + 10.0;
        assert!((ahead - want).abs() < 0.1, "{ahead} vs {want}");
    }

    /// What a scrape shows: every instrument with its labels, built from
    /// one tally (nothing bound: the registry is read directly).
    #[tokio::test(flavor = "current_thread")]
    async fn exposition_of_the_new_instruments() {
        let m = Metrics::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut t = Tally::default();
        t.add(
            &net_row(Some("edge")),
            Counts::default(),
            Some(monotonic_ns() + 60_000_000_000),
        );
        m.set(t);
        m.reloaded(true);
        m.reloaded(false);
        m.reloaded(true);
        let port = m.local_addr().unwrap().port();
        let body = scrape(port).await;
        let line = |prefix: &str| {
            body.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{body}"))
                .to_owned()
        };
        assert_eq!(
            line("chaos_agent_build_info{"),
            format!(
                "chaos_agent_build_info{{commit=\"{}\",version=\"{}\"}} 1",
                crate::version::COMMIT,
                crate::version::VERSION
            )
        );
        assert!(
            line("chaos_agent_reloads_total{result=\"ok\"}").ends_with(" 2"),
            "{body}"
        );
        assert!(
            line("chaos_agent_reloads_total{result=\"error\"}").ends_with(" 1"),
            "{body}"
        );
        let deadline = line("chaos_agent_fault_deadline_seconds{");
        assert!(
            deadline.contains(r#"netns="edge""#) && deadline.contains(r#"interface="eth0""#),
            "{deadline}"
        );
        let at: f64 = deadline.rsplit(' ').next().unwrap().parse().unwrap();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((at - now - 60.0).abs() < 5.0, "{at} vs now {now}");
        assert!(
            line("chaos_agent_packets_matched_total{").contains(r#"netns="edge""#),
            "{body}"
        );
        let phase = line("chaos_agent_fault_phase{");
        assert!(
            phase.contains(r#"mode="enforce""#) && phase.ends_with(" 1"),
            "{phase}"
        );
    }

    async fn scrape(port: u16) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        raw.split_once("\r\n\r\n").unwrap().1.to_owned()
    }
}
