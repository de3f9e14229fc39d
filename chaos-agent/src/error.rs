//! The agent's error type and its mapping to the exit codes of the
//! contract (section 2).

use std::process::ExitCode;

/// Every failure the CLI can report. The variant decides the exit code; the
/// message says what happened and what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags or a bad policy file (exit 2). Nothing was applied.
    #[error("{0}")]
    Invalid(String),
    /// The host lacks a kernel feature (exit 3). Nothing was applied.
    #[error("not supported on this host: {0}")]
    Unsupported(String),
    /// Something failed while running (exit 1).
    #[error("{0}")]
    Runtime(String),
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Runtime(_) => ExitCode::from(1),
            Error::Invalid(_) => ExitCode::from(2),
            Error::Unsupported(_) => ExitCode::from(3),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error with all its causes, `: `-separated.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A runtime error about `what` (a map or program name).
pub(crate) fn map_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Runtime(format!("{what}: {e}"))
}
