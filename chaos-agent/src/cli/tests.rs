use clap::CommandFactory;

use super::*;
use crate::policy::model::FaultKind;

#[test]
fn clap_definitions_are_consistent() {
    Cli::command().debug_assert();
}

/// The policy (or the refusal, exit 2) that a `blast ...` command line
/// stands for; nothing is applied.
fn blast(args: &[&str]) -> Result<Policy> {
    let cli = Cli::try_parse_from([&["chaos-agent", "blast"], args].concat()).unwrap();
    let Command::Blast(b) = cli.command else {
        panic!("a blast")
    };
    match b.kind {
        Some(BlastKind::Net(n)) => net_policy(&n),
        Some(BlastKind::Syscall(s)) => syscall_policy(&s),
        None => panic!("net or syscall"),
    }
}

#[track_caller]
fn refused(args: &[&str], want: &str) {
    match blast(args) {
        Err(e @ Error::Invalid(_)) => {
            assert_eq!(e.to_string(), want);
            assert_eq!(e.exit_code(), ExitCode::from(2));
        }
        other => panic!("{args:?}: expected exit 2, got {other:?}"),
    }
}

#[test]
fn flags_reach_the_policy_loader_as_typed() {
    let net = ["net", "--iface", "eth0", "--duration", "5s"];
    let p = blast(&[&net[..], &["--loss", "30%", "--dport", " 80 "]].concat()).unwrap();
    assert_eq!(p.name, flags::default_name());
    assert_eq!(p.origin, "<flags>");
    let named = blast(&[&net[..], &["--loss", "1", "--name", "edge-loss"]].concat()).unwrap();
    assert_eq!(named.name, "edge-loss");
    refused(
        &[&net[..], &["--loss", "1", "--name", "Edge"]].concat(),
        r#"--name: expected a name of 1-63 characters from a-z, 0-9 and -, found "Edge""#,
    );
    refused(
        &[&net[..], &["--loss", "30", "--dport", "70000"]].concat(),
        r#"--dport: expected a port (1-65535) or a range A-B, found "70000""#,
    );
    refused(
        &[&net[..], &["--jitter", "5ms", "--loss", "1"]].concat(),
        "--jitter: needs --delay too",
    );
    refused(
        &[&net[..], &["--loss", "1", "--abort-tcp", "nope"]].concat(),
        r#"--abort-tcp: expected HOST:PORT such as 127.0.0.1:5432 or [::1]:5432, found "nope""#,
    );
    refused(
        &[&net[..], &["--loss", "1", "--abort-interval", "2s"]].concat(),
        "--abort-interval: needs --abort-http or --abort-tcp too",
    );
    refused(
        &[&net[..], &["--loss", "1", "--abort-http", "ftp://x/"]].concat(),
        r#"--abort-http: expected an http:// URL such as http://127.0.0.1:8080/health, found "ftp://x/""#,
    );
    // Whitespace and '/' in probe targets: the validator's rules.
    refused(
        &[&net[..], &["--loss", "1", "--abort-tcp", "my host:80"]].concat(),
        r#"--abort-tcp: expected HOST:PORT such as 127.0.0.1:5432 or [::1]:5432, found "my host:80""#,
    );
    refused(
        &[&net[..], &["--loss", "1", "--abort-tcp", "a/b:80"]].concat(),
        r#"--abort-tcp: expected HOST:PORT such as 127.0.0.1:5432 or [::1]:5432, found "a/b:80""#,
    );
    refused(
        &[
            &net[..],
            &["--loss", "1", "--proto", "icmp", "--sport", "53"],
        ]
        .concat(),
        "--sport, --proto: ports need protocol tcp, udp or any (ICMP has no ports), found icmp",
    );
    refused(
        &[
            &net[..],
            &["--loss", "1", "--unit", "a.service", "--direction", "both"],
        ]
        .concat(),
        "--unit, --direction: unit needs direction egress (cgroups only see the packets they send), found direction both",
    );
    refused(
        &[&net[..], &["--rate", "1000"]].concat(),
        r#"--rate: expected a rate such as 100bit, 500kbit, 1mbit, 10gbit (bits/s) or 100bps, 1kbps, 1mbps (bytes/s), found "1000""#,
    );
}

#[test]
fn syscall_flags_reach_the_policy_loader() {
    let sys = [
        "syscall",
        "--errno",
        "EIO",
        "--pid",
        "42",
        "--duration",
        "5s",
    ];
    let p = blast(&[&sys[..], &["--syscall", "connect,openat"]].concat()).unwrap();
    let FaultKind::Syscall(s) = &p.faults[0].kind else {
        panic!("a syscall fault")
    };
    assert_eq!(s.names, ["connect", "openat"]);
    assert_eq!(p.faults[0].name, "syscall");
    refused(
        &[&sys[..], &["--syscall", "connect,nosuchcall"]].concat(),
        &format!(
            "--syscall: unknown syscall \"nosuchcall\"; expected a name as in man 2 on {}",
            std::env::consts::ARCH
        ),
    );
    refused(
        &[&sys[..], &["--syscall", "connect", "--syscall", "connect"]].concat(),
        "--syscall: duplicate syscall name \"connect\"; expected each name once",
    );
    refused(
        &[&sys[..], &["--syscall", "read", "--max-injections", "0"]].concat(),
        r#"--max-injections: expected a whole number of at least 1, found "0""#,
    );
}

#[test]
fn clap_still_checks_which_flags_go_together() {
    let parse = |args: &[&str]| {
        Cli::try_parse_from([&["chaos-agent", "blast", "net"], args].concat())
            .map(|_| ())
            .map_err(|e| e.kind())
    };
    let base = ["--iface", "eth0", "--duration", "5s"];
    use clap::error::ErrorKind as K;
    assert_eq!(
        parse(&[&base[..], &["--loss", "1", "--corrupt", "2"]].concat()),
        Err(K::ArgumentConflict)
    );
    assert_eq!(parse(&base), Err(K::MissingRequiredArgument));
    assert_eq!(
        parse(
            &[
                &base[..],
                &["--loss", "1", "--unit", "a.service", "--cgroup", "/x"]
            ]
            .concat()
        ),
        Err(K::ArgumentConflict)
    );
    assert_eq!(
        parse(
            &[
                &base[..],
                &[
                    "--loss",
                    "1",
                    "--abort-http",
                    "http://x/",
                    "--abort-tcp",
                    "x:1"
                ]
            ]
            .concat()
        ),
        Err(K::ArgumentConflict)
    );
    assert_eq!(parse(&[&base[..], &["--loss", "1"]].concat()), Ok(()));
}

/// Every command as a user reaches it, with its full name.
fn commands() -> Vec<clap::Command> {
    let mut root = Cli::command();
    root.build();
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(cmd) = todo.pop() {
        todo.extend(
            cmd.get_subcommands()
                .filter(|s| s.get_name() != "help")
                .cloned(),
        );
        out.push(cmd);
    }
    out
}

#[test]
fn every_flag_has_help_and_every_command_examples() {
    for cmd in commands() {
        let name = cmd.get_bin_name().unwrap_or(cmd.get_name()).to_string();
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(!help.trim().is_empty(), "{name} {}: no help", arg.get_id());
            assert!(
                !help.contains('\n'),
                "{name} {}: help on one line",
                arg.get_id()
            );
        }
        let after = cmd
            .get_after_help()
            .map(|h| h.to_string())
            .unwrap_or_default();
        assert!(after.starts_with("Examples:\n"), "{name}: no examples");
    }
}

/// docs/cli.md names every command and every long flag clap knows, so
/// the reference cannot fall behind the code.
#[test]
fn docs_cli_names_every_command_and_flag() {
    let doc = include_str!("../../../docs/cli.md");
    for cmd in commands() {
        let name = cmd.get_bin_name().unwrap_or(cmd.get_name()).to_string();
        assert!(
            doc.contains(&format!("`{name}")) || doc.contains(&format!("`{} ", cmd.get_name())),
            "docs/cli.md does not name `{name}`"
        );
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long()
                && !["help", "version"].contains(&long)
            {
                assert!(
                    doc.contains(&format!("--{long}")),
                    "docs/cli.md does not name --{long} (of `{name}`)"
                );
            }
        }
    }
}

/// Every example in the help parses, and the blasts among them stand
/// for policies `validate` accepts; policy files they name exist.
#[test]
fn the_examples_in_the_help_are_valid() {
    let mut seen = 0;
    for cmd in commands() {
        let after = cmd.get_after_help().unwrap().to_string();
        for line in after.lines().filter_map(|l| l.strip_prefix("    ")) {
            let Some(rest) = line.strip_prefix("chaos-agent ") else {
                continue;
            };
            // The command itself, not the shell's redirection.
            let args: Vec<&str> = std::iter::once("chaos-agent")
                .chain(rest.split_whitespace().take_while(|w| *w != ">"))
                .collect();
            let cli =
                Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{line}: {}", e.render()));
            seen += 1;
            let Command::Blast(b) = cli.command else {
                continue;
            };
            match (&b.policy, &b.kind) {
                (Some(path), None) => {
                    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("..")
                        .join(path);
                    policy::load_file(&path).unwrap_or_else(|e| panic!("{line}: {e}"));
                }
                (None, Some(BlastKind::Net(n))) => {
                    net_policy(n).unwrap_or_else(|e| panic!("{line}: {e}"));
                }
                (None, Some(BlastKind::Syscall(s))) => {
                    syscall_policy(s).unwrap_or_else(|e| panic!("{line}: {e}"));
                }
                _ => panic!("{line}: not a blast"),
            }
        }
    }
    assert!(seen >= 20, "{seen} examples");
}

/// `--attach` and `--debug-kernel` are for what attaches a classifier:
/// `blast --policy` and `blast net`; `--json` and `--metrics-addr` are
/// on every blast (after `net` or `syscall`: flags of `blast` itself
/// conflict with its subcommands).
#[test]
fn tc_flags_are_on_net_and_policy_blasts_only() {
    let parse = |args: &[&str]| {
        Cli::try_parse_from([&["chaos-agent", "blast"], args].concat())
            .map(|c| c.command)
            .map_err(|e| e.kind())
    };
    let net = ["net", "--iface", "eth0", "--loss", "1", "--duration", "5s"];
    let sys = [
        "syscall",
        "--syscall",
        "connect",
        "--errno",
        "EIO",
        "--pid",
        "42",
        "--duration",
        "5s",
    ];
    use clap::error::ErrorKind as K;
    for flag in [&["--attach", "tcx"][..], &["--debug-kernel"]] {
        assert_eq!(
            parse(&[&sys[..], flag].concat()).err(),
            Some(K::UnknownArgument),
            "{flag:?}"
        );
    }
    let Ok(Command::Blast(b)) = parse(
        &[
            &net[..],
            &["--attach", "netlink", "--debug-kernel", "--json"],
        ]
        .concat(),
    ) else {
        panic!("blast net")
    };
    let Some(BlastKind::Net(n)) = &b.kind else {
        panic!("net")
    };
    assert_eq!(
        (n.tc.attach, n.tc.debug_kernel),
        (AttachMode::Netlink, true)
    );
    assert!(b.run.json);
    let Ok(Command::Blast(b)) = parse(&["--policy", "p.yaml", "--attach", "tcx", "--json"]) else {
        panic!("blast --policy")
    };
    assert_eq!((b.tc.attach, b.run.json), (AttachMode::Tcx, true));
    let args = [&sys[..], &["--json", "--metrics-addr", "127.0.0.1:0"]].concat();
    let Ok(Command::Blast(b)) = parse(&args) else {
        panic!("{args:?}")
    };
    assert!(b.run.json && b.run.metrics_addr.is_some(), "{args:?}");
    let mut cmd = Cli::command();
    cmd.build();
    let blast = cmd.find_subcommand("blast").unwrap();
    let sys = blast.find_subcommand("syscall").unwrap();
    let ids: Vec<&str> = sys.get_arguments().map(|a| a.get_id().as_str()).collect();
    assert!(
        !ids.contains(&"attach") && !ids.contains(&"debug_kernel"),
        "{ids:?}"
    );
    let net = blast.find_subcommand("net").unwrap();
    let delay = net
        .get_arguments()
        .find(|a| a.get_id() == "delay")
        .and_then(|a| a.get_help())
        .unwrap()
        .to_string();
    assert!(!delay.contains("egress"), "{delay}");
    let headings: Vec<&str> = net
        .get_arguments()
        .filter_map(|a| a.get_help_heading())
        .fold(Vec::new(), |mut v, h| {
            if !v.contains(&h) {
                v.push(h);
            }
            v
        });
    assert_eq!(headings, [SELECTION, FAULT, GUARD, RUN]);
}

/// `--otlp-endpoint` is on `run` and every blast (after `net` or
/// `syscall`); `--name` only on blasts built from flags.
#[test]
fn otlp_endpoint_on_run_and_every_blast_name_on_flag_blasts() {
    let parse = |args: &[&str]| {
        Cli::try_parse_from([&["chaos-agent"], args].concat())
            .map(|c| c.command)
            .map_err(|e| e.kind())
    };
    let url = "http://127.0.0.1:4318";
    let Ok(Command::Run { otlp_endpoint, .. }) = parse(&["run", "--otlp-endpoint", url]) else {
        panic!("run --otlp-endpoint")
    };
    assert_eq!(otlp_endpoint.as_deref(), Some(url));
    for args in [
        &["blast", "--policy", "p.yaml"][..],
        &[
            "blast",
            "net",
            "--iface",
            "eth0",
            "--loss",
            "1",
            "--duration",
            "5s",
        ],
        &[
            "blast",
            "syscall",
            "--syscall",
            "connect",
            "--errno",
            "EIO",
            "--pid",
            "42",
            "--duration",
            "5s",
        ],
    ] {
        let Ok(Command::Blast(b)) = parse(&[args, &["--otlp-endpoint", url]].concat()) else {
            panic!("{args:?} --otlp-endpoint")
        };
        assert_eq!(b.run.otlp_endpoint.as_deref(), Some(url), "{args:?}");
    }
    assert_eq!(
        parse(&["blast", "--policy", "p.yaml", "--name", "x"]).err(),
        Some(clap::error::ErrorKind::UnknownArgument)
    );
}

#[test]
fn version_names_commit_and_build_date() {
    let e = Cli::try_parse_from(["chaos-agent", "--version"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
    let shown = e.render().to_string();
    assert_eq!(
        shown.trim(),
        format!("chaos-agent {VERSION} (commit {COMMIT}, built {BUILD_DATE})")
    );
    assert!(
        COMMIT == "unknown"
            || (COMMIT.len() == 12 && COMMIT.bytes().all(|b| b.is_ascii_hexdigit())),
        "{COMMIT}"
    );
    assert_eq!(
        version_json(),
        format!(r#"{{"version":"{VERSION}","commit":"{COMMIT}","build_date":"{BUILD_DATE}"}}"#)
    );
    let date = BUILD_DATE.as_bytes();
    assert!(
        date.len() == 10 && date[4] == b'-' && date[7] == b'-',
        "{BUILD_DATE}"
    );
}
