//! `cairn forget`: remove snapshots by retention rules (restic semantics, grouped by host and
//! path set by default); `--dry-run` shows every decision and its reasons; `--prune` prunes.

use crate::primary::Primary;
use crate::{output, CmdResult, Failure, Global};
use cairn_repo::forget::{apply, local_offset, to_remove, Candidate, Group, GroupBy, Policy, Span};
use cairn_repo::{Error, Id, Time};
use std::collections::HashMap;

#[derive(clap::Args)]
pub struct Args {
    /// Keep the N newest snapshots (negative: all)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    keep_last: Option<i64>,
    /// Keep the newest snapshot of each of the last N hours that have one
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    keep_hourly: Option<i64>,
    /// Keep the newest snapshot of each of the last N days that have one (local time)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    keep_daily: Option<i64>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    keep_weekly: Option<i64>,
    /// Keep the newest snapshot of each of the last N months that have one
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    keep_monthly: Option<i64>,
    /// Keep the newest snapshot of each of the last N years that have one
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    keep_yearly: Option<i64>,
    /// Keep every snapshot younger than this, counted back from the group's newest (7d, 2w, 1y2m, 36h)
    #[arg(long, value_name = "DURATION")]
    keep_within: Option<String>,
    /// Keep every snapshot with this tag (repeatable)
    #[arg(long = "keep-tag", value_name = "TAG")]
    keep_tags: Vec<String>,
    /// Apply the rules per group: host,paths | host | paths | none
    #[arg(long, default_value = "host,paths")]
    group_by: String,
    /// Show what would be kept and removed, and why; change nothing
    #[arg(long)]
    dry_run: bool,
    /// Prune afterwards (see `cairn prune`)
    #[arg(long)]
    prune: bool,
    #[command(flatten)]
    prune_args: PruneFlags,
}

/// The `prune` options that make sense after `forget --prune`.
#[derive(clap::Args)]
struct PruneFlags {
    /// With --prune: wait at most this many seconds for running backups
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    wait: u64,
    /// With --prune: compact the file afterwards (needs exclusive access)
    #[arg(long)]
    compact: bool,
}

fn policy(a: &Args) -> Result<Policy, Failure> {
    let within = a
        .keep_within
        .as_deref()
        .map(Span::parse)
        .transpose()
        .map_err(|e| Failure::usage(e.to_string()))?;
    let p = Policy {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        within,
        tags: a.keep_tags.clone(),
    };
    if p.is_empty() {
        return Err(Failure::usage(
            "no retention rule given; refusing to forget every snapshot (use --keep-last, --keep-daily, --keep-within, …)",
        ));
    }
    Ok(p)
}

/// The snapshots as the policy sees them: decrypted with the key, or from their public
/// references without it (time and keyed group tag; hosts, paths and tags stay encrypted).
fn candidates(p: &Primary, a: &Args) -> Result<Vec<Candidate>, Error> {
    let store = match p {
        Primary::Keyed(repo) => return Ok(repo.snapshots()?.iter().map(Candidate::from).collect()),
        Primary::KeyFree(store) => store,
    };
    if !a.keep_tags.is_empty() || !matches!(a.group_by.as_str(), "host,paths" | "none") {
        return Err(Error::Usage(
            "without the password, snapshots are grouped by their keyed host-and-paths tag: --keep-tag and --group-by host|paths need the key (CAIRN_PASSWORD_FILE, CAIRN_PASSWORD_COMMAND or CAIRN_PASSWORD)".into(),
        ));
    }
    let mut out = Vec::new();
    for (id, blob) in store.snapshots()? {
        let refs = cairn_repo::graph::public_refs(&id, &blob)?.ok_or_else(|| {
            Error::KeyNeeded(format!(
                "snapshot {id} was written before repository format 2; its time and group are inside its encryption"
            ))
        })?;
        out.push(Candidate {
            id,
            sec: refs.time,
            nsec: refs.nsec,
            host: format!("group {}", hex::encode(&refs.group[..4])),
            paths: Vec::new(),
            tags: Vec::new(),
        });
    }
    Ok(out)
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    let policy = policy(a)?;
    let group_by = GroupBy::parse(&a.group_by).map_err(|e| Failure::usage(e.to_string()))?;
    // Without a password it works key-free (a replica's server keeping its own retention).
    let (repo, candidates) = Primary::open(g, 0)?.with_fallback(g, |p| candidates(p, a))?;
    let times: HashMap<Id, Time> = candidates
        .iter()
        .map(|c| {
            (
                c.id,
                Time {
                    sec: c.sec,
                    nsec: c.nsec,
                },
            )
        })
        .collect();
    if !a.dry_run {
        use cairn_repo::storage::Right::{Forget, Prune};
        let needs: &[_] = if a.prune { &[Forget, Prune] } else { &[Forget] };
        crate::require(repo.storage(), needs)?;
    }
    let groups = apply(&policy, group_by, &candidates, &local_offset)?;
    let remove = to_remove(&groups);
    if !a.dry_run {
        repo.storage().remove_snapshots(&remove)?;
    }
    let doc = decisions_json(&groups, &times, a.dry_run);
    let prune_after = a.prune && !a.dry_run;
    if g.json && !prune_after {
        output::json(&doc);
    } else if !g.json {
        print(g, &groups, &times, a.dry_run);
    }
    if prune_after {
        let pa = crate::prune::Args {
            dry_run: false,
            wait: a.prune_args.wait,
            repack_below: 80.0,
            compact: a.prune_args.compact,
        };
        return crate::prune::prune_with(g, repo, &pa, Some(doc));
    }
    Ok(0)
}

fn group_title(grp: &Group) -> String {
    let host = grp.host.as_deref().map(|h| format!("host {h}"));
    let paths = grp.paths.as_ref().map(|p| {
        let v: Vec<String> = p
            .iter()
            .map(|x| String::from_utf8_lossy(x).into_owned())
            .collect();
        format!("paths {}", v.join(" "))
    });
    let parts: Vec<String> = host.into_iter().chain(paths).collect();
    if parts.is_empty() {
        "all snapshots".into()
    } else {
        parts.join(", ")
    }
}

fn decisions_json(
    groups: &[Group],
    times: &HashMap<cairn_repo::Id, cairn_repo::Time>,
    dry_run: bool,
) -> serde_json::Value {
    let time = |id| {
        times
            .get(id)
            .map(|t| crate::snapshots::time_string(*t))
            .unwrap_or_default()
    };
    serde_json::json!({
        "dry_run": dry_run,
        "groups": groups.iter().map(|grp| serde_json::json!({
            "host": grp.host,
            "paths": grp.paths.as_ref().map(|p| p.iter().map(|x| String::from_utf8_lossy(x).into_owned()).collect::<Vec<_>>()),
            "snapshots": grp.decisions.iter().map(|d| serde_json::json!({
                "id": d.id.to_hex(), "time": time(&d.id), "keep": d.keep, "reasons": d.reasons,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn print(
    g: &Global,
    groups: &[Group],
    times: &HashMap<cairn_repo::Id, cairn_repo::Time>,
    dry_run: bool,
) {
    let time = |id| {
        times
            .get(id)
            .map(|t| crate::snapshots::time_string(*t))
            .unwrap_or_default()
    };
    let (kept, removed): (usize, usize) =
        groups
            .iter()
            .flat_map(|x| &x.decisions)
            .fold(
                (0, 0),
                |(k, r), d| if d.keep { (k + 1, r) } else { (k, r + 1) },
            );
    // The decisions are a dry run's whole output; after a real run they are information.
    let show = |msg: &str| {
        if dry_run {
            output::line(msg)
        } else {
            output::info(g, msg)
        }
    };
    for grp in groups {
        show(&format!("{}:", group_title(grp)));
        for d in &grp.decisions {
            let verdict = if d.keep { "keep  " } else { "remove" };
            show(&format!(
                "  {verdict}  {}  {}  {}",
                d.id.short(),
                time(&d.id),
                d.reasons.join(", ")
            ));
        }
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    output::info(g, &format!("{kept} snapshots kept, {verb} {removed}"));
}
