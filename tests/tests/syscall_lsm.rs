//! The BPF LSM backend of syscall faults, as the target experiences it:
//! openat fails with ENOENT for one comm only; write fails with EIO or
//! ENOSPC for one pid only; the file and other processes are untouched.
//! Needs a kernel where BPF LSM programs load (the VM matrix); elsewhere
//! the tests skip with the probe's reason. Also: the kprobe backend (and a
//! kprobe-only request) where kprobe override is missing.

mod common;

use std::time::Duration;

use chaos_tests::kernel;
use chaos_tests::{
    require_root,
    syscaller::{Call, Placement, run_calls, spawn_calls},
};
use common::{Blast, agent_output};

macro_rules! require_lsm {
    () => {
        if let Err(why) = kernel::bpf_lsm() {
            println!("skipped: BPF LSM programs do not run here: {why}");
            return;
        }
    };
}

fn temp_file(tag: &str, body: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("chaos-lsm-{tag}-{}", std::process::id()));
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn syscall_lsm_openat_fails_for_one_comm_only() {
    require_root!();
    require_lsm!();
    let file = temp_file("open", b"hello");
    let blast = Blast::start(&[
        "syscall",
        "--syscall",
        "openat",
        "--errno",
        "ENOENT",
        "--comm",
        "chaos-lsm-tgt",
        "--backend",
        "lsm",
        "--duration",
        "60s",
    ])
    .unwrap();
    assert_eq!(blast.mode(), "lsm");
    let call = Call::OpenRead(file.clone());
    let limit = Duration::from_secs(30);
    let target = Placement {
        comm: Some("chaos-lsm-tgt"),
        ..Placement::default()
    };
    let other = Placement {
        comm: Some("chaos-lsm-other"),
        ..Placement::default()
    };
    let hit = run_calls(&target, &call, 20, limit).unwrap();
    let spared = run_calls(&other, &call, 20, limit).unwrap();
    let (status, reverted) = blast.stop().unwrap();
    assert!(status.success());
    assert_eq!(hit.failed_with(libc::ENOENT), 20, "{hit:?}");
    assert_eq!(spared.ok, 20, "{spared:?}");
    // The file is untouched, and opens again once reverted.
    assert_eq!(std::fs::read(&file).unwrap(), b"hello");
    assert_eq!(run_calls(&target, &call, 5, limit).unwrap().ok, 5);
    let f = &reverted["faults"][0];
    assert_eq!(
        (f["matched"].as_u64(), f["injected"].as_u64()),
        (Some(20), Some(20)),
        "{reverted}"
    );
    assert_eq!(f["backend"], "lsm");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn syscall_lsm_write_fails_for_one_pid_only() {
    require_root!();
    require_lsm!();
    for (name, errno) in [("EIO", libc::EIO), ("ENOSPC", libc::ENOSPC)] {
        let file = temp_file("write", b"");
        let call = Call::Write(file.clone());
        let limit = Duration::from_secs(30);
        let target = spawn_calls(&Placement::default(), &call, 20, limit).unwrap();
        let pid = target.pid.to_string();
        let blast = Blast::start(&[
            "syscall",
            "--syscall",
            "write",
            "--errno",
            name,
            "--pid",
            &pid,
            "--backend",
            "lsm",
            "--duration",
            "60s",
        ])
        .unwrap();
        let hit = target.go().unwrap();
        let spared = run_calls(&Placement::default(), &call, 20, limit).unwrap();
        let (status, reverted) = blast.stop().unwrap();
        assert!(status.success());
        assert_eq!(hit.failed_with(errno), 20, "{name}: {hit:?}");
        assert_eq!(spared.ok, 20, "{name}: {spared:?}");
        // Only the other process's 20 writes of 16 bytes reached the file.
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 20 * 16, "{name}");
        let f = &reverted["faults"][0];
        assert_eq!(f["injected"].as_u64(), Some(20), "{reverted}");
        let _ = std::fs::remove_file(&file);
    }
}

/// Where kprobe override exists: getpid (no LSM or cgroup hook has it) and
/// openat fail for one comm only, from the syscall's entry.
#[test]
fn syscall_kprobe_fails_getpid_and_openat_for_one_comm_only() {
    require_root!();
    if let Err(why) = kernel::kprobe_override() {
        println!("skipped: kprobe override is not available here: {why}");
        return;
    }
    let file = temp_file("kprobe", b"k");
    let blast = Blast::start(&[
        "syscall",
        "--syscall",
        "getpid,openat",
        "--errno",
        "EPERM",
        "--comm",
        "chaos-kp-tgt",
        "--backend",
        "kprobe",
        "--duration",
        "60s",
    ])
    .unwrap();
    assert_eq!(blast.mode(), "kprobe");
    let limit = Duration::from_secs(30);
    let target = Placement {
        comm: Some("chaos-kp-tgt"),
        ..Placement::default()
    };
    let other = Placement {
        comm: Some("chaos-kp-other"),
        ..Placement::default()
    };
    for call in [Call::Getpid, Call::OpenRead(file.clone())] {
        let hit = run_calls(&target, &call, 20, limit).unwrap();
        let spared = run_calls(&other, &call, 20, limit).unwrap();
        assert_eq!(hit.failed_with(libc::EPERM), 20, "{call:?}: {hit:?}");
        assert_eq!(spared.ok, 20, "{call:?}: {spared:?}");
    }
    let (status, reverted) = blast.stop().unwrap();
    assert!(status.success());
    assert_eq!(
        reverted["faults"][0]["injected"].as_u64(),
        Some(40),
        "{reverted}"
    );
    let _ = std::fs::remove_file(&file);
}

/// Where kprobe override is missing, a request only it can serve exits 3
/// naming the kernel option, and nothing is applied.
#[test]
fn syscall_kprobe_only_request_names_the_config() {
    require_root!();
    if kernel::kprobe_override().is_ok() {
        println!(
            "skipped: this kernel has kprobe override (CONFIG_BPF_KPROBE_OVERRIDE=y); the refusal for a missing one cannot be seen here"
        );
        return;
    }
    let (code, _, err) = agent_output(&[
        "blast",
        "syscall",
        "--syscall",
        "getpid",
        "--errno",
        "EPERM",
        "--comm",
        "nobody-x",
        "--duration",
        "5s",
    ])
    .unwrap();
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("getpid needs kprobe override") && err.contains("CONFIG_BPF_KPROBE_OVERRIDE"),
        "{err}"
    );
}

/// Where the kernel cannot run BPF LSM programs (bpf not in `lsm=`, no BPF
/// trampolines for the architecture, a platform that refuses them), an
/// LSM fault exits 3 naming the BPF LSM and what the kernel said, nothing
/// stays loaded, and probe's row says no: the probe and the fault agree.
#[test]
fn syscall_lsm_unavailable_exits_3_and_probe_agrees() {
    require_root!();
    if kernel::bpf_lsm().is_ok() {
        println!(
            "skipped: BPF LSM programs run on this kernel; the refusal for a kernel without them cannot be seen here"
        );
        return;
    }
    let (code, _, err) = agent_output(&[
        "blast",
        "syscall",
        "--syscall",
        "openat",
        "--errno",
        "EACCES",
        "--backend",
        "lsm",
        "--comm",
        "nobody-x",
        "--duration",
        "5s",
    ])
    .unwrap();
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("openat needs the BPF LSM: "), "{err}");
    assert!(
        common::none_of_ours_loaded().unwrap(),
        "a program stayed loaded"
    );
    let lsm = common::probe_row("syscall-lsm");
    assert_eq!(lsm["supported"], false, "{lsm}");
}
