//! A local cache of a remote store's trees and content lists (DESIGN.md §9, "The object
//! cache"): a backup walks its parent snapshot's trees, `ls`, `diff` and the mount walk
//! trees too; from a server or a bucket each of those is a round trip, every time. Objects
//! never change under their id, so their sealed bytes are kept in
//! `ROOT/<repository id>/<xx>/<id>` (0700 directories, 0600 files), as `kind ‖ checksum ‖
//! sealed`. A file whose checksum does not match is removed and read from the store again;
//! what is read from the cache is opened and verified with the key like anything else. Chunks
//! are not kept (they are most of the bytes and a backup never rereads them).
//!
//! Bounded: a repository's cache holds at most `MAX_BYTES`. A file read from the cache has
//! its modification time brought forward (at most once a day), and a sweep removes the
//! files read or written longest ago until a fifth of the bound is free: once a day, in the
//! background of a command that opens the cache, and whenever a process has written a
//! tenth of the bound.

use super::{checksum, ObjectInfo, ReadEach, Reader, Writer};
use crate::crypto::Kind;
use crate::error::Result;
use crate::id::Id;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Most bytes one repository's cache holds (trees and lists are about 1–2 % of a
/// repository: this bound starts to bite past about 100 GiB of data).
const MAX_BYTES: u64 = 2 << 30;
/// A file read from the cache counts as used now when its time is older than this.
const TOUCH_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How often a sweep runs in the background of the commands that open the cache.
const SWEEP_EVERY: Duration = Duration::from_secs(24 * 3600);
/// The marker whose time says when the last sweep ran.
const SWEPT: &str = ".swept";

/// Where one repository's cached objects live.
#[derive(Debug)]
pub(crate) struct ObjectCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Bytes this process wrote since its last sweep.
    written: AtomicU64,
    /// A sweep of this cache runs.
    sweeping: Arc<AtomicBool>,
}

impl ObjectCache {
    /// The cache of repository `repo_id` under `root`; `None` when it cannot be made (the
    /// cache is only ever a shortcut). Sweeps it in the background when the last sweep is
    /// a day old.
    pub(crate) fn open(root: &Path, repo_id: &[u8; 16]) -> Option<Arc<ObjectCache>> {
        let cache = ObjectCache::with_bound(root, repo_id, MAX_BYTES)?;
        let marker = cache.dir.join(SWEPT);
        let last = std::fs::metadata(&marker).and_then(|m| m.modified()).ok();
        let due = last.is_none_or(|t| t.elapsed().map_or(true, |age| age > SWEEP_EVERY));
        if due {
            cache.sweep_in_background();
        }
        Some(cache)
    }

    fn with_bound(root: &Path, repo_id: &[u8; 16], max_bytes: u64) -> Option<Arc<ObjectCache>> {
        let hex: String = repo_id.iter().map(|b| format!("{b:02x}")).collect();
        let dir = root.join(hex);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .ok()?;
        Some(Arc::new(ObjectCache {
            dir,
            max_bytes,
            written: AtomicU64::new(0),
            sweeping: Arc::new(AtomicBool::new(false)),
        }))
    }

    /// Sweep on a thread of its own, unless a sweep of this cache runs already; the marker
    /// records when one finished (a command that ends first leaves the next one to sweep).
    fn sweep_in_background(&self) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let (dir, max_bytes, sweeping) = (self.dir.clone(), self.max_bytes, self.sweeping.clone());
        let spawned = std::thread::Builder::new()
            .name("cairn-cache-sweep".into())
            .spawn(move || {
                sweep(&dir, max_bytes);
                let _ = std::fs::write(dir.join(SWEPT), b"");
                sweeping.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.sweeping.store(false, Ordering::Release);
        }
    }

    #[cfg(test)]
    fn sweep(&self) {
        sweep(&self.dir, self.max_bytes)
    }

    fn path(&self, id: &Id) -> PathBuf {
        let hex = id.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// The cached object `id`, if it is there and intact (and then marked as used now).
    fn get(&self, id: &Id) -> Option<(Kind, Vec<u8>)> {
        let path = self.path(id);
        let mut file = std::fs::File::open(&path).ok()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ok()?;
        let old = file
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > TOUCH_AFTER));
        if old {
            let _ = file.set_modified(SystemTime::now());
        }
        let (kind, sealed) = match bytes.split_first() {
            Some((&k, rest)) if rest.len() >= 16 => (Kind::from_u8(k), &rest[16..]),
            _ => (None, &[][..]),
        };
        match kind {
            Some(kind) if bytes[1..17] == checksum(sealed)[..] => Some((kind, sealed.to_vec())),
            _ => {
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Keep `sealed` if it is a tree or a content list (a failure to write is ignored).
    fn put(&self, id: &Id, kind: Kind, sealed: &[u8]) {
        if !matches!(kind, Kind::Tree | Kind::List) {
            return;
        }
        let path = self.path(id);
        let Some(parent) = path.parent() else { return };
        let _ = std::fs::DirBuilder::new().mode(0o700).create(parent);
        let tmp = parent.join(format!(".{}.{}", id.to_hex(), std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&[kind as u8])?;
                f.write_all(&checksum(sealed))?;
                f.write_all(sealed)
            });
        if written.and_then(|()| std::fs::rename(&tmp, &path)).is_err() {
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        let n = sealed.len() as u64 + 17;
        if self.written.fetch_add(n, Ordering::Relaxed) + n > self.max_bytes / 10 {
            self.written.store(0, Ordering::Relaxed);
            self.sweep_in_background();
        }
    }
}

/// Remove the files of the cache at `dir` used longest ago until at most four fifths of
/// `max_bytes` is used, if it holds more than `max_bytes`.
fn sweep(dir: &Path, max_bytes: u64) {
    let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    for sub in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(sub.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(m) = f.metadata() {
                let when = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                files.push((when, m.len(), f.path()));
            }
        }
    }
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    if total <= max_bytes {
        return;
    }
    files.sort();
    for (_, len, path) in files {
        if total <= max_bytes / 5 * 4 {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

/// A reader that answers trees and content lists from the cache, and keeps those it reads
/// from the store.
pub(crate) struct CachedReader {
    pub(crate) inner: Box<dyn Reader>,
    pub(crate) cache: Arc<ObjectCache>,
}

impl CachedReader {
    fn keep(&self, id: &Id, read: &Result<(Kind, Vec<u8>)>) {
        if let Ok((kind, sealed)) = read {
            self.cache.put(id, *kind, sealed);
        }
    }
}

impl Reader for CachedReader {
    fn info(&self, id: &Id) -> Result<Option<ObjectInfo>> {
        self.inner.info(id)
    }

    fn contains(&self, ids: &[Id]) -> Result<Vec<bool>> {
        self.inner.contains(ids)
    }

    fn has(&self, id: &Id) -> Result<bool> {
        self.inner.has(id)
    }

    fn read(&self, id: &Id) -> Result<(Kind, Vec<u8>)> {
        if let Some(hit) = self.cache.get(id) {
            return Ok(hit);
        }
        let read = self.inner.read(id);
        self.keep(id, &read);
        read
    }

    /// The cached ones from the cache, the rest in one `read_many` of the store; `f` still
    /// sees every id in the order asked.
    fn read_many(&self, ids: &[Id], f: &mut ReadEach<'_>) -> Result<()> {
        let hits: HashMap<Id, (Kind, Vec<u8>)> = ids
            .iter()
            .filter_map(|id| self.cache.get(id).map(|hit| (*id, hit)))
            .collect();
        let misses: Vec<Id> = ids
            .iter()
            .filter(|id| !hits.contains_key(*id))
            .copied()
            .collect();
        let mut pos = 0;
        self.inner.read_many(&misses, &mut |id, read| {
            while let Some(hit) = ids.get(pos).and_then(|h| hits.get(h).map(|x| (*h, x))) {
                pos += 1;
                f(hit.0, Ok(hit.1.clone()))?;
            }
            pos += 1;
            self.keep(&id, &read);
            f(id, read)
        })?;
        for h in &ids[pos.min(ids.len())..] {
            if let Some(hit) = hits.get(h) {
                f(*h, Ok(hit.clone()))?;
            }
        }
        Ok(())
    }

    fn list(&self, from: &Id, limit: usize) -> Result<Vec<(Id, ObjectInfo)>> {
        self.inner.list(from, limit)
    }

    fn count(&self) -> Result<u64> {
        self.inner.count()
    }

    fn in_read_order(&self, ids: &[Id]) -> Result<Vec<(Id, ObjectInfo)>> {
        self.inner.in_read_order(ids)
    }
}

/// A writer that also keeps the trees and content lists it stores (a backup's next run walks
/// them as its parent). Kept before the store has them is harmless: the cache only answers
/// reads by id, and whether the store holds an object is always asked of the store.
pub(crate) struct CachedWriter<'a> {
    inner: Box<dyn Writer + 'a>,
    cache: Arc<ObjectCache>,
}

impl Writer for CachedWriter<'_> {
    fn add(&mut self, id: Id, kind: Kind, sealed: &[u8]) -> Result<()> {
        self.inner.add(id, kind, sealed)?;
        self.cache.put(&id, kind, sealed);
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<()> {
        self.inner.checkpoint()
    }

    fn commit(&mut self, snapshots: &[(Id, Vec<u8>)]) -> Result<()> {
        self.inner.commit(snapshots)
    }
}

/// `writer` keeping what it stores in the cache, when there is one.
pub(crate) fn wrap_writer<'a>(
    writer: Box<dyn Writer + 'a>,
    cache: &Option<Arc<ObjectCache>>,
) -> Box<dyn Writer + 'a> {
    match cache {
        Some(cache) => Box::new(CachedWriter {
            inner: writer,
            cache: cache.clone(),
        }),
        None => writer,
    }
}

/// `reader` with the cache in front of it, when there is one.
pub(crate) fn wrap(reader: Box<dyn Reader>, cache: &Option<Arc<ObjectCache>>) -> Box<dyn Reader> {
    match cache {
        Some(cache) => Box::new(CachedReader {
            inner: reader,
            cache: cache.clone(),
        }),
        None => reader,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;
    use crate::storage::{Storage, WriterOptions};

    fn id(n: u8) -> Id {
        Id([n; 32])
    }

    /// A store holding a tree, a list and a chunk; a cache over it.
    fn setup() -> (tempfile::TempDir, MemoryStore, Arc<ObjectCache>) {
        let store = MemoryStore::new(crate::testkit::small_config());
        let mut w = store.writer(WriterOptions::default()).unwrap();
        w.add(id(1), Kind::Tree, b"tree one").unwrap();
        w.add(id(2), Kind::List, b"list two").unwrap();
        w.add(id(3), Kind::Chunk, b"chunk three").unwrap();
        w.commit(&[]).unwrap();
        drop(w);
        let dir = tempfile::tempdir().unwrap();
        let cache = ObjectCache::open(dir.path(), &[7; 16]).unwrap();
        (dir, store, cache)
    }

    #[test]
    fn trees_and_lists_are_kept_chunks_are_not_and_order_is_kept() {
        let (_dir, store, cache) = setup();
        let r = CachedReader {
            inner: store.reader().unwrap(),
            cache: cache.clone(),
        };
        assert_eq!(r.read(&id(1)).unwrap().1, b"tree one");
        assert!(cache.get(&id(1)).is_some(), "a tree read is kept");
        let mut seen = Vec::new();
        r.read_many(&[id(3), id(1), id(2), id(9), id(1)], &mut |i, got| {
            seen.push((i, got.is_ok()));
            Ok(())
        })
        .unwrap();
        let order: Vec<Id> = seen.iter().map(|(i, _)| *i).collect();
        assert_eq!(
            order,
            vec![id(3), id(1), id(2), id(9), id(1)],
            "in the order asked"
        );
        assert_eq!(
            seen[3],
            (id(9), false),
            "a missing object is an error, not a hit"
        );
        assert!(cache.get(&id(2)).is_some(), "a list read is kept");
        assert!(cache.get(&id(3)).is_none(), "chunks are not kept");
        // A writer keeps the trees and lists it stores.
        let mut w = wrap_writer(
            store.writer(WriterOptions::default()).unwrap(),
            &Some(cache.clone()),
        );
        w.add(id(4), Kind::Tree, b"tree four").unwrap();
        w.add(id(5), Kind::Chunk, b"chunk five").unwrap();
        w.commit(&[]).unwrap();
        drop(w);
        assert!(cache.get(&id(4)).is_some() && cache.get(&id(5)).is_none());
        // Answered from the cache even where the store no longer has it.
        let other = MemoryStore::new(crate::testkit::small_config());
        let r = CachedReader {
            inner: other.reader().unwrap(),
            cache,
        };
        assert_eq!(r.read(&id(2)).unwrap(), (Kind::List, b"list two".to_vec()));
    }

    /// Past its bound the cache drops the files used longest ago, down to four fifths of
    /// the bound; a file read recently stays.
    #[test]
    fn the_cache_stays_within_its_bound_and_keeps_what_was_used() {
        let root = tempfile::tempdir().unwrap();
        let cache = ObjectCache::with_bound(root.path(), &[3; 16], 100 * 1017).unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(10 * 24 * 3600);
        for n in 0..90u8 {
            cache.put(&id(n), Kind::Tree, &[n; 1000]);
            let f = std::fs::File::options()
                .write(true)
                .open(cache.path(&id(n)))
                .unwrap();
            f.set_modified(long_ago + Duration::from_secs(n as u64))
                .unwrap();
        }
        // Read the oldest one: it counts as used now.
        assert!(cache.get(&id(0)).is_some());
        for n in 90..120u8 {
            cache.put(&id(n), Kind::Tree, &[n; 1000]);
        }
        // The sweeps the writes started run in the background: one at a time, then this one.
        while cache.sweeping.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
        }
        cache.sweep();
        let kept: Vec<u8> = (0..120u8)
            .filter(|n| cache.path(&id(*n)).exists())
            .collect();
        let bytes = kept.len() as u64 * 1017;
        assert!(bytes <= 100 * 1017, "{} files kept", kept.len());
        assert!(
            kept.len() >= 70,
            "down to four fifths, not further: {}",
            kept.len()
        );
        assert!(kept.contains(&0), "the file read recently stays");
        assert!(!kept.contains(&1), "the file used longest ago goes");
        assert!((90..120).all(|n| kept.contains(&n)), "new files stay");
    }

    #[test]
    fn a_damaged_cache_file_is_dropped_and_read_again() {
        let (_dir, store, cache) = setup();
        let r = CachedReader {
            inner: store.reader().unwrap(),
            cache: cache.clone(),
        };
        r.read(&id(1)).unwrap();
        let path = cache.path(&id(1));
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            r.read(&id(1)).unwrap().1,
            b"tree one",
            "read from the store again"
        );
        std::fs::write(&path, b"x").unwrap();
        assert!(
            cache.get(&id(1)).is_none() && !path.exists(),
            "a short file is dropped"
        );
        let mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
    }
}
