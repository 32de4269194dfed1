//! Helpers shared by the test suites of the workspace (engine, filesystem, command line) and
//! the benchmarks. Nothing here is for real repositories: built only for this crate's tests and
//! with the `testkit` feature (the workspace's dev-dependencies and the fuzz targets ask for it).

use crate::crypto::KdfParams;
use crate::error::Result;
use crate::id::Id;
use crate::repo::OpenOptions;
use crate::storage::{LocalStore, ObjectInfo, Storage};

/// Open options whose new key slots use a deliberately weak Argon2 setting, so that tests
/// creating hundreds of repositories stay fast. INSECURE: never for real data.
pub fn insecure_fast_kdf() -> OpenOptions {
    OpenOptions {
        kdf: Some(KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            salt: [7; 16],
        }),
        ..OpenOptions::default()
    }
}

/// Deterministic, incompressible bytes (xorshift64) for test files.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A valid config with tiny chunk and piece sizes, for stores made directly in unit tests.
pub fn small_config() -> crate::format::Config {
    crate::format::Config {
        repo_id: [5; 16],
        chunk_min: 64,
        chunk_avg: 256,
        chunk_max: 1024,
        piece_size: 64 << 10,
        pack_max: 256 << 10,
        created: 0,
    }
}

/// Every object of `store` with what the seam says of it, in id order.
pub fn objects(store: &dyn Storage) -> Result<Vec<(Id, ObjectInfo)>> {
    const PAGE: usize = 4096;
    let reader = store.reader()?;
    let mut out = Vec::new();
    let mut from = Id::default();
    loop {
        let page = reader.list(&from, PAGE)?;
        let (full, last) = (page.len() == PAGE, page.last().map(|(id, _)| *id));
        out.extend(page);
        match (full, last.and_then(|l| l.next())) {
            (true, Some(next)) => from = next,
            _ => return Ok(out),
        }
    }
}

/// Flip a byte of the stored copy of object `id` (at `flip_at`, or its last byte), in place:
/// disk damage below the seam. `piece_size` is the repository's.
pub fn damage_object(store: &LocalStore, id: &Id, piece_size: u32, flip_at: u64) -> Result<()> {
    crate::storage::redb::damage_object(store, id, piece_size, flip_at)
}

/// Store `sealed` as snapshot `id`, replacing the snapshot stored under that id: what a hostile
/// server (or disk damage) could do to its copy, below the protocol.
pub fn replace_snapshot(store: &LocalStore, id: Id, sealed: Vec<u8>) -> Result<()> {
    let cfg = store.config()?;
    crate::storage::redb::Packer::relocating(store, cfg.piece_size, cfg.pack_max, 1 << 20)
        .commit(true, &[(id, sealed)])
}

/// Store sealed snapshots (and nothing else) through `store`'s writer, in one commit.
pub fn commit_snapshots(store: &dyn Storage, sealed: &[(Id, Vec<u8>)]) -> Result<()> {
    store
        .writer(crate::storage::WriterOptions {
            batch_bytes: 1 << 20,
            ..Default::default()
        })?
        .commit(sealed)
}
