//! Entering named network namespaces (`ip netns`, files under `/run/netns`).
//!
//! Only the calling thread switches: the agent does all namespace work on
//! one thread and switches back when the guard drops.

use std::{fs::File, os::fd::AsRawFd, path::PathBuf};

use crate::error::{Error, Result};

/// Where `ip netns add NAME` bind-mounts the namespace.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// While alive, the calling thread is in another network namespace.
pub struct NetnsGuard {
    original: Option<File>,
}

impl NetnsGuard {
    /// Enters `name`, or stays where we are for `None`.
    pub fn enter(name: Option<&str>) -> Result<NetnsGuard> {
        let Some(name) = name else {
            return Ok(NetnsGuard { original: None });
        };
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::Invalid(format!(
                "netns {name:?}: not a valid namespace name"
            )));
        }
        let path = netns_path(name);
        let target = File::open(&path).map_err(|e| {
            Error::Invalid(format!(
                "netns {name}: cannot open {}: {e} (create it with `ip netns add {name}`)",
                path.display()
            ))
        })?;
        let original = File::open("/proc/thread-self/ns/net")
            .map_err(|e| Error::Runtime(format!("cannot open this thread's netns: {e}")))?;
        // SAFETY: plain syscall on valid descriptors.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(Error::Runtime(format!("netns {name}: setns failed: {e}")));
        }
        Ok(NetnsGuard {
            original: Some(original),
        })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Some(original) = &self.original {
            // SAFETY: plain syscall on a valid descriptor. Failing to get back
            // would leave the thread in the wrong namespace: stop right there.
            if unsafe { libc::setns(original.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                eprintln!(
                    "chaos-agent: cannot return to the original network namespace: {}",
                    std::io::Error::last_os_error()
                );
                std::process::abort();
            }
        }
    }
}

/// Interface index of `name` in the current thread's namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// Runs `f` on a thread of its own in a new, empty network namespace: only
/// that thread moves (a network namespace is per thread), so nothing
/// outside it is touched, and the namespace goes when the thread ends and
/// the sockets `f` opened there are closed. Needs CAP_SYS_ADMIN.
pub fn in_scratch_netns<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    std::thread::Builder::new()
        .name("scratch-netns".into())
        .spawn(move || {
            // SAFETY: plain syscall; CLONE_NEWNET moves the calling thread
            // alone.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        })?
        .join()
        .map_err(|_| std::io::Error::other("the thread in the scratch namespace panicked"))?
}
