//! What is attached to an interface: legacy tc filters, tcx programs,
//! bpftool's view, XDP.

use std::fmt;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::bpf::{TcxDirection, tcx_query};
use crate::netns::ns_exec;

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Output of `tc filter show dev IFACE ingress|egress` in the named
/// namespace: empty when no (legacy, netlink) filter is attached. tcx
/// attachments do not show here; see [`tcx_query`].
pub fn tc_filters(ns: &str, iface: &str, dir: &str) -> Result<String> {
    ensure!(
        dir == "ingress" || dir == "egress",
        "direction must be \"ingress\" or \"egress\", not {dir:?}"
    );
    run(
        Command::new("tc").args(["-n", ns, "filter", "show", "dev", iface, dir]),
        &format!("tc -n {ns} filter show dev {iface} {dir}"),
    )
}

/// Output of `tc qdisc show dev IFACE` in the named namespace (to see a
/// leftover `clsact` or `fq`).
pub fn tc_qdiscs(ns: &str, iface: &str) -> Result<String> {
    run(
        Command::new("tc").args(["-n", ns, "qdisc", "show", "dev", iface]),
        &format!("tc -n {ns} qdisc show dev {iface}"),
    )
}

/// True when `bpftool` runs.
pub fn bpftool_available() -> bool {
    Command::new("bpftool")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// One entry of `bpftool net show`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetAttachment {
    /// `xdp`, `tc`, `flow_dissector`, `netfilter`, ...
    pub kind: String,
    /// The entry as bpftool printed it (devname, ifindex, kind, name, id...).
    pub detail: serde_json::Value,
}

impl fmt::Display for NetAttachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// Parses `bpftool -j net show` output into its entries.
pub fn parse_bpftool_net(json: &str) -> Result<Vec<NetAttachment>> {
    let v: serde_json::Value =
        serde_json::from_str(json.trim()).context("parsing bpftool -j net show output")?;
    let mut out = Vec::new();
    let groups = match v {
        serde_json::Value::Array(a) => a,
        other => vec![other],
    };
    for g in groups {
        let serde_json::Value::Object(map) = g else {
            continue;
        };
        for (kind, entries) in map {
            if let serde_json::Value::Array(entries) = entries {
                for e in entries {
                    out.push(NetAttachment {
                        kind: kind.clone(),
                        detail: e,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Everything `bpftool net show dev IFACE` lists, run inside the named
/// namespace; empty when nothing is attached. Err when bpftool is missing.
/// Note: bpftool older than 7.3 does not list tcx attachments; use
/// [`tcx_query`] or [`attachments_on`] for those.
pub fn bpf_links_on(ns: &str, iface: &str) -> Result<Vec<NetAttachment>> {
    ensure!(
        bpftool_available(),
        "bpftool is not installed (apt-get install bpftool)"
    );
    let out = ns_exec(ns, &["bpftool", "-j", "net", "show", "dev", iface])?;
    if !out.status.success() {
        bail!(
            "bpftool net show dev {iface} in {ns} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_bpftool_net(&String::from_utf8_lossy(&out.stdout))
}

/// Every BPF attachment on `iface` in the named namespace, one line each,
/// from sources that need no bpftool: tcx programs (ingress, egress;
/// skipped on kernels without tcx), legacy tc filters (ingress, egress) and
/// XDP (`ip link`). Empty means nothing is attached.
pub fn attachments_on(ns: &str, iface: &str) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for dir in [TcxDirection::Ingress, TcxDirection::Egress] {
        match tcx_query(ns, iface, dir) {
            Ok(q) => {
                for (i, id) in q.prog_ids.iter().enumerate() {
                    let link = q.link_ids.get(i).copied().unwrap_or(0);
                    found.push(format!("tcx/{}: prog {id} link {link}", dir.as_str()));
                }
            }
            Err(e) => {
                let no_tcx = e
                    .chain()
                    .filter_map(|c| c.downcast_ref::<std::io::Error>())
                    .any(|io| io.raw_os_error() == Some(libc::EINVAL));
                if !no_tcx {
                    return Err(e);
                }
            }
        }
    }
    for dir in ["ingress", "egress"] {
        // One line per filter: tc also prints a "filter ... pref N bpf
        // chain 0" heading above each, which has no handle.
        for line in tc_filters(ns, iface, dir)?.lines() {
            if line.contains(" handle ") {
                found.push(format!("tc/{dir}: {}", line.trim()));
            }
        }
    }
    let link = run(
        Command::new("ip").args(["-d", "-n", ns, "link", "show", "dev", iface]),
        &format!("ip -n {ns} link show dev {iface}"),
    )?;
    for line in link.lines() {
        let t = line.trim();
        if t.starts_with("prog/xdp") || t.contains(" xdp ") || t.contains(" xdpgeneric") {
            found.push(format!("xdp: {t}"));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_empty_and_full_bpftool_output() {
        let empty = r#"[{"xdp":[],"tc":[],"flow_dissector":[]}]"#;
        assert!(parse_bpftool_net(empty).unwrap().is_empty());
        let full = r#"[{"xdp":[],"tc":[{"devname":"veth-a","ifindex":2,"kind":"tcx/ingress","name":"chaos_tc","prog_id":42}],"flow_dissector":[]}]"#;
        let v = parse_bpftool_net(full).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].kind, "tc");
        assert_eq!(v[0].detail["prog_id"], 42);
        assert!(v[0].to_string().contains("chaos_tc"));
        assert!(parse_bpftool_net("not json").is_err());
    }
}
