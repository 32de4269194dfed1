//! The redb store's tables, views and piece cache. Every redb type stays in `storage::redb`
//! (this module and its siblings), private to it.
//!
//! Sealed objects are appended to *packs*; a pack is cut into fixed-size *pieces* (values of
//! `piece_size` bytes, just under a power of two so redb wastes almost nothing; the last piece of
//! a pack may be shorter). An object may span pieces. `INDEX` maps an object id to its place.

use crate::crypto::Kind;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::storage::Space;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub(crate) const DB_FILE: &str = "cairn.redb";
pub(crate) const FORMAT_VERSION: u32 = 1;
/// `STATE` key prefix of a pack a writer has open (see `Store::give_back_abandoned`).
const OPEN_PACK: &str = "open_pack.";
/// Name prefix of a damaged database file moved aside by a rebuild.
pub(crate) const DAMAGED_PREFIX: &str = "cairn.redb.damaged-";

/// object id -> (pack, offset in pack, sealed length, kind, first 16 bytes of BLAKE3(sealed))
pub(crate) type IndexValue = (u64, u64, u32, u8, [u8; 16]);

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const KEYS: TableDefinition<u64, &[u8]> = TableDefinition::new("keys");
pub(crate) const PIECES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("pieces");
/// pack -> (length in bytes, objects written)
pub(crate) const PACKS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("packs");
pub(crate) const INDEX: TableDefinition<[u8; 32], IndexValue> = TableDefinition::new("index");
pub(crate) const SNAPSHOTS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("snapshots");
pub(crate) const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions");
pub(crate) const TARGETS: TableDefinition<&str, &str> = TableDefinition::new("targets");
pub(crate) const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

/// Where one object lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    pub pack: u64,
    pub offset: u64,
    pub len: u32,
    pub kind: Kind,
    pub check: [u8; 16],
}

impl Location {
    fn from_value(id: &Id, v: IndexValue) -> Result<Location> {
        let kind = Kind::from_u8(v.3)
            .ok_or_else(|| Error::corrupt(id, "index entry with unknown kind"))?;
        Ok(Location {
            pack: v.0,
            offset: v.1,
            len: v.2,
            kind,
            check: v.4,
        })
    }

    fn value(&self) -> IndexValue {
        (
            self.pack,
            self.offset,
            self.len,
            self.kind as u8,
            self.check,
        )
    }
}

/// The ciphertext checksum kept in the index: lets `check` and replicas verify stored bytes
/// without the password.
pub(crate) fn checksum(sealed: &[u8]) -> [u8; 16] {
    let h = blake3::hash(sealed);
    let mut c = [0u8; 16];
    c.copy_from_slice(&h.as_bytes()[..16]);
    c
}

pub struct Store {
    pub(crate) db: Db,
    dir: PathBuf,
    /// Shared by every reader the storage seam hands out (`storage::Storage::reader`).
    pieces: std::sync::Arc<PieceCache>,
    /// The config's piece size, read once (the config never changes).
    piece_size: std::sync::OnceLock<u32>,
}

/// The database, opened for writing or, where the file cannot be written (read-only media, a
/// read-only file), for reading only: every read works, every write is a clear error.
pub(crate) enum Db {
    Rw(redb::Database),
    /// Read-only, with the reason (read-only media; a truncated file).
    Ro(redb::ReadOnlyDatabase, PathBuf, &'static str),
}

impl Db {
    pub(crate) fn begin_read(&self) -> Result<redb::ReadTransaction> {
        Ok(match self {
            Db::Rw(db) => db.begin_read()?,
            Db::Ro(db, ..) => db.begin_read()?,
        })
    }

    pub(crate) fn begin_write(&self) -> Result<redb::WriteTransaction> {
        match self {
            Db::Rw(db) => Ok(db.begin_write()?),
            Db::Ro(_, dir, why) => Err(Error::ReadOnly {
                path: dir.clone(),
                why,
            }),
        }
    }

    pub(crate) fn check_integrity(&mut self) -> Result<bool> {
        match self {
            Db::Rw(db) => Ok(db.check_integrity()?),
            Db::Ro(_, dir, why) => Err(Error::ReadOnly {
                path: dir.clone(),
                why,
            }),
        }
    }

    pub(crate) fn is_read_only(&self) -> bool {
        matches!(self, Db::Ro(..))
    }
}

fn builder(cache_bytes: usize) -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_concurrency_mode(redb::ConcurrencyMode::MultiWriter);
    b.set_cache_size(cache_bytes);
    b
}

pub(crate) const DEFAULT_DB_CACHE: usize = 16 << 20;

/// An open for writing that failed only because the file cannot be written.
fn not_writable(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(libc::EROFS)
}

fn map_open_error(dir: &Path, e: redb::DatabaseError) -> Error {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::Locked {
            path: dir.to_path_buf(),
            reason: "opened exclusively, e.g. by `prune --compact`".into(),
        },
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Error::PermissionDenied(dir.join(DB_FILE))
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() != std::io::ErrorKind::InvalidData =>
        {
            Error::io(format!("opening {}", dir.display()), io)
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => Error::RepoNotFound {
            path: dir.to_path_buf(),
            reason: format!("its cairn.redb is not a database ({io})"),
        },
        redb::DatabaseError::UpgradeRequired(v) => Error::Format(format!(
            "the database file has format {v}, which this cairn cannot open"
        )),
        // The file is a database that does not open: damaged, not missing.
        other => Error::Damaged {
            path: dir.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

const READ_ONLY_MEDIA: &str = "read-only media or no write permission on its file";

/// A file cut short opens read-only, seen at its recorded length with zeros past the cut
/// (`store_truncated`); any other error stays as it is.
fn open_truncated(dir: &Path, file: &Path, cache_bytes: usize, e: Error) -> Result<Db> {
    let Error::Damaged { reason, .. } = &e else {
        return Err(e);
    };
    let Some(len) = super::truncated::recorded_len(reason) else {
        return Err(e);
    };
    let f = std::fs::File::open(file)
        .map_err(|io| Error::io(format!("opening {}", file.display()), io))?;
    let backend = super::truncated::ZeroTail::new(f, len)
        .map_err(|io| Error::io(format!("opening {}", file.display()), io))?;
    let ro = Error::guard(|| {
        builder(cache_bytes)
            .open_read_only_with_backend(backend)
            .map_err(|x| map_open_error(dir, x))
    })
    .map_err(|_| e)?;
    Ok(Db::Ro(
        ro,
        dir.to_path_buf(),
        "its file is shorter than its database records (truncated); it is opened for reading only, and what was cut off reads as damage",
    ))
}

/// A panic or `Db` error from opening the database at `dir`, as `Error::Damaged`.
fn damaged_at(dir: &Path, e: Error) -> Error {
    match e {
        Error::Db(reason) => Error::Damaged {
            path: dir.to_path_buf(),
            reason,
        },
        other => other,
    }
}

impl Store {
    /// Create a new, empty repository directory (mode 0700) and database (mode 0600).
    pub(crate) fn create(dir: &Path, meta: &[(&str, Vec<u8>)]) -> Result<Store> {
        let file = dir.join(DB_FILE);
        if file.exists() {
            return Err(Error::RepoExists(dir.to_path_buf()));
        }
        // Empty but for damaged databases moved aside by a rebuild (`check::rebuild_from`).
        let occupied = |mut d: std::fs::ReadDir| {
            d.any(|e| {
                e.map(|e| {
                    !e.file_name()
                        .as_encoded_bytes()
                        .starts_with(DAMAGED_PREFIX.as_bytes())
                })
                .unwrap_or(true)
            })
        };
        if dir.exists() && std::fs::read_dir(dir).map(occupied).unwrap_or(true) {
            return Err(Error::Usage(format!(
                "{} exists and is not empty; give a new or empty directory",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("setting mode of {}", dir.display()), e))?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .map_err(|e| Error::io(format!("creating {}", file.display()), e))?;
        let db = builder(DEFAULT_DB_CACHE)
            .create_with_backend(
                redb::backends::FileBackend::new(f).map_err(|e| map_open_error(dir, e))?,
            )
            .map_err(|e| map_open_error(dir, e))?;
        let store = Store {
            db: Db::Rw(db),
            dir: dir.to_path_buf(),
            pieces: std::sync::Arc::new(PieceCache::new(PIECE_CACHE_SLOTS)),
            piece_size: std::sync::OnceLock::new(),
        };
        let txn = store.db.begin_write()?;
        {
            let mut m = txn.open_table(META)?;
            for (k, v) in meta {
                m.insert(*k, v.as_slice())?;
            }
            m.insert("format", FORMAT_VERSION.to_le_bytes().as_slice())?;
            txn.open_table(KEYS)?;
            txn.open_table(PIECES)?;
            txn.open_table(PACKS)?;
            txn.open_table(INDEX)?;
            txn.open_table(SNAPSHOTS)?;
            txn.open_table(SESSIONS)?;
            txn.open_table(TARGETS)?;
            txn.open_table(STATE)?;
        }
        txn.commit()?;
        Ok(store)
    }

    pub fn open(dir: &Path, cache_bytes: usize) -> Result<Store> {
        let file = dir.join(DB_FILE);
        let not_found = |reason: &str| Error::RepoNotFound {
            path: dir.to_path_buf(),
            reason: reason.to_string(),
        };
        match std::fs::metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(Error::PermissionDenied(dir.to_path_buf()))
            }
            Err(_) => {
                return Err(not_found(
                    "the directory does not exist; create one with `cairn init`",
                ))
            }
            Ok(m) if !m.is_dir() => return Err(not_found("it is not a directory")),
            Ok(_) => {}
        }
        match std::fs::metadata(&file) {
            Ok(m) if m.is_file() => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(Error::PermissionDenied(file))
            }
            _ => {
                return Err(not_found(
                    "no cairn.redb in it; is this the right path? (`cairn init` creates one)",
                ))
            }
        }
        let db = Error::guard(|| match builder(cache_bytes).open(&file) {
            Ok(db) => Ok(Db::Rw(db)),
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(io))) if not_writable(&io) => {
                let ro = builder(cache_bytes)
                    .open_read_only(&file)
                    .map_err(|e| map_open_error(dir, e))?;
                Ok(Db::Ro(ro, dir.to_path_buf(), READ_ONLY_MEDIA))
            }
            Err(e) => Err(map_open_error(dir, e)),
        })
        .map_err(|e| damaged_at(dir, e))
        .or_else(|e| open_truncated(dir, &file, cache_bytes, e))?;
        let store = Store {
            db,
            dir: dir.to_path_buf(),
            pieces: std::sync::Arc::new(PieceCache::new(PIECE_CACHE_SLOTS)),
            piece_size: std::sync::OnceLock::new(),
        };
        match store.meta("format").map_err(|e| damaged_at(dir, e))? {
            Some(v) if v == FORMAT_VERSION.to_le_bytes() => Ok(store),
            Some(v) => Err(Error::Format(format!(
                "repository format {:?} is newer than this cairn understands; upgrade cairn",
                v
            ))),
            None => Err(not_found("the database is not a Cairn repository")),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `dir` holds a local repository (its database file).
    pub fn exists(dir: &Path) -> bool {
        dir.join(DB_FILE).is_file()
    }

    /// The size of the repository file in `dir`, if there is one.
    pub fn file_bytes(dir: &Path) -> Option<u64> {
        std::fs::metadata(dir.join(DB_FILE)).ok().map(|m| m.len())
    }

    /// Whether the repository was opened for reading only (its file cannot be written).
    pub(crate) fn is_read_only(&self) -> bool {
        self.db.is_read_only()
    }

    pub(crate) fn db_file(&self) -> PathBuf {
        self.dir.join(DB_FILE)
    }

    pub(crate) fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Error::guard(|| {
            let txn = self.db.begin_read()?;
            let t = match txn.open_table(META) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            Ok(t.get(key)?.map(|v| v.value().to_vec()))
        })
    }

    pub fn state(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Error::guard(|| {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(STATE)?;
            Ok(t.get(key)?.map(|v| v.value().to_vec()))
        })
    }

    pub fn set_state(&self, key: &str, value: &[u8]) -> Result<()> {
        Error::guard(|| {
            let txn = self.db.begin_write()?;
            txn.open_table(STATE)?.insert(key, value)?;
            txn.commit()?;
            Ok(())
        })
    }

    /// The repository config, decoded.
    pub fn config(&self) -> Result<crate::format::Config> {
        let bytes = self.meta("config")?.ok_or_else(|| Error::RepoNotFound {
            path: self.dir.clone(),
            reason: "the database has no Cairn config".into(),
        })?;
        crate::format::Config::decode(&bytes)
    }

    // ----- key slots -----

    pub fn key_slots(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        self.numbered_rows(KEYS)
    }

    /// Every row of a table numbered by `u64` (key slots, sessions), in order.
    fn numbered_rows(&self, table: TableDefinition<u64, &[u8]>) -> Result<Vec<(u64, Vec<u8>)>> {
        Error::guard(|| {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(table)?;
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((k.value(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// The `STATE` rows whose key starts with `prefix`, as (rest of the key, value).
    pub(crate) fn state_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        Error::guard(|| {
            let txn = self.db.begin_read()?;
            let state = txn.open_table(STATE)?;
            let mut out = Vec::new();
            for row in state.range(prefix..)? {
                let (k, v) = row?;
                let Some(rest) = k.value().strip_prefix(prefix) else {
                    break;
                };
                out.push((rest.to_string(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// Add a key slot (as encoded); refused once the repository holds `MAX_KEY_SLOTS`.
    pub fn add_key_slot(&self, slot: &[u8]) -> Result<u64> {
        Error::guard(|| {
            let txn = self.db.begin_write()?;
            let id = {
                let mut t = txn.open_table(KEYS)?;
                if t.len()? >= crate::crypto::MAX_KEY_SLOTS as u64 {
                    return Err(Error::Refused(format!(
                        "the repository holds {} key slots already, the most it takes; remove one with `cairn key remove`",
                        crate::crypto::MAX_KEY_SLOTS
                    )));
                }
                let id = t.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
                t.insert(id, slot)?;
                id
            };
            txn.commit()?;
            Ok(id)
        })
    }

    /// Remove a slot; refuses to remove the last one (that would lock everyone out).
    pub fn remove_key_slot(&self, id: u64) -> Result<()> {
        Error::guard(|| {
            let txn = self.db.begin_write()?;
            {
                let mut t = txn.open_table(KEYS)?;
                if t.get(id)?.is_none() {
                    return Err(Error::NotFound(format!(
                        "no key slot {id}; see `cairn key list`"
                    )));
                }
                if t.len()? <= 1 {
                    return Err(Error::Refused("the last key slot cannot be removed".into()));
                }
                t.remove(id)?;
            }
            txn.commit()?;
            Ok(())
        })
    }

    // ----- snapshots -----

    pub fn snapshot_blobs(&self) -> Result<Vec<(Id, Vec<u8>)>> {
        Error::guard(|| {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(SNAPSHOTS)?;
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((Id(k.value()), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    pub fn remove_snapshots(&self, ids: &[Id]) -> Result<()> {
        Error::guard(|| {
            let txn = self.db.begin_write()?;
            {
                let mut t = txn.open_table(SNAPSHOTS)?;
                for id in ids {
                    t.remove(id.0)?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    // ----- reading objects -----

    pub(crate) fn view(&self) -> Result<View> {
        self.view_sharing(std::sync::Arc::new(PieceCache::new(PIECE_CACHE_SLOTS)))
    }

    /// Hold up to `pieces` pieces (about 1 MiB each) for the readers of the storage seam,
    /// which share them (0: none). Set before handing readers out.
    pub(crate) fn set_piece_cache(&mut self, pieces: usize) {
        self.pieces = std::sync::Arc::new(PieceCache::new(pieces));
    }

    /// A view reading pieces through the store's shared cache.
    pub(crate) fn shared_view(&self) -> Result<View> {
        self.view_sharing(self.pieces.clone())
    }

    /// A view whose piece reads go through `cache`, which outlives it: for readers that take
    /// a fresh view per object (the mount) but still read neighbouring small objects, so one
    /// piece read serves many of them.
    pub(crate) fn view_sharing(&self, cache: std::sync::Arc<PieceCache>) -> Result<View> {
        let piece_size = match self.piece_size.get() {
            Some(p) => *p,
            None => {
                let p = self.config()?.piece_size;
                let _ = self.piece_size.set(p);
                p
            }
        };
        let txn = self.db.begin_read()?;
        Ok(View {
            index: txn.open_table(INDEX)?,
            pieces: txn.open_table(PIECES)?,
            cache,
            piece_size,
        })
    }

    /// Sizes for the space report: sealed bytes indexed, pack bytes, and the file's size on disk.
    pub fn space(&self) -> Result<Space> {
        Error::guard(|| self.space_unguarded())
    }

    fn space_unguarded(&self) -> Result<Space> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(INDEX)?;
        let packs = txn.open_table(PACKS)?;
        let mut s = Space::default();
        for row in index.iter()? {
            let (_, v) = row?;
            s.objects += 1;
            s.object_bytes += v.value().2 as u64;
        }
        for row in packs.iter()? {
            let (_, v) = row?;
            s.pack_bytes += v.value().0;
        }
        drop((index, packs, txn));
        if let Ok(m) = std::fs::metadata(self.db_file()) {
            use std::os::unix::fs::MetadataExt;
            s.file_bytes = m.blocks() * 512;
            s.file_len = m.len();
        }
        // redb reports its allocated pages from a write transaction only (not committed).
        if let Ok(txn) = self.db.begin_write() {
            if let Ok(st) = txn.stats() {
                s.db_bytes = Some(st.allocated_pages() * st.page_size() as u64);
            }
            let _ = txn.abort();
        }
        Ok(s)
    }

    // ----- writing -----

    pub fn begin_session(&self, info: &[u8]) -> Result<u64> {
        Error::guard(|| {
            let txn = self.db.begin_write()?;
            let id = {
                let mut t = txn.open_table(SESSIONS)?;
                let id = t.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
                t.insert(id, info)?;
                id
            };
            txn.commit()?;
            Ok(id)
        })
    }

    pub fn end_session(&self, id: u64) -> Result<()> {
        Error::guard(|| {
            let txn = self.db.begin_write()?;
            txn.open_table(SESSIONS)?.remove(id)?;
            txn.commit()?;
            Ok(())
        })
    }

    pub fn sessions(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        self.numbered_rows(SESSIONS)
    }

    /// Give back what writers that died left in their open packs: the pieces past the last
    /// indexed object, which nothing can use (a backup killed or stopped by a full disk
    /// commits pieces ahead of their index rows, see `Packer::index_every`). A writer records
    /// each pack it opens (`STATE` `open_pack.<pack>` = its session info) in the commit that
    /// opens it and removes the record in the commit that closes it; a record whose process is
    /// gone marks such a pack. Returns the bytes given back.
    pub(crate) fn give_back_abandoned(&self) -> Result<u64> {
        let mut freed = 0;
        for (pack, writer) in self.state_with_prefix(OPEN_PACK)? {
            if let (Ok(pack), false) = (pack.parse(), crate::util::session_alive(&writer)) {
                freed += Error::guard(|| self.drop_unindexed_tail(pack))?;
            }
        }
        Ok(freed)
    }

    /// Cut `pack` back to its last indexed object (see `give_back_abandoned`).
    fn drop_unindexed_tail(&self, pack: u64) -> Result<u64> {
        let ps = self.config()?.piece_size as u64;
        let txn = self.db.begin_write()?;
        let freed = {
            let (mut end, mut objects) = (0u64, 0u64);
            for row in txn.open_table(INDEX)?.iter()? {
                let (_, v) = row?;
                let (p, offset, len, ..) = v.value();
                if p == pack {
                    end = end.max(offset + len as u64);
                    objects += 1;
                }
            }
            let mut packs = txn.open_table(PACKS)?;
            let old = packs.get(pack)?.map(|v| v.value().0).unwrap_or(0);
            let mut pieces = txn.open_table(PIECES)?;
            for n in end.div_ceil(ps) as u32..old.div_ceil(ps) as u32 {
                pieces.remove((pack, n))?;
            }
            if end == 0 {
                packs.remove(pack)?;
            } else {
                packs.insert(pack, (end, objects))?;
            }
            txn.open_table(STATE)?
                .remove(format!("{OPEN_PACK}{pack}").as_str())?;
            old.saturating_sub(end)
        };
        txn.commit()?;
        Ok(freed)
    }

    /// Commit a batch: pieces and the index entries of objects they complete, then snapshots.
    pub(crate) fn commit_batch(&self, batch: Batch<'_>) -> Result<Option<u64>> {
        Error::guard(|| self.commit_batch_unguarded(batch))
    }

    fn commit_batch_unguarded(&self, batch: Batch<'_>) -> Result<Option<u64>> {
        let txn = self.db.begin_write()?;
        let mut pack = batch.pack;
        {
            if pack.is_none() && !batch.pieces.is_empty() {
                let mut meta = txn.open_table(META)?;
                let next = meta
                    .get("next_pack")?
                    .map(|v| u64_from(v.value()))
                    .unwrap_or(1);
                meta.insert("next_pack", (next + 1).to_le_bytes().as_slice())?;
                pack = Some(next);
            }
            if let Some(p) = pack {
                let key = format!("{OPEN_PACK}{p}");
                if batch.close {
                    txn.open_table(STATE)?.remove(key.as_str())?;
                } else if batch.pack.is_none() {
                    let me = crate::util::session_info();
                    txn.open_table(STATE)?.insert(key.as_str(), me.as_slice())?;
                }
                let mut pieces = txn.open_table(PIECES)?;
                for (n, bytes) in batch.pieces {
                    pieces.insert((p, *n), *bytes)?;
                }
                let mut index = txn.open_table(INDEX)?;
                for (id, loc) in batch.objects {
                    if batch.relocate || index.get(id.0)?.is_none() {
                        let mut l = *loc;
                        l.pack = p;
                        index.insert(id.0, l.value())?;
                    }
                }
                txn.open_table(PACKS)?
                    .insert(p, (batch.pack_len, batch.pack_objects))?;
            }
            let mut snaps = txn.open_table(SNAPSHOTS)?;
            for (id, blob) in batch.snapshots {
                if !batch.relocate {
                    match snaps.get(id.0)? {
                        Some(old) if old.value() == blob.as_slice() => continue,
                        Some(_) => return Err(snapshot_conflict(id)),
                        None => {}
                    }
                }
                snaps.insert(id.0, blob.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(pack)
    }
}

/// The error for a snapshot that exists with other bytes: stored snapshots are never replaced
/// (only a repair, which copies a verified blob over a damaged one, may).
fn snapshot_conflict(id: &Id) -> Error {
    Error::Refused(format!(
        "snapshot {id} is already stored with other bytes; a stored snapshot is never replaced"
    ))
}

fn u64_from(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(a)
}

pub(crate) struct Batch<'a> {
    pub pack: Option<u64>,
    pub pieces: &'a [(u32, &'a [u8])],
    pub objects: &'a [(Id, Location)],
    pub pack_len: u64,
    pub pack_objects: u64,
    /// Overwrite existing index rows and snapshot blobs (verbatim copies by prune and repair).
    /// Without it an existing snapshot is kept when the same bytes come again and the commit
    /// is refused when other bytes come under its id.
    pub relocate: bool,
    /// This commit closes the pack.
    pub close: bool,
    pub snapshots: &'a [(Id, Vec<u8>)],
}

/// A consistent read-only view of the repository's objects (one redb read transaction).
pub(crate) struct View {
    index: redb::ReadOnlyTable<[u8; 32], IndexValue>,
    pieces: redb::ReadOnlyTable<(u64, u32), &'static [u8]>,
    cache: std::sync::Arc<PieceCache>,
    /// The repository's piece size (for reads through the storage seam).
    pub(crate) piece_size: u32,
}

/// Recently read pieces. Small objects share pieces, and readers (restore, mount) take them in
/// roughly the order they were written, so one piece read serves many objects.
///
/// A cache shared between views (`Store::view_sharing`) may hold a pack's last piece from
/// before the pack grew (a later batch of the same backup rewrites it longer; earlier bytes
/// never change, and pack numbers are never reused), so a cached piece too short for a read
/// is read again.
pub(crate) struct PieceCache {
    slots: std::sync::Mutex<Vec<PieceSlot>>,
    capacity: usize,
    clock: std::sync::atomic::AtomicU64,
    /// Pieces being read right now: a second reader of the same piece waits for the first
    /// instead of reading (and copying) the same 1 MiB again. Without this, the mount's
    /// prefetch threads, all decoding neighbouring small files at once, read each piece
    /// about five times.
    loading: std::sync::Mutex<std::collections::HashSet<(u64, u32)>>,
    loaded: std::sync::Condvar,
}

/// (pack, piece), the piece's bytes, last use.
type PieceSlot = ((u64, u32), std::sync::Arc<Vec<u8>>, u64);

/// Releases a claim on a piece being read (also when the read fails or unwinds).
struct Claim<'a> {
    cache: &'a PieceCache,
    key: (u64, u32),
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut loading = self.cache.loading.lock().unwrap_or_else(|e| e.into_inner());
        loading.remove(&self.key);
        drop(loading);
        self.cache.loaded.notify_all();
    }
}

pub(crate) const PIECE_CACHE_SLOTS: usize = 32;

impl PieceCache {
    /// A cache of up to `capacity` pieces.
    pub fn new(capacity: usize) -> Self {
        PieceCache {
            slots: std::sync::Mutex::new(Vec::new()),
            capacity,
            clock: Default::default(),
            loading: Default::default(),
            loaded: Default::default(),
        }
    }

    /// The cached piece if it holds at least `need` bytes; otherwise a claim to read it
    /// (after waiting for another reader of the same piece, whose result is then used).
    fn get_or_claim(
        &self,
        key: (u64, u32),
        need: usize,
    ) -> std::result::Result<std::sync::Arc<Vec<u8>>, Claim<'_>> {
        let mut waited = false;
        loop {
            match self.get(key) {
                Some(p) if p.len() >= need => return Ok(p),
                // What another reader just read is still too short: read it ourselves.
                Some(_) if waited => return Err(self.claim(key)),
                _ => {}
            }
            let mut loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
            if !loading.contains(&key) {
                loading.insert(key);
                drop(loading);
                // Loaded between our look and our claim?
                let claim = Claim { cache: self, key };
                return match self.get(key) {
                    Some(p) if p.len() >= need => Ok(p),
                    _ => Err(claim),
                };
            }
            while loading.contains(&key) {
                loading = self.loaded.wait(loading).unwrap_or_else(|e| e.into_inner());
            }
            waited = true;
        }
    }

    /// A claim taken while the piece may be claimed already (a rare re-read).
    fn claim(&self, key: (u64, u32)) -> Claim<'_> {
        self.loading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key);
        Claim { cache: self, key }
    }

    fn get(&self, key: (u64, u32)) -> Option<std::sync::Arc<Vec<u8>>> {
        let now = self
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.iter_mut().find(|s| s.0 == key)?;
        slot.2 = now;
        Some(slot.1.clone())
    }

    fn put(&self, key: (u64, u32), bytes: std::sync::Arc<Vec<u8>>) {
        let now = self
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(same) = slots.iter_mut().find(|s| s.0 == key) {
            *same = (key, bytes, now);
        } else if slots.len() < self.capacity {
            slots.push((key, bytes, now));
        } else if let Some(oldest) = slots.iter_mut().min_by_key(|s| s.2) {
            *oldest = (key, bytes, now);
        }
    }
}

impl View {
    pub fn locate(&self, id: &Id) -> Result<Option<Location>> {
        Error::guard(|| match self.index.get(id.0)? {
            Some(v) => Ok(Some(Location::from_value(id, v.value())?)),
            None => Ok(None),
        })
        .map_err(|e| e.at_object(id))
    }

    pub fn contains(&self, id: &Id) -> Result<bool> {
        Error::guard(|| Ok(self.index.get(id.0)?.is_some())).map_err(|e| e.at_object(id))
    }

    /// The sealed bytes of an object, read from the pieces it spans.
    pub fn read_sealed(&self, id: &Id, loc: &Location, piece_size: u32) -> Result<Vec<u8>> {
        Error::guard(|| self.read_sealed_unguarded(id, loc, piece_size))
            .map_err(|e| e.at_object(id))
    }

    fn read_sealed_unguarded(&self, id: &Id, loc: &Location, piece_size: u32) -> Result<Vec<u8>> {
        let ps = piece_size as u64;
        let end = loc.offset + loc.len as u64;
        let mut out = Vec::with_capacity(loc.len as usize);
        let mut pos = loc.offset;
        while pos < end {
            let n = (pos / ps) as u32;
            let need = ((end - n as u64 * ps).min(ps)) as usize;
            let start = (pos - n as u64 * ps) as usize;
            let copied = if self.cache.capacity == 0 {
                // No cache: copy just the object's bytes, not the whole piece.
                let piece = self.raw_piece(id, loc.pack, n)?;
                append_part(&mut out, id, loc.pack, n, piece.value(), start, need)?
            } else {
                let piece = self.piece(id, loc.pack, n, need)?;
                append_part(&mut out, id, loc.pack, n, &piece, start, need)?
            };
            pos += copied as u64;
        }
        Ok(out)
    }

    fn raw_piece(
        &self,
        id: &Id,
        pack: u64,
        n: u32,
    ) -> Result<redb::AccessGuard<'_, &'static [u8]>> {
        self.pieces
            .get((pack, n))?
            .ok_or_else(|| Error::corrupt(id, format!("piece {n} of pack {pack} is missing")))
    }

    /// Piece `n` of `pack`, from the cache if the cached copy holds at least `need` bytes.
    fn piece(&self, id: &Id, pack: u64, n: u32, need: usize) -> Result<std::sync::Arc<Vec<u8>>> {
        let _claim = match self.cache.get_or_claim((pack, n), need) {
            Ok(p) => return Ok(p),
            Err(claim) => claim,
        };
        let piece = self.raw_piece(id, pack, n)?;
        let bytes = std::sync::Arc::new(piece.value().to_vec());
        self.cache.put((pack, n), bytes.clone());
        Ok(bytes)
    }

    /// Every indexed object, in id order.
    pub fn for_each_object(&self, mut f: impl FnMut(Id, Location) -> Result<()>) -> Result<()> {
        Error::guard(|| {
            for row in self.index.iter()? {
                let (k, v) = row?;
                let id = Id(k.value());
                f(id, Location::from_value(&id, v.value())?)?;
            }
            Ok(())
        })
    }

    /// Objects whose id is at or after `from`, at most `limit` of them.
    pub fn objects_from(&self, from: &Id, limit: usize) -> Result<Vec<(Id, Location)>> {
        Error::guard(|| self.objects_from_unguarded(from, limit))
    }

    fn objects_from_unguarded(&self, from: &Id, limit: usize) -> Result<Vec<(Id, Location)>> {
        let mut out = Vec::new();
        for row in self.index.range(from.0..)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row?;
            let id = Id(k.value());
            out.push((id, Location::from_value(&id, v.value())?));
        }
        Ok(out)
    }

    pub fn object_count(&self) -> Result<u64> {
        Error::guard(|| Ok(self.index.len()?))
    }
}

/// Append `bytes[start..need]` of piece `n` to `out`; the number of bytes appended.
fn append_part(
    out: &mut Vec<u8>,
    id: &Id,
    pack: u64,
    n: u32,
    bytes: &[u8],
    start: usize,
    need: usize,
) -> Result<usize> {
    let stop = need.min(bytes.len());
    if start >= stop {
        return Err(Error::corrupt(
            id,
            format!("piece {n} of pack {pack} is truncated"),
        ));
    }
    out.extend_from_slice(&bytes[start..stop]);
    Ok(stop - start)
}

/// Overwrite bytes of a stored piece in place — only for tests that simulate disk damage
/// (`testkit::damage_object`).
#[cfg(any(test, feature = "testkit"))]
pub(crate) fn damage_object(store: &Store, id: &Id, piece_size: u32, flip_at: u64) -> Result<()> {
    let loc = store
        .view()?
        .locate(id)?
        .ok_or_else(|| Error::Missing(id.to_hex()))?;
    let pos = loc.offset + flip_at.min(loc.len as u64 - 1);
    let n = (pos / piece_size as u64) as u32;
    let txn = store.db.begin_write()?;
    {
        let mut pieces = txn.open_table(PIECES)?;
        let mut bytes = pieces
            .get((loc.pack, n))?
            .map(|v| v.value().to_vec())
            .ok_or_else(|| Error::Missing(id.to_hex()))?;
        let off = (pos - n as u64 * piece_size as u64) as usize;
        bytes[off] ^= 0x55;
        pieces.insert((loc.pack, n), bytes.as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod piece_cache_tests {
    use super::PieceCache;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn concurrent_readers_of_one_piece_read_it_once() {
        let cache = PieceCache::new(4);
        let reads = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| match cache.get_or_claim((1, 0), 10) {
                    Ok(p) => assert_eq!(p.len(), 100),
                    Err(_claim) => {
                        reads.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        cache.put((1, 0), Arc::new(vec![7; 100]));
                    }
                });
            }
        });
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_cached_piece_too_short_is_read_again() {
        let cache = PieceCache::new(4);
        cache.put((1, 0), Arc::new(vec![1; 10]));
        assert!(cache.get_or_claim((1, 0), 10).is_ok());
        let claim = cache.get_or_claim((1, 0), 20);
        assert!(
            claim.is_err(),
            "a shorter copy (the pack has grown) is not served"
        );
        cache.put((1, 0), Arc::new(vec![1; 20]));
        drop(claim);
        assert_eq!(
            cache.get_or_claim((1, 0), 20).map(|p| p.len()).ok(),
            Some(20)
        );
    }

    #[test]
    fn a_failed_read_lets_the_next_reader_try() {
        let cache = PieceCache::new(4);
        drop(cache.get_or_claim((2, 3), 1));
        assert!(
            cache.get_or_claim((2, 3), 1).is_err(),
            "claimable again, not hanging"
        );
    }
}
