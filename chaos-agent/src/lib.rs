//! chaos-agent: an eBPF fault injector. See ARCHITECTURE.md for the data
//! path from policy file to kernel decision.

pub mod blast;
pub mod cgroup;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod fault;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod probe;
pub mod steady;
pub mod syscall;
pub mod version;
