//! Which integration tests must run on a kernel, decided before the run
//! from the kernel's own version and build configuration (never from the
//! agent's `probe`, the code under test): every test the run selects, except
//! those [`GATED`] on a feature that kernel lacks. A required test that
//! skips, or never reports, fails the run.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

use crate::{display, vm::console::Console, vm::console::Outcome};

/// What a test needs from the kernel (or, for one, from the machine).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Feature {
    /// The fq qdisc (`CONFIG_NET_SCH_FQ`): delay, bandwidth, qdisc
    /// ownership.
    Fq,
    /// No fq: the refusal of delay and bandwidth is only seen there.
    NoFq,
    /// tcx links: Linux 6.6.
    Tcx,
    /// `bpf_override_return` (`CONFIG_BPF_KPROBE_OVERRIDE`).
    KprobeOverride,
    /// No kprobe override: the refusal naming the option.
    NoKprobeOverride,
    /// BPF LSM programs: `CONFIG_BPF_LSM` with `bpf` in the default
    /// `CONFIG_LSM` list, and a platform that lets trampolines load.
    BpfLsm,
    /// No BPF LSM programs, on a kernel whose config says so (never on the
    /// host, where the platform decides): the refusal is seen there.
    NoBpfLsm,
    /// cgroup socket hooks that set an errno (`bpf_set_retval`, Linux 5.18).
    CgroupErrno,
    /// No `bpf_set_retval`: the cgroup hooks serve EPERM only, and other
    /// errnos are refused naming it.
    NoCgroupErrno,
    /// A program the test runs (`systemd-analyze`, `strace`): `./x setup`
    /// installs it on the host; a VM has it when its image carries it
    /// (`initramfs::carried_programs`: strace in the amd64 images).
    Tool(&'static str),
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Feature::Fq => "the fq qdisc",
            Feature::NoFq => "a kernel without fq",
            Feature::Tcx => "tcx links",
            Feature::KprobeOverride => "kprobe override",
            Feature::NoKprobeOverride => "a kernel without kprobe override",
            Feature::BpfLsm => "BPF LSM programs",
            Feature::NoBpfLsm => "a kernel without BPF LSM programs",
            Feature::CgroupErrno => "cgroup socket hooks with bpf_set_retval",
            Feature::NoCgroupErrno => "a kernel without bpf_set_retval",
            Feature::Tool(name) => name,
        })
    }
}

/// Tests that need a feature: `binary::test`, or `binary::` for every test
/// of that executable. Every other test is required on every kernel. A unit
/// test checks that each name is a test in `tests/tests/`.
pub const GATED: &[(&str, Feature)] = &[
    ("delay::", Feature::Fq),
    ("qdisc_ownership::", Feature::Fq),
    (
        "daemon::daemon_delay_shares_fq_and_restores_the_default_qdisc",
        Feature::Fq,
    ),
    (
        "cli::delay_and_bandwidth_refuse_cleanly_without_fq",
        Feature::NoFq,
    ),
    ("harness_smoke::tcx_attachments_are_seen", Feature::Tcx),
    (
        "harness_smoke::cgroup_id_matches_bpf_skb_cgroup_id",
        Feature::Tcx,
    ),
    (
        "lifecycle::sigkill_with_tcx_leaves_nothing_attached",
        Feature::Tcx,
    ),
    (
        "syscall_cost::syscall_cost_of_the_kprobe_backend",
        Feature::KprobeOverride,
    ),
    (
        "syscall_lsm::syscall_kprobe_fails_getpid_and_openat_for_one_comm_only",
        Feature::KprobeOverride,
    ),
    (
        "syscall::syscall_hostile_input_exits_2_and_unservable_exits_3",
        Feature::NoKprobeOverride,
    ),
    (
        "syscall_lsm::syscall_kprobe_only_request_names_the_config",
        Feature::NoKprobeOverride,
    ),
    (
        "syscall_lsm::syscall_lsm_openat_fails_for_one_comm_only",
        Feature::BpfLsm,
    ),
    (
        "syscall_lsm::syscall_lsm_write_fails_for_one_pid_only",
        Feature::BpfLsm,
    ),
    (
        "syscall_cost::syscall_cost_of_the_lsm_backend",
        Feature::BpfLsm,
    ),
    (
        "engine::daemon_runs_an_lsm_syscall_policy_next_to_five_network_policies",
        Feature::BpfLsm,
    ),
    (
        "syscall_lsm::syscall_lsm_unavailable_exits_3_and_probe_agrees",
        Feature::NoBpfLsm,
    ),
    (
        "engine::daemon_runs_a_syscall_policy_next_to_five_network_policies",
        Feature::CgroupErrno,
    ),
    (
        "engine::a_blast_policy_with_a_network_and_a_syscall_fault_applies_both",
        Feature::CgroupErrno,
    ),
    (
        "lease::a_stopped_syscall_blast_stops_failing_calls_within_its_lease",
        Feature::CgroupErrno,
    ),
    (
        "syscall_cost::syscall_cost_of_the_cgroup_backend",
        Feature::CgroupErrno,
    ),
    (
        "syscall::syscall_connect_gets_the_errno_in_the_cgroup_only",
        Feature::CgroupErrno,
    ),
    (
        "syscall::syscall_other_errnos_exit_3_without_bpf_set_retval",
        Feature::NoCgroupErrno,
    ),
    (
        "no_tools::no_tools_delay_blast_adds_its_latency_and_restores_the_qdiscs",
        Feature::Fq,
    ),
    (
        "no_tools::no_tools_strace_sees_no_exec_by_the_agent",
        Feature::Tool("strace"),
    ),
    (
        "deploy::systemd_unit_verifies",
        Feature::Tool("systemd-analyze"),
    ),
];

/// The feature `test` (`binary::name`) needs, if any.
pub fn gate(test: &str) -> Option<Feature> {
    GATED
        .iter()
        .find(|(pat, _)| {
            if pat.ends_with("::") {
                test.starts_with(pat)
            } else {
                test == *pat
            }
        })
        .map(|(_, f)| *f)
}

/// What one kernel offers, known before the run.
pub struct KernelFacts {
    /// `uname -m`: `x86_64`, `aarch64`.
    pub arch: String,
    /// `uname -r`.
    pub release: String,
    /// `CONFIG_*` options that are set (`y`, `m`, or a string).
    pub config: BTreeMap<String, String>,
    /// Why trampoline programs (BPF LSM) are not required here although
    /// the config has them: a platform restriction the config cannot show.
    pub no_trampolines: Option<&'static str>,
    /// The [`Feature::Tool`] programs found where the tests run.
    pub tools: BTreeSet<&'static str>,
}

impl KernelFacts {
    /// From a kernel's architecture, release and the text of its build
    /// configuration.
    pub fn new(arch: &str, release: &str, config: &str) -> KernelFacts {
        let config = config
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| k.starts_with("CONFIG_"))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        KernelFacts {
            arch: arch.to_owned(),
            release: release.to_owned(),
            config,
            no_trampolines: None,
            tools: BTreeSet::new(),
        }
    }

    /// The host's kernel: `/proc/config.gz` or `/boot/config-RELEASE`.
    pub fn host() -> Result<KernelFacts> {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .context("reading /proc/sys/kernel/osrelease")?
            .trim()
            .to_owned();
        let boot = PathBuf::from(format!("/boot/config-{release}"));
        let config = if Path::new("/proc/config.gz").is_file() {
            crate::output(Command::new("gzip").args(["-dc", "/proc/config.gz"]))?
        } else {
            std::fs::read_to_string(&boot).with_context(|| {
                format!(
                    "the host kernel's config is in neither /proc/config.gz nor {}: the required tests cannot be known",
                    boot.display()
                )
            })?
        };
        let mut facts = KernelFacts::new(std::env::consts::ARCH, &release, &config);
        // The development machines run a kernel whose config and lsm= list
        // have BPF LSM, but whose platform refuses every trampoline program
        // (EPERM at load): nothing the config says. The VM matrix, where
        // nothing restricts them, requires the LSM tests.
        facts.no_trampolines =
            Some("on the host, trampoline programs may be refused by the platform");
        facts.tools = GATED
            .iter()
            .filter_map(|(_, f)| match f {
                Feature::Tool(name) if crate::tool(name).is_file() => Some(*name),
                _ => None,
            })
            .collect();
        Ok(facts)
    }

    fn version(&self) -> (u32, u32) {
        let mut parts = self
            .release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|p| p.parse::<u32>().ok());
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    /// `y` or `m` (or a value) for a set option.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.config.get(name).map(String::as_str)
    }

    fn set(&self, name: &str) -> bool {
        matches!(self.option(name), Some("y" | "m"))
    }

    /// Ok when the kernel has `feature`; otherwise why not.
    pub fn has(&self, feature: Feature) -> Result<(), String> {
        let need = |ok: bool, why: String| if ok { Ok(()) } else { Err(why) };
        let (major, minor) = self.version();
        match feature {
            Feature::Fq => need(
                self.set("CONFIG_NET_SCH_FQ"),
                "CONFIG_NET_SCH_FQ is not set".into(),
            ),
            Feature::NoFq => need(
                !self.set("CONFIG_NET_SCH_FQ"),
                "the kernel has fq (CONFIG_NET_SCH_FQ)".into(),
            ),
            Feature::Tcx => need(
                (major, minor) >= (6, 6),
                format!("tcx needs Linux 6.6, this is {}", self.release),
            ),
            Feature::KprobeOverride => need(
                self.set("CONFIG_KPROBES") && self.set("CONFIG_BPF_KPROBE_OVERRIDE"),
                "CONFIG_BPF_KPROBE_OVERRIDE (or CONFIG_KPROBES) is not set".into(),
            ),
            Feature::NoKprobeOverride => need(
                !(self.set("CONFIG_KPROBES") && self.set("CONFIG_BPF_KPROBE_OVERRIDE")),
                "the kernel has kprobe override (CONFIG_BPF_KPROBE_OVERRIDE)".into(),
            ),
            Feature::BpfLsm => {
                let listed = self
                    .option("CONFIG_LSM")
                    .is_some_and(|l| l.split(',').any(|m| m.trim() == "bpf"));
                need(
                    self.set("CONFIG_BPF_LSM") && listed,
                    "CONFIG_BPF_LSM is not set or bpf is not in CONFIG_LSM".into(),
                )?;
                // On arm64 a BPF trampoline reaches a kernel function through
                // an ftrace direct call, which arm64 has since Linux 6.4
                // (CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS). Before, LSM
                // programs load but attaching one fails with error 524
                // (ENOTSUPP): seen on Debian bookworm's arm64 6.1.
                need(
                    self.arch != "aarch64" || self.set("CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS"),
                    format!(
                        "BPF trampolines on arm64 need ftrace direct calls (CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS, Linux 6.4); this is {} (attaching fails with error 524)",
                        self.release
                    ),
                )?;
                match self.no_trampolines {
                    Some(why) => Err(why.into()),
                    None => Ok(()),
                }
            }
            Feature::NoBpfLsm => need(
                self.no_trampolines.is_none() && self.has(Feature::BpfLsm).is_err(),
                match self.no_trampolines {
                    Some(why) => why.into(),
                    None => format!("Linux {} runs BPF LSM programs", self.release),
                },
            ),
            Feature::CgroupErrno => need(
                self.set("CONFIG_CGROUP_BPF") && (major, minor) >= (5, 18),
                format!(
                    "bpf_set_retval needs Linux 5.18 and CONFIG_CGROUP_BPF, this is {}",
                    self.release
                ),
            ),
            Feature::NoCgroupErrno => need(
                self.has(Feature::CgroupErrno).is_err(),
                format!("Linux {} has bpf_set_retval", self.release),
            ),
            Feature::Tool(name) => need(
                self.tools.contains(name),
                format!("{name} is not installed where the tests run"),
            ),
        }
    }
}

/// One kernel's required tests, and those left out with the reason.
#[derive(Default)]
pub struct Requirement {
    pub required: BTreeSet<String>,
    pub exempt: BTreeMap<String, String>,
}

impl Requirement {
    /// Splits the tests a run selects (`binary::name`) into required and
    /// exempt on the kernel `facts` describes.
    pub fn new(selected: &[String], facts: &KernelFacts) -> Requirement {
        let mut r = Requirement::default();
        for test in selected {
            match gate(test).map(|f| (f, facts.has(f))) {
                Some((f, Err(why))) => {
                    r.exempt.insert(test.clone(), format!("needs {f}: {why}"));
                }
                _ => {
                    r.required.insert(test.clone());
                }
            }
        }
        r
    }

    /// Required tests in `console` that did not run to a pass or a
    /// failure, one line each (failures are reported on their own).
    pub fn missing(&self, console: &Console) -> Vec<String> {
        self.required
            .iter()
            .filter_map(|t| match console.tests.get(t) {
                None => Some(format!("required test {t} did not run")),
                Some(r) if r.outcome == Outcome::Skipped => {
                    Some(format!("required test {t} skipped: {}", r.why))
                }
                Some(_) => None,
            })
            .collect()
    }

    /// Required tests that need `feature`.
    pub fn needing(&self, feature: Feature) -> Vec<&str> {
        self.required
            .iter()
            .filter(|t| gate(t) == Some(feature))
            .map(String::as_str)
            .collect()
    }
}

/// The tests each executable would run with `args` (libtest filters and
/// `--skip`), as `binary::name`.
pub fn selected_tests(executables: &[(String, PathBuf)], args: &[String]) -> Result<Vec<String>> {
    let mut all = Vec::new();
    for (name, exe) in executables {
        let mut cmd = Command::new(exe);
        cmd.args(["--list", "--format=terse"]).args(args);
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {}", display(&cmd)))?;
        ensure!(
            out.status.success(),
            "{} failed: {}",
            display(&cmd),
            out.status
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(test) = line.strip_suffix(": test") {
                all.push(format!("{name}::{test}"));
            }
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every gated name is a test (or a test file) of `tests/tests/`: a
    /// renamed test cannot silently leave the table.
    #[test]
    fn every_gated_test_exists() {
        for (pat, _) in GATED {
            let (binary, test) = pat.split_once("::").expect("binary::test");
            let file = crate::root().join(format!("tests/tests/{binary}.rs"));
            let source = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{pat}: {}: {e}", file.display()));
            if !test.is_empty() {
                assert!(
                    source.contains(&format!("fn {test}(")),
                    "{pat}: no such test in {}",
                    file.display()
                );
            }
        }
    }

    const DEBIAN_61: &str = "CONFIG_NET_SCH_FQ=m\nCONFIG_KPROBES=y\n\
        # CONFIG_BPF_KPROBE_OVERRIDE is not set\nCONFIG_BPF_LSM=y\n\
        CONFIG_LSM=\"landlock,lockdown,yama,loadpin,safesetid,integrity,apparmor,selinux,smack,tomoyo,bpf\"\n\
        CONFIG_CGROUP_BPF=y\n";

    #[test]
    fn requirements_follow_version_and_config() {
        let facts = KernelFacts::new("x86_64", "6.1.0-56-amd64", DEBIAN_61);
        let selected: Vec<String> = [
            "delay::delay_egress_20ms",
            "harness_smoke::tcx_attachments_are_seen",
            "syscall_lsm::syscall_lsm_openat_fails_for_one_comm_only",
            "syscall_lsm::syscall_kprobe_only_request_names_the_config",
            "syscall_lsm::syscall_kprobe_fails_getpid_and_openat_for_one_comm_only",
            "cli::delay_and_bandwidth_refuse_cleanly_without_fq",
            "loss::udp_ipv4_egress_30",
        ]
        .map(String::from)
        .to_vec();
        let r = Requirement::new(&selected, &facts);
        let required: Vec<&str> = r.required.iter().map(String::as_str).collect();
        assert_eq!(
            required,
            [
                "delay::delay_egress_20ms",
                "loss::udp_ipv4_egress_30",
                "syscall_lsm::syscall_kprobe_only_request_names_the_config",
                "syscall_lsm::syscall_lsm_openat_fails_for_one_comm_only",
            ]
        );
        assert!(r.exempt["harness_smoke::tcx_attachments_are_seen"].contains("Linux 6.6"));
        assert_eq!(r.needing(Feature::Fq), ["delay::delay_egress_20ms"]);

        let mut host = KernelFacts::new("x86_64", "6.18.44", "# CONFIG_NET_SCH_FQ is not set\n");
        host.no_trampolines = Some("platform");
        assert!(host.has(Feature::NoFq).is_ok());
        assert!(host.has(Feature::Fq).is_err());
        assert!(host.has(Feature::BpfLsm).is_err());
        // Neither side of BPF LSM is required on the host: the platform
        // decides, whatever the config says.
        assert!(host.has(Feature::NoBpfLsm).is_err());
        assert!(host.has(Feature::Tcx).is_ok());
    }

    /// Debian bullseye's 5.10: BPF LSM built but not in the default list,
    /// no bpf_set_retval.
    const DEBIAN_510: &str = "CONFIG_NET_SCH_FQ=m\nCONFIG_KPROBES=y\nCONFIG_BPF_LSM=y\n\
        CONFIG_LSM=\"lockdown,yama,loadpin,safesetid,integrity,apparmor,selinux,smack,tomoyo\"\n\
        CONFIG_CGROUP_BPF=y\n";

    #[test]
    fn debian_5_10_and_arm64_6_1() {
        let old = KernelFacts::new("x86_64", "5.10.0-35-amd64", DEBIAN_510);
        assert!(old.has(Feature::CgroupErrno).unwrap_err().contains("5.18"));
        assert!(old.has(Feature::NoCgroupErrno).is_ok());
        assert!(old.has(Feature::BpfLsm).is_err());
        assert!(old.has(Feature::Tcx).is_err());
        let r = Requirement::new(
            &[
                "syscall::syscall_connect_gets_the_errno_in_the_cgroup_only".to_owned(),
                "syscall::syscall_eperm_connect_fault_works_on_every_kernel".to_owned(),
                "syscall::syscall_other_errnos_exit_3_without_bpf_set_retval".to_owned(),
            ],
            &old,
        );
        assert_eq!(
            r.required.iter().map(String::as_str).collect::<Vec<_>>(),
            [
                "syscall::syscall_eperm_connect_fault_works_on_every_kernel",
                "syscall::syscall_other_errnos_exit_3_without_bpf_set_retval",
            ]
        );
        // arm64 before 6.4: no ftrace direct calls, so no trampolines.
        let arm61 = KernelFacts::new("aarch64", "6.1.0-56-arm64", DEBIAN_61);
        let why = arm61.has(Feature::BpfLsm).unwrap_err();
        assert!(why.contains("error 524"), "{why}");
        assert!(arm61.has(Feature::NoBpfLsm).is_ok());
        assert!(old.has(Feature::NoBpfLsm).is_ok());
        let arm612 = KernelFacts::new(
            "aarch64",
            "6.12.57+deb13-arm64",
            &format!("{DEBIAN_61}CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS=y\n"),
        );
        assert!(arm612.has(Feature::BpfLsm).is_ok());
        assert!(arm612.has(Feature::NoBpfLsm).is_err());
        assert!(arm612.has(Feature::NoCgroupErrno).is_err());
        // The same config on x86_64 needs nothing more.
        assert!(
            KernelFacts::new("x86_64", "6.1.0-56-amd64", DEBIAN_61)
                .has(Feature::BpfLsm)
                .is_ok()
        );
    }

    #[test]
    fn skipped_and_absent_required_tests_are_named() {
        let facts = KernelFacts::new("x86_64", "6.12.117", DEBIAN_61);
        let selected = vec!["a::x".to_owned(), "a::y".to_owned(), "a::z".to_owned()];
        let r = Requirement::new(&selected, &facts);
        let mut c = Console::default();
        for l in [
            "VM_TEST_BINARY a",
            "test x ... ok",
            "test y ... ok",
            "---- y stdout ----",
            "skipped: no fq",
        ] {
            c.line_at(l, 0.0);
        }
        assert_eq!(
            r.missing(&c),
            [
                "required test a::y skipped: no fq",
                "required test a::z did not run"
            ]
        );
    }
}
