//! Smoke test of the test harness itself (needs root; prints
//! "skipped: needs root" otherwise). Only the namespaces it creates carry
//! traffic; every run is bounded.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaos_tests::{
    AddrKind, CgroupGuard, Direction, NetnsPair, SendStats, Side, TcpOptions, TcxDirection,
    UdpStats, attachments_on, bpf_links_on, bpftool_available, chaos_traffic_bin, monotonic_ns,
    netns_exists, require_root, snmp_tcp_segments, tc_filters, tcp_transfer, udp_run,
};

#[test]
fn udp_2000_datagrams_arrive_over_ipv4_and_ipv6() {
    require_root!();
    let pair = NetnsPair::new("udp").unwrap();
    for kind in [AddrKind::V4, AddrKind::V6, AddrKind::V4Alt] {
        let t0 = monotonic_ns();
        let (sent, got) = udp_run(&pair, Direction::AtoB, kind, 40_000, 2000, 20_000).unwrap();
        assert_eq!(sent.sent, 2000, "{kind:?}: {sent:?}");
        assert_eq!(sent.errors, 0, "{kind:?}: {sent:?}");
        assert_eq!(
            got.distinct,
            2000,
            "{kind:?}: missing {:?}",
            got.missing(0, 2000)
        );
        assert_eq!(got.duplicates + got.corrupted + got.foreign, 0, "{kind:?}");
        assert!(got.missing(0, 2000).is_empty());
        assert!(got.first_received_after(t0).is_some());
        let secs = sent.elapsed_secs();
        assert!(secs > 0.05 && secs < 2.0, "2000 at 20000 pps took {secs}s");
        assert!(got.local.starts_with(&match kind.addr(Side::B) {
            std::net::IpAddr::V4(a) => a.to_string(),
            std::net::IpAddr::V6(a) => format!("[{a}]"),
        }));
    }
    // And back.
    let (sent, got) = udp_run(&pair, Direction::BtoA, AddrKind::V6, 40_001, 500, 0).unwrap();
    assert_eq!((sent.sent, got.distinct), (500, 500));
}

#[test]
fn tcp_transfer_and_per_netns_counters() {
    require_root!();
    let pair = NetnsPair::new("tcp").unwrap();
    // /proc/thread-self/net follows the thread's namespace, /proc/self/net
    // the main thread's.
    let (thread_dev, self_dev) = pair
        .run_in_a(|| {
            (
                std::fs::read_to_string("/proc/thread-self/net/dev").unwrap(),
                std::fs::read_to_string("/proc/self/net/dev").unwrap(),
            )
        })
        .unwrap();
    assert!(thread_dev.contains("veth-a:"), "{thread_dev}");
    assert!(!self_dev.contains("veth-a:"), "{self_dev}");

    let (in0, out0, _) = snmp_tcp_segments(pair.ns_a()).unwrap();
    let (b_in0, _, _) = snmp_tcp_segments(pair.ns_b()).unwrap();
    assert_eq!(
        (in0, out0, b_in0),
        (0, 0, 0),
        "fresh namespaces count nothing"
    );
    for (i, kind) in [AddrKind::V4, AddrKind::V6].into_iter().enumerate() {
        let o = TcpOptions {
            bytes: 2 << 20,
            ..TcpOptions::default()
        };
        let t = tcp_transfer(&pair, Direction::AtoB, kind, 5000 + i as u16, &o).unwrap();
        assert!(t.connected(), "{kind:?}: {t:?}");
        assert!(!t.connect_timed_out());
        assert!(t.complete(2 << 20), "{kind:?}: {t:?}");
        assert_eq!(t.bytes_delivered(), 2 << 20);
        assert!(t.elapsed() < Duration::from_secs(10));
    }
    let (in1, out1, _) = snmp_tcp_segments(pair.ns_a()).unwrap();
    let (b_in1, _, _) = snmp_tcp_segments(pair.ns_b()).unwrap();
    assert!(out1 > 10 && in1 > 0, "ns a: in {in1} out {out1}");
    assert!(b_in1 > 10, "ns b: in {b_in1}");

    // Nothing listens on port 1 in a: refused, not timed out.
    let to = pair.sockaddr(Side::A, AddrKind::V4, 1);
    let s = pair
        .run_in_b(|| chaos_tests::tcp_send(to, &TcpOptions::default()))
        .unwrap();
    assert!(!s.connected && !s.connect_timed_out, "{s:?}");
    assert!(s.connect_error.unwrap().contains("ECONNREFUSED"));
}

#[test]
fn namespaces_are_removed_on_drop_and_on_panic() {
    require_root!();
    let pair = NetnsPair::new("drop").unwrap();
    let (a, b) = (pair.ns_a().to_string(), pair.ns_b().to_string());
    assert!(netns_exists(&a) && netns_exists(&b));
    assert!(a.len() < 40 && pair.if_a().len() <= 15 && pair.if_b().len() <= 15);
    let out = pair.exec(Side::A, &["ip", "-br", "addr"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("198.18.0.1/24") && text.contains("198.18.1.1/24"));
    assert!(text.contains("fd00:c4a0::1/64"), "{text}");
    let h = pair
        .spawn_in(Side::B, || {
            std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()
        })
        .unwrap();
    assert!(h.join().unwrap().contains("veth-b:"));
    drop(pair);
    assert!(!netns_exists(&a) && !netns_exists(&b));
    let listed = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(!listed.contains(&a) && !listed.contains(&b));

    let names = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(|| {
        let pair = NetnsPair::new("panic").unwrap();
        *names.lock().unwrap() = Some((pair.ns_a().to_string(), pair.ns_b().to_string()));
        panic!("test panic with a live pair");
    });
    assert!(r.is_err());
    let (a, b) = names.lock().unwrap().clone().unwrap();
    assert!(!netns_exists(&a) && !netns_exists(&b));
}

#[test]
fn stale_namespaces_of_dead_processes_are_removed() {
    require_root!();
    // A pid that surely is dead: a child we started and reaped.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let name = format!("cht-stale-{dead}-0-a");
    let st = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    assert!(st.success());
    let removed = chaos_tests::stale_cleanup("cht-").unwrap();
    if netns_exists(&name) {
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        panic!("stale namespace {name} not removed (removed {removed:?})");
    }
    assert!(removed.contains(&name), "{removed:?}");
}

fn cgroup_id_by_handle(path: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = [0u64; 8];
    let fh = buf.as_mut_ptr() as *mut libc::file_handle;
    let mut mount_id: libc::c_int = 0;
    // SAFETY: buf is large enough for a file_handle with 32 bytes of handle.
    unsafe {
        (*fh).handle_bytes = 32;
        let rc = libc::name_to_handle_at(libc::AT_FDCWD, c.as_ptr(), fh, &mut mount_id, 0);
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        assert_eq!((*fh).handle_bytes, 8);
    }
    buf[1]
}

#[test]
fn cgroup_guard_places_processes_and_cleans_up() {
    require_root!();
    let cg = CgroupGuard::new("smoke").unwrap();
    let path = cg.path().to_path_buf();
    assert!(path.is_dir());
    assert!(cg.rel_path().starts_with("/chaos-test-smoke-"));
    assert_eq!(cg.mount().join(&cg.rel_path()[1..]), path);
    assert_eq!(cg.id(), std::fs::metadata(&path).unwrap().ino());
    assert_eq!(cg.id(), cgroup_id_by_handle(&path), "id = kernfs id");

    let mut cmd = Command::new("sleep");
    cmd.arg("20");
    cg.attach_command(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let line = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        line.lines().any(|l| l == format!("0::{}", cg.rel_path())),
        "{line}"
    );
    assert_eq!(cg.procs().unwrap(), vec![pid]);
    drop(cg);
    assert!(!path.exists(), "cgroup dir left behind");
    let line = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(line.lines().any(|l| l == "0::/"), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Waits for the `ready ADDR` line of a chaos-traffic receiver.
fn wait_ready(child: &mut std::process::Child) -> String {
    let stderr = child.stderr.take().unwrap();
    let mut line = String::new();
    BufReader::new(stderr).read_line(&mut line).unwrap();
    assert!(line.starts_with("ready "), "receiver said {line:?}");
    line
}

#[test]
fn chaos_traffic_binary_in_namespaces_and_cgroup() {
    require_root!();
    let bin = chaos_traffic_bin!();
    let pair = NetnsPair::new("bin").unwrap();
    let cg = CgroupGuard::new("bin").unwrap();

    let mut recv = pair
        .command(Side::B, bin)
        .args([
            "udp-recv",
            "--bind",
            "[fd00:c4a0::2]:7000",
            "--idle-ms",
            "3000",
            "--max-ms",
            "20000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&mut recv);
    let mut send = pair.command(Side::A, bin);
    send.args([
        "udp-send",
        "--to",
        "[fd00:c4a0::2]:7000",
        "--count",
        "1000",
        "--pps",
        "10000",
        "--from",
        "[fd00:c4a0::1]:7001",
    ]);
    cg.attach_command(&mut send);
    let out = send.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let s: SendStats = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((s.sent, s.errors), (1000, 0));
    assert_eq!(s.local, "[fd00:c4a0::1]:7001");
    let t = Instant::now();
    let out = recv.wait_with_output().unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(out.status.success());
    let r: UdpStats = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.distinct, 1000, "{r:?}");
    assert_eq!(r.stop_reason, "idle");
    assert!(r.records.is_empty(), "records only with --records");

    // TCP over IPv4.
    let mut recv = pair
        .command(Side::B, bin)
        .args(["tcp-recv", "--bind", "198.18.0.2:7002", "--max-ms", "10000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&mut recv);
    let out = pair
        .command(Side::A, bin)
        .args(["tcp-send", "--to", "198.18.0.2:7002", "--bytes", "100000"])
        .output()
        .unwrap();
    let s: chaos_tests::TcpSendStats = serde_json::from_slice(&out.stdout).unwrap();
    assert!(s.completed, "{s:?}");
    let out = recv.wait_with_output().unwrap();
    let r: chaos_tests::TcpRecvStats = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((r.bytes, r.mismatched_bytes, r.eof), (100_000, 0, true));

    // Bad arguments exit 2.
    let st = Command::new(bin)
        .args(["udp-send", "--to", "nonsense"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(2));
}

#[test]
fn tcx_attachments_are_seen() {
    require_root!();
    chaos_tests::require_tcx!();
    let pair = NetnsPair::new("tcx").unwrap();
    assert!(attachments_on(pair.ns_a(), pair.if_a()).unwrap().is_empty());
    assert!(
        tc_filters(pair.ns_a(), pair.if_a(), "ingress")
            .unwrap()
            .trim()
            .is_empty()
    );
    let prog = chaos_tests::load_pass_tc_prog("cht_smoke_pass").unwrap();
    let link =
        chaos_tests::tcx_attach(pair.ns_a(), pair.if_a(), TcxDirection::Ingress, &prog).unwrap();
    let q = chaos_tests::tcx_query(pair.ns_a(), pair.if_a(), TcxDirection::Ingress).unwrap();
    assert_eq!(q.prog_ids.len(), 1, "{q:?}");
    assert!(q.link_ids[0] > 0);
    assert!(
        chaos_tests::tcx_query(pair.ns_a(), pair.if_a(), TcxDirection::Egress)
            .unwrap()
            .is_empty()
    );
    // The other namespace's interface is untouched.
    assert!(attachments_on(pair.ns_b(), pair.if_b()).unwrap().is_empty());
    let found = attachments_on(pair.ns_a(), pair.if_a()).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("tcx/ingress"));
    let progs = chaos_tests::loaded_progs().unwrap();
    assert!(
        progs
            .iter()
            .any(|p| p.name == "cht_smoke_pass" && p.id == q.prog_ids[0] && p.prog_type == 3),
        "{progs:?}"
    );
    if bpftool_available() {
        let seen = bpf_links_on(pair.ns_a(), pair.if_a()).unwrap();
        eprintln!("bpftool net show with a tcx link: {seen:?}");
    } else {
        assert!(bpf_links_on(pair.ns_a(), pair.if_a()).is_err());
    }
    // TCX_NEXT: traffic still flows.
    let (_, got) = udp_run(&pair, Direction::BtoA, AddrKind::V4, 7100, 200, 0).unwrap();
    assert_eq!(got.distinct, 200);
    drop(link);
    // Link release is synchronous for tcx.
    assert!(attachments_on(pair.ns_a(), pair.if_a()).unwrap().is_empty());
    drop(prog);
}

/// A tcx egress classifier that drops packets whose socket is in cgroup
/// `cgid` (`bpf_skb_cgroup_id(skb) == cgid`) and passes the rest.
fn drop_cgroup_prog(cgid: u64) -> Vec<u8> {
    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = code;
        b[1] = dst | (src << 4);
        b[2..4].copy_from_slice(&off.to_le_bytes());
        b[4..8].copy_from_slice(&imm.to_le_bytes());
        b
    }
    [
        insn(0x85, 0, 0, 0, 79),                 // call bpf_skb_cgroup_id(r1 = skb)
        insn(0x18, 2, 0, 0, cgid as u32 as i32), // r2 = cgid (ld_imm64)
        insn(0, 0, 0, 0, (cgid >> 32) as u32 as i32),
        insn(0x1d, 0, 2, 2, 0), // if r0 == r2 goto drop
        insn(0xb7, 0, 0, 0, chaos_tests::TCX_NEXT),
        insn(0x95, 0, 0, 0, 0),
        insn(0xb7, 0, 0, 0, chaos_tests::TCX_DROP), // drop:
        insn(0x95, 0, 0, 0, 0),
    ]
    .concat()
}

/// `CgroupGuard::id()` is what `bpf_skb_cgroup_id` reports for sockets of a
/// process placed in the cgroup (with `attach_command`) on this host.
#[test]
fn cgroup_id_matches_bpf_skb_cgroup_id() {
    require_root!();
    chaos_tests::require_tcx!();
    let bin = chaos_traffic_bin!();
    let pair = NetnsPair::new("cgid").unwrap();
    let cg = CgroupGuard::new("cgid").unwrap();
    let prog = chaos_tests::load_tc_prog_raw("cht_drop_cg", &drop_cgroup_prog(cg.id())).unwrap();
    let _link =
        chaos_tests::tcx_attach(pair.ns_a(), pair.if_a(), TcxDirection::Egress, &prog).unwrap();
    let dst = pair.sockaddr(Side::B, AddrKind::V4, 7200);
    for in_cgroup in [true, false] {
        let sink = pair
            .run_in_b(|| {
                chaos_tests::udp_sink(dst, None, Duration::from_secs(5), Duration::from_secs(10))
            })
            .unwrap()
            .unwrap();
        let mut send = pair.command(Side::A, bin);
        send.args([
            "udp-send",
            "--to",
            &dst.to_string(),
            "--count",
            "300",
            "--pps",
            "0",
        ]);
        if in_cgroup {
            cg.attach_command(&mut send);
        }
        let out = send.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let s: SendStats = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(s.attempted, 300);
        let got = sink.finish_and_wait(Duration::from_millis(300)).unwrap();
        let expect = if in_cgroup { 0 } else { 300 };
        assert_eq!(got.distinct, expect, "in cgroup: {in_cgroup}");
    }
}
