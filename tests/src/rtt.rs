//! Round-trip times over UDP: an echo server in one namespace, a paced
//! client in the other that sends numbered, timestamped datagrams and
//! times each echo. Delay faults are measured with it: the RTT under a
//! fault minus the RTT without one is the delay the packets really got.
//!
//! Both ends are bounded in count and in time, and only ever talk to the
//! addresses they are given.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};

use crate::monotonic_ns;
use crate::netns::{AddrKind, NetnsPair, Side};
use crate::payload::{self, HEADER_LEN, MAX_LEN};
use crate::sockutil::{force_rcvbuf, force_sndbuf};

/// Socket buffers of both ends: large enough that neither end drops at
/// the rates the tests use (5,000 datagrams per second queued for 100 ms).
const SOCK_BUF: i32 = 8 << 20;

/// A running UDP echo server; see [`echo_server`].
#[derive(Debug)]
pub struct EchoServer {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// The bound address (with the real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Datagrams sent back so far.
    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::SeqCst)
    }
}

impl Drop for EchoServer {
    /// Stops the server (within ~20 ms) and waits for its thread.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Binds a UDP socket to `bind` in the calling thread's network namespace
/// and starts a thread that sends every datagram back to where it came
/// from, unchanged, until the server is dropped or `max_total` has passed.
/// With `cpu` the thread runs on that CPU only (see [`RttOptions::cpu`]).
pub fn echo_server(
    bind: SocketAddr,
    max_total: Duration,
    cpu: Option<usize>,
) -> Result<EchoServer> {
    let sock = UdpSocket::bind(bind).with_context(|| format!("binding UDP echo to {bind}"))?;
    force_rcvbuf(sock.as_raw_fd(), SOCK_BUF).context("SO_RCVBUFFORCE on the echo server")?;
    let _ = force_sndbuf(sock.as_raw_fd(), SOCK_BUF);
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let local = sock.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let (stop2, echoed2) = (stop.clone(), echoed.clone());
    let handle = std::thread::Builder::new()
        .name("udp-echo".into())
        .spawn(move || {
            if let Some(cpu) = cpu {
                pin_to_cpu(cpu);
            }
            let until = Instant::now() + max_total;
            let mut buf = vec![0u8; 65_536];
            while !stop2.load(Ordering::SeqCst) && Instant::now() < until {
                if let Ok((n, from)) = sock.recv_from(&mut buf)
                    && sock.send_to(&buf[..n], from).is_ok()
                {
                    echoed2.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .context("spawning the echo thread")?;
    Ok(EchoServer {
        local,
        stop,
        echoed,
        handle: Some(handle),
    })
}

/// What to send; see [`rtt_probe`].
#[derive(Clone, Debug)]
pub struct RttOptions {
    /// Datagrams to send.
    pub count: u32,
    /// Datagrams per second (must be > 0).
    pub pps: u32,
    /// Payload size, `HEADER_LEN..=MAX_LEN` (default 64).
    pub payload_len: usize,
    /// How long to wait for echoes after the last send: at least the
    /// largest RTT expected, plus margin (default 1 s).
    pub drain: Duration,
    /// Run the client's threads (and, in [`rtt_between`], the echo
    /// server's) on this one CPU. A packet sent by a thread on one CPU is
    /// delivered in that CPU's softirq, so the whole round trip then stays
    /// on one CPU: no thread waits for another CPU to notice a wake-up,
    /// which under an emulated CPU (qemu TCG, one host thread per virtual
    /// CPU on a busy host) takes milliseconds, more than the differences
    /// being measured.
    pub cpu: Option<usize>,
}

impl RttOptions {
    /// `count` datagrams at `pps`, 64-byte payloads, 1 s drain.
    pub fn new(count: u32, pps: u32) -> RttOptions {
        RttOptions {
            count,
            pps,
            payload_len: 64,
            drain: Duration::from_secs(1),
            cpu: None,
        }
    }

    /// Sets the drain time.
    pub fn drain(mut self, drain: Duration) -> RttOptions {
        self.drain = drain;
        self
    }

    /// Runs everything on CPU 0; see [`cpu`](Self::cpu).
    pub fn one_cpu(mut self) -> RttOptions {
        self.cpu = Some(0);
        self
    }
}

/// One echo that came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Echo {
    pub seq: u64,
    /// CLOCK_MONOTONIC ns of the send and of the echo's arrival.
    pub send_ns: u64,
    pub recv_ns: u64,
}

impl Echo {
    /// Round-trip time in ns.
    pub fn rtt_ns(&self) -> u64 {
        self.recv_ns.saturating_sub(self.send_ns)
    }
}

/// What one [`rtt_probe`] saw.
#[derive(Clone, Debug, Default)]
pub struct RttRun {
    /// Datagrams the client sent (successful `send` calls).
    pub sent: u64,
    /// The first echo of each sequence number, in arrival order.
    pub echoes: Vec<Echo>,
    /// Echoes of a sequence number already seen, and datagrams that failed
    /// the payload check.
    pub duplicates: u64,
    pub corrupted: u64,
    /// Seconds from the first to the last send.
    pub send_secs: f64,
}

impl RttRun {
    /// Sent datagrams whose echo never came back.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.echoes.len() as u64)
    }

    /// The rate the client achieved, datagrams per second.
    pub fn achieved_pps(&self) -> f64 {
        if self.send_secs > 0.0 {
            self.sent.saturating_sub(1) as f64 / self.send_secs
        } else {
            0.0
        }
    }

    /// Round-trip times in ns, in arrival order.
    pub fn rtts_ns(&self) -> Vec<u64> {
        self.echoes.iter().map(Echo::rtt_ns).collect()
    }

    /// Echoes that arrived after one with a higher sequence number.
    pub fn reordered(&self) -> u64 {
        let mut highest = None;
        let mut n = 0;
        for e in &self.echoes {
            match highest {
                Some(h) if e.seq < h => n += 1,
                _ => highest = Some(e.seq),
            }
        }
        n
    }
}

/// Echoes received so far, first copies only.
struct Collector {
    run: RttRun,
    seen: Vec<bool>,
}

impl Collector {
    fn new(count: u64) -> Collector {
        Collector {
            run: RttRun::default(),
            seen: vec![false; count as usize],
        }
    }

    fn take(&mut self, data: &[u8], recv_ns: u64) {
        match payload::decode(data) {
            Ok(d) if (d.seq as usize) < self.seen.len() && !self.seen[d.seq as usize] => {
                self.seen[d.seq as usize] = true;
                self.run.echoes.push(Echo {
                    seq: d.seq,
                    send_ns: d.send_ns,
                    recv_ns,
                });
            }
            Ok(_) => self.run.duplicates += 1,
            Err(_) => self.run.corrupted += 1,
        }
    }

    fn complete(&self) -> bool {
        self.run.echoes.len() == self.seen.len()
    }
}

/// Restricts the calling thread to `cpu` (best effort: a CPU that does
/// not exist leaves the thread where it was).
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it
    // for cpu < CPU_SETSIZE; sched_setaffinity(0) affects this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu < libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

/// The send schedule: datagram `i` is due `i/pps` after the start.
fn due(i: u64, pps: u32) -> Duration {
    Duration::from_nanos((u128::from(i) * 1_000_000_000 / u128::from(pps)) as u64)
}

/// Sends `o.count` datagrams from a socket in the calling thread's network
/// namespace to the echo server at `to`, paced by a schedule (datagram `i`
/// is due at `start + i/pps`), and times each echo, read by a second
/// thread on the same socket. With `o.cpu`, the calling thread is pinned
/// to that CPU for the rest of its life (call it on a thread of its own,
/// as [`rtt_between`] does). Returns after the last send plus `o.drain`, or earlier
/// once every echo is back. Bounded: the sending stops at twice the paced
/// duration plus 5 s.
pub fn rtt_probe(to: SocketAddr, o: &RttOptions) -> Result<RttRun> {
    ensure!(o.pps > 0, "rtt_probe needs a rate");
    ensure!(
        (HEADER_LEN..=MAX_LEN).contains(&o.payload_len),
        "payload_len {} outside {HEADER_LEN}..={MAX_LEN}",
        o.payload_len
    );
    let bind: SocketAddr = match to {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
    };
    let sock = UdpSocket::bind(bind).context("binding the RTT client")?;
    force_rcvbuf(sock.as_raw_fd(), SOCK_BUF).context("SO_RCVBUFFORCE on the RTT client")?;
    let _ = force_sndbuf(sock.as_raw_fd(), SOCK_BUF);
    sock.connect(to)
        .with_context(|| format!("connecting the RTT client to {to}"))?;
    let count = u64::from(o.count);
    let paced = Duration::from_secs_f64(f64::from(o.count) / f64::from(o.pps));
    let send_limit = paced * 2 + Duration::from_secs(5);
    if let Some(cpu) = o.cpu {
        pin_to_cpu(cpu);
    }
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    sock.set_write_timeout(Some(Duration::from_secs(1)))?;
    let rx = sock.try_clone()?;
    // The receiver stops at this CLOCK_MONOTONIC ns (0: not yet known).
    let stop_at = Arc::new(AtomicU64::new(0));
    let stop_at2 = stop_at.clone();
    let hard_limit = send_limit + o.drain;
    let cpu = o.cpu;
    let receiver = std::thread::Builder::new()
        .name("rtt-rx".into())
        .spawn(move || {
            if let Some(cpu) = cpu {
                pin_to_cpu(cpu);
            }
            let started = Instant::now();
            let mut c = Collector::new(count);
            let mut buf = vec![0u8; 65_536];
            loop {
                let until = stop_at2.load(Ordering::SeqCst);
                if (until != 0 && monotonic_ns() >= until)
                    || c.complete()
                    || started.elapsed() >= hard_limit
                {
                    break;
                }
                if let Ok(n) = rx.recv(&mut buf) {
                    c.take(&buf[..n], monotonic_ns());
                }
            }
            c.run
        })
        .context("spawning the RTT receiver")?;
    let mut buf = vec![0u8; o.payload_len];
    let start = Instant::now();
    let (mut sent, mut first_ns, mut last_ns) = (0u64, 0u64, 0u64);
    let mut i = 0u64;
    while i < count && start.elapsed() < send_limit {
        let elapsed = start.elapsed();
        if due(i, o.pps) > elapsed {
            std::thread::sleep((due(i, o.pps) - elapsed).min(Duration::from_millis(5)));
            continue;
        }
        let now = monotonic_ns();
        payload::encode(&mut buf, i, now);
        if sock.send(&buf).is_ok() {
            sent += 1;
            if first_ns == 0 {
                first_ns = now;
            }
            last_ns = now;
        }
        i += 1;
    }
    stop_at.store(monotonic_ns() + o.drain.as_nanos() as u64, Ordering::SeqCst);
    let mut run = receiver
        .join()
        .map_err(|_| anyhow!("RTT receiver thread panicked"))?;
    run.sent = sent;
    run.send_secs = last_ns.saturating_sub(first_ns) as f64 / 1e9;
    Ok(run)
}

/// [`rtt_probe`] from side a of `pair` to an echo server on side b
/// (`kind` addresses, `port`); the server lives for this call only.
pub fn rtt_between(pair: &NetnsPair, kind: AddrKind, port: u16, o: &RttOptions) -> Result<RttRun> {
    let bind = pair.sockaddr(Side::B, kind, port);
    let limit = Duration::from_secs_f64(2.0 * f64::from(o.count) / f64::from(o.pps.max(1)))
        + o.drain
        + Duration::from_secs(10);
    let server = pair.run_in(Side::B, || echo_server(bind, limit, o.cpu))??;
    let to = server.local_addr();
    pair.run_in(Side::A, || rtt_probe(to, o))?
}

/// The `q` quantile (0.0..=1.0, nearest rank) of `values`; `None` when
/// empty. Sorts a copy.
pub fn quantile(values: &[u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let idx = (q.clamp(0.0, 1.0) * (v.len() - 1) as f64).round() as usize;
    Some(v[idx])
}

/// Mean and (sample) standard deviation of `values`; `None` with fewer
/// than two.
pub fn mean_sd(values: &[f64]) -> Option<(f64, f64)> {
    if values.len() < 2 {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    Some((mean, var.sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_echo() {
        for cpu in [None, Some(0)] {
            let server =
                echo_server("127.0.0.1:0".parse().unwrap(), Duration::from_secs(10), cpu).unwrap();
            let mut o = RttOptions::new(200, 2_000).drain(Duration::from_millis(500));
            o.cpu = cpu;
            // On a thread of its own: pinning lasts for the thread's life.
            let run = std::thread::scope(|s| {
                s.spawn(|| rtt_probe(server.local_addr(), &o))
                    .join()
                    .unwrap()
            })
            .unwrap();
            assert_eq!(run.sent, 200);
            assert_eq!(run.lost(), 0, "cpu {cpu:?}: {run:?}");
            assert_eq!(run.reordered(), 0);
            // The server counts an echo once its send returned, which can be
            // just after the client read it: wait (bounded) for the count.
            let until = Instant::now() + Duration::from_secs(2);
            while server.echoed() < 200 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(server.echoed(), 200);
            assert!(run.rtts_ns().iter().all(|&r| r > 0 && r < 1_000_000_000));
            assert!(run.achieved_pps() > 500.0, "{}", run.achieved_pps());
        }
    }

    #[test]
    fn reorder_and_stats() {
        let e = |seq| Echo {
            seq,
            send_ns: 0,
            recv_ns: 1,
        };
        let run = RttRun {
            sent: 4,
            echoes: vec![e(0), e(2), e(1), e(3)],
            ..RttRun::default()
        };
        assert_eq!(run.reordered(), 1);
        assert_eq!(run.lost(), 0);
        assert_eq!(quantile(&[5, 1, 3], 0.5), Some(3));
        assert_eq!(quantile(&[], 0.5), None);
        let (m, sd) = mean_sd(&[1.0, 2.0, 3.0]).unwrap();
        assert!((m - 2.0).abs() < 1e-9 && (sd - 1.0).abs() < 1e-9);
    }
}
