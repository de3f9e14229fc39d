//! One engine for every fault, as a user sees it: the daemon runs syscall
//! faults next to network faults (one classifier per hook however many
//! policies share it), a blast runs a policy that mixes both, `validate`
//! refuses what `blast --policy` would, and what `validate` accepts, the
//! agent applies (or refuses with exit 3 naming a kernel feature `probe`
//! says is missing).

mod common;

use std::{net::SocketAddrV4, time::Duration};

use chaos_tests::{
    AddrKind, CgroupGuard, Direction, NetnsPair, Side, attachments_on,
    policygen::{Ctx, Expect, Generator, Kinds},
    require_root,
    syscaller::{Acceptor, Call, Outcome, Placement, run_calls, tcp_connects},
    udp_run,
};
use common::{
    Blast, agent_output,
    daemon::{Daemon, TempDir, sample},
    eventually,
};
use serde_json::Value;

const ECONNREFUSED: i32 = 111;
const ENOENT: i32 = 2;

/// A listener in namespace b, accepting until dropped.
fn listener(pair: &NetnsPair, port: u16) -> Acceptor {
    Acceptor::start(pair, Side::B, port).unwrap()
}

/// `count` TCP connects from namespace a to `to`, inside `cgroup` or not.
fn connects(
    pair: &NetnsPair,
    cgroup: Option<&CgroupGuard>,
    to: SocketAddrV4,
    count: u32,
) -> Outcome {
    tcp_connects(pair, cgroup.map(|c| c.path()), to, count).unwrap()
}

fn header(name: &str) -> String {
    format!(
        "apiVersion: chaos-agent/v1\nkind: FaultPolicy\nmetadata:\n  name: {name}\nspec:\n  duration: 5m\n  faults:\n"
    )
}

/// A fault dropping every UDP datagram to `port` leaving interface a.
fn udp_loss_fault(name: &str, pair: &NetnsPair, port: u16) -> String {
    format!(
        "    - name: {name}\n      network:\n        interface: {}\n        netns: {}\n        direction: egress\n        match: {{ protocol: udp, dstPorts: [{port}] }}\n        loss: {{ percent: 100 }}\n",
        pair.if_a(),
        pair.ns_a()
    )
}

fn connect_fault(name: &str, cg: &CgroupGuard) -> String {
    format!(
        "    - name: {name}\n      syscall:\n        names: [connect]\n        errno: ECONNREFUSED\n        target: {{ cgroup: {} }}\n",
        cg.rel_path()
    )
}

fn faults_of(status: &Value) -> Vec<Value> {
    status["policies"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["faults"].as_array().unwrap().clone())
        .collect()
}

/// Five network policies on one veth and `syscall` (a policy file's
/// text): every network fault drops its port, status shows every fault
/// active, one egress classifier serves them all, SIGTERM reverts all.
/// Returns the daemon after those checks, for the syscall-specific ones.
fn daemon_with_five_network_policies(
    tag: &str,
    pair: &NetnsPair,
    syscall: (&str, String),
) -> Daemon {
    let mut files: Vec<(String, String)> = (0..5u16)
        .map(|i| {
            let name = format!("net{i}");
            let text = header(&name) + &udp_loss_fault("drop", pair, 7000 + i);
            (format!("{name}.yaml"), text)
        })
        .collect();
    files.push((syscall.0.to_owned(), syscall.1));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let d = Daemon::start(tag, &refs).unwrap();
    let st = d.status();
    let faults = faults_of(&st);
    assert_eq!(faults.len(), 6, "{st}");
    for f in &faults {
        assert_eq!(f["state"], "active", "every fault in force: {st}");
    }
    for i in 0..5u16 {
        let (sent, got) =
            udp_run(pair, Direction::AtoB, AddrKind::V4, 7000 + i, 100, 1_000).unwrap();
        assert!(sent.sent > 0);
        assert_eq!(got.distinct, 0, "port {} still gets datagrams", 7000 + i);
    }
    let (sent, got) = udp_run(pair, Direction::AtoB, AddrKind::V4, 7010, 100, 1_000).unwrap();
    assert_eq!(
        got.distinct, sent.sent,
        "a port no policy names lost datagrams"
    );
    let attached = attachments_on(pair.ns_a(), pair.if_a()).unwrap();
    assert_eq!(
        attached.len(),
        1,
        "five policies on one hook share one classifier: {attached:?}"
    );
    assert!(attached[0].contains("egress"), "{attached:?}");
    d
}

/// SIGTERM: exit 0, nothing attached, traffic flows.
fn sigterm_reverts_all(mut d: Daemon, pair: &NetnsPair) {
    d.signal(libc::SIGTERM);
    let status = d.wait(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}: {}", d.log());
    assert!(attachments_on(pair.ns_a(), pair.if_a()).unwrap().is_empty());
    let (sent, got) = udp_run(pair, Direction::AtoB, AddrKind::V4, 7000, 100, 1_000).unwrap();
    assert_eq!(got.distinct, sent.sent, "traffic after SIGTERM");
}

#[test]
fn daemon_runs_a_syscall_policy_next_to_five_network_policies() {
    require_root!();
    if let Err(why) = chaos_tests::kernel::cgroup_errno() {
        println!("skipped: the cgroup socket hooks do not run here: {why}");
        return;
    }
    let pair = NetnsPair::new("enmix").unwrap();
    let cg = CgroupGuard::new("enmix").unwrap();
    let l = listener(&pair, 47201);
    let refuse = header("refuse") + &connect_fault("refuse-connect", &cg);
    let d = daemon_with_five_network_policies("mix", &pair, ("refuse.yaml", refuse));
    let inside = connects(&pair, Some(&cg), l.addr, 200);
    assert_eq!(
        inside.failed_with(ECONNREFUSED),
        200,
        "connect() in the cgroup: {inside:?}"
    );
    let outside = connects(&pair, None, l.addr, 200);
    assert_eq!(
        outside.failed(),
        0,
        "connect() outside the cgroup: {outside:?}"
    );
    let st = d.status();
    let refuse = faults_of(&st)
        .into_iter()
        .find(|f| f["fault"] == "refuse-connect")
        .unwrap();
    // The most precise backend this kernel runs (the BPF LSM where it is
    // active, else the cgroup hooks).
    assert!(
        ["cgroup", "lsm", "kprobe"].contains(&refuse["backend"].as_str().unwrap_or_default()),
        "{refuse}"
    );
    assert_eq!(refuse["injected"], 200, "{refuse}");
    // Metrics are refreshed once a second.
    let labels = [("policy", "refuse"), ("fault", "refuse-connect")];
    let counted = eventually(5, || {
        sample(&d.scrape(), "chaos_agent_syscalls_injected_total", &labels) == Some(200.0)
    });
    assert!(counted, "{}", d.scrape());
    assert_eq!(
        sample(&d.scrape(), "chaos_agent_syscalls_matched_total", &labels),
        Some(200.0)
    );
    sigterm_reverts_all(d, &pair);
    assert_eq!(connects(&pair, Some(&cg), l.addr, 20).failed(), 0);
}

#[test]
fn daemon_runs_an_lsm_syscall_policy_next_to_five_network_policies() {
    require_root!();
    if let Err(why) = chaos_tests::kernel::bpf_lsm() {
        println!("skipped: BPF LSM programs do not run here: {why}");
        return;
    }
    let pair = NetnsPair::new("enlsm").unwrap();
    let file = std::env::temp_dir().join(format!("chaos-engine-lsm-{}", std::process::id()));
    std::fs::write(&file, b"hello").unwrap();
    let deny = header("deny")
        + "    - name: deny-open\n      syscall:\n        names: [openat]\n        errno: ENOENT\n        target: { comm: chaos-eng-tgt }\n";
    let d = daemon_with_five_network_policies("lsm", &pair, ("deny.yaml", deny));
    let call = Call::OpenRead(file.clone());
    let limit = Duration::from_secs(30);
    let target = Placement {
        comm: Some("chaos-eng-tgt"),
        ..Placement::default()
    };
    let other = Placement {
        comm: Some("chaos-eng-other"),
        ..Placement::default()
    };
    let hit = run_calls(&target, &call, 100, limit).unwrap();
    assert_eq!(hit.failed_with(ENOENT), 100, "the target's openat: {hit:?}");
    let missed = run_calls(&other, &call, 100, limit).unwrap();
    assert_eq!(missed.failed(), 0, "another process's openat: {missed:?}");
    let st = d.status();
    let deny = faults_of(&st)
        .into_iter()
        .find(|f| f["fault"] == "deny-open")
        .unwrap();
    // The LSM, or kprobe override where the kernel has it (fi-6.12).
    assert!(
        ["lsm", "kprobe"].contains(&deny["backend"].as_str().unwrap_or_default()),
        "{deny}"
    );
    let labels = [("policy", "deny"), ("fault", "deny-open")];
    assert!(
        eventually(5, || {
            sample(&d.scrape(), "chaos_agent_syscalls_injected_total", &labels) == Some(100.0)
        }),
        "{}",
        d.scrape()
    );
    sigterm_reverts_all(d, &pair);
    assert_eq!(run_calls(&target, &call, 20, limit).unwrap().failed(), 0);
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_blast_policy_with_a_network_and_a_syscall_fault_applies_both() {
    require_root!();
    if let Err(why) = chaos_tests::kernel::cgroup_errno() {
        println!("skipped: the cgroup socket hooks do not run here: {why}");
        return;
    }
    let pair = NetnsPair::new("enblast").unwrap();
    let cg = CgroupGuard::new("enblast").unwrap();
    let l = listener(&pair, 47202);
    let dir = TempDir::new("mixed-blast");
    let file = dir.0.join("mixed.yaml");
    let text = header("mixed").replace("duration: 5m", "duration: 60s")
        + &udp_loss_fault("drop", &pair, 7000)
        + &connect_fault("refuse", &cg);
    std::fs::write(&file, text).unwrap();
    let blast = Blast::start(&["--policy", file.to_str().unwrap()]).unwrap();
    let mode = blast.mode();
    let net = mode.contains("tcx") || mode.contains("netlink");
    let sys = ["cgroup", "lsm", "kprobe"].iter().any(|b| mode.contains(b));
    assert!(net && sys, "{mode}");
    let (_, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, 7000, 100, 1_000).unwrap();
    assert_eq!(got.distinct, 0, "the network fault is not in force");
    let inside = connects(&pair, Some(&cg), l.addr, 50);
    assert_eq!(inside.failed_with(ECONNREFUSED), 50, "{inside:?}");
    let (status, reverted) = blast.stop().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(reverted["reason"], "signal", "{reverted}");
    let faults = reverted["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 2, "{reverted}");
    assert_eq!(faults[1]["injected"], 50, "{reverted}");
    assert!(attachments_on(pair.ns_a(), pair.if_a()).unwrap().is_empty());
    assert_eq!(connects(&pair, Some(&cg), l.addr, 20).failed(), 0);
}

/// Policy texts `validate` must refuse, each with the position it names.
fn refused_cases(pair: &NetnsPair) -> Vec<(&'static str, String, &'static str)> {
    let net = |m: &str| {
        header("limits")
            + &format!(
                "    - name: f\n      network:\n        interface: {}\n        netns: {}\n        match: {m}\n        loss: {{ percent: 10 }}\n",
                pair.if_a(),
                pair.ns_a()
            )
    };
    let sys = |names: &str| {
        header("names")
            + &format!(
                "    - name: f\n      syscall:\n        names: {names}\n        errno: EIO\n        target: {{ comm: x }}\n"
            )
    };
    let mut shapes = header("shapes");
    for i in 0..9 {
        shapes += &format!(
            "    - name: f{i}\n      network:\n        interface: {}\n        netns: {}\n        match: {{ dstCidrs: [10.0.0.0/{}] }}\n        loss: {{ percent: 10 }}\n",
            pair.if_a(),
            pair.ns_a(),
            8 + i
        );
    }
    vec![
        ("unknown syscall", sys("[nosuchcall]"), "unknown syscall"),
        ("sys_ prefix", sys("[sys_connect]"), "did you mean connect"),
        (
            "key limit",
            net(r#"{ dstPorts: ["1-65535"], dstCidrs: [10.0.0.0/8, 10.1.0.0/16] }"#),
            "kernel keys",
        ),
        ("shape limit", shapes, "shapes"),
        (
            "address families",
            net("{ dstCidrs: [10.0.0.0/8], srcCidrs: [\"fd00::/8\"] }"),
            "matches nothing",
        ),
    ]
}

#[test]
fn validate_refuses_with_file_and_line_what_blast_would_refuse() {
    require_root!();
    let pair = NetnsPair::new("envalid").unwrap();
    let dir = TempDir::new("refused");
    for (what, text, fragment) in refused_cases(&pair) {
        let file = dir.0.join(format!("{}.yaml", what.replace(' ', "-")));
        std::fs::write(&file, &text).unwrap();
        let path = file.to_str().unwrap();
        let (code, _, err) = agent_output(&["validate", path]).unwrap();
        assert_eq!(code, 2, "{what}: {err}");
        let line = err.lines().next().unwrap_or_default();
        assert!(line.starts_with(&format!("{path}:")), "{what}: {line}");
        let position: Vec<&str> = line[path.len() + 1..].splitn(3, ':').collect();
        assert!(
            position.len() == 3
                && position[0].parse::<u32>().is_ok()
                && position[1].parse::<u32>().is_ok(),
            "{what}: no line:column in {line}"
        );
        assert!(line.contains(fragment), "{what}: {line}");
        // The blast refuses it the same way, before touching anything.
        let (code, _, berr) = agent_output(&["blast", "--policy", path]).unwrap();
        assert_eq!(code, 2, "{what}: {berr}");
        assert!(
            berr.contains(line),
            "{what}: blast said {berr}, validate said {line}"
        );
        assert!(attachments_on(pair.ns_a(), pair.if_a()).unwrap().is_empty());
    }
}

/// Whether an exit 3 is one `probe` agrees with: the message names a
/// feature whose probe row says no.
fn unsupported_as_probed(stderr: &str, rows: &[(String, bool)]) -> bool {
    let missing = |feature: &str| rows.iter().any(|(f, ok)| f == feature && !ok);
    let named: &[(&str, &str)] = &[
        ("CONFIG_NET_SCH_FQ", "qdisc-fq"),
        ("CONFIG_IFB", "ifb"),
        ("kprobe override", "syscall-kprobe"),
        ("the BPF LSM", "syscall-lsm"),
        ("cgroup socket hooks", "syscall-cgroup"),
    ];
    stderr.contains("not supported on this host")
        && (named
            .iter()
            .any(|(text, feature)| stderr.contains(text) && missing(feature))
            || (stderr.contains("Linux 6.4") && !chaos_tests::kernel_at_least(6, 4)))
}

fn probe_rows() -> Vec<(String, bool)> {
    let (code, out, err) = agent_output(&["probe", "--json"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["feature"].as_str().unwrap().to_owned(),
                r["supported"] == true,
            )
        })
        .collect()
}

#[test]
fn what_validate_accepts_blast_and_run_apply() {
    require_root!();
    let pair = NetnsPair::new("engen").unwrap();
    let cg = CgroupGuard::new("engen").unwrap();
    let rows = probe_rows();
    let emulated = std::env::var_os("CHAOS_TEST_EMULATED").is_some();
    let (blasts, daemon_runs) = if emulated { (12, 12) } else { (30, 30) };
    let dir = TempDir::new("generated");
    let mut generator = Generator::new(0x005e_ed10);
    let mut ctx = Ctx::new(Some(pair.ns_a()), pair.if_a());
    ctx.cgroups = vec![cg.rel_path()];
    ctx.start_after = false;
    let mut valid = |kinds: Kinds, duration: &str, n: usize| {
        ctx.kinds = kinds;
        ctx.duration = Some(duration.to_owned());
        let mut out = Vec::new();
        while out.len() < n {
            let g = generator.policy(&ctx);
            if g.expect == Expect::Valid {
                out.push(g);
            }
        }
        out
    };
    let mut applied = 0;
    let mut refused = 0;
    let mut generated = valid(Kinds::Network, "1s", blasts / 2);
    generated.extend(valid(Kinds::Mixed, "1s", blasts - blasts / 2));
    for (i, g) in generated.into_iter().enumerate() {
        let file = dir.0.join(format!("blast{i}.yaml"));
        std::fs::write(&file, &g.text).unwrap();
        let path = file.to_str().unwrap();
        let (code, _, err) = agent_output(&["validate", path]).unwrap();
        assert_eq!(code, 0, "{} ({}): {err}\n{}", g.name, g.scenario, g.text);
        let (code, _, err) = agent_output(&["blast", "--policy", path]).unwrap();
        match code {
            0 => applied += 1,
            3 if unsupported_as_probed(&err, &rows) => refused += 1,
            _ => panic!(
                "validate accepted {} ({}) but blast exited {code}: {err}\n{}",
                g.name, g.scenario, g.text
            ),
        }
        assert!(
            attachments_on(pair.ns_a(), pair.if_a()).unwrap().is_empty(),
            "{}",
            g.text
        );
    }
    eprintln!("blast --policy: {applied} applied, {refused} refused for a missing kernel feature");
    assert!(applied > 0, "no generated policy could be applied here");
    // The daemon: each policy alone in the directory, in turn.
    let d = Daemon::start("generated", &[]).unwrap();
    let (mut active, mut unsupported) = (0, 0);
    for g in valid(Kinds::Mixed, "5m", daemon_runs) {
        d.write_policy("p.yaml", &g.text);
        let mut st = Value::Null;
        let settled = eventually(20, || {
            st = d.status();
            st["policies"].as_array().is_some_and(|p| {
                p.len() == 1 && p[0]["name"] == g.name && p[0]["state"] != "pending"
            })
        });
        assert!(settled, "{} never settled: {st}", g.name);
        for f in faults_of(&st) {
            match f["state"].as_str().unwrap() {
                "active" => active += 1,
                "unsupported"
                    if unsupported_as_probed(f["problem"].as_str().unwrap_or_default(), &rows) =>
                {
                    unsupported += 1
                }
                s => panic!(
                    "validate accepted {} ({}), the daemon says {s}: {f}\n{}",
                    g.name, g.scenario, g.text
                ),
            }
        }
    }
    eprintln!(
        "run: {active} faults active, {unsupported} unsupported for a missing kernel feature"
    );
    assert!(active > 0);
}
