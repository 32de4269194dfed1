//! Restore from a remote store (S3, a server over ssh): the chunks of one directory's small
//! files, and a large file's chunks a window at a time, are fetched in one `read_many` (on S3
//! one ranged GET per stretch of a pack, over ssh one round trip) before they are written,
//! instead of one read each. Parallel readers
//! going through a directory each otherwise fetch whole 2 MiB blocks of the packs they touch
//! and evict each other's: a 2 GiB restore from S3 downloaded 5.5× the bucket.

use crate::crypto::Kind;
use crate::error::Result;
use crate::format::{Content, Entry, FileType};
use crate::id::Id;
use crate::storage::Reader;
use std::collections::HashMap;
use std::sync::Mutex;

/// Files larger than this are read chunk by chunk (their chunks are contiguous in packs).
const SMALL_FILE: u64 = 1 << 20;
/// Sealed bytes fetched ahead for one directory at most.
const BATCH_BYTES: u64 = 32 << 20;
/// A large file's chunks fetched at a time (8 MiB on average, 32 MiB at most).
const FILE_WINDOW: usize = 8;

/// Sealed chunks fetched ahead, by id; each directory removes its own when it is done.
#[derive(Default)]
pub(crate) struct Batches {
    on: bool,
    got: Mutex<HashMap<Id, Vec<u8>>>,
}

impl Batches {
    pub(crate) fn new(remote: bool) -> Batches {
        Batches {
            on: remote,
            ..Batches::default()
        }
    }

    /// Fetch the chunks of the small files among `entries` that `wanted` selects, in one
    /// request; returns their ids (for `done`). A chunk that fails here is read again, and
    /// reported, when its file is written.
    pub(crate) fn fetch<'e>(
        &self,
        view: &dyn Reader,
        entries: impl Iterator<Item = &'e Entry>,
    ) -> Result<Vec<Id>> {
        if !self.on {
            return Ok(Vec::new());
        }
        let mut ids = Vec::new();
        let mut bytes = 0;
        for e in entries.filter(|e| e.kind == FileType::File && e.size <= SMALL_FILE) {
            let Content::Inline(extents) = &e.content else {
                continue;
            };
            if bytes + e.size > BATCH_BYTES {
                break;
            }
            bytes += e.size;
            ids.extend(extents.iter().filter_map(|x| x.id));
        }
        self.fetch_ids(view, ids)
    }

    /// Fetch the chunks `ids` in one request (nothing when the store is local); returns the
    /// ids fetched, for `done`.
    pub(crate) fn fetch_ids(&self, view: &dyn Reader, mut ids: Vec<Id>) -> Result<Vec<Id>> {
        ids.sort_unstable();
        ids.dedup();
        if !self.on || ids.len() < 2 {
            return Ok(Vec::new());
        }
        let mut got = Vec::with_capacity(ids.len());
        view.read_many(&ids, &mut |id, r| {
            if let Ok((Kind::Chunk, sealed)) = r {
                got.push((id, sealed));
            }
            Ok(())
        })?;
        let mut map = self.got.lock().unwrap_or_else(|e| e.into_inner());
        map.extend(got);
        Ok(ids)
    }

    /// How many of a file's chunks to fetch and write at a time: `FILE_WINDOW` from a remote
    /// store, all of them at once from a local one.
    pub(crate) fn window(&self, chunks: usize) -> usize {
        match self.on {
            true => FILE_WINDOW,
            false => chunks.max(1),
        }
    }

    /// The sealed bytes of chunk `id`: fetched ahead, or read now.
    pub(crate) fn sealed(&self, view: &dyn Reader, id: &Id) -> Result<Vec<u8>> {
        let ahead = self
            .got
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        match ahead {
            Some(sealed) => Ok(sealed),
            None => crate::storage::read_as(view, id, Kind::Chunk),
        }
    }

    /// A directory's files are written: drop what was fetched for them.
    pub(crate) fn done(&self, ids: &[Id]) {
        if ids.is_empty() {
            return;
        }
        let mut map = self.got.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            map.remove(id);
        }
    }
}
