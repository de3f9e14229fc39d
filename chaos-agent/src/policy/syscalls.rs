//! The system call names of the architecture the agent is built for, as
//! man 2 names them: `syscall.names` and `blast syscall --syscall` are
//! checked against this list (the one list; `syscall::table` asks it too).
//!
//! x86_64 has its own table (arch/x86/entry/syscalls/syscall_64.tbl);
//! aarch64 uses the kernel's generic table (include/uapi/asm-generic/unistd.h,
//! now scripts/syscall.tbl) with the 64-bit ABI plus `renameat`, `getrlimit`,
//! `setrlimit` and `memfd_secret`, so it has none of the older calls that
//! have an `*at` or newer form (open, creat, fork, stat, poll, pipe, dup2,
//! rename, mkdir, unlink, ...).

use super::values::{self, quoted};

/// The architecture the names belong to, for messages.
pub const ARCH: &str = std::env::consts::ARCH;

/// Every x86_64 system call name (the kernel's syscall_64.tbl, as man 2
/// names them), space-separated.
const X86_64: &str = "\
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

/// Every aarch64 system call name: the generic table's entries of the
/// `common` and `64` ABIs and the ones arm64 opts into (`renameat`,
/// `rlimit`, `memfd_secret`), in number order (0 to 462, mseal).
const AARCH64: &str = "\
    io_setup io_destroy io_submit io_cancel io_getevents setxattr lsetxattr fsetxattr \
    getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr removexattr \
    lremovexattr fremovexattr getcwd lookup_dcookie eventfd2 epoll_create1 epoll_ctl \
    epoll_pwait dup dup3 fcntl inotify_init1 inotify_add_watch inotify_rm_watch ioctl \
    ioprio_set ioprio_get flock mknodat mkdirat unlinkat symlinkat linkat renameat \
    umount2 mount pivot_root statfs fstatfs truncate ftruncate fallocate faccessat \
    chdir fchdir chroot fchmod fchmodat fchownat fchown openat close vhangup pipe2 \
    quotactl getdents64 lseek read write readv writev pread64 pwrite64 preadv pwritev \
    sendfile pselect6 ppoll signalfd4 vmsplice splice tee readlinkat newfstatat fstat \
    sync fsync fdatasync sync_file_range timerfd_create timerfd_settime timerfd_gettime \
    utimensat acct capget capset personality exit exit_group waitid set_tid_address \
    unshare futex set_robust_list get_robust_list nanosleep getitimer setitimer \
    kexec_load init_module delete_module timer_create timer_gettime timer_getoverrun \
    timer_settime timer_delete clock_settime clock_gettime clock_getres \
    clock_nanosleep syslog ptrace sched_setparam sched_setscheduler sched_getscheduler \
    sched_getparam sched_setaffinity sched_getaffinity sched_yield \
    sched_get_priority_max sched_get_priority_min sched_rr_get_interval \
    restart_syscall kill tkill tgkill sigaltstack rt_sigsuspend rt_sigaction \
    rt_sigprocmask rt_sigpending rt_sigtimedwait rt_sigqueueinfo rt_sigreturn \
    setpriority getpriority reboot setregid setgid setreuid setuid setresuid \
    getresuid setresgid getresgid setfsuid setfsgid times setpgid getpgid getsid \
    setsid getgroups setgroups uname sethostname setdomainname getrlimit setrlimit \
    getrusage umask prctl getcpu gettimeofday settimeofday adjtimex getpid getppid \
    getuid geteuid getgid getegid gettid sysinfo mq_open mq_unlink mq_timedsend \
    mq_timedreceive mq_notify mq_getsetattr msgget msgctl msgrcv msgsnd semget semctl \
    semtimedop semop shmget shmctl shmat shmdt socket socketpair bind listen accept \
    connect getsockname getpeername sendto recvfrom setsockopt getsockopt shutdown \
    sendmsg recvmsg readahead brk munmap mremap add_key request_key keyctl clone \
    execve mmap fadvise64 swapon swapoff mprotect msync mlock munlock mlockall \
    munlockall mincore madvise remap_file_pages mbind get_mempolicy set_mempolicy \
    migrate_pages move_pages rt_tgsigqueueinfo perf_event_open accept4 recvmmsg wait4 \
    prlimit64 fanotify_init fanotify_mark name_to_handle_at open_by_handle_at \
    clock_adjtime syncfs setns sendmmsg process_vm_readv process_vm_writev kcmp \
    finit_module sched_setattr sched_getattr renameat2 seccomp getrandom memfd_create \
    bpf execveat userfaultfd membarrier mlock2 copy_file_range preadv2 pwritev2 \
    pkey_mprotect pkey_alloc pkey_free statx io_pgetevents rseq kexec_file_load \
    pidfd_send_signal io_uring_setup io_uring_enter io_uring_register open_tree \
    move_mount fsopen fsconfig fsmount fspick pidfd_open clone3 close_range openat2 \
    pidfd_getfd faccessat2 process_madvise epoll_pwait2 mount_setattr quotactl_fd \
    landlock_create_ruleset landlock_add_rule landlock_restrict_self memfd_secret \
    process_mrelease futex_waitv set_mempolicy_home_node cachestat fchmodat2 \
    map_shadow_stack futex_wake futex_wait futex_requeue statmount listmount \
    lsm_get_self_attr lsm_set_self_attr lsm_list_modules mseal \
";

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!(
    "chaos-agent knows the syscall names of x86_64 and aarch64 only; add this architecture's table to chaos-agent/src/policy/syscalls.rs"
);

/// The system call names of `arch` (`x86_64` or `aarch64`, as Rust and
/// `uname -m` name them); empty for another architecture. Both tables are
/// in every build, so that messages can say where a name exists and tests
/// check both on any host.
pub fn names_of(arch: &str) -> impl Iterator<Item = &'static str> {
    match arch {
        "x86_64" => X86_64,
        "aarch64" => AARCH64,
        _ => "",
    }
    .split_whitespace()
}

/// Every system call name of this architecture.
pub fn names() -> impl Iterator<Item = &'static str> {
    names_of(ARCH)
}

/// Whether `name` is a system call of this architecture.
pub fn is_syscall(name: &str) -> bool {
    names().any(|n| n == name)
}

/// The prefix of the syscall entry points in the kernel's symbol table
/// (`/proc/kallsyms`) on `arch`: the wrappers kprobes attach to.
pub fn entry_prefix(arch: &str) -> &'static str {
    match arch {
        "aarch64" => "__arm64_sys_",
        _ => "__x64_sys_",
    }
}

/// Where `arch` lacks an older call, the newer one the C library uses in
/// its place (the generic table of aarch64 kept only the `*at` and newer
/// forms).
fn replacement(name: &str) -> Option<&'static str> {
    Some(match name {
        "open" | "creat" => "openat",
        "fork" | "vfork" => "clone",
        "stat" | "lstat" => "newfstatat",
        "mkdir" => "mkdirat",
        "unlink" | "rmdir" => "unlinkat",
        "rename" => "renameat2",
        "link" => "linkat",
        "symlink" => "symlinkat",
        "readlink" => "readlinkat",
        "chmod" => "fchmodat",
        "chown" | "lchown" => "fchownat",
        "access" => "faccessat",
        "mknod" => "mknodat",
        "poll" => "ppoll",
        "select" => "pselect6",
        "pipe" => "pipe2",
        "dup2" => "dup3",
        "epoll_wait" => "epoll_pwait",
        "epoll_create" => "epoll_create1",
        "getdents" => "getdents64",
        "eventfd" => "eventfd2",
        "signalfd" => "signalfd4",
        "inotify_init" => "inotify_init1",
        "utimes" | "utime" | "futimesat" => "utimensat",
        _ => return None,
    })
}

/// Ok when `name` is a syscall of `arch`; otherwise the message, which
/// says when another architecture has it (and what to use instead), or
/// suggests a close name.
pub fn check_on(arch: &str, name: &str) -> Result<(), String> {
    if names_of(arch).any(|n| n == name) {
        return Ok(());
    }
    let elsewhere = ["x86_64", "aarch64"]
        .into_iter()
        .find(|a| *a != arch && names_of(a).any(|n| n == name));
    if let Some(other) = elsewhere {
        let instead = replacement(name)
            .filter(|r| names_of(arch).any(|n| n == *r))
            .map(|r| format!("; use {r}, which the C library calls for it there"))
            .unwrap_or_default();
        return Err(format!(
            "syscall {} does not exist on {arch} (only on {other}){instead}",
            quoted(name)
        ));
    }
    let hint = suggest_on(arch, name)
        .map(|s| format!(" (did you mean {s}?)"))
        .unwrap_or_default();
    Err(format!(
        "unknown syscall {}{hint}; expected a name as in man 2 on {arch}",
        quoted(name)
    ))
}

/// Prefixes of the kernel's symbol names for a syscall (`__x64_sys_connect`,
/// `sys_connect`), which people copy from stack traces and kallsyms.
const SYMBOL_PREFIXES: &[&str] = &[
    "__x64_sys_",
    "__ia32_sys_",
    "__arm64_sys_",
    "__se_sys_",
    "__do_sys_",
    "sys_",
];

/// The closest known name, for "did you mean": the name without a kernel
/// symbol prefix when that is a syscall, or else the nearest spelling.
pub fn suggest(name: &str) -> Option<&'static str> {
    suggest_on(ARCH, name)
}

fn suggest_on(arch: &str, name: &str) -> Option<&'static str> {
    let base = SYMBOL_PREFIXES
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .filter(|b| !b.is_empty())
        .unwrap_or(name);
    if let Some(n) = names_of(arch).find(|n| *n == base) {
        return Some(n);
    }
    values::closest(base, names_of(arch))
}

/// Ok for a syscall of this architecture; otherwise the message (see
/// [`check_on`]).
pub fn check(name: &str) -> Result<(), String> {
    check_on(ARCH, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown() {
        assert!(is_syscall("connect"));
        assert!(is_syscall("openat"));
        assert!(is_syscall("getpid"));
        assert!(!is_syscall("conect"));
        assert!(!is_syscall(""));
        assert_eq!(suggest("conect"), Some("connect"));
        assert_eq!(suggest("sys_connect"), Some("connect"));
        assert_eq!(suggest("__x64_sys_openat"), Some("openat"));
        assert_eq!(suggest("sys_conect"), Some("connect"));
        assert_eq!(suggest("nosuchcall"), None);
        assert_eq!(
            check("nosuchcall").unwrap_err(),
            format!("unknown syscall \"nosuchcall\"; expected a name as in man 2 on {ARCH}")
        );
        assert_eq!(
            check("sys_connect").unwrap_err(),
            format!(
                "unknown syscall \"sys_connect\" (did you mean connect?); expected a name as in man 2 on {ARCH}"
            )
        );
        assert_eq!(check("connect"), Ok(()));
    }

    #[test]
    fn names_are_unique_and_well_formed() {
        let mut all: Vec<&str> = names().collect();
        assert!(
            all.iter()
                .all(|n| super::values::parse_syscall_name(n).is_ok()),
            "{all:?}"
        );
        let len = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), len, "a name is listed twice");
    }

    #[test]
    fn x86_64_table() {
        assert_eq!(names_of("x86_64").count(), 360);
        for n in ["open", "fork", "arch_prctl", "epoll_wait", "stat"] {
            assert!(check_on("x86_64", n).is_ok(), "{n}");
        }
        assert_eq!(entry_prefix("x86_64"), "__x64_sys_");
    }

    #[test]
    fn tables_are_unique_per_arch_and_this_one_is_used() {
        for arch in ["x86_64", "aarch64"] {
            let mut all: Vec<&str> = names_of(arch).collect();
            let len = all.len();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), len, "{arch}: a name is listed twice");
        }
        assert_eq!(names().count(), names_of(std::env::consts::ARCH).count());
        assert_eq!(names_of("riscv64").count(), 0);
    }

    #[test]
    fn aarch64_table() {
        // 0..=294 without 42 (nfsservctl, gone) and the 16 numbers
        // 244..=259 kept for other architectures; then 424..=462.
        assert_eq!(names_of("aarch64").count(), 278 + 39);
        assert_eq!(entry_prefix("aarch64"), "__arm64_sys_");
        for n in [
            "open",
            "creat",
            "fork",
            "vfork",
            "stat",
            "lstat",
            "poll",
            "select",
            "pipe",
            "dup2",
            "access",
            "rename",
            "mkdir",
            "rmdir",
            "unlink",
            "link",
            "symlink",
            "readlink",
            "chmod",
            "chown",
            "lchown",
            "utime",
            "utimes",
            "futimesat",
            "mknod",
            "getdents",
            "epoll_create",
            "epoll_wait",
            "inotify_init",
            "eventfd",
            "signalfd",
            "alarm",
            "pause",
            "time",
            "uselib",
            "ustat",
            "sysfs",
            "getpgrp",
            "arch_prctl",
            "iopl",
            "ioperm",
            "modify_ldt",
        ] {
            let e = check_on("aarch64", n).unwrap_err();
            assert!(
                e.contains("does not exist on aarch64 (only on x86_64)"),
                "{n}: {e}"
            );
        }
        for n in [
            "openat",
            "renameat",
            "getrlimit",
            "memfd_secret",
            "clone3",
            "mmap",
        ] {
            assert!(check_on("aarch64", n).is_ok(), "{n}");
        }
        assert_eq!(
            check_on("aarch64", "open").unwrap_err(),
            "syscall \"open\" does not exist on aarch64 (only on x86_64); use openat, which the C library calls for it there"
        );
        assert_eq!(
            check_on("aarch64", "fork").unwrap_err(),
            "syscall \"fork\" does not exist on aarch64 (only on x86_64); use clone, which the C library calls for it there"
        );
        // Every replacement offered exists on aarch64.
        for n in names_of("x86_64").filter(|n| check_on("aarch64", n).is_err()) {
            if let Some(r) = replacement(n) {
                assert!(check_on("aarch64", r).is_ok(), "{n} -> {r}");
            }
        }
        // And a name of neither still gets "did you mean" for aarch64.
        assert!(
            check_on("aarch64", "opneat")
                .unwrap_err()
                .contains("did you mean openat?"),
        );
    }
}
