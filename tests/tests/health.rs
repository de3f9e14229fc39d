//! `/healthz` and `/readyz` on the daemon's metrics listener (the
//! DaemonSet's liveness and readiness probes): both 200 on a healthy daemon
//! with a fault in force; `/readyz` 503 while a policy file of the
//! directory is refused (bad YAML, a value out of range), whatever else
//! changes meanwhile, and 200 again once it is fixed or removed; `/healthz`
//! stays 200 throughout (the loop runs, the last good versions are in
//! force).

mod common;

use chaos_tests::{NetnsPair, require_root};
use common::{
    daemon::{Daemon, sample},
    eventually,
};

fn loss_policy(name: &str, pair: &NetnsPair, percent: u32) -> String {
    format!(
        "apiVersion: chaos-agent/v1
kind: FaultPolicy
metadata:
  name: {name}
spec:
  duration: 5m
  faults:
    - name: udp-loss
      network:
        interface: {iface}
        netns: {ns}
        direction: egress
        match:
          protocol: udp
          dstPorts: [7000]
        loss: {{ percent: {percent} }}
",
        iface = pair.if_a(),
        ns = pair.ns_a(),
    )
}

/// Waits (5 s at most) for `/readyz` to answer `status`; returns the body.
fn readyz_becomes(d: &Daemon, status: u16) -> String {
    let mut last = (0, String::new());
    let ok = eventually(5, || {
        last = d.get("/readyz");
        last.0 == status
    });
    assert!(
        ok,
        "/readyz did not become {status}: {last:?}\ndaemon log:\n{}",
        d.log()
    );
    last.1
}

#[test]
fn healthz_and_readyz_follow_the_loop_and_the_last_reload() {
    require_root!();
    let pair = NetnsPair::new("health").unwrap();
    let d = Daemon::start("health", &[("a.yaml", &loss_policy("a", &pair, 10))]).unwrap();
    let status = d.status();
    assert_eq!(
        status["policies"][0]["state"],
        "active",
        "{status}\n{}",
        d.log()
    );

    // Healthy: both 200, "ok".
    assert_eq!(d.get("/healthz"), (200, "ok\n".into()));
    assert_eq!(d.get("/readyz"), (200, "ok\n".into()));

    // A file that is not YAML: refused, so not ready; still live, and the
    // other policy stays in force.
    d.write_policy("b.yaml", "apiVersion: chaos-agent/v1\nkind: [FaultPolicy\n");
    let why = readyz_becomes(&d, 503);
    assert!(why.contains("1 policy file(s) refused"), "{why}");
    assert_eq!(d.get("/healthz"), (200, "ok\n".into()));
    assert_eq!(d.status()["policies"][0]["state"], "active");

    // Another file's good edit reloads (counted "ok": it refused nothing
    // new), but the directory still holds a refused file: still not ready.
    let reloads_ok = || {
        sample(
            &d.scrape(),
            "chaos_agent_reloads_total",
            &[("result", "ok")],
        )
        .unwrap_or(0.0)
    };
    let before = reloads_ok();
    d.write_policy("a.yaml", &loss_policy("a", &pair, 20));
    assert!(
        eventually(5, || reloads_ok() > before),
        "no successful reload after the edit of a.yaml:\n{}",
        d.log()
    );
    assert_eq!(d.get("/readyz").0, 503);

    // Fixed: ready again.
    d.write_policy("b.yaml", &loss_policy("b", &pair, 5));
    assert_eq!(readyz_becomes(&d, 200), "ok\n");

    // A value out of range is refused as well; removing the file makes the
    // daemon ready again.
    d.write_policy(
        "b.yaml",
        &loss_policy("b", &pair, 5).replace("percent: 5", "percent: 250"),
    );
    readyz_becomes(&d, 503);
    std::fs::remove_file(d.policies.0.join("b.yaml")).unwrap();
    assert_eq!(readyz_becomes(&d, 200), "ok\n");
    assert_eq!(d.get("/healthz"), (200, "ok\n".into()));

    // Probes are GET only; other paths are 404.
    assert_eq!(d.get("/nothing").0, 404);
}
