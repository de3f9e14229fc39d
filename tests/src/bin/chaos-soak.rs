//! `cargo xtask soak` runs this (as root): the reliability suite at length,
//! printed as markdown. Exits 1 when any scenario has a failure or residue.
//!
//! chaos-soak [--cycles N] [--only SCENARIO]...
//! Scenarios: kill-tcx, kill-netlink, stop, kill-daemon, storm, hostile.

#[path = "../../tests/common/mod.rs"]
mod common;

use anyhow::{Context, Result, bail};
use common::soak::{self, Report, Rng};

fn main() -> Result<()> {
    let mut cycles = 100usize;
    let mut only: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--cycles" => {
                cycles = args
                    .next()
                    .context("--cycles needs a number")?
                    .parse()
                    .context("--cycles needs a number")?
            }
            "--only" => only.push(args.next().context("--only needs a scenario")?),
            _ => {
                bail!("unknown argument {a:?}; usage: chaos-soak [--cycles N] [--only SCENARIO]...")
            }
        }
    }
    let mut rng = Rng(0x50a6_5eed);
    // The slow scenarios run fewer cycles: a netlink kill waits out a 1 s
    // lease, a daemon restarts, a SIGSTOP waits out its lease.
    type Run = Box<dyn FnMut(&mut Rng) -> Result<Report>>;
    let scenarios: Vec<(&str, Run)> = vec![
        (
            "kill-tcx",
            Box::new(move |r: &mut Rng| soak::kill_blast("tcx", cycles, r)),
        ),
        (
            "kill-netlink",
            Box::new(move |r: &mut Rng| soak::kill_blast("netlink", (cycles / 4).max(1), r)),
        ),
        (
            "stop",
            Box::new(move |r: &mut Rng| soak::stop_blast((cycles / 20).max(1), r)),
        ),
        (
            "kill-daemon",
            Box::new(move |r: &mut Rng| soak::kill_daemon_mid_reload((cycles / 10).max(1), r)),
        ),
        (
            "storm",
            Box::new(move |_: &mut Rng| soak::reload_storm(cycles.max(50))),
        ),
        (
            "hostile",
            Box::new(move |_: &mut Rng| soak::hostile_clients((cycles / 50).max(1))),
        ),
    ];
    let started = std::time::Instant::now();
    println!(
        "| scenario | cycles | failures | residue | traffic back after | what else |\n|---|---|---|---|---|---|"
    );
    let mut clean = true;
    for (name, mut run) in scenarios {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("soak: {name} ...");
        let report = run(&mut rng)?;
        println!("{}", report.row());
        for f in report.failures.iter().chain(&report.residue) {
            eprintln!("soak: {name}: {f}");
        }
        clean &= report.clean();
    }
    let left = soak::run_dir_residue();
    for l in &left {
        eprintln!("soak: {l}");
    }
    println!(
        "\n{} in {:.0} s; run directory residue: {}",
        if clean && left.is_empty() {
            "no failure, no residue"
        } else {
            "FAILURES OR RESIDUE"
        },
        started.elapsed().as_secs_f64(),
        if left.is_empty() {
            "none".to_owned()
        } else {
            left.join(", ")
        }
    );
    if !clean || !left.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
