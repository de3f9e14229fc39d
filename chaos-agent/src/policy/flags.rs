//! `blast net` and `blast syscall` flags as a policy document.
//!
//! The flags' values are put, as the user typed them, into the same raw
//! document a policy file holds (`spec.faults[0].network.match.dstPorts`
//! for `--dport`, ...), which then goes through the loader's own path:
//! serde into the raw model (every value parsed by the same parser), then
//! `validate`. So a blast accepts exactly what a policy file accepts, with
//! the same messages; an error names the flags instead of a file position:
//! `--dport: expected a port (1-65535) or a range A-B, found "70000"`.
//!
//! Defaults are the policy's defaults (direction egress, protocol any,
//! percent 100, probe every 1s, 3 failures, status 200), applied by
//! `validate` when a flag is absent. The policy is named by `--name`
//! (`metadata.name`, checked as in a file), or `blast-<pid>`, so the
//! metrics of two blasts on one host never share a `policy` label.

use serde_norway::{Mapping, Value};

use super::{
    from_document,
    model::Policy,
    raw::{API_VERSION, KIND},
    validate::{Anchor, Invalid},
};

/// `origin` of a policy built from flags.
pub const ORIGIN: &str = "<flags>";
/// The policy name of a blast without `--name`: `blast-<pid>`, unique
/// among the processes alive.
pub fn default_name() -> String {
    format!("blast-{}", std::process::id())
}
/// The fault name of `blast net`.
pub const NET_FAULT: &str = "net";
/// The fault name of `blast syscall`.
pub const SYSCALL_FAULT: &str = "syscall";

/// The flags of `blast net`, as typed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetFlags {
    /// `--name`: the policy name (`metadata.name`).
    pub name: Option<String>,
    pub iface: String,
    pub netns: Option<String>,
    pub direction: Option<String>,
    pub proto: Option<String>,
    pub dport: Vec<String>,
    pub sport: Vec<String>,
    pub dst: Vec<String>,
    pub src: Vec<String>,
    pub unit: Option<String>,
    pub cgroup: Option<String>,
    pub loss: Option<String>,
    pub delay: Option<String>,
    pub jitter: Option<String>,
    pub corrupt: Option<String>,
    pub duplicate: Option<String>,
    pub rate: Option<String>,
    /// `--burst`: `loss.burst`.
    pub burst: Option<String>,
    pub duration: String,
    pub abort: AbortFlags,
    pub modes: ModeFlags,
}

/// `--shadow` and `--flap`, on both kinds of blast, as typed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModeFlags {
    /// `spec.mode: shadow`.
    pub shadow: bool,
    /// `ON/OFF`: the fault's `schedule`.
    pub flap: Option<String>,
}

/// The `--abort-*` flags (the policy's `spec.abortWhen`), as typed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AbortFlags {
    pub http: Option<String>,
    pub expect_status: Option<String>,
    pub tcp: Option<String>,
    pub interval: Option<String>,
    pub failures: Option<String>,
}

/// The flags of `blast syscall`, as typed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyscallFlags {
    /// `--name`: the policy name (`metadata.name`).
    pub name: Option<String>,
    pub syscalls: Vec<String>,
    pub errno: String,
    pub percent: Option<String>,
    pub pid: Option<String>,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    pub max_injections: Option<String>,
    pub duration: String,
    pub abort: AbortFlags,
    pub modes: ModeFlags,
}

/// Flags that do not make a valid blast: `--dport: expected a port ...`.
/// When a rule ties several flags together, all the given ones are named
/// (`--dport, --proto: ...`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct FlagError {
    /// The flags involved, as typed on the command line (`--dport`).
    pub flags: Vec<String>,
    /// What was wrong and what was expected.
    pub message: String,
}

impl FlagError {
    fn render(&self) -> String {
        if self.flags.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.flags.join(", "), self.message)
        }
    }
}

/// The policy a `blast net` stands for.
pub fn net_policy(f: &NetFlags) -> Result<Policy, FlagError> {
    const NET: &str = "spec.faults[0].network";
    let one = |v: &Option<String>| v.as_deref().map(text);
    let many = |v: &[String]| (!v.is_empty()).then(|| list(v));
    let mut fields = vec![
        Field::required("--duration", "spec.duration", text(&f.duration)),
        Field::required("", "spec.faults[0].name", text(NET_FAULT)),
        Field::required("--iface", &format!("{NET}.interface"), text(&f.iface)),
        Field::new("--name", "metadata.name", one(&f.name)),
    ];
    fields.extend(abort_fields(&f.abort));
    fields.extend(mode_fields(&f.modes)?);
    let net = [
        ("--netns", "netns", one(&f.netns)),
        ("--direction", "direction", one(&f.direction)),
        ("--proto", "match.protocol", one(&f.proto)),
        ("--dport", "match.dstPorts", many(&f.dport)),
        ("--sport", "match.srcPorts", many(&f.sport)),
        ("--dst", "match.dstCidrs", many(&f.dst)),
        ("--src", "match.srcCidrs", many(&f.src)),
        ("--unit", "match.unit", one(&f.unit)),
        ("--cgroup", "match.cgroup", one(&f.cgroup)),
        ("--loss", "loss.percent", one(&f.loss)),
        ("--delay", "delay.latency", one(&f.delay)),
        ("--jitter", "delay.jitter", one(&f.jitter)),
        ("--corrupt", "corrupt.percent", one(&f.corrupt)),
        ("--duplicate", "duplicate.percent", one(&f.duplicate)),
        ("--rate", "bandwidth.rate", one(&f.rate)),
        ("--burst", "loss.burst", one(&f.burst)),
    ];
    fields.extend(
        net.into_iter()
            .map(|(flag, rel, value)| Field::new(flag, &format!("{NET}.{rel}"), value)),
    );
    build(&fields)
}

/// The policy a `blast syscall` stands for.
pub fn syscall_policy(f: &SyscallFlags) -> Result<Policy, FlagError> {
    const SYS: &str = "spec.faults[0].syscall";
    let one = |v: &Option<String>| v.as_deref().map(text);
    let mut fields = vec![
        Field::required("--duration", "spec.duration", text(&f.duration)),
        Field::required("", "spec.faults[0].name", text(SYSCALL_FAULT)),
        Field::required("--syscall", &format!("{SYS}.names"), list(&f.syscalls)),
        Field::required("--errno", &format!("{SYS}.errno"), text(&f.errno)),
        Field::new("--name", "metadata.name", one(&f.name)),
    ];
    fields.extend(abort_fields(&f.abort));
    fields.extend(mode_fields(&f.modes)?);
    let sys = [
        ("--percent", "percent", one(&f.percent)),
        ("--pid", "target.pid", one(&f.pid)),
        ("--comm", "target.comm", one(&f.comm)),
        ("--cgroup", "target.cgroup", one(&f.cgroup)),
        ("--unit", "target.unit", one(&f.unit)),
        ("--max-injections", "maxInjections", one(&f.max_injections)),
    ];
    fields.extend(
        sys.into_iter()
            .map(|(flag, rel, value)| Field::new(flag, &format!("{SYS}.{rel}"), value)),
    );
    // `target` is required in a file; with no target flag it is left out,
    // so the message asks for one.
    build(&fields)
}

/// The `--abort-*` flags: the policy's `spec.abortWhen`, for either kind.
fn abort_fields(a: &AbortFlags) -> Vec<Field> {
    let one = |v: &Option<String>| v.as_deref().map(text);
    vec![
        Field::new("--abort-http", "spec.abortWhen.probe.http", one(&a.http)),
        Field::new(
            "--abort-expect-status",
            "spec.abortWhen.probe.expectStatus",
            one(&a.expect_status),
        )
        .modifier(),
        Field::new("--abort-tcp", "spec.abortWhen.probe.tcp", one(&a.tcp)),
        Field::new(
            "--abort-interval",
            "spec.abortWhen.interval",
            one(&a.interval),
        ),
        Field::new(
            "--abort-failures",
            "spec.abortWhen.failures",
            one(&a.failures),
        ),
    ]
}

/// `--shadow` (`spec.mode`) and `--flap ON/OFF` (the fault's `schedule`:
/// its two halves go through the loader as `on` and `off`).
fn mode_fields(m: &ModeFlags) -> Result<Vec<Field>, FlagError> {
    let mut fields = vec![Field::new(
        "--shadow",
        "spec.mode",
        m.shadow.then(|| text("shadow")),
    )];
    if let Some(flap) = &m.flap {
        let Some((on, off)) = flap.split_once('/') else {
            return Err(FlagError {
                flags: vec!["--flap".into()],
                message: format!(
                    "expected ON/OFF durations such as 200ms/5s, found {}",
                    super::values::quoted(flap)
                ),
            });
        };
        for (half, value) in [("on", on), ("off", off)] {
            let path = format!("spec.faults[0].schedule.{half}");
            fields.push(Field::new("--flap", &path, Some(text(value))));
        }
    }
    Ok(fields)
}

/// One flag and where its value goes in the document.
struct Field {
    /// Empty for the fixed parts of a blast (its fault name).
    flag: &'static str,
    path: String,
    value: Option<Value>,
    /// Always in the document (clap requires the flag).
    required: bool,
    /// Only says how another flag of its mapping works, so it never
    /// stands in for a missing field (`--abort-expect-status` is no probe).
    modifier: bool,
}

impl Field {
    fn new(flag: &'static str, path: &str, value: Option<Value>) -> Self {
        Field {
            flag,
            path: path.to_string(),
            value,
            required: false,
            modifier: false,
        }
    }

    fn modifier(self) -> Self {
        Field {
            modifier: true,
            ..self
        }
    }

    fn required(flag: &'static str, path: &str, value: Value) -> Self {
        Field {
            required: true,
            ..Field::new(flag, path, Some(value))
        }
    }

    fn given(&self) -> bool {
        !self.flag.is_empty() && self.value.is_some()
    }
}

fn text(s: &str) -> Value {
    Value::String(s.to_string())
}

fn list(v: &[String]) -> Value {
    Value::Sequence(v.iter().map(|s| text(s)).collect())
}

fn build(fields: &[Field]) -> Result<Policy, FlagError> {
    let mut doc = Value::Mapping(Mapping::new());
    set(&mut doc, "apiVersion", text(API_VERSION));
    set(&mut doc, "kind", text(KIND));
    // `--name`, when given, replaces it below.
    set(&mut doc, "metadata.name", text(&default_name()));
    for f in fields {
        if let Some(v) = &f.value {
            set(&mut doc, &f.path, v.clone());
        }
    }
    from_document(ORIGIN, doc).map_err(|r| flag_error(fields, r))
}

/// Puts `v` at `path` (`spec.faults[0].network.interface`), making the
/// mappings and lists on the way.
fn set(doc: &mut Value, path: &str, v: Value) {
    let mut cur = doc;
    for seg in path.split('.') {
        let (key, index) = match seg.split_once('[') {
            Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        if !matches!(cur, Value::Mapping(_)) {
            *cur = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = cur else {
            unreachable!("made a mapping above")
        };
        cur = m.entry(text(key)).or_insert(Value::Null);
        if let Some(i) = index {
            if !matches!(cur, Value::Sequence(_)) {
                *cur = Value::Sequence(Vec::new());
            }
            let Value::Sequence(s) = cur else {
                unreachable!("made a list above")
            };
            while s.len() <= i {
                s.push(Value::Null);
            }
            cur = &mut s[i];
        }
    }
    *cur = v;
}

/// Whether path `a` is `b` or contains it (`a.x`, `a[1]`).
fn contains(a: &str, b: &str) -> bool {
    b == a || (b.starts_with(a) && matches!(b.as_bytes().get(a.len()), Some(b'.' | b'[')))
}

fn related(a: &str, b: &str) -> bool {
    contains(a, b) || contains(b, a)
}

/// Names the flags of a refusal: the given flags at or under its field and
/// the fields it is also about. A missing field is asked for: by the
/// optional flags that brought its mapping into the document (`--jitter`
/// makes a `delay` that needs `--delay`), or as required.
fn flag_error(fields: &[Field], r: Invalid) -> FlagError {
    let path = r.path.to_string();
    let mut flags: Vec<String> = Vec::new();
    let add = |flags: &mut Vec<String>, f: &Field| {
        if !flags.iter().any(|x| x == f.flag) {
            flags.push(f.flag.to_string());
        }
    };
    if r.anchor == Anchor::Missing {
        let parent = r.path.parent().to_string();
        let needed: Vec<&str> = fields
            .iter()
            .filter(|f| !f.flag.is_empty() && !f.modifier && contains(&path, &f.path))
            .map(|f| f.flag)
            .collect();
        // A mapping that is always there (the fault itself) is not there
        // because of the flags in it.
        let always = fields
            .iter()
            .any(|f| f.required && contains(&parent, &f.path));
        let needing: Vec<&Field> = fields
            .iter()
            .filter(|f| !always && f.given() && contains(&parent, &f.path))
            .collect();
        if !needed.is_empty() && !needing.is_empty() {
            needing.into_iter().for_each(|f| add(&mut flags, f));
            return FlagError {
                flags,
                message: format!("needs {} too", needed.join(" or ")),
            };
        }
        if !needed.is_empty() {
            return FlagError {
                flags: Vec::new(),
                message: format!("{} is required", needed.join(" or ")),
            };
        }
    }
    let mut paths = vec![path];
    paths.extend(r.also.iter().map(ToString::to_string));
    for p in &paths {
        fields
            .iter()
            .filter(|f| f.given() && related(p, &f.path))
            .for_each(|f| add(&mut flags, f));
    }
    if flags.is_empty() {
        fields
            .iter()
            .filter(|f| !f.flag.is_empty() && related(&paths[0], &f.path))
            .for_each(|f| add(&mut flags, f));
    }
    FlagError {
        flags,
        message: r.message,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::model::*;

    fn net() -> NetFlags {
        NetFlags {
            iface: "eth0".into(),
            loss: Some("30".into()),
            duration: "5s".into(),
            ..NetFlags::default()
        }
    }

    fn sys() -> SyscallFlags {
        SyscallFlags {
            syscalls: vec!["connect".into()],
            errno: "ECONNREFUSED".into(),
            pid: Some("4242".into()),
            duration: "5s".into(),
            ..SyscallFlags::default()
        }
    }

    #[track_caller]
    fn refused(r: Result<Policy, FlagError>, want: &str) {
        let e = r.expect_err("should be refused");
        assert_eq!(e.to_string(), want);
    }

    #[test]
    fn net_flags_become_the_blast_policy() {
        let mut f = net();
        f.netns = Some("edge".into());
        f.proto = Some("tcp".into());
        f.dport = vec!["5432".into(), "6000-6100".into()];
        f.dst = vec!["10.1.0.0/16".into()];
        f.cgroup = Some("/system.slice/db.service".into());
        f.abort.tcp = Some("127.0.0.1:5432".into());
        let p = net_policy(&f).unwrap();
        assert_eq!(p.name, format!("blast-{}", std::process::id()));
        assert_eq!(p.origin, "<flags>");
        assert_eq!(p.duration, Duration::from_secs(5));
        assert_eq!(
            p.abort_when,
            Some(AbortWhen {
                probe: Probe::Tcp {
                    addr: "127.0.0.1:5432".into()
                },
                interval: Duration::from_secs(1),
                failures: 3,
            })
        );
        assert_eq!(p.faults.len(), 1);
        assert_eq!(p.faults[0].name, "net");
        let FaultKind::Network(n) = &p.faults[0].kind else {
            panic!("a network fault")
        };
        assert_eq!(n.interface, "eth0");
        assert_eq!(n.netns.as_deref(), Some("edge"));
        assert_eq!(n.direction, Direction::Egress);
        assert_eq!(n.matcher.protocol, Protocol::Tcp);
        assert_eq!(
            n.matcher.dst_ports,
            [
                PortRange {
                    first: 5432,
                    last: 5432
                },
                PortRange {
                    first: 6000,
                    last: 6100
                }
            ]
        );
        assert_eq!(
            n.matcher.cgroup,
            Some(CgroupSelector::Path("/system.slice/db.service".into()))
        );
        assert_eq!(
            n.action,
            NetworkAction::Loss {
                percent: Percent(30.0),
                burst: None
            }
        );

        let mut d = net();
        d.loss = None;
        d.delay = Some("100ms".into());
        d.jitter = Some("20ms".into());
        d.direction = Some("both".into());
        d.abort.http = Some("http://127.0.0.1:8080/health".into());
        d.abort.expect_status = Some("204".into());
        d.abort.interval = Some("2s".into());
        d.abort.failures = Some("5".into());
        let p = net_policy(&d).unwrap();
        let FaultKind::Network(n) = &p.faults[0].kind else {
            panic!("a network fault")
        };
        assert_eq!(n.direction, Direction::Both);
        assert_eq!(
            n.action,
            NetworkAction::Delay {
                latency: Duration::from_millis(100),
                jitter: Duration::from_millis(20)
            }
        );
        assert_eq!(
            p.abort_when,
            Some(AbortWhen {
                probe: Probe::Http {
                    url: "http://127.0.0.1:8080/health".into(),
                    expect_status: 204
                },
                interval: Duration::from_secs(2),
                failures: 5,
            })
        );
    }

    #[test]
    fn syscall_flags_become_the_blast_policy() {
        let mut f = sys();
        f.syscalls = vec!["connect".into(), "openat".into()];
        f.percent = Some("50%".into());
        f.max_injections = Some("10".into());
        let p = syscall_policy(&f).unwrap();
        assert_eq!(p.name, default_name());
        assert_eq!(p.origin, "<flags>");
        assert_eq!(p.faults[0].name, "syscall");
        assert_eq!(
            p.faults[0].kind,
            FaultKind::Syscall(SyscallFault {
                names: vec!["connect".into(), "openat".into()],
                errno: 111,
                percent: Percent(50.0),
                target: SyscallTarget::Pid(4242),
                max_injections: Some(10),
            })
        );
    }

    /// `--name` is `metadata.name`, checked as in a file; without it the
    /// name carries the pid.
    #[test]
    fn name_flag_names_the_policy() {
        assert!(default_name().starts_with("blast-"));
        let mut f = net();
        f.name = Some("checkout-loss".into());
        assert_eq!(net_policy(&f).unwrap().name, "checkout-loss");
        let mut s = sys();
        s.name = Some("db-refused".into());
        assert_eq!(syscall_policy(&s).unwrap().name, "db-refused");
        for bad in ["Checkout", "", "a_b", &"x".repeat(64)] {
            f.name = Some(bad.into());
            refused(
                net_policy(&f),
                &format!(
                    "--name: expected a name of 1-63 characters from a-z, 0-9 and -, found {}",
                    crate::policy::values::quoted(bad)
                ),
            );
            s.name = Some(bad.into());
            refused(
                syscall_policy(&s),
                &format!(
                    "--name: expected a name of 1-63 characters from a-z, 0-9 and -, found {}",
                    crate::policy::values::quoted(bad)
                ),
            );
        }
    }

    #[test]
    fn a_bad_value_names_its_flag() {
        let mut f = net();
        f.dport = vec!["80".into(), "70000".into()];
        refused(
            net_policy(&f),
            r#"--dport: expected a port (1-65535) or a range A-B, found "70000""#,
        );
        let mut f = net();
        f.loss = Some("150".into());
        refused(
            net_policy(&f),
            r#"--loss: expected a percentage from 0 to 100 (30, 30% or 0.5), found "150""#,
        );
        let mut f = net();
        f.iface = "eth0/1".into();
        assert!(
            net_policy(&f)
                .unwrap_err()
                .to_string()
                .starts_with("--iface: expected a network interface name")
        );
        let mut f = net();
        f.iface = "eth 0".into();
        assert!(
            net_policy(&f)
                .unwrap_err()
                .to_string()
                .starts_with("--iface: ")
        );
        let mut f = net();
        f.src = vec!["10.0.0.1/8".into()];
        refused(
            net_policy(&f),
            "--src: host bits set; did you mean 10.0.0.0/8?",
        );
        let mut f = net();
        f.duration = "0s".into();
        assert!(
            net_policy(&f)
                .unwrap_err()
                .to_string()
                .starts_with("--duration: expected a duration greater than zero")
        );
        let mut f = net();
        f.abort.tcp = Some("localhost".into());
        refused(
            net_policy(&f),
            r#"--abort-tcp: expected HOST:PORT such as 127.0.0.1:5432 or [::1]:5432, found "localhost""#,
        );
        let mut f = net();
        f.abort.http = Some("https://x/".into());
        assert!(
            net_policy(&f)
                .unwrap_err()
                .to_string()
                .starts_with("--abort-http: expected an http:// URL")
        );
        let mut f = net();
        f.abort.http = Some("http://x/".into());
        f.abort.failures = Some("0".into());
        refused(
            net_policy(&f),
            r#"--abort-failures: expected a whole number of at least 1, found "0""#,
        );
    }

    #[test]
    fn a_rule_across_flags_names_them_all() {
        let mut f = net();
        f.proto = Some("icmp".into());
        f.dport = vec!["80".into()];
        refused(
            net_policy(&f),
            "--dport, --proto: ports need protocol tcp, udp or any (ICMP has no ports), found icmp",
        );
        let mut f = net();
        f.cgroup = Some("/x".into());
        f.direction = Some("ingress".into());
        refused(
            net_policy(&f),
            "--cgroup, --direction: cgroup needs direction egress (cgroups only see the packets they send), found direction ingress",
        );
        let mut f = net();
        f.dst = vec!["10.0.0.0/8".into()];
        f.src = vec!["fd00::/8".into()];
        refused(
            net_policy(&f),
            "--src, --dst: the destination prefixes are all IPv4 and the source prefixes all IPv6, so this fault matches nothing; use prefixes of one address family on both sides, or split the fault",
        );
        let mut f = net();
        f.loss = None;
        f.delay = Some("9s".into());
        f.jitter = Some("2s".into());
        assert!(net_policy(&f).unwrap_err().to_string().starts_with(
            "--delay, --jitter: latency + jitter is 11s, beyond the fq qdisc's horizon"
        ));
        let mut f = net();
        f.abort.tcp = Some("127.0.0.1:1".into());
        f.abort.expect_status = Some("200".into());
        refused(
            net_policy(&f),
            "--abort-expect-status, --abort-tcp: expectStatus only goes with an http probe, not tcp",
        );
        let mut f = net();
        f.proto = Some("udp".into());
        f.dport = vec!["1-40000".into()];
        f.sport = vec!["1-3".into()];
        refused(
            net_policy(&f),
            "--proto, --dport, --sport: this match expands to 120000 kernel keys (1 protocol x 40000 destination ports x 3 source ports), more than the 65536 one fault may have; use fewer or narrower port ranges and CIDR lists, or split the fault",
        );
        let mut f = net();
        f.dst = (8..=16).map(|n| format!("10.0.0.0/{n}")).collect();
        let e = net_policy(&f).unwrap_err();
        assert_eq!(e.flags, ["--dst"]);
        assert!(
            e.message
                .starts_with("interface eth0, egress, would need 9 lookup shapes"),
            "{e}"
        );
    }

    #[test]
    fn a_flag_that_needs_another_says_so() {
        let mut f = net();
        f.jitter = Some("5ms".into());
        refused(net_policy(&f), "--jitter: needs --delay too");
        let mut f = net();
        f.abort.interval = Some("2s".into());
        f.abort.failures = Some("2".into());
        refused(
            net_policy(&f),
            "--abort-interval, --abort-failures: needs --abort-http or --abort-tcp too",
        );
        let mut f = sys();
        f.pid = None;
        refused(
            syscall_policy(&f),
            "--pid or --comm or --cgroup or --unit is required",
        );
    }

    #[test]
    fn syscall_flag_errors() {
        let mut f = sys();
        f.syscalls = vec!["connect".into(), "nosuchcall".into()];
        refused(
            syscall_policy(&f),
            &format!(
                "--syscall: unknown syscall \"nosuchcall\"; expected a name as in man 2 on {}",
                std::env::consts::ARCH
            ),
        );
        let mut f = sys();
        f.syscalls = vec!["sys_connect".into()];
        assert!(
            syscall_policy(&f)
                .unwrap_err()
                .to_string()
                .contains("(did you mean connect?)")
        );
        let mut f = sys();
        f.syscalls = vec!["connect".into(), "connect".into()];
        refused(
            syscall_policy(&f),
            "--syscall: duplicate syscall name \"connect\"; expected each name once",
        );
        let mut f = sys();
        f.syscalls = vec!["Connect".into()];
        assert!(
            syscall_policy(&f)
                .unwrap_err()
                .to_string()
                .starts_with("--syscall: expected a syscall name")
        );
        let mut f = sys();
        f.errno = "ECONNREFUSD".into();
        assert!(
            syscall_policy(&f)
                .unwrap_err()
                .to_string()
                .starts_with("--errno: unknown errno \"ECONNREFUSD\" (did you mean ECONNREFUSED?)")
        );
        let mut f = sys();
        f.pid = Some("1".into());
        refused(
            syscall_policy(&f),
            "--pid: PID 1 is never targeted; expected another process id",
        );
        let mut f = sys();
        f.max_injections = Some("0".into());
        refused(
            syscall_policy(&f),
            r#"--max-injections: expected a whole number of at least 1, found "0""#,
        );
        let mut f = sys();
        f.percent = Some("101".into());
        assert!(
            syscall_policy(&f)
                .unwrap_err()
                .to_string()
                .starts_with("--percent: expected a percentage")
        );
    }

    #[test]
    fn set_builds_nested_documents() {
        let mut doc = Value::Mapping(Mapping::new());
        set(&mut doc, "a.b[1].c", text("x"));
        set(&mut doc, "a.b[1].d", text("y"));
        assert_eq!(
            serde_norway::to_string(&doc).unwrap(),
            "a:\n  b:\n  - null\n  - c: x\n    d: y\n"
        );
        assert!(contains("a.b", "a.b[1]") && contains("a.b", "a.b.c") && contains("a", "a"));
        assert!(!contains("a.b", "a.bc") && !contains("a.b.c", "a.b"));
    }
}
