//! Restore a snapshot (or part of it) into a directory, through directory fds so that paths
//! of any length work. Files are written in parallel, chunks of large files too; holes stay
//! holes; hard links are re-created; directory metadata is applied after their contents.

use crate::crypto::Kind;
use crate::error::{Error, Result};
use crate::format::{Entry, FileType, Tree};
use crate::fsmeta::{apply_at_meta, apply_fd_meta, proc_path};
use crate::reader::ExtentMap;
use crate::repo::Repository;
use crate::restore_batch::Batches;
use crate::storage::Reader;
use crate::util::{display_path as display, join_path as join};
use rayon::prelude::*;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overwrite {
    /// Replace existing files.
    Always,
    /// Replace existing files unless the existing one is newer than the snapshot's (default).
    IfNewer,
    /// Never replace an existing file.
    Never,
}

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Absolute paths inside the snapshot to restore (empty: everything).
    pub includes: Vec<Vec<u8>>,
    pub overwrite: Overwrite,
    /// Worker threads (0: `util::default_threads()`).
    pub threads: usize,
}

#[derive(Default)]
pub struct RestoreProgress {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
}

#[derive(Debug, Default, Clone)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub skipped: u64,
    pub warnings: Vec<String>,
}

type LinkSource = (Arc<OwnedFd>, Vec<u8>);

/// A hard link to create once its source exists; `dir_times` restores the mtime of the
/// directory it lands in (linking changes it).
struct DeferredLink {
    key: (u64, u64),
    dir: Arc<OwnedFd>,
    dir_times: Option<crate::format::Time>,
    name: Vec<u8>,
    path: Vec<u8>,
}

struct Ctx<'r> {
    repo: &'r Repository,
    view: Box<dyn Reader>,
    batches: Batches,
    opts: &'r RestoreOptions,
    progress: &'r RestoreProgress,
    links: Mutex<HashMap<(u64, u64), Option<LinkSource>>>,
    deferred_links: Mutex<Vec<DeferredLink>>,
    warnings: Mutex<Vec<String>>,
    files: AtomicU64,
    dirs: AtomicU64,
    bytes: AtomicU64,
    skipped: AtomicU64,
}

/// Whether `path` should be visited: on the way to an include, or inside one.
fn selected(includes: &[Vec<u8>], path: &[u8]) -> (bool, bool) {
    if includes.is_empty() {
        return (true, true);
    }
    let mut visit = false;
    for inc in includes {
        let inside = path == inc.as_slice()
            || (path.starts_with(inc) && path.get(inc.len()) == Some(&b'/'))
            || inc.as_slice() == b"/";
        if inside {
            return (true, true);
        }
        if inc.starts_with(path) && (path == b"/" || inc.get(path.len()) == Some(&b'/')) {
            visit = true;
        }
    }
    (visit, false)
}

pub fn restore(
    repo: &Repository,
    root: &crate::id::Id,
    opts: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<RestoreReport> {
    crate::util::pool(opts.threads)?.install(|| restore_in_pool(repo, root, opts, progress))
}

fn restore_in_pool(
    repo: &Repository,
    root: &crate::id::Id,
    opts: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<RestoreReport> {
    std::fs::create_dir_all(&opts.target)
        .map_err(|e| Error::io(format!("creating {}", opts.target.display()), e))?;
    let target = rustix::fs::open(
        &opts.target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(format!("opening {}", opts.target.display()), e.into()))?;
    let includes: Vec<Vec<u8>> = opts
        .includes
        .iter()
        .map(|p| {
            let mut p = p.clone();
            while p.len() > 1 && p.ends_with(b"/") {
                p.pop();
            }
            p
        })
        .collect();
    let opts_norm = RestoreOptions {
        includes,
        ..opts.clone()
    };
    let ctx = Ctx {
        repo,
        view: repo.reader()?,
        batches: Batches::new(repo.storage().capabilities().remote),
        opts: &opts_norm,
        progress,
        links: Mutex::new(HashMap::new()),
        deferred_links: Mutex::new(Vec::new()),
        warnings: Mutex::new(Vec::new()),
        files: AtomicU64::new(0),
        dirs: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
    };
    let tree = repo.load_tree(&*ctx.view, root)?;
    let target = Arc::new(target);
    ctx.restore_tree(&target, &tree, b"/", None)?;
    ctx.make_links();
    if !opts_norm.includes.is_empty() && ctx.files.load(Relaxed) + ctx.dirs.load(Relaxed) == 0 {
        return Err(Error::NotFound(
            "no path in the snapshot matches --include".into(),
        ));
    }
    Ok(RestoreReport {
        files: ctx.files.load(Relaxed),
        dirs: ctx.dirs.load(Relaxed),
        bytes: ctx.bytes.load(Relaxed),
        skipped: ctx.skipped.load(Relaxed),
        warnings: ctx.warnings.into_inner().unwrap_or_else(|e| e.into_inner()),
    })
}

impl<'r> Ctx<'r> {
    fn warn(&self, m: String) {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(m);
    }

    fn restore_tree(
        &self,
        dir: &Arc<OwnedFd>,
        tree: &Tree,
        path: &[u8],
        dir_mtime: Option<crate::format::Time>,
    ) -> Result<()> {
        let wanted = |e: &&Entry| {
            let (visit, all) = selected(&self.opts.includes, &join(path, &e.name));
            visit && all
        };
        let fetched = self
            .batches
            .fetch(&*self.view, tree.entries.iter().filter(wanted))?;
        let result = self.restore_entries(dir, tree, path, dir_mtime);
        self.batches.done(&fetched);
        result
    }

    fn restore_entries(
        &self,
        dir: &Arc<OwnedFd>,
        tree: &Tree,
        path: &[u8],
        dir_mtime: Option<crate::format::Time>,
    ) -> Result<()> {
        tree.entries.par_iter().try_for_each(|e| {
            let p = join(path, &e.name);
            let (visit, all) = selected(&self.opts.includes, &p);
            if !visit {
                return Ok(());
            }
            if !all && e.kind != FileType::Dir {
                return Ok(());
            }
            match self.restore_entry(dir, e, &p, dir_mtime) {
                Ok(()) => Ok(()),
                Err(err) if err.is_damage() => {
                    self.warn(format!("{}: {err}", display(&p)));
                    Ok(())
                }
                Err(Error::Io { context, source }) => {
                    self.warn(format!("{context}: {source}"));
                    Ok(())
                }
                Err(err) => Err(err),
            }
        })
    }

    fn restore_entry(
        &self,
        dir: &Arc<OwnedFd>,
        e: &Entry,
        path: &[u8],
        dir_mtime: Option<crate::format::Time>,
    ) -> Result<()> {
        let io_err =
            |what: &str, err: io::Error| Error::io(format!("{}: {what}", display(path)), err);
        if !self
            .prepare(dir.as_fd(), e, path)
            .map_err(|err| io_err("checking existing", err))?
        {
            self.skipped.fetch_add(1, Relaxed);
            return Ok(());
        }
        if let Some(key) = e.link_key() {
            let mut links = self.links.lock().unwrap_or_else(|x| x.into_inner());
            match links.get(&key) {
                Some(_) => {
                    drop(links);
                    let link = DeferredLink {
                        key,
                        dir: dir.clone(),
                        dir_times: dir_mtime,
                        name: e.name.clone(),
                        path: path.to_vec(),
                    };
                    self.deferred_links
                        .lock()
                        .unwrap_or_else(|x| x.into_inner())
                        .push(link);
                    return Ok(());
                }
                None => {
                    links.insert(key, None);
                }
            }
        }
        let name = OsStr::from_bytes(&e.name);
        match e.kind {
            FileType::Dir => return self.restore_dir(dir, e, path),
            FileType::File => self.restore_file(dir.as_fd(), e).map_err(|err| match err {
                RestoreErr::Io(x) => io_err("writing", x),
                RestoreErr::Repo(x) => x,
            })?,
            FileType::Symlink => {
                rustix::fs::symlinkat(OsStr::from_bytes(&e.target), dir, name)
                    .map_err(|x| io_err("creating symlink", x.into()))?;
                apply_at_meta(dir.as_fd(), &e.name, e)
                    .map_err(|x| io_err("setting metadata", x))?;
            }
            _ => {
                let ft = match e.kind {
                    FileType::Fifo => rustix::fs::FileType::Fifo,
                    FileType::Socket => rustix::fs::FileType::Socket,
                    FileType::CharDev => rustix::fs::FileType::CharacterDevice,
                    _ => rustix::fs::FileType::BlockDevice,
                };
                rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(e.mode & 0o777), e.rdev)
                    .map_err(|x| io_err("creating special file", x.into()))?;
                apply_at_meta(dir.as_fd(), &e.name, e)
                    .map_err(|x| io_err("setting metadata", x))?;
            }
        }
        if let Some(key) = e.link_key() {
            self.links
                .lock()
                .unwrap_or_else(|x| x.into_inner())
                .insert(key, Some((dir.clone(), e.name.clone())));
        }
        self.files.fetch_add(1, Relaxed);
        self.progress.files.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Create the deferred hard links, then put back the mtime of the directories they landed in.
    fn make_links(&self) {
        let deferred = std::mem::take(
            &mut *self
                .deferred_links
                .lock()
                .unwrap_or_else(|x| x.into_inner()),
        );
        let links = self.links.lock().unwrap_or_else(|x| x.into_inner());
        for d in &deferred {
            let Some(Some((src_dir, src_name))) = links.get(&d.key) else {
                self.warn(format!(
                    "{}: hard link source was not restored",
                    display(&d.path)
                ));
                continue;
            };
            match rustix::fs::linkat(
                &**src_dir,
                OsStr::from_bytes(src_name),
                &*d.dir,
                OsStr::from_bytes(&d.name),
                AtFlags::empty(),
            ) {
                Ok(()) => {
                    self.files.fetch_add(1, Relaxed);
                }
                Err(err) => self.warn(format!(
                    "{}: creating hard link: {}",
                    display(&d.path),
                    io::Error::from(err)
                )),
            }
        }
        for d in &deferred {
            if let Some(t) = d.dir_times {
                let times = rustix::fs::Timestamps {
                    last_access: crate::fsmeta::timestamp(t),
                    last_modification: crate::fsmeta::timestamp(t),
                };
                let _ = rustix::fs::futimens(&*d.dir, &times);
            }
        }
    }

    /// Decide about an existing entry at the destination; true to go on and (re)create it.
    fn prepare(&self, dir: BorrowedFd<'_>, e: &Entry, path: &[u8]) -> io::Result<bool> {
        let name = OsStr::from_bytes(&e.name);
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(err) if err == rustix::io::Errno::NOENT => return Ok(true),
            Err(err) => return Err(err.into()),
        };
        let existing = crate::fsmeta::file_type(&st);
        if existing == FileType::Dir && e.kind == FileType::Dir {
            return Ok(true);
        }
        let newer = (st.st_mtime, st.st_mtime_nsec as u32) > (e.mtime.sec, e.mtime.nsec);
        let keep = match self.opts.overwrite {
            Overwrite::Always => false,
            Overwrite::Never => true,
            Overwrite::IfNewer => newer,
        };
        if keep {
            self.warn(format!(
                "{}: exists{}, not overwritten (use --overwrite always to replace it)",
                display(path),
                if newer { " and is newer" } else { "" }
            ));
            return Ok(false);
        }
        if existing == FileType::Dir {
            self.warn(format!(
                "{}: a directory is in the way, not replaced",
                display(path)
            ));
            return Ok(false);
        }
        // A plain file is replaced by the rename that completes it (`restore_file`), so a
        // failure keeps the old one; anything else is made anew.
        if e.kind != FileType::File || e.link_key().is_some() {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
        }
        Ok(true)
    }

    fn restore_dir(&self, parent: &Arc<OwnedFd>, e: &Entry, path: &[u8]) -> Result<()> {
        let name = OsStr::from_bytes(&e.name);
        let io_err =
            |what: &str, err: io::Error| Error::io(format!("{}: {what}", display(path)), err);
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(err) if err == rustix::io::Errno::EXIST => {}
            Err(err) => return Err(io_err("creating directory", err.into())),
        }
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|err| io_err("opening directory", err.into()))?;
        let fd = Arc::new(fd);
        if let Some(sub) = e.subtree {
            let tree = self.repo.load_tree(&*self.view, &sub)?;
            self.restore_tree(&fd, &tree, path, Some(e.mtime))?;
        }
        apply_fd_meta(&*fd, e, &proc_path(parent.as_fd(), &e.name))
            .map_err(|err| io_err("setting metadata", err))?;
        self.dirs.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Write a file under a temporary name beside its place and rename it there once it is
    /// whole, with its metadata: a file that fails (a damaged chunk, a full disk) leaves
    /// nothing behind, so it never stands under its real name half-written and stamped *now*
    /// (which the next restore would keep as "newer"), and an existing file is replaced only
    /// by a complete one.
    fn restore_file(&self, dir: BorrowedFd<'_>, e: &Entry) -> Result<(), RestoreErr> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tmp = format!(
            ".cairn-restore-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Relaxed)
        );
        let written = self.write_file(dir, e, OsStr::new(&tmp)).and_then(|()| {
            rustix::fs::renameat(dir, tmp.as_str(), dir, OsStr::from_bytes(&e.name))
                .map_err(|x| RestoreErr::Io(x.into()))
        });
        if written.is_err() {
            let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
        }
        written
    }

    fn write_file(&self, dir: BorrowedFd<'_>, e: &Entry, name: &OsStr) -> Result<(), RestoreErr> {
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|x| RestoreErr::Io(x.into()))?;
        let map = ExtentMap::new(
            self.repo
                .extents(&*self.view, &e.content)
                .map_err(RestoreErr::Repo)?,
        );
        let offsets: Vec<(u64, crate::format::Extent)> = {
            let mut pos = 0;
            map.extents()
                .iter()
                .map(|x| {
                    let o = pos;
                    pos += x.len;
                    (o, *x)
                })
                .collect()
        };
        for window in offsets.chunks(self.batches.window(offsets.len())) {
            let ids = window.iter().filter_map(|(_, x)| x.id).collect();
            let fetched = self
                .batches
                .fetch_ids(&*self.view, ids)
                .map_err(RestoreErr::Repo)?;
            let written = window.par_iter().try_for_each(|(off, x)| {
                let Some(id) = x.id else { return Ok(()) };
                self.write_chunk(&fd, &id, *off)
            });
            self.batches.done(&fetched);
            written?;
        }
        rustix::fs::ftruncate(&fd, map.size()).map_err(|x| RestoreErr::Io(x.into()))?;
        apply_fd_meta(&fd, e, &proc_path(dir, name.as_bytes())).map_err(RestoreErr::Io)?;
        Ok(())
    }
}

impl Ctx<'_> {
    fn write_chunk(&self, fd: &OwnedFd, id: &crate::id::Id, off: u64) -> Result<(), RestoreErr> {
        let data = self
            .batches
            .sealed(&*self.view, id)
            .and_then(|sealed| self.repo.keys().open_verified(Kind::Chunk, id, &sealed))
            .map_err(RestoreErr::Repo)?;
        write_all_at(fd, &data, off).map_err(RestoreErr::Io)?;
        self.bytes.fetch_add(data.len() as u64, Relaxed);
        self.progress.bytes.fetch_add(data.len() as u64, Relaxed);
        Ok(())
    }
}

enum RestoreErr {
    Io(io::Error),
    Repo(Error),
}

fn write_all_at(fd: &OwnedFd, mut data: &[u8], mut off: u64) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::pwrite(fd, data, off) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "short write")),
            Ok(n) => {
                data = &data[n..];
                off += n as u64;
            }
            Err(e) if e == rustix::io::Errno::INTR => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
