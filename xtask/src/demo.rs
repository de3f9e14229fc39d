//! `xtask demo` (`./x demo`): drops 30 % of real UDP between two throwaway
//! network namespaces and shows configured against observed loss.
//!
//! Two namespaces `chaos-demo-a` / `chaos-demo-b` joined by a veth pair
//! (`veth-demo-a` / `veth-demo-b`, `198.18.100.1/24` / `198.18.100.2/24`,
//! RFC 2544 benchmark range, local only). The agent applies
//! `policies/demo.yaml` (30 % loss of UDP to port 7000, egress on
//! `veth-demo-a`); 20,000 datagrams go to port 7000 (targeted) and 20,000 to
//! port 7001 (untargeted), and sinks in `chaos-demo-b` count what arrived.
//!
//! Everything is bounded in count and time. Ctrl-C (SIGINT) or SIGTERM stops
//! the demo early; the agent is stopped (it reverts), the namespaces are
//! deleted, and the process exits with 128 + the signal number.
//!
//! The signal handler is plain `sigaction` (libc is already a dependency),
//! so the lock file needs no new entry for xtask.

use std::{
    io::{BufRead as _, BufReader, IsTerminal as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicI32, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use chaos_tests::{
    UdpSink, UdpStats,
    netns::{ip, netns_del},
    netns_exists, payload, run_in_netns, sockutil, udp_sink,
};
use serde_json::Value;

const NS_A: &str = "chaos-demo-a";
const NS_B: &str = "chaos-demo-b";
const NS_PREFIX: &str = "chaos-demo-";
const IF_A: &str = "veth-demo-a";
const IF_B: &str = "veth-demo-b";
const ADDR_A: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 2);
const PREFIX_LEN: u8 = 24;

/// What `policies/demo.yaml` configures; the demo relies on these values.
const POLICY: &str = "policies/demo.yaml";
const TARGET_PORT: u16 = 7000;
const OTHER_PORT: u16 = 7001;
const LOSS: f64 = 0.30;

/// Datagrams per port.
const COUNT: u64 = 20_000;
/// Datagrams per second, both ports together (each port gets half).
const PPS: u64 = 20_000;
const PAYLOAD_LEN: usize = 64;
/// Hard bound on the sending loop (the paced run takes 2 s).
const SEND_LIMIT: Duration = Duration::from_secs(20);
/// Hard bound on each sink.
const SINK_LIMIT: Duration = Duration::from_secs(60);
/// After the last datagram, a sink stops once nothing arrived for this long.
const DRAIN: Duration = Duration::from_millis(500);
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Port of the readiness probe (not targeted by the policy).
const READY_PORT: u16 = 7009;

// ---------------------------------------------------------------------------
// Ctrl-C

/// The first SIGINT/SIGTERM received (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // An atomic store is async-signal-safe.
    let _ = SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
}

fn install_signal_handlers() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an
        // atomic, which is async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("installing a signal handler");
        }
    }
    Ok(())
}

fn interrupted() -> bool {
    SIGNAL.load(Ordering::SeqCst) != 0
}

fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT (Ctrl-C)",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

// ---------------------------------------------------------------------------
// Namespaces

/// Names in `ip netns list` that start with `chaos-demo-`.
fn leftover_namespaces() -> Result<Vec<String>> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .stdin(Stdio::null())
        .output()
        .context("running ip netns list")?;
    ensure!(
        out.status.success(),
        "ip netns list failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NS_PREFIX))
        .map(str::to_string)
        .collect())
}

/// Holds an exclusive lock for as long as the returned file lives, so a
/// second demo does not take the first one's namespaces for leftovers. The
/// kernel releases it when the process dies, however it dies.
fn single_instance() -> Result<std::fs::File> {
    let path = "/run/chaos-agent-demo.lock";
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {path}"))?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!("another `./x demo` is running (it holds {path})");
        }
        return Err(err).with_context(|| format!("locking {path}"));
    }
    Ok(file)
}

/// The two demo namespaces; dropping it deletes both (and with them the
/// veth pair and anything attached to it).
struct DemoNet;

impl DemoNet {
    fn create() -> Result<DemoNet> {
        for ns in [NS_A, NS_B] {
            if netns_exists(ns) {
                println!("removing namespace {ns} left over by an earlier run");
                netns_del(ns)?;
            }
        }
        println!(
            "creating namespaces {NS_A} ({IF_A} {ADDR_A}/{PREFIX_LEN}) and \
             {NS_B} ({IF_B} {ADDR_B}/{PREFIX_LEN})"
        );
        // From here on, an error drops the guard, which deletes what exists.
        let net = DemoNet;
        ip(&["netns", "add", NS_A])?;
        ip(&["netns", "add", NS_B])?;
        ip(&[
            "-n", NS_A, "link", "add", IF_A, "type", "veth", "peer", "name", IF_B, "netns", NS_B,
        ])?;
        for (ns, iface, addr) in [(NS_A, IF_A, ADDR_A), (NS_B, IF_B, ADDR_B)] {
            let cidr = format!("{addr}/{PREFIX_LEN}");
            ip(&["-n", ns, "addr", "add", &cidr, "dev", iface])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", iface, "up"])?;
        }
        wait_ready()?;
        Ok(net)
    }
}

impl Drop for DemoNet {
    fn drop(&mut self) {
        for ns in [NS_B, NS_A] {
            if let Err(e) = netns_del(ns) {
                eprintln!("chaos-agent demo: could not delete namespace {ns}: {e:#}");
            }
        }
    }
}

/// Waits until a UDP datagram from a to b gets through (carrier up, address
/// usable, neighbour resolved), so the measured run starts on a ready link.
fn wait_ready() -> Result<()> {
    let rx = run_in_netns(NS_B, || UdpSocket::bind((ADDR_B, READY_PORT)))??;
    rx.set_read_timeout(Some(Duration::from_millis(50)))?;
    let tx = run_in_netns(NS_A, || UdpSocket::bind((ADDR_A, 0)))??;
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        check_interrupted()?;
        let _ = tx.send_to(b"chaos-demo-ready", (ADDR_B, READY_PORT));
        if let Ok((n, _)) = rx.recv_from(&mut buf)
            && &buf[..n] == b"chaos-demo-ready"
        {
            return Ok(());
        }
    }
    bail!("no UDP from {ADDR_A} to {ADDR_B} got through within {READY_TIMEOUT:?}")
}

// ---------------------------------------------------------------------------
// The agent

struct Agent {
    child: Child,
    pid: u32,
    events: Receiver<Value>,
    exited: Option<ExitStatus>,
    /// The latest `counters` event.
    last_counters: Option<Value>,
}

/// How the agent ended.
struct AgentEnd {
    status: ExitStatus,
    /// Had to be killed after [`STOP_TIMEOUT`].
    killed: bool,
    reverted: Option<Value>,
}

impl Agent {
    fn start(bin: &Path, policy: &Path) -> Result<Agent> {
        let mut child = Command::new(bin)
            .arg("blast")
            .arg("--policy")
            .arg(policy)
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().context("agent stdout")?;
        let (tx, events) = mpsc::channel();
        std::thread::Builder::new()
            .name("agent-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<Value>(&line) {
                        Ok(v) => {
                            if tx.send(v).is_err() {
                                break;
                            }
                        }
                        Err(_) => eprintln!("chaos-agent: {line}"),
                    }
                }
            })
            .context("spawning the agent's stdout reader")?;
        Ok(Agent {
            child,
            pid,
            events,
            exited: None,
            last_counters: None,
        })
    }

    fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exited = Some(status);
        }
        self.exited
    }

    /// Waits (bounded) for the `applied` event and returns it.
    fn wait_applied(&mut self) -> Result<Value> {
        let deadline = Instant::now() + APPLY_TIMEOUT;
        loop {
            check_interrupted()?;
            match self.events.recv_timeout(Duration::from_millis(100)) {
                Ok(v) if v["event"] == "applied" => return Ok(v),
                Ok(v) => self.note(v),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // stdout closed: the agent is exiting; give it a moment.
                    std::thread::sleep(Duration::from_millis(200));
                    match self.try_exited() {
                        Some(status) => bail!("the agent exited ({status}) before applying"),
                        None => bail!("the agent closed its output before applying"),
                    }
                }
            }
            if let Some(status) = self.try_exited() {
                bail!("the agent exited ({status}) before applying the policy");
            }
            if Instant::now() >= deadline {
                bail!("the agent did not apply the policy within {APPLY_TIMEOUT:?}");
            }
        }
    }

    fn note(&mut self, v: Value) {
        if v["event"] == "counters" {
            self.last_counters = Some(v);
        }
    }

    /// Takes in every event printed so far.
    fn poll(&mut self) {
        while let Ok(v) = self.events.try_recv() {
            self.note(v);
        }
    }

    /// Kernel matched/dropped of the first fault in the latest counters.
    fn live_counters(&self) -> Option<(u64, u64)> {
        let f = &self.last_counters.as_ref()?["faults"][0];
        Some((f["matched"].as_u64()?, f["injected"].as_u64()?))
    }

    /// SIGTERM once (unless it has exited already), then waits up to
    /// [`STOP_TIMEOUT`]; kills it when it does not exit by then.
    fn terminate(&mut self) -> Result<(ExitStatus, bool)> {
        if let Some(status) = self.try_exited() {
            return Ok((status, false));
        }
        // SAFETY: kill on our own child, not yet reaped (so its pid is ours).
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exited() {
                return Ok((status, false));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "chaos-agent demo: the agent (pid {}) did not exit within {STOP_TIMEOUT:?} of SIGTERM; killing it",
            self.pid
        );
        let _ = self.child.kill();
        let status = self.child.wait().context("waiting for the killed agent")?;
        self.exited = Some(status);
        Ok((status, true))
    }

    /// Stops the agent and collects its `reverted` event.
    fn stop(&mut self) -> Result<AgentEnd> {
        let (status, killed) = self.terminate()?;
        // The reader ends at EOF, which follows the exit.
        let mut reverted = None;
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) if v["event"] == "reverted" => reverted = Some(v),
                Ok(v) => self.note(v),
                Err(_) => break,
            }
        }
        Ok(AgentEnd {
            status,
            killed,
            reverted,
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!("chaos-agent demo: stopping the agent: {e:#}");
        }
    }
}

// ---------------------------------------------------------------------------
// Traffic

struct PortResult {
    port: u16,
    sent: u64,
    send_errors: u64,
    rx: UdpStats,
}

impl PortResult {
    fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.rx.distinct)
    }

    fn loss(&self) -> f64 {
        chaos_tests::receiver_loss(self.sent, self.rx.distinct)
    }
}

fn start_sinks() -> Result<Vec<UdpSink>> {
    run_in_netns(NS_B, || -> Result<Vec<UdpSink>> {
        let mut sinks = Vec::new();
        for port in [TARGET_PORT, OTHER_PORT] {
            let bind = SocketAddr::new(IpAddr::V4(ADDR_B), port);
            // Idle limit: generous, `finish` shortens it after the sender.
            match udp_sink(bind, None, SINK_LIMIT, SINK_LIMIT) {
                Ok(s) => sinks.push(s),
                Err(e) => {
                    for s in sinks {
                        s.stop();
                        let _ = s.wait();
                    }
                    return Err(e);
                }
            }
        }
        Ok(sinks)
    })?
}

fn senders() -> Result<Vec<UdpSocket>> {
    run_in_netns(NS_A, || -> Result<Vec<UdpSocket>> {
        [TARGET_PORT, OTHER_PORT]
            .into_iter()
            .map(|port| -> Result<UdpSocket> {
                let sock = UdpSocket::bind((ADDR_A, 0)).context("binding a UDP sender")?;
                let _ = sockutil::force_sndbuf(sock.as_raw_fd(), 4 << 20);
                sock.set_write_timeout(Some(Duration::from_secs(1)))?;
                sock.connect((ADDR_B, port))
                    .with_context(|| format!("connecting a UDP sender to {ADDR_B}:{port}"))?;
                Ok(sock)
            })
            .collect()
    })?
}

fn progress_line(sent: &[u64], agent: &Agent) -> String {
    let kernel = match agent.live_counters() {
        Some((m, d)) => format!("kernel (last report) matched {m} dropped {d}"),
        None => "kernel counters: waiting".to_string(),
    };
    format!(
        "sending  port {TARGET_PORT}: {}/{COUNT}  port {OTHER_PORT}: {}/{COUNT}  {kernel}",
        sent[0], sent[1]
    )
}

/// Sends both streams, interleaved and paced, and collects what the sinks
/// counted. `None` when interrupted.
fn traffic(agent: &mut Agent) -> Result<Option<[PortResult; 2]>> {
    let sinks = start_sinks()?;
    let socks = match senders() {
        Ok(s) => s,
        Err(e) => {
            for s in sinks {
                s.stop();
                let _ = s.wait();
            }
            return Err(e);
        }
    };
    println!(
        "sending {COUNT} UDP datagrams each to {ADDR_B}:{TARGET_PORT} (targeted) and \
         {ADDR_B}:{OTHER_PORT} (untargeted) from {NS_A}, {PPS} per second"
    );
    let tty = std::io::stdout().is_terminal();
    let mut sent = [0u64; 2];
    let mut errors = [0u64; 2];
    let mut buf = vec![0u8; PAYLOAD_LEN];
    let pair_rate = (PPS / 2).max(1);
    let start = Instant::now();
    let mut last_draw = start;
    let mut timed_out = false;
    let mut i: u64 = 0;
    while i < COUNT {
        if interrupted() {
            break;
        }
        let elapsed = start.elapsed();
        if elapsed >= SEND_LIMIT {
            timed_out = true;
            break;
        }
        if tty && last_draw.elapsed() >= Duration::from_millis(100) {
            last_draw = Instant::now();
            agent.poll();
            print!("\r\x1b[K{}", progress_line(&sent, agent));
            let _ = std::io::stdout().flush();
        }
        let due = Duration::from_nanos((i as u128 * 1_000_000_000 / pair_rate as u128) as u64);
        if due > elapsed {
            std::thread::sleep((due - elapsed).min(Duration::from_millis(5)));
            continue;
        }
        for (k, sock) in socks.iter().enumerate() {
            payload::encode(&mut buf, i, chaos_tests::monotonic_ns());
            match sock.send(&buf) {
                Ok(_) => sent[k] += 1,
                Err(_) => errors[k] += 1,
            }
        }
        i += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    if tty {
        // The summary below replaces the progress line.
        print!("\r\x1b[K");
    }
    if interrupted() {
        println!(
            "stopping early: sent {} + {} datagrams in {secs:.2} s",
            sent[0], sent[1]
        );
        for s in sinks {
            s.stop();
            let _ = s.wait();
        }
        return Ok(None);
    }
    println!(
        "sent {} + {} datagrams in {secs:.2} s{}",
        sent[0],
        sent[1],
        if timed_out {
            " (stopped by the time limit)"
        } else {
            ""
        }
    );
    // Drain in parallel: tell every sink first, then wait for each.
    for s in &sinks {
        s.finish(DRAIN);
    }
    let mut stats = Vec::new();
    for s in sinks {
        stats.push(s.wait()?);
    }
    let [rx0, rx1]: [UdpStats; 2] = stats
        .try_into()
        .map_err(|_| anyhow!("expected two sink results"))?;
    if interrupted() {
        return Ok(None);
    }
    Ok(Some([
        PortResult {
            port: TARGET_PORT,
            sent: sent[0],
            send_errors: errors[0],
            rx: rx0,
        },
        PortResult {
            port: OTHER_PORT,
            sent: sent[1],
            send_errors: errors[1],
            rx: rx1,
        },
    ]))
}

// ---------------------------------------------------------------------------
// Report

fn pct(x: f64) -> String {
    format!("{:.2} %", 100.0 * x)
}

/// Kernel counters of the demo fault in the `reverted` event.
fn kernel_counters(reverted: &Value) -> Option<(u64, u64)> {
    let f = reverted["faults"]
        .as_array()?
        .iter()
        .find(|f| f["interface"] == IF_A)?;
    Some((f["matched"].as_u64()?, f["injected"].as_u64()?))
}

/// Prints the table and the verdict; Err when the targeted loss is outside
/// 5 sigma or the untargeted port lost anything.
fn report(mode: &str, results: &[PortResult; 2], reverted: &Value) -> Result<()> {
    let [target, other] = results;
    let kernel = kernel_counters(reverted);
    let (lo, hi) = chaos_tests::three_sigma_band(target.sent, LOSS);
    let n = target.sent.max(1) as f64;
    println!();
    println!(
        "chaos-agent demo: {:.0} % UDP loss to port {TARGET_PORT} on {IF_A} (egress, {mode})",
        LOSS * 100.0
    );
    println!(
        "{:<6} {:<11} {:<7} {:<9} {:<9} {:<19} kernel matched/dropped",
        "port", "configured", "sent", "received", "observed", "3-sigma band"
    );
    println!(
        "{:<6} {:<11} {:<7} {:<9} {:<9} {:<19} {}",
        target.port,
        format!("{:.1} %", LOSS * 100.0),
        target.sent,
        target.rx.distinct,
        pct(target.loss()),
        format!("{} .. {}", pct(lo / n), pct(hi / n)),
        match kernel {
            Some((m, d)) => format!("{m} / {d}"),
            None => "(no counters)".into(),
        }
    );
    println!(
        "{:<6} {:<11} {:<7} {:<9} {:<9} {:<19} -",
        other.port,
        "0 %",
        other.sent,
        other.rx.distinct,
        pct(other.loss()),
        "-"
    );

    let mut notes = Vec::new();
    for r in results {
        if r.send_errors > 0 {
            notes.push(format!(
                "{} send(s) to port {} failed (not counted as sent)",
                r.send_errors, r.port
            ));
        }
        if r.rx.duplicates + r.rx.corrupted > 0 {
            notes.push(format!(
                "port {} received {} duplicate and {} corrupted datagram(s)",
                r.port, r.rx.duplicates, r.rx.corrupted
            ));
        }
    }
    match kernel {
        Some((matched, dropped)) => {
            if matched != target.sent {
                notes.push(format!(
                    "the kernel matched {matched} packets, {} were sent to port {TARGET_PORT}",
                    target.sent
                ));
            }
            if dropped != target.lost() {
                notes.push(format!(
                    "the kernel dropped {dropped} but the receiver missed {}",
                    target.lost()
                ));
            }
        }
        None => notes.push("the agent's final report had no counters for the fault".into()),
    }
    for note in &notes {
        println!("note: {note}");
    }

    let lost = target.lost();
    let in3 = chaos_tests::within_k_sigma(target.sent, LOSS, 3.0, lost);
    let in5 = chaos_tests::within_k_sigma(target.sent, LOSS, 5.0, lost);
    let clean = other.lost() == 0 && other.sent > 0;
    let configured = format!("{:.0} %", LOSS * 100.0);
    let target_text = if in3 {
        format!("observed loss is within 3 sigma of the configured {configured}")
    } else if in5 {
        format!(
            "observed loss {} is outside 3 sigma but within 5 sigma of the configured \
             {configured} (expected in about 0.3 % of runs)",
            pct(target.loss())
        )
    } else {
        format!(
            "observed loss {} is outside 5 sigma of the configured {configured}",
            pct(target.loss())
        )
    };
    let other_text = if clean {
        "the untargeted port lost nothing".to_string()
    } else if other.sent == 0 {
        "nothing was sent to the untargeted port".to_string()
    } else {
        format!(
            "the untargeted port lost {} of {} datagrams",
            other.lost(),
            other.sent
        )
    };
    println!("verdict: {target_text}; {other_text}");
    ensure!(
        in5 && clean && target.sent > 0,
        "the demo did not show the configured fault: {target_text}; {other_text}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The demo

/// Namespaces, agent, traffic, report. Every guard is dropped on return.
fn run(agent_bin: &Path) -> Result<()> {
    let policy = crate::root().join(POLICY);
    ensure!(policy.is_file(), "{} is missing", policy.display());
    let _net = DemoNet::create()?;
    check_interrupted()?;
    let mut agent = Agent::start(agent_bin, &policy)?;
    // Whatever happens from here on, the agent is stopped and the interface
    // checked before the namespaces go.
    let outcome = (|| -> Result<Option<(String, [PortResult; 2])>> {
        let applied = agent.wait_applied()?;
        check_interrupted()?;
        let mode = applied["mode"].as_str().unwrap_or("?").to_string();
        println!(
            "agent (pid {}) applied {POLICY} via {mode}",
            applied["pid"].as_u64().unwrap_or(agent.pid as u64)
        );
        Ok(traffic(&mut agent)?.map(|r| (mode, r)))
    })();
    let end = agent.stop()?;
    let attached = chaos_tests::attachments_on(NS_A, IF_A);
    // A failure before or during the traffic is the story (it mentions the
    // agent's exit when that was the cause); after Ctrl-C, the revert is.
    let outcome = match outcome {
        Err(e) if !interrupted() => return Err(e),
        o => o.ok().flatten(),
    };
    let left = end
        .reverted
        .as_ref()
        .and_then(|r| r["left"].as_array().cloned())
        .unwrap_or_default();
    match &end.reverted {
        Some(r) => println!(
            "agent stopped: reverted (reason: {}), exit code {}",
            r["reason"].as_str().unwrap_or("?"),
            end.status
                .code()
                .map_or_else(|| end.status.to_string(), |c| c.to_string())
        ),
        None => println!("agent stopped: {} (no reverted event)", end.status),
    }
    ensure!(!end.killed, "the agent had to be killed: it did not revert");
    ensure!(
        end.status.success(),
        "the agent exited with {} instead of 0",
        end.status
    );
    ensure!(
        end.reverted.is_some(),
        "the agent exited 0 but printed no reverted event"
    );
    ensure!(left.is_empty(), "the agent's revert left behind: {left:?}");
    let attached = attached.with_context(|| format!("checking what is attached to {IF_A}"))?;
    ensure!(
        attached.is_empty(),
        "still attached to {IF_A} after the revert: {}",
        attached.join("; ")
    );
    println!("nothing attached to {IF_A} after the revert");
    check_interrupted()?;
    let Some((mode, results)) = outcome else {
        bail!("interrupted");
    };
    let reverted = end.reverted.expect("checked above");
    report(&mode, &results, &reverted)
}

/// `./x demo`.
pub fn demo() -> Result<()> {
    crate::setup::setup()?;
    let agent_bin = crate::build()?;
    if !crate::is_root() {
        bail!(
            "the demo creates network namespaces and attaches eBPF programs: run `./x demo` as root"
        );
    }
    let _lock = single_instance()?;
    install_signal_handlers()?;
    let result = run(&agent_bin);
    // `run` has stopped the agent and deleted the namespaces; make sure.
    let leftovers = leftover_namespaces();
    let sig = SIGNAL.load(Ordering::SeqCst);
    let cleanup = match &leftovers {
        Ok(l) if l.is_empty() => {
            println!("cleaned up: agent stopped, namespaces {NS_A} and {NS_B} deleted");
            Ok(())
        }
        Ok(l) => Err(anyhow!(
            "namespaces left behind: {} (delete them with `ip netns del NAME`)",
            l.join(", ")
        )),
        Err(e) => Err(anyhow!("could not check for leftover namespaces: {e:#}")),
    };
    if sig != 0 {
        if let Err(e) = &result
            && e.to_string() != "interrupted"
        {
            eprintln!("chaos-agent demo: stopped at: {e:#}");
        }
        cleanup?;
        eprintln!(
            "chaos-agent demo: interrupted by {}; stopped early",
            signal_name(sig)
        );
        std::process::exit(128 + sig);
    }
    match (result, cleanup) {
        (Ok(()), c) => c,
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => Err(e.context(format!("{c:#}"))),
    }
}
