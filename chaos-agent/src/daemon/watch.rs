//! Watches the policies directory with inotify and turns bursts of events
//! into one reload request: after the first event it waits until the
//! directory has been quiet for `QUIET` (at most `MAX_WAIT`), so an editor's
//! write-rename-chmod sequence or a Kubernetes ConfigMap swap (a new
//! `..data` symlink renamed into place) is one reload, and the reload still
//! starts within a few tens of milliseconds of the change.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::Path,
    sync::mpsc::Sender,
    time::{Duration, Instant},
};

use tracing::{debug, warn};

use super::Event;
use crate::error::{Error, Result};

const QUIET: Duration = Duration::from_millis(15);
const MAX_WAIT: Duration = Duration::from_millis(50);

/// Starts the watcher thread. The directory must exist.
pub fn spawn(dir: &Path, events: Sender<Event>) -> Result<()> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Runtime(format!(
            "inotify: {}",
            std::io::Error::last_os_error()
        )));
    }
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
    if unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) } < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        return Err(Error::Runtime(format!(
            "cannot watch {}: {e}",
            dir.display()
        )));
    }
    std::thread::Builder::new()
        .name("policy-watch".into())
        .spawn(move || watch(fd, events))
        .map_err(|e| Error::Runtime(format!("cannot start the watcher: {e}")))?;
    Ok(())
}

/// Waits up to `timeout` for the fd to become readable; drains it if so.
fn wait_and_drain(fd: i32, timeout: Option<Duration>) -> std::io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    if n == 0 {
        return Ok(false);
    }
    let mut buf = [0u8; 4096];
    // SAFETY: buffer of the given length. The events themselves are not
    // needed: any change means "read the directory again".
    let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(true)
}

fn watch(fd: i32, events: Sender<Event>) {
    loop {
        match wait_and_drain(fd, None) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                warn!("policy watcher stopped: {e}; SIGHUP still reloads");
                return;
            }
        }
        let first = Instant::now();
        loop {
            let left = MAX_WAIT.saturating_sub(first.elapsed());
            if left.is_zero() {
                break;
            }
            match wait_and_drain(fd, Some(QUIET.min(left))) {
                Ok(true) => continue,
                _ => break,
            }
        }
        debug!(
            waited_ms = first.elapsed().as_millis() as u64,
            "policy directory changed"
        );
        if events.send(Event::Reload("file change")).is_err() {
            return;
        }
    }
}
