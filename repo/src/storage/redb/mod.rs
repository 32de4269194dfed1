//! The local redb repository: the store itself (`store`: tables, the piece cache, views), its
//! pack writer (`packer`), its maintenance (`maint`: sweep, verification, compaction) and the
//! read-only backend for a truncated file (`truncated`); the `Storage` impl below is the seam's
//! adapter over them. Nothing of redb is visible outside this module but what is re-exported
//! here for the rest of the crate (DESIGN.md §9).

mod maint;
mod packer;
mod store;
mod truncated;

pub(crate) use maint::{PackCandidate, Sweep, SweepInput};
pub use maint::{StorageProblem, StorageReport};
pub(crate) use packer::Packer;
#[cfg(any(test, feature = "testkit"))]
pub(crate) use store::damage_object;
pub use store::Store;
pub(crate) use store::{
    checksum, Location, View, DAMAGED_PREFIX, DB_FILE, DEFAULT_DB_CACHE, FORMAT_VERSION,
    PIECE_CACHE_SLOTS, TARGETS,
};

use super::{
    Mark, ObjectCopy, ObjectInfo, PruneOptions, PruneReport, Reader, Space, Storage, Writer,
    WriterOptions,
};
use crate::crypto::Kind;
use crate::error::{Error, Result};
use crate::format::Config;
use crate::id::Id;

impl Storage for Store {
    fn location(&self) -> String {
        self.dir().display().to_string()
    }

    fn config(&self) -> Result<Config> {
        Store::config(self)
    }

    fn key_slots(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        Store::key_slots(self)
    }

    fn add_key_slot(&self, slot: &[u8]) -> Result<u64> {
        Store::add_key_slot(self, slot)
    }

    fn remove_key_slot(&self, id: u64) -> Result<()> {
        Store::remove_key_slot(self, id)
    }

    fn snapshots(&self) -> Result<Vec<(Id, Vec<u8>)>> {
        self.snapshot_blobs()
    }

    fn remove_snapshots(&self, ids: &[Id]) -> Result<()> {
        Store::remove_snapshots(self, ids)
    }

    fn reader(&self) -> Result<Box<dyn Reader>> {
        Ok(Box::new(self.shared_view()?))
    }

    fn writer(&self, opts: WriterOptions) -> Result<Box<dyn Writer + '_>> {
        let cfg = Store::config(self)?;
        Ok(Box::new(RedbWriter(
            Packer::new(self, cfg.piece_size, cfg.pack_max, opts.batch_bytes)
                .index_every(opts.index_every),
        )))
    }

    fn begin_session(&self, info: &[u8]) -> Result<u64> {
        Store::begin_session(self, info)
    }

    fn end_session(&self, id: u64) -> Result<()> {
        Store::end_session(self, id)
    }

    fn sessions(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        Store::sessions(self)
    }

    fn state(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Store::state(self, key)
    }

    fn set_state(&self, key: &str, value: &[u8]) -> Result<()> {
        Store::set_state(self, key, value)
    }

    fn recover(&self) -> Result<u64> {
        self.give_back_abandoned()
    }

    fn space(&self) -> Result<Space> {
        Store::space(self)
    }

    fn collect_garbage(
        &self,
        marker: &mut dyn Mark,
        opts: &PruneOptions,
        notify: &dyn Fn(&str),
    ) -> Result<PruneReport> {
        crate::prune::collect(self, marker, opts, notify)
    }

    fn repair(
        &self,
        objects: &[ObjectCopy],
        snapshots: &[(Id, Vec<u8>)],
    ) -> Result<Vec<(Id, String)>> {
        Store::repair(self, objects, snapshots)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A view is the redb store's reader: one read transaction, pieces through the store's cache.
impl Reader for View {
    fn info(&self, id: &Id) -> Result<Option<ObjectInfo>> {
        Ok(self.locate(id)?.as_ref().map(info_of))
    }

    fn contains(&self, ids: &[Id]) -> Result<Vec<bool>> {
        ids.iter().map(|id| View::contains(self, id)).collect()
    }

    fn read(&self, id: &Id) -> Result<(Kind, Vec<u8>)> {
        let loc = self
            .locate(id)?
            .ok_or_else(|| Error::Missing(id.to_hex()))?;
        Ok((loc.kind, self.read_sealed(id, &loc, self.piece_size)?))
    }

    fn list(&self, from: &Id, limit: usize) -> Result<Vec<(Id, ObjectInfo)>> {
        Ok(self
            .objects_from(from, limit)?
            .into_iter()
            .map(|(id, l)| (id, info_of(&l)))
            .collect())
    }

    fn count(&self) -> Result<u64> {
        self.object_count()
    }

    fn in_read_order(&self, ids: &[Id]) -> Result<Vec<(Id, ObjectInfo)>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let loc = self
                .locate(id)?
                .ok_or_else(|| Error::Missing(id.to_hex()))?;
            out.push((*id, loc));
        }
        out.sort_by_key(|(_, l)| (l.pack, l.offset));
        Ok(out.into_iter().map(|(id, l)| (id, info_of(&l))).collect())
    }
}

/// What the seam says of an object the index locates.
fn info_of(l: &Location) -> ObjectInfo {
    ObjectInfo {
        kind: l.kind,
        len: l.len,
        check: l.check,
    }
}

struct RedbWriter<'s>(Packer<'s>);

impl Writer for RedbWriter<'_> {
    fn add(&mut self, id: Id, kind: Kind, sealed: &[u8]) -> Result<()> {
        self.0.add(id, kind, sealed)
    }

    fn checkpoint(&mut self) -> Result<()> {
        self.0.commit(false, &[])
    }

    fn commit(&mut self, snapshots: &[(Id, Vec<u8>)]) -> Result<()> {
        self.0.commit(true, snapshots)
    }
}
