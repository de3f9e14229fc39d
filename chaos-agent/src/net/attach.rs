//! Attaching a classifier to one hook (interface and direction) and taking
//! it off again: tcx links (Linux 6.6+, owned by our file descriptors) or
//! netlink filters on a clsact qdisc (persistent; recorded in the journal).
//! Every function here works in the calling thread's network namespace.

use std::{collections::BTreeSet, process::Command};

use aya::programs::{
    SchedClassifier, TcAttachType,
    links::LinkOrder,
    tc::{self, NlOptions, SchedClassifierLink, TcAttach, TcHandle},
};
use chaos_common::DIR_INGRESS;
use tracing::warn;

use super::journal::NetlinkRecord;
use crate::{
    error::{Error, Result, map_err},
    fault::Backend,
};

pub fn direction_name(d: u32) -> &'static str {
    if d == DIR_INGRESS {
        "ingress"
    } else {
        "egress"
    }
}

fn attach_type(direction: u32) -> TcAttachType {
    if direction == DIR_INGRESS {
        TcAttachType::Ingress
    } else {
        TcAttachType::Egress
    }
}

/// One program attached to one hook.
pub struct Attached {
    pub link: SchedClassifierLink,
    /// With netlink: the filter as recorded in the journal.
    pub netlink: Option<NetlinkRecord>,
}

/// The clsact qdiscs this process added, by (netns, interface): they go
/// with the last of our filters on them, whichever fault added them.
pub type Clsacts = BTreeSet<(Option<String>, String)>;

/// Attaches `prog` (loaded) to `iface` in `direction`.
pub fn attach(
    prog: &mut SchedClassifier,
    netns: Option<&str>,
    iface: &str,
    direction: u32,
    mode: Backend,
    clsacts: &mut Clsacts,
) -> Result<Attached> {
    let iface_c = std::ffi::CString::new(iface)
        .map_err(|_| Error::Invalid(format!("interface {iface:?}")))?;
    let where_ = format!("{iface} {}", direction_name(direction));
    if mode == Backend::Tcx {
        let id = prog
            .attach(
                iface_c.as_c_str(),
                TcAttach::Tcx {
                    attach_type: attach_type(direction),
                    order: LinkOrder::default(),
                },
            )
            .map_err(|e| Error::Runtime(format!("tcx attach on {where_} failed: {e}")))?;
        let link = prog.take_link(id).map_err(|e| map_err(&where_, e))?;
        return Ok(Attached {
            link,
            netlink: None,
        });
    }
    let key = (netns.map(str::to_owned), iface.to_owned());
    let created_clsact = match tc::qdisc_add_clsact(iface_c.as_c_str()) {
        Ok(()) => {
            clsacts.insert(key);
            true
        }
        // Made by this process for another fault: still ours to remove once
        // the last of our filters is gone.
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {
            clsacts.contains(&key)
        }
        Err(e) => {
            return Err(Error::Runtime(format!(
                "adding the clsact qdisc on {iface} failed: {e}"
            )));
        }
    };
    let id = prog
        .attach(
            iface_c.as_c_str(),
            TcAttach::Netlink {
                parent: attach_type(direction).into(),
                options: NlOptions::default(),
            },
        )
        .map_err(|e| Error::Runtime(format!("netlink attach on {where_} failed: {e}")))?;
    let link = prog.take_link(id).map_err(|e| map_err(&where_, e))?;
    let record = NetlinkRecord {
        netns: netns.map(str::to_owned),
        iface: iface.to_owned(),
        direction,
        priority: link.priority().map_err(|e| map_err(&where_, e))?,
        handle: u32::from(link.handle().map_err(|e| map_err(&where_, e))?),
        created_clsact,
    };
    Ok(Attached {
        link,
        netlink: Some(record),
    })
}

/// Takes a program off its hook (netlink filters in the namespace they
/// live in: the caller is in it). A clsact qdisc we added goes once no
/// filter is left on it.
pub fn detach(a: Attached, netns: Option<&str>, iface: &str, clsacts: &mut Clsacts) -> Result<()> {
    let gone = aya::programs::links::Link::detach(a.link);
    if let Err(e) = gone
        && super::netns::ifindex(iface).is_some()
    {
        return Err(Error::Runtime(format!(
            "could not detach from {iface}: {e}"
        )));
    }
    let key = (netns.map(str::to_owned), iface.to_owned());
    if a.netlink.is_some() && clsacts.contains(&key) && remove_clsact_if_empty(iface) {
        clsacts.remove(&key);
    }
    Ok(())
}

/// Removes a recorded filter of a dead agent (caller in its namespace).
pub fn detach_recorded(r: &NetlinkRecord) -> std::result::Result<(), String> {
    let iface = std::ffi::CString::new(r.iface.as_str()).map_err(|e| e.to_string())?;
    let parent: TcHandle = attach_type(r.direction).into();
    let link = SchedClassifierLink::attached(
        iface.as_c_str(),
        parent,
        r.priority,
        TcHandle::from(r.handle),
        None,
    )
    .map_err(|e| e.to_string())?;
    aya::programs::links::Link::detach(link).map_err(|e| e.to_string())
}

/// Deletes a clsact qdisc we added, once no filter is left on it (someone
/// else may have added theirs meanwhile). Uses `tc` from iproute2; without
/// it the empty qdisc stays, which changes no packet. True when it is gone.
pub fn remove_clsact_if_empty(iface: &str) -> bool {
    let shows_filters = |dir: &str| {
        Command::new("tc")
            .args(["filter", "show", "dev", iface, dir])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(true)
    };
    if shows_filters("ingress") || shows_filters("egress") {
        return false;
    }
    match Command::new("tc")
        .args(["qdisc", "del", "dev", iface, "clsact"])
        .output()
    {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            warn!(
                iface,
                "could not remove our clsact qdisc: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            warn!(iface, "could not run tc to remove our clsact qdisc: {e}");
            false
        }
    }
}
