//! The crash journal: what this agent changed that would outlive it.
//!
//! Netlink filters (the only way to attach before Linux 6.6) and the
//! qdiscs and ifb devices installed for delay persist after the agent dies.
//! Each is recorded in this process's state file under
//! `/run/chaos-agent/netlink/` before (qdiscs, devices) or right after
//! (filters) it is made, and forgotten once it is undone. The file is
//! `flock`ed for as long as the process lives, so the next agent can tell a
//! dead agent's file (lock free) from a live one's (see `leftovers`).

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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

/// Something we changed to make delay work.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shaping {
    /// Our fq replaced the kernel's default root qdisc of `iface`.
    Fq {
        netns: Option<String>,
        iface: String,
    },
    /// We created the ifb device `ifb`.
    Ifb { netns: Option<String>, ifb: String },
}

impl Shaping {
    pub fn netns(&self) -> Option<&str> {
        match self {
            Shaping::Fq { netns, .. } | Shaping::Ifb { netns, .. } => netns.as_deref(),
        }
    }
}

/// What a state file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct State {
    #[serde(default)]
    pub filters: Vec<NetlinkRecord>,
    #[serde(default)]
    pub shaping: Vec<Shaping>,
}

/// This agent's state file, locked while we live. Created on the first
/// record and removed when the last record goes.
pub struct Journal {
    file: Option<(PathBuf, File)>,
    records: State,
}

/// `flock`s `file`; false when another open file holds the lock.
pub(crate) fn lock(file: &File, nonblocking: bool) -> bool {
    let flags = libc::LOCK_EX | if nonblocking { libc::LOCK_NB } else { 0 };
    // SAFETY: flock on a valid descriptor.
    unsafe { libc::flock(file.as_raw_fd(), flags) == 0 }
}

impl Journal {
    pub const fn new() -> Journal {
        Journal {
            file: None,
            records: State {
                filters: Vec::new(),
                shaping: Vec::new(),
            },
        }
    }

    /// Records a filter; written before we return, so a crash right after
    /// the attach is still cleaned up.
    pub fn add_filter(&mut self, record: NetlinkRecord) -> Result<()> {
        self.records.filters.push(record);
        self.write()
    }

    /// Forgets a filter that was detached.
    pub fn remove_filter(&mut self, record: &NetlinkRecord) -> Result<()> {
        self.records.filters.retain(|r| r != record);
        self.write()
    }

    /// Records a qdisc or device before it is installed.
    pub fn add_shaping(&mut self, record: Shaping) -> Result<()> {
        self.records.shaping.push(record);
        self.write()
    }

    /// Forgets a change that was undone (or turned out to be someone
    /// else's).
    pub fn remove_shaping(&mut self, record: &Shaping) -> Result<()> {
        self.records.shaping.retain(|r| r != record);
        self.write()
    }

    fn open() -> Result<(PathBuf, File)> {
        fs::create_dir_all(STATE_DIR)
            .map_err(|e| Error::Runtime(format!("cannot create {STATE_DIR}: {e}")))?;
        let path = Path::new(STATE_DIR).join(format!("{}.json", std::process::id()));
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
        Ok((path, file))
    }

    /// Rewrites the file with the records; removes it when there are none.
    fn write(&mut self) -> Result<()> {
        if self.records.filters.is_empty() && self.records.shaping.is_empty() {
            if let Some((path, _file)) = self.file.take() {
                // Removed while still locked: no other agent can take it
                // for a dead one's in between.
                let _ = fs::remove_file(path);
            }
            return Ok(());
        }
        if self.file.is_none() {
            self.file = Some(Self::open()?);
        }
        let (path, file) = self.file.as_mut().expect("opened above");
        let text = serde_json::to_string(&self.records).expect("records serialise");
        file.set_len(0)
            .and_then(|()| (&*file).write_all(text.as_bytes()))
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::Runtime(format!("cannot write {}: {e}", path.display())))?;
        // write_all on a shared handle appends at the cursor: rewind for the
        // next rewrite.
        // SAFETY: lseek on a valid descriptor.
        unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_SET) };
        Ok(())
    }
}

impl Default for Journal {
    fn default() -> Self {
        Journal::new()
    }
}
