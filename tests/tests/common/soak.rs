//! The reliability suite: the agent killed, stopped and stormed at random
//! moments, and what it leaves behind. `./x soak` runs it at length
//! (`chaos-soak`, figures in docs/reliability.md); `tests/soak.rs` runs a
//! short version with the other tests. Every scenario reports its cycles,
//! its failures (a behaviour a user would see go wrong) and its residue
//! (anything of ours left on the host once it settled), and the times
//! traffic needed to flow again.

use std::{
    collections::HashSet,
    io::{Read, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use chaos_tests::{
    AddrKind, Direction, NetnsPair, attachments_on,
    bpf::{BpfProgInfo, loaded_progs},
    kernel_at_least, monotonic_ns, stream_while, tc_qdiscs, udp_run,
};

use super::{Blast, agent_bin, agent_output, daemon::Daemon};

/// What one scenario found.
#[derive(Debug, Default)]
pub struct Report {
    pub scenario: &'static str,
    pub cycles: usize,
    pub failures: Vec<String>,
    pub residue: Vec<String>,
    /// Times from the agent stopping (or dying) to traffic flowing again.
    pub recovery: Vec<Duration>,
    /// What else was measured, in words.
    pub note: String,
}

impl Report {
    fn new(scenario: &'static str) -> Report {
        Report {
            scenario,
            ..Report::default()
        }
    }

    pub fn clean(&self) -> bool {
        self.failures.is_empty() && self.residue.is_empty()
    }

    pub fn worst_recovery(&self) -> Option<Duration> {
        self.recovery.iter().max().copied()
    }

    /// `| scenario | cycles | failures | residue | recovery | note |`
    pub fn row(&self) -> String {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        let recovery = match self.worst_recovery() {
            Some(worst) => {
                let mut all = self.recovery.clone();
                all.sort();
                format!("median {}, worst {}", ms(all[all.len() / 2]), ms(worst))
            }
            None => "-".into(),
        };
        format!(
            "| {} | {} | {} | {} | {} | {} |",
            self.scenario,
            self.cycles,
            self.failures.len(),
            self.residue.len(),
            recovery,
            self.note
        )
    }
}

/// A small xorshift generator: the same seed gives the same moments.
pub struct Rng(pub u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

const PORT: u16 = 7000;

fn emulated() -> bool {
    std::env::var_os("CHAOS_TEST_EMULATED").is_some()
}

fn blast_args(pair: &NetnsPair, attach: &str, lease: &str) -> Vec<String> {
    [
        "blast",
        "net",
        "--netns",
        pair.ns_a(),
        "--iface",
        pair.if_a(),
        "--proto",
        "udp",
        "--dport",
        "7000",
        "--loss",
        "100",
        "--duration",
        "5m",
        "--lease",
        lease,
        "--attach",
        attach,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Streams a->b to `PORT` at 2,000 datagrams/s for `window` while `during`
/// runs; `during` returns the moment (CLOCK_MONOTONIC ns) recovery counts
/// from. The time from it to the first datagram that arrived after it.
fn recovery_after(
    pair: &NetnsPair,
    window: Duration,
    during: impl FnOnce() -> Result<u64>,
) -> Result<Option<Duration>> {
    let mut from = Ok(0);
    let (_, got) = stream_while(pair, PORT, 2_000, window.as_secs_f64(), || from = during())?;
    let from = from?;
    Ok(got
        .records
        .iter()
        .map(|r| r.recv_ns)
        .filter(|&t| t >= from)
        .min()
        .map(|t| Duration::from_nanos(t - from)))
}

/// Programs of ours that stay loaded with no live process holding them:
/// what a dead agent left behind (an attachment somewhere, a pin). A
/// program another running agent holds open is that agent's, so the suite
/// can run next to other agents and tests. The kernel frees a program a
/// little after its last holder went (later on a loaded machine), and an
/// agent killed next to the suite can leave an inert filter until its next
/// start; so one that is unheld at first look is followed for up to 5 s,
/// the time it took to go is printed, and only one still there then counts.
fn our_programs() -> Vec<String> {
    let unheld = || -> Vec<BpfProgInfo> {
        let held = programs_held_open();
        loaded_progs()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.name.starts_with("chaos_") && !held.contains(&p.id))
            .collect()
    };
    let mut left = unheld();
    let since = Instant::now();
    while !left.is_empty() && since.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        let now: HashSet<u32> = unheld().iter().map(|p| p.id).collect();
        left.retain(|p| {
            let there = now.contains(&p.id);
            if !there {
                eprintln!(
                    "soak: {} (id {}) had no holder and was gone {:.0} ms later",
                    p.name,
                    p.id,
                    since.elapsed().as_secs_f64() * 1e3
                );
            }
            there
        });
    }
    left.into_iter()
        .map(|p| format!("{} (id {}) unheld for 5 s", p.name, p.id))
        .collect()
}

/// Ids of the BPF programs some live process holds a descriptor of: a
/// program's own descriptor or a link's (both show `prog_id:` in fdinfo).
fn programs_held_open() -> HashSet<u32> {
    let mut ids = HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return ids;
    };
    for p in procs.flatten() {
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            ids.extend(
                info.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:"))
                    .filter_map(|v| v.trim().parse::<u32>().ok()),
            );
        }
    }
    ids
}

/// A clean slate after an agent died: an agent of ours that starts
/// removes what dead ones left (netlink filters, their clsact, qdiscs).
fn next_start_cleans(pair: &NetnsPair) -> Result<()> {
    let mut args = blast_args(pair, "auto", "10s");
    args[11] = "0".into(); // --loss 0
    args[13] = "1s".into(); // --duration 1s
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = agent_output(&args)?;
    anyhow::ensure!(code == 0, "the clean-up start failed ({code}): {err}");
    Ok(())
}

/// What of ours is on the pair's interface and host once nothing of ours
/// runs: attachments, our programs, a qdisc that was not there before.
fn residue(pair: &NetnsPair, qdiscs_before: &str, cycle: usize, out: &mut Vec<String>) {
    match attachments_on(pair.ns_a(), pair.if_a()) {
        Ok(a) if a.is_empty() => {}
        Ok(a) => out.push(format!("cycle {cycle}: still attached: {a:?}")),
        Err(e) => out.push(format!("cycle {cycle}: {e:#}")),
    }
    let progs = our_programs();
    if !progs.is_empty() {
        out.push(format!("cycle {cycle}: programs still loaded: {progs:?}"));
    }
    match tc_qdiscs(pair.ns_a(), pair.if_a()) {
        Ok(q) if q == qdiscs_before => {}
        Ok(q) => out.push(format!(
            "cycle {cycle}: qdiscs now {q:?}, before {qdiscs_before:?}"
        )),
        Err(e) => out.push(format!("cycle {cycle}: {e:#}")),
    }
}

/// SIGKILL of a blast at a random moment (a third of them within 30 ms of
/// its start, while it loads and attaches). With tcx the kernel takes the
/// links with the process; with netlink the filter stays, inert within the
/// lease (1 s), and the next start removes it.
pub fn kill_blast(attach: &'static str, cycles: usize, rng: &mut Rng) -> Result<Report> {
    let mut r = Report::new(if attach == "tcx" {
        "SIGKILL of a tcx blast"
    } else {
        "SIGKILL of a netlink blast"
    });
    if attach == "tcx" && !kernel_at_least(6, 6) {
        r.note = "skipped: tcx links need Linux 6.6".into();
        return Ok(r);
    }
    let pair = NetnsPair::new("soakkill")?;
    let before = tc_qdiscs(pair.ns_a(), pair.if_a())?;
    let args = blast_args(&pair, attach, "1s");
    let window = Duration::from_millis(if attach == "tcx" { 700 } else { 2_800 });
    let mut during_load = 0;
    for cycle in 0..cycles {
        let delay = if cycle % 3 == 0 {
            during_load += 1;
            Duration::from_millis(rng.below(30))
        } else {
            Duration::from_millis(30 + rng.below(270))
        };
        let recovered = recovery_after(&pair, window, || {
            let mut child = Command::new(agent_bin())
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("spawning chaos-agent")?;
            std::thread::sleep(delay);
            child.kill()?;
            child.wait()?;
            Ok(monotonic_ns())
        })?;
        match recovered {
            Some(d) => r.recovery.push(d),
            None => r.failures.push(format!(
                "cycle {cycle}: no traffic within {window:?} of the SIGKILL"
            )),
        }
        r.cycles += 1;
        if attach == "tcx" {
            residue(&pair, &before, cycle, &mut r.residue);
        }
    }
    if attach == "netlink" {
        next_start_cleans(&pair)?;
        residue(&pair, &before, cycles, &mut r.residue);
    }
    r.note = format!(
        "{during_load} killed within 30 ms of their start; recovery counted from the SIGKILL{}",
        if attach == "netlink" {
            " (lease 1 s); the next start removed every leftover filter and its clsact"
        } else {
            ""
        }
    );
    Ok(r)
}

/// SIGSTOP of a blast with a 1 s lease: traffic flows again within the
/// lease; after SIGCONT the blast exits 1 naming the lapse.
pub fn stop_blast(cycles: usize, rng: &mut Rng) -> Result<Report> {
    let mut r = Report::new("SIGSTOP of a blast (lease 1 s)");
    let pair = NetnsPair::new("soakstop")?;
    let before = tc_qdiscs(pair.ns_a(), pair.if_a())?;
    let args = blast_args(&pair, "auto", "1s");
    let args: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    for cycle in 0..cycles {
        let mut blast = Blast::start(&args)?;
        let recovered = recovery_after(&pair, Duration::from_millis(2_500), || {
            std::thread::sleep(Duration::from_millis(100 + rng.below(400)));
            blast.signal(libc::SIGSTOP);
            Ok(monotonic_ns())
        })?;
        match recovered {
            Some(d) if d <= Duration::from_secs(2) => r.recovery.push(d),
            Some(d) => {
                r.recovery.push(d);
                r.failures
                    .push(format!("cycle {cycle}: traffic back only after {d:?}"))
            }
            None => r
                .failures
                .push(format!("cycle {cycle}: no traffic after the SIGSTOP")),
        }
        blast.signal(libc::SIGCONT);
        let status = blast.wait(Duration::from_secs(10))?;
        if status.code() != Some(1) || !blast.stderr().contains("the lease lapsed") {
            r.failures.push(format!(
                "cycle {cycle}: after SIGCONT: {status}, {}",
                blast.stderr().lines().last().unwrap_or_default()
            ));
        }
        r.cycles += 1;
        residue(&pair, &before, cycle, &mut r.residue);
    }
    r.note = "recovery counted from the SIGSTOP; every blast exited 1 naming the lapse".into();
    Ok(r)
}

fn loss_policy(pair: &NetnsPair, name: &str, port: u16, percent: u32) -> String {
    format!(
        "apiVersion: chaos-agent/v1\nkind: FaultPolicy\nmetadata:\n  name: {name}\nspec:\n  duration: 5m\n  faults:\n    - name: drop\n      network:\n        interface: {}\n        netns: {}\n        match: {{ protocol: udp, dstPorts: [{port}] }}\n        loss: {{ percent: {percent} }}\n",
        pair.if_a(),
        pair.ns_a()
    )
}

/// SIGKILL of the daemon in the middle of a reload storm; a new daemon
/// then starts (and removes what netlink left), and traffic flows.
pub fn kill_daemon_mid_reload(cycles: usize, rng: &mut Rng) -> Result<Report> {
    let mut r = Report::new("SIGKILL of the daemon mid-reload");
    let pair = NetnsPair::new("soakdmn")?;
    let before = tc_qdiscs(pair.ns_a(), pair.if_a())?;
    for cycle in 0..cycles {
        let files: Vec<(String, String)> = (0..3)
            .map(|i| {
                (
                    format!("p{i}.yaml"),
                    loss_policy(&pair, &format!("p{i}"), PORT + i, 100),
                )
            })
            .collect();
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let mut d = Daemon::start("soakkill", &refs)?;
        let kill_at = Instant::now() + Duration::from_millis(rng.below(200));
        let mut n = 0u32;
        while Instant::now() < kill_at {
            d.write_policy("p0.yaml", &loss_policy(&pair, "p0", PORT, n % 100));
            n += 1;
            std::thread::sleep(Duration::from_millis(3));
        }
        d.signal(libc::SIGKILL);
        let _ = d.wait(Duration::from_secs(5));
        // The service restarts: its start removes what the dead one left
        // (netlink filters), and its SIGTERM reverts what it applied.
        let after = Daemon::start("soakafter", &refs)?;
        drop(after);
        let (sent, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, PORT, 100, 2_000)?;
        if got.distinct != sent.sent {
            r.failures.push(format!(
                "cycle {cycle}: {} of {} datagrams after the restart",
                got.distinct, sent.sent
            ));
        }
        r.cycles += 1;
        residue(&pair, &before, cycle, &mut r.residue);
    }
    r.note =
        "killed after 0-200 ms of rewrites every 3 ms; checked after the restarted daemon stopped"
            .into();
    Ok(r)
}

fn fds_and_rss(pid: u32) -> Result<(usize, u64)> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    Ok((fds, rss))
}

/// `writes` rewrites of a policy, valid and invalid in turn, as fast as an
/// editor could: the daemon keeps its descriptors and memory.
pub fn reload_storm(writes: usize) -> Result<Report> {
    let mut r = Report::new("daemon reload storm");
    let pair = NetnsPair::new("soakstorm")?;
    let d = Daemon::start(
        "storm",
        &[("p.yaml", &loss_policy(&pair, "storm", PORT, 50))],
    )?;
    let pid = d.pid().context("daemon pid")?;
    // Warm up: the first reloads allocate what later ones reuse.
    for i in 0..20u32 {
        d.write_policy("p.yaml", &loss_policy(&pair, "storm", PORT, i));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (fd0, rss0) = fds_and_rss(pid)?;
    for i in 0..writes {
        let text = loss_policy(&pair, "storm", PORT + (i % 7) as u16, (i % 100) as u32);
        let text = if i % 5 == 4 {
            text.replace("percent:", "percentage:")
        } else {
            text
        };
        d.write_policy("p.yaml", &text);
        std::thread::sleep(Duration::from_millis(2));
        r.cycles += 1;
    }
    d.write_policy("p.yaml", &loss_policy(&pair, "storm", PORT, 100));
    // The daemon works through the storm at its own pace (slowly under
    // qemu's emulated CPU): wait until the last version is in force.
    let settled = super::eventually(20, || {
        udp_run(&pair, Direction::AtoB, AddrKind::V4, PORT, 50, 2_000)
            .is_ok_and(|(sent, got)| sent.sent > 0 && got.distinct == 0)
    });
    if !settled {
        r.failures
            .push("the last (100 %) version is not in force".into());
    }
    let (fd1, rss1) = fds_and_rss(pid)?;
    if fd1 > fd0 + 2 {
        r.failures
            .push(format!("descriptors grew from {fd0} to {fd1}"));
    }
    if rss1 > rss0 + 4 * 1024 {
        r.failures
            .push(format!("RSS grew from {rss0} KiB to {rss1} KiB"));
    }
    let (_, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, PORT, 100, 2_000)?;
    if got.distinct != 0 {
        r.failures
            .push("the last (100 %) version is not in force".into());
    }
    r.note = format!(
        "a fifth of the writes invalid; descriptors {fd0} -> {fd1}, RSS {rss0} -> {rss1} KiB"
    );
    Ok(r)
}

/// Idle and slow clients on the metrics port and the control socket: a
/// scrape and `stop --all` still answer at once.
pub fn hostile_clients(cycles: usize) -> Result<Report> {
    let mut r = Report::new("hostile metrics and control clients");
    let pair = NetnsPair::new("soakhost")?;
    let d = Daemon::start(
        "hostile",
        &[("p.yaml", &loss_policy(&pair, "hostile", PORT, 100))],
    )?;
    let socket = d.run_dir().join("control.sock");
    let bound = if emulated() { 1_000 } else { 100 };
    let mut worst_scrape = Duration::ZERO;
    let mut worst_stop = Duration::ZERO;
    for cycle in 0..cycles {
        let _idle: Vec<TcpStream> = (0..100)
            .filter_map(|_| TcpStream::connect(("127.0.0.1", d.metrics_port)).ok())
            .collect();
        let mut slow = TcpStream::connect(("127.0.0.1", d.metrics_port))?;
        slow.write_all(b"GET /met")?;
        let _stalled: Vec<UnixStream> = (0..8)
            .filter_map(|_| UnixStream::connect(&socket).ok())
            .collect();
        let t = Instant::now();
        let text = scrape(d.metrics_port)?;
        let took = t.elapsed();
        worst_scrape = worst_scrape.max(took);
        if !text.contains("chaos_agent_active_faults") || took > Duration::from_millis(bound) {
            r.failures
                .push(format!("cycle {cycle}: scrape took {took:?}"));
        }
        let t = Instant::now();
        let (code, _, err) = d.ctl(&["status"]);
        let took = t.elapsed();
        worst_stop = worst_stop.max(took);
        if code != 0 || took > Duration::from_secs(2) {
            r.failures
                .push(format!("cycle {cycle}: status took {took:?}: {err}"));
        }
        r.cycles += 1;
    }
    let (code, _, err) = d.ctl(&["stop", "--all"]);
    if code != 0 {
        r.failures.push(format!("stop --all: {err}"));
    }
    r.note = format!(
        "per cycle 100 idle and 1 slow metrics client, 8 idle control clients; worst scrape {:.1} ms, worst status {:.1} ms",
        worst_scrape.as_secs_f64() * 1e3,
        worst_stop.as_secs_f64() * 1e3
    );
    Ok(r)
}

fn scrape(port: u16) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    Ok(raw)
}

/// Journals of dead agents and clsact marks left in the run directory.
///
/// Only what concerns the suite: clsact marks of its own namespaces (all
/// named `cht-soak...`) and journals of agents no longer alive, so that
/// agents running next to the suite do not count.
pub fn run_dir_residue() -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["/run/chaos-agent/netlink", "/run/chaos-agent/clsact"] {
        let Ok(walk) = walk(Path::new(dir)) else {
            continue;
        };
        out.extend(
            walk.into_iter()
                .filter(|p| ours_or_orphaned(p))
                .map(|p| format!("left in {dir}: {p}")),
        );
    }
    out
}

/// A clsact mark in one of the suite's namespaces, or a journal
/// (`<pid>.json`) whose agent is gone.
fn ours_or_orphaned(path: &str) -> bool {
    if path.contains("/cht-soak") {
        return true;
    }
    match Path::new(path)
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<u32>().ok())
    {
        Some(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
        None => false,
    }
}

fn walk(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p.display().to_string());
        }
    }
    Ok(out)
}
