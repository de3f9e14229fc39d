//! Privileged test-support library for the chaos-agent integration tests.
//!
//! Everything here creates only local objects that it also removes again:
//!
//! * [`NetnsPair`]: two named network namespaces (`ip netns`) joined by a veth
//!   pair, with fixed addresses from the RFC 2544 benchmark range
//!   (`198.18.0.0/24`, `198.18.1.0/24`) and a ULA IPv6 prefix
//!   (`fd00:c4a0::/64`). Dropping the guard deletes both namespaces.
//! * [`CgroupGuard`]: a cgroup v2 directory for one test; dropping it moves
//!   any processes left in it to the root cgroup and removes it.
//! * Traffic generators ([`udp_blast`], [`udp_sink`], [`udp_run`],
//!   [`tcp_transfer`], ...) that are bounded in count and in time and only
//!   ever send to the addresses they are given (the callers use the
//!   namespace addresses or loopback).
//! * [`policygen`]: seeded random policy files, at and past the limits of
//!   what the kernel side holds, each with what the loader should say.
//! * Inspection helpers ([`tc_filters`], [`tcx_query`], [`bpf_links_on`],
//!   [`loaded_prog_names`], [`snmp_counters`]) so a test can check what is
//!   attached and what the kernel counted.
//!
//! Most functions need root; integration tests start with
//! [`require_root!`] which prints `skipped: needs root` and returns otherwise.

pub mod bpf;
pub mod cgroup;
pub mod ethtool;
pub mod inspect;
pub mod kernel;
pub mod netns;
pub mod payload;
pub mod policygen;
pub mod qdisc;
pub mod rtt;
pub mod snmp;
pub mod sockutil;
pub mod stats;
pub mod syscaller;
pub mod tcp;
pub mod udp;

pub use bpf::{
    BpfProgInfo, TCX_DROP, TCX_NEXT, TCX_PASS, TcxDirection, TcxQuery, enable_run_time_stats,
    load_pass_tc_prog, load_tc_prog, load_tc_prog_raw, loaded_prog_names, loaded_progs,
    prog_run_stats, tcx_attach, tcx_query,
};
pub use cgroup::{CgroupGuard, cgroup2_mount, stale_cgroup_cleanup};
pub use inspect::{
    NetAttachment, attachments_on, bpf_links_on, bpftool_available, tc_filters, tc_qdiscs,
};
pub use netns::{
    AddrKind, Direction, NETNS_PREFIX, NetnsPair, NsJoinHandle, Side, netns_exists, netns_path,
    ns_command, ns_exec, run_in_netns, spawn_in_netns, stale_cleanup,
};
pub use payload::{Datagram, DecodeError};
pub use qdisc::{RootQdisc, ifindex, link_names, qdisc_kind_available, qdisc_show, rx_bytes};
pub use rtt::{
    Echo, EchoServer, RttOptions, RttRun, echo_server, mean_sd, quantile, rtt_between, rtt_probe,
};
pub use snmp::{netstat_counters, snmp_counters, snmp_tcp_segments};
pub use stats::{receiver_loss, sigma_band, three_sigma_band, within_3_sigma, within_k_sigma};
pub use tcp::{
    TcpOptions, TcpReceiver, TcpRecvStats, TcpSendStats, TcpTransfer, tcp_receiver, tcp_send,
    tcp_transfer, tcp_transfers,
};
pub use udp::{
    BlastOptions, RxRecord, SendStats, UdpRun, UdpSink, UdpStats, stream_while, udp_blast,
    udp_blast_with, udp_run, udp_run_with, udp_sink,
};

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads, so
/// timestamps taken here compare directly with deadlines the agent writes
/// into its maps. The same clock in every network namespace.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The running kernel's release (`uname -r`), e.g. `6.1.0-56-amd64`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// True when the running kernel is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = kernel_release();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
}

/// Returns early from the calling test (after printing a `skipped:` line
/// naming the feature) unless the kernel has tcx links (Linux 6.6+).
#[macro_export]
macro_rules! require_tcx {
    () => {
        if !$crate::kernel_at_least(6, 6) {
            println!(
                "skipped: tcx links need Linux 6.6 (this is {}); the netlink path is tested instead",
                $crate::kernel_release()
            );
            return;
        }
    };
}

/// True when the effective user is root (uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Returns early from the calling test (after printing
/// `skipped: needs root`) unless the effective user is root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            // One line: libtest captures stdout and stderr together.
            println!("skipped: needs root");
            return;
        }
    };
}

/// Path of the `chaos-traffic` binary, for integration tests of this crate
/// (`tests/tests/*.rs`): expands to `env!("CARGO_BIN_EXE_chaos-traffic")` in
/// the calling test crate, where Cargo defines it.
#[macro_export]
macro_rules! chaos_traffic_bin {
    () => {
        env!("CARGO_BIN_EXE_chaos-traffic")
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_is_monotonic() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a);
        assert!(a > 0);
    }
}
