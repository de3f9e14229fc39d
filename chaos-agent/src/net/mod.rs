//! Network faults: TC classifiers that drop, delay, corrupt, duplicate or
//! shape the packets a rule selects.
//!
//! [`NetHost`] owns everything network faults share in this process: one
//! program instance per network namespace (`instance.rs`; one classifier
//! per hook, whatever the number of faults on it), the fq qdiscs and ifb
//! devices delay needs (`shaping.rs`, reference-counted), the clsact
//! qdiscs it added, and the crash journal (`journal.rs`). A [`NetFault`]
//! is one fault's rule in one instance.
//!
//! `apply` is all or nothing: every interface and cgroup is resolved and
//! every rule expanded before the kernel is touched; if anything fails
//! half-way, the faults of that call already in place are removed again.

pub mod attach;
mod encode;
mod instance;
mod journal;
mod leftovers;
pub mod netns;
pub mod qdisc;
mod rtnl;
mod shaping;
mod table;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use aya::util::KernelVersion;
use chaos_common::{DIR_EGRESS, DIR_INGRESS, GUARD_DEFAULT, HookKey};
use tracing::{info, warn};

pub use encode::{RuleSpec, kernel_rule};
pub use instance::object;
use instance::{Instance, LoadOptions};
use journal::{Journal, Shaping};
use netns::NetnsGuard;
use shaping::{Hold, Shaper};

use crate::{
    cgroup,
    error::{Error, Result},
    fault::{Active, Backend, Counts, Hook, Row, kernel_schedule, monotonic_ns},
    policy::model::{Cidr, Direction, Fault, FaultKind, Mode, NetworkFault, Policy, Schedule},
};

/// How programs are attached to interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// tcx links where the kernel has them (6.6+), netlink clsact otherwise.
    Auto,
    /// tcx links only (fd-owned: a killed agent leaves nothing attached).
    Tcx,
    /// netlink clsact filters (persist until removed; the in-kernel deadline
    /// makes them inert and the next start removes them).
    Netlink,
}

/// tcx links exist from Linux 6.6 on.
pub fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// `bpf_skb_set_tstamp` exists from Linux 5.18 (the program may call it).
pub fn has_set_tstamp() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 18, 0))
}

/// Ingress delay redirects packets into an ifb device with `bpf_redirect`;
/// before Linux 6.4 that helper did not mark the packet as redirected, and
/// ifb drops every packet not so marked.
pub fn has_ingress_delay() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 4, 0))
}

/// How network faults are set up in this process.
#[derive(Clone, Debug)]
pub struct NetOptions {
    pub attach: AttachMode,
    /// Emit aya-log records from the kernel side.
    pub debug_kernel: bool,
    /// Ports added to the built-in guard (the agent's own metrics port).
    pub extra_default_ports: Vec<u16>,
}

/// Everything network faults share in this process.
pub struct NetHost {
    attach: AttachMode,
    load: LoadOptions,
    instances: BTreeMap<Option<String>, Instance>,
    shaper: Shaper,
    journal: Journal,
    /// Namespaces whose leftovers of dead agents were removed.
    cleaned: BTreeSet<Option<String>>,
    /// Kernel features already found present (fq, ifb).
    checked: BTreeSet<&'static str>,
    /// The lease every instance holds (see `Engine::renew`).
    lease_ns: u64,
}

/// The built-in guard's addresses: the peer of `SSH_CONNECTION`, if set.
fn ssh_peer() -> Option<IpAddr> {
    let v = std::env::var("SSH_CONNECTION").ok()?;
    v.split_whitespace().next()?.parse().ok()
}

/// The index of a fault's interface, in its namespace (exit 2 when either
/// is not there).
fn resolve_interface(n: &NetworkFault) -> Result<u32> {
    let _ns = NetnsGuard::enter(n.netns.as_deref())?;
    netns::ifindex(&n.interface).ok_or_else(|| {
        Error::Invalid(format!(
            "interface {} not found{}",
            n.interface,
            n.netns
                .as_deref()
                .map(|s| format!(" in netns {s}"))
                .unwrap_or_default()
        ))
    })
}

fn directions(d: Direction) -> &'static [u32] {
    match d {
        Direction::Egress => &[DIR_EGRESS],
        Direction::Ingress => &[DIR_INGRESS],
        Direction::Both => &[DIR_INGRESS, DIR_EGRESS],
    }
}

/// One network fault in force: a rule in its namespace's instance.
pub struct NetFault {
    rows: Vec<Row>,
    fault: NetworkFault,
    mode: Mode,
    schedule: Option<Schedule>,
    /// Kernel counters when the mode last changed: what is reported is
    /// counted since.
    base: Counts,
    netns: Option<String>,
    rule_id: u32,
    deadline_ns: u64,
    guard_bit: u32,
    /// fq qdiscs and ifb devices the fault relies on; released after its
    /// rule is gone (and its hooks detached, if it was their last).
    holds: Vec<Hold>,
}

/// A network fault resolved, ready to add.
struct Planned<'a> {
    name: &'a str,
    whole: &'a Fault,
    fault: &'a NetworkFault,
    spec: RuleSpec,
}

impl NetHost {
    pub fn new(opts: NetOptions) -> NetHost {
        let default_ports = std::iter::once(22)
            .chain(opts.extra_default_ports.iter().copied())
            .collect();
        let default_nets = ssh_peer()
            .map(|addr| Cidr {
                addr,
                prefix: if addr.is_ipv4() { 32 } else { 128 },
            })
            .into_iter()
            .collect();
        NetHost {
            attach: opts.attach,
            load: LoadOptions {
                debug_kernel: opts.debug_kernel,
                set_tstamp: has_set_tstamp(),
                default_ports,
                default_nets,
            },
            instances: BTreeMap::new(),
            shaper: Shaper::default(),
            journal: Journal::new(),
            cleaned: BTreeSet::new(),
            checked: BTreeSet::new(),
            lease_ns: 0,
        }
    }

    /// Renews the lease of every instance (and of those loaded later).
    pub fn set_lease(&mut self, lease_ns: u64) -> Result<()> {
        self.lease_ns = lease_ns;
        for i in self.instances.values_mut() {
            i.set_lease(lease_ns)?;
        }
        Ok(())
    }

    /// The attach mechanism in use: exit 3 when tcx is asked for and the
    /// kernel has none.
    pub fn mode(&self) -> Result<Backend> {
        match self.attach {
            AttachMode::Netlink => Ok(Backend::Netlink),
            AttachMode::Tcx | AttachMode::Auto if has_tcx() => Ok(Backend::Tcx),
            AttachMode::Tcx => Err(Error::Unsupported(
                "tcx links need Linux 6.6 or later; use --attach netlink".into(),
            )),
            AttachMode::Auto => Ok(Backend::Netlink),
        }
    }

    /// Refuses what cannot be done for `n`, before anything is touched:
    /// an interface or cgroup that is not there (`Invalid`, exit 2), then
    /// what this kernel lacks (`Unsupported`, exit 3, naming the feature).
    /// Each feature is asked of the kernel once.
    pub fn check(&mut self, n: &NetworkFault) -> Result<()> {
        resolve_interface(n)?;
        if let Some(c) = &n.matcher.cgroup {
            cgroup::resolve(c)?;
        }
        self.mode()?;
        self.check_features(n)
    }

    fn check_features(&mut self, n: &NetworkFault) -> Result<()> {
        if !n.action.needs_fq() {
            return Ok(());
        }
        let action = n.action.kind().to_string();
        // A kind the kernel does not know is exit 3; not being able to ask
        // is no statement about the kernel.
        let refused = |e: qdisc::Unavailable, missing: String| match e {
            qdisc::Unavailable::Missing(_) => Error::Unsupported(missing),
            qdisc::Unavailable::NotAsked(why) => Error::Runtime(format!("{action}: {why}")),
        };
        if !self.checked.contains("fq") {
            qdisc::qdisc_available("fq").map_err(|e| {
                let text = qdisc::missing(&action, "fq", &e.to_string());
                refused(e, text)
            })?;
            self.checked.insert("fq");
        }
        if n.direction == Direction::Egress {
            return Ok(());
        }
        if !has_ingress_delay() {
            return Err(Error::Unsupported(format!(
                "{action} on ingress needs Linux 6.4: before it, ifb drops packets a BPF program redirects to it (bpf_redirect did not mark them redirected); use direction: egress on the sending side instead"
            )));
        }
        if !self.checked.contains("ifb") {
            qdisc::ifb_available().map_err(|e| {
                let text = format!(
                    "{action} on ingress needs an ifb device (CONFIG_IFB); the kernel said: {e}"
                );
                refused(e, text)
            })?;
            self.checked.insert("ifb");
        }
        Ok(())
    }

    /// Applies the network faults among `faults` of `policy`, with
    /// priorities from `priority` on, in order. All or nothing.
    pub fn apply(
        &mut self,
        policy: &Policy,
        faults: &[&Fault],
        deadline_ns: u64,
        priority: u32,
    ) -> Result<Vec<NetFault>> {
        let mode = self.mode()?;
        // 1. Resolve everything before touching the kernel.
        let mut planned = Vec::new();
        for f in faults {
            let FaultKind::Network(n) = &f.kind else {
                continue;
            };
            let at = |msg: String| format!("{}: fault {}: {msg}", policy.origin, f.name);
            let ifindex = resolve_interface(n).map_err(|e| match e {
                Error::Invalid(m) => Error::Invalid(at(m)),
                other => other,
            })?;
            let cgroup = n.matcher.cgroup.as_ref().map(cgroup::resolve).transpose()?;
            let spec = RuleSpec {
                hooks: directions(n.direction)
                    .iter()
                    .map(|&direction| HookKey { ifindex, direction })
                    .collect(),
                matcher: n.matcher.clone(),
                cgroup,
            };
            encode::expand(&spec).map_err(|e| Error::Invalid(at(e.to_string())))?;
            planned.push(Planned {
                name: &f.name,
                whole: f,
                fault: n,
                spec,
            });
        }
        // 2. Clear leftovers of dead agents where we are about to attach.
        let fresh: Vec<Option<String>> = planned
            .iter()
            .map(|p| p.fault.netns.clone())
            .filter(|ns| !self.cleaned.contains(ns))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !fresh.is_empty() {
            leftovers::clean(&fresh);
            self.cleaned.extend(fresh);
        }
        // 3. Add one by one; on error take back what this call added.
        let mut added: Vec<NetFault> = Vec::new();
        for (i, p) in planned.iter().enumerate() {
            match self.add(policy, p, deadline_ns, priority + i as u32, mode) {
                Ok(f) => added.push(f),
                Err(e) => {
                    for f in added.into_iter().rev() {
                        for left in f.revert(self) {
                            warn!("{left}");
                        }
                    }
                    let e = match e {
                        Error::Invalid(m) => {
                            Error::Invalid(format!("{}: fault {}: {m}", policy.origin, p.name))
                        }
                        other => other,
                    };
                    return Err(e);
                }
            }
        }
        info!(policy = %policy.name, faults = added.len(), mode = %mode, deadline_ns, "network faults applied");
        Ok(added)
    }

    fn add(
        &mut self,
        policy: &Policy,
        p: &Planned<'_>,
        deadline_ns: u64,
        priority: u32,
        mode: Backend,
    ) -> Result<NetFault> {
        let n = p.fault;
        // A schedule counts from the moment the fault is applied.
        let schedule = kernel_schedule(p.whole, monotonic_ns());
        let mut fault = NetFault {
            rows: vec![Row {
                policy: policy.name.clone(),
                fault: p.name.to_owned(),
                action: n.action.kind(),
                backend: mode,
                hook: Hook::Net {
                    interface: n.interface.clone(),
                    netns: n.netns.clone(),
                    direction: n.direction,
                },
                mode: p.whole.mode,
                schedule: p.whole.schedule.map(|_| schedule),
            }],
            fault: n.clone(),
            mode: p.whole.mode,
            schedule: p.whole.schedule,
            base: Counts::default(),
            netns: n.netns.clone(),
            rule_id: u32::MAX,
            deadline_ns,
            guard_bit: 0,
            holds: Vec::new(),
        };
        // fq (egress) or an ifb with fq (ingress) first: no packet may be
        // stamped before something releases it.
        let mut ifb_ifindex = 0;
        if n.action.needs_fq() {
            for hook in &p.spec.hooks {
                let what = if hook.direction == DIR_EGRESS {
                    Shaping::Fq {
                        netns: n.netns.clone(),
                        iface: n.interface.clone(),
                    }
                } else {
                    Shaping::Ifb {
                        netns: n.netns.clone(),
                        ifb: shaping::ifb_name(hook.ifindex),
                    }
                };
                let hold = self.shaper.acquire(what.clone(), &mut self.journal);
                match hold {
                    Ok(h) => fault.holds.push(h),
                    Err(e) => {
                        fault.release_holds(self);
                        return Err(e);
                    }
                }
                if let Shaping::Ifb { ifb, .. } = &what {
                    let found = NetnsGuard::enter(n.netns.as_deref())
                        .map(|_ns| netns::ifindex(ifb))
                        .ok()
                        .flatten();
                    match found {
                        Some(i) => ifb_ifindex = i,
                        None => {
                            fault.release_holds(self);
                            return Err(Error::Runtime(format!(
                                "{ifb} vanished right after it was made"
                            )));
                        }
                    }
                }
            }
        }
        let added = self.instance(&n.netns).and_then(|instance| {
            let guard_bit = instance.acquire_guard(&policy.guard)?;
            let default = if policy.guard.disable_defaults {
                0
            } else {
                GUARD_DEFAULT
            };
            let mut rule =
                encode::kernel_rule(&n.action, deadline_ns, default | guard_bit, priority);
            rule.ifb_ifindex = ifb_ifindex;
            encode::set_mode(&mut rule, p.whole.mode, schedule);
            Ok((guard_bit, rule))
        });
        let (guard_bit, rule) = match added {
            Ok(x) => x,
            Err(e) => {
                fault.release_holds(self);
                return Err(e);
            }
        };
        fault.guard_bit = guard_bit;
        let instance = self.instances.get_mut(&n.netns).expect("loaded above");
        match instance.add_rule(&p.spec, rule, &n.interface, mode, &mut self.journal) {
            Ok(id) => {
                fault.rule_id = id;
                Ok(fault)
            }
            Err(e) => {
                instance.release_guard(guard_bit);
                fault.release_holds(self);
                self.drop_if_empty(&n.netns.clone());
                Err(e)
            }
        }
    }

    /// The instance of `netns`, loaded on first use.
    fn instance(&mut self, netns: &Option<String>) -> Result<&mut Instance> {
        if !self.instances.contains_key(netns) {
            let instance = Instance::load(netns.clone(), &self.load, self.lease_ns)?;
            self.instances.insert(netns.clone(), instance);
        }
        Ok(self.instances.get_mut(netns).expect("inserted above"))
    }

    /// An instance without rules goes (its maps with it).
    fn drop_if_empty(&mut self, netns: &Option<String>) {
        if let Some(i) = self.instances.get_mut(netns)
            && i.is_empty()
        {
            for left in i.detach_all(&mut self.journal) {
                warn!("{left}");
            }
            self.instances.remove(netns);
        }
    }

    /// Gives `fault` the priority `priority` (lower acts first).
    pub fn set_priority(&mut self, fault: &NetFault, priority: u32) -> Result<()> {
        let Some(instance) = self.instances.get_mut(&fault.netns) else {
            return Ok(());
        };
        let Some(rule) = instance.rule(fault.rule_id).copied() else {
            return Ok(());
        };
        if rule.priority == priority {
            return Ok(());
        }
        instance.set_rule(fault.rule_id, chaos_common::Rule { priority, ..rule })
    }

    /// Moves kernel-side log records (aya-log) into the agent's log.
    pub fn flush_logs(&mut self) {
        for i in self.instances.values_mut() {
            i.flush_logs();
        }
    }

    /// The hooks with an attached classifier, per namespace: (netns,
    /// interface, direction).
    pub fn hooks(&self) -> Vec<(Option<String>, String, u32)> {
        self.instances
            .iter()
            .flat_map(|(ns, i)| {
                i.hooks()
                    .into_iter()
                    .map(move |(iface, d)| (ns.clone(), iface, d))
            })
            .collect()
    }
}

/// Fills the maps of `ebpf` (an object loaded from [`object`]) with one
/// rule and a lease that does not run out, as an instance does, without
/// attaching anything: for tests that run the classifier on synthetic
/// packets (`BPF_PROG_TEST_RUN`). Returns the rule's id.
pub fn fill_one_rule(
    ebpf: &mut aya::Ebpf,
    spec: &RuleSpec,
    rule: chaos_common::Rule,
) -> Result<u32> {
    let (id, changes) = table::Table::default()
        .add(spec, rule)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    instance::write_changes(ebpf, &changes)?;
    instance::write_config(
        ebpf,
        &chaos_common::Config {
            lease_ns: u64::MAX,
            ..chaos_common::Config::default()
        },
    )?;
    Ok(id)
}

impl NetFault {
    fn release_holds(&mut self, host: &mut NetHost) -> Vec<String> {
        let mut left = Vec::new();
        for hold in self.holds.drain(..) {
            if let Err(e) = host.shaper.release(hold, &mut host.journal) {
                left.push(e);
            }
        }
        left
    }
}

impl Active for NetFault {
    type Host = NetHost;

    fn rows(&self) -> &[Row] {
        &self.rows
    }

    fn deadline_ns(&self) -> u64 {
        self.deadline_ns
    }

    fn counters(&self, host: &NetHost) -> Vec<Counts> {
        let c = host
            .instances
            .get(&self.netns)
            .map(|i| i.counters(self.rule_id))
            .unwrap_or_default();
        vec![c.since(self.base)]
    }

    /// A new percentage, burst, latency, jitter or rate, mode or schedule:
    /// one map write. Starting or ending a delay adds or removes qdiscs,
    /// and a new selection other keys: those replace the fault.
    fn set_action(&mut self, host: &mut NetHost, to: &Fault) -> Result<()> {
        let FaultKind::Network(n) = &to.kind else {
            return Err(Error::Invalid("not a network fault".into()));
        };
        let same_place = n.interface == self.fault.interface
            && n.netns == self.fault.netns
            && n.direction == self.fault.direction
            && n.matcher == self.fault.matcher;
        if !same_place || n.action.kind() != self.fault.action.kind() {
            return Err(Error::Invalid(format!(
                "{} to {} on another selection is a new fault",
                self.fault.action.kind(),
                n.action.kind()
            )));
        }
        let instance = host
            .instances
            .get_mut(&self.netns)
            .ok_or_else(|| Error::Runtime("program instance gone".into()))?;
        let old = *instance
            .rule(self.rule_id)
            .ok_or_else(|| Error::Runtime("rule gone".into()))?;
        let mut rule =
            encode::kernel_rule(&n.action, old.deadline_ns, old.guard_mask, old.priority);
        rule.ifb_ifindex = old.ifb_ifindex;
        let schedule = if to.schedule == self.schedule {
            old.schedule
        } else {
            kernel_schedule(to, monotonic_ns())
        };
        encode::set_mode(&mut rule, to.mode, schedule);
        instance.set_rule(self.rule_id, rule)?;
        if to.mode != self.mode {
            self.base = instance.counters(self.rule_id);
        }
        self.fault = n.clone();
        self.mode = to.mode;
        self.schedule = to.schedule;
        for row in &mut self.rows {
            row.mode = to.mode;
            row.schedule = to.schedule.map(|_| schedule);
        }
        Ok(())
    }

    fn revert(mut self, host: &mut NetHost) -> Vec<String> {
        let mut left = Vec::new();
        if let Some(instance) = host.instances.get_mut(&self.netns) {
            left.extend(instance.remove_rule(self.rule_id, &mut host.journal));
            instance.release_guard(self.guard_bit);
        }
        host.drop_if_empty(&self.netns);
        // Only now no program stamps or redirects its packets any more.
        left.extend(self.release_holds(host));
        left
    }
}
