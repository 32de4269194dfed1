//! Verify a repository: snapshots decode, every referenced object exists and decodes, and
//! (with `read_data`) every stored object decrypts and matches its id and checksum. Damage is
//! reported with the snapshots and paths that depend on it.

use crate::crypto::Kind;
use crate::error::{Error, Result};
use crate::format::{Content, Tree};
use crate::id::Id;
use crate::repo::Repository;
use crate::storage::redb::{checksum, Location, Store, View};
use crate::storage::{ObjectCopy, ObjectInfo, Reader, Space, Storage};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};

const MAX_PATHS_PER_OBJECT: usize = 20;
const CURSOR_KEY: &str = "check_cursor";

#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    pub read_data: bool,
    /// Verify this percentage of objects, continuing where the previous run stopped.
    pub subset_percent: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct Damage {
    pub id: Id,
    pub problem: String,
    /// (snapshot id, path) pairs that depend on this object, at most `MAX_PATHS_PER_OBJECT`.
    pub used_by: Vec<(Id, String)>,
    pub uses: u64,
}

#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub snapshots: u64,
    pub trees: u64,
    pub objects: u64,
    pub objects_read: u64,
    pub bytes_read: u64,
    /// Damage to what snapshots need: each one with the snapshots and paths it hurts.
    pub damaged: Vec<Damage>,
    /// Stored objects that fail verification but no snapshot references (junk left by a
    /// killed writer or stored by a hostile client): nothing is lost, `prune` removes them.
    pub unreferenced: Vec<Damage>,
    pub space: Space,
    /// For a subset check: where it started and whether it wrapped around.
    pub subset_wrapped: bool,
    /// Why the result could not be recorded for `cairn status` (e.g. a full disk); the check
    /// itself is still valid.
    pub unrecorded: Option<String>,
}

pub fn check(repo: &Repository, opts: &CheckOptions) -> Result<CheckReport> {
    // Snapshots first, then the view: a snapshot committed in between is in the view with all
    // it references, while the other order walks it against a view that lacks its objects.
    let snapshots = repo.storage().snapshots()?;
    let view = repo.reader()?;
    let mut report = CheckReport {
        objects: view.count()?,
        space: repo.storage().space()?,
        ..Default::default()
    };
    let mut bad: BTreeMap<Id, String> = BTreeMap::new();
    if opts.read_data || opts.subset_percent.is_some() {
        // A server that does not let this key read file contents refuses every chunk: that
        // is no damage, and no check of the data either.
        let storage = repo.storage();
        let rights = storage.capabilities().rights;
        rights.require(crate::storage::Right::Restore, &storage.location())?;
        let objects = select_objects(repo, &view, opts, &mut report)?;
        report.objects_read = objects.len() as u64;
        report.bytes_read = objects.iter().map(|(_, o)| o.len as u64).sum();
        let found: Vec<(Id, String)> = objects
            .par_iter()
            .filter_map(|(id, o)| verify_object(repo, &*view, id, o).err().map(|e| (*id, e)))
            .collect();
        bad.extend(found);
    }
    let mut walker = Walker {
        repo,
        view: &*view,
        bad,
        clean: HashSet::new(),
        users: HashMap::new(),
        trees: 0,
        incomplete: false,
    };
    for (id, blob) in snapshots {
        report.snapshots += 1;
        match repo.open_snapshot(&id, &blob) {
            Ok(s) => {
                walker.tree(&id, &s.root, "/")?;
            }
            Err(e) => {
                walker.incomplete = true;
                walker
                    .bad
                    .insert(id, format!("snapshot does not open: {e}"));
                walker.note(&id, &id, "(snapshot)");
            }
        }
    }
    report.trees = walker.trees;
    let Walker {
        bad,
        users,
        incomplete,
        ..
    } = walker;
    for (id, problem) in bad {
        let (uses, used_by) = users.get(&id).cloned().unwrap_or_default();
        let d = Damage {
            id,
            problem,
            used_by,
            uses,
        };
        // Unused only if the walk saw every reference: under a tree that does not read,
        // anything may be used.
        if uses == 0 && !incomplete {
            report.unreferenced.push(d);
        } else {
            report.damaged.push(d);
        }
    }
    if let Err(e) = record_last(repo.storage(), opts, report.damaged.len()) {
        report.unrecorded = Some(e.to_string());
    }
    Ok(report)
}

/// STATE key read by `cairn status`: JSON `{"time": unix, "read_data": bool, "damaged": n}`
/// (plus `"subset"`: the percentage, for `--read-data-subset`).
pub const LAST_KEY: &str = "check.last";

fn record_last(store: &dyn Storage, opts: &CheckOptions, damaged: usize) -> Result<()> {
    let subset = match opts.subset_percent.filter(|_| !opts.read_data) {
        Some(p) => format!(",\"subset\":{p}"),
        None => String::new(),
    };
    let json = format!(
        "{{\"time\":{},\"read_data\":{},\"damaged\":{damaged}{subset}}}",
        crate::util::now_unix(),
        opts.read_data
    );
    store.set_state(LAST_KEY, json.as_bytes())
}

/// Record a key-free check (`check --storage-only`) for `cairn status`.
pub fn record_storage_check(store: &dyn Storage, damaged: usize) -> Result<()> {
    let json = format!(
        "{{\"time\":{},\"read_data\":false,\"storage_only\":true,\"damaged\":{damaged}}}",
        crate::util::now_unix()
    );
    store.set_state(LAST_KEY, json.as_bytes())
}

/// Every object, or the next `--read-data-subset` share of them from the stored cursor.
fn select_objects(
    repo: &Repository,
    view: &dyn Reader,
    opts: &CheckOptions,
    report: &mut CheckReport,
) -> Result<Vec<(Id, ObjectInfo)>> {
    let Some(pct) = opts.subset_percent.filter(|_| !opts.read_data) else {
        return list_from(view, &Id::default(), usize::MAX);
    };
    if !(pct > 0.0 && pct <= 100.0) {
        return Err(Error::Usage(
            "--read-data-subset takes a percentage between 0 and 100".into(),
        ));
    }
    let total = view.count()?;
    let want = ((total as f64) * pct / 100.0).ceil() as usize;
    let cursor = repo
        .storage()
        .state(CURSOR_KEY)?
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .map(Id)
        .unwrap_or_default();
    let mut objects = list_from(view, &cursor, want)?;
    if objects.len() < want {
        report.subset_wrapped = true;
        let more = list_from(view, &Id::default(), want - objects.len())?;
        objects.extend(more.into_iter().filter(|(id, _)| *id < cursor));
    }
    let next = match objects.last() {
        Some((id, _)) => next_id(id),
        None => Id::default(),
    };
    repo.storage().set_state(CURSOR_KEY, &next.0)?;
    Ok(objects)
}

/// Up to `want` objects from `from` on, in id order, listed a page at a time.
fn list_from(view: &dyn Reader, from: &Id, want: usize) -> Result<Vec<(Id, ObjectInfo)>> {
    const PAGE: usize = 64 * 1024;
    let mut out: Vec<(Id, ObjectInfo)> = Vec::new();
    let mut at = *from;
    while out.len() < want {
        let page = view.list(&at, PAGE.min(want - out.len()))?;
        let Some((last, _)) = page.last() else { break };
        let (last, full) = (*last, page.len() == PAGE.min(want - out.len()));
        out.extend(page);
        if !full || last.0 == [0xff; 32] {
            break;
        }
        at = next_id(&last);
    }
    Ok(out)
}

/// The id after `id`, wrapping to the first.
fn next_id(id: &Id) -> Id {
    id.next().unwrap_or_default()
}

fn verify_object(
    repo: &Repository,
    view: &dyn Reader,
    id: &Id,
    info: &ObjectInfo,
) -> std::result::Result<Vec<u8>, String> {
    let (kind, sealed) = view.read(id).map_err(|e| e.to_string())?;
    if checksum(&sealed) != info.check || kind != info.kind {
        return Err("stored bytes do not match their checksum (disk damage)".into());
    }
    repo.keys()
        .open_verified(kind, id, &sealed)
        .map(|_| sealed)
        .map_err(|e| match e {
            Error::Corrupt { reason, .. } => reason,
            other => other.to_string(),
        })
}

struct Walker<'a> {
    repo: &'a Repository,
    view: &'a dyn Reader,
    bad: BTreeMap<Id, String>,
    /// Trees known to reference no damaged object.
    clean: HashSet<Id>,
    users: HashMap<Id, (u64, Vec<(Id, String)>)>,
    trees: u64,
    /// A snapshot, tree or content list did not read, so some references were not seen.
    incomplete: bool,
}

impl Walker<'_> {
    fn note(&mut self, object: &Id, snapshot: &Id, path: &str) {
        let u = self.users.entry(*object).or_default();
        u.0 += 1;
        if u.1.len() < MAX_PATHS_PER_OBJECT {
            u.1.push((*snapshot, path.to_string()));
        }
    }

    /// Check one reference: present, and (if not read already) loadable for trees/lists.
    fn exists(&mut self, id: &Id) -> Result<bool> {
        if self.bad.contains_key(id) {
            return Ok(false);
        }
        if !self.view.has(id)? {
            self.bad.insert(*id, "missing from the repository".into());
            return Ok(false);
        }
        Ok(true)
    }

    /// Walk a tree; returns true if nothing under it is damaged.
    fn tree(&mut self, snap: &Id, id: &Id, path: &str) -> Result<bool> {
        if self.clean.contains(id) {
            return Ok(true);
        }
        if !self.exists(id)? {
            self.note(id, snap, path);
            self.incomplete = true;
            return Ok(false);
        }
        let tree: Tree = match self.repo.load_tree(self.view, id) {
            Ok(t) => t,
            Err(e) if e.is_damage() || matches!(e, Error::Format(_)) => {
                self.incomplete = true;
                self.bad.insert(*id, reason(e));
                self.note(id, snap, path);
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        self.trees += 1;
        let mut ok = true;
        for e in &tree.entries {
            let p = format!(
                "{}/{}",
                path.trim_end_matches('/'),
                String::from_utf8_lossy(&e.name)
            );
            if let Some(sub) = e.subtree {
                ok &= self.tree(snap, &sub, &p)?;
            }
            ok &= self.content(snap, &e.content, &p)?;
        }
        if ok {
            self.clean.insert(*id);
        }
        Ok(ok)
    }

    fn content(&mut self, snap: &Id, content: &Content, path: &str) -> Result<bool> {
        let mut ok = true;
        match content {
            Content::None => {}
            Content::Inline(extents) => {
                for id in extents.iter().filter_map(|x| x.id) {
                    if !self.exists(&id)? {
                        self.note(&id, snap, path);
                        ok = false;
                    }
                }
            }
            Content::Lists(lists) => {
                for l in lists {
                    if !self.exists(&l.id)? {
                        self.note(&l.id, snap, path);
                        self.incomplete = true;
                        ok = false;
                        continue;
                    }
                    match self.repo.extents(self.view, &Content::Lists(vec![*l])) {
                        Ok(x) => ok &= self.content(snap, &Content::Inline(x), path)?,
                        Err(e) if e.is_damage() || matches!(e, Error::Format(_)) => {
                            self.incomplete = true;
                            self.bad.insert(l.id, reason(e));
                            self.note(&l.id, snap, path);
                            ok = false;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(ok)
    }
}

fn reason(e: Error) -> String {
    match e {
        Error::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// What `rebuild_from` did.
#[derive(Clone, Debug)]
pub struct RebuildReport {
    /// Where the damaged database file was moved (kept for salvage).
    pub kept: std::path::PathBuf,
    pub snapshots: u64,
    pub objects: u64,
    pub bytes: u64,
}

/// Rebuild the repository at `dir`, whose database does not open at all, from `replica` (a
/// replica opened with the same password): the damaged file is moved aside (never deleted)
/// as `cairn.redb.damaged-<unix time>`, a new database is made with the replica's config and
/// key slots, and everything the replica holds is copied back verbatim by a local sync. What
/// the primary held that never reached the replica (newer snapshots, its sync targets, its
/// state records) cannot be had from there.
pub fn rebuild_from(dir: &std::path::Path, replica: &Repository) -> Result<RebuildReport> {
    let file = dir.join(crate::storage::redb::DB_FILE);
    let kept = dir.join(format!(
        "{}{}",
        crate::storage::redb::DAMAGED_PREFIX,
        crate::util::now_unix()
    ));
    std::fs::rename(&file, &kept)
        .map_err(|e| Error::io(format!("moving {} aside", file.display()), e))?;
    let (store, _) = crate::sync::open_local_replica(replica, dir)?;
    let mut target = crate::sync::LocalTarget::new(&*store)?;
    let mut report = crate::sync::SyncReport::default();
    crate::sync::sync(
        replica,
        &mut target,
        &crate::sync::SyncOptions::default(),
        &crate::sync::SyncProgress::default(),
        &mut report,
    )?;
    Ok(RebuildReport {
        kept,
        snapshots: report.snapshots_sent,
        objects: report.objects_sent,
        bytes: report.bytes_sent,
    })
}

/// What `repair_from` did for each damaged object.
#[derive(Clone, Debug, Default)]
pub struct RepairReport {
    pub repaired: Vec<Id>,
    /// Objects the replica could not supply intact, with the reason.
    pub failed: Vec<(Id, String)>,
}

/// Copy intact sealed copies of `damaged` objects (and snapshots) from `replica` — a repository
/// with the same repo id and keys — back into `repo`, verbatim. Each copy is verified first
/// (stored checksum, decryption, and content against its id); nothing is ever invented. Index
/// rows of damaged objects move to the new copies.
pub fn repair_from(
    repo: &Repository,
    replica: &Repository,
    damaged: &[Id],
) -> Result<RepairReport> {
    if repo.config().repo_id != replica.config().repo_id {
        return Err(Error::Usage(format!(
            "{} is not a replica of this repository (different repository id)",
            replica.storage().location()
        )));
    }
    let mut copies = LocalCopies {
        replica,
        view: replica.reader()?,
        snaps: replica.storage().snapshots()?.into_iter().collect(),
    };
    repair_with(repo, damaged, &mut copies)
}

/// Where a repair finds copies. The inner `Err` says why this copy cannot be used (missing,
/// damaged); the outer one stops the repair (the replica cannot be read at all).
trait Copies {
    fn object(&mut self, id: &Id) -> Result<std::result::Result<(Kind, Vec<u8>), String>>;
    fn snapshot(&mut self, id: &Id) -> Result<std::result::Result<Vec<u8>, String>>;
}

/// Store verified copies of the damaged objects and snapshots through the seam
/// (`Storage::repair`), in groups of about `REPAIR_GROUP` bytes.
fn repair_with(repo: &Repository, damaged: &[Id], copies: &mut dyn Copies) -> Result<RepairReport> {
    let own_snaps: HashSet<Id> = repo
        .storage()
        .snapshots()?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let mut report = RepairReport::default();
    let mut pending = Pending::new(repo.storage());
    let mut snapshots = Vec::new();
    for id in damaged {
        if own_snaps.contains(id) {
            match copies.snapshot(id)? {
                Ok(blob) => snapshots.push((*id, blob)),
                Err(why) => report.failed.push((*id, why)),
            }
            continue;
        }
        match copies.object(id)? {
            Ok((kind, sealed)) => pending.push(
                ObjectCopy {
                    id: *id,
                    kind,
                    sealed,
                },
                &mut report,
            )?,
            Err(why) => report.failed.push((*id, why)),
        }
    }
    pending.finish(snapshots, &mut report)?;
    Ok(report)
}

/// Bytes of copies handed to the store at once.
const REPAIR_GROUP: usize = 32 << 20;

/// Copies on their way to `Storage::repair`, handed over every `REPAIR_GROUP` bytes; the
/// report notes which the store took.
struct Pending<'s> {
    store: &'s dyn Storage,
    objects: Vec<ObjectCopy>,
    bytes: usize,
}

impl<'s> Pending<'s> {
    fn new(store: &'s dyn Storage) -> Pending<'s> {
        Pending {
            store,
            objects: Vec::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, copy: ObjectCopy, report: &mut RepairReport) -> Result<()> {
        self.bytes += copy.sealed.len();
        self.objects.push(copy);
        if self.bytes >= REPAIR_GROUP {
            self.hand_over(Vec::new(), report)?;
        }
        Ok(())
    }

    /// Hand over what is left, with `snapshots`.
    fn finish(mut self, snapshots: Vec<(Id, Vec<u8>)>, report: &mut RepairReport) -> Result<()> {
        self.hand_over(snapshots, report)
    }

    fn hand_over(
        &mut self,
        snapshots: Vec<(Id, Vec<u8>)>,
        report: &mut RepairReport,
    ) -> Result<()> {
        if self.objects.is_empty() && snapshots.is_empty() {
            return Ok(());
        }
        let refused: HashMap<Id, String> = self
            .store
            .repair(&self.objects, &snapshots)?
            .into_iter()
            .collect();
        let ids = self.objects.drain(..).map(|o| o.id);
        for id in ids.chain(snapshots.into_iter().map(|(id, _)| id)) {
            match refused.get(&id) {
                Some(why) => report.failed.push((id, why.clone())),
                None => report.repaired.push(id),
            }
        }
        self.bytes = 0;
        Ok(())
    }
}

/// A local replica, opened with its keys (the same as ours).
struct LocalCopies<'a> {
    replica: &'a Repository,
    view: Box<dyn Reader>,
    snaps: HashMap<Id, Vec<u8>>,
}

impl Copies for LocalCopies<'_> {
    fn object(&mut self, id: &Id) -> Result<std::result::Result<(Kind, Vec<u8>), String>> {
        Ok(intact_object(self.replica, &*self.view, id))
    }

    fn snapshot(&mut self, id: &Id) -> Result<std::result::Result<Vec<u8>, String>> {
        Ok(intact_snapshot(self.replica, &self.snaps, id))
    }
}

/// A replica behind the sync protocol; its copies are verified with our keys.
struct TargetCopies<'a> {
    repo: &'a Repository,
    target: &'a mut dyn crate::sync::Target,
}

impl Copies for TargetCopies<'_> {
    fn object(&mut self, id: &Id) -> Result<std::result::Result<(Kind, Vec<u8>), String>> {
        fetch_object(self.repo, self.target, id)
    }

    fn snapshot(&mut self, id: &Id) -> Result<std::result::Result<Vec<u8>, String>> {
        fetch_snapshot(self.repo, self.target, id)
    }
}

fn intact_object(
    replica: &Repository,
    view: &dyn Reader,
    id: &Id,
) -> std::result::Result<(Kind, Vec<u8>), String> {
    let info = view
        .info(id)
        .map_err(|e| e.to_string())?
        .ok_or("the replica does not have it either")?;
    let sealed = verify_object(replica, view, id, &info)
        .map_err(|e| format!("the replica's copy is damaged too: {e}"))?;
    Ok((info.kind, sealed))
}

fn intact_snapshot(
    replica: &Repository,
    snaps: &HashMap<Id, Vec<u8>>,
    id: &Id,
) -> std::result::Result<Vec<u8>, String> {
    let blob = snaps
        .get(id)
        .ok_or("the replica does not have this snapshot")?;
    snapshot_copy_intact(replica, id, blob.clone())
}

/// A replica's copy of snapshot `id`, if it opens with `keys_of`'s keys and decodes.
fn snapshot_copy_intact(
    keys_of: &Repository,
    id: &Id,
    blob: Vec<u8>,
) -> std::result::Result<Vec<u8>, String> {
    keys_of
        .open_snapshot(id, &blob)
        .map_err(|e| format!("the replica's copy is damaged too: {e}"))?;
    Ok(blob)
}

/// `repair_from` with the copies read from a replica behind the sync protocol (an ssh
/// target, after `handshake_existing`). Each copy is verified here, with this repository's
/// keys (a replica shares them), before it is stored; the replica is only read.
pub fn repair_from_target(
    repo: &Repository,
    target: &mut dyn crate::sync::Target,
    damaged: &[Id],
) -> Result<RepairReport> {
    repair_with(repo, damaged, &mut TargetCopies { repo, target })
}

/// The replica's copy of object `id`, verified; `Err` inside for a copy that is missing or
/// damaged (the outer error is the connection's).
fn fetch_object(
    repo: &Repository,
    target: &mut dyn crate::sync::Target,
    id: &Id,
) -> Result<std::result::Result<(Kind, Vec<u8>), String>> {
    use crate::sync::proto::{check_object, Request, Response};
    let o = match target.call(Request::GetObject(*id))? {
        Response::Object(Some(o)) if o.id == *id => o,
        Response::Object(Some(_)) => return Ok(Err("the replica sent another object".into())),
        Response::Object(None) => return Ok(Err("the replica does not have it either".into())),
        other => return Err(crate::sync::remote::unexpected(&other)),
    };
    let damaged = |e: Error| format!("the replica's copy is damaged too: {}", reason(e));
    let kind = match check_object(&o) {
        Ok(kind) => kind,
        Err(e) => return Ok(Err(damaged(e))),
    };
    Ok(repo
        .keys()
        .open_verified(kind, id, &o.sealed)
        .map(|_| (kind, o.sealed))
        .map_err(damaged))
}

fn fetch_snapshot(
    repo: &Repository,
    target: &mut dyn crate::sync::Target,
    id: &Id,
) -> Result<std::result::Result<Vec<u8>, String>> {
    use crate::sync::proto::{Request, Response};
    match target.call(Request::GetSnapshot(*id))? {
        Response::SnapshotBlob(Some(blob)) => Ok(snapshot_copy_intact(repo, id, blob)),
        Response::SnapshotBlob(None) => Ok(Err("the replica does not have this snapshot".into())),
        other => Err(crate::sync::remote::unexpected(&other)),
    }
}

/// Key-less check of any store through the seam (an S3 bucket, a server): every object is
/// read and its stored bytes are compared with the check the store recorded. A store that
/// keeps the bytes on its own disk (redb) has the deeper `check_storage` below.
pub fn check_storage_through(store: &dyn Storage) -> Result<crate::storage::StorageReport> {
    use crate::storage::{StorageProblem, StorageReport};
    const PAGE: usize = 4096;
    let reader = store.reader()?;
    let mut report = StorageReport::default();
    let mut from = Id::default();
    loop {
        let page = reader.list(&from, PAGE)?;
        let ids: Vec<Id> = page.iter().map(|(id, _)| *id).collect();
        let infos: HashMap<Id, ObjectInfo> = page.iter().copied().collect();
        reader.read_many(&ids, &mut |id, got| {
            report.objects += 1;
            let problem = match got {
                Ok((kind, bytes)) => {
                    report.bytes += bytes.len() as u64;
                    let info = infos[&id];
                    if kind != info.kind
                        || bytes.len() != info.len as usize
                        || checksum(&bytes) != info.check
                    {
                        Some("the stored bytes do not match their checksum".to_string())
                    } else {
                        None
                    }
                }
                Err(e) if e.is_damage() => Some(e.to_string()),
                Err(e) => return Err(e),
            };
            if let Some(problem) = problem {
                report.problems.push(StorageProblem::Object { id, problem });
            }
            Ok(())
        })?;
        match (page.len() < PAGE, ids.last().and_then(Id::next)) {
            (false, Some(next)) => from = next,
            _ => break,
        }
    }
    Ok(report)
}

/// Key-less repair of any store through the seam: each object whose stored bytes fail their
/// recorded checksum (`check_storage_through`) gets the replica's copy back, if that copy
/// matches the checksum, through `Storage::repair` (which a server allows even a `backup`
/// key: it can only bring back the bytes recorded).
pub fn repair_storage_through(store: &dyn Storage, replica: &dyn Storage) -> Result<RepairReport> {
    if store.config()?.repo_id != replica.config()?.repo_id {
        return Err(Error::Usage(format!(
            "{} is not a replica of this repository (different repository id)",
            replica.location()
        )));
    }
    let damaged = check_storage_through(store)?.problems.into_iter();
    let (ours, theirs) = (store.reader()?, replica.reader()?);
    let mut report = RepairReport::default();
    let mut pending = Pending::new(store);
    for p in damaged {
        let crate::storage::StorageProblem::Object { id, .. } = p else {
            continue;
        };
        let Some(recorded) = ours.info(&id)? else {
            continue;
        };
        match theirs.read(&id) {
            Ok((kind, sealed)) if ObjectInfo::of(kind, &sealed) == recorded => {
                pending.push(ObjectCopy { id, kind, sealed }, &mut report)?
            }
            Ok(_) => report.failed.push((
                id,
                "the replica's copy does not match the recorded checksum".into(),
            )),
            Err(e) => report.failed.push((id, format!("the replica's copy: {e}"))),
        }
    }
    pending.finish(Vec::new(), &mut report)?;
    Ok(report)
}

/// Key-less check for replicas: stored checksums, pieces, and redb's own page checksums.
pub fn check_storage(dir: &std::path::Path) -> Result<crate::storage::StorageReport> {
    let mut store = Store::open(dir, crate::storage::redb::DEFAULT_DB_CACHE)?;
    let config = store.config()?;
    // redb's page check needs the writer lock; read-only media get the rest of the check.
    // Damage redb finds in its own pages is a finding, not the end of the check: the pieces
    // are verified all the same.
    let intact = match store.is_read_only() {
        true => None,
        false => match store.check_db_integrity() {
            Ok(ok) => Some(ok),
            Err(Error::Db(_)) => Some(false),
            Err(e) => return Err(e),
        },
    };
    let mut report = store.verify_storage(config.piece_size)?;
    report.db_intact = intact;
    report.marked_for_repack = store.marked_for_repack()?.len() as u64;
    Ok(report)
}

/// Key-less repair: copy back, verbatim, replica copies of objects whose stored bytes in `dir`
/// fail their checksum. A copy is accepted only if it hashes to the checksum this repository's
/// own index recorded when the object was written (so no password is needed, and nothing but
/// the original bytes can come back). Objects missing from the index cannot be verified
/// without keys and are left alone.
pub fn repair_storage_from(
    dir: &std::path::Path,
    replica: &std::path::Path,
) -> Result<RepairReport> {
    let store = Store::open(dir, crate::storage::redb::DEFAULT_DB_CACHE)?;
    let other = Store::open(replica, crate::storage::redb::DEFAULT_DB_CACHE)?;
    let (cfg, other_cfg) = (store.config()?, other.config()?);
    if cfg.repo_id != other_cfg.repo_id {
        return Err(Error::Usage(format!(
            "{} is not a replica of this repository (different repository id)",
            replica.display()
        )));
    }
    let damaged: Vec<Id> = store
        .verify_storage(cfg.piece_size)?
        .problems
        .into_iter()
        .filter_map(|p| match p {
            crate::storage::StorageProblem::Object { id, .. } => Some(id),
            crate::storage::StorageProblem::Piece { .. } => None,
        })
        .collect();
    let (view, theirs) = (store.view()?, other.view()?);
    let mut report = RepairReport::default();
    let mut pending = Pending::new(&store);
    for id in damaged {
        let Some(loc) = view.locate(&id)? else {
            continue;
        };
        match verbatim_copy(&theirs, &id, &loc, other_cfg.piece_size) {
            Ok(sealed) => {
                let kind = loc.kind;
                pending.push(ObjectCopy { id, kind, sealed }, &mut report)?
            }
            Err(why) => report.failed.push((id, why)),
        }
    }
    drop(view);
    pending.finish(Vec::new(), &mut report)?;
    Ok(report)
}

/// The replica's bytes of `id` if they hash to the checksum `ours` recorded.
fn verbatim_copy(
    theirs: &View,
    id: &Id,
    ours: &Location,
    piece_size: u32,
) -> std::result::Result<Vec<u8>, String> {
    let loc = theirs
        .locate(id)
        .map_err(|e| e.to_string())?
        .ok_or("the replica does not have it either")?;
    let sealed = theirs
        .read_sealed(id, &loc, piece_size)
        .map_err(|e| e.to_string())?;
    if checksum(&sealed) != ours.check {
        return Err("the replica's copy does not match the recorded checksum".into());
    }
    Ok(sealed)
}
