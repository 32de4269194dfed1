use crate::{output, CmdResult, Failure, Global};
use cairn_repo::check::{
    check, check_storage, repair_from, repair_from_target, repair_storage_from, CheckOptions,
    CheckReport, RepairReport,
};
use cairn_repo::storage::{StorageProblem, StorageReport};
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
    /// Copy intact copies of damaged or missing objects back from this replica (a path, an
    /// ssh:// or s3:// URL, or the name of a sync target), then check again. Every copy is
    /// verified with this repository's keys first
    #[arg(long, value_name = "PATH|URL|TARGET")]
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
    let (repo, mut replica) = match &a.repair_from {
        None => (g.open_tuned(&g.open_options_uncached())?, None),
        Some(arg) => open_pair(g, arg)?,
    };
    let mut report = check(&repo, &opts)?;
    if let Some(why) = &report.unrecorded {
        output::warn(&format!(
            "the check's result could not be recorded for `cairn status`: {why}"
        ));
    }
    if let Some(replica) = &mut replica {
        report = repair(g, &repo, replica, &opts, report)?;
    }
    print_report(g, &report)
}

/// What `--repair-from` names: a local replica, one reached over ssh (the sync protocol to a
/// `cairn serve`), or one in a store this process opens itself (S3).
enum ReplicaArg {
    Path(PathBuf),
    Ssh(String),
    Store(cairn_repo::storage::Url),
}

/// A replica given as a path, an ssh:// or s3:// URL, or the name of a sync target of `store`.
fn replica_arg(
    store: &dyn cairn_repo::storage::Storage,
    arg: &std::path::Path,
) -> Result<ReplicaArg, Failure> {
    if arg.exists() {
        return Ok(ReplicaArg::Path(arg.to_path_buf()));
    }
    let name = arg.to_string_lossy();
    if name.starts_with("ssh://") || name.starts_with("s3://") {
        return url_arg(&name);
    }
    let targets = cairn_repo::sync::targets::list(store)?;
    match targets.into_iter().find(|(n, _)| *n == name) {
        Some((_, url)) => url_arg(&url),
        None => Ok(ReplicaArg::Path(arg.to_path_buf())),
    }
}

fn url_arg(url: &str) -> Result<ReplicaArg, Failure> {
    use cairn_repo::storage::Url;
    Ok(match Url::parse_target(url)? {
        Url::Local(p) => ReplicaArg::Path(p),
        Url::Ssh(_) => ReplicaArg::Ssh(url.to_string()),
        s3 @ Url::S3(_) => ReplicaArg::Store(s3),
    })
}

/// Where repairs read their copies.
enum Replica {
    /// Opened with the same password.
    Local(Repository),
    /// `cairn serve` on the far side; only read.
    Ssh(Box<cairn_repo::sync::SshTarget>, String),
}

impl Replica {
    fn label(&self) -> String {
        match self {
            Replica::Local(r) => r.storage().location(),
            Replica::Ssh(_, url) => url.clone(),
        }
    }

    fn repair(
        &mut self,
        repo: &Repository,
        ids: &[cairn_repo::Id],
    ) -> Result<RepairReport, Failure> {
        Ok(match self {
            Replica::Local(replica) => repair_from(repo, replica, ids)?,
            Replica::Ssh(target, _) => repair_from_target(repo, target.as_mut(), ids)?,
        })
    }
}

fn open_pair(g: &Global, arg: &std::path::Path) -> Result<(Repository, Option<Replica>), Failure> {
    let path = match g.repo_url()? {
        cairn_repo::storage::Url::Local(path) => path,
        _ => return open_pair_elsewhere(g, arg),
    };
    let replica = match cairn_repo::storage::LocalStore::open(&path, 1 << 20) {
        Ok(store) => replica_arg(&store, arg)?,
        Err(cairn_repo::Error::Damaged { reason, .. }) => return rebuild(g, &path, arg, &reason),
        Err(e) => return Err(e.into()),
    };
    let opts = cairn_repo::OpenOptions::default();
    match replica {
        ReplicaArg::Path(replica) => {
            cairn_repo::storage::LocalStore::open(&replica, 1 << 20)?;
            let password = crate::secrets::password(g, false)?;
            let repo = Repository::open(&path, password.as_bytes(), &opts)?;
            let other = Repository::open(&replica, password.as_bytes(), &opts)?;
            Ok((repo, Some(Replica::Local(other))))
        }
        ReplicaArg::Ssh(url) => ssh_replica(g, g.open_tuned(&g.open_options_uncached())?, url),
        ReplicaArg::Store(url) => {
            let store = open_replica(g, &url)?;
            let password = crate::secrets::password(g, false)?;
            let repo = Repository::open(&path, password.as_bytes(), &opts)?;
            let other = Repository::unlock(store, password.as_bytes())?;
            Ok((repo, Some(Replica::Local(other))))
        }
    }
}

/// The repository is on a server or in a bucket: it and the replica open through the seam,
/// with one password, and the copies go back through `Storage::repair`.
fn open_pair_elsewhere(
    g: &Global,
    arg: &std::path::Path,
) -> Result<(Repository, Option<Replica>), Failure> {
    let store = cairn_repo::storage::open(&g.repo_url()?, &g.open_options_uncached())?;
    let password = crate::secrets::password(g, false)?;
    let repo = Repository::unlock(store, password.as_bytes())?;
    let replica = match replica_arg(repo.storage(), arg)? {
        ReplicaArg::Ssh(url) => return ssh_replica(g, repo, url),
        ReplicaArg::Path(p) => cairn_repo::storage::Url::Local(p),
        ReplicaArg::Store(url) => url,
    };
    let other = open_replica(g, &replica)?;
    let other = Repository::unlock(other, password.as_bytes())?;
    Ok((repo, Some(Replica::Local(other))))
}

/// The replica's store at `url`; a missing one is `NotFound` naming it.
fn open_replica(
    g: &Global,
    url: &cairn_repo::storage::Url,
) -> Result<Box<dyn cairn_repo::storage::Storage>, Failure> {
    match cairn_repo::storage::open(url, &g.open_options_uncached()) {
        Err(cairn_repo::Error::RepoNotFound { reason, .. }) => {
            Err(cairn_repo::Error::NotFound(format!("{url}: no replica there ({reason})")).into())
        }
        other => Ok(other?),
    }
}

/// A replica behind `cairn serve` at `url`, spoken to with the sync protocol.
fn ssh_replica(
    g: &Global,
    repo: Repository,
    url: String,
) -> Result<(Repository, Option<Replica>), Failure> {
    let parsed = cairn_repo::sync::SshUrl::parse(&url)?;
    let mut target = cairn_repo::sync::SshTarget::connect(&parsed, &g.ssh.options())?;
    target.handshake_existing(&repo).map_err(|e| {
        let f = Failure::from(e);
        Failure {
            message: format!("{url}: {}", f.message),
            ..f
        }
    })?;
    Ok((repo, Some(Replica::Ssh(Box::new(target), url))))
}

/// The repository's database does not open at all: rebuild it from a local replica, then
/// go on as a repair (the check that follows heals what the replica's copies still lack).
fn rebuild(
    g: &Global,
    path: &std::path::Path,
    arg: &std::path::Path,
    reason: &str,
) -> Result<(Repository, Option<Replica>), Failure> {
    let broken = format!(
        "the repository database at {} does not open ({reason})",
        path.display()
    );
    if !arg.exists() {
        return Err(Failure::fatal(format!(
            "{broken}; rebuilding it needs a local replica: {} is not a path here (copy the replica to this machine, or give its path)",
            arg.display()
        )));
    }
    output::warn(&format!("{broken}; rebuilding it from {}", arg.display()));
    let opts = cairn_repo::OpenOptions::default();
    let password = crate::secrets::password(g, false)?;
    let other = Repository::open(arg, password.as_bytes(), &opts)?;
    let r = cairn_repo::check::rebuild_from(path, &other)?;
    output::info(
        g,
        &format!(
            "rebuilt {} from {}: {} snapshots, {} objects ({}); the damaged file is kept as {}. \
             Snapshots that never reached the replica, and this repository's sync targets, are not in it",
            path.display(),
            arg.display(),
            r.snapshots,
            r.objects,
            output::bytes(r.bytes),
            r.kept.display()
        ),
    );
    let repo = Repository::open(path, password.as_bytes(), &opts)?;
    Ok((repo, Some(Replica::Local(other))))
}

fn repair(
    g: &Global,
    repo: &Repository,
    replica: &mut Replica,
    opts: &CheckOptions,
    mut report: CheckReport,
) -> Result<CheckReport, Failure> {
    for _ in 0..REPAIR_ROUNDS {
        if report.damaged.is_empty() {
            break;
        }
        let ids: Vec<_> = report.damaged.iter().map(|d| d.id).collect();
        let r = replica.repair(repo, &ids)?;
        print_repairs(g, &r, &replica.label());
        if r.repaired.is_empty() {
            break;
        }
        report = check(repo, opts)?;
    }
    Ok(report)
}

fn storage_only(g: &Global, repair: Option<&std::path::Path>) -> CmdResult {
    let url = g.repo_url()?;
    if let Some(arg) = repair {
        repair_storage(g, &url, arg)?;
    }
    let cairn_repo::storage::Url::Local(path) = &url else {
        let store = cairn_repo::storage::open(&url, &g.open_options_uncached())?;
        let r = cairn_repo::check::check_storage_through(&*store)?;
        return report_storage(g, Some(&*store), r);
    };
    let r: StorageReport = check_storage(path)?;
    match cairn_repo::storage::open(&url, &g.open_options_uncached()) {
        Ok(store) => report_storage(g, Some(&*store), r),
        Err(e) => {
            output::warn(&format!("the snapshots' references were not walked: {e}"));
            report_storage(g, None, r)
        }
    }
}

/// Key-less repair before the storage check: copies that match the checksums recorded here
/// come back from the replica. A local repository with a local replica is repaired on its
/// files (pieces included); any other pair through the seam.
fn repair_storage(
    g: &Global,
    url: &cairn_repo::storage::Url,
    arg: &std::path::Path,
) -> Result<(), Failure> {
    use cairn_repo::storage::Url;
    let store = cairn_repo::storage::open(url, &g.open_options_uncached())?;
    let replica = match (replica_arg(&*store, arg)?, url) {
        (ReplicaArg::Path(p), Url::Local(path)) => {
            drop(store);
            let r = repair_storage_from(path, &p)?;
            print_repairs(g, &r, &p.display().to_string());
            return Ok(());
        }
        (ReplicaArg::Path(p), _) => Url::Local(p),
        (ReplicaArg::Ssh(u), _) => Url::parse_target(&u)?,
        (ReplicaArg::Store(u), _) => u,
    };
    let other = open_replica(g, &replica)?;
    let r = cairn_repo::check::repair_storage_through(&*store, &*other)?;
    print_repairs(g, &r, &other.location());
    Ok(())
}

fn print_repairs(g: &Global, r: &RepairReport, from: &str) {
    for id in &r.repaired {
        output::info(g, &format!("repaired {id} from {from}"));
    }
    for (id, why) in &r.failed {
        output::warn(&format!("cannot repair {id}: {why}"));
    }
}

/// Walk every snapshot by its public references (a missing object is found, not only a
/// flipped byte), record the result for `cairn status`, print the findings; exit 1 when
/// anything is damaged or missing.
fn report_storage(
    g: &Global,
    store: Option<&dyn cairn_repo::storage::Storage>,
    r: StorageReport,
) -> CmdResult {
    let reach = match store {
        Some(s) => cairn_repo::reach::check_reachable(s)?,
        None => Default::default(),
    };
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
            let mut m = "the database's page checksums failed; redb repaired its structures"
                .to_string();
            if r.marked_for_repack > 0 {
                m.push_str(&format!(
                    " (repaired objects' damaged old copies stay in {} pack(s) until `cairn prune` rewrites them)",
                    r.marked_for_repack
                ));
            }
            m
        }))
        .chain(reach.problems.iter().map(|(id, snap, why)| {
            format!("object {id} (needed by snapshot {}): {why}", snap.short())
        }))
        .collect();
    let need_key: Vec<String> = reach.need_key.iter().map(|id| id.to_hex()).collect();
    if let Some(Err(e)) = store.map(|s| cairn_repo::check::record_storage_check(s, problems.len()))
    {
        output::warn(&format!(
            "the check's result could not be recorded for `cairn status`: {e}"
        ));
    }
    if g.json {
        output::json(&serde_json::json!({
            "storage_only": true, "packs": r.packs, "objects": r.objects, "bytes": r.bytes,
            "db_intact": r.db_intact, "snapshots": reach.snapshots,
            "reachable_objects": reach.objects, "snapshots_need_key": need_key,
            "problems": problems, "ok": problems.is_empty(),
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
        output::info(
            g,
            &format!(
                "{} snapshots walked by their public references: {} objects reached",
                reach.snapshots - need_key.len() as u64,
                reach.objects
            ),
        );
        if !need_key.is_empty() {
            output::warn(&format!(
                "{} snapshot(s) from before format 2 name their objects only inside their encryption and were not walked; `cairn check` with the password verifies them",
                need_key.len()
            ));
        }
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
            "unreferenced_damaged": report.unreferenced.iter().map(|d| serde_json::json!({
                "id": d.id.to_hex(), "problem": d.problem,
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
    if !report.unreferenced.is_empty() {
        output::warn(&format!(
            "{} stored objects fail verification but no snapshot uses them (junk, not damage to any backup; `cairn prune` removes them): {}",
            report.unreferenced.len(),
            report
                .unreferenced
                .iter()
                .take(5)
                .map(|d| format!("{} ({})", d.id.short(), d.problem))
                .collect::<Vec<_>>()
                .join(", ")
        ));
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
