//! Positions for field paths, from a YAML event stream (saphyr-parser).
//!
//! serde tells us *which* field is wrong; this module finds *where* it is
//! written. It walks events only: aliases are never expanded (an alias is a
//! leaf here), nesting is capped, and nothing is kept but the current path,
//! so a hostile document costs at most one linear pass.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScanError, Span};

use super::error::{FieldPath, Seg};

/// Containers nested deeper than this are refused.
pub(crate) const MAX_DEPTH: usize = 64;

/// A document whose aliases would expand to more nodes than this is refused
/// (the "billion laughs" attack); without aliases a 1 MiB file has fewer.
pub(crate) const MAX_EXPANDED_NODES: u64 = 1_000_000;

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

fn pos_of(span: &Span) -> Pos {
    Pos {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

/// Where a node is: the node itself and, for a mapping value, its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Located {
    pub node: Pos,
    pub key: Option<Pos>,
}

impl Located {
    pub fn key_or_node(&self) -> Pos {
        self.key.unwrap_or(self.node)
    }
}

/// What [`check_structure`] refuses.
#[derive(Debug)]
pub(crate) enum StructureError {
    Syntax { pos: Pos, message: String },
    TooDeep { pos: Pos, path: FieldPath },
    Empty,
    SeveralDocuments { pos: Pos },
    AliasBomb { pos: Pos, path: FieldPath },
}

enum Frame {
    /// `pending` is the key just read, waiting for its value (`None` while
    /// a key is expected). The key is `None` when it is not a plain string.
    Map {
        pending: Option<(Option<String>, Pos)>,
        pushed: bool,
    },
    Seq {
        next: usize,
        pushed: bool,
    },
    /// A mapping or sequence used as a mapping key: its insides have no path.
    Key {
        start: Pos,
    },
}

enum Flow {
    Continue,
    Stop,
}

/// Walks the first document, calling `visit(path, located)` for every node
/// (keys are not nodes: they are reported with their values).
fn walk(text: &str, mut visit: impl FnMut(&[Seg], Located) -> Flow) -> Result<(), StructureError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut path: Vec<Seg> = Vec::new();
    // Nesting depth of containers that are keys (their nodes are not visited).
    let mut muted = 0usize;
    let mut roots = 0usize;
    // Expanded size (nodes, aliases counted as what they stand for) of each
    // anchor, and of each open container.
    let mut anchor_sizes: HashMap<usize, u64> = HashMap::new();
    let mut open_sizes: Vec<(usize, u64)> = Vec::new();
    for ev in Parser::new_from_str(text) {
        let (event, span) = ev.map_err(|e: ScanError| StructureError::Syntax {
            pos: Pos {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            },
            message: e.info().to_string(),
        })?;
        let pos = pos_of(&span);
        let is_container = matches!(event, Event::MappingStart(..) | Event::SequenceStart(..));
        let finished = match &event {
            Event::Scalar(_, _, anchor, _) => Some((*anchor, 1)),
            Event::Alias(id) => Some((0, anchor_sizes.get(id).copied().unwrap_or(1))),
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                open_sizes.push((*anchor, 1));
                None
            }
            Event::MappingEnd | Event::SequenceEnd => open_sizes.pop(),
            _ => None,
        };
        if let Some((anchor, size)) = finished {
            if anchor != 0 {
                anchor_sizes.insert(anchor, size);
            }
            let total = match open_sizes.last_mut() {
                Some((_, parent)) => {
                    *parent = parent.saturating_add(size);
                    *parent
                }
                None => size,
            };
            if total > MAX_EXPANDED_NODES {
                return Err(StructureError::AliasBomb {
                    pos,
                    path: FieldPath(path.clone()),
                });
            }
        }
        match event {
            Event::Scalar(..)
            | Event::Alias(_)
            | Event::MappingStart(..)
            | Event::SequenceStart(..) => {
                if stack.is_empty() {
                    roots += 1;
                    if roots > 1 {
                        return Err(StructureError::SeveralDocuments { pos });
                    }
                }
                // Where does this node sit?
                let mut seg: Option<Seg> = None;
                let mut key_pos = None;
                let mut is_key = false;
                match stack.last_mut() {
                    None => {}
                    Some(Frame::Map { pending, .. }) => match pending.take() {
                        None => is_key = true,
                        Some((k, kp)) => {
                            seg = Some(k.map_or(Seg::Unknown, Seg::Key));
                            key_pos = Some(kp);
                        }
                    },
                    Some(Frame::Seq { next, .. }) => {
                        seg = Some(Seg::Index(*next));
                        *next += 1;
                    }
                    Some(Frame::Key { .. }) => {}
                }
                if is_key && !is_container {
                    // A scalar (or alias) key: remember it for the value.
                    let key = match &event {
                        Event::Scalar(v, ..) => Some(v.to_string()),
                        _ => None,
                    };
                    if let Some(Frame::Map { pending, .. }) = stack.last_mut() {
                        *pending = Some((key, pos));
                    }
                    continue;
                }
                if is_container && (is_key || muted > 0) {
                    if stack.len() >= MAX_DEPTH {
                        return Err(StructureError::TooDeep {
                            pos,
                            path: FieldPath(path.clone()),
                        });
                    }
                    muted += 1;
                    stack.push(Frame::Key { start: pos });
                    continue;
                }
                if muted > 0 {
                    continue;
                }
                let pushed = seg.is_some();
                if let Some(seg) = seg {
                    path.push(seg);
                }
                if is_container && stack.len() >= MAX_DEPTH {
                    return Err(StructureError::TooDeep {
                        pos,
                        path: FieldPath(path.clone()),
                    });
                }
                if let Flow::Stop = visit(
                    &path,
                    Located {
                        node: pos,
                        key: key_pos,
                    },
                ) {
                    return Ok(());
                }
                match event {
                    Event::MappingStart(..) => stack.push(Frame::Map {
                        pending: None,
                        pushed,
                    }),
                    Event::SequenceStart(..) => stack.push(Frame::Seq { next: 0, pushed }),
                    _ => {
                        if pushed {
                            path.pop();
                        }
                    }
                }
            }
            Event::MappingEnd | Event::SequenceEnd => match stack.pop() {
                Some(Frame::Map { pushed: true, .. } | Frame::Seq { pushed: true, .. }) => {
                    path.pop();
                }
                Some(Frame::Key { start }) => {
                    muted -= 1;
                    if muted == 0
                        && let Some(Frame::Map { pending, .. }) = stack.last_mut()
                    {
                        *pending = Some((None, start));
                    }
                }
                Some(Frame::Map { .. } | Frame::Seq { .. }) | None => {}
            },
            Event::StreamEnd => break,
            _ => {}
        }
    }
    if roots == 0 {
        return Err(StructureError::Empty);
    }
    Ok(())
}

/// Checks what serde should never be handed: YAML that does not parse, more
/// than one document, no document, nesting deeper than [`MAX_DEPTH`].
pub(crate) fn check_structure(text: &str) -> Result<(), StructureError> {
    walk(text, |_, _| Flow::Continue)
}

/// Finds the `nth` (1-based) node at `target`. When there is none, returns
/// the deepest node whose path is a prefix of `target` as the second value.
pub(crate) fn locate(
    text: &str,
    target: &FieldPath,
    nth: usize,
) -> (Option<Located>, Option<Located>) {
    let target = &target.0;
    let mut seen = 0usize;
    let mut exact = None;
    let mut best: Option<(usize, Located)> = None;
    let seg_eq = |a: &Seg, b: &Seg| !matches!(a, Seg::Unknown) && a == b;
    let _ = walk(text, |path, loc| {
        if path.len() <= target.len() && path.iter().zip(target).all(|(a, b)| seg_eq(a, b)) {
            if path.len() == target.len() {
                seen += 1;
                if seen == nth {
                    exact = Some(loc);
                    return Flow::Stop;
                }
            } else if best.is_none_or(|(len, _)| path.len() > len) {
                best = Some((path.len(), loc));
            }
        }
        Flow::Continue
    });
    (exact, best.map(|(_, l)| l))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[&str]) -> FieldPath {
        FieldPath(
            s.iter()
                .map(|x| match x.parse::<usize>() {
                    Ok(n) => Seg::Index(n),
                    Err(_) => Seg::Key(x.to_string()),
                })
                .collect(),
        )
    }

    const DOC: &str = "\
a: 1
b:
  c: [x, {d: 2}]
  e:
    - f: 3
    - g: &x {h: 4}
      i: *x
  ? [complex, key]
  : 5
  j: 6
";

    #[test]
    fn finds_nodes_and_keys() {
        let (l, _) = locate(DOC, &p(&["a"]), 1);
        assert_eq!(
            l,
            Some(Located {
                node: Pos { line: 1, column: 4 },
                key: Some(Pos { line: 1, column: 1 })
            })
        );
        let (l, _) = locate(DOC, &p(&["b", "c", "1", "d"]), 1);
        assert_eq!(
            l.unwrap().node,
            Pos {
                line: 3,
                column: 14
            }
        );
        let (l, _) = locate(DOC, &p(&["b", "e", "1", "g", "h"]), 1);
        assert_eq!(
            l.unwrap().node,
            Pos {
                line: 6,
                column: 17
            }
        );
        // Through an alias: only the alias itself is known.
        let (l, best) = locate(DOC, &p(&["b", "e", "1", "i", "h"]), 1);
        assert_eq!(l, None);
        assert_eq!(
            best.unwrap().node,
            Pos {
                line: 7,
                column: 10
            }
        );
        // After a complex key, paths are still right.
        let (l, _) = locate(DOC, &p(&["b", "j"]), 1);
        assert_eq!(
            l.unwrap().node,
            Pos {
                line: 10,
                column: 6
            }
        );
        // The root.
        let (l, _) = locate(DOC, &FieldPath::root(), 1);
        assert_eq!(l.unwrap().node, Pos { line: 1, column: 1 });
    }

    #[test]
    fn nth_match_for_duplicates() {
        let doc = "a: 1\nb: 2\na: 3\n";
        let (l, _) = locate(doc, &p(&["a"]), 2);
        assert_eq!(l.unwrap().key, Some(Pos { line: 3, column: 1 }));
    }

    #[test]
    fn structure() {
        assert!(check_structure(DOC).is_ok());
        assert!(matches!(check_structure(""), Err(StructureError::Empty)));
        assert!(matches!(
            check_structure("# only a comment\n"),
            Err(StructureError::Empty)
        ));
        assert!(matches!(
            check_structure("a: 1\n---\nb: 2\n"),
            Err(StructureError::SeveralDocuments {
                pos: Pos { line: 3, .. }
            })
        ));
        assert!(matches!(
            check_structure("a: [\n"),
            Err(StructureError::Syntax { .. })
        ));
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(matches!(
            check_structure(&deep),
            Err(StructureError::TooDeep {
                pos: Pos {
                    line: 1,
                    column: 65
                },
                ..
            })
        ));
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(check_structure(&ok).is_ok());
        // Deep complex keys are capped too.
        let deep_key = format!("? {}{}\n: 1\n", "[".repeat(70), "]".repeat(70));
        assert!(matches!(
            check_structure(&deep_key),
            Err(StructureError::TooDeep { .. })
        ));
    }
}
