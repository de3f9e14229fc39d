//! Seeded random policy files, for testing the policy loader and (with
//! root) applying what it accepts.
//!
//! [`Generator::policy`] writes a `FaultPolicy` YAML text for one
//! interface (and network namespace) given in a [`Ctx`]: a mix of network
//! faults (protocols, port lists and ranges, CIDR lists of both families,
//! directions, every action with valid values), syscall faults (names the
//! agent hooks, errnos, percent, cgroup or comm targets), guards,
//! `startAfter` and an `abortWhen` TCP probe to 127.0.0.1. Some policies
//! sit at the limits of what the kernel side holds, some go past exactly
//! one of them.
//!
//! The generator keeps its own model of those limits (it does not ask the
//! agent), so a test compares two independent views:
//!
//! * at most 65,536 kernel keys per fault: protocols x distinct destination
//!   ports x distinct source ports x (destination, source) prefix pairs of
//!   one family (a missing factor counts once; `any` with ports is TCP and
//!   UDP, `icmp` is ICMP and ICMPv6);
//! * at most 262,144 keys per policy, a fault with direction `both`
//!   counting twice;
//! * at most 8 lookup shapes per interface and direction (a shape: which of
//!   protocol, ports and cgroup the key uses, the family and both prefix
//!   lengths, the cgroup's depth);
//! * destination and source prefixes that share an address family.
//!
//! [`Expect::Valid`] policies keep every limit, also the key count the
//! rule encoder computes today (every destination x source prefix pair,
//! whatever their families), so they can be applied as they are.
//! [`Expect::Invalid`] policies break exactly one and say where
//! ([`Generated::refused_at`]).
//!
//! ```no_run
//! use chaos_tests::policygen::{Ctx, Expect, Generator};
//! let mut generator = Generator::new(42);
//! let ctx = Ctx::new(Some("cht-ns-a"), "veth-a");
//! for _ in 0..10 {
//!     let generated = generator.policy(&ctx);
//!     if generated.expect == Expect::Valid {
//!         // write generated.text to a file and `chaos-agent blast --policy` it
//!     }
//! }
//! ```

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
};

/// Most keys one fault may expand to.
pub const MAX_KEYS_PER_FAULT: u64 = 65_536;
/// Most keys the faults of one policy may expand to in all.
pub const MAX_KEYS_PER_POLICY: u64 = 262_144;
/// Most lookup shapes per interface and direction.
pub const MAX_SHAPES_PER_HOOK: usize = 8;

/// What the generated policies are about.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// The named network namespace (`ip netns`) holding the interface;
    /// `None` for the caller's own namespace.
    pub netns: Option<String>,
    /// The interface every network fault is on.
    pub interface: String,
    /// cgroup v2 paths (under the cgroup2 mount, starting with `/`) that
    /// syscall faults may target and egress faults may match. Empty: syscall
    /// faults target a process name (comm) that nothing runs, and no
    /// network fault selects a cgroup.
    pub cgroups: Vec<String>,
    /// `abortWhen` probes `127.0.0.1:PORT` over TCP; `None`: no `abortWhen`.
    pub probe_port: Option<u16>,
    /// Which kinds of fault a policy holds.
    pub kinds: Kinds,
    /// `spec.duration` of every policy; `None`: chosen at random.
    pub duration: Option<String>,
    /// Whether `spec.startAfter` may appear.
    pub start_after: bool,
}

impl Ctx {
    /// Network and syscall faults, no cgroups, no probe, random durations.
    pub fn new(netns: Option<&str>, interface: &str) -> Self {
        Ctx {
            netns: netns.map(str::to_string),
            interface: interface.to_string(),
            cgroups: Vec::new(),
            probe_port: None,
            kinds: Kinds::Mixed,
            duration: None,
            start_after: true,
        }
    }
}

/// Which kinds of fault a generated policy holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kinds {
    /// Network faults only (what `blast --policy` runs together).
    Network,
    /// Syscall faults only.
    Syscall,
    /// Either kind, or both in one policy (what the daemon runs).
    Mixed,
}

/// What the loader should say of a generated policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Within every limit: accepted.
    Valid,
    /// Past exactly one limit: refused with a message containing this.
    Invalid(&'static str),
}

/// Message fragments of [`Expect::Invalid`], one per limit.
pub const KEYS_PER_FAULT: &str = "one fault may have";
pub const KEYS_PER_POLICY: &str = "one policy may have";
pub const SHAPES_PER_HOOK: &str = "lookup shapes";
pub const NO_COMMON_FAMILY: &str = "matches nothing";
pub const UNKNOWN_SYSCALL: &str = "unknown syscall";

/// One generated policy.
#[derive(Clone, Debug)]
pub struct Generated {
    /// The YAML text.
    pub text: String,
    /// `metadata.name`.
    pub name: String,
    pub expect: Expect,
    /// For [`Expect::Invalid`]: the field path the refusal names, such as
    /// `spec.faults[3].network.match`.
    pub refused_at: Option<String>,
    /// How the policy was built (`random`, `keys-per-fault`, ...), for
    /// messages and for counting what a run covered.
    pub scenario: &'static str,
    /// Network faults in the policy.
    pub network_faults: usize,
    /// Syscall faults in the policy.
    pub syscall_faults: usize,
    /// Kernel keys of the whole policy, as the limits count them.
    pub keys: u64,
}

/// xorshift64*: small, seeded, good enough to pick test inputs.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so 0 and nearby seeds start well apart.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    Egress,
    Ingress,
    Both,
}

impl Dir {
    fn text(self) -> &'static str {
        match self {
            Dir::Egress => "egress",
            Dir::Ingress => "ingress",
            Dir::Both => "both",
        }
    }

    /// The hooks (directions) the fault is attached to.
    fn hooks(self) -> &'static [Dir] {
        match self {
            Dir::Egress => &[Dir::Egress],
            Dir::Ingress => &[Dir::Ingress],
            Dir::Both => &[Dir::Ingress, Dir::Egress],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Any,
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    fn text(self) -> &'static str {
        match self {
            Proto::Any => "any",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }
}

#[derive(Clone, Debug)]
struct Cidr {
    v6: bool,
    prefix: u8,
    /// As written (a bare address for /32 and /128 sometimes).
    text: String,
}

#[derive(Clone, Debug)]
enum Action {
    Loss(String),
    Delay(String, Option<String>),
    Corrupt(String),
    Duplicate(String),
    Bandwidth(String),
}

#[derive(Clone, Debug)]
struct NetFault {
    direction: Option<Dir>,
    /// Whether to write `match:` when every field is empty (`match: {}`).
    empty_match: bool,
    protocol: Option<Proto>,
    dst_ports: Vec<(u16, u16)>,
    src_ports: Vec<(u16, u16)>,
    dst_cidrs: Vec<Cidr>,
    src_cidrs: Vec<Cidr>,
    cgroup: Option<String>,
    action: Action,
}

impl NetFault {
    fn dir(&self) -> Dir {
        self.direction.unwrap_or(Dir::Egress)
    }

    fn has_match(&self) -> bool {
        self.empty_match
            || self.protocol.is_some()
            || !self.dst_ports.is_empty()
            || !self.src_ports.is_empty()
            || !self.dst_cidrs.is_empty()
            || !self.src_cidrs.is_empty()
            || self.cgroup.is_some()
    }

    fn protocols(&self) -> u64 {
        let ports = !self.dst_ports.is_empty() || !self.src_ports.is_empty();
        match self.protocol.unwrap_or(Proto::Any) {
            Proto::Tcp | Proto::Udp => 1,
            Proto::Icmp => 2,
            Proto::Any if ports => 2,
            Proto::Any => 0,
        }
    }

    /// (v6, destination prefix, source prefix) of every pair of one family;
    /// `None` stands for a missing list (any family, length 0).
    fn pairs(&self) -> Vec<(Option<bool>, u8, u8)> {
        let side = |l: &[Cidr]| -> Vec<(Option<bool>, u8)> {
            if l.is_empty() {
                vec![(None, 0)]
            } else {
                l.iter().map(|c| (Some(c.v6), c.prefix)).collect()
            }
        };
        let mut out = Vec::new();
        for (df, dl) in side(&self.dst_cidrs) {
            for (sf, sl) in side(&self.src_cidrs) {
                match (df, sf) {
                    (Some(a), Some(b)) if a != b => {}
                    _ => out.push((df.or(sf), dl, sl)),
                }
            }
        }
        out
    }

    /// Keys per hook, as the limits count them.
    fn keys(&self) -> u64 {
        let pairs = self.pairs().len() as u64;
        if pairs == 0 {
            return 0;
        }
        self.protocols().max(1)
            * distinct(&self.dst_ports).max(1)
            * distinct(&self.src_ports).max(1)
            * pairs
    }

    /// Keys per hook as the rule encoder counts them today: every
    /// destination x source prefix, whatever their families.
    fn encoder_keys(&self) -> u64 {
        self.protocols().max(1)
            * distinct(&self.dst_ports).max(1)
            * distinct(&self.src_ports).max(1)
            * (self.dst_cidrs.len() as u64).max(1)
            * (self.src_cidrs.len() as u64).max(1)
    }

    fn shapes(&self) -> BTreeSet<Shape> {
        let mut fields = 0u8;
        if self.protocols() > 0 {
            fields |= 1;
        }
        if !self.dst_ports.is_empty() {
            fields |= 2;
        }
        if !self.src_ports.is_empty() {
            fields |= 4;
        }
        let level = match &self.cgroup {
            Some(path) => {
                fields |= 8;
                path.split('/').filter(|s| !s.is_empty()).count()
            }
            None => 0,
        };
        self.pairs()
            .into_iter()
            .map(|(v6, d, s)| Shape {
                fields,
                family: match v6 {
                    None => 0,
                    Some(false) => 4,
                    Some(true) => 6,
                },
                dst_prefix: d,
                src_prefix: s,
                level,
            })
            .collect()
    }
}

/// A lookup shape in the generator's own terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Shape {
    fields: u8,
    family: u8,
    dst_prefix: u8,
    src_prefix: u8,
    level: usize,
}

/// Distinct ports in a list of ranges.
fn distinct(ranges: &[(u16, u16)]) -> u64 {
    let mut r: Vec<(u32, u32)> = ranges
        .iter()
        .map(|&(a, b)| (u32::from(a), u32::from(b)))
        .collect();
    r.sort_unstable();
    let (mut total, mut next) = (0u64, 0u32);
    for (a, b) in r {
        let from = a.max(next);
        if from <= b {
            total += u64::from(b - from + 1);
            next = b + 1;
        }
    }
    total
}

#[derive(Clone, Debug)]
struct SysFault {
    names: Vec<String>,
    errno: String,
    percent: Option<String>,
    /// (`cgroup` or `comm`, value).
    target: (&'static str, String),
    max_injections: Option<u64>,
}

#[derive(Clone, Debug)]
enum Fault {
    Net(NetFault),
    Sys(SysFault),
}

/// The policy being built, with the running totals the limits need.
struct Draft {
    faults: Vec<Fault>,
    /// Shapes in use per hook (direction).
    hooks: Vec<(Dir, BTreeSet<Shape>)>,
    keys: u64,
}

impl Draft {
    fn new() -> Self {
        Draft {
            faults: Vec::new(),
            hooks: Vec::new(),
            keys: 0,
        }
    }

    fn shapes_on(&self, hook: Dir) -> BTreeSet<Shape> {
        self.hooks
            .iter()
            .find(|(h, _)| *h == hook)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    /// The most shapes any hook of `f` would have with `f` added.
    fn shapes_with(&self, f: &NetFault) -> usize {
        let new = f.shapes();
        f.dir()
            .hooks()
            .iter()
            .map(|&h| self.shapes_on(h).union(&new).count())
            .max()
            .unwrap_or(0)
    }

    fn policy_keys_with(&self, f: &NetFault) -> u64 {
        self.keys + f.keys() * f.dir().hooks().len() as u64
    }

    /// Adds a network fault and accounts for its keys and shapes.
    fn push_net(&mut self, f: NetFault) -> usize {
        self.keys = self.policy_keys_with(&f);
        let shapes = f.shapes();
        for &h in f.dir().hooks() {
            match self.hooks.iter_mut().find(|(x, _)| *x == h) {
                Some((_, s)) => s.extend(shapes.iter().copied()),
                None => self.hooks.push((h, shapes.clone())),
            }
        }
        self.faults.push(Fault::Net(f));
        self.faults.len() - 1
    }

    fn push_sys(&mut self, f: SysFault) -> usize {
        self.faults.push(Fault::Sys(f));
        self.faults.len() - 1
    }
}

/// Base faults stay well inside the limits, so a scenario can add to them.
const BASE_KEYS: u64 = 100_000;
const BASE_SHAPES: usize = 5;

/// Syscalls the agent has a hook for (kprobe, LSM or cgroup), on every
/// architecture it supports.
const SYSCALLS: &[&str] = &[
    "connect",
    "bind",
    "sendmsg",
    "sendto",
    "sendmmsg",
    "socket",
    "getsockopt",
    "setsockopt",
    "openat",
    "openat2",
    "read",
    "readv",
    "pread64",
    "preadv",
    "preadv2",
    "write",
    "writev",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "recvmsg",
    "recvfrom",
    "recvmmsg",
    "unlinkat",
    "mkdirat",
    "renameat",
    "renameat2",
    "mmap",
    "clone",
    "clone3",
    "execve",
    "execveat",
];

/// Hooked syscalls that only x86_64 has (arm64 has their `*at` forms).
const X86_64_SYSCALLS: &[&str] = &[
    "open", "creat", "unlink", "rmdir", "mkdir", "rename", "fork", "vfork",
];

/// Names that are no syscall, each close to one or carrying a kernel
/// symbol prefix.
const NOT_SYSCALLS: &[&str] = &[
    "conect",
    "sys_connect",
    "__x64_sys_openat",
    "nosuchcall",
    "opennat",
    "readd",
];

const ERRNOS: &[&str] = &[
    "ECONNREFUSED",
    "EIO",
    "eacces",
    "EPERM",
    "ENOSPC",
    "ETIMEDOUT",
    "EAGAIN",
    "5",
    "111",
    "4095",
];

const PERCENTS: &[&str] = &["0", "0.5", "1", "30", "\"30%\"", "50", "99.9", "100"];
const RATES: &[&str] = &[
    "100bit", "500kbit", "1mbit", "1.5mbit", "10gbit", "100bps", "1kbps", "2mbps",
];
const DURATIONS: &[&str] = &["10s", "30s", "1m", "5m", "1h 30m", "250ms"];
const START_AFTERS: &[&str] = &["0s", "1s", "250ms", "5s"];

/// Generates policies from a seed; the same seed gives the same sequence.
#[derive(Clone, Debug)]
pub struct Generator {
    rng: Rng,
    count: u64,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Generator {
            rng: Rng::new(seed),
            count: 0,
        }
    }

    /// The next policy for `ctx`.
    pub fn policy(&mut self, ctx: &Ctx) -> Generated {
        self.count += 1;
        let net_ok = ctx.kinds != Kinds::Syscall;
        let sys_ok = ctx.kinds != Kinds::Network;
        let mut draft = Draft::new();
        self.base(ctx, &mut draft);
        // Weights: a third random, a quarter at a limit, the rest past one.
        let mut scenarios: Vec<(&'static str, u64)> = vec![("random", 35)];
        if net_ok {
            scenarios.extend([
                ("at-keys-per-fault", 8),
                ("at-keys-per-policy", 6),
                ("at-shapes-per-hook", 8),
                ("at-fq-horizon", 3),
                ("keys-per-fault", 10),
                ("keys-per-policy", 8),
                ("shapes-per-hook", 10),
                ("no-common-family", 8),
            ]);
        }
        if sys_ok {
            scenarios.push(("unknown-syscall", 8));
        }
        let total: u64 = scenarios.iter().map(|(_, w)| w).sum();
        let mut roll = self.rng.range(0, total - 1);
        let scenario = scenarios
            .iter()
            .find(|(_, w)| {
                if roll < *w {
                    true
                } else {
                    roll -= w;
                    false
                }
            })
            .map_or("random", |(s, _)| *s);
        let (expect, refused_at) = match scenario {
            "random" => (Expect::Valid, None),
            "at-keys-per-fault" => {
                let f = self.fault_with_keys(ctx, MAX_KEYS_PER_FAULT, &draft);
                self.insert_net(&mut draft, f);
                (Expect::Valid, None)
            }
            "at-keys-per-policy" => {
                self.fill_keys(ctx, &mut draft, MAX_KEYS_PER_POLICY);
                (Expect::Valid, None)
            }
            "at-shapes-per-hook" => {
                self.fill_shapes(ctx, &mut draft, MAX_SHAPES_PER_HOOK);
                (Expect::Valid, None)
            }
            "at-fq-horizon" => {
                let mut f = self.small_fault(ctx);
                f.action = Action::Delay("9s".into(), Some("1s".into()));
                if draft.shapes_with(&f) <= MAX_SHAPES_PER_HOOK
                    && draft.policy_keys_with(&f) <= MAX_KEYS_PER_POLICY
                {
                    draft.push_net(f);
                }
                (Expect::Valid, None)
            }
            "keys-per-fault" => {
                let f = self.fault_past_keys(ctx, &draft);
                let i = self.insert_net(&mut draft, f);
                (
                    Expect::Invalid(KEYS_PER_FAULT),
                    Some(format!("spec.faults[{i}].network.match")),
                )
            }
            "keys-per-policy" => {
                self.fill_keys(ctx, &mut draft, MAX_KEYS_PER_POLICY);
                let f = self.one_more_key(ctx, &draft);
                self.insert_net(&mut draft, f);
                (Expect::Invalid(KEYS_PER_POLICY), Some("spec.faults".into()))
            }
            "shapes-per-hook" => {
                let i = self.fill_shapes(ctx, &mut draft, MAX_SHAPES_PER_HOOK + 1);
                (
                    Expect::Invalid(SHAPES_PER_HOOK),
                    Some(format!("spec.faults[{i}].network.match")),
                )
            }
            "no-common-family" => {
                let mut f = self.small_fault(ctx);
                let v6 = self.rng.chance(50);
                f.dst_cidrs = (0..self.rng.range(1, 3)).map(|_| self.cidr(v6)).collect();
                f.src_cidrs = (0..self.rng.range(1, 3)).map(|_| self.cidr(!v6)).collect();
                let i = self.insert_unchecked(&mut draft, Fault::Net(f));
                (
                    Expect::Invalid(NO_COMMON_FAMILY),
                    Some(format!("spec.faults[{i}].network.match.srcCidrs")),
                )
            }
            "unknown-syscall" => {
                let mut f = self.sys_fault(ctx);
                let j = self.rng.below(f.names.len() + 1);
                let bad = self.rng.pick(NOT_SYSCALLS).to_string();
                f.names.insert(j, bad);
                let i = self.insert_unchecked(&mut draft, Fault::Sys(f));
                (
                    Expect::Invalid(UNKNOWN_SYSCALL),
                    Some(format!("spec.faults[{i}].syscall.names[{j}]")),
                )
            }
            other => unreachable!("scenario {other}"),
        };
        if draft.faults.is_empty() {
            // Every base fault was dropped: one plain fault of an allowed kind.
            if net_ok {
                let f = self.small_fault(ctx);
                draft.push_net(f);
            } else {
                let f = self.sys_fault(ctx);
                draft.push_sys(f);
            }
        }
        debug_assert!(
            expect != Expect::Valid || self.within_limits(&draft),
            "generated a valid policy past a limit"
        );
        let name = format!("gen-{}-{}", self.count, scenario);
        let text = self.render(ctx, &name, &draft);
        let network_faults = draft
            .faults
            .iter()
            .filter(|f| matches!(f, Fault::Net(_)))
            .count();
        Generated {
            text,
            name,
            expect,
            refused_at,
            scenario,
            network_faults,
            syscall_faults: draft.faults.len() - network_faults,
            keys: draft.keys,
        }
    }

    /// Whether a draft keeps every limit (the generator's own check).
    fn within_limits(&self, d: &Draft) -> bool {
        let nets = d.faults.iter().filter_map(|f| match f {
            Fault::Net(n) => Some(n),
            Fault::Sys(_) => None,
        });
        let mut keys = 0;
        for n in nets {
            if n.keys() == 0
                || n.keys() > MAX_KEYS_PER_FAULT
                || n.encoder_keys() > MAX_KEYS_PER_FAULT
            {
                return false;
            }
            keys += n.keys() * n.dir().hooks().len() as u64;
        }
        keys <= MAX_KEYS_PER_POLICY && d.hooks.iter().all(|(_, s)| s.len() <= MAX_SHAPES_PER_HOOK)
    }

    /// A few random faults within [`BASE_KEYS`] and [`BASE_SHAPES`].
    fn base(&mut self, ctx: &Ctx, d: &mut Draft) {
        let n = self.rng.range(1, 6);
        for _ in 0..n {
            let net = match ctx.kinds {
                Kinds::Network => true,
                Kinds::Syscall => false,
                Kinds::Mixed => self.rng.chance(65),
            };
            if !net {
                let f = self.sys_fault(ctx);
                d.push_sys(f);
                continue;
            }
            for _ in 0..10 {
                let f = self.random_fault(ctx);
                if d.policy_keys_with(&f) <= BASE_KEYS && d.shapes_with(&f) <= BASE_SHAPES {
                    d.push_net(f);
                    break;
                }
            }
        }
    }

    /// Puts a network fault at a random place among the faults and counts
    /// its keys and shapes: the totals do not depend on the order, and a
    /// fault refused on its own (too many keys) is refused wherever it is.
    fn insert_net(&mut self, d: &mut Draft, f: NetFault) -> usize {
        d.push_net(f);
        let i = self.rng.below(d.faults.len());
        let f = d.faults.pop().expect("just pushed");
        d.faults.insert(i, f);
        i
    }

    /// Puts a fault that is refused on its own, whatever comes before it,
    /// at a random place; its keys and shapes are not counted (the loader
    /// stops at it).
    fn insert_unchecked(&mut self, d: &mut Draft, f: Fault) -> usize {
        let i = self.rng.below(d.faults.len() + 1);
        d.faults.insert(i, f);
        i
    }

    fn cidr(&mut self, v6: bool) -> Cidr {
        if v6 {
            let prefix = *self.rng.pick(&[8u8, 16, 32, 48, 64, 96, 112, 127, 128]);
            let bits = (u128::from(self.rng.next()) << 64) | u128::from(self.rng.next());
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            let addr = Ipv6Addr::from(bits & mask);
            let text = if prefix == 128 && self.rng.chance(50) {
                format!("\"{addr}\"")
            } else {
                format!("\"{addr}/{prefix}\"")
            };
            Cidr { v6, prefix, text }
        } else {
            let prefix = *self.rng.pick(&[0u8, 8, 12, 16, 20, 24, 28, 30, 32]);
            let bits = self.rng.next() as u32;
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            let addr = Ipv4Addr::from(bits & mask);
            let text = if prefix == 32 && self.rng.chance(50) {
                addr.to_string()
            } else {
                format!("{addr}/{prefix}")
            };
            Cidr { v6, prefix, text }
        }
    }

    fn port_range(&mut self, max_width: u64) -> (u16, u16) {
        let first = self.rng.range(1, 65535 - max_width) as u16;
        let width = if max_width == 0 || self.rng.chance(50) {
            0
        } else {
            self.rng.range(1, max_width)
        };
        (first, first + width as u16)
    }

    fn action(&mut self) -> Action {
        match self.rng.below(5) {
            0 => Action::Loss(self.rng.pick(PERCENTS).to_string()),
            1 => {
                let latency = *self
                    .rng
                    .pick(&["1ms", "20ms", "100ms", "250ms", "1s", "2s"]);
                let jitter = if self.rng.chance(50) {
                    Some(self.rng.pick(&["0s", "1ms", "5ms", "20ms"]).to_string())
                } else {
                    None
                };
                Action::Delay(latency.to_string(), jitter)
            }
            2 => Action::Corrupt(self.rng.pick(PERCENTS).to_string()),
            3 => Action::Duplicate(self.rng.pick(PERCENTS).to_string()),
            _ => Action::Bandwidth(self.rng.pick(RATES).to_string()),
        }
    }

    fn direction(&mut self) -> Option<Dir> {
        *self
            .rng
            .pick(&[None, Some(Dir::Egress), Some(Dir::Ingress), Some(Dir::Both)])
    }

    /// A fault with a small random match (at most about 32,000 keys).
    fn random_fault(&mut self, ctx: &Ctx) -> NetFault {
        let mut f = self.small_fault(ctx);
        let proto = *self.rng.pick(&[
            None,
            Some(Proto::Any),
            Some(Proto::Tcp),
            Some(Proto::Udp),
            Some(Proto::Icmp),
        ]);
        f.protocol = proto;
        if proto != Some(Proto::Icmp) {
            if self.rng.chance(60) {
                f.dst_ports = (0..self.rng.range(1, 3))
                    .map(|_| self.port_range(300))
                    .collect();
            }
            if self.rng.chance(25) {
                f.src_ports = (0..self.rng.range(1, 2))
                    .map(|_| self.port_range(0))
                    .collect();
            }
        }
        // CIDRs: one side, or both sides sharing a family.
        let family = self.rng.below(3); // 0: v4, 1: v6, 2: both
        let side = |rng: &mut Self| -> Vec<Cidr> {
            (0..rng.rng.range(1, 3))
                .map(|i| {
                    let v6 = match family {
                        0 => false,
                        1 => true,
                        _ => i % 2 == 1,
                    };
                    rng.cidr(v6)
                })
                .collect()
        };
        match self.rng.below(4) {
            0 => {}
            1 => f.dst_cidrs = side(self),
            2 => f.src_cidrs = side(self),
            _ => {
                f.dst_cidrs = side(self);
                f.src_cidrs = side(self);
                if family == 2 {
                    // Both sides mixed: make sure they share a family.
                    let first = f.dst_cidrs[0].v6;
                    f.src_cidrs[0] = self.cidr(first);
                }
            }
        }
        f
    }

    /// A fault with no ports or CIDRs: one key, one shape per hook.
    fn small_fault(&mut self, ctx: &Ctx) -> NetFault {
        let direction = self.direction();
        let dir = direction.unwrap_or(Dir::Egress);
        let cgroup = if dir == Dir::Egress && !ctx.cgroups.is_empty() && self.rng.chance(20) {
            Some(self.rng.pick(&ctx.cgroups).clone())
        } else {
            None
        };
        NetFault {
            direction,
            empty_match: self.rng.chance(30),
            protocol: None,
            dst_ports: Vec::new(),
            src_ports: Vec::new(),
            dst_cidrs: Vec::new(),
            src_cidrs: Vec::new(),
            cgroup,
            action: self.action(),
        }
    }

    /// A fault on one hook (egress or ingress) with `protocols` x `ports`
    /// destination ports x `sources` source ports (0: none) x `cidrs`
    /// destination prefixes (one family, one length) keys, and no cgroup.
    fn keyed_fault(
        &mut self,
        ctx: &Ctx,
        protocols: u64,
        ports: u64,
        sources: u64,
        cidrs: u64,
    ) -> NetFault {
        let mut f = self.small_fault(ctx);
        f.cgroup = None;
        f.direction = Some(if self.rng.chance(50) {
            Dir::Egress
        } else {
            Dir::Ingress
        });
        f.protocol = Some(if protocols == 2 {
            Proto::Any
        } else if self.rng.chance(50) {
            Proto::Tcp
        } else {
            Proto::Udp
        });
        // One range, or two that overlap (counted once).
        let first = self.rng.range(1, 65_536 - ports) as u16;
        let last = first + (ports - 1) as u16;
        f.dst_ports = vec![(first, last)];
        if ports > 2 && self.rng.chance(40) {
            f.dst_ports.push((first, first + (ports / 2) as u16));
        }
        f.src_ports = (0..sources)
            .map(|i| {
                let p = 1 + i as u16;
                (p, p)
            })
            .collect();
        let v6 = self.rng.chance(50);
        let prefix = if v6 { 64 } else { 24 };
        f.dst_cidrs = (0..cidrs)
            .map(|i| Cidr {
                v6,
                prefix,
                text: if v6 {
                    format!("\"2001:db8:{i:x}::/{prefix}\"")
                } else {
                    format!("10.{}.{}.0/{prefix}", i / 256, i % 256)
                },
            })
            .collect();
        if cidrs == 1 && self.rng.chance(50) {
            f.dst_cidrs.clear();
        }
        f
    }

    /// A fault of exactly `keys` keys (at most 65,536) that fits next to
    /// the draft (shapes and the policy's keys).
    fn fault_with_keys(&mut self, ctx: &Ctx, keys: u64, d: &Draft) -> NetFault {
        loop {
            let ways: Vec<(u64, u64)> = [(1u64, 1u64), (2, 1), (1, 2), (2, 2), (1, 4), (1, 8)]
                .into_iter()
                .filter(|(p, c)| keys.is_multiple_of(p * c) && keys / (p * c) <= 65_535)
                .collect();
            let (p, c) = *self.rng.pick(&ways);
            let f = self.keyed_fault(ctx, p, keys / (p * c), 0, c);
            debug_assert_eq!(f.keys(), keys);
            if d.shapes_with(&f) <= MAX_SHAPES_PER_HOOK
                && d.policy_keys_with(&f) <= MAX_KEYS_PER_POLICY
            {
                return f;
            }
        }
    }

    /// A fault of more than 65,536 keys (and fewer than the policy has
    /// left, so only the per-fault limit is broken).
    fn fault_past_keys(&mut self, ctx: &Ctx, d: &Draft) -> NetFault {
        let room = (MAX_KEYS_PER_POLICY - d.keys).min(4 * MAX_KEYS_PER_FAULT);
        loop {
            let p = *self.rng.pick(&[1u64, 2]);
            let c = *self.rng.pick(&[1u64, 2, 3, 4, 8]);
            let s = *self.rng.pick(&[0u64, 0, 2, 3]);
            let m = p * c * s.max(1);
            let lo = MAX_KEYS_PER_FAULT / m + 1;
            let hi = (room / m).min(65_535);
            if m == 1 || lo > hi {
                continue;
            }
            let ports = self.rng.range(lo, hi);
            let f = self.keyed_fault(ctx, p, ports, s, c);
            debug_assert!(f.keys() > MAX_KEYS_PER_FAULT);
            if d.shapes_with(&f) <= MAX_SHAPES_PER_HOOK {
                return f;
            }
        }
    }

    /// Adds faults until the policy has exactly `limit` keys.
    fn fill_keys(&mut self, ctx: &Ctx, d: &mut Draft, limit: u64) {
        let mut both_used = false;
        while d.keys < limit {
            let left = limit - d.keys;
            // A fault on both hooks counts twice: use one now and then.
            if !both_used && left >= 2 * MAX_KEYS_PER_FAULT && self.rng.chance(30) {
                let mut f = self.fault_with_keys(ctx, MAX_KEYS_PER_FAULT, d);
                f.direction = Some(Dir::Both);
                if d.shapes_with(&f) <= MAX_SHAPES_PER_HOOK {
                    both_used = true;
                    self.insert_net(d, f);
                    continue;
                }
            }
            let keys = left.min(MAX_KEYS_PER_FAULT);
            let f = self.fault_with_keys(ctx, keys, d);
            self.insert_net(d, f);
        }
    }

    /// A fault of one key that fits the draft's shapes.
    fn one_more_key(&mut self, ctx: &Ctx, d: &Draft) -> NetFault {
        loop {
            let f = self.keyed_fault(ctx, 1, 1, 0, 1);
            if d.shapes_with(&f) <= MAX_SHAPES_PER_HOOK {
                debug_assert_eq!(f.keys(), 1);
                return f;
            }
        }
    }

    /// Adds faults at the end, each with one new shape on one hook, until
    /// that hook has `target` shapes; the index of the last one.
    fn fill_shapes(&mut self, ctx: &Ctx, d: &mut Draft, target: usize) -> usize {
        let hook = if self.rng.chance(50) {
            Dir::Egress
        } else {
            Dir::Ingress
        };
        while d.shapes_on(hook).len() < target {
            let known = d.shapes_on(hook);
            let mut f = self.small_fault(ctx);
            f.direction = Some(hook);
            f.cgroup = None;
            f.empty_match = true;
            if self.rng.chance(50) {
                f.protocol = Some(if self.rng.chance(50) {
                    Proto::Tcp
                } else {
                    Proto::Udp
                });
                f.dst_ports = vec![self.port_range(5)];
            }
            // A prefix length not in use with these fields: a new shape.
            let v6 = self.rng.chance(50);
            let max = if v6 { 128 } else { 32 };
            let start = self.rng.range(1, max);
            let prefix = (0..max)
                .map(|i| ((start + i - 1) % max + 1) as u8)
                .find(|&p| {
                    let mut g = f.clone();
                    g.dst_cidrs = vec![self.prefix_cidr(v6, p)];
                    g.shapes().iter().all(|s| !known.contains(s))
                })
                .expect("a free prefix length");
            f.dst_cidrs = vec![self.prefix_cidr(v6, prefix)];
            debug_assert_eq!(f.shapes().len(), 1);
            d.push_net(f);
        }
        d.faults.len() - 1
    }

    fn prefix_cidr(&self, v6: bool, prefix: u8) -> Cidr {
        if v6 {
            Cidr {
                v6,
                prefix,
                text: format!("\"::/{prefix}\""),
            }
        } else {
            Cidr {
                v6,
                prefix,
                text: format!("0.0.0.0/{prefix}"),
            }
        }
    }

    fn sys_fault(&mut self, ctx: &Ctx) -> SysFault {
        let mut pool: Vec<&str> = SYSCALLS.to_vec();
        if cfg!(target_arch = "x86_64") {
            pool.extend(X86_64_SYSCALLS);
        }
        let mut names = Vec::new();
        for _ in 0..self.rng.range(1, 4) {
            let n = self.rng.pick(&pool).to_string();
            if !names.contains(&n) {
                names.push(n);
            }
        }
        let target = if !ctx.cgroups.is_empty() && self.rng.chance(70) {
            ("cgroup", self.rng.pick(&ctx.cgroups).clone())
        } else {
            // A process name nothing runs.
            ("comm", format!("chaos-gen-{}", self.rng.range(0, 999)))
        };
        SysFault {
            names,
            errno: self.rng.pick(ERRNOS).to_string(),
            percent: self
                .rng
                .chance(60)
                .then(|| self.rng.pick(PERCENTS).to_string()),
            target,
            max_injections: self.rng.chance(40).then(|| self.rng.range(1, 10_000)),
        }
    }

    fn list<T>(&mut self, items: &[T], show: impl Fn(&T) -> String, indent: &str) -> String {
        let shown: Vec<String> = items.iter().map(show).collect();
        if self.rng.chance(60) {
            format!(" [{}]\n", shown.join(", "))
        } else {
            let mut out = String::from("\n");
            for s in shown {
                let _ = writeln!(out, "{indent}- {s}");
            }
            out
        }
    }

    fn ports_text(&mut self, ports: &[(u16, u16)]) -> String {
        let quote = self.rng.chance(50);
        let items: Vec<String> = ports
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else if quote {
                    format!("\"{a}-{b}\"")
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        self.list(&items, Clone::clone, "            ")
    }

    fn render(&mut self, ctx: &Ctx, name: &str, d: &Draft) -> String {
        let mut t = String::new();
        if self.rng.chance(30) {
            t.push_str("# generated by chaos-tests policygen\n");
        }
        let _ = write!(
            t,
            "apiVersion: chaos-agent/v1\nkind: FaultPolicy\nmetadata:\n  name: {name}\nspec:\n"
        );
        let duration = match &ctx.duration {
            Some(d) => d.clone(),
            None => self.rng.pick(DURATIONS).to_string(),
        };
        let _ = writeln!(t, "  duration: {duration}");
        if ctx.start_after && self.rng.chance(30) {
            let _ = writeln!(t, "  startAfter: {}", self.rng.pick(START_AFTERS));
        }
        if let Some(port) = ctx.probe_port.filter(|&p| p > 0)
            && self.rng.chance(40)
        {
            let _ = writeln!(
                t,
                "  abortWhen:\n    probe: {{ tcp: \"127.0.0.1:{port}\" }}"
            );
            if self.rng.chance(50) {
                let _ = writeln!(t, "    interval: {}", self.rng.pick(&["500ms", "1s", "2s"]));
            }
            if self.rng.chance(50) {
                let _ = writeln!(t, "    failures: {}", self.rng.range(1, 5));
            }
        }
        if self.rng.chance(30) {
            t.push_str("  guard:\n");
            if self.rng.chance(70) {
                let ports: Vec<u16> = (0..self.rng.range(1, 3))
                    .map(|_| self.rng.range(1, 65535) as u16)
                    .collect();
                let shown = self.list(&ports, u16::to_string, "      ");
                let _ = write!(t, "    ports:{shown}");
            }
            if self.rng.chance(50) {
                // Not /0: a guard of everything leaves nothing to fault.
                let cidrs: Vec<Cidr> = (0..self.rng.range(1, 2))
                    .map(|_| {
                        loop {
                            let v6 = self.rng.chance(30);
                            let c = self.cidr(v6);
                            if c.prefix >= 8 {
                                break c;
                            }
                        }
                    })
                    .collect();
                let shown = self.list(&cidrs, |c| c.text.clone(), "      ");
                let _ = write!(t, "    cidrs:{shown}");
            }
            // Turning the built-in guard (SSH, metrics) off only inside a
            // test namespace.
            let disable = ctx.netns.is_some() && self.rng.chance(30);

            let _ = writeln!(t, "    disableDefaults: {disable}");
        }
        t.push_str("  faults:\n");
        for (i, f) in d.faults.iter().enumerate() {
            let _ = writeln!(t, "    - name: f{i}");
            match f {
                Fault::Net(n) => self.render_net(&mut t, ctx, n),
                Fault::Sys(s) => self.render_sys(&mut t, s),
            }
        }
        t
    }

    fn render_net(&mut self, t: &mut String, ctx: &Ctx, n: &NetFault) {
        t.push_str("      network:\n");
        let _ = writeln!(t, "        interface: {}", ctx.interface);
        if let Some(ns) = &ctx.netns {
            let _ = writeln!(t, "        netns: {ns}");
        }
        if let Some(d) = n.direction {
            let _ = writeln!(t, "        direction: {}", d.text());
        }
        if n.has_match() {
            let mut m = String::new();
            if let Some(p) = n.protocol {
                let _ = writeln!(m, "          protocol: {}", p.text());
            }
            if !n.dst_ports.is_empty() {
                let shown = self.ports_text(&n.dst_ports);
                let _ = write!(m, "          dstPorts:{shown}");
            }
            if !n.src_ports.is_empty() {
                let shown = self.ports_text(&n.src_ports);
                let _ = write!(m, "          srcPorts:{shown}");
            }
            for (key, list) in [("dstCidrs", &n.dst_cidrs), ("srcCidrs", &n.src_cidrs)] {
                if !list.is_empty() {
                    let shown = self.list(list, |c| c.text.clone(), "            ");
                    let _ = write!(m, "          {key}:{shown}");
                }
            }
            if let Some(c) = &n.cgroup {
                let _ = writeln!(m, "          cgroup: {c}");
            }
            if m.is_empty() {
                t.push_str("        match: {}\n");
            } else {
                t.push_str("        match:\n");
                t.push_str(&m);
            }
        }
        let _ = match &n.action {
            Action::Loss(p) => writeln!(t, "        loss: {{ percent: {p} }}"),
            Action::Corrupt(p) => writeln!(t, "        corrupt: {{ percent: {p} }}"),
            Action::Duplicate(p) => writeln!(t, "        duplicate:\n          percent: {p}"),
            Action::Bandwidth(r) => writeln!(t, "        bandwidth: {{ rate: {r} }}"),
            Action::Delay(l, None) => writeln!(t, "        delay: {{ latency: {l} }}"),
            Action::Delay(l, Some(j)) => {
                writeln!(
                    t,
                    "        delay:\n          latency: {l}\n          jitter: {j}"
                )
            }
        };
    }

    fn render_sys(&mut self, t: &mut String, s: &SysFault) {
        t.push_str("      syscall:\n");
        let names = self.list(&s.names, Clone::clone, "          ");
        let _ = write!(t, "        names:{names}");
        let _ = writeln!(t, "        errno: {}", s.errno);
        if let Some(p) = &s.percent {
            let _ = writeln!(t, "        percent: {p}");
        }
        let _ = writeln!(
            t,
            "        target:\n          {}: {}",
            s.target.0, s.target.1
        );
        if let Some(m) = s.max_injections {
            let _ = writeln!(t, "        maxInjections: {m}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_policies() {
        let ctx = Ctx::new(Some("ns"), "veth0");
        let mut a = Generator::new(7);
        let mut b = Generator::new(7);
        for _ in 0..50 {
            assert_eq!(a.policy(&ctx).text, b.policy(&ctx).text);
        }
        assert_ne!(
            Generator::new(1).policy(&ctx).text,
            Generator::new(2).policy(&ctx).text
        );
    }

    #[test]
    fn the_model_counts_like_the_limits() {
        let f = NetFault {
            direction: None,
            empty_match: false,
            protocol: None,
            dst_ports: vec![(5432, 5432), (6000, 6002), (6001, 6001)],
            src_ports: vec![],
            dst_cidrs: vec![],
            src_cidrs: vec![],
            cgroup: None,
            action: Action::Loss("1".into()),
        };
        // any with ports: TCP and UDP.
        assert_eq!(f.keys(), 2 * 4);
        let mixed = |v6s: &[bool]| -> Vec<Cidr> {
            v6s.iter()
                .map(|&v6| Cidr {
                    v6,
                    prefix: 8,
                    text: String::new(),
                })
                .collect()
        };
        let mut g = f.clone();
        g.dst_cidrs = mixed(&[false, true]);
        g.src_cidrs = mixed(&[true, true, false]);
        assert_eq!(g.pairs().len(), 3);
        assert_eq!(g.keys(), 8 * 3);
        assert_eq!(g.encoder_keys(), 8 * 6);
        g.src_cidrs = mixed(&[true]);
        g.dst_cidrs = mixed(&[false]);
        assert_eq!(g.keys(), 0);
        assert!(g.shapes().is_empty());
    }

    #[test]
    fn scenarios_keep_their_promises() {
        let mut ctx = Ctx::new(Some("ns"), "veth0");
        ctx.cgroups = vec!["/chaos/a".into(), "/chaos/b/c".into()];
        ctx.probe_port = Some(9);
        let mut g = Generator::new(99);
        let mut seen = BTreeSet::new();
        for _ in 0..400 {
            let p = g.policy(&ctx);
            seen.insert(p.scenario);
            assert_eq!(p.expect == Expect::Valid, p.refused_at.is_none(), "{p:?}");
            if p.scenario.starts_with("at-keys-per-policy") {
                assert_eq!(p.keys, MAX_KEYS_PER_POLICY, "{}", p.text);
            }
            if p.scenario == "keys-per-policy" {
                assert_eq!(p.keys, MAX_KEYS_PER_POLICY + 1, "{}", p.text);
            }
        }
        assert!(seen.len() >= 10, "{seen:?}");
    }
}
