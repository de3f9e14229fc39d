//! Resolving cgroup selectors (a systemd unit or a cgroup path) to what the
//! kernel compares: the cgroup id and its level below the cgroup2 root.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::{
    error::{Error, Result},
    policy::model::CgroupSelector,
};

/// A cgroup resolved to what the kernel compares: its id (the inode number
/// of its directory) and its depth below the cgroup2 root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedCgroup {
    pub id: u64,
    pub level: u8,
}

/// The cgroup v2 mount: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on the hybrid layout.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // Fields: ... mount-point ... - fstype source options
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(left.split_whitespace().nth(4)?))
    })
}

/// Finds the directory of a systemd unit under the cgroup2 tree: the first
/// directory with that name, breadth-first, a few levels deep (units live in
/// slices such as `/system.slice/NAME` or `/user.slice/.../NAME`).
fn find_unit(root: &Path, unit: &str) -> Option<PathBuf> {
    let mut level = vec![root.to_path_buf()];
    for _ in 0..6 {
        let mut next = Vec::new();
        for dir in level {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    continue;
                }
                if entry.file_name() == unit {
                    return Some(entry.path());
                }
                next.push(entry.path());
            }
        }
        level = next;
    }
    None
}

/// The cgroup2 directory a selector names, and the cgroup2 mount.
pub fn directory(selector: &CgroupSelector) -> Result<(PathBuf, PathBuf)> {
    let root = cgroup2_mount().ok_or_else(|| {
        Error::Unsupported("cgroup selection needs the cgroup v2 hierarchy, and no cgroup2 mount was found in /proc/self/mountinfo".into())
    })?;
    let dir = match selector {
        CgroupSelector::Path(p) => {
            let rel = p.trim_start_matches('/');
            if rel.split('/').any(|c| c == "..") {
                return Err(Error::Invalid(format!("cgroup {p}: '..' is not allowed")));
            }
            let dir = root.join(rel);
            if !dir.is_dir() {
                return Err(Error::Invalid(format!(
                    "cgroup {p}: no such cgroup under {}",
                    root.display()
                )));
            }
            dir
        }
        CgroupSelector::Unit(u) => find_unit(&root, u).ok_or_else(|| {
            Error::Invalid(format!(
                "unit {u}: no cgroup of that name under {} (is the unit running?)",
                root.display()
            ))
        })?,
    };
    Ok((dir, root))
}

pub fn resolve(selector: &CgroupSelector) -> Result<ResolvedCgroup> {
    let (dir, root) = directory(selector)?;
    let meta = fs::metadata(&dir).map_err(|e| Error::Runtime(format!("{}: {e}", dir.display())))?;
    let level = dir
        .strip_prefix(&root)
        .map(|r| r.components().count())
        .unwrap_or(0);
    Ok(ResolvedCgroup {
        id: meta.ino(),
        level: u8::try_from(level)
            .map_err(|_| Error::Invalid(format!("{}: nested too deep", dir.display())))?,
    })
}
