//! The metrics listener: `GET /metrics` answers the Prometheus text of the
//! registry; every other path is 404. hyper serves each connection in its
//! own task, so clients that connect and say nothing, or send their request
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

fn answer(req: &Request<Incoming>, registry: &prometheus::Registry) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    match (req.method(), req.uri().path()) {
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
        (_, "/metrics") => respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, b"only GET\n".to_vec()),
        _ => respond(StatusCode::NOT_FOUND, TEXT, b"not found\n".to_vec()),
    }
}

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: prometheus::Registry) {
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
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let r = answer(&req, &registry);
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
