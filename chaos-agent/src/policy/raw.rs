//! The serde view of a policy file: exactly the YAML shape of
//! docs/policy.md, unknown fields refused everywhere. Single values are parsed
//! here already (through the same parsers as the CLI flags), so their errors
//! come with serde's path and position; rules that span several fields are in
//! `validate.rs`.

use std::{fmt, marker::PhantomData, time::Duration};

use schemars::JsonSchema;
use serde::{
    Deserialize, Deserializer,
    de::{self, SeqAccess, Visitor},
};

use super::{
    model::{Cidr, Direction, Mode, Percent, PortRange, Protocol},
    modes, schema_rules,
    values::{self, quoted},
};

pub(crate) const API_VERSION: &str = "chaos-agent/v1";
pub(crate) const KIND: &str = "FaultPolicy";

/// How one scalar value is parsed.
pub(crate) trait ScalarKind {
    type Out;
    /// What the value should look like, for messages.
    const EXPECTED: &'static str;
    fn parse(s: &str) -> Result<Self::Out, String>;
}

/// A scalar parsed with `K`; YAML numbers, booleans and strings are all
/// handed to `K::parse` as text, so `percent: 30` and `percent: "30%"` both
/// work and every wrong value gets `K`'s message.
pub(crate) struct Scalar<K: ScalarKind>(pub K::Out);

impl<'de, K: ScalarKind> Deserialize<'de> for Scalar<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<K>(PhantomData<K>);
        impl<K: ScalarKind> V<K> {
            fn done<E: de::Error>(s: &str) -> Result<Scalar<K>, E> {
                K::parse(s).map(Scalar).map_err(E::custom)
            }
        }
        impl<K: ScalarKind> Visitor<'_> for V<K> {
            type Value = Scalar<K>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(K::EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Self::done(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Self::done(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Self::done(&v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                // `{:?}` keeps the fraction ("5432.0"), so only kinds that
                // take fractions accept a YAML float.
                Self::done(&format!("{v:?}"))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Err(E::custom(format!("expected {}, found {v}", K::EXPECTED)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "expected {}, found nothing",
                    K::EXPECTED
                )))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                self.visit_unit()
            }
        }
        d.deserialize_any(V::<K>(PhantomData))
    }
}

macro_rules! kinds {
    ($($name:ident: $out:ty = $expected:expr, $parse:expr;)*) => {$(
        pub(crate) struct $name;
        impl ScalarKind for $name {
            type Out = $out;
            const EXPECTED: &'static str = $expected;
            fn parse(s: &str) -> Result<$out, String> {
                ($parse)(s)
            }
        }
    )*};
}

fn exactly(want: &'static str) -> impl Fn(&str) -> Result<String, String> {
    move |s: &str| {
        if s == want {
            Ok(s.to_string())
        } else {
            Err(format!("expected {want:?}, found {}", quoted(s)))
        }
    }
}

kinds! {
    ApiVersionK: String = "\"chaos-agent/v1\"", exactly(API_VERSION);
    KindK: String = "\"FaultPolicy\"", exactly(KIND);
    NameK: String = values::NAME_EXPECTED, values::parse_name;
    PercentK: Percent = values::PERCENT_EXPECTED, str::parse::<Percent>;
    PortRangeK: PortRange = values::PORT_RANGE_EXPECTED, str::parse::<PortRange>;
    PortK: u16 = values::PORT_EXPECTED, values::parse_port;
    CidrK: Cidr = values::CIDR_EXPECTED, str::parse::<Cidr>;
    ProtocolK: Protocol = values::PROTOCOL_EXPECTED, str::parse::<Protocol>;
    DirectionK: Direction = values::DIRECTION_EXPECTED, str::parse::<Direction>;
    DurationK: Duration = values::DURATION_EXPECTED, values::parse_duration;
    PositiveDurationK: Duration = values::DURATION_EXPECTED, values::parse_positive_duration;
    LeaseK: Duration = values::LEASE_EXPECTED, values::parse_lease;
    RateK: u64 = values::RATE_EXPECTED, values::parse_rate;
    ErrnoK: i32 = values::ERRNO_EXPECTED, values::parse_errno;
    InterfaceK: String = values::INTERFACE_EXPECTED, values::parse_interface;
    NetnsK: String = values::NETNS_EXPECTED, values::parse_netns;
    UnitK: String = values::UNIT_EXPECTED, values::parse_unit;
    CgroupK: String = values::CGROUP_EXPECTED, values::parse_cgroup_path;
    SyscallNameK: String = values::SYSCALL_EXPECTED, values::parse_syscall_name;
    CommK: String = values::COMM_EXPECTED, values::parse_comm;
    PidK: u32 = "a process id (2 or more)", values::parse_pid;
    HttpStatusK: u16 = "an HTTP status code from 100 to 599", parse_http_status;
    CountK: u64 = "a whole number of at least 1", parse_count;
    ModeK: Mode = modes::MODE_EXPECTED, modes::parse_mode;
    BurstK: f64 = modes::BURST_EXPECTED, modes::parse_burst;
}

fn parse_http_status(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(n @ 100..=599) => Ok(n),
        _ => Err(format!(
            "expected an HTTP status code from 100 to 599, found {}",
            quoted(s)
        )),
    }
}

fn parse_count(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "expected a whole number of at least 1, found {s:?}"
        )),
    }
}

/// A list with a length limit, checked while reading (so a huge list is
/// refused before it is built). `MIN` is checked too, after the last entry.
pub(crate) struct List<T, const MIN: usize, const MAX: usize>(pub Vec<T>);

impl<'de, T: Deserialize<'de>, const MIN: usize, const MAX: usize> Deserialize<'de>
    for List<T, MIN, MAX>
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const MIN: usize, const MAX: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const MIN: usize, const MAX: usize> Visitor<'de> for V<T, MIN, MAX> {
            type Value = List<T, MIN, MAX>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    if out.len() == MAX {
                        return Err(de::Error::custom(format!(
                            "too many entries: expected at most {MAX}"
                        )));
                    }
                    out.push(v);
                }
                if out.len() < MIN {
                    return Err(de::Error::custom(format!(
                        "expected at least {MIN} {}, found {}",
                        if MIN == 1 { "entry" } else { "entries" },
                        out.len()
                    )));
                }
                Ok(List(out))
            }
        }
        d.deserialize_seq(V::<T, MIN, MAX>(PhantomData))
    }
}

/// At most this many faults in one policy.
pub(crate) const MAX_FAULTS: usize = 256;
/// At most this many entries in a port or CIDR list.
pub(crate) const MAX_LIST: usize = 4096;
/// At most this many syscall names in one fault.
pub(crate) const MAX_SYSCALLS: usize = 64;

pub(crate) type Ports = List<Scalar<PortRangeK>, 0, MAX_LIST>;
pub(crate) type Cidrs = List<Scalar<CidrK>, 0, MAX_LIST>;

// The structs below also derive the JSON Schema of policy files
// (`schema.rs`): doc comments become its descriptions, `deny_unknown_fields`
// becomes `additionalProperties: false`, and the `transform`s add what
// `validate.rs` checks across fields and a schema can say too (exactly one
// of ...).

/// A chaos-agent fault policy: one YAML document (docs/policy.md).
#[derive(Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a FaultPolicy mapping with apiVersion, kind, metadata and spec"
)]
#[schemars(title = "chaos-agent FaultPolicy")]
pub(crate) struct RawPolicy {
    /// Always `chaos-agent/v1`.
    #[allow(dead_code)]
    pub api_version: Scalar<ApiVersionK>,
    /// Always `FaultPolicy`.
    #[allow(dead_code)]
    pub kind: Scalar<KindK>,
    pub metadata: RawMetadata,
    /// When the faults act, and what they are.
    pub spec: RawSpec,
}

#[derive(Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with name"
)]
#[schemars(rename = "Metadata")]
pub(crate) struct RawMetadata {
    /// The policy's name, unique among the daemon's policies.
    pub name: Scalar<NameK>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with duration and faults"
)]
#[schemars(rename = "Spec")]
pub(crate) struct RawSpec {
    /// How long the faults act (more than 0, at most 365 days); the kernel
    /// stops acting at start + duration.
    pub duration: Scalar<PositiveDurationK>,
    /// The window (and `duration`) starts this long after the policy is
    /// loaded (default 0).
    pub start_after: Option<Scalar<DurationK>>,
    /// How long the faults act without the agent renewing its lease (at
    /// least 1s); shortens the agent's own lease while the policy is in
    /// force.
    pub lease: Option<Scalar<LeaseK>>,
    /// Steady-state guard: the whole policy is reverted when its probe fails
    /// `failures` times in a row.
    pub abort_when: Option<RawAbortWhen>,
    /// Ports and prefixes this policy's network faults never touch, on top
    /// of the built-in guard.
    pub guard: Option<RawGuard>,
    /// `enforce` (the default) or `shadow`: select, guard, draw and count
    /// as usual, but do nothing to the packet or call (`injected` counts
    /// what would have been done).
    pub mode: Option<Scalar<ModeK>>,
    /// 1 to 256 faults, names unique within the policy.
    pub faults: List<RawFault, 1, MAX_FAULTS>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with probe, interval and failures"
)]
#[schemars(rename = "AbortWhen")]
pub(crate) struct RawAbortWhen {
    /// What is probed: exactly one of `http` and `tcp`.
    pub probe: RawProbe,
    /// How often the probe runs (default 1s); each probe also gives up
    /// after min(interval, 5 s).
    pub interval: Option<Scalar<PositiveDurationK>>,
    /// Consecutive failures that revert the whole policy (default 3).
    pub failures: Option<Scalar<CountK>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with http (and expectStatus) or tcp"
)]
#[schemars(rename = "Probe", transform = schema_rules::one_probe)]
pub(crate) struct RawProbe {
    /// GET this `http://HOST[:PORT]/PATH`; a failure is any other status
    /// than `expectStatus`, or no answer.
    #[schemars(regex(pattern = schema_rules::HTTP_URL))]
    pub http: Option<String>,
    /// The status the http probe expects (default 200).
    pub expect_status: Option<Scalar<HttpStatusK>>,
    /// Connect to this `HOST:PORT` (`127.0.0.1:5432`, `[::1]:5432`,
    /// `db.local:5432`); a failure is a refused or timed-out connection.
    #[schemars(regex(pattern = schema_rules::HOST_PORT))]
    pub tcp: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with ports, cidrs or disableDefaults"
)]
#[schemars(rename = "Guard")]
pub(crate) struct RawGuard {
    /// TCP and UDP ports, either direction.
    pub ports: Option<List<Scalar<PortK>, 0, MAX_LIST>>,
    /// IPv4 or IPv6 prefixes (host bits zero), source or destination.
    pub cidrs: Option<Cidrs>,
    /// `true` turns the built-in guard (port 22, the SSH peer, the metrics
    /// port) off for this policy.
    pub disable_defaults: Option<bool>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a fault: a mapping with name and network or syscall"
)]
#[schemars(rename = "Fault", transform = schema_rules::one_fault_kind)]
pub(crate) struct RawFault {
    /// The fault's name, unique within the policy.
    pub name: Scalar<NameK>,
    /// A network fault (exactly one of `network` and `syscall`).
    pub network: Option<RawNetwork>,
    /// A syscall error fault (exactly one of `network` and `syscall`).
    pub syscall: Option<RawSyscall>,
    /// Flapping: act for `on`, rest for `off`, over and over, counted from
    /// the moment the fault is applied (always on when left out).
    pub schedule: Option<RawSchedule>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with on and off"
)]
#[schemars(rename = "Schedule")]
pub(crate) struct RawSchedule {
    /// How long the fault acts in each period (more than 0).
    pub on: Scalar<PositiveDurationK>,
    /// How long it then rests (more than 0).
    pub off: Scalar<PositiveDurationK>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with interface, match and one action"
)]
#[schemars(rename = "Network", transform = schema_rules::one_action)]
pub(crate) struct RawNetwork {
    /// The interface to attach to.
    pub interface: Scalar<InterfaceK>,
    /// A named network namespace (`ip netns`) holding the interface; the
    /// agent's own by default.
    pub netns: Option<Scalar<NetnsK>>,
    /// Which packets of the interface (default egress); ingress delay needs
    /// Linux 6.4.
    pub direction: Option<Scalar<DirectionK>>,
    /// Which packets the fault acts on; every packet when left out.
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
    /// Drop this share of the matching packets, optionally in bursts.
    pub loss: Option<RawLoss>,
    /// Hold the matching packets back (needs the fq qdisc).
    pub delay: Option<RawDelay>,
    /// Flip one bit in the payload of this share of the matching packets.
    pub corrupt: Option<RawPercentAction>,
    /// Send this share of the matching packets twice.
    pub duplicate: Option<RawPercentAction>,
    /// Limit the matching traffic to a rate (needs the fq qdisc).
    pub bandwidth: Option<RawBandwidth>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping of match fields"
)]
#[schemars(rename = "Match", transform = schema_rules::unit_or_cgroup)]
pub(crate) struct RawMatch {
    /// `icmp` means ICMP and ICMPv6 and takes no ports; `any` (the default)
    /// with ports means TCP and UDP.
    pub protocol: Option<Scalar<ProtocolK>>,
    /// Destination ports or `A-B` ranges (any port when left out).
    pub dst_ports: Option<Ports>,
    /// Source ports or `A-B` ranges (any port when left out).
    pub src_ports: Option<Ports>,
    /// Destination prefixes (any address when left out).
    pub dst_cidrs: Option<Cidrs>,
    /// Source prefixes (any address when left out).
    pub src_cidrs: Option<Cidrs>,
    /// Only packets sent by this systemd unit's processes (egress only).
    pub unit: Option<Scalar<UnitK>>,
    /// Only packets sent from this cgroup or its children (egress only).
    pub cgroup: Option<Scalar<CgroupK>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with percent"
)]
#[schemars(rename = "PercentAction")]
pub(crate) struct RawPercentAction {
    /// The share of the matching packets, 0 to 100.
    pub percent: Scalar<PercentK>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with percent and optionally burst"
)]
#[schemars(rename = "Loss")]
pub(crate) struct RawLoss {
    /// The long-run share of the matching packets dropped, 0 to 100.
    pub percent: Scalar<PercentK>,
    /// Drop in runs of this many consecutive packets on average (a
    /// two-state Gilbert chain per fault, as netem's `loss gemodel`);
    /// independent drops when left out.
    pub burst: Option<Scalar<BurstK>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with latency and optionally jitter"
)]
#[schemars(rename = "Delay")]
pub(crate) struct RawDelay {
    /// Added to every matching packet; latency + jitter at most 10 s.
    pub latency: Scalar<PositiveDurationK>,
    /// A uniform offset in [-jitter, +jitter] per packet (default 0).
    pub jitter: Option<Scalar<DurationK>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with rate"
)]
#[schemars(rename = "Bandwidth")]
pub(crate) struct RawBandwidth {
    /// Bits per second (`100bit`, `500kbit`, `10mbit`, `1gbit`) or bytes
    /// per second (`100bps`, `1kbps`).
    pub rate: Scalar<RateK>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with names, errno and target"
)]
#[schemars(rename = "Syscall")]
pub(crate) struct RawSyscall {
    /// 1 to 64 syscall names as in man 2 for the agent's architecture.
    pub names: List<Scalar<SyscallNameK>, 1, MAX_SYSCALLS>,
    /// What the failing calls return.
    pub errno: Scalar<ErrnoK>,
    /// The share of the target's calls that fail (default 100).
    pub percent: Option<Scalar<PercentK>>,
    /// Whose calls fail: exactly one of `pid`, `comm`, `cgroup`, `unit`.
    pub target: RawTarget,
    /// Fail at most this many calls in total (enforced in the kernel).
    pub max_injections: Option<Scalar<CountK>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with exactly one of pid, comm, cgroup, unit"
)]
#[schemars(rename = "Target", transform = schema_rules::one_target)]
pub(crate) struct RawTarget {
    /// A process (its whole thread group); never PID 1 or the agent.
    pub pid: Option<Scalar<PidK>>,
    /// Processes with this command name (what `ps -o comm` shows).
    pub comm: Option<Scalar<CommK>>,
    /// Processes in this cgroup v2 path and its children.
    pub cgroup: Option<Scalar<CgroupK>>,
    /// The processes of this systemd unit.
    pub unit: Option<Scalar<UnitK>>,
}
