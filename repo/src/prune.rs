//! `prune`: mark and sweep from the live snapshots, planned then executed (see DESIGN.md,
//! "Garbage collection").
//!
//! 1. Plan from a read view: mark every object the snapshots reference; every other indexed
//!    object is garbage. Packs with no live object are deleted; packs whose live share fell
//!    below a threshold are repacked.
//! 2. Repack: copy the live objects of those packs verbatim into new packs (a relocating
//!    [`Packer`]); their index rows move to the copies. Nothing is deleted yet.
//! 3. Sweep in one write transaction, only when no live backup session exists (else wait,
//!    bounded); snapshots committed since the plan are marked first, so objects a backup reused
//!    meanwhile survive.

use crate::crypto::Kind;
use crate::error::{Error, Result};
use crate::graph::Source;
use crate::id::Id;
use crate::storage::redb::Packer;
use crate::storage::redb::{checksum, Location, Store, View};
use crate::storage::redb::{PackCandidate, Sweep, SweepInput};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

const REPACK_BATCH: usize = 32 << 20;

#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Repack a pack when its live bytes fall below this share of its length (0.0–1.0).
    pub repack_below: f64,
    /// How long to wait for running backups before giving up.
    pub wait: Duration,
    /// How often to look again while waiting.
    pub poll: Duration,
    /// Only plan: `collect` returns the plan's summary and changes nothing.
    pub dry_run: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            repack_below: 0.8,
            wait: Duration::from_secs(3600),
            poll: Duration::from_secs(2),
            dry_run: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackAction {
    Keep,
    Repack,
    Delete,
}

#[derive(Clone, Debug)]
pub struct PackPlan {
    /// The PACKS row the plan saw: (length, objects written).
    pub row: (u64, u64),
    pub(crate) live: Vec<(Id, Location)>,
    pub(crate) dead: Vec<(Id, Location)>,
    pub action: PackAction,
}

impl PackPlan {
    pub fn live_bytes(&self) -> u64 {
        self.live.iter().map(|(_, l)| l.len as u64).sum()
    }

    /// How many of the pack's objects snapshots use.
    pub fn live_objects(&self) -> usize {
        self.live.len()
    }

    /// How many of the pack's objects no snapshot uses.
    pub fn unused_objects(&self) -> usize {
        self.dead.len()
    }
}

/// What prune would do; `cairn prune --dry-run` prints it.
#[derive(Clone, Debug, Default)]
pub struct PrunePlan {
    pub snapshots: HashSet<Id>,
    pub marked: HashSet<Id>,
    pub objects_total: u64,
    pub(crate) garbage: Vec<(Id, Location)>,
    pub packs: BTreeMap<u64, PackPlan>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlanSummary {
    pub objects_total: u64,
    pub objects_unused: u64,
    pub bytes_unused: u64,
    pub packs_total: u64,
    pub packs_delete: u64,
    pub packs_repack: u64,
    /// Live bytes copied by the repack.
    pub bytes_repack: u64,
    /// Pack bytes that go away (deleted packs, and repacked packs minus their live bytes).
    pub bytes_freed: u64,
}

impl PrunePlan {
    pub fn summary(&self) -> PlanSummary {
        let mut s = PlanSummary {
            objects_total: self.objects_total,
            objects_unused: self.garbage.len() as u64,
            bytes_unused: self.garbage.iter().map(|(_, l)| l.len as u64).sum(),
            packs_total: self.packs.len() as u64,
            ..Default::default()
        };
        for p in self.packs.values() {
            match p.action {
                PackAction::Keep => {}
                PackAction::Delete => {
                    s.packs_delete += 1;
                    s.bytes_freed += p.row.0;
                }
                PackAction::Repack => {
                    s.packs_repack += 1;
                    s.bytes_repack += p.live_bytes();
                    s.bytes_freed += p.row.0.saturating_sub(p.live_bytes());
                }
            }
        }
        s
    }
}

/// Also the `Collected` reply of the store protocol (field order is the wire order).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PruneReport {
    pub plan: PlanSummary,
    pub objects_dropped: u64,
    pub bytes_dropped: u64,
    pub objects_repacked: u64,
    pub bytes_repacked: u64,
    pub packs_deleted: u64,
    pub pack_bytes_deleted: u64,
    /// Packs the plan would delete that were left in place (appended to, or holding an object
    /// a new snapshot reuses).
    pub packs_kept: u64,
    /// Unused objects at plan time that snapshots committed since then reuse.
    pub rescued: u64,
    pub dead_sessions_removed: u64,
    /// Live objects found damaged while repacking (left in place, their pack kept).
    pub damaged_skipped: u64,
    pub waited: Duration,
}

/// Mark everything the snapshots reference, then classify every indexed object and pack.
pub fn plan(repo: &dyn Source, opts: &PruneOptions) -> Result<PrunePlan> {
    plan_with(
        crate::storage::local(repo.storage(), "prune")?,
        &mut GraphMarker::new(repo)?,
        opts,
    )
}

/// `plan` for the redb store with any marker (the key holder's walk, near or over the wire).
pub(crate) fn plan_with(
    store: &Store,
    marker: &mut dyn Mark,
    opts: &PruneOptions,
) -> Result<PrunePlan> {
    if !(0.0..=1.0).contains(&opts.repack_below) {
        return Err(Error::Usage(
            "the repack threshold is a share between 0 and 1".into(),
        ));
    }
    // Order matters (DESIGN.md): pack rows, then snapshots, then the object view.
    let rows = store.pack_rows()?;
    let marked = store.marked_for_repack()?;
    let snaps: Vec<Id> = store
        .snapshot_blobs()?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let view = store.view()?;
    let mut plan = PrunePlan {
        marked: marker.mark(&snaps)?,
        snapshots: snaps.into_iter().collect(),
        ..Default::default()
    };
    // pack -> (live objects, unused objects)
    type Objects = Vec<(Id, Location)>;
    let mut by_pack: BTreeMap<u64, (Objects, Objects)> = BTreeMap::new();
    view.for_each_object(|id, loc| {
        plan.objects_total += 1;
        let e = by_pack.entry(loc.pack).or_default();
        if plan.marked.contains(&id) {
            e.0.push((id, loc));
        } else {
            e.1.push((id, loc));
            plan.garbage.push((id, loc));
        }
        Ok(())
    })?;
    for (pack, row) in rows {
        let (live, dead) = by_pack.remove(&pack).unwrap_or_default();
        let live_bytes: u64 = live.iter().map(|(_, l)| l.len as u64).sum();
        let action = if live.is_empty() {
            PackAction::Delete
        } else if (live_bytes as f64) < opts.repack_below * row.0 as f64 || marked.contains(&pack) {
            PackAction::Repack
        } else {
            PackAction::Keep
        };
        plan.packs.insert(
            pack,
            PackPlan {
                row,
                live,
                dead,
                action,
            },
        );
    }
    Ok(plan)
}

/// Says which objects snapshots reference: the part of garbage collection that reads the
/// graph of trees (by their public references, or with the key), while the store does the rest
/// (DESIGN.md §9).
pub trait Mark {
    /// Every object the snapshots `ids` reference (trees, lists, chunks). A snapshot, tree
    /// or list that cannot be read is an error: what it references is unknown, so nothing
    /// may be deleted.
    fn mark(&mut self, ids: &[Id]) -> Result<HashSet<Id>>;
}

/// Walks the snapshots' trees and content lists through the repository's store, marking
/// every object reached: by public references without a key (a bare store), or opening
/// every tree with it (a `Repository`).
pub struct GraphMarker<'a> {
    source: &'a dyn Source,
}

impl<'a> GraphMarker<'a> {
    pub fn new(source: &'a dyn Source) -> Result<GraphMarker<'a>> {
        Ok(GraphMarker { source })
    }
}

impl Mark for GraphMarker<'_> {
    fn mark(&mut self, ids: &[Id]) -> Result<HashSet<Id>> {
        let store = self.source.storage();
        let graph = self.source.graph();
        // A reader made now sees every object the snapshots listed before it reference.
        let blobs = store.snapshots()?;
        let view = store.reader()?;
        let mut marked = HashSet::new();
        let mut trees = Vec::new();
        for (id, blob) in blobs.iter().filter(|(id, _)| ids.contains(id)) {
            trees.extend(graph.snapshot(id, blob).map_err(unreadable)?.trees);
        }
        while let Some(id) = trees.pop() {
            if !marked.insert(id) {
                continue;
            }
            let refs = graph.object(&*view, Kind::Tree, &id).map_err(unreadable)?;
            trees.extend(refs.trees.iter().filter(|t| !marked.contains(*t)));
            for l in refs.lists {
                if marked.insert(l) {
                    let list = graph.object(&*view, Kind::List, &l).map_err(unreadable)?;
                    marked.extend(list.chunks);
                }
            }
            marked.extend(refs.chunks);
        }
        Ok(marked)
    }
}

fn unreadable(e: Error) -> Error {
    if e.is_damage() || matches!(e, Error::Format(_)) {
        return Error::Refused(format!(
            "prune stopped before deleting anything: {e}. Run `cairn check` (and `cairn check --repair-from REPLICA`) first"
        ));
    }
    e
}

/// Plan and execute. `notify` receives human-readable progress (why we wait, what is done).
pub fn prune(repo: &dyn Source, opts: &PruneOptions, notify: &dyn Fn(&str)) -> Result<PruneReport> {
    let plan = plan(repo, opts)?;
    execute(repo, plan, opts, notify)
}

/// Execute a plan: repack, then sweep when no backup is running.
pub fn execute(
    repo: &dyn Source,
    plan: PrunePlan,
    opts: &PruneOptions,
    notify: &dyn Fn(&str),
) -> Result<PruneReport> {
    execute_with(
        crate::storage::local(repo.storage(), "prune")?,
        &mut GraphMarker::new(repo)?,
        plan,
        opts,
        notify,
    )
}

/// Plan and execute on the redb store with any marker (what `Storage::collect_garbage` runs).
pub fn collect(
    store: &Store,
    marker: &mut dyn Mark,
    opts: &PruneOptions,
    notify: &dyn Fn(&str),
) -> Result<PruneReport> {
    let plan = plan_with(store, marker, opts)?;
    if opts.dry_run {
        return Ok(PruneReport {
            plan: plan.summary(),
            ..Default::default()
        });
    }
    execute_with(store, marker, plan, opts, notify)
}

fn execute_with(
    store: &Store,
    marker: &mut dyn Mark,
    plan: PrunePlan,
    opts: &PruneOptions,
    notify: &dyn Fn(&str),
) -> Result<PruneReport> {
    let mut report = PruneReport {
        plan: plan.summary(),
        ..Default::default()
    };
    repack(store, &plan, &mut report, notify)?;
    let candidates = sweep_candidates(&plan);
    let (mut known, mut marked, mut garbage) = (plan.snapshots, plan.marked, plan.garbage);
    let started = Instant::now();
    let mut last_waiters = Vec::new();
    let piece_size = store.config()?.piece_size;
    loop {
        let input = SweepInput {
            known_snapshots: &known,
            garbage: &garbage,
            packs: &candidates,
            piece_size,
        };
        match store.sweep(&input)? {
            Sweep::Done(done) => {
                report.objects_dropped = done.objects_dropped;
                report.bytes_dropped = done.bytes_dropped;
                report.packs_deleted = done.packs_deleted;
                report.pack_bytes_deleted = done.pack_bytes_deleted;
                report.packs_kept = done.packs_kept;
                report.dead_sessions_removed += done.dead_sessions_removed;
                report.waited = started.elapsed();
                return Ok(report);
            }
            Sweep::Busy(who) => {
                wait_or_give_up(store, opts, started, &who, &last_waiters, notify)?;
                last_waiters = who;
            }
            Sweep::NewSnapshots(new) => {
                marked.extend(marker.mark(&new)?);
                let before = garbage.len();
                garbage.retain(|(id, _)| !marked.contains(id));
                let rescued = before - garbage.len();
                report.rescued += rescued as u64;
                if rescued > 0 {
                    notify(&format!(
                        "{} new snapshots reuse {} objects the plan found unused; they are kept",
                        new.len(),
                        rescued
                    ));
                }
                known.extend(new);
            }
        }
    }
}

/// Packs the sweep may delete: every pack the plan deletes or repacks.
fn sweep_candidates(plan: &PrunePlan) -> Vec<PackCandidate> {
    plan.packs
        .iter()
        .filter(|(_, p)| p.action != PackAction::Keep)
        .map(|(pack, p)| PackCandidate {
            pack: *pack,
            row: p.row,
            objects: p.live.iter().chain(&p.dead).map(|(id, _)| *id).collect(),
        })
        .collect()
}

/// Sleep one poll interval while backups run (saying why when the set of writers changes), or
/// give up with `Locked` once `opts.wait` has passed.
fn wait_or_give_up(
    store: &Store,
    opts: &PruneOptions,
    started: Instant,
    who: &[String],
    last: &[String],
    notify: &dyn Fn(&str),
) -> Result<()> {
    if started.elapsed() >= opts.wait {
        return Err(Error::Locked {
            path: store.dir().to_path_buf(),
            reason: format!(
                "backups still running after waiting {} s: {}",
                opts.wait.as_secs(),
                who.join(", ")
            ),
        });
    }
    if who != last {
        notify(&format!(
            "waiting for running backups to finish before deleting anything: {}",
            who.join(", ")
        ));
    }
    std::thread::sleep(opts.poll);
    Ok(())
}

/// Copy the live objects of packs to repack into new packs, moving their index rows there. A
/// damaged live object is left where it is (so its pack stays) and reported.
fn repack(
    store: &Store,
    plan: &PrunePlan,
    report: &mut PruneReport,
    notify: &dyn Fn(&str),
) -> Result<()> {
    let cfg = store.config()?;
    let view = store.view()?;
    let mut packer = Packer::relocating(store, cfg.piece_size, cfg.pack_max, REPACK_BATCH);
    for p in plan
        .packs
        .values()
        .filter(|p| p.action == PackAction::Repack)
    {
        for (id, loc) in &p.live {
            match intact(&view, id, loc, cfg.piece_size)? {
                Ok(sealed) => {
                    packer.add(*id, loc.kind, &sealed)?;
                    report.objects_repacked += 1;
                    report.bytes_repacked += sealed.len() as u64;
                }
                Err(why) => {
                    report.damaged_skipped += 1;
                    notify(&format!("object {id} is damaged ({why}); left in place, see `cairn check --read-data`"));
                }
            }
        }
    }
    if report.objects_repacked > 0 {
        packer.commit(true, &[])?;
    }
    Ok(())
}

/// The stored bytes of an object if they match their checksum; `Err(reason)` if damaged.
fn intact(
    view: &View,
    id: &Id,
    loc: &Location,
    piece_size: u32,
) -> Result<std::result::Result<Vec<u8>, String>> {
    match view.read_sealed(id, loc, piece_size) {
        Ok(s) if checksum(&s) == loc.check => Ok(Ok(s)),
        Ok(_) => Ok(Err("stored bytes do not match their checksum".into())),
        Err(e) if e.is_damage() => Ok(Err(e.to_string())),
        Err(e) => Err(e),
    }
}
