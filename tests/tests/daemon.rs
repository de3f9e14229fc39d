//! `chaos-agent run`, the daemon: edits of a policy file reach real traffic
//! within 100 ms; a bad edit keeps the old behaviour and is counted; metrics
//! over HTTP agree with the receiver; SIGTERM and the kill switch revert
//! everything; the control socket is root only; one daemon per host;
//! READY/RELOADING/STOPPING reach NOTIFY_SOCKET; the steady-state guard
//! reverts a policy whose probe fails.
//!
//! Every daemon here runs with its own run directory (CHAOS_AGENT_RUN_DIR),
//! policies directory and metrics port, so a real daemon on the host is not
//! disturbed.

mod common;

use std::{
    io::{Read, Write},
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use chaos_tests::{
    AddrKind, Direction, NetnsPair, attachments_on, monotonic_ns, require_root, stream_while,
    udp_run,
};
use common::{
    agent_bin,
    daemon::{Daemon, sample},
    eventually,
};
use serde_json::Value;

const MS: u64 = 1_000_000;
const PORT: u16 = 7000;

fn loss_policy(name: &str, pair: &NetnsPair, percent: u32, extra_spec: &str) -> String {
    format!(
        "apiVersion: chaos-agent/v1
kind: FaultPolicy
metadata:
  name: {name}
spec:
  duration: 5m
{extra_spec}  faults:
    - name: udp-loss
      network:
        interface: {iface}
        netns: {ns}
        direction: egress
        match:
          protocol: udp
          dstPorts: [{PORT}]
        loss: {{ percent: {percent} }}
",
        iface = pair.if_a(),
        ns = pair.ns_a(),
    )
}

/// Streams a->b to PORT at 2,000 pps for `secs` while `during` runs;
/// returns (send_ns, recv_ns) of every datagram that arrived, the sender's
/// start, and (seq, send_ns) of every datagram that arrived.
fn records_while(pair: &NetnsPair, secs: f64, during: impl FnOnce()) -> (Pairs, u64, Pairs) {
    let (sent, got) = stream_while(pair, PORT, 2_000, secs, during).unwrap();
    let arrived = || got.records.iter().filter(|r| !r.dup);
    (
        arrived().map(|r| (r.send_ns, r.recv_ns)).collect(),
        sent.start_ns,
        arrived().map(|r| (r.seq, r.send_ns)).collect(),
    )
}

/// Pairs of u64: (send_ns, recv_ns) or (seq, send_ns).
type Pairs = Vec<(u64, u64)>;

/// Datagrams sent in [from, to) that arrived.
fn arrived(records: &[(u64, u64)], from: u64, to: u64) -> usize {
    records
        .iter()
        .filter(|(s, _)| *s >= from && *s < to)
        .count()
}

#[test]
fn policy_edits_reach_traffic_within_100ms_and_a_bad_edit_keeps_the_old() {
    require_root!();
    let pair = NetnsPair::new("dreload").unwrap();
    let mut d = Daemon::start(
        "reload",
        &[("p.yaml", &loss_policy("edit", &pair, 100, ""))],
    )
    .unwrap();
    let (t_open, t_close, t_bad) = (
        AtomicU64Cell::new(),
        AtomicU64Cell::new(),
        AtomicU64Cell::new(),
    );
    let (records, start, seqs) = records_while(&pair, 3.6, || {
        std::thread::sleep(Duration::from_millis(600));
        t_open.set(monotonic_ns());
        d.write_policy("p.yaml", &loss_policy("edit", &pair, 0, ""));
        std::thread::sleep(Duration::from_millis(1000));
        t_close.set(monotonic_ns());
        d.write_policy("p.yaml", &loss_policy("edit", &pair, 100, ""));
        std::thread::sleep(Duration::from_millis(800));
        t_bad.set(monotonic_ns());
        d.write_policy(
            "p.yaml",
            &loss_policy("edit", &pair, 0, "").replace("percent: 0", "percent: 250"),
        );
        std::thread::sleep(Duration::from_millis(900));
    });
    let (t_open, t_close, t_bad) = (t_open.get(), t_close.get(), t_bad.get());
    let end = records.iter().map(|r| r.0).max().unwrap_or(t_bad) + MS;

    // 100 % loss until the first edit.
    assert_eq!(
        arrived(&records, start, t_open),
        0,
        "traffic passed under 100 % loss"
    );
    // Loss 0: the first datagram through, and everything sent 100 ms later.
    let first = records
        .iter()
        .filter(|(s, _)| *s >= t_open)
        .map(|(_, r)| *r)
        .min()
        .expect("nothing arrived after the edit to 0 %");
    let open_ms = (first.saturating_sub(t_open)) as f64 / MS as f64;
    let open_window = t_close - (t_open + 100 * MS);
    let expected = (open_window as f64 / 1e9 * 2_000.0) as usize;
    let got = arrived(&records, t_open + 100 * MS, t_close);
    // Back to 100 %: nothing sent 100 ms after the edit arrives.
    let last = records
        .iter()
        .filter(|(s, _)| *s >= t_close)
        .map(|(s, _)| *s)
        .max()
        .unwrap_or(t_close);
    let close_ms = (last.saturating_sub(t_close)) as f64 / MS as f64;
    eprintln!(
        "reload latency: 100 % -> 0 % first datagram through after {open_ms:.1} ms; \
         0 % -> 100 % last datagram through sent {close_ms:.1} ms after the edit; \
         {got}/{expected} arrived in the open window"
    );
    let bound = latency_bound_ms();
    assert!(
        open_ms < bound,
        "traffic opened {open_ms:.1} ms after the edit"
    );
    // Under 0 % loss every datagram sent in the window arrived: their
    // sequence numbers have no gap. (The count itself depends on how fast
    // the sender keeps up, which under qemu's emulation is well below
    // 2,000 pps.)
    let mut window: Vec<u64> = seqs
        .iter()
        .filter(|(_, s)| *s >= t_open + bound as u64 * MS && *s < t_close)
        .map(|(q, _)| *q)
        .collect();
    window.sort_unstable();
    window.dedup();
    let span = window.last().unwrap() - window.first().unwrap() + 1;
    assert_eq!(
        span,
        window.len() as u64,
        "datagrams lost under 0 % loss ({} of {span} arrived)",
        window.len()
    );
    assert!(
        got as f64 >= expected as f64 * 0.3,
        "only {got} of ~{expected} datagrams sent"
    );
    assert!(
        close_ms < bound,
        "traffic still passed {close_ms:.1} ms after the edit"
    );
    // The invalid edit (percent 250) changed nothing: still 100 % loss.
    assert_eq!(
        arrived(&records, t_bad, end),
        0,
        "the invalid edit was applied"
    );
    let st = d.status();
    let errors = st["file_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{st}");
    let msg = errors[0]["error"].as_str().unwrap();
    assert!(
        msg.contains("p.yaml:") && msg.contains("spec.faults[0].network.loss.percent"),
        "error names file:line and the field: {msg}"
    );
    assert!(
        d.log().contains("spec.faults[0].network.loss.percent"),
        "{}",
        d.log()
    );
    let text = d.scrape();
    let file = d.policies.0.join("p.yaml").display().to_string();
    assert_eq!(
        sample(&text, "chaos_agent_policy_errors_total", &[("file", &file)]),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("# HELP chaos_agent_policy_errors_total "),
        "{text}"
    );
    // The start and the two good edits were reloads that went well (an
    // editor's write may count twice), the bad edit one that did not.
    let reloads = |result: &str| {
        sample(&text, "chaos_agent_reloads_total", &[("result", result)]).unwrap_or(0.0)
    };
    assert!(reloads("ok") >= 3.0, "{text}");
    assert_eq!(reloads("error"), 1.0, "{text}");
    // The reload notifications reached the service manager.
    d.signal(libc::SIGHUP);
    let seen = d.wait_notify("READY=1", Duration::from_secs(5)).unwrap();
    assert!(
        seen.iter()
            .any(|m| m.contains("RELOADING=1") && m.contains("MONOTONIC_USEC=")),
        "{seen:?}"
    );
}

/// The reload latency the daemon promises (100 ms), widened to 400 ms
/// when the test runs under qemu's CPU emulation (`vm-test` sets
/// CHAOS_TEST_EMULATED), where everything runs 10-50 times slower.
fn latency_bound_ms() -> f64 {
    if std::env::var_os("CHAOS_TEST_EMULATED").is_some() {
        400.0
    } else {
        100.0
    }
}

/// A u64 set once from the streaming closure and read after it.
struct AtomicU64Cell(std::sync::atomic::AtomicU64);

impl AtomicU64Cell {
    fn new() -> Self {
        AtomicU64Cell(std::sync::atomic::AtomicU64::new(0))
    }
    fn set(&self, v: u64) {
        self.0.store(v, Ordering::SeqCst);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[test]
fn metrics_over_http_agree_with_the_receiver() {
    require_root!();
    let pair = NetnsPair::new("dmetrics").unwrap();
    let d = Daemon::start(
        "metrics",
        &[("m.yaml", &loss_policy("scraped", &pair, 30, ""))],
    )
    .unwrap();
    let (sent, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, PORT, 5_000, 40_000).unwrap();
    let lost = sent.sent - got.distinct;
    let labels = [
        ("policy", "scraped"),
        ("fault", "udp-loss"),
        ("action", "loss"),
        ("interface", pair.if_a()),
        ("direction", "egress"),
    ];
    // The daemon reads the counters once a second.
    let until = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = d.scrape();
        if sample(&text, "chaos_agent_packets_matched_total", &labels) == Some(sent.sent as f64)
            || Instant::now() > until
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("sent {} received {} lost {lost}", sent.sent, got.distinct);
    assert_eq!(sent.sent, 5_000, "sender: {sent:?}");
    common::assert_share("daemon udp 30% lost", sent.sent, 0.3, lost);
    assert_eq!(
        sample(&text, "chaos_agent_packets_matched_total", &labels),
        Some(sent.sent as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, "chaos_agent_packets_injected_total", &labels),
        Some(lost as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, "chaos_agent_active_faults", &[("policy", "scraped")]),
        Some(1.0),
        "{text}"
    );
    for family in [
        "chaos_agent_packets_matched_total",
        "chaos_agent_packets_injected_total",
        "chaos_agent_guard_passed_total",
        "chaos_agent_active_faults",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family}:\n{text}"
        );
    }
    // status shows the same counters.
    let st = d.status();
    let f = &st["policies"][0]["faults"][0];
    assert_eq!(f["matched"].as_u64(), Some(sent.sent), "{st}");
    assert_eq!(f["injected"].as_u64(), Some(lost), "{st}");
    assert!(
        st["policies"][0]["time_left_ms"].as_u64().unwrap() > 200_000,
        "{st}"
    );
}

#[test]
fn sigterm_reverts_everything_and_notifies_stopping() {
    require_root!();
    let pair = NetnsPair::new("dterm").unwrap();
    let two = loss_policy("two", &pair, 100, "").replace("egress", "ingress");
    for attach in ["auto", "netlink"] {
        let mut d = Daemon::start_with(
            "term",
            &[
                ("one.yaml", &loss_policy("one", &pair, 100, "")),
                ("two.yaml", &two),
            ],
            &["--attach", attach],
        )
        .unwrap();
        let before = attachments_on(pair.ns_a(), pair.if_a()).unwrap();
        assert!(before.len() >= 2, "{attach}: {before:?}");
        d.signal(libc::SIGTERM);
        let seen = d.wait_notify("STOPPING=1", Duration::from_secs(5)).unwrap();
        let status = d.wait(Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(0), "{}", d.log());
        let left = attachments_on(pair.ns_a(), pair.if_a()).unwrap();
        assert!(
            left.is_empty(),
            "{attach}: left attached after SIGTERM: {left:?}"
        );
        let qdiscs = chaos_tests::tc_qdiscs(pair.ns_a(), pair.if_a()).unwrap();
        assert!(
            !qdiscs.contains("clsact"),
            "{attach}: clsact left:\n{qdiscs}"
        );
        assert!(!d.run_dir().join("control.sock").exists(), "socket left");
        eprintln!("{attach}: notifications: {seen:?}");
    }
}

#[test]
fn kill_switch_and_stop_revert_faults() {
    require_root!();
    let pair = NetnsPair::new("dkill").unwrap();
    let d = Daemon::start(
        "kill",
        &[
            ("a.yaml", &loss_policy("block-a", &pair, 100, "")),
            (
                "b.yaml",
                &loss_policy("block-b", &pair, 100, "").replace("udp-loss", "udp-loss-b"),
            ),
        ],
    )
    .unwrap();
    let (_, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, PORT, 200, 2_000).unwrap();
    assert_eq!(got.distinct, 0, "traffic passed under two 100 % policies");

    // Stopping one leaves the other in force.
    let (code, out, err) = d.ctl(&["stop", "block-a"]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, PORT, 200, 2_000).unwrap();
    assert_eq!(got.distinct, 0, "block-b was reverted with block-a");
    let (code, _, err) = d.ctl(&["stop", "no-such-policy"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no-such-policy"), "{err}");

    // The kill switch, while a reload is being asked for.
    d.write_policy(
        "c.yaml",
        &loss_policy("block-c", &pair, 100, "").replace("udp-loss", "udp-loss-c"),
    );
    let (code, out, err) = d.ctl(&["stop", "--all"]);
    assert_eq!(code, 0, "{out}{err}");
    // Whatever the reload did first, nothing is in force afterwards.
    std::thread::sleep(Duration::from_millis(300));
    let st = d.status();
    for p in st["policies"].as_array().unwrap() {
        assert!(p["state"] == "stopped" || p["name"] == "block-c", "{p}");
    }
    if st["policies"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "block-c" && p["state"] == "active")
    {
        // The reload landed after the kill switch: stop it too.
        let (code, _, err) = d.ctl(&["stop", "--all"]);
        assert_eq!(code, 0, "{err}");
    }
    let left = attachments_on(pair.ns_a(), pair.if_a()).unwrap();
    assert!(left.is_empty(), "attached after stop --all: {left:?}");
    let (sent, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, PORT, 200, 2_000).unwrap();
    assert_eq!(
        got.distinct, sent.sent,
        "traffic still faulted after the kill switch"
    );
    let (code, out, _) = d.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("block-a [stopped]"), "{out}");
}

#[test]
fn control_socket_is_root_only_and_one_daemon_per_host() {
    require_root!();
    let d = Daemon::start("ctl", &[]).unwrap();
    let sock = d.run_dir().join("control.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    let dir_mode = std::fs::metadata(d.run_dir()).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700, "run dir mode {dir_mode:o}");

    // A plain user cannot reach it.
    let as_nobody = |extra: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(extra)
            .arg(agent_bin())
            .arg("status")
            .env("CHAOS_AGENT_RUN_DIR", d.run_dir())
            .output()
            .ok()?;
        Some((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    match as_nobody(&[]) {
        None => eprintln!("skipped: non-root part (setpriv from util-linux not installed)"),
        Some((code, err)) => {
            assert_ne!(code, 0, "non-root status succeeded");
            assert!(
                err.contains("Permission denied") || err.contains("permission denied"),
                "{err}"
            );
            // One that passes the file permissions (CAP_DAC_OVERRIDE kept
            // across the uid change) is refused by the daemon itself
            // (SO_PEERCRED).
            let (code, err) =
                as_nobody(&["--inh-caps=+dac_override", "--ambient-caps=+dac_override"])
                    .expect("setpriv ran before");
            if err.contains("setpriv:") {
                eprintln!(
                    "skipped: SO_PEERCRED part (setpriv cannot keep ambient capabilities here: {err})"
                );
            } else {
                assert_ne!(code, 0, "non-root with DAC override got an answer");
                assert!(err.contains("root only"), "{err}");
            }
        }
    }

    // A second daemon with the same run directory refuses, naming the pid.
    let pid = d.pid().unwrap();
    let out = Command::new(agent_bin())
        .args(["run", "--policies"])
        .arg(&d.policies.0)
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("CHAOS_AGENT_RUN_DIR", d.run_dir())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("process {pid}")), "{err}");
}

/// An HTTP server answering 200 while `healthy`, 503 otherwise.
fn health_server(healthy: Arc<AtomicBool>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().take(10_000) {
            let Ok(mut c) = c else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 1024];
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let code = if healthy.load(Ordering::SeqCst) {
                "200 OK"
            } else {
                "503 Unavailable"
            };
            let _ = write!(
                c,
                "HTTP/1.1 {code}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    port
}

#[test]
fn steady_state_guard_reverts_the_policy() {
    require_root!();
    let pair = NetnsPair::new("dsteady").unwrap();
    let healthy = Arc::new(AtomicBool::new(true));
    let port = health_server(Arc::clone(&healthy));
    let guard = format!(
        "  abortWhen:\n    probe: {{ http: \"http://127.0.0.1:{port}/health\", expectStatus: 200 }}\n    interval: 100ms\n    failures: 3\n"
    );
    let d = Daemon::start(
        "steady",
        &[("s.yaml", &loss_policy("guarded", &pair, 100, &guard))],
    )
    .unwrap();
    let (_, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, PORT, 200, 2_000).unwrap();
    assert_eq!(got.distinct, 0, "policy not in force while healthy");
    let t0 = Instant::now();
    healthy.store(false, Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(10);
    let st = loop {
        let st = d.status();
        if st["policies"][0]["state"] == "aborted" || Instant::now() > until {
            break st;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = t0.elapsed();
    assert_eq!(st["policies"][0]["state"], "aborted", "{st}");
    let reason = st["policies"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("503") && reason.contains("3 times"),
        "{reason}"
    );
    // 3 failures at 100 ms intervals.
    assert!(took >= Duration::from_millis(150), "aborted after {took:?}");
    eprintln!("aborted {took:?} after the service turned unhealthy: {reason}");
    let (sent, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, PORT, 200, 2_000).unwrap();
    assert_eq!(got.distinct, sent.sent, "traffic did not recover");
    let text = d.scrape();
    assert_eq!(
        sample(
            &text,
            "chaos_agent_policy_aborts_total",
            &[("policy", "guarded")]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(d.log().contains("steady-state guard failed"), "{}", d.log());
}

#[test]
fn unsupported_faults_are_reported_and_expiry_and_start_after_are_honoured() {
    require_root!();
    let pair = NetnsPair::new("dlife").unwrap();
    // One loss fault, and a syscall fault only the kprobe backend serves
    // (getpid has no LSM or cgroup hook): unsupported where kprobe override
    // is missing, which is most kernels. Windows of 3 s leave room for the
    // checks before them under qemu's emulated CPU (1 s did not).
    let kprobe = chaos_tests::kernel::kprobe_override().is_ok();
    let mixed = loss_policy("mixed", &pair, 100, "").replace("duration: 5m", "duration: 3s")
        + "    - name: pid\n      syscall:\n        names: [getpid]\n        errno: EPERM\n        target: { comm: nothing-here }\n";
    let later = loss_policy("later", &pair, 100, "  startAfter: 3s\n")
        .replace("udp-loss", "later-loss")
        .replace(&format!("[{PORT}]"), "[7001]");
    let d = Daemon::start("life", &[("mixed.yaml", &mixed), ("later.yaml", &later)]).unwrap();
    // Both windows began before READY.
    let ready = Instant::now();
    let st = d.status();
    let policy = |st: &Value, name: &str| {
        st["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap()
    };
    let m = policy(&st, "mixed");
    assert_eq!(m["state"], "active", "{m}");
    assert_eq!(m["faults"][0]["state"], "active", "{m}");
    if kprobe {
        assert_eq!(m["faults"][1]["state"], "active", "{m}");
    } else {
        assert_eq!(m["faults"][1]["state"], "unsupported", "{m}");
        assert!(
            m["faults"][1]["problem"]
                .as_str()
                .unwrap()
                .contains("getpid needs kprobe override"),
            "{m}"
        );
    }
    assert_eq!(policy(&st, "later")["state"], "pending", "{st}");
    let (_, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, PORT, 200, 2_000).unwrap();
    assert_eq!(
        got.distinct, 0,
        "the supported fault of a mixed policy is not in force"
    );
    let (sent, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, 7001, 200, 2_000).unwrap();
    assert_eq!(
        got.distinct, sent.sent,
        "a policy waiting for startAfter is in force"
    );

    // After startAfter: in force. After duration: expired, reverted.
    std::thread::sleep(
        (ready + Duration::from_millis(3600)).saturating_duration_since(Instant::now()),
    );
    let st = d.status();
    assert_eq!(policy(&st, "later")["state"], "active", "{st}");
    assert_eq!(policy(&st, "mixed")["state"], "expired", "{st}");
    let (_, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, 7001, 200, 2_000).unwrap();
    assert_eq!(
        got.distinct, 0,
        "startAfter passed but the policy is not in force"
    );
    let (sent, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, PORT, 200, 2_000).unwrap();
    assert_eq!(got.distinct, sent.sent, "an expired policy still acts");
    let log = d.log();
    assert!(log.contains("expired"), "{log}");
    assert!(kprobe || log.contains("unsupported"), "{log}");
    let left = attachments_on(pair.ns_a(), pair.if_a()).unwrap();
    assert_eq!(left.len(), 1, "only `later` stays attached: {left:?}");
}

#[test]
fn a_changed_match_replaces_the_fault() {
    require_root!();
    let pair = NetnsPair::new("dmatch").unwrap();
    let d = Daemon::start(
        "match",
        &[("p.yaml", &loss_policy("moving", &pair, 100, ""))],
    )
    .unwrap();
    let t_edit = std::sync::atomic::AtomicU64::new(0);
    let (records, _, _) = records_while(&pair, 2.0, || {
        std::thread::sleep(Duration::from_millis(500));
        t_edit.store(monotonic_ns(), Ordering::SeqCst);
        // Same fault name, other port: the old rule goes, a new one comes.
        d.write_policy(
            "p.yaml",
            &loss_policy("moving", &pair, 100, "").replace(&format!("[{PORT}]"), "[7001]"),
        );
        std::thread::sleep(Duration::from_millis(1200));
    });
    let t_edit = t_edit.load(Ordering::SeqCst);
    let first = records
        .iter()
        .map(|(_, r)| *r)
        .min()
        .expect("port 7000 never opened");
    let ms = first.saturating_sub(t_edit) as f64 / MS as f64;
    eprintln!("replaced fault: port {PORT} open {ms:.1} ms after the edit");
    assert!(first >= t_edit, "traffic passed before the edit");
    // A replaced fault is reverted and its program instance loaded anew:
    // ~20 ms here, ~110 ms under qemu's TCG emulation. The 100 ms bound of
    // the reload test holds for in-place changes (the usual edit).
    assert!(
        ms < 2.5 * latency_bound_ms(),
        "old fault reverted {ms:.1} ms after the edit"
    );
    let st = d.status();
    assert_eq!(st["policies"][0]["state"], "active", "{st}");
    let (_, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, 7001, 200, 2_000).unwrap();
    assert_eq!(got.distinct, 0, "the new match is not in force");
}

#[test]
fn blast_abort_flags_revert_early() {
    require_root!();
    let pair = NetnsPair::new("dblastab").unwrap();
    let healthy = Arc::new(AtomicBool::new(true));
    let port = health_server(Arc::clone(&healthy));
    let url = format!("http://127.0.0.1:{port}/");
    let agent = common::Blast::start(&[
        "net",
        "--netns",
        pair.ns_a(),
        "--iface",
        pair.if_a(),
        "--proto",
        "udp",
        "--dport",
        &PORT.to_string(),
        "--loss",
        "100",
        "--duration",
        "60s",
        "--abort-http",
        &url,
        "--abort-interval",
        "100ms",
        "--abort-failures",
        "2",
    ])
    .unwrap();
    let (_, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, PORT, 200, 2_000).unwrap();
    assert_eq!(got.distinct, 0);
    healthy.store(false, Ordering::SeqCst);
    let (status, ev) = agent.finish(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(ev["reason"], "steady-state guard", "{ev}");
    let (sent, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, PORT, 200, 2_000).unwrap();
    assert_eq!(got.distinct, sent.sent, "traffic did not recover");
}

/// `tc -d qdisc show` of a's veth.
fn qdiscs_a(pair: &NetnsPair) -> String {
    chaos_tests::qdisc_show(pair.ns_a(), pair.if_a()).unwrap()
}

/// Delay from the daemon: two policies delaying the same interface share
/// one fq; a latency edit is applied in place; fq goes only with the last
/// of them, and the kernel's default root qdisc is back exactly.
#[test]
fn daemon_delay_shares_fq_and_restores_the_default_qdisc() {
    require_root!();
    let pair = NetnsPair::new("ddly").unwrap();
    if let Err(why) = chaos_tests::qdisc_kind_available(pair.ns_a(), "fq") {
        println!("skipped: the fq qdisc (CONFIG_NET_SCH_FQ) is missing on this kernel: {why}");
        return;
    }
    let before = qdiscs_a(&pair);
    let delay = |name: &str, port: u16, latency: &str| {
        loss_policy(name, &pair, 0, "")
            .replace(&format!("[{PORT}]"), &format!("[{port}]"))
            .replace(
                "loss: { percent: 0 }",
                &format!("delay: {{ latency: {latency} }}"),
            )
    };
    let mut d = Daemon::start(
        "dly",
        &[
            ("one.yaml", &delay("one", 7010, "20ms")),
            ("two.yaml", &delay("two", 7011, "30ms")),
        ],
    )
    .unwrap();
    let during = qdiscs_a(&pair);
    assert_eq!(
        during.matches("qdisc fq ca05: root").count(),
        1,
        "one fq for both policies:\n{during}"
    );
    d.write_policy("one.yaml", &delay("one", 7010, "40ms"));
    assert!(
        eventually(10, || d.log().contains("fault action changed in place")),
        "the latency edit was not applied in place:\n{}",
        d.log()
    );
    std::fs::remove_file(d.policies.0.join("one.yaml")).unwrap();
    assert!(
        eventually(10, || !d.status().to_string().contains("\"one\"")),
        "policy one not reverted: {}",
        d.status()
    );
    assert!(
        qdiscs_a(&pair).contains("qdisc fq ca05: root"),
        "fq went while policy two still delays:\n{}",
        qdiscs_a(&pair)
    );
    std::fs::remove_file(d.policies.0.join("two.yaml")).unwrap();
    assert!(
        eventually(10, || qdiscs_a(&pair) == before),
        "the default qdisc did not come back:\nbefore:\n{before}\nnow:\n{}",
        qdiscs_a(&pair)
    );
    d.signal(libc::SIGTERM);
    let status = d.wait(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status:?}");
}

/// A burst of edits that ends "valid, then invalid" within a few
/// milliseconds: the newest valid version is in force (not the one before
/// the burst), and the invalid one is reported.
#[test]
fn a_burst_ending_valid_then_invalid_keeps_the_newest_valid_version() {
    require_root!();
    let pair = NetnsPair::new("dburst").unwrap();
    let d = Daemon::start(
        "burst",
        &[("p.yaml", &loss_policy("burst", &pair, 100, ""))],
    )
    .unwrap();
    let gap = if std::env::var_os("CHAOS_TEST_EMULATED").is_some() {
        Duration::from_millis(30)
    } else {
        Duration::from_millis(10)
    };
    let open = loss_policy("burst", &pair, 0, "");
    d.write_policy("p.yaml", &open);
    std::thread::sleep(gap);
    d.write_policy("p.yaml", &open.replace("percent: 0", "percent: 250"));
    let reported = eventually(5, || {
        d.status()["file_errors"]
            .as_array()
            .is_some_and(|e| e.len() == 1)
    });
    assert!(
        reported,
        "the invalid version is not reported: {}",
        d.status()
    );
    let (sent, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, PORT, 200, 2_000).unwrap();
    assert_eq!(
        got.distinct, sent.sent,
        "the version before the burst (100 % loss) is in force, not the newest valid one (0 %)"
    );
}
