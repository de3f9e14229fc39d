//! Qdiscs and links as `tc` and `ip` show them, for the delay and
//! bandwidth tests: whether the kernel has a qdisc kind, the exact qdisc
//! listing of an interface, a netem qdisc for comparison that is removed
//! on drop, and link counters.

use std::process::Command;

use anyhow::{Context, Result, bail};

fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Ok when the kernel can make a root qdisc of `kind` (loading its module
/// if need be), asked on `lo` of namespace `ns` and removed again at once;
/// `Err` with what the kernel said when it does not know the kind. Panics
/// (failing the test) when the check itself fails: see
/// [`crate::kernel::qdisc_kind`].
pub fn qdisc_kind_available(ns: &str, kind: &str) -> Result<(), String> {
    crate::kernel::qdisc_kind(ns, kind)
}

/// `tc -d qdisc show dev IFACE` in namespace `ns`: the detailed listing a
/// test compares before and after a fault.
pub fn qdisc_show(ns: &str, iface: &str) -> Result<String> {
    run(&["tc", "-n", ns, "-d", "qdisc", "show", "dev", iface])
}

/// A root qdisc a test added (`tc qdisc add dev IFACE root ARGS...`);
/// dropping it deletes the root qdisc again, so the kernel default comes
/// back even when the test fails half-way.
#[derive(Debug)]
pub struct RootQdisc {
    ns: String,
    iface: String,
}

impl RootQdisc {
    /// Adds `args` (e.g. `["netem", "delay", "20ms"]`) as the root qdisc of
    /// `iface` in namespace `ns`.
    pub fn add(ns: &str, iface: &str, args: &[&str]) -> Result<RootQdisc> {
        let mut argv = vec!["tc", "-n", ns, "qdisc", "add", "dev", iface, "root"];
        argv.extend_from_slice(args);
        run(&argv)?;
        Ok(RootQdisc {
            ns: ns.to_owned(),
            iface: iface.to_owned(),
        })
    }
}

impl Drop for RootQdisc {
    fn drop(&mut self) {
        if let Err(e) = run(&[
            "tc",
            "-n",
            &self.ns,
            "qdisc",
            "del",
            "dev",
            &self.iface,
            "root",
        ]) {
            eprintln!(
                "chaos-tests: removing the root qdisc of {}: {e:#}",
                self.iface
            );
        }
    }
}

fn link_json(ns: &str, iface: &str) -> Result<serde_json::Value> {
    let out = run(&["ip", "-n", ns, "-s", "-j", "link", "show", "dev", iface])?;
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).context("parsing ip -j link show")?;
    Ok(v[0].clone())
}

/// The interface index of `iface` in namespace `ns`.
pub fn ifindex(ns: &str, iface: &str) -> Result<u32> {
    link_json(ns, iface)?["ifindex"]
        .as_u64()
        .map(|i| i as u32)
        .with_context(|| format!("no ifindex for {iface} in {ns}"))
}

/// Bytes `iface` in namespace `ns` has received (its rx_bytes counter; on
/// a veth, the sum of `skb->len` of what the peer sent, Ethernet header
/// included).
pub fn rx_bytes(ns: &str, iface: &str) -> Result<u64> {
    link_json(ns, iface)?["stats64"]["rx"]["bytes"]
        .as_u64()
        .with_context(|| format!("no rx bytes for {iface} in {ns}"))
}

/// The names of every link in namespace `ns`.
pub fn link_names(ns: &str) -> Result<Vec<String>> {
    let out = run(&["ip", "-n", ns, "-j", "link", "show"])?;
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).context("parsing ip -j link show")?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}
