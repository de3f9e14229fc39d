//! What the agent knows about system calls: their names (x86_64), and
//! which kernel hook each backend uses for them.

use chaos_common::syscall::{
    PERM_READ, PERM_WRITE, PROG_CG_BIND4, PROG_CG_BIND6, PROG_CG_CONNECT4, PROG_CG_CONNECT6,
    PROG_CG_GETSOCKOPT, PROG_CG_SENDMSG4, PROG_CG_SENDMSG6, PROG_CG_SETSOCKOPT,
    PROG_CG_SOCK_CREATE, PROG_LSM_BPRM_CHECK, PROG_LSM_FILE_OPEN, PROG_LSM_FILE_PERMISSION,
    PROG_LSM_INODE_MKDIR, PROG_LSM_INODE_RENAME, PROG_LSM_INODE_RMDIR, PROG_LSM_INODE_UNLINK,
    PROG_LSM_MMAP_FILE, PROG_LSM_SOCKET_BIND, PROG_LSM_SOCKET_CONNECT, PROG_LSM_SOCKET_CREATE,
    PROG_LSM_SOCKET_RECVMSG, PROG_LSM_SOCKET_SENDMSG, PROG_LSM_TASK_ALLOC, SLOT_BIND4, SLOT_BIND6,
    SLOT_CONNECT4, SLOT_CONNECT6, SLOT_GETSOCKOPT, SLOT_LSM_BIND, SLOT_LSM_CONNECT, SLOT_LSM_EXEC,
    SLOT_LSM_FILE_OPEN, SLOT_LSM_MKDIR, SLOT_LSM_MMAP, SLOT_LSM_READ, SLOT_LSM_RECVMSG,
    SLOT_LSM_RENAME, SLOT_LSM_RMDIR, SLOT_LSM_SENDMSG, SLOT_LSM_SOCKET, SLOT_LSM_TASK_ALLOC,
    SLOT_LSM_UNLINK, SLOT_LSM_WRITE, SLOT_SENDMSG4, SLOT_SENDMSG6, SLOT_SETSOCKOPT,
    SLOT_SOCK_CREATE,
};

/// Every x86_64 system call name (the kernel's syscall_64.tbl, as man 2
/// names them), space-separated.
const NAMES: &str = "\
    read write open close stat fstat lstat poll lseek mmap mprotect munmap brk \
    rt_sigaction rt_sigprocmask rt_sigreturn ioctl pread64 pwrite64 readv writev access \
    pipe select sched_yield mremap msync mincore madvise shmget shmat shmctl dup dup2 \
    pause nanosleep getitimer alarm setitimer getpid sendfile socket connect accept \
    sendto recvfrom sendmsg recvmsg shutdown bind listen getsockname getpeername \
    socketpair setsockopt getsockopt clone fork vfork execve exit wait4 kill uname \
    semget semop semctl shmdt msgget msgsnd msgrcv msgctl fcntl flock fsync fdatasync \
    truncate ftruncate getdents getcwd chdir fchdir rename mkdir rmdir creat link \
    unlink symlink readlink chmod fchmod chown fchown lchown umask gettimeofday \
    getrlimit getrusage sysinfo times ptrace getuid syslog getgid setuid setgid geteuid \
    getegid setpgid getppid getpgrp setsid setreuid setregid getgroups setgroups \
    setresuid getresuid setresgid getresgid getpgid setfsuid setfsgid getsid capget \
    capset rt_sigpending rt_sigtimedwait rt_sigqueueinfo rt_sigsuspend sigaltstack \
    utime mknod uselib personality ustat statfs fstatfs sysfs getpriority setpriority \
    sched_setparam sched_getparam sched_setscheduler sched_getscheduler \
    sched_get_priority_max sched_get_priority_min sched_rr_get_interval mlock munlock \
    mlockall munlockall vhangup modify_ldt pivot_root _sysctl prctl arch_prctl adjtimex \
    setrlimit chroot sync acct settimeofday mount umount2 swapon swapoff reboot \
    sethostname setdomainname iopl ioperm init_module delete_module quotactl nfsservctl \
    getpmsg putpmsg afs_syscall tuxcall security gettid readahead setxattr lsetxattr \
    fsetxattr getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr removexattr \
    lremovexattr fremovexattr tkill time futex sched_setaffinity sched_getaffinity \
    set_thread_area io_setup io_destroy io_getevents io_submit io_cancel \
    get_thread_area lookup_dcookie epoll_create epoll_ctl_old epoll_wait_old \
    remap_file_pages getdents64 set_tid_address restart_syscall semtimedop fadvise64 \
    timer_create timer_settime timer_gettime timer_getoverrun timer_delete \
    clock_settime clock_gettime clock_getres clock_nanosleep exit_group epoll_wait \
    epoll_ctl tgkill utimes vserver mbind set_mempolicy get_mempolicy mq_open mq_unlink \
    mq_timedsend mq_timedreceive mq_notify mq_getsetattr kexec_load waitid add_key \
    request_key keyctl ioprio_set ioprio_get inotify_init inotify_add_watch \
    inotify_rm_watch migrate_pages openat mkdirat mknodat fchownat futimesat newfstatat \
    unlinkat renameat linkat symlinkat readlinkat fchmodat faccessat pselect6 ppoll \
    unshare set_robust_list get_robust_list splice tee sync_file_range vmsplice \
    move_pages utimensat epoll_pwait signalfd timerfd_create eventfd fallocate \
    timerfd_settime timerfd_gettime accept4 signalfd4 eventfd2 epoll_create1 dup3 pipe2 \
    inotify_init1 preadv pwritev rt_tgsigqueueinfo perf_event_open recvmmsg \
    fanotify_init fanotify_mark prlimit64 name_to_handle_at open_by_handle_at \
    clock_adjtime syncfs sendmmsg setns getcpu process_vm_readv process_vm_writev kcmp \
    finit_module sched_setattr sched_getattr renameat2 seccomp getrandom memfd_create \
    kexec_file_load bpf execveat userfaultfd membarrier mlock2 copy_file_range preadv2 \
    pwritev2 pkey_mprotect pkey_alloc pkey_free statx rseq pidfd_send_signal \
    io_uring_setup io_uring_enter io_uring_register open_tree move_mount fsopen \
    fsconfig fsmount fspick pidfd_open clone3 close_range openat2 pidfd_getfd \
    faccessat2 process_madvise epoll_pwait2 mount_setattr quotactl_fd \
    landlock_create_ruleset landlock_add_rule landlock_restrict_self memfd_secret \
    process_mrelease futex_waitv set_mempolicy_home_node fchmodat2 mseal \
";

/// Whether `name` is a system call of this architecture.
pub fn is_syscall(name: &str) -> bool {
    NAMES.split_whitespace().any(|n| n == name)
}

/// The closest known name, for "did you mean".
pub fn suggest(name: &str) -> Option<&'static str> {
    crate::policy::values::closest(name, NAMES.split_whitespace())
}

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
        assert_eq!(NAMES.split_whitespace().count(), 360);
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
            assert!(is_syscall(n) && lsm_hooks(n).is_some(), "{n}");
        }
        assert!(lsm_hooks("getpid").is_none());
        assert_eq!(lsm_hook_of(PROG_LSM_FILE_OPEN), "file_open");
    }
}
