//! What ships around the binary: the systemd unit passes
//! `systemd-analyze verify`; the Kubernetes manifests parse, fit together
//! (the DaemonSet mounts the ConfigMap where `--policies` points) and the
//! policies they carry pass `chaos-agent validate`.

mod common;

use std::{path::PathBuf, process::Command};

use common::{agent_bin, agent_output};
use serde::Deserialize;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scratch(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("chaos-deploy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

#[test]
fn systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze not installed (./x setup installs systemd)");
        return;
    }
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/chaos-agent.service")).unwrap();
    for want in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_ADMIN",
    ] {
        assert!(unit.contains(want), "unit lacks {want}");
    }
    // verify checks that ExecStart's binary exists: point it at the binary
    // under test (the packaged path is /usr/bin/chaos-agent).
    let dir = scratch("unit");
    let path = dir.join("chaos-agent.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/bin/chaos-agent",
            &agent_bin().canonicalize().unwrap().display().to_string(),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    // Warnings about our unit (not about unrelated units on the host) fail too.
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("chaos-agent.service"))
        .collect();
    assert!(ours.is_empty(), "{ours:?}");
}

#[test]
fn kubernetes_manifests_parse_and_their_policies_validate() {
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/chaos-agent.yaml")).unwrap();
    let docs: Vec<Value> = serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let cm = kind("ConfigMap");
    let ds = kind("DaemonSet");
    assert_eq!(ds["apiVersion"], "apps/v1");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let dir = args
        .iter()
        .find_map(|a| a.strip_prefix("--policies="))
        .expect("--policies= in args");
    assert!(args.contains(&"run"), "{args:?}");
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .expect("a volume mounted at the policies directory");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    assert_eq!(volume["configMap"]["name"], cm["metadata"]["name"]);
    assert_eq!(ds["metadata"]["namespace"], cm["metadata"]["namespace"]);
    // The selector selects the pods.
    for (k, v) in ds["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&ds["spec"]["template"]["metadata"]["labels"][k], v);
    }

    let files = scratch("k8s");
    let data = cm["data"].as_object().unwrap();
    assert!(!data.is_empty());
    for (name, body) in data {
        assert!(
            name.ends_with(".yaml"),
            "{name}: the agent reads *.yaml / *.yml only"
        );
        std::fs::write(files.join(name), body.as_str().unwrap()).unwrap();
    }
    let (code, out, err) = agent_output(&["validate", files.to_str().unwrap()]).unwrap();
    std::fs::remove_dir_all(&files).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.lines().filter(|l| l.ends_with("fault)")).count(),
        data.len(),
        "{out}"
    );
}
