//! Small libc socket helpers that std does not offer (forced buffer sizes,
//! bind-before-connect with a timeout).

use std::io;
use std::mem::size_of;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Converts a `SocketAddr` into a `sockaddr_storage` and its length.
pub fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe {
                std::ptr::write(
                    &mut storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_in,
                    sin,
                )
            };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe {
                std::ptr::write(
                    &mut storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6,
                    sin6,
                )
            };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// `setsockopt` with an `int` value.
pub fn set_int_opt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live i32 and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockopt` returning an `int` value.
pub fn get_int_opt(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: pointer to a live i32 and its length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            &mut value as *mut i32 as *mut libc::c_void,
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets SO_RCVBUF to `bytes`, using SO_RCVBUFFORCE (root) to pass
/// `net.core.rmem_max`, falling back to plain SO_RCVBUF.
pub fn force_rcvbuf(fd: RawFd, bytes: i32) -> io::Result<()> {
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)
        .or_else(|_| set_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes))
}

/// Sets SO_SNDBUF to `bytes`, using SO_SNDBUFFORCE (root) to pass
/// `net.core.wmem_max`, falling back to plain SO_SNDBUF.
pub fn force_sndbuf(fd: RawFd, bytes: i32) -> io::Result<()> {
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, bytes)
        .or_else(|_| set_int_opt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, bytes))
}

/// Errno name for the common network errors (for JSON output), else the number.
/// A read or write that timed out or was interrupted: try again (the
/// callers loop until their own deadline).
pub fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

pub fn errno_name(err: &io::Error) -> String {
    let Some(code) = err.raw_os_error() else {
        return format!("{:?}", err.kind());
    };
    let name = match code {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ENOBUFS => "ENOBUFS",
        libc::EAGAIN => "EAGAIN",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EINVAL => "EINVAL",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPIPE => "EPIPE",
        libc::EINTR => "EINTR",
        libc::ENOMEM => "ENOMEM",
        libc::EIO => "EIO",
        libc::ENETDOWN => "ENETDOWN",
        _ => return format!("errno {code}"),
    };
    name.to_string()
}

/// Why a TCP connect did not produce a stream.
#[derive(Debug)]
pub enum ConnectError {
    /// No answer within the timeout (e.g. SYNs dropped).
    TimedOut,
    /// The kernel reported an error (refused, unreachable, EPERM, ...).
    Failed(io::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::TimedOut => write!(f, "connect timed out"),
            ConnectError::Failed(e) => write!(f, "connect failed: {e} ({})", errno_name(e)),
        }
    }
}

/// TCP connect to `to`, optionally binding `from` first (port 0 = any),
/// giving up after `timeout`. The socket is created in the calling thread's
/// network namespace.
pub fn tcp_connect(
    from: Option<SocketAddr>,
    to: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let family = match to {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2) call.
    let raw = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if raw < 0 {
        return Err(ConnectError::Failed(io::Error::last_os_error()));
    }
    // SAFETY: raw is a fresh, owned descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if let Some(from) = from {
        set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
            .map_err(ConnectError::Failed)?;
        let (sa, len) = to_sockaddr(&from);
        // SAFETY: sa/len describe a valid sockaddr.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_storage as *const libc::sockaddr,
                len,
            )
        };
        if rc != 0 {
            return Err(ConnectError::Failed(io::Error::last_os_error()));
        }
    }
    let (sa, len) = to_sockaddr(&to);
    // SAFETY: sa/len describe a valid sockaddr.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_storage as *const libc::sockaddr,
            len,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(ConnectError::Failed(err));
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(ConnectError::TimedOut);
            }
            let ms = (deadline - now).as_millis().clamp(1, 1000) as i32;
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ConnectError::Failed(e));
            }
            if n > 0 {
                break;
            }
        }
        let so_error = get_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ERROR)
            .map_err(ConnectError::Failed)?;
        if so_error != 0 {
            let e = io::Error::from_raw_os_error(so_error);
            if so_error == libc::ETIMEDOUT {
                return Err(ConnectError::TimedOut);
            }
            return Err(ConnectError::Failed(e));
        }
    }
    // Back to blocking mode for std's TcpStream.
    // SAFETY: fcntl on an owned descriptor.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    Ok(TcpStream::from(fd))
}
