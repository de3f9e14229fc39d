//! The validated policy model: what the rest of the agent works with. Every
//! value here has been checked; nothing downstream re-validates.

use std::{net::IpAddr, time::Duration};

/// A validated policy file (or a blast built from flags).
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// `metadata.name`.
    pub name: String,
    /// Where it came from, for messages: a file path or `<flags>`.
    pub origin: String,
    /// `spec.duration`: faults expire in the kernel at start + duration.
    pub duration: Duration,
    /// `spec.startAfter` (zero when absent).
    pub start_after: Duration,
    /// `spec.lease`: how long the kernel side acts without the agent
    /// renewing; shortens the agent's own (`--lease`) while the policy is in
    /// force.
    pub lease: Option<Duration>,
    pub abort_when: Option<AbortWhen>,
    pub guard: Guard,
    pub faults: Vec<Fault>,
}

/// `spec.abortWhen`: the steady-state guard (run by the daemon, issue 5).
#[derive(Clone, Debug, PartialEq)]
pub struct AbortWhen {
    pub probe: Probe,
    pub interval: Duration,
    pub failures: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Probe {
    Http { url: String, expect_status: u16 },
    Tcp { addr: String },
}

/// `spec.guard`: additions to the built-in guard.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Guard {
    pub ports: Vec<u16>,
    pub cidrs: Vec<Cidr>,
    /// `disableDefaults: true` turns the built-in guard off for this policy.
    pub disable_defaults: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// `spec.faults[i].name`, unique within the policy.
    pub name: String,
    pub kind: FaultKind,
    /// `spec.mode`, the same for every fault of a policy (`blast --shadow`
    /// sets it too). Kept per fault: a change of mode is a change of the
    /// fault that the daemon writes in place.
    pub mode: Mode,
    /// `spec.faults[i].schedule`: flapping.
    pub schedule: Option<Schedule>,
}

/// `spec.mode`: whether faults act or only count what they would do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    #[default]
    Enforce,
    /// Selected, guarded, drawn and counted as usual, but nothing is done
    /// to the packet or call: `injected` counts what would have been.
    Shadow,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        })
    }
}

/// `schedule: {on, off}`: the fault acts during `on`, then rests for
/// `off`, over and over, counted from the moment it is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Schedule {
    pub on: Duration,
    pub off: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    Network(NetworkFault),
    Syscall(SyscallFault),
}

#[derive(Clone, Debug, PartialEq)]
pub struct NetworkFault {
    pub interface: String,
    /// Named network namespace (`ip netns`), `None` for the agent's own.
    pub netns: Option<String>,
    pub direction: Direction,
    pub matcher: Match,
    pub action: NetworkAction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Egress,
    Ingress,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Any,
    Tcp,
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
}

/// `match:` — fields AND together, list entries OR together; an empty list
/// means "any".
#[derive(Clone, Debug, PartialEq)]
pub struct Match {
    pub protocol: Protocol,
    pub dst_ports: Vec<PortRange>,
    pub src_ports: Vec<PortRange>,
    pub dst_cidrs: Vec<Cidr>,
    pub src_cidrs: Vec<Cidr>,
    /// Egress only (validation refuses it on ingress and both).
    pub cgroup: Option<CgroupSelector>,
}

impl Match {
    /// Every packet: any protocol, port, address and sender.
    pub fn any() -> Match {
        Match {
            protocol: Protocol::Any,
            dst_ports: Vec::new(),
            src_ports: Vec::new(),
            dst_cidrs: Vec::new(),
            src_cidrs: Vec::new(),
            cgroup: None,
        }
    }
}

/// An inclusive port range; a single port has `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// An address prefix; host bits are zero (validation refuses `10.0.0.1/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupSelector {
    /// A systemd unit name such as `db-client.service`.
    Unit(String),
    /// A cgroup v2 path relative to the cgroup2 mount, starting with `/`.
    Path(String),
}

/// A percentage in [0, 100].
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Percent(pub f64);

#[derive(Clone, Debug, PartialEq)]
pub enum NetworkAction {
    Loss {
        percent: Percent,
        /// `loss.burst`: losses come in runs of this many packets on
        /// average (a Gilbert chain, `policy::burst`); independent draws
        /// without it.
        burst: Option<f64>,
    },
    Delay {
        latency: Duration,
        jitter: Duration,
    },
    Corrupt {
        percent: Percent,
    },
    Duplicate {
        percent: Percent,
    },
    /// Bits per second.
    Bandwidth {
        rate_bps: u64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct SyscallFault {
    /// Syscall names as in man 2, lower case, at least one.
    pub names: Vec<String>,
    /// 1..=4095.
    pub errno: i32,
    pub percent: Percent,
    pub target: SyscallTarget,
    pub max_injections: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyscallTarget {
    Pid(u32),
    Comm(String),
    Cgroup(String),
    Unit(String),
}

/// What a fault does, as users and metrics name it (the `action` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActionKind {
    Loss,
    Delay,
    Corrupt,
    Duplicate,
    Bandwidth,
    /// A syscall fault: the call fails with an errno.
    Errno,
}

impl std::fmt::Display for ActionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ActionKind::Loss => "loss",
            ActionKind::Delay => "delay",
            ActionKind::Corrupt => "corrupt",
            ActionKind::Duplicate => "duplicate",
            ActionKind::Bandwidth => "bandwidth",
            ActionKind::Errno => "errno",
        })
    }
}

impl ActionKind {
    /// What the live counter line says a shadow fault would do: "would
    /// drop 30 (30.1%)".
    pub fn shadow_verb(self) -> &'static str {
        match self {
            ActionKind::Loss => "would drop",
            ActionKind::Delay => "would delay",
            ActionKind::Corrupt => "would corrupt",
            ActionKind::Duplicate => "would duplicate",
            ActionKind::Bandwidth => "would shape",
            ActionKind::Errno => "would fail",
        }
    }

    /// The past participle of the live counter line: "dropped 30 (30.1%)".
    pub fn verb(self) -> &'static str {
        match self {
            ActionKind::Loss => "dropped",
            ActionKind::Delay => "delayed",
            ActionKind::Corrupt => "corrupted",
            ActionKind::Duplicate => "duplicated",
            ActionKind::Bandwidth => "shaped",
            ActionKind::Errno => "failed",
        }
    }
}

impl NetworkAction {
    pub fn kind(&self) -> ActionKind {
        match self {
            NetworkAction::Loss { .. } => ActionKind::Loss,
            NetworkAction::Delay { .. } => ActionKind::Delay,
            NetworkAction::Corrupt { .. } => ActionKind::Corrupt,
            NetworkAction::Duplicate { .. } => ActionKind::Duplicate,
            NetworkAction::Bandwidth { .. } => ActionKind::Bandwidth,
        }
    }

    /// Delay and bandwidth hold packets back: an fq qdisc releases them.
    pub fn needs_fq(&self) -> bool {
        matches!(
            self,
            NetworkAction::Delay { .. } | NetworkAction::Bandwidth { .. }
        )
    }
}

impl FaultKind {
    pub fn action_kind(&self) -> ActionKind {
        match self {
            FaultKind::Network(n) => n.action.kind(),
            FaultKind::Syscall(_) => ActionKind::Errno,
        }
    }
}
