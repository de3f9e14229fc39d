//! Loading, filling the maps, attaching, reading counters and reverting.
//!
//! `apply` is all or nothing: the policy is checked, every interface and
//! cgroup resolved, every rule encoded before anything touches the kernel;
//! if loading or attaching fails half-way, what was attached is detached
//! again before the error is returned.
//!
//! One program instance (one `Ebpf`, its own maps) serves each network
//! namespace, so interface indexes in keys are unambiguous.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{
        SchedClassifier, TcAttachType,
        links::LinkOrder,
        tc::{self, NlOptions, SchedClassifierLink, TcAttach},
    },
    util::KernelVersion,
};
use chaos_common::{
    Counters, DIR_EGRESS, DIR_INGRESS, DportFilter, FAMILY_V4, FAMILY_V6, GLOBAL_DEBUG,
    GLOBAL_GUARD_NETS, GLOBAL_SET_TSTAMP, GUARD_DEFAULT, GUARD_EXTRA, GuardEntry, GuardNet,
    HookKey, HookSlot, MAP_COUNTERS, MAP_DPORT_FILTERS, MAP_GUARD_NETS, MAP_GUARD_PORTS,
    MAP_HOOK_SLOTS, MAP_HOOKS, MAP_RULE_INDEX, MAP_RULES, PROG_TC_EGRESS, PROG_TC_INGRESS, RuleKey,
    RuleRef,
};
use tracing::{info, warn};

use crate::{
    cgroup,
    error::{Error, Result, chain, map_err},
    leftovers::{self, NetlinkRecord, StateFile},
    netns::{self, NetnsGuard},
    policy::model::{Cidr, Direction, FaultKind, NetworkAction, NetworkFault, Policy},
    rules::{self, RuleSpec},
    shaping::{self, Shaping},
};

/// The eBPF object, built by build.rs and embedded in the binary.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chaos-ebpf"));

/// tcx links exist from Linux 6.6 on.
pub fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// The embedded object, for `probe`.
pub fn object() -> &'static [u8] {
    OBJECT
}

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

#[derive(Clone, Debug)]
pub struct Options {
    pub attach: AttachMode,
    /// Emit aya-log records from the kernel side.
    pub debug_kernel: bool,
    /// Ports added to the built-in guard (the agent's own metrics port).
    pub extra_default_ports: Vec<u16>,
}

/// What one applied fault looks like to the user, and where its counters are.
#[derive(Clone, Debug)]
pub struct FaultHandle {
    pub policy: String,
    pub fault: String,
    pub action: &'static str,
    pub interface: String,
    pub netns: Option<String>,
    pub direction: Direction,
    instance: usize,
    rule_id: u32,
    /// On ingress delay or bandwidth: the ifb device the rule sends to.
    ifb_ifindex: u32,
}

/// Summed per-CPU counters of one fault.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounters {
    pub matched: u64,
    pub injected: u64,
    pub guard_passed: u64,
}

struct Instance {
    netns: Option<String>,
    ebpf: Ebpf,
    links: Vec<AttachedLink>,
    /// aya-log reader when `--debug-kernel` is on; drained by `flush_logs`.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

struct AttachedLink {
    iface: String,
    direction: u32,
    link: SchedClassifierLink,
    netlink: Option<NetlinkRecord>,
}

/// A policy in force. Dropping it without `revert` detaches too, but
/// `revert` reports what could not be removed.
pub struct Applied {
    instances: Vec<Instance>,
    pub faults: Vec<FaultHandle>,
    /// CLOCK_MONOTONIC nanoseconds at which the kernel stops acting.
    pub deadline_ns: u64,
    pub mode: &'static str,
    state: Option<StateFile>,
    /// fq qdiscs and ifb devices this policy relies on; released after
    /// the programs are detached.
    holds: Vec<shaping::Hold>,
}

/// CLOCK_MONOTONIC now, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn action_name(a: &NetworkAction) -> &'static str {
    match a {
        NetworkAction::Loss { .. } => "loss",
        NetworkAction::Delay { .. } => "delay",
        NetworkAction::Corrupt { .. } => "corrupt",
        NetworkAction::Duplicate { .. } => "duplicate",
        NetworkAction::Bandwidth { .. } => "bandwidth",
    }
}

fn directions(d: Direction) -> &'static [u32] {
    match d {
        Direction::Egress => &[DIR_EGRESS],
        Direction::Ingress => &[DIR_INGRESS],
        Direction::Both => &[DIR_INGRESS, DIR_EGRESS],
    }
}

pub fn direction_name(d: u32) -> &'static str {
    if d == DIR_INGRESS {
        "ingress"
    } else {
        "egress"
    }
}

/// True for actions that hold packets back (an fq qdisc releases them).
pub fn needs_fq(a: &NetworkAction) -> bool {
    matches!(
        a,
        NetworkAction::Delay { .. } | NetworkAction::Bandwidth { .. }
    )
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

/// Refuses what this build or this kernel cannot do, before anything is
/// touched: exit 2 for what no build does, exit 3 naming the missing kernel
/// feature. The kernel is asked once per feature.
pub fn check_supported(policy: &Policy) -> Result<()> {
    let mut fq_checked = false;
    let mut ifb_checked = false;
    for f in &policy.faults {
        let unsupported = |what: String| {
            Error::Unsupported(format!("{}: fault {}: {what}", policy.origin, f.name))
        };
        match &f.kind {
            FaultKind::Network(n) if needs_fq(&n.action) => {
                let action = action_name(&n.action);
                if !fq_checked {
                    crate::qdisc::qdisc_available("fq")
                        .map_err(|why| unsupported(crate::qdisc::missing(action, "fq", &why)))?;
                    fq_checked = true;
                }
                if n.direction == Direction::Egress {
                    continue;
                }
                if !has_ingress_delay() {
                    return Err(unsupported(format!(
                        "{action} on ingress needs Linux 6.4: before it, ifb drops packets a BPF program redirects to it (bpf_redirect did not mark them redirected); use direction: egress on the sending side instead"
                    )));
                }
                if !ifb_checked {
                    crate::qdisc::ifb_available().map_err(|why| {
                        unsupported(format!(
                            "{action} on ingress needs an ifb device (CONFIG_IFB); the kernel said: {why}"
                        ))
                    })?;
                    ifb_checked = true;
                }
            }
            FaultKind::Network(_) => {}
            FaultKind::Syscall(_) => {
                return Err(Error::Invalid(format!(
                    "{}: fault {}: syscall faults are not implemented yet",
                    policy.origin, f.name
                )));
            }
        }
    }
    Ok(())
}

/// The built-in guard's addresses: the peer of `SSH_CONNECTION`, if set.
fn ssh_peer() -> Option<IpAddr> {
    let v = std::env::var("SSH_CONNECTION").ok()?;
    v.split_whitespace().next()?.parse().ok()
}

fn guard_net(addr: IpAddr, prefix: u8) -> Key<GuardNet> {
    let mut a = [0u8; 16];
    let family = match addr {
        IpAddr::V4(v4) => {
            a[..4].copy_from_slice(&v4.octets());
            FAMILY_V4
        }
        IpAddr::V6(v6) => {
            a.copy_from_slice(&v6.octets());
            FAMILY_V6
        }
    };
    Key::new(
        32 + u32::from(prefix),
        GuardNet {
            family,
            _pad: [0; 3],
            addr: a,
        },
    )
}

/// Guard map contents: (ports, nets), each tagged default and/or extra.
fn guard_entries(policy: &Policy, opts: &Options) -> (BTreeMap<u16, u32>, Vec<(Cidr, u32)>) {
    let mut ports: BTreeMap<u16, u32> = BTreeMap::new();
    let mut nets: Vec<(Cidr, u32)> = Vec::new();
    for p in std::iter::once(22).chain(opts.extra_default_ports.iter().copied()) {
        *ports.entry(p).or_default() |= GUARD_DEFAULT;
    }
    if let Some(peer) = ssh_peer() {
        let prefix = if peer.is_ipv4() { 32 } else { 128 };
        nets.push((Cidr { addr: peer, prefix }, GUARD_DEFAULT));
    }
    for &p in &policy.guard.ports {
        *ports.entry(p).or_default() |= GUARD_EXTRA;
    }
    for c in &policy.guard.cidrs {
        nets.push((*c, GUARD_EXTRA));
    }
    (ports, nets)
}

/// A network fault with everything resolved, grouped by namespace.
struct Planned<'a> {
    fault_name: &'a str,
    fault: &'a NetworkFault,
    hooks: Vec<HookKey>,
    cgroup: Option<rules::ResolvedCgroup>,
}

pub fn apply(policy: &Policy, opts: &Options) -> Result<Applied> {
    check_supported(policy)?;
    let mode = match opts.attach {
        AttachMode::Netlink => "netlink",
        AttachMode::Tcx | AttachMode::Auto if has_tcx() => "tcx",
        AttachMode::Tcx => {
            return Err(Error::Unsupported(
                "tcx links need Linux 6.6 or later; use --attach netlink".into(),
            ));
        }
        AttachMode::Auto => "netlink",
    };

    // 1. Resolve everything, per namespace, before touching the kernel.
    let mut by_netns: BTreeMap<Option<String>, Vec<Planned<'_>>> = BTreeMap::new();
    for f in &policy.faults {
        let FaultKind::Network(n) = &f.kind else {
            continue;
        };
        let ifindex = {
            let _ns = NetnsGuard::enter(n.netns.as_deref())?;
            netns::ifindex(&n.interface).ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: fault {}: interface {} not found{}",
                    policy.origin,
                    f.name,
                    n.interface,
                    n.netns
                        .as_deref()
                        .map(|s| format!(" in netns {s}"))
                        .unwrap_or_default()
                ))
            })?
        };
        let cgroup = n.matcher.cgroup.as_ref().map(cgroup::resolve).transpose()?;
        let hooks = directions(n.direction)
            .iter()
            .map(|&direction| HookKey { ifindex, direction })
            .collect();
        by_netns.entry(n.netns.clone()).or_default().push(Planned {
            fault_name: &f.name,
            fault: n,
            hooks,
            cgroup,
        });
    }
    if by_netns.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no network faults to apply",
            policy.origin
        )));
    }

    let deadline_ns = monotonic_ns() + policy.duration.as_nanos() as u64;
    let (guard_ports, guard_nets) = guard_entries(policy, opts);
    let mut faults = Vec::new();
    let mut encoded = Vec::new();
    for (i, (ns, planned)) in by_netns.iter().enumerate() {
        let mut specs = Vec::new();
        for (id, p) in planned.iter().enumerate() {
            let rule =
                rules::kernel_rule(&p.fault.action, deadline_ns, !policy.guard.disable_defaults);
            specs.push(RuleSpec {
                id: id as u32,
                hooks: p.hooks.clone(),
                matcher: &p.fault.matcher,
                cgroup: p.cgroup,
                rule,
            });
            faults.push(FaultHandle {
                policy: policy.name.clone(),
                fault: p.fault_name.to_owned(),
                action: action_name(&p.fault.action),
                interface: p.fault.interface.clone(),
                netns: ns.clone(),
                direction: p.fault.direction,
                instance: i,
                rule_id: id as u32,
                ifb_ifindex: 0,
            });
        }
        let enc =
            rules::encode(&specs).map_err(|e| Error::Invalid(format!("{}: {e}", policy.origin)))?;
        let first = faults.len() - planned.len();
        encoded.push((ns.clone(), planned, enc, first));
    }

    // 2. Clear leftovers of crashed runs where we are about to attach.
    let namespaces: Vec<Option<String>> = by_netns.keys().cloned().collect();
    leftovers::clean(&namespaces);

    // 3. Load, fill, attach. On any error, `applied` drops and detaches.
    let mut applied = Applied {
        instances: Vec::new(),
        faults,
        deadline_ns,
        mode,
        state: None,
        holds: Vec::new(),
    };
    if mode == "netlink" {
        applied.state = Some(StateFile::create()?);
    }
    for (ns, planned, mut enc, first) in encoded {
        prepare_shaping(&mut applied, ns.as_ref(), planned, &mut enc, first)?;
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_DEBUG, &u8::from(opts.debug_kernel), true)
            .override_global(GLOBAL_GUARD_NETS, &u8::from(!guard_nets.is_empty()), true)
            .override_global(GLOBAL_SET_TSTAMP, &u8::from(has_set_tstamp()), true)
            .load(OBJECT)
            .map_err(|e| load_error("creating the maps", &chain(&e)))?;
        let logger = if opts.debug_kernel {
            match aya_log::EbpfLogger::init(&mut ebpf) {
                Ok(l) => Some(l),
                Err(e) => {
                    warn!("kernel-side logging unavailable: {e}");
                    None
                }
            }
        } else {
            None
        };
        fill_maps(&mut ebpf, &enc, &guard_ports, &guard_nets)?;
        applied.instances.push(Instance {
            netns: ns.clone(),
            ebpf,
            links: Vec::new(),
            logger,
        });
        let instance = applied.instances.last_mut().expect("just pushed");
        let mut hooks: Vec<(String, u32)> = planned
            .iter()
            .flat_map(|p| {
                directions(p.fault.direction)
                    .iter()
                    .map(|&d| (p.fault.interface.clone(), d))
            })
            .collect();
        hooks.sort();
        hooks.dedup();
        let _ns = NetnsGuard::enter(ns.as_deref())?;
        for (iface, direction) in hooks {
            attach_one(instance, &iface, direction, mode, applied.state.as_mut())?;
        }
    }
    info!(
        policy = %policy.name,
        faults = applied.faults.len(),
        mode,
        deadline_ns,
        "applied"
    );
    Ok(applied)
}

/// Installs fq (egress) or an ifb with fq (ingress) for every delay and
/// bandwidth fault of one namespace, and points ingress rules at their
/// ifb. Runs before the programs are attached, so no packet is stamped
/// before something releases it.
fn prepare_shaping(
    applied: &mut Applied,
    ns: Option<&String>,
    planned: &[Planned<'_>],
    enc: &mut rules::Encoded,
    first: usize,
) -> Result<()> {
    for (id, p) in planned.iter().enumerate() {
        if !needs_fq(&p.fault.action) {
            continue;
        }
        for hook in &p.hooks {
            let what = if hook.direction == DIR_EGRESS {
                Shaping::Fq {
                    netns: ns.cloned(),
                    iface: p.fault.interface.clone(),
                }
            } else {
                Shaping::Ifb {
                    netns: ns.cloned(),
                    ifb: shaping::ifb_name(hook.ifindex),
                }
            };
            applied.holds.push(shaping::acquire(what.clone())?);
            let Shaping::Ifb { ifb, .. } = what else {
                continue;
            };
            let ifindex = {
                let _ns = NetnsGuard::enter(ns.map(String::as_str))?;
                netns::ifindex(&ifb)
            }
            .ok_or_else(|| Error::Runtime(format!("{ifb} vanished right after it was made")))?;
            for (rule_id, rule) in &mut enc.rules {
                if *rule_id == id as u32 {
                    rule.ifb_ifindex = ifindex;
                }
            }
            applied.faults[first + id].ifb_ifindex = ifindex;
        }
    }
    Ok(())
}

/// A load failure, told apart: no privilege (exit 1, run as root) or a
/// kernel that refuses our programs or maps (exit 3, with its reason).
fn load_error(what: &str, detail: &str) -> Error {
    let denied = detail.contains("Operation not permitted") || detail.contains("EPERM");
    // SAFETY: geteuid has no preconditions.
    if denied && unsafe { libc::geteuid() } != 0 {
        return Error::Runtime(format!(
            "{what}: permission denied: chaos-agent needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"
        ));
    }
    let version = KernelVersion::current()
        .map(|v| v.to_string())
        .unwrap_or_else(|_| "unknown".into());
    Error::Unsupported(format!(
        "{what} failed on Linux {version}: the kernel refused it ({detail}); `chaos-agent probe` shows what this kernel supports"
    ))
}

fn fill_maps(
    ebpf: &mut Ebpf,
    enc: &rules::Encoded,
    guard_ports: &BTreeMap<u16, u32>,
    guard_nets: &[(Cidr, u32)],
) -> Result<()> {
    {
        let mut ports: Array<_, GuardEntry> = Array::try_from(
            ebpf.map_mut(MAP_GUARD_PORTS)
                .ok_or_else(|| map_err(MAP_GUARD_PORTS, "missing"))?,
        )
        .map_err(|e| map_err(MAP_GUARD_PORTS, e))?;
        for (&port, &kinds) in guard_ports {
            ports
                .set(u32::from(port), &GuardEntry { kinds }, 0)
                .map_err(|e| map_err(MAP_GUARD_PORTS, e))?;
        }
    }
    {
        let mut nets: LpmTrie<_, GuardNet, GuardEntry> = LpmTrie::try_from(
            ebpf.map_mut(MAP_GUARD_NETS)
                .ok_or_else(|| map_err(MAP_GUARD_NETS, "missing"))?,
        )
        .map_err(|e| map_err(MAP_GUARD_NETS, e))?;
        for (cidr, kinds) in guard_nets {
            let key = guard_net(cidr.addr, cidr.prefix);
            let kinds = nets.get(&key, 0).map(|e| e.kinds).unwrap_or(0) | kinds;
            nets.insert(&key, &GuardEntry { kinds }, 0)
                .map_err(|e| map_err(MAP_GUARD_NETS, e))?;
        }
    }
    {
        let mut rules_map: Array<_, chaos_common::Rule> = Array::try_from(
            ebpf.map_mut(MAP_RULES)
                .ok_or_else(|| map_err(MAP_RULES, "missing"))?,
        )
        .map_err(|e| map_err(MAP_RULES, e))?;
        for (id, rule) in &enc.rules {
            rules_map
                .set(*id, rule, 0)
                .map_err(|e| map_err(MAP_RULES, e))?;
        }
    }
    {
        let mut index: HashMap<_, RuleKey, RuleRef> = HashMap::try_from(
            ebpf.map_mut(MAP_RULE_INDEX)
                .ok_or_else(|| map_err(MAP_RULE_INDEX, "missing"))?,
        )
        .map_err(|e| map_err(MAP_RULE_INDEX, e))?;
        for (key, value) in &enc.keys {
            index
                .insert(key, value, 0)
                .map_err(|e| map_err(MAP_RULE_INDEX, e))?;
        }
    }
    fill_hooks(ebpf, enc)
}

/// Writes the hooks' shapes, last: until a hook has its entry, the program
/// passes everything. Hooks that share a slot go into `CHAOS_HOOKS` before
/// the slot that sends the program there.
pub fn fill_hooks(ebpf: &mut Ebpf, enc: &rules::Encoded) -> Result<()> {
    let mut filters: Array<_, DportFilter> = Array::try_from(
        ebpf.map_mut(MAP_DPORT_FILTERS)
            .ok_or_else(|| map_err(MAP_DPORT_FILTERS, "missing"))?,
    )
    .map_err(|e| map_err(MAP_DPORT_FILTERS, e))?;
    for (index, filter) in (0u32..).zip(&enc.dport_filters) {
        filters
            .set(index, filter, 0)
            .map_err(|e| map_err(MAP_DPORT_FILTERS, e))?;
    }
    let (slots, shared) = enc.hook_tables();
    let mut hooks: HashMap<_, HookKey, chaos_common::HookConf> = HashMap::try_from(
        ebpf.map_mut(MAP_HOOKS)
            .ok_or_else(|| map_err(MAP_HOOKS, "missing"))?,
    )
    .map_err(|e| map_err(MAP_HOOKS, e))?;
    for (key, conf) in &shared {
        hooks
            .insert(key, conf, 0)
            .map_err(|e| map_err(MAP_HOOKS, e))?;
    }
    let mut table: Array<_, HookSlot> = Array::try_from(
        ebpf.map_mut(MAP_HOOK_SLOTS)
            .ok_or_else(|| map_err(MAP_HOOK_SLOTS, "missing"))?,
    )
    .map_err(|e| map_err(MAP_HOOK_SLOTS, e))?;
    for (slot, entry) in &slots {
        table
            .set(*slot, entry, 0)
            .map_err(|e| map_err(MAP_HOOK_SLOTS, e))?;
    }
    Ok(())
}

fn program_name(direction: u32) -> &'static str {
    if direction == DIR_INGRESS {
        PROG_TC_INGRESS
    } else {
        PROG_TC_EGRESS
    }
}

fn attach_type(direction: u32) -> TcAttachType {
    if direction == DIR_INGRESS {
        TcAttachType::Ingress
    } else {
        TcAttachType::Egress
    }
}

/// Attaches one program in the current thread's namespace.
fn attach_one(
    instance: &mut Instance,
    iface: &str,
    direction: u32,
    mode: &'static str,
    state: Option<&mut StateFile>,
) -> Result<()> {
    let name = program_name(direction);
    let prog: &mut SchedClassifier = instance
        .ebpf
        .program_mut(name)
        .ok_or_else(|| map_err(name, "program missing from the object"))?
        .try_into()
        .map_err(|e| map_err(name, e))?;
    if prog.fd().is_err() {
        prog.load()
            .map_err(|e| load_error(&format!("loading program {name}"), &chain(&e)))?;
    }
    let iface_c = std::ffi::CString::new(iface)
        .map_err(|_| Error::Invalid(format!("interface {iface:?}")))?;
    let where_ = format!("{iface} {}", direction_name(direction));
    let (link, netlink) = if mode == "tcx" {
        let id = prog
            .attach(
                iface_c.as_c_str(),
                TcAttach::Tcx {
                    attach_type: attach_type(direction),
                    order: LinkOrder::default(),
                },
            )
            .map_err(|e| Error::Runtime(format!("tcx attach on {where_} failed: {e}")))?;
        (prog.take_link(id).map_err(|e| map_err(&where_, e))?, None)
    } else {
        let key = (instance.netns.clone(), iface.to_owned());
        let created_clsact = match tc::qdisc_add_clsact(iface_c.as_c_str()) {
            Ok(()) => {
                our_clsacts().insert(key);
                true
            }
            // Made by this process for another policy (the daemon): still
            // ours to remove once the last of our filters is gone.
            Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {
                our_clsacts().contains(&key)
            }
            Err(e) => {
                return Err(Error::Runtime(format!(
                    "adding the clsact qdisc on {iface} failed: {e}"
                )));
            }
        };
        let id = prog
            .attach(
                iface_c.as_c_str(),
                TcAttach::Netlink {
                    parent: attach_type(direction).into(),
                    options: NlOptions::default(),
                },
            )
            .map_err(|e| Error::Runtime(format!("netlink attach on {where_} failed: {e}")))?;
        let link = prog.take_link(id).map_err(|e| map_err(&where_, e))?;
        let record = NetlinkRecord {
            netns: instance.netns.clone(),
            iface: iface.to_owned(),
            direction,
            priority: link.priority().map_err(|e| map_err(&where_, e))?,
            handle: u32::from(link.handle().map_err(|e| map_err(&where_, e))?),
            created_clsact,
        };
        if let Some(state) = state {
            state.add(record.clone())?;
        }
        (link, Some(record))
    };
    instance.links.push(AttachedLink {
        iface: iface.to_owned(),
        direction,
        link,
        netlink,
    });
    Ok(())
}

impl Applied {
    /// Current counters of every fault, in `faults` order.
    pub fn counters(&self) -> Vec<FaultCounters> {
        self.faults
            .iter()
            .map(|f| {
                let Some(instance) = self.instances.get(f.instance) else {
                    return FaultCounters::default();
                };
                let Some(map) = instance.ebpf.map(MAP_COUNTERS) else {
                    return FaultCounters::default();
                };
                let Ok(array) = PerCpuArray::<_, Counters>::try_from(map) else {
                    return FaultCounters::default();
                };
                let Ok(values) = array.get(&f.rule_id, 0) else {
                    return FaultCounters::default();
                };
                values
                    .iter()
                    .fold(FaultCounters::default(), |acc, c| FaultCounters {
                        matched: acc.matched + c.matched,
                        injected: acc.injected + c.injected,
                        guard_passed: acc.guard_passed + c.guard_passed,
                    })
            })
            .collect()
    }

    /// Replaces the action of every fault of this `Applied` in place (same
    /// match, same hooks, same deadline): one map write per rule, nothing
    /// reloaded or re-attached, counters kept. The daemon uses it when an
    /// edit changes only a fault's action, so the change is in force in
    /// microseconds rather than the tens of milliseconds a reload takes.
    pub fn set_action(&mut self, action: &NetworkAction, default_guard: bool) -> Result<()> {
        let mut rule = rules::kernel_rule(action, self.deadline_ns, default_guard);
        for f in &mut self.faults {
            // Starting or ending a delay adds or removes qdiscs: that is a
            // reload, not a map write.
            let was_held = matches!(f.action, "delay" | "bandwidth");
            if was_held != needs_fq(action) {
                return Err(Error::Invalid(format!(
                    "{} to {} changes the qdiscs in use",
                    f.action,
                    action_name(action)
                )));
            }
            rule.ifb_ifindex = f.ifb_ifindex;
            let instance = self
                .instances
                .get_mut(f.instance)
                .ok_or_else(|| map_err(MAP_RULES, "instance gone"))?;
            let mut rules_map: Array<_, chaos_common::Rule> = Array::try_from(
                instance
                    .ebpf
                    .map_mut(MAP_RULES)
                    .ok_or_else(|| map_err(MAP_RULES, "missing"))?,
            )
            .map_err(|e| map_err(MAP_RULES, e))?;
            rules_map
                .set(f.rule_id, &rule, 0)
                .map_err(|e| map_err(MAP_RULES, e))?;
            f.action = action_name(action);
        }
        Ok(())
    }

    /// Moves kernel-side log records (aya-log) into the agent's log.
    pub fn flush_logs(&mut self) {
        for instance in &mut self.instances {
            if let Some(logger) = instance.logger.as_mut() {
                logger.flush();
            }
        }
    }

    /// Time until the kernel deadline.
    pub fn remaining(&self) -> Duration {
        Duration::from_nanos(self.deadline_ns.saturating_sub(monotonic_ns()))
    }

    /// Detaches everything. Returns what could not be removed.
    pub fn revert(mut self) -> Vec<String> {
        self.revert_all()
    }

    /// Detaches every instance; the netlink state file goes only when
    /// nothing was left, so the next start still finds what was.
    fn revert_all(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        for instance in std::mem::take(&mut self.instances) {
            failures.extend(revert_instance(instance));
        }
        // Only now no program stamps or redirects packets any more.
        for hold in std::mem::take(&mut self.holds) {
            if let Err(e) = shaping::release(hold) {
                failures.push(e);
            }
        }
        if let Some(state) = self.state.take()
            && failures.is_empty()
        {
            state.remove();
        }
        failures
    }
}

/// clsact qdiscs this process added (netns, interface), whichever policy
/// added them: the daemon's policies come and go independently, and the
/// clsact goes with the last of our filters on it.
fn our_clsacts()
-> std::sync::MutexGuard<'static, std::collections::BTreeSet<(Option<String>, String)>> {
    static SET: std::sync::Mutex<std::collections::BTreeSet<(Option<String>, String)>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    SET.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The error path of `apply` (and any early exit) reverts like `revert`.
impl Drop for Applied {
    fn drop(&mut self) {
        for f in self.revert_all() {
            warn!("{f}");
        }
    }
}

fn revert_instance(mut instance: Instance) -> Vec<String> {
    let mut failures = Vec::new();
    let ns = match NetnsGuard::enter(instance.netns.as_deref()) {
        Ok(g) => g,
        Err(e) => {
            // The namespace is gone, and with it its interfaces and filters.
            warn!("revert: {e}; its interfaces went with it");
            std::mem::forget(instance.links);
            return failures;
        }
    };
    let mut our_clsacts = Vec::new();
    for l in instance.links.drain(..) {
        let what = format!("{} {}", l.iface, direction_name(l.direction));
        // Netlink links are detached in the namespace they live in: we are
        // in it now. tcx links just close their fd.
        if let Err(e) = aya::programs::links::Link::detach(l.link)
            && netns::ifindex(&l.iface).is_some()
        {
            failures.push(format!("could not detach from {what}: {e}"));
        }
        if l.netlink.is_some_and(|r| r.created_clsact) {
            our_clsacts.push(l.iface);
        }
    }
    // Only once both directions are gone: a clsact we added goes too, when
    // no filter is left on it (another policy of ours may still use it).
    for iface in our_clsacts {
        if leftovers::remove_clsact_if_empty(&iface) {
            self::our_clsacts().remove(&(instance.netns.clone(), iface));
        }
    }
    drop(ns);
    failures
}
