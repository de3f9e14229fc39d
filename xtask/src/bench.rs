//! `cargo xtask bench`: builds the agent and the `chaos-bench` runner (in
//! the test crate, next to the harness it uses), runs it as root, and
//! writes its markdown to `docs/benchmarks.md`.

use std::fs;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{cargo, display, is_root, root};

/// Debian packages the benchmarks use besides the test ones.
const PACKAGES: &[&str] = &["iperf3"];

pub fn bench(quick: bool, only: &[String]) -> Result<()> {
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
    let md = String::from_utf8(out.stdout).context("chaos-bench output is not UTF-8")?;
    print!("{md}");
    let path = root().join("docs/benchmarks.md");
    fs::create_dir_all(path.parent().context("docs has a parent")?)?;
    fs::write(&path, &md)?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}
