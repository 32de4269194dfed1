//! The S3 writer: fills a pack in memory, uploads it beside the caller (up to `IN_FLIGHT`
//! packs at once), and writes each pack's index object only once the pack and every earlier
//! pack's index are stored. So objects become visible in the order they were added and only
//! with every byte of them; snapshots go last, in `commit`.

use super::client::Pending;
use super::index::{self, Placed};
use super::{snapshot_name, Shared};
use crate::crypto::Kind;
use crate::error::{Error, Result};
use crate::id::Id;
use std::collections::VecDeque;
use std::sync::Arc;

/// Packs uploading at once (memory: this many packs plus the one filling).
const IN_FLIGHT: usize = 2;
/// Pack sizes: tens of MiB (fewer requests), bounded (memory, retry cost).
const PACK_MIN: usize = 4 << 20;
const PACK_MAX: usize = 64 << 20;

struct Uploading {
    pack: String,
    objects: Vec<Placed>,
    pending: Pending,
}

pub struct S3Writer<'s> {
    shared: &'s Arc<Shared>,
    pack_bytes: usize,
    buf: Vec<u8>,
    placed: Vec<Placed>,
    uploading: VecDeque<Uploading>,
    /// Index objects this writer stored, in order (a collection's repack merges them).
    pub written: Vec<String>,
}

/// A fresh random name for a pack (128 bits: never reused).
pub fn fresh_name() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A fresh name for an index object: the writer's clock and a counter, then 64 random bits.
/// Names sort in the order one process wrote them, and roughly across processes; when two
/// index objects name the same object, readers use the copy of the first name (both are the
/// same sealed object, so a skewed clock only picks the other copy).
pub fn index_name() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("index/{ms:012x}{n:06x}-{:016x}", rand::random::<u64>())
}

impl<'s> S3Writer<'s> {
    pub(super) fn new(shared: &'s Arc<Shared>, batch_bytes: usize) -> S3Writer<'s> {
        S3Writer {
            shared,
            pack_bytes: batch_bytes.clamp(PACK_MIN, PACK_MAX),
            buf: Vec::new(),
            placed: Vec::new(),
            uploading: VecDeque::new(),
            written: Vec::new(),
        }
    }

    /// Start uploading the pack being filled.
    fn seal(&mut self) {
        if self.placed.is_empty() {
            return;
        }
        let pack = fresh_name();
        let bytes = std::mem::take(&mut self.buf);
        let pending = self
            .shared
            .client
            .put_in_background(&format!("packs/{pack}"), bytes);
        self.uploading.push_back(Uploading {
            pack,
            objects: std::mem::take(&mut self.placed),
            pending,
        });
    }

    /// Wait for the oldest upload, then make its objects visible with its index object.
    fn finish_oldest(&mut self) -> Result<()> {
        let Some(up) = self.uploading.pop_front() else {
            return Ok(());
        };
        let client = &self.shared.client;
        if let Err(e) = client.wait(up.pending) {
            // The later packs' objects must not become visible before these.
            self.abandon();
            return Err(e);
        }
        let objects: Vec<(u32, Placed)> = up.objects.into_iter().map(|p| (0, p)).collect();
        let name = index_name();
        let bytes = index::encode(&[up.pack], &objects);
        if let Err(e) = client.put(&name, bytes) {
            self.abandon();
            return Err(e);
        }
        self.written.push(name);
        Ok(())
    }

    /// Forget every upload in flight: what they hold never becomes visible (their packs are
    /// garbage for the next collection).
    fn abandon(&mut self) {
        for up in self.uploading.drain(..) {
            let _ = self.shared.client.wait(up.pending);
        }
        self.buf.clear();
        self.placed.clear();
    }

    fn finish_all(&mut self) -> Result<()> {
        while !self.uploading.is_empty() {
            self.finish_oldest()?;
        }
        Ok(())
    }

    /// Store `snapshots` (after everything they reference): a snapshot already stored with
    /// the same bytes is kept, one with other bytes is refused.
    fn put_snapshots(&self, snapshots: &[(Id, Vec<u8>)]) -> Result<()> {
        let client = &self.shared.client;
        for (id, blob) in snapshots {
            match client.get(&snapshot_name(id))? {
                Some(old) if &old == blob => continue,
                Some(_) => {
                    return Err(Error::Refused(format!(
                        "snapshot {id} is already stored with other bytes; a stored snapshot is never replaced"
                    )))
                }
                None => client.put(&snapshot_name(id), blob.clone())?,
            }
        }
        Ok(())
    }
}

impl super::super::Writer for S3Writer<'_> {
    fn add(&mut self, id: Id, kind: Kind, sealed: &[u8]) -> Result<()> {
        self.placed.push(Placed {
            id,
            kind,
            offset: self.buf.len() as u64,
            len: sealed.len() as u32,
            check: super::super::checksum(sealed),
        });
        self.buf.extend_from_slice(sealed);
        if self.buf.len() >= self.pack_bytes {
            self.seal();
            while self.uploading.len() > IN_FLIGHT {
                self.finish_oldest()?;
            }
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<()> {
        self.seal();
        self.finish_all()
    }

    fn commit(&mut self, snapshots: &[(Id, Vec<u8>)]) -> Result<()> {
        self.checkpoint()?;
        self.put_snapshots(snapshots)
    }
}

impl Drop for S3Writer<'_> {
    fn drop(&mut self) {
        // Uploads still running finish (or fail) before the runtime may go; their objects
        // stay invisible.
        self.abandon();
    }
}
