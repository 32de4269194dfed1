//! The receiving side of a sync: applies requests to a replica's store without any key.
//! Used directly by the local target (any store behind the seam: a path, and whatever
//! `storage::open` reaches) and by `cairn serve` behind the wire protocol.
//!
//! Everything here goes through `storage::Storage` and its `Reader`/`Writer`; the guarantees
//! the receiver gives (DESIGN.md §7) rest on the seam's contract (`storage` module docs), not
//! on the redb store's own API. Where one used to rest on redb behaviour, the comment at the
//! place says which and what the trait promises instead.

use super::proto::{self, Request, Response, WireObject};
use crate::crypto::{KeySlot, MAX_KEY_SLOTS};
use crate::error::{Error, Result};
use crate::format::Config;
use crate::id::Id;
use crate::repo::OpenOptions;
use crate::storage::{self, rights, Reader, Right, Rights, Storage, Url, Writer, WriterOptions};
use std::collections::HashSet;

/// How many bytes the receiving writer buffers before it stores a batch by itself.
pub const SINK_BATCH_BYTES: usize = 32 << 20;

/// Ids a sink remembers adding before it commits by itself (memory stays bounded: about
/// 50 MiB).
const ADDED_MAX: usize = 1 << 20;

/// The refusal of a repository with another id. It never names the other id: a `cairn serve`
/// answers it to whoever connects, and a repository id is not theirs to learn.
fn foreign(location: &str, ours: &[u8; 16]) -> Error {
    Error::Refused(format!(
        "{location} holds another repository, not a replica of this repository ({}); refusing to touch it",
        hex::encode(ours)
    ))
}

/// A key slot sent by a peer: it must decode, and its Argon2 parameters must be within the
/// limits (a hostile client could otherwise make every open of the replica slow and huge).
fn peer_slot(bytes: &[u8]) -> Result<KeySlot> {
    let slot = postcard::from_bytes::<KeySlot>(bytes)
        .map_err(|_| proto::protocol_error("undecodable key slot"))?;
    slot.kdf.check_limits()?;
    Ok(slot)
}

/// Open the replica at `url` and make sure it shares `repo_id`; `None` when there is no
/// repository there (`storage::open` says `Error::RepoNotFound`). A repository with another
/// id is refused before anything is written to it.
pub fn open_replica(
    url: &Url,
    repo_id: &[u8; 16],
    opts: &OpenOptions,
) -> Result<Option<Box<dyn Storage>>> {
    let store = match storage::open(url, opts) {
        Ok(store) => store,
        Err(Error::RepoNotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if &store.config()?.repo_id != repo_id {
        return Err(foreign(&store.location(), repo_id));
    }
    Ok(Some(store))
}

/// Create a replica at `url`: a new repository with the primary's config and its key slots,
/// still wrapped. Never touches an existing repository (`storage::create` refuses one, and a
/// non-empty directory).
pub fn create_replica(
    url: &Url,
    repo_id: &[u8; 16],
    config: &[u8],
    key_slots: &[Vec<u8>],
    opts: &OpenOptions,
) -> Result<Box<dyn Storage>> {
    let decoded = Config::decode(config)?;
    if &decoded.repo_id != repo_id {
        return Err(proto::protocol_error(
            "the config sent for the replica has another repository id",
        ));
    }
    if key_slots.is_empty() {
        return Err(proto::protocol_error(
            "a replica needs at least one key slot",
        ));
    }
    if key_slots.len() > MAX_KEY_SLOTS {
        return Err(too_many_slots());
    }
    for s in key_slots {
        peer_slot(s)?;
    }
    // `storage::create` stores `decoded.encode()`: the bytes a primary's config has (a config
    // is only ever written by `Config::encode`), and for a peer's the canonical form of what
    // it sent, which decodes to the same config.
    let store = storage::create(url, &decoded, opts)?;
    for s in key_slots {
        store.add_key_slot(s)?;
    }
    Ok(store)
}

fn too_many_slots() -> Error {
    Error::Refused(format!(
        "a repository holds at most {MAX_KEY_SLOTS} key slots; remove unused ones with `cairn key remove` on the primary"
    ))
}

/// Add the slots the store lacks (all or none); returns how many were added.
pub fn add_missing_slots(store: &dyn Storage, slots: &[Vec<u8>]) -> Result<u64> {
    let have: Vec<Vec<u8>> = store.key_slots()?.into_iter().map(|(_, b)| b).collect();
    let new: Vec<&Vec<u8>> = slots.iter().filter(|s| !have.contains(s)).collect();
    if have.len() + new.len() > MAX_KEY_SLOTS {
        return Err(too_many_slots());
    }
    for s in &new {
        peer_slot(s)?;
    }
    for s in &new {
        store.add_key_slot(s)?;
    }
    Ok(new.len() as u64)
}

/// Applies sync requests to one replica store.
pub struct Sink<'s> {
    store: &'s dyn Storage,
    /// Objects arrive through one writer for the whole session. It stores a batch by itself
    /// once `SINK_BATCH_BYTES` are buffered (`WriterOptions::batch_bytes`: for the redb store
    /// the same `Packer` as before, so the same packs and commits), which is how the receiver
    /// "commits in order as batches fill" even when it is killed before it can flush.
    writer: Box<dyn Writer + 's>,
    /// What the client may do (`cairn serve --allow`); reading a chunk needs `restore`.
    rights: Rights,
    /// Whether objects were added since the last commit.
    dirty: bool,
    /// Registered like a backup's: a prune of this replica waits while objects arrive, so
    /// objects the sender was told the replica has are not swept away mid-sync.
    session: u64,
    /// The reader requests are answered from, opened at the first request that needs one
    /// (after `session` began: nothing it shows can be swept while the sink lives) and
    /// dropped at the sink's own commits, so the next one shows what this sink stored.
    view: Option<Box<dyn Reader>>,
    /// Whether `view` is kept across requests: where opening a reader costs requests (a
    /// remote store; an S3 store lists its index). A local store's costs nothing, and a
    /// redb read transaction kept open would keep the pages the sink's own batches free
    /// from reuse.
    keep_view: bool,
    /// Ids added to the writer since the last commit (the view may not show them): not
    /// added twice. Forgotten when the writer fails (it may have dropped them).
    added: HashSet<Id>,
}

impl<'s> Sink<'s> {
    /// A receiver writing to `store`. `append_only` refuses deletions (`cairn serve
    /// --append-only`); a store with fewer rights (`Capabilities`) is served with those.
    pub fn new(store: &'s dyn Storage, append_only: bool) -> Result<Sink<'s>> {
        Sink::serving(store, Rights::append_only_if(append_only))
    }

    /// A receiver for a client with `rights`.
    pub(crate) fn serving(store: &'s dyn Storage, rights: Rights) -> Result<Sink<'s>> {
        let rights = rights.and(store.capabilities().rights);
        let writer = store.writer(WriterOptions {
            batch_bytes: SINK_BATCH_BYTES,
            ..WriterOptions::default()
        })?;
        let session = store.begin_session(&crate::util::session_info())?;
        Ok(Sink {
            store,
            writer,
            rights,
            dirty: false,
            session,
            view: None,
            keep_view: store.capabilities().remote,
            added: HashSet::new(),
        })
    }

    /// The reader of what is committed (see `view`).
    fn view(&mut self) -> Result<&dyn Reader> {
        let view = match self.view.take() {
            Some(v) => v,
            None => self.store.reader()?,
        };
        Ok(&**self.view.insert(view))
    }

    /// After a commit of this sink's writer, or a failure of it: the next view shows
    /// whatever it stored, and nothing added before is assumed stored.
    fn after_commit(&mut self) {
        self.view = None;
        self.added.clear();
    }

    /// Answer one request; failures become `Response::Error` for the peer.
    pub fn handle(&mut self, req: Request) -> Response {
        self.try_handle(req)
            .unwrap_or_else(|e| Response::Error(e.to_string()))
    }

    pub fn try_handle(&mut self, req: Request) -> Result<Response> {
        let answer = self.answer(req);
        if !self.keep_view {
            self.view = None;
        }
        answer
    }

    fn answer(&mut self, req: Request) -> Result<Response> {
        match req {
            Request::Info => self.info(),
            Request::ListSnapshots => Ok(Response::Snapshots(self.snapshot_ids()?)),
            Request::Have(ids) => self.have(&ids),
            Request::PutObjects(objs) => self.put_objects(objs),
            Request::PutSnapshots(snaps) => self.put_snapshots(&snaps),
            Request::AddKeySlots(slots) => {
                add_missing_slots(self.store, &slots).map(|_| Response::Done)
            }
            Request::DeleteSnapshots(ids) => self.delete_snapshots(&ids),
            Request::Bye => self.flush().map(|_| Response::Done),
            Request::GetObject(id) => self.get_object(&id),
            Request::GetSnapshot(id) => Ok(Response::SnapshotBlob(
                self.store
                    .snapshots()?
                    .into_iter()
                    .find(|(s, _)| *s == id)
                    .map(|(_, blob)| blob),
            )),
            Request::ListSnapshotChecks => Ok(Response::SnapshotChecks(self.snapshot_checks()?)),
            Request::Hello { .. } | Request::Create { .. } => Err(proto::protocol_error(
                "hello or create after the session started",
            )),
            // The store protocol's requests (version 3) belong to a store connection.
            _ => Err(proto::protocol_error(
                "a store request on a sync connection",
            )),
        }
    }

    /// The stored copy, unverified (the client verifies it). One this sink added is
    /// committed first, so the view holds it.
    fn get_object(&mut self, id: &Id) -> Result<Response> {
        if self.added.contains(id) {
            self.flush()?;
        }
        let (granted, location) = (self.rights, self.store.location());
        let reader = self.view()?;
        let Some(info) = reader.info(id)? else {
            return Ok(Response::Object(None));
        };
        granted.allow(rights::to_read(info.kind), &location)?;
        let (kind, sealed) = match reader.read(id) {
            Ok(found) => found,
            // Gone between the two calls (a store whose reader is not one snapshot in time,
            // and a prune): as absent as it would have been a moment later.
            Err(Error::Missing(_)) => return Ok(Response::Object(None)),
            Err(e) => return Err(e),
        };
        Ok(Response::Object(Some(WireObject {
            id: *id,
            kind: kind as u8,
            check: info.check,
            sealed,
        })))
    }

    fn info(&mut self) -> Result<Response> {
        Ok(Response::Info {
            snapshots: self.store.snapshots()?.len() as u64,
            objects: self.view()?.count()?,
            append_only: self.rights.append_only(),
        })
    }

    /// Each snapshot's id with the checksum of its stored blob, so a sender can tell that a
    /// copy here is the one it sent.
    fn snapshot_checks(&self) -> Result<Vec<(Id, [u8; 16])>> {
        Ok(self
            .store
            .snapshots()?
            .into_iter()
            .map(|(id, blob)| (id, storage::checksum(&blob)))
            .collect())
    }

    fn snapshot_ids(&self) -> Result<Vec<Id>> {
        Ok(self
            .store
            .snapshots()?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Committed objects only (the view's), asked once for the whole list: an object this
    /// sink added but has not committed is not there yet if the sink dies.
    fn have(&mut self, ids: &[Id]) -> Result<Response> {
        if ids.len() > proto::MAX_HAVE {
            return Err(proto::protocol_error(format!(
                "have request of {} ids exceeds {}",
                ids.len(),
                proto::MAX_HAVE
            )));
        }
        // The sender checks that the answer has one flag per id.
        Ok(Response::Have(self.view()?.contains(ids)?))
    }

    fn put_objects(&mut self, objs: Vec<WireObject>) -> Result<Response> {
        // Which are stored already, in one call for the batch (one round trip for a remote
        // store). Objects are checked one by one after it, as before: the objects ahead of a
        // bad one are kept, the request is refused from it on.
        let ids: Vec<Id> = objs.iter().map(|o| o.id).collect();
        let present = self.view()?.contains(&ids)?;
        if present.len() != ids.len() {
            return Err(Error::Internal(format!(
                "the store answered {} of {} ids",
                present.len(),
                ids.len()
            )));
        }
        let (mut objects, mut bytes) = (0u64, 0u64);
        for (o, present) in objs.into_iter().zip(present) {
            let kind = proto::check_object(&o)?;
            objects += 1;
            bytes += o.sealed.len() as u64;
            if present || self.added.contains(&o.id) {
                continue;
            }
            if let Err(e) = self.writer.add(o.id, kind, &o.sealed) {
                self.after_commit();
                return Err(e);
            }
            self.added.insert(o.id);
            self.dirty = true;
        }
        if self.added.len() >= ADDED_MAX {
            self.flush()?;
        }
        Ok(Response::Stored { objects, bytes })
    }

    /// The final commit: every object received, then the snapshots, in one atomic step.
    fn put_snapshots(&mut self, snaps: &[(Id, Vec<u8>)]) -> Result<Response> {
        if snaps
            .iter()
            .any(|(_, b)| b.len() < crate::crypto::SEAL_OVERHEAD)
        {
            return Err(proto::protocol_error(
                "a snapshot blob is too short to be sealed",
            ));
        }
        // The seam's contract keeps a snapshot stored with the same bytes and refuses other
        // bytes under its id (`Error::Refused`), and a refused commit makes nothing visible.
        // The old code leaned on redb here (`Store::commit_batch`, and the `Packer` keeping its
        // objects buffered after a failed commit); the trait does not say what a writer keeps
        // after a refusal, so `dirty` stays set and the next flush (`Bye`, end of stream,
        // drop) commits whatever the writer still holds. The redb and memory writers keep
        // everything; a writer that dropped it would only make the next sync send it again.
        let committed = self.writer.commit(snaps);
        self.after_commit();
        committed?;
        self.dirty = false;
        Ok(Response::Done)
    }

    fn delete_snapshots(&mut self, ids: &[Id]) -> Result<Response> {
        self.rights.require(Right::Forget, &self.store.location())?;
        self.store.remove_snapshots(ids)?;
        Ok(Response::Done)
    }

    /// Commit what has arrived. Safe at any point: the sender sends children before parents,
    /// so every committed prefix keeps the write-ordering invariant. A `commit` with no
    /// snapshot rather than a `checkpoint`: a checkpoint may hold back the tail of a partly
    /// filled unit (redb: the last piece of the pack), and this keeps everything.
    pub fn flush(&mut self) -> Result<()> {
        if self.dirty {
            let committed = self.writer.commit(&[]);
            self.after_commit();
            committed?;
            self.dirty = false;
        }
        Ok(())
    }
}

impl Drop for Sink<'_> {
    fn drop(&mut self) {
        // Keep what arrived so an interrupted sync resumes from it; nothing refers to it yet.
        let _ = self.flush();
        let _ = self.store.end_session(self.session);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The receiver on a store that is not redb: a sync into a `MemoryStore` through
    //! `LocalTarget` (so through `Sink` on a `&dyn Storage`), whole and interrupted.

    use crate::backup::{backup, BackupOptions, Progress};
    use crate::error::{Error, Result};
    use crate::repo::Repository;
    use crate::restore::{restore, Overwrite, RestoreOptions, RestoreProgress};
    use crate::storage::memory::MemoryStore;
    use crate::storage::Storage;
    use crate::sync::proto::{Request, Response};
    use crate::sync::{self, LocalTarget, SyncOptions, SyncProgress, SyncReport, Target};
    use std::path::{Path, PathBuf};

    const PASSWORD: &[u8] = b"sink test password";

    /// A primary (redb, in `tmp`) holding one backup of a tree of small files, nested
    /// directories and two multi-chunk files; returns it and the source directory.
    fn primary(tmp: &Path) -> (Repository, PathBuf) {
        let src = tmp.join("src");
        for d in 0..6 {
            let sub = src.join(format!("d{d}/nested"));
            std::fs::create_dir_all(&sub).unwrap();
            for f in 0..4 {
                std::fs::write(sub.join(format!("f{f}")), format!("{d}/{f}\n").repeat(40)).unwrap();
            }
        }
        for (i, len) in [3_000_000, 1_700_000].into_iter().enumerate() {
            std::fs::write(
                src.join(format!("big{i}")),
                crate::testkit::noise(i as u64 + 1, len),
            )
            .unwrap();
        }
        let repo = Repository::init(
            &tmp.join("primary"),
            PASSWORD,
            &crate::testkit::insecure_fast_kdf(),
        )
        .unwrap();
        let o = BackupOptions {
            paths: vec![src.clone()],
            ..BackupOptions::default()
        };
        backup(&repo, &o, &Progress::default()).unwrap();
        (repo, src)
    }

    fn run(
        primary: &Repository,
        target: &mut dyn Target,
        opts: &SyncOptions,
    ) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        sync::sync(primary, target, opts, &SyncProgress::default(), &mut report)?;
        Ok(report)
    }

    /// Every object `from` holds, with its kind and sealed bytes.
    fn objects(from: &dyn Storage) -> Vec<(crate::id::Id, crate::crypto::Kind, Vec<u8>)> {
        let reader = from.reader().unwrap();
        let list = reader.list(&crate::id::Id([0; 32]), usize::MAX).unwrap();
        list.into_iter()
            .map(|(id, _)| {
                let (kind, sealed) = reader.read(&id).unwrap();
                (id, kind, sealed)
            })
            .collect()
    }

    fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                if p.is_dir() {
                    stack.push(p);
                    out.push((rel, Vec::new()));
                } else {
                    out.push((rel, std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_sync_into_a_memory_store_reads_back_byte_identical() {
        let tmp = tempfile::tempdir().unwrap();
        let (primary, src) = primary(tmp.path());
        let replica: Box<dyn Storage> = Box::new(MemoryStore::new(primary.config().clone()));
        let report = {
            let mut target = LocalTarget::new(&*replica).unwrap();
            run(&primary, &mut target, &SyncOptions::default()).unwrap()
        };
        assert_eq!(report.snapshots_sent, 1, "{report:?}");
        // The sink added the key slots (the store was blank), ended its session, and holds
        // every object and the snapshot exactly as the primary stores them.
        assert_eq!(
            replica.key_slots().unwrap(),
            primary.storage().key_slots().unwrap()
        );
        assert!(replica.sessions().unwrap().is_empty());
        assert_eq!(
            replica.snapshots().unwrap(),
            primary.storage().snapshots().unwrap()
        );
        let (ours, theirs) = (objects(primary.storage()), objects(&*replica));
        assert!(ours.len() > 30, "{} objects", ours.len());
        assert_eq!(report.objects_sent, ours.len() as u64);
        assert_eq!(ours, theirs);

        // The replica opens with the same password and restores the snapshot to the same bytes.
        let replica = Repository::unlock(replica, PASSWORD).unwrap();
        let latest = replica.find_snapshot("latest").unwrap();
        assert_eq!(latest.id, primary.find_snapshot("latest").unwrap().id);
        let restored = |repo: &Repository, out: PathBuf| {
            let o = RestoreOptions {
                target: out.clone(),
                includes: Vec::new(),
                overwrite: Overwrite::Always,
                threads: 0,
            };
            restore(repo, &latest.snapshot.root, &o, &RestoreProgress::default()).unwrap();
            files(&out)
        };
        let from_replica = restored(&replica, tmp.path().join("out-replica"));
        assert_eq!(
            from_replica,
            restored(&primary, tmp.path().join("out-primary"))
        );
        let big = std::fs::read(src.join("big0")).unwrap();
        assert!(from_replica.iter().any(|(_, bytes)| *bytes == big));
        assert!(from_replica.len() > 30);

        // A second sync finds everything there and sends nothing.
        let mut target = LocalTarget::new(replica.storage()).unwrap();
        let again = run(&primary, &mut target, &SyncOptions::default()).unwrap();
        assert_eq!((again.snapshots_sent, again.objects_sent), (0, 0));
    }

    /// Lets `budget` `PutObjects` requests through, then fails like a dropped link.
    struct DropAfter<T> {
        inner: T,
        budget: usize,
        passed: u64,
    }

    impl<T: Target> Target for DropAfter<T> {
        fn call(&mut self, req: Request) -> Result<Response> {
            if let Request::PutObjects(objs) = &req {
                if self.budget == 0 {
                    return Err(Error::Connection("injected failure: link dropped".into()));
                }
                self.budget -= 1;
                self.passed += objs.len() as u64;
            }
            self.inner.call(req)
        }
    }

    #[test]
    fn an_interrupted_sync_into_a_memory_store_keeps_what_arrived_and_resumes() {
        let tmp = tempfile::tempdir().unwrap();
        let (primary, _) = primary(tmp.path());
        let total = primary.reader().unwrap().count().unwrap();
        let replica = MemoryStore::new(primary.config().clone());
        let small = SyncOptions {
            batch_bytes: 64 << 10,
            ..SyncOptions::default()
        };
        // How many batches a whole sync takes (chunk boundaries follow the random chunker
        // seed, so it varies per repository); the link drops after half of them.
        let batches = {
            let scratch = MemoryStore::new(primary.config().clone());
            let mut counting = DropAfter {
                inner: LocalTarget::new(&scratch).unwrap(),
                budget: usize::MAX,
                passed: 0,
            };
            run(&primary, &mut counting, &small).unwrap();
            usize::MAX - counting.budget
        };
        assert!(batches >= 4, "{batches} batches");
        let passed = {
            let mut target = DropAfter {
                inner: LocalTarget::new(&replica).unwrap(),
                budget: batches / 2,
                passed: 0,
            };
            let err = run(&primary, &mut target, &small).unwrap_err();
            assert!(err.to_string().contains("injected"), "{err}");
            // Nothing is visible yet: the batches are far below the sink's 32 MiB.
            assert_eq!(replica.reader().unwrap().count().unwrap(), 0);
            target.passed
            // The target is dropped here, mid-sync, with no goodbye.
        };
        let kept = replica.reader().unwrap().count().unwrap();
        assert!(
            replica.snapshots().unwrap().is_empty(),
            "no snapshot before its data"
        );
        assert!(
            replica.sessions().unwrap().is_empty(),
            "the session ended with the sink"
        );
        assert_eq!(kept, passed, "everything that arrived was kept");
        assert!(kept > 0 && kept < total, "{kept} of {total}");

        let mut target = LocalTarget::new(&replica).unwrap();
        let resumed = run(&primary, &mut target, &small).unwrap();
        drop(target);
        assert_eq!(resumed.snapshots_sent, 1);
        assert_eq!(
            resumed.objects_sent,
            total - kept,
            "only the rest is sent: {resumed:?}"
        );
        assert_eq!(objects(&replica), objects(primary.storage()));
        assert_eq!(
            replica.snapshots().unwrap(),
            primary.storage().snapshots().unwrap()
        );
    }

    /// A store like a remote one (`Capabilities::remote`) whose readers are frozen when
    /// opened, as an S3 reader is; it counts the readers opened.
    struct Frozen {
        inner: MemoryStore,
        opened: std::sync::atomic::AtomicU64,
    }

    type Objects = std::collections::BTreeMap<crate::id::Id, (crate::crypto::Kind, Vec<u8>)>;

    struct FrozenReader(Objects);

    impl crate::storage::Reader for FrozenReader {
        fn info(&self, id: &crate::id::Id) -> Result<Option<crate::storage::ObjectInfo>> {
            Ok(self
                .0
                .get(id)
                .map(|(k, b)| crate::storage::ObjectInfo::of(*k, b)))
        }
        fn contains(&self, ids: &[crate::id::Id]) -> Result<Vec<bool>> {
            Ok(ids.iter().map(|id| self.0.contains_key(id)).collect())
        }
        fn read(&self, id: &crate::id::Id) -> Result<(crate::crypto::Kind, Vec<u8>)> {
            self.0
                .get(id)
                .cloned()
                .ok_or_else(|| Error::Missing(id.to_hex()))
        }
        fn list(
            &self,
            from: &crate::id::Id,
            limit: usize,
        ) -> Result<Vec<(crate::id::Id, crate::storage::ObjectInfo)>> {
            Ok(self
                .0
                .range(*from..)
                .take(limit)
                .map(|(id, (k, b))| (*id, crate::storage::ObjectInfo::of(*k, b)))
                .collect())
        }
        fn count(&self) -> Result<u64> {
            Ok(self.0.len() as u64)
        }
    }

    impl Storage for Frozen {
        fn location(&self) -> String {
            "frozen".into()
        }
        fn config(&self) -> Result<crate::format::Config> {
            self.inner.config()
        }
        fn key_slots(&self) -> Result<Vec<(u64, Vec<u8>)>> {
            self.inner.key_slots()
        }
        fn add_key_slot(&self, slot: &[u8]) -> Result<u64> {
            self.inner.add_key_slot(slot)
        }
        fn remove_key_slot(&self, id: u64) -> Result<()> {
            self.inner.remove_key_slot(id)
        }
        fn snapshots(&self) -> Result<Vec<(crate::id::Id, Vec<u8>)>> {
            self.inner.snapshots()
        }
        fn remove_snapshots(&self, ids: &[crate::id::Id]) -> Result<()> {
            self.inner.remove_snapshots(ids)
        }
        fn reader(&self) -> Result<Box<dyn crate::storage::Reader>> {
            self.opened
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Box::new(FrozenReader(
                objects(&self.inner)
                    .into_iter()
                    .map(|(id, k, b)| (id, (k, b)))
                    .collect(),
            )))
        }
        fn writer(
            &self,
            opts: crate::storage::WriterOptions,
        ) -> Result<Box<dyn crate::storage::Writer + '_>> {
            self.inner.writer(opts)
        }
        fn begin_session(&self, info: &[u8]) -> Result<u64> {
            self.inner.begin_session(info)
        }
        fn end_session(&self, id: u64) -> Result<()> {
            self.inner.end_session(id)
        }
        fn sessions(&self) -> Result<Vec<(u64, Vec<u8>)>> {
            self.inner.sessions()
        }
        fn state(&self, key: &str) -> Result<Option<Vec<u8>>> {
            self.inner.state(key)
        }
        fn set_state(&self, key: &str, value: &[u8]) -> Result<()> {
            self.inner.set_state(key, value)
        }
        fn collect_garbage(
            &self,
            marker: &mut dyn crate::storage::Mark,
            opts: &crate::storage::PruneOptions,
            notify: &dyn Fn(&str),
        ) -> Result<crate::storage::PruneReport> {
            self.inner.collect_garbage(marker, opts, notify)
        }
        fn capabilities(&self) -> crate::storage::Capabilities {
            crate::storage::Capabilities {
                remote: true,
                rights: crate::storage::Rights::FULL,
            }
        }
        fn space(&self) -> Result<crate::storage::Space> {
            self.inner.space()
        }
        fn repair(
            &self,
            objects: &[crate::storage::ObjectCopy],
            snapshots: &[(crate::id::Id, Vec<u8>)],
        ) -> Result<Vec<(crate::id::Id, String)>> {
            self.inner.repair(objects, snapshots)
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    /// On a remote store the sink answers a whole sync from one reader, and what it stored
    /// is seen after its commits: by the next sync, and by a read in the same session.
    #[test]
    fn a_sink_on_a_remote_store_opens_one_reader_per_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let (primary, src) = primary(tmp.path());
        let replica = Frozen {
            inner: MemoryStore::new(primary.config().clone()),
            opened: Default::default(),
        };
        let opened = || replica.opened.load(std::sync::atomic::Ordering::Relaxed);
        let small = SyncOptions {
            batch_bytes: 64 << 10,
            have_batch: 8,
            ..SyncOptions::default()
        };
        let mut target = LocalTarget::new(&replica).unwrap();
        let first = run(&primary, &mut target, &small).unwrap();
        assert_eq!(first.snapshots_sent, 1);
        assert!(first.round_trips >= 10, "{first:?}");
        assert_eq!(
            opened(),
            1,
            "one reader for {} round trips",
            first.round_trips
        );
        // A second sync through the same sink sees what the first one committed.
        std::fs::write(src.join("new"), crate::testkit::noise(9, 100_000)).unwrap();
        let o = BackupOptions {
            paths: vec![src.clone()],
            ..BackupOptions::default()
        };
        backup(&primary, &o, &Progress::default()).unwrap();
        let second = run(&primary, &mut target, &small).unwrap();
        assert_eq!(second.snapshots_sent, 1);
        assert!(
            second.objects_sent * 4 < first.objects_sent,
            "only the new objects: {second:?}"
        );
        assert_eq!(opened(), 2);
        drop(target);
        assert_eq!(objects(&replica.inner), objects(primary.storage()));

        // In one session: an object put is not added twice, and reads back before any
        // commit of the session's own.
        let fresh = Frozen {
            inner: MemoryStore::new(primary.config().clone()),
            opened: Default::default(),
        };
        let (id, kind, sealed) = objects(primary.storage()).remove(0);
        let wire = crate::sync::proto::WireObject {
            id,
            kind: kind as u8,
            check: crate::storage::checksum(&sealed),
            sealed: sealed.clone(),
        };
        let mut sink = crate::sync::Sink::new(&fresh, false).unwrap();
        for _ in 0..2 {
            let r = sink
                .try_handle(Request::PutObjects(vec![wire.clone(), wire.clone()]))
                .unwrap();
            assert!(matches!(r, Response::Stored { objects: 2, .. }), "{r:?}");
        }
        assert_eq!(sink.added.len(), 1);
        match sink.try_handle(Request::GetObject(id)).unwrap() {
            Response::Object(Some(o)) => assert_eq!(o.sealed, sealed),
            other => panic!("{other:?}"),
        }
        match sink.try_handle(Request::Have(vec![id])).unwrap() {
            Response::Have(h) => assert_eq!(h, [true]),
            other => panic!("{other:?}"),
        }
        drop(sink);
        assert_eq!(objects(&fresh.inner).len(), 1);
    }
}
