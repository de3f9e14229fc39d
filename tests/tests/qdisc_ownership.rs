//! Delay needs fq at the root of the interface; these tests check that the
//! agent only ever replaces the kernel's default qdiscs, and gives back
//! exactly what was there: a root someone configured is refused (exit 3,
//! named, nothing applied), a user's own fq is used and left as it was, and
//! a multi-queue device gets fq under each queue of its default mq.
//! They need the fq qdisc, so they run in the VM matrix; on a kernel
//! without it they skip, naming `CONFIG_NET_SCH_FQ`.

mod common;

use std::time::Duration;

use chaos_tests::{
    NetnsPair, Side, attachments_on, qdisc_kind_available, qdisc_show, require_root,
};
use common::{Blast, agent_output};

/// `tc -d qdisc show dev IFACE` in ns A.
fn qdiscs(pair: &NetnsPair, iface: &str) -> String {
    qdisc_show(pair.ns_a(), iface).unwrap()
}

fn tc(pair: &NetnsPair, args: &[&str]) {
    let out = pair.exec(Side::A, args).unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
}

/// True when this kernel can make an fq qdisc; otherwise prints the
/// `skipped:` line naming it.
fn has_fq(pair: &NetnsPair) -> bool {
    match qdisc_kind_available(pair.ns_a(), "fq") {
        Ok(()) => true,
        Err(why) => {
            println!("skipped: the fq qdisc (CONFIG_NET_SCH_FQ) is missing on this kernel: {why}");
            false
        }
    }
}

fn delay_args<'a>(pair: &'a NetnsPair, iface: &'a str) -> Vec<&'a str> {
    vec![
        "net",
        "--netns",
        pair.ns_a(),
        "--iface",
        iface,
        "--direction",
        "egress",
        "--delay",
        "5ms",
        "--duration",
        "30s",
    ]
}

#[test]
fn qdisc_configured_by_someone_is_refused_and_left_alone() {
    require_root!();
    let pair = NetnsPair::new("qown").unwrap();
    if !has_fq(&pair) {
        return;
    }
    let iface = pair.if_a();
    tc(
        &pair,
        &[
            "tc", "qdisc", "add", "dev", iface, "root", "handle", "1:", "htb",
        ],
    );
    // htb counts packets sent without a class (IPv6 neighbour discovery
    // goes by): compare without that statistic.
    let config = |text: String| {
        let mut words: Vec<&str> = text.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "direct_packets_stat") {
            words.drain(i..(i + 2).min(words.len()));
        }
        words.join(" ")
    };
    let before = config(qdiscs(&pair, iface));
    let argv: Vec<&str> = [&["blast"][..], &delay_args(&pair, iface)].concat();
    let (code, _, stderr) = agent_output(&argv).unwrap();
    assert_eq!(code, 3, "stderr:\n{stderr}");
    assert!(
        stderr.contains("htb") && stderr.contains(iface),
        "the message names neither the qdisc nor the interface:\n{stderr}"
    );
    assert_eq!(
        config(qdiscs(&pair, iface)),
        before,
        "the htb root was changed"
    );
    let left = attachments_on(pair.ns_a(), iface).unwrap();
    assert!(left.is_empty(), "left attached: {left:?}");
}

#[test]
fn qdisc_users_own_fq_is_used_as_it_is_and_kept() {
    require_root!();
    let pair = NetnsPair::new("qusr").unwrap();
    if !has_fq(&pair) {
        return;
    }
    let iface = pair.if_a();
    tc(
        &pair,
        &[
            "tc",
            "qdisc",
            "add",
            "dev",
            iface,
            "root",
            "handle",
            "7:",
            "fq",
            "flow_limit",
            "321",
        ],
    );
    let before = qdiscs(&pair, iface);
    let blast = Blast::start(&delay_args(&pair, iface)).unwrap();
    // Before Linux 6.6 the program hangs off a clsact qdisc (netlink).
    let without_clsact = |text: String| -> String {
        text.lines()
            .filter(|l| !l.starts_with("qdisc clsact"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    assert_eq!(
        without_clsact(qdiscs(&pair, iface)),
        before,
        "the user's fq was replaced while the blast ran"
    );
    let (status, _) = blast.stop().unwrap();
    assert!(status.success(), "blast failed: {status:?}");
    assert_eq!(qdiscs(&pair, iface), before, "the user's fq was not kept");
}

#[test]
fn qdisc_multiqueue_device_gets_fq_per_queue_and_its_default_back() {
    require_root!();
    let pair = NetnsPair::new("qmq").unwrap();
    if !has_fq(&pair) {
        return;
    }
    // An ifb device with four transmit queues: the kernel gives it a
    // default mq root with one default child per queue, as on a
    // multi-queue NIC.
    let dev = "mqdev0";
    tc(
        &pair,
        &[
            "ip",
            "link",
            "add",
            "name",
            dev,
            "numtxqueues",
            "4",
            "type",
            "ifb",
        ],
    );
    tc(&pair, &["ip", "link", "set", "dev", dev, "up"]);
    let before = qdiscs(&pair, dev);
    if !before.contains("qdisc mq 0: root") {
        println!("skipped: this kernel gave the 4-queue device no default mq root:\n{before}");
        return;
    }
    let blast = Blast::start(&delay_args(&pair, dev)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let during = qdiscs(&pair, dev);
    let ours = during.matches("qdisc fq ca0").count();
    assert_eq!(ours, 4, "expected fq under each of 4 queues:\n{during}");
    assert!(
        during.contains("qdisc mq ca05: root"),
        "expected our mq at the root:\n{during}"
    );
    let (status, _) = blast.stop().unwrap();
    assert!(status.success(), "blast failed: {status:?}");
    assert_eq!(
        qdiscs(&pair, dev),
        before,
        "the default mq was not restored"
    );
}
