//! `cairn prune`: delete data no snapshot references (plan, then execute; see repo/DESIGN.md
//! "Garbage collection"). Also run by `cairn forget --prune`.

use crate::primary::Primary;
use crate::{output, CmdResult, Failure, Global};
use cairn_repo::prune::{plan, GraphMarker, PackAction, PlanSummary, PruneOptions, PruneReport};
use std::time::Duration;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Print the plan (objects and bytes to free) and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Wait at most this many seconds for running backups before giving up (exit 11)
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub wait: u64,
    /// Rewrite packs whose live share fell below this percentage
    #[arg(long, value_name = "PCT", default_value_t = 80.0)]
    pub repack_below: f64,
    /// Afterwards give freed space back to the file system. Needs the repository to itself:
    /// fails with exit 11 while a backup, mount or sync has it open
    #[arg(long)]
    pub compact: bool,
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    // Without a password it works key-free, by the public references (a server's cron job).
    let repo = Primary::open(g, 0)?;
    prune_with(g, repo, a, None)
}

/// Prune an open repository (consumes it so `--compact` can reopen it exclusively). `forget`
/// is the JSON of a `forget` that ran first: with `--json` it goes into the same document.
pub fn prune_with(
    g: &Global,
    repo: Primary,
    a: &Args,
    forget: Option<serde_json::Value>,
) -> CmdResult {
    if !(0.0..=100.0).contains(&a.repack_below) {
        return Err(Failure::usage(
            "--repack-below takes a percentage between 0 and 100",
        ));
    }
    let opts = PruneOptions {
        repack_below: a.repack_below / 100.0,
        wait: Duration::from_secs(a.wait),
        ..Default::default()
    };
    let local = cairn_repo::storage::local(repo.storage(), "prune").is_ok();
    if a.dry_run && local {
        let (_, planned) = repo.with_fallback(g, |p| plan(p.source(), &opts))?;
        print_plan(g, Some(&planned), &planned.summary());
        return Ok(0);
    }
    // The store collects; this side says what snapshots reference (by their public
    // references, or with the key when one was given).
    let opts = PruneOptions {
        dry_run: a.dry_run,
        ..opts
    };
    let (repo, report) = repo.with_fallback(g, |p| {
        let mut marker = GraphMarker::new(p.source())?;
        p.storage()
            .collect_garbage(&mut marker, &opts, &|msg| output::info(g, msg))
    })?;
    if a.dry_run {
        print_plan(g, None, &report.plan);
        return Ok(0);
    }
    let file_len = match a.compact {
        true => None,
        false => Some(repo.storage().space()?.file_len).filter(|len| *len > 0),
    };
    drop(repo);
    let (file_bytes, compacted) = match a.compact {
        true => compact(g)?,
        false => (file_len, None),
    };
    print_report(g, &report, file_bytes, compacted, forget);
    Ok(0)
}

/// `--compact`, once every connection of the prune is closed: the repository's file length
/// after it, and whether it changed (`None` for a store without a file to compact).
fn compact(g: &Global) -> Result<(Option<u64>, Option<bool>), Failure> {
    output::info(
        g,
        "compacting the repository file (needs exclusive access)…",
    );
    let store = cairn_repo::storage::open(&g.repo_url()?, &g.open_options())?;
    match cairn_repo::storage::compact(store)? {
        Some(c) => Ok((Some(c.file_len), Some(c.changed))),
        None => {
            output::info(
                g,
                "nothing to compact: this store gives space back when prune deletes packs",
            );
            Ok((None, None))
        }
    }
}

fn plan_json(s: &PlanSummary) -> serde_json::Value {
    serde_json::json!({
        "objects_total": s.objects_total, "objects_unused": s.objects_unused, "bytes_unused": s.bytes_unused,
        "packs_total": s.packs_total, "packs_delete": s.packs_delete, "packs_repack": s.packs_repack,
        "bytes_repack": s.bytes_repack, "bytes_freed": s.bytes_freed,
    })
}

/// The plan; per-pack detail when the repository's own files were planned here.
fn print_plan(g: &Global, plan: Option<&cairn_repo::prune::PrunePlan>, s: &PlanSummary) {
    if g.json {
        let packs: Vec<serde_json::Value> = plan
            .into_iter()
            .flat_map(|p| p.packs.iter())
            .filter(|(_, p)| p.action != PackAction::Keep)
            .map(|(n, p)| serde_json::json!({
                "pack": n, "bytes": p.row.0, "live_bytes": p.live_bytes(), "live_objects": p.live_objects(),
                "unused_objects": p.unused_objects(), "action": if p.action == PackAction::Delete { "delete" } else { "repack" },
            }))
            .collect();
        output::json(&serde_json::json!({"dry_run": true, "plan": plan_json(s), "packs": packs}));
        return;
    }
    output::line(&format!(
        "would remove {} of {} objects ({})",
        s.objects_unused,
        s.objects_total,
        output::bytes(s.bytes_unused)
    ));
    output::line(&format!(
        "would delete {} and rewrite {} of {} packs (copying {})",
        s.packs_delete,
        s.packs_repack,
        s.packs_total,
        output::bytes(s.bytes_repack)
    ));
    output::line(&format!("would free {}", output::bytes(s.bytes_freed)));
}

fn print_report(
    g: &Global,
    r: &PruneReport,
    file_bytes: Option<u64>,
    compacted: Option<bool>,
    forget: Option<serde_json::Value>,
) {
    if g.json {
        let v = serde_json::json!({
            "dry_run": false, "plan": plan_json(&r.plan),
            "objects_removed": r.objects_dropped, "bytes_removed": r.bytes_dropped,
            "objects_repacked": r.objects_repacked, "bytes_repacked": r.bytes_repacked,
            "packs_deleted": r.packs_deleted, "pack_bytes_deleted": r.pack_bytes_deleted,
            "packs_kept": r.packs_kept, "rescued": r.rescued,
            "dead_sessions_removed": r.dead_sessions_removed, "waited_secs": r.waited.as_secs_f64(),
            "damaged_left_in_place": r.damaged_skipped,
            "file_bytes": file_bytes, "compacted": compacted,
        });
        match forget {
            Some(f) => output::json(&serde_json::json!({"forget": f, "prune": v})),
            None => output::json(&v),
        }
        return;
    }
    output::info(
        g,
        &format!(
            "removed {} objects ({})",
            r.objects_dropped,
            output::bytes(r.bytes_dropped)
        ),
    );
    output::info(
        g,
        &format!(
            "rewrote {} objects ({}) into new packs",
            r.objects_repacked,
            output::bytes(r.bytes_repacked)
        ),
    );
    output::info(
        g,
        &format!(
            "deleted {} packs ({})",
            r.packs_deleted,
            output::bytes(r.pack_bytes_deleted)
        ),
    );
    if r.rescued > 0 || r.packs_kept > 0 {
        output::info(
            g,
            &format!(
                "kept {} objects reused by new snapshots and {} packs changed since the plan",
                r.rescued, r.packs_kept
            ),
        );
    }
    if r.damaged_skipped > 0 {
        output::warn(&format!(
            "{} damaged objects were left in place; run `cairn check --read-data`",
            r.damaged_skipped
        ));
    }
    match (compacted, file_bytes) {
        (_, None) => {}
        (Some(_), Some(b)) => output::info(
            g,
            &format!("repository file compacted to {}", output::bytes(b)),
        ),
        (None, Some(b)) => output::info(
            g,
            &format!(
                "repository file: {} (freed pages are reused; --compact shrinks it)",
                output::bytes(b)
            ),
        ),
    }
}
