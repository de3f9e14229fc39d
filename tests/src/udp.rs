//! Paced UDP sender and counting UDP receiver. Both create their socket in
//! the calling thread's network namespace (call them inside
//! [`NetnsPair::run_in`](crate::NetnsPair::run_in)) and are bounded in count
//! and time.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use serde::{Deserialize, Serialize};

use crate::monotonic_ns;
use crate::netns::{AddrKind, Direction, NetnsPair, Side};
use crate::payload::{self, DEFAULT_LEN, HEADER_LEN, MAX_LEN};
use crate::sockutil::{errno_name, force_rcvbuf, force_sndbuf, is_transient};

/// Receive buffer the sink asks for (SO_RCVBUFFORCE), so the receiver
/// itself does not drop.
pub const SINK_RCVBUF: i32 = 8 << 20;
/// Send buffer the sender asks for.
pub const BLAST_SNDBUF: i32 = 4 << 20;
/// Hard upper bound on any single send run.
pub const MAX_SEND_DURATION: Duration = Duration::from_secs(600);

/// What the sender did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SendStats {
    /// Local address of the sending socket.
    pub local: String,
    /// Destination.
    pub to: String,
    /// Datagrams requested.
    pub count: u64,
    /// `send` calls made.
    pub attempted: u64,
    /// `send` calls that succeeded.
    pub sent: u64,
    /// `send` calls that failed.
    pub errors: u64,
    /// Failures by errno name.
    pub errnos: BTreeMap<String, u64>,
    /// Sequence number of the first datagram; they run `first_seq..first_seq+count`.
    pub first_seq: u64,
    /// Target rate (0 = as fast as possible).
    pub pps: u64,
    /// Payload size in bytes.
    pub payload_len: usize,
    /// CLOCK_MONOTONIC ns of the first and after the last send.
    pub start_ns: u64,
    pub end_ns: u64,
    /// True when the time bound stopped the run before `count`.
    pub timed_out: bool,
}

impl SendStats {
    /// Seconds from first to last send.
    pub fn elapsed_secs(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e9
    }
}

/// Sender options; see [`udp_blast_with`].
#[derive(Clone, Debug)]
pub struct BlastOptions {
    /// Local address to bind (port 0 = any); `None` = unspecified address of
    /// the destination's family, any port.
    pub from: Option<SocketAddr>,
    pub to: SocketAddr,
    pub count: u32,
    /// Datagrams per second; 0 = as fast as possible.
    pub pps: u32,
    /// Payload size, `HEADER_LEN..=MAX_LEN` (default 64).
    pub payload_len: usize,
    /// First sequence number (default 0).
    pub first_seq: u64,
    /// Stop after this long even if `count` is not reached. Default:
    /// twice the paced duration plus 5 s, at most [`MAX_SEND_DURATION`].
    pub max_duration: Option<Duration>,
}

impl BlastOptions {
    /// Options with the defaults for everything but the essentials.
    pub fn new(to: SocketAddr, count: u32, pps: u32) -> BlastOptions {
        BlastOptions {
            from: None,
            to,
            count,
            pps,
            payload_len: DEFAULT_LEN,
            first_seq: 0,
            max_duration: None,
        }
    }

    /// The paced duration `count / pps` (zero when unpaced).
    pub fn paced_duration(&self) -> Duration {
        if self.pps == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(self.count as f64 / self.pps as f64)
        }
    }

    fn effective_max(&self) -> Duration {
        self.max_duration
            .unwrap_or_else(|| self.paced_duration() * 2 + Duration::from_secs(5))
            .min(MAX_SEND_DURATION)
    }
}

fn unspecified_for(addr: &SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// Sends `count` datagrams from `from` (or any local address) to `to` at
/// `pps` per second (0 = unpaced). See [`udp_blast_with`].
pub fn udp_blast(
    from: Option<SocketAddr>,
    to: SocketAddr,
    count: u32,
    pps: u32,
) -> Result<SendStats> {
    let mut o = BlastOptions::new(to, count, pps);
    o.from = from;
    udp_blast_with(&o)
}

/// Sends the datagrams described by `o` from a socket created in the calling
/// thread's network namespace. Paced by a schedule (datagram `i` is due at
/// `start + i/pps`): whatever is due is sent, then the sender sleeps until
/// the next is due, so it goes out in short bursts at the requested average
/// rate. The socket is connected, so ICMP errors show up as send errors
/// (counted, not fatal). Bounded by `count` and by the time limit.
pub fn udp_blast_with(o: &BlastOptions) -> Result<SendStats> {
    ensure!(
        (HEADER_LEN..=MAX_LEN).contains(&o.payload_len),
        "payload_len {} outside {HEADER_LEN}..={MAX_LEN}",
        o.payload_len
    );
    let bind = o.from.unwrap_or_else(|| unspecified_for(&o.to));
    let sock = UdpSocket::bind(bind).with_context(|| format!("binding UDP sender to {bind}"))?;
    let _ = force_sndbuf(sock.as_raw_fd(), BLAST_SNDBUF);
    sock.set_write_timeout(Some(Duration::from_secs(1)))?;
    sock.connect(o.to)
        .with_context(|| format!("connecting UDP sender to {}", o.to))?;
    let max = o.effective_max();
    let mut stats = SendStats {
        local: sock.local_addr()?.to_string(),
        to: o.to.to_string(),
        count: o.count as u64,
        first_seq: o.first_seq,
        pps: o.pps as u64,
        payload_len: o.payload_len,
        ..SendStats::default()
    };
    let mut buf = vec![0u8; o.payload_len];
    let start = Instant::now();
    stats.start_ns = monotonic_ns();
    let mut i: u64 = 0;
    while i < o.count as u64 {
        let elapsed = start.elapsed();
        if elapsed >= max {
            stats.timed_out = true;
            break;
        }
        if o.pps > 0 {
            let due = Duration::from_nanos((i as u128 * 1_000_000_000 / o.pps as u128) as u64);
            if due > elapsed {
                std::thread::sleep((due - elapsed).min(Duration::from_millis(5)));
                continue;
            }
        }
        payload::encode(&mut buf, o.first_seq + i, monotonic_ns());
        stats.attempted += 1;
        match sock.send(&buf) {
            Ok(_) => stats.sent += 1,
            Err(e) => {
                stats.errors += 1;
                *stats.errnos.entry(errno_name(&e)).or_default() += 1;
            }
        }
        i += 1;
    }
    stats.end_ns = monotonic_ns();
    Ok(stats)
}

/// One intact datagram the sink received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RxRecord {
    pub seq: u64,
    /// CLOCK_MONOTONIC ns the sender put in.
    pub send_ns: u64,
    /// CLOCK_MONOTONIC ns when `recv` returned it.
    pub recv_ns: u64,
    /// True when this sequence number had been received before.
    pub dup: bool,
}

/// What the sink saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UdpStats {
    /// Bound address.
    pub local: String,
    /// Every datagram read, of any kind.
    pub received_total: u64,
    /// Distinct intact sequence numbers.
    pub distinct: u64,
    /// Intact datagrams whose sequence number had been seen already.
    pub duplicates: u64,
    /// Datagrams that failed the payload check (magic, length, checksum).
    pub corrupted: u64,
    /// Datagrams from a source port other than the expected one (ignored).
    pub foreign: u64,
    /// Failed `recv` calls (other than timeouts).
    pub recv_errors: u64,
    /// CLOCK_MONOTONIC ns of the first and last datagram read.
    pub first_rx_ns: Option<u64>,
    pub last_rx_ns: Option<u64>,
    /// CLOCK_MONOTONIC ns when the sink started and stopped.
    pub start_ns: u64,
    pub end_ns: u64,
    /// `idle`, `max_total` or `stopped`.
    pub stop_reason: String,
    /// Every intact datagram in arrival order (also duplicates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<RxRecord>,
    /// CLOCK_MONOTONIC receive times of the corrupted datagrams.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrupted_rx_ns: Vec<u64>,
}

impl UdpStats {
    /// Distinct sequence numbers received.
    pub fn seqs(&self) -> HashSet<u64> {
        self.records.iter().map(|r| r.seq).collect()
    }

    /// Sequence numbers in `first..first+count` that never arrived intact.
    pub fn missing(&self, first: u64, count: u64) -> Vec<u64> {
        let seen = self.seqs();
        (first..first + count)
            .filter(|s| !seen.contains(s))
            .collect()
    }

    /// The first intact datagram received at or after `ns` (CLOCK_MONOTONIC).
    pub fn first_received_after(&self, ns: u64) -> Option<&RxRecord> {
        self.records.iter().find(|r| r.recv_ns >= ns)
    }

    /// Intact datagrams received in `[from_ns, to_ns)`.
    pub fn received_between(&self, from_ns: u64, to_ns: u64) -> impl Iterator<Item = &RxRecord> {
        self.records
            .iter()
            .filter(move |r| r.recv_ns >= from_ns && r.recv_ns < to_ns)
    }

    /// Distinct sequence numbers among datagrams sent in `[from_ns, to_ns)`
    /// (by their send timestamp) that arrived.
    pub fn distinct_sent_between(&self, from_ns: u64, to_ns: u64) -> u64 {
        self.records
            .iter()
            .filter(|r| !r.dup && r.send_ns >= from_ns && r.send_ns < to_ns)
            .count() as u64
    }

    /// One-way latencies (receive - send) in ns of the first copy of each
    /// datagram, in arrival order. Both ends read the same CLOCK_MONOTONIC.
    pub fn latencies_ns(&self) -> Vec<u64> {
        self.records
            .iter()
            .filter(|r| !r.dup)
            .map(|r| r.recv_ns.saturating_sub(r.send_ns))
            .collect()
    }

    /// The `q` quantile (0.0..=1.0, nearest rank) of [`latencies_ns`](Self::latencies_ns).
    pub fn latency_quantile_ns(&self, q: f64) -> Option<u64> {
        let mut l = self.latencies_ns();
        if l.is_empty() {
            return None;
        }
        l.sort_unstable();
        let idx = ((q.clamp(0.0, 1.0) * (l.len() - 1) as f64).round()) as usize;
        Some(l[idx])
    }
}

#[derive(Debug, Default)]
struct SinkCtl {
    stop: AtomicBool,
    /// When non-zero: idle limit (ns) after `finish`, replacing the original.
    finish_idle_ns: AtomicU64,
    /// CLOCK_MONOTONIC ns when `finish` was called.
    finish_at_ns: AtomicU64,
}

/// A running UDP receiver; see [`udp_sink`].
#[derive(Debug)]
pub struct UdpSink {
    local: SocketAddr,
    ctl: Arc<SinkCtl>,
    handle: JoinHandle<UdpStats>,
}

impl UdpSink {
    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Tells the sink that the sender is done: it now stops once nothing has
    /// arrived for `idle`, counted from now or from the last datagram,
    /// whichever is later (still bounded by `max_total`).
    pub fn finish(&self, idle: Duration) {
        self.ctl
            .finish_at_ns
            .store(monotonic_ns(), Ordering::SeqCst);
        self.ctl
            .finish_idle_ns
            .store((idle.as_nanos() as u64).max(1), Ordering::SeqCst);
    }

    /// Stops the sink at once (within ~20 ms).
    pub fn stop(&self) {
        self.ctl.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for the sink to stop and returns what it saw.
    pub fn wait(self) -> Result<UdpStats> {
        self.handle
            .join()
            .map_err(|_| anyhow!("UDP sink thread panicked"))
    }

    /// [`finish`](Self::finish) then [`wait`](Self::wait).
    pub fn finish_and_wait(self, idle: Duration) -> Result<UdpStats> {
        self.finish(idle);
        self.wait()
    }

    /// True when the sink has stopped.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// Binds a UDP socket to `bind` in the calling thread's network namespace
/// (SO_RCVBUFFORCE 8 MiB) and starts a thread that reads and checks
/// datagrams until nothing has arrived for `idle_timeout` (counted from the
/// start or the last datagram), or `max_total` has passed, or
/// [`UdpSink::stop`]/[`UdpSink::finish`] say so. The socket is bound when
/// this returns, so a sender may start right away. With `expect_from_port`,
/// datagrams from other source ports are counted as `foreign` and ignored.
pub fn udp_sink(
    bind: SocketAddr,
    expect_from_port: Option<u16>,
    idle_timeout: Duration,
    max_total: Duration,
) -> Result<UdpSink> {
    let sock = UdpSocket::bind(bind).with_context(|| format!("binding UDP sink to {bind}"))?;
    force_rcvbuf(sock.as_raw_fd(), SINK_RCVBUF).context("setting SO_RCVBUF on UDP sink")?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let local = sock.local_addr()?;
    let ctl = Arc::new(SinkCtl::default());
    let ctl2 = ctl.clone();
    let handle = std::thread::Builder::new()
        .name("udp-sink".into())
        .spawn(move || {
            sink_loop(
                sock,
                local,
                expect_from_port,
                idle_timeout,
                max_total,
                &ctl2,
            )
        })
        .context("spawning UDP sink thread")?;
    Ok(UdpSink { local, ctl, handle })
}

fn sink_loop(
    sock: UdpSocket,
    local: SocketAddr,
    expect_from_port: Option<u16>,
    idle_timeout: Duration,
    max_total: Duration,
    ctl: &SinkCtl,
) -> UdpStats {
    let mut stats = UdpStats {
        local: local.to_string(),
        start_ns: monotonic_ns(),
        ..UdpStats::default()
    };
    let idle_ns = idle_timeout.as_nanos() as u64;
    let max_ns = max_total.as_nanos() as u64;
    let mut seen: HashSet<u64> = HashSet::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let now = monotonic_ns();
        if ctl.stop.load(Ordering::SeqCst) {
            stats.stop_reason = "stopped".into();
            break;
        }
        if now.saturating_sub(stats.start_ns) >= max_ns {
            stats.stop_reason = "max_total".into();
            break;
        }
        let last = stats.last_rx_ns.unwrap_or(0).max(stats.start_ns);
        let finish_idle = ctl.finish_idle_ns.load(Ordering::SeqCst);
        let (limit, since) = if finish_idle > 0 {
            (
                finish_idle,
                last.max(ctl.finish_at_ns.load(Ordering::SeqCst)),
            )
        } else {
            (idle_ns, last)
        };
        if now.saturating_sub(since) >= limit {
            stats.stop_reason = "idle".into();
            break;
        }
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let recv_ns = monotonic_ns();
                stats.received_total += 1;
                stats.first_rx_ns.get_or_insert(recv_ns);
                stats.last_rx_ns = Some(recv_ns);
                if let Some(p) = expect_from_port
                    && from.port() != p
                {
                    stats.foreign += 1;
                    continue;
                }
                match payload::decode(&buf[..n]) {
                    Ok(d) => {
                        let dup = !seen.insert(d.seq);
                        if dup {
                            stats.duplicates += 1;
                        } else {
                            stats.distinct += 1;
                        }
                        stats.records.push(RxRecord {
                            seq: d.seq,
                            send_ns: d.send_ns,
                            recv_ns,
                            dup,
                        });
                    }
                    Err(_) => {
                        stats.corrupted += 1;
                        stats.corrupted_rx_ns.push(recv_ns);
                    }
                }
            }
            Err(e) if is_transient(&e) => {}
            Err(_) => {
                stats.recv_errors += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    stats.end_ns = monotonic_ns();
    stats
}

/// Parameters of [`udp_run_with`].
#[derive(Clone, Debug)]
pub struct UdpRun {
    pub dir: Direction,
    pub kind: AddrKind,
    pub dst_port: u16,
    /// Source port (0 = ephemeral).
    pub src_port: u16,
    pub count: u32,
    pub pps: u32,
    pub payload_len: usize,
    /// After the sender is done, the sink stops once nothing has arrived for
    /// this long (default 500 ms; raise it for delay faults).
    pub drain: Duration,
}

impl UdpRun {
    /// Defaults: ephemeral source port, 64-byte payload, 500 ms drain.
    pub fn new(dir: Direction, kind: AddrKind, dst_port: u16, count: u32, pps: u32) -> UdpRun {
        UdpRun {
            dir,
            kind,
            dst_port,
            src_port: 0,
            count,
            pps,
            payload_len: DEFAULT_LEN,
            drain: Duration::from_millis(500),
        }
    }
}

/// Starts a sink on the receiving side's `kind` address and `dst_port`,
/// sends `count` datagrams at `pps` from the sending side's address of the
/// same kind, waits for the sink to go idle, and returns both results.
pub fn udp_run(
    pair: &NetnsPair,
    dir: Direction,
    kind: AddrKind,
    dst_port: u16,
    count: u32,
    pps: u32,
) -> Result<(SendStats, UdpStats)> {
    udp_run_with(pair, &UdpRun::new(dir, kind, dst_port, count, pps))
}

/// [`udp_run`] with every parameter.
pub fn udp_run_with(pair: &NetnsPair, r: &UdpRun) -> Result<(SendStats, UdpStats)> {
    let dst = pair.sockaddr(r.dir.dst(), r.kind, r.dst_port);
    let src = pair.sockaddr(r.dir.src(), r.kind, r.src_port);
    let mut o = BlastOptions::new(dst, r.count, r.pps);
    o.from = Some(src);
    o.payload_len = r.payload_len;
    let send_max = o.effective_max();
    // The sink outlives the sender: the sender's bound plus the drain.
    let sink_max = send_max + r.drain + Duration::from_secs(5);
    let sink = pair.run_in(r.dir.dst(), || udp_sink(dst, None, sink_max, sink_max))??;
    o.to = sink.local_addr();
    let sent = pair.run_in(r.dir.src(), || udp_blast_with(&o));
    let sent = match sent {
        Ok(Ok(s)) => s,
        Ok(Err(e)) | Err(e) => {
            sink.stop();
            let _ = sink.wait();
            return Err(e);
        }
    };
    let got = sink.finish_and_wait(r.drain)?;
    Ok((sent, got))
}

/// Sends a steady stream from side A to B's IPv4 address and `port`, `pps`
/// datagrams a second for `secs` seconds, while `during` runs on the
/// calling thread (applying or reverting a fault meanwhile); returns what
/// was sent and, once the sink has been idle for 300 ms, what arrived.
pub fn stream_while(
    pair: &NetnsPair,
    port: u16,
    pps: u32,
    secs: f64,
    during: impl FnOnce(),
) -> Result<(SendStats, UdpStats)> {
    let to = pair.sockaddr(Side::B, AddrKind::V4, port);
    let bound = Duration::from_secs_f64(secs + 5.0);
    let sink = pair.run_in_b(|| udp_sink(to, None, bound, bound))??;
    let mut o = BlastOptions::new(sink.local_addr(), (f64::from(pps) * secs) as u32, pps);
    o.from = Some(pair.sockaddr(Side::A, AddrKind::V4, 0));
    let sender = pair.spawn_in(Side::A, move || udp_blast_with(&o))?;
    during();
    let sent = sender.join()??;
    let got = sink.finish_and_wait(Duration::from_millis(300))?;
    Ok((sent, got))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_blast_and_sink() {
        let sink = udp_sink(
            "127.0.0.1:0".parse().unwrap(),
            None,
            Duration::from_secs(5),
            Duration::from_secs(10),
        )
        .unwrap();
        let s = udp_blast(None, sink.local_addr(), 500, 50_000).unwrap();
        assert_eq!(s.sent, 500);
        let r = sink.finish_and_wait(Duration::from_millis(200)).unwrap();
        assert_eq!(r.distinct, 500, "{r:?}");
        assert_eq!(r.duplicates + r.corrupted + r.foreign, 0);
        assert!(r.missing(0, 500).is_empty());
        assert!(r.first_received_after(s.start_ns).is_some());
        assert_eq!(r.stop_reason, "idle");
        assert!(r.latency_quantile_ns(0.5).is_some());
    }

    #[test]
    fn pacing_takes_about_the_right_time() {
        let sink = udp_sink(
            "127.0.0.1:0".parse().unwrap(),
            None,
            Duration::from_secs(5),
            Duration::from_secs(10),
        )
        .unwrap();
        // 200 datagrams at 1000 pps: ~200 ms.
        let s = udp_blast(None, sink.local_addr(), 200, 1000).unwrap();
        let secs = s.elapsed_secs();
        assert!((0.15..1.5).contains(&secs), "took {secs}s");
        sink.stop();
        let r = sink.wait().unwrap();
        assert_eq!(r.stop_reason, "stopped");
    }

    #[test]
    fn sink_counts_corrupt_dup_and_foreign() {
        let sink = udp_sink(
            "127.0.0.1:0".parse().unwrap(),
            None,
            Duration::from_secs(5),
            Duration::from_secs(10),
        )
        .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let good = payload::encode_vec(64, 7, monotonic_ns());
        tx.send_to(&good, sink.local_addr()).unwrap();
        tx.send_to(&good, sink.local_addr()).unwrap();
        let mut bad = good.clone();
        bad[40] ^= 1;
        tx.send_to(&bad, sink.local_addr()).unwrap();
        let r = sink.finish_and_wait(Duration::from_millis(200)).unwrap();
        assert_eq!((r.distinct, r.duplicates, r.corrupted), (1, 1, 1));
        assert_eq!(r.corrupted_rx_ns.len(), 1);

        let sink = udp_sink(
            "127.0.0.1:0".parse().unwrap(),
            Some(1),
            Duration::from_secs(5),
            Duration::from_secs(10),
        )
        .unwrap();
        tx.send_to(&good, sink.local_addr()).unwrap();
        let r = sink.finish_and_wait(Duration::from_millis(200)).unwrap();
        assert_eq!((r.foreign, r.distinct), (1, 0));
    }

    #[test]
    fn sink_idle_timeout_without_traffic() {
        let t = Instant::now();
        let sink = udp_sink(
            "127.0.0.1:0".parse().unwrap(),
            None,
            Duration::from_millis(100),
            Duration::from_secs(10),
        )
        .unwrap();
        let r = sink.wait().unwrap();
        assert_eq!(r.stop_reason, "idle");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn json_roundtrip() {
        let s = SendStats {
            sent: 3,
            ..SendStats::default()
        };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SendStats>(&j).unwrap(), s);
        let u = UdpStats::default();
        let j = serde_json::to_string(&u).unwrap();
        assert!(!j.contains("records"));
        assert_eq!(serde_json::from_str::<UdpStats>(&j).unwrap(), u);
    }
}
