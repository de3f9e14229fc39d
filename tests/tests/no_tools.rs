//! The agent needs no `tc`, no `ip`, no program at all at run time: with
//! an empty PATH a delay blast adds its latency, a `--attach netlink` loss
//! blast drops, and both leave the interface's qdiscs (`tc -d qdisc show`,
//! run by the test) and filters as they found them; `probe` gives the same
//! rows as with the tools at hand. Under `strace -f -e trace=execve` (when
//! strace is installed) the agent's own exec is the only one.
//!
//! The delay test needs the fq qdisc and prints `skipped: ...
//! CONFIG_NET_SCH_FQ...` without it (the development host); the VM matrix
//! runs it (`./x vm-test --kernel debian-6.12 --filter no_tools`).

mod common;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use chaos_tests::{
    AddrKind, Direction, NetnsPair, RttOptions, Side, qdisc_kind_available, qdisc_show, quantile,
    require_root, rtt_between, tc_filters, udp_run,
};
use common::{Blast, agent_bin, fault_counters};
use serde_json::Value;

/// A PATH with nothing on it.
const NO_PATH: (&str, &str) = ("PATH", "/nonexistent");
const PORT: u16 = 7300;

fn net_args<'a>(pair: &'a NetnsPair, port: &'a str, action: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "net",
        "--netns",
        pair.ns(Side::A),
        "--iface",
        pair.iface(Side::A),
        "--direction",
        "egress",
        "--proto",
        "udp",
        "--dport",
        port,
    ];
    args.extend_from_slice(action);
    args
}

/// Median RTT of UDP echoes a->b, in ms.
fn median_rtt_ms(pair: &NetnsPair) -> f64 {
    let o = RttOptions::new(200, 100).one_cpu();
    let run = rtt_between(pair, AddrKind::V4, PORT, &o).unwrap();
    assert_eq!(run.lost(), 0, "echoes lost: {run:?}");
    quantile(&run.rtts_ns(), 0.5).expect("echoes") as f64 / 1e6
}

#[test]
fn no_tools_delay_blast_adds_its_latency_and_restores_the_qdiscs() {
    require_root!();
    let pair = NetnsPair::new("notoolsd").unwrap();
    if let Err(why) = qdisc_kind_available(pair.ns_a(), "fq") {
        println!(
            "skipped: delay needs the fq qdisc (CONFIG_NET_SCH_FQ), which this kernel lacks: {why}"
        );
        return;
    }
    let (ns, iface) = (pair.ns_a(), pair.if_a());
    let before = qdisc_show(ns, iface).unwrap();
    let base = median_rtt_ms(&pair);
    let port = PORT.to_string();
    let mut args = net_args(&pair, &port, &["--delay", "20ms"]);
    args.extend_from_slice(&["--duration", "300s"]);
    let agent = Blast::start_env(None, &args, &[NO_PATH]).unwrap();
    let during = qdisc_show(ns, iface).unwrap();
    let delayed = median_rtt_ms(&pair);
    let (status, reverted) = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}");
    let after = qdisc_show(ns, iface).unwrap();
    let added = delayed - base;
    println!(
        "figure: delay 20ms with an empty PATH: median RTT {base:.3} ms unfaulted, {delayed:.3} ms delayed, added {added:.3} ms"
    );
    let (_, injected, _) = fault_counters(&reverted);
    assert!(injected > 0, "nothing delayed: {reverted}");
    // Within 2 % or 1 ms of the latency, whichever is larger.
    assert!(
        (added - 20.0).abs() <= 1.0,
        "added {added:.3} ms for a 20 ms delay"
    );
    assert!(during.contains("fq"), "no fq during the blast: {during}");
    assert_eq!(after, before, "qdiscs not restored");
}

#[test]
fn no_tools_netlink_loss_blast_drops_and_leaves_no_filter() {
    require_root!();
    let pair = NetnsPair::new("notoolsl").unwrap();
    let (ns, iface) = (pair.ns_a(), pair.if_a());
    let before = qdisc_show(ns, iface).unwrap();
    let port = PORT.to_string();
    let mut args = net_args(&pair, &port, &["--loss", "100", "--attach", "netlink"]);
    args.extend_from_slice(&["--duration", "300s"]);
    let agent = Blast::start_env(None, &args, &[NO_PATH]).unwrap();
    assert_eq!(agent.mode(), "netlink");
    let during = qdisc_show(ns, iface).unwrap();
    let filters = tc_filters(ns, iface, "egress").unwrap();
    let (sent, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, PORT, 500, 500).unwrap();
    let (status, reverted) = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}");
    assert!(during.contains("clsact"), "no clsact during: {during}");
    assert!(!filters.trim().is_empty(), "no filter during the blast");
    assert_eq!(got.distinct, 0, "datagrams through 100 % loss: {sent:?}");
    let (matched, injected, _) = fault_counters(&reverted);
    assert_eq!((matched, injected), (sent.sent, sent.sent));
    assert_eq!(
        qdisc_show(ns, iface).unwrap(),
        before,
        "qdiscs not restored"
    );
    for dir in ["ingress", "egress"] {
        assert_eq!(tc_filters(ns, iface, dir).unwrap().trim(), "", "{dir}");
    }
}

/// `probe --json` rows, run with `env` for the agent.
fn probe_rows(env: &[(&str, &str)]) -> Value {
    let out = Command::new(agent_bin())
        .args(["probe", "--json"])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn no_tools_probe_gives_the_same_rows() {
    require_root!();
    let with = probe_rows(&[]);
    let without = probe_rows(&[NO_PATH]);
    assert_eq!(with, without);
    // The rows about kinds name a config option when they say no, and
    // none blames a missing program.
    for row in with.as_array().unwrap() {
        let detail = row["detail"].as_str().unwrap_or_default();
        assert!(
            !detail.contains("iproute2") && !detail.contains("could not run"),
            "{row}"
        );
        if ["qdisc-fq", "qdisc-netem", "ifb"].contains(&row["feature"].as_str().unwrap_or(""))
            && row["supported"] == false
        {
            assert!(detail.contains("CONFIG_"), "{row}");
        }
    }
}

fn strace() -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", "command -v strace"])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
}

/// The execs `strace -f` saw while the agent ran `args` to its end with an
/// empty PATH, and its exit code.
fn execs_under_strace(strace: &PathBuf, args: &[&str]) -> (Vec<String>, i32) {
    let log = std::env::temp_dir().join(format!("chaos-strace-{}.log", std::process::id()));
    let out = Command::new(strace)
        .args(["-f", "-qq", "-e", "trace=execve,execveat", "-E"])
        .arg(format!("{}={}", NO_PATH.0, NO_PATH.1))
        .arg("-o")
        .arg(&log)
        .arg(agent_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let execs = text
        .lines()
        .filter(|l| l.contains("execve"))
        .map(str::to_owned)
        .collect();
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    (execs, out.status.code().unwrap_or(-1))
}

#[test]
fn no_tools_strace_sees_no_exec_by_the_agent() {
    require_root!();
    let Some(strace) = strace() else {
        println!("skipped: strace is not installed (apt-get install strace)");
        return;
    };
    let pair = NetnsPair::new("notoolss").unwrap();
    let (ns, iface) = (pair.ns_a(), pair.if_a());
    let before = qdisc_show(ns, iface).unwrap();
    let port = PORT.to_string();
    let mut runs: Vec<(&str, Vec<&str>)> = vec![
        ("probe", vec!["probe"]),
        ("netlink loss blast", {
            let mut a = vec!["blast"];
            a.extend(net_args(
                &pair,
                &port,
                &["--loss", "100", "--attach", "netlink", "--duration", "1s"],
            ));
            a
        }),
    ];
    match qdisc_kind_available(ns, "fq") {
        Ok(()) => runs.push(("delay blast", {
            let mut a = vec!["blast"];
            a.extend(net_args(
                &pair,
                &port,
                &["--delay", "20ms", "--duration", "1s"],
            ));
            a
        })),
        Err(why) => println!(
            "the delay blast is not traced: no fq qdisc (CONFIG_NET_SCH_FQ) on this kernel: {why}"
        ),
    }
    for (what, args) in runs {
        let (execs, code) = execs_under_strace(&strace, &args);
        println!("{what}: exit {code}, execs: {execs:#?}");
        assert_eq!(code, 0, "{what} failed");
        // The agent's own exec, by strace, and nothing after it.
        assert_eq!(execs.len(), 1, "{what}: {execs:#?}");
        assert!(
            execs[0].contains(&*agent_bin().to_string_lossy()),
            "{what}: {execs:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(qdisc_show(ns, iface).unwrap(), before, "{what}");
    }
}
