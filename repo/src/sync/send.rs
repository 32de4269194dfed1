//! Sending: read sealed objects from the primary verbatim (verifying their stored checksum)
//! and hand them to the target in batches, children before parents, at a capped rate.

use super::plan::Plan;
use super::proto::{Request, Response, WireObject, MAX_FRAME};
use super::remote::unexpected;
use super::{count, SyncOptions, SyncProgress, SyncReport, Target};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::Repository;
use crate::store::{checksum, Location, View};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Keeps the average send rate under a cap.
pub struct Throttle {
    rate: Option<u64>,
    start: Instant,
    sent: u64,
}

impl Throttle {
    pub fn new(rate: Option<u64>) -> Throttle {
        Throttle { rate: rate.filter(|r| *r > 0), start: Instant::now(), sent: 0 }
    }

    /// Account for `n` bytes just sent; sleep until the average is back under the cap.
    pub fn pace(&mut self, n: u64) {
        self.sent += n;
        let Some(rate) = self.rate else { return };
        let due = Duration::from_secs_f64(self.sent as f64 / rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

/// Bytes per request: smaller under a low rate cap, so pacing stays smooth.
fn batch_bytes(opts: &SyncOptions) -> usize {
    let b = opts.batch_bytes.clamp(64 << 10, MAX_FRAME / 2);
    match opts.limit_rate {
        Some(r) if r > 0 => b.min((r / 4).max(64 << 10) as usize),
        _ => b,
    }
}

/// Locations of the chunks, sorted by where they lie in the primary (sequential reads).
fn by_location(view: &View, ids: &[Id]) -> Result<Vec<(Id, Location)>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push((*id, locate(view, id)?));
    }
    out.sort_by_key(|(_, l)| (l.pack, l.offset));
    Ok(out)
}

fn locate(view: &View, id: &Id) -> Result<Location> {
    view.locate(id)?.ok_or_else(|| Error::Missing(id.to_hex()))
}

pub fn send_objects(
    repo: &Repository,
    view: &View,
    target: &mut dyn Target,
    plan: &Plan,
    opts: &SyncOptions,
    progress: &SyncProgress,
    report: &mut SyncReport,
) -> Result<()> {
    progress.total_objects.fetch_add(plan.objects() as u64, Ordering::Relaxed);
    let mut order = by_location(view, &plan.chunks)?;
    for id in plan.lists.iter().chain(&plan.trees) {
        order.push((*id, locate(view, id)?));
    }
    let total: u64 = order.iter().map(|(_, l)| l.len as u64).sum();
    progress.total_bytes.fetch_add(total, Ordering::Relaxed);
    let limit = batch_bytes(opts);
    let mut throttle = Throttle::new(opts.limit_rate);
    let mut batch: Vec<WireObject> = Vec::new();
    let mut batch_len = 0usize;
    let piece = repo.config().piece_size;
    for (id, loc) in order {
        let sealed = view.read_sealed(&id, &loc, piece)?;
        if checksum(&sealed) != loc.check {
            return Err(Error::corrupt(id, "stored bytes do not match their checksum; not sending a damaged object"));
        }
        if batch_len + sealed.len() > limit && !batch.is_empty() {
            put(target, std::mem::take(&mut batch), progress, report, &mut throttle)?;
            batch_len = 0;
        }
        batch_len += sealed.len();
        batch.push(WireObject { id, kind: loc.kind as u8, check: loc.check, sealed });
    }
    if !batch.is_empty() {
        put(target, batch, progress, report, &mut throttle)?;
    }
    Ok(())
}

fn put(
    target: &mut dyn Target,
    batch: Vec<WireObject>,
    progress: &SyncProgress,
    report: &mut SyncReport,
    throttle: &mut Throttle,
) -> Result<()> {
    let (n, bytes) = (batch.len() as u64, batch.iter().map(|o| o.sealed.len() as u64).sum::<u64>());
    match target.call(Request::PutObjects(batch))? {
        Response::Stored { objects, .. } if objects == n => {}
        Response::Stored { objects, .. } => {
            return Err(super::proto::protocol_error(format!("sent {n} objects, the target stored {objects}")))
        }
        other => return Err(unexpected(&other)),
    }
    report.round_trips += 1;
    count(progress, report, n, bytes);
    throttle.pace(bytes);
    Ok(())
}
