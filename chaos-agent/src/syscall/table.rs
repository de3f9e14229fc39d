//! Which kernel hook each backend uses for a system call. The names
//! themselves (per architecture) are in `policy::syscalls`.

use chaos_common::syscall::{
    PERM_READ, PERM_WRITE, PROG_CG_BIND4, PROG_CG_BIND6, PROG_CG_CONNECT4, PROG_CG_CONNECT6,
    PROG_CG_EPERM_BIND4, PROG_CG_EPERM_BIND6, PROG_CG_EPERM_CONNECT4, PROG_CG_EPERM_CONNECT6,
    PROG_CG_EPERM_GETSOCKOPT, PROG_CG_EPERM_SENDMSG4, PROG_CG_EPERM_SENDMSG6,
    PROG_CG_EPERM_SETSOCKOPT, PROG_CG_EPERM_SOCK_CREATE, PROG_CG_GETSOCKOPT, PROG_CG_SENDMSG4,
    PROG_CG_SENDMSG6, PROG_CG_SETSOCKOPT, PROG_CG_SOCK_CREATE, PROG_LSM_BPRM_CHECK,
    PROG_LSM_FILE_OPEN, PROG_LSM_FILE_PERMISSION, PROG_LSM_INODE_MKDIR, PROG_LSM_INODE_RENAME,
    PROG_LSM_INODE_RMDIR, PROG_LSM_INODE_UNLINK, PROG_LSM_MMAP_FILE, PROG_LSM_SOCKET_BIND,
    PROG_LSM_SOCKET_CONNECT, PROG_LSM_SOCKET_CREATE, PROG_LSM_SOCKET_RECVMSG,
    PROG_LSM_SOCKET_SENDMSG, PROG_LSM_TASK_ALLOC, SLOT_BIND4, SLOT_BIND6, SLOT_CONNECT4,
    SLOT_CONNECT6, SLOT_GETSOCKOPT, SLOT_LSM_BIND, SLOT_LSM_CONNECT, SLOT_LSM_EXEC,
    SLOT_LSM_FILE_OPEN, SLOT_LSM_MKDIR, SLOT_LSM_MMAP, SLOT_LSM_READ, SLOT_LSM_RECVMSG,
    SLOT_LSM_RENAME, SLOT_LSM_RMDIR, SLOT_LSM_SENDMSG, SLOT_LSM_SOCKET, SLOT_LSM_TASK_ALLOC,
    SLOT_LSM_UNLINK, SLOT_LSM_WRITE, SLOT_SENDMSG4, SLOT_SENDMSG6, SLOT_SETSOCKOPT,
    SLOT_SOCK_CREATE,
};

// The names are the policy's: one list, checked at validation.
pub use crate::policy::syscalls::{is_syscall, suggest};

/// Which cgroup socket hooks of the kernel stand for a syscall: the
/// program names and their counter slots. The hooks run inside the call;
/// see ARCHITECTURE.md for what each one covers.
pub fn cgroup_hooks(name: &str) -> Option<&'static [(&'static str, u32)]> {
    Some(match name {
        "connect" => &[
            (PROG_CG_CONNECT4, SLOT_CONNECT4),
            (PROG_CG_CONNECT6, SLOT_CONNECT6),
        ],
        "bind" => &[(PROG_CG_BIND4, SLOT_BIND4), (PROG_CG_BIND6, SLOT_BIND6)],
        // UDP sends that carry an address (unconnected sockets) only.
        "sendmsg" | "sendto" | "sendmmsg" => &[
            (PROG_CG_SENDMSG4, SLOT_SENDMSG4),
            (PROG_CG_SENDMSG6, SLOT_SENDMSG6),
        ],
        // AF_INET and AF_INET6 sockets only.
        "socket" => &[(PROG_CG_SOCK_CREATE, SLOT_SOCK_CREATE)],
        "getsockopt" => &[(PROG_CG_GETSOCKOPT, SLOT_GETSOCKOPT)],
        "setsockopt" => &[(PROG_CG_SETSOCKOPT, SLOT_SETSOCKOPT)],
        _ => return None,
    })
}

/// The program of a cgroup hook that rejects without `bpf_set_retval`
/// (kernels before 5.18: the caller gets EPERM), for one of
/// [`cgroup_hooks`]' programs.
pub fn eperm_program(prog: &str) -> Option<&'static str> {
    Some(match prog {
        PROG_CG_CONNECT4 => PROG_CG_EPERM_CONNECT4,
        PROG_CG_CONNECT6 => PROG_CG_EPERM_CONNECT6,
        PROG_CG_BIND4 => PROG_CG_EPERM_BIND4,
        PROG_CG_BIND6 => PROG_CG_EPERM_BIND6,
        PROG_CG_SENDMSG4 => PROG_CG_EPERM_SENDMSG4,
        PROG_CG_SENDMSG6 => PROG_CG_EPERM_SENDMSG6,
        PROG_CG_SOCK_CREATE => PROG_CG_EPERM_SOCK_CREATE,
        PROG_CG_GETSOCKOPT => PROG_CG_EPERM_GETSOCKOPT,
        PROG_CG_SETSOCKOPT => PROG_CG_EPERM_SETSOCKOPT,
        _ => return None,
    })
}

/// Syscalls that read or write through `file_permission`.
const READS: &[&str] = &["read", "readv", "pread64", "preadv", "preadv2"];
const WRITES: &[&str] = &["write", "writev", "pwrite64", "pwritev", "pwritev2"];

/// The BPF LSM hook that stands for a syscall (the program name is
/// `chaos_lsm_<hook>`) and its counter slot. The hook runs inside the call
/// where the kernel asks the security modules, not at its entry.
pub fn lsm_hooks(name: &str) -> Option<&'static [(&'static str, u32)]> {
    if READS.contains(&name) {
        return Some(&[(PROG_LSM_FILE_PERMISSION, SLOT_LSM_READ)]);
    }
    if WRITES.contains(&name) {
        return Some(&[(PROG_LSM_FILE_PERMISSION, SLOT_LSM_WRITE)]);
    }
    Some(match name {
        "open" | "openat" | "openat2" | "creat" => &[(PROG_LSM_FILE_OPEN, SLOT_LSM_FILE_OPEN)],
        "connect" => &[(PROG_LSM_SOCKET_CONNECT, SLOT_LSM_CONNECT)],
        "bind" => &[(PROG_LSM_SOCKET_BIND, SLOT_LSM_BIND)],
        "socket" => &[(PROG_LSM_SOCKET_CREATE, SLOT_LSM_SOCKET)],
        "sendmsg" | "sendto" | "sendmmsg" => &[(PROG_LSM_SOCKET_SENDMSG, SLOT_LSM_SENDMSG)],
        "recvmsg" | "recvfrom" | "recvmmsg" => &[(PROG_LSM_SOCKET_RECVMSG, SLOT_LSM_RECVMSG)],
        "unlink" | "unlinkat" => &[(PROG_LSM_INODE_UNLINK, SLOT_LSM_UNLINK)],
        "rmdir" => &[(PROG_LSM_INODE_RMDIR, SLOT_LSM_RMDIR)],
        "mkdir" | "mkdirat" => &[(PROG_LSM_INODE_MKDIR, SLOT_LSM_MKDIR)],
        "rename" | "renameat" | "renameat2" => &[(PROG_LSM_INODE_RENAME, SLOT_LSM_RENAME)],
        "mmap" => &[(PROG_LSM_MMAP_FILE, SLOT_LSM_MMAP)],
        "clone" | "clone3" | "fork" | "vfork" => &[(PROG_LSM_TASK_ALLOC, SLOT_LSM_TASK_ALLOC)],
        "execve" | "execveat" => &[(PROG_LSM_BPRM_CHECK, SLOT_LSM_EXEC)],
        _ => return None,
    })
}

/// The `file_permission` accesses a syscall stands for (`PERM_*`), 0 for
/// other syscalls.
pub fn perm_bits(name: &str) -> u32 {
    if READS.contains(&name) {
        PERM_READ
    } else if WRITES.contains(&name) {
        PERM_WRITE
    } else {
        0
    }
}

/// The LSM hook of a `chaos_lsm_<hook>` program.
pub fn lsm_hook_of(prog: &str) -> &str {
    prog.strip_prefix("chaos_lsm_").unwrap_or(prog)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_syscall("connect"));
        assert!(is_syscall("openat"));
        assert!(is_syscall("getpid"));
        assert!(!is_syscall("conect"));
        assert_eq!(suggest("conect"), Some("connect"));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(crate::policy::syscalls::names().count(), 360);
    }

    #[test]
    fn every_hooked_name_is_a_syscall() {
        for n in [
            "connect",
            "bind",
            "sendmsg",
            "sendto",
            "sendmmsg",
            "socket",
            "getsockopt",
            "setsockopt",
        ] {
            assert!(is_syscall(n) && cgroup_hooks(n).is_some(), "{n}");
        }
        assert!(cgroup_hooks("recvmsg").is_none());
        for n in [
            "connect",
            "bind",
            "sendmsg",
            "socket",
            "getsockopt",
            "setsockopt",
        ] {
            for (prog, _) in cgroup_hooks(n).unwrap() {
                let plain = eperm_program(prog).unwrap();
                assert_eq!(plain.replace("_eperm", ""), *prog, "{n}: {prog} -> {plain}");
            }
        }
        for n in [
            "open",
            "openat",
            "openat2",
            "creat",
            "read",
            "readv",
            "pread64",
            "preadv",
            "preadv2",
            "write",
            "writev",
            "pwrite64",
            "pwritev",
            "pwritev2",
            "connect",
            "bind",
            "socket",
            "sendmsg",
            "sendto",
            "sendmmsg",
            "recvmsg",
            "recvfrom",
            "recvmmsg",
            "unlink",
            "unlinkat",
            "rmdir",
            "mkdir",
            "mkdirat",
            "rename",
            "renameat",
            "renameat2",
            "mmap",
            "clone",
            "clone3",
            "fork",
            "vfork",
            "execve",
            "execveat",
        ] {
            // arm64 has only the `*at` and newer forms of these.
            let legacy = [
                "open", "creat", "unlink", "rmdir", "mkdir", "rename", "fork", "vfork",
            ];
            let here = cfg!(target_arch = "x86_64") || !legacy.contains(&n);
            assert_eq!(is_syscall(n), here, "{n}");
            assert!(lsm_hooks(n).is_some(), "{n}");
        }
        assert!(lsm_hooks("getpid").is_none());
        assert_eq!(lsm_hook_of(PROG_LSM_FILE_OPEN), "file_open");
    }
}
