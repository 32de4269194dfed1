//! The storage seam (DESIGN.md §9): the object-level contract every store passes, whatever
//! keeps the bytes (the local redb file today; a server behind `cairn serve` and S3 next).
//!
//! Below the seam sealed bytes are opaque: a store sees ids, kinds, lengths and the BLAKE3
//! check of the sealed bytes, never a key. The contract, which `repo/tests/conformance.rs`
//! runs against every store:
//! - An object added to a writer becomes visible only in a `checkpoint` or `commit` that holds
//!   every byte of it, and objects become visible in the order they were added (a crash or a
//!   dropped writer leaves a prefix of whole objects, never a part of one).
//! - A snapshot becomes visible only in the `commit` that carries it, after every object
//!   added before it; a stored snapshot is never replaced: the same bytes again are a no-op,
//!   other bytes are `Error::Refused`.
//! - An object stored once keeps its bytes: adding an id already stored leaves the stored copy
//!   in place (callers ask `contains` first; a store may spend space on the repeat until a
//!   sweep).
//! - Reading an absent object is `Error::Missing`, never a panic or empty bytes.
//! - Two writers may run at once; each one's objects and snapshots stay whole.
//!
//! Callers above the seam move onto this trait one by one (DESIGN.md §9, order of the work);
//! until they have, the redb store keeps its own wider API beside it.

use crate::crypto::Kind;
use crate::error::{Error, Result};
use crate::format::Config;
use crate::id::Id;
pub use crate::prune::{Mark, PruneOptions, PruneReport};

mod cache;
pub mod memory;
mod quota;
pub(crate) mod redb;
pub mod remote;
pub mod rights;
pub mod s3;
pub(crate) mod server;
mod url;

pub(crate) use quota::Quota;
pub use redb::Store as LocalStore;
pub use redb::{StorageProblem, StorageReport};
pub use rights::{Right, Rights};
pub use url::Url;

/// The layout of the local redb repository's tables (`cairn --version` names it).
pub const REDB_LAYOUT_VERSION: u32 = redb::FORMAT_VERSION;

/// The local redb store behind `store`, for the commands not yet moved onto the seam
/// (DESIGN.md §9); `what` names the command for the error a repository elsewhere gets.
pub fn local<'a>(store: &'a dyn Storage, what: &str) -> Result<&'a LocalStore> {
    store
        .as_any()
        .downcast_ref::<LocalStore>()
        .ok_or_else(|| Error::LocalOnly {
            what: what.to_string(),
            location: store.location(),
        })
}

/// Read `id`, which must be a `kind`: another kind stored under its id is damage.
pub fn read_as(reader: &dyn Reader, id: &Id, kind: Kind) -> Result<Vec<u8>> {
    as_kind(id, kind, reader.read(id)?)
}

/// The sealed bytes of `read` (what a read of `id` gave), which must be a `kind`.
pub fn as_kind(id: &Id, kind: Kind, read: (Kind, Vec<u8>)) -> Result<Vec<u8>> {
    match read {
        (stored, sealed) if stored == kind => Ok(sealed),
        (stored, _) => Err(Error::corrupt(
            id,
            format!("is a {stored:?}, expected a {kind:?}"),
        )),
    }
}

/// Open the store at `url` (a missing repository is `Error::RepoNotFound`, before any
/// password is asked for).
pub fn open(url: &Url, opts: &crate::OpenOptions) -> Result<Box<dyn Storage>> {
    match url {
        Url::Local(dir) => {
            let mut store = LocalStore::open(dir, opts.db_cache_bytes)?;
            store.set_piece_cache(opts.piece_cache_pieces);
            Ok(Box::new(store))
        }
        Url::Ssh(u) => {
            let mut store = remote::RemoteStore::open(remote::ssh(u, &opts.ssh))?;
            store.set_cache(object_cache(opts, &store.config()?));
            Ok(Box::new(store))
        }
        Url::S3(u) => {
            let mut store = s3::S3Store::open(u)?;
            store.set_cache(object_cache(opts, &store.config()?));
            Ok(Box::new(store))
        }
    }
}

/// What `compact` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compaction {
    /// Whether the file changed.
    pub changed: bool,
    /// The repository file's length after it.
    pub file_len: u64,
}

/// Give the free space inside a repository's file back to the file system (`prune
/// --compact`). It needs the repository to itself: `store` is closed first, then a local
/// file is compacted here and a server's by the server (`Error::Locked` while another
/// process has it open). `None` for a store without such a file: S3 gives space back when
/// a collection deletes packs.
pub fn compact(store: Box<dyn Storage>) -> Result<Option<Compaction>> {
    if let Some(local) = store.as_any().downcast_ref::<LocalStore>() {
        let dir = local.dir().to_path_buf();
        drop(store);
        let changed = LocalStore::compact(&dir)?;
        let file_len = LocalStore::file_bytes(&dir).unwrap_or(0);
        return Ok(Some(Compaction { changed, file_len }));
    }
    match store.as_any().downcast_ref::<remote::RemoteStore>() {
        Some(remote) => {
            let (changed, file_len) = remote.compact()?;
            Ok(Some(Compaction { changed, file_len }))
        }
        None => Ok(None),
    }
}

/// The object cache of the repository `config` describes, if `opts` asks for one.
fn object_cache(
    opts: &crate::OpenOptions,
    config: &Config,
) -> Option<std::sync::Arc<cache::ObjectCache>> {
    cache::ObjectCache::open(opts.object_cache.as_deref()?, &config.repo_id)
}

/// Create a store at `url` holding `config` (`Error::RepoExists` when one is there).
pub fn create(url: &Url, config: &Config, opts: &crate::OpenOptions) -> Result<Box<dyn Storage>> {
    match url {
        Url::Local(dir) => {
            let mut store = LocalStore::create(dir, &[("config", config.encode())])?;
            store.set_piece_cache(opts.piece_cache_pieces);
            Ok(Box::new(store))
        }
        Url::Ssh(u) => {
            let mut store = remote::RemoteStore::create(remote::ssh(u, &opts.ssh), config)?;
            store.set_cache(object_cache(opts, config));
            Ok(Box::new(store))
        }
        Url::S3(u) => {
            let mut store = s3::S3Store::create(u, config)?;
            store.set_cache(object_cache(opts, config));
            Ok(Box::new(store))
        }
    }
}

/// A verified copy of an object, for `Storage::repair`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectCopy {
    pub id: Id,
    pub kind: Kind,
    pub sealed: Vec<u8>,
}

/// What a store knows of one object without its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub kind: Kind,
    /// Length of the sealed bytes.
    pub len: u32,
    /// The first 16 bytes of BLAKE3(sealed): lets a store, a replica or a check verify stored
    /// bytes without the password.
    pub check: [u8; 16],
}

impl ObjectInfo {
    pub fn of(kind: Kind, sealed: &[u8]) -> ObjectInfo {
        ObjectInfo {
            kind,
            len: sealed.len() as u32,
            check: checksum(sealed),
        }
    }
}

/// The ciphertext checksum kept with every object (see `ObjectInfo::check`).
pub fn checksum(sealed: &[u8]) -> [u8; 16] {
    redb::checksum(sealed)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Space {
    pub objects: u64,
    pub object_bytes: u64,
    pub pack_bytes: u64,
    /// Bytes the database file occupies on disk (allocated blocks).
    pub file_bytes: u64,
    /// The file's length; redb grows it ahead of use, the tail is sparse.
    pub file_len: u64,
    /// Bytes of pages redb has allocated (live data and its structures); the rest of
    /// `file_bytes` is free inside the file, reused by later writes. `None` when the
    /// repository is open read-only.
    pub db_bytes: Option<u64>,
}

impl Space {
    /// What the repository occupies, as a quota counts it: the pages its database has
    /// allocated (space freed by a prune counts no more), else the file's blocks, else the
    /// bytes of its packs.
    pub fn used(&self) -> u64 {
        match self.db_bytes {
            Some(d) => d,
            None if self.file_bytes > 0 => self.file_bytes,
            None => self.pack_bytes,
        }
    }

    /// Free space inside the file that is backed by the disk (what `prune --compact` returns).
    pub fn free_in_file(&self) -> Option<u64> {
        self.db_bytes.map(|d| self.file_bytes.saturating_sub(d))
    }
}

/// What a store is like, for callers that adapt to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Every request is a round trip to another machine: callers batch, or cache what they
    /// can (a backup lists the stored ids once instead of asking per chunk).
    pub remote: bool,
    /// What a client may do: a server's `--allow` (or `--append-only`); `full` elsewhere.
    pub rights: Rights,
}

/// How a writer batches its work.
#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    /// Bytes buffered before the writer stores them by itself (a store may round it up).
    pub batch_bytes: usize,
    /// A hint for long writers: make the index of what is stored visible only once per this
    /// many bytes (0: at every checkpoint). A store whose index costs little per commit
    /// ignores it; redb rewrites most index leaves at every commit that carries rows.
    pub index_every: u64,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            batch_bytes: 32 << 20,
            index_every: 0,
        }
    }
}

/// One store of one repository: config, key slots, snapshots, objects, sessions.
pub trait Storage: Send + Sync {
    /// Where the store is, for messages: a path or a URL.
    fn location(&self) -> String;
    /// The repository's config (chunking, pack sizes, repository id).
    fn config(&self) -> Result<Config>;
    /// The key slots, still wrapped, by number.
    fn key_slots(&self) -> Result<Vec<(u64, Vec<u8>)>>;
    /// Add a wrapped key slot; refused past `crypto::MAX_KEY_SLOTS`. Returns its number.
    fn add_key_slot(&self, slot: &[u8]) -> Result<u64>;
    /// Remove a key slot; refuses an unknown number and the last slot.
    fn remove_key_slot(&self, id: u64) -> Result<()>;
    /// Every stored snapshot, sealed, in id order.
    fn snapshots(&self) -> Result<Vec<(Id, Vec<u8>)>>;
    /// Remove snapshots (absent ids are passed over); their objects stay until a sweep.
    fn remove_snapshots(&self, ids: &[Id]) -> Result<()>;
    /// A reader of the objects stored now; it may outlive the borrow (a mount keeps one for
    /// a few seconds). Objects committed after it was made may be missing from it.
    fn reader(&self) -> Result<Box<dyn Reader>>;
    /// A writer of new objects and snapshots (see the module's contract).
    fn writer(&self, opts: WriterOptions) -> Result<Box<dyn Writer + '_>>;
    /// Record a writer in flight (a backup, a sync); garbage collection waits for live ones.
    fn begin_session(&self, info: &[u8]) -> Result<u64>;
    fn end_session(&self, id: u64) -> Result<()>;
    fn sessions(&self) -> Result<Vec<(u64, Vec<u8>)>>;
    /// A state record (what `check`, `sync` and `status` keep between runs: last results,
    /// cursors); `None` when unset. Keys are short ASCII names.
    fn state(&self, key: &str) -> Result<Option<Vec<u8>>>;
    fn set_state(&self, key: &str, value: &[u8]) -> Result<()>;
    /// Give back what writers that died left half-written (a backup starts with it); returns
    /// the bytes given back. A store whose writes leave nothing behind does nothing.
    fn recover(&self) -> Result<u64> {
        Ok(0)
    }
    /// Garbage collection behind the seam: delete what no snapshot references, asking
    /// `marker` (the key holder) which objects snapshots reference, for the snapshots there
    /// are when it starts and again for any committed while it runs. It never deletes what a
    /// live session may still reference: it waits for sessions to end (up to `opts.wait`,
    /// then `Error::Locked`). `opts.dry_run` returns the plan's summary and changes nothing.
    fn collect_garbage(
        &self,
        marker: &mut dyn Mark,
        opts: &PruneOptions,
        notify: &dyn Fn(&str),
    ) -> Result<PruneReport>;
    /// Put intact copies in place of damaged objects and snapshots (`check --repair-from`):
    /// sealed bytes the caller verified with the key. An object's copy is stored beside the
    /// damaged one and read from then on (a later prune gives the damaged bytes back); a
    /// snapshot's copy replaces its stored blob. Returns the ids not taken, each with why (a
    /// server takes only what the client's rights allow, see DESIGN.md §9 "Repair"); the
    /// rest are stored when it returns.
    fn repair(
        &self,
        objects: &[ObjectCopy],
        snapshots: &[(Id, Vec<u8>)],
    ) -> Result<Vec<(Id, String)>>;
    /// What this store is like (see `Capabilities`).
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    /// Sizes for the space report (objects, sealed bytes, what the store occupies).
    fn space(&self) -> Result<Space>;
    /// The store itself, for the commands that still need the local redb store's wider API
    /// (check's storage walk, prune's repack, sync's sender) until they move onto the seam:
    /// they ask for a `Store` and tell the user to run them where the repository is otherwise.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// What `Reader::read_many` calls with each id and what reading it gave.
pub type ReadEach<'a> = dyn FnMut(Id, Result<(Kind, Vec<u8>)>) -> Result<()> + 'a;

/// Reads objects by id.
pub trait Reader: Send + Sync {
    /// What is stored under `id`, if anything.
    fn info(&self, id: &Id) -> Result<Option<ObjectInfo>>;
    /// For each id, whether it is stored (one answer per id, duplicates included).
    fn contains(&self, ids: &[Id]) -> Result<Vec<bool>>;
    /// Whether one id is stored.
    fn has(&self, id: &Id) -> Result<bool> {
        Ok(self.contains(std::slice::from_ref(id))?[0])
    }
    /// The sealed bytes and kind of `id`; `Error::Missing` when absent.
    fn read(&self, id: &Id) -> Result<(Kind, Vec<u8>)>;
    /// Read many objects, calling `f` once per id with what `read` would give (in the
    /// order asked); a store may fetch them together (the remote store pipelines them). An
    /// error `f` returns ends the reading.
    fn read_many(&self, ids: &[Id], f: &mut ReadEach<'_>) -> Result<()> {
        for id in ids {
            f(*id, self.read(id))?;
        }
        Ok(())
    }
    /// Up to `limit` objects whose id is at or after `from`, in id order.
    fn list(&self, from: &Id, limit: usize) -> Result<Vec<(Id, ObjectInfo)>>;
    /// How many objects are stored.
    fn count(&self) -> Result<u64>;
    /// What is stored under each of `ids` (`Error::Missing` for an absent one), in the order
    /// this store reads them fastest (the redb store: by place in its packs, so a sender
    /// reads sequentially). The default keeps the given order.
    fn in_read_order(&self, ids: &[Id]) -> Result<Vec<(Id, ObjectInfo)>> {
        ids.iter()
            .map(|id| match self.info(id)? {
                Some(info) => Ok((*id, info)),
                None => Err(Error::Missing(id.to_hex())),
            })
            .collect()
    }
}

/// Adds objects, then makes them visible (see the module's contract).
pub trait Writer: Send {
    /// Queue a sealed object. The writer may store it (and everything before it) right away
    /// when its buffer is full.
    fn add(&mut self, id: Id, kind: Kind, sealed: &[u8]) -> Result<()>;
    /// Store what is buffered: a prefix of the objects added so far becomes visible (a store
    /// may hold back the tail of a partly filled unit, a redb piece, until a later call).
    fn checkpoint(&mut self) -> Result<()>;
    /// Make every object added so far visible, then `snapshots`, in one atomic step.
    fn commit(&mut self, snapshots: &[(Id, Vec<u8>)]) -> Result<()>;
}

/// A boxed reader reads as the reader inside (so `&reader` works where `&dyn Reader` is asked).
impl<R: Reader + ?Sized> Reader for Box<R> {
    fn info(&self, id: &Id) -> Result<Option<ObjectInfo>> {
        (**self).info(id)
    }
    fn contains(&self, ids: &[Id]) -> Result<Vec<bool>> {
        (**self).contains(ids)
    }
    fn read(&self, id: &Id) -> Result<(Kind, Vec<u8>)> {
        (**self).read(id)
    }
    fn read_many(&self, ids: &[Id], f: &mut ReadEach<'_>) -> Result<()> {
        (**self).read_many(ids, f)
    }
    fn list(&self, from: &Id, limit: usize) -> Result<Vec<(Id, ObjectInfo)>> {
        (**self).list(from, limit)
    }
    fn count(&self) -> Result<u64> {
        (**self).count()
    }
    fn in_read_order(&self, ids: &[Id]) -> Result<Vec<(Id, ObjectInfo)>> {
        (**self).in_read_order(ids)
    }
}
