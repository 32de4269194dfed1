//! Sending: read sealed objects from the primary verbatim (verifying their stored checksum)
//! and hand them to the target in batches, children before parents, at a capped rate.

use super::plan::Plan;
use super::proto::{Request, Response, WireObject, MAX_FRAME};
use super::remote::unexpected;
use super::{count, SyncOptions, SyncProgress, SyncReport, Target};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::storage::{checksum, ObjectInfo, Reader};
use std::collections::VecDeque;
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
        Throttle {
            rate: rate.filter(|r| *r > 0),
            start: Instant::now(),
            sent: 0,
        }
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

/// `PutObjects` requests in flight at once: the receiver commits one batch while the next
/// travels. Replies are small, so a window this size cannot fill a pipe and deadlock.
pub const WINDOW: usize = 2;

/// The order objects leave in: chunks as the primary reads them fastest, then lists, then
/// trees (children before parents).
fn sending_order(view: &dyn Reader, plan: &Plan) -> Result<Vec<(Id, ObjectInfo)>> {
    let mut order = view.in_read_order(&plan.chunks)?;
    let rest: Vec<Id> = plan.lists.iter().chain(&plan.trees).copied().collect();
    for id in rest {
        let info = view.info(&id)?.ok_or_else(|| Error::Missing(id.to_hex()))?;
        order.push((id, info));
    }
    Ok(order)
}

/// Sealed bytes read ahead at most (one `read_many`: from a remote primary one round trip for
/// many objects, not one each).
const READ_AHEAD_BYTES: u64 = 16 << 20;

/// Read the objects of `order` in groups of about `READ_AHEAD_BYTES`, each checked against
/// its stored checksum, handing them to `each` in order.
fn read_in_groups(
    view: &dyn Reader,
    order: &[(Id, ObjectInfo)],
    mut each: impl FnMut(WireObject) -> Result<()>,
) -> Result<()> {
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        let mut bytes = 0u64;
        while end < order.len()
            && (end == start || bytes + order[end].1.len as u64 <= READ_AHEAD_BYTES)
        {
            bytes += order[end].1.len as u64;
            end += 1;
        }
        let group = &order[start..end];
        let ids: Vec<Id> = group.iter().map(|(id, _)| *id).collect();
        let mut got = Vec::with_capacity(group.len());
        view.read_many(&ids, &mut |id, read| {
            got.push((id, read));
            Ok(())
        })?;
        for ((id, info), (read_id, read)) in group.iter().zip(got) {
            if read_id != *id {
                return Err(Error::Internal(format!("read {read_id} for {id}")));
            }
            each(verified(*id, info, read?)?)?;
        }
        start = end;
    }
    Ok(())
}

fn verified(
    id: Id,
    info: &ObjectInfo,
    (kind, sealed): (crate::crypto::Kind, Vec<u8>),
) -> Result<WireObject> {
    if checksum(&sealed) != info.check || kind != info.kind {
        return Err(Error::corrupt(
            id,
            "stored bytes do not match their checksum; not sending a damaged object",
        ));
    }
    Ok(WireObject {
        id,
        kind: info.kind as u8,
        check: info.check,
        sealed,
    })
}

pub fn send_objects(
    view: &dyn Reader,
    target: &mut dyn Target,
    plan: &Plan,
    opts: &SyncOptions,
    progress: &SyncProgress,
    report: &mut SyncReport,
) -> Result<()> {
    let order = sending_order(view, plan)?;
    progress
        .total_objects
        .fetch_add(order.len() as u64, Ordering::Relaxed);
    progress.total_bytes.fetch_add(
        order.iter().map(|(_, l)| l.len as u64).sum(),
        Ordering::Relaxed,
    );
    let limit = batch_bytes(opts);
    let mut out = Outbox {
        target,
        progress,
        report,
        throttle: Throttle::new(opts.limit_rate),
        inflight: VecDeque::new(),
    };
    let mut batch: Vec<WireObject> = Vec::new();
    let mut batch_len = 0usize;
    read_in_groups(view, &order, |o| {
        if batch_len + o.sealed.len() > limit && !batch.is_empty() {
            out.put(std::mem::take(&mut batch))?;
            batch_len = 0;
        }
        batch_len += o.sealed.len();
        batch.push(o);
        Ok(())
    })?;
    if !batch.is_empty() {
        out.put(batch)?;
    }
    out.drain(0)
}

/// Sends batches, keeping up to `WINDOW` unanswered.
struct Outbox<'a, 't> {
    target: &'t mut dyn Target,
    progress: &'a SyncProgress,
    report: &'a mut SyncReport,
    throttle: Throttle,
    /// (objects, bytes) of each request not answered yet, oldest first.
    inflight: VecDeque<(u64, u64)>,
}

impl Outbox<'_, '_> {
    fn put(&mut self, batch: Vec<WireObject>) -> Result<()> {
        let sent = (
            batch.len() as u64,
            batch.iter().map(|o| o.sealed.len() as u64).sum::<u64>(),
        );
        match self.target.send(Request::PutObjects(batch))? {
            Some(resp) => self.acknowledge(sent, resp)?,
            None => self.inflight.push_back(sent),
        }
        self.throttle.pace(sent.1);
        self.drain(WINDOW - 1)
    }

    /// Collect replies until at most `keep` requests are unanswered.
    fn drain(&mut self, keep: usize) -> Result<()> {
        while self.inflight.len() > keep {
            let resp = self.target.recv()?;
            let sent = self.inflight.pop_front().unwrap_or_default();
            self.acknowledge(sent, resp)?;
        }
        Ok(())
    }

    fn acknowledge(&mut self, (n, bytes): (u64, u64), resp: Response) -> Result<()> {
        match resp {
            Response::Stored { objects, .. } if objects == n => {}
            Response::Stored { objects, .. } => {
                return Err(super::proto::protocol_error(format!(
                    "sent {n} objects, the target stored {objects}"
                )))
            }
            other => return Err(unexpected(&other)),
        }
        self.report.round_trips += 1;
        count(self.progress, self.report, n, bytes);
        Ok(())
    }
}
