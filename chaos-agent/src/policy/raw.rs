//! The serde view of a policy file: exactly the YAML shape of
//! docs/policy.md, unknown fields refused everywhere. Single values are parsed
//! here already (through the same parsers as the CLI flags), so their errors
//! come with serde's path and position; rules that span several fields are in
//! `validate.rs`.

use std::{fmt, marker::PhantomData, time::Duration};

use serde::{
    Deserialize, Deserializer,
    de::{self, SeqAccess, Visitor},
};

use super::{
    model::{Cidr, Direction, Percent, PortRange, Protocol},
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

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a FaultPolicy mapping with apiVersion, kind, metadata and spec"
)]
pub(crate) struct RawPolicy {
    #[allow(dead_code)]
    pub api_version: Scalar<ApiVersionK>,
    #[allow(dead_code)]
    pub kind: Scalar<KindK>,
    pub metadata: RawMetadata,
    pub spec: RawSpec,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with name"
)]
pub(crate) struct RawMetadata {
    pub name: Scalar<NameK>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with duration and faults"
)]
pub(crate) struct RawSpec {
    pub duration: Scalar<PositiveDurationK>,
    pub start_after: Option<Scalar<DurationK>>,
    pub lease: Option<Scalar<LeaseK>>,
    pub abort_when: Option<RawAbortWhen>,
    pub guard: Option<RawGuard>,
    pub faults: List<RawFault, 1, MAX_FAULTS>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with probe, interval and failures"
)]
pub(crate) struct RawAbortWhen {
    pub probe: RawProbe,
    pub interval: Option<Scalar<PositiveDurationK>>,
    pub failures: Option<Scalar<CountK>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with http (and expectStatus) or tcp"
)]
pub(crate) struct RawProbe {
    pub http: Option<String>,
    pub expect_status: Option<Scalar<HttpStatusK>>,
    pub tcp: Option<String>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with ports, cidrs or disableDefaults"
)]
pub(crate) struct RawGuard {
    pub ports: Option<List<Scalar<PortK>, 0, MAX_LIST>>,
    pub cidrs: Option<Cidrs>,
    pub disable_defaults: Option<bool>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a fault: a mapping with name and network or syscall"
)]
pub(crate) struct RawFault {
    pub name: Scalar<NameK>,
    pub network: Option<RawNetwork>,
    pub syscall: Option<RawSyscall>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with interface, match and one action"
)]
pub(crate) struct RawNetwork {
    pub interface: Scalar<InterfaceK>,
    pub netns: Option<Scalar<NetnsK>>,
    pub direction: Option<Scalar<DirectionK>>,
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
    pub loss: Option<RawPercentAction>,
    pub delay: Option<RawDelay>,
    pub corrupt: Option<RawPercentAction>,
    pub duplicate: Option<RawPercentAction>,
    pub bandwidth: Option<RawBandwidth>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping of match fields"
)]
pub(crate) struct RawMatch {
    pub protocol: Option<Scalar<ProtocolK>>,
    pub dst_ports: Option<Ports>,
    pub src_ports: Option<Ports>,
    pub dst_cidrs: Option<Cidrs>,
    pub src_cidrs: Option<Cidrs>,
    pub unit: Option<Scalar<UnitK>>,
    pub cgroup: Option<Scalar<CgroupK>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with percent"
)]
pub(crate) struct RawPercentAction {
    pub percent: Scalar<PercentK>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with latency and optionally jitter"
)]
pub(crate) struct RawDelay {
    pub latency: Scalar<PositiveDurationK>,
    pub jitter: Option<Scalar<DurationK>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with rate"
)]
pub(crate) struct RawBandwidth {
    pub rate: Scalar<RateK>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with names, errno and target"
)]
pub(crate) struct RawSyscall {
    pub names: List<Scalar<SyscallNameK>, 1, MAX_SYSCALLS>,
    pub errno: Scalar<ErrnoK>,
    pub percent: Option<Scalar<PercentK>>,
    pub target: RawTarget,
    pub max_injections: Option<Scalar<CountK>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with exactly one of pid, comm, cgroup, unit"
)]
pub(crate) struct RawTarget {
    pub pid: Option<Scalar<PidK>>,
    pub comm: Option<Scalar<CommK>>,
    pub cgroup: Option<Scalar<CgroupK>>,
    pub unit: Option<Scalar<UnitK>>,
}
