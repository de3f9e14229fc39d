//! `xtask vm-test`: the privileged integration tests under other kernels.
//!
//! Each kernel of the matrix (a Debian kernel package, looked up and
//! downloaded with apt at run time, cached under the user's cache directory)
//! boots under `qemu-system-x86_64 -accel tcg` (arm64 kernels under
//! `qemu-system-aarch64 -M virt -cpu max`) with a busybox initramfs that
//! carries the test executables, the static agent, `chaos-traffic`, the
//! policies, `ip`/`tc` and the modules the tests need, all built for the
//! kernel's architecture (arm64: cross-built, and Debian's arm64 tools). A bash script inside
//! runs every test executable one test at a time, prints a summary line and
//! `VM_EXIT=<code>`, and powers off. The host reads the serial console,
//! echoes it, keeps it in `target/vm-test/<kernel>.log`, and kills qemu when
//! the run exceeds its time limit.
//!
//! Software emulation (TCG; KVM does not work on the development machines)
//! runs CPU-bound work 6 to 7 times slower than the host (the tests, mostly
//! paced traffic and timers, take about 2.5 times as long), so by default
//! the slowest tests are left out (see [`DEFAULT_SKIP`]), and so are the
//! kernels not marked `default` in [`kernels::KERNELS`]; `--filter`,
//! `--kernel` or `--full` choose otherwise.

mod apt;
pub(crate) mod console;
mod fikernel;
mod initramfs;
mod kernels;
mod run;
mod userland;

use std::{
    fs,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc::{RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    arch::Arch,
    display,
    required::{KernelFacts, Requirement, selected_tests},
    root,
};
use console::{Console, Outcome};
pub(crate) use initramfs::test_executables;
use initramfs::{MODULES, Payload, initramfs, test_executables_for};
use kernels::{
    KERNELS, KernelSpec, KernelTree, Source, debian_kernel, default_kernels, kernel_names,
};
use run::KernelRun;

/// Host packages the runner uses: qemu (x86 and arm), the guest's busybox,
/// cpio for the initramfs, depmod/modprobe (kmod) to resolve module
/// dependencies, xz and zstd to decompress modules, file, the `ip`/`tc`
/// copied into the guest, readelf (binutils) for the libraries of arm64
/// tools, and the Debian archive keys for the private apt states.
const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-arm",
    "binutils",
    "debian-archive-keyring",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
    "zstd",
    "file",
    "iproute2",
];

/// Tests left out by default (libtest `--skip`, a substring of the name):
/// the four TCP loss measurements (each gathers 34,000 segments or more
/// over 32 connections at once; on the host the four take 90 s, and they
/// carry most of their weight there, where CI runs them every time).
/// A skip list rather than a list of tests, so that new tests run by
/// default. `--full` runs them too; `--filter` replaces this.
const DEFAULT_SKIP: &[&str] = &["tcp_ipv4_", "tcp_ipv6_"];

/// Default hard wall-clock limit for one VM run.
pub const DEFAULT_TIMEOUT: &str = "20m";

/// What `vm-test` was asked to do.
pub struct Options {
    pub kernels: Vec<String>,
    /// Only tests whose name contains one of these (instead of the
    /// default set).
    pub filters: Vec<String>,
    /// Every test, and (without `kernels`) every kernel.
    pub full: bool,
    pub timeout: Duration,
}

fn kernel(spec: &KernelSpec) -> Result<KernelTree> {
    match spec.source {
        Source::Debian { search, .. } => debian_kernel(spec.name, &spec.source, search),
        Source::FaultInjection => fikernel::kernel(),
    }
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

// ---------------------------------------------------------------- boot

/// Boots `kernel` with `image` under qemu (TCG), echoing and parsing the
/// serial console; kills qemu at `timeout`.
fn boot(
    spec: &KernelSpec,
    kernel: &KernelTree,
    image: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<KernelRun> {
    let name = spec.name;
    let (mut cmd, console) = match spec.arch {
        Arch::Amd64 => {
            let mut cmd = Command::new("qemu-system-x86_64");
            cmd.args(["-cpu", "max"]);
            // qboot starts the kernel faster than SeaBIOS.
            let qboot = Path::new("/usr/share/qemu/qboot.rom");
            if qboot.is_file() {
                cmd.arg("-bios").arg(qboot);
            }
            (cmd, "ttyS0")
        }
        Arch::Arm64 => {
            // The generic virtual board, the emulated CPU with every
            // feature; pointer authentication with QEMU's own cheap
            // algorithm instead of the architected one, which costs TCG
            // much time for nothing the tests look at.
            let mut cmd = Command::new("qemu-system-aarch64");
            cmd.args(["-M", "virt", "-cpu", "max,pauth-impdef=on"]);
            (cmd, "ttyAMA0")
        }
    };
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.args(["-accel", "tcg", "-m", "2048", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-nic", "none"]);
    cmd.arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(image)
        .arg("-append")
        .arg(format!("console={console} panic=-1 quiet loglevel=4"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    eprintln!(
        "xtask: {} (time limit {})",
        display(&cmd),
        fmt_duration(timeout)
    );
    let mut log_file =
        fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    // Lines from a reader thread; the last, unterminated one (a test that
    // was running when qemu was killed) arrives at EOF.
    let (tx, rx) = channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = match stdout.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                if tx
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        }
        if !buf.is_empty() {
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
        }
    });
    let mut console = Console::default();
    let mut timed_out = false;
    let deadline = start + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(raw) => {
                let line = raw.trim_end_matches(['\n', '\r']).replace('\r', "");
                let _ = writeln!(log_file, "{line}");
                println!("{name}| {line}");
                console.line_at(&line, start.elapsed().as_secs_f64());
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                println!(
                    "{name}| xtask: TIMEOUT after {}: killing qemu",
                    fmt_duration(timeout)
                );
                let _ = child.kill();
                // Drain what is left (the reader ends at EOF).
                while let Ok(raw) = rx.recv_timeout(Duration::from_secs(5)) {
                    let line = raw.trim_end_matches(['\n', '\r']).replace('\r', "");
                    let _ = writeln!(log_file, "{line}");
                    println!("{name}| {line}");
                    console.line_at(&line, start.elapsed().as_secs_f64());
                }
                break;
            }
        }
    }
    let status = child.wait()?;
    let wall = start.elapsed();
    let _ = reader.join();
    if !timed_out && !status.success() {
        eprintln!("xtask: qemu exited with {status}");
    }
    if timed_out && let Some(test) = console.pending.clone() {
        println!(
            "{name}| xtask: {}::{test} was running at the time limit",
            console.binary
        );
        console.now = wall.as_secs_f64();
        console.set(&test, Outcome::Failed, "running at the time limit");
    }
    Ok(KernelRun {
        kernel: name,
        package: kernel.package.clone(),
        console,
        timed_out,
        wall,
        error: None,
        requirement: Requirement::default(),
        module_problems: Vec::new(),
    })
}

/// What `kernel` is, from its architecture, release and build
/// configuration.
fn facts(spec: &KernelSpec, kernel: &KernelTree) -> Result<KernelFacts> {
    let path = kernel
        .config
        .as_ref()
        .context("the kernel comes without its config: its required tests cannot be known")?;
    let config = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut facts = KernelFacts::new(spec.arch.rust(), &kernel.release, &config);
    facts.tools.extend(
        initramfs::carried_programs(spec.arch)
            .into_iter()
            .map(|(name, _)| name),
    );
    Ok(facts)
}

/// Modules the kernel builds as modules (`=m`) that the image lacks or
/// the guest could not load, each with the tests that could not run.
fn module_problems(
    facts: &KernelFacts,
    packed: &[String],
    console: &Console,
    req: &Requirement,
) -> Vec<String> {
    let mut lines = Vec::new();
    for m in MODULES
        .iter()
        .filter(|m| facts.option(m.option) == Some("m"))
    {
        let problem = if !packed.iter().any(|p| p == m.name) {
            format!("module {} ({}=m) is not in the image", m.name, m.option)
        } else if let Some((_, why)) = console.modules_failed.iter().find(|(n, _)| n == m.name) {
            format!("module {} did not load ({why})", m.name)
        } else {
            continue;
        };
        let tests = match m.feature {
            Some(f) => format!(
                "the tests needing {f} could not run: {}",
                req.needing(f).join(", ")
            ),
            None => "every test depends on it".to_owned(),
        };
        lines.push(format!("{problem}; {tests}"));
    }
    lines
}

fn report(run: &KernelRun) {
    let c = &run.console;
    println!();
    println!("== {} ({}): {}", run.kernel, run.package, run.status());
    if let Some(e) = &run.error {
        println!("   error: {e}");
        return;
    }
    for key in &c.order {
        let r = &c.tests[key];
        let t = r.secs;
        match r.outcome {
            Outcome::Passed => println!("   ok       {t:6.1}s  {key}"),
            Outcome::Failed if r.why.is_empty() => println!("   FAILED   {t:6.1}s  {key}"),
            Outcome::Failed => println!("   FAILED   {t:6.1}s  {key}: {}", r.why),
            Outcome::Skipped => println!("   skipped  {t:6.1}s  {key}: {}", r.why),
        }
    }
    for (test, why) in &run.requirement.exempt {
        println!("   not required here: {test} ({why})");
    }
    if run.error.is_none() && !run.timed_out {
        for line in run.requirement.missing(c) {
            println!("   FAILED   {line}");
        }
    }
    for line in &run.module_problems {
        println!("   FAILED   {line}");
    }
    for (name, rc, _) in c.crashed() {
        println!("   FAILED   {name}: exited {rc} without a failed test (see the log)");
    }
    let times: Vec<String> = c
        .binaries
        .iter()
        .map(|(name, _, secs)| format!("{name} {secs:.1}s"))
        .collect();
    if !times.is_empty() {
        println!("   per test executable: {}", times.join(", "));
    }
    let host = (
        c.count(Outcome::Passed),
        run.failed(),
        c.count(Outcome::Skipped),
    );
    match c.summary {
        Some(guest) if guest != host => println!(
            "   note: the guest counted {guest:?} (passed, failed, skipped), the console parse {host:?}"
        ),
        Some(_) => {}
        None if !c.booted => println!("   the kernel never reached the test script"),
        None => println!("   the guest printed no summary"),
    }
}

// ---------------------------------------------------------------- entry

/// Test counts over every kernel of a run.
#[derive(Default)]
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

/// Runs the matrix; the error names the kernels that failed or timed out.
pub fn vm_test(opts: Options) -> Result<Totals> {
    let specs: Vec<&KernelSpec> = if opts.kernels.is_empty() {
        default_kernels(opts.full)
    } else {
        opts.kernels
            .iter()
            .map(|k| {
                KERNELS.iter().find(|s| s.name == k).with_context(|| {
                    format!("unknown kernel {k:?}; known: {}", kernel_names().join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    crate::setup::setup()?;
    crate::setup::apt_packages(HOST_PACKAGES)?;
    let test_args: Vec<String> = if !opts.filters.is_empty() {
        opts.filters.clone()
    } else if opts.full {
        Vec::new()
    } else {
        DEFAULT_SKIP
            .iter()
            .flat_map(|s| ["--skip".to_owned(), s.to_string()])
            .collect()
    };
    let guest_tests = |arch: Arch| -> Result<Vec<(String, PathBuf)>> {
        Ok(test_executables_for(arch)?
            .into_iter()
            .filter(|(name, _)| !initramfs::HOST_ONLY.contains(&name.as_str()))
            .collect())
    };
    // What the run selects, listed with the same arguments by this
    // machine's build of the tests (another architecture's cannot run
    // here; both are built from the same sources).
    let selected = selected_tests(&guest_tests(Arch::host())?, &test_args)?;
    // The guest's payload per architecture, all built before the first
    // boot (a build error shows at once, not after an hour of VMs).
    let mut payloads: Vec<(Arch, Payload)> = Vec::new();
    for spec in &specs {
        if !payloads.iter().any(|(a, _)| *a == spec.arch) {
            let payload = Payload {
                agent: crate::build_for(spec.arch)?,
                traffic: crate::traffic_bin(spec.arch),
                tests: guest_tests(spec.arch)?,
                test_args: test_args.clone(),
            };
            payloads.push((spec.arch, payload));
        }
    }
    let work = root().join("target/vm-test");
    fs::create_dir_all(&work)?;

    let mut runs = Vec::new();
    for spec in specs {
        eprintln!("xtask: === {} ===", spec.name);
        let attempt = (|| -> Result<KernelRun> {
            let payload = &payloads
                .iter()
                .find(|(a, _)| *a == spec.arch)
                .expect("built above")
                .1;
            let userland = if spec.arch == Arch::host() {
                None
            } else {
                Some(userland::sysroot(spec.arch)?)
            };
            let tree = kernel(spec)?;
            let facts = facts(spec, &tree)?;
            let requirement = Requirement::new(&selected, &facts);
            let dir = work.join(spec.name);
            fs::create_dir_all(&dir)?;
            let (image, packed) = initramfs(&tree, payload, userland.as_ref(), &dir)?;
            let log = work.join(format!("{}.log", spec.name));
            let mut run = boot(spec, &tree, &image, &log, opts.timeout)?;
            eprintln!("xtask: console log in {}", log.display());
            run.module_problems = module_problems(&facts, &packed, &run.console, &requirement);
            run.requirement = requirement;
            Ok(run)
        })();
        let run = attempt.unwrap_or_else(|e| KernelRun {
            kernel: spec.name,
            package: String::new(),
            console: Console::default(),
            timed_out: false,
            wall: Duration::ZERO,
            error: Some(format!("{e:#}")),
            requirement: Requirement::default(),
            module_problems: Vec::new(),
        });
        report(&run);
        runs.push(run);
    }

    println!();
    print_table(runs.iter().map(|r| Row {
        kernel: r.kernel,
        required: r.requirement.required.len(),
        ran: r.ran(),
        passed: r.console.count(Outcome::Passed),
        failed: r.failed(),
        skipped: r.console.count(Outcome::Skipped),
        wall: r.wall,
        result: r.status(),
    }));
    let bad: Vec<&str> = runs.iter().filter(|r| !r.ok()).map(|r| r.kernel).collect();
    if !bad.is_empty() {
        // Last in the output, where a CI log's tail shows it: what failed
        // where, and why.
        println!();
        println!("failures:");
        for r in runs.iter().filter(|r| !r.ok()) {
            for line in r.failures() {
                println!("  {}: {line}", r.kernel);
            }
        }
        bail!("vm-test failed on {}", bad.join(", "));
    }
    Ok(runs.iter().fold(Totals::default(), |t, r| Totals {
        passed: t.passed + r.console.count(Outcome::Passed),
        failed: t.failed + r.failed(),
        skipped: t.skipped + r.console.count(Outcome::Skipped),
    }))
}

/// One line of the closing table.
pub(crate) struct Row<'a> {
    pub kernel: &'a str,
    pub required: usize,
    pub ran: u64,
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub wall: Duration,
    pub result: &'a str,
}

/// The per-kernel table: required tests, tests that ran (passed or failed),
/// skipped ones.
pub(crate) fn print_table<'a>(rows: impl Iterator<Item = Row<'a>>) {
    println!(
        "{:<17} | {:>8} | {:>5} | {:>6} | {:>6} | {:>7} | {:>9} | result",
        "kernel", "required", "ran", "passed", "failed", "skipped", "wall time"
    );
    println!(
        "{:-<17}-|-{:->8}-|-{:->5}-|-{:->6}-|-{:->6}-|-{:->7}-|-{:->9}-|-{:-<7}",
        "", "", "", "", "", "", "", ""
    );
    for r in rows {
        println!(
            "{:<17} | {:>8} | {:>5} | {:>6} | {:>6} | {:>7} | {:>9} | {}",
            r.kernel,
            r.required,
            r.ran,
            r.passed,
            r.failed,
            r.skipped,
            fmt_duration(r.wall),
            r.result
        );
    }
}

/// Parses `--timeout` (`20m`, `90s`, `1h`).
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}
