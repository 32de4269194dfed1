//! Compare two snapshots: what was added, removed, changed in content or only in metadata.

use crate::error::Result;
use crate::format::{Entry, FileType, Tree};
use crate::id::Id;
use crate::repo::Repository;
use crate::storage::Reader;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Added,
    Removed,
    Modified,
    Metadata,
    TypeChanged,
}

impl Change {
    pub fn symbol(&self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Modified => 'M',
            Change::Metadata => 'U',
            Change::TypeChanged => 'T',
        }
    }
}

#[derive(Clone, Debug)]
pub struct DiffLine {
    pub change: Change,
    pub path: Vec<u8>,
    pub kind: FileType,
}

pub fn diff(repo: &Repository, a: &Id, b: &Id) -> Result<Vec<DiffLine>> {
    let view = repo.reader()?;
    let mut out = Vec::new();
    diff_trees(repo, &*view, Some(a), Some(b), b"", &mut out)?;
    Ok(out)
}

fn load(repo: &Repository, view: &dyn Reader, id: Option<&Id>) -> Result<Tree> {
    match id {
        Some(id) => repo.load_tree(view, id),
        None => Ok(Tree::default()),
    }
}

fn diff_trees(
    repo: &Repository,
    view: &dyn Reader,
    a: Option<&Id>,
    b: Option<&Id>,
    path: &[u8],
    out: &mut Vec<DiffLine>,
) -> Result<()> {
    if a.is_some() && a == b {
        return Ok(());
    }
    let (ta, tb) = (load(repo, view, a)?, load(repo, view, b)?);
    let (mut i, mut j) = (0, 0);
    while i < ta.entries.len() || j < tb.entries.len() {
        let ea = ta.entries.get(i);
        let eb = tb.entries.get(j);
        let ord = match (ea, eb) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                if let Some(x) = ea {
                    removed_or_added(repo, view, x, Change::Removed, path, out)?;
                }
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                if let Some(y) = eb {
                    removed_or_added(repo, view, y, Change::Added, path, out)?;
                }
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if let (Some(x), Some(y)) = (ea, eb) {
                    compare(repo, view, x, y, path, out)?;
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

fn child_path(path: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = path.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

fn removed_or_added(
    repo: &Repository,
    view: &dyn Reader,
    e: &Entry,
    change: Change,
    path: &[u8],
    out: &mut Vec<DiffLine>,
) -> Result<()> {
    let p = child_path(path, &e.name);
    out.push(DiffLine {
        change,
        path: p.clone(),
        kind: e.kind,
    });
    if let Some(sub) = e.subtree {
        let (a, b) = if change == Change::Removed {
            (Some(&sub), None)
        } else {
            (None, Some(&sub))
        };
        diff_trees(repo, view, a, b, &p, out)?;
    }
    Ok(())
}

fn compare(
    repo: &Repository,
    view: &dyn Reader,
    a: &Entry,
    b: &Entry,
    path: &[u8],
    out: &mut Vec<DiffLine>,
) -> Result<()> {
    let p = child_path(path, &a.name);
    if a.kind != b.kind {
        out.push(DiffLine {
            change: Change::TypeChanged,
            path: p.clone(),
            kind: b.kind,
        });
        return Ok(());
    }
    let content_differs = a.content != b.content || a.target != b.target || a.rdev != b.rdev;
    let meta_differs = a.mode != b.mode
        || a.uid != b.uid
        || a.gid != b.gid
        || a.mtime != b.mtime
        || a.xattrs != b.xattrs;
    if content_differs {
        out.push(DiffLine {
            change: Change::Modified,
            path: p.clone(),
            kind: b.kind,
        });
    } else if meta_differs {
        out.push(DiffLine {
            change: Change::Metadata,
            path: p.clone(),
            kind: b.kind,
        });
    }
    if a.kind == FileType::Dir {
        diff_trees(repo, view, a.subtree.as_ref(), b.subtree.as_ref(), &p, out)?;
    }
    Ok(())
}
