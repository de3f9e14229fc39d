//! What an active syscall fault costs processes it does not hit: socket()
//! calls per second from a non-target process, without a fault and with
//! one, per backend. Prints the figures (the README quotes them); asserts
//! only that the non-target's calls all succeed and keep a sane rate.

mod common;

use std::time::{Duration, Instant};

use chaos_tests::{
    CgroupGuard, require_root,
    syscaller::{Call, Placement, spawn_calls},
};
use common::Blast;

const CALLS: u32 = 50_000;

/// socket() calls per second from `place`; all must succeed.
fn rate(place: &Placement<'_>) -> f64 {
    let pending = spawn_calls(place, &Call::UdpSocket, CALLS, Duration::from_secs(120)).unwrap();
    let t = Instant::now();
    let out = pending.go().unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(out.ok, u64::from(CALLS), "{out:?}");
    f64::from(CALLS) / secs
}

/// Best of two, to damp the noise of a shared machine.
fn best_rate(place: &Placement<'_>) -> f64 {
    (0..2).map(|_| rate(place)).fold(0.0, f64::max)
}

fn report(backend: &str, what: &str, without: f64, with: f64) {
    println!(
        "figure: syscall cost, {backend} backend, {what}: {without:.0} socket()/s without a fault, {with:.0} with ({:+.1} %)",
        100.0 * (with - without) / without
    );
}

#[test]
fn syscall_cost_of_the_cgroup_backend() {
    require_root!();
    let target = CgroupGuard::new("costt").unwrap();
    let other = CgroupGuard::new("costo").unwrap();
    let outside = Placement {
        cgroup: Some(other.path()),
        ..Placement::default()
    };
    let inside = Placement {
        cgroup: Some(target.path()),
        ..Placement::default()
    };
    let without = best_rate(&outside);
    let without_inside = best_rate(&inside);
    let rel = target.rel_path();
    // percent 0: the hook runs for the target's calls but never fails one,
    // so the target's rate shows the program's own cost.
    let blast = Blast::start(&[
        "syscall",
        "--syscall",
        "socket",
        "--errno",
        "EPERM",
        "--percent",
        "0",
        "--cgroup",
        &rel,
        "--duration",
        "120s",
    ])
    .unwrap();
    let with = best_rate(&outside);
    let with_inside = best_rate(&inside);
    let (status, _) = blast.stop().unwrap();
    assert!(status.success(), "agent exit: {status}");
    report("cgroup", "process outside the target cgroup", without, with);
    report(
        "cgroup",
        "target process, percent 0 (hook runs, never fails)",
        without_inside,
        with_inside,
    );
    assert!(with > without * 0.2, "{with} vs {without}");
}

/// A backend every task passes through (LSM, kprobe): the non-target is
/// told apart by comm. Skips, naming the reason, where the kernel lacks
/// the backend (`available`, asked of the kernel, not of the agent).
fn cost_of_a_per_task_backend(backend: &str, available: Result<(), String>, floor: f64) {
    if let Err(why) = available {
        println!("skipped: the {backend} backend does not run here: {why}");
        return;
    }
    let place = Placement {
        comm: Some("chaos-cost-other"),
        ..Placement::default()
    };
    let without = best_rate(&place);
    let blast = Blast::start(&[
        "syscall",
        "--syscall",
        "socket",
        "--errno",
        "EPERM",
        "--comm",
        "chaos-cost-tgt",
        "--backend",
        backend,
        "--duration",
        "120s",
    ])
    .unwrap();
    let with = best_rate(&place);
    let (status, _) = blast.stop().unwrap();
    assert!(status.success(), "agent exit: {status}");
    report(backend, "process with another comm", without, with);
    assert!(with > without * floor, "{with} vs {without}");
}

#[test]
fn syscall_cost_of_the_lsm_backend() {
    require_root!();
    cost_of_a_per_task_backend("lsm", chaos_tests::kernel::bpf_lsm(), 0.3);
}

#[test]
fn syscall_cost_of_the_kprobe_backend() {
    require_root!();
    cost_of_a_per_task_backend("kprobe", chaos_tests::kernel::kprobe_override(), 0.3);
}
