//! The one engine that applies faults of every kind, for blasts and the
//! daemon alike. It owns the network side's host (program instances per
//! namespace, qdiscs, journal) and the syscall side's, holds every applied
//! fault under a [`FaultId`], and answers for all of them through the
//! [`Active`] interface: rows, counters, deadline, in-place action change,
//! revert.
//!
//! The lease: every program instance and every syscall fault holds a lease
//! expiry in its maps, and the kernel side acts only while it lies in the
//! future. The blast's and the daemon's loops renew it ([`Engine::renew`])
//! about once a second, so an agent that is stopped (SIGSTOP), hung or
//! killed without its links going (netlink filters) stops acting within a
//! lease, whatever the faults' deadlines.
//!
//! Order: when several network faults match one packet, the one earlier in
//! the engine's order acts. New faults go after those in force; the daemon
//! sets the order after every reload ([`Engine::prioritize`]) to policy
//! file name, then fault order in the file, which is also the order of a
//! blast's one policy.

use std::{collections::BTreeMap, time::Duration};

use tracing::warn;

pub use crate::net::{AttachMode, NetOptions};
use crate::{
    error::{Error, Result},
    fault::{Active, Backend, Counts, Row, monotonic_ns},
    net::{NetFault, NetHost},
    policy::model::{Fault, FaultKind, Policy},
    syscall::{SysFault, SysHost},
};

/// How faults are set up in this process.
#[derive(Clone, Debug)]
pub struct Options {
    pub net: NetOptions,
    /// `--backend`: this syscall backend for every syscall.
    pub syscall_backend: Option<Backend>,
    /// How long the kernel side acts without the agent renewing its lease.
    pub lease: Duration,
}

/// The shortest lease (`--lease`, `spec.lease`).
pub const MIN_LEASE: Duration = Duration::from_secs(1);
/// The lease when none is asked for.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// The lease had run out before it was renewed: the agent was stopped or
/// starved, and its faults were inert for `late`.
#[derive(Clone, Copy, Debug)]
pub struct Lapsed {
    pub late: Duration,
    /// When it ran out (CLOCK_MONOTONIC ns).
    pub at_ns: u64,
}

/// An applied fault, as the engine's callers hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FaultId(u64);

enum Applied {
    Net(NetFault),
    Syscall(SysFault),
}

pub struct Engine {
    net: NetHost,
    sys: SysHost,
    faults: BTreeMap<FaultId, Applied>,
    next_id: u64,
    next_priority: u32,
    lease: Duration,
    /// The lease expiry last written (CLOCK_MONOTONIC ns).
    lease_until_ns: u64,
}

impl Engine {
    pub fn new(opts: Options) -> Engine {
        let mut engine = Engine {
            net: NetHost::new(opts.net),
            sys: SysHost::new(opts.syscall_backend),
            faults: BTreeMap::new(),
            next_id: 1,
            next_priority: 0,
            lease: opts.lease.max(MIN_LEASE),
            lease_until_ns: 0,
        };
        engine.write_lease(monotonic_ns() + engine.lease.as_nanos() as u64);
        engine
    }

    /// The lease length in use.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// A new lease length, from the next renewal on (at least
    /// [`MIN_LEASE`]).
    pub fn set_lease(&mut self, lease: Duration) {
        self.lease = lease.max(MIN_LEASE);
    }

    /// How often the lease is renewed: a quarter of it, at most a second.
    pub fn renew_every(&self) -> Duration {
        (self.lease / 4).min(Duration::from_secs(1))
    }

    /// Renews the lease. `Err` when it had run out before this renewal
    /// while faults were in force (nothing is renewed then: the caller
    /// reverts, knowing its faults were inert for a while).
    pub fn renew(&mut self) -> std::result::Result<(), Lapsed> {
        let now = monotonic_ns();
        // With nothing in force, a late renewal harmed nothing.
        if now > self.lease_until_ns && !self.faults.is_empty() {
            return Err(Lapsed {
                late: Duration::from_nanos(now - self.lease_until_ns),
                at_ns: self.lease_until_ns,
            });
        }
        self.write_lease(now + self.lease.as_nanos() as u64);
        Ok(())
    }

    /// Starts a fresh lease after a lapse, once everything was reverted.
    pub fn restart_lease(&mut self) {
        self.write_lease(monotonic_ns() + self.lease.as_nanos() as u64);
    }

    /// Renews unless the lease lapsed (which `renew` then reports).
    fn renew_quietly(&mut self) {
        if monotonic_ns() <= self.lease_until_ns {
            self.write_lease(monotonic_ns() + self.lease.as_nanos() as u64);
        }
    }

    fn write_lease(&mut self, until_ns: u64) {
        self.lease_until_ns = until_ns;
        self.sys.set_lease(until_ns);
        let mut failed = self.net.set_lease(until_ns).err();
        for f in self.faults.values_mut() {
            if let Applied::Syscall(f) = f
                && let Err(e) = f.set_lease(until_ns)
            {
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            warn!("renewing the lease: {e}");
        }
    }

    /// Refuses what cannot be done for `fault`, nothing touched: what it
    /// names that is not there (an interface, a cgroup, a process: exit 2),
    /// then what this kernel lacks (exit 3 naming the feature).
    pub fn check(&mut self, policy: &Policy, fault: &Fault) -> Result<()> {
        let checked = match &fault.kind {
            FaultKind::Network(n) => self.net.check(n),
            FaultKind::Syscall(s) => self.sys.check(s),
        };
        let at = |m: String| format!("{}: fault {}: {m}", policy.origin, fault.name);
        checked.map_err(|e| match e {
            Error::Invalid(m) => Error::Invalid(at(m)),
            Error::Unsupported(m) => Error::Unsupported(at(m)),
            Error::Runtime(m) => Error::Runtime(at(m)),
        })
    }

    /// Applies `faults` (of `policy`) with the kernel deadline
    /// `deadline_ns`, all or nothing. The ids come in the order of
    /// `faults`.
    pub fn apply(
        &mut self,
        policy: &Policy,
        faults: &[&Fault],
        deadline_ns: u64,
    ) -> Result<Vec<FaultId>> {
        for f in faults {
            self.check(policy, f)?;
        }
        // A long apply must not let the lease of what is in force run out.
        self.renew_quietly();
        let net = self
            .net
            .apply(policy, faults, deadline_ns, self.next_priority)?;
        self.next_priority += net.len() as u32;
        let sys = match self.sys.apply(policy, faults, deadline_ns) {
            Ok(s) => s,
            Err(e) => {
                for f in net {
                    for left in f.revert(&mut self.net) {
                        warn!("{left}");
                    }
                }
                return Err(e);
            }
        };
        let (mut net, mut sys) = (net.into_iter(), sys.into_iter());
        let mut ids = Vec::new();
        for f in faults {
            let applied = match f.kind {
                FaultKind::Network(_) => Applied::Net(net.next().expect("one per network fault")),
                FaultKind::Syscall(_) => {
                    Applied::Syscall(sys.next().expect("one per syscall fault"))
                }
            };
            let id = FaultId(self.next_id);
            self.next_id += 1;
            self.faults.insert(id, applied);
            ids.push(id);
        }
        self.renew_quietly();
        Ok(ids)
    }

    pub fn rows(&self, id: FaultId) -> &[Row] {
        match self.faults.get(&id) {
            Some(Applied::Net(f)) => f.rows(),
            Some(Applied::Syscall(f)) => f.rows(),
            None => &[],
        }
    }

    /// Current counters, one per row.
    pub fn counters(&self, id: FaultId) -> Vec<Counts> {
        match self.faults.get(&id) {
            Some(Applied::Net(f)) => f.counters(&self.net),
            Some(Applied::Syscall(f)) => f.counters(&self.sys),
            None => Vec::new(),
        }
    }

    pub fn deadline_ns(&self, id: FaultId) -> Option<u64> {
        match self.faults.get(&id)? {
            Applied::Net(f) => Some(f.deadline_ns()),
            Applied::Syscall(f) => Some(f.deadline_ns()),
        }
    }

    /// Changes a fault's action in place; `Err` when that takes more than
    /// a map write (the caller replaces the fault then).
    pub fn set_action(&mut self, id: FaultId, to: &Fault) -> Result<()> {
        match self.faults.get_mut(&id) {
            Some(Applied::Net(f)) => f.set_action(&mut self.net, to),
            Some(Applied::Syscall(f)) => f.set_action(&mut self.sys, to),
            None => Err(Error::Runtime("no such fault".into())),
        }
    }

    /// Reverts one fault; returns what could not be removed.
    pub fn revert(&mut self, id: FaultId) -> Vec<String> {
        match self.faults.remove(&id) {
            Some(Applied::Net(f)) => f.revert(&mut self.net),
            Some(Applied::Syscall(f)) => f.revert(&mut self.sys),
            None => Vec::new(),
        }
    }

    /// Reverts every fault, the last applied first.
    pub fn revert_all(&mut self) -> Vec<String> {
        let ids: Vec<FaultId> = self.faults.keys().rev().copied().collect();
        ids.into_iter().flat_map(|id| self.revert(id)).collect()
    }

    /// Sets the order in which network faults act when several match one
    /// packet: `order` first to last (faults not in it keep theirs, after).
    pub fn prioritize(&mut self, order: &[FaultId]) -> Result<()> {
        let mut priority = 0u32;
        for id in order {
            if let Some(Applied::Net(f)) = self.faults.get(id) {
                self.net.set_priority(f, priority)?;
                priority += 1;
            }
        }
        self.next_priority = self.next_priority.max(priority);
        Ok(())
    }

    /// Moves kernel-side log records (aya-log) into the agent's log.
    pub fn flush_logs(&mut self) {
        self.net.flush_logs();
    }

    /// The backends in use by these faults, comma-separated (`tcx`,
    /// `tcx,cgroup`).
    pub fn mode(&self, ids: &[FaultId]) -> String {
        let mut b: Vec<Backend> = ids
            .iter()
            .flat_map(|id| self.rows(*id).iter().map(|r| r.backend))
            .collect();
        b.sort();
        b.dedup();
        b.iter()
            .map(Backend::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Attached classifiers: (netns, interface, direction).
    pub fn net_hooks(&self) -> Vec<(Option<String>, String, u32)> {
        self.net.hooks()
    }
}

/// An engine dropped with faults in force (an early error return) reverts
/// them; the normal paths revert first and say what was left.
impl Drop for Engine {
    fn drop(&mut self) {
        for left in self.revert_all() {
            warn!("{left}");
        }
    }
}
