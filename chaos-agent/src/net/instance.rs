//! One program instance: the classifier object loaded once for a network
//! namespace, its maps, and its links. Every network fault in that
//! namespace is a rule in these maps, whichever policy it comes from; a
//! hook (interface, direction) carries one attached program however many
//! rules it has. The bookkeeping is `table.rs`; this file writes its
//! changes into the maps in an order that keeps every packet's decision
//! well-defined:
//! - rules before the keys that point to them, keys before the hook
//!   configuration that makes the classifier look for them, all of it
//!   before a new hook is attached;
//! - a removed rule is made inert (deadline 0) before its keys go, and a
//!   hook is detached only once it has no rules left.

use std::{collections::BTreeMap, net::IpAddr};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues, lpm_trie::Key},
    programs::SchedClassifier,
};
use chaos_common::{
    BurstState, Config, Counters, DIR_INGRESS, DportFilter, FAMILY_V4, FAMILY_V6, GLOBAL_DEBUG,
    GLOBAL_SET_TSTAMP, GUARD_DEFAULT, GUARD_SETS, GuardEntry, GuardNet, HookConf, HookKey,
    HookSlot, MAP_BURST, MAP_CONFIG, MAP_COUNTERS, MAP_DPORT_FILTERS, MAP_GUARD_NETS,
    MAP_GUARD_PORTS, MAP_HOOK_SLOTS, MAP_HOOKS, MAP_PACE, MAP_RULE_INDEX, MAP_RULES,
    PROG_TC_EGRESS, PROG_TC_INGRESS, Pace, Rule, RuleKey, RuleRef,
};
use tracing::warn;

use super::{
    attach::{self, Attached},
    encode::{HookKeyOrd, RuleSpec},
    journal::Journal,
    netns::NetnsGuard,
    table::{Changes, Table},
};
use crate::{
    error::{Error, Result, chain, map_err},
    fault::{Backend, Counts},
    policy::model::{Cidr, Guard},
};

/// The eBPF object, built by build.rs and embedded in the binary.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chaos-ebpf"));

/// The embedded object, for `probe`.
pub fn object() -> &'static [u8] {
    OBJECT
}

/// What every instance is loaded with.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Emit aya-log records from the kernel side.
    pub debug_kernel: bool,
    /// The kernel has `bpf_skb_set_tstamp` (5.18+).
    pub set_tstamp: bool,
    /// The built-in guard: ports and addresses (`GUARD_DEFAULT`).
    pub default_ports: Vec<u16>,
    pub default_nets: Vec<Cidr>,
}

/// A policy's own guard entries, sharing one bit of the guard mask with
/// every policy that has the same entries.
#[derive(Debug)]
struct GuardSet {
    ports: Vec<u16>,
    cidrs: Vec<Cidr>,
    users: usize,
}

pub struct Instance {
    netns: Option<String>,
    ebpf: Ebpf,
    /// aya-log reader when `--debug-kernel` is on; drained by `flush_logs`.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    table: Table,
    links: BTreeMap<HookKeyOrd, (String, Attached)>,
    defaults: (Vec<u16>, Vec<Cidr>),
    /// Guard sets by bit - 1.
    guards: Vec<Option<GuardSet>>,
    /// What `CHAOS_CONFIG` holds.
    config: Config,
}

fn program_name(direction: u32) -> &'static str {
    if direction == DIR_INGRESS {
        PROG_TC_INGRESS
    } else {
        PROG_TC_EGRESS
    }
}

/// A load failure, told apart: no privilege (exit 1, run as root) or a
/// kernel that refuses our programs or maps (exit 3, with its reason).
pub fn load_error(what: &str, detail: &str) -> Error {
    let denied = detail.contains("Operation not permitted") || detail.contains("EPERM");
    // SAFETY: geteuid has no preconditions.
    if denied && unsafe { libc::geteuid() } != 0 {
        return Error::Runtime(format!(
            "{what}: permission denied: chaos-agent needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"
        ));
    }
    let version = aya::util::KernelVersion::current()
        .map(|v| v.to_string())
        .unwrap_or_else(|_| "unknown".into());
    Error::Unsupported(format!(
        "{what} failed on Linux {version}: the kernel refused it ({detail}); `chaos-agent probe` shows what this kernel supports"
    ))
}

fn guard_key(c: &Cidr) -> Key<GuardNet> {
    let mut a = [0u8; 16];
    let family = match c.addr {
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
        32 + u32::from(c.prefix),
        GuardNet {
            family,
            _pad: [0; 3],
            addr: a,
        },
    )
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or_else(|| map_err(name, "missing"))
}

fn array<'a, T: aya::Pod>(ebpf: &'a mut Ebpf, name: &str) -> Result<Array<&'a mut MapData, T>> {
    Array::try_from(map(ebpf, name)?).map_err(|e| map_err(name, e))
}

impl Instance {
    /// Loads the object's maps for `netns` (programs are loaded when a hook
    /// first needs them) and writes the built-in guard and the lease.
    pub fn load(netns: Option<String>, opts: &LoadOptions, lease_ns: u64) -> Result<Instance> {
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_DEBUG, &u8::from(opts.debug_kernel), true)
            .override_global(GLOBAL_SET_TSTAMP, &u8::from(opts.set_tstamp), true)
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
        let mut instance = Instance {
            netns,
            ebpf,
            logger,
            table: Table::default(),
            links: BTreeMap::new(),
            defaults: (opts.default_ports.clone(), opts.default_nets.clone()),
            guards: Vec::new(),
            config: Config {
                lease_ns,
                ..Config::default()
            },
        };
        let (ports, nets) = instance.defaults.clone();
        instance.write_guard(&ports, &nets)?;
        Ok(instance)
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The guard bit for a policy's own entries (0 when it has none),
    /// shared with policies whose entries are the same.
    pub fn acquire_guard(&mut self, guard: &Guard) -> Result<u32> {
        if guard.ports.is_empty() && guard.cidrs.is_empty() {
            return Ok(0);
        }
        let same = |s: &GuardSet| s.ports == guard.ports && s.cidrs == guard.cidrs;
        if let Some(i) = self
            .guards
            .iter()
            .position(|s| s.as_ref().is_some_and(same))
        {
            if let Some(s) = &mut self.guards[i] {
                s.users += 1;
            }
            return Ok(1 << (i + 1));
        }
        let i = match self.guards.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.guards.len() < GUARD_SETS as usize => {
                self.guards.push(None);
                self.guards.len() - 1
            }
            None => {
                return Err(Error::Runtime(format!(
                    "more than {GUARD_SETS} different policy guards in one network namespace; give policies the same guard entries"
                )));
            }
        };
        self.guards[i] = Some(GuardSet {
            ports: guard.ports.clone(),
            cidrs: guard.cidrs.clone(),
            users: 1,
        });
        self.write_guard(&guard.ports, &guard.cidrs)?;
        Ok(1 << (i + 1))
    }

    /// Gives a guard bit back; the last user's entries leave the maps.
    pub fn release_guard(&mut self, bit: u32) {
        if bit == 0 {
            return;
        }
        let i = bit.trailing_zeros() as usize - 1;
        let Some(Some(set)) = self.guards.get_mut(i) else {
            return;
        };
        set.users -= 1;
        if set.users > 0 {
            return;
        }
        let set = self.guards[i].take().expect("checked above");
        if let Err(e) = self.write_guard(&set.ports, &set.cidrs) {
            warn!("guard entries not updated: {e}");
        }
    }

    /// Rewrites the guard entries of these ports and prefixes from every
    /// set that holds them (an entry no set holds any more is cleared).
    fn write_guard(&mut self, ports: &[u16], nets: &[Cidr]) -> Result<()> {
        let kinds_of = |pick: &dyn Fn(&Vec<u16>, &Vec<Cidr>) -> bool| -> u32 {
            let mut kinds = 0;
            if pick(&self.defaults.0, &self.defaults.1) {
                kinds |= GUARD_DEFAULT;
            }
            for (i, s) in self.guards.iter().enumerate() {
                if let Some(s) = s
                    && pick(&s.ports, &s.cidrs)
                {
                    kinds |= 1 << (i + 1);
                }
            }
            kinds
        };
        let port_kinds: Vec<(u16, u32)> = ports
            .iter()
            .map(|p| (*p, kinds_of(&|ports, _| ports.contains(p))))
            .collect();
        let net_kinds: Vec<(Cidr, u32)> = nets
            .iter()
            .map(|c| (*c, kinds_of(&|_, cidrs| cidrs.contains(c))))
            .collect();
        let mut by_port: Array<_, GuardEntry> = array(&mut self.ebpf, MAP_GUARD_PORTS)?;
        for (port, kinds) in port_kinds {
            by_port
                .set(u32::from(port), &GuardEntry { kinds }, 0)
                .map_err(|e| map_err(MAP_GUARD_PORTS, e))?;
        }
        let mut trie: LpmTrie<_, GuardNet, GuardEntry> =
            LpmTrie::try_from(map(&mut self.ebpf, MAP_GUARD_NETS)?)
                .map_err(|e| map_err(MAP_GUARD_NETS, e))?;
        for (cidr, kinds) in net_kinds {
            let key = guard_key(&cidr);
            let done = if kinds == 0 {
                trie.remove(&key)
            } else {
                trie.insert(&key, &GuardEntry { kinds }, 0)
            };
            if let Err(e) = done
                && kinds != 0
            {
                return Err(map_err(MAP_GUARD_NETS, e));
            }
        }
        let any_nets = !self.defaults.1.is_empty()
            || self.guards.iter().flatten().any(|s| !s.cidrs.is_empty());
        self.config.guard_nets = u32::from(any_nets);
        self.write_config()
    }

    fn write_config(&mut self) -> Result<()> {
        write_config(&mut self.ebpf, &self.config)
    }

    /// Renews the lease: the instance's rules may act until `lease_ns`.
    pub fn set_lease(&mut self, lease_ns: u64) -> Result<()> {
        self.config.lease_ns = lease_ns;
        self.write_config()
    }

    /// Adds a rule on `iface` (whose hooks the spec names): fills the maps,
    /// then attaches the hooks that had no rule yet. All or nothing.
    pub fn add_rule(
        &mut self,
        spec: &RuleSpec,
        rule: Rule,
        iface: &str,
        mode: Backend,
        journal: &mut Journal,
    ) -> Result<u32> {
        let (id, changes) = self
            .table
            .add(spec, rule)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let done = self
            .reset_slot(id)
            .and_then(|()| self.write(&changes))
            .and_then(|()| self.attach_new(&changes.attach, iface, mode, journal));
        if let Err(e) = done {
            for left in self.remove_rule(id, journal) {
                warn!("{left}");
            }
            return Err(e);
        }
        Ok(id)
    }

    /// A new rule starts from zero: its counters, its pacing clock and its
    /// burst-loss chain (in state Good).
    fn reset_slot(&mut self, id: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(what, e)| Error::Runtime(format!("{what}: {e}")))?
            .get() as usize;
        let zero = PerCpuValues::try_from(vec![Counters::default(); cpus])
            .map_err(|e| map_err(MAP_COUNTERS, e))?;
        let mut counters: PerCpuArray<_, Counters> =
            PerCpuArray::try_from(map(&mut self.ebpf, MAP_COUNTERS)?)
                .map_err(|e| map_err(MAP_COUNTERS, e))?;
        counters
            .set(id, zero, 0)
            .map_err(|e| map_err(MAP_COUNTERS, e))?;
        let mut pace: Array<_, Pace> = array(&mut self.ebpf, MAP_PACE)?;
        pace.set(id, &Pace::default(), 0)
            .map_err(|e| map_err(MAP_PACE, e))?;
        let mut burst: Array<_, BurstState> = array(&mut self.ebpf, MAP_BURST)?;
        burst
            .set(id, &BurstState::default(), 0)
            .map_err(|e| map_err(MAP_BURST, e))
    }

    /// Rewrites a rule's kernel entry in place (action or priority).
    pub fn set_rule(&mut self, id: u32, rule: Rule) -> Result<()> {
        let changes = self.table.set(id, rule);
        self.write(&changes)
    }

    pub fn rule(&self, id: u32) -> Option<&Rule> {
        self.table.rule(id)
    }

    /// Removes a rule, and detaches the hooks it leaves empty. Returns
    /// what could not be removed.
    pub fn remove_rule(&mut self, id: u32, journal: &mut Journal) -> Vec<String> {
        let changes = self.table.remove(id);
        let mut left = Vec::new();
        if let Err(e) = self.write(&changes) {
            left.push(e.to_string());
        }
        left.extend(self.detach(&changes.detach, journal));
        left
    }

    /// Detaches every hook (the instance is going).
    pub fn detach_all(&mut self, journal: &mut Journal) -> Vec<String> {
        let hooks: Vec<HookKey> = self.links.keys().map(|k| k.key()).collect();
        self.detach(&hooks, journal)
    }

    fn write(&mut self, ch: &Changes) -> Result<()> {
        write_changes(&mut self.ebpf, ch)
    }

    fn attach_new(
        &mut self,
        hooks: &[HookKey],
        iface: &str,
        mode: Backend,
        journal: &mut Journal,
    ) -> Result<()> {
        if hooks.is_empty() {
            return Ok(());
        }
        let _ns = NetnsGuard::enter(self.netns.as_deref())?;
        for hook in hooks {
            let name = program_name(hook.direction);
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| map_err(name, "program missing from the object"))?
                .try_into()
                .map_err(|e| map_err(name, e))?;
            if prog.fd().is_err() {
                prog.load()
                    .map_err(|e| load_error(&format!("loading program {name}"), &chain(&e)))?;
            }
            let attached =
                attach::attach(prog, self.netns.as_deref(), iface, hook.direction, mode)?;
            let ord = HookKeyOrd::of(hook);
            if let Some(record) = &attached.netlink
                && let Err(e) = journal.add_filter(record.clone())
            {
                // Not recorded, so not kept: a crash could leave it behind.
                let _ = attach::detach(attached, self.netns.as_deref(), iface);
                return Err(e);
            }
            self.links.insert(ord, (iface.to_owned(), attached));
        }
        Ok(())
    }

    fn detach(&mut self, hooks: &[HookKey], journal: &mut Journal) -> Vec<String> {
        let mut left = Vec::new();
        if hooks.is_empty() {
            return left;
        }
        let _ns = match NetnsGuard::enter(self.netns.as_deref()) {
            Ok(g) => g,
            Err(e) => {
                // The namespace is gone, and with it its interfaces and
                // filters.
                warn!("revert: {e}; its interfaces went with it");
                for hook in hooks {
                    if let Some((_, a)) = self.links.remove(&HookKeyOrd::of(hook)) {
                        if let Some(r) = &a.netlink {
                            let _ = journal.remove_filter(r);
                        }
                        std::mem::forget(a.link);
                    }
                }
                return left;
            }
        };
        for hook in hooks {
            let Some((iface, a)) = self.links.remove(&HookKeyOrd::of(hook)) else {
                continue;
            };
            let record = a.netlink.clone();
            match attach::detach(a, self.netns.as_deref(), &iface) {
                Ok(()) => {
                    if let Some(r) = &record
                        && let Err(e) = journal.remove_filter(r)
                    {
                        left.push(e.to_string());
                    }
                }
                Err(e) => left.push(e.to_string()),
            }
        }
        left
    }

    /// A rule's counters, summed over CPUs.
    pub fn counters(&self, id: u32) -> Counts {
        let Some(map) = self.ebpf.map(MAP_COUNTERS) else {
            return Counts::default();
        };
        let Ok(array) = PerCpuArray::<_, Counters>::try_from(map) else {
            return Counts::default();
        };
        let Ok(values) = array.get(&id, 0) else {
            return Counts::default();
        };
        let mut sum = Counts::default();
        for c in values.iter() {
            sum += Counts {
                matched: c.matched,
                injected: c.injected,
                guard_passed: c.guard_passed,
            };
        }
        sum
    }

    /// Moves kernel-side log records (aya-log) into the agent's log.
    pub fn flush_logs(&mut self) {
        if let Some(logger) = self.logger.as_mut() {
            logger.flush();
        }
    }

    /// Attached programs, for tests and status: (interface, direction).
    pub fn hooks(&self) -> Vec<(String, u32)> {
        self.links
            .iter()
            .map(|(k, (iface, _))| (iface.clone(), k.1))
            .collect()
    }
}

/// Writes the instance's settings (`CHAOS_CONFIG`).
pub fn write_config(ebpf: &mut Ebpf, config: &Config) -> Result<()> {
    let mut map: Array<_, Config> = array(ebpf, MAP_CONFIG)?;
    map.set(0, config, 0).map_err(|e| map_err(MAP_CONFIG, e))
}

/// Writes a table's changes into the maps of `ebpf`, in the order the
/// module documentation gives.
pub fn write_changes(ebpf: &mut Ebpf, ch: &Changes) -> Result<()> {
    let mut rules: Array<_, Rule> = array(ebpf, MAP_RULES)?;
    for (id, rule) in &ch.rules {
        rules.set(*id, rule, 0).map_err(|e| map_err(MAP_RULES, e))?;
    }
    let mut index: HashMap<_, RuleKey, RuleRef> =
        HashMap::try_from(map(ebpf, MAP_RULE_INDEX)?).map_err(|e| map_err(MAP_RULE_INDEX, e))?;
    for (key, id) in &ch.index_put {
        index
            .insert(key, &RuleRef { rule_id: *id }, 0)
            .map_err(|e| map_err(MAP_RULE_INDEX, e))?;
    }
    for key in &ch.index_del {
        index.remove(key).map_err(|e| map_err(MAP_RULE_INDEX, e))?;
    }
    let mut filters: Array<_, DportFilter> = array(ebpf, MAP_DPORT_FILTERS)?;
    for (slot, filter) in &ch.filters {
        filters
            .set(*slot, filter.as_ref(), 0)
            .map_err(|e| map_err(MAP_DPORT_FILTERS, e))?;
    }
    let mut shared: HashMap<_, HookKey, HookConf> =
        HashMap::try_from(map(ebpf, MAP_HOOKS)?).map_err(|e| map_err(MAP_HOOKS, e))?;
    for (key, conf) in &ch.shared_put {
        shared
            .insert(key, conf, 0)
            .map_err(|e| map_err(MAP_HOOKS, e))?;
    }
    let mut slots: Array<_, HookSlot> = array(ebpf, MAP_HOOK_SLOTS)?;
    for (slot, entry) in &ch.slots_put {
        slots
            .set(*slot, entry, 0)
            .map_err(|e| map_err(MAP_HOOK_SLOTS, e))?;
    }
    for slot in &ch.slots_del {
        slots
            .set(*slot, &HookSlot::default(), 0)
            .map_err(|e| map_err(MAP_HOOK_SLOTS, e))?;
    }
    let mut shared: HashMap<_, HookKey, HookConf> =
        HashMap::try_from(map(ebpf, MAP_HOOKS)?).map_err(|e| map_err(MAP_HOOKS, e))?;
    for key in &ch.shared_del {
        shared.remove(key).map_err(|e| map_err(MAP_HOOKS, e))?;
    }
    Ok(())
}
