//! The policies directory as the daemon last read it: every `*.yaml` /
//! `*.yml` file's text, its last good version, and its error if the newest
//! text is bad (a file that turns bad keeps its last good version in force).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use tracing::{error, warn};

use crate::{
    control::proto::FileError,
    policy::{self, model::Policy},
};

/// A policy file as last read.
struct FileState {
    text: String,
    /// The last version that validated, still in force when `error` is set.
    good: Option<Policy>,
    error: Option<String>,
}

#[derive(Default)]
pub struct Files {
    files: BTreeMap<PathBuf, FileState>,
}

impl Files {
    /// Reads every policy file of `dir` whose text changed since the last
    /// read; `seen` holds texts the files had in between (oldest first),
    /// so the newest valid one stays in force when the last is bad.
    /// Returns the files newly rejected (to count them).
    pub fn read(&mut self, dir: &Path, seen: &[(PathBuf, String)]) -> Vec<String> {
        let mut rejected = Vec::new();
        let paths = match policy::policy_files_in(dir) {
            Ok(p) => p,
            Err(e) => {
                error!(dir = %dir.display(), "cannot read the policies directory: {e}; keeping what is in force");
                return rejected;
            }
        };
        self.files.retain(|p, _| paths.contains(p));
        for path in paths {
            let origin = path.display().to_string();
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    // Gone between listing and reading (an editor's rename):
                    // the next event reads it again.
                    warn!(file = %origin, "cannot read: {e}");
                    continue;
                }
            };
            if self.files.get(&path).is_some_and(|f| f.text == text) {
                continue;
            }
            let mut previous = self.files.remove(&path).and_then(|f| f.good);
            // Texts of the burst that led here: a valid one is newer than
            // what was in force. (An invalid one may be half written: not
            // reported.)
            for (_, between) in seen.iter().filter(|(p, t)| *p == path && *t != text) {
                if let Ok(p) = policy::load_str(&origin, between) {
                    previous = Some(p);
                }
            }
            let state = match policy::load_str(&origin, &text) {
                Ok(p) => FileState {
                    text,
                    good: Some(p),
                    error: None,
                },
                Err(e) => {
                    let kept = if previous.is_some() {
                        "; its last good version stays in force"
                    } else {
                        "; nothing from it is applied"
                    };
                    error!(file = %origin, "policy rejected: {e}{kept}");
                    rejected.push(origin);
                    FileState {
                        text,
                        good: previous,
                        error: Some(e.to_string()),
                    }
                }
            };
            self.files.insert(path, state);
        }
        rejected
    }

    /// Policy name -> (file, policy) of every good file, in file name
    /// order; a name declared by two files is kept from the first and the
    /// other is an error. Returns the files newly rejected for that too.
    pub fn desired(&mut self) -> (BTreeMap<String, (PathBuf, Policy)>, Vec<String>) {
        let mut out: BTreeMap<String, (PathBuf, Policy)> = BTreeMap::new();
        let mut clashes = Vec::new();
        for (path, f) in &self.files {
            let Some(p) = &f.good else { continue };
            if let Some((first, _)) = out.get(&p.name) {
                clashes.push((path.clone(), p.name.clone(), first.clone()));
                continue;
            }
            out.insert(p.name.clone(), (path.clone(), p.clone()));
        }
        let mut rejected = Vec::new();
        for (path, name, first) in clashes {
            let msg = format!(
                "{}: metadata.name: policy {name} is already loaded from {}; names must be unique",
                path.display(),
                first.display()
            );
            if let Some(f) = self.files.get_mut(&path)
                && f.error.as_deref() != Some(msg.as_str())
            {
                error!("policy rejected: {msg}");
                rejected.push(path.display().to_string());
                f.error = Some(msg);
            }
        }
        (out, rejected)
    }

    /// Forgets what was read, so the next `read` loads every file anew.
    pub fn forget(&mut self) {
        self.files.clear();
    }

    /// The files whose newest text is refused.
    pub fn errors(&self) -> Vec<FileError> {
        self.files
            .iter()
            .filter_map(|(p, f)| {
                f.error.as_ref().map(|e| FileError {
                    file: p.display().to_string(),
                    error: e.clone(),
                    kept_last_good: f.good.is_some(),
                })
            })
            .collect()
    }
}
