//! Builds the eBPF programs (`chaos-ebpf`) for the BPF target with
//! aya-build, so that `include_bytes!` can embed them in the agent binary;
//! and records the commit and date of the build for `--version`.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    version_info(&manifest_dir);
    let ebpf_dir = manifest_dir.join("../chaos-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path to chaos-ebpf")?;
    // The pinned toolchain is stable: RUSTC_BOOTSTRAP lets aya-build pass
    // `-Z build-std=core` for the BPF target, and only for that child build.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    let toolchain = env::var("CHAOS_EBPF_TOOLCHAIN").unwrap_or_else(|_| "1.98.0".to_owned());
    println!("cargo::rerun-if-env-changed=CHAOS_EBPF_TOOLCHAIN");
    aya_build::build_ebpf(
        [Package {
            name: "chaos-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}

/// `CHAOS_AGENT_COMMIT`: the commit of this workspace (12 hex digits), or
/// "unknown" without git or outside a clone (a source tarball; a tarball
/// unpacked inside another repository does not take that one's commit).
/// `CHAOS_AGENT_BUILD_DATE`: `SOURCE_DATE_EPOCH` (reproducible builds) or
/// today, as YYYY-MM-DD in UTC. The script runs again when HEAD moves.
fn version_info(manifest_dir: &Path) {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(manifest_dir)
            .output()
            .ok()?;
        let s = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !s.trim().is_empty()).then(|| s.trim().to_owned())
    };
    let ours = git(&["rev-parse", "--show-toplevel"])
        .and_then(|top| Path::new(&top).canonicalize().ok())
        .zip(manifest_dir.join("..").canonicalize().ok())
        .is_some_and(|(top, workspace)| top == workspace);
    let commit = ours
        .then(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .flatten();
    println!(
        "cargo::rustc-env=CHAOS_AGENT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    if commit.is_some() {
        // HEAD, the branch it points to, and packed-refs (where the branch
        // is after `git gc`): only those that exist, as cargo reruns the
        // script on every build for a missing path.
        let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
        watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
        for name in watched {
            if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
                let path = manifest_dir.join(path);
                if path.exists() {
                    println!("cargo::rerun-if-changed={}", path.display());
                }
            }
        }
    }
    println!("cargo::rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let secs = env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    let (y, m, d) = civil_date(secs / 86_400);
    println!("cargo::rustc-env=CHAOS_AGENT_BUILD_DATE={y:04}-{m:02}-{d:02}");
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}
