//! The steady-state guard (`spec.abortWhen`, or a blast's `--abort-*`
//! flags): a thread per active policy probes an HTTP URL (expecting a
//! status) or a TCP address every `interval`; after `failures` consecutive
//! failures it calls its `on_abort` with the reason (the daemon and the
//! blast loop then revert the policy) and ends. Dropping the [`Prober`]
//! stops the thread at its next wake-up.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::{debug, warn};

use crate::policy::model::{AbortWhen, Probe};

/// Longest a single probe may take, whatever the interval.
const MAX_PROBE_TIME: Duration = Duration::from_secs(5);
/// How often the thread checks whether it was dropped while sleeping.
const STOP_CHECK: Duration = Duration::from_millis(50);

pub struct Prober {
    stop: Arc<AtomicBool>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Prober {
    pub fn spawn(
        policy: String,
        guard: AbortWhen,
        on_abort: impl FnOnce(String) + Send + 'static,
    ) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name(format!("probe-{policy}"))
            .spawn(move || {
                let mut failed = 0u32;
                let mut last_error = String::new();
                loop {
                    let next = Instant::now() + guard.interval;
                    match probe_once(&guard.probe, guard.interval.min(MAX_PROBE_TIME)) {
                        Ok(()) => {
                            if failed > 0 {
                                debug!(policy = %policy, "steady-state probe recovered");
                            }
                            failed = 0;
                        }
                        Err(e) => {
                            failed += 1;
                            warn!(policy = %policy, failed, of = guard.failures, "steady-state probe failed: {e}");
                            last_error = e;
                        }
                    }
                    if thread_stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if failed >= guard.failures {
                        let reason = format!(
                            "{} failed {} times in a row (last: {last_error})",
                            describe(&guard.probe),
                            failed
                        );
                        on_abort(reason);
                        return;
                    }
                    while Instant::now() < next {
                        if thread_stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(STOP_CHECK.min(next.saturating_duration_since(Instant::now())));
                    }
                }
            });
        if let Err(e) = spawned {
            warn!("cannot start the steady-state probe: {e}");
        }
        Prober { stop }
    }
}

pub fn describe(p: &Probe) -> String {
    match p {
        Probe::Http { url, expect_status } => {
            format!("HTTP probe {url} (expecting {expect_status})")
        }
        Probe::Tcp { addr } => format!("TCP probe {addr}"),
    }
}

fn resolve(hostport: &str) -> Result<SocketAddr, String> {
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))
}

/// One probe; `Err` says what failed.
pub fn probe_once(p: &Probe, timeout: Duration) -> Result<(), String> {
    match p {
        Probe::Tcp { addr } => {
            let sa = resolve(addr)?;
            TcpStream::connect_timeout(&sa, timeout)
                .map(drop)
                .map_err(|e| format!("connect {addr}: {e}"))
        }
        Probe::Http { url, expect_status } => {
            let status = http_status(url, timeout)?;
            if status == *expect_status {
                Ok(())
            } else {
                Err(format!("{url} answered {status}"))
            }
        }
    }
}

/// `GET url` over plain HTTP/1.0; returns the status code.
fn http_status(url: &str, timeout: Duration) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are probed"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_owned()
    } else {
        format!("{hostport}:80")
    };
    let sa = resolve(&with_port)?;
    let deadline = Instant::now() + timeout;
    let mut s =
        TcpStream::connect_timeout(&sa, timeout).map_err(|e| format!("connect {hostport}: {e}"))?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(10));
    s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(left)).map_err(|e| e.to_string())?;
    // One write: a server may answer (and close) after the first segment.
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {hostport}\r\nUser-Agent: chaos-agent\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .map_err(|e| format!("{url}: {e}"))?;
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        let n = s
            .read(&mut head[got..])
            .map_err(|e| format!("{url}: {e}"))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let line = String::from_utf8_lossy(&head[..got]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{url}: not an HTTP answer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn http_probe_reads_the_status() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            for code in [200, 503] {
                let (mut c, _) = l.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 512];
                while !req.ends_with(b"\r\n\r\n") {
                    let n = c.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                write!(c, "HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").unwrap();
            }
        });
        let p = Probe::Http {
            url: format!("http://127.0.0.1:{port}/health"),
            expect_status: 200,
        };
        assert_eq!(probe_once(&p, Duration::from_secs(2)), Ok(()));
        let e = probe_once(&p, Duration::from_secs(2)).unwrap_err();
        assert!(e.contains("503"), "{e}");
        t.join().unwrap();
    }

    #[test]
    fn tcp_probe_fails_on_a_closed_port() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let p = Probe::Tcp {
            addr: format!("127.0.0.1:{port}"),
        };
        assert!(probe_once(&p, Duration::from_secs(1)).is_err());
    }
}
