//! The daemon's control socket: a Unix stream socket in the run directory
//! (`/run/chaos-agent/control.sock`, mode 0600 in a 0700 directory), one
//! JSON request line and one JSON answer line per connection. Only root may
//! talk to it: besides the file mode, the peer's uid is checked with
//! `SO_PEERCRED` and anyone else is answered with an error and closed.
//!
//! `stop --all` (the kill switch) raises a flag the daemon checks between
//! every fault it applies, so it interrupts a reload in progress instead of
//! queueing behind it.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::{
        fd::AsRawFd,
        unix::{
            fs::PermissionsExt,
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{Sender, channel},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, warn};

use crate::{
    daemon::Event,
    error::{Error, Result},
};

/// The run directory: `CHAOS_AGENT_RUN_DIR`, else `/run/chaos-agent`.
pub fn run_dir() -> PathBuf {
    std::env::var_os("CHAOS_AGENT_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/chaos-agent"))
}

pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("control.sock")
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Stop {
        #[serde(default)]
        policies: Vec<String>,
        #[serde(default)]
        all: bool,
    },
}

const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request may wait for the daemon's main loop.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the socket (replacing a stale one: the pid lock proves no other
/// daemon owns it) and serves it on a thread.
pub fn serve(run_dir: &Path, events: Sender<Event>, kill: Arc<AtomicBool>) -> Result<PathBuf> {
    let path = socket_path(run_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| Error::Runtime(format!("cannot bind {}: {e}", path.display())))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::Runtime(format!("chmod {}: {e}", path.display())))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if let Err(e) = handle(stream, &events, &kill) {
                            debug!("control request: {e}");
                        }
                    }
                    Err(e) => {
                        warn!("control socket: accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map_err(|e| Error::Runtime(format!("cannot start the control thread: {e}")))?;
    Ok(path)
}

/// The uid of the process at the other end.
fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a ucred buffer of the given length on a socket we own.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

fn answer(stream: &mut UnixStream, v: &Value) -> std::io::Result<()> {
    writeln!(stream, "{v}")?;
    stream.flush()
}

fn handle(
    mut stream: UnixStream,
    events: &Sender<Event>,
    kill: &AtomicBool,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let uid = peer_uid(&stream)?;
    if uid != 0 {
        warn!(
            uid,
            "control socket: connection from a non-root user refused"
        );
        return answer(
            &mut stream,
            &serde_json::json!({"error": "permission denied: the control socket is for root only"}),
        );
    }
    let mut line = String::new();
    BufReader::new((&stream).take(64 * 1024)).read_line(&mut line)?;
    let request: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            return answer(
                &mut stream,
                &serde_json::json!({"error": format!("bad request: {e}")}),
            );
        }
    };
    if matches!(request, Request::Stop { all: true, .. }) {
        kill.store(true, Ordering::SeqCst);
    }
    let (tx, rx) = channel();
    if events.send(Event::Control(request, tx)).is_err() {
        return answer(
            &mut stream,
            &serde_json::json!({"error": "daemon is shutting down"}),
        );
    }
    let reply = rx
        .recv_timeout(ANSWER_TIMEOUT)
        .unwrap_or_else(|_| serde_json::json!({"error": "daemon did not answer in time"}));
    answer(&mut stream, &reply)
}

/// Client side: sends `request` to the daemon and returns its answer.
pub fn call(request: &Request) -> Result<Value> {
    let path = socket_path(&run_dir());
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        Error::Runtime(format!(
            "cannot reach the daemon at {}: {e} (is `chaos-agent run` running, and are you root?)",
            path.display()
        ))
    })?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT + IO_TIMEOUT))
        .map_err(|e| Error::Runtime(e.to_string()))?;
    let text = serde_json::to_string(request).map_err(|e| Error::Runtime(e.to_string()))?;
    // A refused caller is answered without its request being read, so a
    // failed write still leaves an answer to read.
    let sent = writeln!(stream, "{text}");
    let mut line = String::new();
    let read = BufReader::new(&stream).read_line(&mut line);
    if line.is_empty() {
        let e = match (sent, read) {
            (Err(e), _) | (_, Err(e)) => e.to_string(),
            _ => "no answer".to_owned(),
        };
        return Err(Error::Runtime(format!("{}: {e}", path.display())));
    }
    let v: Value = serde_json::from_str(&line)
        .map_err(|e| Error::Runtime(format!("bad answer from the daemon: {e}: {line:?}")))?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(Error::Runtime(format!("daemon: {e}")));
    }
    Ok(v)
}

/// `chaos-agent status [--json]`.
pub fn status(json: bool) -> Result<ExitCode> {
    let v = call(&Request::Status)?;
    if json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_status(&v));
    Ok(ExitCode::SUCCESS)
}

fn render_status(v: &Value) -> String {
    let mut out = String::new();
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("-").to_owned();
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    out.push_str(&format!(
        "daemon pid {}, policies from {}\n",
        n(v, "pid"),
        s(v, "policies_dir")
    ));
    let policies = v["policies"].as_array().cloned().unwrap_or_default();
    if policies.is_empty() {
        out.push_str("no policies loaded\n");
    }
    for p in &policies {
        let left = p["time_left_ms"]
            .as_u64()
            .map(|ms| {
                humantime::format_duration(Duration::from_millis(ms / 1000 * 1000)).to_string()
            })
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{} [{}] {} left {}{}\n",
            s(p, "name"),
            s(p, "state"),
            s(p, "file"),
            left,
            p["reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ));
        for f in p["faults"].as_array().cloned().unwrap_or_default() {
            out.push_str(&format!(
                "  {} {} on {}{} {} [{}]: matched {} injected {} guard-passed {}{}\n",
                s(&f, "fault"),
                s(&f, "action"),
                s(&f, "interface"),
                f["netns"]
                    .as_str()
                    .map(|ns| format!(" (netns {ns})"))
                    .unwrap_or_default(),
                s(&f, "direction"),
                s(&f, "state"),
                n(&f, "matched"),
                n(&f, "injected"),
                n(&f, "guard_passed"),
                f["problem"]
                    .as_str()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ));
        }
    }
    for e in v["file_errors"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!("rejected: {}\n", s(&e, "error")));
    }
    out
}

/// `chaos-agent stop POLICY...` / `stop --all`.
pub fn stop(policies: &[String], all: bool) -> Result<ExitCode> {
    if policies.is_empty() && !all {
        return Err(Error::Invalid(
            "stop needs policy names or --all (the kill switch)".into(),
        ));
    }
    let v = call(&Request::Stop {
        policies: policies.to_vec(),
        all,
    })?;
    let list = |k: &str| -> Vec<String> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let stopped = list("stopped");
    let unknown = list("unknown");
    println!(
        "stopped: {}",
        if stopped.is_empty() {
            "nothing".to_owned()
        } else {
            stopped.join(", ")
        }
    );
    if !unknown.is_empty() {
        return Err(Error::Invalid(format!(
            "no loaded policy named {}",
            unknown.join(", ")
        )));
    }
    let left = list("left");
    if !left.is_empty() {
        return Err(Error::Runtime(format!(
            "revert incomplete; left behind: {}",
            left.join("; ")
        )));
    }
    Ok(ExitCode::SUCCESS)
}
