use std::{net::IpAddr, time::Duration};

use super::{model::*, *};

/// A fully commented policy (the first interface's own example).
const CONTRACT_EXAMPLE: &str = r#"apiVersion: chaos-agent/v1
kind: FaultPolicy
metadata:
  name: checkout-db-latency        # [a-z0-9-]{1,63}; unique among loaded policies
spec:
  duration: 10m                    # required; faults expire in the kernel at start + duration
  startAfter: 30s                  # optional
  abortWhen:                       # optional steady-state guard, run by the agent
    probe: { http: "http://127.0.0.1:8080/health", expectStatus: 200 }   # or { tcp: "127.0.0.1:5432" }
    interval: 1s
    failures: 3                    # consecutive failures that revert the whole policy
  guard:                           # optional; adds to the built-in guard
    ports: [2222]
    cidrs: [192.0.2.0/24]
  faults:
    - name: db-latency             # [a-z0-9-]{1,63}; unique within the policy
      network:
        interface: eth0            # required
        netns: edge-app            # optional: named network namespace (ip netns) holding the interface
        direction: egress          # egress (default) | ingress | both
        match:                     # fields AND together; entries inside a list OR together
          protocol: tcp            # tcp | udp | icmp | any (default any)
          dstPorts: [5432, "6000-6100"]
          srcPorts: []
          dstCidrs: [10.1.0.0/16, "fd00::/8"]
          srcCidrs: []
          unit: db-client.service  # or cgroup: /system.slice/db-client.service (egress only)
        delay: { latency: 100ms, jitter: 20ms }
        # exactly one action per network fault:
        #   loss:      { percent: 30 }
        #   delay:     { latency: 100ms, jitter: 20ms }
        #   corrupt:   { percent: 5 }
        #   duplicate: { percent: 5 }
        #   bandwidth: { rate: 1mbit }
    - name: refuse-connect
      syscall:
        names: [connect]           # as in man 2; several allowed
        errno: ECONNREFUSED        # name or number 1..4095
        percent: 50                # default 100
        target:                    # required, exactly one of: pid | comm | cgroup | unit
          unit: payment.service
        maxInjections: 1000        # optional budget, enforced in the kernel
"#;

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

#[test]
fn the_example_of_the_policy_reference_is_valid() {
    let doc = include_str!("../../../docs/policy.md");
    let (_, rest) = doc.split_once("```yaml\n").expect("a yaml block");
    let (example, _) = rest.split_once("```").expect("its end");
    let p = load_str("docs/policy.md", example).unwrap();
    assert_eq!(p.faults.len(), 2);
    assert!(matches!(p.faults[1].kind, model::FaultKind::Syscall(_)));
}

#[test]
fn contract_example_parses() {
    let p = load_str("policies/checkout.yaml", CONTRACT_EXAMPLE).unwrap();
    let want = Policy {
        name: "checkout-db-latency".into(),
        origin: "policies/checkout.yaml".into(),
        duration: Duration::from_secs(600),
        start_after: Duration::from_secs(30),
        lease: None,
        abort_when: Some(AbortWhen {
            probe: Probe::Http {
                url: "http://127.0.0.1:8080/health".into(),
                expect_status: 200,
            },
            interval: Duration::from_secs(1),
            failures: 3,
        }),
        guard: Guard {
            ports: vec![2222],
            cidrs: vec![cidr("192.0.2.0/24")],
            disable_defaults: false,
        },
        faults: vec![
            Fault {
                name: "db-latency".into(),
                kind: FaultKind::Network(NetworkFault {
                    interface: "eth0".into(),
                    netns: Some("edge-app".into()),
                    direction: Direction::Egress,
                    matcher: Match {
                        protocol: Protocol::Tcp,
                        dst_ports: vec![
                            PortRange {
                                first: 5432,
                                last: 5432,
                            },
                            PortRange {
                                first: 6000,
                                last: 6100,
                            },
                        ],
                        src_ports: vec![],
                        dst_cidrs: vec![cidr("10.1.0.0/16"), cidr("fd00::/8")],
                        src_cidrs: vec![],
                        cgroup: Some(CgroupSelector::Unit("db-client.service".into())),
                    },
                    action: NetworkAction::Delay {
                        latency: Duration::from_millis(100),
                        jitter: Duration::from_millis(20),
                    },
                }),
                mode: Mode::Enforce,
                schedule: None,
            },
            Fault {
                name: "refuse-connect".into(),
                kind: FaultKind::Syscall(SyscallFault {
                    names: vec!["connect".into()],
                    errno: 111,
                    percent: Percent(50.0),
                    target: SyscallTarget::Unit("payment.service".into()),
                    max_injections: Some(1000),
                }),
                mode: Mode::Enforce,
                schedule: None,
            },
        ],
    };
    assert_eq!(p, want);
}

#[test]
fn defaults_and_other_forms() {
    let p = load_str(
        "<test>",
        "apiVersion: chaos-agent/v1
kind: FaultPolicy
metadata: {name: d}
spec:
  duration: 1h 30m
  abortWhen:
    probe: {tcp: \"127.0.0.1:5432\"}
  faults:
    - name: n
      network: {interface: lo, corrupt: {percent: \"0.5%\"}}
    - name: b
      network: {interface: lo, direction: both, match: {protocol: icmp}, bandwidth: {rate: 500kbit}}
    - name: s
      syscall: {names: [openat, read], errno: 5, target: {pid: 4242}}
",
    )
    .unwrap();
    assert_eq!(p.duration, Duration::from_secs(5400));
    assert_eq!(p.start_after, Duration::ZERO);
    assert_eq!(
        p.abort_when,
        Some(AbortWhen {
            probe: Probe::Tcp {
                addr: "127.0.0.1:5432".into()
            },
            interval: Duration::from_secs(1),
            failures: 3
        })
    );
    assert_eq!(p.guard, Guard::default());
    let FaultKind::Network(n) = &p.faults[0].kind else {
        panic!()
    };
    assert_eq!(n.direction, Direction::Egress);
    assert_eq!(n.netns, None);
    assert_eq!(n.matcher.protocol, Protocol::Any);
    assert!(n.matcher.dst_ports.is_empty() && n.matcher.cgroup.is_none());
    assert_eq!(
        n.action,
        NetworkAction::Corrupt {
            percent: Percent(0.5)
        }
    );
    let FaultKind::Network(b) = &p.faults[1].kind else {
        panic!()
    };
    assert_eq!(b.direction, Direction::Both);
    assert_eq!(b.action, NetworkAction::Bandwidth { rate_bps: 500_000 });
    let FaultKind::Syscall(s) = &p.faults[2].kind else {
        panic!()
    };
    assert_eq!(s.percent, Percent(100.0));
    assert_eq!(s.errno, 5);
    assert_eq!(s.target, SyscallTarget::Pid(4242));
    assert_eq!(s.max_injections, None);
    assert_eq!(s.names, ["openat", "read"]);
}

/// A valid policy; each bad case below changes one thing in it.
const BASE: &str = "\
apiVersion: chaos-agent/v1
kind: FaultPolicy
metadata:
  name: test
spec:
  duration: 10m
  faults:
    - name: net
      network:
        interface: eth0
        match:
          protocol: tcp
          dstPorts: [5432, \"6000-6100\"]
        loss: { percent: 30 }
    - name: sys
      syscall:
        names: [connect]
        errno: ECONNREFUSED
        target:
          unit: payment.service
";

fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "BASE has no {from:?}");
    BASE.replacen(from, to, 1)
}

#[track_caller]
fn check(text: &str, line: usize, col: usize, path: &str, fragment: &str) -> PolicyError {
    let e = load_str("bad.yaml", text).expect_err("should be refused");
    let shown = e.to_string();
    assert_eq!(
        (e.line, e.column, e.path.as_deref().unwrap_or("")),
        (Some(line), Some(col), path),
        "{shown}"
    );
    assert!(
        e.message.contains(fragment),
        "{shown}\n  wanted: {fragment}"
    );
    assert!(!shown.contains('\n'), "{shown}");
    assert_eq!(
        shown,
        format!("bad.yaml:{line}:{col}: {path}: {}", e.message)
    );
    e
}

#[test]
fn base_is_valid() {
    load_str("base.yaml", BASE).unwrap();
}

#[test]
fn unknown_field_typo() {
    check(
        &edit("dstPorts:", "dstPort:"),
        13,
        11,
        "spec.faults[0].network.match.dstPort",
        "unknown field `dstPort`",
    );
    let e = load_str("bad.yaml", &edit("dstPorts:", "dstPort:")).unwrap_err();
    assert!(e.message.contains("did you mean `dstPorts`?"), "{e}");
    check(
        &edit("  duration: 10m\n", "  duration: 10m\n  startafter: 1s\n"),
        7,
        3,
        "spec.startafter",
        "did you mean `startAfter`?",
    );
}

#[test]
fn percent_out_of_range() {
    check(
        &edit("percent: 30", "percent: 150"),
        14,
        26,
        "spec.faults[0].network.loss.percent",
        "expected a percentage from 0 to 100",
    );
    check(
        &edit("percent: 30", "percent: lots"),
        14,
        26,
        "spec.faults[0].network.loss.percent",
        "found \"lots\"",
    );
}

#[test]
fn port_out_of_range() {
    let e = check(
        &edit("\"6000-6100\"", "70000"),
        13,
        28,
        "spec.faults[0].network.match.dstPorts[1]",
        "expected a port (1-65535) or a range A-B, found \"70000\"",
    );
    assert_eq!(
        e.to_string(),
        "bad.yaml:13:28: spec.faults[0].network.match.dstPorts[1]: expected a port (1-65535) or a range A-B, found \"70000\""
    );
}

#[test]
fn port_range_reversed() {
    check(
        &edit("\"6000-6100\"", "\"10-5\""),
        13,
        28,
        "spec.faults[0].network.match.dstPorts[1]",
        "port range 10-5 is reversed",
    );
}

#[test]
fn bad_cidr() {
    check(
        &edit(
            "protocol: tcp",
            "protocol: tcp\n          dstCidrs: [10.1.0.0/16, 300.1.0.0/16]",
        ),
        13,
        35,
        "spec.faults[0].network.match.dstCidrs[1]",
        "expected an address or prefix",
    );
}

#[test]
fn cidr_host_bits() {
    check(
        &edit(
            "protocol: tcp",
            "protocol: tcp\n          srcCidrs: [\"10.0.0.1/8\"]",
        ),
        13,
        22,
        "spec.faults[0].network.match.srcCidrs[0]",
        "host bits set; did you mean 10.0.0.0/8?",
    );
}

#[test]
fn two_actions() {
    check(
        &edit(
            "        loss: { percent: 30 }\n",
            "        loss: { percent: 30 }\n        delay: { latency: 100ms }\n",
        ),
        9,
        7,
        "spec.faults[0].network",
        "expected exactly one action (loss, delay, corrupt, duplicate or bandwidth) per network fault, found loss and delay",
    );
}

#[test]
fn delay_beyond_fq_horizon() {
    check(
        &edit(
            "        loss: { percent: 30 }\n",
            "        delay: { latency: 9s, jitter: 2s }\n",
        ),
        14,
        16,
        "spec.faults[0].network.delay",
        "beyond the fq qdisc's horizon of 10s",
    );
}

#[test]
fn no_action() {
    check(
        &edit("        loss: { percent: 30 }\n", ""),
        9,
        7,
        "spec.faults[0].network",
        "found none",
    );
}

#[test]
fn cgroup_on_ingress() {
    let text = edit(
        "interface: eth0\n",
        "interface: eth0\n        direction: ingress\n",
    )
    .replacen(
        "protocol: tcp\n",
        "protocol: tcp\n          cgroup: /system.slice/x.service\n",
        1,
    );
    check(
        &text,
        14,
        11,
        "spec.faults[0].network.match.cgroup",
        "cgroup needs direction egress",
    );
    let text = edit(
        "interface: eth0\n",
        "interface: eth0\n        direction: both\n",
    )
    .replacen(
        "protocol: tcp\n",
        "protocol: tcp\n          unit: x.service\n",
        1,
    );
    check(
        &text,
        14,
        11,
        "spec.faults[0].network.match.unit",
        "found direction both",
    );
}

#[test]
fn unit_and_cgroup() {
    check(
        &edit(
            "protocol: tcp\n",
            "protocol: tcp\n          unit: x.service\n          cgroup: /x\n",
        ),
        11,
        9,
        "spec.faults[0].network.match",
        "expected one of unit or cgroup, found both",
    );
}

#[test]
fn ports_with_icmp() {
    check(
        &edit("protocol: tcp", "protocol: icmp"),
        13,
        11,
        "spec.faults[0].network.match.dstPorts",
        "ports need protocol tcp, udp or any (ICMP has no ports), found icmp",
    );
}

#[test]
fn unknown_syscall_name() {
    let e = check(
        &edit("names: [connect]", "names: [connect, nosuchcall]"),
        17,
        26,
        "spec.faults[1].syscall.names[1]",
        "unknown syscall \"nosuchcall\"; expected a name as in man 2 on ",
    );
    assert!(e.message.ends_with(std::env::consts::ARCH), "{e}");
    check(
        &edit("names: [connect]", "names: [sys_connect]"),
        17,
        17,
        "spec.faults[1].syscall.names[0]",
        "unknown syscall \"sys_connect\" (did you mean connect?); expected a name as in man 2 on",
    );
    check(
        &edit("names: [connect]", "names: [__x64_sys_connect]"),
        17,
        17,
        "spec.faults[1].syscall.names[0]",
        "(did you mean connect?)",
    );
}

#[cfg(target_arch = "x86_64")]
#[test]
fn legacy_syscalls_exist_on_x86_64() {
    load_str(
        "ok.yaml",
        &edit("names: [connect]", "names: [open, fork, rename]"),
    )
    .unwrap();
}

#[test]
fn a_fault_with_too_many_keys() {
    let e = check(
        &edit(
            "dstPorts: [5432, \"6000-6100\"]",
            "dstPorts: [\"1-40000\"]\n          srcPorts: [1-3]",
        ),
        11,
        9,
        "spec.faults[0].network.match",
        "this match expands to 120000 kernel keys (1 protocol x 40000 destination ports x 3 source ports), more than the 65536 one fault may have; use fewer or narrower port ranges and CIDR lists, or split the fault",
    );
    assert_eq!(e.kind, ErrorKind::Invalid);
    // At the limit: 2 protocols (any with ports) x 32768 ports.
    load_str(
        "ok.yaml",
        &edit(
            "protocol: tcp\n          dstPorts: [5432, \"6000-6100\"]",
            "protocol: any\n          dstPorts: [\"1-32768\"]",
        ),
    )
    .unwrap();
    check(
        &edit(
            "protocol: tcp\n          dstPorts: [5432, \"6000-6100\"]",
            "protocol: any\n          dstPorts: [\"1-32768\", 40000]",
        ),
        11,
        9,
        "spec.faults[0].network.match",
        "expands to 65538 kernel keys (2 protocols x 32769 destination ports)",
    );
    // Overlapping ranges count once; CIDR pairs only within a family.
    load_str(
            "ok.yaml",
            &edit(
                "dstPorts: [5432, \"6000-6100\"]",
                "dstPorts: [\"1-30000\", \"1-30000\"]\n          dstCidrs: [10.0.0.0/8, \"fd00::/8\"]\n          srcCidrs: [192.0.2.0/24, \"2001:db8::/32\"]",
            ),
        )
        .unwrap();
}

/// The faults of `BASE` plus `extra` (block-indented fault entries)
/// before the syscall fault.
fn with_faults(extra: &str) -> String {
    edit("    - name: sys\n", &format!("{extra}    - name: sys\n"))
}

#[test]
fn a_policy_with_too_many_keys() {
    // 65535 keys, twice for both directions, two faults: 262140 keys.
    let big = edit(
        "interface: eth0\n        match:\n          protocol: tcp\n          dstPorts: [5432, \"6000-6100\"]",
        "interface: eth0\n        direction: both\n        match:\n          protocol: tcp\n          dstPorts: [\"1-65535\"]",
    );
    let second = "    - name: net2\n      network: {interface: eth1, direction: both, match: {protocol: udp, dstPorts: [\"1-65535\"]}, loss: {percent: 1}}\n";
    let text = big.replacen(
        "    - name: sys\n",
        &format!("{second}    - name: sys\n"),
        1,
    );
    load_str("ok.yaml", &text).unwrap();
    // Five more keys are too many.
    let third = "    - name: net3\n      network: {interface: eth2, match: {protocol: udp, dstPorts: [\"1-5\"]}, loss: {percent: 1}}\n";
    let text = text.replacen("    - name: sys\n", &format!("{third}    - name: sys\n"), 1);
    check(
        &text,
        7,
        3,
        "spec.faults",
        "the faults expand to 262145 kernel keys in all (a fault with direction both counts twice), more than the 262144 one policy may have",
    );
}

fn cidr_faults(iface: &str, direction: &str, prefixes: std::ops::RangeInclusive<u8>) -> String {
    prefixes
            .map(|n| {
                format!(
                    "    - name: {iface}-{direction}-{n}\n      network: {{interface: {iface}, direction: {direction}, match: {{dstCidrs: [10.0.0.0/{n}]}}, loss: {{percent: 1}}}}\n"
                )
            })
            .collect()
}

#[test]
fn too_many_shapes_on_one_hook() {
    // BASE's first fault is one shape on eth0 egress; 7 more fill it.
    load_str(
        "ok.yaml",
        &with_faults(&cidr_faults("eth0", "egress", 8..=14)),
    )
    .unwrap();
    // The 9th shape: faults[8], at its match.
    let e = check(
        &with_faults(&cidr_faults("eth0", "egress", 8..=15)),
        30,
        53,
        "spec.faults[8].network.match",
        "interface eth0, egress, would need 9 lookup shapes with this match (it adds 1), more than the 8 the classifier looks up per interface and direction",
    );
    assert!(e.message.contains("fewer kinds of match"), "{e}");
    // Other hooks have their own shapes: ingress, another interface,
    // the same interface in a namespace.
    let mut many = cidr_faults("eth0", "egress", 8..=14);
    many.push_str(&cidr_faults("eth0", "ingress", 8..=15));
    many.push_str(&cidr_faults("eth1", "egress", 8..=15));
    many.push_str(
            "    - name: in-ns\n      network: {interface: eth0, netns: ns1, match: {dstCidrs: [10.0.0.0/20]}, loss: {percent: 1}}\n",
        );
    load_str("ok.yaml", &with_faults(&many)).unwrap();
    // Direction both counts on ingress and egress.
    let mut both = cidr_faults("eth0", "ingress", 8..=15);
    both.push_str(&cidr_faults("eth0", "both", 16..=16));
    check(
        &with_faults(&both),
        32,
        51,
        "spec.faults[9].network.match",
        "interface eth0, ingress, would need 9 lookup shapes",
    );
    // A fault without a match is a shape too; the position is its network.
    let mut no_match = cidr_faults("eth0", "egress", 8..=14);
    no_match.push_str("    - name: all\n      network: {interface: eth0, loss: {percent: 1}}\n");
    check(
        &with_faults(&no_match),
        30,
        7,
        "spec.faults[8].network.match",
        "interface eth0, egress, would need 9 lookup shapes",
    );
    // One fault can need more than 8 shapes by itself.
    check(
        &edit(
            "dstPorts: [5432, \"6000-6100\"]",
            "dstCidrs: [10.0.0.0/8, 10.0.0.0/9, 10.0.0.0/10, 10.0.0.0/11, 10.0.0.0/12, 10.0.0.0/13, 10.0.0.0/14, 10.0.0.0/15, 10.0.0.0/16]",
        ),
        11,
        9,
        "spec.faults[0].network.match",
        "would need 9 lookup shapes with this match (it adds 9)",
    );
}

#[test]
fn cgroup_levels_are_shapes() {
    // Paths of one depth share a shape; each unit counts on its own.
    let faults: String = (0..10)
            .map(|i| format!("    - name: c{i}\n      network: {{interface: eth0, match: {{cgroup: /a/c{i}}}, loss: {{percent: 1}}}}\n"))
            .collect();
    load_str("ok.yaml", &with_faults(&faults)).unwrap();
    let faults: String = (0..8)
            .map(|i| format!("    - name: u{i}\n      network: {{interface: eth0, match: {{unit: u{i}.service}}, loss: {{percent: 1}}}}\n"))
            .collect();
    check(
        &with_faults(&faults),
        30,
        34,
        "spec.faults[8].network.match",
        "would need 9 lookup shapes",
    );
}

#[test]
fn cidrs_without_a_common_family() {
    let e = check(
        &edit(
            "protocol: tcp\n",
            "protocol: tcp\n          dstCidrs: [10.0.0.0/8, 192.0.2.0/24]\n          srcCidrs: [\"fd00::/8\"]\n",
        ),
        14,
        11,
        "spec.faults[0].network.match.srcCidrs",
        "the destination prefixes are all IPv4 and the source prefixes all IPv6, so this fault matches nothing; use prefixes of one address family on both sides, or split the fault",
    );
    assert_eq!(e.kind, ErrorKind::Invalid);
    check(
        &edit(
            "protocol: tcp\n",
            "protocol: tcp\n          dstCidrs: [\"fd00::/8\"]\n          srcCidrs: [10.0.0.0/8]\n",
        ),
        14,
        11,
        "spec.faults[0].network.match.srcCidrs",
        "the destination prefixes are all IPv6 and the source prefixes all IPv4",
    );
    // One family in common is enough; one side alone is never refused.
    load_str(
            "ok.yaml",
            &edit(
                "protocol: tcp\n",
                "protocol: tcp\n          dstCidrs: [10.0.0.0/8, \"fd00::/8\"]\n          srcCidrs: [\"2001:db8::/32\"]\n",
            ),
        )
        .unwrap();
    load_str(
        "ok.yaml",
        &edit(
            "protocol: tcp\n",
            "protocol: tcp\n          srcCidrs: [\"2001:db8::/32\", 10.0.0.0/8]\n",
        ),
    )
    .unwrap();
}

#[test]
fn duplicate_fault_name() {
    check(
        &edit("- name: sys", "- name: net"),
        15,
        13,
        "spec.faults[1].name",
        "duplicate fault name \"net\"",
    );
}

#[test]
fn bad_names() {
    check(
        &edit("name: test", "name: Test"),
        4,
        9,
        "metadata.name",
        "expected a name of 1-63 characters from a-z, 0-9 and -, found \"Test\"",
    );
    check(
        &edit("- name: sys", "- name: my_sys"),
        15,
        13,
        "spec.faults[1].name",
        "found \"my_sys\"",
    );
}

#[test]
fn missing_duration() {
    check(
        &edit("  duration: 10m\n", ""),
        5,
        1,
        "spec.duration",
        "missing required field `duration`; expected a duration",
    );
}

#[test]
fn duration_without_unit() {
    check(
        &edit("duration: 10m", "duration: \"10\""),
        6,
        13,
        "spec.duration",
        "expected a duration such as 250ms, 30s, 5m or 1h, found \"10\" (a unit is required)",
    );
    check(
        &edit("duration: 10m", "duration: 10"),
        6,
        13,
        "spec.duration",
        "a unit is required",
    );
    check(
        &edit("duration: 10m", "duration: 0s"),
        6,
        13,
        "spec.duration",
        "greater than zero",
    );
}

#[test]
fn wrong_api_version() {
    check(
        &edit("chaos-agent/v1", "chaos-agent/v2"),
        1,
        13,
        "apiVersion",
        "expected \"chaos-agent/v1\", found \"chaos-agent/v2\"",
    );
}

#[test]
fn wrong_kind() {
    check(
        &edit("kind: FaultPolicy", "kind: Policy"),
        2,
        7,
        "kind",
        "expected \"FaultPolicy\", found \"Policy\"",
    );
}

#[test]
fn errno_out_of_range() {
    check(
        &edit("errno: ECONNREFUSED", "errno: 5000"),
        18,
        16,
        "spec.faults[1].syscall.errno",
        "errno 5000 is out of range",
    );
}

#[test]
fn unknown_errno_name() {
    check(
        &edit("errno: ECONNREFUSED", "errno: ECONNREFUSD"),
        18,
        16,
        "spec.faults[1].syscall.errno",
        "unknown errno \"ECONNREFUSD\" (did you mean ECONNREFUSED?)",
    );
}

#[test]
fn missing_target() {
    check(
        &edit("        target:\n          unit: payment.service\n", ""),
        16,
        7,
        "spec.faults[1].syscall.target",
        "missing required field `target`",
    );
}

#[test]
fn two_targets() {
    check(
        &edit(
            "unit: payment.service",
            "unit: payment.service\n          pid: 42",
        ),
        19,
        9,
        "spec.faults[1].syscall.target",
        "expected exactly one target (pid, comm, cgroup or unit), found pid and unit",
    );
    check(
        &edit("          unit: payment.service\n", ""),
        19,
        9,
        "spec.faults[1].syscall.target",
        "found none",
    );
}

#[test]
fn network_and_syscall_in_one_fault() {
    check(
        &edit(
            "    - name: sys\n",
            "    - name: sys\n      network: {interface: lo, loss: {percent: 1}}\n",
        ),
        15,
        7,
        "spec.faults[1]",
        "expected exactly one of network or syscall in a fault, found both",
    );
    check(
        &edit(
            "    - name: sys\n      syscall:\n",
            "    - name: sys\n      xsyscall:\n",
        ),
        16,
        7,
        "spec.faults[1].xsyscall",
        "unknown field",
    );
}

#[test]
fn alias_bomb() {
    // Nine levels of nine: 9^9 (387 million) nodes once expanded.
    let mut bomb = String::from(
        "apiVersion: chaos-agent/v1\nkind: FaultPolicy\nmetadata: {name: x}\nspec:\n  duration: 1m\n  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..9 {
        let p = i - 1;
        bomb.push_str(&format!(
            "  a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    bomb.push_str("  faults: *a8\n");
    let start = std::time::Instant::now();
    let e = load_str("bad.yaml", &bomb).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!((e.line, e.column), (Some(12), Some(17)), "{e}");
    assert_eq!(e.path.as_deref(), Some("spec.a6"), "{e}");
    assert!(e.message.contains("alias/anchor bomb"), "{e}");
}

/// serde_norway's own limit, which backs up ours: expanding a bomb into
/// an untyped value fails fast instead of eating the memory.
#[test]
fn serde_norway_repetition_limit() {
    let mut bomb = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..9 {
        let p = i - 1;
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let start = std::time::Instant::now();
    let e = serde_norway::from_str::<serde_norway::Value>(&bomb).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert!(e.to_string().contains("repetition limit exceeded"), "{e}");
}

#[test]
fn deep_nesting() {
    let deep = format!(
        "apiVersion: chaos-agent/v1\nkind: FaultPolicy\nmetadata: {{name: x}}\nspec:\n  duration: 1m\n  faults: {}{}\n",
        "[".repeat(70),
        "]".repeat(70)
    );
    let e = load_str("bad.yaml", &deep).unwrap_err();
    assert_eq!((e.line, e.column), (Some(6), Some(73)), "{e}");
    assert!(e.message.contains("nesting deeper than 64 levels"), "{e}");
    assert!(
        e.path
            .as_deref()
            .unwrap()
            .starts_with("spec.faults[0][0][0]"),
        "{e}"
    );
}

#[test]
fn deep_flow_nesting_stops_in_the_scanner() {
    let deep = format!("spec: {}1", "{a: ".repeat(100_000));
    let e = load_str("bad.yaml", &deep).unwrap_err();
    assert_eq!(e.line, Some(1), "{e}");
    assert!(e.message.contains("nesting deeper than 64 levels"), "{e}");
}

#[test]
fn too_large() {
    let mut big = BASE.to_string();
    big.push_str(&format!("# {}\n", "x".repeat(2 * 1024 * 1024)));
    let e = load_str("big.yaml", &big).unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge);
    assert_eq!((e.line, e.column, e.path.as_deref()), (None, None, None));
    assert!(
        e.message.contains("limited to 1048576 bytes (1 MiB)"),
        "{e}"
    );
    assert!(
        e.to_string().starts_with("big.yaml: file is too large"),
        "{e}"
    );

    let dir = scratch_dir("too_large");
    let file = dir.join("big.yaml");
    fs::write(&file, &big).unwrap();
    let e = load_file(&file).unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge);
    assert_eq!(e.file, file.display().to_string());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn more_bad_inputs() {
    // Syntax error: the position is libyaml-like, no path.
    let e = load_str(
        "bad.yaml",
        &edit("    - name: sys\n", "    - name: sys\n   oops\n"),
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Syntax, "{e}");
    assert_eq!(e.path, None);
    assert!(
        e.line.is_some() && e.message.starts_with("invalid YAML"),
        "{e}"
    );
    // Duplicate key: points at the second one.
    check(
        &edit("  duration: 10m\n", "  duration: 10m\n  duration: 5m\n"),
        7,
        3,
        "spec.duration",
        "duplicate field `duration`",
    );
    // Wrong type.
    check(
        &edit("names: [connect]", "names: connect"),
        17,
        16,
        "spec.faults[1].syscall.names",
        "expected a list",
    );
    check(
        &edit("names: [connect]", "names: []"),
        17,
        16,
        "spec.faults[1].syscall.names",
        "expected at least 1 entry",
    );
    check(
        &edit("names: [connect]", "names: [Connect]"),
        17,
        17,
        "spec.faults[1].syscall.names[0]",
        "expected a syscall name",
    );
    check(
        &edit("unit: payment.service", "pid: 1"),
        20,
        16,
        "spec.faults[1].syscall.target.pid",
        "PID 1 is never targeted",
    );
    check(
            &edit("    - name: sys\n", "    - name: sys\n      network: {interface: lo, bandwidth: {rate: 0kbit}}\n")
                .replacen("      syscall:\n        names: [connect]\n        errno: ECONNREFUSED\n        target:\n          unit: payment.service\n", "", 1),
            16,
            50,
            "spec.faults[1].network.bandwidth.rate",
            "greater than zero",
        );
    check(
        &edit("  faults:\n", "  guard: {ports: [0]}\n  faults:\n"),
        7,
        19,
        "spec.guard.ports[0]",
        "expected a port (1-65535), found \"0\"",
    );
    check(
        &edit(
            "  faults:\n",
            "  abortWhen: {probe: {http: \"http://x/\", tcp: \"x:1\"}}\n  faults:\n",
        ),
        7,
        15,
        "spec.abortWhen.probe",
        "found both",
    );
    check(
        &edit("  faults:\n", "  faults: []\n").replacen(
            "    - name: net",
            "  xfaults:\n    - name: net",
            1,
        ),
        7,
        11,
        "spec.faults",
        "expected at least 1 entry",
    );
    check(
        &edit("interface: eth0", "interface: eth0/x"),
        10,
        20,
        "spec.faults[0].network.interface",
        "expected a network interface name",
    );
    // Everything about the file itself.
    let e = load_str("empty.yaml", "# nothing\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "empty.yaml: the file is empty; expected a FaultPolicy document (apiVersion: chaos-agent/v1)"
    );
    let e = load_str("two.yaml", &format!("{BASE}---\n{BASE}")).unwrap_err();
    assert_eq!((e.line, e.column), (Some(22), Some(1)), "{e}");
    assert!(e.message.contains("one YAML document per file"), "{e}");
    let e = load_str("list.yaml", "- a\n- b\n").unwrap_err();
    assert!(e.message.contains("expected a FaultPolicy mapping"), "{e}");
    assert_eq!((e.line, e.path.as_deref()), (Some(1), None), "{e}");
}

#[test]
fn errors_behind_aliases_still_have_a_position() {
    let text = edit(
        "  faults:\n",
        "  x-net: &net {interface: eth0, loss: {percent: 300}}\n  faults:\n",
    );
    // `x-net` is an unknown field: reported first.
    check(&text, 7, 3, "spec.x-net", "unknown field");
    let text = edit(
        "      network:\n        interface: eth0\n        match:\n          protocol: tcp\n          dstPorts: [5432, \"6000-6100\"]\n        loss: { percent: 30 }\n",
        "      network: &n {interface: eth0, loss: {percent: 30}}\n    - name: other\n      network: *n\n",
    );
    load_str("ok.yaml", &text).unwrap();
    let text = text.replace("percent: 30}", "percent: 300}");
    let e = load_str("bad.yaml", &text).unwrap_err();
    assert_eq!(
        e.path.as_deref(),
        Some("spec.faults[0].network.loss.percent"),
        "{e}"
    );
    assert_eq!((e.line, e.column), (Some(9), Some(53)), "{e}");
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("chaos-agent-policy-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn load_paths_expands_directories() {
    let dir = scratch_dir("load_paths");
    fs::write(dir.join("b.yaml"), BASE).unwrap();
    fs::write(dir.join("a.yml"), BASE).unwrap();
    fs::write(dir.join("c.yaml"), "apiVersion: nope\n").unwrap();
    fs::write(dir.join("notes.txt"), "not a policy").unwrap();
    fs::write(dir.join(".hidden.yaml"), "junk").unwrap();
    fs::create_dir(dir.join("sub.yaml")).unwrap();
    fs::write(
        dir.join("bad-utf8.yaml"),
        b"apiVersion: chaos-agent/v1\nkind: \xff\n",
    )
    .unwrap();
    let missing = dir.join("missing.yaml");
    let got = load_paths(&[dir.clone(), missing.clone(), dir.join("b.yaml")]);
    let names: Vec<_> = got
        .iter()
        .map(|(p, r)| {
            (
                p.strip_prefix(&dir).unwrap().display().to_string(),
                r.is_ok(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("a.yml".to_string(), true),
            ("b.yaml".to_string(), true),
            ("bad-utf8.yaml".to_string(), false),
            ("c.yaml".to_string(), false),
            ("missing.yaml".to_string(), false),
            ("b.yaml".to_string(), true),
        ]
    );
    let e = got[2].1.as_ref().unwrap_err();
    assert_eq!(
        (e.kind, e.line, e.column),
        (ErrorKind::Syntax, Some(2), Some(7)),
        "{e}"
    );
    let e = got[4].1.as_ref().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Io);
    assert_eq!(e.file, missing.display().to_string());
    assert!(e.to_string().contains("No such file"), "{e}");
    assert_eq!(
        got[0].1.as_ref().unwrap().origin,
        dir.join("a.yml").display().to_string()
    );
    let _ = fs::remove_dir_all(&dir);
}

/// Every example in the repository's policies/ directory loads.
#[test]
fn example_policies_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let got = load_paths(&[dir]);
    assert!(got.len() >= 4, "{got:?}");
    for (path, r) in &got {
        if let Err(e) = r {
            panic!("{}: {e}", path.display());
        }
    }
    let demo = got
        .iter()
        .find(|(p, _)| p.ends_with("demo.yaml"))
        .and_then(|(_, r)| r.as_ref().ok())
        .expect("demo.yaml");
    assert_eq!(demo.duration, Duration::from_secs(60));
    let FaultKind::Network(n) = &demo.faults[0].kind else {
        panic!("demo is a network fault")
    };
    assert_eq!(n.interface, "veth-demo-a");
    assert_eq!(n.netns.as_deref(), Some("chaos-demo-a"));
    assert_eq!(n.direction, Direction::Egress);
    assert_eq!(n.matcher.protocol, Protocol::Udp);
    assert_eq!(
        n.matcher.dst_ports,
        [PortRange {
            first: 7000,
            last: 7000
        }]
    );
    assert_eq!(
        n.action,
        NetworkAction::Loss {
            percent: Percent(30.0),
            burst: None
        }
    );
    let partition = got
        .iter()
        .find(|(p, _)| p.ends_with("partition-cidr.yaml"))
        .and_then(|(_, r)| r.as_ref().ok())
        .expect("partition-cidr.yaml");
    let net: IpAddr = "10.20.0.0".parse().unwrap();
    assert!(partition.faults.iter().all(|f| matches!(&f.kind,
            FaultKind::Network(n) if n.action == NetworkAction::Loss { percent: Percent(100.0), burst: None }
                && (n.matcher.dst_cidrs.iter().chain(&n.matcher.src_cidrs)).all(|c| c.addr == net))));
}
