//! Reading file content: O(log n) seek through the extent map, chunks from the shared
//! single-flight cache, and prefetch of the next chunks for sequential readers.

use crate::error::{FsError, FsResult};
use crate::source::{Pusher, Source};
use cairn_repo::format::Extent;
use cairn_repo::reader::ExtentMap;
use cairn_repo::Id;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// How far from the last read's end a read may start and still count as sequential.
const SEQ_SLACK: u64 = 4 << 20;

/// Chunks a sequential reader of a remote store has fetched ahead (8 MiB on average): one
/// `read_many` each.
const REMOTE_WINDOW: usize = 8;

/// Pages are the unit of the kernel's page cache: pushed ranges start and end on them.
const PAGE: u64 = 4096;

pub struct OpenFile {
    map: ExtentMap,
    /// End of the last read (a reader that jumps back and reads on is sequential again).
    next: AtomicU64,
    /// Extents before this index have been handed to the prefetcher.
    prefetched: AtomicUsize,
    /// The kernel's inode for this file (0: unknown, nothing is pushed).
    ino: u64,
    /// Extents already handed to the kernel's page cache (empty when `ino` is 0).
    pushed: Vec<AtomicBool>,
}

impl OpenFile {
    /// The file the kernel knows as `ino` with size `size`. Its chunks may be pushed to the
    /// kernel's page cache, unless the stored extents disagree with that size (a push past
    /// it would change the size the kernel shows).
    pub(crate) fn for_inode(extents: Vec<Extent>, ino: u64, size: u64) -> OpenFile {
        let total: u64 = extents.iter().map(|x| x.len).sum();
        OpenFile::new(extents, if total == size { ino } else { 0 })
    }

    pub(crate) fn new(extents: Vec<Extent>, ino: u64) -> OpenFile {
        let pushed = if ino == 0 { 0 } else { extents.len() };
        OpenFile {
            map: ExtentMap::new(extents),
            next: AtomicU64::new(0),
            prefetched: AtomicUsize::new(0),
            ino,
            pushed: (0..pushed).map(|_| AtomicBool::new(false)).collect(),
        }
    }
}

/// Read up to `size` bytes at `offset` (short only at end of file).
pub(crate) fn read(
    inner: &Arc<Source>,
    f: &Arc<OpenFile>,
    offset: u64,
    size: u64,
) -> FsResult<Vec<u8>> {
    read_with(inner, f, offset, size, <[u8]>::to_vec)
}

/// Like `read`, handing the bytes to `sink`: a read inside one chunk (every read of a small
/// file) is served from the cached chunk without copying it first.
pub(crate) fn read_with<R>(
    inner: &Arc<Source>,
    f: &Arc<OpenFile>,
    offset: u64,
    size: u64,
    sink: impl FnOnce(&[u8]) -> R,
) -> FsResult<R> {
    let end = offset.saturating_add(size).min(f.map.size());
    if offset >= end {
        return Ok(sink(&[]));
    }
    let sequential = offset.abs_diff(f.next.load(Ordering::Relaxed)) <= SEQ_SLACK;
    if let Some((i, start)) = f.map.find(offset) {
        let x = f.map.extents()[i];
        if let (Some(id), true) = (x.id, end - start <= x.len) {
            if sequential {
                prefetch(inner, f, i);
            }
            let data = checked_chunk(inner, &id, x.len)?;
            let part = data
                .get((offset - start) as usize..(end - start) as usize)
                .ok_or_else(|| FsError::eio(format!("chunk {id}: read out of range")))?;
            f.next.store(end, Ordering::Relaxed);
            let r = sink(part);
            if sequential {
                push_chunk(inner, f, i, &data);
            }
            return Ok(r);
        }
    }
    let mut out = Vec::with_capacity((end - offset) as usize);
    let mut pos = offset;
    let mut last = 0;
    while pos < end {
        let Some((i, start)) = f.map.find(pos) else {
            break;
        };
        let x = f.map.extents()[i];
        let within = pos - start;
        let n = (x.len - within).min(end - pos);
        if sequential && pos == offset {
            prefetch(inner, f, i);
        }
        append(inner, &mut out, x, within, n)?;
        pos += n;
        last = i;
    }
    f.next.store(end, Ordering::Relaxed);
    if sequential {
        prefetch(inner, f, last);
    }
    Ok(sink(&out))
}

/// `lseek(SEEK_DATA)` (`data`) or `lseek(SEEK_HOLE)` from `offset`: stored holes are holes,
/// the end of the file is a hole, past the end is ENXIO.
pub(crate) fn seek_data_or_hole(f: &OpenFile, offset: u64, data: bool) -> FsResult<u64> {
    let xs = f.map.extents();
    let Some((mut i, mut start)) = f.map.find(offset) else {
        return Err(FsError::new(libc::ENXIO));
    };
    let mut pos = offset;
    loop {
        if xs[i].id.is_some() == data {
            return Ok(pos);
        }
        start += xs[i].len;
        pos = start;
        i += 1;
        if i >= xs.len() {
            return if data {
                Err(FsError::new(libc::ENXIO))
            } else {
                Ok(f.map.size())
            };
        }
    }
}

fn append(inner: &Source, out: &mut Vec<u8>, x: Extent, within: u64, n: u64) -> FsResult<()> {
    let Some(id) = x.id else {
        out.resize(out.len() + n as usize, 0);
        return Ok(());
    };
    let data = checked_chunk(inner, &id, x.len)?;
    let part = data
        .get(within as usize..(within + n) as usize)
        .ok_or_else(|| FsError::eio(format!("chunk {id}: read out of range")))?;
    out.extend_from_slice(part);
    Ok(())
}

/// A chunk that must hold `len` bytes.
fn checked_chunk(inner: &Source, id: &Id, len: u64) -> FsResult<Arc<Vec<u8>>> {
    let data = inner.chunk(id)?;
    if data.len() as u64 != len {
        return Err(FsError::eio(format!(
            "chunk {id} holds {} bytes, its file expects {len}",
            data.len(),
        )));
    }
    Ok(data)
}

/// Hand the chunks after extent `i` (up to the configured count) to the prefetch pool; with
/// a pusher, each decoded chunk then goes to the kernel's page cache, so the sequential
/// reader finds it there instead of asking for it 128 KiB at a time.
fn prefetch(inner: &Arc<Source>, f: &Arc<OpenFile>, i: usize) {
    let Some(pool) = &inner.pool else { return };
    if inner.remote {
        return prefetch_window(inner, pool, f, i);
    }
    let want = inner.prefetch_chunks;
    let from = (i + 1).max(f.prefetched.load(Ordering::Relaxed));
    let to = (i + 1 + want).min(f.map.extents().len());
    if from >= to {
        return;
    }
    f.prefetched.fetch_max(to, Ordering::Relaxed);
    if f.ino == 0 || inner.pusher().is_none() {
        return prefetch_ids(inner, f.map.extents()[from..to].iter().filter_map(|x| x.id));
    }
    for j in from..to {
        let Some(id) = f.map.extents()[j].id else {
            continue;
        };
        let (inner, f) = (inner.clone(), f.clone());
        pool.spawn(move || {
            if let Ok(data) = inner.chunk(&id) {
                push_chunk(&inner, &f, j, &data);
            }
        });
    }
}

/// `prefetch` from a remote store: once less than half a window is fetched ahead of extent
/// `i`, the next window's chunks in one request (one round trip instead of one per chunk),
/// then into the kernel's page cache.
fn prefetch_window(inner: &Arc<Source>, pool: &crate::pool::Pool, f: &Arc<OpenFile>, i: usize) {
    let want = inner.prefetch_chunks.max(REMOTE_WINDOW);
    let ahead = f.prefetched.load(Ordering::Relaxed);
    if ahead > i + 1 + want / 2 {
        return;
    }
    let from = (i + 1).max(ahead);
    let to = (i + 1 + want).min(f.map.extents().len());
    if from >= to || f.prefetched.fetch_max(to, Ordering::Relaxed) >= to {
        return;
    }
    let (inner, f) = (inner.clone(), f.clone());
    pool.spawn(move || {
        let xs = &f.map.extents()[from..to];
        let ids: Vec<Id> = xs.iter().filter_map(|x| x.id).collect();
        inner.load_chunks(&ids);
        for (j, x) in (from..to).zip(xs) {
            if let Some(data) = x.id.and_then(|id| inner.chunks.cached(&id)) {
                push_chunk(&inner, &f, j, &data);
            }
        }
    });
}

/// Hand extent `i` of `f` (its decoded bytes) to the kernel's page cache, once: the whole
/// pages it covers (the last page of the file too); the pages it shares with its neighbours
/// are left to normal reads, since a partly written page cannot be marked valid.
fn push_chunk(inner: &Source, f: &OpenFile, i: usize, data: &[u8]) {
    let (Some(push), Some(done)) = (inner.pusher(), f.pushed.get(i)) else {
        return;
    };
    // Only bytes a read would return: a chunk of another length is EIO there, never pushed.
    if f.map.extents()[i].len != data.len() as u64 || done.swap(true, Ordering::Relaxed) {
        return;
    }
    let start = f.map.start(i);
    let end = start + data.len() as u64;
    let from = start.div_ceil(PAGE) * PAGE;
    let to = if end == f.map.size() {
        end
    } else {
        end / PAGE * PAGE
    };
    if from < to {
        push(
            f.ino,
            from,
            &data[(from - start) as usize..(to - start) as usize],
        );
    }
}

/// A small file to decode whole and hand to the kernel's page cache ahead of its reader.
pub(crate) struct Ahead {
    /// The kernel's inode of the file.
    pub(crate) ino: u64,
    /// Its size as the kernel shows it.
    pub(crate) size: u64,
    pub(crate) extents: Vec<Extent>,
}

/// On the prefetch pool: decode a small file whole and hand it to the kernel's page cache
/// (a failure is not reported: a reader that needs the file will be).
pub(crate) fn push_ahead(inner: &Arc<Source>, push: Pusher, ahead: Ahead) {
    let Some(pool) = &inner.pool else { return };
    let inner = inner.clone();
    pool.spawn(move || push_whole(&inner, &push, &ahead));
}

/// From a remote store: one job on the prefetch pool fetches the chunks of the small files
/// `whole` and the `first` chunks of larger ones (those not cached or loading) in one
/// request, then pushes the small files.
pub(crate) fn fetch_batch(inner: &Arc<Source>, push: Pusher, whole: Vec<Ahead>, first: Vec<Id>) {
    let Some(pool) = &inner.pool else { return };
    let mut ids: Vec<Id> = whole
        .iter()
        .flat_map(|a| a.extents.iter().filter_map(|x| x.id))
        .chain(first)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let inner = inner.clone();
    pool.spawn(move || {
        inner.load_chunks(&ids);
        for ahead in &whole {
            push_whole(&inner, &push, ahead);
        }
    });
}

/// Decode a small file whole and hand it to the kernel's page cache.
fn push_whole(inner: &Source, push: &Pusher, ahead: &Ahead) {
    let Ahead { ino, size, .. } = *ahead;
    let xs = &ahead.extents;
    // Exactly the size the kernel shows for the file (see `OpenFile::for_inode`).
    let total: u64 = xs.iter().map(|x| x.len).sum();
    if size == 0 || total != size {
        return;
    }
    if let [x @ Extent { id: Some(id), .. }] = xs[..] {
        // One chunk (nearly every small file): pushed straight from the cache.
        if let Ok(data) = checked_chunk(inner, &id, x.len) {
            push(ino, 0, &data);
        }
        return;
    }
    let mut whole = Vec::with_capacity(size as usize);
    if xs
        .iter()
        .all(|x| append(inner, &mut whole, *x, 0, x.len).is_ok())
    {
        push(ino, 0, &whole);
    }
}

/// Decode these chunks into the cache on the prefetch pool (those not cached or loading).
pub(crate) fn prefetch_ids(inner: &Arc<Source>, ids: impl Iterator<Item = Id>) {
    let Some(pool) = &inner.pool else { return };
    for id in ids {
        if inner.chunks.present(&id) {
            continue;
        }
        let inner = inner.clone();
        // A failed prefetch is not reported: the reader that needs the chunk will be.
        pool.spawn(move || {
            let _ = inner.chunk(&id);
        });
    }
}
