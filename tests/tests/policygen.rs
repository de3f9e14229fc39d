//! Generated policies against the policy loader, without root: 2,000
//! seeded random policies (see `chaos_tests::policygen`) go through
//! `chaos_agent::policy::load_str`. Nothing panics; every refusal names the
//! file, a line:column and the field; what the generator built within
//! every limit is accepted, and what it built past exactly one limit is
//! refused for that limit, at the field it expects.
//!
//! `CHAOS_POLICYGEN_SEED=N` runs another seed.

use std::collections::BTreeMap;

use chaos_agent::policy::{ErrorKind, load_str, model::FaultKind};
use chaos_tests::policygen::{Ctx, Expect, Generator, Kinds};

const POLICIES: usize = 2_000;

#[test]
fn generated_policies_are_judged_as_built() {
    let seed = std::env::var("CHAOS_POLICYGEN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00c4_a05e_ed00_0001_u64);
    let mut generator = Generator::new(seed);
    let contexts = [
        Ctx {
            cgroups: vec!["/chaos-gen/a".into(), "/chaos-gen/b/c".into()],
            probe_port: Some(5432),
            ..Ctx::new(Some("cht-gen-a"), "veth-gen-a")
        },
        Ctx {
            kinds: Kinds::Network,
            ..Ctx::new(None, "eth0")
        },
        Ctx {
            kinds: Kinds::Syscall,
            cgroups: vec!["/system.slice/db.service".into()],
            duration: Some("30s".into()),
            start_after: false,
            ..Ctx::new(Some("ns1"), "eth1")
        },
    ];
    let mut seen: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for i in 0..POLICIES {
        let ctx = &contexts[i % contexts.len()];
        let generated = generator.policy(ctx);
        let origin = format!("generated/{i}-{}.yaml", generated.name);
        let shown = || {
            format!(
                "seed {seed:#x}, policy {i} ({}):\n{}",
                generated.scenario, generated.text
            )
        };
        let result = std::panic::catch_unwind(|| load_str(&origin, &generated.text))
            .unwrap_or_else(|_| panic!("load_str panicked on {}", shown()));
        let entry = seen.entry(generated.scenario).or_default();
        match (&generated.expect, result) {
            (Expect::Valid, Ok(policy)) => {
                entry.0 += 1;
                assert_eq!(policy.origin, origin);
                let nets = policy
                    .faults
                    .iter()
                    .filter(|f| matches!(f.kind, FaultKind::Network(_)))
                    .count();
                assert_eq!(
                    (nets, policy.faults.len() - nets),
                    (generated.network_faults, generated.syscall_faults),
                    "{}",
                    shown()
                );
            }
            (Expect::Valid, Err(e)) => panic!("refused: {e}\n{}", shown()),
            (Expect::Invalid(fragment), Ok(_)) => {
                panic!(
                    "accepted, expected a refusal with {fragment:?}: {}",
                    shown()
                )
            }
            (Expect::Invalid(fragment), Err(e)) => {
                entry.1 += 1;
                let text = e.to_string();
                assert_eq!(e.kind, ErrorKind::Invalid, "{text}\n{}", shown());
                assert_eq!(e.file, origin, "{text}");
                let (Some(line), Some(column)) = (e.line, e.column) else {
                    panic!("no line:column in {text}\n{}", shown())
                };
                assert!(
                    text.starts_with(&format!("{origin}:{line}:{column}: ")),
                    "{text}"
                );
                assert!(line <= generated.text.lines().count(), "{text}");
                assert!(e.message.contains(fragment), "{text}\n{}", shown());
                assert_eq!(e.path, generated.refused_at, "{text}\n{}", shown());
            }
        }
    }
    // Every scenario came up, with both outcomes where it has them.
    for scenario in [
        "random",
        "at-keys-per-fault",
        "at-keys-per-policy",
        "at-shapes-per-hook",
        "keys-per-fault",
        "keys-per-policy",
        "shapes-per-hook",
        "no-common-family",
        "unknown-syscall",
    ] {
        let (ok, refused) = seen.get(scenario).copied().unwrap_or_default();
        assert!(
            ok + refused >= 20,
            "{scenario}: only {ok} + {refused}: {seen:?}"
        );
    }
    println!("policies per scenario (accepted, refused): {seen:?}");
}
