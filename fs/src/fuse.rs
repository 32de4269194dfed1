//! The fuser adapter: the only file that knows fuser. It translates requests to `FsCore`
//! calls and results to replies; every write-type operation answers EROFS.

use crate::core::{DirItem, FsCore};
use crate::error::FsError;
use crate::node::Attr;
use cairn_repo::format::{FileType as Kind, Time};
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Top-level views change when snapshots come and go.
const SHORT_TTL: Duration = Duration::from_secs(1);
/// Snapshot contents never change.
const LONG_TTL: Duration = Duration::from_secs(24 * 3600);

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Threads serving requests.
    pub threads: usize,
    /// Let other users (subject to the stored permissions) see the mount.
    pub allow_other: bool,
    /// Shown as the mount's source in `mount`/`df`.
    pub fsname: String,
}

/// A mounted filesystem, not yet serving.
pub struct Mounted {
    session: fuser::Session<CairnFuse>,
    path: PathBuf,
}

/// Unmounts a running mount from another thread (signal handling).
pub struct Unmounter {
    inner: fuser::SessionUnmounter,
    path: PathBuf,
}

/// Mount `core` at `mountpoint` (read-only, kernel permission checks on the stored modes).
pub fn mount(core: FsCore, mountpoint: &Path, opts: &MountOptions) -> io::Result<Mounted> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("cairn".into()),
    ];
    config.n_threads = Some(opts.threads.max(1));
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    let session = fuser::Session::new(
        CairnFuse {
            core: core.clone(),
            no_open: false,
        },
        mountpoint,
        &config,
    )?;
    let notifier = session.notifier();
    core.set_pusher(Arc::new(move |ino, offset, data| {
        notifier.store(INodeNo(ino), offset, data).is_ok()
    }));
    let notifier = session.notifier();
    core.set_evictor(Arc::new(move |parent, name| {
        notifier
            .inval_entry(INodeNo(parent), OsStr::from_bytes(name))
            .is_ok()
    }));
    Ok(Mounted {
        session,
        path: mountpoint.to_path_buf(),
    })
}

impl Mounted {
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter {
            inner: self.session.unmount_callable(),
            path: self.path.clone(),
        }
    }

    /// Serve requests until the filesystem is unmounted.
    pub fn run(self) -> io::Result<()> {
        self.session.run()
    }
}

impl Unmounter {
    /// Unmount; if the mount is busy, detach it lazily so the mountpoint is free at once.
    pub fn unmount(&mut self) -> io::Result<()> {
        if self.inner.unmount().is_ok() && !is_mountpoint(&self.path) {
            return Ok(());
        }
        lazy_unmount(&self.path)
    }
}

/// Detach a FUSE mount even when busy: `umount2(MNT_DETACH)` as root, else `fusermount3 -u -z`.
pub fn lazy_unmount(path: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(path)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "fusermount3 -u -z {} failed",
            path.display()
        )))
    }
}

/// True if `path` is a mountpoint listed in /proc/self/mountinfo.
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.as_os_str().as_bytes();
    info.split(|b| *b == b'\n')
        .any(|line| line.split(|b| *b == b' ').nth(4) == Some(want))
}

struct CairnFuse {
    core: FsCore,
    /// The kernel offered FUSE_NO_OPEN_SUPPORT: `open` answers ENOSYS once, after which the
    /// kernel opens and closes files without a round trip (no OPEN, no RELEASE) and reads
    /// arrive with handle 0, served by inode. Its default for such files is `keep_cache`.
    no_open: bool,
}

impl CairnFuse {
    fn ttl(&self, immutable: bool) -> Duration {
        if immutable {
            LONG_TTL
        } else {
            SHORT_TTL
        }
    }

    /// The errno for a failure, logging it when it carries a message (damaged objects).
    fn errno(&self, e: FsError) -> Errno {
        if let Some(d) = &e.detail {
            self.core.log(d);
        }
        Errno::from_i32(e.errno)
    }
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

/// A stored time as `SystemTime`, before 1970 and after 2038 too.
fn system_time(t: Time) -> SystemTime {
    let nanos = Duration::from_nanos(t.nsec as u64);
    let at = if t.sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(t.sec as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(t.sec.unsigned_abs()))
    };
    at.and_then(|a| a.checked_add(nanos)).unwrap_or(UNIX_EPOCH)
}

/// glibc `dev_t` to the kernel's 32-bit `new_encode_dev` form FUSE carries.
fn fuse_rdev(dev: u64) -> u32 {
    let major = libc::major(dev) as u32;
    let minor = libc::minor(dev) as u32;
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: system_time(a.mtime),
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: fuse_rdev(a.rdev),
        blksize: 4096,
        flags: 0,
    }
}

fn bytes(name: &OsStr) -> &[u8] {
    name.as_bytes()
}

fn xattr_reply(reply: ReplyXattr, data: &[u8], size: u32) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl fuser::Filesystem for CairnFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Always READDIRPLUS (not _AUTO): listings then bring every entry's attributes, so
        // `ls -l`, `find` and `cp -a` need no LOOKUP per entry.
        let wanted = InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_PARALLEL_DIROPS;
        self.no_open = config
            .capabilities()
            .contains(InitFlags::FUSE_NO_OPEN_SUPPORT);
        if self.no_open {
            let _ = config.add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT);
        }
        for flag in wanted.iter() {
            let _ = config.add_capabilities(flag);
        }
        if let Err(max) = config.set_max_readahead(4 << 20) {
            let _ = config.set_max_readahead(max);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.core.lookup(parent.0, bytes(name)) {
            Ok(a) => {
                let ttl = self.ttl(self.core.immutable(a.ino));
                reply.entry(&ttl, &file_attr(&a), Generation(0))
            }
            Err(e) => reply.error(self.errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.core.getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl(self.core.immutable(ino.0)), &file_attr(&a)),
            Err(e) => reply.error(self.errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.core.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(self.errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY) || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        if self.no_open {
            // Checked once per mount by the kernel: from now on no OPEN or RELEASE is sent.
            // Writes are still refused by the read-only mount itself (EROFS from the VFS).
            return match self.core.getattr(ino.0) {
                Ok(a) if a.kind == Kind::Dir => reply.error(Errno::EISDIR),
                Ok(_) => reply.error(Errno::ENOSYS),
                Err(e) => reply.error(self.errno(e)),
            };
        }
        match self.core.open(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(self.errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // The reply is sent from inside the sink, straight from the cached chunk.
        let mut reply = Some(reply);
        let send = |d: &[u8]| {
            if let Some(r) = reply.take() {
                r.data(d);
            }
        };
        let r = if fh.0 == 0 {
            self.core.read_ino_with(ino.0, offset, size, send)
        } else {
            self.core.read_with(fh.0, offset, size, send)
        };
        if let (Err(e), Some(r)) = (r, reply.take()) {
            r.error(self.errno(e));
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return reply.error(Errno::EINVAL),
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        let r = if fh.0 == 0 {
            self.core.seek_ino(ino.0, offset, data)
        } else {
            self.core.seek(fh.0, offset, data)
        };
        match r {
            Ok(pos) => reply.offset(pos as i64),
            Err(e) => reply.error(self.errno(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.release(fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to flush: ENOSYS tells the kernel to stop sending FLUSH on every close.
        reply.error(Errno::ENOSYS);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.core.getattr(ino.0) {
            Ok(a) if a.kind != Kind::Dir => reply.error(Errno::ENOTDIR),
            Ok(_) if self.core.immutable(ino.0) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(self.errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.core.readdir(ino.0, offset, false, |it: &DirItem| {
            reply.add(
                INodeNo(it.ino),
                it.offset,
                kind(it.kind),
                OsStr::from_bytes(it.name),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => return reply.error(self.errno(e)),
        }
        if offset == 0 {
            self.core.listed(ino.0);
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let r = self.core.readdir(ino.0, offset, true, |it: &DirItem| {
            let ttl = self.ttl(it.immutable);
            reply.add(
                INodeNo(it.ino),
                it.offset,
                OsStr::from_bytes(it.name),
                &ttl,
                &file_attr(&it.attr),
                Generation(0),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => return reply.error(self.errno(e)),
        }
        if offset == 0 {
            self.core.listed(ino.0);
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.core.getxattr(ino.0, bytes(name)) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(self.errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.core.listxattr(ino.0) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(self.errno(e)),
        }
    }

    // ----- everything that would write: EROFS -----

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _wflags: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _off_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _off_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn times_before_1970_and_after_2038() {
        let t = system_time(Time { sec: -1, nsec: 500 });
        let d = UNIX_EPOCH.duration_since(t).unwrap_or_default();
        assert_eq!(d, Duration::from_nanos(999_999_500));
        let t = system_time(Time {
            sec: 4_102_444_800,
            nsec: 7,
        });
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap_or_default(),
            Duration::new(4_102_444_800, 7)
        );
    }

    #[test]
    fn rdev_encoding_matches_the_kernel() {
        let dev = libc::makedev(8, 1);
        assert_eq!(fuse_rdev(dev), (8 << 8) | 1);
        let dev = libc::makedev(259, 300);
        assert_eq!(
            fuse_rdev(dev),
            (300 & 0xff) | (259 << 8) | ((300 & !0xff) << 12)
        );
    }
}
