//! A `chaos-agent run` daemon for tests: its own policies directory, run
//! directory (CHAOS_AGENT_RUN_DIR), metrics port and NOTIFY_SOCKET, so a
//! real daemon on the host is not disturbed.
#![allow(dead_code)] // each test file uses a different subset

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixDatagram,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::agent_bin;

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU16 = AtomicU16::new(0);
        let p = std::env::temp_dir().join(format!(
            "chaos-daemon-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running daemon with its own directories and a NOTIFY_SOCKET the test
/// listens on.
pub struct Daemon {
    child: Option<Child>,
    pub policies: TempDir,
    run: TempDir,
    notify: UnixDatagram,
    log: PathBuf,
    pub metrics_port: u16,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    /// Writes `files` (name, text) into a fresh policies directory, starts
    /// the daemon and waits (10 s at most) for READY=1.
    pub fn start(tag: &str, files: &[(&str, &str)]) -> Result<Daemon> {
        Daemon::start_with(tag, files, &[])
    }

    /// As `start`, with more `run` arguments.
    pub fn start_with(tag: &str, files: &[(&str, &str)], extra: &[&str]) -> Result<Daemon> {
        Daemon::start_env(tag, files, extra, &[])
    }

    /// As `start_with`, with more environment variables for the daemon.
    pub fn start_env(
        tag: &str,
        files: &[(&str, &str)],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Daemon> {
        let policies = TempDir::new(&format!("{tag}-pol"));
        let run = TempDir::new(&format!("{tag}-run"));
        for (name, text) in files {
            std::fs::write(policies.0.join(name), text)?;
        }
        let notify_path = run.0.join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path)?;
        notify.set_read_timeout(Some(Duration::from_millis(200)))?;
        let log = run.0.join("daemon.log");
        let metrics_port = free_port();
        let child = Command::new(agent_bin())
            .args(["-v", "run", "--policies"])
            .arg(&policies.0)
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(extra)
            .env("CHAOS_AGENT_RUN_DIR", run.0.join("rt"))
            .env("NOTIFY_SOCKET", &notify_path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawning chaos-agent run")?;
        let mut d = Daemon {
            child: Some(child),
            policies,
            run,
            notify,
            log,
            metrics_port,
        };
        d.wait_notify("READY=1", Duration::from_secs(10))?;
        Ok(d)
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn run_dir(&self) -> PathBuf {
        self.run.0.join("rt")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a notification datagram containing `what`; returns all
    /// datagrams read on the way.
    pub fn wait_notify(&mut self, what: &str, timeout: Duration) -> Result<Vec<String>> {
        let until = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < until {
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let hit = msg.lines().any(|l| l == what);
                    seen.push(msg);
                    if hit {
                        return Ok(seen);
                    }
                }
                Err(_) => {
                    if let Some(c) = self.child.as_mut()
                        && let Some(status) = c.try_wait()?
                    {
                        bail!("daemon exited ({status}) before {what}:\n{}", self.log());
                    }
                }
            }
        }
        bail!(
            "no {what} within {timeout:?} (got {seen:?}):\n{}",
            self.log()
        )
    }

    /// Replaces a policy file the way editors and `kubectl` do: write a
    /// hidden temporary file, rename it over the old one.
    pub fn write_policy(&self, name: &str, text: &str) {
        let tmp = self.policies.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.policies.0.join(name)).unwrap();
    }

    /// Runs `chaos-agent ARGS` against this daemon.
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(agent_bin())
            .args(args)
            .env("CHAOS_AGENT_RUN_DIR", self.run_dir())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn status(&self) -> Value {
        let (code, out, err) = self.ctl(&["status", "--json"]);
        assert_eq!(code, 0, "status: {err}\ndaemon log:\n{}", self.log());
        serde_json::from_str(&out).unwrap()
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: plain syscall on our child's pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("already waited")?;
        let until = Instant::now() + timeout;
        loop {
            if let Some(s) = child.try_wait()? {
                self.child = None;
                return Ok(s);
            }
            if Instant::now() > until {
                let _ = child.kill();
                let s = child.wait()?;
                self.child = None;
                bail!(
                    "daemon did not exit within {timeout:?} ({s}):\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The metrics page; it must answer 200.
    pub fn scrape(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `GET path` on the metrics listener: (status, body) of an HTTP/1.1
    /// answer.
    pub fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP/1.1 status in {head:?}"));
        (status, body.to_owned())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // SAFETY: our child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of the sample `name{...labels}` whose labels include `want`.
pub fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
