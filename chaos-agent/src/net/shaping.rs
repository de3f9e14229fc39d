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

use std::{collections::BTreeMap, process::Command};

use chaos_common::{FQ_HANDLE_MAJOR, IFB_PREFIX};
use serde::Deserialize;
use tracing::{info, warn};

use super::{
    journal::{Journal, Shaping},
    netns::{self, NetnsGuard},
};
use crate::error::{Error, Result};

/// fq's defaults hold 100 packets per flow and 10,000 in all: one UDP flow
/// at 5,000 packets per second delayed by 100 ms is 500 packets in flight,
/// and fq would drop most of them. These hold 10,000 per flow.
const FQ_ARGS: &[&str] = &["fq", "limit", "100000", "flow_limit", "10000"];

/// One qdisc as `tc -j qdisc show` prints it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
struct Qdisc {
    kind: String,
    handle: String,
    #[serde(default)]
    root: bool,
}

fn tc(args: &[&str]) -> std::result::Result<String, String> {
    let out = Command::new("tc")
        .args(args)
        .output()
        .map_err(|e| format!("could not run tc (iproute2): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn ip(args: &[&str]) -> std::result::Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("could not run ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The qdiscs of `iface` in the current thread's namespace.
fn qdiscs(iface: &str) -> std::result::Result<Vec<Qdisc>, String> {
    let text = tc(&["-j", "qdisc", "show", "dev", iface])?;
    serde_json::from_str(&text).map_err(|e| format!("unexpected `tc -j qdisc show` output: {e}"))
}

fn our_handle(handle: &str) -> bool {
    let major = handle.split(':').next().unwrap_or("");
    u16::from_str_radix(major, 16)
        .is_ok_and(|m| (FQ_HANDLE_MAJOR..FQ_HANDLE_MAJOR + 0x1000).contains(&m))
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
    Configured { kind: String, handle: String },
}

fn classify_root(list: &[Qdisc]) -> Root {
    let Some(root) = list.iter().find(|q| q.root) else {
        return Root::Default;
    };
    if root.kind == "fq" || our_handle(&root.handle) {
        return Root::Usable;
    }
    if root.handle != "0:" {
        return Root::Configured {
            kind: root.kind.clone(),
            handle: root.handle.clone(),
        };
    }
    if root.kind != "mq" {
        return Root::Default;
    }
    let children: Vec<&Qdisc> = list.iter().filter(|q| !q.root).collect();
    if let Some(c) = children.iter().find(|q| q.handle != "0:") {
        return Root::Configured {
            kind: format!("mq with a configured {} child", c.kind),
            handle: c.handle.clone(),
        };
    }
    Root::DefaultMq(children.len())
}

/// Puts fq at the root of `iface` (current namespace) unless it is there.
/// Returns true when we installed it (and so must remove it).
fn install_fq(iface: &str) -> Result<bool> {
    let list =
        qdiscs(iface).map_err(|e| Error::Runtime(format!("reading the qdiscs of {iface}: {e}")))?;
    let handle = format!("{FQ_HANDLE_MAJOR:x}:");
    let root_with = |args: &[&str]| -> std::result::Result<String, String> {
        let mut all = vec!["qdisc", "replace", "dev", iface, "root", "handle", &handle];
        all.extend_from_slice(args);
        tc(&all)
    };
    match classify_root(&list) {
        Root::Usable => Ok(false),
        Root::Configured { kind, handle } => Err(Error::Unsupported(format!(
            "{iface} has a configured root qdisc ({kind} {handle}); delay and bandwidth need fq there, and chaos-agent replaces only a kernel default it can restore exactly; replace it with fq yourself to use them on {iface}"
        ))),
        Root::Default => {
            root_with(FQ_ARGS)
                .map_err(|e| Error::Runtime(format!("installing fq on {iface} failed: {e}")))?;
            Ok(true)
        }
        Root::DefaultMq(queues) => {
            // Our own mq (the default one's children cannot be addressed:
            // its handle is 0), then fq under each of its classes.
            root_with(&["mq"])
                .map_err(|e| Error::Runtime(format!("installing mq on {iface} failed: {e}")))?;
            for queue in 1..=queues {
                let parent = format!("{FQ_HANDLE_MAJOR:x}:{queue:x}");
                let child = format!("{:x}:", usize::from(FQ_HANDLE_MAJOR) + queue);
                let mut args = vec![
                    "qdisc", "replace", "dev", iface, "parent", &parent, "handle", &child,
                ];
                args.extend_from_slice(FQ_ARGS);
                if let Err(e) = tc(&args) {
                    // Back to the kernel's default before reporting.
                    let _ = tc(&["qdisc", "del", "dev", iface, "root"]);
                    return Err(Error::Runtime(format!(
                        "installing fq under mq {parent} on {iface} failed: {e}"
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
    let list = qdiscs(iface)?;
    let ours = list.iter().any(|q| q.root && our_handle(&q.handle));
    if !ours {
        return Ok(());
    }
    tc(&["qdisc", "del", "dev", iface, "root"]).map(|_| ())
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
    ip(&["link", "add", "name", ifb, "type", "ifb"]).map_err(|e| {
        Error::Runtime(format!(
            "creating the ifb device {ifb} failed: {e} (ingress delay needs CONFIG_IFB)"
        ))
    })?;
    let ready = ip(&["link", "set", "dev", ifb, "up"])
        .map_err(|e| Error::Runtime(format!("bringing {ifb} up failed: {e}")))
        .and_then(|()| install_fq(ifb).map(|_| ()));
    if let Err(e) = ready {
        let _ = ip(&["link", "del", "dev", ifb]);
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
            ip(&["link", "del", "dev", ifb]).map_err(|e| format!("could not delete {ifb}: {e}"))
        }
    }
}

/// Removes our ifb devices (by name) from the current namespace; start-up
/// clean-up calls it when no agent is alive. Our fq qdiscs need no such
/// scan: each is recorded in a state file before it is installed, and only
/// a reboot (which takes the qdisc along) empties `/run`.
pub fn clean_namespace(interfaces: &[String]) {
    for iface in interfaces.iter().filter(|i| i.starts_with(IFB_PREFIX)) {
        match ip(&["link", "del", "dev", iface]) {
            Ok(()) => info!(iface, "removed a leftover ifb device of an earlier run"),
            Err(e) => warn!(iface, "leftover ifb device not removed: {e}"),
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

    fn parse(json: &str) -> Vec<Qdisc> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn kernel_defaults_are_replaced_configured_roots_are_not() {
        let veth =
            parse(r#"[{"kind":"noqueue","handle":"0:","root":true,"refcnt":2,"options":{}}]"#);
        assert_eq!(classify_root(&veth), Root::Default);
        let mq = parse(
            r#"[{"kind":"mq","handle":"0:","root":true,"options":{}},
                {"kind":"fq_codel","handle":"0:","parent":":2","options":{}},
                {"kind":"fq_codel","handle":"0:","parent":":1","options":{}}]"#,
        );
        assert_eq!(classify_root(&mq), Root::DefaultMq(2));
        let htb = parse(r#"[{"kind":"htb","handle":"1:","root":true,"options":{}}]"#);
        assert!(matches!(classify_root(&htb), Root::Configured { .. }));
        let users_fq = parse(r#"[{"kind":"fq","handle":"8001:","root":true,"options":{}}]"#);
        assert_eq!(classify_root(&users_fq), Root::Usable);
        let mq_configured = parse(
            r#"[{"kind":"mq","handle":"0:","root":true,"options":{}},
                {"kind":"sfq","handle":"8002:","parent":":1","options":{}}]"#,
        );
        assert!(matches!(
            classify_root(&mq_configured),
            Root::Configured { .. }
        ));
        let ours_mq = parse(
            r#"[{"kind":"mq","handle":"ca05:","root":true,"options":{}},
                {"kind":"fq","handle":"ca06:","parent":"ca05:1","options":{}}]"#,
        );
        assert_eq!(classify_root(&ours_mq), Root::Usable);
    }

    #[test]
    fn our_handles_are_recognised() {
        assert!(our_handle("ca05:"));
        assert!(our_handle("ca06:"));
        assert!(!our_handle("0:"));
        assert!(!our_handle("8001:"));
        assert!(!our_handle("1:"));
    }
}
