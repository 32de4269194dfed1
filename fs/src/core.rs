//! The filesystem core: every operation the mount serves, in terms of inode numbers, byte
//! names and plain values. No fuser types here (see `fuse.rs`), so it is tested without a
//! mount.

use crate::cache::{lock, Loader};
use crate::error::{FsError, FsResult};
use crate::inodes::Inodes;
use crate::layout::{Layout, SnapView};
use crate::node::{self, entry_node, Attr, Node, ViewKind, What, ROOT_INO};
use crate::read::OpenFile;
use crate::source::Source;
use cairn_repo::crypto::Kind;
use cairn_repo::format::{Entry, FileType, Time, Tree};
use cairn_repo::storage::Reader;
use cairn_repo::{Id, Repository};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Directories whose in-order walk is tracked for sibling prefetch.
const WALKS: usize = 256;
/// Opening entry i then entry j (i < j <= i + this) counts as walking the directory in order
/// (directories and skipped entries in between are allowed).
const IN_ORDER_GAP: u32 = 16;

/// Subdirectory trees decoded ahead when a directory is listed.
const SUBTREES_AHEAD: usize = 64;

/// Files fetched ahead of the first read in a directory (before it is known to be walked).
const FIRST_WINDOW: u32 = 4;

/// Files kept ready for handle-less reads (`read_ino`).
const BY_INO: usize = 256;

pub type Logger = Arc<dyn Fn(&str) + Send + Sync>;

/// Asks the kernel to drop its entry `name` in directory `parent` (a FUSE entry
/// invalidation); false if it could not be sent. Set by the FUSE adapter once mounted.
pub type Evictor = Arc<dyn Fn(u64, &[u8]) -> bool + Send + Sync>;

/// The evicting thread's pause after each pass, so that a kernel which keeps its entries (in
/// use) is not asked again and again.
const EVICT_PAUSE: Duration = Duration::from_millis(100);

pub use crate::source::Pusher;

/// Files up to this size are pushed whole to the kernel ahead of an in-order reader; larger
/// ones only have their first chunk decoded ahead (their reads go through kernel read-ahead).
const PUSH_MAX: u64 = 1 << 20;

/// Tunables of a mount; `Default` gives sensible values.
#[derive(Clone)]
pub struct FsOptions {
    /// Bytes of decoded chunks kept in memory.
    pub chunk_cache_bytes: usize,
    /// Bytes (estimated) of decoded directory trees kept in memory.
    pub tree_cache_bytes: usize,
    /// How often the snapshot list is re-read.
    pub refresh: Duration,
    /// Chunks fetched ahead of a sequential reader.
    pub prefetch_chunks: usize,
    /// When files of one directory are read in order (tar, cp -r, diff -r), this many
    /// following files are decoded ahead (and, once mounted, put in the kernel's page cache).
    pub prefetch_files: usize,
    /// Threads decoding prefetched chunks (0: no prefetch).
    pub prefetch_threads: usize,
    /// Owner of the synthetic top-level directories.
    pub uid: u32,
    pub gid: u32,
    /// Bytes (estimated) of inodes remembered for the kernel; above it, the kernel is asked to
    /// drop the least recently looked-up ones (see `inodes.rs`).
    pub inode_bytes: usize,
    /// Where log lines go (damaged objects, failed refreshes); `None` drops them.
    pub log: Option<Logger>,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            chunk_cache_bytes: 128 << 20,
            tree_cache_bytes: 64 << 20,
            refresh: Duration::from_secs(5),
            prefetch_chunks: 4,
            prefetch_files: 32,
            prefetch_threads: 4,
            uid: 0,
            gid: 0,
            inode_bytes: 32 << 20,
            log: None,
        }
    }
}

/// One directory entry handed to a `readdir` sink.
pub struct DirItem<'a> {
    pub ino: u64,
    /// The offset to resume after this entry.
    pub offset: u64,
    pub kind: FileType,
    pub name: &'a [u8],
    pub attr: Attr,
    /// The entry may be cached for long (it lies inside a snapshot).
    pub immutable: bool,
}

pub(crate) struct Inner {
    pub(crate) repo: Arc<Repository>,
    pub(crate) opts: FsOptions,
    layout: RwLock<Arc<Layout>>,
    refreshed: Mutex<Instant>,
    /// The inodes the kernel holds (bounded, see `inodes.rs`).
    inodes: Inodes,
    trees: Loader<Id, Tree>,
    /// Where bytes come from (shared with `read`).
    pub(crate) source: Arc<Source>,
    pub(crate) files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// Files read without an open handle (the kernel skips OPEN when the filesystem declines
    /// it), by inode: the most recently read ones.
    by_ino: Mutex<crate::cache::Lru<u64, Arc<OpenFile>>>,
    pub(crate) next_fh: AtomicU64,
    /// Directory inode -> (index of the file read last, siblings fetched ahead up to).
    walks: Mutex<crate::cache::Lru<u64, (u32, u32)>>,
    /// Snapshots skipped at the last refresh (logged when this changes).
    damaged: Mutex<Vec<String>>,
    started: Time,
    /// What the history view derived from the snapshot list (bounded).
    pub(crate) history: crate::history::Caches,
}

/// The filesystem; cheap to clone and shared by all request threads.
#[derive(Clone)]
pub struct FsCore {
    pub(crate) inner: Arc<Inner>,
}

impl Inner {
    pub(crate) fn with_view<T>(
        &self,
        f: impl Fn(&dyn Reader) -> cairn_repo::Result<T>,
    ) -> FsResult<T> {
        self.source.with_view(f)
    }

    pub(crate) fn add_file(&self, f: OpenFile) -> u64 {
        let fh = self
            .next_fh
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.files).insert(fh, Arc::new(f));
        fh
    }
}

impl FsCore {
    /// Read the snapshot list once; fails if the repository cannot be read at all.
    pub fn new(repo: Arc<Repository>, opts: FsOptions) -> FsResult<FsCore> {
        let (list, damaged) = crate::layout::load_snapshots(&repo)?;
        let layout = Layout::build(&list);
        let pool = build_pool(opts.prefetch_threads);
        let source = Source::new(
            repo.clone(),
            opts.chunk_cache_bytes,
            opts.prefetch_chunks,
            pool,
        );
        let inner = Inner {
            repo,
            source: Arc::new(source),
            layout: RwLock::new(Arc::new(layout)),
            refreshed: Mutex::new(Instant::now()),
            inodes: Inodes::new(opts.inode_bytes),
            trees: Loader::new(opts.tree_cache_bytes),
            files: Mutex::new(HashMap::new()),
            by_ino: Mutex::new(crate::cache::Lru::new(BY_INO)),
            next_fh: AtomicU64::new(1),
            walks: Mutex::new(crate::cache::Lru::new(WALKS)),
            damaged: Mutex::new(Vec::new()),
            started: now(),
            history: crate::history::Caches::new(opts.tree_cache_bytes / 4),
            opts,
        };
        inner.report_damaged(damaged);
        Ok(FsCore {
            inner: Arc::new(inner),
        })
    }

    pub fn log(&self, msg: &str) {
        self.inner.log(msg);
    }

    /// Let directory walks hand the following small files to the kernel ahead of the reader.
    pub fn set_pusher(&self, push: Pusher) {
        self.inner.source.set_pusher(push);
    }

    /// The current layout, re-read from the repository when it is older than the refresh
    /// interval. A failed refresh keeps the last good list (and logs why).
    pub fn layout(&self) -> Arc<Layout> {
        self.inner.maybe_refresh();
        self.inner.current_layout()
    }

    /// Force a refresh now (tests, signals).
    pub fn refresh(&self) -> FsResult<()> {
        self.inner.refresh()
    }

    /// Look `name` up in directory `parent`; counts one kernel reference on success.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let dir = self.node(parent)?;
        let child = self.child(&dir, name)?.ok_or_else(FsError::noent)?;
        let attr = self.attr_of(&child)?;
        self.inner.inodes.remember(vec![child]);
        Ok(attr)
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        if self.inner.inodes.forget(ino, n) {
            lock(&self.inner.by_ino).remove(&ino);
        }
    }

    /// Number of inodes the core currently remembers (for tests and memory accounting).
    pub fn known_inodes(&self) -> usize {
        self.inner.inodes.len()
    }

    /// The most inodes remembered before the kernel is asked to drop some.
    pub fn inode_limit(&self) -> usize {
        self.inner.inodes.limit()
    }

    /// Let the mount ask the kernel to drop the least recently used entries when it holds
    /// more inodes than the limit: a thread of its own does it, woken when the table grows
    /// past the limit, and ends with the filesystem.
    pub fn set_evictor(&self, evict: Evictor) {
        let wakeups = self.inner.inodes.wakeups();
        let inner = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("cairn-evict".into())
            .spawn(move || {
                while wakeups.recv().is_ok() {
                    let Some(inner) = inner.upgrade() else { return };
                    FsCore { inner }.evict_oldest(&evict);
                    std::thread::sleep(EVICT_PAUSE);
                }
            });
        if let Err(e) = spawned {
            self.log(&format!("cannot start the inode eviction thread: {e}"));
        }
    }

    /// Ask the kernel to drop the entries of the least recently looked-up inodes beyond three
    /// quarters of the limit; returns how many were asked for. Entries of one tree are asked
    /// for together, so each tree is loaded once.
    pub fn evict_oldest(&self, evict: &Evictor) -> usize {
        let mut old = self.inner.inodes.oldest();
        old.sort_by_key(|n| match &n.what {
            What::Entry { tree, index, .. } => (*tree, *index),
            _ => (Id([0; 32]), 0),
        });
        old.iter()
            .filter_map(|n| Some((n.parent, self.name_of(n)?)))
            .filter(|(parent, name)| evict(*parent, name))
            .count()
    }

    /// The name a node has in its parent directory (only for nodes `Inodes::oldest` gives).
    fn name_of(&self, n: &Node) -> Option<Vec<u8>> {
        match &n.what {
            What::Entry { tree, index, .. } => {
                let t = self.tree(tree).ok()?;
                Some(t.entries.get(*index as usize)?.name.clone())
            }
            What::History { path, .. } => path.rsplit(|b| *b == b'/').next().map(<[u8]>::to_vec),
            _ => None,
        }
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        self.attr_of(self.node(ino)?.as_ref())
    }

    /// True if the kernel may cache this inode's entry and attributes for long.
    pub fn immutable(&self, ino: u64) -> bool {
        self.node(ino).map(|n| n.immutable()).unwrap_or(false)
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let n = self.node(ino)?;
        match &n.what {
            What::Latest => {
                let l = self.layout();
                let s = l.latest().ok_or_else(FsError::noent)?;
                Ok(format!("snapshots/{}", s.name).into_bytes())
            }
            What::Entry {
                tree, index, attr, ..
            } if attr.kind == FileType::Symlink => Ok(self.entry(tree, *index)?.target.clone()),
            _ => Err(FsError::new(libc::EINVAL)),
        }
    }

    /// List directory `ino` from `offset` (0 = start). The sink returns true when it is full;
    /// with `plus`, every entry it accepted (except `.` and `..`) counts one kernel reference.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        plus: bool,
        mut sink: impl FnMut(&DirItem) -> bool,
    ) -> FsResult<()> {
        let dir = self.node(ino)?;
        let self_attr = self.attr_of(&dir)?;
        let dots: [(&[u8], u64); 2] = [(b".", ino), (b"..", dir.parent)];
        for (i, (name, dino)) in dots.iter().enumerate().skip(offset as usize) {
            let attr = Attr {
                ino: *dino,
                ..self_attr
            };
            let item = DirItem {
                ino: *dino,
                offset: i as u64 + 1,
                kind: FileType::Dir,
                name,
                attr,
                immutable: dir.immutable(),
            };
            if sink(&item) {
                return Ok(());
            }
        }
        let start = offset.saturating_sub(2) as usize;
        let mut accepted = Vec::new();
        let full = |n: &Node, name: &[u8], i: usize, accepted: &mut Vec<Node>| -> FsResult<bool> {
            let attr = self.attr_of(n)?;
            let item = DirItem {
                ino: n.ino,
                offset: i as u64 + 3,
                kind: attr.kind,
                name,
                attr,
                immutable: n.immutable(),
            };
            if sink(&item) {
                return Ok(true);
            }
            if plus {
                accepted.push(n.clone());
            }
            Ok(false)
        };
        let r = self.list_children(&dir, start, full, &mut accepted);
        self.inner.inodes.remember(accepted);
        r
    }

    /// Open a regular file for reading; returns the handle for `read`.
    pub fn open(&self, ino: u64) -> FsResult<u64> {
        let f = self.open_file(ino)?;
        Ok(self.inner.add_file(f))
    }

    /// Read from a file by inode, without a handle: for kernels that skip OPEN and RELEASE
    /// (FUSE "no open" mode). The file's chunk list is kept for the most recently read files.
    pub fn read_ino(&self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        self.read_ino_with(ino, offset, size, <[u8]>::to_vec)
    }

    /// `read_ino`, handing the bytes to `sink` (without a copy when they lie in one chunk).
    pub fn read_ino_with<R>(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
        sink: impl FnOnce(&[u8]) -> R,
    ) -> FsResult<R> {
        let f = self.file_by_ino(ino)?;
        crate::read::read_with(&self.inner.source, &f, offset, size as u64, sink)
    }

    /// `read`, handing the bytes to `sink` (without a copy when they lie in one chunk).
    pub fn read_with<R>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        sink: impl FnOnce(&[u8]) -> R,
    ) -> FsResult<R> {
        let f = lock(&self.inner.files)
            .get(&fh)
            .cloned()
            .ok_or_else(|| FsError::new(libc::EBADF))?;
        crate::read::read_with(&self.inner.source, &f, offset, size as u64, sink)
    }

    /// `seek` by inode, without a handle (see `read_ino`).
    pub fn seek_ino(&self, ino: u64, offset: u64, data: bool) -> FsResult<u64> {
        let f = self.file_by_ino(ino)?;
        crate::read::seek_data_or_hole(&f, offset, data)
    }

    fn file_by_ino(&self, ino: u64) -> FsResult<Arc<OpenFile>> {
        if let Some(f) = lock(&self.inner.by_ino).get(&ino) {
            return Ok(f);
        }
        let f = Arc::new(self.open_file(ino)?);
        lock(&self.inner.by_ino).insert(ino, f.clone(), 1);
        Ok(f)
    }

    fn open_file(&self, ino: u64) -> FsResult<OpenFile> {
        let n = self.node(ino)?;
        let What::Entry {
            tree, index, attr, ..
        } = &n.what
        else {
            return Err(FsError::new(libc::EISDIR));
        };
        match attr.kind {
            FileType::File => {}
            FileType::Dir => return Err(FsError::new(libc::EISDIR)),
            _ => return Err(FsError::new(libc::EINVAL)),
        }
        let entry = self.entry(tree, *index)?;
        self.prefetch_siblings(&n, tree, *index);
        let extents = match entry.content {
            cairn_repo::Content::Inline(xs) => xs,
            content => {
                let repo = &self.inner.repo;
                self.inner.with_view(|view| repo.extents(view, &content))?
            }
        };
        Ok(OpenFile::for_inode(extents, ino, attr.size))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let f = lock(&self.inner.files)
            .get(&fh)
            .cloned()
            .ok_or_else(|| FsError::new(libc::EBADF))?;
        crate::read::read(&self.inner.source, &f, offset, size as u64)
    }

    /// `lseek` with SEEK_DATA (`data`) or SEEK_HOLE, so `cp` and `tar --sparse` find holes.
    pub fn seek(&self, fh: u64, offset: u64, data: bool) -> FsResult<u64> {
        let f = lock(&self.inner.files)
            .get(&fh)
            .cloned()
            .ok_or_else(|| FsError::new(libc::EBADF))?;
        crate::read::seek_data_or_hole(&f, offset, data)
    }

    pub fn release(&self, fh: u64) {
        lock(&self.inner.files).remove(&fh);
    }

    /// A stored extended attribute. A `security.` or `system.` name the entry does not have
    /// answers EOPNOTSUPP rather than ENODATA: `ls -l` then stops asking for SELinux labels
    /// and ACLs once per file (it remembers "unsupported" per filesystem), which keeps
    /// listings of huge directories fast. Names the entry has are always served.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        let n = self.node(ino)?;
        let found = match &n.what {
            What::Entry {
                tree,
                index,
                has_xattrs: true,
                ..
            } => {
                let e = self.entry(tree, *index)?;
                e.xattrs
                    .into_iter()
                    .find(|x| x.name == name)
                    .map(|x| x.value)
            }
            _ => None,
        };
        found.ok_or_else(|| missing_xattr(name))
    }

    /// Attribute names, each followed by a NUL (the `listxattr(2)` format).
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        let n = self.node(ino)?;
        if !matches!(
            n.what,
            What::Entry {
                has_xattrs: true,
                ..
            }
        ) {
            return Ok(out);
        }
        if let Some(e) = self.entry_of(ino)? {
            for x in &e.xattrs {
                out.extend_from_slice(&x.name);
                out.push(0);
            }
        }
        Ok(out)
    }

    /// Bytes of decoded chunks in the cache.
    pub fn chunk_cache_used(&self) -> usize {
        self.inner.source.chunks.used()
    }

    /// Bytes (estimated) of decoded directory trees in the cache.
    pub fn tree_cache_used(&self) -> usize {
        self.inner.trees.used()
    }

    // ----- internals -----

    /// If files of this directory are being read in order, decode the next files ahead.
    /// (Not for the versions in `history/`: their neighbours in the stored tree are not theirs.)
    fn prefetch_siblings(&self, n: &Node, tree_id: &Id, index: u32) {
        let dir = self.node(n.parent).ok();
        if let Some(What::History { .. }) = dir.as_ref().map(|d| &d.what) {
            return;
        }
        let Some((from, to)) = self.walk_window(n.parent, index) else {
            return;
        };
        let What::Entry { snap_key, .. } = n.what else {
            return;
        };
        self.fetch_files_ahead(dir.as_deref(), snap_key, tree_id, from, to);
    }

    /// Called once the start of a listing of `ino` has reached the kernel: decode ahead
    /// what the lister is likely to want next (the subdirectories' trees).
    pub fn listed(&self, ino: u64) {
        let Ok(dir) = self.node(ino) else { return };
        self.prefetch_subtrees(&dir);
    }

    /// Decode entries `from..to` of directory `dir`'s tree ahead of the reader: small files
    /// whole, handed to the kernel's page cache when a pusher is set (the reader then finds
    /// them there without a round trip), larger ones their first chunk.
    fn fetch_files_ahead(&self, dir: Option<&Node>, snap: u64, tree_id: &Id, from: u32, to: u32) {
        let Ok(tree) = self.tree(tree_id) else { return };
        let source = &self.inner.source;
        let push = source.pusher().cloned();
        let mut whole = Vec::new();
        let mut first_chunks = Vec::new();
        for e in tree.entries.iter().take(to as usize).skip(from as usize) {
            let cairn_repo::Content::Inline(xs) = &e.content else {
                continue;
            };
            if e.kind != FileType::File {
                continue;
            }
            match (&push, dir) {
                (Some(_), Some(dir)) if e.size <= PUSH_MAX => {
                    let ino = node::entry_ino(snap, node::child_key(dir.key, &e.name), e);
                    whole.push(crate::read::Ahead {
                        ino,
                        size: e.size,
                        extents: xs.clone(),
                    });
                }
                _ => first_chunks.extend(xs.first().and_then(|x| x.id)),
            }
        }
        match push {
            Some(push) if source.remote => {
                crate::read::fetch_batch(source, push, whole, first_chunks);
            }
            _ => {
                if let Some(push) = &push {
                    for ahead in whole {
                        crate::read::push_ahead(source, push.clone(), ahead);
                    }
                }
                crate::read::prefetch_ids(source, first_chunks.into_iter());
            }
        }
    }

    /// Decode the trees of a listed directory's subdirectories on the pool: whoever lists a
    /// directory (`ls -R`, `find`, `tar`, a file manager) usually enters them next.
    fn prefetch_subtrees(&self, dir: &Node) {
        if self.inner.source.pool.is_none() {
            return;
        }
        let Some((_, tree_id)) = dir.subtree() else {
            return;
        };
        let Ok(tree) = self.tree(&tree_id) else {
            return;
        };
        let ids = tree.entries.iter().filter_map(|e| e.subtree);
        if self.inner.source.remote {
            return self.fetch_trees(ids.take(SUBTREES_AHEAD).collect());
        }
        for id in ids.take(SUBTREES_AHEAD) {
            if self.inner.trees.present(&id) {
                continue;
            }
            let core = self.clone();
            if let Some(pool) = &self.inner.source.pool {
                pool.spawn(move || {
                    let _ = core.tree(&id);
                });
            }
        }
    }

    /// From a remote store: the trees `ids` (those neither cached nor loading) in one
    /// request, on the prefetch pool.
    fn fetch_trees(&self, ids: Vec<Id>) {
        let Some(pool) = &self.inner.source.pool else {
            return;
        };
        let core = self.clone();
        pool.spawn(move || {
            let inner = &core.inner;
            inner.trees.load_many(&ids, tree_weight, |wanted, each| {
                let open = |id: &Id, sealed: &[u8]| inner.repo.open_tree(id, sealed);
                inner.source.read_batch(wanted, Kind::Tree, open, each)
            });
        });
    }

    /// Record that entry `index` of this directory was read; the entries to fetch ahead if
    /// the directory is being read in order. Reading entry i then j (i < j <= i + gap) is in
    /// order, and so is a read just past what was already fetched ahead (the reader found
    /// the files before it in the page cache, so they never reached us). The first read in
    /// a directory fetches a few files ahead: most readers of one file go on to the next.
    fn walk_window(&self, dir: u64, index: u32) -> Option<(u32, u32)> {
        let mut walks = lock(&self.inner.walks);
        let (first, last, done) = match walks.get(&dir) {
            None => (true, 0, 0),
            Some((last, done)) => (false, last, done),
        };
        let in_order = first
            || index > last
                && (index - last <= IN_ORDER_GAP || index <= done.saturating_add(IN_ORDER_GAP));
        let want = if first {
            FIRST_WINDOW
        } else {
            self.inner.opts.prefetch_files as u32
        };
        let (from, to) = ((index + 1).max(done), index.saturating_add(want));
        let done = if in_order { to.max(done) } else { done };
        walks.insert(dir, (index, done), 1);
        (in_order && from < to).then_some((from, to))
    }

    fn node(&self, ino: u64) -> FsResult<Arc<Node>> {
        if ino == ROOT_INO {
            return Ok(Arc::new(Node {
                ino,
                parent: ROOT_INO,
                key: ROOT_INO,
                what: What::Root,
            }));
        }
        self.inner.inodes.get(ino).ok_or_else(FsError::noent)
    }

    pub(crate) fn tree(&self, id: &Id) -> FsResult<Arc<Tree>> {
        let repo = &self.inner.repo;
        self.inner.trees.get_or_load(id, tree_weight, || {
            self.inner.with_view(|view| repo.load_tree(view, id))
        })
    }

    fn entry(&self, tree: &Id, index: u32) -> FsResult<Entry> {
        let t = self.tree(tree)?;
        t.entries
            .get(index as usize)
            .cloned()
            .ok_or_else(|| FsError::eio(format!("tree {tree} has no entry {index}")))
    }

    /// The stored entry behind an inode (`None` for synthetic nodes).
    fn entry_of(&self, ino: u64) -> FsResult<Option<Entry>> {
        match &self.node(ino)?.what {
            What::Entry { tree, index, .. } => Ok(Some(self.entry(tree, *index)?)),
            _ => Ok(None),
        }
    }

    fn attr_of(&self, n: &Node) -> FsResult<Attr> {
        if let What::Entry { attr, .. }
        | What::History {
            attr: Some(attr), ..
        } = &n.what
        {
            return Ok(*attr);
        }
        let layout = self.layout();
        let time = match &n.what {
            What::SnapRoot { time, .. } => *time,
            _ if layout.snaps.is_empty() => self.inner.started,
            _ => layout.newest_time(),
        };
        let o = &self.inner.opts;
        let mut a = Attr {
            ino: n.ino,
            kind: FileType::Dir,
            perm: 0o755,
            nlink: 2,
            uid: o.uid,
            gid: o.gid,
            rdev: 0,
            size: 0,
            blocks: 0,
            atime: time,
            mtime: time,
            ctime: time,
        };
        if let What::Latest = n.what {
            let target = layout
                .latest()
                .map(|s| s.name.len() + "snapshots/".len())
                .unwrap_or(0);
            a.kind = FileType::Symlink;
            a.perm = 0o777;
            a.nlink = 1;
            a.size = target as u64;
        }
        Ok(a)
    }

    /// The child `name` of directory `dir`, if there is one.
    fn child(&self, dir: &Node, name: &[u8]) -> FsResult<Option<Node>> {
        if let Some((snap, tree_id)) = dir.subtree() {
            let tree = self.tree(&tree_id)?;
            let Ok(i) = tree
                .entries
                .binary_search_by(|e| e.name.as_slice().cmp(name))
            else {
                return Ok(None);
            };
            return Ok(Some(entry_node(dir, snap, tree_id, i, &tree.entries[i])));
        }
        if let What::History { path, versions, .. } = &dir.what {
            return self.history_child(dir, path, *versions, name);
        }
        let mut found = None;
        let mut pick = |n: &Node, nm: &[u8], _: usize, _: &mut Vec<Node>| -> FsResult<bool> {
            if nm == name {
                found = Some(n.clone());
                return Ok(true);
            }
            Ok(false)
        };
        self.list_synthetic(dir, 0, &mut pick, &mut Vec::new())?;
        Ok(found)
    }

    /// Feed the children of `dir` from index `start` to `f` until it returns true.
    fn list_children<F>(
        &self,
        dir: &Node,
        start: usize,
        mut f: F,
        acc: &mut Vec<Node>,
    ) -> FsResult<()>
    where
        F: FnMut(&Node, &[u8], usize, &mut Vec<Node>) -> FsResult<bool>,
    {
        if let What::History { path, versions, .. } = &dir.what {
            return self.history_list(dir, path, *versions, start, f, acc);
        }
        let Some((snap, tree_id)) = dir.subtree() else {
            return self.list_synthetic(dir, start, &mut f, acc);
        };
        let tree = self.tree(&tree_id)?;
        for (i, e) in tree.entries.iter().enumerate().skip(start) {
            if f(&entry_node(dir, snap, tree_id, i, e), &e.name, i, acc)? {
                break;
            }
        }
        Ok(())
    }

    fn list_synthetic<F>(
        &self,
        dir: &Node,
        start: usize,
        f: &mut F,
        acc: &mut Vec<Node>,
    ) -> FsResult<()>
    where
        F: FnMut(&Node, &[u8], usize, &mut Vec<Node>) -> FsResult<bool>,
    {
        let layout = self.layout();
        let children = synthetic_children(dir, &layout);
        for (i, (name, n)) in children.iter().enumerate().skip(start) {
            if f(n, name.as_bytes(), i, acc)? {
                break;
            }
        }
        Ok(())
    }
}

impl Inner {
    pub(crate) fn log(&self, msg: &str) {
        if let Some(l) = &self.opts.log {
            l(msg);
        }
    }

    fn current_layout(&self) -> Arc<Layout> {
        self.layout
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn maybe_refresh(&self) {
        let Ok(mut last) = self.refreshed.try_lock() else {
            return;
        };
        if last.elapsed() < self.opts.refresh {
            return;
        }
        *last = Instant::now();
        if let Err(e) = self.refresh() {
            self.log(&format!(
                "cannot re-read the snapshot list, keeping the last one: {}",
                e.detail.unwrap_or_default()
            ));
        }
    }

    fn refresh(&self) -> FsResult<()> {
        let (list, damaged) = crate::layout::load_snapshots(&self.repo)?;
        *self.layout.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Layout::build(&list));
        self.report_damaged(damaged);
        Ok(())
    }

    /// Log skipped snapshots, once per change of the set (not at every refresh).
    fn report_damaged(&self, damaged: Vec<String>) {
        let mut last = lock(&self.damaged);
        if *last != damaged {
            for m in &damaged {
                self.log(m);
            }
            *last = damaged;
        }
    }
}

fn missing_xattr(name: &[u8]) -> FsError {
    if name.starts_with(b"security.") || name.starts_with(b"system.") {
        FsError::new(libc::EOPNOTSUPP)
    } else {
        FsError::new(libc::ENODATA)
    }
}

/// The entries of a top-level directory, in listing order.
fn synthetic_children(dir: &Node, layout: &Layout) -> Vec<(String, Node)> {
    let mk = |name: &str, key: u64, what: What| {
        (
            name.to_string(),
            Node {
                ino: key,
                parent: dir.ino,
                key,
                what,
            },
        )
    };
    match &dir.what {
        What::Root => {
            let mut v = vec![
                mk("snapshots", node::top_key("snapshots"), What::Snapshots),
                mk("hosts", node::top_key("hosts"), What::Hosts),
                mk("tags", node::top_key("tags"), What::Tags),
                mk("calendar", node::top_key("calendar"), What::Calendar),
                mk("gmt", node::top_key("gmt"), What::Gmt),
                mk(
                    "history",
                    node::top_key("history"),
                    What::History {
                        path: Arc::from(&b""[..]),
                        versions: false,
                        attr: None,
                    },
                ),
            ];
            if layout.latest().is_some() {
                v.push(mk("latest", node::top_key("latest"), What::Latest));
            }
            v
        }
        What::Snapshots => snap_dirs(dir, &ViewKind::Snapshots, layout.snaps.iter().collect()),
        What::Hosts | What::Tags => {
            let (groups, host) = if let What::Hosts = dir.what {
                (&layout.hosts, true)
            } else {
                (&layout.tags, false)
            };
            groups
                .keys()
                .map(|k| {
                    let view = if host {
                        ViewKind::Host(k.clone())
                    } else {
                        ViewKind::Tag(k.clone())
                    };
                    mk(k, node::group_key(&view), What::Group(view))
                })
                .collect()
        }
        What::Group(view) => {
            let members = match view {
                ViewKind::Host(h) => layout.hosts.get(h),
                ViewKind::Tag(t) => layout.tags.get(t),
                ViewKind::Snapshots | ViewKind::Calendar | ViewKind::Gmt => None,
            };
            snap_dirs(
                dir,
                view,
                members.map(|m| layout.group(m)).unwrap_or_default(),
            )
        }
        What::Gmt => layout
            .snaps
            .iter()
            .map(|s| (s.gmt.clone(), snap_dir(dir, &ViewKind::Gmt, s)))
            .collect(),
        What::Calendar => periods(dir, layout, ""),
        What::Period(prefix) if prefix.len() < DAY.len() => periods(dir, layout, prefix),
        What::Period(day) => layout
            .snaps
            .iter()
            .filter_map(|s| {
                let time = s.name.strip_prefix(day.as_str())?.strip_prefix('_')?;
                Some((time.to_string(), snap_dir(dir, &ViewKind::Calendar, s)))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The shape of a day in snapshot names (`YYYY-MM-DD`); a year is its first 4 bytes, a month
/// its first 7.
const DAY: &str = "YYYY-MM-DD";

/// The next calendar level below `prefix` ("" for the years): each distinct year, month or day
/// of the snapshot names under it, named by its own number (`2026`, `11`, `29`).
fn periods(dir: &Node, layout: &Layout, prefix: &str) -> Vec<(String, Node)> {
    let len = match prefix.len() {
        0 => 4,
        4 => 7,
        _ => DAY.len(),
    };
    let mut seen: Vec<&str> = layout
        .snaps
        .iter()
        .filter(|s| s.name.len() > DAY.len() && s.name.starts_with(prefix))
        .filter_map(|s| s.name.get(..len))
        .collect();
    // Names follow local time, which can step back (daylight saving): sort, not only dedup.
    seen.sort_unstable();
    seen.dedup();
    seen.into_iter()
        .map(|p| {
            let own = p.get(prefix.len()..).unwrap_or(p).trim_start_matches('-');
            let key = node::period_key(p);
            (
                own.to_string(),
                Node {
                    ino: key,
                    parent: dir.ino,
                    key,
                    what: What::Period(p.to_string()),
                },
            )
        })
        .collect()
}

fn snap_dirs(dir: &Node, view: &ViewKind, snaps: Vec<&SnapView>) -> Vec<(String, Node)> {
    snaps
        .into_iter()
        .map(|s| (s.name.clone(), snap_dir(dir, view, s)))
        .collect()
}

/// A snapshot's top directory in one view.
fn snap_dir(dir: &Node, view: &ViewKind, s: &SnapView) -> Node {
    let key = node::snap_key(view, &s.id);
    Node {
        ino: key,
        parent: dir.ino,
        key,
        what: What::SnapRoot {
            snap: s.id,
            root: s.root,
            time: s.time,
        },
    }
}

/// An estimate of a decoded tree's memory, for the tree cache's bound.
fn tree_weight(t: &Tree) -> usize {
    t.entries
        .iter()
        .map(|e| {
            let extents = match &e.content {
                cairn_repo::Content::Inline(v) => v.len() * 48,
                cairn_repo::Content::Lists(v) => v.len() * 56,
                cairn_repo::Content::None => 0,
            };
            let xattrs: usize = e
                .xattrs
                .iter()
                .map(|x| x.name.len() + x.value.len() + 48)
                .sum();
            256 + e.name.len() + e.target.len() + e.user.len() + e.group.len() + xattrs + extents
        })
        .sum::<usize>()
        + 64
}

fn build_pool(threads: usize) -> Option<crate::pool::Pool> {
    if threads == 0 {
        return None;
    }
    crate::pool::Pool::new(threads, "cairn-prefetch")
}

fn now() -> Time {
    let (sec, nsec) = cairn_repo::util::now_precise();
    Time { sec, nsec }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod calendar_tests {
    use super::*;
    use cairn_repo::{Snapshot, SnapshotEntry};

    fn layout_of(times: &[i64]) -> Layout {
        let list: Vec<SnapshotEntry> = times
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&(i as u64).to_le_bytes());
                SnapshotEntry {
                    id: Id(id),
                    snapshot: Snapshot {
                        time: Time { sec: *t, nsec: 0 },
                        host: "h".into(),
                        user: "u".into(),
                        tags: vec![],
                        paths: vec![b"/".to_vec()],
                        root: Id([1; 32]),
                        parent: None,
                        stats: Default::default(),
                        program: String::new(),
                    },
                }
            })
            .collect();
        Layout::build(&list)
    }

    fn dir(what: What) -> Node {
        Node {
            ino: 5,
            parent: 1,
            key: 5,
            what,
        }
    }

    fn listing(l: &Layout, what: What) -> Vec<(String, Node)> {
        synthetic_children(&dir(what), l)
    }

    /// 20,161 hourly snapshots (840 days, over two years, plus two in one second): every
    /// level lists its own numbers once, in order, and a day holds its 24 (or 25) snapshots
    /// by time.
    #[test]
    fn years_of_hourly_snapshots_by_year_month_day() {
        let start = 1_767_225_600; // 2026-01-01 00:00 UTC
        let mut times: Vec<i64> = (0..840 * 24).map(|h| start + h * 3600).collect();
        times.push(start + 3600); // same second as the second snapshot
        times.sort();
        let l = layout_of(&times);
        let t = std::time::Instant::now();
        let years = listing(&l, What::Calendar);
        let names: Vec<&str> = years.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
        assert!((2..=3).contains(&names.len()), "{names:?}");
        let mut snaps = 0;
        for (_, y) in &years {
            for (m, month) in listing(&l, y.what.clone()) {
                assert_eq!(m.len(), 2);
                for (d, day) in listing(&l, month.what.clone()) {
                    assert_eq!(d.len(), 2);
                    let in_day = listing(&l, day.what.clone());
                    assert!(!in_day.is_empty());
                    for (n, node) in &in_day {
                        assert!(n.len() >= "00-00-00".len() && !n.contains(':'), "{n}");
                        assert!(matches!(node.what, What::SnapRoot { .. }));
                    }
                    snaps += in_day.len();
                }
            }
        }
        assert_eq!(snaps, times.len(), "every snapshot once");
        eprintln!(
            "calendar: every level of {} snapshots listed in {:?}",
            times.len(),
            t.elapsed()
        );
    }
}
