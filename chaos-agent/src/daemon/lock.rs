//! One daemon per host: an exclusive `flock` on `RUN_DIR/daemon.pid`, which
//! holds the owner's pid. The kernel drops the lock when the process dies,
//! so a crashed daemon never blocks the next one.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

pub struct PidLock {
    _file: File,
    path: PathBuf,
}

impl PidLock {
    pub fn acquire(run_dir: &Path) -> Result<PidLock> {
        let path = run_dir.join("daemon.pid");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(|e| Error::Runtime(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            let who = if pid.is_empty() {
                "another process".to_owned()
            } else {
                format!("process {pid}")
            };
            return Err(Error::Runtime(format!(
                "another chaos-agent daemon is running: {who} holds {}; stop it first (systemctl stop chaos-agent, or kill {pid})",
                path.display()
            )));
        }
        let write = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())?;
            file.flush()
        };
        write(&mut file)
            .map_err(|e| Error::Runtime(format!("cannot write {}: {e}", path.display())))?;
        Ok(PidLock { _file: file, path })
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        // Removed while still locked, so no other daemon can have it yet.
        let _ = std::fs::remove_file(&self.path);
    }
}
