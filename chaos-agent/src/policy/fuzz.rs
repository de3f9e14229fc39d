//! A mutation fuzzer for the policy loader, on the stable toolchain: the
//! example policies of `policies/` are the corpus; each case is one of them
//! changed a few times at random (bytes, lines, YAML tokens, values,
//! truncation). The loader must never panic, and every refusal names the
//! file it was given. Seeded, so a failure can be replayed; bounded in
//! cases, so it runs with the unit tests.

use std::{panic::AssertUnwindSafe, path::PathBuf};

use super::load_str;

/// A small xorshift generator: the same seed gives the same cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len())]
    }
}

/// Pieces of YAML and values that tend to break parsers.
const TOKENS: &[&str] = &[
    "- ",
    ": ",
    "{",
    "}",
    "[",
    "]",
    "&a ",
    "*a",
    "!!str ",
    "!!binary ",
    "\t",
    "---",
    "...",
    "~",
    "null",
    "1e999",
    "-1",
    "65536",
    "0",
    "'",
    "\"",
    "#",
    "|",
    ">",
    "<<: *a",
    "? ",
    "%YAML 1.2",
    "\u{feff}",
    "\u{0}",
    "é",
    "0x1F",
    ".inf",
    "-.nan",
    "99999999999999999999",
    "1_000",
    "on",
];
const VALUES: &[&str] = &[
    "0",
    "-1",
    "100.5",
    "101",
    "1e3",
    "\"\"",
    "[]",
    "{}",
    "null",
    "\"30%\"",
    "65536",
    "0-0",
    "70000-1",
    "10.0.0.1/8",
    "::/129",
    "5x",
    "1h 30m",
    "999999h",
    "eth0:1",
    "../x",
    "/a/../b",
    "ECONNREFUSED",
    "4096",
    "sys_connect",
    "nosuchcall",
    "\"a\\nb\"",
];

fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for _ in 0..1 + rng.below(3) {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let i = rng.below(lines.len());
        match rng.below(8) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 => {
                let j = rng.below(lines.len());
                lines.swap(i, j);
            }
            3 => {
                let at = rng.below(lines[i].len() + 1);
                let at = lines[i].floor_char_boundary(at);
                lines[i].insert_str(at, rng.pick(TOKENS));
            }
            4 => {
                if let Some((key, _)) = lines[i].split_once(": ") {
                    lines[i] = format!("{key}: {}", rng.pick(VALUES));
                }
            }
            5 => {
                let l = &mut lines[i];
                if !l.is_empty() {
                    let at = l.floor_char_boundary(rng.below(l.len()));
                    let c = (b' ' + rng.below(95) as u8) as char;
                    l.replace_range(at..l.ceil_char_boundary(at + 1), &c.to_string());
                }
            }
            6 => {
                let indent = " ".repeat(rng.below(12));
                lines.insert(i, format!("{indent}{}", rng.pick(TOKENS)));
            }
            _ => lines.truncate(i),
        }
    }
    let mut out = lines.join("\n");
    if rng.below(4) == 0 {
        let cut = out.floor_char_boundary(rng.below(out.len() + 1));
        out.truncate(cut);
    }
    out
}

fn corpus() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("the policies directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("an example policy");
            (p.display().to_string(), text)
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "the corpus is the examples in {dir:?}");
    files
}

#[test]
fn mutated_examples_never_crash_the_loader_and_refusals_name_the_file() {
    const CASES: usize = 6_000;
    let corpus = corpus();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut refused, mut accepted) = (0, 0);
    for case in 0..CASES {
        let (name, text) = rng.pick(&corpus);
        let mutant = mutate(text, &mut rng);
        let origin = format!("fuzz/{case}.yaml");
        let loaded = std::panic::catch_unwind(AssertUnwindSafe(|| load_str(&origin, &mutant)));
        let Ok(loaded) = loaded else {
            panic!("the loader panicked on case {case} (from {name}):\n{mutant}");
        };
        match loaded {
            Ok(_) => accepted += 1,
            Err(e) => {
                refused += 1;
                let line = e.to_string();
                assert_eq!(e.file, origin, "case {case}: {line}");
                assert!(
                    line.starts_with(&format!("{origin}:")),
                    "case {case}: {line}"
                );
                assert!(!line.contains('\n'), "case {case}: not one line: {line:?}");
            }
        }
    }
    // Both kinds of outcome are exercised.
    assert!(
        refused > CASES / 10 && accepted > CASES / 100,
        "{refused} refused, {accepted} accepted"
    );
}
