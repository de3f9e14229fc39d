//! A short run of the reliability suite (`./x soak` runs it at length):
//! the agent killed and stopped at random moments, a daemon killed in the
//! middle of reloads, a reload storm, hostile clients. No failure and no
//! residue, in every scenario.

mod common;

use chaos_tests::require_root;
use common::soak::{self, Report, Rng};

fn check(r: Report) {
    eprintln!("{}", r.row());
    assert!(
        r.clean(),
        "{}: failures {:?}, residue {:?}",
        r.scenario,
        r.failures,
        r.residue
    );
}

/// Fewer cycles under qemu's emulated CPU.
fn cycles(n: usize) -> usize {
    if std::env::var_os("CHAOS_TEST_EMULATED").is_some() {
        (n / 2).max(1)
    } else {
        n
    }
}

#[test]
fn soak_kill_and_stop_blasts() {
    require_root!();
    let mut rng = Rng(0x50a6_0001);
    check(soak::kill_blast("tcx", cycles(30), &mut rng).unwrap());
    check(soak::kill_blast("netlink", cycles(6), &mut rng).unwrap());
    check(soak::stop_blast(cycles(2), &mut rng).unwrap());
}

#[test]
fn soak_daemon_kills_storms_and_hostile_clients() {
    require_root!();
    let mut rng = Rng(0x50a6_0002);
    check(soak::kill_daemon_mid_reload(cycles(3), &mut rng).unwrap());
    check(soak::reload_storm(cycles(150)).unwrap());
    check(soak::hostile_clients(cycles(2)).unwrap());
    let left = soak::run_dir_residue();
    assert!(left.is_empty(), "{left:?}");
}
