//! What one program instance's maps hold, kept in userspace: its rules,
//! every key with the rules that claim it, and the shapes, port filter and
//! slot of every hook. Adding or removing a rule is computed here as a
//! [`Changes`] (the map writes to make, and the hooks to attach or detach);
//! `instance.rs` carries them out in a safe order. Nothing here touches the
//! kernel, so the bookkeeping is unit-tested on its own.
//!
//! Invariants the classifier relies on:
//! - a key's shape index names the same shape for as long as the key
//!   exists: shapes keep their slot on a hook while any key uses them, and
//!   a freed slot in the middle is a hole (`FAMILY_NONE`) until reused;
//! - the index maps a key to the best of the rules that claim it (lowest
//!   priority, then lowest id), so removing that rule hands the key to the
//!   next one instead of losing it;
//! - a hook has a destination-port filter only while every shape on it
//!   matches on the destination port, and the filter holds the port of
//!   every key of the hook.

use std::collections::{BTreeMap, HashMap};

use chaos_common::{
    DPORT_FILTERS, DportFilter, FAMILY_NONE, FIELD_DPORT, HookConf, HookKey, HookSlot,
    MAX_RULE_KEYS, MAX_RULES, MAX_SHAPES, Rule, RuleKey, Shape,
};

use super::encode::{self, EncodeError, HookKeyOrd, RuleSpec};

/// A rule the table cannot take; nothing was changed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TableError {
    #[error("{0}")]
    Encode(#[from] EncodeError),
    #[error(
        "more than {limit} different match shapes on interface index {ifindex} {direction} (counting the faults already in force there); merge faults with similar matches"
    )]
    TooManyShapes {
        ifindex: u32,
        direction: &'static str,
        limit: usize,
    },
    #[error("{keys} kernel keys in one network namespace (limit {limit})")]
    MapFull { keys: usize, limit: u32 },
    #[error("more than {limit} network faults in one network namespace")]
    TooManyRules { limit: u32 },
}

/// The map writes that bring the kernel in line with the table, and the
/// hooks whose programs must be attached or detached.
#[derive(Debug, Default)]
pub struct Changes {
    /// `CHAOS_RULES` entries (a removed rule is written inert, deadline 0).
    pub rules: Vec<(u32, Rule)>,
    /// `CHAOS_RULE_INDEX` entries to insert or overwrite.
    pub index_put: Vec<(RuleKey, u32)>,
    pub index_del: Vec<RuleKey>,
    /// `CHAOS_DPORT_FILTERS` entries, by slot.
    pub filters: Vec<(u32, Box<DportFilter>)>,
    /// `CHAOS_HOOKS` (hooks sharing a slot) and `CHAOS_HOOK_SLOTS`.
    pub shared_put: Vec<(HookKey, HookConf)>,
    pub slots_put: Vec<(u32, HookSlot)>,
    pub shared_del: Vec<HookKey>,
    pub slots_del: Vec<u32>,
    /// Hooks that got their first rule, and hooks that lost their last.
    pub attach: Vec<HookKey>,
    pub detach: Vec<HookKey>,
}

#[derive(Debug)]
struct RuleEntry {
    rule: Rule,
    hooks: Vec<HookKey>,
    /// Every key of the rule, with its shape index on its hook.
    keys: Vec<RuleKey>,
}

#[derive(Debug, Default)]
struct HookEntry {
    /// Shape slots: the shape and how many keys use it.
    shapes: [Option<(Shape, u32)>; MAX_SHAPES],
    /// Rules on this hook.
    rules: u32,
    /// Keys per destination port.
    dports: BTreeMap<u16, u32>,
    /// Slot in `CHAOS_DPORT_FILTERS`.
    filter: Option<u32>,
}

impl HookEntry {
    fn slot_of(&self, shape: &Shape) -> Option<usize> {
        self.shapes
            .iter()
            .position(|s| s.as_ref().is_some_and(|(s, _)| s == shape))
    }

    /// Whether every shape in use matches on the destination port.
    fn filterable(&self) -> bool {
        let mut used = self.shapes.iter().flatten().peekable();
        used.peek().is_some() && used.all(|(s, _)| s.fields & FIELD_DPORT != 0)
    }

    fn conf(&self) -> HookConf {
        let mut conf = HookConf {
            dport_filter: self.filter.map_or(0, |f| f + 1),
            ..HookConf::default()
        };
        let hole = Shape {
            family: FAMILY_NONE,
            ..Shape::default()
        };
        for (i, s) in self.shapes.iter().enumerate() {
            if let Some((shape, _)) = s {
                conf.shapes[i] = *shape;
                conf.shape_count = i as u32 + 1;
            } else {
                conf.shapes[i] = hole;
            }
        }
        // Slots past the last one in use are not looked at.
        for s in &mut conf.shapes[conf.shape_count as usize..] {
            *s = Shape::default();
        }
        conf
    }
}

/// One instance's rules and keys.
#[derive(Debug, Default)]
pub struct Table {
    rules: BTreeMap<u32, RuleEntry>,
    /// Every key in the index, with the rules that claim it.
    owners: HashMap<RuleKey, Vec<u32>>,
    hooks: BTreeMap<HookKeyOrd, HookEntry>,
    filters_used: [bool; DPORT_FILTERS as usize],
    free_ids: Vec<u32>,
    next_id: u32,
    /// The hook tables as last written.
    written_slots: BTreeMap<u32, HookSlot>,
    written_shared: BTreeMap<HookKeyOrd, HookConf>,
}

impl Table {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rule(&self, id: u32) -> Option<&Rule> {
        self.rules.get(&id).map(|e| &e.rule)
    }

    fn best(&self, owners: &[u32]) -> Option<u32> {
        owners.iter().copied().min_by_key(|id| {
            let priority = self.rules.get(id).map_or(u32::MAX, |e| e.rule.priority);
            (priority, *id)
        })
    }

    /// Adds a rule; returns its id and the changes to write.
    pub fn add(&mut self, spec: &RuleSpec, rule: Rule) -> Result<(u32, Changes), TableError> {
        let expanded = encode::expand(spec)?;
        // Check everything before changing anything.
        let mut new_shapes: BTreeMap<HookKeyOrd, Vec<Shape>> = BTreeMap::new();
        for e in &expanded {
            let ord = HookKeyOrd::of(&e.key.hook);
            let present = self
                .hooks
                .get(&ord)
                .is_some_and(|h| h.slot_of(&e.shape).is_some());
            let list = new_shapes.entry(ord).or_default();
            if !present && !list.contains(&e.shape) {
                list.push(e.shape);
            }
        }
        for (ord, shapes) in &new_shapes {
            let free = self.hooks.get(ord).map_or(MAX_SHAPES, |h| {
                h.shapes.iter().filter(|s| s.is_none()).count()
            });
            if shapes.len() > free {
                return Err(TableError::TooManyShapes {
                    ifindex: ord.0,
                    direction: super::attach::direction_name(ord.1),
                    limit: MAX_SHAPES,
                });
            }
        }
        let keys_after = self.owners.len() + expanded.len();
        if keys_after > MAX_RULE_KEYS as usize {
            return Err(TableError::MapFull {
                keys: keys_after,
                limit: MAX_RULE_KEYS,
            });
        }
        let id = match self.free_ids.pop() {
            Some(id) => id,
            None if self.next_id < MAX_RULES => {
                self.next_id += 1;
                self.next_id - 1
            }
            None => return Err(TableError::TooManyRules { limit: MAX_RULES }),
        };

        let mut changes = Changes {
            rules: vec![(id, rule)],
            ..Changes::default()
        };
        self.rules.insert(
            id,
            RuleEntry {
                rule,
                hooks: spec.hooks.clone(),
                keys: Vec::with_capacity(expanded.len()),
            },
        );
        for hook in &spec.hooks {
            let entry = self.hooks.entry(HookKeyOrd::of(hook)).or_default();
            if entry.rules == 0 {
                changes.attach.push(*hook);
            }
            entry.rules += 1;
        }
        let mut keys = Vec::with_capacity(expanded.len());
        for e in expanded {
            let hook = self
                .hooks
                .get_mut(&HookKeyOrd::of(&e.key.hook))
                .expect("every hook of the rule was added above");
            let slot = match hook.slot_of(&e.shape) {
                Some(slot) => slot,
                None => {
                    let slot = hook
                        .shapes
                        .iter()
                        .position(Option::is_none)
                        .expect("free slots were counted above");
                    hook.shapes[slot] = Some((e.shape, 0));
                    slot
                }
            };
            if let Some((_, n)) = &mut hook.shapes[slot] {
                *n += 1;
            }
            *hook.dports.entry(e.key.dport).or_default() += 1;
            let key = RuleKey {
                shape: slot as u8,
                ..e.key
            };
            let owners = self.owners.entry(key).or_default();
            owners.push(id);
            keys.push(key);
        }
        for key in &keys {
            let owners = &self.owners[key];
            if self.best(owners) == Some(id) {
                changes.index_put.push((*key, id));
            }
        }
        self.rules.get_mut(&id).expect("inserted above").keys = keys;
        self.sync_hooks(&spec.hooks, &mut changes);
        Ok((id, changes))
    }

    /// Removes a rule: it is written inert first, its keys go to the next
    /// rule that claims them or out of the index.
    pub fn remove(&mut self, id: u32) -> Changes {
        let mut changes = Changes::default();
        let Some(entry) = self.rules.get(&id) else {
            return changes;
        };
        changes.rules.push((id, Rule::default()));
        let mut handed = Vec::new();
        for key in &entry.keys {
            let owners = self.owners.get(key).map(Vec::as_slice).unwrap_or(&[]);
            let was_best = self.best(owners) == Some(id);
            let rest: Vec<u32> = owners.iter().copied().filter(|&o| o != id).collect();
            handed.push((*key, was_best, rest));
        }
        let entry = self.rules.remove(&id).expect("looked up above");
        for (key, was_best, rest) in handed {
            if rest.is_empty() {
                self.owners.remove(&key);
                changes.index_del.push(key);
            } else {
                if was_best && let Some(next) = self.best(&rest) {
                    changes.index_put.push((key, next));
                }
                self.owners.insert(key, rest);
            }
            if let Some(hook) = self.hooks.get_mut(&HookKeyOrd::of(&key.hook)) {
                let slot = usize::from(key.shape);
                if let Some((_, n)) = &mut hook.shapes[slot] {
                    *n -= 1;
                    if *n == 0 {
                        hook.shapes[slot] = None;
                    }
                }
                if let Some(n) = hook.dports.get_mut(&key.dport) {
                    *n -= 1;
                    if *n == 0 {
                        hook.dports.remove(&key.dport);
                    }
                }
            }
        }
        for hook in &entry.hooks {
            let ord = HookKeyOrd::of(hook);
            let Some(h) = self.hooks.get_mut(&ord) else {
                continue;
            };
            h.rules -= 1;
            if h.rules == 0 {
                if let Some(f) = h.filter {
                    self.filters_used[f as usize] = false;
                }
                self.hooks.remove(&ord);
                changes.detach.push(*hook);
            }
        }
        self.free_ids.push(id);
        self.sync_hooks(&entry.hooks, &mut changes);
        changes
    }

    /// Replaces a rule's kernel entry (a new action or priority), keeping
    /// its keys. Keys it shares with other rules go to the best of them.
    pub fn set(&mut self, id: u32, rule: Rule) -> Changes {
        let mut changes = Changes::default();
        let Some(entry) = self.rules.get_mut(&id) else {
            return changes;
        };
        let reorder = entry.rule.priority != rule.priority;
        entry.rule = rule;
        changes.rules.push((id, rule));
        if reorder {
            let entry = &self.rules[&id];
            for key in &entry.keys {
                let owners = &self.owners[key];
                if owners.len() > 1
                    && let Some(best) = self.best(owners)
                {
                    changes.index_put.push((*key, best));
                }
            }
        }
        changes
    }

    /// Port filters and hook tables after the hooks in `touched` changed.
    fn sync_hooks(&mut self, touched: &[HookKey], changes: &mut Changes) {
        for hook in touched {
            let Some(h) = self.hooks.get_mut(&HookKeyOrd::of(hook)) else {
                continue;
            };
            if !h.filterable() {
                if let Some(f) = h.filter.take() {
                    self.filters_used[f as usize] = false;
                }
                continue;
            }
            if h.filter.is_none()
                && let Some(free) = self.filters_used.iter().position(|u| !u)
            {
                self.filters_used[free] = true;
                h.filter = Some(free as u32);
            }
            if let Some(f) = h.filter {
                let mut filter = Box::<DportFilter>::default();
                for &port in h.dports.keys() {
                    filter.insert(port);
                }
                changes.filters.push((f, filter));
            }
        }
        let confs: BTreeMap<HookKeyOrd, HookConf> =
            self.hooks.iter().map(|(k, h)| (*k, h.conf())).collect();
        let (slots, shared) = encode::hook_tables(&confs);
        let shared: BTreeMap<HookKeyOrd, HookConf> = shared
            .into_iter()
            .map(|(k, c)| (HookKeyOrd::of(&k), c))
            .collect();
        for (k, conf) in &shared {
            if self.written_shared.get(k) != Some(conf) {
                changes.shared_put.push((k.key(), *conf));
            }
        }
        for (slot, entry) in &slots {
            if self.written_slots.get(slot) != Some(entry) {
                changes.slots_put.push((*slot, *entry));
            }
        }
        for k in self.written_shared.keys() {
            if !shared.contains_key(k) {
                changes.shared_del.push(k.key());
            }
        }
        for slot in self.written_slots.keys() {
            if !slots.contains_key(slot) {
                changes.slots_del.push(*slot);
            }
        }
        self.written_slots = slots;
        self.written_shared = shared;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chaos_common::{
        DIR_EGRESS, DIR_INGRESS, FAMILY_ANY, FAMILY_V4, FIELD_PROTO, HOOK_SLOT_SHARED, HOOK_SLOTS,
    };

    use super::*;
    use crate::policy::model::{Cidr, Match, PortRange, Protocol};

    fn m() -> Match {
        Match::any()
    }

    fn udp(ports: &[(u16, u16)]) -> Match {
        Match {
            protocol: Protocol::Udp,
            dst_ports: ports
                .iter()
                .map(|&(first, last)| PortRange { first, last })
                .collect(),
            ..m()
        }
    }

    fn cidr(s: &str) -> Cidr {
        let (a, p) = s.split_once('/').unwrap();
        Cidr {
            addr: a.parse().unwrap(),
            prefix: p.parse().unwrap(),
        }
    }

    const EGRESS7: HookKey = HookKey {
        ifindex: 7,
        direction: DIR_EGRESS,
    };

    fn spec(matcher: Match) -> RuleSpec {
        RuleSpec {
            hooks: vec![EGRESS7],
            matcher,
            cgroup: None,
        }
    }

    fn rule(priority: u32) -> Rule {
        Rule {
            deadline_ns: Duration::from_secs(60).as_nanos() as u64,
            priority,
            ..Rule::default()
        }
    }

    fn index_of(t: &Table, key: &RuleKey) -> Option<u32> {
        t.owners.get(key).and_then(|o| t.best(o))
    }

    #[test]
    fn the_first_rule_attaches_its_hook_and_the_last_detaches_it() {
        let mut t = Table::default();
        let (a, ch) = t.add(&spec(udp(&[(7000, 7000)])), rule(0)).unwrap();
        assert_eq!(ch.attach, vec![EGRESS7]);
        assert_eq!(ch.index_put.len(), 1);
        assert_eq!(ch.slots_put.len(), 1);
        let (b, ch) = t.add(&spec(udp(&[(7001, 7001)])), rule(1)).unwrap();
        assert!(ch.attach.is_empty(), "one classifier per hook");
        // Same shape: still one slot in use.
        assert_eq!(t.hooks[&HookKeyOrd(7, DIR_EGRESS)].conf().shape_count, 1);
        let ch = t.remove(a);
        assert_eq!(ch.rules, vec![(a, Rule::default())], "inert first");
        assert_eq!(ch.index_del.len(), 1);
        assert!(ch.detach.is_empty());
        let ch = t.remove(b);
        assert_eq!(ch.detach, vec![EGRESS7]);
        assert_eq!(ch.slots_del.len(), 1);
        assert!(t.is_empty() && t.owners.is_empty() && t.hooks.is_empty());
    }

    #[test]
    fn a_shared_key_belongs_to_the_best_rule_and_passes_on_when_it_goes() {
        let mut t = Table::default();
        let (late, _) = t.add(&spec(udp(&[(5432, 5432)])), rule(5)).unwrap();
        let (early, ch) = t.add(&spec(udp(&[(5432, 5432)])), rule(1)).unwrap();
        let key = ch.index_put[0].0;
        assert_eq!(ch.index_put, vec![(key, early)]);
        // Reordered: the other one wins now.
        let ch = t.set(early, rule(9));
        assert_eq!(ch.index_put, vec![(key, late)]);
        let ch = t.set(early, rule(1));
        assert_eq!(ch.index_put, vec![(key, early)]);
        // The best goes: the key stays, for the other rule.
        let ch = t.remove(early);
        assert_eq!(ch.index_put, vec![(key, late)]);
        assert!(ch.index_del.is_empty());
        assert_eq!(index_of(&t, &key), Some(late));
    }

    #[test]
    fn shapes_keep_their_slot_and_holes_are_reused() {
        let mut t = Table::default();
        let mut with = |c: &str| {
            let mut x = m();
            x.dst_cidrs = vec![cidr(c)];
            t.add(&spec(x), rule(0)).unwrap().0
        };
        let a = with("10.0.0.0/8");
        let b = with("10.1.0.0/16");
        let _c = with("10.1.2.0/24");
        let hook = HookKeyOrd(7, DIR_EGRESS);
        let slot_of = |t: &Table, prefix| {
            t.hooks[&hook]
                .shapes
                .iter()
                .position(|s| s.is_some_and(|(s, _)| s.dst_prefix == prefix))
        };
        assert_eq!(slot_of(&t, 24), Some(2));
        t.remove(b);
        // /24 keeps slot 2; slot 1 is a hole the classifier skips.
        assert_eq!(slot_of(&t, 24), Some(2));
        let conf = t.hooks[&hook].conf();
        assert_eq!(conf.shape_count, 3);
        assert_eq!(conf.shapes[1].family, FAMILY_NONE);
        t.remove(a);
        let mut x = m();
        x.dst_cidrs = vec![cidr("10.2.0.0/15")];
        t.add(&spec(x), rule(0)).unwrap();
        assert_eq!(slot_of(&t, 15), Some(0), "the first hole is reused");
    }

    #[test]
    fn too_many_shapes_change_nothing() {
        let mut t = Table::default();
        for p in 8..8 + MAX_SHAPES as u8 {
            let mut x = m();
            x.dst_cidrs = vec![cidr(&format!("10.0.0.0/{p}"))];
            t.add(&spec(x), rule(0)).unwrap();
        }
        let mut x = m();
        x.dst_cidrs = vec![cidr("10.0.0.0/30")];
        let before = t.owners.len();
        assert!(matches!(
            t.add(&spec(x), rule(0)),
            Err(TableError::TooManyShapes { ifindex: 7, .. })
        ));
        assert_eq!(t.owners.len(), before);
        assert_eq!(t.rules.len(), MAX_SHAPES);
    }

    #[test]
    fn the_port_filter_follows_the_keys_of_its_hook() {
        let mut t = Table::default();
        let (a, ch) = t.add(&spec(udp(&[(6000, 6002)])), rule(0)).unwrap();
        let (slot, filter) = &ch.filters[0];
        assert!((6000..=6002).all(|p| filter.contains(p)));
        assert!(!filter.contains(5999) && !filter.contains(6003));
        assert_eq!(ch.slots_put[0].1.conf.dport_filter, slot + 1);
        // A rule without ports: any port may match, no filter.
        let (b, ch) = t.add(&spec(m()), rule(1)).unwrap();
        assert!(ch.filters.is_empty());
        assert_eq!(ch.slots_put[0].1.conf.dport_filter, 0);
        t.remove(b);
        let (c, ch) = t.add(&spec(udp(&[(7000, 7000)])), rule(2)).unwrap();
        let (_, filter) = &ch.filters[0];
        assert!(filter.contains(7000) && filter.contains(6001));
        let ch = t.remove(a);
        let (_, filter) = &ch.filters[0];
        assert!(filter.contains(7000) && !filter.contains(6001));
        t.remove(c);
        assert!(t.filters_used.iter().all(|u| !u));
    }

    #[test]
    fn hooks_that_share_a_slot_go_to_the_hash_and_back() {
        let mut t = Table::default();
        let far = HookKey {
            ifindex: 7 + HOOK_SLOTS / 2,
            direction: DIR_EGRESS,
        };
        let (_, _) = t.add(&spec(m()), rule(0)).unwrap();
        let other = RuleSpec {
            hooks: vec![far],
            ..spec(m())
        };
        let (b, ch) = t.add(&other, rule(1)).unwrap();
        assert_eq!(ch.shared_put.len(), 2);
        assert_eq!(ch.slots_put[0].1.ifindex, HOOK_SLOT_SHARED);
        let ch = t.remove(b);
        assert_eq!(ch.slots_put[0].1.ifindex, 7);
        assert_eq!(ch.shared_del.len(), 2);
    }

    #[test]
    fn expansion_is_deterministic_and_deduplicated() {
        let mut x = udp(&[(5432, 5432), (6000, 6002)]);
        x.protocol = Protocol::Any;
        x.dst_cidrs = vec![cidr("10.1.0.0/16"), cidr("10.1.0.0/16")];
        let keys = encode::expand(&spec(x)).unwrap();
        // tcp and udp, 4 ports, one CIDR (listed twice).
        assert_eq!(keys.len(), 2 * 4);
        assert!(keys.iter().all(|e| e.shape.family == FAMILY_V4));
        assert!(
            keys.iter()
                .all(|e| e.shape.fields == FIELD_PROTO | FIELD_DPORT)
        );
        let both = RuleSpec {
            hooks: vec![
                EGRESS7,
                HookKey {
                    ifindex: 7,
                    direction: DIR_INGRESS,
                },
            ],
            ..spec(m())
        };
        let keys = encode::expand(&both).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().all(|e| e.shape.family == FAMILY_ANY));
    }
}
