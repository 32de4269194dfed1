//! What objects reference, readable without the key (format 2, DESIGN.md §3, "Public
//! references"): every tree, content list and snapshot is sealed with its references in the
//! clear part of its envelope, authenticated with the object. A server holding no key walks
//! the graph from them (sync, garbage collection, verification); a key holder checks on every
//! open that they are the ones its content names.

use crate::crypto::{self, Kind, MasterKeys};
use crate::error::{Error, Result};
use crate::format::{Content, Extent, Snapshot, Tree};
use crate::id::Id;
use crate::repo::Repository;
use crate::storage::{Reader, Storage};
use serde::{Deserialize, Serialize};

const REFS_VERSION: u8 = 1;

/// The public part of a tree, list or snapshot: the ids it references, sorted, without
/// repeats, by the kind of object they name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refs {
    /// A snapshot's time (unix seconds and nanoseconds); 0 for trees and lists.
    pub time: i64,
    pub nsec: u32,
    /// A snapshot's retention group, keyed (`MasterKeys::group_tag`); zeros otherwise.
    pub group: [u8; 16],
    pub trees: Vec<Id>,
    pub lists: Vec<Id>,
    pub chunks: Vec<Id>,
}

impl Refs {
    pub fn of_tree(tree: &Tree) -> Refs {
        let mut r = Refs::default();
        for e in &tree.entries {
            r.trees.extend(e.subtree);
            match &e.content {
                Content::None => {}
                Content::Inline(xs) => r.chunks.extend(xs.iter().filter_map(|x| x.id)),
                Content::Lists(ls) => r.lists.extend(ls.iter().map(|l| l.id)),
            }
        }
        r.canonical()
    }

    pub fn of_list(extents: &[Extent]) -> Refs {
        Refs {
            chunks: extents.iter().filter_map(|x| x.id).collect(),
            ..Refs::default()
        }
        .canonical()
    }

    pub fn of_snapshot(s: &Snapshot, keys: &MasterKeys) -> Refs {
        Refs {
            time: s.time.sec,
            nsec: s.time.nsec,
            group: keys.group_tag(&s.host, &s.paths),
            trees: vec![s.root],
            ..Refs::default()
        }
    }

    fn canonical(mut self) -> Refs {
        for v in [&mut self.trees, &mut self.lists, &mut self.chunks] {
            v.sort_unstable();
            v.dedup();
        }
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let out = vec![REFS_VERSION];
        // Serializing plain data into a Vec cannot fail.
        postcard::to_extend(self, out).unwrap_or_else(|_| vec![REFS_VERSION])
    }

    /// Decode hostile bytes: a known version, nothing left over, every list strictly
    /// ascending (the only encoding a writer makes, so equal references are equal bytes).
    pub fn decode(bytes: &[u8]) -> std::result::Result<Refs, String> {
        let rest = match bytes.split_first() {
            Some((&REFS_VERSION, rest)) => rest,
            Some((v, _)) => return Err(format!("public references version {v} is unknown")),
            None => return Err("public references are empty".into()),
        };
        let (refs, left): (Refs, _) = postcard::take_from_bytes(rest)
            .map_err(|e| format!("public references do not decode: {e}"))?;
        if !left.is_empty() {
            return Err("public references have trailing bytes".into());
        }
        let ascending = |v: &[Id]| v.windows(2).all(|w| w[0] < w[1]);
        if !(ascending(&refs.trees) && ascending(&refs.lists) && ascending(&refs.chunks)) {
            return Err("public references are not sorted".into());
        }
        Ok(refs)
    }

    /// Every id named, of every kind.
    pub fn all(&self) -> impl Iterator<Item = &Id> {
        self.trees.iter().chain(&self.lists).chain(&self.chunks)
    }
}

/// The public references of a sealed object, without a key: `None` for an object sealed
/// before format 2 (a version 1 envelope has no public part). Not authenticated: only the
/// key holder's `open` proves them.
pub fn public_refs(id: &Id, sealed: &[u8]) -> Result<Option<Refs>> {
    match crypto::public_part(sealed).map_err(|r| Error::corrupt(id, r))? {
        None => Ok(None),
        Some(p) => Refs::decode(p).map(Some).map_err(|r| Error::corrupt(id, r)),
    }
}

/// After a key holder decoded `id`: its public references, if it has any, must be the ones
/// its content names (`expected`), or a writer with the key lied to the server about them.
pub fn check_refs(id: &Id, sealed: &[u8], expected: impl FnOnce() -> Refs) -> Result<()> {
    match public_refs(id, sealed)? {
        Some(r) if r != expected() => Err(Error::corrupt(
            id,
            "its public references differ from what its content names",
        )),
        _ => Ok(()),
    }
}

/// Finds what objects reference: from their public parts, or — given the key — by opening
/// them (which also authenticates the references and reads objects sealed before format 2).
#[derive(Clone, Copy)]
pub struct Graph<'a> {
    repo: Option<&'a Repository>,
}

impl<'a> Graph<'a> {
    pub fn key_free() -> Graph<'static> {
        Graph { repo: None }
    }

    pub fn with_key(repo: &'a Repository) -> Graph<'a> {
        Graph { repo: Some(repo) }
    }

    /// What the stored snapshot `id` (its sealed `blob`) references, and its time.
    pub fn snapshot(&self, id: &Id, blob: &[u8]) -> Result<Refs> {
        if let Some(repo) = self.repo {
            return Ok(Refs::of_snapshot(
                &repo.open_snapshot(id, blob)?,
                repo.keys(),
            ));
        }
        public_refs(id, blob)?.ok_or_else(|| needs_key(Kind::Snapshot, id))
    }

    /// What the tree or content list `id` references (a chunk references nothing).
    pub fn object(&self, view: &dyn Reader, kind: Kind, id: &Id) -> Result<Refs> {
        match (kind, self.repo) {
            (Kind::Chunk, _) => Ok(Refs::default()),
            (Kind::Tree, Some(repo)) => Ok(Refs::of_tree(&repo.load_tree(view, id)?)),
            (Kind::List, Some(repo)) => Ok(Refs::of_list(&repo.load_list(view, id)?)),
            (_, _) => {
                let sealed = crate::storage::read_as(view, id, kind)?;
                public_refs(id, &sealed)?.ok_or_else(|| needs_key(kind, id))
            }
        }
    }
}

fn needs_key(kind: Kind, id: &Id) -> Error {
    Error::KeyNeeded(format!(
        "{} {id} was written before repository format 2 and names what it references only inside its encryption",
        match kind {
            Kind::Snapshot => "snapshot",
            Kind::Tree => "tree",
            Kind::List => "content list",
            Kind::Chunk => "chunk",
        }
    ))
}

/// The repository a sync, a verification or a garbage collection reads: a key holder's
/// `Repository`, or a bare store opened without any key (`Box<dyn Storage>`).
pub trait Source {
    fn storage(&self) -> &dyn Storage;
    fn graph(&self) -> Graph<'_>;
}

impl Source for Repository {
    fn storage(&self) -> &dyn Storage {
        Repository::storage(self)
    }

    fn graph(&self) -> Graph<'_> {
        Graph::with_key(self)
    }
}

/// A store used without its key: every walk goes by public references.
impl Source for Box<dyn Storage> {
    fn storage(&self) -> &dyn Storage {
        &**self
    }

    fn graph(&self) -> Graph<'_> {
        Graph::key_free()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::format::{Entry, FileType, ListRef};
    use proptest::prelude::*;

    fn sample_tree() -> Tree {
        let mut f = Entry::new(b"f".to_vec(), FileType::File);
        f.content = Content::Inline(vec![
            Extent {
                id: Some(Id([9; 32])),
                len: 1,
            },
            Extent { id: None, len: 4 },
            Extent {
                id: Some(Id([3; 32])),
                len: 1,
            },
            Extent {
                id: Some(Id([9; 32])),
                len: 1,
            },
        ]);
        let mut g = Entry::new(b"g".to_vec(), FileType::File);
        g.content = Content::Lists(vec![ListRef {
            id: Id([5; 32]),
            len: 8,
            count: 2,
        }]);
        let mut d = Entry::new(b"d".to_vec(), FileType::Dir);
        d.subtree = Some(Id([7; 32]));
        Tree {
            entries: vec![d, f, g],
        }
    }

    #[test]
    fn a_trees_references_are_sorted_sets_by_kind() {
        let r = Refs::of_tree(&sample_tree());
        assert_eq!(r.trees, vec![Id([7; 32])]);
        assert_eq!(r.lists, vec![Id([5; 32])]);
        assert_eq!(r.chunks, vec![Id([3; 32]), Id([9; 32])]);
        assert_eq!(Refs::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn public_references_round_trip_and_are_authenticated() {
        let k = MasterKeys::random();
        let tree = sample_tree();
        let plain = tree.encode();
        let id = k.id_of(Kind::Tree, &plain);
        let refs = Refs::of_tree(&tree);
        let sealed = k
            .seal_public(Kind::Tree, &id, &refs.encode(), &plain, 3)
            .unwrap();
        assert_eq!(public_refs(&id, &sealed).unwrap(), Some(refs.clone()));
        assert_eq!(k.open_verified(Kind::Tree, &id, &sealed).unwrap(), plain);
        // A server that rewrites the public part (drops a chunk) is caught by the key holder.
        let mut fewer = refs.clone();
        fewer.chunks.pop();
        let public = fewer.encode();
        let mut forged = vec![crypto::SEAL_VERSION_PUBLIC];
        forged.extend_from_slice(&(public.len() as u32).to_le_bytes());
        forged.extend_from_slice(&public);
        forged.extend_from_slice(&sealed[5 + refs.encode().len()..]);
        assert_eq!(public_refs(&id, &forged).unwrap(), Some(fewer));
        assert!(k.open(Kind::Tree, &id, &forged).is_err());
        // A version 1 envelope has none, and still opens.
        let old = k.seal(Kind::Tree, &id, &plain, 3).unwrap();
        assert_eq!(public_refs(&id, &old).unwrap(), None);
        assert_eq!(k.open_verified(Kind::Tree, &id, &old).unwrap(), plain);
    }

    #[test]
    fn unsorted_or_repeated_references_are_refused() {
        let mut r = Refs::of_tree(&sample_tree());
        r.chunks.reverse();
        assert!(Refs::decode(&r.encode()).is_err());
        r.chunks = vec![Id([1; 32]), Id([1; 32])];
        assert!(Refs::decode(&r.encode()).is_err());
    }

    proptest! {
        #[test]
        fn hostile_envelopes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = public_refs(&Id([0; 32]), &bytes);
            let _ = Refs::decode(&bytes);
            let mut v2 = vec![crypto::SEAL_VERSION_PUBLIC];
            v2.extend_from_slice(&bytes);
            let _ = public_refs(&Id([0; 32]), &v2);
        }
    }
}
