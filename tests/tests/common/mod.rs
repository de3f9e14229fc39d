//! Running the real `chaos-agent` binary from integration tests.
#![allow(dead_code)] // each test file uses a different subset

pub mod daemon;
pub mod soak;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The agent under test: `CHAOS_AGENT_BIN` (set by `cargo xtask test`), or
/// the release build next to this workspace.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("CHAOS_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/chaos-agent")
        })
}

pub fn traffic_bin() -> PathBuf {
    std::env::var_os("CHAOS_TRAFFIC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/chaos-traffic")
        })
}

pub fn policies_dir() -> PathBuf {
    std::env::var_os("CHAOS_POLICIES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies"))
}

/// Runs the agent to completion and returns (exit code, stdout, stderr).
pub fn agent_output(args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(agent_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running chaos-agent")?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The row of `probe --json` for `feature` (e.g. `attach-tcx`); probe
/// must exit 0 and have that row.
pub fn probe_row(feature: &str) -> Value {
    let (code, out, err) = agent_output(&["probe", "--json"]).expect("running probe");
    assert_eq!(code, 0, "probe: {err}");
    let rows: Value = serde_json::from_str(&out).expect("probe --json output");
    rows.as_array()
        .expect("probe --json gives a list")
        .iter()
        .find(|r| r["feature"] == feature)
        .unwrap_or_else(|| panic!("probe has no {feature} row: {out}"))
        .clone()
}

/// A blast running in the background, with `--json` events on stdout.
pub struct Blast {
    child: Option<Child>,
    events: Receiver<Value>,
    /// The `applied` event.
    pub applied: Value,
    pub stderr_path: PathBuf,
}

impl Blast {
    /// Starts `chaos-agent blast ARGS --json` and waits (up to 10 s) for its
    /// `applied` event.
    pub fn start(args: &[&str]) -> Result<Blast> {
        Blast::start_in(None, args)
    }

    /// As `start`, with the agent itself running inside network namespace
    /// `netns` (`ip netns exec`), so "the current namespace" is that one.
    pub fn start_in(netns: Option<&str>, args: &[&str]) -> Result<Blast> {
        Blast::start_env(netns, args, &[])
    }

    /// As `start_in`, with more environment variables for the agent.
    pub fn start_env(netns: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> Result<Blast> {
        let stderr_path = std::env::temp_dir().join(format!(
            "chaos-blast-{}-{}.log",
            std::process::id(),
            unique()
        ));
        let stderr = std::fs::File::create(&stderr_path)?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(agent_bin());
                c
            }
            None => Command::new(agent_bin()),
        };
        let mut child = cmd
            .arg("blast")
            .args(args)
            .arg("--json")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawning chaos-agent")?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        let mut blast = Blast {
            child: Some(child),
            events: rx,
            applied: Value::Null,
            stderr_path,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match blast.events.recv_timeout(left) {
                Ok(v) if v["event"] == "applied" => {
                    blast.applied = v;
                    return Ok(blast);
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    bail!("no applied event within 10 s: {}", blast.stderr())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = blast.wait(Duration::from_secs(5))?;
                    bail!(
                        "agent exited ({status}) before applying: {}",
                        blast.stderr()
                    );
                }
            }
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// The kernel deadline, CLOCK_MONOTONIC ns.
    pub fn deadline_ns(&self) -> u64 {
        self.applied["deadline_ns"]
            .as_u64()
            .expect("deadline_ns in applied event")
    }

    pub fn mode(&self) -> String {
        self.applied["mode"].as_str().unwrap_or_default().to_owned()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain syscall; the pid is our child's.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for exit, bounded; kills the agent if it does not exit in time.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("already waited")?;
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let status = child.wait()?;
                self.child = None;
                bail!("agent did not exit within {timeout:?} (killed: {status})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait, and return the exit status and the `reverted` event.
    pub fn stop(mut self) -> Result<(ExitStatus, Value)> {
        self.signal(libc::SIGTERM);
        let status = self.wait(Duration::from_secs(10))?;
        Ok((status, self.last_event("reverted")))
    }

    /// Waits for the blast to end by itself (its duration), bounded.
    pub fn finish(mut self, timeout: Duration) -> Result<(ExitStatus, Value)> {
        let status = self.wait(timeout)?;
        Ok((status, self.last_event("reverted")))
    }

    fn last_event(&self, name: &str) -> Value {
        let mut last = Value::Null;
        while let Ok(v) = self.events.recv_timeout(Duration::from_millis(500)) {
            if v["event"] == name {
                last = v;
            }
        }
        last
    }
}

impl Drop for Blast {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // SAFETY: our child; SIGCONT in case a test stopped it.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Where a rule of [`hook_blast`] sits, for traffic from a to b.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// The rule sits on the sender's interface, egress.
    Egress,
    /// The rule sits on the receiver's interface, ingress.
    Ingress,
}

/// Starts a 60 s blast with `action` (`--loss`, `--corrupt`,
/// `--duplicate`) at `pct` % for `proto` to `port`, for traffic from a to
/// b, on a's egress or b's ingress.
pub fn hook_blast(
    pair: &chaos_tests::NetnsPair,
    hook: Hook,
    proto: &str,
    port: u16,
    action: &str,
    pct: u32,
) -> Result<Blast> {
    let (side, dir) = match hook {
        Hook::Egress => (chaos_tests::Side::A, "egress"),
        Hook::Ingress => (chaos_tests::Side::B, "ingress"),
    };
    Blast::start(&[
        "net",
        "--netns",
        pair.ns(side),
        "--iface",
        pair.iface(side),
        "--direction",
        dir,
        "--proto",
        proto,
        "--dport",
        &port.to_string(),
        action,
        &pct.to_string(),
        "--duration",
        "60s",
    ])
}

/// Packets sent for a share strictly between 0 and 100 %: the 4-sigma band
/// of Binomial(34,000, 0.3) is within ±1 point (±0.99).
pub const SHARE_SAMPLE: u32 = 34_000;

/// The one check of a measured share, on one sample (no second chance):
/// `observed` of `n` inside the 4-sigma band of Binomial(n, p), which a
/// correct implementation leaves by chance once in about 15,800 checks.
/// Prints the sample and its band either way.
pub fn assert_share(what: &str, n: u64, p: f64, observed: u64) {
    let (lo, hi) = chaos_tests::sigma_band(n, p, 4.0);
    let pct = |x: f64| if n == 0 { 0.0 } else { 100.0 * x / n as f64 };
    println!(
        "{what}: {observed} of {n} ({:.2}%), 4-sigma band [{lo:.0}, {hi:.0}] ({:.2}% to {:.2}%)",
        pct(observed as f64),
        pct(lo),
        pct(hi)
    );
    assert!(
        chaos_tests::within_k_sigma(n, p, 4.0, observed),
        "{what}: {observed} of {n} is outside the 4-sigma band [{lo:.0}, {hi:.0}]"
    );
}

/// The first fault's counters from a `reverted` or `counters` event. A
/// missing field fails the test (it is not read as 0).
pub fn fault_counters(event: &Value) -> (u64, u64, u64) {
    let f = &event["faults"][0];
    let field = |name: &str| {
        f[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no faults[0].{name} counter in the event: {event}"))
    };
    (field("matched"), field("injected"), field("guard_passed"))
}

/// No program of ours is loaded in the kernel.
pub fn none_of_ours_loaded() -> Result<bool> {
    let names = chaos_tests::loaded_prog_names()?;
    Ok(!names.iter().any(|n| n.starts_with("chaos_tc")))
}

/// Polls `what` every 50 ms for up to `secs`; its last answer.
pub fn eventually(secs: u64, mut what: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    what()
}
