//! Named network namespaces joined by a veth pair, and running code inside
//! a namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

/// Prefix of every namespace a [`NetnsPair`] creates.
pub const NETNS_PREFIX: &str = "cht-";

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

static PAIR_COUNTER: AtomicU32 = AtomicU32::new(0);
/// `ip netns add/del` set up the /run/netns mount on first use; keep our own
/// invocations from racing each other.
static NETNS_LOCK: Mutex<()> = Mutex::new(());
static STALE_ONCE: Once = Once::new();

/// One end of a [`NetnsPair`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    A,
    B,
}

impl Side {
    /// The other end.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// Which of the three address pairs on the veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddrKind {
    /// `198.18.0.1` (a) / `198.18.0.2` (b), subnet `198.18.0.0/24`.
    V4,
    /// `198.18.1.1` (a) / `198.18.1.2` (b), subnet `198.18.1.0/24`
    /// (for CIDR selection: target one subnet and not the other).
    V4Alt,
    /// `fd00:c4a0::1` (a) / `fd00:c4a0::2` (b), subnet `fd00:c4a0::/64`.
    V6,
}

impl AddrKind {
    /// All three kinds.
    pub const ALL: [AddrKind; 3] = [AddrKind::V4, AddrKind::V4Alt, AddrKind::V6];

    /// The subnet in CIDR notation, as policies and `--dst/--src` take it.
    pub fn subnet(self) -> &'static str {
        match self {
            AddrKind::V4 => "198.18.0.0/24",
            AddrKind::V4Alt => "198.18.1.0/24",
            AddrKind::V6 => "fd00:c4a0::/64",
        }
    }

    /// The address of `side` for this kind.
    pub fn addr(self, side: Side) -> IpAddr {
        match (self, side) {
            (AddrKind::V4, Side::A) => IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            (AddrKind::V4, Side::B) => IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
            (AddrKind::V4Alt, Side::A) => IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)),
            (AddrKind::V4Alt, Side::B) => IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2)),
            (AddrKind::V6, Side::A) => IpAddr::V6(Ipv6Addr::new(0xfd00, 0xc4a0, 0, 0, 0, 0, 0, 1)),
            (AddrKind::V6, Side::B) => IpAddr::V6(Ipv6Addr::new(0xfd00, 0xc4a0, 0, 0, 0, 0, 0, 2)),
        }
    }

    /// Prefix length of the subnet.
    pub fn prefix_len(self) -> u8 {
        match self {
            AddrKind::V4 | AddrKind::V4Alt => 24,
            AddrKind::V6 => 64,
        }
    }

    /// True for the IPv6 kind.
    pub fn is_v6(self) -> bool {
        matches!(self, AddrKind::V6)
    }
}

/// Traffic direction between the two ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    AtoB,
    BtoA,
}

impl Direction {
    /// The sending side.
    pub fn src(self) -> Side {
        match self {
            Direction::AtoB => Side::A,
            Direction::BtoA => Side::B,
        }
    }

    /// The receiving side.
    pub fn dst(self) -> Side {
        self.src().other()
    }
}

/// Two named network namespaces `a` and `b` joined by a veth pair
/// (`veth-a` in a, `veth-b` in b), each with `lo` up and the addresses of
/// [`AddrKind`]. Dropping it deletes both namespaces (and with them the veth).
#[derive(Debug)]
pub struct NetnsPair {
    ns_a: String,
    ns_b: String,
    if_a: String,
    if_b: String,
    created_a: bool,
    created_b: bool,
}

/// Interface name of the veth end in namespace a.
pub const IF_A: &str = "veth-a";
/// Interface name of the veth end in namespace b.
pub const IF_B: &str = "veth-b";

impl NetnsPair {
    /// Creates the pair. `tag` is 1..=12 characters of `[a-z0-9_]`; the
    /// namespaces are `cht-<tag>-<pid>-<n>-a` and `...-b` (`n` counts pairs
    /// in this process). Leftovers of dead processes (see [`stale_cleanup`])
    /// are removed once per process first. Returns only when the addresses
    /// of all three kinds carry UDP in both directions.
    pub fn new(tag: &str) -> Result<NetnsPair> {
        ensure!(
            !tag.is_empty()
                && tag.len() <= 12
                && tag
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
            "NetnsPair tag {tag:?} must be 1..=12 characters of [a-z0-9_]"
        );
        STALE_ONCE.call_once(|| {
            if let Err(e) = stale_cleanup(NETNS_PREFIX) {
                eprintln!("chaos-tests: stale netns cleanup failed: {e:#}");
            }
        });
        let n = PAIR_COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("{NETNS_PREFIX}{tag}-{}-{n}", std::process::id());
        let mut pair = NetnsPair {
            ns_a: format!("{base}-a"),
            ns_b: format!("{base}-b"),
            if_a: IF_A.to_string(),
            if_b: IF_B.to_string(),
            created_a: false,
            created_b: false,
        };
        // From here on, an error drops `pair`, which deletes what exists.
        netns_add(&pair.ns_a)?;
        pair.created_a = true;
        netns_add(&pair.ns_b)?;
        pair.created_b = true;
        pair.setup()
            .with_context(|| format!("setting up netns pair {base}"))?;
        Ok(pair)
    }

    fn setup(&self) -> Result<()> {
        ip(&[
            "-n", &self.ns_a, "link", "add", &self.if_a, "type", "veth", "peer", "name",
            &self.if_b, "netns", &self.ns_b,
        ])?;
        for side in [Side::A, Side::B] {
            let ns = self.ns(side);
            let ifname = self.iface(side).to_string();
            // No duplicate address detection: addresses are usable at once.
            self.run_in(side, move || -> Result<()> {
                for conf in ["all", "default", ifname.as_str()] {
                    for (key, val) in [("accept_dad", "0"), ("dad_transmits", "0")] {
                        let p = format!("/proc/sys/net/ipv6/conf/{conf}/{key}");
                        std::fs::write(&p, val).with_context(|| format!("writing {p}"))?;
                    }
                }
                Ok(())
            })??;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            for kind in AddrKind::ALL {
                let cidr = format!("{}/{}", kind.addr(side), kind.prefix_len());
                if kind.is_v6() {
                    ip(&[
                        "-n",
                        ns,
                        "-6",
                        "addr",
                        "add",
                        &cidr,
                        "dev",
                        self.iface(side),
                        "nodad",
                    ])?;
                } else {
                    ip(&["-n", ns, "addr", "add", &cidr, "dev", self.iface(side)])?;
                }
            }
        }
        for side in [Side::A, Side::B] {
            ip(&["-n", self.ns(side), "link", "set", self.iface(side), "up"])?;
        }
        self.wait_ready(Duration::from_secs(10))
    }

    /// Waits until one UDP datagram per address kind gets through in each
    /// direction (carrier up, addresses usable, neighbours resolvable).
    fn wait_ready(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        for kind in AddrKind::ALL {
            for dir in [Direction::AtoB, Direction::BtoA] {
                let dst = SocketAddr::new(kind.addr(dir.dst()), 0);
                let src = SocketAddr::new(kind.addr(dir.src()), 0);
                // Binding also proves the address is not tentative.
                let rx = self.run_in(dir.dst(), move || UdpSocket::bind(dst))??;
                rx.set_read_timeout(Some(Duration::from_millis(50)))?;
                let rx_addr = rx.local_addr()?;
                let tx = self.run_in(dir.src(), move || UdpSocket::bind(src))??;
                let mut buf = [0u8; 64];
                let mut ok = false;
                let mut attempts = 0u32;
                while Instant::now() < deadline && attempts < 200 {
                    attempts += 1;
                    let _ = tx.send_to(b"chaos-tests-ready", rx_addr);
                    if let Ok((n, _)) = rx.recv_from(&mut buf)
                        && &buf[..n] == b"chaos-tests-ready"
                    {
                        ok = true;
                        break;
                    }
                }
                ensure!(
                    ok,
                    "netns pair not ready: no UDP from {src} to {rx_addr} after {attempts} tries"
                );
            }
        }
        Ok(())
    }

    /// Name of the namespace of `side` (for `--netns` / `netns:`).
    pub fn ns(&self, side: Side) -> &str {
        match side {
            Side::A => &self.ns_a,
            Side::B => &self.ns_b,
        }
    }

    /// Name of namespace a.
    pub fn ns_a(&self) -> &str {
        &self.ns_a
    }

    /// Name of namespace b.
    pub fn ns_b(&self) -> &str {
        &self.ns_b
    }

    /// The veth interface in the namespace of `side`.
    pub fn iface(&self, side: Side) -> &str {
        match side {
            Side::A => &self.if_a,
            Side::B => &self.if_b,
        }
    }

    /// The veth interface in namespace a (`veth-a`).
    pub fn if_a(&self) -> &str {
        &self.if_a
    }

    /// The veth interface in namespace b (`veth-b`).
    pub fn if_b(&self) -> &str {
        &self.if_b
    }

    /// Address of `side` for `kind`.
    pub fn addr(&self, side: Side, kind: AddrKind) -> IpAddr {
        kind.addr(side)
    }

    /// Socket address of `side` for `kind` and `port`.
    pub fn sockaddr(&self, side: Side, kind: AddrKind, port: u16) -> SocketAddr {
        SocketAddr::new(kind.addr(side), port)
    }

    /// `198.18.0.1`
    pub fn v4_a(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 1)
    }

    /// `198.18.0.2`
    pub fn v4_b(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 2)
    }

    /// `198.18.1.1`
    pub fn v4_alt_a(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 1, 1)
    }

    /// `198.18.1.2`
    pub fn v4_alt_b(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 1, 2)
    }

    /// `fd00:c4a0::1`
    pub fn v6_a(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0xc4a0, 0, 0, 0, 0, 0, 1)
    }

    /// `fd00:c4a0::2`
    pub fn v6_b(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0xc4a0, 0, 0, 0, 0, 0, 2)
    }

    /// `/run/netns/<name>` of `side`.
    pub fn netns_path(&self, side: Side) -> PathBuf {
        netns_path(self.ns(side))
    }

    /// Runs `f` on a fresh thread inside the namespace of `side` and returns
    /// its result; sockets created in `f` belong to that namespace (and keep
    /// belonging to it when used from other threads later). A panic in `f`
    /// is propagated.
    pub fn run_in<T: Send, F: FnOnce() -> T + Send>(&self, side: Side, f: F) -> Result<T> {
        run_in_netns(self.ns(side), f)
    }

    /// [`run_in`](Self::run_in) for namespace a.
    pub fn run_in_a<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        self.run_in(Side::A, f)
    }

    /// [`run_in`](Self::run_in) for namespace b.
    pub fn run_in_b<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        self.run_in(Side::B, f)
    }

    /// Starts `f` on a new thread inside the namespace of `side` without
    /// waiting for it.
    pub fn spawn_in<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(
        &self,
        side: Side,
        f: F,
    ) -> Result<NsJoinHandle<T>> {
        spawn_in_netns(self.ns(side), f)
    }

    /// Runs `args[0] args[1..]` inside the namespace of `side`
    /// (`ip netns exec NS ...`) and returns its output.
    pub fn exec(&self, side: Side, args: &[&str]) -> Result<Output> {
        ns_exec(self.ns(side), args)
    }

    /// A `Command` that runs `program` inside the namespace of `side`
    /// (`ip netns exec NS program`); add arguments and spawn it yourself.
    pub fn command(&self, side: Side, program: impl AsRef<std::ffi::OsStr>) -> Command {
        ns_command(self.ns(side), program)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for (created, ns) in [(self.created_b, &self.ns_b), (self.created_a, &self.ns_a)] {
            if created && let Err(e) = netns_del(ns) {
                eprintln!("chaos-tests: could not delete netns {ns}: {e:#}");
            }
        }
    }
}

/// `/run/netns/<name>`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// True when the named namespace exists (`/run/netns/<name>`).
pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Runs `ip ARGS...` (iproute2), failing with its stderr on a non-zero exit.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn netns_add(name: &str) -> Result<()> {
    let _g = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ip(&["netns", "add", name])
}

/// Deletes a named namespace, retrying for up to two seconds (a namespace
/// still in use by an exiting process, or an `ip` killed by a Ctrl-C).
/// Succeeds when the namespace is gone.
pub fn netns_del(name: &str) -> Result<()> {
    let _g = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut last = None;
    for _ in 0..20 {
        if !netns_exists(name) {
            return Ok(());
        }
        match ip(&["netns", "del", name]) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !netns_exists(name) {
        return Ok(());
    }
    Err(last.unwrap_or_else(|| anyhow!("ip netns del {name} failed")))
}

fn setns_net(file: &File, name: &str) -> Result<()> {
    // SAFETY: setns on a valid namespace descriptor, for the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns into netns {name}"));
    }
    Ok(())
}

fn open_netns(name: &str) -> Result<File> {
    let path = netns_path(name);
    File::open(&path).with_context(|| format!("opening {}", path.display()))
}

/// Runs `f` on a fresh thread that has joined the named network namespace
/// (`setns(CLONE_NEWNET)`) and returns its result. A panic in `f` is
/// propagated to the caller. `/proc/thread-self/net/...` and
/// `/proc/sys/net/...` read in `f` show that namespace.
pub fn run_in_netns<T: Send, F: FnOnce() -> T + Send>(name: &str, f: F) -> Result<T> {
    let file = open_netns(name)?;
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn_scoped(s, move || -> Result<T> {
                setns_net(&file, name)?;
                drop(file);
                Ok(f())
            })
            .context("spawning netns thread")?;
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Handle of a thread started by [`spawn_in_netns`].
#[derive(Debug)]
pub struct NsJoinHandle<T> {
    handle: JoinHandle<Option<T>>,
}

impl<T> NsJoinHandle<T> {
    /// Waits for the thread; propagates a panic.
    pub fn join(self) -> Result<T> {
        match self.handle.join() {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(anyhow!("netns thread did not run its closure")),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// True when the thread has finished.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// Starts `f` on a new thread that has joined the named network namespace;
/// returns once the thread is inside it (or with the setns error).
pub fn spawn_in_netns<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(
    name: &str,
    f: F,
) -> Result<NsJoinHandle<T>> {
    let file = open_netns(name)?;
    let (tx, rx) = mpsc::channel::<Result<()>>();
    let owned = name.to_string();
    let handle = std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            let r = setns_net(&file, &owned);
            drop(file);
            let ok = r.is_ok();
            let _ = tx.send(r);
            if ok { Some(f()) } else { None }
        })
        .context("spawning netns thread")?;
    match rx.recv() {
        Ok(Ok(())) => Ok(NsJoinHandle { handle }),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(_) => Err(anyhow!("netns thread exited early")),
        },
    }
}

/// Runs `args[0]` with `args[1..]` inside the named namespace
/// (`ip netns exec NS ...`) and returns its output (whatever its status).
pub fn ns_exec(ns: &str, args: &[&str]) -> Result<Output> {
    ensure!(!args.is_empty(), "ns_exec needs a command");
    ns_command(ns, args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("ip netns exec {ns} {}", args.join(" ")))
}

/// A `Command` for `ip netns exec NS program`.
pub fn ns_command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// True when a process with this pid exists.
pub(crate) fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Parses the pid out of a pair namespace name
/// `<prefix><tag>-<pid>-<n>-<a|b>`.
fn pair_ns_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let mut parts = rest.rsplit('-');
    let side = parts.next()?;
    if side != "a" && side != "b" {
        return None;
    }
    let n = parts.next()?;
    n.parse::<u32>().ok()?;
    let pid = parts.next()?.parse::<u32>().ok()?;
    // A tag must remain.
    parts.next()?;
    Some(pid)
}

/// Deletes namespaces named `<prefix>...-<pid>-<n>-<a|b>` (as a
/// [`NetnsPair`] names them; the usual prefix is [`NETNS_PREFIX`]) whose
/// pid is no longer alive: leftovers of crashed runs. Returns the names
/// removed. Namespaces of live processes are never touched.
pub fn stale_cleanup(prefix: &str) -> Result<Vec<String>> {
    ensure!(!prefix.is_empty(), "stale_cleanup needs a non-empty prefix");
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).context("listing /run/netns"),
    };
    let own = std::process::id();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = pair_ns_pid(&name, prefix) else {
            continue;
        };
        if pid == own || pid_alive(pid) {
            continue;
        }
        netns_del(&name)?;
        removed.push(name);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pair_names() {
        assert_eq!(pair_ns_pid("cht-smoke-1234-0-a", "cht-"), Some(1234));
        assert_eq!(pair_ns_pid("cht-my_tag-77-12-b", "cht-"), Some(77));
        assert_eq!(pair_ns_pid("cht-1234-0-a", "cht-"), None);
        assert_eq!(pair_ns_pid("cht-x-1234-0-c", "cht-"), None);
        assert_eq!(pair_ns_pid("other-x-1234-0-a", "cht-"), None);
        assert_eq!(pair_ns_pid("cht-x-abc-0-a", "cht-"), None);
    }

    #[test]
    fn address_plan() {
        assert_eq!(AddrKind::V4.addr(Side::A).to_string(), "198.18.0.1");
        assert_eq!(AddrKind::V4Alt.addr(Side::B).to_string(), "198.18.1.2");
        assert_eq!(AddrKind::V6.addr(Side::B).to_string(), "fd00:c4a0::2");
        assert_eq!(Direction::BtoA.dst(), Side::A);
        assert!(IF_A.len() <= 15 && IF_B.len() <= 15);
    }

    #[test]
    fn own_process_is_alive() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
    }
}
