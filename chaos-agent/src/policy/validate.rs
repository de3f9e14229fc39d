//! Rules that span several fields, checked after serde has read the file
//! (or the blast flags' document); and the conversion into the validated
//! model. Besides the rules between fields, this is where a policy is held
//! against what the host side knows without the kernel: syscall names of
//! this architecture (`syscalls`), and what the kernel maps can hold
//! (`limits`: keys per fault and per policy, shapes per hook, dst/src
//! prefixes with a family in common).

use std::{collections::HashMap, time::Duration};

use super::{
    error::FieldPath,
    limits::{self, Expansion, MAX_KEYS_PER_POLICY, MAX_KEYS_PER_RULE, MAX_SHAPES_PER_HOOK, Shape},
    model::{
        AbortWhen, CgroupSelector, Direction, Fault, FaultKind, Guard, Match, Mode, NetworkAction,
        NetworkFault, Percent, Policy, Probe, Protocol, Schedule, SyscallFault, SyscallTarget,
    },
    modes,
    raw::{RawFault, RawMatch, RawNetwork, RawPolicy, RawProbe, RawSyscall, RawTarget},
    syscalls,
    values::quoted,
};

/// Which part of the offending field the position points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Anchor {
    /// The value.
    Value,
    /// The key (`loss:` in `loss: {percent: 3}`); the value when it has none.
    Key,
    /// The field is absent: point at its parent mapping (its key, if any).
    Missing,
}

/// A rule broken by an otherwise well-formed file.
#[derive(Debug)]
pub(crate) struct Invalid {
    /// The field the position points at.
    pub path: FieldPath,
    pub anchor: Anchor,
    pub message: String,
    /// Other fields the rule is about (the protocol that rules out ports,
    /// the direction that rules out a cgroup), so a message about flags can
    /// name every flag involved.
    pub also: Vec<FieldPath>,
}

fn invalid(path: FieldPath, anchor: Anchor, message: impl Into<String>) -> Invalid {
    Invalid {
        path,
        anchor,
        message: message.into(),
        also: Vec::new(),
    }
}

impl Invalid {
    fn also(mut self, path: FieldPath) -> Self {
        self.also.push(path);
        self
    }
}

/// One hook as far as validation can tell: (netns, interface, direction).
type HookId = (Option<String>, String, Direction);

/// Defaults for `abortWhen` when the fields are left out.
const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_PROBE_FAILURES: u32 = 3;
const DEFAULT_EXPECT_STATUS: u16 = 200;

pub(crate) fn validate(raw: RawPolicy, origin: &str) -> Result<Policy, Invalid> {
    let root = FieldPath::root();
    let spec_path = root.key("spec");
    let spec = raw.spec;

    let abort_when = match spec.abort_when {
        None => None,
        Some(a) => {
            let path = spec_path.key("abortWhen");
            let failures = match a.failures {
                None => DEFAULT_PROBE_FAILURES,
                Some(f) => u32::try_from(f.0).map_err(|_| {
                    invalid(
                        path.key("failures"),
                        Anchor::Value,
                        format!("expected at most {} failures, found {}", u32::MAX, f.0),
                    )
                })?,
            };
            Some(AbortWhen {
                probe: probe(a.probe, &path.key("probe"))?,
                interval: a.interval.map_or(DEFAULT_PROBE_INTERVAL, |i| i.0),
                failures,
            })
        }
    };

    let guard = match spec.guard {
        None => Guard::default(),
        Some(g) => Guard {
            ports: g
                .ports
                .map(|l| l.0.into_iter().map(|p| p.0).collect())
                .unwrap_or_default(),
            cidrs: g
                .cidrs
                .map(|l| l.0.into_iter().map(|c| c.0).collect())
                .unwrap_or_default(),
            disable_defaults: g.disable_defaults.unwrap_or(false),
        },
    };

    let mode = spec.mode.map_or(Mode::Enforce, |m| m.0);
    let faults_path = spec_path.key("faults");
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut faults = Vec::with_capacity(spec.faults.0.len());
    let mut hooks: HashMap<HookId, Vec<Shape>> = HashMap::new();
    let mut total_keys = 0usize;
    for (i, f) in spec.faults.0.into_iter().enumerate() {
        let path = faults_path.index(i);
        if let Some(first) = names.insert(f.name.0.clone(), i) {
            return Err(invalid(
                path.key("name"),
                Anchor::Value,
                format!(
                    "duplicate fault name {}; expected names unique within the policy (first used by spec.faults[{first}])",
                    quoted(&f.name.0)
                ),
            ));
        }
        let has_match = f.network.as_ref().is_some_and(|n| n.matcher.is_some());
        let fault = fault(f, mode, &path)?;
        if let FaultKind::Network(n) = &fault.kind {
            let match_path = path.key("network").key("match");
            check_shapes(&mut hooks, n)
                .map_err(|m| invalid(match_path, match_anchor(has_match), m))?;
            total_keys = total_keys.saturating_add(
                limits::key_count(&n.matcher).saturating_mul(limits::hook_count(n.direction)),
            );
        }
        faults.push(fault);
    }
    if total_keys > MAX_KEYS_PER_POLICY {
        return Err(invalid(
            faults_path,
            Anchor::Key,
            format!(
                "the faults expand to {total_keys} kernel keys in all (a fault with direction both counts twice), more than the {MAX_KEYS_PER_POLICY} one policy may have; narrow their port ranges and CIDR lists, or split the faults into several policies"
            ),
        ));
    }

    Ok(Policy {
        name: raw.metadata.name.0,
        origin: origin.to_string(),
        duration: spec.duration.0,
        start_after: spec.start_after.map_or(Duration::ZERO, |d| d.0),
        lease: spec.lease.map(|d| d.0),
        abort_when,
        guard,
        faults,
    })
}

/// Where a refusal about a fault's match points: its `match:` key, or the
/// fault's `network:` when it has none (it matches everything).
fn match_anchor(has_match: bool) -> Anchor {
    if has_match {
        Anchor::Key
    } else {
        Anchor::Missing
    }
}

/// Adds a network fault's shapes to its hooks; the message when a hook
/// would need more than the classifier looks up.
fn check_shapes(hooks: &mut HashMap<HookId, Vec<Shape>>, n: &NetworkFault) -> Result<(), String> {
    let shapes = limits::shapes(&n.matcher);
    for &direction in limits::hook_directions(n.direction) {
        let id = (n.netns.clone(), n.interface.clone(), direction);
        let known = hooks.entry(id).or_default();
        let new: Vec<&Shape> = shapes.iter().filter(|s| !known.contains(s)).collect();
        let count = known.len() + new.len();
        if count > MAX_SHAPES_PER_HOOK {
            let netns = n
                .netns
                .as_ref()
                .map(|ns| format!(" in netns {ns}"))
                .unwrap_or_default();
            return Err(format!(
                "interface {}{netns}, {direction}, would need {count} lookup shapes with this match (it adds {}), more than the {MAX_SHAPES_PER_HOOK} the classifier looks up per interface and direction; give the faults there fewer kinds of match (the same fields, CIDR prefix lengths and cgroup)",
                n.interface,
                new.len()
            ));
        }
        let new: Vec<Shape> = new.into_iter().cloned().collect();
        known.extend(new);
    }
    Ok(())
}

fn probe(p: RawProbe, path: &FieldPath) -> Result<Probe, Invalid> {
    match (p.http, p.tcp) {
        (Some(_), Some(_)) => Err(invalid(
            path.clone(),
            Anchor::Key,
            "expected exactly one of http or tcp in a probe, found both",
        )),
        (None, None) => Err(invalid(
            path.clone(),
            Anchor::Key,
            "expected exactly one of http or tcp in a probe, found neither",
        )),
        (Some(url), None) => {
            if !url.starts_with("http://")
                || url.len() <= "http://".len()
                || url.contains(char::is_whitespace)
            {
                return Err(invalid(
                    path.key("http"),
                    Anchor::Value,
                    format!(
                        "expected an http:// URL such as http://127.0.0.1:8080/health, found {}",
                        quoted(&url)
                    ),
                ));
            }
            Ok(Probe::Http {
                url,
                expect_status: p.expect_status.map_or(DEFAULT_EXPECT_STATUS, |s| s.0),
            })
        }
        (None, Some(addr)) => {
            if p.expect_status.is_some() {
                return Err(invalid(
                    path.key("expectStatus"),
                    Anchor::Key,
                    "expectStatus only goes with an http probe, not tcp",
                )
                .also(path.key("tcp")));
            }
            if !valid_host_port(&addr) {
                return Err(invalid(
                    path.key("tcp"),
                    Anchor::Value,
                    format!(
                        "expected HOST:PORT such as 127.0.0.1:5432 or [::1]:5432, found {}",
                        quoted(&addr)
                    ),
                ));
            }
            Ok(Probe::Tcp { addr })
        }
    }
}

fn valid_host_port(s: &str) -> bool {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains([':', '/', '[', ']'])
                && !host.contains(char::is_whitespace)
                && matches!(port.parse::<u16>(), Ok(1..))
        }
        None => false,
    }
}

fn fault(f: RawFault, mode: Mode, path: &FieldPath) -> Result<Fault, Invalid> {
    let kind = match (f.network, f.syscall) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                path.clone(),
                Anchor::Value,
                "expected exactly one of network or syscall in a fault, found both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                path.clone(),
                Anchor::Value,
                "expected exactly one of network or syscall in a fault, found neither",
            ));
        }
        (Some(n), None) => FaultKind::Network(network(n, &path.key("network"))?),
        (None, Some(s)) => FaultKind::Syscall(syscall(s, &path.key("syscall"))?),
    };
    Ok(Fault {
        name: f.name.0,
        kind,
        mode,
        schedule: f.schedule.map(|s| Schedule {
            on: s.on.0,
            off: s.off.0,
        }),
    })
}

const ACTIONS: &str = "loss, delay, corrupt, duplicate or bandwidth";

fn network(n: RawNetwork, path: &FieldPath) -> Result<NetworkFault, Invalid> {
    let direction = n.direction.map_or(Direction::Egress, |d| d.0);

    let mut actions: Vec<(&str, NetworkAction)> = Vec::new();
    if let Some(a) = n.loss {
        let burst = a.burst.map(|b| b.0);
        if let Some(b) = burst {
            let loss = path.key("loss");
            modes::gilbert(a.percent.0, b).map_err(|m| {
                invalid(loss.key("burst"), Anchor::Value, m).also(loss.key("percent"))
            })?;
        }
        let percent = a.percent.0;
        actions.push(("loss", NetworkAction::Loss { percent, burst }));
    }
    if let Some(a) = n.delay {
        let jitter = a.jitter.as_ref().map_or(Duration::ZERO, |j| j.0);
        limits::check_horizon(a.latency.0, jitter)
            .map_err(|e| invalid(path.key("delay"), Anchor::Value, e))?;
        actions.push((
            "delay",
            NetworkAction::Delay {
                latency: a.latency.0,
                jitter: a.jitter.map_or(Duration::ZERO, |j| j.0),
            },
        ));
    }
    if let Some(a) = n.corrupt {
        actions.push((
            "corrupt",
            NetworkAction::Corrupt {
                percent: a.percent.0,
            },
        ));
    }
    if let Some(a) = n.duplicate {
        actions.push((
            "duplicate",
            NetworkAction::Duplicate {
                percent: a.percent.0,
            },
        ));
    }
    if let Some(a) = n.bandwidth {
        actions.push(("bandwidth", NetworkAction::Bandwidth { rate_bps: a.rate.0 }));
    }
    if actions.len() > 1 {
        return Err(invalid(
            path.clone(),
            Anchor::Key,
            format!(
                "expected exactly one action ({ACTIONS}) per network fault, found {}",
                actions
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        ));
    }
    let Some((_, action)) = actions.pop() else {
        return Err(invalid(
            path.clone(),
            Anchor::Key,
            format!("expected exactly one action ({ACTIONS}) per network fault, found none"),
        ));
    };

    let has_match = n.matcher.is_some();
    let matcher = match n.matcher {
        None => Match::any(),
        Some(m) => matcher(m, direction, &path.key("match"))?,
    };
    let expansion = Expansion::of(&matcher);
    let keys = expansion.keys();
    if keys > MAX_KEYS_PER_RULE {
        return Err(invalid(
            path.key("match"),
            match_anchor(has_match),
            format!(
                "this match expands to {keys} kernel keys ({expansion}), more than the {MAX_KEYS_PER_RULE} one fault may have; use fewer or narrower port ranges and CIDR lists, or split the fault"
            ),
        ));
    }

    Ok(NetworkFault {
        interface: n.interface.0,
        netns: n.netns.map(|n| n.0),
        direction,
        matcher,
        action,
    })
}

fn matcher(m: RawMatch, direction: Direction, path: &FieldPath) -> Result<Match, Invalid> {
    let protocol = m.protocol.map_or(Protocol::Any, |p| p.0);
    let dst_ports: Vec<_> = m
        .dst_ports
        .map(|l| l.0.into_iter().map(|p| p.0).collect())
        .unwrap_or_default();
    let src_ports: Vec<_> = m
        .src_ports
        .map(|l| l.0.into_iter().map(|p| p.0).collect())
        .unwrap_or_default();
    if protocol == Protocol::Icmp {
        for (field, list) in [("dstPorts", &dst_ports), ("srcPorts", &src_ports)] {
            if !list.is_empty() {
                return Err(invalid(
                    path.key(field),
                    Anchor::Key,
                    "ports need protocol tcp, udp or any (ICMP has no ports), found icmp",
                )
                .also(path.key("protocol")));
            }
        }
    }
    let cgroup = match (m.unit, m.cgroup) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                path.clone(),
                Anchor::Key,
                "expected one of unit or cgroup, found both (they are mutually exclusive)",
            ));
        }
        (Some(u), None) => Some(("unit", CgroupSelector::Unit(u.0))),
        (None, Some(c)) => Some(("cgroup", CgroupSelector::Path(c.0))),
        (None, None) => None,
    };
    if let Some((field, _)) = &cgroup
        && direction != Direction::Egress
    {
        return Err(invalid(
            path.key(field),
            Anchor::Key,
            format!(
                "{field} needs direction egress (cgroups only see the packets they send), found direction {direction}"
            ),
        )
        .also(path.parent().key("direction")));
    }
    let dst_cidrs: Vec<_> = m
        .dst_cidrs
        .map(|l| l.0.into_iter().map(|c| c.0).collect())
        .unwrap_or_default();
    let src_cidrs: Vec<_> = m
        .src_cidrs
        .map(|l| l.0.into_iter().map(|c| c.0).collect())
        .unwrap_or_default();
    if !dst_cidrs.is_empty() && !src_cidrs.is_empty() {
        let (d4, d6) = limits::families(&dst_cidrs);
        let (s4, s6) = limits::families(&src_cidrs);
        if !(d4 && s4 || d6 && s6) {
            let name = |v4: bool| if v4 { "IPv4" } else { "IPv6" };
            return Err(invalid(
                path.key("srcCidrs"),
                Anchor::Key,
                format!(
                    "the destination prefixes are all {} and the source prefixes all {}, so this fault matches nothing; use prefixes of one address family on both sides, or split the fault",
                    name(d4),
                    name(s4)
                ),
            )
            .also(path.key("dstCidrs")));
        }
    }
    Ok(Match {
        protocol,
        dst_ports,
        src_ports,
        dst_cidrs,
        src_cidrs,
        cgroup: cgroup.map(|(_, c)| c),
    })
}

fn syscall(s: RawSyscall, path: &FieldPath) -> Result<SyscallFault, Invalid> {
    let mut names: Vec<String> = Vec::with_capacity(s.names.0.len());
    for (i, n) in s.names.0.into_iter().enumerate() {
        syscalls::check(&n.0).map_err(|m| invalid(path.key("names").index(i), Anchor::Value, m))?;
        if names.contains(&n.0) {
            return Err(invalid(
                path.key("names").index(i),
                Anchor::Value,
                format!(
                    "duplicate syscall name {}; expected each name once",
                    quoted(&n.0)
                ),
            ));
        }
        names.push(n.0);
    }
    Ok(SyscallFault {
        names,
        errno: s.errno.0,
        percent: s.percent.map_or(Percent(100.0), |p| p.0),
        target: target(s.target, &path.key("target"))?,
        max_injections: s.max_injections.map(|m| m.0),
    })
}

fn target(t: RawTarget, path: &FieldPath) -> Result<SyscallTarget, Invalid> {
    let mut found: Vec<(&str, SyscallTarget)> = Vec::new();
    if let Some(p) = t.pid {
        found.push(("pid", SyscallTarget::Pid(p.0)));
    }
    if let Some(c) = t.comm {
        found.push(("comm", SyscallTarget::Comm(c.0)));
    }
    if let Some(c) = t.cgroup {
        found.push(("cgroup", SyscallTarget::Cgroup(c.0)));
    }
    if let Some(u) = t.unit {
        found.push(("unit", SyscallTarget::Unit(u.0)));
    }
    const TARGETS: &str = "pid, comm, cgroup or unit";
    if found.len() > 1 {
        return Err(invalid(
            path.clone(),
            Anchor::Key,
            format!(
                "expected exactly one target ({TARGETS}), found {}",
                found
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        ));
    }
    match found.pop() {
        Some((_, t)) => Ok(t),
        None => Err(invalid(
            path.clone(),
            Anchor::Key,
            format!("expected exactly one target ({TARGETS}), found none"),
        )),
    }
}
