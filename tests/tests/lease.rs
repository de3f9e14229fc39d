//! The lease, a dead-man switch in the kernel: an agent that stops
//! answering (SIGSTOP, or SIGKILL where its netlink filters stay) stops
//! faulting within its lease, whatever the faults' own deadlines; a blast
//! that finds its lease lapsed reverts and exits 1 naming it; the daemon
//! counts the lapse and applies its policies again.

mod common;

use std::time::{Duration, Instant};

use chaos_tests::{
    AddrKind, CgroupGuard, Direction, NetnsPair, Side, attachments_on, monotonic_ns, require_root,
    stream_while,
    syscaller::{Acceptor, tcp_connects},
    udp_run,
};
use common::{
    Blast,
    daemon::{Daemon, sample},
    eventually,
};

const MS: u64 = 1_000_000;
const LEASE: &str = "2s";
const LEASE_NS: u64 = 2_000 * MS;

fn loss_args<'a>(pair: &'a NetnsPair, attach: &'a str) -> Vec<&'a str> {
    vec![
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
        LEASE,
        "--attach",
        attach,
    ]
}

/// Streams a->b to port 7000 for `secs` while `during` runs; the receive
/// time of the first datagram that arrived after `from` (set by `during`).
fn first_through(pair: &NetnsPair, secs: f64, during: impl FnOnce() -> u64) -> (u64, Option<u64>) {
    let mut from = 0;
    let (_, got) = stream_while(pair, 7000, 1_000, secs, || from = during()).unwrap();
    let first = got
        .records
        .iter()
        .map(|r| r.recv_ns)
        .filter(|&t| t >= from)
        .min();
    (from, first)
}

/// Traffic came back within lease + 1 s of `from`, and not before the
/// agent stopped.
fn back_within_the_lease(from: u64, first: Option<u64>, what: &str) {
    let first = first.unwrap_or_else(|| panic!("{what}: traffic never came back"));
    let after = (first - from) as f64 / MS as f64;
    eprintln!("{what}: traffic back {after:.0} ms after it stopped answering (lease {LEASE})");
    assert!(
        first - from <= LEASE_NS + 1_000 * MS,
        "{what}: traffic back only {after:.0} ms later"
    );
}

#[test]
fn a_stopped_blast_stops_faulting_within_its_lease_and_exits_1() {
    require_root!();
    let pair = NetnsPair::new("lstop").unwrap();
    let mut blast = Blast::start(&loss_args(&pair, "auto")).unwrap();
    let (from, first) = first_through(&pair, 4.5, || {
        std::thread::sleep(Duration::from_millis(500));
        blast.signal(libc::SIGSTOP);
        monotonic_ns()
    });
    back_within_the_lease(from, first, "SIGSTOPped blast");
    blast.signal(libc::SIGCONT);
    let status = blast.wait(Duration::from_secs(10)).unwrap();
    let stderr = blast.stderr();
    assert_eq!(status.code(), Some(1), "{status}: {stderr}");
    assert!(stderr.contains("the lease lapsed"), "{stderr}");
    assert!(attachments_on(pair.ns_a(), pair.if_a()).unwrap().is_empty());
}

#[test]
fn a_killed_netlink_blast_stops_faulting_within_its_lease() {
    require_root!();
    let pair = NetnsPair::new("lkill").unwrap();
    let mut blast = Blast::start(&loss_args(&pair, "netlink")).unwrap();
    let (from, first) = first_through(&pair, 4.5, || {
        std::thread::sleep(Duration::from_millis(500));
        blast.signal(libc::SIGKILL);
        monotonic_ns()
    });
    let _ = blast.wait(Duration::from_secs(5));
    // The netlink filter outlives the agent; the lease, not the 5 minutes
    // of the fault, decides when it stops acting.
    assert!(!attachments_on(pair.ns_a(), pair.if_a()).unwrap().is_empty());
    back_within_the_lease(from, first, "SIGKILLed netlink blast");
}

#[test]
fn a_stopped_syscall_blast_stops_failing_calls_within_its_lease() {
    require_root!();
    if let Err(why) = chaos_tests::kernel::cgroup_errno() {
        println!("skipped: the cgroup socket hooks do not run here: {why}");
        return;
    }
    let pair = NetnsPair::new("lsys").unwrap();
    let cg = CgroupGuard::new("lsys").unwrap();
    let l = Acceptor::start(&pair, Side::B, 47301).unwrap();
    let rel = cg.rel_path();
    let blast = Blast::start(&[
        "syscall",
        "--syscall",
        "connect",
        "--errno",
        "ECONNREFUSED",
        "--cgroup",
        &rel,
        "--duration",
        "5m",
        "--lease",
        LEASE,
    ])
    .unwrap();
    let connect = || {
        tcp_connects(&pair, Some(cg.path()), l.addr, 1)
            .unwrap()
            .failed()
            == 0
    };
    assert!(!connect(), "the fault is not in force");
    blast.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    assert!(eventually(10, connect), "connect() still fails");
    let after = stopped.elapsed();
    eprintln!("SIGSTOPped syscall blast: connect() works again after {after:?} (lease {LEASE})");
    assert!(
        after <= Duration::from_millis(3_000),
        "only after {after:?}"
    );
    blast.signal(libc::SIGCONT);
    let (status, reverted) = blast.finish(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(1), "{status}");
    assert_eq!(reverted["reason"], "lease lapsed", "{reverted}");
}

#[test]
fn a_stopped_daemon_stops_faulting_within_its_lease_then_applies_again() {
    require_root!();
    let pair = NetnsPair::new("ldmn").unwrap();
    let policy = format!(
        "apiVersion: chaos-agent/v1\nkind: FaultPolicy\nmetadata:\n  name: leased\nspec:\n  duration: 5m\n  faults:\n    - name: drop\n      network:\n        interface: {}\n        netns: {}\n        match: {{ protocol: udp, dstPorts: [7000] }}\n        loss: {{ percent: 100 }}\n",
        pair.if_a(),
        pair.ns_a()
    );
    let d = Daemon::start_with("lease", &[("p.yaml", &policy)], &["--lease", LEASE]).unwrap();
    let (from, first) = first_through(&pair, 4.5, || {
        std::thread::sleep(Duration::from_millis(500));
        d.signal(libc::SIGSTOP);
        monotonic_ns()
    });
    back_within_the_lease(from, first, "SIGSTOPped daemon");
    d.signal(libc::SIGCONT);
    // It notices, reverts and applies its policy again.
    let dropped = || {
        let (sent, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, 7000, 50, 1_000).unwrap();
        sent.sent > 0 && got.distinct == 0
    };
    assert!(
        eventually(10, dropped),
        "the policy is not in force again:\n{}",
        d.log()
    );
    assert!(d.log().contains("the lease lapsed"), "{}", d.log());
    assert!(
        eventually(5, || sample(
            &d.scrape(),
            "chaos_agent_lease_lapses_total",
            &[]
        ) == Some(1.0)),
        "{}",
        d.scrape()
    );
    let st = d.status();
    assert_eq!(st["policies"][0]["state"], "active", "{st}");
}

#[test]
fn a_killed_netlink_daemon_stops_faulting_within_its_lease() {
    require_root!();
    let pair = NetnsPair::new("ldkill").unwrap();
    let policy = format!(
        "apiVersion: chaos-agent/v1\nkind: FaultPolicy\nmetadata:\n  name: leased\nspec:\n  duration: 5m\n  faults:\n    - name: drop\n      network:\n        interface: {}\n        netns: {}\n        match: {{ protocol: udp, dstPorts: [7000] }}\n        loss: {{ percent: 100 }}\n",
        pair.if_a(),
        pair.ns_a()
    );
    let mut d = Daemon::start_with(
        "leasekill",
        &[("p.yaml", &policy)],
        &["--lease", LEASE, "--attach", "netlink"],
    )
    .unwrap();
    let (from, first) = first_through(&pair, 4.5, || {
        std::thread::sleep(Duration::from_millis(500));
        d.signal(libc::SIGKILL);
        monotonic_ns()
    });
    let _ = d.wait(Duration::from_secs(5));
    // Its netlink filter stays until the next start; the lease, not the
    // policy's 5 minutes, decides when it stops acting.
    assert!(!attachments_on(pair.ns_a(), pair.if_a()).unwrap().is_empty());
    back_within_the_lease(from, first, "SIGKILLed netlink daemon");
    // The restarted service removes what the dead one left.
    let again = Daemon::start_with(
        "leaseagain",
        &[("p.yaml", &policy)],
        &["--attach", "netlink"],
    )
    .unwrap();
    drop(again);
    assert!(attachments_on(pair.ns_a(), pair.if_a()).unwrap().is_empty());
}
