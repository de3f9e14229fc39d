//! Command-line interface (CONTRACT section 1) and exit codes (section 2).

use std::{io::IsTerminal, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    blast,
    engine::{self, Engine},
    error::{Error, Result},
    fault::Backend,
    metrics::Metrics,
    net::{AttachMode, NetOptions},
    policy::{
        self,
        model::{
            AbortWhen, CgroupSelector, Cidr, Direction, Fault, FaultKind, Guard, Match,
            NetworkAction, NetworkFault, Percent, Policy, PortRange, Probe, Protocol, SyscallFault,
            SyscallTarget,
        },
        values,
    },
    probe,
};

/// `blast syscall --backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SyscallBackend {
    Kprobe,
    Lsm,
    Cgroup,
}

impl From<SyscallBackend> for Backend {
    fn from(b: SyscallBackend) -> Backend {
        match b {
            SyscallBackend::Kprobe => Backend::Kprobe,
            SyscallBackend::Lsm => Backend::Lsm,
            SyscallBackend::Cgroup => Backend::Cgroup,
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "chaos-agent",
    version,
    about = "eBPF fault injector: network faults with deadlines enforced in the kernel"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// One-off fault in the foreground; reverts at the end of --duration, on Ctrl-C or SIGTERM.
    Blast(Box<BlastArgs>),
    /// Check policy files or directories without touching the kernel.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print what this kernel supports, with the reason for every "no".
    Probe {
        #[arg(long)]
        json: bool,
    },
    /// Daemon: applies every policy in DIR, reloads on change and SIGHUP,
    /// serves metrics, reverts everything on SIGTERM/SIGINT.
    Run {
        /// Directory of *.yaml / *.yml policy files.
        #[arg(long, value_name = "DIR", default_value = "/etc/chaos-agent/policies")]
        policies: PathBuf,
        /// Serve Prometheus metrics on http://ADDR/metrics; the port is added
        /// to the built-in guard.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
        metrics_addr: SocketAddr,
        /// Attach mechanism: tcx where the kernel has it, or netlink clsact.
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        attach: AttachMode,
    },
    /// Show the running daemon's policies, faults, counters and time left.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Revert policies in the running daemon; --all is the kill switch.
    Stop {
        #[arg(
            required_unless_present = "all",
            conflicts_with = "all",
            value_name = "POLICY"
        )]
        policies: Vec<String>,
        /// Revert every fault of every policy.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BlastArgs {
    /// Run the faults of a policy file.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunFlags,
    #[command(subcommand)]
    pub kind: Option<BlastKind>,
}

/// How a blast runs, whatever its faults.
#[derive(Args, Debug, Clone)]
pub struct RunFlags {
    /// Attach mechanism: tcx where the kernel has it, or netlink clsact.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto, global = true)]
    pub attach: AttachMode,
    /// Emit the kernel side's debug records (aya-log) into the log.
    #[arg(long, global = true)]
    pub debug_kernel: bool,
    /// Print events and counters as JSON lines on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9464)
    /// while the blast runs; the port is added to the built-in guard.
    #[arg(long, global = true, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

#[derive(Subcommand, Debug)]
pub enum BlastKind {
    /// A network fault on one interface.
    Net(Box<NetArgs>),
    /// Make chosen syscalls of chosen processes fail with an errno.
    Syscall(SyscallArgs),
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("action").required(true).multiple(false))]
pub struct NetArgs {
    /// Interface to attach to.
    #[arg(long)]
    pub iface: String,
    /// Named network namespace (ip netns) holding the interface.
    #[arg(long)]
    pub netns: Option<String>,
    /// egress, ingress or both.
    #[arg(long, default_value = "egress", value_parser = parse_with::<Direction>)]
    pub direction: Direction,
    /// tcp, udp, icmp (ICMP and ICMPv6) or any.
    #[arg(long, default_value = "any", value_parser = parse_with::<Protocol>)]
    pub proto: Protocol,
    /// Destination port or range A-B; repeatable.
    #[arg(long, value_parser = parse_with::<PortRange>)]
    pub dport: Vec<PortRange>,
    /// Source port or range A-B; repeatable.
    #[arg(long, value_parser = parse_with::<PortRange>)]
    pub sport: Vec<PortRange>,
    /// Destination CIDR; repeatable.
    #[arg(long, value_parser = parse_with::<Cidr>)]
    pub dst: Vec<Cidr>,
    /// Source CIDR; repeatable.
    #[arg(long, value_parser = parse_with::<Cidr>)]
    pub src: Vec<Cidr>,
    /// Only packets from this systemd unit's processes (egress).
    #[arg(long, conflicts_with = "cgroup", value_parser = values::parse_unit)]
    pub unit: Option<String>,
    /// Only packets from this cgroup (path under the cgroup2 mount; egress).
    #[arg(long, value_parser = values::parse_cgroup_path)]
    pub cgroup: Option<String>,
    /// Drop this share of matching packets.
    #[arg(long, group = "action", value_parser = parse_with::<Percent>)]
    pub loss: Option<Percent>,
    /// Delay matching packets (egress; needs the fq qdisc).
    #[arg(long, group = "action", value_parser = values::parse_duration)]
    pub delay: Option<Duration>,
    /// Jitter around --delay.
    #[arg(long, requires = "delay", value_parser = values::parse_duration)]
    pub jitter: Option<Duration>,
    /// Flip one bit in the payload of this share of matching packets (the
    /// L4 checksum is fixed, so applications receive the corrupted data).
    #[arg(long, group = "action", value_parser = parse_with::<Percent>)]
    pub corrupt: Option<Percent>,
    /// Send this share of matching packets twice.
    #[arg(long, group = "action", value_parser = parse_with::<Percent>)]
    pub duplicate: Option<Percent>,
    /// Limit matching traffic to this rate (needs the fq qdisc).
    #[arg(long, group = "action", value_parser = values::parse_rate)]
    pub rate: Option<u64>,
    /// How long the fault lasts; the kernel stops acting at start + duration.
    #[arg(long, value_parser = values::parse_positive_duration)]
    pub duration: Duration,
    /// Steady-state guard: revert early when GET URL (http://...) stops
    /// answering --abort-expect-status.
    #[arg(long, value_name = "URL", conflicts_with = "abort_tcp")]
    pub abort_http: Option<String>,
    /// Status the --abort-http probe expects.
    #[arg(long, default_value_t = 200, value_name = "CODE")]
    pub abort_expect_status: u16,
    /// Steady-state guard: revert early when HOST:PORT stops accepting TCP.
    #[arg(long, value_name = "HOST:PORT")]
    pub abort_tcp: Option<String>,
    /// How often the steady-state probe runs.
    #[arg(long, default_value = "1s", value_parser = values::parse_positive_duration)]
    pub abort_interval: Duration,
    /// Consecutive probe failures that revert the fault.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub abort_failures: u32,
}

/// The steady-state guard the `--abort-*` flags describe, if any.
fn abort_when(a: &NetArgs) -> Result<Option<AbortWhen>> {
    let probe = match (&a.abort_http, &a.abort_tcp) {
        (Some(url), _) => {
            if !url.starts_with("http://") || url.len() <= "http://".len() {
                return Err(Error::Invalid(format!(
                    "--abort-http: expected an http:// URL such as http://127.0.0.1:8080/health, found {url:?}"
                )));
            }
            Probe::Http {
                url: url.clone(),
                expect_status: a.abort_expect_status,
            }
        }
        (None, Some(addr)) => {
            if !addr
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
            {
                return Err(Error::Invalid(format!(
                    "--abort-tcp: expected HOST:PORT such as 127.0.0.1:5432, found {addr:?}"
                )));
            }
            Probe::Tcp { addr: addr.clone() }
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(AbortWhen {
        probe,
        interval: a.abort_interval,
        failures: a.abort_failures,
    }))
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("target").required(true).multiple(false))]
pub struct SyscallArgs {
    /// Syscall names as in man 2 (connect, openat, ...); comma-separated or repeated.
    #[arg(long = "syscall", required = true, value_delimiter = ',', value_parser = values::parse_syscall_name)]
    pub syscalls: Vec<String>,
    /// Errno to fail with: a name (ECONNREFUSED) or a number 1..4095.
    #[arg(long, value_parser = values::parse_errno)]
    pub errno: i32,
    /// Share of the target's calls that fail (default 100).
    #[arg(long, default_value = "100", value_parser = parse_with::<Percent>)]
    pub percent: Percent,
    /// Target: a process (the whole thread group).
    #[arg(long, group = "target", value_parser = values::parse_pid)]
    pub pid: Option<u32>,
    /// Target: processes with this command name (comm).
    #[arg(long, group = "target", value_parser = values::parse_comm)]
    pub comm: Option<String>,
    /// Target: processes in this cgroup (path under the cgroup2 mount) and its children.
    #[arg(long, group = "target", value_parser = values::parse_cgroup_path)]
    pub cgroup: Option<String>,
    /// Target: the processes of this systemd unit.
    #[arg(long, group = "target", value_parser = values::parse_unit)]
    pub unit: Option<String>,
    /// Fail at most this many calls in total (enforced in the kernel).
    #[arg(long)]
    pub max_injections: Option<u64>,
    /// Use this backend for every syscall instead of the most precise available one.
    #[arg(long, value_enum)]
    pub backend: Option<SyscallBackend>,
    /// How long the fault lasts; the kernel stops acting at start + duration.
    #[arg(long, value_parser = values::parse_positive_duration)]
    pub duration: Duration,
}

/// Builds the policy a `blast syscall` stands for.
pub fn syscall_policy(a: &SyscallArgs) -> Result<Policy> {
    let target = match (&a.pid, &a.comm, &a.cgroup, &a.unit) {
        (Some(p), ..) => SyscallTarget::Pid(*p),
        (_, Some(c), ..) => SyscallTarget::Comm(c.clone()),
        (_, _, Some(c), _) => SyscallTarget::Cgroup(c.clone()),
        (.., Some(u)) => SyscallTarget::Unit(u.clone()),
        _ => {
            return Err(Error::Invalid(
                "a target is required: one of --pid, --comm, --cgroup, --unit".into(),
            ));
        }
    };
    let mut names: Vec<String> = Vec::new();
    for n in &a.syscalls {
        if names.contains(n) {
            return Err(Error::Invalid(format!("--syscall: {n} is given twice")));
        }
        names.push(n.clone());
    }
    Ok(Policy {
        name: "blast".into(),
        origin: "<flags>".into(),
        duration: a.duration,
        start_after: Duration::ZERO,
        abort_when: None,
        guard: Guard::default(),
        faults: vec![Fault {
            name: "syscall".into(),
            kind: FaultKind::Syscall(SyscallFault {
                names,
                errno: a.errno,
                percent: a.percent,
                target,
                max_injections: a.max_injections,
            }),
        }],
    })
}

fn parse_with<T: std::str::FromStr<Err = String>>(s: &str) -> Result<T, String> {
    s.parse()
}

/// Builds the policy a `blast net` stands for.
pub fn net_policy(a: &NetArgs) -> Result<Policy> {
    // clap's `requires` does not hold once the action group is satisfied
    // by another flag, so this is checked here.
    if a.jitter.is_some() && a.delay.is_none() {
        return Err(Error::Invalid("--jitter needs --delay".into()));
    }
    let action = if let Some(percent) = a.loss {
        NetworkAction::Loss { percent }
    } else if let Some(latency) = a.delay {
        crate::net::qdisc::check_horizon(latency, a.jitter.unwrap_or_default())
            .map_err(|e| Error::Invalid(format!("--delay/--jitter: {e}")))?;
        NetworkAction::Delay {
            latency,
            jitter: a.jitter.unwrap_or_default(),
        }
    } else if let Some(percent) = a.corrupt {
        NetworkAction::Corrupt { percent }
    } else if let Some(percent) = a.duplicate {
        NetworkAction::Duplicate { percent }
    } else if let Some(rate_bps) = a.rate {
        NetworkAction::Bandwidth { rate_bps }
    } else {
        return Err(Error::Invalid("no action given".into()));
    };
    let cgroup = match (&a.unit, &a.cgroup) {
        (Some(u), _) => Some(CgroupSelector::Unit(u.clone())),
        (_, Some(c)) => Some(CgroupSelector::Path(c.clone())),
        _ => None,
    };
    if cgroup.is_some() && a.direction != Direction::Egress {
        return Err(Error::Invalid(
            "--unit and --cgroup select the sending process, so they need --direction egress"
                .into(),
        ));
    }
    if (!a.dport.is_empty() || !a.sport.is_empty()) && a.proto == Protocol::Icmp {
        return Err(Error::Invalid(
            "--dport and --sport need --proto tcp, udp or any (ICMP has no ports)".into(),
        ));
    }
    values::parse_interface(&a.iface).map_err(|e| Error::Invalid(format!("--iface: {e}")))?;
    if let Some(ns) = &a.netns {
        values::parse_netns(ns).map_err(|e| Error::Invalid(format!("--netns: {e}")))?;
    }
    Ok(Policy {
        name: "blast".into(),
        origin: "<flags>".into(),
        duration: a.duration,
        start_after: Duration::ZERO,
        abort_when: abort_when(a)?,
        guard: Guard::default(),
        faults: vec![Fault {
            name: "net".into(),
            kind: FaultKind::Network(NetworkFault {
                interface: a.iface.clone(),
                netns: a.netns.clone(),
                direction: a.direction,
                matcher: Match {
                    protocol: a.proto,
                    dst_ports: a.dport.clone(),
                    src_ports: a.sport.clone(),
                    dst_cidrs: a.dst.clone(),
                    src_cidrs: a.src.clone(),
                    cgroup,
                },
                action,
            }),
        }],
    })
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::{EnvFilter, fmt};
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::stderr().is_terminal();
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // `init` also routes `log` records (aya-log's kernel-side records among
    // them) into tracing.
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chaos-agent: {e}");
            e.exit_code()
        }
    }
}

/// The event loop of `blast` and `run`: one thread. Its end does not wait
/// for work still in flight (a steady-state probe's name lookup).
fn block_on<F: std::future::Future<Output = Result<ExitCode>>>(f: F) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(format!("cannot start the event loop: {e}")))?;
    let out = rt.block_on(f);
    rt.shutdown_timeout(Duration::from_millis(100));
    out
}

fn dispatch(cli: &Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Validate { paths } => Ok(validate(paths)),
        Command::Probe { json } => probe::print(*json),
        Command::Run {
            policies,
            metrics_addr,
            attach,
        } => block_on(crate::daemon::run(crate::daemon::DaemonArgs {
            policies: policies.clone(),
            metrics_addr: *metrics_addr,
            attach: *attach,
        })),
        Command::Status { json } => crate::control::client::status(*json),
        Command::Stop { policies, all } => crate::control::client::stop(policies, *all),
        Command::Blast(b) => {
            let mut backend = None;
            let policy = match (&b.policy, &b.kind) {
                (Some(path), None) => {
                    policy::load_file(path).map_err(|e| Error::Invalid(e.to_string()))?
                }
                (None, Some(BlastKind::Net(net))) => net_policy(net)?,
                (None, Some(BlastKind::Syscall(s))) => {
                    backend = s.backend.map(Backend::from);
                    syscall_policy(s)?
                }
                _ => {
                    return Err(Error::Invalid(
                        "blast needs `net`, `syscall` or --policy FILE".into(),
                    ));
                }
            };
            block_on(async {
                // Bound before anything is applied, so a busy port fails
                // early; its port joins the built-in guard.
                let metrics = b.run.metrics_addr.map(Metrics::bind).transpose()?;
                let engine = Engine::new(engine::Options {
                    net: NetOptions {
                        attach: b.run.attach,
                        debug_kernel: b.run.debug_kernel,
                        extra_default_ports: metrics
                            .iter()
                            .map(|m| m.local_addr().port())
                            .collect(),
                    },
                    syscall_backend: backend,
                });
                let output = blast::Output {
                    json: b.run.json,
                    metrics,
                };
                blast::run(&policy, engine, output).await
            })
        }
    }
}

fn validate(paths: &[PathBuf]) -> ExitCode {
    let mut bad = 0;
    for (path, result) in policy::load_paths(paths) {
        match result {
            Ok(p) => println!(
                "{}: ok ({} fault{})",
                path.display(),
                p.faults.len(),
                if p.faults.len() == 1 { "" } else { "s" }
            ),
            Err(e) => {
                bad += 1;
                eprintln!("{e}");
            }
        }
    }
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
