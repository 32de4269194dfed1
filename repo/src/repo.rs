//! An open repository: the store plus the unwrapped master keys.

use crate::crypto::{KdfParams, KeySlot, Kind, MasterKeys};
use crate::error::{Error, Result};
use crate::format::{decode_list, Config, Content, Extent, Snapshot, Tree};
use crate::graph::{self, Refs};
use crate::id::Id;
use crate::storage::redb::{Store, DEFAULT_DB_CACHE};
use crate::storage::{Reader, Storage, Url};
use rand::RngCore;
use std::path::Path;

pub const DEFAULT_CHUNK_MIN: u32 = 256 << 10;
pub const DEFAULT_CHUNK_AVG: u32 = 1 << 20;
pub const DEFAULT_CHUNK_MAX: u32 = 4 << 20;
/// 1 MiB minus 256 bytes: a piece plus redb's leaf header (under 64 bytes, measured) fits in
/// 256 pages exactly, so pieces waste almost nothing (DESIGN.md; a test keeps it true).
pub const DEFAULT_PIECE_SIZE: u32 = (1 << 20) - 256;
pub const DEFAULT_PACK_MAX: u64 = 128 << 20;

/// Tunables for opening a repository.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    pub db_cache_bytes: usize,
    /// Pieces (about 1 MiB each) of raw repository bytes the readers share (0: none).
    pub piece_cache_pieces: usize,
    /// Argon2 parameters for new key slots (`None`: the defaults).
    pub kdf: Option<KdfParams>,
    /// How to reach a repository on a server (`ssh://`).
    pub ssh: crate::sync::SshOptions,
    /// Where a repository on a server or in a bucket keeps its local cache of trees and
    /// content lists (`None`: no cache; DESIGN.md §9, "The object cache"). Open without it
    /// for `check::check` and the repairs: with it, they would verify this machine's copies
    /// of trees and lists instead of the store's.
    pub object_cache: Option<std::path::PathBuf>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            db_cache_bytes: DEFAULT_DB_CACHE,
            piece_cache_pieces: crate::storage::redb::PIECE_CACHE_SLOTS,
            kdf: None,
            ssh: crate::sync::SshOptions::default(),
            object_cache: None,
        }
    }
}

pub struct Repository {
    store: Box<dyn Storage>,
    keys: MasterKeys,
    config: Config,
    /// The key slot the password opened.
    slot: u64,
}

/// A snapshot that does not decrypt or decode, with why.
pub type Undecodable = (Id, Error);

/// A snapshot together with its id.
#[derive(Clone, Debug)]
pub struct SnapshotEntry {
    pub id: Id,
    pub snapshot: Snapshot,
}

impl Repository {
    /// A new repository's config: fresh id, the default chunking and pack sizes.
    pub fn new_config() -> Config {
        let mut repo_id = [0u8; 16];
        rand::rng().fill_bytes(&mut repo_id);
        Config {
            repo_id,
            chunk_min: DEFAULT_CHUNK_MIN,
            chunk_avg: DEFAULT_CHUNK_AVG,
            chunk_max: DEFAULT_CHUNK_MAX,
            piece_size: DEFAULT_PIECE_SIZE,
            pack_max: DEFAULT_PACK_MAX,
            created: crate::util::now_unix(),
        }
    }

    /// A new local repository in `dir` (see `init_in` for any store).
    pub fn init(dir: &Path, password: &[u8], opts: &OpenOptions) -> Result<Repository> {
        Repository::init_at(&Url::Local(dir.to_path_buf()), password, opts)
    }

    /// A new repository wherever `url` says.
    pub fn init_at(url: &Url, password: &[u8], opts: &OpenOptions) -> Result<Repository> {
        let store = crate::storage::create(url, &Repository::new_config(), opts)?;
        Repository::init_in(store, password, opts.kdf.clone())
    }

    /// Make the master keys of a store just created (from `new_config`) and wrap them in a
    /// first key slot for `password`.
    pub fn init_in(
        store: Box<dyn Storage>,
        password: &[u8],
        kdf: Option<KdfParams>,
    ) -> Result<Repository> {
        let config = store.config()?;
        let keys = MasterKeys::random();
        let kdf = kdf.unwrap_or_else(KdfParams::new_default);
        let slot = KeySlot::wrap(&keys, password, &config.repo_id, kdf)?;
        let slot = store.add_key_slot(&encode_slot(&slot)?)?;
        Ok(Repository {
            store,
            keys,
            config,
            slot,
        })
    }

    pub fn open(dir: &Path, password: &[u8], opts: &OpenOptions) -> Result<Repository> {
        Repository::open_at(&Url::Local(dir.to_path_buf()), password, opts)
    }

    pub fn open_at(url: &Url, password: &[u8], opts: &OpenOptions) -> Result<Repository> {
        Repository::unlock(crate::storage::open(url, opts)?, password)
    }

    /// Unlock an opened store with a password (open the store first to report a missing
    /// repository before asking for the password).
    pub fn unlock(store: Box<dyn Storage>, password: &[u8]) -> Result<Repository> {
        let config = store.config()?;
        for (slot_id, bytes) in store.key_slots()? {
            let slot: KeySlot = match postcard::from_bytes(&bytes) {
                Ok(s) => s,
                Err(_) => continue,
            };
            // A slot beyond the limits (planted by a hostile peer) is never derived.
            if slot.kdf.check_limits().is_err() {
                continue;
            }
            if let Some(keys) = slot.unwrap_keys(password, &config.repo_id)? {
                return Ok(Repository {
                    store,
                    keys,
                    config,
                    slot: slot_id,
                });
            }
        }
        Err(Error::WrongPassword(store.location().into()))
    }

    /// The store behind the seam.
    pub fn storage(&self) -> &dyn Storage {
        &*self.store
    }

    /// The local redb store, for the commands not yet moved onto the seam (DESIGN.md §9);
    /// `what` names the command for the error a repository elsewhere gets.
    pub fn local(&self, what: &str) -> Result<&Store> {
        crate::storage::local(&*self.store, what)
    }

    pub fn keys(&self) -> &MasterKeys {
        &self.keys
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn current_slot(&self) -> u64 {
        self.slot
    }

    /// A reader of the objects stored now (through the storage seam; readers share the
    /// store's piece cache).
    pub fn reader(&self) -> Result<Box<dyn Reader>> {
        self.store.reader()
    }

    // ----- snapshots -----

    /// All snapshots, oldest first. Undecodable ones are reported as errors.
    pub fn snapshots(&self) -> Result<Vec<SnapshotEntry>> {
        let (ok, mut damaged) = self.snapshots_tolerant()?;
        match damaged.pop() {
            Some((_, e)) => Err(e),
            None => Ok(ok),
        }
    }

    /// All snapshots that open, oldest first, and the ones that do not with their errors: one
    /// damaged snapshot must not hide the others from listing, restore or the mount.
    pub fn snapshots_tolerant(&self) -> Result<(Vec<SnapshotEntry>, Vec<Undecodable>)> {
        Ok(self.decode_snapshots(self.store.snapshots()?))
    }

    /// Decrypt and decode sealed snapshots (as stored), splitting good from damaged.
    pub fn decode_snapshots(
        &self,
        blobs: Vec<(Id, Vec<u8>)>,
    ) -> (Vec<SnapshotEntry>, Vec<(Id, Error)>) {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for (id, blob) in blobs {
            match self.open_snapshot(&id, &blob) {
                Ok(snapshot) => ok.push(SnapshotEntry { id, snapshot }),
                Err(e) => bad.push((id, e)),
            }
        }
        ok.sort_by(|a, b| a.snapshot.time.cmp(&b.snapshot.time).then(a.id.cmp(&b.id)));
        (ok, bad)
    }

    /// Resolve `latest` or a unique hex prefix of a snapshot id.
    /// Damaged snapshots are passed over (`check` reports them).
    pub fn find_snapshot(&self, spec: &str) -> Result<SnapshotEntry> {
        let (all, _) = self.snapshots_tolerant()?;
        if spec == "latest" {
            return all
                .into_iter()
                .next_back()
                .ok_or_else(|| Error::NotFound("the repository has no snapshots yet".into()));
        }
        let spec_l = spec.to_ascii_lowercase();
        if spec_l.is_empty() || !spec_l.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Usage(format!(
                "`{spec}` is not a snapshot id; give an id prefix from `cairn snapshots` or `latest`"
            )));
        }
        let mut hits: Vec<SnapshotEntry> = all
            .into_iter()
            .filter(|s| s.id.to_hex().starts_with(&spec_l))
            .collect();
        match hits.len() {
            0 => Err(Error::NotFound(format!(
                "no snapshot matches `{spec}`; see `cairn snapshots`"
            ))),
            1 => Ok(hits.remove(0)),
            n => Err(Error::Usage(format!(
                "`{spec}` matches {n} snapshots; give more digits"
            ))),
        }
    }

    /// Decrypt and decode one stored snapshot, checking its public references.
    pub fn open_snapshot(&self, id: &Id, blob: &[u8]) -> Result<Snapshot> {
        let plain = self.keys.open(Kind::Snapshot, id, blob)?;
        let snapshot = Snapshot::decode(&plain).map_err(|e| Error::corrupt(id, e.to_string()))?;
        graph::check_refs(id, blob, || Refs::of_snapshot(&snapshot, &self.keys))?;
        Ok(snapshot)
    }

    /// Seal a snapshot (format 2: its root and time in the public part, DESIGN.md §3).
    pub fn seal_snapshot(&self, snapshot: &Snapshot) -> Result<(Id, Vec<u8>)> {
        let plain = snapshot.encode();
        let id = self.keys.id_of(Kind::Snapshot, &plain);
        let public = Refs::of_snapshot(snapshot, &self.keys).encode();
        let sealed = self
            .keys
            .seal_public(Kind::Snapshot, &id, &public, &plain, 3)?;
        Ok((id, sealed))
    }

    // ----- objects -----

    /// Read, decrypt and verify one object.
    pub fn load(&self, reader: &dyn Reader, id: &Id, kind: Kind) -> Result<Vec<u8>> {
        self.load_sealed(reader, id, kind).map(|(plain, _)| plain)
    }

    /// `load`, also returning the sealed bytes as stored.
    fn load_sealed(&self, reader: &dyn Reader, id: &Id, kind: Kind) -> Result<(Vec<u8>, Vec<u8>)> {
        let sealed = crate::storage::read_as(reader, id, kind)?;
        let plain = self.keys.open_verified(kind, id, &sealed)?;
        Ok((plain, sealed))
    }

    /// Read and decode a tree, checking its public references.
    pub fn load_tree(&self, reader: &dyn Reader, id: &Id) -> Result<Tree> {
        self.open_tree(id, &crate::storage::read_as(reader, id, Kind::Tree)?)
    }

    /// Decrypt, verify and decode a tree read already (by a batched `read_many`), checking
    /// its public references.
    pub fn open_tree(&self, id: &Id, sealed: &[u8]) -> Result<Tree> {
        let plain = self.keys.open_verified(Kind::Tree, id, sealed)?;
        let tree = Tree::decode(&plain).map_err(|e| Error::corrupt(id, e.to_string()))?;
        graph::check_refs(id, sealed, || Refs::of_tree(&tree))?;
        Ok(tree)
    }

    /// Read and decode one content list, checking its public references.
    pub fn load_list(&self, reader: &dyn Reader, id: &Id) -> Result<Vec<Extent>> {
        let (plain, sealed) = self.load_sealed(reader, id, Kind::List)?;
        let extents = decode_list(&plain).map_err(|e| Error::corrupt(id, e.to_string()))?;
        graph::check_refs(id, &sealed, || Refs::of_list(&extents))?;
        Ok(extents)
    }

    /// The full extent list of a file entry's content.
    pub fn extents(&self, reader: &dyn Reader, content: &Content) -> Result<Vec<Extent>> {
        match content {
            Content::None => Ok(Vec::new()),
            Content::Inline(v) => Ok(v.clone()),
            Content::Lists(lists) => {
                let mut out = Vec::new();
                for l in lists {
                    let part = self.load_list(reader, &l.id)?;
                    if part.len() != l.count as usize {
                        return Err(Error::corrupt(l.id, "content list length mismatch"));
                    }
                    out.extend(part);
                }
                Ok(out)
            }
        }
    }

    /// The entry at an absolute `path` inside a snapshot rooted at `root` (`/` gives a
    /// synthetic directory entry for the root).
    pub fn lookup(
        &self,
        reader: &dyn Reader,
        root: &Id,
        path: &[u8],
    ) -> Result<Option<crate::format::Entry>> {
        let mut entry = crate::format::Entry::new(b"/".to_vec(), crate::format::FileType::Dir);
        entry.mode = 0o755;
        entry.subtree = Some(*root);
        for comp in path
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            let Some(sub) = entry.subtree else {
                return Ok(None);
            };
            let tree = self.load_tree(reader, &sub)?;
            match tree.find(comp) {
                Some(e) => entry = e.clone(),
                None => return Ok(None),
            }
        }
        Ok(Some(entry))
    }

    // ----- key slots -----

    pub fn add_password(&self, password: &[u8], kdf: Option<KdfParams>) -> Result<u64> {
        let kdf = kdf.unwrap_or_else(KdfParams::new_default);
        let slot = KeySlot::wrap(&self.keys, password, &self.config.repo_id, kdf)?;
        self.store.add_key_slot(&encode_slot(&slot)?)
    }

    pub fn key_slots(&self) -> Result<Vec<(u64, KeySlot)>> {
        let mut out = Vec::new();
        for (id, bytes) in self.store.key_slots()? {
            let slot: KeySlot = postcard::from_bytes(&bytes)
                .map_err(|e| Error::Format(format!("key slot {id}: {e}")))?;
            out.push((id, slot));
        }
        Ok(out)
    }

    pub fn remove_key_slot(&self, id: u64) -> Result<()> {
        self.store.remove_key_slot(id)
    }

    /// Change the current password: add a slot for the new one, then remove the old slot.
    pub fn change_password(&mut self, new_password: &[u8], kdf: Option<KdfParams>) -> Result<u64> {
        let new_slot = self.add_password(new_password, kdf)?;
        self.store.remove_key_slot(self.slot)?;
        self.slot = new_slot;
        Ok(new_slot)
    }
}

fn encode_slot(slot: &KeySlot) -> Result<Vec<u8>> {
    postcard::to_stdvec(slot).map_err(|e| Error::Internal(format!("encoding key slot: {e}")))
}
