//! A cgroup v2 directory for one test.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

/// Prefix of every cgroup directory a [`CgroupGuard`] creates.
pub const CGROUP_PREFIX: &str = "chaos-test-";

static CG_COUNTER: AtomicU32 = AtomicU32::new(0);
static STALE_ONCE: Once = Once::new();

/// Undoes the octal escapes (`\040` etc.) of /proc/self/mountinfo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Finds the cgroup2 mount point in mountinfo text (the first `cgroup2`
/// mount whose root is `/`).
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split_whitespace().next();
        if fstype != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        if fields.len() < 5 || fields[3] != "/" {
            continue;
        }
        return Some(PathBuf::from(unescape_mountinfo(fields[4])));
    }
    None
}

/// The cgroup v2 mount point from /proc/self/mountinfo: `/sys/fs/cgroup` on
/// a unified system, `/sys/fs/cgroup/unified` on a hybrid one.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    parse_cgroup2_mount(&text).context("no cgroup2 mount in /proc/self/mountinfo")
}

/// A cgroup `<mount>/chaos-test-<name>-<pid>` (with `.<n>` appended if this
/// process already made one of that name). Dropping it moves every process
/// still inside to the root cgroup and removes the directory.
#[derive(Debug)]
pub struct CgroupGuard {
    mount: PathBuf,
    path: PathBuf,
    id: u64,
}

impl CgroupGuard {
    /// Creates the cgroup. `name` is 1..=40 characters of `[a-z0-9_-]`.
    /// Leftovers of dead processes (see [`stale_cgroup_cleanup`]) are
    /// removed once per process first.
    pub fn new(name: &str) -> Result<CgroupGuard> {
        ensure!(
            !name.is_empty()
                && name.len() <= 40
                && name.bytes().all(|c| c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || c == b'_'
                    || c == b'-'),
            "cgroup name {name:?} must be 1..=40 characters of [a-z0-9_-]"
        );
        let mount = cgroup2_mount()?;
        STALE_ONCE.call_once(|| {
            if let Err(e) = stale_cgroup_cleanup() {
                eprintln!("chaos-tests: stale cgroup cleanup failed: {e:#}");
            }
        });
        let base = format!("{CGROUP_PREFIX}{name}-{}", std::process::id());
        let mut path = mount.join(&base);
        loop {
            match std::fs::create_dir(&path) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let n = CG_COUNTER.fetch_add(1, Ordering::Relaxed);
                    path = mount.join(format!("{base}.{n}"));
                    ensure!(n < 10_000, "too many cgroups named {base}");
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("creating cgroup {}", path.display()));
                }
            }
        }
        let id = match std::fs::metadata(&path) {
            Ok(m) => m.ino(),
            Err(e) => {
                let _ = std::fs::remove_dir(&path);
                return Err(e).with_context(|| format!("stat {}", path.display()));
            }
        };
        Ok(CgroupGuard { mount, path, id })
    }

    /// Absolute path of the cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path relative to the cgroup2 mount, starting with `/`
    /// (what `--cgroup PATH` and `/proc/PID/cgroup` use).
    pub fn rel_path(&self) -> String {
        let rel = self.path.strip_prefix(&self.mount).unwrap_or(&self.path);
        format!("/{}", rel.display())
    }

    /// The cgroup v2 mount this cgroup lives under.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The cgroup id: the inode number of the directory, which is what
    /// `bpf_skb_cgroup_id` and `bpf_get_current_cgroup_id` report.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Moves process `pid` (all its threads) into this cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<()> {
        let procs = self.path.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .with_context(|| format!("moving pid {pid} into {}", self.path.display()))
    }

    /// Pids currently in this cgroup.
    pub fn procs(&self) -> Result<Vec<u32>> {
        read_procs(&self.path)
    }

    /// Makes `cmd` join this cgroup in the child between fork and exec, so
    /// the program runs inside it from its first instruction. Cgroup
    /// membership is per process: this is the way to put traffic (e.g.
    /// `chaos-traffic`) into a test cgroup without moving the test itself.
    pub fn attach_command<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        let procs = CString::new(self.path.join("cgroup.procs").as_os_str().as_bytes())
            .expect("cgroup path has no NUL");
        // SAFETY: the closure only calls async-signal-safe functions
        // (open, write, close) on memory allocated before fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" means the writing process itself.
                let rc = libc::write(fd, b"0".as_ptr() as *const libc::c_void, 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if rc != 1 {
                    return Err(err);
                }
                Ok(())
            })
        }
    }
}

fn read_procs(dir: &Path) -> Result<Vec<u32>> {
    let p = dir.join("cgroup.procs");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Moves every process out of `dir` to the root cgroup of `mount`, then
/// removes `dir`, retrying for about two seconds.
fn evacuate_and_remove(mount: &Path, dir: &Path) -> Result<()> {
    let root_procs = mount.join("cgroup.procs");
    let mut last_err = None;
    for _ in 0..40 {
        if !dir.exists() {
            return Ok(());
        }
        if let Ok(pids) = read_procs(dir) {
            for pid in pids {
                // A process may exit meanwhile; errors are retried below.
                let _ = std::fs::write(&root_procs, pid.to_string());
            }
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last_err = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match last_err {
        Some(e) => Err(e).with_context(|| format!("removing cgroup {}", dir.display())),
        None => bail!("removing cgroup {} timed out", dir.display()),
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Err(e) = evacuate_and_remove(&self.mount, &self.path) {
            eprintln!("chaos-tests: {e:#}");
        }
    }
}

/// Parses the pid out of `chaos-test-<name>-<pid>[.<n>]`.
fn cgroup_dir_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(CGROUP_PREFIX)?;
    let rest = match rest.rsplit_once('.') {
        Some((head, n)) if n.parse::<u32>().is_ok() => head,
        _ => rest,
    };
    let (_, pid) = rest.rsplit_once('-')?;
    pid.parse().ok()
}

/// Removes `chaos-test-*` cgroups (directly under the cgroup2 mount) of
/// processes that are no longer alive. Returns the directories removed.
pub fn stale_cgroup_cleanup() -> Result<Vec<PathBuf>> {
    let mount = cgroup2_mount()?;
    let own = std::process::id();
    let mut removed = Vec::new();
    for entry in
        std::fs::read_dir(&mount).with_context(|| format!("listing {}", mount.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = cgroup_dir_pid(&name) else {
            continue;
        };
        if pid == own || crate::netns::pid_alive(pid) || !entry.path().is_dir() {
            continue;
        }
        evacuate_and_remove(&mount, &entry.path())?;
        removed.push(entry.path());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let escaped = "1 2 0:3 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(escaped),
            Some(PathBuf::from("/mnt/with space"))
        );
        assert_eq!(
            parse_cgroup2_mount("1 2 0:3 / /x rw - ext4 /dev/sda rw\n"),
            None
        );
    }

    #[test]
    fn parses_cgroup_dir_names() {
        assert_eq!(cgroup_dir_pid("chaos-test-egress-1234"), Some(1234));
        assert_eq!(cgroup_dir_pid("chaos-test-egress-x-1234.3"), Some(1234));
        assert_eq!(cgroup_dir_pid("chaos-test-egress"), None);
        assert_eq!(cgroup_dir_pid("system.slice"), None);
    }
}
