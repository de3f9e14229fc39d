//! Which packets a rule selects: CIDRs, port ranges, cgroups, and the guard
//! that wins over every rule.

mod common;

use std::process::Stdio;

use anyhow::{Context, Result};
use chaos_tests::{
    AddrKind, CgroupGuard, Direction, NetnsPair, Side, TcpOptions, UdpRun, require_root,
    tcp_transfer, udp_run, udp_run_with, udp_sink,
};
use common::{Blast, fault_counters, traffic_bin};

const PPS: u32 = 20_000;

/// Sends `count` datagrams a->b and returns how many arrived.
fn arrived(pair: &NetnsPair, kind: AddrKind, port: u16, count: u32) -> Result<u64> {
    let (sent, got) = udp_run(pair, Direction::AtoB, kind, port, count, PPS)?;
    assert_eq!(sent.sent, u64::from(count));
    Ok(got.distinct)
}

fn a_egress<'a>(pair: &'a NetnsPair, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "net",
        "--netns",
        pair.ns_a(),
        "--iface",
        pair.if_a(),
        "--duration",
        "60s",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn cidr_selects_the_target_subnet_only() {
    require_root!();
    let pair = NetnsPair::new("cidr").unwrap();
    // Egress, by destination: 198.18.1.0/24 dropped, 198.18.0.0/24 not.
    let agent = Blast::start(&a_egress(
        &pair,
        &["--dst", AddrKind::V4Alt.subnet(), "--loss", "100"],
    ))
    .unwrap();
    assert_eq!(
        arrived(&pair, AddrKind::V4Alt, 7000, 2_000).unwrap(),
        0,
        "target subnet not dropped"
    );
    assert_eq!(
        arrived(&pair, AddrKind::V4, 7000, 2_000).unwrap(),
        2_000,
        "other subnet touched"
    );
    assert_eq!(
        arrived(&pair, AddrKind::V6, 7000, 2_000).unwrap(),
        2_000,
        "IPv6 touched by an IPv4 rule"
    );
    let (status, ev) = agent.stop().unwrap();
    assert!(status.success());
    assert_eq!(fault_counters(&ev).1, 2_000);

    // Ingress on b, by source, IPv6 and IPv4 in one rule.
    let agent = Blast::start(&[
        "net",
        "--netns",
        pair.ns_b(),
        "--iface",
        pair.if_b(),
        "--direction",
        "ingress",
        "--src",
        AddrKind::V6.subnet(),
        "--src",
        AddrKind::V4Alt.subnet(),
        "--loss",
        "100",
        "--duration",
        "60s",
    ])
    .unwrap();
    assert_eq!(
        arrived(&pair, AddrKind::V6, 7000, 2_000).unwrap(),
        0,
        "IPv6 source not dropped"
    );
    assert_eq!(
        arrived(&pair, AddrKind::V4Alt, 7000, 2_000).unwrap(),
        0,
        "IPv4 alt source not dropped"
    );
    assert_eq!(
        arrived(&pair, AddrKind::V4, 7000, 2_000).unwrap(),
        2_000,
        "untargeted source touched"
    );
    assert!(agent.stop().unwrap().0.success());
}

#[test]
fn port_ranges_select_inclusively() {
    require_root!();
    let pair = NetnsPair::new("ports").unwrap();
    let agent = Blast::start(&a_egress(
        &pair,
        &[
            "--proto",
            "udp",
            "--dport",
            "7100-7105",
            "--dport",
            "7200",
            "--loss",
            "100",
        ],
    ))
    .unwrap();
    for port in [7100, 7103, 7105, 7200] {
        assert_eq!(
            arrived(&pair, AddrKind::V4, port, 500).unwrap(),
            0,
            "port {port} is in the range"
        );
    }
    for port in [7099, 7106, 7199, 7201] {
        assert_eq!(
            arrived(&pair, AddrKind::V4, port, 500).unwrap(),
            500,
            "port {port} is outside the range"
        );
    }
    // TCP to a port in the range: the rule is UDP only.
    let t = tcp_transfer(
        &pair,
        Direction::AtoB,
        AddrKind::V4,
        7100,
        &TcpOptions::default(),
    )
    .unwrap();
    assert!(t.send.completed, "TCP through a UDP rule: {:?}", t.send);
    assert!(agent.stop().unwrap().0.success());

    // Source ports.
    let agent = Blast::start(&a_egress(
        &pair,
        &["--proto", "udp", "--sport", "40000-40010", "--loss", "100"],
    ))
    .unwrap();
    for (sport, expect) in [(40_005u16, 0u64), (40_011, 300)] {
        let mut run = UdpRun::new(Direction::AtoB, AddrKind::V6, 7000, 300, PPS);
        run.src_port = sport;
        let (_, got) = udp_run_with(&pair, &run).unwrap();
        assert_eq!(got.distinct, expect, "source port {sport}");
    }
    assert!(agent.stop().unwrap().0.success());
}

/// Runs `chaos-traffic udp-send` in namespace a, optionally inside a cgroup
/// (cgroup membership is per process), to b's sink; returns what arrived.
fn send_from_process(pair: &NetnsPair, cgroup: Option<&CgroupGuard>, count: u32) -> Result<u64> {
    let to = pair.sockaddr(Side::B, AddrKind::V4, 7300);
    let sink = pair.run_in_b(|| {
        udp_sink(
            to,
            None,
            std::time::Duration::from_secs(10),
            std::time::Duration::from_secs(10),
        )
    })??;
    let mut cmd = pair.command(Side::A, traffic_bin());
    cmd.args([
        "udp-send",
        "--to",
        &to.to_string(),
        "--count",
        &count.to_string(),
        "--pps",
        "10000",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(cg) = cgroup {
        cg.attach_command(&mut cmd);
    }
    let out = cmd.output().context("running chaos-traffic")?;
    assert!(
        out.status.success(),
        "chaos-traffic: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(sink
        .finish_and_wait(std::time::Duration::from_millis(300))?
        .distinct)
}

#[test]
fn cgroup_selects_the_sending_process() {
    require_root!();
    let pair = NetnsPair::new("cgroup").unwrap();
    let cg = CgroupGuard::new("egress").unwrap();
    let rel = cg.rel_path();
    let agent = Blast::start(&a_egress(&pair, &["--cgroup", &rel, "--loss", "100"])).unwrap();
    assert_eq!(
        send_from_process(&pair, Some(&cg), 1_000).unwrap(),
        0,
        "process in the cgroup not dropped"
    );
    assert_eq!(
        send_from_process(&pair, None, 1_000).unwrap(),
        1_000,
        "process outside the cgroup touched"
    );
    let (status, ev) = agent.stop().unwrap();
    assert!(status.success());
    assert_eq!(fault_counters(&ev).1, 1_000);
}

#[test]
fn guard_passes_ssh_port_under_full_loss() {
    require_root!();
    let pair = NetnsPair::new("guard").unwrap();
    let agent = Blast::start(&a_egress(&pair, &["--loss", "100"])).unwrap();
    assert_eq!(
        arrived(&pair, AddrKind::V4, 22, 1_000).unwrap(),
        1_000,
        "UDP to port 22 was faulted"
    );
    let ssh = tcp_transfer(
        &pair,
        Direction::AtoB,
        AddrKind::V6,
        22,
        &TcpOptions::default(),
    )
    .unwrap();
    assert!(
        ssh.send.completed,
        "TCP to port 22 was faulted: {:?}",
        ssh.send
    );
    assert_eq!(
        arrived(&pair, AddrKind::V4, 7000, 1_000).unwrap(),
        0,
        "the rule does not drop"
    );
    let (status, ev) = agent.stop().unwrap();
    assert!(status.success());
    let (matched, injected, guard) = fault_counters(&ev);
    // The rule takes every protocol, so a fresh link's own IPv6 chatter
    // (MLD reports, neighbour solicitations) may be dropped too.
    assert!(
        injected >= 1_000,
        "injected {injected} < the 1000 datagrams to port 7000"
    );
    assert!(
        guard >= 1_000,
        "guard-passed counter {guard} < the 1000 datagrams to port 22"
    );
    assert_eq!(matched, injected + guard);
}

/// Policy-level guard: extra ports are protected; `disableDefaults` turns
/// the built-in port 22 protection off.
#[test]
fn policy_guard_adds_ports_and_can_disable_defaults() {
    require_root!();
    let pair = NetnsPair::new("pguard").unwrap();
    let dir = tempdir();
    let policy = dir.join("guard.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: chaos-agent/v1\nkind: FaultPolicy\nmetadata:\n  name: guard-test\nspec:\n  duration: 60s\n  guard:\n    ports: [2222]\n    disableDefaults: true\n  faults:\n    - name: drop-all\n      network:\n        interface: {}\n        netns: {}\n        loss: {{ percent: 100 }}\n",
            pair.if_a(),
            pair.ns_a()
        ),
    )
    .unwrap();
    let agent = Blast::start(&["--policy", policy.to_str().unwrap()]).unwrap();
    assert_eq!(
        arrived(&pair, AddrKind::V4, 2222, 500).unwrap(),
        500,
        "guard port 2222 was faulted"
    );
    assert_eq!(
        arrived(&pair, AddrKind::V4, 22, 500).unwrap(),
        0,
        "port 22 protected despite disableDefaults"
    );
    assert!(agent.stop().unwrap().0.success());
    let _ = std::fs::remove_dir_all(dir);
}

/// One policy, several faults: interfaces in two namespaces, both
/// directions, each fault with its own counters.
#[test]
fn many_faults_across_namespaces_and_directions() {
    require_root!();
    let pair = NetnsPair::new("many").unwrap();
    let dir = tempdir();
    let policy = dir.join("many.yaml");
    let fault = |name: &str, ns: &str, iface: &str, direction: &str, port: u16| {
        format!(
            "    - name: {name}\n      network:\n        interface: {iface}\n        netns: {ns}\n        direction: {direction}\n        match: {{ protocol: udp, dstPorts: [{port}] }}\n        loss: {{ percent: 100 }}\n"
        )
    };
    let body = format!(
        "apiVersion: chaos-agent/v1\nkind: FaultPolicy\nmetadata:\n  name: many\nspec:\n  duration: 60s\n  faults:\n{}{}{}",
        fault("a-out", pair.ns_a(), pair.if_a(), "egress", 7401),
        fault("b-in", pair.ns_b(), pair.if_b(), "ingress", 7402),
        fault("a-both", pair.ns_a(), pair.if_a(), "both", 7403),
    );
    std::fs::write(&policy, body).unwrap();
    let agent = Blast::start(&["--policy", policy.to_str().unwrap()]).unwrap();
    for port in [7401, 7402, 7403] {
        assert_eq!(
            arrived(&pair, AddrKind::V4, port, 400).unwrap(),
            0,
            "a->b port {port}"
        );
    }
    // b->a: only the fault on a's ingress (a-both) applies.
    let (_, got) = udp_run(&pair, Direction::BtoA, AddrKind::V4, 7403, 400, PPS).unwrap();
    assert_eq!(got.distinct, 0, "b->a port 7403 (a-both, ingress)");
    let (_, got) = udp_run(&pair, Direction::BtoA, AddrKind::V4, 7401, 400, PPS).unwrap();
    assert_eq!(got.distinct, 400, "b->a port 7401: a-out is egress only");
    assert_eq!(
        arrived(&pair, AddrKind::V4, 7404, 400).unwrap(),
        400,
        "untargeted port"
    );
    let (status, ev) = agent.stop().unwrap();
    assert!(status.success());
    let faults = ev["faults"].as_array().unwrap();
    let injected = |name: &str| {
        faults.iter().find(|f| f["fault"] == name).unwrap()["injected"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(injected("a-out"), 400);
    assert_eq!(injected("b-in"), 400);
    assert_eq!(injected("a-both"), 800);
    let _ = std::fs::remove_dir_all(dir);
}

/// Without `--netns`, the interface is looked up in the agent's own
/// namespace.
#[test]
fn interface_in_the_current_namespace() {
    require_root!();
    let pair = NetnsPair::new("curns").unwrap();
    let agent = Blast::start_in(
        Some(pair.ns_a()),
        &[
            "net",
            "--iface",
            pair.if_a(),
            "--proto",
            "udp",
            "--dport",
            "7500",
            "--loss",
            "100",
            "--duration",
            "60s",
        ],
    )
    .unwrap();
    assert_eq!(arrived(&pair, AddrKind::V6, 7500, 500).unwrap(), 0);
    assert_eq!(arrived(&pair, AddrKind::V6, 7501, 500).unwrap(), 500);
    assert!(agent.stop().unwrap().0.success());
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("chaos-sel-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
