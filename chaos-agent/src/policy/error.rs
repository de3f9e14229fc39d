//! The loader's error: one line, `FILE:LINE:COL: FIELD.PATH: MESSAGE`.

use std::fmt;

/// What kind of problem a [`PolicyError`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file could not be read (missing, permissions, not a file).
    Io,
    /// The file is larger than [`super::MAX_FILE_SIZE`].
    TooLarge,
    /// Not valid YAML (or not UTF-8).
    Syntax,
    /// Valid YAML that is not a valid policy.
    Invalid,
}

/// A policy file that cannot be used, and why.
///
/// `Display` is exactly one line:
/// `FILE:LINE:COL: FIELD.PATH: MESSAGE`, or `FILE:LINE:COL: MESSAGE` when the
/// problem is not in one field (a YAML syntax error), or `FILE: MESSAGE` when
/// no position is known (unreadable or too large).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct PolicyError {
    /// The file (or origin such as `<flags>`) as given to the loader.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters), when known.
    pub column: Option<usize>,
    /// Field path such as `spec.faults[1].network.match.dstPorts[0]`.
    pub path: Option<String>,
    /// What was wrong and what was expected.
    pub message: String,
    pub kind: ErrorKind,
}

/// Keeps `Display` on one line whatever a file name or value contains.
fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\n', '\r']) {
        s.replace('\n', "\\n").replace('\r', "\\r").into()
    } else {
        s.into()
    }
}

impl PolicyError {
    fn render(&self) -> String {
        let mut out = one_line(&self.file).into_owned();
        if let (Some(line), Some(col)) = (self.line, self.column) {
            out.push_str(&format!(":{line}:{col}"));
        }
        out.push_str(": ");
        if let Some(path) = &self.path {
            out.push_str(&one_line(path));
            out.push_str(": ");
        }
        out.push_str(&one_line(&self.message));
        out
    }

    pub(crate) fn without_position(file: &str, kind: ErrorKind, message: String) -> Self {
        PolicyError {
            file: file.to_string(),
            line: None,
            column: None,
            path: None,
            message,
            kind,
        }
    }
}

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
    /// A key that is not a plain string (never matches anything).
    Unknown,
}

/// A field path such as `spec.faults[1].network`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn root() -> Self {
        FieldPath(Vec::new())
    }

    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        FieldPath(v)
    }

    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        FieldPath(v)
    }

    pub fn parent(&self) -> Self {
        let mut v = self.0.clone();
        v.pop();
        FieldPath(v)
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn from_serde(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment;
        FieldPath(
            path.iter()
                .map(|s| match s {
                    Segment::Seq { index } => Seg::Index(*index),
                    Segment::Map { key } => Seg::Key(key.clone()),
                    Segment::Enum { variant } => Seg::Key(variant.clone()),
                    Segment::Unknown => Seg::Unknown,
                })
                .collect(),
        )
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Unknown if i == 0 => f.write_str("?")?,
                Seg::Unknown => f.write_str(".?")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_forms() {
        let mut e = PolicyError {
            file: "policies/db.yaml".into(),
            line: Some(14),
            column: Some(21),
            path: Some("spec.faults[1].network.match.dstPorts[0]".into()),
            message: "expected a port".into(),
            kind: ErrorKind::Invalid,
        };
        assert_eq!(
            e.to_string(),
            "policies/db.yaml:14:21: spec.faults[1].network.match.dstPorts[0]: expected a port"
        );
        e.path = None;
        assert_eq!(e.to_string(), "policies/db.yaml:14:21: expected a port");
        e.line = None;
        e.column = None;
        e.message = "two\nlines".into();
        assert_eq!(e.to_string(), "policies/db.yaml: two\\nlines");
    }

    #[test]
    fn path_display() {
        let p = FieldPath::root()
            .key("spec")
            .key("faults")
            .index(1)
            .key("network");
        assert_eq!(p.to_string(), "spec.faults[1].network");
        assert_eq!(p.parent().to_string(), "spec.faults[1]");
        assert_eq!(FieldPath::root().to_string(), "");
    }
}
