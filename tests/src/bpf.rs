//! Raw `bpf(2)` calls that need no tools: list loaded programs, query the
//! tcx attachments of an interface, and (for tests about attachments the
//! agent did not make) load a trivial tc program and attach it with tcx.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::netns::run_in_netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_LSM: u32 = 29;
const BPF_LSM_MAC: u32 = 27;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// tcx verdict: continue with the next program (pass when last).
pub const TCX_NEXT: i32 = -1;
/// tcx verdict: pass the packet, skipping later programs.
pub const TCX_PASS: i32 = 0;
/// tcx verdict: drop the packet.
pub const TCX_DROP: i32 = 2;

/// A zeroed, 8-byte aligned `union bpf_attr` buffer.
#[repr(C, align(8))]
struct Attr([u8; 160]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 160])
    }
    fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }
    fn get_u64(&self, off: usize) -> u64 {
        u64::from_ne_bytes(self.0[off..off + 8].try_into().expect("8 bytes"))
    }
}

fn sys_bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: attr is a valid, zero-padded bpf_attr buffer of the given size
    // whose embedded pointers (if any) point to live buffers of the caller.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// One loaded BPF program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfProgInfo {
    pub id: u32,
    /// `enum bpf_prog_type` (3 = sched_cls, 8 = cgroup_skb, 26 = tracing...).
    pub prog_type: u32,
    /// Name as the kernel keeps it (at most 15 characters).
    pub name: String,
}

/// `struct bpf_prog_info` as the kernel fills it, 8-byte aligned.
#[repr(C, align(8))]
struct ProgInfo([u8; 512]);

/// `BPF_OBJ_GET_INFO_BY_FD` for program `id`, open as `fd`.
fn prog_info(fd: &OwnedFd, id: u32) -> Result<ProgInfo> {
    let mut info = ProgInfo([0; 512]);
    let mut a = Attr::new();
    a.put_u32(0, fd.as_raw_fd() as u32);
    a.put_u32(4, info.0.len() as u32);
    a.put_u64(8, info.0.as_mut_ptr() as u64);
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)
        .with_context(|| format!("BPF_OBJ_GET_INFO_BY_FD for prog {id}"))?;
    Ok(info)
}

/// Every BPF program loaded on this machine (all namespaces), via
/// `BPF_PROG_GET_NEXT_ID` and `BPF_OBJ_GET_INFO_BY_FD`. Needs root.
pub fn loaded_progs() -> Result<Vec<BpfProgInfo>> {
    let mut out = Vec::new();
    let mut id = 0u32;
    loop {
        let mut a = Attr::new();
        a.put_u32(0, id);
        match sys_bpf(BPF_PROG_GET_NEXT_ID, &mut a) {
            Ok(_) => id = a.get_u32(4),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e).context("BPF_PROG_GET_NEXT_ID"),
        }
        let mut a = Attr::new();
        a.put_u32(0, id);
        let fd = match sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut a) {
            // SAFETY: the kernel returned a new descriptor that we own.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd as i32) },
            // Unloaded meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e).with_context(|| format!("BPF_PROG_GET_FD_BY_ID {id}")),
        };
        let info = prog_info(&fd, id)?;
        let name_bytes = &info.0[64..80];
        let end = name_bytes.iter().position(|&b| b == 0).unwrap_or(16);
        out.push(BpfProgInfo {
            id: u32::from_ne_bytes(info.0[4..8].try_into().expect("4 bytes")),
            prog_type: u32::from_ne_bytes(info.0[0..4].try_into().expect("4 bytes")),
            name: String::from_utf8_lossy(&name_bytes[..end]).into_owned(),
        });
    }
    Ok(out)
}

/// Keeps the kernel's per-program run-time statistics on while it lives
/// (`BPF_ENABLE_STATS`; they cost two clock reads per run, so they are
/// off by default).
pub fn enable_run_time_stats() -> Result<OwnedFd> {
    let mut a = Attr::new();
    a.put_u32(0, 0); // BPF_STATS_RUN_TIME
    let fd = sys_bpf(BPF_ENABLE_STATS, &mut a).context("BPF_ENABLE_STATS")?;
    // SAFETY: the kernel returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Total run time (ns) and run count of program `id` since it was loaded,
/// counted while [`enable_run_time_stats`] was in force.
pub fn prog_run_stats(id: u32) -> Result<(u64, u64)> {
    let mut a = Attr::new();
    a.put_u32(0, id);
    let fd = sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut a)
        .with_context(|| format!("BPF_PROG_GET_FD_BY_ID {id}"))?;
    // SAFETY: the kernel returned a new descriptor that we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let info = prog_info(&fd, id)?;
    // struct bpf_prog_info: run_time_ns and run_cnt follow prog_tags.
    let at = |o: usize| u64::from_ne_bytes(info.0[o..o + 8].try_into().expect("8 bytes"));
    Ok((at(192), at(200)))
}

/// Names of every loaded BPF program (see [`loaded_progs`]).
pub fn loaded_prog_names() -> Result<Vec<String>> {
    Ok(loaded_progs()?.into_iter().map(|p| p.name).collect())
}

/// tcx hook of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcxDirection {
    Ingress,
    Egress,
}

impl TcxDirection {
    fn attach_type(self) -> u32 {
        match self {
            TcxDirection::Ingress => BPF_TCX_INGRESS,
            TcxDirection::Egress => BPF_TCX_EGRESS,
        }
    }

    /// `"ingress"` / `"egress"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TcxDirection::Ingress => "ingress",
            TcxDirection::Egress => "egress",
        }
    }
}

/// What is attached to one tcx hook.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcxQuery {
    /// Program ids in run order.
    pub prog_ids: Vec<u32>,
    /// Link ids, parallel to `prog_ids` (0 for a program attached without a link).
    pub link_ids: Vec<u32>,
    /// The hook's revision counter (changes on every attach/detach).
    pub revision: u64,
}

impl TcxQuery {
    /// True when nothing is attached.
    pub fn is_empty(&self) -> bool {
        self.prog_ids.is_empty()
    }
}

fn ifindex_here(iface: &str) -> Result<u32> {
    let c = CString::new(iface).context("interface name has a NUL")?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("no interface {iface}"));
    }
    Ok(idx)
}

fn tcx_query_here(iface: &str, dir: TcxDirection) -> Result<TcxQuery> {
    let ifindex = ifindex_here(iface)?;
    let mut cap = 64usize;
    loop {
        let mut progs = vec![0u32; cap];
        let mut links = vec![0u32; cap];
        let mut a = Attr::new();
        a.put_u32(0, ifindex);
        a.put_u32(4, dir.attach_type());
        a.put_u64(16, progs.as_mut_ptr() as u64);
        a.put_u32(24, cap as u32);
        a.put_u64(40, links.as_mut_ptr() as u64);
        match sys_bpf(BPF_PROG_QUERY, &mut a) {
            Ok(_) => {
                let n = (a.get_u32(24) as usize).min(cap);
                progs.truncate(n);
                links.truncate(n);
                return Ok(TcxQuery {
                    prog_ids: progs,
                    link_ids: links,
                    revision: a.get_u64(56),
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && cap < 4096 => cap *= 4,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "BPF_PROG_QUERY tcx {} on {iface} (needs Linux 6.6+)",
                        dir.as_str()
                    )
                });
            }
        }
    }
}

/// Programs attached through tcx to `iface` in the named namespace
/// (`BPF_PROG_QUERY`, Linux 6.6+). Legacy cls_bpf filters are not included;
/// see [`tc_filters`](crate::tc_filters).
pub fn tcx_query(ns: &str, iface: &str, dir: TcxDirection) -> Result<TcxQuery> {
    run_in_netns(ns, || tcx_query_here(iface, dir))?
}

/// Loads a `sched_cls` program that only returns `retval` (e.g.
/// [`TCX_NEXT`]). `name`: at most 15 characters of `[A-Za-z0-9_]`.
pub fn load_tc_prog(name: &str, retval: i32) -> Result<OwnedFd> {
    // r0 = retval; exit
    let mut insns = [0u8; 16];
    insns[0] = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K, dst r0
    insns[4..8].copy_from_slice(&retval.to_le_bytes());
    insns[8] = 0x95; // BPF_JMP | BPF_EXIT
    load_tc_prog_raw(name, &insns)
}

/// Loads a `sched_cls` program from raw eBPF instructions (8 bytes each,
/// little-endian `code, dst|src<<4, off, imm`), license GPL. For tests that
/// need a tiny hand-written classifier. `name`: at most 15 characters of
/// `[A-Za-z0-9_]`.
pub fn load_tc_prog_raw(name: &str, insns: &[u8]) -> Result<OwnedFd> {
    ensure!(
        !name.is_empty()
            && name.len() <= 15
            && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'),
        "BPF program name {name:?} must be 1..=15 characters of [A-Za-z0-9_]"
    );
    ensure!(
        !insns.is_empty() && insns.len().is_multiple_of(8),
        "instructions must be a non-empty multiple of 8 bytes"
    );
    let license = b"GPL\0";
    let mut log = vec![0u8; 64 * 1024];
    let mut a = Attr::new();
    a.put_u32(0, BPF_PROG_TYPE_SCHED_CLS);
    a.put_u32(4, (insns.len() / 8) as u32);
    a.put_u64(8, insns.as_ptr() as u64);
    a.put_u64(16, license.as_ptr() as u64);
    a.put_u32(24, 1); // log_level
    a.put_u32(28, log.len() as u32);
    a.put_u64(32, log.as_mut_ptr() as u64);
    a.0[48..48 + name.len()].copy_from_slice(name.as_bytes());
    match sys_bpf(BPF_PROG_LOAD, &mut a) {
        // SAFETY: the kernel returned a new descriptor that we own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err(e).with_context(|| {
                format!(
                    "BPF_PROG_LOAD {name}: verifier log: {}",
                    String::from_utf8_lossy(&log[..end]).trim()
                )
            })
        }
    }
}

/// Loads (without attaching) a trivial BPF LSM program (`r0 = 0; exit`) for
/// the hook whose BTF function id is `attach_btf_id`: whether the kernel
/// accepts trampoline programs at all. The error is the kernel's.
pub fn load_lsm_prog(attach_btf_id: u32) -> io::Result<OwnedFd> {
    // mov64 r0, 0; exit
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = b"GPL\0";
    let name = b"chaos_lsm_chk";
    let mut a = Attr::new();
    a.put_u32(0, BPF_PROG_TYPE_LSM);
    a.put_u32(4, 2);
    a.put_u64(8, insns.as_ptr() as u64);
    a.put_u64(16, license.as_ptr() as u64);
    a.0[48..48 + name.len()].copy_from_slice(name);
    a.put_u32(68, BPF_LSM_MAC); // expected_attach_type
    a.put_u32(108, attach_btf_id);
    let fd = sys_bpf(BPF_PROG_LOAD, &mut a)?;
    // SAFETY: the kernel returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches a program from [`load_lsm_prog`] (`BPF_RAW_TRACEPOINT_OPEN`
/// without a name, as LSM programs attach since 5.7): whether the kernel
/// can make the trampoline. The attachment lasts until the returned
/// descriptor is closed; the trivial program allows every call.
pub fn attach_lsm_prog(prog: &OwnedFd) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.put_u64(0, 0); // name: none, the program's own attach target
    a.put_u32(8, prog.as_raw_fd() as u32);
    let fd = sys_bpf(BPF_RAW_TRACEPOINT_OPEN, &mut a)?;
    // SAFETY: the kernel returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// [`load_tc_prog`] returning [`TCX_NEXT`]: a neutral program that lets
/// every packet on to the next program.
pub fn load_pass_tc_prog(name: &str) -> Result<OwnedFd> {
    load_tc_prog(name, TCX_NEXT)
}

/// Attaches `prog` (a `sched_cls` program) to `iface` in the named namespace
/// with a tcx link (appended after the existing programs). The attachment
/// lasts until the returned link descriptor is closed.
pub fn tcx_attach(ns: &str, iface: &str, dir: TcxDirection, prog: &OwnedFd) -> Result<OwnedFd> {
    let prog_fd = prog.as_raw_fd();
    run_in_netns(ns, || -> Result<OwnedFd> {
        let ifindex = ifindex_here(iface)?;
        let mut a = Attr::new();
        a.put_u32(0, prog_fd as u32);
        a.put_u32(4, ifindex);
        a.put_u32(8, dir.attach_type());
        let fd = sys_bpf(BPF_LINK_CREATE, &mut a)
            .with_context(|| format!("BPF_LINK_CREATE tcx {} on {iface}", dir.as_str()))?;
        if fd < 0 {
            bail!("BPF_LINK_CREATE returned {fd}");
        }
        // SAFETY: the kernel returned a new descriptor that we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    })?
}
