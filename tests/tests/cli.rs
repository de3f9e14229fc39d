//! The command line as a user meets it: bad flags and bad policies exit 2
//! naming what is wrong and leave nothing behind; `validate` accepts every
//! shipped example; `probe` explains itself.

mod common;

use chaos_tests::{NetnsPair, attachments_on, require_root};
use common::{agent_output, none_of_ours_loaded, policies_dir};

/// A policy file in a per-test directory.
fn policy_file(name: &str, body: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("chaos-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

fn valid_policy(pair: &NetnsPair, action: &str) -> String {
    format!(
        "apiVersion: chaos-agent/v1\nkind: FaultPolicy\nmetadata:\n  name: t\nspec:\n  duration: 30s\n  faults:\n    - name: f\n      network:\n        interface: {}\n        netns: {}\n        {action}\n",
        pair.if_a(),
        pair.ns_a()
    )
}

#[test]
fn malformed_input_exits_2_and_applies_nothing() {
    require_root!();
    let pair = NetnsPair::new("bad").unwrap();
    let (ns, iface) = (pair.ns_a(), pair.if_a());
    let argv = |args: &[&str]| -> Vec<String> { args.iter().map(|s| s.to_string()).collect() };
    let net = |extra: &[&str]| -> Vec<String> {
        argv(&[&["blast", "net", "--netns", ns, "--iface", iface], extra].concat())
    };
    // (arguments, a fragment the message must contain)
    let mut cases: Vec<(Vec<String>, &str)> = vec![
        (net(&["--loss", "30"]), "--duration"),
        (net(&["--loss", "150", "--duration", "5s"]), "0 to 100"),
        (net(&["--loss", "abc", "--duration", "5s"]), "percentage"),
        (
            net(&["--loss", "30", "--dport", "70000", "--duration", "5s"]),
            "70000",
        ),
        (
            net(&["--loss", "30", "--dport", "10-5", "--duration", "5s"]),
            "10-5",
        ),
        (
            net(&["--loss", "30", "--dst", "10.0.0.1/8", "--duration", "5s"]),
            "host bits",
        ),
        (
            net(&["--loss", "30", "--dst", "not-a-cidr", "--duration", "5s"]),
            "not-a-cidr",
        ),
        (
            net(&["--loss", "30", "--corrupt", "5", "--duration", "5s"]),
            "cannot be used with",
        ),
        (net(&["--duration", "5s"]), "required"),
        (net(&["--corrupt", "101", "--duration", "5s"]), "0 to 100"),
        (net(&["--duplicate", "x", "--duration", "5s"]), "percentage"),
        (net(&["--delay", "soon", "--duration", "5s"]), "soon"),
        (net(&["--rate", "1000", "--duration", "5s"]), "1mbit"),
        (
            net(&["--jitter", "5ms", "--loss", "1", "--duration", "5s"]),
            "--delay",
        ),
        (
            net(&[
                "--loss",
                "30",
                "--cgroup",
                "/x",
                "--direction",
                "ingress",
                "--duration",
                "5s",
            ]),
            "egress",
        ),
        (
            net(&[
                "--loss",
                "30",
                "--proto",
                "icmp",
                "--dport",
                "80",
                "--duration",
                "5s",
            ]),
            "ICMP",
        ),
        (
            net(&["--loss", "30", "--proto", "sctp", "--duration", "5s"]),
            "sctp",
        ),
        (net(&["--loss", "30", "--duration", "0s"]), "duration"),
        (
            net(&[
                "--loss",
                "30",
                "--unit",
                "a.service",
                "--cgroup",
                "/x",
                "--duration",
                "5s",
            ]),
            "cannot be used with",
        ),
        (
            net(&[
                "--loss",
                "30",
                "--cgroup",
                "/no/such/cgroup-here",
                "--duration",
                "5s",
            ]),
            "no such cgroup",
        ),
        (
            argv(&[
                "blast",
                "net",
                "--netns",
                ns,
                "--iface",
                "nosuchif0",
                "--loss",
                "30",
                "--duration",
                "5s",
            ]),
            "nosuchif0",
        ),
        (
            argv(&[
                "blast",
                "net",
                "--netns",
                "no-such-netns",
                "--iface",
                iface,
                "--loss",
                "30",
                "--duration",
                "5s",
            ]),
            "no-such-netns",
        ),
        (vec!["blast".into(), "syscall".into()], "--syscall"),
    ];
    let files = [
        ("typo.yaml", valid_policy(&pair, "los: { percent: 30 }"), "los"),
        ("pct.yaml", valid_policy(&pair, "loss: { percent: 150 }"), "percent"),
        ("two.yaml", valid_policy(&pair, "loss: { percent: 1 }\n        corrupt: { percent: 1 }"), "exactly one"),
        ("bomb.yaml", "a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n".to_owned(), "bomb.yaml"),
    ];
    for (name, body, fragment) in &files {
        let path = policy_file(name, body);
        cases.push((
            vec![
                "blast".into(),
                "--policy".into(),
                path.display().to_string(),
            ],
            fragment,
        ));
    }
    cases.push((
        vec![
            "blast".into(),
            "--policy".into(),
            "/no/such/policy.yaml".into(),
        ],
        "/no/such/policy.yaml",
    ));
    assert!(cases.len() >= 15);

    for (args, fragment) in &cases {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, stderr) = agent_output(&argv).unwrap();
        assert_eq!(
            code, 2,
            "{argv:?}: expected exit 2, got {code}; stderr:\n{stderr}"
        );
        assert!(
            stderr.contains(fragment),
            "{argv:?}: message does not mention {fragment:?}:\n{stderr}"
        );
        assert!(
            none_of_ours_loaded().unwrap(),
            "{argv:?}: a chaos program is loaded"
        );
        let left = attachments_on(ns, iface).unwrap();
        assert!(left.is_empty(), "{argv:?}: left attached: {left:?}");
    }
}

#[test]
fn validate_reports_file_line_and_field() {
    let bad = policy_file(
        "ports.yaml",
        "apiVersion: chaos-agent/v1\nkind: FaultPolicy\nmetadata:\n  name: t\nspec:\n  duration: 30s\n  faults:\n    - name: f\n      network:\n        interface: eth0\n        match:\n          dstPorts: [80, 70000]\n        loss: { percent: 30 }\n",
    );
    let (code, _, stderr) = agent_output(&["validate", bad.to_str().unwrap()]).unwrap();
    assert_eq!(code, 2);
    let expected = format!("{}:12:", bad.display());
    assert!(stderr.contains(&expected), "no file:line in {stderr}");
    assert!(
        stderr.contains("spec.faults[0].network.match.dstPorts[1]"),
        "no field path in {stderr}"
    );
}

#[test]
fn every_shipped_policy_is_valid() {
    let dir = policies_dir();
    let (code, stdout, stderr) = agent_output(&["validate", dir.to_str().unwrap()]).unwrap();
    assert_eq!(code, 0, "validate {}: {stderr}", dir.display());
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "yaml")
        })
        .count();
    assert!(
        files >= 4,
        "expected the example policies in {}",
        dir.display()
    );
    assert_eq!(
        stdout.lines().filter(|l| l.contains(": ok")).count(),
        files,
        "{stdout}"
    );
}

/// Delay and bandwidth need the fq qdisc. Where the kernel has none (as on
/// the development host), they exit 3 naming `CONFIG_NET_SCH_FQ`, and
/// nothing is applied. Whether fq exists is asked of the kernel here,
/// independently of the agent: `tc qdisc add ... fq` on the test
/// namespace's `lo`. Where fq exists, `delay.rs` tests delay itself.
#[test]
fn delay_and_bandwidth_refuse_cleanly_without_fq() {
    require_root!();
    let pair = NetnsPair::new("nofq").unwrap();
    let (ns, iface) = (pair.ns_a(), pair.if_a());
    let fq = pair
        .exec(
            chaos_tests::Side::A,
            &["tc", "qdisc", "add", "dev", "lo", "root", "fq"],
        )
        .unwrap();
    if fq.status.success() {
        println!(
            "skipped: this kernel has the fq qdisc (CONFIG_NET_SCH_FQ); the refusal needs a kernel without it"
        );
        return;
    }
    let (code, fragment) = (3, "CONFIG_NET_SCH_FQ");
    let net = |extra: &[&str]| -> Vec<String> {
        [&["blast", "net", "--netns", ns, "--iface", iface], extra]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let mut cases = vec![
        net(&["--delay", "100ms", "--duration", "5s"]),
        net(&["--delay", "100ms", "--jitter", "10ms", "--duration", "5s"]),
        net(&["--rate", "1mbit", "--duration", "5s"]),
    ];
    for (name, action) in [
        ("delay.yaml", "delay: { latency: 10ms, jitter: 1ms }"),
        ("rate.yaml", "bandwidth: { rate: 10mbit }"),
    ] {
        let path = policy_file(name, &valid_policy(&pair, action));
        cases.push(vec![
            "blast".into(),
            "--policy".into(),
            path.display().to_string(),
        ]);
    }
    for args in &cases {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (got, _, stderr) = agent_output(&argv).unwrap();
        assert_eq!(got, code, "{argv:?}: stderr:\n{stderr}");
        assert!(
            stderr.contains(fragment),
            "{argv:?}: message does not mention {fragment:?}:\n{stderr}"
        );
        assert!(none_of_ours_loaded().unwrap(), "{argv:?}: program loaded");
        let left = attachments_on(ns, iface).unwrap();
        assert!(left.is_empty(), "{argv:?}: left attached: {left:?}");
    }
}

#[test]
fn probe_names_every_mechanism() {
    require_root!();
    let (code, out, _) = agent_output(&["probe", "--json"]).unwrap();
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().unwrap();
    for feature in [
        "tc-classifier",
        "attach-tcx",
        "attach-netlink",
        "cgroup-match",
        "qdisc-fq",
        "qdisc-netem",
        "ifb",
        "skb-tstamp",
        "btf",
        "syscall-kprobe",
        "syscall-lsm",
        "syscall-cgroup",
    ] {
        let row = rows
            .iter()
            .find(|r| r["feature"] == feature)
            .unwrap_or_else(|| panic!("no {feature} row"));
        assert!(
            !row["detail"].as_str().unwrap().is_empty(),
            "{feature} has no reason"
        );
    }
    let classifier = rows
        .iter()
        .find(|r| r["feature"] == "tc-classifier")
        .unwrap();
    assert_eq!(
        classifier["supported"], true,
        "the classifier must load here: {classifier}"
    );
    // The rows as a user reads them, in the test's output (the VM logs
    // keep them per kernel).
    let (_, text, _) = agent_output(&["probe"]).unwrap();
    println!("{text}");
    let row = |f: &str| rows.iter().find(|r| r["feature"] == f).unwrap().clone();
    // The LSM row tries what a fault does (load and attach), so it agrees
    // with the kernel's own answer to the same question.
    let lsm = row("syscall-lsm");
    assert_eq!(
        lsm["supported"] == true,
        chaos_tests::kernel::bpf_lsm().is_ok(),
        "{lsm}"
    );
    // The qdisc rows agree with what the kernel answers `tc` (the agent
    // asks over netlink, with the options tc would send).
    let pair = chaos_tests::NetnsPair::new("probeq").unwrap();
    for (feature, kind) in [("qdisc-fq", "fq"), ("qdisc-netem", "netem")] {
        let r = row(feature);
        assert_eq!(
            r["supported"] == true,
            chaos_tests::kernel::qdisc_kind(pair.ns_a(), kind).is_ok(),
            "{r}"
        );
    }
    // Without bpf_set_retval the cgroup row says EPERM only.
    let cgroup = row("syscall-cgroup");
    if cgroup["supported"] == true {
        let detail = cgroup["detail"].as_str().unwrap();
        let eperm_only = chaos_tests::kernel::cgroup_errno().is_err();
        assert_eq!(detail.starts_with("EPERM only"), eperm_only, "{cgroup}");
        assert_eq!(detail.starts_with("any errno"), !eperm_only, "{cgroup}");
    }
}
