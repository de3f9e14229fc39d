//! systemd's notification protocol (sd_notify(3)), without libsystemd: one
//! datagram per state change to the socket named by `NOTIFY_SOCKET`, and
//! `WATCHDOG=1` at half the interval systemd asked for in `WATCHDOG_USEC`.
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use std::{
    os::unix::net::{SocketAddr, UnixDatagram},
    time::{Duration, Instant},
};

use tracing::debug;

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    last_ping: Instant,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (the latter only when
    /// `WATCHDOG_PID` is unset or names this process).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let addr = if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            } else {
                SocketAddr::from_pathname(&path).ok()?
            };
            let sock = UnixDatagram::unbound().ok()?;
            // Never wait for the listener: a full queue (nobody reading)
            // loses a notification instead of stopping the daemon's loop.
            sock.set_nonblocking(true).ok()?;
            Some((sock, addr))
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .map(|p| p.parse() == Ok(std::process::id()))
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&us| us > 0 && for_us)
            .map(|us| Duration::from_micros(us / 2));
        Notifier {
            target,
            watchdog,
            last_ping: Instant::now(),
        }
    }

    /// Sends `state` (lines of `KEY=VALUE`) without waiting; failures are
    /// only logged: the daemon works the same without a service manager
    /// listening.
    pub fn send(&self, state: &str) {
        if let Some((sock, addr)) = &self.target
            && let Err(e) = sock.send_to_addr(state.as_bytes(), addr)
        {
            debug!("sd_notify {state:?}: {e}");
        }
    }

    pub fn ready(&self) {
        self.send(&format!(
            "READY=1\nSTATUS=running\nMAINPID={}",
            std::process::id()
        ));
    }

    /// `RELOADING=1` carries the monotonic time systemd uses to match the
    /// reload with its `READY=1`.
    pub fn reloading(&self) {
        let usec = crate::fault::monotonic_ns() / 1000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// When the watchdog ping is next due, if systemd asked for one.
    pub fn watchdog_due(&self) -> Option<Instant> {
        self.watchdog.map(|every| self.last_ping + every)
    }

    /// Pings the watchdog if due. Called from the main loop, so a hung loop
    /// stops the pings and systemd restarts the agent.
    pub fn tick(&mut self) {
        if let Some(due) = self.watchdog_due()
            && Instant::now() >= due
        {
            self.send("WATCHDOG=1");
            self.last_ping = Instant::now();
        }
    }
}
