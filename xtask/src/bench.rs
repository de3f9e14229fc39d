//! `cargo xtask bench`: builds the agent and the `chaos-bench` runner (in
//! the test crate, next to the harness it uses), runs it as root, and
//! writes its markdown to `docs/benchmarks.md`.

use std::fs;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{cargo, display, is_root, root};

/// Debian packages the benchmarks use besides the test ones.
const PACKAGES: &[&str] = &["iperf3"];

/// The integration tests that measure what only a VM kernel can show (the
/// syscall backends this host cannot load; delay, jitter and bandwidth,
/// which need fq, side by side with netem; burst loss next to netem's
/// `loss gemodel`); they print `figure: ...` lines, which `--vm`
/// collects. Libtest filters: `delay` selects every test of
/// tests/delay.rs.
const VM_TESTS: &[&str] = &["syscall_cost", "delay", "burst_loss"];
const VM_KERNEL: &str = "fi-6.12";

/// `figure: ` lines of a VM console log, without the prefix.
fn figures(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split_once("figure: ").map(|(_, f)| f.trim().to_owned()))
        .collect()
}

/// Runs `VM_TESTS` in the `VM_KERNEL` VM and renders their figures.
fn vm_section() -> Result<String> {
    let run = crate::vm::vm_test(crate::vm::Options {
        kernels: vec![VM_KERNEL.to_owned()],
        filters: VM_TESTS.iter().map(|t| t.to_string()).collect(),
        full: true,
        timeout: crate::vm::parse_timeout(crate::vm::DEFAULT_TIMEOUT)
            .map_err(anyhow::Error::msg)?,
    });
    let log = fs::read_to_string(root().join(format!("target/vm-test/{VM_KERNEL}.log")))
        .unwrap_or_default();
    let mut md = format!(
        "## In the VM ({VM_KERNEL}, qemu TCG: emulated CPU, so compare the columns, not the absolute times)\n\n"
    );
    if let Err(e) = run {
        md.push_str(&format!("The VM run failed: {e:#}\n\n"));
    }
    let found = figures(&log);
    if found.is_empty() {
        md.push_str("No figures were printed.\n");
    }
    for f in found {
        md.push_str(&format!("- {f}\n"));
    }
    md.push('\n');
    Ok(md)
}

pub fn bench(quick: bool, vm: bool, only: &[String]) -> Result<()> {
    crate::setup::setup()?;
    crate::setup::apt_packages(PACKAGES)?;
    let agent = crate::build()?;
    crate::run(cargo().args([
        "build",
        "--locked",
        "--release",
        "-p",
        "chaos-tests",
        "--bin",
        "chaos-bench",
    ]))?;
    if !is_root() {
        bail!("the benchmarks attach eBPF programs and create network namespaces: run as root");
    }
    let mut cmd = Command::new(root().join("target/release/chaos-bench"));
    if quick {
        cmd.arg("--quick");
    }
    for o in only {
        cmd.args(["--only", o]);
    }
    cmd.env("CHAOS_AGENT_BIN", &agent)
        .env(
            "CHAOS_TRAFFIC_BIN",
            root().join("target/release/chaos-traffic"),
        )
        .stderr(Stdio::inherit())
        .current_dir(root());
    eprintln!("xtask: {}", display(&cmd));
    let out = cmd.output().context("running chaos-bench")?;
    ensure!(out.status.success(), "chaos-bench failed: {}", out.status);
    let mut md = String::from_utf8(out.stdout).context("chaos-bench output is not UTF-8")?;
    if vm {
        md.push_str(&vm_section()?);
    }
    let md = stamped(&md);
    print!("{md}");
    let path = root().join("docs/benchmarks.md");
    fs::create_dir_all(path.parent().context("docs has a parent")?)?;
    fs::write(&path, &md)?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

/// What opens the line that lists a report's sections.
const SECTIONS: &str = "Sections of this run: ";

/// The `## ` headings of a report, in order.
fn headings(md: &str) -> Vec<&str> {
    md.lines().filter_map(|l| l.strip_prefix("## ")).collect()
}

/// `md` with a line after its first paragraph naming every section this
/// run wrote, so a section added or kept by hand shows (a unit test holds
/// docs/benchmarks.md to it).
fn stamped(md: &str) -> String {
    let line = format!("{SECTIONS}{}.", headings(md).join("; "));
    match md.find("\n\n") {
        Some(i) => format!("{}\n\n{line}{}", &md[..i], &md[i..]),
        None => format!("{md}\n{line}\n"),
    }
}

/// `cargo xtask soak`: builds the agent and `chaos-soak`, runs the
/// reliability suite as root, prints its table and, with `record`, writes
/// it to docs/reliability.md.
pub fn soak(cycles: usize, only: &[String], record: bool) -> Result<()> {
    crate::setup::setup()?;
    let agent = crate::build()?;
    crate::run(cargo().args([
        "build",
        "--locked",
        "--release",
        "-p",
        "chaos-tests",
        "--bin",
        "chaos-soak",
    ]))?;
    if !is_root() {
        bail!("the reliability suite kills agents and creates network namespaces: run as root");
    }
    let mut cmd = Command::new(root().join("target/release/chaos-soak"));
    cmd.args(["--cycles", &cycles.to_string()]);
    for o in only {
        cmd.args(["--only", o]);
    }
    cmd.env("CHAOS_AGENT_BIN", &agent)
        .env(
            "CHAOS_TRAFFIC_BIN",
            root().join("target/release/chaos-traffic"),
        )
        .stderr(Stdio::inherit())
        .current_dir(root());
    eprintln!("xtask: {}", display(&cmd));
    let out = cmd.output().context("running chaos-soak")?;
    let table = String::from_utf8(out.stdout).context("chaos-soak output is not UTF-8")?;
    print!("{table}");
    if record {
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let md = format!(
            "# Reliability\n\nWritten by `./x soak --cycles {cycles} --record` on Linux {}, \
             {} cores. Each scenario kills, stops or storms the agent at random \
             moments (a fixed seed) and checks what a user would see: traffic \
             flowing again, the exit code, and nothing of ours left on the \
             interface, among the loaded programs or in /run/chaos-agent. \
             `./x test` runs a short version (tests/soak.rs).\n\n{table}",
            kernel.trim(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        fs::write(root().join("docs/reliability.md"), md)?;
        eprintln!("xtask: wrote docs/reliability.md");
    }
    ensure!(
        out.status.success(),
        "chaos-soak found failures or residue: {}",
        out.status
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_lists_every_section() {
        let md = stamped("# B\n\nWritten by x.\n\n## One\n\nt\n\n## Two (a, b)\n\nu\n");
        assert!(
            md.starts_with("# B\n\nSections of this run: One; Two (a, b).\n\nWritten by x."),
            "{md}"
        );
    }

    /// docs/benchmarks.md holds exactly the sections its run wrote: none
    /// added, kept from another run or left out by hand.
    #[test]
    fn benchmarks_md_holds_what_its_stamp_lists() {
        let md = fs::read_to_string(root().join("docs/benchmarks.md")).unwrap();
        let stamp = md
            .lines()
            .find_map(|l| l.strip_prefix(SECTIONS))
            .expect("docs/benchmarks.md has no section list: write it with ./x bench");
        let listed: Vec<&str> = stamp.trim_end_matches('.').split("; ").collect();
        assert_eq!(
            listed,
            headings(&md),
            "docs/benchmarks.md was edited by hand"
        );
    }

    #[test]
    fn collects_figure_lines_from_a_console_log() {
        let log = "fi-6.12| noise\nfigure: delay 20 ms: p50 +20.1 ms\n\
                   test x ... ok\n   figure: cost cgroup: 1 vs 2\n";
        assert_eq!(
            figures(log),
            ["delay 20 ms: p50 +20.1 ms", "cost cgroup: 1 vs 2"]
        );
    }
}
