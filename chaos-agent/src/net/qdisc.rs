//! What the kernel offers for delay and bandwidth: the fq qdisc (releases
//! packets at their departure time), netem (for comparison), ifb (ingress
//! delay) and writable `skb->tstamp`.
//!
//! A qdisc kind is only known for sure by asking the kernel for one: the
//! config may say `m` for a module that is not installed, and a module may
//! be loaded on first use. So each check makes a throwaway network
//! namespace (the child process alone `unshare`s it) and runs `tc` / `ip`
//! there on its `lo`; nothing outside that namespace is touched, and it
//! disappears with the child.

use std::{os::unix::process::CommandExt, process::Command};

use aya::util::KernelVersion;

/// The kernel config option that provides each qdisc or device kind.
pub fn config_option(kind: &str) -> &'static str {
    match kind {
        "fq" => "CONFIG_NET_SCH_FQ",
        "netem" => "CONFIG_NET_SCH_NETEM",
        "ifb" => "CONFIG_IFB",
        _ => "(unknown)",
    }
}

/// Runs `program args` in a fresh, private network namespace.
fn in_scratch_netns(program: &str, args: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: unshare is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd
        .output()
        .map_err(|e| format!("could not run {program} (iproute2) to ask the kernel: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
}

/// Ok when the kernel can make a root qdisc of `kind` (loading its module
/// if need be); otherwise what the kernel said.
pub fn qdisc_available(kind: &str) -> Result<(), String> {
    in_scratch_netns("tc", &["qdisc", "add", "dev", "lo", "root", kind])
}

/// Ok when the kernel can make an ifb device.
pub fn ifb_available() -> Result<(), String> {
    in_scratch_netns("ip", &["link", "add", "name", "chaosprobe0", "type", "ifb"])
}

/// `skb->tstamp` is writable from tc programs since Linux 5.0 (and fq has
/// honoured it as a departure time since 4.20).
pub fn tstamp_writable() -> Result<(), String> {
    let v = KernelVersion::current().map_err(|e| format!("kernel version unknown: {e}"))?;
    if v >= KernelVersion::new(5, 0, 0) {
        Ok(())
    } else {
        Err(format!(
            "tc programs can set skb->tstamp from Linux 5.0; this is {v}"
        ))
    }
}

/// The message of exit 3 for a fault that needs `kind`.
pub fn missing(action: &str, kind: &str, why: &str) -> String {
    format!(
        "{action} needs the {kind} qdisc ({}); the kernel said: {why}",
        config_option(kind)
    )
}

// fq's horizon is a limit on the policy, checked at validation.
pub use crate::policy::limits::{FQ_HORIZON, check_horizon};
