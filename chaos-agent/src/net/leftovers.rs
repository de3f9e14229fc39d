//! Start-up clean-up of what dead agents left behind.
//!
//! Netlink filters outlive the agent (before Linux 6.6 they are the only
//! way to attach), and so do the qdiscs and ifb devices installed for
//! delay. Every agent records them in its journal (`journal.rs`). Before a
//! host first uses a network namespace, a journal whose lock is free
//! belongs to a dead agent: its filters are removed (and a clsact qdisc it
//! added), its qdiscs and devices undone. When no agent is alive at all,
//! any filter carrying our program names, any `chaosifb*` device and any root
//! qdisc with our handle in the namespaces about to be used go too, for
//! state that was lost (a wiped /run). All of it over netlink: aya's for
//! the filters, `rtnl.rs` for qdiscs and links. Filters we did not make are never touched.

use std::fs::{self, OpenOptions};

use aya::programs::{TcAttachType, tc};
use chaos_common::{PROG_TC_EGRESS, PROG_TC_INGRESS};
use tracing::{info, warn};

use super::{
    attach,
    journal::{self, NetlinkRecord, STATE_DIR, State},
    netns::{self, NetnsGuard},
    shaping,
};

/// Removes one recorded filter (in its namespace). Quiet when it is gone.
fn remove_record(r: &NetlinkRecord) {
    let Ok(_ns) = NetnsGuard::enter(r.netns.as_deref()) else {
        return;
    };
    if netns::ifindex(&r.iface).is_none() {
        return;
    }
    match attach::detach_recorded(r) {
        Ok(()) => {
            info!(iface = %r.iface, netns = ?r.netns, "removed a leftover filter of a crashed run")
        }
        Err(e) => warn!(iface = %r.iface, "leftover filter not removed: {e}"),
    }
}

/// Removes a clsact qdisc one of our agents added, once no filter is left;
/// forgets its mark when the interface (or its namespace) is gone.
fn remove_record_clsact(r: &NetlinkRecord) {
    remove_marked_clsact(r.netns.as_deref(), &r.iface);
}

fn remove_marked_clsact(netns: Option<&str>, iface: &str) {
    let Ok(_ns) = NetnsGuard::enter(netns) else {
        attach::forget_clsact_mark(netns, iface);
        return;
    };
    if netns::ifindex(iface).is_some() {
        attach::remove_clsact_if_ours_and_empty(netns, iface);
    } else {
        attach::forget_clsact_mark(netns, iface);
    }
}

/// Removes leftovers of dead agents; see the module documentation.
pub fn clean(namespaces: &[Option<String>]) {
    let mut live_agents = 0;
    if let Ok(entries) = fs::read_dir(STATE_DIR) {
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(file) = OpenOptions::new().read(true).write(true).open(&path) else {
                continue;
            };
            if !journal::lock(&file, true) {
                live_agents += 1;
                continue;
            }
            let records: State = fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            for r in &records.filters {
                remove_record(r);
            }
            // Whoever added it: the last of our filters on it is gone.
            for r in &records.filters {
                remove_record_clsact(r);
            }
            for s in &records.shaping {
                match shaping::undo(s) {
                    Ok(()) => info!(?s, "undid a change of a crashed run"),
                    Err(e) => warn!("{e}"),
                }
            }
            let _ = fs::remove_file(&path);
        }
    }
    if live_agents > 0 {
        return;
    }
    // No agent alive: every marked clsact is a dead agent's (or gone).
    for (ns, iface) in attach::clsact_marks() {
        remove_marked_clsact(ns.as_deref(), &iface);
    }
    for ns in namespaces {
        let Ok(_ns) = NetnsGuard::enter(ns.as_deref()) else {
            continue;
        };
        let interfaces = interfaces();
        shaping::clean_namespace(&interfaces);
        for iface in interfaces {
            for (attach, name) in [
                (TcAttachType::Ingress, PROG_TC_INGRESS),
                (TcAttachType::Egress, PROG_TC_EGRESS),
            ] {
                let Ok(c) = std::ffi::CString::new(iface.as_str()) else {
                    continue;
                };
                if tc::qdisc_detach_program(c.as_c_str(), attach.into(), name).is_ok() {
                    info!(iface = %iface, netns = ?ns, "removed a leftover {name} filter of an earlier run");
                }
            }
            attach::remove_clsact_if_ours_and_empty(ns.as_deref(), &iface);
        }
    }
}

/// Interface names in the current thread's namespace.
fn interfaces() -> Vec<String> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry, which
    // we free with if_freenameindex.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut p = list;
        while (*p).if_index != 0 {
            out.push(
                std::ffi::CStr::from_ptr((*p).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out
}
