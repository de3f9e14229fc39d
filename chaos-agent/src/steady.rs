//! The steady-state guard (`spec.abortWhen`, or a blast's `--abort-*`
//! flags): a task per active policy probes an HTTP URL (expecting a
//! status) or a TCP address every `interval`, each probe bounded in time;
//! after `failures` consecutive failures it calls its `on_abort` with the
//! reason (the daemon and the blast loop then revert the policy) and ends.
//! Dropping the [`Prober`] cancels the task.

use std::{net::SocketAddr, time::Duration};

use http_body_util::Empty;
use hyper::{
    Request,
    body::Bytes,
    header::{HOST, USER_AGENT},
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, task::JoinHandle, time::timeout};
use tracing::{debug, warn};

use crate::policy::model::{AbortWhen, Probe};

/// Longest a single probe may take, whatever the interval.
const MAX_PROBE_TIME: Duration = Duration::from_secs(5);

pub struct Prober {
    task: JoinHandle<()>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Prober {
    /// Starts probing on the current tokio runtime.
    pub fn spawn(
        policy: String,
        guard: AbortWhen,
        on_abort: impl FnOnce(String) + Send + 'static,
    ) -> Prober {
        let task = tokio::spawn(async move {
            let mut failed = 0u32;
            let mut last_error = String::new();
            let mut ticks = tokio::time::interval(guard.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let limit = guard.interval.min(MAX_PROBE_TIME);
                match probe_once(&guard.probe, limit).await {
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
                if failed >= guard.failures {
                    on_abort(format!(
                        "{} failed {} times in a row (last: {last_error})",
                        describe(&guard.probe),
                        failed
                    ));
                    return;
                }
            }
        });
        Prober { task }
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

async fn resolve(hostport: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))
}

/// One probe, within `limit`; `Err` says what failed.
pub async fn probe_once(p: &Probe, limit: Duration) -> Result<(), String> {
    let attempt = async {
        match p {
            Probe::Tcp { addr } => {
                let sa = resolve(addr).await?;
                TcpStream::connect(sa)
                    .await
                    .map(drop)
                    .map_err(|e| format!("connect {addr}: {e}"))
            }
            Probe::Http { url, expect_status } => {
                let status = http_status(url).await?;
                if status == *expect_status {
                    Ok(())
                } else {
                    Err(format!("{url} answered {status}"))
                }
            }
        }
    };
    timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("{} timed out after {limit:?}", describe(p))))
}

/// `GET url` over plain HTTP/1.1 (hyper's client); returns the status code.
async fn http_status(url: &str) -> Result<u16, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url}: only http:// URLs are probed"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url}: no host"))?
        .clone();
    let hostport = format!(
        "{}:{}",
        authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']'),
        authority.port_u16().unwrap_or(80)
    );
    let sa = resolve(&hostport).await?;
    let stream = TcpStream::connect(sa)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let conn = tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = Request::get(path)
        .header(HOST, authority.as_str())
        .header(USER_AGENT, "chaos-agent")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{url}: {e}"))?;
    let answer = sender.send_request(req).await;
    conn.abort();
    answer
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{Read, Write},
        net::TcpListener,
    };

    #[tokio::test(flavor = "current_thread")]
    async fn http_probe_reads_the_status() {
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
        assert_eq!(probe_once(&p, Duration::from_secs(2)).await, Ok(()));
        let e = probe_once(&p, Duration::from_secs(2)).await.unwrap_err();
        assert!(e.contains("503"), "{e}");
        t.join().unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn tcp_probe_fails_on_a_closed_port() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let p = Probe::Tcp {
            addr: format!("127.0.0.1:{port}"),
        };
        assert!(probe_once(&p, Duration::from_secs(1)).await.is_err());
    }
}
