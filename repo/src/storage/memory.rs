//! A store in memory, for unit tests of everything above the seam (and the reference the
//! conformance suite is read against). Nothing survives the process.

use super::{
    Mark, ObjectCopy, ObjectInfo, PruneOptions, PruneReport, Reader, Space, Storage, Writer,
    WriterOptions,
};
use crate::crypto::{Kind, MAX_KEY_SLOTS};
use crate::error::{Error, Result};
use crate::format::Config;
use crate::id::Id;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
struct Inner {
    slots: BTreeMap<u64, Vec<u8>>,
    snapshots: BTreeMap<Id, Vec<u8>>,
    objects: BTreeMap<Id, (Kind, Arc<Vec<u8>>)>,
    sessions: BTreeMap<u64, Vec<u8>>,
    state: BTreeMap<String, Vec<u8>>,
}

pub struct MemoryStore {
    config: Config,
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    pub fn new(config: Config) -> MemoryStore {
        MemoryStore {
            config,
            inner: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

fn next_number(map: &BTreeMap<u64, Vec<u8>>) -> u64 {
    map.keys().next_back().map(|k| k + 1).unwrap_or(1)
}

impl Storage for MemoryStore {
    fn location(&self) -> String {
        "memory".into()
    }

    fn config(&self) -> Result<Config> {
        Ok(self.config.clone())
    }

    fn key_slots(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(self.lock().slots.clone().into_iter().collect())
    }

    fn add_key_slot(&self, slot: &[u8]) -> Result<u64> {
        let mut inner = self.lock();
        if inner.slots.len() >= MAX_KEY_SLOTS {
            return Err(Error::Refused(format!(
                "the repository holds {MAX_KEY_SLOTS} key slots already, the most it takes"
            )));
        }
        let id = next_number(&inner.slots);
        inner.slots.insert(id, slot.to_vec());
        Ok(id)
    }

    fn remove_key_slot(&self, id: u64) -> Result<()> {
        let mut inner = self.lock();
        if !inner.slots.contains_key(&id) {
            return Err(Error::NotFound(format!("no key slot {id}")));
        }
        if inner.slots.len() <= 1 {
            return Err(Error::Refused("the last key slot cannot be removed".into()));
        }
        inner.slots.remove(&id);
        Ok(())
    }

    fn snapshots(&self) -> Result<Vec<(Id, Vec<u8>)>> {
        Ok(self.lock().snapshots.clone().into_iter().collect())
    }

    fn remove_snapshots(&self, ids: &[Id]) -> Result<()> {
        let mut inner = self.lock();
        for id in ids {
            inner.snapshots.remove(id);
        }
        Ok(())
    }

    fn reader(&self) -> Result<Box<dyn Reader>> {
        Ok(Box::new(MemoryReader(self.inner.clone())))
    }

    fn writer(&self, opts: WriterOptions) -> Result<Box<dyn Writer + '_>> {
        Ok(Box::new(MemoryWriter {
            store: self,
            batch_bytes: opts.batch_bytes,
            pending: Vec::new(),
            pending_bytes: 0,
        }))
    }

    fn begin_session(&self, info: &[u8]) -> Result<u64> {
        let mut inner = self.lock();
        let id = next_number(&inner.sessions);
        inner.sessions.insert(id, info.to_vec());
        Ok(id)
    }

    fn end_session(&self, id: u64) -> Result<()> {
        self.lock().sessions.remove(&id);
        Ok(())
    }

    fn sessions(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(self.lock().sessions.clone().into_iter().collect())
    }

    fn state(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().state.get(key).cloned())
    }

    fn set_state(&self, key: &str, value: &[u8]) -> Result<()> {
        self.lock().state.insert(key.to_string(), value.to_vec());
        Ok(())
    }

    fn collect_garbage(
        &self,
        marker: &mut dyn Mark,
        opts: &PruneOptions,
        _notify: &dyn Fn(&str),
    ) -> Result<PruneReport> {
        let started = std::time::Instant::now();
        // Mark, then delete under the lock only if no writer started meanwhile (a writer's
        // objects are unreferenced until its snapshot commits).
        let (live, mut inner) = loop {
            if !opts.dry_run && !self.lock().sessions.is_empty() {
                if started.elapsed() >= opts.wait {
                    return Err(Error::Locked {
                        path: "memory".into(),
                        reason: "writers still running".into(),
                    });
                }
                std::thread::sleep(opts.poll);
                continue;
            }
            let snapshots: Vec<Id> = self.lock().snapshots.keys().copied().collect();
            let live = marker.mark(&snapshots)?;
            let inner = self.lock();
            if (opts.dry_run || inner.sessions.is_empty())
                && inner.snapshots.keys().eq(snapshots.iter())
            {
                break (live, inner);
            }
        };
        let mut report = PruneReport::default();
        report.plan.objects_total = inner.objects.len() as u64;
        let dead: Vec<Id> = inner
            .objects
            .keys()
            .filter(|id| !live.contains(id))
            .copied()
            .collect();
        for id in &dead {
            let bytes = inner.objects[id].1.len() as u64;
            report.plan.objects_unused += 1;
            report.plan.bytes_unused += bytes;
            if !opts.dry_run {
                inner.objects.remove(id);
                report.objects_dropped += 1;
                report.bytes_dropped += bytes;
            }
        }
        report.waited = started.elapsed();
        Ok(report)
    }

    fn space(&self) -> Result<Space> {
        let inner = self.lock();
        let object_bytes = inner.objects.values().map(|(_, b)| b.len() as u64).sum();
        Ok(Space {
            objects: inner.objects.len() as u64,
            object_bytes,
            pack_bytes: object_bytes,
            ..Space::default()
        })
    }

    fn repair(
        &self,
        objects: &[ObjectCopy],
        snapshots: &[(Id, Vec<u8>)],
    ) -> Result<Vec<(Id, String)>> {
        let mut inner = self.lock();
        for o in objects {
            inner
                .objects
                .insert(o.id, (o.kind, Arc::new(o.sealed.clone())));
        }
        inner.snapshots.extend(snapshots.iter().cloned());
        Ok(Vec::new())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

struct MemoryReader(Arc<Mutex<Inner>>);

impl MemoryReader {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.0)
    }
}

impl Reader for MemoryReader {
    fn info(&self, id: &Id) -> Result<Option<ObjectInfo>> {
        Ok(self
            .lock()
            .objects
            .get(id)
            .map(|(kind, bytes)| ObjectInfo::of(*kind, bytes)))
    }

    fn contains(&self, ids: &[Id]) -> Result<Vec<bool>> {
        let inner = self.lock();
        Ok(ids
            .iter()
            .map(|id| inner.objects.contains_key(id))
            .collect())
    }

    fn read(&self, id: &Id) -> Result<(Kind, Vec<u8>)> {
        let inner = self.lock();
        let (kind, bytes) = inner
            .objects
            .get(id)
            .ok_or_else(|| Error::Missing(id.to_hex()))?;
        Ok((*kind, bytes.to_vec()))
    }

    fn list(&self, from: &Id, limit: usize) -> Result<Vec<(Id, ObjectInfo)>> {
        let inner = self.lock();
        Ok(inner
            .objects
            .range(*from..)
            .take(limit)
            .map(|(id, (kind, bytes))| (*id, ObjectInfo::of(*kind, bytes)))
            .collect())
    }

    fn count(&self) -> Result<u64> {
        Ok(self.lock().objects.len() as u64)
    }
}

struct MemoryWriter<'s> {
    store: &'s MemoryStore,
    batch_bytes: usize,
    pending: Vec<(Id, Kind, Arc<Vec<u8>>)>,
    pending_bytes: usize,
}

impl MemoryWriter<'_> {
    /// Publish the pending objects, then `snapshots`, under one lock (atomic to readers).
    fn publish(&mut self, snapshots: &[(Id, Vec<u8>)]) -> Result<()> {
        let mut inner = self.store.lock();
        for (id, blob) in snapshots {
            match inner.snapshots.get(id) {
                Some(old) if old != blob => {
                    return Err(Error::Refused(format!(
                        "snapshot {id} is already stored with other bytes; a stored snapshot is never replaced"
                    )))
                }
                _ => {}
            }
        }
        for (id, kind, bytes) in self.pending.drain(..) {
            inner.objects.entry(id).or_insert((kind, bytes));
        }
        self.pending_bytes = 0;
        for (id, blob) in snapshots {
            inner.snapshots.insert(*id, blob.clone());
        }
        Ok(())
    }
}

impl Writer for MemoryWriter<'_> {
    fn add(&mut self, id: Id, kind: Kind, sealed: &[u8]) -> Result<()> {
        self.pending.push((id, kind, Arc::new(sealed.to_vec())));
        self.pending_bytes += sealed.len();
        if self.pending_bytes >= self.batch_bytes {
            self.publish(&[])?;
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<()> {
        self.publish(&[])
    }

    fn commit(&mut self, snapshots: &[(Id, Vec<u8>)]) -> Result<()> {
        self.publish(snapshots)
    }
}
