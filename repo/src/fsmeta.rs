//! Reading and applying Linux file metadata through directory file descriptors, so that paths
//! of any length work (every call is relative to an open directory).

use crate::format::{Entry, FileType, Time, Xattr};
use rustix::fd::{AsFd, BorrowedFd};
use rustix::fs::{FileType as RFileType, Stat};
use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;

pub fn file_type(st: &Stat) -> FileType {
    match RFileType::from_raw_mode(st.st_mode) {
        RFileType::Directory => FileType::Dir,
        RFileType::Symlink => FileType::Symlink,
        RFileType::Fifo => FileType::Fifo,
        RFileType::Socket => FileType::Socket,
        RFileType::CharacterDevice => FileType::CharDev,
        RFileType::BlockDevice => FileType::BlockDev,
        _ => FileType::File,
    }
}

/// Caches uid/gid to name lookups.
#[derive(Default)]
pub struct Names {
    users: Mutex<HashMap<u32, String>>,
    groups: Mutex<HashMap<u32, String>>,
}

impl Names {
    pub fn user(&self, uid: u32) -> String {
        let mut m = self.users.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(uid)
            .or_insert_with(|| {
                uzers::get_user_by_uid(uid)
                    .map(|u| u.name().to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .clone()
    }

    pub fn group(&self, gid: u32) -> String {
        let mut m = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(gid)
            .or_insert_with(|| {
                uzers::get_group_by_gid(gid)
                    .map(|g| g.name().to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .clone()
    }
}

pub fn entry_from_stat(name: &[u8], st: &Stat, names: &Names) -> Entry {
    let mut e = Entry::new(name.to_vec(), file_type(st));
    e.mode = st.st_mode & 0o7777;
    e.uid = st.st_uid;
    e.gid = st.st_gid;
    e.user = names.user(st.st_uid);
    e.group = names.group(st.st_gid);
    e.size = if e.kind == FileType::File {
        st.st_size as u64
    } else {
        0
    };
    e.mtime = Time {
        sec: st.st_mtime,
        nsec: st.st_mtime_nsec as u32,
    };
    e.ctime = Time {
        sec: st.st_ctime,
        nsec: st.st_ctime_nsec as u32,
    };
    // Access times are not kept (like borg's default): reading a directory changes its atime,
    // which would give every directory a new tree id in every snapshot. Restore sets atime = mtime.
    e.atime = e.mtime;
    e.dev = st.st_dev;
    e.ino = st.st_ino;
    e.nlink = st.st_nlink;
    e.rdev = st.st_rdev;
    e.blocks = st.st_blocks as u64;
    e
}

/// `/proc/self/fd/N/name`: a short path to `name` inside an open directory, for the calls
/// that have no `*at` form (l*xattr).
pub fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> CString {
    use std::os::fd::AsRawFd;
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    CString::new(p).unwrap_or_default()
}

fn split_names(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|b| *b == 0).filter(|n| !n.is_empty())
}

/// Read every extended attribute, through an fd when we have one, else through the path
/// (without following a symlink). Unsupported filesystems give an empty list.
pub fn read_xattrs(fd: Option<BorrowedFd<'_>>, path: &CString) -> io::Result<Vec<Xattr>> {
    let list = loop {
        let size = match fd {
            Some(f) => rustix::fs::flistxattr_query(f),
            None => rustix::fs::llistxattr_query(path.as_c_str()),
        };
        let size = match size {
            Ok(0) => return Ok(Vec::new()),
            Ok(n) => n,
            Err(e) if e == rustix::io::Errno::NOTSUP => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut buf = vec![0u8; size];
        let got = match fd {
            Some(f) => rustix::fs::flistxattr(f, &mut buf[..]),
            None => rustix::fs::llistxattr(path.as_c_str(), &mut buf[..]),
        };
        match got {
            Ok(n) => {
                buf.truncate(n);
                break buf;
            }
            Err(e) if e == rustix::io::Errno::RANGE => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in split_names(&list) {
        let cname = OsStr::from_bytes(name);
        let value = loop {
            let size = match fd {
                Some(f) => rustix::fs::fgetxattr_query(f, cname),
                None => rustix::fs::lgetxattr_query(path.as_c_str(), cname),
            };
            let size = match size {
                Ok(n) => n,
                Err(e) if e == rustix::io::Errno::NODATA => break None,
                Err(e) => return Err(e.into()),
            };
            let mut buf = vec![0u8; size];
            let got = match fd {
                Some(f) => rustix::fs::fgetxattr(f, cname, &mut buf[..]),
                None => rustix::fs::lgetxattr(path.as_c_str(), cname, &mut buf[..]),
            };
            match got {
                Ok(n) => {
                    buf.truncate(n);
                    break Some(buf);
                }
                Err(e) if e == rustix::io::Errno::RANGE => continue,
                Err(e) if e == rustix::io::Errno::NODATA => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(value) = value {
            out.push(Xattr {
                name: name.to_vec(),
                value,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn write_xattrs(
    fd: Option<BorrowedFd<'_>>,
    path: &CString,
    xattrs: &[Xattr],
) -> io::Result<()> {
    for x in xattrs {
        let name = OsStr::from_bytes(&x.name);
        let r = match fd {
            Some(f) => rustix::fs::fsetxattr(f, name, &x.value, rustix::fs::XattrFlags::empty()),
            None => rustix::fs::lsetxattr(
                path.as_c_str(),
                name,
                &x.value,
                rustix::fs::XattrFlags::empty(),
            ),
        };
        r?;
    }
    Ok(())
}

pub fn timestamp(t: Time) -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: t.sec,
        tv_nsec: t.nsec as _,
    }
}

pub fn timestamps(e: &Entry) -> rustix::fs::Timestamps {
    rustix::fs::Timestamps {
        last_access: timestamp(e.atime),
        last_modification: timestamp(e.mtime),
    }
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Apply ownership, mode, xattrs and times to something open as `fd` (files, directories).
pub fn apply_fd_meta<F: AsFd>(fd: F, e: &Entry, path_for_xattr: &CString) -> io::Result<()> {
    let fd = fd.as_fd();
    if is_root() {
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(e.uid)),
            Some(rustix::fs::Gid::from_raw(e.gid)),
        )?;
    }
    write_xattrs(Some(fd), path_for_xattr, &e.xattrs)?;
    rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(e.mode))?;
    rustix::fs::futimens(fd, &timestamps(e))?;
    Ok(())
}

/// Change the mode of the fifo, socket or device `name` in `dir` without following a symlink:
/// `chmodat` follows one, so a local attacker who swaps the entry for a link between our
/// `mknodat` and the mode change could point it anywhere. The entry is pinned with an
/// `O_PATH | O_NOFOLLOW` handle, checked, and changed through that handle's /proc path.
fn chmod_nofollow(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = rustix::fs::openat(
        dir,
        name,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    if file_type(&rustix::fs::fstat(&fd)?) == FileType::Symlink {
        return Err(io::Error::other(
            "the special file was replaced by a symlink while restoring; not following it",
        ));
    }
    rustix::fs::chmod(
        format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
        rustix::fs::Mode::from_raw_mode(mode),
    )?;
    Ok(())
}

/// Apply metadata to a symlink, fifo, socket or device inside `dir` without following it.
pub fn apply_at_meta(dir: BorrowedFd<'_>, name: &[u8], e: &Entry) -> io::Result<()> {
    let cname = OsStr::from_bytes(name);
    if is_root() {
        rustix::fs::chownat(
            dir,
            cname,
            Some(rustix::fs::Uid::from_raw(e.uid)),
            Some(rustix::fs::Gid::from_raw(e.gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    let path = proc_path(dir, name);
    write_xattrs(None, &path, &e.xattrs)?;
    if e.kind != FileType::Symlink {
        chmod_nofollow(dir, cname, e.mode)?;
    }
    rustix::fs::utimensat(
        dir,
        cname,
        &timestamps(e),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}
