//! The daemon's control socket: a Unix stream socket in the run directory
//! (`/run/chaos-agent/control.sock`, mode 0600 in a 0700 directory), one
//! JSON request line and one JSON reply line per connection, typed on both
//! ends (`proto.rs`). Only root may talk to it: besides the file mode, the
//! peer's uid is checked with `SO_PEERCRED`.

pub mod client;
pub mod proto;
pub mod server;

use std::path::{Path, PathBuf};

/// The run directory: `CHAOS_AGENT_RUN_DIR`, else `/run/chaos-agent`.
pub fn run_dir() -> PathBuf {
    std::env::var_os("CHAOS_AGENT_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/chaos-agent"))
}

pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("control.sock")
}
