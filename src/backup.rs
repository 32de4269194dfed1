use crate::{output, CmdResult, Failure, Global, EXIT_INCOMPLETE};
use cairn_repo::backup::{backup, read_exclude_file, scan_totals, BackupOptions, Progress};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;

#[derive(clap::Args)]
pub struct Args {
    /// Files and directories to back up
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Tag the snapshot (repeatable)
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Host name recorded in the snapshot (default: this machine's)
    #[arg(long)]
    host: Option<String>,
    /// Exclude paths matching this glob (repeatable); a leading / anchors it at the root
    #[arg(long = "exclude", short = 'e', value_parser = parse_exclude)]
    excludes: Vec<String>,
    /// Read exclude globs from a file, one per line (repeatable)
    #[arg(long = "exclude-file")]
    exclude_files: Vec<PathBuf>,
    /// Skip the contents of directories holding a valid CACHEDIR.TAG
    #[arg(long)]
    exclude_caches: bool,
    /// Do not cross into other filesystems
    #[arg(long, short = 'x')]
    one_file_system: bool,
    /// zstd level 1-19, or 0 for none
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(0..=19))]
    compression: i32,
    /// Read all files, even those whose metadata is unchanged since the parent snapshot
    #[arg(long)]
    force: bool,
    /// Worker threads, 1 to 256 (default: four per core, at least 8)
    #[arg(long, value_name = "N", value_parser = crate::parse_threads)]
    threads: Option<usize>,
}

/// Why an exclude pattern is refused: an empty one (or only `/`) would match every path.
fn bad_exclude(p: &str) -> Option<&'static str> {
    if p.is_empty() {
        Some("an empty pattern would exclude everything; give a glob such as '*.tmp' or '/var/cache'")
    } else if p.trim_end_matches('/').is_empty() {
        Some("`/` would exclude everything; give a glob such as '*.tmp' or '/var/cache'")
    } else {
        None
    }
}

fn parse_exclude(s: &str) -> Result<String, String> {
    match bad_exclude(s) {
        Some(why) => Err(why.to_string()),
        None => Ok(s.to_string()),
    }
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    let mut excludes = a.excludes.clone();
    for f in &a.exclude_files {
        // Blank lines and `#` comments are skipped by read_exclude_file.
        for p in read_exclude_file(f)? {
            if let Some(why) = bad_exclude(&p) {
                return Err(Failure::usage(format!(
                    "exclude file {}: pattern `{p}`: {why}",
                    f.display()
                )));
            }
            excludes.push(p);
        }
    }
    // Before any thread starts: a stop signal commits what was written and exits 130.
    crate::signals::block();
    let progress = std::sync::Arc::new(Progress::default());
    let stop = progress.clone();
    std::thread::spawn(move || {
        crate::signals::wait();
        stop.cancel.store(true, Relaxed);
        output::warn(
            "interrupted: keeping what was written for the next backup (again to stop at once)",
        );
        crate::signals::wait();
        std::process::exit(crate::EXIT_INTERRUPTED.into());
    });
    let repo = g.open()?;
    let opts = BackupOptions {
        paths: a.paths.clone(),
        tags: a.tags.clone(),
        host: a.host.clone(),
        excludes,
        exclude_caches: a.exclude_caches,
        one_file_system: a.one_file_system,
        compression: a.compression,
        parent: None,
        force: a.force,
        threads: a.threads.unwrap_or(0),
    };

    let render = || {
        let files = progress.files.load(Relaxed);
        let bytes = progress.bytes.load(Relaxed);
        let (of_files, total) = if progress.scan_done.load(Relaxed) {
            let total = progress.total_bytes.load(Relaxed);
            (
                format!("/{}", progress.total_files.load(Relaxed)),
                Some(total),
            )
        } else {
            (String::new(), None)
        };
        (
            bytes,
            total,
            format!(
                "{files}{of_files} files, {} processed",
                output::bytes(bytes)
            ),
        )
    };
    let report = output::with_progress(g, render, || {
        std::thread::scope(|s| {
            if output::shows_progress(g) {
                s.spawn(|| scan_totals(&opts, &progress));
            }
            let r = backup(&repo, &opts, &progress);
            progress.scan_done.store(true, Relaxed);
            r
        })
    })
    .map_err(Failure::from)?;
    for w in &report.warnings {
        output::warn(w);
    }
    let s = &report.snapshot.stats;
    if g.json {
        output::json(&serde_json::json!({
            "snapshot": report.id.to_hex(),
            "short_id": report.id.short(),
            "parent": report.snapshot.parent.map(|p| p.to_hex()),
            "files": s.files, "dirs": s.dirs, "other": s.other, "bytes": s.bytes,
            "files_new": s.files_new, "files_changed": s.files_changed, "files_unchanged": s.files_unchanged,
            "bytes_read": s.bytes_read, "objects_added": s.objects_added,
            "bytes_added": s.bytes_added, "bytes_added_stored": s.bytes_added_stored,
            "duration_ms": s.duration_ms,
            "warnings": report.warnings,
        }));
    } else {
        output::info(g, &format!(
            "snapshot {} saved: {} files ({} new, {} changed, {} unchanged), {} dirs, {} in {:.1}s; added {} ({} stored)",
            report.id.short(), s.files, s.files_new, s.files_changed, s.files_unchanged, s.dirs,
            output::bytes(s.bytes), s.duration_ms as f64 / 1000.0, output::bytes(s.bytes_added), output::bytes(s.bytes_added_stored),
        ));
        if !report.warnings.is_empty() {
            output::warn(&format!(
                "{} problems, listed above: what could not be read or vanished is left out; a file that changed while being read holds what was read; the snapshot holds everything else",
                report.warnings.len()
            ));
        }
    }
    Ok(if report.warnings.is_empty() {
        0
    } else {
        EXIT_INCOMPLETE
    })
}
