//! Man pages and shell completions, generated from the clap definitions of
//! `mod.rs` (clap_mangen, clap_complete), so they cannot drift from
//! `--help`. The .deb runs `chaos-agent man` and `chaos-agent completions`
//! at packaging time (xtask/src/deb.rs).

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use clap::CommandFactory as _;
use clap_complete::Shell;
use clap_mangen::{
    Man,
    roff::{Roff, bold, roman},
};

use super::{BUILD_DATE, Cli, VERSION};
use crate::error::{Error, Result};

/// Writes the completion script of `shell` for `chaos-agent`.
pub fn write_completions(shell: Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), "chaos-agent", out);
}

/// Writes one man page (section 1) per command and subcommand into `dir`,
/// named as man looks them up: `chaos-agent.1`, `chaos-agent-blast.1`,
/// `chaos-agent-blast-net.1`, ...; returns their paths.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    let failed = |what: &Path, e: std::io::Error| {
        Error::Runtime(format!("cannot write {}: {e}", what.display()))
    };
    fs::create_dir_all(dir).map_err(|e| failed(dir, e))?;
    let mut pages = Vec::new();
    for (name, text) in man_pages() {
        let path = dir.join(name);
        fs::write(&path, text).map_err(|e| failed(&path, e))?;
        pages.push(path);
    }
    Ok(pages)
}

/// Every page as (file name, roff text), the top-level page first.
pub(crate) fn man_pages() -> Vec<(String, String)> {
    // Built as a whole, so subcommands know their full names
    // ("chaos-agent-blast-net" for the page, "chaos-agent blast net" for
    // the synopsis); clap's own `help` subcommand gets no page.
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(cmd) = todo.pop() {
        let mut subs: Vec<_> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .cloned()
            .collect();
        subs.reverse();
        let man = Man::new(cmd.clone())
            .date(BUILD_DATE)
            .source(format!("chaos-agent {VERSION}"))
            .manual("chaos-agent manual");
        out.push((man.get_filename(), render(&man, &cmd)));
        todo.extend(subs);
    }
    out
}

/// clap_mangen's sections, with the examples (and exit status) of the
/// command's `after_help` as sections of their own in place of its EXTRA.
fn render(man: &Man, cmd: &clap::Command) -> String {
    let mut buf = Vec::new();
    // Writing into a Vec cannot fail.
    man.render_title(&mut buf).expect("in memory");
    man.render_name_section(&mut buf).expect("in memory");
    man.render_synopsis_section(&mut buf).expect("in memory");
    man.render_description_section(&mut buf).expect("in memory");
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut buf).expect("in memory");
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut buf).expect("in memory");
    }
    if let Some(after) = cmd.get_after_help() {
        buf.extend(after_help_sections(&after.to_string()).as_bytes());
    }
    if cmd.get_version().is_some() {
        man.render_version_section(&mut buf).expect("in memory");
    }
    String::from_utf8(buf).expect("roff is text")
}

/// The `after_help` text of `mod.rs` as roff: an unindented line ending in
/// `:` starts a section; a line indented by two spaces is a paragraph (or,
/// as `0  did what...`, an item of a list); lines indented by four are
/// commands, kept as typed.
fn after_help_sections(text: &str) -> String {
    let mut roff = Roff::default();
    let mut in_commands = false;
    let end_commands = |roff: &mut Roff, in_commands: &mut bool| {
        if std::mem::take(in_commands) {
            roff.control("fi", []).control("RE", []);
        }
    };
    for line in text.lines() {
        if let Some(command) = line.strip_prefix("    ") {
            if !in_commands {
                roff.control("RS", ["4"]).control("nf", []);
                in_commands = true;
            }
            roff.text([roman(command)]);
            continue;
        }
        end_commands(&mut roff, &mut in_commands);
        if let Some(para) = line.strip_prefix("  ") {
            match para.split_once("  ") {
                Some((item, rest)) if item.bytes().all(|b| b.is_ascii_digit()) => {
                    roff.control("TP", [])
                        .text([bold(item)])
                        .text([roman(rest)]);
                }
                _ => {
                    roff.control("PP", []).text([roman(para)]);
                }
            }
        } else if let Some(title) = line.strip_suffix(':') {
            roff.control("SH", [title.to_uppercase().as_str()]);
        } else if !line.trim().is_empty() {
            roff.control("PP", []).text([roman(line)]);
        }
    }
    end_commands(&mut roff, &mut in_commands);
    roff.to_roff()
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("chaos-man-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// A host tool the test needs; `./x setup` installs it.
    fn tool(name: &str, package: &str) -> Command {
        let mut cmd = Command::new(name);
        if Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            panic!("{name} is not installed: apt-get install {package} (./x setup does)");
        }
        cmd.env("LC_ALL", "C.UTF-8");
        cmd
    }

    #[test]
    fn one_man_page_per_command() {
        let names: Vec<String> = man_pages().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "chaos-agent.1",
                "chaos-agent-blast.1",
                "chaos-agent-blast-net.1",
                "chaos-agent-blast-syscall.1",
                "chaos-agent-validate.1",
                "chaos-agent-probe.1",
                "chaos-agent-run.1",
                "chaos-agent-status.1",
                "chaos-agent-stop.1",
                "chaos-agent-schema.1",
                "chaos-agent-completions.1",
                "chaos-agent-man.1",
                "chaos-agent-version.1",
            ]
        );
        let pages = man_pages();
        let net = &pages[2].1;
        for want in [
            ".SH SELECTION",
            ".SH FAULT",
            ".SH \"STEADY-STATE GUARD\"",
            ".SH RUN",
            ".SH EXAMPLES",
            "chaos\\-agent blast net \\-\\-iface eth0",
        ] {
            assert!(net.contains(want), "{want:?} not in\n{net}");
        }
        assert!(pages[0].1.contains(".SH \"EXIT STATUS\""), "{}", pages[0].1);
    }

    /// Every page formats without a warning (`groff -ww`), and man-db can
    /// read its NAME section (`lexgrog`, what mandb indexes).
    #[test]
    fn man_pages_render_without_warnings() {
        let dir = scratch("render");
        let pages = write_man_pages(&dir).unwrap();
        assert_eq!(pages.len(), man_pages().len());
        for page in &pages {
            let out = tool("groff", "groff-base")
                .args(["-man", "-ww", "-z", "-Tutf8"])
                .arg(page)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && err.is_empty(),
                "groff on {}: {err}",
                page.display()
            );
            let out = tool("lexgrog", "man-db").arg(page).output().unwrap();
            let whatis = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && whatis.contains(" - "),
                "lexgrog on {}: {whatis}{}",
                page.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bash_completion_is_valid_bash() {
        let dir = scratch("bash");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chaos-agent");
        let mut script = Vec::new();
        write_completions(Shell::Bash, &mut script);
        fs::write(&path, &script).unwrap();
        let out = tool("bash", "bash").arg("-n").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "bash -n: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = String::from_utf8(script).unwrap();
        for want in ["blast", "--iface", "--abort-tcp", "completions"] {
            assert!(script.contains(want), "{want} missing");
        }
        fs::remove_dir_all(&dir).unwrap();
        for shell in [Shell::Zsh, Shell::Fish] {
            let mut script = Vec::new();
            write_completions(shell, &mut script);
            let script = String::from_utf8(script).unwrap();
            assert!(script.contains("iface"), "{shell}: {script}");
        }
    }
}
