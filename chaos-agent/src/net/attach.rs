//! Attaching a classifier to one hook (interface and direction) and taking
//! it off again: tcx links (Linux 6.6+, owned by our file descriptors) or
//! netlink filters on a clsact qdisc (persistent; recorded in the journal).
//! Every function here works in the calling thread's network namespace.
//!
//! A clsact qdisc that a chaos-agent added is marked with a file under
//! `/run/chaos-agent/clsact/` (`host/IFACE`, `netns/NAME/IFACE`), whichever
//! process added it: the last of our processes to take its filter off
//! removes the clsact when no filter at all is left on it (someone else may
//! have added theirs), and so does start-up clean-up after a crash. So two
//! agents sharing an interface leave its qdiscs as they found them, in
//! whichever order they end.

use std::path::{Path, PathBuf};

use aya::programs::{
    SchedClassifier, TcAttachType,
    links::LinkOrder,
    tc::{self, NlOptions, SchedClassifierLink, TcAttach, TcHandle},
};
use chaos_common::DIR_INGRESS;
use tracing::warn;

use super::{
    journal::NetlinkRecord,
    rtnl::{Rtnl, TC_H_CLSACT, TC_H_CLSACT_EGRESS, TC_H_CLSACT_INGRESS},
};
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

/// Where the marks of the clsact qdiscs our agents added are.
const CLSACT_DIR: &str = "/run/chaos-agent/clsact";

fn clsact_mark(netns: Option<&str>, iface: &str) -> PathBuf {
    let base = Path::new(CLSACT_DIR);
    match netns {
        None => base.join("host").join(iface),
        Some(ns) => base.join("netns").join(ns).join(iface),
    }
}

/// Marks the clsact of `iface` as added by one of our agents (before the
/// qdisc is added, so no crash leaves it unmarked).
fn mark_clsact(netns: Option<&str>, iface: &str) -> Result<()> {
    let path = clsact_mark(netns, iface);
    std::fs::create_dir_all(path.parent().expect("has a parent"))
        .and_then(|()| std::fs::write(&path, b""))
        .map_err(|e| Error::Runtime(format!("cannot write {}: {e}", path.display())))
}

/// Forgets the mark of a clsact whose interface (or namespace) is gone:
/// the qdisc went with it.
pub fn forget_clsact_mark(netns: Option<&str>, iface: &str) {
    let path = clsact_mark(netns, iface);
    let _ = std::fs::remove_file(&path);
    if let (Some(_), Some(dir)) = (netns, path.parent()) {
        // The namespace's directory, once empty.
        let _ = std::fs::remove_dir(dir);
    }
}

/// The clsact marks there are: (netns, interface).
pub fn clsact_marks() -> Vec<(Option<String>, String)> {
    let base = Path::new(CLSACT_DIR);
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out: Vec<(Option<String>, String)> = names(&base.join("host"))
        .into_iter()
        .map(|iface| (None, iface))
        .collect();
    for ns in names(&base.join("netns")) {
        for iface in names(&base.join("netns").join(&ns)) {
            out.push((Some(ns.clone()), iface));
        }
    }
    out
}

/// Removes the clsact of `iface` (the caller is in its namespace) if one
/// of our agents added it and no filter is left on it.
pub fn remove_clsact_if_ours_and_empty(netns: Option<&str>, iface: &str) {
    let mark = clsact_mark(netns, iface);
    if mark.exists() && remove_clsact_if_empty(iface) {
        forget_clsact_mark(netns, iface);
    }
}

/// Attaches `prog` (loaded) to `iface` in `direction`.
pub fn attach(
    prog: &mut SchedClassifier,
    netns: Option<&str>,
    iface: &str,
    direction: u32,
    mode: Backend,
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
    // The mark goes first: an agent killed between adding the qdisc and
    // marking it would leave a clsact no later start knows to be ours. A
    // mark without its qdisc (killed before the add) is forgotten by the
    // next start's clean-up.
    let marked_before = clsact_mark(netns, iface).exists();
    if !marked_before {
        mark_clsact(netns, iface)?;
    }
    let created_clsact = match tc::qdisc_add_clsact(iface_c.as_c_str()) {
        Ok(()) => true,
        // There already: someone's, or one of our agents' (then marked).
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {
            if !marked_before {
                forget_clsact_mark(netns, iface);
            }
            false
        }
        Err(e) => {
            if !marked_before {
                forget_clsact_mark(netns, iface);
            }
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
/// live in: the caller is in it). A clsact qdisc one of our agents added
/// goes once no filter is left on it.
pub fn detach(a: Attached, netns: Option<&str>, iface: &str) -> Result<()> {
    let gone = aya::programs::links::Link::detach(a.link);
    if let Err(e) = gone
        && super::netns::ifindex(iface).is_some()
    {
        return Err(Error::Runtime(format!(
            "could not detach from {iface}: {e}"
        )));
    }
    if a.netlink.is_some() {
        remove_clsact_if_ours_and_empty(netns, iface);
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

/// Deletes the clsact qdisc of `iface` once no filter is left on it
/// (someone else may have added theirs meanwhile). True when it is gone.
fn remove_clsact_if_empty(iface: &str) -> bool {
    let Some(index) = super::netns::ifindex(iface) else {
        return true;
    };
    let gone = Rtnl::open().and_then(|mut nl| {
        if !nl.qdiscs(index)?.iter().any(|q| q.kind == "clsact") {
            return Ok(true);
        }
        // A dump we cannot read counts as filters: keep the qdisc.
        if nl.has_filters(index, TC_H_CLSACT_INGRESS)?
            || nl.has_filters(index, TC_H_CLSACT_EGRESS)?
        {
            return Ok(false);
        }
        nl.delete_qdisc(index, TC_H_CLSACT, Some("clsact"))
            .map(|()| true)
    });
    match gone {
        Ok(gone) => gone,
        Err(e) => {
            warn!(iface, "could not remove our clsact qdisc: {e}");
            false
        }
    }
}
