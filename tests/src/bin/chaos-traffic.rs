//! `chaos-traffic`: bounded test traffic for the chaos-agent tests and demo.
//!
//! ```text
//! chaos-traffic udp-send --to ADDR:PORT --count N --pps R [--from ADDR:PORT] [--size BYTES] [--first-seq N] [--max-ms MS]
//! chaos-traffic udp-recv --bind ADDR:PORT --idle-ms MS --max-ms MS [--expect-from-port P] [--records]
//! chaos-traffic tcp-send --to ADDR:PORT [--bytes N] [--max-ms MS] [--connect-timeout-ms MS] [--from ADDR:PORT]
//! chaos-traffic tcp-recv --bind ADDR:PORT --max-ms MS
//! ```
//!
//! Each prints one line of JSON (the library's `SendStats`, `UdpStats`,
//! `TcpSendStats` or `TcpRecvStats`) on stdout. The receivers print
//! `ready ADDR:PORT` on stderr once bound. Exit status: 0 when the command
//! ran (whatever it counted), 2 on bad arguments, 1 on other errors.
//! Traffic goes only to the address given, bounded in count and time.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use chaos_tests::{BlastOptions, TcpOptions, tcp_receiver, tcp_send, udp_blast_with, udp_sink};

const USAGE: &str = "usage:
  chaos-traffic udp-send --to ADDR:PORT --count N --pps R [--from ADDR:PORT] [--size BYTES] [--first-seq N] [--max-ms MS]
  chaos-traffic udp-recv --bind ADDR:PORT --idle-ms MS --max-ms MS [--expect-from-port P] [--records]
  chaos-traffic tcp-send --to ADDR:PORT [--bytes N] [--max-ms MS] [--connect-timeout-ms MS] [--from ADDR:PORT]
  chaos-traffic tcp-recv --bind ADDR:PORT --max-ms MS
(pps 0 = unpaced; count <= 10000000; max-ms <= 600000)";

/// Longest run any subcommand accepts.
const MAX_MS: u64 = 600_000;

struct Args {
    values: HashMap<String, String>,
    flags: Vec<String>,
}

/// Parses `--key value` pairs; `bool_flags` take no value.
fn parse(args: &[String], bool_flags: &[&str], allowed: &[&str]) -> Result<Args> {
    let mut values = HashMap::new();
    let mut flags = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(key) = a.strip_prefix("--") else {
            bail!("unexpected argument {a:?}");
        };
        let (key, inline) = match key.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (key, None),
        };
        if bool_flags.contains(&key) {
            flags.push(key.to_string());
            continue;
        }
        if !allowed.contains(&key) {
            bail!("unknown option --{key}");
        }
        let v = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| anyhow!("--{key} needs a value"))?,
        };
        if values.insert(key.to_string(), v).is_some() {
            bail!("--{key} given twice");
        }
    }
    Ok(Args { values, flags })
}

impl Args {
    fn opt<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.values.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|e| anyhow!("--{key} {v:?}: {e}")),
        }
    }

    fn req<T: std::str::FromStr>(&self, key: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        self.opt(key)?.ok_or_else(|| anyhow!("--{key} is required"))
    }

    fn flag(&self, key: &str) -> bool {
        self.flags.iter().any(|f| f == key)
    }
}

fn ms(v: u64, key: &str) -> Result<Duration> {
    if v > MAX_MS {
        bail!("--{key} {v} exceeds {MAX_MS}");
    }
    Ok(Duration::from_millis(v))
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let line = serde_json::to_string(v)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn ready(addr: SocketAddr) {
    eprintln!("ready {addr}");
}

/// Bad-argument errors map to exit status 2.
struct Usage(anyhow::Error);

fn cmd_udp_send(rest: &[String]) -> Result<Result<()>, Usage> {
    let a = parse(
        rest,
        &[],
        &["to", "count", "pps", "from", "size", "first-seq", "max-ms"],
    )
    .map_err(Usage)?;
    let build = || -> Result<BlastOptions> {
        let to: SocketAddr = a.req("to")?;
        let count: u32 = a.req("count")?;
        if count > 10_000_000 {
            bail!("--count {count} exceeds 10000000");
        }
        let pps: u32 = a.req("pps")?;
        let mut o = BlastOptions::new(to, count, pps);
        o.from = a.opt("from")?;
        if let Some(s) = a.opt::<usize>("size")? {
            o.payload_len = s;
        }
        if let Some(s) = a.opt::<u64>("first-seq")? {
            o.first_seq = s;
        }
        if let Some(m) = a.opt::<u64>("max-ms")? {
            o.max_duration = Some(ms(m, "max-ms")?);
        }
        Ok(o)
    };
    let o = build().map_err(Usage)?;
    Ok(udp_blast_with(&o).and_then(|s| print_json(&s)))
}

fn cmd_udp_recv(rest: &[String]) -> Result<Result<()>, Usage> {
    let a = parse(
        rest,
        &["records"],
        &["bind", "idle-ms", "max-ms", "expect-from-port"],
    )
    .map_err(Usage)?;
    let build = || -> Result<(SocketAddr, Duration, Duration, Option<u16>)> {
        Ok((
            a.req("bind")?,
            ms(a.req("idle-ms")?, "idle-ms")?,
            ms(a.req("max-ms")?, "max-ms")?,
            a.opt("expect-from-port")?,
        ))
    };
    let (bind, idle, max, port) = build().map_err(Usage)?;
    let keep_records = a.flag("records");
    Ok((|| -> Result<()> {
        let sink = udp_sink(bind, port, idle, max)?;
        ready(sink.local_addr());
        let mut stats = sink.wait()?;
        if !keep_records {
            stats.records.clear();
            stats.corrupted_rx_ns.clear();
        }
        print_json(&stats)
    })())
}

fn cmd_tcp_send(rest: &[String]) -> Result<Result<()>, Usage> {
    let a = parse(
        rest,
        &[],
        &["to", "bytes", "max-ms", "connect-timeout-ms", "from"],
    )
    .map_err(Usage)?;
    let build = || -> Result<(SocketAddr, TcpOptions)> {
        let to = a.req("to")?;
        let mut o = TcpOptions::default();
        if let Some(b) = a.opt("bytes")? {
            o.bytes = b;
        }
        if let Some(m) = a.opt("max-ms")? {
            o.max_time = ms(m, "max-ms")?;
        }
        if let Some(m) = a.opt("connect-timeout-ms")? {
            o.connect_timeout = ms(m, "connect-timeout-ms")?;
        }
        o.from = a.opt("from")?;
        Ok((to, o))
    };
    let (to, o) = build().map_err(Usage)?;
    Ok(print_json(&tcp_send(to, &o)))
}

fn cmd_tcp_recv(rest: &[String]) -> Result<Result<()>, Usage> {
    let a = parse(rest, &[], &["bind", "max-ms"]).map_err(Usage)?;
    let build = || -> Result<(SocketAddr, Duration)> {
        Ok((a.req("bind")?, ms(a.req("max-ms")?, "max-ms")?))
    };
    let (bind, max) = build().map_err(Usage)?;
    Ok((|| -> Result<()> {
        let r = tcp_receiver(bind, max)?;
        ready(r.local_addr());
        let st = r.wait().context("TCP receiver")?;
        print_json(&st)
    })())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let r = match cmd.as_str() {
        "udp-send" => cmd_udp_send(rest),
        "udp-recv" => cmd_udp_recv(rest),
        "tcp-send" => cmd_tcp_send(rest),
        "tcp-recv" => cmd_tcp_recv(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return;
        }
        other => Err(Usage(anyhow!("unknown subcommand {other:?}"))),
    };
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("chaos-traffic: {e:#}");
            std::process::exit(1);
        }
        Err(Usage(e)) => {
            eprintln!("chaos-traffic: {e:#}\n{USAGE}");
            std::process::exit(2);
        }
    }
}
