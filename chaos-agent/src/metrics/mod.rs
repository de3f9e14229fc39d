//! Prometheus metrics, through the OpenTelemetry SDK and its Prometheus
//! exporter, served by `http.rs` on the blast's or daemon's runtime.
//!
//! Data flow: the blast or daemon loop reads the kernel's per-CPU counters
//! once a second (the same read that feeds its own report) and hands the
//! sums, per fault row, to [`Metrics::set`] as a [`Tally`]. The
//! instruments are observable counters and gauges whose callbacks read
//! that snapshot when a scrape collects, so a scrape never touches the
//! kernel maps and values are at most one report interval old.
//!
//! Labels come only from the applied faults' typed rows (`fault::Row`:
//! policy, fault, action, and interface and direction, or syscall and
//! backend), never from packet data, so the label set is bounded by the
//! policies.

mod http;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use opentelemetry::{
    KeyValue,
    metrics::{AsyncInstrument, MeterProvider},
};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use tracing::debug;

use crate::{
    error::{Error, Result},
    fault::{Counts, Hook, Row},
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

/// Which family of counters a label set belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// `chaos_agent_packets_*`, `chaos_agent_guard_passed`.
    Net,
    /// `chaos_agent_syscalls_*`.
    Syscall,
}

/// The label values of one row: (family, [(key, value)]). Rows with the
/// same labels (the same interface name in two namespaces) are summed.
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
                direction,
                ..
            } => {
                pairs.push(("interface", interface.clone()));
                pairs.push(("direction", direction.to_string()));
                Family::Net
            }
            Hook::Syscall { names, .. } => {
                pairs.push(("syscall", names.clone()));
                pairs.push(("backend", row.backend.to_string()));
                Family::Syscall
            }
        };
        Labels { family, pairs }
    }

    fn attributes(&self) -> Vec<KeyValue> {
        self.pairs
            .iter()
            .map(|(k, v)| KeyValue::new(*k, v.clone()))
            .collect()
    }
}

/// What the instruments report: faults in force per policy, and counters
/// per label set.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub active: BTreeMap<String, u64>,
    pub counters: BTreeMap<Labels, Counts>,
    faults: BTreeSet<(String, String)>,
}

impl Tally {
    /// Adds one row's counters; `in_force` counts its fault (once, however
    /// many rows it has) in `active_faults`.
    pub fn add(&mut self, row: &Row, counts: Counts, in_force: bool) {
        *self.counters.entry(Labels::of(row)).or_default() += counts;
        let active = self.active.entry(row.policy.clone()).or_default();
        if in_force && self.faults.insert((row.policy.clone(), row.fault.clone())) {
            *active += 1;
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

/// The meter provider, its registry and the listener task. Dropping it
/// stops the listener.
pub struct Metrics {
    addr: SocketAddr,
    shared: Shared,
    _provider: SdkMeterProvider,
    server: tokio::task::JoinHandle<()>,
}

impl Metrics {
    /// Binds `addr` and serves `GET /metrics` on the current tokio runtime.
    /// A bind failure is a usage error (exit 2) naming the address.
    pub fn bind(addr: SocketAddr) -> Result<Metrics> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| Error::Invalid(format!("--metrics-addr {addr}: cannot listen: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Runtime(format!("--metrics-addr {addr}: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::Runtime(format!("--metrics-addr {addr}: {e}")))?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::Runtime(format!("--metrics-addr {addr}: {e}")))?;

        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .without_units()
            .scope_info_enabled(false)
            .build()
            .map_err(|e| Error::Runtime(format!("metrics exporter: {e}")))?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let meter = provider.meter("chaos-agent");
        let shared: Shared = Arc::default();

        // The observable instruments stay registered with the provider; their
        // handles need not be kept.
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
                .with_callback(observe_counter(&shared, family, pick))
                .build();
        }
        meter
            .u64_observable_gauge(ACTIVE_FAULTS)
            .with_description("Faults currently in force")
            .with_unit("{fault}")
            .with_callback(observe_map(&shared, "policy", |s| &s.tally.active))
            .build();
        meter
            .u64_observable_counter(POLICY_ERRORS)
            .with_description(
                "Policy files rejected by the daemon (the last good version stays in force)",
            )
            .with_unit("{file}")
            .with_callback(observe_map(&shared, "file", |s| &s.policy_errors))
            .build();
        meter
            .u64_observable_counter(POLICY_ABORTS)
            .with_description("Policies reverted by their steady-state guard (spec.abortWhen)")
            .with_unit("{policy}")
            .with_callback(observe_map(&shared, "policy", |s| &s.policy_aborts))
            .build();

        let lapses = Arc::clone(&shared);
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

        let server = tokio::spawn(http::serve(listener, registry));
        debug!(%addr, "metrics listener ready");
        Ok(Metrics {
            addr,
            shared,
            _provider: provider,
            server,
        })
    }

    /// The bound address (the real port when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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
}

impl Drop for Metrics {
    fn drop(&mut self) {
        self.server.abort();
    }
}
