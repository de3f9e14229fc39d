//! `probe`: what this kernel supports, with the reason for every "no".

use std::{path::Path, process::ExitCode};

use aya::{programs::SchedClassifier, util::KernelVersion};
use serde::Serialize;

use crate::{cgroup, error::Result, net::qdisc};

#[derive(Serialize)]
pub struct Row {
    pub feature: &'static str,
    pub supported: bool,
    pub detail: String,
}

fn row(feature: &'static str, supported: bool, detail: impl Into<String>) -> Row {
    Row {
        feature,
        supported,
        detail: detail.into(),
    }
}

/// Loads (but does not attach) the classifiers: the real test of whether
/// the verifier and the kernel's BPF support accept them.
fn load_classifiers() -> std::result::Result<(), String> {
    let mut ebpf = aya::EbpfLoader::new()
        .load(crate::net::object())
        .map_err(|e| format!("loading the object failed: {e}"))?;
    for name in [chaos_common::PROG_TC_INGRESS, chaos_common::PROG_TC_EGRESS] {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("{name} missing"))?
            .try_into()
            .map_err(|e| format!("{name}: {e}"))?;
        prog.load()
            .map_err(|e| format!("{name}: the kernel refused it: {e}"))?;
    }
    Ok(())
}

pub fn rows() -> Vec<Row> {
    let version = KernelVersion::current().ok();
    let vtext = version
        .map(|v| v.to_string())
        .unwrap_or_else(|| "unknown".into());
    let at_least = |a, b| version.is_some_and(|v| v >= KernelVersion::new(a, b, 0));
    let mut out = Vec::new();
    match load_classifiers() {
        Ok(()) => out.push(row(
            "tc-classifier",
            true,
            "the ingress and egress classifiers pass the verifier",
        )),
        Err(e) => out.push(row("tc-classifier", false, e)),
    }
    out.push(if at_least(6, 6) {
        row(
            "attach-tcx",
            true,
            format!(
                "Linux {vtext} has tcx links (fd-owned: a killed agent leaves nothing attached)"
            ),
        )
    } else {
        row(
            "attach-tcx",
            false,
            format!("tcx needs Linux 6.6; this is {vtext}; netlink clsact is used instead"),
        )
    });
    out.push(if at_least(4, 5) {
        row(
            "attach-netlink",
            true,
            "clsact qdisc with direct-action cls_bpf filters",
        )
    } else {
        row(
            "attach-netlink",
            false,
            format!("clsact needs Linux 4.5; this is {vtext}"),
        )
    });
    let cg = cgroup::cgroup2_mount();
    out.push(match (&cg, at_least(4, 19)) {
        (Some(m), true) => row(
            "cgroup-match",
            true,
            format!("bpf_skb_ancestor_cgroup_id, cgroup2 at {}", m.display()),
        ),
        (None, _) => row(
            "cgroup-match",
            false,
            "no cgroup2 mount found in /proc/self/mountinfo",
        ),
        (_, false) => row(
            "cgroup-match",
            false,
            format!("bpf_skb_ancestor_cgroup_id needs Linux 4.19; this is {vtext}"),
        ),
    });
    let avail = crate::syscall::backend::Availability::detect();
    let cgroup_yes = match &avail.set_retval {
        Ok(()) => "cgroup socket hooks with bpf_set_retval: connect, bind, UDP sendmsg, socket, get/setsockopt; cgroup and unit targets".to_owned(),
        Err(e) => format!(
            "cgroup socket hooks without {e}: they can fail connect, bind, UDP sendmsg, socket, get/setsockopt with EPERM only; cgroup and unit targets"
        ),
    };
    for (feature, backend, yes) in [
        (
            "syscall-kprobe",
            crate::fault::Backend::Kprobe,
            "bpf_override_return at the syscall entry: any syscall, any target".to_owned(),
        ),
        (
            "syscall-lsm",
            crate::fault::Backend::Lsm,
            "BPF LSM programs load and attach: file, socket, inode, mmap, task and exec hooks; pid, comm and cgroup targets".to_owned(),
        ),
        ("syscall-cgroup", crate::fault::Backend::Cgroup, cgroup_yes),
    ] {
        out.push(match avail.of(backend) {
            Ok(()) => row(
                feature,
                true,
                format!("{}: {yes}", avail.errnos(backend)),
            ),
            Err(e) => row(feature, false, e.clone()),
        });
    }
    for (feature, kind, what) in [
        (
            "qdisc-fq",
            "fq",
            "releases delayed and paced packets at skb->tstamp",
        ),
        (
            "qdisc-netem",
            "netem",
            "not used by the agent; tests compare with it",
        ),
    ] {
        out.push(match qdisc::qdisc_available(kind) {
            Ok(()) => row(feature, true, format!("{kind} qdisc available ({what})")),
            Err(e) => row(feature, false, unavailable(kind, &e)),
        });
    }
    out.push(match qdisc::ifb_available() {
        Ok(()) => row("ifb", true, "ifb devices can be made (ingress delay)"),
        Err(e) => row("ifb", false, unavailable("ifb", &e)),
    });
    out.push(match qdisc::tstamp_writable() {
        Ok(()) if crate::net::has_ingress_delay() => row(
            "skb-tstamp",
            true,
            "tc programs can set departure times, on ingress too (through an ifb)",
        ),
        Ok(()) => row(
            "skb-tstamp",
            true,
            "tc programs can set departure times on egress; ingress delay needs Linux 6.4 (bpf_redirect into an ifb)",
        ),
        Err(e) => row("skb-tstamp", false, e),
    });
    out.push(if Path::new("/sys/kernel/btf/vmlinux").exists() {
        row("btf", true, "/sys/kernel/btf/vmlinux present")
    } else {
        row(
            "btf",
            false,
            "/sys/kernel/btf/vmlinux missing (CONFIG_DEBUG_INFO_BTF is not set)",
        )
    });
    out
}

/// The detail of a "no" for a qdisc or device kind: the config option
/// when the kernel does not know the kind, else why we could not tell.
fn unavailable(kind: &str, e: &qdisc::Unavailable) -> String {
    let option = qdisc::config_option(kind);
    if e.is_missing() {
        format!("{option} is missing: {e}")
    } else {
        format!("unknown whether the kernel has {option}: {e}")
    }
}

pub fn print(json: bool) -> Result<ExitCode> {
    let rows = rows();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("rows serialise")
        );
    } else {
        for r in &rows {
            println!(
                "{:<16} {:<4} {}",
                r.feature,
                if r.supported { "yes" } else { "no" },
                r.detail
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
