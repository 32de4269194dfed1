//! Sync to secondary repositories (replicas): sealed objects travel verbatim, negotiated by
//! fingerprints, snapshots last. See DESIGN.md, "Sync protocol".
//!
//! The sending side ([`sync`]) walks the snapshots it sends by their public references
//! (`graph`), so it needs no key unless the repository holds objects sealed before format 2;
//! the receiving side ([`sink::Sink`]) never needs a key.

pub(crate) mod mux;
pub mod plan;
pub mod proto;
pub mod remote;
pub mod send;
pub mod serve;
pub mod sink;
pub mod targets;

use crate::error::{Error, Result};
use crate::graph::Source;
use crate::id::Id;
use crate::repo::OpenOptions;
use crate::storage::{Storage, Url};
use proto::{Request, Response};
use remote::{expect_done, unexpected};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

pub use remote::{SshOptions, SshTarget, SshUrl, StreamTarget};
pub use sink::Sink;

/// The receiving end of a sync, after the handshake: one request, one response.
pub trait Target {
    fn call(&mut self, req: Request) -> Result<Response>;

    /// Send a request whose reply may come later: `Some` if it was answered at once (the
    /// default), `None` if it is in flight and `recv` returns its reply, in order.
    fn send(&mut self, req: Request) -> Result<Option<Response>> {
        self.call(req).map(Some)
    }

    fn recv(&mut self) -> Result<Response> {
        Err(proto::protocol_error("no request in flight"))
    }
}

/// A replica written directly through its store, in this process: a path, or any store
/// `storage::open` reaches (everything but the ssh target, which speaks the sync protocol to
/// a `cairn serve`).
pub struct LocalTarget<'s> {
    sink: Sink<'s>,
}

impl<'s> LocalTarget<'s> {
    pub fn new(store: &'s dyn Storage) -> Result<LocalTarget<'s>> {
        Ok(LocalTarget {
            sink: Sink::new(store, false)?,
        })
    }
}

impl Target for LocalTarget<'_> {
    fn call(&mut self, req: Request) -> Result<Response> {
        self.sink.try_handle(req)
    }
}

/// Open the replica at `url`, creating it from `primary` if there is none yet (`storage::open`
/// says `Error::RepoNotFound`): the primary's config and key slots, still wrapped. Returns the
/// store and whether it was created. A repository with another id is refused and not written.
pub fn open_replica_at(
    primary: &dyn Source,
    url: &Url,
    opts: &OpenOptions,
) -> Result<(Box<dyn Storage>, bool)> {
    let config = primary.storage().config()?;
    let repo_id = config.repo_id;
    if let Some(store) = sink::open_replica(url, &repo_id, opts)? {
        return Ok((store, false));
    }
    let slots = slot_blobs(primary)?;
    match sink::create_replica(url, &repo_id, &config.encode(), &slots, opts) {
        Ok(store) => Ok((store, true)),
        // Another sync created it since the open: use that one (if it is ours).
        Err(Error::RepoExists(_)) => match sink::open_replica(url, &repo_id, opts)? {
            Some(store) => Ok((store, false)),
            None => Err(Error::NotFound(format!(
                "{url}: a repository appeared and went away while the replica was being created"
            ))),
        },
        Err(e) => Err(e),
    }
}

/// `open_replica_at` for a path, with the default options (a rebuild from a replica, tests).
pub fn open_local_replica(primary: &dyn Source, dir: &Path) -> Result<(Box<dyn Storage>, bool)> {
    open_replica_at(
        primary,
        &Url::Local(dir.to_path_buf()),
        &OpenOptions::default(),
    )
}

#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Cap on bytes sent per second.
    pub limit_rate: Option<u64>,
    /// Bytes of objects per `PutObjects` request.
    pub batch_bytes: usize,
    /// Ids per `Have` request.
    pub have_batch: usize,
    /// Also delete from the target the snapshots this repository no longer has (`--delete`).
    pub delete: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            limit_rate: None,
            batch_bytes: 8 << 20,
            have_batch: 4096,
            delete: false,
        }
    }
}

/// Live counters for a progress display.
#[derive(Default)]
pub struct SyncProgress {
    pub objects: AtomicU64,
    pub bytes: AtomicU64,
    pub total_objects: AtomicU64,
    pub total_bytes: AtomicU64,
}

/// What one sync did. Filled as it goes, so it is meaningful after a failure too.
#[derive(Clone, Debug, Default)]
pub struct SyncReport {
    pub created: bool,
    pub snapshots_sent: u64,
    pub objects_sent: u64,
    pub bytes_sent: u64,
    pub round_trips: u64,
    /// Object ids the negotiation asked the target about.
    pub ids_asked: u64,
    /// Snapshots the target holds (as last known).
    pub target_snapshots: Vec<Id>,
    /// Snapshots the target holds with other bytes than this repository: tampered or damaged.
    pub differing: Vec<Id>,
    /// Snapshots `--delete` removed from the target.
    pub snapshots_deleted: u64,
    /// Why the target refused `--delete` (append-only): everything else was synced.
    pub delete_refused: Option<String>,
}

/// Push every snapshot the target lacks, with everything they need.
pub fn sync(
    repo: &dyn Source,
    target: &mut dyn Target,
    opts: &SyncOptions,
    progress: &SyncProgress,
    report: &mut SyncReport,
) -> Result<()> {
    let slots = slot_blobs(repo)?;
    expect_done(target.call(Request::AddKeySlots(slots))?)?;
    let theirs = list_snapshot_checks(target)?;
    report.target_snapshots = theirs.keys().copied().collect();
    report.target_snapshots.sort();
    // Snapshots first, then the view: the view is newer, so it holds all they reference.
    let blobs = repo.storage().snapshots()?;
    let ours: Vec<Id> = blobs.iter().map(|(id, _)| *id).collect();
    let mut lacking: Vec<(Id, Vec<u8>)> = Vec::new();
    report.differing.clear();
    for (id, blob) in blobs {
        match theirs.get(&id) {
            Some(check) if *check == crate::storage::checksum(&blob) => {}
            Some(_) => report.differing.push(id),
            None => lacking.push((id, blob)),
        }
    }
    if !lacking.is_empty() {
        push(repo, target, lacking, opts, progress, report)?;
    }
    if opts.delete {
        let ours: std::collections::HashSet<Id> = ours.into_iter().collect();
        let extra: Vec<Id> = theirs
            .keys()
            .filter(|id| !ours.contains(*id))
            .copied()
            .collect();
        delete_extra(target, extra, report)?;
    }
    differing_error(report)
}

/// Send the snapshots the target lacks, with everything they need, snapshots last.
fn push(
    repo: &dyn Source,
    target: &mut dyn Target,
    lacking: Vec<(Id, Vec<u8>)>,
    opts: &SyncOptions,
    progress: &SyncProgress,
    report: &mut SyncReport,
) -> Result<()> {
    let view = repo.storage().reader()?;
    let graph = repo.graph();
    let mut roots = Vec::new();
    for (id, blob) in &lacking {
        roots.extend(graph.snapshot(id, blob)?.trees);
    }
    let plan = plan::plan(graph, &*view, target, &roots, opts.have_batch)?;
    report.round_trips += plan.round_trips;
    report.ids_asked += plan.asked;
    send::send_objects(&*view, target, &plan, opts, progress, report)?;
    let ids: Vec<Id> = lacking.iter().map(|(id, _)| *id).collect();
    expect_done(target.call(Request::PutSnapshots(lacking))?)?;
    report.round_trips += 1;
    report.snapshots_sent = ids.len() as u64;
    report.target_snapshots.extend(ids);
    Ok(())
}

/// `--delete`: remove from the target the snapshots this repository no longer has (its own
/// prune frees their data later). An append-only target refuses: noted, not fatal.
fn delete_extra(target: &mut dyn Target, extra: Vec<Id>, report: &mut SyncReport) -> Result<()> {
    for part in extra.chunks(proto::MAX_HAVE) {
        match target.call(Request::DeleteSnapshots(part.to_vec())) {
            Ok(r) => expect_done(r)?,
            // Refused here (a store), or answered as an error by a `cairn serve` (whose sync
            // replies carry text only): the deletion did not happen, the rest stands.
            Err(Error::Refused(why)) => {
                report.delete_refused = Some(why);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        report.round_trips += 1;
        report.snapshots_deleted += part.len() as u64;
        report.target_snapshots.retain(|id| !part.contains(id));
    }
    Ok(())
}

/// A target whose copy of a snapshot is not the one this repository holds has been tampered
/// with or damaged: the sync of that target fails, naming the snapshots (the rest was sent).
fn differing_error(report: &SyncReport) -> Result<()> {
    let Some(first) = report.differing.first() else {
        return Ok(());
    };
    Err(Error::corrupt(
        first,
        format!(
            "the target holds other bytes for {} snapshot(s) than this repository (first: {first}): replaced or damaged on the target, whose copy cannot be trusted; have its administrator run `cairn check` there",
            report.differing.len()
        ),
    ))
}

/// The repository's key slots, still wrapped, as a replica receives them.
pub fn slot_blobs(repo: &dyn Source) -> Result<Vec<Vec<u8>>> {
    Ok(repo
        .storage()
        .key_slots()?
        .into_iter()
        .map(|(_, b)| b)
        .collect())
}

/// The target's snapshots with the checksums of their stored blobs.
pub fn list_snapshot_checks(
    target: &mut dyn Target,
) -> Result<std::collections::HashMap<Id, [u8; 16]>> {
    match target.call(Request::ListSnapshotChecks)? {
        Response::SnapshotChecks(list) => Ok(list.into_iter().collect()),
        other => Err(unexpected(&other)),
    }
}

pub fn list_snapshots(target: &mut dyn Target) -> Result<Vec<Id>> {
    match target.call(Request::ListSnapshots)? {
        Response::Snapshots(ids) => Ok(ids),
        other => Err(unexpected(&other)),
    }
}

/// Counters in `progress` and `report` advance together.
fn count(progress: &SyncProgress, report: &mut SyncReport, objects: u64, bytes: u64) {
    progress.objects.fetch_add(objects, Ordering::Relaxed);
    progress.bytes.fetch_add(bytes, Ordering::Relaxed);
    report.objects_sent += objects;
    report.bytes_sent += bytes;
}
