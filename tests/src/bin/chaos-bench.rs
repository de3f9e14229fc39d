//! `cargo xtask bench` runs this (as root): side-by-side measurements of
//! the agent against a reference in the same run, printed as markdown.
//!
//! chaos-bench [--quick] [--only SECTION]...
//! Sections: cost, throughput, accuracy, latency, footprint.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chaos_tests::{
    AddrKind, Direction, NetnsPair, Side, TcxDirection, enable_run_time_stats, load_pass_tc_prog,
    monotonic_ns, prog_run_stats, stream_while, tcx_attach, tcx_query, three_sigma_band, udp_run,
};
use common::{Blast, fault_counters};

const MS: f64 = 1e6;
/// The port rules match; traffic that must not match goes to `OTHER`.
const TARGET: u16 = 10_000;
const OTHER: u16 = 30_000;

struct Mode {
    quick: bool,
    reps: usize,
}

/// One row of a results table.
struct Row {
    what: String,
    figure: String,
    target: String,
    verdict: Verdict,
}

#[derive(Clone, Copy)]
enum Verdict {
    Met,
    NotMet,
    /// A reference figure with no target.
    Info,
}

impl Verdict {
    fn of(met: bool) -> Verdict {
        if met { Verdict::Met } else { Verdict::NotMet }
    }

    fn word(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::NotMet => "**not met**",
            Verdict::Info => "",
        }
    }
}

fn row(what: impl Into<String>, figure: impl Into<String>) -> Row {
    Row {
        what: what.into(),
        figure: figure.into(),
        target: String::new(),
        verdict: Verdict::Info,
    }
}

fn row_target(what: impl Into<String>, figure: impl Into<String>, target: &str, met: bool) -> Row {
    Row {
        what: what.into(),
        figure: figure.into(),
        target: target.into(),
        verdict: Verdict::of(met),
    }
}

/// Median and range of a sample.
#[derive(Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(xs: &[f64]) -> Spread {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Spread {
        median,
        min: v[0],
        max: v[n - 1],
    }
}

impl Spread {
    fn show(&self, digits: usize, unit: &str) -> String {
        format!(
            "{:.d$} {unit} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

// ------------------------------------------------------------------ cost

/// A policy whose rules match UDP to ports `TARGET..TARGET + n` on a's
/// egress (the agent runs inside a's namespace): one fault per port up to
/// the 256 faults a policy may hold, then 250 faults of `n / 250` ports
/// each. The rule index holds one exact-match key per port either way.
/// `shadow`: in shadow mode (counted, nothing dropped).
fn rules_policy(pair: &NetnsPair, n: u32, percent: u32, shadow: bool) -> Result<PathBuf> {
    let (faults, per) = if n <= 256 { (n, 1) } else { (250, n / 250) };
    ensure!(faults * per == n, "{n} rules do not split into 250 faults");
    let mode = if shadow { "shadow" } else { "enforce" };
    let mut y = format!(
        "apiVersion: chaos-agent/v1\nkind: FaultPolicy\nmetadata: {{name: bench-{n}}}\n\
         spec:\n  duration: 10m\n  mode: {mode}\n  faults:\n"
    );
    for i in 0..faults {
        let lo = u32::from(TARGET) + i * per;
        writeln!(
            y,
            "  - {{name: r{i}, network: {{interface: {}, match: {{protocol: udp, dstPorts: [\"{lo}-{}\"]}}, loss: {{percent: {percent}}}}}}}",
            pair.if_a(),
            lo + per - 1
        )?;
    }
    let path = std::env::temp_dir().join(format!(
        "chaos-bench-{}-{n}-{percent}-{mode}.yaml",
        std::process::id()
    ));
    std::fs::write(&path, y)?;
    Ok(path)
}

/// Runs the faults of `policy` (then removes the file) with the agent
/// inside a's namespace.
fn blast_policy(pair: &NetnsPair, policy: PathBuf, extra: &[&str]) -> Result<Blast> {
    let mut args = vec!["--policy", policy.to_str().context("utf-8 path")?];
    args.extend_from_slice(extra);
    let blast = Blast::start_in(Some(pair.ns_a()), &args);
    let _ = std::fs::remove_file(&policy);
    blast
}

/// The one program attached to a's tcx egress.
fn egress_prog(pair: &NetnsPair) -> Result<u32> {
    let q = tcx_query(pair.ns_a(), pair.if_a(), TcxDirection::Egress)?;
    match q.prog_ids.as_slice() {
        [id] => Ok(*id),
        ids => bail!("expected one program on a's tcx egress, found {ids:?}"),
    }
}

/// Mean run time per packet (ns) of program `id` over `count` UDP packets
/// a -> b to `port`.
fn ns_per_packet(pair: &NetnsPair, id: u32, port: u16, count: u32) -> Result<f64> {
    let (t0, n0) = prog_run_stats(id)?;
    udp_run(pair, Direction::AtoB, AddrKind::V4, port, count, 100_000)?;
    let (t1, n1) = prog_run_stats(id)?;
    ensure!(n1 > n0, "program {id} did not run");
    Ok((t1 - t0) as f64 / (n1 - n0) as f64)
}

fn cost(mode: &Mode) -> Result<Vec<Row>> {
    let _stats = enable_run_time_stats()?;
    let count = if mode.quick { 20_000 } else { 50_000 };
    let sizes: &[u32] = if mode.quick {
        &[1, 10_000]
    } else {
        &[1, 100, 10_000]
    };
    let mut rows = Vec::new();

    // The floor: a program that only returns, with the same statistics on.
    let pair = NetnsPair::new("bcost")?;
    let empty = load_pass_tc_prog("bench_empty")?;
    let _link = tcx_attach(pair.ns_a(), pair.if_a(), TcxDirection::Egress, &empty)?;
    let id = egress_prog(&pair)?;
    let mut floor = Vec::new();
    for _ in 0..mode.reps {
        floor.push(ns_per_packet(&pair, id, OTHER, count)?);
    }
    let floor = spread(&floor);
    eprintln!("bench: empty program {:.1} ns", floor.median);
    rows.push(row(
        "empty program (measurement floor)",
        floor.show(1, "ns"),
    ));
    drop(_link);
    drop(pair);

    let mut by_size = Vec::new();
    for &n in sizes {
        // A shadow rule next to the enforcing one: the same decision,
        // counted, and the packet passes.
        for (case, percent, port, shadow) in [
            ("unmatched", 0, OTHER, false),
            ("matched, 0 %", 0, TARGET, false),
            ("matched, 30 % loss", 30, TARGET, false),
            ("matched, 30 % loss, shadow", 30, TARGET, true),
        ] {
            let pair = NetnsPair::new("bcost")?;
            let blast = blast_policy(
                &pair,
                rules_policy(&pair, n, percent, shadow)?,
                &["--attach", "tcx"],
            )?;
            let id = egress_prog(&pair)?;
            let mut xs = Vec::new();
            for _ in 0..mode.reps {
                xs.push(ns_per_packet(&pair, id, port, count)?);
            }
            blast.stop()?;
            let s = spread(&xs);
            eprintln!("bench: {n} rules, {case}: {:.1} ns", s.median);
            by_size.push((n, case, s));
            let (target, limit) = if case == "unmatched" {
                ("≤ 70 ns", 70.0)
            } else {
                ("≤ 100 ns", 100.0)
            };
            rows.push(row_target(
                format!("{n} rules, {case}"),
                format!(
                    "{} ({:.1} ns above the floor)",
                    s.show(1, "ns"),
                    s.median - floor.median
                ),
                target,
                s.median <= limit,
            ));
        }
    }
    rows.extend(daemon_cost(mode, count)?);
    let most = *sizes.last().expect("sizes");
    for case in ["unmatched", "matched, 0 %"] {
        let one = by_size.iter().find(|(n, c, _)| *n == 1 && *c == case);
        let many = by_size.iter().find(|(n, c, _)| *n == most && *c == case);
        if let (Some((_, _, a)), Some((_, _, b))) = (one, many) {
            let r = b.median / a.median;
            rows.push(row_target(
                format!("{most} rules vs 1 rule, {case}"),
                format!("{r:.3}×"),
                "≤ 1.1×",
                r <= 1.1,
            ));
        }
    }
    Ok(rows)
}

/// Per-packet cost with the daemon holding 1, then 20 one-fault policies
/// on a's egress: one classifier on the hook whatever their number.
fn daemon_cost(mode: &Mode, count: u32) -> Result<Vec<Row>> {
    let cases = [("unmatched", OTHER), ("matched, 0 %", TARGET)];
    let mut medians = Vec::new();
    let mut rows = Vec::new();
    for n in [1u16, 20] {
        let pair = NetnsPair::new("bdcost")?;
        let files: Vec<(String, String)> = (0..n)
            .map(|i| daemon_policy(&pair, &format!("p{i}"), TARGET + i, 0))
            .collect();
        let daemon = Daemon::start(&files, usize::from(n))?;
        let id = egress_prog(&pair)?;
        for (case, port) in cases {
            let mut xs = Vec::new();
            for _ in 0..mode.reps {
                xs.push(ns_per_packet(&pair, id, port, count)?);
            }
            let s = spread(&xs);
            eprintln!("bench: daemon, {n} faults, {case}: {:.1} ns", s.median);
            rows.push(row(
                format!("daemon, {n} fault(s) on one interface, {case}"),
                s.show(1, "ns"),
            ));
            medians.push((n, case, s.median));
        }
        drop(daemon);
    }
    for (case, _) in cases {
        let at = |n| {
            medians
                .iter()
                .find(|(m, c, _)| *m == n && *c == case)
                .map(|x| x.2)
        };
        if let (Some(one), Some(twenty)) = (at(1), at(20)) {
            let r = twenty / one;
            rows.push(row_target(
                format!("daemon, 20 faults vs 1 on one interface, {case}"),
                format!("{r:.3}×"),
                "≤ 1.1×",
                r <= 1.1,
            ));
        }
    }
    Ok(rows)
}

// ------------------------------------------------------------ throughput

/// Runs iperf3 between the namespaces (server in b pinned to CPU 1, client
/// in a pinned to CPU 0) and returns bits/s (TCP) or received packets/s
/// (UDP, 64-byte payloads).
fn iperf(pair: &NetnsPair, udp: bool, secs: u32) -> Result<f64> {
    let server = pair
        .command(Side::B, "iperf3")
        .args(["-s", "-1", "-A", "1", "-p", &TARGET.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running iperf3 (apt-get install iperf3)")?;
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Reap(server);
    std::thread::sleep(Duration::from_millis(300));
    let b = pair.v4_b().to_string();
    let t = secs.to_string();
    let port = TARGET.to_string();
    let mut args = vec!["-c", &b, "-p", &port, "-t", &t, "-A", "0", "-J"];
    if udp {
        args.extend(["-u", "-l", "64", "-b", "0"]);
    }
    let out = pair
        .command(Side::A, "timeout")
        .arg(format!("{}", secs + 20))
        .arg("iperf3")
        .args(&args)
        .output()
        .context("running iperf3")?;
    ensure!(
        out.status.success(),
        "iperf3 failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    if udp {
        let sum = &v["end"]["sum"];
        let packets = sum["packets"].as_f64().context("end.sum.packets")?;
        let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
        let seconds = sum["seconds"].as_f64().context("end.sum.seconds")?;
        Ok((packets - lost) / seconds)
    } else {
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("end.sum_received.bits_per_second")
    }
}

fn throughput(mode: &Mode) -> Result<Vec<Row>> {
    let secs = if mode.quick { 3 } else { 10 };
    let mut rows = Vec::new();
    for udp in [false, true] {
        let (proto, rule_port) = if udp { ("udp", 1) } else { ("tcp", 1) };
        // Per repetition, the three set-ups one after the other.
        let mut bare = Vec::new();
        let mut nomatch = Vec::new();
        let mut matched = Vec::new();
        for _ in 0..mode.reps {
            let pair = NetnsPair::new("bthru")?;
            bare.push(iperf(&pair, udp, secs)?);
            for (port, out) in [(rule_port, &mut nomatch), (TARGET, &mut matched)] {
                let blast = start_blast(&ingress_loss(&pair, proto, port, 0, "5m"))?;
                out.push(iperf(&pair, udp, secs)?);
                blast.stop()?;
            }
        }
        let (unit, scale, what, floor) = if udp {
            ("kpps", 1e3, "UDP 64-byte packets/s", 0.98)
        } else {
            ("Gbit/s", 1e9, "TCP bits/s", 0.99)
        };
        let b = spread(&bare.iter().map(|x| x / scale).collect::<Vec<_>>());
        rows.push(row(format!("{what}, no program"), b.show(2, unit)));
        for (name, xs) in [
            ("attached, no matching rule", &nomatch),
            ("matching rule at 0 %", &matched),
        ] {
            let s = spread(&xs.iter().map(|x| x / scale).collect::<Vec<_>>());
            let ratio = s.median / b.median;
            eprintln!("bench: {what} {name}: ratio {ratio:.3}");
            rows.push(row_target(
                format!("{what}, {name}"),
                format!("{} = {ratio:.3} of bare", s.show(2, unit)),
                &format!("≥ {floor}"),
                ratio >= floor,
            ));
        }
    }
    Ok(rows)
}

// -------------------------------------------------------------- accuracy

fn accuracy(mode: &Mode) -> Result<Vec<Row>> {
    let count = 100_000;
    let mut rows = Vec::new();
    for pct in [1u32, 30, 100] {
        let mut xs = Vec::new();
        let mut exact = true;
        let mut inside = true;
        for _ in 0..if mode.quick { 1 } else { mode.reps } {
            let pair = NetnsPair::new("bacc")?;
            let blast = start_blast(&ingress_loss(&pair, "udp", TARGET, pct, "5m"))?;
            let (sent, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, TARGET, count, 50_000)?;
            let (_, reverted) = blast.stop()?;
            let lost = sent.sent - got.distinct;
            let (_, injected, _) = fault_counters(&reverted);
            exact &= injected == lost;
            let (lo, hi) = three_sigma_band(sent.sent, f64::from(pct) / 100.0);
            inside &= (lo..=hi).contains(&(lost as f64));
            xs.push(lost as f64 / sent.sent as f64 * 100.0);
        }
        let s = spread(&xs);
        let (lo, hi) = three_sigma_band(u64::from(count), f64::from(pct) / 100.0);
        let pct_of = |x: f64| x / f64::from(count) * 100.0;
        rows.push(row_target(
            format!("loss {pct} % over {count} UDP packets"),
            format!(
                "{} observed; kernel counter {} receiver",
                s.show(3, "%"),
                if exact { "=" } else { "≠" }
            ),
            &format!("3σ band {:.3}–{:.3} %", pct_of(lo), pct_of(hi)),
            inside && exact,
        ));
    }
    Ok(rows)
}

// --------------------------------------------------------------- latency

/// Streams a->b to TARGET at 10,000 pps for `secs` seconds while `during`
/// runs; returns (send_ns, recv_ns) of every datagram that arrived.
fn sent_received_while(
    pair: &NetnsPair,
    secs: f64,
    during: impl FnOnce(),
) -> Result<Vec<(u64, u64)>> {
    let (_, got) = stream_while(pair, TARGET, 10_000, secs, during)?;
    Ok(got.records.iter().map(|r| (r.send_ns, r.recv_ns)).collect())
}

/// `blast` arguments: drop `pct` % of `proto` to `port` on b's ingress
/// for `duration`.
fn ingress_loss(pair: &NetnsPair, proto: &str, port: u16, pct: u32, duration: &str) -> Vec<String> {
    [
        "net",
        "--netns",
        pair.ns_b(),
        "--iface",
        pair.if_b(),
        "--direction",
        "ingress",
        "--proto",
        proto,
        "--dport",
        &port.to_string(),
        "--loss",
        &pct.to_string(),
        "--duration",
        duration,
    ]
    .map(String::from)
    .to_vec()
}

/// All of the UDP to TARGET dropped, through a tcx link.
fn loss_all(pair: &NetnsPair, duration: &str) -> Vec<String> {
    let mut args = ingress_loss(pair, "udp", TARGET, 100, duration);
    args.extend(["--attach", "tcx"].map(String::from));
    args
}

fn start_blast(args: &[String]) -> Result<Blast> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Blast::start(&args)
}

/// Start of the blast process to the first datagram dropped.
fn apply_latency(pair: &NetnsPair) -> Result<f64> {
    let args = loss_all(pair, "30s");
    let mut started = 0;
    let mut agent = None;
    let rec = sent_received_while(pair, 2.0, || {
        std::thread::sleep(Duration::from_millis(300));
        started = monotonic_ns();
        agent = Some(start_blast(&args));
        std::thread::sleep(Duration::from_millis(200));
    })?;
    agent.context("blast never started")??.stop()?;
    // Without traffic arriving before the start there is nothing to
    // measure: no figure (rather than 0 ms, which would read as met).
    ensure!(
        rec.iter().any(|(tx, _)| *tx < started),
        "no datagram arrived before the blast started: the latency cannot be measured"
    );
    // The last datagram sent after the start that still arrived.
    let last = rec
        .iter()
        .filter(|(tx, _)| *tx >= started)
        .map(|(tx, _)| *tx)
        .max()
        .unwrap_or(started);
    Ok((last - started) as f64 / MS)
}

/// Signal to the first datagram that arrives (sent after the signal).
fn recovery_after(pair: &NetnsPair, sig: i32) -> Result<f64> {
    let args = loss_all(pair, "30s");
    let mut agent = start_blast(&args)?;
    let mut at = 0;
    let rec = sent_received_while(pair, 1.5, || {
        std::thread::sleep(Duration::from_millis(500));
        at = monotonic_ns();
        agent.signal(sig);
        let _ = agent.wait(Duration::from_secs(5));
    })?;
    let first = rec
        .iter()
        .map(|(tx, _)| *tx)
        .filter(|tx| *tx >= at)
        .min()
        .context("nothing arrived after the signal")?;
    Ok((first - at) as f64 / MS)
}

/// The agent stopped (SIGSTOP): the deadline to the first datagram.
fn deadline_recovery(pair: &NetnsPair) -> Result<f64> {
    let args = loss_all(pair, "1s");
    let mut agent = start_blast(&args)?;
    agent.signal(libc::SIGSTOP);
    let deadline = agent.deadline_ns();
    let rec = sent_received_while(pair, 1.8, || {})?;
    agent.signal(libc::SIGCONT);
    let _ = agent.wait(Duration::from_secs(10));
    let first = rec
        .iter()
        .map(|(_, rx)| *rx)
        .filter(|rx| *rx >= deadline)
        .min()
        .context("nothing arrived after the deadline")?;
    let early = rec.iter().filter(|(_, rx)| *rx < deadline).count();
    ensure!(early == 0, "{early} datagrams arrived before the deadline");
    Ok((first - deadline) as f64 / MS)
}

fn latency(mode: &Mode) -> Result<Vec<Row>> {
    type Probe = fn(&NetnsPair) -> Result<f64>;
    let cases: [(&str, Probe, &str, f64); 5] = [
        (
            "blast start to first injected packet",
            apply_latency,
            "≤ 150 ms",
            150.0,
        ),
        (
            "daemon: policy file edit to changed traffic",
            reload_latency,
            "≤ 100 ms",
            100.0,
        ),
        (
            "SIGTERM to traffic recovered",
            |p| recovery_after(p, libc::SIGTERM),
            "≤ 50 ms",
            50.0,
        ),
        (
            "SIGKILL to traffic recovered (tcx)",
            |p| recovery_after(p, libc::SIGKILL),
            "≤ 50 ms",
            50.0,
        ),
        (
            "agent stopped: deadline to traffic recovered",
            deadline_recovery,
            "≤ deadline + 10 ms",
            10.0,
        ),
    ];
    let mut rows = Vec::new();
    for (what, probe, target, limit) in cases {
        let mut xs = Vec::new();
        for _ in 0..mode.reps {
            let pair = NetnsPair::new("blat")?;
            xs.push(probe(&pair)?);
        }
        let s = spread(&xs);
        eprintln!("bench: {what}: {:.2} ms", s.median);
        rows.push(row_target(what, s.show(2, "ms"), target, s.median <= limit));
    }
    Ok(rows)
}

// ---------------------------------------------------------------- daemon

/// `chaos-agent run` on a scratch policies directory and run directory.
struct Daemon {
    child: std::process::Child,
    dir: PathBuf,
}

impl Daemon {
    /// Starts the daemon on `files` and waits until `status` lists `want`
    /// faults in force.
    fn start(files: &[(String, String)], want: usize) -> Result<Daemon> {
        let dir = std::env::temp_dir().join(format!("chaos-bench-daemon-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("policies"))?;
        for (name, text) in files {
            std::fs::write(dir.join("policies").join(name), text)?;
        }
        let child = std::process::Command::new(common::agent_bin())
            .args(["run", "--policies"])
            .arg(dir.join("policies"))
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("CHAOS_AGENT_RUN_DIR", dir.join("run"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("daemon.log"))?)
            .spawn()
            .context("spawning chaos-agent run")?;
        let d = Daemon { child, dir };
        let until = Instant::now() + Duration::from_secs(15);
        while d.faults_in_force() != Some(want) {
            ensure!(
                Instant::now() < until,
                "the daemon did not apply {want} faults within 15 s: {}",
                std::fs::read_to_string(d.dir.join("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    /// Faults active according to `chaos-agent status --json`.
    fn faults_in_force(&self) -> Option<usize> {
        let out = std::process::Command::new(common::agent_bin())
            .args(["status", "--json"])
            .env("CHAOS_AGENT_RUN_DIR", self.dir.join("run"))
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(
            v["policies"]
                .as_array()?
                .iter()
                .flat_map(|p| p["faults"].as_array().cloned().unwrap_or_default())
                .filter(|f| f["state"] == "active")
                .count(),
        )
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Replaces a policy file as editors do (write aside, rename over).
    fn edit(&self, name: &str, text: &str) -> Result<()> {
        let tmp = self.dir.join("policies").join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.dir.join("policies").join(name))?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: plain syscall on our child's pid.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One policy file with one loss fault on a's egress, UDP to `port`.
fn daemon_policy(pair: &NetnsPair, name: &str, port: u16, percent: u32) -> (String, String) {
    let text = format!(
        "apiVersion: chaos-agent/v1\nkind: FaultPolicy\nmetadata: {{name: {name}}}\n\
         spec:\n  duration: 10m\n  faults:\n  - {{name: f, network: {{interface: {}, netns: {}, \
         match: {{protocol: udp, dstPorts: [{port}]}}, loss: {{percent: {percent}}}}}}}\n",
        pair.if_a(),
        pair.ns_a()
    );
    (format!("{name}.yaml"), text)
}

/// Policy file edited from 100 % to 0 % loss: the edit to the first
/// datagram that gets through.
fn reload_latency(pair: &NetnsPair) -> Result<f64> {
    let (file, closed) = daemon_policy(pair, "reload", TARGET, 100);
    let daemon = Daemon::start(&[(file.clone(), closed)], 1)?;
    let (_, open) = daemon_policy(pair, "reload", TARGET, 0);
    let mut at = 0;
    let mut edit = Ok(());
    let rec = sent_received_while(pair, 1.5, || {
        std::thread::sleep(Duration::from_millis(500));
        at = monotonic_ns();
        edit = daemon.edit(&file, &open);
    })?;
    edit?;
    let first = rec
        .iter()
        .map(|(_, rx)| *rx)
        .filter(|rx| *rx >= at)
        .min()
        .context("nothing arrived after the edit")?;
    Ok((first - at) as f64 / MS)
}

// ------------------------------------------------------------- footprint

fn status_kib(pid: i32, key: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{key} in /proc/{pid}/status"))
}

/// utime + stime of `pid`, in seconds.
fn cpu_secs(pid: i32) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &s[s.rfind(')').context("comm")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

fn footprint(mode: &Mode) -> Result<Vec<Row>> {
    let pair = NetnsPair::new("bfoot")?;
    let files: Vec<(String, String)> = (0..10)
        .map(|i| daemon_policy(&pair, &format!("p{i}"), TARGET + i, 30))
        .collect();
    let daemon = Daemon::start(&files, 10)?;
    let pid = daemon.pid();
    let idle = Duration::from_secs(if mode.quick { 3 } else { 10 });
    let c0 = cpu_secs(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(idle);
    let cpu_idle = (cpu_secs(pid)? - c0) / t0.elapsed().as_secs_f64() * 100.0;
    let rss_idle = status_kib(pid, "VmRSS:")?;
    // 100,000 packets per second through the rules for two seconds.
    udp_run(
        &pair,
        Direction::AtoB,
        AddrKind::V4,
        TARGET,
        200_000,
        100_000,
    )?;
    let rss_busy = status_kib(pid, "VmRSS:")?;
    let rss_peak = status_kib(pid, "VmHWM:")?;
    drop(daemon);
    let mib = |k: u64| k as f64 / 1024.0;
    let size = std::fs::metadata(common::agent_bin())?.len() as f64 / (1024.0 * 1024.0);
    Ok(vec![
        row_target(
            "daemon RSS idle, 10 policies",
            format!("{:.1} MiB", mib(rss_idle)),
            "≤ 8 MiB",
            rss_idle <= 8 * 1024,
        ),
        row(
            "daemon RSS after 2 s at 100,000 packets/s (peak)",
            format!("{:.1} MiB ({:.1} MiB)", mib(rss_busy), mib(rss_peak)),
        ),
        row("daemon CPU idle", format!("{cpu_idle:.2} % of one core")),
        row(
            "release binary size (static, eBPF embedded)",
            format!("{size:.1} MiB"),
        ),
    ])
}

// ------------------------------------------------------------------ main

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = chaos_tests::kernel_release();
    format!("{cpu}, {cores} cores, Linux {kernel}")
}

fn main() -> Result<()> {
    let mut quick = false;
    let mut only = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--only" => only.push(args.next().context("--only needs a section")?),
            _ => bail!("unknown argument {a:?}; usage: chaos-bench [--quick] [--only SECTION]..."),
        }
    }
    ensure!(chaos_tests::is_root(), "the benchmarks need root");
    let mode = Mode {
        quick,
        reps: if quick { 3 } else { 5 },
    };
    type Section = fn(&Mode) -> Result<Vec<Row>>;
    let sections: [(&str, &str, Section); 5] = [
        (
            "cost",
            "Per-packet cost (kernel BPF run-time statistics, tcx egress)",
            cost,
        ),
        (
            "throughput",
            "Throughput over a veth pair (iperf3, client and server pinned to CPUs 0 and 1)",
            throughput,
        ),
        (
            "accuracy",
            "Loss accuracy (UDP, 50,000 packets/s)",
            accuracy,
        ),
        (
            "latency",
            "Apply and revert latency (UDP stream at 10,000 packets/s)",
            latency,
        ),
        ("footprint", "Footprint", footprint),
    ];
    for name in &only {
        ensure!(
            sections.iter().any(|(n, _, _)| n == name),
            "unknown section {name:?}"
        );
    }
    let started = Instant::now();
    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Written by `cargo xtask bench{}`. Machine: {}. Repetitions per figure: {}; \
         figures are median (min–max).\n",
        if quick { " --quick" } else { "" },
        machine(),
        mode.reps
    )?;
    for (name, title, f) in sections {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("bench: == {name} ==");
        writeln!(md, "## {title}\n")?;
        match f(&mode) {
            Ok(rows) => {
                writeln!(md, "| measurement | figure | target | |")?;
                writeln!(md, "|---|---|---|---|")?;
                for r in rows {
                    writeln!(
                        md,
                        "| {} | {} | {} | {} |",
                        r.what,
                        r.figure,
                        r.target,
                        r.verdict.word()
                    )?;
                }
            }
            Err(e) => writeln!(md, "Not measured: {e:#}")?,
        }
        writeln!(md)?;
    }
    writeln!(md, "Total time {:.0} s.", started.elapsed().as_secs_f64())?;
    print!("{md}");
    Ok(())
}
