//! One kernel's run as the report sees it: what its console showed,
//! measured against the tests the kernel must run.

use std::time::Duration;

use super::console::{Console, Outcome};
use crate::required::Requirement;

/// One kernel's run.
pub(crate) struct KernelRun {
    pub kernel: &'static str,
    pub package: String,
    pub console: Console,
    pub timed_out: bool,
    pub wall: Duration,
    pub error: Option<String>,
    /// The tests this kernel must run.
    pub requirement: Requirement,
    /// Modules the kernel needs that are not in the image or did not load,
    /// each with the tests that could not run.
    pub module_problems: Vec<String>,
}

impl KernelRun {
    pub(crate) fn failed(&self) -> u64 {
        self.console.count(Outcome::Failed) + self.console.crashed().len() as u64
    }

    pub(crate) fn ok(&self) -> bool {
        self.error.is_none()
            && !self.timed_out
            && self.console.exit == Some(0)
            && self.failed() == 0
            && self.module_problems.is_empty()
            && self.requirement.missing(&self.console).is_empty()
    }

    /// Tests that reported a pass or a failure.
    pub(crate) fn ran(&self) -> u64 {
        self.console.count(Outcome::Passed) + self.console.count(Outcome::Failed)
    }

    /// One line per failure: failed tests with their first panic message,
    /// crashed executables, or why the run as a whole failed.
    pub(crate) fn failures(&self) -> Vec<String> {
        let c = &self.console;
        let mut lines: Vec<String> = c
            .order
            .iter()
            .filter(|key| c.tests[*key].outcome == Outcome::Failed)
            .map(|key| match c.tests[key].why.as_str() {
                "" => key.clone(),
                why => format!("{key}: {why}"),
            })
            .collect();
        lines.extend(
            c.crashed()
                .into_iter()
                .map(|(name, rc, _)| format!("{name} exited {rc} without a failed test")),
        );
        lines.extend(self.module_problems.iter().cloned());
        if self.error.is_none() && !self.timed_out {
            lines.extend(self.requirement.missing(c));
        }
        if let Some(e) = &self.error {
            lines.push(format!("error: {e}"));
        } else if self.timed_out {
            lines.push("timed out".to_owned());
        } else if c.exit.is_none() {
            lines.push("the guest never reported its exit".to_owned());
        } else if lines.is_empty() {
            lines.push(format!("the guest exited {:?}", c.exit));
        }
        lines
    }

    pub(crate) fn status(&self) -> &'static str {
        if self.error.is_some() {
            "ERROR"
        } else if self.timed_out {
            "TIMEOUT"
        } else if self.console.exit.is_none() {
            "NO EXIT"
        } else if self.ok() {
            "ok"
        } else {
            "FAILED"
        }
    }
}
