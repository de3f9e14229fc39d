//! Syscall error faults as the target process experiences them: a real TCP
//! client in a test cgroup gets the configured errno from connect() to a
//! real listener in a test namespace, while the same client outside the
//! cgroup connects; percent, budget, SIGKILL and the in-kernel deadline.
//! Hostile input exits 2 and a request no backend here can serve exits 3,
//! with nothing applied. The tests of percent, budget, SIGKILL and the
//! deadline fail calls with EPERM, which the cgroup hooks can return on
//! every kernel (other errnos need `bpf_set_retval`, Linux 5.18).

mod common;

use std::{net::SocketAddrV4, time::Duration};

use chaos_tests::{
    CgroupGuard, NetnsPair, Side, loaded_prog_names, monotonic_ns, require_root,
    syscaller::{Acceptor, Outcome, tcp_connects},
};
use common::{Blast, agent_output, assert_share};

/// A listener in namespace b, accepting until dropped.
struct Listener;

impl Listener {
    fn start(pair: &NetnsPair, port: u16) -> Acceptor {
        Acceptor::start(pair, Side::B, port).unwrap()
    }
}

/// `count` TCP connects from namespace a to the listener, from inside
/// `cgroup` or from outside it.
fn connects(
    pair: &NetnsPair,
    cgroup: Option<&CgroupGuard>,
    to: SocketAddrV4,
    count: u32,
) -> Outcome {
    tcp_connects(pair, cgroup.map(|c| c.path()), to, count).unwrap()
}

/// A connect fault on the cgroup backend (on kernels where BPF LSM
/// programs load, `auto` would pick the LSM; the LSM tests cover that).
fn connect_blast(cg: &CgroupGuard, extra: &[&str]) -> Blast {
    let rel = cg.rel_path();
    let args = [
        &[
            "syscall",
            "--syscall",
            "connect",
            "--cgroup",
            &rel,
            "--backend",
            "cgroup",
        ][..],
        extra,
    ]
    .concat();
    Blast::start(&args).unwrap()
}

fn row(event: &serde_json::Value) -> (u64, u64, String) {
    let f = &event["faults"][0];
    (
        f["matched"].as_u64().unwrap_or(0),
        f["injected"].as_u64().unwrap_or(0),
        f["backend"].as_str().unwrap_or_default().to_owned(),
    )
}

fn none_of_ours_loaded() -> bool {
    !loaded_prog_names()
        .unwrap()
        .iter()
        .any(|n| n.starts_with("chaos_cg_"))
}

#[test]
fn syscall_connect_gets_the_errno_in_the_cgroup_only() {
    require_root!();
    if let Err(why) = chaos_tests::kernel::cgroup_errno() {
        println!("skipped: {why}");
        return;
    }
    let pair = NetnsPair::new("sysc").unwrap();
    let cg = CgroupGuard::new("sysc").unwrap();
    let l = Listener::start(&pair, 47101);
    // The listener works before the fault.
    assert_eq!(connects(&pair, Some(&cg), l.addr, 20).ok, 20);
    // A name, another name, and a number without a name.
    for (errno_arg, errno) in [
        ("ECONNREFUSED", libc::ECONNREFUSED),
        ("ETIMEDOUT", libc::ETIMEDOUT),
        ("200", 200),
    ] {
        let blast = connect_blast(&cg, &["--errno", errno_arg, "--duration", "30s"]);
        assert_eq!(blast.mode(), "cgroup");
        let inside = connects(&pair, Some(&cg), l.addr, 50);
        let outside = connects(&pair, None, l.addr, 50);
        let (status, reverted) = blast.stop().unwrap();
        assert!(status.success(), "{status}");
        assert_eq!(inside.failed_with(errno), 50, "{errno_arg}: {inside:?}");
        assert_eq!(
            outside.ok, 50,
            "{errno_arg}: outside the cgroup: {outside:?}"
        );
        let (matched, injected, backend) = row(&reverted);
        assert_eq!((matched, injected), (50, 50), "{reverted}");
        assert_eq!(backend, "cgroup");
        assert_eq!(reverted["faults"][0]["errno"], errno);
    }
    // Reverted: the client in the cgroup connects again.
    assert_eq!(connects(&pair, Some(&cg), l.addr, 20).ok, 20);
    assert!(none_of_ours_loaded());
}

#[test]
fn syscall_percent_50_is_within_4_sigma() {
    require_root!();
    let pair = NetnsPair::new("sysp").unwrap();
    let cg = CgroupGuard::new("sysp").unwrap();
    let l = Listener::start(&pair, 47102);
    let blast = connect_blast(
        &cg,
        &["--errno", "EPERM", "--percent", "50", "--duration", "120s"],
    );
    let n = 10_000;
    let out = connects(&pair, Some(&cg), l.addr, n);
    let (status, reverted) = blast.stop().unwrap();
    assert!(status.success(), "agent exit: {status}");
    let failed = out.failed_with(libc::EPERM);
    assert_eq!(out.total(), u64::from(n));
    assert_eq!(out.failed(), failed, "only the injected errno: {out:?}");
    assert_share("percent 50: connects failed", u64::from(n), 0.5, failed);
    // The kernel's counters are exactly what the client saw.
    let (matched, injected, _) = row(&reverted);
    assert_eq!((matched, injected), (u64::from(n), failed));
}

#[test]
fn syscall_max_injections_stops_at_the_budget() {
    require_root!();
    let pair = NetnsPair::new("sysb").unwrap();
    let cg = CgroupGuard::new("sysb").unwrap();
    let l = Listener::start(&pair, 47103);
    let blast = connect_blast(
        &cg,
        &[
            "--errno",
            "EPERM",
            "--max-injections",
            "100",
            "--duration",
            "60s",
        ],
    );
    let out = connects(&pair, Some(&cg), l.addr, 1_000);
    let (status, reverted) = blast.stop().unwrap();
    assert!(status.success(), "agent exit: {status}");
    // One client: calls are sequential, so the budget is exact.
    assert_eq!(out.failed_with(libc::EPERM), 100, "{out:?}");
    assert_eq!(out.ok, 900);
    let (matched, injected, _) = row(&reverted);
    assert_eq!((matched, injected), (1_000, 100));
}

#[test]
fn syscall_sigkill_of_the_agent_removes_the_fault_at_once() {
    require_root!();
    let pair = NetnsPair::new("sysk").unwrap();
    let cg = CgroupGuard::new("sysk").unwrap();
    let l = Listener::start(&pair, 47104);
    let mut blast = connect_blast(&cg, &["--errno", "EPERM", "--duration", "120s"]);
    assert_eq!(connects(&pair, Some(&cg), l.addr, 10).failed(), 10);
    blast.signal(libc::SIGKILL);
    let status = blast.wait(Duration::from_secs(5)).unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "{status}"
    );
    // The links went with the agent's file descriptors.
    assert_eq!(connects(&pair, Some(&cg), l.addr, 10).ok, 10);
    assert!(none_of_ours_loaded());
}

#[test]
fn syscall_deadline_holds_with_the_agent_stopped() {
    require_root!();
    let pair = NetnsPair::new("sysd").unwrap();
    let cg = CgroupGuard::new("sysd").unwrap();
    let l = Listener::start(&pair, 47105);
    let mut blast = connect_blast(&cg, &["--errno", "EPERM", "--duration", "3s"]);
    let deadline = blast.deadline_ns();
    blast.signal(libc::SIGSTOP);
    assert_eq!(connects(&pair, Some(&cg), l.addr, 10).failed(), 10);
    while monotonic_ns() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Past the deadline, the agent still stopped: nothing fails.
    let after = connects(&pair, Some(&cg), l.addr, 10);
    blast.signal(libc::SIGCONT);
    assert_eq!(after.ok, 10, "{after:?}");
    let status = blast.wait(Duration::from_secs(10)).unwrap();
    assert!(status.success());
}

/// EPERM through the cgroup hooks on every kernel: with `bpf_set_retval`
/// (5.18+), or before it by the hook's plain rejection, which the kernel
/// reports as EPERM.
#[test]
fn syscall_eperm_connect_fault_works_on_every_kernel() {
    require_root!();
    let pair = NetnsPair::new("syse").unwrap();
    let cg = CgroupGuard::new("syse").unwrap();
    let l = Listener::start(&pair, 47106);
    let blast = connect_blast(&cg, &["--errno", "EPERM", "--duration", "30s"]);
    assert_eq!(blast.mode(), "cgroup");
    let inside = connects(&pair, Some(&cg), l.addr, 50);
    let outside = connects(&pair, None, l.addr, 50);
    let (status, reverted) = blast.stop().unwrap();
    assert!(status.success(), "{status}");
    println!(
        "EPERM connect on Linux {}: {} of 50 failed inside the cgroup, {} of 50 connected outside",
        chaos_tests::kernel_release(),
        inside.failed_with(libc::EPERM),
        outside.ok
    );
    assert_eq!(inside.failed_with(libc::EPERM), 50, "{inside:?}");
    assert_eq!(outside.ok, 50, "outside the cgroup: {outside:?}");
    let (matched, injected, backend) = row(&reverted);
    assert_eq!(
        (matched, injected, backend.as_str()),
        (50, 50, "cgroup"),
        "{reverted}"
    );
    assert_eq!(connects(&pair, Some(&cg), l.addr, 20).ok, 20);
    assert!(none_of_ours_loaded());
}

/// Without `bpf_set_retval` another errno than EPERM is refused with exit
/// 3, naming what is missing and what would serve, and nothing applied.
#[test]
fn syscall_other_errnos_exit_3_without_bpf_set_retval() {
    require_root!();
    if chaos_tests::kernel::cgroup_errno().is_ok() {
        println!(
            "skipped: Linux {} has bpf_set_retval, so the cgroup hooks serve every errno",
            chaos_tests::kernel_release()
        );
        return;
    }
    let cg = CgroupGuard::new("sysr").unwrap();
    let rel = cg.rel_path();
    let (code, _, stderr) = agent_output(&[
        "blast",
        "syscall",
        "--syscall",
        "connect",
        "--errno",
        "ECONNREFUSED",
        "--cgroup",
        &rel,
        "--duration",
        "5s",
    ])
    .unwrap();
    println!(
        "ECONNREFUSED on Linux {}: exit {code}: {}",
        chaos_tests::kernel_release(),
        stderr.trim()
    );
    assert_eq!(code, 3, "{stderr}");
    for fragment in ["bpf_set_retval, Linux 5.18", "--errno EPERM", "lsm="] {
        assert!(stderr.contains(fragment), "{stderr:?} lacks {fragment:?}");
    }
    assert!(none_of_ours_loaded());
}

#[test]
fn syscall_hostile_input_exits_2_and_unservable_exits_3() {
    require_root!();
    let cg = CgroupGuard::new("sysh").unwrap();
    let rel = cg.rel_path();
    let base = |syscall: &str, errno: &str, target: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["blast", "syscall", "--syscall", syscall, "--errno", errno]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(target.iter().map(|s| s.to_string()));
        v.extend(["--duration".to_string(), "5s".to_string()]);
        v
    };
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            base("conect", "ECONNREFUSED", &["--cgroup", &rel]),
            2,
            "did you mean connect",
        ),
        (
            base("connect", "5000", &["--cgroup", &rel]),
            2,
            "out of range",
        ),
        (base("connect", "0", &["--cgroup", &rel]), 2, "out of range"),
        (
            base("connect", "ENOPE", &["--cgroup", &rel]),
            2,
            "unknown errno",
        ),
        (base("connect", "ECONNREFUSED", &[]), 2, "--pid"),
        (
            base(
                "connect",
                "ECONNREFUSED",
                &["--cgroup", "/chaos-test-no-such-cgroup"],
            ),
            2,
            "no such cgroup",
        ),
        (
            base(
                "connect",
                "ECONNREFUSED",
                &["--unit", "chaos-no-such.service"],
            ),
            2,
            "chaos-no-such.service",
        ),
        (
            base("connect", "ECONNREFUSED", &["--pid", "4194303"]),
            2,
            "no such process",
        ),
        (base("connect", "ECONNREFUSED", &["--pid", "1"]), 2, "PID 1"),
    ];
    for (args, code, fragment) in cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (got, _, stderr) = agent_output(&refs).unwrap();
        assert_eq!(got, code, "{args:?}: {stderr}");
        assert!(
            stderr.contains(fragment),
            "{args:?}: {stderr:?} lacks {fragment:?}"
        );
    }
    // getpid has no LSM or cgroup hook: only kprobe override can fail it,
    // so where the kernel has it (fi-6.12) the request is servable.
    if chaos_tests::kernel::kprobe_override().is_ok() {
        println!(
            "skipped: the unservable case (this kernel has kprobe override, so getpid is servable)"
        );
    } else {
        let args = base("getpid", "EPERM", &["--cgroup", &rel]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (got, _, stderr) = agent_output(&refs).unwrap();
        assert_eq!(got, 3, "{stderr}");
        assert!(stderr.contains("getpid needs kprobe override"), "{stderr}");
    }
    assert!(none_of_ours_loaded());
}
