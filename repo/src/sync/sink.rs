//! The receiving side of a sync: applies requests to a replica's store without any key.
//! Used directly by the local-path target and by `cairn serve` behind the wire protocol.

use super::proto::{self, Request, Response, WireObject};
use crate::crypto::{KeySlot, MAX_KEY_SLOTS};
use crate::error::{Error, Result};
use crate::format::Config;
use crate::id::Id;
use crate::packer::Packer;
use crate::store::{Store, DB_FILE};
use std::path::Path;

/// How many bytes the receiving packer buffers before committing a batch.
pub const SINK_BATCH_BYTES: usize = 32 << 20;

/// The refusal of a repository with another id. It never names the other id: a `cairn serve`
/// answers it to whoever connects, and a repository id is not theirs to learn.
fn foreign(path: &Path, ours: &[u8; 16]) -> Error {
    Error::Refused(format!(
        "{} holds another repository, not a replica of this repository ({}); refusing to touch it",
        path.display(),
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

/// Whether `dir` already holds a repository database.
pub fn repository_exists(dir: &Path) -> bool {
    dir.join(DB_FILE).is_file()
}

/// Open an existing replica and make sure it shares `repo_id`.
pub fn open_replica(dir: &Path, repo_id: &[u8; 16], cache: usize) -> Result<Store> {
    let store = Store::open(dir, cache)?;
    let config = store.config()?;
    if &config.repo_id != repo_id {
        return Err(foreign(dir, repo_id));
    }
    Ok(store)
}

/// Create a replica: a new repository with the primary's config and its key slots, still
/// wrapped. Never touches an existing repository or a non-empty directory.
pub fn create_replica(
    dir: &Path,
    repo_id: &[u8; 16],
    config: &[u8],
    key_slots: &[Vec<u8>],
) -> Result<Store> {
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
    let store = Store::create(dir, &[("config", config.to_vec())])?;
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
pub fn add_missing_slots(store: &Store, slots: &[Vec<u8>]) -> Result<u64> {
    let have = store.key_slot_blobs()?;
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
    store: &'s Store,
    packer: Packer<'s>,
    append_only: bool,
    /// Whether objects were added since the last commit.
    dirty: bool,
    /// Registered like a backup's: a prune of this replica waits while objects arrive, so
    /// objects the sender was told the replica has are not swept away mid-sync.
    session: u64,
}

impl<'s> Sink<'s> {
    pub fn new(store: &'s Store, append_only: bool) -> Result<Sink<'s>> {
        let cfg = store.config()?;
        let session = store.begin_session(&crate::util::session_info())?;
        Ok(Sink {
            store,
            packer: Packer::new(store, cfg.piece_size, cfg.pack_max, SINK_BATCH_BYTES),
            append_only,
            dirty: false,
            session,
        })
    }

    /// Answer one request; failures become `Response::Error` for the peer.
    pub fn handle(&mut self, req: Request) -> Response {
        self.try_handle(req)
            .unwrap_or_else(|e| Response::Error(e.to_string()))
    }

    pub fn try_handle(&mut self, req: Request) -> Result<Response> {
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
                    .snapshot_blobs()?
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

    fn get_object(&self, id: &Id) -> Result<Response> {
        let view = self.store.view()?;
        let Some(loc) = view.locate(id)? else {
            return Ok(Response::Object(None));
        };
        let sealed = view.read_sealed(id, &loc, self.store.config()?.piece_size)?;
        Ok(Response::Object(Some(WireObject {
            id: *id,
            kind: loc.kind as u8,
            check: loc.check,
            sealed,
        })))
    }

    fn info(&self) -> Result<Response> {
        Ok(Response::Info {
            snapshots: self.store.snapshot_blobs()?.len() as u64,
            objects: self.store.view()?.object_count()?,
            append_only: self.append_only,
        })
    }

    /// Each snapshot's id with the checksum of its stored blob, so a sender can tell that a
    /// copy here is the one it sent.
    fn snapshot_checks(&self) -> Result<Vec<(Id, [u8; 16])>> {
        Ok(self
            .store
            .snapshot_blobs()?
            .into_iter()
            .map(|(id, blob)| (id, crate::store::checksum(&blob)))
            .collect())
    }

    fn snapshot_ids(&self) -> Result<Vec<Id>> {
        Ok(self
            .store
            .snapshot_blobs()?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    fn have(&self, ids: &[Id]) -> Result<Response> {
        if ids.len() > proto::MAX_HAVE {
            return Err(proto::protocol_error(format!(
                "have request of {} ids exceeds {}",
                ids.len(),
                proto::MAX_HAVE
            )));
        }
        let view = self.store.view()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(view.contains(id)?);
        }
        Ok(Response::Have(out))
    }

    fn put_objects(&mut self, objs: Vec<WireObject>) -> Result<Response> {
        let view = self.store.view()?;
        let (mut objects, mut bytes) = (0u64, 0u64);
        for o in objs {
            let kind = proto::check_object(&o)?;
            objects += 1;
            bytes += o.sealed.len() as u64;
            if view.contains(&o.id)? {
                continue;
            }
            self.packer.add(o.id, kind, &o.sealed)?;
            self.dirty = true;
        }
        Ok(Response::Stored { objects, bytes })
    }

    /// The final commit: every object received, then the snapshots, in one transaction.
    fn put_snapshots(&mut self, snaps: &[(Id, Vec<u8>)]) -> Result<Response> {
        if snaps
            .iter()
            .any(|(_, b)| b.len() < crate::crypto::SEAL_OVERHEAD)
        {
            return Err(proto::protocol_error(
                "a snapshot blob is too short to be sealed",
            ));
        }
        // The commit keeps a snapshot stored with the same bytes and refuses other bytes under
        // its id (`Store::commit_batch`); objects of a refused commit stay buffered and go
        // with the next one.
        self.packer.commit(true, snaps)?;
        self.dirty = false;
        Ok(Response::Done)
    }

    fn delete_snapshots(&mut self, ids: &[Id]) -> Result<Response> {
        if self.append_only {
            return Err(Error::Refused(format!(
                "{} is served append-only: snapshots cannot be deleted through it",
                self.store.dir().display()
            )));
        }
        self.store.remove_snapshots(ids)?;
        Ok(Response::Done)
    }

    /// Commit what has arrived. Safe at any point: the sender sends children before parents,
    /// so every committed prefix keeps the write-ordering invariant.
    pub fn flush(&mut self) -> Result<()> {
        if self.dirty {
            self.packer.commit(true, &[])?;
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
