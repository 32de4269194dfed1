use crate::{output, CmdResult, Failure, Global};
use cairn_repo::check::{
    check, check_storage, repair_from, repair_storage_from, CheckOptions, CheckReport,
};
use cairn_repo::store_maint::{StorageProblem, StorageReport};
use cairn_repo::Repository;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Also read, decrypt and verify every stored object
    #[arg(long)]
    read_data: bool,
    /// Verify N% of the objects, continuing where the last run stopped (e.g. 10%)
    #[arg(long, value_name = "N%")]
    read_data_subset: Option<String>,
    /// Key-less: verify stored checksums, pieces and the database's page checksums (no
    /// password needed; for replicas). redb holds its write lock while it verifies its pages,
    /// so backups wait for that part
    /// With --repair-from, damaged objects are replaced by replica copies that match the checksum
    /// recorded here, also without a password.
    #[arg(long, conflicts_with_all = ["read_data", "read_data_subset"])]
    storage_only: bool,
    /// Copy intact copies of damaged or missing objects back from this replica (a path, or the
    /// name of a local sync target; the same password opens it), then check again
    #[arg(long, value_name = "PATH|TARGET")]
    repair_from: Option<PathBuf>,
}

/// Rounds of repair: healing a tree can uncover damage below it.
const REPAIR_ROUNDS: usize = 4;

fn parse_percent(s: &str) -> Result<f64, Failure> {
    let v: f64 = s.trim_end_matches('%').parse().map_err(|_| {
        Failure::usage(format!(
            "--read-data-subset: `{s}` is not a percentage like 10%"
        ))
    })?;
    if !(v > 0.0 && v <= 100.0) {
        return Err(Failure::usage(
            "--read-data-subset takes a percentage above 0 and at most 100",
        ));
    }
    Ok(v)
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    if a.storage_only {
        return storage_only(g, a.repair_from.as_deref());
    }
    let subset = a
        .read_data_subset
        .as_deref()
        .map(parse_percent)
        .transpose()?;
    let opts = CheckOptions {
        read_data: a.read_data,
        subset_percent: subset,
    };
    let (repo, replica) = match &a.repair_from {
        None => (g.open()?, None),
        Some(path) => open_pair(g, path)?,
    };
    let mut report = check(&repo, &opts)?;
    if let Some(why) = &report.unrecorded {
        output::warn(&format!(
            "the check's result could not be recorded for `cairn status`: {why}"
        ));
    }
    if let Some(replica) = &replica {
        report = repair(g, &repo, replica, &opts, report)?;
    }
    print_report(g, &report)
}

/// A replica given as a path, or as the name of a sync target with a local URL.
fn replica_path(
    store: &cairn_repo::store::Store,
    arg: &std::path::Path,
) -> Result<PathBuf, Failure> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let name = arg.to_string_lossy();
    match store.targets()?.into_iter().find(|(n, _)| *n == name) {
        Some((_, url)) if url.starts_with("ssh://") => Err(Failure::usage(format!(
            "target {name} is remote ({url}); repairing over ssh is not supported yet: give a local copy's path"
        ))),
        Some((_, url)) => Ok(PathBuf::from(url.strip_prefix("file://").unwrap_or(&url))),
        None => Ok(arg.to_path_buf()),
    }
}

fn open_pair(
    g: &Global,
    replica: &std::path::Path,
) -> Result<(Repository, Option<Repository>), Failure> {
    let path = g.repo_path()?;
    let store = cairn_repo::store::Store::open(&path, 1 << 20).map_err(Failure::from)?;
    let replica = replica_path(&store, replica)?;
    drop(store);
    cairn_repo::store::Store::open(&replica, 1 << 20).map_err(Failure::from)?;
    let password = crate::secrets::password(g, false)?;
    let opts = cairn_repo::OpenOptions::default();
    let repo = Repository::open(&path, password.as_bytes(), &opts)?;
    let other = Repository::open(&replica, password.as_bytes(), &opts)?;
    Ok((repo, Some(other)))
}

fn repair(
    g: &Global,
    repo: &Repository,
    replica: &Repository,
    opts: &CheckOptions,
    mut report: CheckReport,
) -> Result<CheckReport, Failure> {
    for _ in 0..REPAIR_ROUNDS {
        if report.damaged.is_empty() {
            break;
        }
        let ids: Vec<_> = report.damaged.iter().map(|d| d.id).collect();
        let r = repair_from(repo, replica, &ids)?;
        for id in &r.repaired {
            output::info(
                g,
                &format!("repaired {id} from {}", replica.store().dir().display()),
            );
        }
        for (id, why) in &r.failed {
            output::warn(&format!("cannot repair {id}: {why}"));
        }
        if r.repaired.is_empty() {
            break;
        }
        report = check(repo, opts)?;
    }
    Ok(report)
}

fn storage_only(g: &Global, repair: Option<&std::path::Path>) -> CmdResult {
    let path = g.repo_path()?;
    if let Some(arg) = repair {
        let store = cairn_repo::store::Store::open(&path, 1 << 20)?;
        let replica = replica_path(&store, arg)?;
        drop(store);
        let r = repair_storage_from(&path, &replica)?;
        for id in &r.repaired {
            output::info(g, &format!("repaired {id} from {}", replica.display()));
        }
        for (id, why) in &r.failed {
            output::warn(&format!("cannot repair {id}: {why}"));
        }
    }
    let r: StorageReport = check_storage(&path)?;
    let problems: Vec<String> = r
        .problems
        .iter()
        .map(|p| match p {
            StorageProblem::Object { id, problem } => format!("object {id}: {problem}"),
            StorageProblem::Piece {
                pack,
                piece,
                problem,
            } => format!("pack {pack} piece {piece}: {problem}"),
        })
        .chain((r.db_intact == Some(false)).then(|| {
            "the database's page checksums failed; redb repaired its structures".to_string()
        }))
        .collect();
    if g.json {
        output::json(&serde_json::json!({
            "storage_only": true, "packs": r.packs, "objects": r.objects, "bytes": r.bytes,
            "db_intact": r.db_intact, "problems": problems, "ok": problems.is_empty(),
        }));
    } else {
        output::info(
            g,
            &format!(
                "{} packs, {} objects ({}) verified against their stored checksums",
                r.packs,
                r.objects,
                output::bytes(r.bytes)
            ),
        );
        for p in &problems {
            output::line(&format!("damaged: {p}"));
        }
    }
    if problems.is_empty() {
        output::info(g, "no errors found");
        Ok(0)
    } else {
        Err(Failure::fatal(format!(
            "{} storage problems; see above",
            problems.len()
        )))
    }
}

fn print_report(g: &Global, report: &CheckReport) -> CmdResult {
    let s = &report.space;
    if g.json {
        output::json(&serde_json::json!({
            "snapshots": report.snapshots, "trees": report.trees, "objects": report.objects,
            "objects_read": report.objects_read, "bytes_read": report.bytes_read,
            "space": crate::stats::space_json(s),
            "damaged": report.damaged.iter().map(|d| serde_json::json!({
                "id": d.id.to_hex(), "problem": d.problem, "uses": d.uses,
                "used_by": d.used_by.iter().map(|(snap, p)| serde_json::json!({"snapshot": snap.to_hex(), "path": p})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "ok": report.damaged.is_empty(),
        }));
    } else {
        output::info(
            g,
            &format!(
                "{} snapshots, {} trees, {} objects checked for structure",
                report.snapshots, report.trees, report.objects
            ),
        );
        if report.objects_read > 0 {
            output::info(
                g,
                &format!(
                    "{} objects ({}) read and verified",
                    report.objects_read,
                    output::bytes(report.bytes_read)
                ),
            );
        }
        output::info(
            g,
            &format!(
                "space: {} stored in a {} file (file/stored {:.3})",
                output::bytes(s.object_bytes),
                output::bytes(s.file_bytes),
                crate::stats::overhead(s)
            ),
        );
        for d in &report.damaged {
            output::line(&format!("damaged object {}: {}", d.id, d.problem));
            for (snap, p) in &d.used_by {
                output::line(&format!("  used by snapshot {} at {}", snap.short(), p));
            }
            if d.uses > d.used_by.len() as u64 {
                output::line(&format!(
                    "  … and {} more uses",
                    d.uses - d.used_by.len() as u64
                ));
            }
        }
    }
    if report.damaged.is_empty() {
        output::info(g, "no errors found");
        Ok(0)
    } else {
        Err(Failure::fatal(format!(
            "{} damaged or missing objects; see above",
            report.damaged.len()
        )))
    }
}
