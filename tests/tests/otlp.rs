//! `--otlp-endpoint`: what a blast and the daemon push over OTLP/HTTP, as a
//! receiver in this test decodes it (`ExportMetricsServiceRequest`,
//! protobuf), agrees with the kernel's counters and the traffic; a
//! collector that never answers neither stops nor noticeably slows a
//! blast; a bad URL is exit 2 naming the flag.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chaos_tests::{AddrKind, Direction, NetnsPair, Side, require_root, udp_run};
use common::{
    Blast, agent_output,
    daemon::{Daemon, sample},
    eventually, fault_counters,
};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value},
    metrics::v1::{metric::Data, number_data_point},
};
use prost::Message;

const TARGET: u16 = 7000;
const COUNT: u32 = 2_000;
const PPS: u32 = 20_000;
/// Largest request body accepted by the receiver.
const MAX_BODY: usize = 4 << 20;

/// One POST the receiver answered.
struct Export {
    path: String,
    content_type: String,
    request: ExportMetricsServiceRequest,
}

/// A minimal OTLP/HTTP receiver on 127.0.0.1: answers every `POST` with
/// 200 and keeps what it decoded; one request per connection (it answers
/// `Connection: close`). Stops when dropped.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Export>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (got2, stop2) = (Arc::clone(&got), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            // Bounded: the test drops the receiver long before this.
            let until = Instant::now() + Duration::from_secs(180);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < until {
                match listener.accept() {
                    Ok((stream, _)) => match serve(stream) {
                        Ok(e) => got2.lock().unwrap().push(e),
                        Err(e) => eprintln!("receiver: {e:#}"),
                    },
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Receiver {
            port,
            got,
            stop,
            thread: Some(thread),
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The exports received so far, oldest first.
    fn take(&self) -> Vec<Export> {
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request (head, then a Content-Length body), answers 200.
fn serve(stream: TcpStream) -> Result<Export> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    );
    let (mut length, mut content_type) = (None, String::new());
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            bail!("connection closed in the head");
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').context("header without ':'")?;
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = Some(v.trim().parse::<usize>()?),
            "content-type" => content_type = v.trim().to_owned(),
            "transfer-encoding" => bail!("chunked body: not expected from the exporter"),
            _ => {}
        }
    }
    let length = length.context("no Content-Length")?;
    if length > MAX_BODY {
        bail!("body of {length} bytes");
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let mut out = stream;
    out.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )?;
    if method != "POST" {
        bail!("{method} {path}");
    }
    let request = ExportMetricsServiceRequest::decode(body.as_slice())
        .context("body is no ExportMetricsServiceRequest")?;
    Ok(Export {
        path,
        content_type,
        request,
    })
}

fn text(v: &Option<AnyValue>) -> Option<String> {
    match v.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        other => Some(format!("{other:?}")),
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| text(&kv.value))
}

/// A data point of metric `name` whose attributes include `want`:
/// (its value, all its attributes as text).
fn point(e: &Export, name: &str, want: &[(&str, &str)]) -> Option<(f64, Vec<(String, String)>)> {
    let metrics = e
        .request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .filter(|m| m.name == name);
    for m in metrics {
        let points = match m.data.as_ref()? {
            Data::Sum(s) => &s.data_points,
            Data::Gauge(g) => &g.data_points,
            _ => continue,
        };
        for p in points {
            if want
                .iter()
                .all(|(k, v)| attr(&p.attributes, k).as_deref() == Some(*v))
            {
                let value = match p.value? {
                    number_data_point::Value::AsInt(i) => i as f64,
                    number_data_point::Value::AsDouble(d) => d,
                };
                let attrs = p
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), text(&kv.value).unwrap_or_default()))
                    .collect();
                return Some((value, attrs));
            }
        }
    }
    None
}

fn resource_attr(e: &Export, key: &str) -> Option<String> {
    let r = e.request.resource_metrics.first()?.resource.as_ref()?;
    attr(&r.attributes, key)
}

/// Under qemu's CPU emulation (`vm-test` sets CHAOS_TEST_EMULATED)
/// everything runs 10-50 times slower: time bounds widen.
fn emulated() -> bool {
    std::env::var_os("CHAOS_TEST_EMULATED").is_some()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// A 100 % loss blast pushing to the receiver: its last export (sent at
/// shutdown) carries exactly the counters of its `reverted` event, which
/// equal the datagrams sent; the resource names the agent and the host.
#[test]
fn blast_pushes_its_final_counters() {
    require_root!();
    let pair = NetnsPair::new("otlp").unwrap();
    let rx = Receiver::start().unwrap();
    let agent = Blast::start(&[
        "net",
        "--netns",
        pair.ns(Side::A),
        "--iface",
        pair.iface(Side::A),
        "--direction",
        "egress",
        "--proto",
        "udp",
        "--dport",
        &TARGET.to_string(),
        "--loss",
        "100",
        "--duration",
        "60s",
        "--name",
        "otlp-loss",
        "--otlp-endpoint",
        &rx.url(),
    ])
    .unwrap();
    let (sent, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, TARGET, COUNT, PPS).unwrap();
    assert_eq!(sent.sent, u64::from(COUNT), "sender: {sent:?}");
    assert_eq!(got.distinct, 0, "datagrams passed under 100 % loss");
    let (status, reverted) = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}");
    let (matched, injected, _) = fault_counters(&reverted);

    // The final export was answered before the agent exited.
    let exports = rx.take();
    let last = exports.last().expect("no export arrived");
    eprintln!(
        "{} export(s); the last: {} {} with {} resource(s)",
        exports.len(),
        last.path,
        last.content_type,
        last.request.resource_metrics.len()
    );
    assert_eq!(last.path, "/v1/metrics");
    assert_eq!(last.content_type, "application/x-protobuf");
    let fault = [
        ("policy", "otlp-loss"),
        ("fault", "net"),
        ("action", "loss"),
        ("interface", pair.iface(Side::A)),
        ("netns", pair.ns(Side::A)),
        ("direction", "egress"),
    ];
    let (got_matched, attrs) =
        point(last, "chaos_agent_packets_matched", &fault).expect("matched data point");
    eprintln!("matched {got_matched} with {attrs:?}; reverted event: {reverted}");
    let (got_injected, _) =
        point(last, "chaos_agent_packets_injected", &fault).expect("injected data point");
    assert_eq!(got_matched, matched as f64, "matched vs the reverted event");
    assert_eq!(
        got_injected, injected as f64,
        "injected vs the reverted event"
    );
    assert_eq!(got_injected, sent.sent as f64, "injected vs datagrams sent");
    assert_eq!(got_matched, sent.sent as f64, "matched vs datagrams sent");
    // Reverted: no fault in force, so no deadline either.
    assert_eq!(
        point(
            last,
            "chaos_agent_active_faults",
            &[("policy", "otlp-loss")]
        )
        .map(|p| p.0),
        Some(0.0)
    );
    assert!(
        point(last, "chaos_agent_fault_deadline_seconds", &fault).is_none(),
        "deadline of a reverted fault"
    );
    assert_eq!(
        point(last, "chaos_agent_build_info", &[]).map(|p| p.0),
        Some(1.0)
    );
    assert_eq!(
        resource_attr(last, "service.name").as_deref(),
        Some("chaos-agent")
    );
    assert_eq!(resource_attr(last, "host.name"), Some(hostname()));
    assert!(
        resource_attr(last, "service.version").is_some_and(|v| !v.is_empty()),
        "no service.version"
    );
}

/// The daemon pushes every OTEL_METRIC_EXPORT_INTERVAL while it runs: an
/// export arrives, without stopping it, with its counters for the traffic
/// sent, its reload and its fault's deadline.
#[test]
fn daemon_pushes_while_it_runs() {
    require_root!();
    let pair = NetnsPair::new("dotlp").unwrap();
    let rx = Receiver::start().unwrap();
    let policy = format!(
        "apiVersion: chaos-agent/v1
kind: FaultPolicy
metadata:
  name: pushed
spec:
  duration: 5m
  faults:
    - name: udp-loss
      network:
        interface: {}
        netns: {}
        direction: egress
        match:
          protocol: udp
          dstPorts: [{TARGET}]
        loss: {{ percent: 100 }}
",
        pair.if_a(),
        pair.ns_a()
    );
    let mut d = Daemon::start_env(
        "otlp",
        &[("p.yaml", &policy)],
        &["--otlp-endpoint", &rx.url()],
        &[("OTEL_METRIC_EXPORT_INTERVAL", "1000")],
    )
    .unwrap();
    let (sent, _) = udp_run(&pair, Direction::AtoB, AddrKind::V4, TARGET, COUNT, PPS).unwrap();
    let fault = [
        ("policy", "pushed"),
        ("fault", "udp-loss"),
        ("netns", pair.ns_a()),
    ];
    // The daemon reads the counters once a second and pushes once a second.
    let mut seen = Vec::new();
    let arrived = eventually(if emulated() { 60 } else { 15 }, || {
        seen.extend(rx.take());
        seen.iter().any(|e| {
            point(e, "chaos_agent_packets_injected", &fault).map(|p| p.0) == Some(sent.sent as f64)
        })
    });
    let scraped = d.scrape();
    assert!(
        arrived,
        "{} export(s), none with {} injected; /metrics:\n{scraped}\nlog:\n{}",
        seen.len(),
        sent.sent,
        d.log()
    );
    let e = seen
        .iter()
        .find(|e| {
            point(e, "chaos_agent_packets_injected", &fault).map(|p| p.0) == Some(sent.sent as f64)
        })
        .unwrap();
    eprintln!("{} export(s) before the counters caught up", seen.len());
    assert_eq!(
        point(e, "chaos_agent_packets_matched", &fault).map(|p| p.0),
        Some(sent.sent as f64)
    );
    // The same values as the scrape, which the same snapshot feeds.
    assert_eq!(
        sample(
            &scraped,
            "chaos_agent_packets_injected_total",
            &[("policy", "pushed")]
        ),
        Some(sent.sent as f64),
        "{scraped}"
    );
    assert_eq!(
        point(e, "chaos_agent_reloads", &[("result", "ok")]).map(|p| p.0),
        Some(1.0)
    );
    let (deadline, _) =
        point(e, "chaos_agent_fault_deadline_seconds", &fault).expect("deadline data point");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        deadline > now + 200.0 && deadline <= now + 300.0,
        "deadline {deadline} vs now {now} (a 5m policy)"
    );
    assert_eq!(resource_attr(e, "host.name"), Some(hostname()));
    d.signal(libc::SIGTERM);
    let status = d.wait(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "daemon exit: {status}");
}

/// A collector that accepts connections and never answers: the blast
/// still ends on time, reverted, exit 0, with one warning; the final
/// export gives up within its bound.
#[test]
fn a_silent_collector_does_not_hold_up_a_blast() {
    require_root!();
    let pair = NetnsPair::new("otlpsilent").unwrap();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}", silent.local_addr().unwrap().port());
    // Connections complete in the kernel's backlog and are never read.
    let started = Instant::now();
    let agent = Blast::start_env(
        None,
        &[
            "net",
            "--netns",
            pair.ns(Side::A),
            "--iface",
            pair.iface(Side::A),
            "--proto",
            "udp",
            "--dport",
            &TARGET.to_string(),
            "--loss",
            "100",
            "--duration",
            "4s",
            "--otlp-endpoint",
            &url,
        ],
        &[("OTEL_METRIC_EXPORT_INTERVAL", "1000")],
    )
    .unwrap();
    let (sent, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, TARGET, 500, PPS).unwrap();
    assert_eq!(got.distinct, 0, "the fault acted while exports hung");
    // The blast removes its log when dropped: keep it open.
    let mut log = std::fs::File::open(&agent.stderr_path).unwrap();
    let (status, reverted) = agent.finish(Duration::from_secs(20)).unwrap();
    let took = started.elapsed();
    let mut stderr = String::new();
    log.read_to_string(&mut stderr).unwrap();
    eprintln!("blast of 4s took {took:?}; stderr:\n{stderr}");
    assert!(status.success(), "agent exit: {status}\n{stderr}");
    assert_eq!(reverted["reason"], "deadline", "{reverted}");
    assert_eq!(fault_counters(&reverted).1, sent.sent);
    // 4 s, the final export's 2 s at most, start-up and exit.
    let bound = Duration::from_secs(if emulated() { 30 } else { 9 });
    assert!(took < bound, "took {took:?}");
    assert!(stderr.contains("OTLP export failed"), "{stderr}");
    drop(silent);
}

#[test]
fn a_bad_endpoint_is_exit_2_naming_the_flag() {
    for (url, want) in [
        ("127.0.0.1:4318", "--otlp-endpoint: expected an http:// URL"),
        (
            "https://collector:4318",
            "--otlp-endpoint: https is not supported",
        ),
    ] {
        let (code, _, stderr) = agent_output(&[
            "blast",
            "net",
            "--iface",
            "lo",
            "--loss",
            "1",
            "--duration",
            "1s",
            "--otlp-endpoint",
            url,
        ])
        .unwrap();
        assert_eq!(code, 2, "{url}: {stderr}");
        assert!(stderr.contains(want), "{url}: {stderr}");
    }
    // The environment variable, named the same way.
    let out = std::process::Command::new(common::agent_bin())
        .args(["run", "--policies", "/nonexistent"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")
        .env(
            "CHAOS_AGENT_RUN_DIR",
            std::env::temp_dir().join("chaos-otlp-env"),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT: expected an http:// URL"),
        "{stderr}"
    );
}
