//! Netlink filters outlive the agent (before Linux 6.6 they are the only
//! way to attach). Each agent that makes one records it in a state file
//! under `/run/chaos-agent/netlink/`, locked for as long as the agent lives.
//! At start-up, a state file whose lock is free belongs to a dead agent: its
//! filters are removed (and a clsact qdisc it added). When no agent is alive
//! at all, any filter carrying our program names on the interfaces we are
//! about to use is removed too, for state that was lost (a wiped /run).
//! Filters we did not make are never touched.

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
};

use aya::programs::{
    TcAttachType,
    tc::{self, SchedClassifierLink, TcHandle},
};
use chaos_common::{DIR_INGRESS, PROG_TC_EGRESS, PROG_TC_INGRESS};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    error::{Error, Result},
    netns::{self, NetnsGuard},
    shaping::{self, Shaping},
};

pub const STATE_DIR: &str = "/run/chaos-agent/netlink";

/// One netlink filter we made.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetlinkRecord {
    pub netns: Option<String>,
    pub iface: String,
    pub direction: u32,
    pub priority: u16,
    pub handle: u32,
    /// We added the clsact qdisc (it was not there before).
    pub created_clsact: bool,
}

/// What a state file holds: netlink filters, and the qdiscs and ifb
/// devices installed for delay (see `shaping`).
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    filters: Vec<NetlinkRecord>,
    #[serde(default)]
    shaping: Vec<Shaping>,
}

/// This agent's state file, locked while we live.
pub struct StateFile {
    path: PathBuf,
    file: File,
    records: State,
}

fn lock(file: &File, nonblocking: bool) -> bool {
    let flags = libc::LOCK_EX | if nonblocking { libc::LOCK_NB } else { 0 };
    // SAFETY: flock on a valid descriptor.
    unsafe { libc::flock(file.as_raw_fd(), flags) == 0 }
}

impl StateFile {
    pub fn create() -> Result<StateFile> {
        fs::create_dir_all(STATE_DIR)
            .map_err(|e| Error::Runtime(format!("cannot create {STATE_DIR}: {e}")))?;
        // One file per `Applied`: the daemon holds many at once, and a
        // second flock on the same file from this process would fail.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = Path::new(STATE_DIR).join(format!("{}-{n}.json", std::process::id()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::Runtime(format!("cannot create {}: {e}", path.display())))?;
        if !lock(&file, true) {
            return Err(Error::Runtime(format!(
                "{} is locked by another process",
                path.display()
            )));
        }
        Ok(StateFile {
            path,
            file,
            records: State::default(),
        })
    }

    /// Records a filter; written before we return so a crash right after
    /// the attach is still cleaned up.
    pub fn add(&mut self, record: NetlinkRecord) -> Result<()> {
        self.records.filters.push(record);
        self.write()
    }

    /// Records a qdisc or device installed for delay, as `add`.
    pub fn add_shaping(&mut self, record: Shaping) -> Result<()> {
        self.records.shaping.push(record);
        self.write()
    }

    /// Forgets a change that was undone.
    pub fn remove_shaping(&mut self, record: &Shaping) -> std::result::Result<(), String> {
        self.records.shaping.retain(|r| r != record);
        self.write().map_err(|e| e.to_string())
    }

    fn write(&mut self) -> Result<()> {
        let text = serde_json::to_string(&self.records).expect("records serialise");
        self.file
            .set_len(0)
            .and_then(|()| (&self.file).write_all(text.as_bytes()))
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::Runtime(format!("cannot write {}: {e}", self.path.display())))?;
        // write_all on a shared handle appends at the cursor: rewind for the
        // next rewrite.
        // SAFETY: lseek on a valid descriptor.
        unsafe { libc::lseek(self.file.as_raw_fd(), 0, libc::SEEK_SET) };
        Ok(())
    }

    pub fn remove(self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn parent(direction: u32) -> TcHandle {
    if direction == DIR_INGRESS {
        TcAttachType::Ingress.into()
    } else {
        TcAttachType::Egress.into()
    }
}

/// Removes one recorded filter (in its namespace). Quiet when it is gone.
fn remove_record(r: &NetlinkRecord) {
    let Ok(_ns) = NetnsGuard::enter(r.netns.as_deref()) else {
        return;
    };
    if netns::ifindex(&r.iface).is_none() {
        return;
    }
    let Ok(iface) = std::ffi::CString::new(r.iface.as_str()) else {
        return;
    };
    match SchedClassifierLink::attached(
        iface.as_c_str(),
        parent(r.direction),
        r.priority,
        TcHandle::from(r.handle),
        None,
    ) {
        Ok(link) => match aya::programs::links::Link::detach(link) {
            Ok(()) => {
                info!(iface = %r.iface, netns = ?r.netns, "removed a leftover filter of a crashed run")
            }
            Err(e) => warn!(iface = %r.iface, "leftover filter not removed: {e}"),
        },
        Err(e) => warn!(iface = %r.iface, "leftover filter: {e}"),
    }
}

/// Removes a clsact qdisc a dead agent added, once its filters are gone.
fn remove_record_clsact(r: &NetlinkRecord) {
    let Ok(_ns) = NetnsGuard::enter(r.netns.as_deref()) else {
        return;
    };
    if netns::ifindex(&r.iface).is_some() {
        remove_clsact_if_empty(&r.iface);
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
            if !lock(&file, true) {
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
            for r in records.filters.iter().filter(|r| r.created_clsact) {
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

/// Deletes a clsact qdisc we added, once no filter is left on it (someone
/// else may have added theirs meanwhile). Uses `tc` from iproute2; without
/// it the empty qdisc stays, which changes no packet.
pub fn remove_clsact_if_empty(iface: &str) {
    let shows_filters = |dir: &str| {
        Command::new("tc")
            .args(["filter", "show", "dev", iface, dir])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(true)
    };
    if shows_filters("ingress") || shows_filters("egress") {
        return;
    }
    match Command::new("tc")
        .args(["qdisc", "del", "dev", iface, "clsact"])
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => warn!(
            iface,
            "could not remove our clsact qdisc: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => warn!(iface, "could not run tc to remove our clsact qdisc: {e}"),
    }
}
