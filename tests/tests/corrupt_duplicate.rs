//! Corruption and duplication as the receiving application sees them:
//! corrupted datagrams arrive (their UDP checksum was fixed) with one bit
//! changed, duplicates arrive exactly twice, the shares are within 4 sigma,
//! the kernel's counters agree with what arrived, and untargeted traffic is
//! untouched. IPv4 and IPv6, egress and ingress.

mod common;

use std::collections::HashMap;

use anyhow::Result;
use chaos_tests::{
    AddrKind, Direction, NetnsPair, TcpOptions, ethtool::set_tx_checksum, require_root,
    snmp_counters, snmp_tcp_segments, tcp_transfer, udp_run,
};
use common::{Hook, SHARE_SAMPLE, assert_share, fault_counters, hook_blast};

const TARGET: u16 = 7100;
const OTHER: u16 = 7101;
const UDP_COUNT: u32 = 10_000;
const UDP_PPS: u32 = 20_000;
/// Under qemu without KVM a sender computing checksums in software may hit
/// its time bound before it sent everything; the shares are measured over
/// what it did send, as long as that is a sample worth the name.
const UDP_MIN_SENT: u64 = 2_000;

/// UDP checksum errors counted by b's stack (IPv4 and IPv6).
fn csum_errors(pair: &NetnsPair) -> Result<i64> {
    let m = snmp_counters(pair.ns_b())?;
    Ok(m.get("Udp.InCsumErrors").copied().unwrap_or(0)
        + m.get("Udp6InCsumErrors").copied().unwrap_or(0))
}

/// One UDP corruption measurement. With `offload` off the sender computes
/// full checksums and b's stack verifies them, so a datagram whose checksum
/// we failed to fix would be dropped, not delivered.
fn corrupt_case(kind: AddrKind, hook: Hook, pct: u32, offload: bool) -> Result<()> {
    let pair = NetnsPair::new("corrupt")?;
    if !offload {
        let iface = pair.if_a().to_owned();
        pair.run_in_a(move || set_tx_checksum(&iface, false))??;
    }
    let csum0 = csum_errors(&pair)?;
    let agent = hook_blast(&pair, hook, "udp", TARGET, "--corrupt", pct)?;
    let (sent, got) = udp_run(&pair, Direction::AtoB, kind, TARGET, count(pct), UDP_PPS)?;
    let (sent_other, got_other) = udp_run(&pair, Direction::AtoB, kind, OTHER, 2_000, UDP_PPS)?;
    let (status, reverted) = agent.stop()?;
    assert!(status.success(), "agent exit: {status}");
    let csum_errors = csum_errors(&pair)? - csum0;

    assert!(sent.sent >= UDP_MIN_SENT, "sender: {sent:?}");
    let p = f64::from(pct) / 100.0;
    println!(
        "corrupt udp {kind:?} {hook:?} {pct}% offload={offload}: sent {} intact {} corrupted {}, checksum errors {csum_errors}",
        sent.sent, got.distinct, got.corrupted,
    );
    // Every datagram arrived: the corrupted ones with a valid checksum.
    assert_eq!(csum_errors, 0, "b's stack saw bad UDP checksums");
    assert_eq!(
        got.distinct + got.corrupted,
        sent.sent,
        "datagrams went missing"
    );
    assert_eq!(got.duplicates, 0);
    assert_eq!(got_other.distinct, sent_other.sent, "untargeted port hit");
    assert_eq!(got_other.corrupted, 0, "untargeted port corrupted");
    let (matched, injected, guard) = fault_counters(&reverted);
    assert_eq!(matched, sent.sent, "matched counter vs datagrams sent");
    assert_eq!(
        injected, got.corrupted,
        "injected counter vs corrupted datagrams received"
    );
    assert_eq!(guard, 0);
    assert_share(
        &format!("corrupt udp {kind:?} {hook:?} {pct}% offload={offload} corrupted"),
        sent.sent,
        p,
        got.corrupted,
    );
    Ok(())
}

/// Datagrams to send at `pct`: at 0 and 100 % every datagram tells, in
/// between the share needs [`SHARE_SAMPLE`] for a band within ±1 point.
fn count(pct: u32) -> u32 {
    if pct.is_multiple_of(100) {
        UDP_COUNT
    } else {
        SHARE_SAMPLE
    }
}

fn corrupt_all(kind: AddrKind, hook: Hook) -> Result<()> {
    for (pct, offload) in [(0, true), (30, true), (30, false), (100, false)] {
        corrupt_case(kind, hook, pct, offload)?;
    }
    Ok(())
}

#[test]
fn corrupt_udp_ipv4_egress() {
    require_root!();
    corrupt_all(AddrKind::V4, Hook::Egress).unwrap();
}

#[test]
fn corrupt_udp_ipv4_ingress() {
    require_root!();
    corrupt_all(AddrKind::V4, Hook::Ingress).unwrap();
}

#[test]
fn corrupt_udp_ipv6_egress() {
    require_root!();
    corrupt_all(AddrKind::V6, Hook::Egress).unwrap();
}

#[test]
fn corrupt_udp_ipv6_ingress() {
    require_root!();
    corrupt_all(AddrKind::V6, Hook::Ingress).unwrap();
}

/// TCP: the receiving application reads corrupted bytes (the TCP checksum
/// was fixed, so the stack accepted the segments), one changed byte per
/// corrupted segment, and the transfer itself completes.
#[test]
fn corrupt_tcp_reaches_the_application() {
    require_root!();
    for (hook, offload) in [(Hook::Egress, true), (Hook::Ingress, false)] {
        let pair = NetnsPair::new("tcpcorrupt").unwrap();
        if !offload {
            let iface = pair.if_a().to_owned();
            pair.run_in_a(move || set_tx_checksum(&iface, false))
                .unwrap()
                .unwrap();
        }
        let agent = hook_blast(&pair, hook, "tcp", TARGET, "--corrupt", 20).unwrap();
        let opts = TcpOptions {
            bytes: 2 << 20,
            ..TcpOptions::default()
        };
        let (_, _, retrans_before) = snmp_tcp_segments(pair.ns_a()).unwrap();
        let t = tcp_transfer(&pair, Direction::AtoB, AddrKind::V4, TARGET, &opts).unwrap();
        let (_, _, retrans_after) = snmp_tcp_segments(pair.ns_a()).unwrap();
        let retrans = retrans_after - retrans_before;
        let (status, reverted) = agent.stop().unwrap();
        assert!(status.success());
        let (matched, injected, _) = fault_counters(&reverted);
        eprintln!(
            "corrupt tcp {hook:?} 20% offload={offload}: {} bytes delivered, {} changed, {injected} segments corrupted of {matched} matched, {retrans} retransmitted",
            t.recv.bytes, t.recv.mismatched_bytes
        );
        assert!(
            t.send.completed && t.recv.eof && t.recv.bytes == opts.bytes,
            "transfer incomplete: {t:?}"
        );
        assert!(injected > 0, "nothing corrupted");
        // Each corrupted segment carries other bytes of the stream: one
        // changed byte each, unless the receiver had those bytes already
        // (a retransmitted segment, which emulated CPUs cause at times).
        let changed = t.recv.mismatched_bytes;
        assert!(
            changed <= injected && injected - changed <= retrans,
            "{changed} bytes changed for {injected} corrupted segments ({retrans} retransmitted)"
        );
    }
}

/// TCP takes duplicated segments in its stride: the stream arrives intact
/// and complete while the rule copies segments in both hook directions.
#[test]
fn duplicate_tcp_stream_stays_intact() {
    require_root!();
    for hook in [Hook::Egress, Hook::Ingress] {
        let pair = NetnsPair::new("tcpdup").unwrap();
        let agent = hook_blast(&pair, hook, "tcp", TARGET, "--duplicate", 30).unwrap();
        let opts = TcpOptions {
            bytes: 2 << 20,
            ..TcpOptions::default()
        };
        let t = tcp_transfer(&pair, Direction::AtoB, AddrKind::V6, TARGET, &opts).unwrap();
        let (status, reverted) = agent.stop().unwrap();
        assert!(status.success());
        let (matched, injected, _) = fault_counters(&reverted);
        eprintln!(
            "duplicate tcp {hook:?} 30%: {} bytes delivered intact, {injected} segments duplicated of {matched} matched",
            t.recv.bytes
        );
        assert!(t.complete(opts.bytes), "transfer incomplete: {t:?}");
        assert!(injected > 0, "nothing duplicated");
    }
}

/// One UDP duplication measurement.
fn duplicate_case(kind: AddrKind, hook: Hook, pct: u32) -> Result<()> {
    let pair = NetnsPair::new("dup")?;
    let agent = hook_blast(&pair, hook, "udp", TARGET, "--duplicate", pct)?;
    let (sent, got) = udp_run(&pair, Direction::AtoB, kind, TARGET, count(pct), UDP_PPS)?;
    let (sent_other, got_other) = udp_run(&pair, Direction::AtoB, kind, OTHER, 2_000, UDP_PPS)?;
    let (status, reverted) = agent.stop()?;
    assert!(status.success(), "agent exit: {status}");

    assert!(sent.sent >= UDP_MIN_SENT, "sender: {sent:?}");
    let p = f64::from(pct) / 100.0;
    let mut copies: HashMap<u64, u32> = HashMap::new();
    for r in &got.records {
        *copies.entry(r.seq).or_default() += 1;
    }
    let most = copies.values().copied().max().unwrap_or(0);
    println!(
        "duplicate udp {kind:?} {hook:?} {pct}%: sent {} distinct {} duplicates {}, most copies of one datagram {most}",
        sent.sent, got.distinct, got.duplicates,
    );
    assert_eq!(got.distinct, sent.sent, "datagrams went missing");
    assert_eq!(got.corrupted, 0);
    // A copy is never copied again: at most two of each.
    assert!(most <= 2, "a datagram arrived {most} times");
    assert_eq!(got_other.distinct, sent_other.sent, "untargeted port hit");
    assert_eq!(got_other.duplicates, 0, "untargeted port duplicated");
    let (matched, injected, guard) = fault_counters(&reverted);
    assert_eq!(matched, sent.sent, "matched counter vs datagrams sent");
    assert_eq!(
        injected, got.duplicates,
        "injected counter vs duplicates received"
    );
    assert_eq!(guard, 0);
    assert_share(
        &format!("duplicate udp {kind:?} {hook:?} {pct}% duplicated"),
        sent.sent,
        p,
        got.duplicates,
    );
    Ok(())
}

fn duplicate_all(kind: AddrKind, hook: Hook) -> Result<()> {
    for pct in [0, 30, 100] {
        duplicate_case(kind, hook, pct)?;
    }
    Ok(())
}

#[test]
fn duplicate_udp_ipv4_egress() {
    require_root!();
    duplicate_all(AddrKind::V4, Hook::Egress).unwrap();
}

#[test]
fn duplicate_udp_ipv4_ingress() {
    require_root!();
    duplicate_all(AddrKind::V4, Hook::Ingress).unwrap();
}

#[test]
fn duplicate_udp_ipv6_egress() {
    require_root!();
    duplicate_all(AddrKind::V6, Hook::Egress).unwrap();
}

#[test]
fn duplicate_udp_ipv6_ingress() {
    require_root!();
    duplicate_all(AddrKind::V6, Hook::Ingress).unwrap();
}
