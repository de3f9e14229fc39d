//! Safety under failure: the in-kernel deadline holds with the agent
//! stopped; a killed agent leaves nothing attached (tcx) or an inert
//! leftover that the next start removes (netlink); SIGTERM reverts.

mod common;

use std::time::Duration;

use chaos_tests::{
    NetnsPair, attachments_on, monotonic_ns, require_root, stream_while, tc_filters, tc_qdiscs,
};
use common::Blast;

const MS: u64 = 1_000_000;

/// Sends a steady stream a->b to port 7000 for `secs` seconds at 2,000 pps
/// while `during` runs, and returns the receive times (CLOCK_MONOTONIC ns)
/// with the send times of what arrived.
fn received_while(pair: &NetnsPair, secs: f64, during: impl FnOnce()) -> Vec<(u64, u64)> {
    let (_, got) = stream_while(pair, 7000, 2_000, secs, during).unwrap();
    got.records.iter().map(|r| (r.recv_ns, r.send_ns)).collect()
}

fn loss_args<'a>(pair: &'a NetnsPair, duration: &'a str, attach: &'a str) -> Vec<&'a str> {
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
        duration,
        "--attach",
        attach,
    ]
}

/// A sanity bound on how soon traffic flows again, wide enough for an
/// emulated CPU: the figures themselves (well under a millisecond for tcx
/// on this machine) are `./x bench`'s and `./x soak`'s to report.
const SANITY_NS: u64 = 1_000 * MS;

#[test]
fn deadline_holds_with_the_agent_stopped() {
    require_root!();
    let pair = NetnsPair::new("deadline").unwrap();
    let mut agent = Blast::start(&loss_args(&pair, "2s", "auto")).unwrap();
    agent.signal(libc::SIGSTOP);
    let deadline = agent.deadline_ns();
    let records = received_while(&pair, 3.5, || {});
    let before: Vec<_> = records.iter().filter(|(rx, _)| *rx < deadline).collect();
    assert!(
        before.is_empty(),
        "{} datagrams arrived before the deadline",
        before.len()
    );
    let first = records
        .iter()
        .map(|(rx, _)| *rx)
        .min()
        .expect("nothing arrived after the deadline");
    let late_ms = (first - deadline) as f64 / MS as f64;
    eprintln!("first datagram {late_ms:.2} ms after the kernel deadline (agent stopped)");
    assert!(
        first - deadline < SANITY_NS,
        "traffic recovered {late_ms:.1} ms after the deadline"
    );
    // Everything sent after the deadline (plus one send interval) arrived.
    agent.signal(libc::SIGCONT);
    let status = agent.wait(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "agent after SIGCONT: {status}");
    assert!(attachments_on(pair.ns_a(), pair.if_a()).unwrap().is_empty());
}

#[test]
fn sigkill_with_tcx_leaves_nothing_attached() {
    require_root!();
    if !chaos_agent_has_tcx() {
        eprintln!("skipped: tcx links need Linux 6.6 (the VM matrix runs the netlink path)");
        return;
    }
    let pair = NetnsPair::new("killtcx").unwrap();
    let mut agent = Blast::start(&loss_args(&pair, "60s", "tcx")).unwrap();
    assert_eq!(agent.mode(), "tcx");
    let mut killed_at = 0;
    let records = received_while(&pair, 2.0, || {
        std::thread::sleep(Duration::from_millis(700));
        killed_at = monotonic_ns();
        agent.signal(libc::SIGKILL);
        let _ = agent.wait(Duration::from_secs(5));
    });
    let before = records.iter().filter(|(_, tx)| *tx < killed_at).count();
    assert_eq!(before, 0, "datagrams sent before the kill arrived");
    let first = records
        .iter()
        .map(|(rx, _)| *rx)
        .min()
        .expect("nothing arrived after SIGKILL");
    let ms = (first - killed_at) as f64 / MS as f64;
    eprintln!("traffic recovered {ms:.2} ms after SIGKILL (tcx)");
    assert!(first - killed_at < SANITY_NS, "recovery took {ms:.1} ms");
    let left = attachments_on(pair.ns_a(), pair.if_a()).unwrap();
    assert!(left.is_empty(), "left attached after SIGKILL: {left:?}");
}

#[test]
fn sigkill_with_netlink_leaves_an_inert_filter_that_the_next_start_removes() {
    require_root!();
    let pair = NetnsPair::new("killnl").unwrap();
    let mut agent = Blast::start(&loss_args(&pair, "2s", "netlink")).unwrap();
    assert_eq!(agent.mode(), "netlink");
    let deadline = agent.deadline_ns();
    agent.signal(libc::SIGKILL);
    let _ = agent.wait(Duration::from_secs(5));
    let filters = tc_filters(pair.ns_a(), pair.if_a(), "egress").unwrap();
    assert!(
        filters.contains("chaos_tc_egress"),
        "netlink filter should outlive SIGKILL:\n{filters}"
    );
    // The leftover acts until the deadline, then lets everything through.
    let records = received_while(&pair, 3.0, || {});
    assert!(
        records.iter().all(|(rx, _)| *rx >= deadline),
        "traffic passed before the deadline"
    );
    let first = records
        .iter()
        .map(|(rx, _)| *rx)
        .min()
        .expect("nothing arrived after the deadline");
    assert!(
        first - deadline < SANITY_NS,
        "leftover inert only {} ms after the deadline",
        (first - deadline) / MS
    );
    // The next start removes it (and its clsact), then cleans up after itself.
    let next = Blast::start(&[
        "net",
        "--netns",
        pair.ns_a(),
        "--iface",
        pair.if_a(),
        "--dport",
        "9",
        "--loss",
        "1",
        "--duration",
        "1s",
        "--attach",
        "netlink",
    ])
    .unwrap();
    let (status, _) = next.finish(Duration::from_secs(10)).unwrap();
    assert!(status.success());
    let left = attachments_on(pair.ns_a(), pair.if_a()).unwrap();
    assert!(left.is_empty(), "left after the next run: {left:?}");
    let qdiscs = tc_qdiscs(pair.ns_a(), pair.if_a()).unwrap();
    assert!(
        !qdiscs.contains("clsact"),
        "our clsact qdisc was left:\n{qdiscs}"
    );
}

#[test]
fn sigterm_reverts_and_exits_zero() {
    require_root!();
    let pair = NetnsPair::new("term").unwrap();
    for attach in ["auto", "netlink"] {
        let agent = Blast::start(&loss_args(&pair, "60s", attach)).unwrap();
        assert!(!attachments_on(pair.ns_a(), pair.if_a()).unwrap().is_empty());
        let (status, ev) = agent.stop().unwrap();
        assert_eq!(status.code(), Some(0), "{attach}: exit after SIGTERM");
        assert_eq!(ev["reason"], "signal");
        let left = attachments_on(pair.ns_a(), pair.if_a()).unwrap();
        assert!(
            left.is_empty(),
            "{attach}: left attached after SIGTERM: {left:?}"
        );
        let qdiscs = tc_qdiscs(pair.ns_a(), pair.if_a()).unwrap();
        assert!(
            !qdiscs.contains("clsact"),
            "{attach}: clsact left:\n{qdiscs}"
        );
    }
}

fn chaos_agent_has_tcx() -> bool {
    common::probe_row("attach-tcx")["supported"] == true
}

/// Two netlink blasts on one interface, ending in either order: the
/// interface's qdiscs are as before (the clsact one of them added goes with
/// the last of their filters, whoever added it).
#[test]
fn two_netlink_blasts_on_one_interface_leave_its_qdiscs_as_they_were() {
    require_root!();
    for first_ends_first in [true, false] {
        let pair = NetnsPair::new("twonl").unwrap();
        let before = tc_qdiscs(pair.ns_a(), pair.if_a()).unwrap();
        let mut one = loss_args(&pair, "30s", "netlink");
        let a = Blast::start(&one).unwrap();
        one[8] = "7001";
        let b = Blast::start(&one).unwrap();
        let during = tc_qdiscs(pair.ns_a(), pair.if_a()).unwrap();
        assert!(during.contains("clsact"), "{during}");
        let (x, y) = if first_ends_first { (a, b) } else { (b, a) };
        let (status, _) = x.stop().unwrap();
        assert!(status.success());
        let (status, _) = y.stop().unwrap();
        assert!(status.success());
        let after = tc_qdiscs(pair.ns_a(), pair.if_a()).unwrap();
        assert_eq!(
            after, before,
            "qdiscs changed (the first blast ended first: {first_ends_first})"
        );
        assert!(
            tc_filters(pair.ns_a(), pair.if_a(), "egress")
                .unwrap()
                .is_empty()
        );
    }
}

/// A blast waiting for its policy's `startAfter` says so: `waiting` events
/// (JSON) counting down, then `applied`.
#[test]
fn a_waiting_start_after_counts_down() {
    require_root!();
    let pair = NetnsPair::new("waitsa").unwrap();
    let file = std::env::temp_dir().join(format!("chaos-wait-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        format!(
            "apiVersion: chaos-agent/v1\nkind: FaultPolicy\nmetadata:\n  name: later\nspec:\n  duration: 1s\n  startAfter: 2s\n  faults:\n    - name: drop\n      network:\n        interface: {}\n        netns: {}\n        loss: {{ percent: 100 }}\n",
            pair.if_a(),
            pair.ns_a()
        ),
    )
    .unwrap();
    let (code, out, err) =
        common::agent_output(&["blast", "--policy", file.to_str().unwrap(), "--json"]).unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, 0, "{err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let waiting: Vec<u64> = events
        .iter()
        .take_while(|e| e["event"] == "waiting")
        .map(|e| e["starts_in_ms"].as_u64().unwrap())
        .collect();
    assert!(waiting.len() >= 2, "{out}");
    assert!(
        waiting[0] <= 2_000 && waiting.windows(2).all(|w| w[1] < w[0]),
        "{waiting:?}"
    );
    assert_eq!(events[waiting.len()]["event"], "applied", "{out}");
}
