//! `cargo xtask`: the project's front door (run through `./x`, which first
//! installs the pinned toolchain). Setup, build, demo, test, lint, deb,
//! schema, vm-test, bench.

mod arch;
mod bench;
mod deb;
mod demo;
mod required;
mod setup;
mod vm;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail, ensure};
use arch::Arch;
use clap::{Parser, Subcommand};
use vm::console::{Console, Outcome};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent): Debian packages
    /// and bpf-linker built against the pinned toolchain's LLVM.
    Setup,
    /// Build the eBPF programs and the agent (release, static), which
    /// embeds them.
    Build {
        /// The architecture to build for (default: this machine's); arm64
        /// is cross-built on x86_64 with the toolchain's rust-lld.
        #[arg(long, value_enum)]
        arch: Option<Arch>,
    },
    /// Drop a share of real UDP between two throwaway network namespaces and
    /// show configured vs observed loss.
    Demo,
    /// Lint, unit tests, the privileged integration tests (as root), then
    /// the same tests in the kernel matrix (`vm-test`'s default set).
    Test {
        /// Only run integration tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        /// Skip the kernel matrix.
        #[arg(long)]
        host_only: bool,
        /// The whole matrix: every kernel and every test (the default
        /// leaves out some kernels and the slowest tests for time).
        #[arg(long, conflicts_with = "host_only")]
        full: bool,
    },
    /// cargo fmt --check and clippy -D warnings on every crate.
    Lint,
    /// Side-by-side benchmarks (as root); writes docs/benchmarks.md.
    Bench {
        /// Fewer repetitions and shorter runs (a few minutes).
        #[arg(long)]
        quick: bool,
        /// Also the figures only a VM kernel can give (syscall backends),
        /// from the fi-6.12 VM.
        #[arg(long)]
        vm: bool,
        /// Only this section (repeatable): cost, throughput, accuracy,
        /// latency, footprint.
        #[arg(long, value_name = "SECTION")]
        only: Vec<String>,
    },
    /// The reliability suite (as root): the agent killed and stopped at
    /// random moments, daemon kills mid-reload, a reload storm, hostile
    /// clients; prints cycles, failures and residue.
    Soak {
        /// Cycles of the SIGKILL scenario (the slower ones run a fraction).
        #[arg(long, default_value_t = 100)]
        cycles: usize,
        /// Only this scenario (repeatable): kill-tcx, kill-netlink, stop,
        /// kill-daemon, storm, hostile.
        #[arg(long, value_name = "SCENARIO")]
        only: Vec<String>,
        /// Write the results to docs/reliability.md.
        #[arg(long)]
        record: bool,
    },
    /// Build the release agent and a .deb (binary, systemd unit and its
    /// options file, empty policies directory, example policies, man pages,
    /// shell completions, copyright, changelog) into target/debian/, and
    /// check it with lintian when installed (errors and warnings fail).
    Deb {
        /// The package's architecture (default: this machine's).
        #[arg(long, value_enum)]
        arch: Option<Arch>,
        /// Package this agent binary instead of building one.
        #[arg(long, value_name = "PATH")]
        agent: Option<std::path::PathBuf>,
        /// Write the .deb into DIR (default target/debian).
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
    },
    /// Regenerate docs/policy.schema.json, the JSON Schema of policy files
    /// (what `chaos-agent schema` prints; a unit test checks it is current).
    Schema,
    /// The privileged integration tests inside qemu (TCG) VMs, once per
    /// kernel of the matrix; kernels are downloaded and cached on first use.
    VmTest {
        /// Only this kernel (repeatable): debian-6.1, debian-6.12, fi-6.12
        /// (built on first use), debian-5.10, debian-6.1-arm64,
        /// debian-6.12-arm64. Default: the default kernels (README).
        #[arg(long = "kernel", value_name = "NAME")]
        kernels: Vec<String>,
        /// Only tests whose name contains this (repeatable; instead of the
        /// default set).
        #[arg(long, conflicts_with = "full")]
        filter: Vec<String>,
        /// Every test, also those the default set leaves out for time,
        /// and (without --kernel) every kernel.
        #[arg(long)]
        full: bool,
        /// Hard wall-clock limit per VM, e.g. 20m, 900s.
        #[arg(long, default_value = vm::DEFAULT_TIMEOUT, value_parser = vm::parse_timeout)]
        timeout: std::time::Duration,
    },
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

/// Runs a command (in the workspace root unless it names another
/// directory), failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(root());
    }
    eprintln!("xtask: {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", display(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", display(cmd));
    }
    Ok(())
}

pub(crate) fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command and returns its standard output (its standard error
/// goes to ours), failing on a non-zero exit.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", display(cmd)))?;
    ensure!(
        out.status.success(),
        "{} failed: {}",
        display(cmd),
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A host tool by name: on PATH, or in the sbin directories that a
/// non-root PATH often lacks (depmod, modprobe).
pub(crate) fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The target the agent is built for on this machine: musl, so the
/// release binary is one static executable that runs on any Linux of this
/// architecture.
pub fn agent_target() -> String {
    Arch::host().musl_target()
}

/// Builds the release agent (static) and the test traffic tool for this
/// machine; returns the agent's path.
pub fn build() -> Result<PathBuf> {
    build_for(Arch::host())
}

/// `chaos-traffic` as [`build_for`] leaves it for `arch`: the host's own
/// build, or the static one of another architecture.
pub fn traffic_bin(arch: Arch) -> PathBuf {
    if arch == Arch::host() {
        root().join("target/release/chaos-traffic")
    } else {
        root()
            .join("target")
            .join(arch.musl_target())
            .join("release/chaos-traffic")
    }
}

/// Builds the release agent (static, musl) and the test traffic tool for
/// `arch`; returns the agent's path.
pub fn build_for(arch: Arch) -> Result<PathBuf> {
    let target = arch.musl_target();
    let mut agent = cargo();
    agent.args([
        "build",
        "--locked",
        "--release",
        "-p",
        "chaos-agent",
        "--target",
        &target,
    ]);
    arch.configure(&mut agent);
    run(&mut agent)?;
    let mut traffic = cargo();
    traffic.args([
        "build",
        "--locked",
        "--release",
        "-p",
        "chaos-tests",
        "--bins",
    ]);
    if arch != Arch::host() {
        traffic.args(["--target", &target]);
        arch.configure(&mut traffic);
    }
    run(&mut traffic)?;
    Ok(root()
        .join("target")
        .join(target)
        .join("release/chaos-agent"))
}

fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--locked",
        "-p",
        "chaos-common",
        "-p",
        "chaos-agent",
        "-p",
        "xtask",
        "-p",
        "chaos-tests",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate only builds for the BPF target, so it is linted on its own.
    run(cargo().env("RUSTC_BOOTSTRAP", "1").args([
        "clippy",
        "--locked",
        "-p",
        "chaos-ebpf",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))?;
    Ok(())
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Totals over every test run of `./x test`.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    skipped: u64,
}

impl Tally {
    fn add(&mut self, c: &Console, crashed: u64) {
        self.passed += c.count(Outcome::Passed);
        self.failed += c.count(Outcome::Failed) + crashed;
        self.skipped += c.count(Outcome::Skipped);
    }
}

/// Runs `cmd` (a `cargo test` or a test executable), echoing its output
/// and parsing libtest's results, with `skipped: ...` lines in a test's
/// captured output counted as skips, not passes. Returns whether it exited
/// 0. With `krate`, `cmd` is a `cargo test` that runs several executables:
/// each one's results are keyed `krate#N` (libtest starts each with
/// `running N tests`), so equal test names in two of them stay apart.
fn run_tests(cmd: &mut Command, console: &mut Console, krate: Option<&str>) -> Result<bool> {
    use std::io::{BufRead as _, BufReader};
    cmd.stdout(Stdio::piped());
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(root());
    }
    eprintln!("xtask: {}", display(cmd));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", display(cmd)))?;
    let stdout = child.stdout.take().expect("piped");
    let mut executables = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(krate) = krate
            && line.starts_with("running ")
            && (line.ends_with(" tests") || line.ends_with(" test"))
        {
            executables += 1;
            console.start_binary(&format!("{krate}#{executables}"));
        }
        console.line_at(&line, 0.0);
    }
    Ok(child.wait()?.success())
}

fn test(filter: Option<String>, host_only: bool, full: bool) -> Result<()> {
    setup::setup()?;
    lint()?;
    let mut tally = Tally::default();
    let mut errors = Vec::new();
    // Unit tests: one `cargo test` per crate so that results are keyed by
    // crate; --no-fail-fast so that one failing executable hides no other,
    // --show-output so that skips reach the count.
    for krate in ["chaos-common", "chaos-agent", "xtask"] {
        let mut console = Console::default();
        let ok = run_tests(
            cargo().args([
                "test",
                "--locked",
                "--no-fail-fast",
                "-p",
                krate,
                "--",
                "--show-output",
            ]),
            &mut console,
            Some(krate),
        )?;
        tally.add(
            &console,
            u64::from(!ok && console.count(Outcome::Failed) == 0),
        );
        if !ok {
            errors.push(format!("the unit tests of {krate} failed"));
        }
    }
    let host = host_tests(filter.clone(), &mut tally);
    match host {
        Ok(row) => {
            println!();
            vm::print_table(std::iter::once(row.as_row()));
            if row.result != "ok" {
                errors.push("the host's integration tests failed".to_owned());
            }
        }
        Err(e) => errors.push(format!("{e:#}")),
    }
    if errors.is_empty() && !host_only {
        // The kernel matrix under qemu: its default kernels, or all.
        let result = vm::vm_test(vm::Options {
            kernels: Vec::new(),
            filters: filter.into_iter().collect(),
            full,
            timeout: vm::parse_timeout(vm::DEFAULT_TIMEOUT).map_err(anyhow::Error::msg)?,
        });
        match result {
            Ok(t) => {
                tally.passed += t.passed;
                tally.failed += t.failed;
                tally.skipped += t.skipped;
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    // A plain closing line over all runs; a skip is never a pass.
    println!(
        "xtask: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.skipped
    );
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(())
}

/// The host's line of the per-kernel table.
struct HostRun {
    required: usize,
    ran: u64,
    passed: u64,
    failed: u64,
    skipped: u64,
    wall: std::time::Duration,
    result: &'static str,
}

impl HostRun {
    fn as_row(&self) -> vm::Row<'_> {
        vm::Row {
            kernel: "host",
            required: self.required,
            ran: self.ran,
            passed: self.passed,
            failed: self.failed,
            skipped: self.skipped,
            wall: self.wall,
            result: self.result,
        }
    }
}

/// The privileged integration tests on the host: every test executable in
/// turn (one failing executable does not stop the others), one test at a
/// time, then the host's required tests checked.
fn host_tests(filter: Option<String>, tally: &mut Tally) -> Result<HostRun> {
    let agent = build()?;
    if !is_root() {
        bail!(
            "the integration tests attach eBPF programs and create network namespaces: run `./x test` as root"
        );
    }
    let start = std::time::Instant::now();
    let facts = required::KernelFacts::host()?;
    let executables = vm::test_executables()?;
    let args: Vec<String> = filter.into_iter().collect();
    let requirement =
        required::Requirement::new(&required::selected_tests(&executables, &args)?, &facts);
    let mut console = Console::default();
    let mut crashed = Vec::new();
    for (name, exe) in &executables {
        console.start_binary(name);
        // One at a time: every test builds its own namespaces, but they
        // share the kernel's BPF statistics and the agent's leftover state
        // directory. --show-output puts each test's measurements (and
        // skips) in the log. cargo would run them from the package's
        // directory.
        let mut cmd = Command::new(exe);
        cmd.args(&args)
            .args(["--test-threads=1", "--show-output"])
            .current_dir(root().join("tests"))
            .env("CHAOS_AGENT_BIN", &agent)
            .env(
                "CHAOS_TRAFFIC_BIN",
                root().join("target/release/chaos-traffic"),
            )
            .env("CHAOS_POLICIES_DIR", root().join("policies"))
            // deploy.rs packages the agent under test (`xtask deb --agent`).
            .env("CHAOS_XTASK_BIN", std::env::current_exe()?);
        let ok = run_tests(&mut cmd, &mut console, None)?;
        let failed_here = console
            .tests
            .iter()
            .any(|(k, r)| r.outcome == Outcome::Failed && k.starts_with(&format!("{name}::")));
        if !ok && !failed_here {
            crashed.push(name.clone());
        }
    }
    tally.add(&console, crashed.len() as u64);
    println!();
    println!("== host (Linux {})", facts.release);
    for (test, why) in &requirement.exempt {
        println!("   not required here: {test} ({why})");
    }
    let missing = requirement.missing(&console);
    for line in &missing {
        println!("   FAILED   {line}");
    }
    for name in &crashed {
        println!("   FAILED   {name} exited non-zero without a failed test");
    }
    let failed = console.count(Outcome::Failed) + crashed.len() as u64;
    Ok(HostRun {
        required: requirement.required.len(),
        ran: console.count(Outcome::Passed) + console.count(Outcome::Failed),
        passed: console.count(Outcome::Passed),
        failed,
        skipped: console.count(Outcome::Skipped),
        wall: start.elapsed(),
        result: if failed == 0 && missing.is_empty() {
            "ok"
        } else {
            "FAILED"
        },
    })
}

/// Errors end the output as one line, without the backtrace anyhow would
/// add under RUST_BACKTRACE=1 (CI sets it): a log's tail then says what
/// went wrong.
fn main() -> std::process::ExitCode {
    match dispatch(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Cmd) -> Result<()> {
    match command {
        Cmd::Setup => setup::setup(),
        Cmd::Build { arch } => {
            setup::setup()?;
            let agent = build_for(arch.unwrap_or_else(Arch::host))?;
            eprintln!("xtask: built {}", agent.display());
            Ok(())
        }
        Cmd::Demo => demo::demo(),
        Cmd::Deb { arch, agent, out } => {
            let arch = arch.unwrap_or_else(Arch::host);
            let agent = match agent {
                Some(a) => a,
                None => {
                    setup::setup()?;
                    build_for(arch)?
                }
            };
            // The man pages and completions come from an agent this machine
            // runs: the one packaged, or this machine's build of it.
            let helper = if arch == Arch::host() {
                agent.clone()
            } else {
                build()?
            };
            let out = out.unwrap_or_else(|| root().join("target/debian"));
            let deb = deb::package(&agent, arch, &helper, &out.join("stage"), &out)?;
            run(Command::new("dpkg-deb").arg("--contents").arg(&deb))?;
            eprintln!("xtask: built {}", deb.display());
            match deb::lintian(&deb)? {
                Some(report) => eprint!("xtask: lintian: no error, no warning\n{report}"),
                None => {
                    eprintln!("xtask: lintian not installed (apt-get install lintian); not checked")
                }
            }
            Ok(())
        }
        Cmd::Schema => {
            setup::setup()?;
            let schema = output(
                cargo()
                    .args([
                        "run",
                        "--locked",
                        "--quiet",
                        "-p",
                        "chaos-agent",
                        "--",
                        "schema",
                    ])
                    .current_dir(root()),
            )?;
            let path = root().join("docs/policy.schema.json");
            std::fs::write(&path, schema).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("xtask: wrote {}", path.display());
            Ok(())
        }
        Cmd::Test {
            filter,
            host_only,
            full,
        } => test(filter, host_only, full),
        Cmd::Lint => lint(),
        Cmd::Bench { quick, vm, only } => bench::bench(quick, vm, &only),
        Cmd::Soak {
            cycles,
            only,
            record,
        } => bench::soak(cycles, &only, record),
        Cmd::VmTest {
            kernels,
            filter,
            full,
            timeout,
        } => vm::vm_test(vm::Options {
            kernels,
            filters: filter,
            full,
            timeout,
        })
        .map(|_| ()),
    }
}
