//! The three ways of failing a syscall, what each needs from the kernel,
//! and the choice per syscall: most precise first.
//!
//! - kprobe + `bpf_override_return` on the syscall's entry symbol: any
//!   syscall, any process, before the call does anything. Needs
//!   `CONFIG_BPF_KPROBE_OVERRIDE` (absent from most distribution kernels).
//! - BPF LSM: a hook inside the call (`file_open`, `socket_connect`, ...).
//!   Needs the `bpf` LSM active and trampolines.
//! - cgroup socket hooks: connect, bind, UDP sendmsg, socket, get/setsockopt
//!   of the processes in one cgroup, any errno with `bpf_set_retval`
//!   (Linux 5.18); before that EPERM only (a hook that rejects a call
//!   without setting the errno gives EPERM).

use std::{fs, path::Path};

use aya::util::KernelVersion;

use crate::{fault::Backend, policy::model::SyscallTarget};

/// Whether each backend can run on this kernel; `Err` holds the reason.
#[derive(Clone, Debug)]
pub struct Availability {
    pub kprobe: Result<(), String>,
    pub lsm: Result<(), String>,
    /// The cgroup socket hooks at all (cgroup v2).
    pub cgroup: Result<(), String>,
    /// Whether they can set an errno (`bpf_set_retval`); without it they
    /// serve EPERM only.
    pub set_retval: Result<(), String>,
}

/// EPERM, the errno a cgroup hook gives without `bpf_set_retval`.
pub const EPERM: i32 = 1;

impl Availability {
    pub fn of(&self, b: Backend) -> Result<(), String> {
        match b {
            Backend::Kprobe => self.kprobe.clone(),
            Backend::Lsm => self.lsm.clone(),
            Backend::Cgroup => self.cgroup.clone(),
            Backend::Tcx | Backend::Netlink => Err(format!("{b} is not a syscall backend")),
        }
    }

    /// What this kernel offers, from files and the version (cheap: no
    /// program is loaded; a load that still fails is reported then).
    pub fn detect() -> Availability {
        let version = KernelVersion::current().ok();
        let vtext = version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "unknown".into());
        let at_least = |a, b| version.is_some_and(|v| v >= KernelVersion::new(a, b, 0));
        Availability {
            kprobe: kprobe_override(),
            lsm: bpf_lsm(),
            cgroup: if crate::cgroup::cgroup2_mount().is_none() {
                Err("no cgroup2 mount found in /proc/self/mountinfo".into())
            } else {
                Ok(())
            },
            set_retval: if at_least(5, 18) {
                Ok(())
            } else {
                Err(format!("bpf_set_retval, Linux 5.18; this is {vtext}"))
            },
        }
    }

    /// Which errnos `b` can return here, for `probe`.
    pub fn errnos(&self, b: Backend) -> &'static str {
        match b {
            Backend::Cgroup if self.set_retval.is_err() => "EPERM only",
            _ => "any errno",
        }
    }
}

/// The kernel's build configuration, where it can be read without
/// decompressing (`/boot/config-<release>`).
fn kernel_config() -> Option<String> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()
}

fn kprobe_override() -> Result<(), String> {
    if !Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
        return Err(
            "CONFIG_BPF_KPROBE_OVERRIDE is not set (this kernel has no kprobes at all: CONFIG_KPROBES is off)"
                .into(),
        );
    }
    if let Some(config) = kernel_config()
        && !config.lines().any(|l| l == "CONFIG_BPF_KPROBE_OVERRIDE=y")
    {
        return Err("CONFIG_BPF_KPROBE_OVERRIDE is not set".into());
    }
    // The real test (and the only one without a readable config): the
    // verifier refuses bpf_override_return when the option is off.
    super::attach::trial_load_kprobe()
}

/// The active LSMs: from securityfs, else the kernel command line, else the
/// kernel's build default. `None` when none of them can be read.
fn active_lsms() -> Option<(String, &'static str)> {
    if let Ok(s) = fs::read_to_string("/sys/kernel/security/lsm") {
        return Some((s.trim().to_owned(), "/sys/kernel/security/lsm"));
    }
    if let Ok(cmdline) = fs::read_to_string("/proc/cmdline")
        && let Some(v) = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("lsm="))
    {
        return Some((v.to_owned(), "lsm= on the kernel command line"));
    }
    let config = kernel_config()?;
    let v = config.lines().find_map(|l| l.strip_prefix("CONFIG_LSM="))?;
    Some((v.trim_matches('"').to_owned(), "CONFIG_LSM"))
}

fn bpf_lsm() -> Result<(), String> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err("BPF LSM programs need /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)".into());
    }
    if let Some((lsms, source)) = active_lsms()
        && !lsms.split(',').any(|l| l == "bpf")
    {
        return Err(format!(
            "the bpf LSM is not active ({source}: {lsms}); it needs CONFIG_BPF_LSM and lsm=...,bpf on the kernel command line"
        ));
    }
    // The real test, what a fault does: a trampoline program loads (some
    // platforms refuse every trampoline with EPERM) and attaches (arm64
    // before 6.4 refuses that with ENOTSUPP).
    super::attach::trial_attach_lsm()
}

/// Why a backend cannot serve a syscall, whatever the kernel.
enum NotServed {
    /// It has no hook for this syscall.
    NoHook(String),
    /// It has one, but cannot select this kind of target.
    Target(String),
}

/// Whether `backend` has a hook for `name` with this kind of target.
fn serves(backend: Backend, name: &str, target: &SyscallTarget) -> Result<(), NotServed> {
    match backend {
        Backend::Tcx | Backend::Netlink => Err(NotServed::NoHook(format!(
            "{backend} attaches network faults, not syscall faults"
        ))),
        // Every syscall has an entry symbol; it is looked up in
        // /proc/kallsyms when the probe is attached.
        Backend::Kprobe => Ok(()),
        Backend::Lsm => match super::table::lsm_hooks(name) {
            Some(_) => Ok(()),
            None => Err(NotServed::NoHook(format!(
                "the BPF LSM has no hook for {name}"
            ))),
        },
        Backend::Cgroup => {
            if super::table::cgroup_hooks(name).is_none() {
                return Err(NotServed::NoHook(format!(
                    "the cgroup socket hooks have none for {name}"
                )));
            }
            match target {
                SyscallTarget::Cgroup(_) | SyscallTarget::Unit(_) => Ok(()),
                SyscallTarget::Pid(_) | SyscallTarget::Comm(_) => Err(NotServed::Target(
                    "the cgroup socket hooks serve cgroup and unit targets only".into(),
                )),
            }
        }
    }
}

/// Whether backend `b` runs here and can return `errno`.
fn runs(avail: &Availability, b: Backend, errno: i32) -> Result<(), String> {
    avail.of(b)?;
    if b == Backend::Cgroup
        && errno != EPERM
        && let Err(e) = &avail.set_retval
    {
        return Err(format!(
            "errno {errno} from a cgroup hook needs {e} (without it the hooks can fail a call with EPERM only: --errno EPERM)"
        ));
    }
    Ok(())
}

/// Picks the backend for one syscall failing with `errno`: `forced` if
/// given, else the first of kprobe, LSM, cgroup that has a hook for it and
/// runs here. The error (exit 3) says what would be needed.
pub fn choose(
    name: &str,
    target: &SyscallTarget,
    errno: i32,
    avail: &Availability,
    forced: Option<Backend>,
) -> Result<Backend, String> {
    let forced_one;
    let candidates: &[Backend] = match forced {
        Some(b) => {
            forced_one = [b];
            &forced_one
        }
        None => &[Backend::Kprobe, Backend::Lsm, Backend::Cgroup],
    };
    let mut why = Vec::new();
    for &b in candidates {
        match serves(b, name, target) {
            // A backend without a hook for this call is no option at all:
            // say so only when it was asked for.
            Err(NotServed::NoHook(e)) => {
                if forced.is_some() {
                    why.push(e);
                }
            }
            Err(NotServed::Target(e)) => why.push(e),
            Ok(()) => match runs(avail, b, errno) {
                Ok(()) => return Ok(b),
                Err(e) => why.push(format!("{}: {e}", b.need())),
            },
        }
    }
    if why.is_empty() {
        return Err(format!("{name}: no backend has a hook for it"));
    }
    Err(format!("{name} needs {}", why.join("; or ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ECONNREFUSED: i32 = 111;

    fn none() -> Availability {
        Availability {
            kprobe: Err("CONFIG_BPF_KPROBE_OVERRIDE is not set".into()),
            lsm: Err("the bpf LSM is not active".into()),
            cgroup: Ok(()),
            set_retval: Ok(()),
        }
    }

    #[test]
    fn picks_the_most_precise_available() {
        let cg = SyscallTarget::Cgroup("/t".into());
        let a = none();
        assert_eq!(
            choose("connect", &cg, ECONNREFUSED, &a, None),
            Ok(Backend::Cgroup)
        );
        let mut all = a.clone();
        all.kprobe = Ok(());
        assert_eq!(
            choose("connect", &cg, ECONNREFUSED, &all, None),
            Ok(Backend::Kprobe)
        );
    }

    #[test]
    fn says_what_is_missing() {
        let cg = SyscallTarget::Cgroup("/t".into());
        let e = choose("getpid", &cg, EPERM, &none(), None).unwrap_err();
        assert_eq!(
            e,
            "getpid needs kprobe override: CONFIG_BPF_KPROBE_OVERRIDE is not set"
        );
        let pid = SyscallTarget::Pid(42);
        let e = choose("connect", &pid, ECONNREFUSED, &none(), None).unwrap_err();
        assert!(e.contains("kprobe override"), "{e}");
        let e = choose("connect", &cg, ECONNREFUSED, &none(), Some(Backend::Kprobe)).unwrap_err();
        assert!(e.contains("CONFIG_BPF_KPROBE_OVERRIDE"), "{e}");
    }

    #[test]
    fn before_5_18_the_cgroup_hooks_serve_eperm_only() {
        let cg = SyscallTarget::Cgroup("/t".into());
        let mut old = none();
        old.set_retval = Err("bpf_set_retval, Linux 5.18; this is 5.10.0".into());
        assert_eq!(
            choose("connect", &cg, EPERM, &old, None),
            Ok(Backend::Cgroup)
        );
        assert_eq!(old.errnos(Backend::Cgroup), "EPERM only");
        assert_eq!(none().errnos(Backend::Cgroup), "any errno");
        let e = choose("connect", &cg, ECONNREFUSED, &old, None).unwrap_err();
        assert!(
            e.contains("needs bpf_set_retval, Linux 5.18; this is 5.10.0")
                && e.contains("--errno EPERM")
                && e.contains("the bpf LSM is not active"),
            "{e}"
        );
        let e = choose("connect", &cg, ECONNREFUSED, &old, Some(Backend::Cgroup)).unwrap_err();
        assert!(e.contains("bpf_set_retval"), "{e}");
    }
}
