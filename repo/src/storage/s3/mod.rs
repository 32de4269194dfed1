//! The S3 store (`s3://bucket/prefix`): the repository as immutable objects in a bucket of
//! any S3-compatible server (Garage, Ceph RGW, MinIO, AWS). Layout and protocol: DESIGN.md
//! §10. In short, below the prefix:
//! - `config`, `keys/<n>`: written once (a key slot is removed, never rewritten);
//! - `packs/<random>`: sealed objects end to end, tens of MiB, never rewritten;
//! - `index/<random>`: where each object of some packs is, written only after those packs
//!   (an object is visible once an index object names it);
//! - `snapshots/<id>`: written last, after the index objects of everything they reference;
//! - `sessions/<n>`, `gc/<n>`: writers and collections in flight, kept alive by a heartbeat;
//! - `state/<key>`: the check and sync records (the only objects that are rewritten).
//!
//! Nothing relies on conditional writes (Garage ignores `If-None-Match`) or on clocks agreeing.

mod cache;
mod client;
mod gc;
mod index;
mod writer;

use super::{
    Capabilities, Mark, PruneOptions, PruneReport, ReadEach, Reader, Space, Storage, Writer,
    WriterOptions,
};
use crate::crypto::{Kind, MAX_KEY_SLOTS};
use crate::error::{Error, Result};
use crate::format::Config;
use crate::id::Id;
use cache::Cache;
pub use client::Endpoint;
use client::{Client, Listed};
use index::Index;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

/// An S3 repository location: the bucket and the prefix inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub prefix: String,
}

impl S3Url {
    /// `s3://bucket[/prefix]`.
    pub fn parse(text: &str) -> Result<S3Url> {
        let rest = text.strip_prefix("s3://").unwrap_or(text);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
        if !valid {
            return Err(Error::Usage(format!(
                "{text}: not an S3 repository URL; give s3://BUCKET/PREFIX (a bucket name is 3-63 lowercase letters, digits, dots or dashes)"
            )));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(Error::Usage(format!(
                "{text}: `.` and `..` are not S3 prefixes"
            )));
        }
        Ok(S3Url {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.prefix.is_empty() {
            true => write!(f, "s3://{}", self.bucket),
            false => write!(f, "s3://{}/{}", self.bucket, self.prefix),
        }
    }
}

/// S3 requests made (a multipart upload counts its parts and 2 more; a listing its pages).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Requests {
    pub total: u64,
    pub get: u64,
    pub put: u64,
    pub list: u64,
    pub delete: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// What every S3 store of this process has cost so far (`None` before the first request):
/// the `--json` report of a command names it.
pub fn requests_made() -> Option<Requests> {
    let r = client::PROCESS.snapshot();
    (r.total > 0).then_some(r)
}

/// What the store and its readers share: the client, the cache and the index loaded so far.
struct Shared {
    client: Client,
    cache: Cache,
    index: Mutex<Arc<Index>>,
    blocks: Mutex<Blocks>,
}

/// Bytes of a pack fetched together for single reads (`Reader::read`: a restore, a mount),
/// and how many such blocks stay in memory, shared by every reader of the store. Objects
/// are stored in the order a backup wrote them, so the next read usually finds its bytes
/// here: one GET per block instead of one per chunk.
const BLOCK: u64 = 2 << 20;
const BLOCKS_KEPT: usize = 32;

/// Recently fetched pack blocks, by pack name and block number (pack names are never
/// reused, so a block never goes stale).
#[derive(Default)]
struct Blocks {
    map: std::collections::HashMap<(String, u64), Arc<Vec<u8>>>,
    order: std::collections::VecDeque<(String, u64)>,
}

impl Blocks {
    fn get(&self, key: &(String, u64)) -> Option<Arc<Vec<u8>>> {
        self.map.get(key).cloned()
    }

    fn put(&mut self, key: (String, u64), bytes: Arc<Vec<u8>>) {
        if self.map.insert(key.clone(), bytes).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > BLOCKS_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

impl Shared {
    /// The index as stored now: one listing, then only the index objects not loaded yet
    /// (from the cache when it holds them), added as layers to the index loaded so far
    /// (readers holding that one keep it as it was). Index objects a collection removed
    /// start a fresh load. One load at a time: the others wait for it and share it.
    fn current(&self) -> Result<Arc<Index>> {
        let listed = self.client.list("index/")?;
        let mut loaded = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let stored: HashSet<&str> = listed.iter().map(|l| l.name.as_str()).collect();
        let known: HashSet<&str> = loaded.files().collect();
        let gone = known.iter().any(|f| !stored.contains(f));
        let new: Vec<&Listed> = listed
            .iter()
            .filter(|l| gone || !known.contains(l.name.as_str()))
            .collect();
        if new.is_empty() && !gone {
            return Ok(loaded.clone());
        }
        let mut next = match gone {
            true => Index::default(),
            false => (**loaded).clone(),
        };
        drop(known);
        for l in new {
            let bytes = self.cached_get(l)?;
            next.add_file(&l.name, &bytes)?;
        }
        let next = Arc::new(next);
        *loaded = next.clone();
        Ok(next)
    }

    /// An immutable object's bytes: the cached copy of this version, else a GET (kept).
    fn cached_get(&self, l: &Listed) -> Result<Vec<u8>> {
        if let Some(b) = self.cache.get(&l.name, &l.etag) {
            return Ok(b);
        }
        let b = self
            .client
            .get(&l.name)?
            .ok_or_else(|| Error::Missing(format!("{} in {}", l.name, self.client.url)))?;
        self.cache.put(&l.name, &l.etag, &b);
        Ok(b)
    }
}

pub struct S3Store {
    shared: Arc<Shared>,
    config: Config,
    beats: gc::Heartbeat,
    /// Trees and content lists read before (see `storage::cache`).
    cache: Option<Arc<super::cache::ObjectCache>>,
}

fn connect(url: &S3Url, endpoint: &Endpoint) -> Result<Arc<Shared>> {
    let client = Client::new(endpoint, &url.prefix, url.to_string())?;
    Ok(Arc::new(Shared {
        cache: Cache::for_repository(&url.to_string(), endpoint.url.as_deref()),
        client,
        index: Mutex::default(),
        blocks: Mutex::default(),
    }))
}

fn no_repository(url: &S3Url, reason: &str) -> Error {
    Error::RepoNotFound {
        path: url.to_string().into(),
        reason: reason.into(),
    }
}

impl S3Store {
    /// Open the repository at `url` (`Error::RepoNotFound` when the bucket or the
    /// repository's config is not there).
    pub fn open(url: &S3Url) -> Result<S3Store> {
        S3Store::open_with(url, &Endpoint::from_env(&url.bucket))
    }

    /// `open` with the endpoint and credentials given (tests; several servers at once).
    pub fn open_with(url: &S3Url, endpoint: &Endpoint) -> Result<S3Store> {
        let shared = connect(url, endpoint)?;
        let config = match shared.client.get("config")? {
            Some(b) => Config::decode(&b)?,
            None => return Err(no_repository(url, "no repository config in the bucket under this prefix; create one with `cairn init`")),
        };
        Ok(S3Store::with(shared, config))
    }

    /// Create a repository at `url` holding `config` (`Error::RepoExists` when one is there).
    pub fn create(url: &S3Url, config: &Config) -> Result<S3Store> {
        S3Store::create_with(url, &Endpoint::from_env(&url.bucket), config)
    }

    /// `create` with the endpoint and credentials given.
    pub fn create_with(url: &S3Url, endpoint: &Endpoint, config: &Config) -> Result<S3Store> {
        let shared = connect(url, endpoint)?;
        if shared.client.get("config")?.is_some() {
            return Err(Error::RepoExists(url.to_string().into()));
        }
        shared.client.put("config", config.encode())?;
        Ok(S3Store::with(shared, config.clone()))
    }

    fn with(shared: Arc<Shared>, config: Config) -> S3Store {
        S3Store {
            beats: gc::Heartbeat::start(&shared),
            shared,
            config,
            cache: None,
        }
    }

    /// Answer reads of trees and content lists from `cache` where it can.
    pub(crate) fn set_cache(&mut self, cache: Option<Arc<super::cache::ObjectCache>>) {
        self.cache = cache;
    }

    fn client(&self) -> &Client {
        &self.shared.client
    }

    fn slot_name(id: u64) -> String {
        format!("keys/{id:016x}")
    }
}

/// The number of a key slot: from its bytes, so adding the same slot twice is one slot.
fn slot_number(slot: &[u8]) -> u64 {
    let h = blake3::hash(slot);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    (u64::from_le_bytes(b) >> 1).max(1)
}

fn hex_number(name: &str, dir: &str) -> Option<u64> {
    u64::from_str_radix(name.strip_prefix(dir)?, 16).ok()
}

fn snapshot_name(id: &Id) -> String {
    format!("snapshots/{}", id.to_hex())
}

impl Storage for S3Store {
    fn location(&self) -> String {
        self.client().url.clone()
    }

    fn config(&self) -> Result<Config> {
        Ok(self.config.clone())
    }

    fn key_slots(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        for l in self.client().list("keys/")? {
            let Some(n) = hex_number(&l.name, "keys/") else {
                continue;
            };
            out.push((n, self.shared.cached_get(&l)?));
        }
        out.sort_by_key(|(n, _)| *n);
        Ok(out)
    }

    fn add_key_slot(&self, slot: &[u8]) -> Result<u64> {
        let have = self.key_slots()?;
        if let Some((n, _)) = have.iter().find(|(_, b)| b == slot) {
            return Ok(*n);
        }
        if have.len() >= MAX_KEY_SLOTS {
            return Err(Error::Refused(format!(
                "the repository holds {MAX_KEY_SLOTS} key slots already, the most it takes"
            )));
        }
        let n = slot_number(slot);
        self.client().put(&S3Store::slot_name(n), slot.to_vec())?;
        Ok(n)
    }

    fn remove_key_slot(&self, id: u64) -> Result<()> {
        let have = self.key_slots()?;
        if !have.iter().any(|(n, _)| *n == id) {
            return Err(Error::NotFound(format!(
                "no key slot {id}; see `cairn key list`"
            )));
        }
        if have.len() <= 1 {
            return Err(Error::Refused(
                "refusing to remove the last key slot".into(),
            ));
        }
        self.client().delete(&S3Store::slot_name(id))
    }

    fn snapshots(&self) -> Result<Vec<(Id, Vec<u8>)>> {
        let mut out = Vec::new();
        for l in self.client().list("snapshots/")? {
            let Some(id) = l.name.strip_prefix("snapshots/").and_then(Id::from_hex) else {
                continue;
            };
            out.push((id, self.shared.cached_get(&l)?));
        }
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    fn remove_snapshots(&self, ids: &[Id]) -> Result<()> {
        for id in ids {
            self.client().delete(&snapshot_name(id))?;
        }
        Ok(())
    }

    fn reader(&self) -> Result<Box<dyn Reader>> {
        let reader = Box::new(S3Reader {
            index: Mutex::new(self.shared.current()?),
            shared: self.shared.clone(),
        });
        Ok(super::cache::wrap(reader, &self.cache))
    }

    fn writer(&self, opts: WriterOptions) -> Result<Box<dyn Writer + '_>> {
        let writer = Box::new(writer::S3Writer::new(&self.shared, opts.batch_bytes));
        Ok(super::cache::wrap_writer(writer, &self.cache))
    }

    fn begin_session(&self, info: &[u8]) -> Result<u64> {
        gc::begin_session(&self.shared, &self.beats, info)
    }

    fn end_session(&self, id: u64) -> Result<()> {
        self.beats.stop(&gc::session_name(id));
        self.client().delete(&gc::session_name(id))
    }

    fn sessions(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        gc::sessions(&self.shared)
    }

    fn state(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.client().get(&state_name(key)?)
    }

    fn set_state(&self, key: &str, value: &[u8]) -> Result<()> {
        self.client().put(&state_name(key)?, value.to_vec())
    }

    fn collect_garbage(
        &self,
        marker: &mut dyn Mark,
        opts: &PruneOptions,
        notify: &dyn Fn(&str),
    ) -> Result<PruneReport> {
        gc::collect(&self.shared, &self.beats, marker, opts, notify)
    }

    fn repair(
        &self,
        objects: &[super::ObjectCopy],
        snapshots: &[(Id, Vec<u8>)],
    ) -> Result<Vec<(Id, String)>> {
        gc::repair(&self.shared, &self.beats, objects, snapshots)?;
        Ok(Vec::new())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            remote: true,
            rights: super::Rights::FULL,
        }
    }

    fn space(&self) -> Result<Space> {
        let index = self.shared.current()?;
        let listed = self.client().list("")?;
        let pack_bytes = listed
            .iter()
            .filter(|l| l.name.starts_with("packs/"))
            .map(|l| l.size)
            .sum();
        let all: u64 = listed.iter().map(|l| l.size).sum();
        Ok(Space {
            objects: index.len() as u64,
            object_bytes: index.iter().map(|(_, f)| f.loc.len as u64).sum(),
            pack_bytes,
            file_bytes: all,
            file_len: all,
            db_bytes: None,
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A state record's object: its key in hex (keys name sync targets, URLs included).
fn state_name(key: &str) -> Result<String> {
    match !key.is_empty() && key.len() <= 256 {
        true => Ok(format!("state/{}", hex::encode(key))),
        false => Err(Error::Usage(format!("`{key}` is not a state record name"))),
    }
}

/// Reads objects through the index it was made with; a pack that has gone (a collection
/// repacked it) sends it back to the stored index once.
struct S3Reader {
    shared: Arc<Shared>,
    index: Mutex<Arc<Index>>,
}

/// What reading each of some objects gave.
type Fetched = BTreeMap<Id, Result<(Kind, Vec<u8>)>>;

/// How many sealed bytes one `read_many` round fetches at most (memory stays bounded).
const READ_ROUND_BYTES: u64 = 32 << 20;

impl S3Reader {
    fn index(&self) -> Arc<Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn refresh(&self) -> Result<Arc<Index>> {
        let fresh = self.shared.current()?;
        *self.index.lock().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        Ok(fresh)
    }

    /// Fetch `ids` (all in `index`), grouped by pack: one ranged request per pack.
    fn fetch(&self, index: &Index, ids: &[Id]) -> Result<Fetched> {
        let mut by_pack: BTreeMap<&str, Vec<(Id, index::Loc)>> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for id in ids {
            match index.get(id) {
                // An empty object has no bytes to fetch (and S3 has no empty range).
                Some(f) if f.loc.len == 0 => {
                    out.insert(*id, checked(id, &f.loc, Vec::new()));
                }
                Some(f) => by_pack.entry(f.pack).or_default().push((*id, f.loc)),
                None => {}
            }
        }
        let asks: Vec<(String, Vec<std::ops::Range<u64>>)> = by_pack
            .iter()
            .map(|(pack, objs)| {
                (
                    format!("packs/{pack}"),
                    objs.iter().map(|(_, l)| l.range()).collect(),
                )
            })
            .collect();
        let answers = self.shared.client.get_ranges_many(&asks);
        for ((_, objs), answer) in by_pack.into_iter().zip(answers) {
            match answer {
                Ok(parts) => {
                    for ((id, loc), bytes) in objs.into_iter().zip(parts) {
                        out.insert(id, checked(&id, &loc, bytes));
                    }
                }
                Err(Error::Missing(what)) => {
                    for (id, _) in objs {
                        out.insert(id, Err(Error::Missing(format!("{} ({what})", id.to_hex()))));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// One object from the blocks of its pack that hold it, fetching those not in memory
    /// (or kept shorter than this object needs: another reader's index may know of less
    /// of the pack).
    fn read_blocks(&self, index: &Index, id: &Id) -> Result<(Kind, Vec<u8>)> {
        let found = index.get(id).ok_or_else(|| Error::Missing(id.to_hex()))?;
        let loc = found.loc;
        if loc.len == 0 {
            return checked(id, &loc, Vec::new());
        }
        let pack = found.pack.to_string();
        let end = loc.range().end;
        let blocks = loc.offset / BLOCK..=(end - 1) / BLOCK;
        let lock = || self.shared.blocks.lock().unwrap_or_else(|e| e.into_inner());
        let mut have: BTreeMap<u64, Arc<Vec<u8>>> = BTreeMap::new();
        let mut missing = Vec::new();
        for b in blocks {
            let needed = end.min((b + 1) * BLOCK) - b * BLOCK;
            match lock().get(&(pack.clone(), b)) {
                Some(bytes) if bytes.len() as u64 >= needed => {
                    have.insert(b, bytes);
                }
                _ => missing.push(b),
            }
        }
        if !missing.is_empty() {
            let ranges: Vec<std::ops::Range<u64>> = missing
                .iter()
                .map(|b| b * BLOCK..((b + 1) * BLOCK).min(found.pack_end.max(end)))
                .collect();
            let asks = [(format!("packs/{pack}"), ranges)];
            let parts = self.shared.client.get_ranges_many(&asks).remove(0);
            let parts = parts.map_err(|e| match e {
                Error::Missing(what) => Error::Missing(format!("{} ({what})", id.to_hex())),
                other => other,
            })?;
            for (b, bytes) in missing.into_iter().zip(parts) {
                let bytes = Arc::new(bytes);
                lock().put((pack.clone(), b), bytes.clone());
                have.insert(b, bytes);
            }
        }
        let mut out = Vec::with_capacity(loc.len as usize);
        for (b, bytes) in &have {
            let start = b * BLOCK;
            let from = loc.offset.max(start) - start;
            let to = (end.min(start + BLOCK) - start).min(bytes.len() as u64);
            out.extend_from_slice(bytes.get(from as usize..to as usize).unwrap_or_default());
        }
        checked(id, &loc, out)
    }

    /// `fetch`, asking the stored index again for objects whose pack has gone.
    fn fetch_fresh(&self, ids: &[Id]) -> Result<Fetched> {
        let mut got = self.fetch(&self.index(), ids)?;
        let retry: Vec<Id> = ids
            .iter()
            .filter(|id| matches!(got.get(id), None | Some(Err(Error::Missing(_)))))
            .copied()
            .collect();
        if !retry.is_empty() {
            let fresh = self.refresh()?;
            got.extend(self.fetch(&fresh, &retry)?);
        }
        Ok(got)
    }
}

/// The bytes an index entry promised: their length and check must match.
fn checked(id: &Id, loc: &index::Loc, bytes: Vec<u8>) -> Result<(Kind, Vec<u8>)> {
    if bytes.len() != loc.len as usize || super::checksum(&bytes) != loc.check {
        return Err(Error::corrupt(
            id,
            "the stored bytes do not match the index (damaged in storage)",
        ));
    }
    Ok((loc.kind, bytes))
}

impl Reader for S3Reader {
    fn info(&self, id: &Id) -> Result<Option<super::ObjectInfo>> {
        Ok(self.index().get(id).map(|f| f.loc.info()))
    }

    fn contains(&self, ids: &[Id]) -> Result<Vec<bool>> {
        let index = self.index();
        Ok(ids.iter().map(|id| index.contains(id)).collect())
    }

    fn read(&self, id: &Id) -> Result<(Kind, Vec<u8>)> {
        match self.read_blocks(&self.index(), id) {
            Err(Error::Missing(_)) => self.read_blocks(&*self.refresh()?, id),
            other => other,
        }
    }

    fn read_many(&self, ids: &[Id], f: &mut ReadEach<'_>) -> Result<()> {
        let index = self.index();
        let mut start = 0;
        while start < ids.len() {
            let (mut end, mut bytes) = (start, 0u64);
            while end < ids.len() && (end == start || bytes < READ_ROUND_BYTES) {
                bytes += index.get(&ids[end]).map_or(0, |f| f.loc.len as u64);
                end += 1;
            }
            let mut got = self.fetch_fresh(&ids[start..end])?;
            for id in &ids[start..end] {
                // An id asked twice was answered once: read the repeat by itself.
                let r = match got.remove(id) {
                    Some(r) => r,
                    None => self.read(id),
                };
                f(*id, r)?;
            }
            start = end;
        }
        Ok(())
    }

    fn list(&self, from: &Id, limit: usize) -> Result<Vec<(Id, super::ObjectInfo)>> {
        Ok(self
            .index()
            .range(from)
            .take(limit)
            .map(|(id, f)| (id, f.loc.info()))
            .collect())
    }

    fn count(&self) -> Result<u64> {
        Ok(self.index().len() as u64)
    }

    fn in_read_order(&self, ids: &[Id]) -> Result<Vec<(Id, super::ObjectInfo)>> {
        let index = self.index();
        let mut out = ids
            .iter()
            .map(|id| match index.get(id) {
                Some(f) => Ok(((f.pack_rank, f.loc.offset), (*id, f.loc.info()))),
                None => Err(Error::Missing(id.to_hex())),
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|(place, _)| *place);
        Ok(out.into_iter().map(|(_, o)| o).collect())
    }
}
