//! Delay, jitter and bandwidth as real packets show them: the RTT a UDP
//! echo measures with the fault minus the RTT without it, the spread of
//! that added delay under jitter, the rate a TCP transfer gets through a
//! bandwidth limit, the qdiscs before, during and after (also after a
//! SIGKILL), and ingress delay through the ifb device. Side by side with
//! netem where that is meaningful, printed as `figure: ` lines that
//! `cargo xtask bench --vm` collects.
//!
//! Every test needs the fq qdisc. Where the kernel has none (the
//! development host) each one prints `skipped: ...CONFIG_NET_SCH_FQ...`;
//! the VM matrix runs them (`./x vm-test --kernel debian-6.12 --filter
//! delay`). That the agent then refuses with exit 3 and attaches nothing
//! is tested in cli.rs (`delay_and_bandwidth_refuse_cleanly`).
//!
//! All test names start with `delay` so that one filter selects them.

mod common;

use std::time::Duration;

use anyhow::Result;
use chaos_tests::{
    AddrKind, Direction, NetnsPair, RootQdisc, RttOptions, RttRun, Side, TcpOptions, ifindex,
    link_names, mean_sd, qdisc_kind_available, qdisc_show, quantile, require_root, rtt_between,
    rx_bytes, snmp_counters, tcp_transfer,
};
use common::{Blast, fault_counters};

/// The echo server's port, which the faults target.
const PORT: u16 = 7200;
/// Echo probes per measurement and their rate: 300 at 100/s is 3 s, and
/// a p99 of 300 samples is the third-largest. Both ends run on one CPU
/// (`RttOptions::one_cpu`): in the emulated VM a wake-up across CPUs takes
/// milliseconds, a noise larger than the figures.
const PROBES: u32 = 300;
const PROBE_PPS: u32 = 100;

/// True under an emulated CPU (the VM runner sets CHAOS_TEST_EMULATED):
/// qemu TCG on a shared host, where a virtual CPU now and then stalls for
/// milliseconds to tens of milliseconds. The tail checks widen there, and
/// say so; the medians, the bounds on the early side and losses do not.
fn emulated() -> bool {
    std::env::var_os("CHAOS_TEST_EMULATED").is_some()
}

/// How far the median added delay may be from the latency: max(2 %,
/// 200 µs), and under emulation max(2 %, 600 µs): in the Debian VMs the
/// median excess at 20 ms was +0.19 to +0.37 ms for netem and +0.27 to
/// +0.45 ms for ours (a timer and a softirq more per packet, each slow on
/// an emulated CPU).
fn p50_tolerance(latency_ms: f64) -> f64 {
    let floor = if emulated() { 0.6 } else { 0.2 };
    let tol = (0.02 * latency_ms).max(floor);
    if emulated() {
        println!("median tolerance {tol:.2} ms: emulated CPU (200 µs floor on real CPUs)");
    }
    tol
}

/// A timing bound that an emulated CPU's stalls break (a virtual CPU of a
/// busy host stops now and then for 5 to 60 ms, which netem's tail shows
/// as much as ours: debian-6.12 at 20 ms gave a p99 of 26.4 ms ours, 25.3
/// ms netem; at 100 ms 105.1 and 161.0). On a real CPU it is asserted;
/// under emulation it becomes a `figure:` line with the bound and whether
/// it was met, which `./x bench --vm` puts in docs/benchmarks.md (that is
/// where these bounds are followed, next to netem's figure of the same
/// run where there is one).
fn timing_bound(what: &str, value: f64, target: f64, tol: f64, netem: Option<f64>) {
    let met = (value - target).abs() <= tol;
    if emulated() {
        let netem = netem.map_or(String::new(), |n| format!("; netem {n:.3} ms"));
        println!(
            "figure: target on real CPUs, {what}: {value:.3} ms, bound {target:.3} ms ± {tol:.3} ms: {}{netem} (emulated CPU)",
            if met { "met" } else { "not met" }
        );
        return;
    }
    assert!(
        met,
        "{what} {value:.3} ms, expected {target:.3} ms ± {tol:.3} ms"
    );
}

/// The p99 added delay within 5 % of the latency (see [`timing_bound`]).
fn check_p99(latency: &str, p99: f64, latency_ms: f64, netem: Option<f64>) {
    timing_bound(
        &format!("p99 added delay for {latency}"),
        p99,
        latency_ms,
        0.05 * latency_ms,
        netem,
    );
}

/// True when the kernel has fq; otherwise prints the `skipped:` line.
fn have_fq(pair: &NetnsPair) -> bool {
    match qdisc_kind_available(pair.ns_a(), "fq") {
        Ok(()) => true,
        Err(why) => {
            println!(
                "skipped: delay and bandwidth need the fq qdisc (CONFIG_NET_SCH_FQ), which this kernel lacks: {why}"
            );
            false
        }
    }
}

/// Starts a blast on `side`'s veth in `direction` for `proto` to PORT,
/// with the action `action` (e.g. `["--delay", "20ms"]`).
fn blast(
    pair: &NetnsPair,
    side: Side,
    direction: &str,
    proto: &str,
    action: &[&str],
) -> Result<Blast> {
    let port = PORT.to_string();
    let mut args = vec![
        "net",
        "--netns",
        pair.ns(side),
        "--iface",
        pair.iface(side),
        "--direction",
        direction,
        "--proto",
        proto,
        "--dport",
        &port,
    ];
    args.extend_from_slice(action);
    args.extend_from_slice(&["--duration", "300s"]);
    Blast::start(&args)
}

fn ms(ns: f64) -> f64 {
    ns / 1e6
}

/// The delay each echo got on top of the path's own RTT: its RTT minus
/// the median RTT of `baseline`, in ns (negative when a packet was faster
/// than the baseline median).
fn added_ns(run: &RttRun, baseline: &RttRun) -> Vec<f64> {
    let base = quantile(&baseline.rtts_ns(), 0.5).expect("baseline echoes") as f64;
    run.rtts_ns().iter().map(|&r| r as f64 - base).collect()
}

/// Nearest-rank quantile of signed values.
fn quantile_f(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[(q * (v.len() - 1) as f64).round() as usize]
}

/// An RTT measurement from a to b with nothing configured.
fn baseline(pair: &NetnsPair, o: &RttOptions) -> RttRun {
    let run = rtt_between(pair, AddrKind::V4, PORT, o).unwrap();
    assert_eq!(run.lost(), 0, "the unfaulted path lost echoes: {run:?}");
    run
}

/// Added delay of one measurement (p50, p99), the baseline it was
/// measured against (p50, p99) and the smallest RTT under the fault, in ms.
struct Added {
    p50: f64,
    p99: f64,
    base_p50: f64,
    base_p99: f64,
    min_rtt: f64,
}

fn added(run: &RttRun, baseline: &RttRun) -> Added {
    let a = added_ns(run, baseline);
    let b = baseline.rtts_ns();
    let q = |v: &[u64], q| ms(quantile(v, q).expect("echoes") as f64);
    Added {
        p50: ms(quantile_f(&a, 0.5)),
        p99: ms(quantile_f(&a, 0.99)),
        base_p50: q(&b, 0.5),
        base_p99: q(&b, 0.99),
        min_rtt: q(&run.rtts_ns(), 0.0),
    }
}

/// The same delay through our fault and through netem, each against a
/// baseline measured just before it. Returns (ours, netem).
fn ours_and_netem(pair: &NetnsPair, latency: &str) -> (Added, Option<Added>) {
    let o = RttOptions::new(PROBES, PROBE_PPS).one_cpu();
    let base = baseline(pair, &o);
    let agent = blast(pair, Side::A, "egress", "udp", &["--delay", latency]).unwrap();
    let run = rtt_between(pair, AddrKind::V4, PORT, &o).unwrap();
    let (status, reverted) = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}");
    assert_eq!(run.lost(), 0, "echoes lost under {latency} delay: {run:?}");
    let (matched, injected, _) = fault_counters(&reverted);
    assert_eq!(
        (matched, injected),
        (run.sent, run.sent),
        "every probe matched and was delayed"
    );
    let ours = added(&run, &base);

    let netem = match qdisc_kind_available(pair.ns_a(), "netem") {
        Ok(()) => {
            let base = baseline(pair, &o);
            let q = RootQdisc::add(pair.ns_a(), pair.if_a(), &["netem", "delay", latency]).unwrap();
            let run = rtt_between(pair, AddrKind::V4, PORT, &o).unwrap();
            drop(q);
            Some(added(&run, &base))
        }
        Err(why) => {
            println!("netem unavailable ({why}): no comparison");
            None
        }
    };
    (ours, netem)
}

fn figure_vs_netem(latency: &str, ours: &Added, netem: &Option<Added>) {
    let (n50, n99, nbase) = match netem {
        Some(n) => (
            format!("{:.3} ms", n.p50),
            format!("{:.3} ms", n.p99),
            format!("{:.3}/{:.3}", n.base_p50, n.base_p99),
        ),
        None => ("n/a".into(), "n/a".into(), "n/a".into()),
    };
    println!(
        "figure: delay {latency} egress, RTT added over the unfaulted median ({PROBES} UDP echoes at {PROBE_PPS}/s): p50 ours {:.3} ms netem {n50}; p99 ours {:.3} ms netem {n99} (unfaulted RTT p50/p99 before ours {:.3}/{:.3} ms, before netem {nbase} ms)",
        ours.p50, ours.p99, ours.base_p50, ours.base_p99
    );
}

/// Median added delay within max(2 %, 200 µs) of the latency, p99 within
/// 5 % (see [`check_p99`] and [`p50_tolerance`] for the emulated VM), and
/// no echo sooner than the latency.
fn egress_delay_case(latency_ms: f64) {
    let pair = NetnsPair::new("delay").unwrap();
    if !have_fq(&pair) {
        return;
    }
    let latency = format!("{latency_ms}ms");
    let (ours, netem) = ours_and_netem(&pair, &latency);
    figure_vs_netem(&latency, &ours, &netem);
    // fq never releases a packet before its departure time.
    assert!(
        ours.min_rtt >= latency_ms,
        "an echo came back after {:.3} ms, sooner than the {latency} delay",
        ours.min_rtt
    );
    let tol50 = p50_tolerance(latency_ms);
    assert!(
        (ours.p50 - latency_ms).abs() <= tol50,
        "median added delay {:.3} ms, configured {latency}, tolerance {tol50} ms",
        ours.p50
    );
    check_p99(
        &format!("{latency} egress"),
        ours.p99,
        latency_ms,
        netem.as_ref().map(|n| n.p99),
    );
}

#[test]
fn delay_egress_20ms() {
    require_root!();
    egress_delay_case(20.0);
}

#[test]
fn delay_egress_100ms() {
    require_root!();
    egress_delay_case(100.0);
}

/// 1 ms is of the order of the emulated VM's own RTT noise: a figure, and
/// only the check that the delay is there and not wildly more.
#[test]
fn delay_egress_1ms() {
    require_root!();
    let pair = NetnsPair::new("delay1").unwrap();
    if !have_fq(&pair) {
        return;
    }
    let (ours, netem) = ours_and_netem(&pair, "1ms");
    figure_vs_netem("1ms", &ours, &netem);
    assert!(
        ours.min_rtt >= 1.0,
        "an echo came back after {:.3} ms",
        ours.min_rtt
    );
    assert!(
        (0.8..=2.0).contains(&ours.p50),
        "median added delay {:.3} ms for 1ms",
        ours.p50
    );
}

/// 5,000 echoes per second for 2 s through a 100 ms delay: 500 packets
/// wait in the qdisc at any time. Nothing may be lost on our path; netem
/// (default limit 1000 packets) is measured in the same run.
#[test]
fn delay_5kpps_at_100ms_loses_nothing() {
    require_root!();
    let pair = NetnsPair::new("delay5k").unwrap();
    if !have_fq(&pair) {
        return;
    }
    // Not pinned to one CPU: 10,000 packets a second on one emulated CPU
    // queue up behind each other; this test is about losses.
    let o = RttOptions::new(10_000, 5_000).drain(Duration::from_secs(2));
    let base = rtt_between(&pair, AddrKind::V4, PORT, &o).unwrap();
    let agent = blast(&pair, Side::A, "egress", "udp", &["--delay", "100ms"]).unwrap();
    let drops_before = drop_counters(&pair);
    let ours = rtt_between(&pair, AddrKind::V4, PORT, &o).unwrap();
    let drops = drop_counters(&pair) - drops_before;
    let (status, reverted) = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}");
    let netem = match qdisc_kind_available(pair.ns_a(), "netem") {
        Ok(()) => {
            let q = RootQdisc::add(pair.ns_a(), pair.if_a(), &["netem", "delay", "100ms"]).unwrap();
            let run = rtt_between(&pair, AddrKind::V4, PORT, &o).unwrap();
            drop(q);
            format!("netem {} of {}", run.lost(), run.sent)
        }
        Err(why) => format!("netem unavailable ({why})"),
    };
    let a = added(&ours, &base);
    println!(
        "figure: 5kpps at 100ms (UDP echoes, 10,000 requested, rate achieved {:.0}/s; unfaulted {:.0}/s with {} lost) lost ours {} of {}, {netem}; ours added p50 {:.3} ms p99 {:.3} ms; during ours {drops}",
        ours.achieved_pps(),
        base.achieved_pps(),
        base.lost(),
        ours.lost(),
        ours.sent,
        a.p50,
        a.p99
    );
    let (_, injected, _) = fault_counters(&reverted);
    assert_eq!(injected, ours.sent, "every request was delayed");
    assert_eq!(
        ours.lost(),
        0,
        "echoes lost through the 100 ms delay (baseline lost {})",
        base.lost()
    );
    // 10,000 packets a second through one emulated CPU queue up behind
    // each other (the VM measured a median of 108 ms).
    timing_bound("median added delay at 5 kpps", a.p50, 100.0, 2.0, None);
}

/// Where a lost packet can have gone, summed: the CPUs' input backlogs
/// (`/proc/net/softnet_stat`, second column: netdev_max_backlog
/// exceeded) and both namespaces' UDP receive buffers.
#[derive(Clone, Copy, Debug, Default)]
struct Drops {
    backlog: u64,
    udp_rcvbuf: u64,
}

impl std::ops::Sub for Drops {
    type Output = Drops;
    fn sub(self, o: Drops) -> Drops {
        Drops {
            backlog: self.backlog.saturating_sub(o.backlog),
            udp_rcvbuf: self.udp_rcvbuf.saturating_sub(o.udp_rcvbuf),
        }
    }
}

impl std::fmt::Display for Drops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} backlog drops, {} UDP receive buffer drops",
            self.backlog, self.udp_rcvbuf
        )
    }
}

fn drop_counters(pair: &NetnsPair) -> Drops {
    let backlog = std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|c| u64::from_str_radix(c, 16).ok())
        .sum();
    let udp_rcvbuf = [Side::A, Side::B]
        .iter()
        .filter_map(|&side| snmp_counters(pair.ns(side)).ok())
        .filter_map(|m| m.get("Udp.RcvbufErrors").copied())
        .map(|v| v.max(0) as u64)
        .sum();
    Drops {
        backlog,
        udp_rcvbuf,
    }
}

/// delay 50ms jitter 10ms: each packet gets 50 ms plus a uniform offset
/// in [-10, +10] ms. The added delay's range, mean and standard deviation
/// (10/√3 = 5.77 ms for a uniform), and packets overtaking each other.
#[test]
fn delay_jitter_spread() {
    require_root!();
    let pair = NetnsPair::new("jitter").unwrap();
    if !have_fq(&pair) {
        return;
    }
    // 600 probes at 200/s: 5 ms apart, well inside the 20 ms window, so
    // jitter must reorder them.
    let o = RttOptions::new(600, 200).one_cpu();
    let base = baseline(&pair, &o);
    let agent = blast(
        &pair,
        Side::A,
        "egress",
        "udp",
        &["--delay", "50ms", "--jitter", "10ms"],
    )
    .unwrap();
    let run = rtt_between(&pair, AddrKind::V4, PORT, &o).unwrap();
    let (status, reverted) = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}");
    assert_eq!(run.lost(), 0, "echoes lost under jitter: {run:?}");
    let (_, injected, _) = fault_counters(&reverted);
    assert_eq!(injected, run.sent);

    let a: Vec<f64> = added_ns(&run, &base).into_iter().map(ms).collect();
    let (mean, sd) = mean_sd(&a).unwrap();
    let q = |p| quantile_f(&a, p);
    let (min, p99, max) = (q(0.0), q(0.99), q(1.0));
    // For a uniform distribution the interquartile range is σ·√3: an
    // estimate of σ that a few stalled packets cannot move.
    let iqr_sd = (q(0.75) - q(0.25)) / 3f64.sqrt();
    let b: Vec<f64> = base.rtts_ns().iter().map(|&r| ms(r as f64)).collect();
    let (b_min, b_med, b_max) = (
        quantile_f(&b, 0.0),
        quantile_f(&b, 0.5),
        quantile_f(&b, 1.0),
    );
    let (_, b_sd) = mean_sd(&b).unwrap();
    let expected_sd = (10.0f64.powi(2) / 3.0 + b_sd.powi(2)).sqrt();
    let high = 60.0 + (b_max - b_med) + 1.0;
    let above = a.iter().filter(|&&v| v > high).count();
    println!(
        "figure: jitter 50ms±10ms, RTT added over the unfaulted median ({} UDP echoes at 200/s; unfaulted RTT sd {b_sd:.3} ms): min {min:.2} ms p99 {p99:.2} ms max {max:.2} ms ({above} above {high:.2}) median {:.2} ms mean {mean:.2} ms sd {sd:.2} ms, from the quartiles {iqr_sd:.2} ms (uniform: {expected_sd:.2} ms); {} of {} arrived after a later-sent one",
        a.len(),
        q(0.5),
        run.reordered(),
        run.sent
    );
    // A packet's added delay is its offset plus its own path time minus
    // the baseline median: the path time seen in the baseline bounds that
    // part (plus 0.2 ms on the early side, 1 ms on the late side).
    assert!(
        min >= 40.0 - (b_med - b_min) - 0.2,
        "min added {min:.3} ms below 40 ms (baseline min {b_min:.3}, median {b_med:.3})"
    );
    // Under emulation a stalled virtual CPU delays a few packets by up to
    // tens of ms (seen: 1 to 12 of 600, i.e. up to 2 %): there the p95
    // must keep the bound.
    let (top, what) = if emulated() {
        (q(0.95), "p95")
    } else {
        (max, "max")
    };
    assert!(
        top <= high,
        "{what} added {top:.3} ms above 60 ms (baseline median {b_med:.3}, max {b_max:.3})"
    );
    // The sample median of 600 uniform offsets on a 20 ms range has a
    // standard error of 20·√(1/4/600) = 0.41 ms: 1.5 ms is more than three
    // of them. The mean (standard error 0.24 ms) within 1 ms, where no
    // stall drags it.
    // Under emulation the median also carries the emulated CPU's excess
    // per packet (up to 0.6 ms, as in `p50_tolerance`; debian-6.12-arm64
    // once gave 51.54 ms).
    let median = q(0.5);
    let median_tol = if emulated() {
        println!("jitter median tolerance 2.1 ms: emulated CPU (1.5 ms on real CPUs)");
        2.1
    } else {
        1.5
    };
    assert!(
        (median - 50.0).abs() <= median_tol,
        "median added {median:.3} ms"
    );
    timing_bound("jitter 50ms±10ms mean added delay", mean, 50.0, 1.0, None);
    // Each sample quartile of 600 uniform values on a 20 ms range has a
    // standard error of 20·√(3/16/600) = 0.35 ms; the IQR's is at most
    // twice that, 0.7 ms or 7 % of the 10 ms IQR. 15 % is two of them.
    assert!(
        (iqr_sd - expected_sd).abs() <= 0.15 * expected_sd,
        "sd from the quartiles {iqr_sd:.3} ms, expected {expected_sd:.3} ms ± 15 %"
    );
    // The plain standard deviation (standard error σ·√(0.2/n), 1.8 % at
    // n = 600, since a uniform's fourth moment is 9σ⁴/5) within 10 %,
    // where no stall inflates it.
    timing_bound(
        "jitter 50ms±10ms standard deviation",
        sd,
        expected_sd,
        0.1 * expected_sd,
        None,
    );
    assert!(
        run.reordered() > 0,
        "jitter of ±10 ms reordered none of the packets sent 5 ms apart"
    );
}

/// A TCP transfer a -> b through `--rate`, measured at b: the bytes that
/// crossed the veth per second (b's rx_bytes, which on a veth is the sum
/// of skb->len of what a sent, Ethernet header included: the length the
/// pacing counts) within 5 % of the rate; the goodput (payload bytes the
/// receiver read per second) between the rate less the headers of
/// single-segment frames (1448 of 1514 bytes) and the rate.
fn bandwidth_case(rate: &str, bits_per_sec: f64, bytes: u64) {
    let pair = NetnsPair::new("rate").unwrap();
    if !have_fq(&pair) {
        return;
    }
    let agent = blast(&pair, Side::A, "egress", "tcp", &["--rate", rate]).unwrap();
    let rx_before = rx_bytes(pair.ns_b(), pair.if_b()).unwrap();
    let t = tcp_transfer(
        &pair,
        Direction::AtoB,
        AddrKind::V4,
        PORT,
        &TcpOptions {
            bytes,
            max_time: Duration::from_secs(60),
            ..TcpOptions::default()
        },
    )
    .unwrap();
    let rx_after = rx_bytes(pair.ns_b(), pair.if_b()).unwrap();
    let (status, reverted) = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}");
    assert!(t.complete(bytes), "transfer incomplete: {t:?}");
    // From the sender's first write (after the paced handshake) to the
    // receiver's last byte: a link of the rate delivers the last byte
    // total / rate after the first one was sent. (Timed from the receiver's
    // first byte instead, the first packet's own transmission time would be
    // left out: one 64 KiB GSO packet is 5 % of a 3 s transfer at 1 Mbit/s.)
    let first_write = t.send.start_ns + t.send.connect_ns;
    let secs = t.recv.last_byte_ns.unwrap().saturating_sub(first_write) as f64 / 1e9;
    let wire = (rx_after - rx_before) as f64 * 8.0 / secs;
    let goodput = t.recv.bytes as f64 * 8.0 / secs;
    let (_, injected, _) = fault_counters(&reverted);
    println!(
        "figure: bandwidth {rate} (TCP, {bytes} bytes in {secs:.2} s): veth bytes {:.3} Mbit/s ({:+.1} % of the rate), goodput {:.3} Mbit/s; {injected} packets shaped",
        wire / 1e6,
        100.0 * (wire - bits_per_sec) / bits_per_sec,
        goodput / 1e6
    );
    assert!(injected > 0, "no packet counted as shaped");
    assert!(
        (wire - bits_per_sec).abs() <= 0.05 * bits_per_sec,
        "veth byte rate {wire:.0} bit/s vs {rate}"
    );
    let floor = 0.95 * bits_per_sec * 1448.0 / 1514.0;
    assert!(
        goodput >= floor && goodput <= 1.05 * bits_per_sec,
        "goodput {goodput:.0} bit/s outside [{floor:.0}, {:.0}] for {rate}",
        1.05 * bits_per_sec
    );
}

#[test]
fn delay_bandwidth_1mbit() {
    require_root!();
    // 3 s at 1 Mbit/s.
    bandwidth_case("1mbit", 1e6, 375_000);
}

#[test]
fn delay_bandwidth_10mbit() {
    require_root!();
    // 3 s at 10 Mbit/s.
    bandwidth_case("10mbit", 10e6, 3_750_000);
}

/// `tc -d qdisc show` of a's veth: the kernel default before, fq `ca05:`
/// during a delay fault, the very same listing after it is reverted. After
/// a SIGKILL the fq stays; the next blast in the namespace removes it.
#[test]
fn delay_qdisc_restored_after_revert_and_sigkill() {
    require_root!();
    let pair = NetnsPair::new("delayq").unwrap();
    if !have_fq(&pair) {
        return;
    }
    let (ns, iface) = (pair.ns_a(), pair.if_a());
    let before = qdisc_show(ns, iface).unwrap();
    assert!(!before.contains("fq"), "{before}");

    let agent = blast(&pair, Side::A, "egress", "udp", &["--delay", "20ms"]).unwrap();
    let during = qdisc_show(ns, iface).unwrap();
    let (status, _) = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}");
    for part in ["qdisc fq ca05: root", "limit 100000p", "flow_limit 10000p"] {
        assert!(
            during.contains(part),
            "no {part:?} during the fault:\n{during}"
        );
    }
    let after = qdisc_show(ns, iface).unwrap();
    assert_eq!(after, before, "qdiscs after revert differ from before");

    let agent = blast(&pair, Side::A, "egress", "udp", &["--delay", "20ms"]).unwrap();
    agent.signal(libc::SIGKILL);
    let (status, _) = agent.finish(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), None, "killed by a signal: {status}");
    let killed = qdisc_show(ns, iface).unwrap();
    assert!(
        killed.contains("qdisc fq ca05: root"),
        "fq gone after SIGKILL:\n{killed}"
    );

    let agent = blast(&pair, Side::A, "egress", "udp", &["--loss", "1"]).unwrap();
    let cleaned = qdisc_show(ns, iface).unwrap();
    let (status, _) = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}");
    assert!(
        !cleaned.contains("fq ca05:"),
        "the next blast left the killed one's fq:\n{cleaned}"
    );
    let last = qdisc_show(ns, iface).unwrap();
    assert_eq!(last, before, "qdiscs after the cleanup differ from before");
}

/// Ingress delay on b's veth: packets a sends are redirected through
/// `chaosifb<ifindex of veth-b>` and delayed there; the echo RTT grows by
/// the latency; the ifb is gone and b's qdiscs are as before afterwards.
#[test]
fn delay_ingress_via_ifb() {
    require_root!();
    let pair = NetnsPair::new("delayifb").unwrap();
    if !have_fq(&pair) {
        return;
    }
    let (ns, iface) = (pair.ns_b(), pair.if_b());
    let ifb = format!("chaosifb{}", ifindex(ns, iface).unwrap());
    let qdiscs_before = qdisc_show(ns, iface).unwrap();
    if !chaos_tests::kernel_at_least(6, 4) {
        // Before 6.4 ifb drops what BPF redirects to it: the agent must
        // refuse, naming the version, and make nothing.
        let (code, _, stderr) = common::agent_output(&[
            "blast",
            "net",
            "--netns",
            ns,
            "--iface",
            iface,
            "--direction",
            "ingress",
            "--delay",
            "20ms",
            "--duration",
            "5s",
        ])
        .unwrap();
        assert_eq!(code, 3, "stderr:\n{stderr}");
        assert!(stderr.contains("Linux 6.4"), "{stderr}");
        assert!(
            !link_names(ns)
                .unwrap()
                .iter()
                .any(|l| l.starts_with("chaosifb")),
            "an ifb was made"
        );
        assert_eq!(qdisc_show(ns, iface).unwrap(), qdiscs_before);
        println!("this kernel predates 6.4: ingress delay was refused with exit 3, as it must be");
        return;
    }
    let o = RttOptions::new(PROBES, PROBE_PPS).one_cpu();
    let base = baseline(&pair, &o);
    let agent = blast(&pair, Side::B, "ingress", "udp", &["--delay", "20ms"]).unwrap();
    let links = link_names(ns).unwrap();
    let run = rtt_between(&pair, AddrKind::V4, PORT, &o).unwrap();
    let (status, reverted) = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}");
    assert!(links.contains(&ifb), "no {ifb} during the fault: {links:?}");
    let links_after = link_names(ns).unwrap();
    assert!(
        !links_after.iter().any(|l| l.starts_with("chaosifb")),
        "ifb left after revert: {links_after:?}"
    );
    assert_eq!(qdisc_show(ns, iface).unwrap(), qdiscs_before);
    assert_eq!(run.lost(), 0, "echoes lost under ingress delay: {run:?}");
    let (_, injected, _) = fault_counters(&reverted);
    assert_eq!(injected, run.sent, "every request was delayed");
    let a = added(&run, &base);
    println!(
        "figure: delay 20ms ingress via ifb, RTT added over the unfaulted median ({PROBES} UDP echoes at {PROBE_PPS}/s): p50 {:.3} ms p99 {:.3} ms (unfaulted RTT p50/p99 {:.3}/{:.3} ms)",
        a.p50, a.p99, a.base_p50, a.base_p99
    );
    assert!(
        a.min_rtt >= 20.0,
        "an echo came back after {:.3} ms",
        a.min_rtt
    );
    let tol50 = p50_tolerance(20.0);
    assert!(
        (a.p50 - 20.0).abs() <= tol50,
        "median added delay {:.3} ms, configured 20ms, tolerance {tol50:.2} ms",
        a.p50
    );
    check_p99("20ms ingress", a.p99, 20.0, None);
}
