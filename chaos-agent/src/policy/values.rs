//! Value parsers shared by the YAML loader and the command-line flags, so
//! both accept exactly the same syntax and say the same thing when a value is
//! wrong. Every error is a one-line message that says what was expected and
//! what was found.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
    time::Duration,
};

use super::model::{Cidr, Direction, NetworkAction, Percent, PortRange, Protocol};

/// The longest duration any policy field accepts (365 days).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The longest value quoted back in a message, in characters.
const QUOTE_MAX: usize = 80;

/// `Debug`-quoted, so a value with odd characters stays on one line; long
/// values are cut (`"xxxx…"`), so a message stays readable.
pub(crate) fn quoted(s: &str) -> String {
    match s.char_indices().nth(QUOTE_MAX) {
        None => format!("{s:?}"),
        Some((i, _)) => format!("{:?}…", &s[..i]),
    }
}

// ---------------------------------------------------------------------------
// Percent

pub(crate) const PERCENT_EXPECTED: &str = "a percentage from 0 to 100 (30, 30% or 0.5)";

impl FromStr for Percent {
    type Err = String;

    /// `30`, `30%`, `0.5`, `100`; the range is [0, 100].
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let num = t.strip_suffix('%').unwrap_or(t).trim_end();
        let bad = || format!("expected {PERCENT_EXPECTED}, found {}", quoted(s));
        // `f64::from_str` also takes "inf", "nan" and "1e2": only plain
        // decimal numbers are percentages here.
        if num.is_empty()
            || !num.chars().all(|c| c.is_ascii_digit() || c == '.')
            || num.starts_with('.')
            || num.ends_with('.')
        {
            return Err(bad());
        }
        let v: f64 = num.parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&v) {
            return Err(bad());
        }
        Ok(Percent(v))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

// ---------------------------------------------------------------------------
// Ports

pub(crate) const PORT_RANGE_EXPECTED: &str = "a port (1-65535) or a range A-B";
pub(crate) const PORT_EXPECTED: &str = "a port (1-65535)";

fn parse_port_number(s: &str) -> Option<u16> {
    let s = s.trim();
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match s.parse::<u32>() {
        Ok(n @ 1..=65535) => Some(n as u16),
        _ => None,
    }
}

/// A single port, 1..=65535 (used by `spec.guard.ports`).
pub fn parse_port(s: &str) -> Result<u16, String> {
    parse_port_number(s).ok_or_else(|| format!("expected {PORT_EXPECTED}, found {}", quoted(s)))
}

impl FromStr for PortRange {
    type Err = String;

    /// `5432` or `6000-6100`; ports are 1..=65535 and `first <= last`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected {PORT_RANGE_EXPECTED}, found {}", quoted(s));
        let (first, last) = match s.split_once('-') {
            None => {
                let p = parse_port_number(s).ok_or_else(bad)?;
                (p, p)
            }
            Some((a, b)) => (
                parse_port_number(a).ok_or_else(bad)?,
                parse_port_number(b).ok_or_else(bad)?,
            ),
        };
        if first > last {
            return Err(format!(
                "port range {first}-{last} is reversed; expected A-B with A <= B (did you mean {last}-{first}?)"
            ));
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

// ---------------------------------------------------------------------------
// CIDR

pub(crate) const CIDR_EXPECTED: &str =
    "an address or prefix such as 10.1.0.0/16, fd00::/8 or 192.0.2.7";

fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4(Ipv4Addr::from(bits & mask))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6(Ipv6Addr::from(bits & mask))
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `10.1.0.0/16`, `fd00::/8`, or a bare address (a /32 or /128).
    /// Host bits must be zero: `10.0.0.1/8` is refused.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let bad = || format!("expected {CIDR_EXPECTED}, found {}", quoted(s));
        let (addr_s, prefix_s) = match t.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (t, None),
        };
        let addr: IpAddr = addr_s.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_s {
            None => max,
            Some(p) => {
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let n: u8 = p.parse().map_err(|_| bad())?;
                if n > max {
                    return Err(format!(
                        "prefix length /{n} is too long for an IPv{} address; expected 0-{max}",
                        if addr.is_ipv4() { 4 } else { 6 }
                    ));
                }
                n
            }
        };
        let net = masked(addr, prefix);
        if net != addr {
            return Err(format!("host bits set; did you mean {net}/{prefix}?"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// Whether `ip` lies inside this prefix (an IPv4 prefix never contains an
    /// IPv6 address and vice versa).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                masked(ip, self.prefix) == self.addr
            }
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------
// Protocol, Direction

pub(crate) const PROTOCOL_EXPECTED: &str = "one of tcp, udp, icmp, any";
pub(crate) const DIRECTION_EXPECTED: &str = "one of egress, ingress, both";

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "icmp" => Ok(Protocol::Icmp),
            "any" => Ok(Protocol::Any),
            _ => Err(format!("expected {PROTOCOL_EXPECTED}, found {}", quoted(s))),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Any => "any",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        })
    }
}

impl FromStr for Direction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "egress" => Ok(Direction::Egress),
            "ingress" => Ok(Direction::Ingress),
            "both" => Ok(Direction::Both),
            _ => Err(format!(
                "expected {DIRECTION_EXPECTED}, found {}",
                quoted(s)
            )),
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
            Direction::Both => "both",
        })
    }
}

impl NetworkAction {
    /// The `action` metrics label: loss, delay, corrupt, duplicate, bandwidth.
    pub fn label(&self) -> &'static str {
        match self {
            NetworkAction::Loss { .. } => "loss",
            NetworkAction::Delay { .. } => "delay",
            NetworkAction::Corrupt { .. } => "corrupt",
            NetworkAction::Duplicate { .. } => "duplicate",
            NetworkAction::Bandwidth { .. } => "bandwidth",
        }
    }
}

// ---------------------------------------------------------------------------
// Durations

pub(crate) const DURATION_EXPECTED: &str = "a duration such as 250ms, 30s, 5m or 1h";

/// A humantime duration (`250ms`, `30s`, `5m`, `1h`, `1h 30m`). Zero is
/// accepted (`0s`, for `startAfter` and `jitter`); use
/// [`parse_positive_duration`] where zero makes no sense. At most
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let d = humantime::parse_duration(t).map_err(|e| {
        let why = match e {
            humantime::DurationError::NumberExpected(_) if !t.is_empty() => {
                " (a number must come before each unit)".to_string()
            }
            humantime::DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
                " (a unit is required)".to_string()
            }
            humantime::DurationError::UnknownUnit { unit, .. } => {
                format!(" (unknown unit {})", quoted(&unit))
            }
            humantime::DurationError::NumberOverflow => " (too large)".to_string(),
            _ => String::new(),
        };
        format!("expected {DURATION_EXPECTED}, found {}{why}", quoted(s))
    })?;
    if d > MAX_DURATION {
        return Err(format!(
            "duration {} is too long; expected at most 365d",
            quoted(s)
        ));
    }
    Ok(d)
}

/// Like [`parse_duration`], but zero is refused (`spec.duration`, `--duration`,
/// `delay.latency`, `abortWhen.interval`).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "expected a duration greater than zero such as 250ms, 30s, 5m or 1h, found {}",
            quoted(s)
        ));
    }
    Ok(d)
}

pub(crate) const LEASE_EXPECTED: &str = "a lease of at least 1s such as 2s or 10s";

/// A lease (`--lease`, `spec.lease`): at least a second, since the agent
/// renews it about once a second.
pub fn parse_lease(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("expected {LEASE_EXPECTED}, found {}", quoted(s)));
    }
    Ok(d)
}

// ---------------------------------------------------------------------------
// Rates

pub(crate) const RATE_EXPECTED: &str =
    "a rate such as 100bit, 500kbit, 1mbit, 10gbit (bits/s) or 100bps, 1kbps, 1mbps (bytes/s)";

/// A rate in tc's notation, returned in bits per second: `bit`, `kbit`,
/// `mbit`, `gbit`, `tbit` (powers of 1000) and `bps`, `kbps`, `mbps`, `gbps`
/// (bytes per second). A unit is required (tc's bare numbers are easy to
/// misread); zero is refused.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("expected {RATE_EXPECTED}, found {}", quoted(s));
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    let unit = unit.trim_start().to_ascii_lowercase();
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(bad());
    }
    let mult: u64 = match unit.as_str() {
        "bit" => 1,
        "kbit" => 1_000,
        "mbit" => 1_000_000,
        "gbit" => 1_000_000_000,
        "tbit" => 1_000_000_000_000,
        "bps" => 8,
        "kbps" => 8_000,
        "mbps" => 8_000_000,
        "gbps" => 8_000_000_000,
        _ => return Err(bad()),
    };
    let bits = match num.parse::<u64>() {
        Ok(n) => n.checked_mul(mult).ok_or_else(bad)?,
        Err(_) => {
            let v: f64 = num.parse().map_err(|_| bad())?;
            let b = (v * mult as f64).round();
            if !b.is_finite() || b >= u64::MAX as f64 {
                return Err(bad());
            }
            b as u64
        }
    };
    if bits == 0 {
        return Err(format!(
            "expected a rate greater than zero (at least 1bit), found {}",
            quoted(s)
        ));
    }
    Ok(bits)
}

// ---------------------------------------------------------------------------
// errno

pub(crate) const ERRNO_EXPECTED: &str =
    "an errno name such as ECONNREFUSED or a number from 1 to 4095";

/// Linux errno names on x86_64 (asm-generic/errno-base.h and errno.h), with
/// the usual aliases. Numbers missing here (41, 58) have no name.
const ERRNO_TABLE: &[(&str, i32)] = &[
    ("EPERM", 1),
    ("ENOENT", 2),
    ("ESRCH", 3),
    ("EINTR", 4),
    ("EIO", 5),
    ("ENXIO", 6),
    ("E2BIG", 7),
    ("ENOEXEC", 8),
    ("EBADF", 9),
    ("ECHILD", 10),
    ("EAGAIN", 11),
    ("EWOULDBLOCK", 11),
    ("ENOMEM", 12),
    ("EACCES", 13),
    ("EFAULT", 14),
    ("ENOTBLK", 15),
    ("EBUSY", 16),
    ("EEXIST", 17),
    ("EXDEV", 18),
    ("ENODEV", 19),
    ("ENOTDIR", 20),
    ("EISDIR", 21),
    ("EINVAL", 22),
    ("ENFILE", 23),
    ("EMFILE", 24),
    ("ENOTTY", 25),
    ("ETXTBSY", 26),
    ("EFBIG", 27),
    ("ENOSPC", 28),
    ("ESPIPE", 29),
    ("EROFS", 30),
    ("EMLINK", 31),
    ("EPIPE", 32),
    ("EDOM", 33),
    ("ERANGE", 34),
    ("EDEADLK", 35),
    ("EDEADLOCK", 35),
    ("ENAMETOOLONG", 36),
    ("ENOLCK", 37),
    ("ENOSYS", 38),
    ("ENOTEMPTY", 39),
    ("ELOOP", 40),
    ("ENOMSG", 42),
    ("EIDRM", 43),
    ("ECHRNG", 44),
    ("EL2NSYNC", 45),
    ("EL3HLT", 46),
    ("EL3RST", 47),
    ("ELNRNG", 48),
    ("EUNATCH", 49),
    ("ENOCSI", 50),
    ("EL2HLT", 51),
    ("EBADE", 52),
    ("EBADR", 53),
    ("EXFULL", 54),
    ("ENOANO", 55),
    ("EBADRQC", 56),
    ("EBADSLT", 57),
    ("EBFONT", 59),
    ("ENOSTR", 60),
    ("ENODATA", 61),
    ("ETIME", 62),
    ("ENOSR", 63),
    ("ENONET", 64),
    ("ENOPKG", 65),
    ("EREMOTE", 66),
    ("ENOLINK", 67),
    ("EADV", 68),
    ("ESRMNT", 69),
    ("ECOMM", 70),
    ("EPROTO", 71),
    ("EMULTIHOP", 72),
    ("EDOTDOT", 73),
    ("EBADMSG", 74),
    ("EOVERFLOW", 75),
    ("ENOTUNIQ", 76),
    ("EBADFD", 77),
    ("EREMCHG", 78),
    ("ELIBACC", 79),
    ("ELIBBAD", 80),
    ("ELIBSCN", 81),
    ("ELIBMAX", 82),
    ("ELIBEXEC", 83),
    ("EILSEQ", 84),
    ("ERESTART", 85),
    ("ESTRPIPE", 86),
    ("EUSERS", 87),
    ("ENOTSOCK", 88),
    ("EDESTADDRREQ", 89),
    ("EMSGSIZE", 90),
    ("EPROTOTYPE", 91),
    ("ENOPROTOOPT", 92),
    ("EPROTONOSUPPORT", 93),
    ("ESOCKTNOSUPPORT", 94),
    ("EOPNOTSUPP", 95),
    ("ENOTSUP", 95),
    ("EPFNOSUPPORT", 96),
    ("EAFNOSUPPORT", 97),
    ("EADDRINUSE", 98),
    ("EADDRNOTAVAIL", 99),
    ("ENETDOWN", 100),
    ("ENETUNREACH", 101),
    ("ENETRESET", 102),
    ("ECONNABORTED", 103),
    ("ECONNRESET", 104),
    ("ENOBUFS", 105),
    ("EISCONN", 106),
    ("ENOTCONN", 107),
    ("ESHUTDOWN", 108),
    ("ETOOMANYREFS", 109),
    ("ETIMEDOUT", 110),
    ("ECONNREFUSED", 111),
    ("EHOSTDOWN", 112),
    ("EHOSTUNREACH", 113),
    ("EALREADY", 114),
    ("EINPROGRESS", 115),
    ("ESTALE", 116),
    ("EUCLEAN", 117),
    ("ENOTNAM", 118),
    ("ENAVAIL", 119),
    ("EISNAM", 120),
    ("EREMOTEIO", 121),
    ("EDQUOT", 122),
    ("ENOMEDIUM", 123),
    ("EMEDIUMTYPE", 124),
    ("ECANCELED", 125),
    ("ENOKEY", 126),
    ("EKEYEXPIRED", 127),
    ("EKEYREVOKED", 128),
    ("EKEYREJECTED", 129),
    ("EOWNERDEAD", 130),
    ("ENOTRECOVERABLE", 131),
    ("ERFKILL", 132),
    ("EHWPOISON", 133),
];

/// The highest errno a syscall can return (the kernel's MAX_ERRNO).
pub const MAX_ERRNO: i32 = 4095;

/// An errno name (`ECONNREFUSED`, case-insensitive) or a number 1..=4095.
pub fn parse_errno(s: &str) -> Result<i32, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return match t.parse::<u32>() {
            Ok(n) if (1..=MAX_ERRNO as u32).contains(&n) => Ok(n as i32),
            _ => Err(format!(
                "errno {t} is out of range; expected {ERRNO_EXPECTED}"
            )),
        };
    }
    let upper = t.to_ascii_uppercase();
    if let Some(&(_, n)) = ERRNO_TABLE.iter().find(|(name, _)| *name == upper) {
        return Ok(n);
    }
    if t.starts_with('-') && t[1..].bytes().all(|b| b.is_ascii_digit()) && t.len() > 1 {
        return Err(format!(
            "errno {t} is out of range; expected {ERRNO_EXPECTED} (written without the minus sign)"
        ));
    }
    let hint = closest(&upper, ERRNO_TABLE.iter().map(|(n, _)| *n))
        .map(|n| format!(" (did you mean {n}?)"))
        .unwrap_or_default();
    Err(format!(
        "unknown errno {}{hint}; expected {ERRNO_EXPECTED}",
        quoted(s)
    ))
}

/// Every errno name the policy loader knows, aliases included.
pub(crate) fn errno_names() -> impl Iterator<Item = &'static str> {
    ERRNO_TABLE.iter().map(|(name, _)| *name)
}

/// The canonical name of an errno number (`111` -> `ECONNREFUSED`).
pub fn errno_name(errno: i32) -> Option<&'static str> {
    ERRNO_TABLE
        .iter()
        .find(|(_, n)| *n == errno)
        .map(|(name, _)| *name)
}

// ---------------------------------------------------------------------------
// Names and identifiers

pub(crate) const NAME_EXPECTED: &str = "a name of 1-63 characters from a-z, 0-9 and -";

/// A policy or fault name: `[a-z0-9-]{1,63}`.
pub fn parse_name(s: &str) -> Result<String, String> {
    if (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Ok(s.to_string())
    } else {
        Err(format!("expected {NAME_EXPECTED}, found {}", quoted(s)))
    }
}

pub(crate) const INTERFACE_EXPECTED: &str =
    "a network interface name such as eth0 (1-15 characters, no '/', ':' or spaces)";

/// A network interface name as the kernel accepts it (`dev_valid_name`).
pub fn parse_interface(s: &str) -> Result<String, String> {
    let ok = (1..=15).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "expected {INTERFACE_EXPECTED}, found {}",
            quoted(s)
        ))
    }
}

pub(crate) const NETNS_EXPECTED: &str =
    "the name of a network namespace under /run/netns (as in `ip netns`), without '/'";

/// A named network namespace of `ip netns` (a file name under `/run/netns`).
pub fn parse_netns(s: &str) -> Result<String, String> {
    let ok = (1..=255).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("expected {NETNS_EXPECTED}, found {}", quoted(s)))
    }
}

pub(crate) const UNIT_EXPECTED: &str = "a systemd unit name such as db-client.service (ending in .service, .scope, .slice, .socket, .mount or .swap)";

/// A systemd unit name that owns a cgroup (`db-client.service`).
pub fn parse_unit(s: &str) -> Result<String, String> {
    const SUFFIXES: &[&str] = &[".service", ".scope", ".slice", ".socket", ".mount", ".swap"];
    let ok = s.len() <= 255
        && SUFFIXES
            .iter()
            .any(|suf| s.len() > suf.len() && s.ends_with(suf))
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("expected {UNIT_EXPECTED}, found {}", quoted(s)))
    }
}

pub(crate) const CGROUP_EXPECTED: &str =
    "a cgroup v2 path starting with / such as /system.slice/db-client.service";

/// A cgroup v2 path relative to the cgroup2 mount, starting with `/`.
pub fn parse_cgroup_path(s: &str) -> Result<String, String> {
    let ok = s.starts_with('/')
        && s.len() <= 4096
        && !s.chars().any(char::is_control)
        && s.split('/').all(|c| c != "." && c != "..");
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("expected {CGROUP_EXPECTED}, found {}", quoted(s)))
    }
}

pub(crate) const SYSCALL_EXPECTED: &str =
    "a syscall name as in man 2 such as connect (a-z, 0-9, _)";

/// A syscall name: `[a-z0-9_]+` (at most 64 characters). Whether the kernel
/// has it is checked when the fault is applied.
pub fn parse_syscall_name(s: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("expected {SYSCALL_EXPECTED}, found {}", quoted(s)))
    }
}

pub(crate) const COMM_EXPECTED: &str = "a process name (comm) of 1-15 characters";

/// A process `comm` (what `ps -o comm` shows): 1..=15 bytes.
pub fn parse_comm(s: &str) -> Result<String, String> {
    if (1..=15).contains(&s.len()) && !s.chars().any(char::is_control) {
        Ok(s.to_string())
    } else {
        Err(format!("expected {COMM_EXPECTED}, found {}", quoted(s)))
    }
}

/// A process id to target with a syscall fault: a number >= 2 (PID 1 is
/// never targeted).
pub fn parse_pid(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let n: u32 = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse()
            .map_err(|_| format!("expected a process id, found {}", quoted(s)))?
    } else {
        return Err(format!("expected a process id, found {}", quoted(s)));
    };
    match n {
        0 => Err("expected a process id, found 0".to_string()),
        1 => Err("PID 1 is never targeted; expected another process id".to_string()),
        n => Ok(n),
    }
}

/// The closest candidate within edit distance 2, if any.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .map(|c| (edit_distance(&word, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > 2 || a.len() > 64 || b.len() > 64 {
        return usize::MAX;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent() {
        assert_eq!("30".parse::<Percent>(), Ok(Percent(30.0)));
        assert_eq!("30%".parse::<Percent>(), Ok(Percent(30.0)));
        assert_eq!("0.5".parse::<Percent>(), Ok(Percent(0.5)));
        assert_eq!("100".parse::<Percent>(), Ok(Percent(100.0)));
        assert_eq!("0".parse::<Percent>(), Ok(Percent(0.0)));
        assert_eq!(" 12.5 % ".parse::<Percent>(), Ok(Percent(12.5)));
        for bad in [
            "150", "-1", "abc", "", "%", "nan", "inf", "1e2", ".5", "5.", "100.01",
        ] {
            let e = bad.parse::<Percent>().unwrap_err();
            assert!(e.contains("expected a percentage"), "{bad}: {e}");
        }
        assert_eq!(Percent(30.0).to_string(), "30%");
        let long = "9".repeat(1000);
        let e = long.parse::<Percent>().unwrap_err();
        assert!(e.len() < 200 && e.ends_with("99\"…"), "{e}");
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            "5432".parse(),
            Ok(PortRange {
                first: 5432,
                last: 5432
            })
        );
        assert_eq!(
            "6000-6100".parse(),
            Ok(PortRange {
                first: 6000,
                last: 6100
            })
        );
        assert_eq!(
            "1-65535".parse(),
            Ok(PortRange {
                first: 1,
                last: 65535
            })
        );
        assert_eq!(
            "70000".parse::<PortRange>().unwrap_err(),
            r#"expected a port (1-65535) or a range A-B, found "70000""#
        );
        for bad in ["0", "", "-", "1-", "-5", "a", "1-2-3", "+5", "99999999999"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
        assert!(
            "10-5"
                .parse::<PortRange>()
                .unwrap_err()
                .contains("reversed")
        );
        assert_eq!(PortRange { first: 1, last: 2 }.to_string(), "1-2");
        assert_eq!(parse_port("22"), Ok(22));
        assert!(parse_port("22-23").is_err());
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.1.0.0/16");
        assert_eq!("fd00::/8".parse::<Cidr>().unwrap().prefix, 8);
        assert_eq!("192.0.2.7".parse::<Cidr>().unwrap().prefix, 32);
        assert_eq!("2001:db8::1".parse::<Cidr>().unwrap().prefix, 128);
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix, 0);
        assert_eq!(
            "10.0.0.1/8".parse::<Cidr>().unwrap_err(),
            "host bits set; did you mean 10.0.0.0/8?"
        );
        assert!(
            "fd00::1/8"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("did you mean fd00::/8?")
        );
        assert!(
            "10.0.0.0/33"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("too long")
        );
        for bad in [
            "",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/x",
            "host",
            "10.0.0.0/-1",
        ] {
            assert!(
                bad.parse::<Cidr>()
                    .unwrap_err()
                    .contains("expected an address"),
                "{bad}"
            );
        }
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
    }

    #[test]
    fn protocol_direction() {
        assert_eq!("tcp".parse(), Ok(Protocol::Tcp));
        assert_eq!("any".parse(), Ok(Protocol::Any));
        assert!(
            "sctp"
                .parse::<Protocol>()
                .unwrap_err()
                .contains("tcp, udp, icmp, any")
        );
        assert_eq!("both".parse(), Ok(Direction::Both));
        assert!("out".parse::<Direction>().unwrap_err().contains("egress"));
        for p in [Protocol::Any, Protocol::Tcp, Protocol::Udp, Protocol::Icmp] {
            assert_eq!(p.to_string().parse(), Ok(p));
        }
        for d in [Direction::Egress, Direction::Ingress, Direction::Both] {
            assert_eq!(d.to_string().parse(), Ok(d));
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(
            parse_duration("10")
                .unwrap_err()
                .contains("a unit is required")
        );
        assert!(
            parse_duration("10 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(
            parse_duration("")
                .unwrap_err()
                .contains("expected a duration")
        );
        assert!(parse_duration("400d").unwrap_err().contains("at most 365d"));
        assert!(
            parse_positive_duration("0s")
                .unwrap_err()
                .contains("greater than zero")
        );
        assert_eq!(parse_positive_duration("1s"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1mbit"), Ok(1_000_000));
        assert_eq!(parse_rate("500kbit"), Ok(500_000));
        assert_eq!(parse_rate("10gbit"), Ok(10_000_000_000));
        assert_eq!(parse_rate("100bit"), Ok(100));
        assert_eq!(parse_rate("1kbps"), Ok(8_000));
        assert_eq!(parse_rate("2mbps"), Ok(16_000_000));
        assert_eq!(parse_rate("100bps"), Ok(800));
        assert_eq!(parse_rate("1.5mbit"), Ok(1_500_000));
        assert_eq!(parse_rate("1Mbit"), Ok(1_000_000));
        assert!(
            parse_rate("0mbit")
                .unwrap_err()
                .contains("greater than zero")
        );
        for bad in [
            "",
            "1000",
            "mbit",
            "1 furlong",
            "1.mbit",
            "-1mbit",
            "99999999999999tbit",
        ] {
            assert!(
                parse_rate(bad).unwrap_err().contains("expected a rate"),
                "{bad}"
            );
        }
    }

    #[test]
    fn errnos() {
        assert_eq!(parse_errno("ECONNREFUSED"), Ok(111));
        assert_eq!(parse_errno("econnrefused"), Ok(111));
        assert_eq!(parse_errno("111"), Ok(111));
        assert_eq!(parse_errno("4095"), Ok(4095));
        assert!(parse_errno("0").unwrap_err().contains("out of range"));
        assert!(parse_errno("5000").unwrap_err().contains("out of range"));
        assert!(parse_errno("-111").unwrap_err().contains("out of range"));
        let e = parse_errno("ECONREFUSED").unwrap_err();
        assert!(
            e.contains("unknown errno") && e.contains("did you mean ECONNREFUSED?"),
            "{e}"
        );
        assert_eq!(errno_name(111), Some("ECONNREFUSED"));
        assert_eq!(errno_name(11), Some("EAGAIN"));
    }

    /// The errno table agrees with the C library's numbers.
    #[test]
    fn errno_table_matches_libc() {
        macro_rules! check {
            ($($name:ident)*) => {$(
                assert_eq!(parse_errno(stringify!($name)), Ok(libc::$name), stringify!($name));
            )*};
        }
        check!(EPERM ENOENT ESRCH EINTR EIO ENXIO E2BIG ENOEXEC EBADF ECHILD EAGAIN
            EWOULDBLOCK ENOMEM EACCES EFAULT ENOTBLK EBUSY EEXIST EXDEV ENODEV ENOTDIR
            EISDIR EINVAL ENFILE EMFILE ENOTTY ETXTBSY EFBIG ENOSPC ESPIPE EROFS EMLINK
            EPIPE EDOM ERANGE EDEADLK EDEADLOCK ENAMETOOLONG ENOLCK ENOSYS ENOTEMPTY
            ELOOP ENOMSG EIDRM ECHRNG EL2NSYNC EL3HLT EL3RST ELNRNG EUNATCH ENOCSI
            EL2HLT EBADE EBADR EXFULL ENOANO EBADRQC EBADSLT EBFONT ENOSTR ENODATA ETIME
            ENOSR ENONET ENOPKG EREMOTE ENOLINK EADV ESRMNT ECOMM EPROTO EMULTIHOP
            EDOTDOT EBADMSG EOVERFLOW ENOTUNIQ EBADFD EREMCHG ELIBACC ELIBBAD ELIBSCN
            ELIBMAX ELIBEXEC EILSEQ ERESTART ESTRPIPE EUSERS ENOTSOCK EDESTADDRREQ
            EMSGSIZE EPROTOTYPE ENOPROTOOPT EPROTONOSUPPORT ESOCKTNOSUPPORT EOPNOTSUPP
            ENOTSUP EPFNOSUPPORT EAFNOSUPPORT EADDRINUSE EADDRNOTAVAIL ENETDOWN
            ENETUNREACH ENETRESET ECONNABORTED ECONNRESET ENOBUFS EISCONN ENOTCONN
            ESHUTDOWN ETOOMANYREFS ETIMEDOUT ECONNREFUSED EHOSTDOWN EHOSTUNREACH
            EALREADY EINPROGRESS ESTALE EUCLEAN ENOTNAM ENAVAIL EISNAM EREMOTEIO EDQUOT
            ENOMEDIUM EMEDIUMTYPE ECANCELED ENOKEY EKEYEXPIRED EKEYREVOKED EKEYREJECTED
            EOWNERDEAD ENOTRECOVERABLE ERFKILL EHWPOISON);
        assert_eq!(ERRNO_TABLE.len(), 134);
    }

    #[test]
    fn names_and_identifiers() {
        assert!(parse_name("checkout-db-latency").is_ok());
        assert!(parse_name("Checkout").is_err());
        assert!(parse_name("").is_err());
        assert!(parse_name(&"a".repeat(64)).is_err());
        assert!(parse_interface("eth0").is_ok());
        assert!(parse_interface("veth-demo-a").is_ok());
        assert!(parse_interface("a-very-long-interface").is_err());
        assert!(parse_interface("eth0/1").is_err());
        assert!(parse_netns("chaos-demo-a").is_ok());
        assert!(parse_netns("../etc").is_err());
        assert!(parse_unit("billing-worker.service").is_ok());
        assert!(parse_unit("user@1000.service").is_ok());
        assert!(parse_unit("billing-worker").is_err());
        assert!(parse_unit("/system.slice/x.service").is_err());
        assert!(parse_cgroup_path("/system.slice/db.service").is_ok());
        assert!(parse_cgroup_path("system.slice").is_err());
        assert!(parse_cgroup_path("/a/../b").is_err());
        assert!(parse_syscall_name("connect").is_ok());
        assert!(parse_syscall_name("Connect").is_err());
        assert!(parse_comm("postgres").is_ok());
        assert!(parse_comm("a-name-that-is-too-long").is_err());
        assert_eq!(parse_pid("42"), Ok(42));
        assert!(parse_pid("1").unwrap_err().contains("PID 1"));
        assert!(parse_pid("0").is_err());
        assert!(parse_pid("x").is_err());
    }
}
