//! Where the mount's bytes come from: a reader of the repository's storage (reused for a
//! moment), the decoded-chunk cache, the prefetch pool and the kernel pusher. `core` reads
//! trees through it and `read` file content; neither depends on the other for it.

use crate::cache::{lock, Loader};
use crate::error::FsResult;
use cairn_repo::crypto::Kind;
use cairn_repo::reader::load_chunk;
use cairn_repo::storage::Reader;
use cairn_repo::{Id, Repository};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a reader is reused (see `Source::with_view`).
const VIEW_REUSE: Duration = Duration::from_millis(500);

/// Puts bytes of a file into the kernel's page cache for an inode at an offset (FUSE
/// `notify_store`), so a reader finds them there without a round trip: the next small files
/// of a directory read in order, the next chunks of a file read sequentially. Returns false
/// if the kernel declined.
pub type Pusher = Arc<dyn Fn(u64, u64, &[u8]) -> bool + Send + Sync>;

pub(crate) struct Source {
    pub(crate) repo: Arc<Repository>,
    pub(crate) chunks: Loader<Id, Vec<u8>>,
    pub(crate) pool: Option<crate::pool::Pool>,
    /// Chunks fetched ahead of a sequential reader.
    pub(crate) prefetch_chunks: usize,
    /// Every read is a round trip to another machine (ssh, S3): prefetch asks for many
    /// chunks in one `read_many` instead of one request per chunk.
    pub(crate) remote: bool,
    /// The reader `with_view` reuses, and when it was made.
    view: Mutex<Option<(Instant, Arc<dyn Reader>)>>,
    /// Set by the FUSE adapter once mounted (see `Pusher`).
    pusher: OnceLock<Pusher>,
}

impl Source {
    pub(crate) fn new(
        repo: Arc<Repository>,
        chunk_cache_bytes: usize,
        prefetch_chunks: usize,
        pool: Option<crate::pool::Pool>,
    ) -> Source {
        Source {
            remote: repo.storage().capabilities().remote,
            repo,
            chunks: Loader::new(chunk_cache_bytes),
            pool,
            prefetch_chunks,
            view: Mutex::new(None),
            pusher: OnceLock::new(),
        }
    }

    pub(crate) fn pusher(&self) -> Option<&Pusher> {
        self.pusher.get()
    }

    pub(crate) fn set_pusher(&self, push: Pusher) {
        let _ = self.pusher.set(push);
    }

    /// Run `f` on a reader of the repository's storage. One is reused for up to
    /// `VIEW_REUSE` (a local repository's reader is a read transaction: two fcntl locks and
    /// three table opens, per small file otherwise); if `f` fails on a reused one, it runs
    /// again on a fresh one, so objects committed since (a new snapshot's) are always found.
    /// Readers share the store's piece cache, so neighbouring small objects cost one read.
    pub(crate) fn with_view<T>(
        &self,
        f: impl Fn(&dyn Reader) -> cairn_repo::Result<T>,
    ) -> FsResult<T> {
        let reused = {
            let v = lock(&self.view);
            v.as_ref()
                .filter(|(at, _)| at.elapsed() < VIEW_REUSE)
                .map(|(_, view)| view.clone())
        };
        if let Some(view) = reused {
            if let Ok(t) = f(&*view) {
                return Ok(t);
            }
        }
        let view: Arc<dyn Reader> = Arc::from(self.repo.reader()?);
        *lock(&self.view) = Some((Instant::now(), view.clone()));
        Ok(f(&*view)?)
    }

    /// Put the chunks `ids` in the cache, those neither cached nor loading fetched in one
    /// `read_many` (a failure is not reported: a reader that needs a chunk will be).
    pub(crate) fn load_chunks(&self, ids: &[Id]) {
        let keys = self.repo.keys();
        self.chunks.load_many(ids, Vec::len, |wanted, each| {
            self.read_batch(
                wanted,
                Kind::Chunk,
                |id, s| keys.open_verified(Kind::Chunk, id, s),
                each,
            )
        });
    }

    /// Read the objects `wanted` of kind `kind` in one `read_many`, opening each with `open`
    /// and handing the outcome to `each` (for `Loader::load_many`).
    pub(crate) fn read_batch<V>(
        &self,
        wanted: &[Id],
        kind: Kind,
        open: impl Fn(&Id, &[u8]) -> cairn_repo::Result<V>,
        each: &mut dyn FnMut(&Id, FsResult<V>),
    ) {
        let got = Mutex::new(Vec::with_capacity(wanted.len()));
        // On a retry with a fresh reader, the objects already opened are simply ignored.
        let _ = self.with_view(|view| {
            view.read_many(wanted, &mut |id, r| {
                let v = r
                    .and_then(|read| cairn_repo::storage::as_kind(&id, kind, read))
                    .and_then(|sealed| open(&id, &sealed));
                lock(&got).push((id, v));
                Ok(())
            })
        });
        for (id, v) in got.into_inner().unwrap_or_else(|e| e.into_inner()) {
            each(&id, v.map_err(Into::into));
        }
    }

    /// A chunk's plaintext, from the cache or the repository.
    pub(crate) fn chunk(&self, id: &Id) -> FsResult<Arc<Vec<u8>>> {
        self.chunks.get_or_load(id, Vec::len, || {
            self.with_view(|view| load_chunk(&self.repo, view, id))
        })
    }
}
