//! `blast --metrics-addr`: the Prometheus exposition, scraped over real HTTP,
//! agrees with the traffic the receiver saw; other paths get 404; a busy
//! address is a usage error.

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chaos_tests::{AddrKind, Direction, NetnsPair, Side, require_root, udp_run};
use common::{Blast, agent_output, assert_share};

const TARGET: u16 = 7000;
const COUNT: u32 = 5_000;
const PPS: u32 = 40_000;

/// One sample line of the exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `name{k="v",...} value` lines; comment lines are skipped.
fn parse_exposition(text: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let close = line.rfind('}').context("unclosed label set")?;
                (
                    &line[..open],
                    parse_labels(&line[open + 1..close])?,
                    &line[close + 1..],
                )
            }
            None => {
                let sp = line.find(' ').context("no value")?;
                (&line[..sp], Vec::new(), &line[sp..])
            }
        };
        let value = rest
            .split_whitespace()
            .next()
            .context("no value")?
            .parse::<f64>()
            .with_context(|| format!("bad value in {line:?}"))?;
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

fn parse_labels(s: &str) -> Result<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let eq = rest.find('=').context("label without '='")?;
        let key = rest[..eq].trim().to_owned();
        let after = rest[eq + 1..]
            .strip_prefix('"')
            .context("unquoted label value")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => bail!("dangling escape"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => bail!("unterminated label value"),
            }
        };
        labels.push((key, value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Ok(labels)
}

/// A plain HTTP/1.1 GET; returns (status code, headers, body).
fn http_get(port: u16, path: &str) -> Result<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((status, head.to_owned(), body.to_owned()))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn value_of(samples: &[Sample], name: &str) -> Option<f64> {
    samples.iter().find(|s| s.name == name).map(|s| s.value)
}

#[test]
fn exposition_matches_traffic() {
    require_root!();
    let pair = NetnsPair::new("metrics").unwrap();
    let port = free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let agent = Blast::start(&[
        "net",
        "--netns",
        pair.ns(Side::A),
        "--iface",
        pair.iface(Side::A),
        "--direction",
        "egress",
        "--proto",
        "udp",
        "--dport",
        &TARGET.to_string(),
        "--loss",
        "30",
        "--duration",
        "60s",
        "--metrics-addr",
        &addr,
    ])
    .unwrap();

    let (sent, got) = udp_run(&pair, Direction::AtoB, AddrKind::V4, TARGET, COUNT, PPS).unwrap();
    assert_eq!(sent.sent, u64::from(COUNT), "sender: {sent:?}");
    let lost = sent.sent - got.distinct;

    // The snapshot behind the exposition is refreshed once a second: scrape
    // until the matched counter has caught up with what was sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (head, text, samples) = loop {
        let (status, head, body) = http_get(port, "/metrics").unwrap();
        assert_eq!(status, 200, "{head}\n{body}");
        let samples = parse_exposition(&body).unwrap();
        let matched = value_of(&samples, "chaos_agent_packets_matched_total");
        if matched == Some(sent.sent as f64) || Instant::now() > deadline {
            break (head, body, samples);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "sent {} received {} lost {lost}\n{text}",
        sent.sent, got.distinct
    );
    // The 30 % rule dropped what it should (the band of 5,000 datagrams).
    assert_share("metrics udp 30% lost", sent.sent, 0.3, lost);

    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    for family in [
        "chaos_agent_packets_matched_total",
        "chaos_agent_packets_injected_total",
        "chaos_agent_guard_passed_total",
        "chaos_agent_active_faults",
    ] {
        assert!(
            samples.iter().any(|s| s.name == family),
            "family {family} missing:\n{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# HELP {family} "))),
            "no HELP for {family}:\n{text}"
        );
    }
    let matched = samples
        .iter()
        .find(|s| s.name == "chaos_agent_packets_matched_total" && s.label("fault") == Some("net"))
        .expect("matched sample for fault=net");
    // Without --name a blast is named after its pid.
    let policy = format!("blast-{}", agent.pid());
    for (k, v) in [
        ("policy", policy.as_str()),
        ("action", "loss"),
        ("interface", pair.iface(Side::A)),
        ("netns", pair.ns(Side::A)),
        ("direction", "egress"),
    ] {
        assert_eq!(matched.label(k), Some(v), "label {k} of {matched:?}");
    }
    // The kernel deadline, in wall time: about 60 s after the start.
    let deadline = samples
        .iter()
        .find(|s| s.name == "chaos_agent_fault_deadline_seconds")
        .expect("deadline sample");
    assert_eq!(deadline.labels, matched.labels, "deadline labels");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        deadline.value > now + 30.0 && deadline.value <= now + 60.0,
        "deadline {} vs now {now}",
        deadline.value
    );
    let build = samples
        .iter()
        .find(|s| s.name == "chaos_agent_build_info")
        .expect("build_info sample");
    assert_eq!(build.value, 1.0);
    assert!(
        build.label("version").is_some() && build.label("commit").is_some(),
        "{build:?}"
    );
    // A blast does not reload.
    assert!(
        !samples
            .iter()
            .any(|s| s.name == "chaos_agent_reloads_total"),
        "{text}"
    );
    assert_eq!(matched.value, sent.sent as f64, "matched vs datagrams sent");
    assert_eq!(
        value_of(&samples, "chaos_agent_packets_injected_total"),
        Some(lost as f64),
        "injected vs datagrams that did not arrive"
    );
    assert_eq!(
        value_of(&samples, "chaos_agent_guard_passed_total"),
        Some(0.0)
    );
    assert_eq!(value_of(&samples, "chaos_agent_active_faults"), Some(1.0));

    let (status, _, _) = http_get(port, "/other").unwrap();
    assert_eq!(status, 404, "GET /other");

    let (status, _) = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}");
    // The server ends with the blast.
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "metrics port still open after the blast"
    );
}

#[test]
fn busy_metrics_addr_exits_2() {
    require_root!();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let (code, _, stderr) = agent_output(&[
        "blast",
        "net",
        "--iface",
        "lo",
        "--loss",
        "30",
        "--duration",
        "5s",
        "--metrics-addr",
        &addr,
    ])
    .unwrap();
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
}
