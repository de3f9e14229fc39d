//! The control socket's client side: `chaos-agent status` and `stop`.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    process::ExitCode,
    time::Duration,
};

use super::{
    proto::{Reply, Request, Status, Stopped},
    run_dir, socket_path,
};
use crate::error::{Error, Result};

/// How long to wait for the daemon's reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends `request` to the daemon and returns its reply.
pub fn call(request: &Request) -> Result<Reply> {
    let path = socket_path(&run_dir());
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        Error::Runtime(format!(
            "cannot reach the daemon at {}: {e} (is `chaos-agent run` running, and are you root?)",
            path.display()
        ))
    })?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|e| Error::Runtime(e.to_string()))?;
    let text = serde_json::to_string(request).map_err(|e| Error::Runtime(e.to_string()))?;
    // A refused caller is answered without its request being read, so a
    // failed write still leaves a reply to read.
    let sent = writeln!(stream, "{text}");
    let mut line = String::new();
    let read = BufReader::new(&stream).read_line(&mut line);
    if line.is_empty() {
        let e = match (sent, read) {
            (Err(e), _) | (_, Err(e)) => e.to_string(),
            _ => "no reply".to_owned(),
        };
        return Err(Error::Runtime(format!("{}: {e}", path.display())));
    }
    let reply: Reply = serde_json::from_str(&line)
        .map_err(|e| Error::Runtime(format!("bad reply from the daemon: {e}: {line:?}")))?;
    match reply {
        Reply::Error(e) => Err(Error::Runtime(format!("daemon: {e}"))),
        r => Ok(r),
    }
}

fn unexpected(r: &Reply) -> Error {
    Error::Runtime(format!("unexpected reply from the daemon: {r:?}"))
}

/// `chaos-agent status [--json]`.
pub fn status(json: bool) -> Result<ExitCode> {
    let status = match call(&Request::Status)? {
        Reply::Status(s) => s,
        other => return Err(unexpected(&other)),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(&status).expect("status serialises")
        );
    } else {
        print!("{}", render_status(&status));
    }
    Ok(ExitCode::SUCCESS)
}

fn state_name<T: serde::Serialize>(s: &T) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn render_status(v: &Status) -> String {
    let mut out = format!("daemon pid {}, policies from {}\n", v.pid, v.policies_dir);
    if v.policies.is_empty() {
        out.push_str("no policies loaded\n");
    }
    for p in &v.policies {
        let left = p
            .time_left_ms
            .map(|ms| {
                humantime::format_duration(Duration::from_millis(ms / 1000 * 1000)).to_string()
            })
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{}{} [{}] {} left {}{}\n",
            p.name,
            if p.shadow { " (shadow)" } else { "" },
            state_name(&p.state),
            p.file,
            left,
            p.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ));
        for f in &p.faults {
            let place = match (&f.interface, &f.syscall) {
                (Some(iface), _) => format!(
                    "on {iface}{} {}",
                    f.netns
                        .as_deref()
                        .map(|ns| format!(" (netns {ns})"))
                        .unwrap_or_default(),
                    f.direction.as_deref().unwrap_or("-")
                ),
                (None, Some(calls)) => format!(
                    "of {calls} for {}{}",
                    f.target.as_deref().unwrap_or("-"),
                    f.backend
                        .as_deref()
                        .map(|b| format!(" via {b}"))
                        .unwrap_or_default()
                ),
                (None, None) => String::new(),
            };
            out.push_str(&format!(
                "  {} {} {place} [{}{}]: matched {} {} {} guard-passed {}{}\n",
                f.fault,
                f.action,
                state_name(&f.state),
                f.phase
                    .as_deref()
                    .map(|p| format!(", flap {p}"))
                    .unwrap_or_default(),
                f.matched,
                if f.shadow { "would inject" } else { "injected" },
                f.injected,
                f.guard_passed,
                f.problem
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ));
        }
    }
    for e in &v.file_errors {
        out.push_str(&format!("rejected: {}\n", e.error));
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
    let Stopped {
        stopped,
        unknown,
        left,
    } = match call(&Request::Stop {
        policies: policies.to_vec(),
        all,
    })? {
        Reply::Stopped(s) => s,
        other => return Err(unexpected(&other)),
    };
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
    if !left.is_empty() {
        return Err(Error::Runtime(format!(
            "revert incomplete; left behind: {}",
            left.join("; ")
        )));
    }
    Ok(ExitCode::SUCCESS)
}
