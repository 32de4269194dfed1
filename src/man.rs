//! `cairn man DIR`: a manual page for `cairn` and one for every subcommand, nested ones
//! included (`cairn.1`, `cairn-backup.1`, `cairn-key-add.1`, …), generated from the same
//! definitions as `--help` so they never fall behind the command line.

use crate::{output, CmdResult, Failure, Global};
use clap::CommandFactory;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
#[command(
    after_help = "Install: cairn man /usr/local/share/man/man1 (scripts/install does this); read \
one without installing: cairn man /tmp/m && man -l /tmp/m/cairn-backup.1"
)]
pub struct Args {
    /// Directory to write the pages into (created if missing; existing pages are replaced)
    pub dir: PathBuf,
}

/// Every page: its file name (`cairn-key-add.1`) and its roff text.
pub fn pages() -> Vec<(String, Vec<u8>)> {
    // As clap_mangen::generate_to: no pages for the `help` subcommand.
    let mut cmd = crate::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    collect(cmd, &mut pages);
    pages
}

fn collect(cmd: clap::Command, pages: &mut Vec<(String, Vec<u8>)>) {
    // Every page ends with a VERSION section naming the repository format and sync protocol
    // versions, and its footer says `Cairn  0.1.0  cairn-key-add(1)` (the .TH date slot holds
    // the version: an empty date would shift the other fields).
    let man = clap_mangen::Man::new(cmd.clone().version(crate::version::text()))
        .date(env!("CARGO_PKG_VERSION"))
        .source("Cairn")
        .manual("Cairn Manual");
    let mut text = Vec::new();
    man.render(&mut text).expect("rendering into memory");
    pages.push((man.get_filename(), text));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub.clone(), pages);
    }
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    let fail = |path: &Path, e: std::io::Error| Failure::fatal(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(&a.dir).map_err(|e| fail(&a.dir, e))?;
    let mut written = Vec::new();
    for (name, text) in pages() {
        let path = a.dir.join(&name);
        std::fs::write(&path, text).map_err(|e| fail(&path, e))?;
        written.push(path);
    }
    if g.json {
        output::json(&serde_json::json!({
            "pages": written.iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>(),
        }));
    } else {
        output::info(
            g,
            &format!(
                "wrote {} manual pages to {}",
                written.len(),
                a.dir.display()
            ),
        );
    }
    Ok(0)
}
