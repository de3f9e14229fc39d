//! Command-line interface and exit codes (docs/cli.md).

use std::{io::IsTerminal, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    blast,
    engine::{self, AttachMode, Engine, NetOptions},
    error::{Error, Result},
    fault::Backend,
    metrics::Metrics,
    policy::{
        self,
        flags::{self, AbortFlags, NetFlags, SyscallFlags},
        model::Policy,
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
        /// How long faults act without the daemon renewing its lease (a
        /// stopped or hung daemon's faults go inert after this); at least 1s.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = policy::values::parse_lease)]
        lease: Duration,
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
    /// How long faults act without the blast renewing its lease (a stopped
    /// or hung blast's faults go inert after this); at least 1s.
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = policy::values::parse_lease)]
    pub lease: Duration,
}

#[derive(Subcommand, Debug)]
pub enum BlastKind {
    /// A network fault on one interface.
    Net(Box<NetArgs>),
    /// Make chosen syscalls of chosen processes fail with an errno.
    Syscall(Box<SyscallArgs>),
}

/// `blast net`: every value is kept as typed and read by the policy loader
/// ([`policy::flags`]), so flags and policy files accept the same values
/// with the same messages. clap checks only which flags go together.
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("action").required(true).multiple(false))]
pub struct NetArgs {
    /// Interface to attach to.
    #[arg(long)]
    pub iface: String,
    /// Named network namespace (ip netns) holding the interface.
    #[arg(long)]
    pub netns: Option<String>,
    /// egress (the default), ingress or both.
    #[arg(long)]
    pub direction: Option<String>,
    /// tcp, udp, icmp (ICMP and ICMPv6) or any (the default).
    #[arg(long)]
    pub proto: Option<String>,
    /// Destination port or range A-B; repeatable.
    #[arg(long)]
    pub dport: Vec<String>,
    /// Source port or range A-B; repeatable.
    #[arg(long)]
    pub sport: Vec<String>,
    /// Destination CIDR; repeatable.
    #[arg(long)]
    pub dst: Vec<String>,
    /// Source CIDR; repeatable.
    #[arg(long)]
    pub src: Vec<String>,
    /// Only packets from this systemd unit's processes (egress).
    #[arg(long, conflicts_with = "cgroup")]
    pub unit: Option<String>,
    /// Only packets from this cgroup (path under the cgroup2 mount; egress).
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Drop this share of matching packets.
    #[arg(long, group = "action")]
    pub loss: Option<String>,
    /// Delay matching packets (egress; needs the fq qdisc).
    #[arg(long, group = "action")]
    pub delay: Option<String>,
    /// Jitter around --delay.
    #[arg(long)]
    pub jitter: Option<String>,
    /// Flip one bit in the payload of this share of matching packets (the
    /// L4 checksum is fixed, so applications receive the corrupted data).
    #[arg(long, group = "action")]
    pub corrupt: Option<String>,
    /// Send this share of matching packets twice.
    #[arg(long, group = "action")]
    pub duplicate: Option<String>,
    /// Limit matching traffic to this rate (needs the fq qdisc).
    #[arg(long, group = "action")]
    pub rate: Option<String>,
    /// How long the fault lasts; the kernel stops acting at start + duration.
    #[arg(long)]
    pub duration: String,
    #[command(flatten)]
    pub abort: AbortArgs,
}

/// The steady-state guard of a blast (a policy's `spec.abortWhen`).
#[derive(Args, Debug)]
pub struct AbortArgs {
    /// Steady-state guard: revert early when GET URL (http://...) stops
    /// answering --abort-expect-status.
    #[arg(
        id = "abort_http",
        long = "abort-http",
        value_name = "URL",
        conflicts_with = "abort_tcp"
    )]
    pub http: Option<String>,
    /// Status the --abort-http probe expects (default 200).
    #[arg(
        id = "abort_expect_status",
        long = "abort-expect-status",
        value_name = "CODE"
    )]
    pub expect_status: Option<String>,
    /// Steady-state guard: revert early when HOST:PORT stops accepting TCP.
    #[arg(id = "abort_tcp", long = "abort-tcp", value_name = "HOST:PORT")]
    pub tcp: Option<String>,
    /// How often the steady-state probe runs (default 1s).
    #[arg(
        id = "abort_interval",
        long = "abort-interval",
        value_name = "DURATION"
    )]
    pub interval: Option<String>,
    /// Consecutive probe failures that revert the fault (default 3).
    #[arg(id = "abort_failures", long = "abort-failures", value_name = "N")]
    pub failures: Option<String>,
}

impl From<&AbortArgs> for AbortFlags {
    fn from(a: &AbortArgs) -> Self {
        AbortFlags {
            http: a.http.clone(),
            expect_status: a.expect_status.clone(),
            tcp: a.tcp.clone(),
            interval: a.interval.clone(),
            failures: a.failures.clone(),
        }
    }
}

impl From<&NetArgs> for NetFlags {
    fn from(a: &NetArgs) -> Self {
        NetFlags {
            iface: a.iface.clone(),
            netns: a.netns.clone(),
            direction: a.direction.clone(),
            proto: a.proto.clone(),
            dport: a.dport.clone(),
            sport: a.sport.clone(),
            dst: a.dst.clone(),
            src: a.src.clone(),
            unit: a.unit.clone(),
            cgroup: a.cgroup.clone(),
            loss: a.loss.clone(),
            delay: a.delay.clone(),
            jitter: a.jitter.clone(),
            corrupt: a.corrupt.clone(),
            duplicate: a.duplicate.clone(),
            rate: a.rate.clone(),
            duration: a.duration.clone(),
            abort: (&a.abort).into(),
        }
    }
}

/// `blast syscall`; values are read by the policy loader, as for `blast net`.
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("target").required(true).multiple(false))]
pub struct SyscallArgs {
    /// Syscall names as in man 2 (connect, openat, ...); comma-separated or repeated.
    #[arg(long = "syscall", required = true, value_delimiter = ',')]
    pub syscalls: Vec<String>,
    /// Errno to fail with: a name (ECONNREFUSED) or a number 1..4095.
    #[arg(long)]
    pub errno: String,
    /// Share of the target's calls that fail (default 100).
    #[arg(long)]
    pub percent: Option<String>,
    /// Target: a process (the whole thread group).
    #[arg(long, group = "target")]
    pub pid: Option<String>,
    /// Target: processes with this command name (comm).
    #[arg(long, group = "target")]
    pub comm: Option<String>,
    /// Target: processes in this cgroup (path under the cgroup2 mount) and its children.
    #[arg(long, group = "target")]
    pub cgroup: Option<String>,
    /// Target: the processes of this systemd unit.
    #[arg(long, group = "target")]
    pub unit: Option<String>,
    /// Fail at most this many calls in total (enforced in the kernel).
    #[arg(long)]
    pub max_injections: Option<String>,
    /// Use this backend for every syscall instead of the most precise available one.
    #[arg(long, value_enum)]
    pub backend: Option<SyscallBackend>,
    /// How long the fault lasts; the kernel stops acting at start + duration.
    #[arg(long)]
    pub duration: String,
    #[command(flatten)]
    pub abort: AbortArgs,
}

impl From<&SyscallArgs> for SyscallFlags {
    fn from(a: &SyscallArgs) -> Self {
        SyscallFlags {
            syscalls: a.syscalls.clone(),
            errno: a.errno.clone(),
            percent: a.percent.clone(),
            pid: a.pid.clone(),
            comm: a.comm.clone(),
            cgroup: a.cgroup.clone(),
            unit: a.unit.clone(),
            max_injections: a.max_injections.clone(),
            duration: a.duration.clone(),
            abort: (&a.abort).into(),
        }
    }
}

/// Builds the policy a `blast syscall` stands for.
pub fn syscall_policy(a: &SyscallArgs) -> Result<Policy> {
    flags::syscall_policy(&a.into()).map_err(|e| Error::Invalid(e.to_string()))
}

/// Builds the policy a `blast net` stands for.
pub fn net_policy(a: &NetArgs) -> Result<Policy> {
    flags::net_policy(&a.into()).map_err(|e| Error::Invalid(e.to_string()))
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
            lease,
        } => block_on(crate::daemon::run(crate::daemon::DaemonArgs {
            policies: policies.clone(),
            metrics_addr: *metrics_addr,
            attach: *attach,
            lease: *lease,
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
                    // A policy may shorten the lease.
                    lease: policy.lease.map_or(b.run.lease, |l| l.min(b.run.lease)),
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::policy::model::FaultKind;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    /// The policy (or the refusal, exit 2) that a `blast ...` command line
    /// stands for; nothing is applied.
    fn blast(args: &[&str]) -> Result<Policy> {
        let cli = Cli::try_parse_from([&["chaos-agent", "blast"], args].concat()).unwrap();
        let Command::Blast(b) = cli.command else {
            panic!("a blast")
        };
        match b.kind {
            Some(BlastKind::Net(n)) => net_policy(&n),
            Some(BlastKind::Syscall(s)) => syscall_policy(&s),
            None => panic!("net or syscall"),
        }
    }

    #[track_caller]
    fn refused(args: &[&str], want: &str) {
        match blast(args) {
            Err(e @ Error::Invalid(_)) => {
                assert_eq!(e.to_string(), want);
                assert_eq!(e.exit_code(), ExitCode::from(2));
            }
            other => panic!("{args:?}: expected exit 2, got {other:?}"),
        }
    }

    #[test]
    fn flags_reach_the_policy_loader_as_typed() {
        let net = ["net", "--iface", "eth0", "--duration", "5s"];
        let p = blast(&[&net[..], &["--loss", "30%", "--dport", " 80 "]].concat()).unwrap();
        assert_eq!((p.name.as_str(), p.origin.as_str()), ("blast", "<flags>"));
        refused(
            &[&net[..], &["--loss", "30", "--dport", "70000"]].concat(),
            r#"--dport: expected a port (1-65535) or a range A-B, found "70000""#,
        );
        refused(
            &[&net[..], &["--jitter", "5ms", "--loss", "1"]].concat(),
            "--jitter: needs --delay too",
        );
        refused(
            &[&net[..], &["--loss", "1", "--abort-tcp", "nope"]].concat(),
            r#"--abort-tcp: expected HOST:PORT such as 127.0.0.1:5432 or [::1]:5432, found "nope""#,
        );
        refused(
            &[&net[..], &["--loss", "1", "--abort-interval", "2s"]].concat(),
            "--abort-interval: needs --abort-http or --abort-tcp too",
        );
        refused(
            &[&net[..], &["--loss", "1", "--abort-http", "ftp://x/"]].concat(),
            r#"--abort-http: expected an http:// URL such as http://127.0.0.1:8080/health, found "ftp://x/""#,
        );
        // Whitespace and '/' in probe targets: the validator's rules.
        refused(
            &[&net[..], &["--loss", "1", "--abort-tcp", "my host:80"]].concat(),
            r#"--abort-tcp: expected HOST:PORT such as 127.0.0.1:5432 or [::1]:5432, found "my host:80""#,
        );
        refused(
            &[&net[..], &["--loss", "1", "--abort-tcp", "a/b:80"]].concat(),
            r#"--abort-tcp: expected HOST:PORT such as 127.0.0.1:5432 or [::1]:5432, found "a/b:80""#,
        );
        refused(
            &[
                &net[..],
                &["--loss", "1", "--proto", "icmp", "--sport", "53"],
            ]
            .concat(),
            "--sport, --proto: ports need protocol tcp, udp or any (ICMP has no ports), found icmp",
        );
        refused(
            &[
                &net[..],
                &["--loss", "1", "--unit", "a.service", "--direction", "both"],
            ]
            .concat(),
            "--unit, --direction: unit needs direction egress (cgroups only see the packets they send), found direction both",
        );
        refused(
            &[&net[..], &["--rate", "1000"]].concat(),
            r#"--rate: expected a rate such as 100bit, 500kbit, 1mbit, 10gbit (bits/s) or 100bps, 1kbps, 1mbps (bytes/s), found "1000""#,
        );
    }

    #[test]
    fn syscall_flags_reach_the_policy_loader() {
        let sys = [
            "syscall",
            "--errno",
            "EIO",
            "--pid",
            "42",
            "--duration",
            "5s",
        ];
        let p = blast(&[&sys[..], &["--syscall", "connect,openat"]].concat()).unwrap();
        let FaultKind::Syscall(s) = &p.faults[0].kind else {
            panic!("a syscall fault")
        };
        assert_eq!(s.names, ["connect", "openat"]);
        assert_eq!(p.faults[0].name, "syscall");
        refused(
            &[&sys[..], &["--syscall", "connect,nosuchcall"]].concat(),
            &format!(
                "--syscall: unknown syscall \"nosuchcall\"; expected a name as in man 2 on {}",
                std::env::consts::ARCH
            ),
        );
        refused(
            &[&sys[..], &["--syscall", "connect", "--syscall", "connect"]].concat(),
            "--syscall: duplicate syscall name \"connect\"; expected each name once",
        );
        refused(
            &[&sys[..], &["--syscall", "read", "--max-injections", "0"]].concat(),
            r#"--max-injections: expected a whole number of at least 1, found "0""#,
        );
    }

    #[test]
    fn clap_still_checks_which_flags_go_together() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from([&["chaos-agent", "blast", "net"], args].concat())
                .map(|_| ())
                .map_err(|e| e.kind())
        };
        let base = ["--iface", "eth0", "--duration", "5s"];
        use clap::error::ErrorKind as K;
        assert_eq!(
            parse(&[&base[..], &["--loss", "1", "--corrupt", "2"]].concat()),
            Err(K::ArgumentConflict)
        );
        assert_eq!(parse(&base), Err(K::MissingRequiredArgument));
        assert_eq!(
            parse(
                &[
                    &base[..],
                    &["--loss", "1", "--unit", "a.service", "--cgroup", "/x"]
                ]
                .concat()
            ),
            Err(K::ArgumentConflict)
        );
        assert_eq!(
            parse(
                &[
                    &base[..],
                    &[
                        "--loss",
                        "1",
                        "--abort-http",
                        "http://x/",
                        "--abort-tcp",
                        "x:1"
                    ]
                ]
                .concat()
            ),
            Err(K::ArgumentConflict)
        );
        assert_eq!(parse(&[&base[..], &["--loss", "1"]].concat()), Ok(()));
    }
}
