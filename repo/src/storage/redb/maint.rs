//! The redb side of maintenance (prune's sweep, key-less storage checks, compaction, targets).
//! Kept beside `store.rs` so that redb types stay in `storage::redb`.

use super::store::{checksum, Location, Store, INDEX, PACKS, PIECES, SESSIONS, SNAPSHOTS, STATE};
use crate::error::{Error, Result};
use crate::id::Id;

/// `STATE` key prefix of a pack marked for rewriting (see `Store::mark_for_repack`).
const REPACK: &str = "repack.";
use redb::ReadableTable;
use std::collections::HashSet;
use std::path::Path;

/// One pack the sweep may delete: its PACKS row as the plan saw it, and every object the plan
/// saw in it. It is deleted only if the row is unchanged (nobody appended to it since) and no
/// object of the plan still has its index row pointing into it.
#[derive(Clone, Debug)]
pub(crate) struct PackCandidate {
    pub pack: u64,
    pub row: (u64, u64),
    pub objects: Vec<Id>,
}

pub(crate) struct SweepInput<'a> {
    /// Snapshots whose references are marked; any other snapshot makes the sweep stop.
    pub known_snapshots: &'a HashSet<Id>,
    /// Unreferenced objects to drop, with the location the plan saw.
    pub garbage: &'a [(Id, Location)],
    pub packs: &'a [PackCandidate],
    pub piece_size: u32,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct SweepDone {
    pub objects_dropped: u64,
    pub bytes_dropped: u64,
    pub packs_deleted: u64,
    pub pack_bytes_deleted: u64,
    /// Candidate packs left in place (appended to since the plan, or still holding a live object).
    pub packs_kept: u64,
    pub dead_sessions_removed: u64,
}

pub(crate) enum Sweep {
    Done(SweepDone),
    /// Live writer sessions (decoded), so nothing was deleted.
    Busy(Vec<String>),
    /// Snapshots committed since they were marked; mark them, then try again.
    NewSnapshots(Vec<Id>),
}

fn describe_session(info: &[u8]) -> String {
    match postcard::from_bytes::<crate::util::SessionInfo>(info) {
        Ok(s) => format!("pid {} on {}", s.pid, s.host),
        Err(_) => "an unreadable session record".into(),
    }
}

impl Store {
    /// Prune's execution: one write transaction, taken only when no live writer session exists.
    /// Because a backup registers its session in a write transaction before its first dedup
    /// lookup, and write transactions are serialized, any backup either is visible here (and we
    /// delete nothing) or starts after this commit and sees its result.
    pub(crate) fn sweep(&self, input: &SweepInput<'_>) -> Result<Sweep> {
        let txn = self.db.begin_write()?;
        let mut done = SweepDone::default();
        let live = purge_dead_sessions(&txn, &mut done)?;
        if !live.is_empty() {
            finish(txn, done.dead_sessions_removed)?;
            return Ok(Sweep::Busy(live));
        }
        let new = unknown_snapshots(&txn, input.known_snapshots)?;
        if !new.is_empty() {
            finish(txn, done.dead_sessions_removed)?;
            return Ok(Sweep::NewSnapshots(new));
        }
        drop_unused(&txn, input.garbage, &mut done)?;
        delete_packs(&txn, input, &mut done)?;
        txn.commit()?;
        Ok(Sweep::Done(done))
    }

    /// Every pack's row: pack -> (length, objects written).
    pub(crate) fn pack_rows(&self) -> Result<Vec<(u64, (u64, u64))>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(PACKS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value(), v.value()));
        }
        Ok(out)
    }

    /// Store verified copies of damaged objects in a new pack, their index rows moving to the
    /// copies, and replace damaged snapshot blobs, in one final commit; the packs that held
    /// the damaged copies are marked for the next prune to rewrite. It takes every copy.
    pub(crate) fn repair(
        &self,
        objects: &[crate::storage::ObjectCopy],
        snapshots: &[(Id, Vec<u8>)],
    ) -> Result<Vec<(Id, String)>> {
        let cfg = self.config()?;
        let view = self.view()?;
        let damaged_packs: HashSet<u64> = objects
            .iter()
            .filter_map(|o| view.locate(&o.id).ok().flatten().map(|l| l.pack))
            .collect();
        drop(view);
        let mut packer = super::Packer::relocating(self, cfg.piece_size, cfg.pack_max, 32 << 20);
        for o in objects {
            packer.add(o.id, o.kind, &o.sealed)?;
        }
        packer.commit(true, snapshots)?;
        self.mark_for_repack(&damaged_packs)?;
        Ok(Vec::new())
    }

    /// Mark packs that still hold damaged bytes of repaired objects, for the next prune to
    /// rewrite whatever their live share (`STATE` `repack.<pack>`): otherwise the damage stays
    /// in the file, and redb's page check fails, for as long as the pack is mostly live.
    pub(crate) fn mark_for_repack(&self, packs: &HashSet<u64>) -> Result<()> {
        if packs.is_empty() {
            return Ok(());
        }
        Error::guard(|| {
            let txn = self.db.begin_write()?;
            {
                let mut state = txn.open_table(STATE)?;
                for p in packs {
                    state.insert(format!("{REPACK}{p}").as_str(), [].as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// The packs `mark_for_repack` marked.
    pub fn marked_for_repack(&self) -> Result<HashSet<u64>> {
        Ok(self
            .state_with_prefix(REPACK)?
            .into_iter()
            .filter_map(|(pack, _)| pack.parse().ok())
            .collect())
    }

    /// Key-less storage verification: every indexed object's stored bytes against the checksum
    /// kept in its index row, and every piece each pack needs present with the right size.
    pub(crate) fn verify_storage(&self, piece_size: u32) -> Result<StorageReport> {
        Error::guard(|| self.verify_storage_unguarded(piece_size))
    }

    fn verify_storage_unguarded(&self, piece_size: u32) -> Result<StorageReport> {
        let txn = self.db.begin_read()?;
        let packs = txn.open_table(PACKS)?;
        let pieces = txn.open_table(PIECES)?;
        let mut report = StorageReport::default();
        let ps = piece_size as u64;
        for row in packs.iter()? {
            let (k, v) = row?;
            let (pack, len) = (k.value(), v.value().0);
            report.packs += 1;
            for n in 0..len.div_ceil(ps) as u32 {
                let want = (len - n as u64 * ps).min(ps) as usize;
                let got = Error::guard(|| Ok(pieces.get((pack, n))?.map(|b| b.value().len())));
                match got {
                    Err(Error::Db(m)) => report.problems.push(StorageProblem::Piece {
                        pack,
                        piece: n,
                        problem: format!("the database page holding it is damaged ({m})"),
                    }),
                    Err(e) => return Err(e),
                    Ok(None) => report.problems.push(StorageProblem::Piece {
                        pack,
                        piece: n,
                        problem: "missing".into(),
                    }),
                    Ok(Some(have)) if have < want => report.problems.push(StorageProblem::Piece {
                        pack,
                        piece: n,
                        problem: format!("truncated: {have} of {want} bytes"),
                    }),
                    Ok(Some(_)) => {}
                }
            }
        }
        drop((packs, pieces, txn));
        let view = self.view()?;
        view.for_each_object(|id, loc| {
            report.objects += 1;
            report.bytes += loc.len as u64;
            if let Some(problem) = storage_problem(&view, &id, &loc, piece_size)? {
                report.problems.push(StorageProblem::Object { id, problem });
            }
            Ok(())
        })?;
        Ok(report)
    }

    /// redb's own page checksums. Needs no transaction open on this handle; in multi-process
    /// mode it holds the writer lock while it runs. `Ok(false)`: redb found damage and repaired
    /// its structures (data in damaged pages may be gone: run a full check).
    pub(crate) fn check_db_integrity(&mut self) -> Result<bool> {
        Error::guard(|| self.db.check_integrity())
    }
}

/// Remove the sessions of dead processes; describe the live ones.
fn purge_dead_sessions(txn: &redb::WriteTransaction, done: &mut SweepDone) -> Result<Vec<String>> {
    let mut sessions = txn.open_table(SESSIONS)?;
    let mut live = Vec::new();
    let mut dead = Vec::new();
    for row in sessions.iter()? {
        let (k, v) = row?;
        if crate::util::session_alive(v.value()) {
            live.push(describe_session(v.value()));
        } else {
            dead.push(k.value());
        }
    }
    for k in dead {
        sessions.remove(k)?;
        done.dead_sessions_removed += 1;
    }
    Ok(live)
}

/// Snapshots committed since their references were marked.
fn unknown_snapshots(txn: &redb::WriteTransaction, known: &HashSet<Id>) -> Result<Vec<Id>> {
    let snaps = txn.open_table(SNAPSHOTS)?;
    let mut new = Vec::new();
    for row in snaps.iter()? {
        let id = Id(row?.0.value());
        if !known.contains(&id) {
            new.push(id);
        }
    }
    Ok(new)
}

/// Drop the index rows of unused objects that are still where the plan saw them.
fn drop_unused(
    txn: &redb::WriteTransaction,
    garbage: &[(Id, Location)],
    done: &mut SweepDone,
) -> Result<()> {
    let mut index = txn.open_table(INDEX)?;
    for (id, loc) in garbage {
        let same = index
            .get(id.0)?
            .map(|v| v.value())
            .is_some_and(|v| v.0 == loc.pack && v.1 == loc.offset);
        if same {
            index.remove(id.0)?;
            done.objects_dropped += 1;
            done.bytes_dropped += loc.len as u64;
        }
    }
    Ok(())
}

/// Delete candidate packs whose row is unchanged and that no index row points into.
fn delete_packs(
    txn: &redb::WriteTransaction,
    input: &SweepInput<'_>,
    done: &mut SweepDone,
) -> Result<()> {
    let index = txn.open_table(INDEX)?;
    let mut packs = txn.open_table(PACKS)?;
    let mut pieces = txn.open_table(PIECES)?;
    for c in input.packs {
        let unchanged = packs.get(c.pack)?.map(|v| v.value()) == Some(c.row);
        let mut holds_live = false;
        for id in &c.objects {
            holds_live |= index.get(id.0)?.is_some_and(|v| v.value().0 == c.pack);
        }
        if !unchanged || holds_live {
            done.packs_kept += 1;
            continue;
        }
        let count = c.row.0.div_ceil(input.piece_size as u64) as u32;
        let mut n = 0u32;
        while n < count || pieces.get((c.pack, n))?.is_some() {
            pieces.remove((c.pack, n))?;
            n += 1;
        }
        packs.remove(c.pack)?;
        txn.open_table(STATE)?
            .remove(format!("{REPACK}{}", c.pack).as_str())?;
        done.packs_deleted += 1;
        done.pack_bytes_deleted += c.row.0;
    }
    Ok(())
}

/// End a sweep that deletes nothing: commit only if dead sessions were removed (no empty
/// commit every poll while waiting).
fn finish(txn: redb::WriteTransaction, removed: u64) -> Result<()> {
    if removed > 0 {
        txn.commit()?;
    } else {
        txn.abort()?;
    }
    Ok(())
}

fn storage_problem(
    view: &super::store::View,
    id: &Id,
    loc: &Location,
    piece_size: u32,
) -> Result<Option<String>> {
    match view.read_sealed(id, loc, piece_size) {
        Ok(sealed) if checksum(&sealed) == loc.check => Ok(None),
        Ok(_) => Ok(Some(
            "stored bytes do not match their checksum (disk damage)".into(),
        )),
        Err(Error::Corrupt { reason, .. }) => Ok(Some(reason)),
        Err(e) => Err(e),
    }
}

#[derive(Clone, Debug)]
pub enum StorageProblem {
    Object {
        id: Id,
        problem: String,
    },
    Piece {
        pack: u64,
        piece: u32,
        problem: String,
    },
}

#[derive(Clone, Debug, Default)]
pub struct StorageReport {
    pub packs: u64,
    pub objects: u64,
    pub bytes: u64,
    pub problems: Vec<StorageProblem>,
    /// `Some(false)`: redb's integrity check found and repaired damage; `None`: not run.
    pub db_intact: Option<bool>,
    /// Packs holding damaged old copies of repaired objects, which the next prune rewrites.
    pub marked_for_repack: u64,
}

impl Store {
    /// Compact the database file so freed pages go back to the file system. redb needs the file to
    /// itself for this: it is opened exclusively, and if another process (a backup, a mount, a
    /// sync) has it open this fails with [`Error::Locked`].
    pub fn compact(dir: &Path) -> Result<bool> {
        let file = dir.join(super::store::DB_FILE);
        let mut db = redb::Builder::new().open(&file).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::Locked {
                path: dir.to_path_buf(),
                reason:
                    "compaction needs exclusive access and another process has the repository open"
                        .into(),
            },
            other => other.into(),
        })?;
        db.compact().map_err(|e| match e {
            redb::CompactionError::TransactionInProgress => Error::Locked {
                path: dir.to_path_buf(),
                reason: "compaction needs exclusive access and a transaction is in progress".into(),
            },
            other => Error::Db(other.to_string()),
        })
    }
}
