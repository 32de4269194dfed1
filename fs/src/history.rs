//! `MOUNT/history/<path>`: one path across every snapshot. A file's path is a directory of its
//! distinct versions, each named by the snapshot it first appeared in (extension kept); a
//! directory's path is the union of its names across the snapshots, each again a history path.
//!
//! Built lazily for the path looked at. Where a path is in each snapshot (its "places") comes
//! from its parent's places in one step, and snapshots whose trees along the path are the same
//! object share that step: one tree load and one name search per distinct tree, however many
//! snapshots hold it. Places and merged listings live in bounded LRUs keyed by the snapshot
//! list they were built from, so a refresh that changed nothing keeps them.

use crate::cache::{lock, Lru};
use crate::core::FsCore;
use crate::error::{FsError, FsResult};
use crate::layout::Layout;
use crate::node::{self, entry_attr, Attr, Node, What};
use cairn_repo::format::{Entry, FileType, Tree};
use cairn_repo::Id;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Not in a snapshot (in `Places::of`).
const ABSENT: u32 = u32::MAX;

type Key = (u64, Vec<u8>);

/// The history view's memory: where paths are, and merged directory listings, for the
/// snapshot list with a given fingerprint. Each LRU is bounded by its estimated bytes.
pub(crate) struct Caches {
    places: Mutex<Lru<Key, Arc<Places>>>,
    merged: Mutex<Lru<Key, Arc<Vec<Merged>>>>,
}

impl Caches {
    /// Caches using about `bytes` in all.
    pub(crate) fn new(bytes: usize) -> Caches {
        Caches {
            places: Mutex::new(Lru::new(bytes / 2)),
            merged: Mutex::new(Lru::new(bytes / 2)),
        }
    }
}

/// Where a path is in one snapshot: entry `index` of tree `at.0` (`None` for the root, which no
/// tree holds), its kind and, for a directory, its own tree.
struct Loc {
    at: Option<(Id, u32)>,
    kind: FileType,
    subtree: Option<Id>,
}

/// Where one path is in each snapshot of a layout.
struct Places {
    /// The distinct places.
    locs: Vec<Loc>,
    /// Per snapshot, in layout order: an index into `locs`, or `ABSENT`.
    of: Vec<u32>,
    /// A tree on the way could not be read (and was logged): absence proves nothing there.
    damaged: Option<FsError>,
}

impl Places {
    fn weight(&self, path: &[u8]) -> usize {
        96 + path.len() + self.of.len() * 4 + self.locs.len() * 80
    }

    /// The newest snapshot's place, if any snapshot has the path.
    fn newest(&self) -> Option<&Loc> {
        let i = self.of.iter().rev().find(|i| **i != ABSENT)?;
        self.locs.get(*i as usize)
    }
}

/// One name of a merged directory, with the attributes of its newest entry.
struct Merged {
    name: Vec<u8>,
    attr: Attr,
    versions: bool,
}

/// One distinct version of a file.
struct Version {
    name: Vec<u8>,
    tree: Id,
    index: u32,
    attr: Attr,
    has_xattrs: bool,
}

impl FsCore {
    /// The child `name` of the history directory `dir` (at `path`).
    pub(crate) fn history_child(
        &self,
        dir: &Node,
        path: &[u8],
        versions: bool,
        name: &[u8],
    ) -> FsResult<Option<Node>> {
        let layout = self.layout();
        if versions {
            let found = self
                .versions(&layout, path)?
                .into_iter()
                .find(|v| v.name == name);
            return Ok(found.map(|v| version_node(dir, &v)));
        }
        let child = join(path, name);
        let places = self.places(&layout, &child)?;
        let Some(Loc {
            at: Some((tree, index)),
            ..
        }) = places.newest()
        else {
            return match &places.damaged {
                Some(e) => Err(e.clone()),
                None => Ok(None),
            };
        };
        let tree = self.tree(tree)?;
        let e = tree
            .entries
            .get(*index as usize)
            .ok_or_else(|| FsError::eio(format!("tree has no entry {index}")))?;
        let key = node::child_key(dir.key, name);
        Ok(Some(path_node(
            dir,
            &child,
            key,
            dir_attr(key, e),
            e.kind != FileType::Dir,
        )))
    }

    /// Feed the children of the history directory `dir` (at `path`) from index `start` to `f`
    /// until it returns true.
    pub(crate) fn history_list<F>(
        &self,
        dir: &Node,
        path: &[u8],
        versions: bool,
        start: usize,
        mut f: F,
        acc: &mut Vec<Node>,
    ) -> FsResult<()>
    where
        F: FnMut(&Node, &[u8], usize, &mut Vec<Node>) -> FsResult<bool>,
    {
        let layout = self.layout();
        if versions {
            let list = self.versions(&layout, path)?;
            for (i, v) in list.iter().enumerate().skip(start) {
                if f(&version_node(dir, v), &v.name, i, acc)? {
                    break;
                }
            }
            return Ok(());
        }
        let list = self.merged(&layout, path)?;
        for (i, m) in list.iter().enumerate().skip(start) {
            let key = node::child_key(dir.key, &m.name);
            let attr = Attr { ino: key, ..m.attr };
            let n = path_node(dir, &join(path, &m.name), key, attr, m.versions);
            if f(&n, &m.name, i, acc)? {
                break;
            }
        }
        Ok(())
    }

    /// Where `path` ("" for the root, else `/a/b`) is in each snapshot of `layout`: from the
    /// cache, or one step from its parent's places.
    fn places(&self, layout: &Layout, path: &[u8]) -> FsResult<Arc<Places>> {
        let key = (layout.fingerprint, path.to_vec());
        if let Some(p) = lock(&self.inner.history.places).get(&key) {
            return Ok(p);
        }
        let places = match path.iter().rposition(|b| *b == b'/') {
            None => roots(layout),
            Some(i) => {
                let parent = self.places(layout, &path[..i])?;
                self.step(&parent, &path[i + 1..])
            }
        };
        let places = Arc::new(places);
        // A damaged tree may read again later (a repair, a transient fault): not kept.
        if places.damaged.is_none() {
            let w = places.weight(path);
            lock(&self.inner.history.places).insert(key, places.clone(), w);
        }
        Ok(places)
    }

    /// The places of `name` inside the places `parent`: each distinct tree of the parent is
    /// loaded and searched once. A tree that cannot be read is logged with its id and counts
    /// as not holding the name.
    fn step(&self, parent: &Places, name: &[u8]) -> Places {
        let mut locs = Vec::new();
        let mut damaged = parent.damaged.clone();
        let mut in_tree: HashMap<Id, u32> = HashMap::new();
        let mut child_of = vec![ABSENT; parent.locs.len()];
        for (i, loc) in parent.locs.iter().enumerate() {
            let Some(t) = loc.subtree else { continue };
            if let Some(c) = in_tree.get(&t) {
                child_of[i] = *c;
                continue;
            }
            let c = match self.tree(&t) {
                Err(e) => {
                    self.log(e.detail.as_deref().unwrap_or("a tree cannot be read"));
                    damaged = Some(e);
                    ABSENT
                }
                Ok(tree) => match tree
                    .entries
                    .binary_search_by(|e| e.name.as_slice().cmp(name))
                {
                    Ok(j) => {
                        let e = &tree.entries[j];
                        locs.push(Loc {
                            at: Some((t, j as u32)),
                            kind: e.kind,
                            subtree: e.subtree,
                        });
                        (locs.len() - 1) as u32
                    }
                    Err(_) => ABSENT,
                },
            };
            in_tree.insert(t, c);
            child_of[i] = c;
        }
        let of = parent
            .of
            .iter()
            .map(|i| child_of.get(*i as usize).copied().unwrap_or(ABSENT))
            .collect();
        Places { locs, of, damaged }
    }

    /// The distinct versions of the file at `path`, oldest first: a new one wherever the
    /// content (extents, size, target, type) differs from the last version kept.
    fn versions(&self, layout: &Layout, path: &[u8]) -> FsResult<Vec<Version>> {
        let places = self.places(layout, path)?;
        let ext = extension(path);
        let mut out = Vec::new();
        let mut last: Option<(u32, Arc<Tree>, usize)> = None;
        for (s, li) in places.of.iter().enumerate() {
            let Some(Loc {
                at: Some((tree_id, index)),
                kind,
                ..
            }) = places.locs.get(*li as usize)
            else {
                continue;
            };
            if *kind == FileType::Dir || last.as_ref().is_some_and(|l| l.0 == *li) {
                continue;
            }
            let tree = match self.tree(tree_id) {
                Ok(t) => t,
                Err(e) => {
                    self.log(e.detail.as_deref().unwrap_or("a tree cannot be read"));
                    continue;
                }
            };
            let index = *index as usize;
            let Some(e) = tree.entries.get(index) else {
                continue;
            };
            let same = last
                .as_ref()
                .and_then(|(_, t, i)| t.entries.get(*i))
                .is_some_and(|prev| same_content(prev, e));
            if !same {
                let mut name = layout.snaps[s].name.clone().into_bytes();
                name.extend_from_slice(ext);
                out.push(Version {
                    name,
                    tree: *tree_id,
                    index: index as u32,
                    attr: entry_attr(0, e),
                    has_xattrs: !e.xattrs.is_empty(),
                });
            }
            last = Some((*li, tree.clone(), index));
        }
        match (&places.damaged, out.is_empty()) {
            (Some(e), true) => Err(e.clone()),
            _ => Ok(out),
        }
    }

    /// The union of the names of the directory at `path` across the snapshots, by name, each
    /// with its newest entry. One tree load per distinct tree of the directory.
    fn merged(&self, layout: &Layout, path: &[u8]) -> FsResult<Arc<Vec<Merged>>> {
        let key = (layout.fingerprint, path.to_vec());
        if let Some(m) = lock(&self.inner.history.merged).get(&key) {
            return Ok(m);
        }
        let places = self.places(layout, path)?;
        let mut newest: HashMap<Id, usize> = HashMap::new();
        for (s, li) in places.of.iter().enumerate() {
            if let Some(t) = places.locs.get(*li as usize).and_then(|l| l.subtree) {
                newest.insert(t, s);
            }
        }
        let mut trees: Vec<(usize, Id)> = newest.into_iter().map(|(t, s)| (s, t)).collect();
        trees.sort_unstable_by_key(|t| std::cmp::Reverse(t.0));
        let mut names: BTreeMap<Vec<u8>, Merged> = BTreeMap::new();
        let mut damaged = places.damaged.clone();
        for (_, t) in &trees {
            let tree = match self.tree(t) {
                Ok(tree) => tree,
                Err(e) => {
                    self.log(e.detail.as_deref().unwrap_or("a tree cannot be read"));
                    damaged = Some(e);
                    continue;
                }
            };
            for e in &tree.entries {
                names.entry(e.name.clone()).or_insert_with(|| Merged {
                    name: e.name.clone(),
                    attr: dir_attr(0, e),
                    versions: e.kind != FileType::Dir,
                });
            }
        }
        if let (Some(e), true) = (&damaged, names.is_empty()) {
            return Err(e.clone());
        }
        let list: Arc<Vec<Merged>> = Arc::new(names.into_values().collect());
        if damaged.is_none() {
            let w = 64 + list.iter().map(|m| m.name.len() + 160).sum::<usize>();
            lock(&self.inner.history.merged).insert(key, list.clone(), w);
        }
        Ok(list)
    }
}

/// The places of the root: each snapshot's root tree.
fn roots(layout: &Layout) -> Places {
    let mut locs = Vec::new();
    let mut index: HashMap<Id, u32> = HashMap::new();
    let of = layout
        .snaps
        .iter()
        .map(|s| {
            *index.entry(s.root).or_insert_with(|| {
                locs.push(Loc {
                    at: None,
                    kind: FileType::Dir,
                    subtree: Some(s.root),
                });
                (locs.len() - 1) as u32
            })
        })
        .collect();
    Places {
        locs,
        of,
        damaged: None,
    }
}

/// Two stored entries hold the same content: same type, size, extents (or content lists),
/// symlink target and device number. Metadata alone (mode, owner, times) is not a new version.
fn same_content(a: &Entry, b: &Entry) -> bool {
    a.kind == b.kind
        && a.size == b.size
        && a.content == b.content
        && a.target == b.target
        && a.rdev == b.rdev
}

/// The extension of the last component of `path`, with its dot (`.odt`), or nothing (also for
/// a name starting with its only dot, like `.bashrc`, or ending in one).
fn extension(path: &[u8]) -> &[u8] {
    let name = path.rsplit(|b| *b == b'/').next().unwrap_or(path);
    match name.iter().rposition(|b| *b == b'.') {
        Some(i) if i > 0 && i + 1 < name.len() => &name[i..],
        _ => &[],
    }
}

fn join(path: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(path.len() + 1 + name.len());
    p.extend_from_slice(path);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// The attributes of a history path: a directory either way. A directory's are its newest
/// stored ones (so `default_permissions` checks what the source allowed); a file's history
/// has the file's owner, times and read bits, with search bits where it is readable.
fn dir_attr(ino: u64, e: &Entry) -> Attr {
    let mut a = entry_attr(ino, e);
    if e.kind != FileType::Dir {
        let read = a.perm & 0o444;
        a.perm = read | (read >> 2);
        a.nlink = 2;
    }
    Attr {
        kind: FileType::Dir,
        size: 0,
        blocks: 0,
        rdev: 0,
        ..a
    }
}

fn path_node(dir: &Node, path: &[u8], key: u64, attr: Attr, versions: bool) -> Node {
    Node {
        ino: key,
        parent: dir.ino,
        key,
        what: What::History {
            path: Arc::from(path),
            versions,
            attr: Some(attr),
        },
    }
}

/// A version is the stored entry itself, at an inode of its own (never a hard-link alias).
fn version_node(dir: &Node, v: &Version) -> Node {
    let key = node::child_key(dir.key, &v.name);
    Node {
        ino: key,
        parent: dir.ino,
        key,
        what: What::Entry {
            snap_key: dir.key,
            tree: v.tree,
            index: v.index,
            subtree: None,
            attr: Attr { ino: key, ..v.attr },
            has_xattrs: v.has_xattrs,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_the_last_dot_of_the_last_name() {
        assert_eq!(extension(b"/home/a/thesis.odt"), b".odt");
        assert_eq!(extension(b"/home/a/x.tar.gz"), b".gz");
        assert_eq!(extension(b"/home/a/.bashrc"), b"");
        assert_eq!(extension(b"/home/a.d/Makefile"), b"");
        assert_eq!(extension(b"/home/a/x."), b"");
    }
}
