//! What the kernel offers for delay and bandwidth: the fq qdisc (releases
//! packets at their departure time), netem (for comparison), ifb (ingress
//! delay) and writable `skb->tstamp`.
//!
//! A qdisc kind is only known for sure by asking the kernel for one: the
//! config may say `m` for a module that is not installed, and a module may
//! be loaded on first use. So each check asks over route netlink, from a
//! thread of ours in a throwaway network namespace, for the qdisc on that
//! namespace's `lo` (or for an ifb device there); nothing outside that
//! namespace is touched, and it disappears with the thread. No program is
//! run for it.

use std::fmt;

use aya::util::KernelVersion;

use super::{
    netns,
    rtnl::{Rtnl, RtnlError},
};

/// The kernel config option that provides each qdisc or device kind.
pub fn config_option(kind: &str) -> &'static str {
    match kind {
        "fq" => "CONFIG_NET_SCH_FQ",
        "netem" => "CONFIG_NET_SCH_NETEM",
        "ifb" => "CONFIG_IFB",
        _ => "(unknown)",
    }
}

/// Why a kind could not be had.
#[derive(Debug)]
pub enum Unavailable {
    /// The kernel does not know the kind (even after trying to load its
    /// module): its config option is missing.
    Missing(String),
    /// We could not ask, or the kernel refused for another reason (no
    /// CAP_SYS_ADMIN for the namespace, say): that says nothing about the
    /// kernel's config.
    NotAsked(String),
}

impl Unavailable {
    pub fn is_missing(&self) -> bool {
        matches!(self, Unavailable::Missing(_))
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::Missing(why) | Unavailable::NotAsked(why) => f.write_str(why),
        }
    }
}

/// `ask` on a route netlink socket in a throwaway namespace.
fn in_scratch_netns(
    ask: impl FnOnce(&mut Rtnl) -> Result<(), RtnlError> + Send + 'static,
) -> Result<(), Unavailable> {
    let answer = netns::in_scratch_netns(move || Rtnl::open().and_then(|mut nl| ask(&mut nl)))
        .map_err(|e| {
            Unavailable::NotAsked(format!(
                "could not make a throwaway network namespace to ask the kernel in: {e}"
            ))
        })?;
    answer.map_err(|e| {
        if e.is_unknown_kind() {
            Unavailable::Missing(e.to_string())
        } else {
            Unavailable::NotAsked(format!("could not ask the kernel: {e}"))
        }
    })
}

/// The loopback device of a new namespace.
const LO_IFINDEX: u32 = 1;

/// Ok when the kernel can make a root qdisc of `kind` (loading its module
/// if need be).
pub fn qdisc_available(kind: &str) -> Result<(), Unavailable> {
    let kind = kind.to_owned();
    in_scratch_netns(move |nl| nl.add_root_qdisc(LO_IFINDEX, &kind))
}

/// Ok when the kernel can make an ifb device.
pub fn ifb_available() -> Result<(), Unavailable> {
    in_scratch_netns(|nl| nl.add_ifb("chaosprobe0"))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs as root only (it makes a network namespace); the probe of a
    /// kind no kernel has must name it missing, not fail to ask.
    #[test]
    fn an_unknown_qdisc_kind_is_missing_not_unasked() {
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: needs root (CAP_SYS_ADMIN) to make a network namespace");
            return;
        }
        let e = qdisc_available("chaosnosuchqdisc").unwrap_err();
        assert!(e.is_missing(), "{e}");
        assert!(e.to_string().contains("unknown"), "{e}");
    }
}
