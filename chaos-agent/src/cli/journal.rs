//! Log lines for journald. Under systemd the agent's stderr is a stream
//! to the journal, which reads a `<N>` prefix on each line as its syslog
//! priority (sd-daemon(3)) and stamps the time itself. Without the prefix
//! every line would be stored at the unit's default priority (info), and
//! `journalctl -p warning -u chaos-agent` would show nothing.
//!
//! systemd says so through `JOURNAL_STREAM` (`DEVICE:INODE` of the stream
//! it connected); the variable is inherited by children whose stderr may
//! be something else, so it only counts when it names our stderr.

use std::{
    fmt::{self, Write as _},
    os::fd::AsFd,
    os::unix::fs::MetadataExt,
};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{self, Writer},
    },
    registry::LookupSpan,
};

/// True when `JOURNAL_STREAM` is set and names the file behind fd 2.
pub fn stderr_is_journal() -> bool {
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let meta = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata());
    match meta {
        Ok(m) => names_stream(&var.to_string_lossy(), m.dev(), m.ino()),
        Err(_) => false,
    }
}

/// Whether a `JOURNAL_STREAM` value (`DEVICE:INODE`, decimal) is the
/// stream with this device and inode.
fn names_stream(var: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = var.split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// The syslog priority of a tracing level: err, warning, info, debug
/// (trace has no syslog level of its own below debug).
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Writes `text` with `<priority>` in front of every line: journald
/// splits a stream at newlines, so a message that spans lines (a verifier
/// log, say) keeps its priority on each of them.
pub fn write_prefixed(out: &mut impl fmt::Write, priority: u8, text: &str) -> fmt::Result {
    for line in text.trim_end_matches('\n').split('\n') {
        writeln!(out, "<{priority}>{line}")?;
    }
    Ok(())
}

/// An event format that writes what `inner` writes, line by line, behind
/// the event's syslog priority. `inner` should leave out the time and the
/// level (journald records both).
pub struct Journal<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for Journal<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut text = String::new();
        self.0.format_event(ctx, Writer::new(&mut text), event)?;
        write_prefixed(&mut writer, priority(event.metadata().level()), &text)
    }
}

/// The text format under journald: the target and the fields, as
/// elsewhere, without time, level or colour.
pub fn text() -> Journal<format::Format<format::Full, ()>> {
    Journal(
        format::format()
            .without_time()
            .with_level(false)
            .with_ansi(false),
    )
}

/// The JSON format under journald: one object per line as elsewhere,
/// without the timestamp field (the journal's own is exact).
pub fn json() -> Journal<format::Format<format::Json, ()>> {
    Journal(format::format().json().without_time())
}

/// An error for stderr outside tracing (the message `main` ends with), with
/// the err priority when stderr is the journal.
pub fn error_line(journal: bool, message: &str) -> String {
    let mut out = String::new();
    if journal {
        let _ = write_prefixed(&mut out, priority(&Level::ERROR), message);
    } else {
        let _ = writeln!(out, "{message}");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Sink {
        type Writer = Sink;
        fn make_writer(&'a self) -> Sink {
            self.clone()
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn emit_all() {
        tracing::error!(policy = "p", "apply failed: no such device");
        tracing::warn!("unsupported: needs fq");
        tracing::info!(policies = 2, "reloaded");
        tracing::debug!("metrics ready");
        tracing::trace!("very fine");
    }

    #[test]
    fn text_lines_carry_the_syslog_priority_and_no_time() {
        let sink = Sink::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_writer(sink.clone())
            .event_format(text())
            .finish();
        tracing::subscriber::with_default(subscriber, emit_all);
        let out = sink.text();
        let lines: Vec<&str> = out.lines().collect();
        let target = module_path!();
        assert_eq!(
            lines,
            [
                format!("<3>{target}: apply failed: no such device policy=\"p\""),
                format!("<4>{target}: unsupported: needs fq"),
                format!("<6>{target}: reloaded policies=2"),
                format!("<7>{target}: metrics ready"),
                format!("<7>{target}: very fine"),
            ],
            "{out}"
        );
        assert!(!out.contains('\x1b'), "colour codes: {out:?}");
    }

    #[test]
    fn json_lines_carry_the_priority_before_the_object() {
        let sink = Sink::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(Level::INFO)
            .with_writer(sink.clone())
            .event_format(json())
            .finish();
        tracing::subscriber::with_default(subscriber, emit_all);
        let out = sink.text();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        for (line, (prio, level)) in lines.iter().zip([(3, "ERROR"), (4, "WARN"), (6, "INFO")]) {
            let object = line
                .strip_prefix(&format!("<{prio}>"))
                .unwrap_or_else(|| panic!("no <{prio}>: {line}"));
            let v: serde_json::Value = serde_json::from_str(object).unwrap();
            assert_eq!(v["level"], level, "{line}");
            assert!(v.get("timestamp").is_none(), "{line}");
        }
    }

    #[test]
    fn every_line_of_a_message_keeps_its_priority() {
        let mut out = String::new();
        write_prefixed(&mut out, 4, "verifier said:\n0: r1 = 0\n1: exit\n").unwrap();
        assert_eq!(out, "<4>verifier said:\n<4>0: r1 = 0\n<4>1: exit\n");
        assert_eq!(
            error_line(true, "chaos-agent: revert incomplete\nleft: x"),
            "<3>chaos-agent: revert incomplete\n<3>left: x\n"
        );
        assert_eq!(error_line(false, "chaos-agent: bad"), "chaos-agent: bad\n");
    }

    #[test]
    fn journal_stream_must_name_stderr() {
        assert!(names_stream("8:4242", 8, 4242));
        assert!(!names_stream("8:4242", 8, 4243));
        assert!(!names_stream("9:4242", 8, 4242));
        assert!(!names_stream("", 8, 4242));
        assert!(!names_stream("8", 8, 4242));
        assert!(!names_stream("x:y", 8, 4242));
    }
}
