//! Command-line interface and exit codes (docs/cli.md); `man.rs` turns the
//! same definitions into man pages and shell completions.

mod journal;
mod man;

use std::{io::IsTerminal, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

pub use man::{write_completions, write_man_pages};

use crate::{
    blast,
    engine::{self, AttachMode, Engine, NetOptions},
    error::{Error, Result},
    fault::Backend,
    metrics::{Metrics, otlp},
    policy::{
        self,
        flags::{self, AbortFlags, ModeFlags, NetFlags, SyscallFlags},
        model::{Mode, Policy},
    },
    probe,
    version::{BUILD_DATE, COMMIT, VERSION},
};

/// What `--version` prints after the name.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CHAOS_AGENT_COMMIT"),
    ", built ",
    env!("CHAOS_AGENT_BUILD_DATE"),
    ")"
);

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

// Help headings of `blast net` and `blast syscall`.
const SELECTION: &str = "Selection";
const TARGET: &str = "Target";
const FAULT: &str = "Fault";
const GUARD: &str = "Steady-state guard";
const RUN: &str = "Run";

// Examples at the end of each command's help (and in its man page, which
// `man.rs` builds from the same text): an unindented title, a two-space
// indented line saying what the commands under it (four spaces) do.
// Every `chaos-agent ...` line here is parsed by the tests.

const ROOT_EXAMPLES: &str = "\
Examples:
  Drop 30 % of the UDP that eth0 sends to port 7000, for a minute:
    chaos-agent blast net --iface eth0 --proto udp --dport 7000 --loss 30 --duration 1m
  Check policy files, then run one in the foreground:
    chaos-agent validate policies/
    chaos-agent blast --policy policies/demo.yaml
  What this kernel supports, per fault kind:
    chaos-agent probe

Exit status:
  0  did what was asked; a blast has reverted every fault it applied
  1  runtime failure; the message says what failed and what is left, if anything
  2  invalid input: a flag, a policy file, an interface, cgroup or process that is not there; nothing applied
  3  not supported on this host: the message names the kernel feature; nothing applied";

const BLAST_EXAMPLES: &str = "\
Examples:
  Run the faults of a policy file until its duration ends, Ctrl-C or SIGTERM:
    chaos-agent blast --policy policies/demo.yaml
  The same with netlink clsact filters, events as JSON lines:
    chaos-agent blast --policy policies/demo.yaml --attach netlink --json
  See what a policy would hit, without touching anything (shadow mode):
    chaos-agent blast --policy policies/demo.yaml --shadow";

const NET_EXAMPLES: &str = "\
Examples:
  Drop 30 % of the UDP that eth0 sends to port 7000, for a minute:
    chaos-agent blast net --iface eth0 --proto udp --dport 7000 --loss 30 --duration 1m
  Delay what eth0 receives from 10.30.0.0/16 by 100 ms +- 20 ms (ingress: Linux 6.4+):
    chaos-agent blast net --iface eth0 --direction ingress --src 10.30.0.0/16 --delay 100ms --jitter 20ms --duration 5m
  Squeeze backup.service to 1 Mbit/s; stop early when the local API stops answering:
    chaos-agent blast net --iface eth0 --unit backup.service --rate 1mbit --duration 10m --abort-http http://127.0.0.1:8080/health
  Name the run in its metrics and push them to an OpenTelemetry collector (OTLP/HTTP):
    chaos-agent blast net --iface eth0 --proto udp --dport 7000 --loss 5 --duration 30s --name edge-loss --otlp-endpoint http://127.0.0.1:4318
  Lose 10 % of it in runs of 8 packets on average, as a wireless link does:
    chaos-agent blast net --iface eth0 --proto udp --dport 7000 --loss 10 --burst 8 --duration 1m
  A link that dies for 200 ms every 5 s; first count what it would drop:
    chaos-agent blast net --iface eth0 --loss 100 --flap 200ms/4800ms --shadow --duration 1m";

const SYSCALL_EXAMPLES: &str = "\
Examples:
  Refuse half of the connect() calls of payment.service, for 5 minutes:
    chaos-agent blast syscall --syscall connect --errno ECONNREFUSED --percent 50 --unit payment.service --duration 5m
  Fail openat and read of process 4242 with EIO, at most 100 times:
    chaos-agent blast syscall --syscall openat,read --errno EIO --pid 4242 --max-injections 100 --duration 1m
  Refuse every connect() of api.service for 1 s out of 10:
    chaos-agent blast syscall --syscall connect --errno ECONNREFUSED --unit api.service --flap 1s/9s --duration 10m";

const VALIDATE_EXAMPLES: &str = "\
Examples:
  Check one file, or every *.yaml / *.yml file of a directory:
    chaos-agent validate policies/demo.yaml
    chaos-agent validate /etc/chaos-agent/policies";

const PROBE_EXAMPLES: &str = "\
Examples:
  What this kernel supports, as text or JSON:
    chaos-agent probe
    chaos-agent probe --json";

const RUN_EXAMPLES: &str = "\
Examples:
  The daemon as its systemd unit runs it:
    chaos-agent run --policies /etc/chaos-agent/policies --metrics-addr 127.0.0.1:9464
  Policies from another directory, attached with netlink clsact filters:
    chaos-agent run --policies ./policies --attach netlink
  Also push the metrics to an OpenTelemetry collector every 10 s (OTLP/HTTP):
    chaos-agent run --policies /etc/chaos-agent/policies --otlp-endpoint http://127.0.0.1:4318";

const STATUS_EXAMPLES: &str = "\
Examples:
  The running daemon's policies, faults, counters and time left:
    chaos-agent status
    chaos-agent status --json";

const STOP_EXAMPLES: &str = "\
Examples:
  Revert one policy, or everything (the kill switch):
    chaos-agent stop checkout-db-latency
    chaos-agent stop --all";

const SCHEMA_EXAMPLES: &str = "\
Examples:
  Save the schema next to your policies; an editor's YAML language server
  reads it from a first line `# yaml-language-server: $schema=policy.schema.json`:
    chaos-agent schema > policy.schema.json";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  Completion for the current bash, and zsh completion for one user:
    source <(chaos-agent completions bash)
    chaos-agent completions zsh > ~/.zfunc/_chaos-agent";

const MAN_EXAMPLES: &str = "\
Examples:
  Write the man pages where man looks for one user's pages:
    chaos-agent man ~/.local/share/man/man1";

const VERSION_EXAMPLES: &str = "\
Examples:
  The version, commit and build date, as text or JSON:
    chaos-agent version
    chaos-agent version --json";

#[derive(Parser, Debug)]
#[command(
    name = "chaos-agent",
    version = LONG_VERSION,
    about = "eBPF fault injector: network and syscall faults with deadlines enforced in the kernel",
    after_help = ROOT_EXAMPLES
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text, global = true)]
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
    #[command(after_help = VALIDATE_EXAMPLES)]
    Validate {
        /// Policy files, or directories whose *.yaml / *.yml files are checked.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print what this kernel supports, with the reason for every "no".
    #[command(after_help = PROBE_EXAMPLES)]
    Probe {
        /// Print the report as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Daemon: applies every policy in DIR, reloads on change and SIGHUP,
    /// serves metrics, reverts everything on SIGTERM/SIGINT.
    #[command(after_help = RUN_EXAMPLES)]
    Run {
        /// Directory of *.yaml / *.yml policy files.
        #[arg(long, value_name = "DIR", default_value = "/etc/chaos-agent/policies")]
        policies: PathBuf,
        /// Serve Prometheus metrics on http://ADDR/metrics, health on /healthz and /readyz; the port joins the built-in guard.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
        metrics_addr: SocketAddr,
        /// auto (tcx links on Linux 6.6+, else netlink), tcx or netlink (clsact filters).
        #[arg(
            long,
            value_enum,
            value_name = "MODE",
            default_value_t = AttachMode::Auto,
            hide_possible_values = true
        )]
        attach: AttachMode,
        /// Faults stop acting this long after the daemon stops renewing its lease (stopped, hung); at least 1s.
        #[arg(long, value_name = "DUR", default_value = "10s", value_parser = policy::values::parse_lease)]
        lease: Duration,
        /// Also push the metrics over OTLP/HTTP to URL/v1/metrics every 10s (default: OTEL_EXPORTER_OTLP_ENDPOINT).
        #[arg(long, value_name = "URL")]
        otlp_endpoint: Option<String>,
    },
    /// Show the running daemon's policies, faults, counters and time left.
    #[command(after_help = STATUS_EXAMPLES)]
    Status {
        /// Print the status as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Revert policies in the running daemon; --all is the kill switch.
    #[command(after_help = STOP_EXAMPLES)]
    Stop {
        /// Names of the policies to revert (their metadata.name).
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
    /// Print the JSON Schema of policy files, for editors and other tools.
    #[command(after_help = SCHEMA_EXAMPLES)]
    Schema,
    /// Print the completion script of a shell.
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write one man page per command (chaos-agent.1, chaos-agent-blast.1, ...) into DIR.
    #[command(after_help = MAN_EXAMPLES)]
    Man {
        /// Directory for the pages, created if missing.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Print the version, the commit it was built from and the build date.
    #[command(after_help = VERSION_EXAMPLES)]
    Version {
        /// Print {"version", "commit", "build_date"} as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `blast`: `--policy FILE`, or a `net` or `syscall` subcommand.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, after_help = BLAST_EXAMPLES)]
pub struct BlastArgs {
    /// Run the faults of a policy file (network, syscall or both).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// With --policy: shadow mode whatever the file says (spec.mode: shadow).
    #[arg(long, requires = "policy", help_heading = RUN)]
    pub shadow: bool,
    #[command(flatten)]
    pub tc: TcFlags,
    #[command(flatten)]
    pub run: RunFlags,
    #[command(subcommand)]
    pub kind: Option<BlastKind>,
}

/// How network faults are attached: on `blast --policy` and `blast net`,
/// not on `blast syscall`, which attaches no classifier.
#[derive(Args, Debug, Clone)]
pub struct TcFlags {
    /// auto (tcx links on Linux 6.6+, else netlink), tcx or netlink (clsact filters).
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value_t = AttachMode::Auto,
        hide_possible_values = true,
        help_heading = RUN
    )]
    pub attach: AttachMode,
    /// Log the kernel side's debug records (aya-log).
    #[arg(long, help_heading = RUN)]
    pub debug_kernel: bool,
}

impl Default for TcFlags {
    fn default() -> Self {
        TcFlags {
            attach: AttachMode::Auto,
            debug_kernel: false,
        }
    }
}

/// How every blast reports, whatever its faults.
#[derive(Args, Debug, Clone)]
pub struct RunFlags {
    // Global (they come after the subcommand too) and listed last.
    /// Print events as JSON lines on stdout: applied, counters every second, reverted.
    #[arg(long, global = true, display_order = 90, help_heading = RUN)]
    pub json: bool,
    /// Serve Prometheus metrics on http://ADDR/metrics while the blast runs; the port joins the built-in guard.
    #[arg(
        long,
        global = true,
        value_name = "ADDR",
        display_order = 91,
        help_heading = RUN
    )]
    pub metrics_addr: Option<SocketAddr>,
    /// Faults stop acting this long after the blast stops renewing its lease (stopped, hung); at least 1s.
    #[arg(
        long,
        global = true,
        value_name = "DUR",
        default_value = "10s",
        value_parser = policy::values::parse_lease,
        display_order = 92,
        help_heading = RUN
    )]
    pub lease: Duration,
    /// Push the metrics over OTLP/HTTP to URL/v1/metrics every 10s and at the end (default: OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(
        long,
        global = true,
        value_name = "URL",
        display_order = 93,
        help_heading = RUN
    )]
    pub otlp_endpoint: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum BlastKind {
    /// A network fault on one interface.
    #[command(after_help = NET_EXAMPLES)]
    Net(Box<NetArgs>),
    /// Make chosen syscalls of chosen processes fail with an errno.
    #[command(after_help = SYSCALL_EXAMPLES)]
    Syscall(Box<SyscallArgs>),
}

/// `blast net`: every value is kept as typed and read by the policy loader
/// ([`policy::flags`]), so flags and policy files accept the same values
/// with the same messages. clap checks only which flags go together.
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("action").required(true).multiple(false))]
pub struct NetArgs {
    /// Interface whose packets are faulted.
    #[arg(long, value_name = "IF", help_heading = SELECTION)]
    pub iface: String,
    /// Named network namespace (ip netns) holding the interface.
    #[arg(long, value_name = "NAME", help_heading = SELECTION)]
    pub netns: Option<String>,
    /// egress (the default), ingress or both.
    #[arg(long, value_name = "DIR", help_heading = SELECTION)]
    pub direction: Option<String>,
    /// tcp, udp, icmp (ICMP and ICMPv6) or any (the default).
    #[arg(long, value_name = "PROTO", help_heading = SELECTION)]
    pub proto: Option<String>,
    /// Destination port or range A-B; repeatable.
    #[arg(long, value_name = "PORT", help_heading = SELECTION)]
    pub dport: Vec<String>,
    /// Source port or range A-B; repeatable.
    #[arg(long, value_name = "PORT", help_heading = SELECTION)]
    pub sport: Vec<String>,
    /// Destination address or prefix (10.1.0.0/16, fd00::/8); repeatable.
    #[arg(long, value_name = "CIDR", help_heading = SELECTION)]
    pub dst: Vec<String>,
    /// Source address or prefix; repeatable.
    #[arg(long, value_name = "CIDR", help_heading = SELECTION)]
    pub src: Vec<String>,
    /// Only packets sent by this systemd unit's processes (egress).
    #[arg(long, value_name = "UNIT", conflicts_with = "cgroup", help_heading = SELECTION)]
    pub unit: Option<String>,
    /// Only packets sent from this cgroup v2 path or below it (egress).
    #[arg(long, value_name = "PATH", help_heading = SELECTION)]
    pub cgroup: Option<String>,
    /// Drop this share of the matching packets (30, 30% or 0.5).
    #[arg(long, value_name = "PCT", group = "action", help_heading = FAULT)]
    pub loss: Option<String>,
    /// Hold matching packets back this long (needs the fq qdisc; ingress needs Linux 6.4+).
    #[arg(long, value_name = "DUR", group = "action", help_heading = FAULT)]
    pub delay: Option<String>,
    /// Vary --delay by up to this much either way (uniformly).
    #[arg(long, value_name = "DUR", help_heading = FAULT)]
    pub jitter: Option<String>,
    /// Flip one payload bit in this share of the matching packets (checksum fixed).
    #[arg(long, value_name = "PCT", group = "action", help_heading = FAULT)]
    pub corrupt: Option<String>,
    /// Send this share of the matching packets twice.
    #[arg(long, value_name = "PCT", group = "action", help_heading = FAULT)]
    pub duplicate: Option<String>,
    /// Limit matching traffic to RATE: 10mbit, 500kbit (bits/s), 1kbps (bytes/s); needs fq.
    #[arg(long, value_name = "RATE", group = "action", help_heading = FAULT)]
    pub rate: Option<String>,
    /// With --loss: drop in runs of N consecutive packets on average (a Gilbert chain).
    #[arg(long, value_name = "N", help_heading = FAULT)]
    pub burst: Option<String>,
    #[command(flatten)]
    pub modes: ModeArgs,
    #[command(flatten)]
    pub abort: AbortArgs,
    /// How long the fault lasts; the kernel stops acting at start + DUR.
    #[arg(long, value_name = "DUR", help_heading = RUN)]
    pub duration: String,
    /// Policy name in events and metrics (the policy label): a-z, 0-9 and -, at most 63 (default blast-<pid>).
    #[arg(long, value_name = "NAME", help_heading = RUN)]
    pub name: Option<String>,
    #[command(flatten)]
    pub tc: TcFlags,
}

/// Shadow mode and flapping, on both kinds of blast.
#[derive(Args, Debug)]
pub struct ModeArgs {
    /// Decide and count as usual, act on nothing: injected counts what would have been done.
    #[arg(long, help_heading = FAULT)]
    pub shadow: bool,
    /// Act for ON, rest for OFF, over and over from the start (200ms/5s).
    #[arg(long, value_name = "ON/OFF", help_heading = FAULT)]
    pub flap: Option<String>,
}

impl From<&ModeArgs> for ModeFlags {
    fn from(m: &ModeArgs) -> Self {
        ModeFlags {
            shadow: m.shadow,
            flap: m.flap.clone(),
        }
    }
}

/// The steady-state guard of a blast (a policy's `spec.abortWhen`).
#[derive(Args, Debug)]
pub struct AbortArgs {
    /// Revert early when GET URL (http://...) stops answering --abort-expect-status.
    #[arg(
        id = "abort_http",
        long = "abort-http",
        value_name = "URL",
        conflicts_with = "abort_tcp",
        help_heading = GUARD
    )]
    pub http: Option<String>,
    /// Status the --abort-http probe expects (default 200).
    #[arg(
        id = "abort_expect_status",
        long = "abort-expect-status",
        value_name = "CODE",
        help_heading = GUARD
    )]
    pub expect_status: Option<String>,
    /// Revert early when HOST:PORT stops accepting TCP connections.
    #[arg(
        id = "abort_tcp",
        long = "abort-tcp",
        value_name = "HOST:PORT",
        help_heading = GUARD
    )]
    pub tcp: Option<String>,
    /// How often the probe runs (default 1s).
    #[arg(
        id = "abort_interval",
        long = "abort-interval",
        value_name = "DUR",
        help_heading = GUARD
    )]
    pub interval: Option<String>,
    /// Consecutive probe failures that revert the fault (default 3).
    #[arg(
        id = "abort_failures",
        long = "abort-failures",
        value_name = "N",
        help_heading = GUARD
    )]
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
            name: a.name.clone(),
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
            burst: a.burst.clone(),
            duration: a.duration.clone(),
            abort: (&a.abort).into(),
            modes: (&a.modes).into(),
        }
    }
}

/// `blast syscall`; values are read by the policy loader, as for `blast net`.
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("target").required(true).multiple(false))]
pub struct SyscallArgs {
    /// Syscall names as in man 2 (connect, openat, ...); comma-separated or repeated.
    #[arg(
        long = "syscall",
        value_name = "NAME",
        required = true,
        value_delimiter = ',',
        help_heading = FAULT
    )]
    pub syscalls: Vec<String>,
    /// Errno to fail with: a name (ECONNREFUSED) or a number 1..4095.
    #[arg(long, value_name = "ERRNO", help_heading = FAULT)]
    pub errno: String,
    /// Share of the target's calls that fail (default 100).
    #[arg(long, value_name = "PCT", help_heading = FAULT)]
    pub percent: Option<String>,
    /// Fail at most this many calls in total (enforced in the kernel).
    #[arg(long, value_name = "N", help_heading = FAULT)]
    pub max_injections: Option<String>,
    /// A process (the whole thread group); never PID 1 or the agent.
    #[arg(long, value_name = "PID", group = "target", help_heading = TARGET)]
    pub pid: Option<String>,
    /// Processes with this command name (comm, as ps -o comm shows it).
    #[arg(long, value_name = "NAME", group = "target", help_heading = TARGET)]
    pub comm: Option<String>,
    /// Processes in this cgroup v2 path and below it.
    #[arg(long, value_name = "PATH", group = "target", help_heading = TARGET)]
    pub cgroup: Option<String>,
    /// The processes of this systemd unit.
    #[arg(long, value_name = "UNIT", group = "target", help_heading = TARGET)]
    pub unit: Option<String>,
    #[command(flatten)]
    pub modes: ModeArgs,
    #[command(flatten)]
    pub abort: AbortArgs,
    /// How long the fault lasts; the kernel stops acting at start + DUR.
    #[arg(long, value_name = "DUR", help_heading = RUN)]
    pub duration: String,
    /// Policy name in events and metrics (the policy label): a-z, 0-9 and -, at most 63 (default blast-<pid>).
    #[arg(long, value_name = "NAME", help_heading = RUN)]
    pub name: Option<String>,
    /// kprobe, lsm or cgroup for every syscall, instead of the most precise one available.
    #[arg(
        long,
        value_enum,
        value_name = "BACKEND",
        hide_possible_values = true,
        help_heading = RUN
    )]
    pub backend: Option<SyscallBackend>,
}

impl From<&SyscallArgs> for SyscallFlags {
    fn from(a: &SyscallArgs) -> Self {
        SyscallFlags {
            name: a.name.clone(),
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
            modes: (&a.modes).into(),
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

/// Sets up tracing on stderr. Under journald (`journal`) lines carry the
/// syslog priority instead of time and level (`journal.rs`).
fn init_logging(cli: &Cli, journal: bool) {
    use tracing_subscriber::{EnvFilter, fmt};
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = !journal && std::io::stderr().is_terminal();
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // `init` also routes `log` records (aya-log's kernel-side records among
    // them) into tracing.
    match (cli.log_format, journal) {
        (LogFormat::Text, false) => builder.init(),
        (LogFormat::Json, false) => builder.json().init(),
        (LogFormat::Text, true) => builder.event_format(journal::text()).init(),
        (LogFormat::Json, true) => builder.json().event_format(journal::json()).init(),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let journal = journal::stderr_is_journal();
    init_logging(&cli, journal);
    match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprint!(
                "{}",
                journal::error_line(journal, &format!("chaos-agent: {e}"))
            );
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
            otlp_endpoint,
        } => {
            let otlp = otlp::Config::resolve(otlp_endpoint.as_deref())?;
            block_on(crate::daemon::run(crate::daemon::DaemonArgs {
                policies: policies.clone(),
                metrics_addr: *metrics_addr,
                attach: *attach,
                lease: *lease,
                otlp,
            }))
        }
        Command::Status { json } => crate::control::client::status(*json),
        Command::Stop { policies, all } => crate::control::client::stop(policies, *all),
        Command::Schema => print(&policy::json_schema()),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            write_completions(*shell, &mut out);
            print(&String::from_utf8_lossy(&out))
        }
        Command::Man { dir } => {
            for page in write_man_pages(dir)? {
                println!("{}", page.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Version { json } => {
            if *json {
                print(&format!("{}\n", version_json()))
            } else {
                print(&format!("chaos-agent {LONG_VERSION}\n"))
            }
        }
        Command::Blast(b) => {
            // The attach flags are on `blast --policy` and `blast net`;
            // syscall faults attach no classifier.
            let (policy, tc, backend) = match (&b.policy, &b.kind) {
                (Some(path), None) => {
                    let mut p =
                        policy::load_file(path).map_err(|e| Error::Invalid(e.to_string()))?;
                    if b.shadow {
                        p.faults.iter_mut().for_each(|f| f.mode = Mode::Shadow);
                    }
                    (p, b.tc.clone(), None)
                }
                (None, Some(BlastKind::Net(net))) => (net_policy(net)?, net.tc.clone(), None),
                (None, Some(BlastKind::Syscall(s))) => (
                    syscall_policy(s)?,
                    TcFlags::default(),
                    s.backend.map(Backend::from),
                ),
                _ => {
                    return Err(Error::Invalid(
                        "blast needs `net`, `syscall` or --policy FILE".into(),
                    ));
                }
            };
            let otlp = otlp::Config::resolve(b.run.otlp_endpoint.as_deref())?;
            block_on(async {
                // Bound before anything is applied, so a busy port fails
                // early; its port and the collector's join the built-in
                // guard.
                let metrics = (b.run.metrics_addr.is_some() || otlp.is_some())
                    .then(|| Metrics::new(b.run.metrics_addr, otlp.as_ref()))
                    .transpose()?;
                let engine = Engine::new(engine::Options {
                    net: NetOptions {
                        attach: tc.attach,
                        debug_kernel: tc.debug_kernel,
                        extra_default_ports: metrics
                            .iter()
                            .flat_map(Metrics::guarded_ports)
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

/// `version --json`: `{"version", "commit", "build_date"}`, in this order.
fn version_json() -> String {
    #[derive(serde::Serialize)]
    struct Version {
        version: &'static str,
        commit: &'static str,
        build_date: &'static str,
    }
    let v = Version {
        version: VERSION,
        commit: COMMIT,
        build_date: BUILD_DATE,
    };
    serde_json::to_string(&v).expect("strings are JSON")
}

/// Writes `text` to stdout; a closed pipe (`| head`) is not a failure.
fn print(text: &str) -> Result<ExitCode> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(Error::Runtime(format!("cannot write to stdout: {e}"))),
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
mod tests;
