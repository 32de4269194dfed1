//! A local copy of the small immutable objects of an S3 repository (index objects and
//! snapshots), keyed by name and the server's ETag: a listing tells whether the copy is still
//! the stored version, so a no-change backup or sync lists instead of fetching everything.
//! A copy whose ETag no longer matches is fetched again (a replaced snapshot is noticed).
//! Losing the cache costs requests, never correctness. Directory mode 0700.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

pub struct Cache {
    dir: Option<PathBuf>,
}

impl Cache {
    /// The cache of the repository at `url`: `$CAIRN_CACHE_DIR`, else `$XDG_CACHE_HOME/cairn`,
    /// else `~/.cache/cairn`, then `s3/<hash of the URL and endpoint>`. No usable directory:
    /// no cache.
    pub fn for_repository(url: &str, endpoint: Option<&str>) -> Cache {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let base = var("CAIRN_CACHE_DIR")
            .or_else(|| var("XDG_CACHE_HOME").map(|p| p.join("cairn")))
            .or_else(|| var("HOME").map(|p| p.join(".cache/cairn")));
        let key = blake3::hash(format!("{url}\n{}", endpoint.unwrap_or("")).as_bytes());
        let dir = base.map(|b| b.join("s3").join(&key.to_hex()[..32]));
        let dir = dir.filter(|d| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .is_ok()
        });
        Cache { dir }
    }

    fn file(&self, name: &str, etag: &str) -> Option<PathBuf> {
        if etag.is_empty() {
            return None;
        }
        let key = blake3::hash(format!("{name}\n{etag}").as_bytes());
        Some(self.dir.as_ref()?.join(&key.to_hex()[..40]))
    }

    pub fn get(&self, name: &str, etag: &str) -> Option<Vec<u8>> {
        std::fs::read(self.file(name, etag)?).ok()
    }

    /// Keep a copy; a failure to write it is ignored (it is only a cache). Written under a
    /// temporary name and renamed, so a reader never sees half a copy.
    pub fn put(&self, name: &str, etag: &str, bytes: &[u8]) {
        let Some(path) = self.file(name, etag) else {
            return;
        };
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, bytes));
        if written.is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}
