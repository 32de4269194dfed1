//! Negotiation: find what the target lacks by walking the missing snapshots' trees top-down
//! (by their public references, or opening them with the key: `graph::Graph`) and asking the
//! target, in batches, which ids it already holds. A tree the target holds is not read: by
//! the write-ordering invariant everything below it is there too.

use super::proto::{Request, Response, MAX_HAVE};
use super::remote::unexpected;
use super::Target;
use crate::crypto::Kind;
use crate::error::Result;
use crate::graph::Graph;
use crate::id::Id;
use crate::storage::Reader;
use std::collections::{HashMap, HashSet};

/// What to send, in sending order: chunks, then content lists, then trees children first.
#[derive(Debug, Default)]
pub struct Plan {
    pub chunks: Vec<Id>,
    pub lists: Vec<Id>,
    pub trees: Vec<Id>,
    /// `Have` round trips the negotiation took.
    pub round_trips: u64,
    /// Ids asked about.
    pub asked: u64,
}

impl Plan {}

/// Ask the target which of `ids` it has, in batches; returns the ones it lacks.
pub fn missing(
    target: &mut dyn Target,
    ids: &[Id],
    batch: usize,
    plan: &mut Plan,
) -> Result<Vec<Id>> {
    let mut out = Vec::new();
    for part in ids.chunks(batch.clamp(1, MAX_HAVE)) {
        plan.round_trips += 1;
        plan.asked += part.len() as u64;
        let have = match target.call(Request::Have(part.to_vec()))? {
            Response::Have(h) => h,
            other => return Err(unexpected(&other)),
        };
        if have.len() != part.len() {
            return Err(super::proto::protocol_error(format!(
                "asked about {} ids, the target answered {}",
                part.len(),
                have.len()
            )));
        }
        out.extend(part.iter().zip(have).filter(|(_, h)| !h).map(|(id, _)| *id));
    }
    Ok(out)
}

struct Walk<'a> {
    graph: Graph<'a>,
    view: &'a dyn Reader,
    batch: usize,
    seen: HashSet<Id>,
    /// Missing trees and the subtrees they name.
    children: HashMap<Id, Vec<Id>>,
    plan: Plan,
}

/// Plan the transfer of everything the snapshots rooted at `roots` need.
pub fn plan(
    graph: Graph<'_>,
    view: &dyn Reader,
    target: &mut dyn Target,
    roots: &[Id],
    batch: usize,
) -> Result<Plan> {
    let mut w = Walk {
        graph,
        view,
        batch,
        seen: HashSet::new(),
        children: HashMap::new(),
        plan: Plan::default(),
    };
    let mut frontier: Vec<Id> = roots
        .iter()
        .copied()
        .filter(|r| w.seen.insert(*r))
        .collect();
    while !frontier.is_empty() {
        frontier = w.level(target, &frontier)?;
    }
    w.plan.trees = post_order(roots, &w.children);
    Ok(w.plan)
}

impl Walk<'_> {
    /// One level of the walk: open the missing trees, queue their content, return the next
    /// level's candidate trees.
    fn level(&mut self, target: &mut dyn Target, frontier: &[Id]) -> Result<Vec<Id>> {
        let trees = missing(target, frontier, self.batch, &mut self.plan)?;
        let (mut next, mut lists, mut chunks) = (Vec::new(), Vec::new(), Vec::new());
        for t in trees {
            let refs = self.graph.object(self.view, Kind::Tree, &t)?;
            next.extend(refs.trees.iter().filter(|s| self.seen.insert(**s)));
            lists.extend(refs.lists.iter().filter(|l| self.seen.insert(**l)));
            chunks.extend(refs.chunks.iter().filter(|c| self.seen.insert(**c)));
            self.children.insert(t, refs.trees);
        }
        for l in missing(target, &lists, self.batch, &mut self.plan)? {
            let refs = self.graph.object(self.view, Kind::List, &l)?;
            chunks.extend(refs.chunks.iter().filter(|c| self.seen.insert(**c)));
            self.plan.lists.push(l);
        }
        let lacking = missing(target, &chunks, self.batch, &mut self.plan)?;
        self.plan.chunks.extend(lacking);
        Ok(next)
    }
}

/// Missing trees ordered children first (depth-first post-order over the missing subgraph;
/// trees are content-addressed, so the graph has no cycles).
pub fn post_order(roots: &[Id], children: &HashMap<Id, Vec<Id>>) -> Vec<Id> {
    let mut out = Vec::new();
    let mut done = HashSet::new();
    for r in roots {
        if !children.contains_key(r) || !done.insert(*r) {
            continue;
        }
        let mut stack: Vec<(Id, usize)> = vec![(*r, 0)];
        while let Some((id, i)) = stack.last_mut() {
            let kids = children.get(id).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(k) = kids.get(*i).copied() {
                *i += 1;
                if children.contains_key(&k) && done.insert(k) {
                    stack.push((k, 0));
                }
            } else {
                out.push(*id);
                stack.pop();
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn post_order_puts_children_first_even_at_several_depths() {
        let id = |b: u8| Id([b; 32]);
        // 1 -> {2, 3}; 2 -> {3}; 3 -> {}: 3 is reachable at depth 1 and 2.
        let mut c = HashMap::new();
        c.insert(id(1), vec![id(2), id(3)]);
        c.insert(id(2), vec![id(3)]);
        c.insert(id(3), vec![]);
        let order = post_order(&[id(1)], &c);
        assert_eq!(order, vec![id(3), id(2), id(1)]);
    }
}
