use crate::{output, CmdResult, Failure, Global, EXIT_INCOMPLETE};
use cairn_repo::restore::{restore, Overwrite, RestoreOptions, RestoreProgress};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;

#[derive(Clone, Copy, clap::ValueEnum)]
enum OverwriteArg {
    Always,
    IfNewer,
    Never,
}

#[derive(clap::Args)]
pub struct Args {
    /// Snapshot id prefix or `latest`
    snapshot: String,
    /// Directory to restore into (created if missing)
    #[arg(long, short = 't')]
    target: PathBuf,
    /// Restore only this absolute path of the snapshot (repeatable; any bytes, as stored)
    #[arg(long = "include", short = 'i')]
    includes: Vec<PathBuf>,
    /// What to do with files that already exist at the target
    #[arg(long, value_enum, default_value = "if-newer")]
    overwrite: OverwriteArg,
    /// Worker threads, 1 to 256 (default: four per core, at least 8)
    #[arg(long, value_name = "N", value_parser = crate::parse_threads)]
    threads: Option<usize>,
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    let repo = g.open()?;
    crate::require(repo.storage(), &[cairn_repo::storage::Right::Restore])?;
    let snap = repo.find_snapshot(&a.snapshot)?;
    let opts = RestoreOptions {
        target: a.target.clone(),
        includes: a
            .includes
            .iter()
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .collect(),
        overwrite: match a.overwrite {
            OverwriteArg::Always => Overwrite::Always,
            OverwriteArg::IfNewer => Overwrite::IfNewer,
            OverwriteArg::Never => Overwrite::Never,
        },
        threads: a.threads.unwrap_or(0),
    };
    let progress = RestoreProgress::default();
    let total = snap.snapshot.stats.bytes;
    let render = || {
        let b = progress.bytes.load(Relaxed);
        (
            b,
            Some(total),
            format!(
                "{} files, {} restored",
                progress.files.load(Relaxed),
                output::bytes(b)
            ),
        )
    };
    let report = output::with_progress(g, render, || {
        restore(&repo, &snap.snapshot.root, &opts, &progress)
    })
    .map_err(Failure::from)?;
    for w in &report.warnings {
        output::warn(w);
    }
    if g.json {
        output::json(&serde_json::json!({
            "snapshot": snap.id.to_hex(), "files": report.files, "dirs": report.dirs,
            "bytes": report.bytes, "skipped": report.skipped, "warnings": report.warnings,
        }));
    } else {
        output::info(
            g,
            &format!(
                "restored snapshot {} to {}: {} files, {} dirs, {}{}",
                snap.id.short(),
                a.target.display(),
                report.files,
                report.dirs,
                output::bytes(report.bytes),
                if report.skipped > 0 {
                    format!(", {} existing entries left alone", report.skipped)
                } else {
                    String::new()
                }
            ),
        );
    }
    Ok(if report.warnings.is_empty() {
        0
    } else {
        EXIT_INCOMPLETE
    })
}
