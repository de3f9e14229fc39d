//! Kernel protocol counters of a network namespace.
//!
//! `/proc/self/net` shows the namespace of the process's main thread, while
//! `/proc/thread-self/net` shows the calling thread's; these functions read
//! the latter from a thread that has joined the namespace.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use crate::netns::run_in_netns;

/// Parses the paired header/value lines of `/proc/net/snmp` or
/// `/proc/net/netstat` into `"Proto.Field" -> value`.
pub fn parse_paired(text: &str) -> Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut i = 0;
    while i + 1 < lines.len() {
        let (Some((p1, names)), Some((p2, values))) =
            (lines[i].split_once(':'), lines[i + 1].split_once(':'))
        else {
            bail!("malformed line {:?}", lines[i]);
        };
        if p1 != p2 {
            bail!("unpaired lines {p1:?} / {p2:?}");
        }
        let names: Vec<&str> = names.split_whitespace().collect();
        let values: Vec<&str> = values.split_whitespace().collect();
        if names.len() != values.len() {
            bail!("{p1}: {} names but {} values", names.len(), values.len());
        }
        for (n, v) in names.iter().zip(values) {
            let v: i64 = v
                .parse()
                .with_context(|| format!("{p1}.{n}: bad value {v:?}"))?;
            out.insert(format!("{p1}.{n}"), v);
        }
        i += 2;
    }
    Ok(out)
}

/// Parses `/proc/net/snmp6` (`Name value` lines).
pub fn parse_snmp6(text: &str) -> BTreeMap<String, i64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (k, v) = (it.next()?, it.next()?);
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Counters of the calling thread's namespace: `/proc/thread-self/net/snmp`
/// (`Tcp.InSegs`, `Udp.InErrors`, ...) plus `/proc/thread-self/net/snmp6`
/// (`Udp6InDatagrams`, ...; absent without IPv6).
pub fn read_snmp_here() -> Result<BTreeMap<String, i64>> {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp")
        .context("reading /proc/thread-self/net/snmp")?;
    let mut m = parse_paired(&text)?;
    if let Ok(t6) = std::fs::read_to_string("/proc/thread-self/net/snmp6") {
        m.extend(parse_snmp6(&t6));
    }
    Ok(m)
}

/// [`read_snmp_here`] inside the named namespace.
pub fn snmp_counters(ns: &str) -> Result<BTreeMap<String, i64>> {
    run_in_netns(ns, read_snmp_here)?
}

/// `/proc/thread-self/net/netstat` (`TcpExt.TCPLossProbes`, ...) inside the
/// named namespace.
pub fn netstat_counters(ns: &str) -> Result<BTreeMap<String, i64>> {
    run_in_netns(ns, || -> Result<BTreeMap<String, i64>> {
        let text = std::fs::read_to_string("/proc/thread-self/net/netstat")
            .context("reading /proc/thread-self/net/netstat")?;
        parse_paired(&text)
    })?
}

/// `(Tcp.InSegs, Tcp.OutSegs, Tcp.RetransSegs)` of the named namespace
/// (IPv4 and IPv6 TCP share these counters).
pub fn snmp_tcp_segments(ns: &str) -> Result<(u64, u64, u64)> {
    let m = snmp_counters(ns)?;
    let get = |k: &str| -> Result<u64> {
        let v = *m.get(k).with_context(|| format!("{k} missing from snmp"))?;
        Ok(v.max(0) as u64)
    };
    Ok((
        get("Tcp.InSegs")?,
        get("Tcp.OutSegs")?,
        get("Tcp.RetransSegs")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Ip: Forwarding DefaultTTL InReceives\n\
Ip: 1 64 100\n\
Tcp: RtoAlgorithm MaxConn InSegs OutSegs RetransSegs\n\
Tcp: 1 -1 10 20 3\n\
Udp: InDatagrams NoPorts InErrors InCsumErrors\n\
Udp: 5 1 0 2\n";

    #[test]
    fn parses_snmp() {
        let m = parse_paired(SAMPLE).unwrap();
        assert_eq!(m["Tcp.InSegs"], 10);
        assert_eq!(m["Tcp.MaxConn"], -1);
        assert_eq!(m["Udp.InCsumErrors"], 2);
        assert_eq!(m["Ip.InReceives"], 100);
        assert!(parse_paired("Tcp: A B\nTcp: 1\n").is_err());
        assert!(parse_paired("Tcp: A\nUdp: 1\n").is_err());
    }

    #[test]
    fn parses_snmp6() {
        let m = parse_snmp6("Ip6InReceives                   \t5\nUdp6InDatagrams 7\n");
        assert_eq!(m["Ip6InReceives"], 5);
        assert_eq!(m["Udp6InDatagrams"], 7);
    }

    #[test]
    fn reads_own_namespace() {
        let m = read_snmp_here().unwrap();
        assert!(m.contains_key("Tcp.InSegs"));
    }
}
