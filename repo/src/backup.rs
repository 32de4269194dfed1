//! Backup: walk the sources through directory fds, chunk changed files with a keyed FastCDC,
//! seal chunks in parallel (rayon), and hand sealed objects to one packer thread that commits
//! them in batches. The snapshot is committed last (see `packer`).

use crate::crypto::Kind;
use crate::error::{Error, Result};
use crate::format::{
    encode_list, Content, Entry, Extent, FileType, ListRef, Snapshot, SnapshotStats, Time, Tree,
    INLINE_EXTENTS,
};
use crate::fsmeta::{entry_from_stat, proc_path, read_xattrs, Names};
use crate::graph::Refs;
use crate::id::Id;
use crate::repo::Repository;
use crate::storage::Reader;
use crate::storage::{Writer, WriterOptions};
use crate::util::{display_path as display, join_path as join};
use globset::{Glob, GlobSet, GlobSetBuilder};
use rayon::prelude::*;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags};
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const VIEW_REFRESH: Duration = Duration::from_secs(2);

/// Bytes of a file read (and chunked) at a time; at least the chunk maximum (see `fill`).
/// 4 MiB measured as fast as 8 MiB with less memory (first backup of the bench dataset).
const READ_BUF: usize = 4 << 20;
const BATCH_BYTES: usize = 16 << 20;
const INDEX_EVERY: u64 = 64 << 20;
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

#[derive(Clone, Debug)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub tags: Vec<String>,
    pub host: Option<String>,
    pub excludes: Vec<String>,
    pub exclude_caches: bool,
    pub one_file_system: bool,
    /// zstd level; 0 stores uncompressed.
    pub compression: i32,
    /// Use this snapshot as parent instead of the latest with the same host and paths.
    pub parent: Option<Id>,
    /// Read every file even if its metadata says it is unchanged.
    pub force: bool,
    /// Worker threads (0: `util::default_threads()`): more than cores, since much of a backup
    /// waits on the disk.
    pub threads: usize,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            paths: Vec::new(),
            tags: Vec::new(),
            host: None,
            excludes: Vec::new(),
            exclude_caches: false,
            one_file_system: false,
            compression: 3,
            parent: None,
            force: false,
            threads: 0,
        }
    }
}

/// Live counters for a progress display; totals are filled by `scan` when someone runs it.
#[derive(Default)]
pub struct Progress {
    pub files: AtomicU64,
    pub dirs: AtomicU64,
    pub bytes: AtomicU64,
    pub bytes_read: AtomicU64,
    pub total_files: AtomicU64,
    pub total_bytes: AtomicU64,
    pub scan_done: AtomicBool,
    /// Set (from a signal handler's thread) to stop the backup: it ends with
    /// `Error::Interrupted` after committing what it wrote, which the next backup reuses.
    pub cancel: AtomicBool,
}

pub struct BackupReport {
    pub id: Id,
    pub snapshot: Snapshot,
    pub warnings: Vec<String>,
}

struct Excludes {
    set: GlobSet,
    caches: bool,
    one_fs: bool,
}

impl Excludes {
    fn new(patterns: &[String], caches: bool, one_fs: bool) -> Result<Excludes> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            let p = p.trim_end_matches('/');
            if p.is_empty() {
                return Err(Error::Usage(
                    "an empty exclude pattern (or `/`) would exclude everything; give a glob such as `*.tmp`".into(),
                ));
            }
            let pat = if p.starts_with('/') {
                p.to_string()
            } else {
                format!("**/{p}")
            };
            let glob = globset::GlobBuilder::new(&pat)
                .literal_separator(true)
                .build()
                .map_err(|e| Error::Usage(format!("bad exclude pattern `{p}`: {e}")))?;
            b.add(glob);
            // A pattern for a directory also excludes everything inside it.
            b.add(Glob::new(&format!("{pat}/**")).map_err(|e| Error::Usage(e.to_string()))?);
        }
        Ok(Excludes {
            set: b.build().map_err(|e| Error::Usage(e.to_string()))?,
            caches,
            one_fs,
        })
    }

    fn excluded(&self, path: &[u8]) -> bool {
        !self.set.is_empty() && self.set.is_match(Path::new(OsStr::from_bytes(path)))
    }
}

/// Read exclude patterns from a file: one per line, `#` comments and blank lines ignored.
pub fn read_exclude_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading exclude file {}", path.display()), e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

enum Msg {
    Object(Id, Kind, Vec<u8>),
}

/// A read view that is replaced every few seconds: a redb read transaction pins the pages it
/// sees, so holding one for a whole backup would keep every page freed by our own commits from
/// being reused (the file would grow by the index and tree churn).
struct FreshView<'r> {
    repo: &'r Repository,
    current: Mutex<(Arc<dyn Reader>, Instant)>,
    /// A remote store's ids, listed once after `ASKED_SINGLY` lookups (a round trip per
    /// chunk otherwise; a backup that finds little new, a no-change backup's one lookup of
    /// its root tree, never lists). An object stored since by another writer is sent again:
    /// the store keeps its first copy.
    stored: std::sync::OnceLock<Option<HashSet<Id>>>,
    /// Lookups asked of a remote store one by one so far.
    asked: std::sync::atomic::AtomicUsize,
    /// Held by the one thread that lists (the others wait for its listing instead of each
    /// listing every id again, each on a connection of its own).
    listing: Mutex<()>,
    remote: bool,
}

/// Most ids a backup to a remote store lists up front (about 48 bytes of memory each); past
/// that it asks per chunk.
const LIST_IDS_MAX: u64 = 2_000_000;
/// Lookups a backup to a remote store asks one by one before it lists every stored id (the
/// listing is about 48 bytes per object: 0.7 MiB for 14 k objects, 96 MiB at the cap).
const ASKED_SINGLY: usize = 16;

impl<'r> FreshView<'r> {
    fn new(repo: &'r Repository) -> Result<Self> {
        Ok(FreshView {
            repo,
            current: Mutex::new((Arc::from(repo.reader()?), Instant::now())),
            stored: std::sync::OnceLock::new(),
            asked: std::sync::atomic::AtomicUsize::new(0),
            listing: Mutex::new(()),
            remote: repo.storage().capabilities().remote,
        })
    }

    /// Whether the repository holds `id` (as of the last refresh, or of the listing).
    fn has(&self, id: &Id) -> Result<bool> {
        if !self.remote {
            return self.get()?.has(id);
        }
        if self.stored.get().is_none() {
            let asked = self
                .asked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if asked < ASKED_SINGLY {
                return self.get()?.has(id);
            }
            self.list_once()?;
        }
        match self.stored.get() {
            Some(Some(ids)) => Ok(ids.contains(id)),
            _ => self.get()?.has(id),
        }
    }

    /// List the stored ids (unless another thread just did).
    fn list_once(&self) -> Result<()> {
        let _listing = self.listing.lock().unwrap_or_else(|e| e.into_inner());
        if self.stored.get().is_none() {
            let reader = self.get()?;
            let listed = match reader.count()? <= LIST_IDS_MAX {
                true => Some(all_ids(&*reader)?),
                false => None,
            };
            let _ = self.stored.set(listed);
        }
        Ok(())
    }

    fn get(&self) -> Result<Arc<dyn Reader>> {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.1.elapsed() > VIEW_REFRESH {
            *cur = (Arc::from(self.repo.reader()?), Instant::now());
        }
        Ok(cur.0.clone())
    }
}

/// Every id a reader holds, listed a page at a time.
fn all_ids(reader: &dyn Reader) -> Result<HashSet<Id>> {
    const PAGE: usize = 64 * 1024;
    let mut ids = HashSet::new();
    let mut from = Id::default();
    loop {
        let page = reader.list(&from, PAGE)?;
        let Some((last, _)) = page.last().copied() else {
            return Ok(ids);
        };
        let full = page.len() == PAGE;
        ids.extend(page.into_iter().map(|(id, _)| id));
        match (full, last.next()) {
            (true, Some(next)) => from = next,
            _ => return Ok(ids),
        }
    }
}

struct Ctx<'r> {
    repo: &'r Repository,
    view: FreshView<'r>,
    names: Names,
    excludes: Excludes,
    compression: i32,
    force: bool,
    known: Mutex<HashSet<Id>>,
    tx: SyncSender<Msg>,
    failed: AtomicBool,
    warnings: Mutex<Vec<String>>,
    progress: &'r Progress,
    stats: StatCounters,
}

#[derive(Default)]
struct StatCounters {
    files: AtomicU64,
    dirs: AtomicU64,
    other: AtomicU64,
    bytes: AtomicU64,
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unchanged: AtomicU64,
    bytes_read: AtomicU64,
    objects_added: AtomicU64,
    bytes_added: AtomicU64,
}

impl<'r> Ctx<'r> {
    fn warn(&self, msg: String) {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(msg);
    }

    /// Store an object unless the repository (or this backup) already has it. Trees and
    /// content lists carry their references in the clear (`refs`, DESIGN.md §3).
    fn put(&self, kind: Kind, plain: &[u8], refs: Option<&dyn Fn() -> Refs>) -> Result<Id> {
        let id = self.repo.keys().id_of(kind, plain);
        if self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
        {
            return Ok(id);
        }
        let stored = self.view.has(&id)?;
        // Claim the id; a worker that lost the race leaves the object to the winner.
        if !self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id)
            || stored
        {
            return Ok(id);
        }
        let level = if kind == Kind::Chunk {
            self.compression
        } else {
            3
        };
        let keys = self.repo.keys();
        let sealed = match refs {
            Some(refs) => keys.seal_public(kind, &id, &refs().encode(), plain, level)?,
            None => keys.seal(kind, &id, plain, level)?,
        };
        self.stats.objects_added.fetch_add(1, Relaxed);
        self.stats
            .bytes_added
            .fetch_add(plain.len() as u64, Relaxed);
        if self.tx.send(Msg::Object(id, kind, sealed)).is_err() {
            self.failed.store(true, Relaxed);
            return Err(Error::Internal("the repository writer stopped".into()));
        }
        Ok(id)
    }

    fn put_tree(&self, tree: &Tree) -> Result<Id> {
        self.put(Kind::Tree, &tree.encode(), Some(&|| Refs::of_tree(tree)))
    }

    /// The parent snapshot's tree `id`. It is stored (the parent references it), so a tree
    /// built the same again needs no lookup: a no-change backup to a server asks for none.
    fn parent_tree(&self, id: Option<Id>) -> Option<Tree> {
        let id = id?;
        let tree = self.repo.load_tree(&*self.view.get().ok()?, &id).ok()?;
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        Some(tree)
    }

    fn check_failed(&self) -> Result<()> {
        if self.failed.load(Relaxed) {
            return Err(Error::Internal("the repository writer stopped".into()));
        }
        if self.progress.cancel.load(Relaxed) {
            return Err(Error::Interrupted);
        }
        Ok(())
    }

    /// Back up the directory open as `dir`; returns its tree id.
    fn backup_dir(&self, dir: &OwnedFd, path: &[u8], parent: Option<Tree>, dev: u64) -> Result<Id> {
        self.check_failed()?;
        let names = match list_dir(dir) {
            Ok(n) => n,
            Err(e) => {
                self.warn(format!("{}: cannot list directory: {e}", display(path)));
                return self.put_tree(&Tree::default());
            }
        };
        let cache_tag =
            self.excludes.caches && names.iter().any(|n| n == b"CACHEDIR.TAG") && is_cache_dir(dir);
        let entries: Vec<Option<Entry>> = names
            .par_iter()
            .filter(|n| !cache_tag || n.as_slice() == b"CACHEDIR.TAG")
            .map(|name| {
                let prev = parent.as_ref().and_then(|t| t.find(name));
                self.backup_entry(dir.as_fd(), name, &join(path, name), prev, dev)
            })
            .collect::<Result<_>>()?;
        let tree = Tree {
            entries: entries.into_iter().flatten().collect(),
        };
        self.progress.dirs.fetch_add(1, Relaxed);
        self.stats.dirs.fetch_add(1, Relaxed);
        self.put_tree(&tree)
    }

    /// Back up one directory entry; `None` when it vanished, is excluded or unreadable.
    fn backup_entry(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        prev: Option<&Entry>,
        dev: u64,
    ) -> Result<Option<Entry>> {
        if self.excludes.excluded(path) {
            return Ok(None);
        }
        let cname = OsStr::from_bytes(name);
        let st = match rustix::fs::statat(dir, cname, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(e) => {
                let why = if e == rustix::io::Errno::NOENT {
                    "vanished before it could be read".to_string()
                } else {
                    io::Error::from(e).to_string()
                };
                self.warn(format!("{}: {why}", display(path)));
                return Ok(None);
            }
        };
        let mut e = entry_from_stat(name, &st, &self.names);
        match e.kind {
            FileType::Dir => self.dir_entry(dir, &mut e, path, prev, dev)?,
            FileType::File => {
                if !self.file_entry(dir, &mut e, path, prev)? {
                    return Ok(None);
                }
            }
            FileType::Symlink => {
                match rustix::fs::readlinkat(dir, cname, Vec::new()) {
                    Ok(t) => e.target = t.into_bytes(),
                    Err(err) => {
                        self.warn(format!(
                            "{}: cannot read link: {}",
                            display(path),
                            io::Error::from(err)
                        ));
                        return Ok(None);
                    }
                }
                self.other_xattrs(dir, &mut e, path);
                self.stats.other.fetch_add(1, Relaxed);
            }
            _ => {
                self.other_xattrs(dir, &mut e, path);
                self.stats.other.fetch_add(1, Relaxed);
            }
        }
        Ok(Some(e))
    }

    fn other_xattrs(&self, dir: BorrowedFd<'_>, e: &mut Entry, path: &[u8]) {
        match read_xattrs(None, &proc_path(dir, &e.name)) {
            Ok(x) => e.xattrs = x,
            Err(err) => self.warn(format!(
                "{}: cannot read extended attributes: {err}",
                display(path)
            )),
        }
    }

    fn dir_entry(
        &self,
        dir: BorrowedFd<'_>,
        e: &mut Entry,
        path: &[u8],
        prev: Option<&Entry>,
        dev: u64,
    ) -> Result<()> {
        if self.excludes.one_fs && e.dev != dev {
            e.subtree = Some(self.put_tree(&Tree::default())?);
            return Ok(());
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(dir, OsStr::from_bytes(&e.name), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(err) => {
                self.warn(format!(
                    "{}: cannot open directory: {}",
                    display(path),
                    io::Error::from(err)
                ));
                e.subtree = Some(self.put_tree(&Tree::default())?);
                return Ok(());
            }
        };
        match read_xattrs(Some(fd.as_fd()), &proc_path(dir, &e.name)) {
            Ok(x) => e.xattrs = x,
            Err(err) => self.warn(format!(
                "{}: cannot read extended attributes: {err}",
                display(path)
            )),
        }
        let parent = self.parent_tree(
            prev.filter(|p| p.kind == FileType::Dir)
                .and_then(|p| p.subtree),
        );
        e.subtree = Some(self.backup_dir(&fd, path, parent, dev)?);
        Ok(())
    }

    fn unchanged(&self, e: &Entry, prev: Option<&Entry>) -> Option<Entry> {
        let p = prev?;
        let same = !self.force
            && p.kind == FileType::File
            && p.size == e.size
            && p.mtime == e.mtime
            && p.ctime == e.ctime
            && p.ino == e.ino;
        same.then(|| p.clone())
    }

    /// Fill a file entry's content; false when the file could not be read at all.
    fn file_entry(
        &self,
        dir: BorrowedFd<'_>,
        e: &mut Entry,
        path: &[u8],
        prev: Option<&Entry>,
    ) -> Result<bool> {
        self.stats.files.fetch_add(1, Relaxed);
        if let Some(p) = self.unchanged(e, prev) {
            e.content = p.content;
            e.xattrs = p.xattrs;
            self.stats.files_unchanged.fetch_add(1, Relaxed);
            self.stats.bytes.fetch_add(e.size, Relaxed);
            self.progress.files.fetch_add(1, Relaxed);
            self.progress.bytes.fetch_add(e.size, Relaxed);
            return Ok(true);
        }
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let open = rustix::fs::openat(
            dir,
            OsStr::from_bytes(&e.name),
            flags | OFlags::NOATIME,
            Mode::empty(),
        )
        .or_else(|_| rustix::fs::openat(dir, OsStr::from_bytes(&e.name), flags, Mode::empty()));
        let fd = match open {
            Ok(fd) => fd,
            Err(err) => {
                let why = if err == rustix::io::Errno::NOENT {
                    "vanished before it could be read".to_string()
                } else {
                    io::Error::from(err).to_string()
                };
                self.warn(format!("{}: {why}", display(path)));
                return Ok(false);
            }
        };
        match read_xattrs(Some(fd.as_fd()), &proc_path(dir, &e.name)) {
            Ok(x) => e.xattrs = x,
            Err(err) => self.warn(format!(
                "{}: cannot read extended attributes: {err}",
                display(path)
            )),
        }
        let sparse = (e.blocks * 512) < e.size;
        let extents = match self.read_content(&fd, sparse, e.size) {
            Ok(x) => x,
            Err(ReadError::Io(err)) => {
                self.warn(format!("{}: read failed: {err}", display(path)));
                return Ok(false);
            }
            Err(ReadError::Repo(err)) => return Err(err),
        };
        // The entry holds exactly what was read: its size is the bytes read (or holes seen).
        let read: u64 = extents.iter().map(|x| x.len).sum();
        if read != e.size {
            // A file that reads shorter than its size and did not change (sysfs and procfs
            // files say 4096 or 0) is stored as read, like `cat` shows it, without a warning;
            // one that changed size while it was read is stored as read, and the warning says so.
            // (Only the size tells: opening a sysfs file can move its mtime.)
            let changed = match rustix::fs::fstat(&fd) {
                Ok(st) => st.st_size as u64 != e.size,
                Err(_) => true,
            };
            if changed {
                self.warn(format!(
                    "{}: changed size while being read ({} -> {read} bytes); stored the {read} bytes read, which may mix old and new contents",
                    display(path),
                    e.size
                ));
            }
            e.size = read;
        }
        e.content = self.content_of(extents)?;
        if prev.is_some() {
            self.stats.files_changed.fetch_add(1, Relaxed);
        } else {
            self.stats.files_new.fetch_add(1, Relaxed);
        }
        self.stats.bytes.fetch_add(e.size, Relaxed);
        self.progress.files.fetch_add(1, Relaxed);
        Ok(true)
    }

    fn content_of(&self, extents: Vec<Extent>) -> Result<Content> {
        if extents.len() <= INLINE_EXTENTS {
            return Ok(Content::Inline(extents));
        }
        let mut lists = Vec::new();
        for part in extents.chunks(INLINE_EXTENTS) {
            let id = self.put(
                Kind::List,
                &encode_list(part),
                Some(&|| Refs::of_list(part)),
            )?;
            lists.push(ListRef {
                id,
                len: part.iter().map(|x| x.len).sum(),
                count: part.len() as u32,
            });
        }
        Ok(Content::Lists(lists))
    }

    fn read_content(
        &self,
        fd: &OwnedFd,
        sparse: bool,
        size: u64,
    ) -> Result<Vec<Extent>, ReadError> {
        let regions = if sparse {
            data_regions(fd)?
        } else {
            vec![(0, u64::MAX)]
        };
        let mut extents: Vec<Extent> = Vec::new();
        let mut pos = 0u64;
        for (start, end) in regions {
            if start > pos {
                push_hole(&mut extents, start - pos);
            }
            let hint = if end == u64::MAX { size } else { end - start };
            let n = self.chunk_region(fd, start, end, hint, &mut extents)?;
            pos = start + n;
            if end != u64::MAX && n < end - start {
                // EOF before the end of a data region: the file shrank while being read, or
                // is a pseudo-file shorter than its size. What was read is all there is; no
                // later region and no trailing hole may pad it with zeros that were never read.
                return Ok(extents);
            }
        }
        if sparse {
            let now = rustix::fs::fstat(fd)
                .map_err(|e| ReadError::Io(e.into()))?
                .st_size as u64;
            if now > pos {
                // A trailing hole, or data appended since the regions were mapped: read that.
                match rustix::fs::seek(fd, rustix::fs::SeekFrom::Data(pos)) {
                    Ok(data) if data < now => {
                        if data > pos {
                            push_hole(&mut extents, data - pos);
                        }
                        self.chunk_region(fd, data, u64::MAX, now - data, &mut extents)?;
                    }
                    _ => push_hole(&mut extents, now - pos),
                }
            }
        }
        Ok(extents)
    }

    /// Chunk `[start, end)` of the file (to EOF when `end` is `u64::MAX`); returns bytes read.
    fn chunk_region(
        &self,
        fd: &OwnedFd,
        start: u64,
        end: u64,
        size_hint: u64,
        out: &mut Vec<Extent>,
    ) -> Result<u64, ReadError> {
        let cfg = self.repo.config();
        let seed = self.repo.keys().chunker_seed();
        // At least one whole chunk fits, so every cut is the one the whole stream would get.
        let cap = READ_BUF.max(cfg.chunk_max as usize);
        let mut buf: Vec<u8> = Vec::new();
        let mut off = start;
        let mut total = 0u64;
        loop {
            let expect = size_hint.saturating_sub(off - start);
            let eof = fill(fd, &mut buf, &mut off, end, expect, cap)?;
            self.check_failed().map_err(ReadError::Repo)?;
            let chunks: Vec<(usize, usize)> = fastcdc::v2020::FastCDC::with_level_and_seed(
                &buf,
                cfg.chunk_min as usize,
                cfg.chunk_avg as usize,
                cfg.chunk_max as usize,
                fastcdc::v2020::Normalization::Level1,
                seed,
            )
            .map(|c| (c.offset, c.length))
            .collect();
            let keep = if eof || chunks.len() <= 1 {
                chunks.len()
            } else {
                chunks.len() - 1
            };
            let done: Vec<Extent> = chunks[..keep]
                .par_iter()
                .map(|&(o, l)| {
                    self.put(Kind::Chunk, &buf[o..o + l], None)
                        .map(|id| Extent {
                            id: Some(id),
                            len: l as u64,
                        })
                })
                .collect::<Result<_>>()
                .map_err(ReadError::Repo)?;
            let consumed: usize = chunks[..keep].iter().map(|c| c.1).sum();
            out.extend(done);
            total += consumed as u64;
            self.stats.bytes_read.fetch_add(consumed as u64, Relaxed);
            self.progress.bytes_read.fetch_add(consumed as u64, Relaxed);
            self.progress.bytes.fetch_add(consumed as u64, Relaxed);
            buf.drain(..consumed);
            if eof && buf.is_empty() {
                return Ok(total);
            }
        }
    }
}

enum ReadError {
    Io(io::Error),
    Repo(Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

fn push_hole(extents: &mut Vec<Extent>, len: u64) {
    match extents.last_mut() {
        Some(Extent { id: None, len: l }) => *l += len,
        _ => extents.push(Extent { id: None, len }),
    }
}

/// Read until `buf` holds `cap` bytes, `end` is reached or EOF; true at EOF/end.
/// `expect` is how many more bytes the file should have: the buffer is sized for them (plus one,
/// to see EOF in the same call), never larger than `cap`, so small files cost small buffers.
fn fill(
    fd: &OwnedFd,
    buf: &mut Vec<u8>,
    off: &mut u64,
    end: u64,
    expect: u64,
    cap: usize,
) -> io::Result<bool> {
    let room = if expect == 0 {
        64 << 10
    } else {
        expect.saturating_add(1)
    };
    let want = (buf.len() as u64)
        .saturating_add(room)
        .min((end - *off).saturating_add(buf.len() as u64));
    let want = (want.min(cap as u64) as usize).max(buf.len());
    let old = buf.len();
    buf.resize(want, 0);
    let mut filled = old;
    while filled < buf.len() {
        match rustix::io::pread(fd, &mut buf[filled..], *off) {
            Ok(0) => {
                buf.truncate(filled);
                return Ok(true);
            }
            Ok(n) => {
                filled += n;
                *off += n as u64;
            }
            Err(e) if e == rustix::io::Errno::INTR => continue,
            Err(e) => {
                buf.truncate(filled);
                return Err(e.into());
            }
        }
    }
    Ok(*off >= end)
}

/// The data regions of a sparse file, by SEEK_DATA/SEEK_HOLE.
fn data_regions(fd: &OwnedFd) -> io::Result<Vec<(u64, u64)>> {
    use rustix::fs::SeekFrom;
    let mut out = Vec::new();
    let mut pos = 0u64;
    loop {
        let start = match rustix::fs::seek(fd, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(e) if e == rustix::io::Errno::NXIO => break,
            Err(e) if e == rustix::io::Errno::INVAL => return Ok(vec![(0, u64::MAX)]),
            Err(e) => return Err(e.into()),
        };
        let end = rustix::fs::seek(fd, SeekFrom::Hole(start))?;
        out.push((start, end));
        pos = end;
    }
    Ok(out)
}

fn list_dir(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let d = rustix::fs::Dir::read_from(dir)?;
    let mut names = Vec::new();
    for ent in d {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

fn is_cache_dir(dir: &OwnedFd) -> bool {
    let Ok(fd) = rustix::fs::openat(
        dir,
        "CACHEDIR.TAG",
        OFlags::RDONLY | OFlags::NOFOLLOW,
        Mode::empty(),
    ) else {
        return false;
    };
    let mut buf = [0u8; 43];
    matches!(rustix::io::pread(&fd, &mut buf, 0), Ok(43)) && buf == CACHEDIR_SIGNATURE
}

/// A source path split into its components, for building the snapshot's root tree.
#[derive(Default)]
struct PathTrie {
    children: BTreeMap<Vec<u8>, PathTrie>,
    leaf: bool,
}

impl PathTrie {
    fn insert(&mut self, comps: &[Vec<u8>]) {
        if self.leaf {
            return;
        }
        match comps.split_first() {
            None => {
                self.leaf = true;
                self.children.clear();
            }
            Some((first, rest)) => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }
}

/// Make a source path absolute without resolving its last component (a symlink given as a
/// source is stored as the link).
pub fn absolute_source(p: &Path) -> Result<PathBuf> {
    let abs =
        std::path::absolute(p).map_err(|e| Error::io(format!("resolving {}", p.display()), e))?;
    let parent = abs.parent();
    let name = abs.file_name();
    match (parent, name) {
        (Some(parent), Some(name)) => {
            let parent = std::fs::canonicalize(parent)
                .map_err(|e| Error::io(format!("{}", p.display()), e))?;
            Ok(parent.join(name))
        }
        _ => Ok(PathBuf::from("/")),
    }
}

fn components(p: &Path) -> Vec<Vec<u8>> {
    p.components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.as_bytes().to_vec()),
            _ => None,
        })
        .collect()
}

impl<'r> Ctx<'r> {
    /// Build the tree for one level of the source trie: intermediate directories get their real
    /// metadata, leaves are backed up in full.
    fn root_level(
        &self,
        dir: &OwnedFd,
        path: &[u8],
        trie: &PathTrie,
        parent: Option<Tree>,
    ) -> Result<Id> {
        if trie.leaf {
            let st = rustix::fs::fstat(dir).map_err(|e| Error::io(display(path), e.into()))?;
            return self.backup_dir(dir, path, parent, st.st_dev);
        }
        let mut entries = Vec::new();
        for (name, sub) in &trie.children {
            let child_path = join(path, name);
            let prev = parent.as_ref().and_then(|t| t.find(name));
            let st =
                match rustix::fs::statat(dir, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(e) => {
                        self.warn(format!("{}: {}", display(&child_path), io::Error::from(e)));
                        continue;
                    }
                };
            if sub.leaf {
                if let Some(e) =
                    self.backup_entry(dir.as_fd(), name, &child_path, prev, st.st_dev)?
                {
                    entries.push(e);
                }
                continue;
            }
            let mut e = entry_from_stat(name, &st, &self.names);
            if e.kind != FileType::Dir {
                self.warn(format!("{}: not a directory", display(&child_path)));
                continue;
            }
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let fd = rustix::fs::openat(dir, OsStr::from_bytes(name), flags, Mode::empty())
                .map_err(|err| Error::io(display(&child_path), err.into()))?;
            e.xattrs =
                read_xattrs(Some(fd.as_fd()), &proc_path(dir.as_fd(), name)).unwrap_or_default();
            let sub_parent = self.parent_tree(prev.and_then(|p| p.subtree));
            e.subtree = Some(self.root_level(&fd, &child_path, sub, sub_parent)?);
            entries.push(e);
        }
        self.put_tree(&Tree { entries })
    }

    fn snapshot_stats(&self) -> SnapshotStats {
        let s = &self.stats;
        SnapshotStats {
            files: s.files.load(Relaxed),
            dirs: s.dirs.load(Relaxed),
            other: s.other.load(Relaxed),
            bytes: s.bytes.load(Relaxed),
            files_new: s.files_new.load(Relaxed),
            files_changed: s.files_changed.load(Relaxed),
            files_unchanged: s.files_unchanged.load(Relaxed),
            bytes_read: s.bytes_read.load(Relaxed),
            objects_added: s.objects_added.load(Relaxed),
            bytes_added: s.bytes_added.load(Relaxed),
            bytes_added_stored: 0,
            warnings: 0,
            duration_ms: 0,
        }
    }
}

/// The latest snapshot with the same host and the same set of paths.
pub fn find_parent(
    repo: &Repository,
    host: &str,
    paths: &[Vec<u8>],
) -> Result<Option<(Id, Snapshot)>> {
    let mut want: Vec<&Vec<u8>> = paths.iter().collect();
    want.sort();
    Ok(repo
        .snapshots_tolerant()?
        .0
        .into_iter()
        .rev()
        .find(|s| {
            let mut have: Vec<&Vec<u8>> = s.snapshot.paths.iter().collect();
            have.sort();
            s.snapshot.host == host && have == want
        })
        .map(|s| (s.id, s.snapshot)))
}

/// Run a backup and commit its snapshot.
pub fn backup(
    repo: &Repository,
    opts: &BackupOptions,
    progress: &Progress,
) -> Result<BackupReport> {
    let started = std::time::Instant::now();
    if opts.paths.is_empty() {
        return Err(Error::Usage(
            "nothing to back up: give at least one path".into(),
        ));
    }
    let mut sources = Vec::new();
    let mut warnings = Vec::new();
    for p in &opts.paths {
        let abs = absolute_source(p)?;
        if std::fs::symlink_metadata(&abs).is_err() {
            warnings.push(format!("{}: does not exist, skipped", p.display()));
            continue;
        }
        sources.push(abs);
    }
    if sources.is_empty() {
        return Err(Error::NotFound(
            "none of the given paths exists; nothing backed up".into(),
        ));
    }
    let mut trie = PathTrie::default();
    for s in &sources {
        trie.insert(&components(s));
    }
    let paths: Vec<Vec<u8>> = sources
        .iter()
        .map(|s| s.as_os_str().as_bytes().to_vec())
        .collect();
    let host = opts.host.clone().unwrap_or_else(crate::util::hostname);
    // What a writer that died left unindexed (a full disk, a kill) goes back first, so it
    // does not wait for a prune (best effort: a read-only or full repository stays as it is).
    let _ = repo.storage().recover();
    // The session begins before the parent is chosen: a prune either sees the session and
    // deletes nothing, or ended before it, and then a parent it took away is not listed. The
    // parent's objects are reused without a lookup (its files' contents, and its trees).
    let session = repo.storage().begin_session(&crate::util::session_info())?;
    let result = choose_parent(repo, opts.parent, &host, &paths).and_then(|parent| {
        crate::util::pool(opts.threads)?.install(|| {
            run(
                repo, opts, progress, &trie, parent, paths, host, started, warnings,
            )
        })
    });
    // The session marker only protects unreferenced objects from a concurrent prune; a failure
    // to remove it is harmless (prune treats dead processes' sessions as ended).
    let _ = repo.storage().end_session(session);
    result
}

/// The snapshot given as `--parent`, or the latest of the same host and paths.
fn choose_parent(
    repo: &Repository,
    given: Option<Id>,
    host: &str,
    paths: &[Vec<u8>],
) -> Result<Option<(Id, Snapshot)>> {
    match given {
        Some(id) => {
            let s = repo
                .snapshots_tolerant()?
                .0
                .into_iter()
                .find(|s| s.id == id)
                .ok_or_else(|| Error::NotFound(format!("no parent snapshot {id}")))?;
            Ok(Some((s.id, s.snapshot)))
        }
        None => find_parent(repo, host, paths),
    }
}

struct Walked {
    root: Result<Id>,
    stats: SnapshotStats,
    warnings: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
fn run(
    repo: &Repository,
    opts: &BackupOptions,
    progress: &Progress,
    trie: &PathTrie,
    parent: Option<(Id, Snapshot)>,
    paths: Vec<Vec<u8>>,
    host: String,
    started: std::time::Instant,
    mut warnings: Vec<String>,
) -> Result<BackupReport> {
    let excludes = Excludes::new(&opts.excludes, opts.exclude_caches, opts.one_file_system)?;
    let view = FreshView::new(repo)?;
    let (tx, rx) = sync_channel::<Msg>(16);
    let (walked, written) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || write_loop(repo, rx));
        let walked = {
            let ctx = Ctx {
                repo,
                view,
                names: Names::default(),
                excludes,
                compression: opts.compression,
                force: opts.force,
                known: Mutex::new(HashSet::new()),
                tx,
                failed: AtomicBool::new(false),
                warnings: Mutex::new(Vec::new()),
                progress,
                stats: StatCounters::default(),
            };
            let root = walk_root(&ctx, trie, parent.as_ref());
            Walked {
                root,
                stats: ctx.snapshot_stats(),
                warnings: ctx.warnings.into_inner().unwrap_or_else(|e| e.into_inner()),
            }
        };
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("the repository writer panicked".into())));
        (walked, written)
    });
    let (mut writer, bytes_written) = written?;
    let root = match walked.root {
        Ok(root) => root,
        Err(e) => {
            // Keep what was written so the next backup reuses it; no snapshot.
            let _ = writer.commit(&[]);
            return Err(e);
        }
    };
    warnings.extend(walked.warnings);
    let mut stats = walked.stats;
    stats.bytes_added_stored = bytes_written;
    stats.warnings = warnings.len() as u64;
    stats.duration_ms = started.elapsed().as_millis() as u64;
    let (sec, nsec) = crate::util::now_precise();
    let snapshot = Snapshot {
        time: Time { sec, nsec },
        host,
        user: crate::util::username(),
        tags: opts.tags.clone(),
        paths,
        root,
        parent: parent.map(|(id, _)| id),
        stats,
        program: format!("cairn {}", env!("CARGO_PKG_VERSION")),
    };
    let (id, sealed) = repo.seal_snapshot(&snapshot)?;
    writer.commit(&[(id, sealed)])?;
    Ok(BackupReport {
        id,
        snapshot,
        warnings,
    })
}

fn walk_root(ctx: &Ctx<'_>, trie: &PathTrie, parent: Option<&(Id, Snapshot)>) -> Result<Id> {
    let fd = rustix::fs::open(
        "/",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("opening /", e.into()))?;
    let parent_root = parent.and_then(|(_, s)| ctx.parent_tree(Some(s.root)));
    ctx.root_level(&fd, b"/", trie, parent_root)
}

/// Store what the walk sends; returns the writer (to commit the snapshot with) and the sealed
/// bytes it was given.
fn write_loop(repo: &Repository, rx: Receiver<Msg>) -> Result<(Box<dyn Writer + '_>, u64)> {
    let mut writer = repo.storage().writer(WriterOptions {
        batch_bytes: BATCH_BYTES,
        index_every: INDEX_EVERY,
    })?;
    let mut bytes = 0u64;
    for msg in rx {
        match msg {
            Msg::Object(id, kind, sealed) => {
                bytes += sealed.len() as u64;
                writer.add(id, kind, &sealed)?
            }
        }
    }
    Ok((writer, bytes))
}

/// Count the files and bytes a backup with `opts` will visit, into `progress.total_*`, for an
/// ETA. Runs beside the backup; stops early when `progress.scan_done` is set by someone else.
pub fn scan_totals(opts: &BackupOptions, progress: &Progress) {
    let Ok(excludes) = Excludes::new(&opts.excludes, opts.exclude_caches, opts.one_file_system)
    else {
        return;
    };
    let mut stack: Vec<PathBuf> = opts
        .paths
        .iter()
        .filter_map(|p| absolute_source(p).ok())
        .collect();
    while let Some(p) = stack.pop() {
        if progress.scan_done.load(Relaxed) {
            return;
        }
        if excludes.excluded(p.as_os_str().as_bytes()) {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
            }
        } else if m.is_file() {
            progress.total_files.fetch_add(1, Relaxed);
            progress.total_bytes.fetch_add(m.len(), Relaxed);
        }
    }
    progress.scan_done.store(true, Relaxed);
}
