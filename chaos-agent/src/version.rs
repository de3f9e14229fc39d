//! The agent's version, the commit it was built from and the build date
//! (`build.rs`; "unknown" where git was not there, as in a tarball). Named by
//! the CLI (`--version`, `version`, man pages) and by the metrics
//! (`chaos_agent_build_info`, the OTLP resource).

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("CHAOS_AGENT_COMMIT");
pub const BUILD_DATE: &str = env!("CHAOS_AGENT_BUILD_DATE");
