//! A store with a quota (`cairn serve --quota`): a decorator whose writers refuse, with
//! `Error::QuotaExceeded`, an object or snapshot that would make the repository occupy more
//! than the quota. Everything else passes through.
//!
//! A writer counts what the repository occupies when it begins (`Space::used`) plus the
//! sealed bytes added through it. Two writers at once each count only their own additions, so
//! together they may pass the quota by what the other adds meanwhile; the next writer sees it.

use super::{
    Capabilities, Mark, ObjectCopy, PruneOptions, PruneReport, Reader, Space, Storage, Writer,
    WriterOptions,
};
use crate::crypto::Kind;
use crate::error::{Error, Result};
use crate::format::Config;
use crate::id::Id;

/// `inner`, limited to `bytes`.
pub struct Quota<'s> {
    inner: &'s dyn Storage,
    bytes: u64,
}

impl<'s> Quota<'s> {
    pub fn new(inner: &'s dyn Storage, bytes: u64) -> Quota<'s> {
        Quota { inner, bytes }
    }
}

struct QuotaWriter<'a> {
    inner: Box<dyn Writer + 'a>,
    quota: u64,
    /// What the repository occupied when the writer began plus what was added through it.
    used: u64,
    location: String,
}

impl QuotaWriter<'_> {
    /// Count `n` more bytes, unless that passes the quota.
    fn take(&mut self, n: u64) -> Result<()> {
        self.used = within(self.quota, self.used, n, &self.location)?;
        Ok(())
    }
}

/// `used + n`, unless that passes `quota`.
fn within(quota: u64, used: u64, n: u64, location: &str) -> Result<u64> {
    let after = used.saturating_add(n);
    if after > quota {
        return Err(Error::QuotaExceeded {
            location: location.to_string(),
            quota,
            used,
        });
    }
    Ok(after)
}

impl Writer for QuotaWriter<'_> {
    fn add(&mut self, id: Id, kind: Kind, sealed: &[u8]) -> Result<()> {
        self.take(sealed.len() as u64)?;
        self.inner.add(id, kind, sealed)
    }

    fn checkpoint(&mut self) -> Result<()> {
        self.inner.checkpoint()
    }

    fn commit(&mut self, snapshots: &[(Id, Vec<u8>)]) -> Result<()> {
        self.take(snapshots.iter().map(|(_, b)| b.len() as u64).sum())?;
        self.inner.commit(snapshots)
    }
}

impl Storage for Quota<'_> {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn config(&self) -> Result<Config> {
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
    fn snapshots(&self) -> Result<Vec<(Id, Vec<u8>)>> {
        self.inner.snapshots()
    }
    fn remove_snapshots(&self, ids: &[Id]) -> Result<()> {
        self.inner.remove_snapshots(ids)
    }
    fn reader(&self) -> Result<Box<dyn Reader>> {
        self.inner.reader()
    }
    fn writer(&self, opts: WriterOptions) -> Result<Box<dyn Writer + '_>> {
        let used = self.inner.space()?.used();
        Ok(Box::new(QuotaWriter {
            inner: self.inner.writer(opts)?,
            quota: self.bytes,
            used,
            location: self.inner.location(),
        }))
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
    fn recover(&self) -> Result<u64> {
        self.inner.recover()
    }
    fn collect_garbage(
        &self,
        marker: &mut dyn Mark,
        opts: &PruneOptions,
        notify: &dyn Fn(&str),
    ) -> Result<PruneReport> {
        self.inner.collect_garbage(marker, opts, notify)
    }
    fn repair(
        &self,
        objects: &[ObjectCopy],
        snapshots: &[(Id, Vec<u8>)],
    ) -> Result<Vec<(Id, String)>> {
        // Copies of damaged objects take space too (and one of a missing object is an
        // addition like any other).
        let objects_bytes: u64 = objects.iter().map(|o| o.sealed.len() as u64).sum();
        let snapshot_bytes: u64 = snapshots.iter().map(|(_, b)| b.len() as u64).sum();
        let used = self.inner.space()?.used();
        within(
            self.bytes,
            used,
            objects_bytes + snapshot_bytes,
            &self.inner.location(),
        )?;
        self.inner.repair(objects, snapshots)
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn space(&self) -> Result<Space> {
        self.inner.space()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self.inner.as_any()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    #[test]
    fn a_writer_stops_at_the_quota_and_keeps_what_it_stored() {
        let inner = MemoryStore::new(crate::testkit::small_config());
        let q = Quota::new(&inner, 1000);
        let mut w = q.writer(WriterOptions::default()).unwrap();
        w.add(Id([1; 32]), Kind::Chunk, &[0; 600]).unwrap();
        w.commit(&[]).unwrap();
        let e = w.add(Id([2; 32]), Kind::Chunk, &[0; 600]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::QuotaExceeded {
                    quota: 1000,
                    used: 600,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("forget snapshots and prune"), "{e}");
        drop(w);
        // A later writer counts what is stored.
        let mut w = q.writer(WriterOptions::default()).unwrap();
        w.add(Id([3; 32]), Kind::Chunk, &[0; 300]).unwrap();
        assert!(w.commit(&[(Id([9; 32]), vec![0; 200])]).is_err());
        assert_eq!(inner.reader().unwrap().count().unwrap(), 1);
        assert!(inner.snapshots().unwrap().is_empty());
    }
}
