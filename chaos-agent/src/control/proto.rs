//! The control socket's messages, shared by the daemon (server) and the
//! `status` / `stop` commands (client): one JSON request line, one JSON
//! reply line per connection.

use serde::{Deserialize, Serialize};

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Stop {
        #[serde(default)]
        policies: Vec<String>,
        #[serde(default)]
        all: bool,
    },
}

/// What the daemon answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    Status(Status),
    Stopped(Stopped),
    Error(String),
}

/// `status`: the daemon and every policy it knows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub policies_dir: String,
    pub metrics_addr: String,
    pub policies: Vec<PolicyStatus>,
    pub file_errors: Vec<FileError>,
}

/// Where a policy is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyState {
    /// Waiting for `startAfter`.
    Pending,
    Active,
    /// Its window is open, but none of its faults is in force (each says
    /// why).
    Failed,
    Expired,
    /// Stopped over the control socket (stays so until its file changes).
    Stopped,
    /// Reverted by its steady-state guard.
    Aborted,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub name: String,
    pub file: String,
    pub state: PolicyState,
    /// Why it was aborted.
    pub reason: Option<String>,
    pub time_left_ms: Option<u64>,
    pub starts_in_ms: Option<u64>,
    /// `spec.mode: shadow`: its faults count what they would do.
    #[serde(default)]
    pub shadow: bool,
    pub faults: Vec<FaultStatus>,
}

/// Where a fault is: in force, or why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultState {
    /// In the kernel now.
    Active,
    /// Not in force because its policy is pending, expired, stopped or
    /// aborted.
    Pending,
    Expired,
    Stopped,
    Aborted,
    /// This kernel cannot do it (the problem says what is missing).
    Unsupported,
    /// Applying it failed; retried at the next reload.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultStatus {
    pub fault: String,
    /// loss, delay, corrupt, duplicate, bandwidth, errno.
    pub action: String,
    /// Network faults: where.
    pub interface: Option<String>,
    pub netns: Option<String>,
    pub direction: Option<String>,
    /// Syscall faults: which calls, with which errno, of whom.
    pub syscall: Option<String>,
    pub errno: Option<i32>,
    pub target: Option<String>,
    /// How it reaches the kernel (tcx, netlink, kprobe, lsm, cgroup;
    /// comma-separated when its syscalls use several), once applied.
    pub backend: Option<String>,
    pub state: FaultState,
    pub problem: Option<String>,
    pub matched: u64,
    /// In shadow mode: what would have been injected.
    pub injected: u64,
    pub guard_passed: u64,
    /// Counts what it would do, does nothing.
    #[serde(default)]
    pub shadow: bool,
    /// A flapping fault in force: "on" or "off" now.
    #[serde(default)]
    pub phase: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileError {
    pub file: String,
    pub error: String,
    pub kept_last_good: bool,
}

/// `stop`: what was stopped, what the daemon does not know, what could
/// not be reverted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stopped {
    pub stopped: Vec<String>,
    pub unknown: Vec<String>,
    pub left: Vec<String>,
}
