//! The serial console of a guest, parsed as it arrives: libtest's results,
//! skips, panic messages, and the lines the guest's test script prints.

use std::collections::BTreeMap;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Outcome {
    Passed,
    Failed,
    Skipped,
}

/// One test's result.
pub(crate) struct TestResult {
    pub outcome: Outcome,
    /// Why it was skipped.
    pub why: String,
    /// Seconds from the previous result (or the executable's start) to this
    /// one: the test's duration, as tests run one at a time.
    pub secs: f64,
}

/// Results parsed from the serial console as it arrives.
#[derive(Default)]
pub(crate) struct Console {
    pub binary: String,
    /// `binary::test` -> result.
    pub tests: BTreeMap<String, TestResult>,
    /// When the last result (or executable start) arrived, as seconds since
    /// qemu started.
    mark: f64,
    /// The current line's arrival, as seconds since qemu started.
    pub now: f64,
    pub order: Vec<String>,
    /// A `test NAME ... ` whose result is not on the same line (a child
    /// process wrote in between).
    pub pending: Option<String>,
    /// The test whose captured output (`---- NAME stdout ----`) follows.
    section: Option<String>,
    /// The test whose panic message is on the next line.
    panicking: Option<String>,
    /// (executable, exit code, guest seconds).
    pub binaries: Vec<(String, i32, f64)>,
    /// (passed, failed, skipped) from the guest's own count.
    pub summary: Option<(u64, u64, u64)>,
    pub exit: Option<i32>,
    pub booted: bool,
    /// Modules the guest's init could not load: (file, what insmod said).
    pub modules_failed: Vec<(String, String)>,
}

impl Console {
    fn key(&self, test: &str) -> String {
        format!("{}::{}", self.binary, test)
    }

    pub(crate) fn set(&mut self, test: &str, outcome: Outcome, why: &str) {
        let key = self.key(test);
        if !self.tests.contains_key(&key) {
            self.order.push(key.clone());
        }
        let secs = self.now - self.mark;
        self.mark = self.now;
        let result = TestResult {
            outcome,
            why: why.to_owned(),
            secs,
        };
        self.tests.insert(key, result);
    }

    /// A skip reported in a test's captured output: the test passed in
    /// libtest's eyes.
    fn skip(&mut self, test: &str, why: &str) {
        if let Some(r) = self.tests.get_mut(&self.key(test))
            && r.outcome == Outcome::Passed
        {
            r.outcome = Outcome::Skipped;
            r.why = why.to_owned();
        }
    }

    /// The first panic message of a failed test, kept as its reason.
    fn fail_reason(&mut self, test: &str, message: &str) {
        if let Some(r) = self.tests.get_mut(&self.key(test))
            && r.outcome == Outcome::Failed
            && r.why.is_empty()
        {
            r.why = message.chars().take(300).collect();
        }
    }

    /// A console line that arrived `at` seconds after qemu started.
    pub(crate) fn line_at(&mut self, line: &str, at: f64) {
        self.now = at;
        self.line(line);
    }

    fn result_word(rest: &str) -> Option<Outcome> {
        let rest = rest.trim();
        if rest == "ok" || rest.ends_with(" ok") {
            Some(Outcome::Passed)
        } else if rest == "FAILED" || rest.ends_with(" FAILED") {
            Some(Outcome::Failed)
        } else if rest.starts_with("ignored") {
            Some(Outcome::Skipped)
        } else {
            None
        }
    }

    /// The results that follow are `name`'s.
    pub(crate) fn start_binary(&mut self, name: &str) {
        self.binary = name.to_owned();
        self.mark = self.now;
        self.pending = None;
        self.section = None;
    }

    fn line(&mut self, line: &str) {
        if line.starts_with("VM_BOOTED") {
            self.booted = true;
        } else if let Some(rest) = line.strip_prefix("VM_MODULE_FAILED ") {
            let (module, why) = rest.split_once(' ').unwrap_or((rest, ""));
            self.modules_failed
                .push((module.to_owned(), why.trim().to_owned()));
        } else if let Some(name) = line.strip_prefix("VM_TEST_BINARY ") {
            self.start_binary(name.trim());
        } else if let Some(rest) = line.strip_prefix("VM_TEST_BINARY_DONE ") {
            let mut words = rest.split_whitespace();
            let name = words.next().unwrap_or_default().to_owned();
            let mut rc = -1;
            let mut secs = 0.0;
            for w in words {
                if let Some(v) = w.strip_prefix("rc=") {
                    rc = v.parse().unwrap_or(-1);
                } else if let Some(v) = w.strip_prefix("secs=") {
                    secs = v.parse().unwrap_or(0.0);
                }
            }
            self.binaries.push((name, rc, secs));
        } else if let Some(rest) = line.strip_prefix("VM_SUMMARY ") {
            let get = |k: &str| {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
            };
            if let (Some(p), Some(f), Some(s)) = (get("passed"), get("failed"), get("skipped")) {
                self.summary = Some((p, f, s));
            }
        } else if let Some(code) = line.strip_prefix("VM_EXIT=") {
            self.exit = code.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("test ")
            && let Some((name, result)) = rest.split_once(" ... ")
            // `NAME - should panic`
            && let Some(name) = name.split(" - ").next()
            && !name.contains(' ')
        {
            match Console::result_word(result) {
                Some(o) => {
                    let why = if o == Outcome::Skipped { "ignored" } else { "" };
                    self.set(name, o, why);
                    self.pending = None;
                }
                None => self.pending = Some(name.to_owned()),
            }
        } else if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            self.section = Some(name.to_owned());
        } else if matches!(line, "successes:" | "failures:") || line.starts_with("test result:") {
            self.section = None;
        } else if let Some(test) = self.panicking.take() {
            // libtest prints `thread 'NAME' panicked at FILE:LINE:COL:`
            // and the message on the next line: the failure's reason.
            self.fail_reason(&test, line.trim());
        } else if line.starts_with("thread '") && line.contains("' panicked at ") {
            self.panicking = self.section.clone();
        } else if let Some(why) = line.trim_start().strip_prefix("skipped:") {
            if let Some(test) = self.section.clone() {
                self.skip(&test, why.trim());
            }
        } else if let Some(test) = self.pending.clone()
            && let Some(o) = Console::result_word(line)
        {
            self.set(&test, o, "");
            self.pending = None;
        }
    }

    pub(crate) fn count(&self, outcome: Outcome) -> u64 {
        self.tests.values().filter(|r| r.outcome == outcome).count() as u64
    }

    /// Test executables that failed without a failed test (crash, signal).
    pub(crate) fn crashed(&self) -> Vec<&(String, i32, f64)> {
        self.binaries
            .iter()
            .filter(|(name, rc, _)| {
                *rc != 0
                    && !self.tests.iter().any(|(k, r)| {
                        r.outcome == Outcome::Failed && k.starts_with(&format!("{name}::"))
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_output_with_skips() {
        let mut c = Console::default();
        for l in [
            "VM_BOOTED kernel=6.1.0-56-amd64 uptime=2.1",
            "VM_TEST_BINARY lifecycle",
            "running 3 tests",
            "test a ... ok",
            "test p - should panic ... ok",
            "test b ... some child output",
            "FAILED",
            "test c ... ok",
            "",
            "successes:",
            "",
            "---- c stdout ----",
            "skipped: tcx links need Linux 6.6",
            "",
            "successes:",
            "    a",
            "    c",
            "",
            "failures:",
            "",
            "---- b stdout ----",
            "measured 31 of 100",
            "thread 'b' panicked at tests/tests/loss.rs:10:5:",
            "loss 31% outside the band",
            "note: run with `RUST_BACKTRACE=1` to see a backtrace",
            "",
            "failures:",
            "    b",
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s",
            "VM_TEST_BINARY_DONE lifecycle rc=101 secs=12.5",
            "VM_SUMMARY passed=1 failed=1 skipped=1",
            "VM_EXIT=1",
        ] {
            c.line(l);
        }
        assert_eq!(c.count(Outcome::Passed), 2);
        assert_eq!(c.count(Outcome::Failed), 1);
        assert_eq!(c.count(Outcome::Skipped), 1);
        assert_eq!(c.tests["lifecycle::c"].why, "tcx links need Linux 6.6");
        assert_eq!(c.tests["lifecycle::b"].why, "loss 31% outside the band");
        assert_eq!(c.binaries, vec![("lifecycle".to_owned(), 101, 12.5)]);
        assert_eq!(c.summary, Some((1, 1, 1)));
        assert_eq!(c.exit, Some(1));
        assert!(c.crashed().is_empty());
    }
}
