//! Policy files: loading, validation and the value parsers the CLI shares.
//!
//! ```text
//! load_file / load_str / load_paths
//!   -> size cap (MAX_FILE_SIZE)
//!   -> locate::check_structure   (YAML syntax, one document, depth <= 64; no alias expansion)
//!   -> serde_norway + serde_path_to_error into raw::RawPolicy (unknown fields refused,
//!      single values parsed by `values`)
//!   -> validate::validate        (rules across fields, syscall names, what the
//!                                 kernel maps can hold: limits) -> model::Policy
//! ```
//!
//! Every error is a [`PolicyError`] whose position comes from
//! [`locate::locate`] (the field path looked up in the YAML event stream).
//!
//! The `blast net` / `blast syscall` flags take the same path from serde on
//! ([`flags`]): they are put into a raw document, and an error names the
//! flags instead of a position.
//!
//! Nothing here touches the kernel or imports the agent's other modules, so
//! whatever this module accepts only fails later for what the host lacks
//! (an interface, a cgroup, a kernel feature).

mod error;
pub mod flags;
#[cfg(test)]
mod fuzz;
pub mod limits;
mod locate;
pub mod model;
pub mod modes;
mod raw;
mod schema;
mod schema_rules;
pub mod syscalls;
mod validate;
pub mod values;

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
};

pub use error::{ErrorKind, PolicyError};
pub use schema::json_schema;
pub use values::{
    MAX_DURATION, MAX_ERRNO, errno_name, parse_cgroup_path, parse_comm, parse_duration,
    parse_errno, parse_interface, parse_name, parse_netns, parse_pid, parse_port,
    parse_positive_duration, parse_rate, parse_syscall_name, parse_unit,
};

use error::{FieldPath, Seg};
use locate::{Located, Pos, StructureError};
use validate::{Anchor, Invalid};

/// Files larger than this are refused before parsing.
pub const MAX_FILE_SIZE: u64 = 1024 * 1024;

/// Loads one policy file. The error names `path` as given.
pub fn load_file(path: &Path) -> Result<model::Policy, PolicyError> {
    let origin = path.display().to_string();
    let text = read_bounded(path, &origin)?;
    load_str(&origin, &text)
}

/// Parses and validates policy text; `origin` is used in messages and kept
/// in [`model::Policy::origin`].
pub fn load_str(origin: &str, text: &str) -> Result<model::Policy, PolicyError> {
    if text.len() as u64 > MAX_FILE_SIZE {
        return Err(too_large(origin, text.len() as u64));
    }
    let at = |pos: Pos, path: Option<&FieldPath>, kind, message: String| PolicyError {
        file: origin.to_string(),
        line: Some(pos.line),
        column: Some(pos.column),
        path: path.filter(|p| !p.is_root()).map(ToString::to_string),
        message,
        kind,
    };
    match locate::check_structure(text) {
        Ok(()) => {}
        Err(StructureError::Syntax { pos, message }) if message.contains("recursion limit") => {
            // The YAML scanner's own cap on flow nesting, met before ours.
            return Err(at(
                pos,
                None,
                ErrorKind::Invalid,
                format!(
                    "nesting deeper than {} levels is not allowed",
                    locate::MAX_DEPTH
                ),
            ));
        }
        Err(StructureError::Syntax { pos, message }) => {
            return Err(at(
                pos,
                None,
                ErrorKind::Syntax,
                format!("invalid YAML: {}", cap(&message)),
            ));
        }
        Err(StructureError::TooDeep { pos, path }) => {
            return Err(at(
                pos,
                Some(&path),
                ErrorKind::Invalid,
                format!(
                    "nesting deeper than {} levels is not allowed",
                    locate::MAX_DEPTH
                ),
            ));
        }
        Err(StructureError::AliasBomb { pos, path }) => {
            return Err(at(
                pos,
                Some(&path),
                ErrorKind::Invalid,
                format!(
                    "YAML aliases expand to more than {} nodes (an alias/anchor bomb?); refusing the file",
                    locate::MAX_EXPANDED_NODES
                ),
            ));
        }
        Err(StructureError::Empty) => {
            return Err(PolicyError::without_position(
                origin,
                ErrorKind::Invalid,
                format!(
                    "the file is empty; expected a FaultPolicy document (apiVersion: {})",
                    raw::API_VERSION
                ),
            ));
        }
        Err(StructureError::SeveralDocuments { pos }) => {
            return Err(at(
                pos,
                None,
                ErrorKind::Invalid,
                "expected one YAML document per file, found a second one; put each policy in its own file".into(),
            ));
        }
    }

    let de = serde_norway::Deserializer::from_str(text);
    let raw: raw::RawPolicy = match serde_path_to_error::deserialize(de) {
        Ok(r) => r,
        Err(e) => return Err(serde_error(origin, text, e)),
    };
    validate::validate(raw, origin).map_err(|inv| {
        let (pos, path) = position(text, &inv.path, inv.anchor, 1, None);
        at(pos, Some(&path), ErrorKind::Invalid, inv.message)
    })
}

/// Reads a policy document built in memory (the blast flags) the way a
/// file is read from serde on: into the raw model, then `validate`. The
/// refusal keeps its field path (and the other fields it is about) for the
/// caller to name.
pub(crate) fn from_document(
    origin: &str,
    doc: serde_norway::Value,
) -> Result<model::Policy, Invalid> {
    let raw: raw::RawPolicy = serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = FieldPath::from_serde(e.path());
        let (mut inv, _) = describe_serde(path, e.into_inner().to_string());
        inv.message = cap(&inv.message);
        inv
    })?;
    validate::validate(raw, origin)
}

/// Loads policy files: files as given, directories expanded to their
/// `*.yaml` / `*.yml` files (sorted, not recursive; names starting with `.`
/// are skipped, they are editor and tool leftovers). A path that cannot be
/// read (or does not exist) is an error entry for that path.
pub fn load_paths(paths: &[PathBuf]) -> Vec<(PathBuf, Result<model::Policy, PolicyError>)> {
    let mut out = Vec::new();
    for p in paths {
        let origin = p.display().to_string();
        let meta = match fs::metadata(p) {
            Ok(m) => m,
            Err(e) => {
                out.push((p.clone(), Err(io_error(&origin, &e))));
                continue;
            }
        };
        if !meta.is_dir() {
            out.push((p.clone(), load_file(p)));
            continue;
        }
        match policy_files_in(p) {
            Ok(files) => out.extend(files.into_iter().map(|f| {
                let r = load_file(&f);
                (f, r)
            })),
            Err(e) => out.push((p.clone(), Err(io_error(&origin, &e)))),
        }
    }
    out
}

/// The `*.yaml` / `*.yml` files directly in `dir`, sorted by name.
pub fn policy_files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        // `is_file` follows symlinks, so a dangling link is skipped too.
        if is_yaml && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn io_error(origin: &str, e: &std::io::Error) -> PolicyError {
    PolicyError::without_position(origin, ErrorKind::Io, format!("cannot read: {e}"))
}

fn too_large(origin: &str, size: u64) -> PolicyError {
    PolicyError::without_position(
        origin,
        ErrorKind::TooLarge,
        format!(
            "file is too large ({size} bytes); policy files are limited to {MAX_FILE_SIZE} bytes (1 MiB)"
        ),
    )
}

/// Reads at most `MAX_FILE_SIZE` bytes (plus one, to tell that there were
/// more), whatever the file claims to be.
fn read_bounded(path: &Path, origin: &str) -> Result<String, PolicyError> {
    let file = fs::File::open(path).map_err(|e| io_error(origin, &e))?;
    let meta = file.metadata().map_err(|e| io_error(origin, &e))?;
    if meta.is_dir() {
        return Err(PolicyError::without_position(
            origin,
            ErrorKind::Io,
            "cannot read: is a directory; expected a policy file".into(),
        ));
    }
    if meta.len() > MAX_FILE_SIZE {
        return Err(too_large(origin, meta.len()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(origin, &e))?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(PolicyError::without_position(
            origin,
            ErrorKind::TooLarge,
            format!("file is too large; policy files are limited to {MAX_FILE_SIZE} bytes (1 MiB)"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        // Safe: `good` is the valid prefix.
        let good = std::str::from_utf8(good).unwrap_or_default();
        let line = good.matches('\n').count() + 1;
        let column = good.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        PolicyError {
            file: origin.to_string(),
            line: Some(line),
            column: Some(column),
            path: None,
            message: "the file is not valid UTF-8".into(),
            kind: ErrorKind::Syntax,
        }
    })
}

/// Where to point for a field, and the path to report. `serde_loc` is
/// serde's own idea of the position, used when the field cannot be found
/// (it sits behind an alias).
fn position(
    text: &str,
    path: &FieldPath,
    anchor: Anchor,
    nth: usize,
    serde_loc: Option<Pos>,
) -> (Pos, FieldPath) {
    let pick = |l: Located, anchor| match anchor {
        Anchor::Value => l.node,
        _ => l.key_or_node(),
    };
    let lookup = if anchor == Anchor::Missing {
        path.parent()
    } else {
        path.clone()
    };
    let (exact, best) = locate::locate(text, &lookup, nth);
    let pos = match (exact, serde_loc, best) {
        (Some(l), _, _) => pick(l, anchor),
        (None, Some(p), _) => p,
        (None, None, Some(l)) => l.node,
        (None, None, None) => Pos { line: 1, column: 1 },
    };
    (pos, path.clone())
}

/// Turns serde's error into ours: the path from serde_path_to_error, the
/// message without serde_norway's decorations, the position from the
/// event stream.
fn serde_error(
    origin: &str,
    text: &str,
    e: serde_path_to_error::Error<serde_norway::Error>,
) -> PolicyError {
    let path = FieldPath::from_serde(e.path());
    let inner = e.into_inner();
    let serde_loc = inner.location().map(|l| Pos {
        line: l.line(),
        column: l.column(),
    });
    let mut message = inner.to_string();
    // serde_norway adds " at line L column C" and "PATH: " around the message.
    if let Some(l) = &serde_loc {
        let suffix = format!(" at line {} column {}", l.line, l.column);
        if let Some(i) = message.find(&suffix) {
            message.replace_range(i..i + suffix.len(), "");
        }
    }
    if let Some(i) = message.find(": ")
        && !message[..i].contains(char::is_whitespace)
    {
        message.replace_range(..i + 2, "");
    }
    let (inv, nth) = describe_serde(path, message);
    let (pos, path) = position(text, &inv.path, inv.anchor, nth, serde_loc);
    PolicyError {
        file: origin.to_string(),
        line: Some(pos.line),
        column: Some(pos.column),
        path: (!path.is_root()).then(|| path.to_string()),
        message: cap(&inv.message),
        kind: ErrorKind::Invalid,
    }
}

/// serde's message about the field at `path`, in our words: the field it
/// is about (a missing or unknown field is a key below `path`), which part
/// of it to point at, and which occurrence (a duplicate key is the 2nd).
fn describe_serde(mut path: FieldPath, mut message: String) -> (Invalid, usize) {
    let mut anchor = Anchor::Value;
    let mut nth = 1;
    if let Some(field) = backticked_after(&message, "missing field ") {
        path = path.key(&field);
        anchor = Anchor::Missing;
        message = format!("missing required field `{field}`{}", field_hint(&field));
    } else if let Some(field) = backticked_after(&message, "unknown field ") {
        if path.0.last() != Some(&Seg::Key(field.clone())) {
            path = path.key(&field);
        }
        anchor = Anchor::Key;
        let known: Vec<&str> = message.split('`').skip(3).step_by(2).collect();
        if let Some(m) = values::closest(&field, known.iter().copied()) {
            message.push_str(&format!("; did you mean `{m}`?"));
        }
    } else if let Some(field) = backticked_after(&message, "duplicate field ") {
        path = path.key(&field);
        anchor = Anchor::Key;
        nth = 2;
        message = format!("duplicate field `{field}`; expected each field once");
    } else if message == "repetition limit exceeded" {
        message =
            "too many alias expansions (an alias/anchor bomb?); refusing to expand this document"
                .into();
    } else if message == "recursion limit exceeded" {
        message = format!(
            "nesting deeper than {} levels is not allowed",
            locate::MAX_DEPTH
        );
    } else {
        message = message
            .replace("expected u16", "expected a whole number from 0 to 65535")
            .replace(
                "expected u32",
                "expected a whole number from 0 to 4294967295",
            )
            .replace("expected u64", "expected a whole number")
            .replace("expected a boolean", "expected true or false")
            .replace("expected a sequence", "expected a list")
            .replace("expected field identifier", "expected a field name");
    }
    let inv = Invalid {
        path,
        anchor,
        message,
        also: Vec::new(),
    };
    (inv, nth)
}

/// serde quotes whole values back; keep messages to a readable length.
fn cap(message: &str) -> String {
    const MAX: usize = 400;
    match message.char_indices().nth(MAX) {
        None => message.to_string(),
        Some((i, _)) => format!("{}…", &message[..i]),
    }
}

/// `x` from "PREFIX`x`..." when the message starts with `prefix`.
fn backticked_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    Some(rest[..rest.find('`')?].to_string())
}

/// What a missing required field should hold.
fn field_hint(field: &str) -> String {
    let hint = match field {
        "apiVersion" => "\"chaos-agent/v1\"",
        "kind" => "\"FaultPolicy\"",
        "metadata" => "a mapping with name",
        "spec" => "a mapping with duration and faults",
        "name" => values::NAME_EXPECTED,
        "duration" | "latency" => values::DURATION_EXPECTED,
        "faults" => "a list of faults",
        "probe" => "a mapping with http or tcp",
        "interface" => values::INTERFACE_EXPECTED,
        "percent" => values::PERCENT_EXPECTED,
        "rate" => values::RATE_EXPECTED,
        "names" => "a list of syscall names such as [connect]",
        "errno" => values::ERRNO_EXPECTED,
        "target" => "a mapping with exactly one of pid, comm, cgroup, unit",
        _ => return String::new(),
    };
    format!("; expected {hint}")
}

#[cfg(test)]
mod tests;
