//! Inodes: what each inode number stands for, its attributes, and how numbers are derived.
//!
//! Numbers are stable: a hash of the node's place (the view it is in, the snapshot, the path
//! of names below it), so the same file has the same number in every session of the mount.
//! Hard-linked files take their number from the snapshot view and their source (dev, ino),
//! so all their names share one inode. Directories never share a number across views.

use cairn_repo::format::{Entry, FileType, Time};
use cairn_repo::Id;
use std::sync::Arc;

pub const ROOT_INO: u64 = 1;

/// The attributes the mount reports for an inode (fuser-free; the adapter converts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileType,
    /// Permission bits including setuid, setgid and sticky.
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// Device number as the source's `st_rdev` (glibc encoding).
    pub rdev: u64,
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
}

/// Which of the top-level views a snapshot directory belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewKind {
    Snapshots,
    Host(String),
    Tag(String),
    /// `calendar/<year>/<month>/<day>/<time>/`.
    Calendar,
    /// `gmt/@GMT-YYYY.MM.DD-HH.MM.SS/`.
    Gmt,
}

#[derive(Clone, Debug)]
pub enum What {
    Root,
    Snapshots,
    Hosts,
    Tags,
    Latest,
    /// `hosts/<h>` or `tags/<t>`.
    Group(ViewKind),
    /// `calendar/`.
    Calendar,
    /// `gmt/`.
    Gmt,
    /// `calendar/YYYY`, `calendar/YYYY/MM` or `calendar/YYYY/MM/DD`, named by the prefix of
    /// the snapshot names it holds: `YYYY`, `YYYY-MM` or `YYYY-MM-DD`.
    Period(String),
    /// `history/<path>` (`path` empty for `history/` itself, else `/a/b`): a path across all
    /// snapshots, see `history.rs`. With `versions`, the path is a file (or another
    /// non-directory) and this lists its distinct versions; else a directory, merged. `attr`
    /// is derived from the newest stored entry (`None` for `history/`).
    History {
        path: Arc<[u8]>,
        versions: bool,
        attr: Option<Attr>,
    },
    /// A snapshot directory: its contents are the snapshot's root tree.
    SnapRoot {
        snap: Id,
        root: Id,
        time: Time,
    },
    /// An entry inside a snapshot: `tree` holds it at `index`.
    Entry {
        snap_key: u64,
        tree: Id,
        index: u32,
        subtree: Option<Id>,
        attr: Attr,
        has_xattrs: bool,
    },
}

#[derive(Clone, Debug)]
pub struct Node {
    pub ino: u64,
    pub parent: u64,
    /// Hash of the node's place; children's numbers derive from it.
    pub key: u64,
    pub what: What,
}

impl Node {
    /// Inside a snapshot: contents never change, so the kernel may cache them for long.
    pub fn immutable(&self) -> bool {
        matches!(self.what, What::Entry { .. })
    }

    /// The tree listing this directory's children, if it is a snapshot directory.
    pub fn subtree(&self) -> Option<(u64, Id)> {
        match &self.what {
            What::SnapRoot { root, .. } => Some((self.key, *root)),
            What::Entry {
                snap_key,
                subtree: Some(t),
                ..
            } => Some((*snap_key, *t)),
            _ => None,
        }
    }
}

fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    // Keep clear of 0 (invalid) and 1 (the root).
    u64::from_le_bytes(b).max(2)
}

pub fn top_key(name: &str) -> u64 {
    hash64(&[b"top", name.as_bytes()])
}

pub fn group_key(view: &ViewKind) -> u64 {
    match view {
        ViewKind::Snapshots => top_key("snapshots"),
        ViewKind::Host(h) => hash64(&[b"host", h.as_bytes()]),
        ViewKind::Tag(t) => hash64(&[b"tag", t.as_bytes()]),
        ViewKind::Calendar => top_key("calendar"),
        ViewKind::Gmt => top_key("gmt"),
    }
}

/// The key (and inode number) of a calendar period directory.
pub fn period_key(prefix: &str) -> u64 {
    hash64(&[b"period", prefix.as_bytes()])
}

/// The key (and inode number) of a snapshot's directory in one view.
pub fn snap_key(view: &ViewKind, snap: &Id) -> u64 {
    hash64(&[b"snap", &group_key(view).to_le_bytes(), &snap.0])
}

pub fn child_key(parent: u64, name: &[u8]) -> u64 {
    hash64(&[b"c", &parent.to_le_bytes(), name])
}

/// The inode number of `entry` whose own key is `key` in snapshot view `snap`: hard links
/// share one inode per view, everything else uses its key.
pub fn entry_ino(snap: u64, key: u64, entry: &Entry) -> u64 {
    match entry.link_key() {
        Some((dev, ino)) => hash64(&[
            b"hl",
            &snap.to_le_bytes(),
            &dev.to_le_bytes(),
            &ino.to_le_bytes(),
        ]),
        None => key,
    }
}

pub fn entry_attr(ino: u64, e: &Entry) -> Attr {
    let size = if e.kind == FileType::Symlink {
        e.target.len() as u64
    } else {
        e.size
    };
    Attr {
        ino,
        kind: e.kind,
        perm: (e.mode & 0o7777) as u16,
        nlink: e.nlink.clamp(1, u32::MAX as u64) as u32,
        uid: e.uid,
        gid: e.gid,
        rdev: e.rdev,
        size,
        blocks: e.blocks,
        atime: e.atime,
        mtime: e.mtime,
        ctime: e.ctime,
    }
}

/// A node for `entry`, the `index`-th entry of `tree`, below directory `parent`.
pub fn entry_node(parent: &Node, snap: u64, tree: Id, index: usize, entry: &Entry) -> Node {
    let key = child_key(parent.key, &entry.name);
    let ino = entry_ino(snap, key, entry);
    Node {
        ino,
        parent: parent.ino,
        key,
        what: What::Entry {
            snap_key: snap,
            tree,
            index: index as u32,
            subtree: entry.subtree,
            attr: entry_attr(ino, entry),
            has_xattrs: !entry.xattrs.is_empty(),
        },
    }
}
