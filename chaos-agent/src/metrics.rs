//! Prometheus metrics (CONTRACT section 5), through the OpenTelemetry SDK and
//! its Prometheus exporter, served by a small HTTP server on a std
//! `TcpListener` in a background thread.
//!
//! Data flow: the blast loop reads the kernel's per-CPU counters once a
//! second (the same read that feeds its own report) and stores the sums in a
//! shared [`Snapshot`] through [`MetricsServer::update`]. The instruments are
//! observable counters and a gauge whose callbacks read that snapshot when a
//! scrape collects, so a scrape never touches the kernel maps and values are
//! at most one report interval old.
//!
//! Labels come only from the applied faults (`policy`, `fault`, `action`,
//! `interface`, `direction`), never from packet data, so the label set is
//! bounded by the policy.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use opentelemetry::{
    KeyValue,
    metrics::{AsyncInstrument, MeterProvider},
};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, TextEncoder};
use tracing::{debug, warn};

use crate::{
    apply::{FaultCounters, FaultHandle},
    error::{Error, Result},
    policy::model::Direction,
    syscall::{Row, RowCounters},
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

/// Labels of a syscall fault's counters: `policy`, `fault`, `action`
/// (errno), `syscall` (the names sharing one hook) and `backend`.
type SyscallLabels = [String; 5];
const SYSCALL_LABEL_KEYS: [&str; 5] = ["policy", "fault", "action", "syscall", "backend"];

/// Largest request head accepted (request line plus headers).
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The label values of one fault, in a fixed order: policy, fault, action,
/// interface, direction.
pub type Labels = [String; 5];
const LABEL_KEYS: [&str; 5] = ["policy", "fault", "action", "interface", "direction"];

fn direction_label(d: Direction) -> &'static str {
    match d {
        Direction::Egress => "egress",
        Direction::Ingress => "ingress",
        Direction::Both => "both",
    }
}

pub fn labels_of(f: &FaultHandle) -> Labels {
    [
        f.policy.clone(),
        f.fault.clone(),
        f.action.to_owned(),
        f.interface.clone(),
        direction_label(f.direction).to_owned(),
    ]
}

/// What the instruments report; replaced by the blast loop.
#[derive(Debug, Default)]
struct Snapshot {
    /// Policy name -> faults in force.
    active: BTreeMap<String, u64>,
    /// Counters per label set (faults with the same labels, e.g. the same
    /// interface name in two namespaces, are summed).
    counters: BTreeMap<Labels, FaultCounters>,
    /// Policy file -> times it was rejected (daemon).
    policy_errors: BTreeMap<String, u64>,
    /// Policy -> times its steady-state guard reverted it.
    policy_aborts: BTreeMap<String, u64>,
    /// Syscall fault counters per label set.
    syscalls: BTreeMap<SyscallLabels, RowCounters>,
}

type Shared = Arc<Mutex<Snapshot>>;

fn attributes(labels: &Labels) -> Vec<KeyValue> {
    LABEL_KEYS
        .iter()
        .zip(labels)
        .map(|(k, v)| KeyValue::new(*k, v.clone()))
        .collect()
}

fn observe_counter(
    shared: &Shared,
    pick: fn(&FaultCounters) -> u64,
) -> impl Fn(&dyn AsyncInstrument<u64>) + Send + Sync + 'static {
    let shared = Arc::clone(shared);
    move |observer| {
        let Ok(snap) = shared.lock() else { return };
        for (labels, c) in &snap.counters {
            observer.observe(pick(c), &attributes(labels));
        }
    }
}

/// The meter provider, its registry and the HTTP thread. Dropping it stops
/// the server.
pub struct MetricsServer {
    addr: SocketAddr,
    shared: Shared,
    _provider: SdkMeterProvider,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and starts serving `GET /metrics`. `policy` names the
    /// policy whose faults will be reported (`active_faults` is 0 until
    /// [`set_faults`](Self::set_faults)). A bind failure is a usage error
    /// (exit 2) naming the address.
    pub fn start(addr: SocketAddr, policy: &str) -> Result<MetricsServer> {
        let server = MetricsServer::bind(addr)?;
        server
            .shared
            .lock()
            .map_err(|_| Error::Runtime("metrics snapshot poisoned".into()))?
            .active
            .insert(policy.to_owned(), 0);
        Ok(server)
    }

    /// Binds `addr` and starts serving `GET /metrics`, with no policy known
    /// yet (the daemon reports them through [`replace`](Self::replace)).
    pub fn bind(addr: SocketAddr) -> Result<MetricsServer> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| Error::Invalid(format!("--metrics-addr {addr}: cannot listen: {e}")))?;
        let addr = listener
            .local_addr()
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
        meter
            .u64_observable_counter(PACKETS_MATCHED)
            .with_description("Packets that matched a network fault's filter")
            .with_unit("{packet}")
            .with_callback(observe_counter(&shared, |c| c.matched))
            .build();
        meter
            .u64_observable_counter(PACKETS_INJECTED)
            .with_description(
                "Packets dropped, delayed, corrupted, duplicated or shaped by a network fault",
            )
            .with_unit("{packet}")
            .with_callback(observe_counter(&shared, |c| c.injected))
            .build();
        meter
            .u64_observable_counter(GUARD_PASSED)
            .with_description("Packets the guard let through untouched")
            .with_unit("{packet}")
            .with_callback(observe_counter(&shared, |c| c.guard_passed))
            .build();
        for (name, description, pick) in [
            (
                SYSCALLS_MATCHED,
                "Calls that matched a syscall fault's target",
                (|c: &RowCounters| c.matched) as fn(&RowCounters) -> u64,
            ),
            (
                SYSCALLS_INJECTED,
                "Calls a syscall fault made to fail",
                |c: &RowCounters| c.injected,
            ),
        ] {
            let shared = Arc::clone(&shared);
            meter
                .u64_observable_counter(name)
                .with_description(description)
                .with_unit("{call}")
                .with_callback(move |observer| {
                    let Ok(snap) = shared.lock() else { return };
                    for (labels, c) in &snap.syscalls {
                        let attrs: Vec<KeyValue> = SYSCALL_LABEL_KEYS
                            .iter()
                            .zip(labels)
                            .map(|(k, v)| KeyValue::new(*k, v.clone()))
                            .collect();
                        observer.observe(pick(c), &attrs);
                    }
                })
                .build();
        }
        let gauge_shared = Arc::clone(&shared);
        meter
            .u64_observable_gauge(ACTIVE_FAULTS)
            .with_description("Faults currently in force")
            .with_unit("{fault}")
            .with_callback(move |observer| {
                let Ok(snap) = gauge_shared.lock() else {
                    return;
                };
                for (policy, n) in &snap.active {
                    observer.observe(*n, &[KeyValue::new("policy", policy.clone())]);
                }
            })
            .build();
        let errors_shared = Arc::clone(&shared);
        meter
            .u64_observable_counter(POLICY_ERRORS)
            .with_description(
                "Policy files rejected by the daemon (the last good version stays in force)",
            )
            .with_unit("{file}")
            .with_callback(move |observer| {
                let Ok(snap) = errors_shared.lock() else {
                    return;
                };
                for (file, n) in &snap.policy_errors {
                    observer.observe(*n, &[KeyValue::new("file", file.clone())]);
                }
            })
            .build();
        let aborts_shared = Arc::clone(&shared);
        meter
            .u64_observable_counter(POLICY_ABORTS)
            .with_description("Policies reverted by their steady-state guard (spec.abortWhen)")
            .with_unit("{policy}")
            .with_callback(move |observer| {
                let Ok(snap) = aborts_shared.lock() else {
                    return;
                };
                for (policy, n) in &snap.policy_aborts {
                    observer.observe(*n, &[KeyValue::new("policy", policy.clone())]);
                }
            })
            .build();

        let stop = Arc::new(AtomicBool::new(false));
        let thread_listener = listener
            .try_clone()
            .map_err(|e| Error::Runtime(format!("--metrics-addr {addr}: {e}")))?;
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || serve(thread_listener, registry, thread_stop))
            .map_err(|e| Error::Runtime(format!("cannot start the metrics server: {e}")))?;
        debug!(%addr, "metrics server listening");
        Ok(MetricsServer {
            addr,
            shared,
            _provider: provider,
            listener,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address (the real port when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Records the faults now in force, with zero counters.
    pub fn set_faults(&self, faults: &[FaultHandle]) {
        let counters = vec![FaultCounters::default(); faults.len()];
        self.update(faults, &counters);
    }

    /// Replaces the snapshot with `counters` (in `faults` order), as read
    /// from the kernel.
    pub fn update(&self, faults: &[FaultHandle], counters: &[FaultCounters]) {
        let Ok(mut snap) = self.shared.lock() else {
            return;
        };
        for n in snap.active.values_mut() {
            *n = 0;
        }
        snap.counters.clear();
        for (f, c) in faults.iter().zip(counters) {
            *snap.active.entry(f.policy.clone()).or_default() += 1;
            let sum = snap.counters.entry(labels_of(f)).or_default();
            sum.matched += c.matched;
            sum.injected += c.injected;
            sum.guard_passed += c.guard_passed;
        }
    }

    /// Replaces the whole snapshot (daemon): faults in force per policy and
    /// cumulative counters per label set.
    pub fn replace(
        &self,
        active: BTreeMap<String, u64>,
        counters: BTreeMap<Labels, FaultCounters>,
    ) {
        if let Ok(mut snap) = self.shared.lock() {
            snap.active = active;
            snap.counters = counters;
        }
    }

    /// Counts one rejection of policy file `file`.
    pub fn policy_error(&self, file: &str) {
        if let Ok(mut snap) = self.shared.lock() {
            *snap.policy_errors.entry(file.to_owned()).or_default() += 1;
        }
    }

    /// Counts one steady-state abort of `policy`.
    pub fn policy_aborted(&self, policy: &str) {
        if let Ok(mut snap) = self.shared.lock() {
            *snap.policy_aborts.entry(policy.to_owned()).or_default() += 1;
        }
    }

    /// Records the syscall fault rows now in force, with zero counters.
    pub fn set_syscall_faults(&self, rows: &[Row]) {
        let counters = vec![RowCounters::default(); rows.len()];
        self.update_syscalls(rows, &counters);
    }

    /// Replaces the syscall part of the snapshot with `counters` (in `rows`
    /// order); a fault counts once in `active_faults` however many rows it has.
    pub fn update_syscalls(&self, rows: &[Row], counters: &[RowCounters]) {
        let Ok(mut snap) = self.shared.lock() else {
            return;
        };
        for n in snap.active.values_mut() {
            *n = 0;
        }
        snap.syscalls.clear();
        let mut faults = std::collections::BTreeSet::new();
        for (r, c) in rows.iter().zip(counters) {
            if faults.insert((r.policy.clone(), r.fault.clone())) {
                *snap.active.entry(r.policy.clone()).or_default() += 1;
            }
            let labels = [
                r.policy.clone(),
                r.fault.clone(),
                "errno".to_owned(),
                r.syscall.clone(),
                r.backend.name().to_owned(),
            ];
            let sum = snap.syscalls.entry(labels).or_default();
            sum.matched += c.matched;
            sum.injected += c.injected;
        }
    }

    /// Faults reverted: `active_faults` drops to 0, counters keep their last
    /// values.
    pub fn clear_active(&self) {
        if let Ok(mut snap) = self.shared.lock() {
            for n in snap.active.values_mut() {
                *n = 0;
            }
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocked accept() (Linux returns EINVAL on a shut-down
        // listening socket).
        // SAFETY: the descriptor is owned by `self.listener`, still open.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: TcpListener, registry: prometheus::Registry, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match conn {
            Ok(stream) => {
                if let Err(e) = handle(stream, &registry) {
                    debug!("metrics request: {e}");
                }
            }
            Err(e) => {
                warn!("metrics server: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Reads the request head: up to the blank line, at most `MAX_REQUEST`
/// bytes. `None` when the limit is hit first.
fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(buf));
        }
        if buf.len() >= MAX_REQUEST {
            return Ok(None);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            // Peer closed; take what came (an HTTP/1.0 client may not send
            // headers at all).
            return Ok(Some(buf));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

fn handle(mut stream: TcpStream, registry: &prometheus::Registry) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    const TEXT: &str = "text/plain; charset=utf-8";
    let Some(head) = read_head(&mut stream)? else {
        return respond(
            &mut stream,
            "431 Request Header Fields Too Large",
            TEXT,
            b"request too large\n",
        );
    };
    let head = String::from_utf8_lossy(&head);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let encoder = TextEncoder::new();
            let mut body = Vec::new();
            if let Err(e) = encoder.encode(&registry.gather(), &mut body) {
                return respond(
                    &mut stream,
                    "500 Internal Server Error",
                    TEXT,
                    format!("{e}\n").as_bytes(),
                );
            }
            // "text/plain; version=0.0.4"
            respond(&mut stream, "200 OK", encoder.format_type(), &body)
        }
        (_, "/metrics") => respond(&mut stream, "405 Method Not Allowed", TEXT, b"only GET\n"),
        _ => respond(&mut stream, "404 Not Found", TEXT, b"not found\n"),
    }
}
