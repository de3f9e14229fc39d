//! The architectures the agent is built for: this machine's, or arm64
//! cross-built from x86_64 (and the other way round) with the pinned
//! toolchain's own `rust-lld`, so no cross C toolchain is needed.

use std::process::Command;

/// An architecture by its Debian name (what `--arch` takes and what a
/// `.deb` is named with).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// The machine xtask runs on.
    pub fn host() -> Arch {
        match std::env::consts::ARCH {
            "aarch64" => Arch::Arm64,
            _ => Arch::Amd64,
        }
    }

    /// The Rust (and kernel `uname -m`) name: `x86_64`, `aarch64`.
    pub fn rust(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    /// The Debian name: `amd64`, `arm64`.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The target of the static agent: musl, one executable without
    /// run-time dependencies.
    pub fn musl_target(self) -> String {
        format!("{}-unknown-linux-musl", self.rust())
    }

    /// Sets what cargo needs to build for this architecture's musl target
    /// on this machine. Natively rustc links musl binaries by itself; a
    /// cross build links with the toolchain's `rust-lld` (musl targets
    /// ship their own C runtime objects, so lld needs nothing from the
    /// host).
    pub fn configure(self, cmd: &mut Command) {
        if self != Arch::host() {
            let var = format!(
                "CARGO_TARGET_{}_LINKER",
                self.musl_target().to_uppercase().replace('-', "_")
            );
            cmd.env(var, "rust-lld");
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.debian())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_linker() {
        assert_eq!(Arch::Arm64.musl_target(), "aarch64-unknown-linux-musl");
        assert_eq!(Arch::Amd64.debian(), "amd64");
        let cross = if Arch::host() == Arch::Amd64 {
            Arch::Arm64
        } else {
            Arch::Amd64
        };
        let mut cmd = Command::new("cargo");
        cross.configure(&mut cmd);
        let var = format!(
            "CARGO_TARGET_{}_UNKNOWN_LINUX_MUSL_LINKER",
            cross.rust().to_uppercase()
        );
        assert!(
            cmd.get_envs()
                .any(|(k, v)| k == var.as_str() && v == Some("rust-lld".as_ref())),
            "{var}"
        );
        let mut native = Command::new("cargo");
        Arch::host().configure(&mut native);
        assert_eq!(native.get_envs().count(), 0);
    }
}
