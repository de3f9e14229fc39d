//! The one ethtool setting the tests change: transmit checksum offload.
//! With it off, a veth's sender computes full L4 checksums in software and
//! the receiver verifies them, so a packet rewritten with a wrong checksum
//! is dropped (and counted in `InCsumErrors`) instead of being delivered.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Result, bail};

// `Ioctl`: the request type of the C library (c_ulong in glibc, c_int in
// musl, which the arm64 VMs' static test executables use).
const SIOCETHTOOL: libc::Ioctl = 0x8946;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

/// Switches transmit checksum offload of `iface` (in the calling thread's
/// network namespace) on or off, as `ethtool -K IFACE tx on|off`.
pub fn set_tx_checksum(iface: &str, on: bool) -> Result<()> {
    if iface.len() >= libc::IFNAMSIZ {
        bail!("interface name {iface} too long");
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: u32::from(on),
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    for (d, s) in req.name.iter_mut().zip(iface.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: plain syscalls; the socket is owned right away, `req` and
    // `value` outlive the ioctl.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let sock = OwnedFd::from_raw_fd(fd);
        if libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) != 0 {
            bail!(
                "SIOCETHTOOL tx {} on {iface}: {}",
                if on { "on" } else { "off" },
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}
