//! OTLP push: the same instruments as `/metrics`, sent as OTLP/HTTP with
//! protobuf bodies (`ExportMetricsServiceRequest`) to a collector, every
//! `interval` and once more at shutdown, so a short blast's last counters
//! arrive too.
//!
//! The SDK's `PeriodicReader` exports from a thread of its own with a
//! blocking executor, where the hyper client (which needs a tokio runtime)
//! cannot run, and a blocking client (reqwest's, with a runtime in yet
//! another thread) would bring a second HTTP stack. Instead a
//! `ManualReader` is collected here, on the blast's or daemon's own
//! current-thread runtime, by one task that exports, waits `interval` and
//! exports again: at most one request is in flight, each is bounded, and
//! nothing the collector does (refuse, hang, answer 500) can hold up the
//! loop that renews leases and reverts faults. A failure is logged as a
//! warning once, then at debug level until an export works again.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use hyper::Uri;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{MetricExporter, Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{
        InstrumentKind, ManualReader, Pipeline, Temporality, data::ResourceMetrics,
        exporter::PushMetricExporter, reader::MetricReader,
    },
};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::{
    error::{Error, Result},
    policy::values::quoted,
};

/// The standard variables, as the OpenTelemetry SDKs read them.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const METRICS_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
pub const INTERVAL_VAR: &str = "OTEL_METRIC_EXPORT_INTERVAL";
/// The transport, metrics-specific first: only `http/protobuf` is built in.
pub const PROTOCOL_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];
/// How long one export may take, in milliseconds, metrics-specific first.
pub const TIMEOUT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
];
/// The one protocol this build speaks.
const PROTOCOL: &str = "http/protobuf";
/// What a base endpoint (`--otlp-endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT`)
/// gets appended for metrics.
pub const METRICS_PATH: &str = "/v1/metrics";

/// Time between two exports unless `OTEL_METRIC_EXPORT_INTERVAL` says.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// The counters behind the instruments are read once a second; exporting
/// more often would send the same values again.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long one periodic export may take, retries included, unless
/// `OTEL_EXPORTER_OTLP_TIMEOUT` says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the export at shutdown may hold up the exit (faults are
/// reverted by then).
pub const FINAL_EXPORT_WAIT: Duration = Duration::from_secs(2);

const URL_EXPECTED: &str = "an http:// URL such as http://127.0.0.1:4318";

/// Where and how often to push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where requests go: `<endpoint>/v1/metrics`, or
    /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` as given.
    pub url: String,
    pub interval: Duration,
    /// How long one export may take.
    pub timeout: Duration,
}

impl Config {
    /// The collector's port (80 when the URL names none): it joins the
    /// built-in guard, so a fault does not cut the agent's own pushes.
    pub fn port(&self) -> u16 {
        self.url
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.port_u16())
            .unwrap_or(80)
    }

    /// The push asked for by `--otlp-endpoint` (`flag`) or, without it, by
    /// the environment; `None` when neither names an endpoint. A bad URL
    /// or interval is a usage error (exit 2) naming the flag or variable.
    pub fn resolve(flag: Option<&str>) -> Result<Option<Config>> {
        Config::from_sources(flag, |name| std::env::var(name).ok())
    }

    fn from_sources(
        flag: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Config>> {
        // An empty variable counts as unset, as the specification says.
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let url = if let Some(base) = flag {
            with_metrics_path("--otlp-endpoint", base)?
        } else if let Some(url) = env(METRICS_ENDPOINT_VAR) {
            checked(METRICS_ENDPOINT_VAR, &url, true)?;
            url
        } else if let Some(base) = env(ENDPOINT_VAR) {
            with_metrics_path(ENDPOINT_VAR, &base)?
        } else {
            return Ok(None);
        };
        // The first of a metrics-specific variable and its general one
        // that is set.
        let first = |names: [&'static str; 2]| {
            names
                .into_iter()
                .find_map(|name| env(name).map(|value| (name, value)))
        };
        if let Some((name, protocol)) = first(PROTOCOL_VARS)
            && protocol.trim() != PROTOCOL
        {
            return Err(Error::Invalid(format!(
                "{name}: only {PROTOCOL} is supported by this build (OTLP/HTTP with protobuf bodies), found {}",
                quoted(&protocol)
            )));
        }
        let millis = |name: &str, value: &str, what: &str| {
            value
                .trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| {
                    Error::Invalid(format!("{name}: expected {what}, found {}", quoted(value)))
                })
        };
        let interval = match env(INTERVAL_VAR) {
            None => DEFAULT_INTERVAL,
            Some(ms) => millis(
                INTERVAL_VAR,
                &ms,
                "the milliseconds between two exports, such as 10000",
            )?
            .max(MIN_INTERVAL),
        };
        let timeout = match first(TIMEOUT_VARS) {
            None => DEFAULT_TIMEOUT,
            Some((name, ms)) => {
                let timeout = millis(
                    name,
                    &ms,
                    "the milliseconds one export may take, such as 5000",
                )?;
                if timeout.is_zero() {
                    return Err(Error::Invalid(format!(
                        "{name}: an export needs more than 0 milliseconds"
                    )));
                }
                timeout
            }
        };
        Ok(Some(Config {
            url,
            interval,
            timeout,
        }))
    }
}

/// Refuses what is not a plain http URL with a host; `query` allows a
/// query string (a URL used as given).
fn checked(what: &str, url: &str, query: bool) -> Result<Uri> {
    let bad = || {
        Error::Invalid(format!(
            "{what}: expected {URL_EXPECTED}, found {}",
            quoted(url)
        ))
    };
    let uri: Uri = url.trim().parse().map_err(|_| bad())?;
    if uri.scheme_str() == Some("https") {
        return Err(Error::Invalid(format!(
            "{what}: https is not supported (this build carries no TLS stack); expected {URL_EXPECTED} (a collector on this host or a sidecar), found {}",
            quoted(url)
        )));
    }
    let host = uri.host().unwrap_or_default();
    if uri.scheme_str() != Some("http") || host.is_empty() || (!query && uri.query().is_some()) {
        return Err(bad());
    }
    Ok(uri)
}

/// `<base>/v1/metrics`: a base endpoint as `OTEL_EXPORTER_OTLP_ENDPOINT`
/// means it, with or without a path of its own.
fn with_metrics_path(what: &str, base: &str) -> Result<String> {
    let uri = checked(what, base, false)?;
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let path = uri.path().trim_end_matches('/');
    Ok(format!("http://{authority}{path}{METRICS_PATH}"))
}

/// What every export carries about its sender.
pub fn resource(version: &str) -> Resource {
    // `builder` adds OTEL_RESOURCE_ATTRIBUTES and the SDK's own attributes;
    // the three below win over them.
    //
    // `service.name` is "chaos-agent" unless OTEL_SERVICE_NAME or a
    // `service.name` in OTEL_RESOURCE_ATTRIBUTES names the service (the
    // builder has read those).
    let named =
        |var: &str, found: &dyn Fn(&str) -> bool| std::env::var(var).is_ok_and(|v| found(v.trim()));
    let builder = Resource::builder();
    let builder = if named("OTEL_SERVICE_NAME", &|v| !v.is_empty())
        || named("OTEL_RESOURCE_ATTRIBUTES", &|v| {
            v.split(',').any(|kv| {
                kv.split('=')
                    .next()
                    .is_some_and(|k| k.trim() == "service.name")
            })
        }) {
        builder
    } else {
        builder.with_service_name("chaos-agent")
    };
    builder
        .with_attribute(KeyValue::new("service.version", version.to_owned()))
        .with_attribute(KeyValue::new("host.name", hostname()))
        .build()
}

/// The host name (`uname -n`); empty if the kernel does not say.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; the kernel writes a
    // NUL-terminated name into it (truncated if longer).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return String::new();
    }
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// The manual reader, shared by the meter provider (which registers its
/// pipeline) and the export task (which collects it).
#[derive(Clone, Debug)]
pub struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// The exporter and what it reads.
struct Sender {
    url: String,
    interval: Duration,
    timeout: Duration,
    reader: SharedReader,
    exporter: MetricExporter,
    /// The last export failed (and was logged as a warning).
    failing: std::sync::atomic::AtomicBool,
}

impl Sender {
    /// Collects and exports once, within `within`.
    async fn export(&self, within: Duration) -> std::result::Result<(), String> {
        let mut rm = ResourceMetrics::default();
        self.reader.collect(&mut rm).map_err(|e| e.to_string())?;
        match tokio::time::timeout(within, self.exporter.export(&rm)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(within)
            )),
        }
    }

    /// One periodic export, logged: a warning when exports start failing,
    /// a note when they work again.
    async fn export_logged(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        match self.export(self.timeout).await {
            Ok(()) => {
                if self.failing.swap(false, Relaxed) {
                    info!(url = %self.url, "OTLP export works again");
                }
                debug!(url = %self.url, "OTLP export done");
            }
            Err(e) if !self.failing.swap(true, Relaxed) => warn!(
                url = %self.url,
                "OTLP export failed: {e}; carrying on, next try in {}",
                humantime::format_duration(self.interval)
            ),
            Err(e) => debug!(url = %self.url, "OTLP export failed again: {e}"),
        }
    }
}

/// The push of one process: its reader (to hand to the meter provider)
/// and, once started, its export task. Dropping it stops the task.
pub struct Push {
    sender: Arc<Sender>,
    task: Option<JoinHandle<()>>,
}

impl Push {
    /// Builds the exporter (nothing is sent yet). The crate reads
    /// `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_EXPORTER_OTLP_METRICS_HEADERS`
    /// itself (the second wins).
    pub fn new(config: &Config) -> Result<Push> {
        let exporter = MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.url.clone())
            .with_timeout(config.timeout)
            .with_temporality(Temporality::Cumulative)
            .build()
            .map_err(|e| Error::Invalid(format!("OTLP exporter for {}: {e}", config.url)))?;
        let reader = SharedReader(Arc::new(
            ManualReader::builder()
                .with_temporality(exporter.temporality())
                .build(),
        ));
        Ok(Push {
            sender: Arc::new(Sender {
                url: config.url.clone(),
                interval: config.interval,
                timeout: config.timeout,
                reader,
                exporter,
                failing: Default::default(),
            }),
            task: None,
        })
    }

    /// The reader to register with the meter provider.
    pub fn reader(&self) -> SharedReader {
        self.sender.reader.clone()
    }

    pub fn url(&self) -> &str {
        &self.sender.url
    }

    /// Starts exporting every interval on the current runtime.
    pub fn start(&mut self) {
        let sender = Arc::clone(&self.sender);
        self.task = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(sender.interval).await;
                sender.export_logged().await;
            }
        }));
        debug!(url = %self.sender.url, interval = ?self.sender.interval, "OTLP push started");
    }

    /// Stops the periodic exports and exports once more, waiting at most
    /// [`FINAL_EXPORT_WAIT`]; a failure is a warning.
    pub async fn finish(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        match self.sender.export(FINAL_EXPORT_WAIT).await {
            Ok(()) => debug!(url = %self.sender.url, "final OTLP export done"),
            Err(e) => warn!(url = %self.sender.url, "final OTLP export failed: {e}"),
        }
    }
}

impl Drop for Push {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(flag: Option<&str>, vars: &[(&str, &str)]) -> Result<Option<Config>> {
        Config::from_sources(flag, |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    fn url(flag: Option<&str>, vars: &[(&str, &str)]) -> String {
        resolve(flag, vars).unwrap().expect("an endpoint").url
    }

    #[test]
    fn the_collector_port_is_guarded_80_by_default() {
        let port = |flag| {
            resolve(Some(flag), &[])
                .unwrap()
                .expect("an endpoint")
                .port()
        };
        assert_eq!(port("http://127.0.0.1:4318"), 4318);
        assert_eq!(port("http://collector.local/otlp"), 80);
        assert_eq!(port("http://[::1]:14318"), 14318);
    }

    #[test]
    fn flag_wins_and_bases_get_the_metrics_path() {
        assert_eq!(resolve(None, &[]).unwrap(), None);
        assert_eq!(resolve(None, &[(ENDPOINT_VAR, " ")]).unwrap(), None);
        assert_eq!(
            url(Some("http://127.0.0.1:4318"), &[]),
            "http://127.0.0.1:4318/v1/metrics"
        );
        assert_eq!(
            url(Some("http://collector:4318/otlp/"), &[]),
            "http://collector:4318/otlp/v1/metrics"
        );
        assert_eq!(
            url(None, &[(ENDPOINT_VAR, "http://[::1]:4318")]),
            "http://[::1]:4318/v1/metrics"
        );
        // The metrics endpoint is used as given, and wins over the base.
        let both = [
            (ENDPOINT_VAR, "http://a:4318"),
            (METRICS_ENDPOINT_VAR, "http://b:9000/push?x=1"),
        ];
        assert_eq!(url(None, &both), "http://b:9000/push?x=1");
        assert_eq!(url(Some("http://c"), &both), "http://c/v1/metrics");
    }

    #[test]
    fn bad_urls_name_their_source() {
        let refused = |flag: Option<&str>, vars: &[(&str, &str)]| match resolve(flag, vars) {
            Err(e @ Error::Invalid(_)) => e.to_string(),
            other => panic!("{flag:?} {vars:?}: {other:?}"),
        };
        assert_eq!(
            refused(Some("collector:4318"), &[]),
            r#"--otlp-endpoint: expected an http:// URL such as http://127.0.0.1:4318, found "collector:4318""#
        );
        assert!(refused(Some("ftp://x/"), &[]).starts_with("--otlp-endpoint: expected"));
        assert!(refused(Some("http://x/?a=b"), &[]).starts_with("--otlp-endpoint: expected"));
        assert!(refused(Some("http:///v1"), &[]).starts_with("--otlp-endpoint: expected"));
        assert!(
            refused(Some("https://x:4318"), &[])
                .starts_with("--otlp-endpoint: https is not supported")
        );
        assert!(
            refused(None, &[(ENDPOINT_VAR, "not a url")])
                .starts_with("OTEL_EXPORTER_OTLP_ENDPOINT: expected")
        );
        assert!(
            refused(None, &[(METRICS_ENDPOINT_VAR, "x")])
                .starts_with("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: expected")
        );
        assert_eq!(
            refused(Some("http://x"), &[(INTERVAL_VAR, "10s")]),
            r#"OTEL_METRIC_EXPORT_INTERVAL: expected the milliseconds between two exports, such as 10000, found "10s""#
        );
    }

    #[test]
    fn interval_from_the_environment() {
        let with = |ms: &str| {
            resolve(Some("http://x"), &[(INTERVAL_VAR, ms)])
                .unwrap()
                .unwrap()
                .interval
        };
        assert_eq!(
            resolve(Some("http://x"), &[]).unwrap().unwrap().interval,
            DEFAULT_INTERVAL
        );
        assert_eq!(with("2500"), Duration::from_millis(2500));
        assert_eq!(with("10"), MIN_INTERVAL);
    }

    #[test]
    fn protocol_and_timeout_from_the_environment() {
        let http = "http://x";
        let timeout = |vars: &[(&str, &str)]| resolve(Some(http), vars).unwrap().unwrap().timeout;
        assert_eq!(timeout(&[]), DEFAULT_TIMEOUT);
        assert_eq!(
            timeout(&[(TIMEOUT_VARS[1], "800")]),
            Duration::from_millis(800)
        );
        // The metrics-specific variable wins.
        assert_eq!(
            timeout(&[(TIMEOUT_VARS[1], "800"), (TIMEOUT_VARS[0], "300")]),
            Duration::from_millis(300)
        );
        let refused = |vars: &[(&str, &str)]| resolve(Some(http), vars).unwrap_err().to_string();
        assert_eq!(
            refused(&[(TIMEOUT_VARS[1], "5s")]),
            r#"OTEL_EXPORTER_OTLP_TIMEOUT: expected the milliseconds one export may take, such as 5000, found "5s""#
        );
        assert!(
            refused(&[(TIMEOUT_VARS[0], "0")]).starts_with("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT:")
        );
        assert!(resolve(Some(http), &[(PROTOCOL_VARS[1], "http/protobuf")]).is_ok());
        assert_eq!(
            refused(&[(PROTOCOL_VARS[1], "grpc")]),
            r#"OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf is supported by this build (OTLP/HTTP with protobuf bodies), found "grpc""#
        );
        assert!(
            refused(&[
                (PROTOCOL_VARS[1], "http/protobuf"),
                (PROTOCOL_VARS[0], "http/json")
            ])
            .starts_with("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: only")
        );
    }

    #[test]
    fn resource_names_the_agent_and_host() {
        let r = resource("9.9.9");
        let get = |k: &'static str| {
            r.get(&opentelemetry::Key::from_static_str(k))
                .map(|v| v.to_string())
        };
        assert_eq!(get("service.name").as_deref(), Some("chaos-agent"));
        assert_eq!(get("service.version").as_deref(), Some("9.9.9"));
        assert_eq!(get("host.name"), Some(hostname()));
        assert!(!hostname().is_empty());
    }
}
