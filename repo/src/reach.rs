//! Key-free verification of what snapshots reference (a provider's verify job): every
//! snapshot's trees, content lists and chunks must be present, walked by their public
//! references (format 2). Together with the stored-checksum check
//! (`check::check_storage_through`, `check::check_storage`) it finds a missing object as well
//! as a flipped byte, with no key at all.

use crate::crypto::Kind;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::id::Id;
use crate::storage::{Reader, Storage};
use std::collections::HashSet;

/// Ids asked about per `contains` call.
const BATCH: usize = 4096;

#[derive(Debug, Default)]
pub struct Reach {
    pub snapshots: u64,
    /// Distinct objects reached from the snapshots.
    pub objects: u64,
    /// Objects referenced but absent or unreadable, with the first snapshot that needs them.
    pub problems: Vec<(Id, Id, String)>,
    /// Snapshots sealed before format 2, whose graph only the key can read (not verified).
    pub need_key: Vec<Id>,
}

/// Walk every snapshot of `store` by public references and report what is missing.
pub fn check_reachable(store: &dyn Storage) -> Result<Reach> {
    // Snapshots first, then the view: the view is newer, so it holds what they reference.
    let snapshots = store.snapshots()?;
    let view = store.reader()?;
    let mut walk = Walk {
        view: &*view,
        graph: Graph::key_free(),
        seen: HashSet::new(),
        report: Reach::default(),
    };
    for (id, blob) in &snapshots {
        walk.report.snapshots += 1;
        match walk.graph.snapshot(id, blob) {
            Ok(refs) => walk.snapshot(id, refs.trees)?,
            Err(Error::KeyNeeded(_)) => walk.report.need_key.push(*id),
            Err(e) if e.is_damage() => walk.report.problems.push((*id, *id, e.to_string())),
            Err(e) => return Err(e),
        }
    }
    walk.report.objects = walk.seen.len() as u64;
    Ok(walk.report)
}

struct Walk<'a> {
    view: &'a dyn Reader,
    graph: Graph<'a>,
    /// Every object reached so far, from any snapshot (each is verified once).
    seen: HashSet<Id>,
    report: Reach,
}

impl Walk<'_> {
    fn snapshot(&mut self, snap: &Id, roots: Vec<Id>) -> Result<()> {
        let mut trees: Vec<Id> = roots.into_iter().filter(|t| self.seen.insert(*t)).collect();
        while let Some(t) = trees.pop() {
            let Some(refs) = self.open(snap, Kind::Tree, &t)? else {
                continue;
            };
            trees.extend(refs.trees.iter().filter(|s| self.seen.insert(**s)));
            let mut chunks: Vec<Id> = Vec::new();
            let lists: Vec<Id> = refs
                .lists
                .iter()
                .copied()
                .filter(|l| self.seen.insert(*l))
                .collect();
            for l in &lists {
                if let Some(list) = self.open(snap, Kind::List, l)? {
                    chunks.extend(list.chunks);
                }
            }
            chunks.extend(refs.chunks);
            chunks.retain(|c| self.seen.insert(*c));
            self.present(snap, &chunks)?;
        }
        Ok(())
    }

    /// The references of a tree or list, or `None` (and a problem noted) when it is missing
    /// or damaged; a snapshot whose tree is from before format 2 is left to the key holder.
    fn open(&mut self, snap: &Id, kind: Kind, id: &Id) -> Result<Option<crate::graph::Refs>> {
        match self.graph.object(self.view, kind, id) {
            Ok(refs) => Ok(Some(refs)),
            Err(Error::KeyNeeded(_)) => {
                if !self.report.need_key.contains(snap) {
                    self.report.need_key.push(*snap);
                }
                Ok(None)
            }
            Err(e) if e.is_damage() => {
                self.report.problems.push((*id, *snap, e.to_string()));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn present(&mut self, snap: &Id, chunks: &[Id]) -> Result<()> {
        for part in chunks.chunks(BATCH) {
            let have = self.view.contains(part)?;
            for (id, _) in part.iter().zip(have).filter(|(_, h)| !h) {
                self.report
                    .problems
                    .push((*id, *snap, Error::Missing(id.to_hex()).to_string()));
            }
        }
        Ok(())
    }
}
