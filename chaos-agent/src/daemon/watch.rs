//! Watches the policies directory with inotify (an `AsyncFd` on the
//! daemon's runtime) and turns bursts of events into one reload request:
//! after the first event it waits until the directory has been quiet for
//! `QUIET` (at most `MAX_WAIT`), so an editor's write-rename-chmod sequence
//! or a Kubernetes ConfigMap swap (a new `..data` symlink renamed into
//! place) is one reload, and the reload still starts within a few tens of
//! milliseconds of the change.
//!
//! The texts the files had during the burst go with the request
//! ([`Seen`]): when a burst ends "valid, then invalid", the reload keeps the
//! newest valid text in force, not an older one.

use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{io::unix::AsyncFd, sync::mpsc, time::Instant};

use crate::policy;
use tracing::{debug, warn};

use crate::error::{Error, Result};

const QUIET: Duration = Duration::from_millis(15);
const MAX_WAIT: Duration = Duration::from_millis(50);

/// The texts of policy files as read during a burst of changes, oldest
/// first.
pub type Seen = Vec<(PathBuf, String)>;

/// Starts watching `dir` (which must exist); a message on the returned
/// channel asks for a reload, with what the files said during the burst.
pub fn spawn(dir: &Path) -> Result<mpsc::UnboundedReceiver<Seen>> {
    // SAFETY: plain syscall.
    let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if raw < 0 {
        return Err(Error::Runtime(format!(
            "inotify: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: a descriptor we just opened and own alone.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("--policies {}: bad path", dir.display())))?;
    let mask = libc::IN_CLOSE_WRITE
        | libc::IN_MOVED_TO
        | libc::IN_MOVED_FROM
        | libc::IN_CREATE
        | libc::IN_DELETE
        | libc::IN_ATTRIB
        | libc::IN_MODIFY;
    // SAFETY: valid fd and NUL-terminated path.
    if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) } < 0 {
        return Err(Error::Runtime(format!(
            "cannot watch {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: an OwnedFd keeps its descriptor open and the same for as
    // long as the AsyncFd holds it.
    let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::Runtime(format!("cannot watch {}: {e}", dir.display())))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let dir = dir.to_path_buf();
    tokio::spawn(async move {
        if let Err(e) = watch(fd, &dir, tx).await {
            warn!("policy watcher stopped: {e}; SIGHUP still reloads");
        }
    });
    Ok(rx)
}

/// Waits until the fd is readable and drains it. The events themselves are
/// not needed: any change means "read the directory again".
async fn drain(fd: &AsyncFd<OwnedFd>) -> std::io::Result<()> {
    loop {
        let mut guard = fd.readable().await?;
        let mut buf = [0u8; 4096];
        let read = guard.try_io(|inner| {
            // SAFETY: a buffer of the given length.
            let r = unsafe { libc::read(inner.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
        match read {
            Ok(result) => return result,
            // Spurious readiness: wait again.
            Err(_would_block) => continue,
        }
    }
}

/// Adds the texts the policy files of `dir` have now (those that changed
/// since they were last seen).
fn snapshot(dir: &Path, seen: &mut Seen) {
    let Ok(paths) = policy::policy_files_in(dir) else {
        return;
    };
    for path in paths {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let last = seen.iter().rev().find(|(p, _)| *p == path);
        if last.is_none_or(|(_, t)| *t != text) {
            seen.push((path, text));
        }
    }
}

async fn watch(
    fd: AsyncFd<OwnedFd>,
    dir: &Path,
    tx: mpsc::UnboundedSender<Seen>,
) -> std::io::Result<()> {
    loop {
        drain(&fd).await?;
        let first = Instant::now();
        let mut seen = Seen::new();
        snapshot(dir, &mut seen);
        loop {
            let left = MAX_WAIT.saturating_sub(first.elapsed());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(QUIET.min(left), drain(&fd)).await {
                Ok(r) => {
                    r?;
                    snapshot(dir, &mut seen);
                }
                Err(_quiet) => break,
            }
        }
        debug!(
            waited_ms = first.elapsed().as_millis() as u64,
            "policy directory changed"
        );
        if tx.send(seen).is_err() {
            return Ok(());
        }
    }
}
