//! The control socket's server side, on the daemon's runtime. Every
//! connection is its own task with bounded time and size: a client that
//! connects and says nothing holds only its own connection, never the
//! daemon or other clients. A request goes to the daemon's loop as an
//! [`Asked`]; the reply comes back on a oneshot channel.
//!
//! `stop --all` (the kill switch) also raises a flag the daemon checks
//! between the faults it applies, so it cuts a reload in progress short
//! instead of queueing behind it.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::timeout,
};
use tracing::{debug, warn};

use super::{
    proto::{Reply, Request},
    socket_path,
};
use crate::error::{Error, Result};

/// How long a client may take to send its request, and to take the reply.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a request may wait for the daemon's loop.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request line.
const MAX_REQUEST: u64 = 64 * 1024;

/// A request for the daemon's loop, and where its reply goes.
pub struct Asked {
    pub request: Request,
    pub reply: oneshot::Sender<Reply>,
}

/// The listening socket; dropping it stops accepting and removes the file.
pub struct Server {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Server {
    /// Binds the socket (replacing a stale one: the daemon's pid lock
    /// proves no other daemon owns it) and serves it on the current
    /// runtime.
    pub fn bind(
        run_dir: &Path,
        asks: mpsc::Sender<Asked>,
        kill: Arc<AtomicBool>,
    ) -> Result<Server> {
        let path = socket_path(run_dir);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| Error::Runtime(format!("cannot bind {}: {e}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::Runtime(format!("chmod {}: {e}", path.display())))?;
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let asks = asks.clone();
                        let kill = Arc::clone(&kill);
                        tokio::spawn(async move {
                            if let Err(e) = handle(stream, asks, kill).await {
                                debug!("control request: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        warn!("control socket: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Server { path, task })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

async fn send(stream: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).expect("replies serialise");
    line.push(b'\n');
    timeout(IO_TIMEOUT, stream.write_all(&line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "reply not taken"))?
}

async fn handle(
    mut stream: UnixStream,
    asks: mpsc::Sender<Asked>,
    kill: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    if uid != 0 {
        warn!(
            uid,
            "control socket: connection from a non-root user refused"
        );
        return send(
            &mut stream,
            &Reply::Error("permission denied: the control socket is for root only".into()),
        )
        .await;
    }
    let mut line = String::new();
    let read = {
        let mut reader = BufReader::new((&mut stream).take(MAX_REQUEST));
        timeout(IO_TIMEOUT, reader.read_line(&mut line)).await
    };
    match read {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return send(
                &mut stream,
                &Reply::Error(format!("no request within {IO_TIMEOUT:?}")),
            )
            .await;
        }
    }
    let request: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => return send(&mut stream, &Reply::Error(format!("bad request: {e}"))).await,
    };
    if matches!(request, Request::Stop { all: true, .. }) {
        kill.store(true, Ordering::SeqCst);
    }
    let (tx, rx) = oneshot::channel();
    let asked = Asked { request, reply: tx };
    if asks.send(asked).await.is_err() {
        return send(&mut stream, &Reply::Error("daemon is shutting down".into())).await;
    }
    let reply = match timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(r)) => r,
        _ => Reply::Error("daemon did not answer in time".into()),
    };
    send(&mut stream, &reply).await
}
