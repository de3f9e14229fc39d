//! Bounded TCP transfers: a receiver that accepts one connection and counts
//! (and checks) the bytes, a sender with a connect timeout, and many senders
//! at once to one listener.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::monotonic_ns;
use crate::netns::{AddrKind, Direction, NetnsPair};
use crate::sockutil::{ConnectError, errno_name, is_transient, tcp_connect};

/// Byte `i` of every transfer; the receiver checks it.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// Sender options.
#[derive(Clone, Debug)]
pub struct TcpOptions {
    /// Bytes to send (default 1 MiB).
    pub bytes: u64,
    /// Whole-transfer bound, connect included (default 10 s).
    pub max_time: Duration,
    /// Connect bound (default 3 s).
    pub connect_timeout: Duration,
    /// Local address to bind (port 0 = any); `None` = let the kernel choose.
    pub from: Option<SocketAddr>,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            bytes: 1 << 20,
            max_time: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            from: None,
        }
    }
}

/// What the sender saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TcpSendStats {
    pub local: Option<String>,
    pub to: String,
    pub connected: bool,
    pub connect_timed_out: bool,
    /// The connect error other than a timeout (e.g. `ECONNREFUSED`).
    pub connect_error: Option<String>,
    /// Time the connect took (or until it failed), ns.
    pub connect_ns: u64,
    /// Bytes handed to the kernel.
    pub bytes_sent: u64,
    /// A write error, if one ended the transfer.
    pub send_error: Option<String>,
    /// True when all bytes were written and the peer ended the connection
    /// in return (it does so only after reading everything, see
    /// [`tcp_receiver`]).
    pub completed: bool,
    /// True when the time bound ended the transfer.
    pub timed_out: bool,
    /// CLOCK_MONOTONIC ns at the start (before connect) and end.
    pub start_ns: u64,
    pub end_ns: u64,
}

impl TcpSendStats {
    /// Seconds from before connect to the end.
    pub fn elapsed_secs(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e9
    }
}

/// Connects to `to` from the calling thread's network namespace and writes
/// `o.bytes` bytes of a fixed pattern, then half-closes and waits (within
/// the time bound) for the peer to end the connection. An unfinished
/// transfer is aborted (RST), so no orphaned socket goes on retransmitting
/// after this returns. Never fails: connect errors and timeouts are reported
/// in the result.
pub fn tcp_send(to: SocketAddr, o: &TcpOptions) -> TcpSendStats {
    let start = Instant::now();
    let deadline = start + o.max_time;
    let mut st = TcpSendStats {
        to: to.to_string(),
        start_ns: monotonic_ns(),
        ..TcpSendStats::default()
    };
    let connect_limit = o.connect_timeout.min(o.max_time);
    let stream = match tcp_connect(o.from, to, connect_limit) {
        Ok(s) => s,
        Err(e) => {
            st.connect_ns = start.elapsed().as_nanos() as u64;
            match e {
                ConnectError::TimedOut => st.connect_timed_out = true,
                ConnectError::Failed(err) => {
                    st.connect_error = Some(format!("{} ({err})", errno_name(&err)))
                }
            }
            st.end_ns = monotonic_ns();
            return st;
        }
    };
    st.connect_ns = start.elapsed().as_nanos() as u64;
    st.connected = true;
    st.local = stream.local_addr().ok().map(|a| a.to_string());
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut stream = stream;
    let mut chunk = vec![0u8; 64 * 1024];
    while st.bytes_sent < o.bytes {
        if Instant::now() >= deadline {
            st.timed_out = true;
            break;
        }
        let n = ((o.bytes - st.bytes_sent) as usize).min(chunk.len());
        for (i, b) in chunk[..n].iter_mut().enumerate() {
            *b = pattern(st.bytes_sent + i as u64);
        }
        match stream.write(&chunk[..n]) {
            Ok(0) => {
                st.send_error = Some("write returned 0".into());
                break;
            }
            Ok(w) => st.bytes_sent += w as u64,
            Err(e) if is_transient(&e) => {}
            Err(e) => {
                st.send_error = Some(format!("{} ({e})", errno_name(&e)));
                break;
            }
        }
    }
    if st.bytes_sent == o.bytes && st.send_error.is_none() {
        let _ = stream.shutdown(Shutdown::Write);
        let mut b = [0u8; 4096];
        loop {
            if Instant::now() >= deadline {
                st.timed_out = true;
                break;
            }
            match stream.read(&mut b) {
                Ok(0) => {
                    st.completed = true;
                    break;
                }
                Ok(_) => {}
                // The receiver resets once it has read our FIN.
                Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {
                    st.completed = true;
                    break;
                }
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    st.send_error = Some(format!("{} ({e})", errno_name(&e)));
                    break;
                }
            }
        }
    }
    if !st.completed {
        abort_on_close(&stream);
    }
    st.end_ns = monotonic_ns();
    st
}

/// Makes closing `stream` send a reset and free the socket at once
/// (`SO_LINGER` with a zero timeout): nothing of it is sent afterwards,
/// neither retransmissions of unacknowledged data nor the closing handshake.
fn abort_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// What the receiver saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TcpRecvStats {
    pub local: String,
    pub accepted: bool,
    pub peer: Option<String>,
    /// Bytes read.
    pub bytes: u64,
    /// Bytes that differed from the sender's pattern.
    pub mismatched_bytes: u64,
    /// True when the peer closed its side (all data read).
    pub eof: bool,
    pub read_error: Option<String>,
    /// CLOCK_MONOTONIC ns: start, accept, first and last byte, end.
    pub start_ns: u64,
    pub accept_ns: Option<u64>,
    pub first_byte_ns: Option<u64>,
    pub last_byte_ns: Option<u64>,
    pub end_ns: u64,
    /// `eof`, `max_total`, `stopped` or `error`.
    pub stop_reason: String,
}

/// A listening receiver; see [`tcp_receiver`].
#[derive(Debug)]
pub struct TcpReceiver {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<TcpRecvStats>,
}

impl TcpReceiver {
    /// The listening address (with the real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops it (within ~50 ms).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for it to finish.
    pub fn wait(self) -> Result<TcpRecvStats> {
        self.handle
            .join()
            .map_err(|_| anyhow!("TCP receiver thread panicked"))
    }
}

/// Listens on `bind` in the calling thread's network namespace (listening
/// when this returns), then in a thread accepts one connection and reads it
/// until EOF, [`TcpReceiver::stop`], or `max_total` from now. It then resets
/// the connection rather than closing it with a FIN.
pub fn tcp_receiver(bind: SocketAddr, max_total: Duration) -> Result<TcpReceiver> {
    let listener =
        TcpListener::bind(bind).with_context(|| format!("binding TCP listener to {bind}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let handle = std::thread::Builder::new()
        .name("tcp-receiver".into())
        .spawn(move || recv_loop(listener, local, max_total, &stop2))
        .context("spawning TCP receiver thread")?;
    Ok(TcpReceiver {
        local,
        stop,
        handle,
    })
}

fn recv_loop(
    listener: TcpListener,
    local: SocketAddr,
    max_total: Duration,
    stop: &AtomicBool,
) -> TcpRecvStats {
    let start = Instant::now();
    let deadline = start + max_total;
    let mut st = TcpRecvStats {
        local: local.to_string(),
        start_ns: monotonic_ns(),
        ..TcpRecvStats::default()
    };
    let stream = loop {
        if stop.load(Ordering::SeqCst) {
            st.stop_reason = "stopped".into();
            st.end_ns = monotonic_ns();
            return st;
        }
        if Instant::now() >= deadline {
            st.stop_reason = "max_total".into();
            st.end_ns = monotonic_ns();
            return st;
        }
        match listener.accept() {
            Ok((s, peer)) => {
                st.accepted = true;
                st.accept_ns = Some(monotonic_ns());
                st.peer = Some(peer.to_string());
                break s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                st.read_error = Some(format!("accept: {e}"));
                st.stop_reason = "error".into();
                st.end_ns = monotonic_ns();
                return st;
            }
        }
    };
    drop(listener);
    read_stream(stream, deadline, stop, st)
}

/// Reads an accepted connection until EOF, `stop` or `deadline`, checking
/// the sender's pattern, then resets it.
fn read_stream(
    mut stream: TcpStream,
    deadline: Instant,
    stop: &AtomicBool,
    mut st: TcpRecvStats,
) -> TcpRecvStats {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stop.load(Ordering::SeqCst) {
            st.stop_reason = "stopped".into();
            break;
        }
        if Instant::now() >= deadline {
            st.stop_reason = "max_total".into();
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                st.eof = true;
                st.stop_reason = "eof".into();
                break;
            }
            Ok(n) => {
                let now = monotonic_ns();
                st.first_byte_ns.get_or_insert(now);
                st.last_byte_ns = Some(now);
                for (i, b) in buf[..n].iter().enumerate() {
                    if *b != pattern(st.bytes + i as u64) {
                        st.mismatched_bytes += 1;
                    }
                }
                st.bytes += n as u64;
            }
            Err(e) if is_transient(&e) => {}
            Err(e) => {
                st.read_error = Some(format!("{} ({e})", errno_name(&e)));
                st.stop_reason = "error".into();
                break;
            }
        }
    }
    // A reset tells the sender everything was read (or that we gave up).
    // Unlike a FIN it needs no answer, so the sender emits nothing after
    // this: a packet-loss test can count every segment it sent.
    abort_on_close(&stream);
    drop(stream);
    st.end_ns = monotonic_ns();
    st
}

/// Result of [`tcp_transfer`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TcpTransfer {
    pub send: TcpSendStats,
    pub recv: TcpRecvStats,
}

impl TcpTransfer {
    /// Bytes the receiver read.
    pub fn bytes_delivered(&self) -> u64 {
        self.recv.bytes
    }

    /// Whether the connection was established.
    pub fn connected(&self) -> bool {
        self.send.connected
    }

    /// Whether the connect timed out.
    pub fn connect_timed_out(&self) -> bool {
        self.send.connect_timed_out
    }

    /// From before connect to the receiver's last byte (or the sender's end
    /// when nothing arrived).
    pub fn elapsed(&self) -> Duration {
        let end = self.recv.last_byte_ns.unwrap_or(self.send.end_ns);
        Duration::from_nanos(end.saturating_sub(self.send.start_ns))
    }

    /// All requested bytes arrived intact and the connection closed cleanly.
    pub fn complete(&self, requested: u64) -> bool {
        self.send.completed
            && self.recv.eof
            && self.recv.bytes == requested
            && self.recv.mismatched_bytes == 0
    }
}

/// A receiver on the receiving side's `kind` address and `port` and a sender
/// on the other side that transfers `o.bytes` (bounded by `o.max_time`).
/// `o.from` defaults to the sending side's address of the same kind.
pub fn tcp_transfer(
    pair: &NetnsPair,
    dir: Direction,
    kind: AddrKind,
    port: u16,
    o: &TcpOptions,
) -> Result<TcpTransfer> {
    let dst = pair.sockaddr(dir.dst(), kind, port);
    let recv_max = o.max_time + Duration::from_secs(2);
    let receiver = pair.run_in(dir.dst(), || tcp_receiver(dst, recv_max))??;
    let to = receiver.local_addr();
    let mut so = o.clone();
    if so.from.is_none() {
        so.from = Some(pair.sockaddr(dir.src(), kind, 0));
    }
    let send = match pair.run_in(dir.src(), || tcp_send(to, &so)) {
        Ok(s) => s,
        Err(e) => {
            receiver.stop();
            let _ = receiver.wait();
            return Err(e);
        }
    };
    if !send.connected {
        receiver.stop();
    } else if !send.completed {
        // The receiver may still be waiting for data that will not come;
        // give it a moment to read what is in flight.
        std::thread::sleep(Duration::from_millis(200));
        receiver.stop();
    }
    let recv = receiver.wait()?;
    Ok(TcpTransfer { send, recv })
}

/// `connections` senders at once from the sending side to one listener on
/// the receiving side's `kind` address and `port`, each a [`tcp_send`] of
/// `o.bytes` within `o.max_time`. For samples of many segments under loss,
/// where a single connection spends most of its time waiting on
/// retransmission timers. Returns what each sender saw and the bytes the
/// receiving side read from all of them.
pub fn tcp_transfers(
    pair: &NetnsPair,
    dir: Direction,
    kind: AddrKind,
    port: u16,
    o: &TcpOptions,
    connections: usize,
) -> Result<(Vec<TcpSendStats>, u64)> {
    let dst = pair.sockaddr(dir.dst(), kind, port);
    let listener = pair
        .run_in(dir.dst(), || TcpListener::bind(dst))?
        .with_context(|| format!("binding TCP listener to {dst}"))?;
    listener.set_nonblocking(true)?;
    let to = listener.local_addr()?;
    let deadline = Instant::now() + o.max_time + Duration::from_secs(2);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let acceptor = std::thread::Builder::new()
        .name("tcp-acceptor".into())
        .spawn(move || accept_all(listener, deadline, stop2))
        .context("spawning TCP acceptor thread")?;
    let mut so = o.clone();
    if so.from.is_none() {
        so.from = Some(pair.sockaddr(dir.src(), kind, 0));
    }
    let sent = std::thread::scope(|scope| {
        let senders: Vec<_> = (0..connections)
            .map(|_| scope.spawn(|| pair.run_in(dir.src(), || tcp_send(to, &so))))
            .collect();
        senders
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow!("TCP sender thread panicked"))?
            })
            .collect::<Result<Vec<_>>>()
    });
    // Let the readers take what is still in flight, then end them.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let read = acceptor
        .join()
        .map_err(|_| anyhow!("TCP acceptor thread panicked"))?;
    Ok((sent?, read))
}

/// Accepts connections until `stop` or `deadline`, reading each on its own
/// thread; returns the bytes read from all of them.
fn accept_all(listener: TcpListener, deadline: Instant, stop: Arc<AtomicBool>) -> u64 {
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut readers = Vec::new();
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => {
                let st = TcpRecvStats {
                    local: local.clone(),
                    accepted: true,
                    start_ns: monotonic_ns(),
                    ..TcpRecvStats::default()
                };
                let stop = stop.clone();
                readers.push(std::thread::spawn(move || {
                    read_stream(stream, deadline, &stop, st).bytes
                }));
            }
            // Nothing waiting, or a connection reset before it was
            // accepted: try again shortly.
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    readers.into_iter().filter_map(|r| r.join().ok()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_transfer() {
        let r = tcp_receiver("127.0.0.1:0".parse().unwrap(), Duration::from_secs(10)).unwrap();
        let o = TcpOptions {
            bytes: 3 << 20,
            ..TcpOptions::default()
        };
        let s = tcp_send(r.local_addr(), &o);
        let got = r.wait().unwrap();
        assert!(s.connected && s.completed, "{s:?}");
        assert_eq!(got.bytes, 3 << 20);
        assert_eq!(got.mismatched_bytes, 0);
        assert!(got.eof);
        let t = TcpTransfer { send: s, recv: got };
        assert!(t.complete(3 << 20));
    }

    #[test]
    fn refused_connect_is_reported() {
        // Find a free port, then close it.
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let s = tcp_send(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &TcpOptions {
                bytes: 10,
                ..TcpOptions::default()
            },
        );
        assert!(!s.connected);
        assert!(!s.connect_timed_out);
        assert!(s.connect_error.unwrap().contains("ECONNREFUSED"));
    }
}
