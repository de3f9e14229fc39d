//! The metrics listener: `GET /metrics` answers the Prometheus text of the
//! registry, `GET /healthz` and `GET /readyz` the probes of `health.rs`
//! (200 or 503, with a line saying why); every other path is 404. hyper
//! serves each connection in its own task, so clients that connect and say nothing, or send their request
//! a byte at a time, hold only their own connection: a request head must
//! arrive within `HEAD_TIMEOUT` and fit in `MAX_HEAD`, a whole exchange
//! ends within `CONNECTION_TIMEOUT`, and at most `MAX_CONNECTIONS` are
//! served at once (others are closed at once). Dropping the listener task
//! ends every connection with it, so shutdown never waits for a client.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{CONNECTION, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, TextEncoder};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::debug;

use super::health::{Answer, Health};

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head accepted (request line plus headers).
const MAX_HEAD: usize = 8 * 1024;
/// How long one connection may last, request and answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once.
const MAX_CONNECTIONS: usize = 256;

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .header(CONNECTION, "close")
        .body(Full::new(Bytes::from(body)))
        .expect("static parts are valid")
}

const TEXT: &str = "text/plain; charset=utf-8";

fn probe((ok, why): Answer) -> Response<Full<Bytes>> {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    respond(status, TEXT, why.into_bytes())
}

fn answer(
    method: &Method,
    path: &str,
    registry: &prometheus::Registry,
    health: &Health,
) -> Response<Full<Bytes>> {
    match (method, path) {
        (&Method::GET, "/healthz") => probe(health.live_now()),
        (&Method::GET, "/readyz") => probe(health.ready_now()),
        (&Method::GET, "/metrics") => {
            let encoder = TextEncoder::new();
            let mut body = Vec::new();
            match encoder.encode(&registry.gather(), &mut body) {
                // "text/plain; version=0.0.4"
                Ok(()) => respond(StatusCode::OK, encoder.format_type(), body),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    format!("{e}\n").into_bytes(),
                ),
            }
        }
        (_, "/metrics" | "/healthz" | "/readyz") => {
            respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, b"only GET\n".to_vec())
        }
        _ => respond(StatusCode::NOT_FOUND, TEXT, b"not found\n".to_vec()),
    }
}

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: prometheus::Registry, health: Arc<Health>) {
    let registry = Arc::new(registry);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!("metrics listener: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%peer, "metrics listener: too many connections; closing this one");
            continue;
        };
        let registry = Arc::clone(&registry);
        let health = Arc::clone(&health);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let r = answer(req.method(), req.uri().path(), &registry, &health);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Err(e)) => debug!(%peer, "metrics request: {e}"),
                Err(_) => debug!(%peer, "metrics request: connection timed out"),
                Ok(Ok(())) => {}
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    /// Status and body of what `answer` says to `method path`.
    fn ask(method: Method, path: &str, health: &Health) -> (StatusCode, String) {
        let registry = prometheus::Registry::new();
        let r = answer(&method, path, &registry, health);
        let status = r.status();
        let body = body_text(r.into_body());
        (status, body)
    }

    fn body_text(body: Full<Bytes>) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt.block_on(body.collect()).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn probes_answer_200_or_503_with_the_reason() {
        let h = Health::default();
        h.starting();
        assert_eq!(
            ask(Method::GET, "/healthz", &h),
            (StatusCode::OK, "ok\n".into())
        );
        let (status, body) = ask(Method::GET, "/readyz", &h);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("starting"), "{body}");
        h.reloaded(1);
        let (status, body) = ask(Method::GET, "/readyz", &h);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("1 policy file(s) refused"), "{body}");
        h.reloaded(0);
        assert_eq!(
            ask(Method::GET, "/readyz", &h),
            (StatusCode::OK, "ok\n".into())
        );
    }

    #[test]
    fn other_methods_and_paths_are_refused() {
        let h = Health::default();
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(
                ask(Method::POST, path, &h).0,
                StatusCode::METHOD_NOT_ALLOWED,
                "{path}"
            );
        }
        assert_eq!(ask(Method::GET, "/", &h).0, StatusCode::NOT_FOUND);
        assert_eq!(ask(Method::GET, "/healthz/x", &h).0, StatusCode::NOT_FOUND);
        assert_eq!(ask(Method::GET, "/metrics", &h).0, StatusCode::OK);
    }
}
