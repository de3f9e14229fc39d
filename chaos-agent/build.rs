//! Builds the eBPF programs (`chaos-ebpf`) for the BPF target with
//! aya-build, so that `include_bytes!` can embed them in the agent binary.
use std::{env, path::PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
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
