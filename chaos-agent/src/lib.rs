//! chaos-agent: an eBPF fault injector. See ARCHITECTURE.md for the data
//! path from policy file to kernel decision.

pub mod apply;
pub mod blast;
pub mod cgroup;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod error;
pub mod leftovers;
pub mod metrics;
pub mod netns;
pub mod policy;
pub mod probe;
pub mod qdisc;
pub mod rules;
pub mod shaping;
pub mod steady;
pub mod syscall;
