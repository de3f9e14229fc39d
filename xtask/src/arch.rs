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

    /// The GNU triplet of Debian's tools for it: `aarch64-linux-gnu`.
    pub fn gnu_triplet(self) -> String {
        format!("{}-linux-gnu", self.rust())
    }

    /// `strip` for this architecture's executables: the host's own, or
    /// Debian's cross binutils (`binutils-<triplet>`, which `./x setup`
    /// installs for the other architecture).
    pub fn strip(self) -> String {
        if self == Arch::host() {
            "strip".to_owned()
        } else {
            format!("{}-strip", self.gnu_triplet())
        }
    }

    /// The Debian package with [`Arch::strip`] in it.
    pub fn binutils_package(self) -> String {
        if self == Arch::host() {
            "binutils".to_owned()
        } else {
            format!("binutils-{}", self.gnu_triplet().replace('_', "-"))
        }
    }

    /// The other architecture.
    pub fn other(self) -> Arch {
        match self {
            Arch::Amd64 => Arch::Arm64,
            Arch::Arm64 => Arch::Amd64,
        }
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
        assert_eq!(cross.strip(), format!("{}-linux-gnu-strip", cross.rust()));
        assert_eq!(Arch::Amd64.other().gnu_triplet(), "aarch64-linux-gnu");
        if Arch::host() == Arch::Amd64 {
            assert_eq!(Arch::Arm64.binutils_package(), "binutils-aarch64-linux-gnu");
        } else {
            assert_eq!(Arch::Amd64.binutils_package(), "binutils-x86-64-linux-gnu");
        }
        let mut native = Command::new("cargo");
        Arch::host().configure(&mut native);
        assert_eq!(native.get_envs().count(), 0);
    }
}
