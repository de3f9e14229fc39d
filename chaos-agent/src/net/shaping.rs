//! The qdiscs and devices delay and bandwidth need, and undoing them.
//!
//! The programs only stamp packets with a departure time; an fq qdisc holds
//! them until then. On egress that is the interface's root qdisc; on ingress
//! an ifb device of our own (with fq) that the program redirects to.
//!
//! We only ever replace what we can restore exactly. A root qdisc with
//! handle `0:` was made by the kernel (the device's default: `noqueue` on
//! veth, `mq` with default children on multi-queue NICs, `pfifo_fast` or
//! `fq_codel` elsewhere); deleting our replacement makes the kernel build the
//! same default again, byte for byte in `tc -d qdisc show`. A root someone
//! configured (any other handle) is left alone: if it is fq we use it as it
//! is, otherwise delay on that interface is refused. Our root carries handle
//! `ca05:` (fq, or on a multi-queue device an mq with fq `ca06:` and up
//! under its queues), so start-up clean-up can tell ours from anyone
//! else's after a crash.
//!
//! Within one process ([`Shaper`], owned by the network host), interfaces
//! are shared by reference count: two faults (or two daemon policies) on
//! one interface install fq once and remove it when the last goes.

use std::collections::BTreeMap;

use chaos_common::{FQ_HANDLE_MAJOR, IFB_PREFIX};
use tracing::{info, warn};

use super::{
    journal::{Journal, Shaping},
    netns::{self, NetnsGuard},
    rtnl::{FqOptions, Qdisc, Rtnl, TC_H_CLSACT, TC_H_ROOT},
};
use crate::{
    error::{Error, Result},
    policy::limits::FQ_HORIZON,
};

/// fq's defaults hold 100 packets per flow and 10,000 in all: one UDP flow
/// at 5,000 packets per second delayed by 100 ms is 500 packets in flight,
/// and fq would drop most of them. These hold 10,000 per flow. The horizon
/// is the kernel's default, stated so that validation's limit
/// ([`FQ_HORIZON`]) is the qdisc's whatever the kernel's default.
const FQ: FqOptions = FqOptions {
    limit: 100_000,
    flow_limit: 10_000,
    horizon_us: FQ_HORIZON.as_micros() as u32,
};

/// A handle as `tc` prints it (`ca05:`, `ca05:1`).
fn handle_text(handle: u32) -> String {
    match handle & 0xffff {
        0 => format!("{:x}:", handle >> 16),
        minor => format!("{:x}:{minor:x}", handle >> 16),
    }
}

fn our_handle(handle: u32) -> bool {
    let major = (handle >> 16) as u16;
    (FQ_HANDLE_MAJOR..FQ_HANDLE_MAJOR + 0x1000).contains(&major)
}

/// A route netlink socket in the current thread's namespace, and the index
/// of `iface` there.
fn open(iface: &str) -> std::result::Result<(Rtnl, u32), String> {
    let index = netns::ifindex(iface).ok_or_else(|| format!("{iface} is gone"))?;
    let nl = Rtnl::open().map_err(|e| e.to_string())?;
    Ok((nl, index))
}

/// What is at the root of an interface, as far as delay is concerned.
#[derive(Debug, PartialEq, Eq)]
enum Root {
    /// Already fq, or ours (another agent's): use it.
    Usable,
    /// The kernel's default, single qdisc: replace it.
    Default,
    /// The kernel's default mq with this many queues: replace it with our
    /// mq and fq under each queue.
    DefaultMq(usize),
    /// Configured by someone: leave it.
    Configured { kind: String, handle: u32 },
}

fn classify_root(list: &[Qdisc]) -> Root {
    let Some(root) = list.iter().find(|q| q.is_root()) else {
        return Root::Default;
    };
    if root.kind == "fq" || our_handle(root.handle) {
        return Root::Usable;
    }
    if root.handle != 0 {
        return Root::Configured {
            kind: root.kind.clone(),
            handle: root.handle,
        };
    }
    if root.kind != "mq" {
        return Root::Default;
    }
    // The queues' qdiscs; clsact or ingress (for our filters or anyone's)
    // hang off the device, not off mq.
    let children: Vec<&Qdisc> = list
        .iter()
        .filter(|q| !q.is_root() && q.parent != TC_H_CLSACT)
        .collect();
    if let Some(c) = children.iter().find(|q| q.handle != 0) {
        return Root::Configured {
            kind: format!("mq with a configured {} child", c.kind),
            handle: c.handle,
        };
    }
    Root::DefaultMq(children.len())
}

/// Puts fq at the root of `iface` (current namespace) unless it is there.
/// Returns true when we installed it (and so must remove it).
fn install_fq(iface: &str) -> Result<bool> {
    let reading = |e: String| Error::Runtime(format!("reading the qdiscs of {iface}: {e}"));
    let (mut nl, index) = open(iface).map_err(reading)?;
    let list = nl.qdiscs(index).map_err(|e| reading(e.to_string()))?;
    let ours = u32::from(FQ_HANDLE_MAJOR) << 16;
    match classify_root(&list) {
        Root::Usable => Ok(false),
        Root::Configured { kind, handle } => Err(Error::Unsupported(format!(
            "{iface} has a configured root qdisc ({kind} {}); delay and bandwidth need fq there, and chaos-agent replaces only a kernel default it can restore exactly; replace it with fq yourself to use them on {iface}",
            handle_text(handle)
        ))),
        Root::Default => {
            nl.replace_qdisc(index, TC_H_ROOT, ours, "fq", FQ.to_options())
                .map_err(|e| Error::Runtime(format!("installing fq on {iface} failed: {e}")))?;
            Ok(true)
        }
        Root::DefaultMq(queues) => {
            // Our own mq (the default one's children cannot be addressed:
            // its handle is 0), then fq under each of its classes.
            nl.replace_qdisc(index, TC_H_ROOT, ours, "mq", vec![])
                .map_err(|e| Error::Runtime(format!("installing mq on {iface} failed: {e}")))?;
            for queue in 1..=queues as u32 {
                let parent = ours | queue;
                let child = ours + (queue << 16);
                if let Err(e) = nl.replace_qdisc(index, parent, child, "fq", FQ.to_options()) {
                    // Back to the kernel's default before reporting.
                    let _ = nl.delete_qdisc(index, TC_H_ROOT, None);
                    return Err(Error::Runtime(format!(
                        "installing fq under mq {} on {iface} failed: {e}",
                        handle_text(parent)
                    )));
                }
            }
            Ok(true)
        }
    }
}

/// Deletes the root qdisc of `iface` if it is ours, which brings back the
/// kernel's default.
fn remove_fq(iface: &str) -> std::result::Result<(), String> {
    let (mut nl, index) = open(iface)?;
    let list = nl.qdiscs(index).map_err(|e| e.to_string())?;
    let ours = list.iter().any(|q| q.is_root() && our_handle(q.handle));
    if !ours {
        return Ok(());
    }
    nl.delete_qdisc(index, TC_H_ROOT, None)
        .map_err(|e| e.to_string())
}

/// Deletes the link `name` of the current namespace.
fn delete_link(name: &str) -> std::result::Result<(), String> {
    let (mut nl, index) = open(name)?;
    nl.delete_link(index).map_err(|e| e.to_string())
}

/// The name of the ifb device for ingress delay on the interface `ifindex`.
pub fn ifb_name(ifindex: u32) -> String {
    format!("{IFB_PREFIX}{ifindex}")
}

/// Creates the ifb device (up, with fq) unless it exists. Returns true
/// when we created it.
fn install_ifb(ifb: &str) -> Result<bool> {
    if netns::ifindex(ifb).is_some() {
        return Ok(false);
    }
    let creating = |e: String| {
        Error::Runtime(format!(
            "creating the ifb device {ifb} failed: {e} (ingress delay needs CONFIG_IFB)"
        ))
    };
    let mut nl = Rtnl::open().map_err(|e| creating(e.to_string()))?;
    nl.add_ifb(ifb).map_err(|e| creating(e.to_string()))?;
    let ready = netns::ifindex(ifb)
        .ok_or_else(|| creating(format!("{ifb} is not there after its creation")))
        .and_then(|index| {
            nl.set_up(index)
                .map_err(|e| Error::Runtime(format!("bringing {ifb} up failed: {e}")))
        })
        .and_then(|()| install_fq(ifb).map(|_| ()));
    if let Err(e) = ready {
        let _ = delete_link(ifb);
        return Err(e);
    }
    Ok(true)
}

/// Undoes one recorded change in its namespace. Quiet when it is gone.
pub fn undo(s: &Shaping) -> std::result::Result<(), String> {
    let (netns, name) = match s {
        Shaping::Fq { netns, iface } => (netns, iface),
        Shaping::Ifb { netns, ifb } => (netns, ifb),
    };
    let Ok(_ns) = NetnsGuard::enter(netns.as_deref()) else {
        // The namespace is gone, and everything in it.
        return Ok(());
    };
    if netns::ifindex(name).is_none() {
        return Ok(());
    }
    match s {
        Shaping::Fq { iface, .. } => remove_fq(iface)
            .map_err(|e| format!("could not restore the root qdisc of {iface}: {e}")),
        Shaping::Ifb { ifb, .. } => {
            delete_link(ifb).map_err(|e| format!("could not delete {ifb}: {e}"))
        }
    }
}

/// Removes our ifb devices (by name) and our root qdiscs (by handle) from
/// the current namespace; start-up clean-up calls it when no agent is
/// alive, for state whose record was lost (a wiped `/run`).
pub fn clean_namespace(interfaces: &[String]) {
    for iface in interfaces.iter().filter(|i| i.starts_with(IFB_PREFIX)) {
        match delete_link(iface) {
            Ok(()) => info!(iface, "removed a leftover ifb device of an earlier run"),
            Err(e) => warn!(iface, "leftover ifb device not removed: {e}"),
        }
    }
    // One dump for all interfaces.
    let ours = Rtnl::open().and_then(|mut nl| {
        let roots: Vec<u32> = nl
            .all_qdiscs()?
            .into_iter()
            .filter(|(_, q)| q.is_root() && our_handle(q.handle))
            .map(|(index, _)| index)
            .collect();
        Ok((nl, roots))
    });
    let (mut nl, roots) = match ours {
        Ok(found) => found,
        Err(e) => {
            warn!("could not look for leftover qdiscs: {e}");
            return;
        }
    };
    for index in roots {
        match nl.delete_qdisc(index, TC_H_ROOT, None) {
            Ok(()) => info!(ifindex = index, "removed a leftover fq of an earlier run"),
            Err(e) => warn!(ifindex = index, "leftover fq not removed: {e}"),
        }
    }
}

/// This process's holds on shaped interfaces: how many faults use each,
/// and whether we installed it (and so must undo it).
#[derive(Default)]
pub struct Shaper {
    holds: BTreeMap<Shaping, (usize, bool)>,
}

/// A hold on one shaped interface or ifb; given back with
/// [`Shaper::release`].
#[derive(Debug)]
pub struct Hold(Shaping);

impl Shaper {
    /// Makes sure `what` is in place (in its namespace), counting holds.
    /// Recorded in `journal` before it is made, so no crash can leave it
    /// unrecorded; the record goes again if it turns out to be someone
    /// else's.
    pub fn acquire(&mut self, what: Shaping, journal: &mut Journal) -> Result<Hold> {
        if let Some((count, _)) = self.holds.get_mut(&what) {
            *count += 1;
            return Ok(Hold(what));
        }
        journal.add_shaping(what.clone())?;
        let created = NetnsGuard::enter(what.netns()).and_then(|_ns| match &what {
            Shaping::Fq { iface, .. } => install_fq(iface),
            Shaping::Ifb { ifb, .. } => install_ifb(ifb),
        });
        let created = match created {
            Ok(created) => created,
            Err(e) => {
                if let Err(e) = journal.remove_shaping(&what) {
                    warn!("{e}");
                }
                return Err(e);
            }
        };
        if created {
            info!(?what, "installed for delay");
        } else if let Err(e) = journal.remove_shaping(&what) {
            warn!("{e}");
        }
        self.holds.insert(what.clone(), (1, created));
        Ok(Hold(what))
    }

    /// Gives a hold back; the last one undoes what we installed.
    pub fn release(
        &mut self,
        hold: Hold,
        journal: &mut Journal,
    ) -> std::result::Result<(), String> {
        let Some((count, created)) = self.holds.get_mut(&hold.0) else {
            return Ok(());
        };
        *count -= 1;
        if *count > 0 {
            return Ok(());
        }
        let created = *created;
        self.holds.remove(&hold.0);
        if !created {
            return Ok(());
        }
        undo(&hold.0)?;
        journal.remove_shaping(&hold.0).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(kind: &str, handle: u32, parent: u32) -> Qdisc {
        Qdisc {
            kind: kind.into(),
            handle,
            parent,
        }
    }

    #[test]
    fn kernel_defaults_are_replaced_configured_roots_are_not() {
        let veth = [q("noqueue", 0, TC_H_ROOT)];
        assert_eq!(classify_root(&veth), Root::Default);
        let mq = [
            q("mq", 0, TC_H_ROOT),
            q("fq_codel", 0, 2),
            q("fq_codel", 0, 1),
        ];
        assert_eq!(classify_root(&mq), Root::DefaultMq(2));
        // A clsact for filters is no queue of mq's.
        let mq_clsact = [
            q("mq", 0, TC_H_ROOT),
            q("fq_codel", 0, 1),
            q("clsact", 0xffff_0000, TC_H_CLSACT),
        ];
        assert_eq!(classify_root(&mq_clsact), Root::DefaultMq(1));
        let htb = [q("htb", 0x0001_0000, TC_H_ROOT)];
        assert!(matches!(classify_root(&htb), Root::Configured { .. }));
        let users_fq = [q("fq", 0x8001_0000, TC_H_ROOT)];
        assert_eq!(classify_root(&users_fq), Root::Usable);
        let mq_configured = [q("mq", 0, TC_H_ROOT), q("sfq", 0x8002_0000, 1)];
        assert!(matches!(
            classify_root(&mq_configured),
            Root::Configured { .. }
        ));
        let ours_mq = [
            q("mq", 0xca05_0000, TC_H_ROOT),
            q("fq", 0xca06_0000, 0xca05_0001),
        ];
        assert_eq!(classify_root(&ours_mq), Root::Usable);
        assert_eq!(classify_root(&[]), Root::Default);
    }

    #[test]
    fn our_handles_are_recognised() {
        assert!(our_handle(0xca05_0000));
        assert!(our_handle(0xca06_0000));
        assert!(!our_handle(0));
        assert!(!our_handle(0x8001_0000));
        assert!(!our_handle(0x0001_0000));
    }

    #[test]
    fn handles_print_as_tc_prints_them() {
        assert_eq!(handle_text(0xca05_0000), "ca05:");
        assert_eq!(handle_text(0xca05_0003), "ca05:3");
        assert_eq!(handle_text(0), "0:");
    }

    #[test]
    fn fq_gets_the_horizon_validation_checks_against() {
        assert_eq!(u128::from(FQ.horizon_us), FQ_HORIZON.as_micros());
    }
}
