//! Sessions and garbage collection on S3, without conditional writes and without trusting
//! clocks (DESIGN.md §10).
//!
//! A writer stores `sessions/<n>` and then lists `gc/`; a collection stores `gc/<n>` and then
//! lists `sessions/`. S3 is read-after-write consistent (AWS, Garage's quorum reads), so of a
//! writer and a collection that start together at least one sees the other: the writer waits
//! for the collection to end, or the collection waits for the writer. Both records are kept
//! alive by a heartbeat (rewritten every `BEAT`); one whose bytes have not changed for
//! `STALE`, measured on the observer's own clock, belongs to a process that died (on the
//! same host a dead process is seen at once). Nothing compares two machines' clocks.
//!
//! Deleting, in an order that never makes a live object invisible: repacked objects go into
//! new packs with their own index objects; then one merged index object of every live object
//! is stored; then the old index objects are deleted; then the packs nothing names any more.

use super::index::{self, Index};
use super::writer::{index_name, S3Writer};
use super::Shared;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::prune::{Mark, PruneOptions, PruneReport};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How often a live record is rewritten.
const BEAT: Duration = Duration::from_secs(30);
/// How long a record may stay unchanged before it counts as dead.
const STALE: Duration = Duration::from_secs(300);
/// How long a writer waits for a collection that is running.
const WRITER_WAIT: Duration = Duration::from_secs(3600);

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    info: Vec<u8>,
    beat: u64,
}

/// The records this process keeps alive: a thread rewrites each every `BEAT`.
pub struct Heartbeat {
    live: Arc<Mutex<HashMap<String, Record>>>,
}

impl Heartbeat {
    pub(super) fn start(shared: &Arc<Shared>) -> Heartbeat {
        let live: Arc<Mutex<HashMap<String, Record>>> = Arc::default();
        let (weak_live, weak_shared): (Weak<_>, Weak<Shared>) =
            (Arc::downgrade(&live), Arc::downgrade(shared));
        let _ = std::thread::Builder::new()
            .name("cairn-s3-beat".into())
            .spawn(move || beat_loop(weak_live, weak_shared));
        Heartbeat { live }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Store the record `name` and keep it alive.
    fn keep(&self, shared: &Shared, name: &str, info: &[u8]) -> Result<()> {
        let rec = Record {
            info: info.to_vec(),
            beat: 0,
        };
        shared.client.put(name, encode(&rec))?;
        self.lock().insert(name.to_string(), rec);
        Ok(())
    }

    pub fn stop(&self, name: &str) {
        self.lock().remove(name);
    }
}

fn encode(r: &Record) -> Vec<u8> {
    postcard::to_stdvec(r).unwrap_or_default()
}

fn beat_loop(live: Weak<Mutex<HashMap<String, Record>>>, shared: Weak<Shared>) {
    let mut last = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let (Some(live), Some(shared)) = (live.upgrade(), shared.upgrade()) else {
            return;
        };
        if last.elapsed() < BEAT {
            continue;
        }
        last = Instant::now();
        let due: Vec<(String, Vec<u8>)> = {
            let mut map = live.lock().unwrap_or_else(|e| e.into_inner());
            map.iter_mut()
                .map(|(name, rec)| {
                    rec.beat += 1;
                    (name.clone(), encode(rec))
                })
                .collect()
        };
        for (name, bytes) in due {
            // Still ours? (`stop` may have run meanwhile: never bring a record back.)
            if live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&name)
            {
                let _ = shared.client.put(&name, bytes);
            }
        }
    }
}

pub fn session_name(id: u64) -> String {
    format!("sessions/{id:016x}")
}

/// Tells live records from dead ones by watching whether their bytes change.
#[derive(Default)]
struct Watch {
    seen: HashMap<String, (Vec<u8>, Instant)>,
}

impl Watch {
    /// The records under `dir` (but `ours`) that are alive; dead ones are deleted and counted.
    fn live(
        &mut self,
        shared: &Shared,
        dir: &str,
        ours: Option<&str>,
        dead: &mut u64,
    ) -> Result<Vec<String>> {
        let mut alive = Vec::new();
        for l in shared.client.list(dir)? {
            if Some(l.name.as_str()) == ours {
                continue;
            }
            let Some(bytes) = shared.client.get(&l.name)? else {
                continue;
            };
            let info = postcard::from_bytes::<Record>(&bytes)
                .map(|r| r.info)
                .unwrap_or_default();
            let now = Instant::now();
            let since = match self.seen.get(&l.name) {
                Some((old, at)) if *old == bytes => *at,
                _ => now,
            };
            self.seen.insert(l.name.clone(), (bytes, since));
            // `session_alive` is false only for a process known dead (same host) or an unreadable record.
            let gone_here = !crate::util::session_alive(&info);
            if gone_here || since.elapsed() >= STALE {
                shared.client.delete(&l.name)?;
                *dead += 1;
            } else {
                alive.push(l.name);
            }
        }
        Ok(alive)
    }
}

pub(super) fn begin_session(shared: &Shared, beats: &Heartbeat, info: &[u8]) -> Result<u64> {
    let id = rand::random::<u64>() >> 1;
    let name = session_name(id);
    beats.keep(shared, &name, info)?;
    let started = Instant::now();
    let mut watch = Watch::default();
    loop {
        let running = watch.live(shared, "gc/", None, &mut 0)?;
        if running.is_empty() {
            return Ok(id);
        }
        if started.elapsed() >= WRITER_WAIT {
            beats.stop(&name);
            let _ = shared.client.delete(&name);
            return Err(Error::Locked {
                path: shared.client.url.clone().into(),
                reason: "a prune is collecting garbage in it".into(),
            });
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

pub(super) fn sessions(shared: &Shared) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    for l in shared.client.list("sessions/")? {
        let Some(n) = super::hex_number(&l.name, "sessions/") else {
            continue;
        };
        if let Some(bytes) = shared.client.get(&l.name)? {
            let info = postcard::from_bytes::<Record>(&bytes)
                .map(|r| r.info)
                .unwrap_or_default();
            out.push((n, info));
        }
    }
    Ok(out)
}

/// Removes the collection's record when the collection ends, however it ends.
struct Running<'a> {
    shared: &'a Shared,
    beats: &'a Heartbeat,
    name: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.beats.stop(&self.name);
        let _ = self.shared.client.delete(&self.name);
    }
}

pub(super) fn collect(
    shared: &Arc<Shared>,
    beats: &Heartbeat,
    marker: &mut dyn Mark,
    opts: &PruneOptions,
    notify: &dyn Fn(&str),
) -> Result<PruneReport> {
    if !(0.0..=1.0).contains(&opts.repack_below) {
        return Err(Error::Usage(
            "the repack threshold is a share between 0 and 1".into(),
        ));
    }
    let started = Instant::now();
    let mut report = PruneReport::default();
    let _running = match opts.dry_run {
        true => None,
        false => Some(wait_for_writers(shared, beats, opts, notify, &mut report)?),
    };
    report.waited = started.elapsed();
    let (live, index) = mark_stable(shared, marker)?;
    let plan = Plan::new(shared, &index, &live, opts.repack_below)?;
    plan.summarize(&index, &live, &mut report);
    if opts.dry_run {
        return Ok(report);
    }
    let fresh = repack(shared, &index, &live, &plan, &mut report)?;
    replace_index(shared, &index, &fresh, &live)?;
    for pack in plan.delete.iter().chain(&plan.repack) {
        shared.client.delete(&format!("packs/{pack}"))?;
        report.packs_deleted += 1;
        report.pack_bytes_deleted += plan.sizes.get(pack).copied().unwrap_or(0);
    }
    for pack in &plan.orphans {
        shared.client.delete(&format!("packs/{pack}"))?;
    }
    report.objects_dropped = report.plan.objects_unused;
    report.bytes_dropped = report.plan.bytes_unused;
    Ok(report)
}

/// Store this collection's record, then wait until no writer is live and no other
/// collection runs.
fn wait_for_writers<'a>(
    shared: &'a Shared,
    beats: &'a Heartbeat,
    opts: &PruneOptions,
    notify: &dyn Fn(&str),
    report: &mut PruneReport,
) -> Result<Running<'a>> {
    let name = format!("gc/{:016x}", rand::random::<u64>() >> 1);
    let started = Instant::now();
    let mut watch = Watch::default();
    loop {
        beats.keep(shared, &name, &crate::util::session_info())?;
        let running = Running {
            shared,
            beats,
            name: name.clone(),
        };
        let others = watch.live(
            shared,
            "gc/",
            Some(&name),
            &mut report.dead_sessions_removed,
        )?;
        let writers = watch.live(shared, "sessions/", None, &mut report.dead_sessions_removed)?;
        if others.is_empty() && writers.is_empty() {
            return Ok(running);
        }
        // Step back while another collection runs (two that see each other both step back,
        // then try again at random times), and while writers run.
        drop(running);
        if started.elapsed() >= opts.wait {
            return Err(Error::Locked {
                path: shared.client.url.clone().into(),
                reason: format!(
                    "{} backups or syncs and {} prunes still running",
                    writers.len(),
                    others.len()
                ),
            });
        }
        notify(&format!(
            "waiting for {} running backups or syncs and {} prunes",
            writers.len(),
            others.len()
        ));
        let jitter = Duration::from_millis(rand::random::<u64>() % 1000);
        std::thread::sleep(opts.poll + jitter);
    }
}

/// Mark from the snapshots, until the snapshots did not change while marking (a forget may
/// remove some; no writer adds any while the collection's record stands).
fn mark_stable(shared: &Shared, marker: &mut dyn Mark) -> Result<(HashSet<Id>, Index)> {
    loop {
        let before = snapshot_ids(shared)?;
        let live = marker.mark(&before)?;
        let index = full_index(shared)?;
        if snapshot_ids(shared)? == before {
            return Ok((live, index));
        }
    }
}

fn snapshot_ids(shared: &Shared) -> Result<Vec<Id>> {
    let mut ids: Vec<Id> = shared
        .client
        .list("snapshots/")?
        .iter()
        .filter_map(|l| l.name.strip_prefix("snapshots/").and_then(Id::from_hex))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Every index object as stored now, loaded afresh.
fn full_index(shared: &Shared) -> Result<Index> {
    let mut index = Index::default();
    for l in shared.client.list("index/")? {
        let bytes = shared.cached_get(&l)?;
        index.add_file(&l.name, &bytes)?;
    }
    Ok(index)
}

/// What the collection deletes and copies, by pack name.
struct Plan {
    sizes: HashMap<String, u64>,
    live_bytes: HashMap<String, u64>,
    delete: Vec<String>,
    repack: Vec<String>,
    /// Packs no index object names: left by writers that died before their index.
    orphans: Vec<String>,
}

impl Plan {
    fn new(shared: &Shared, index: &Index, live: &HashSet<Id>, repack_below: f64) -> Result<Plan> {
        let sizes: HashMap<String, u64> = shared
            .client
            .list("packs/")?
            .into_iter()
            .filter_map(|l| Some((l.name.strip_prefix("packs/")?.to_string(), l.size)))
            .collect();
        let mut live_bytes: HashMap<String, u64> = HashMap::new();
        for (id, f) in index.iter() {
            let e = live_bytes.entry(f.pack.to_string()).or_default();
            if live.contains(&id) {
                *e += f.loc.len as u64;
            }
        }
        let (mut delete, mut repack, mut orphans) = (Vec::new(), Vec::new(), Vec::new());
        for (pack, size) in &sizes {
            match live_bytes.get(pack) {
                None => orphans.push(pack.clone()),
                Some(0) => delete.push(pack.clone()),
                Some(l) if (*l as f64) < repack_below * *size as f64 => repack.push(pack.clone()),
                Some(_) => {}
            }
        }
        Ok(Plan {
            sizes,
            live_bytes,
            delete,
            repack,
            orphans,
        })
    }

    fn summarize(&self, index: &Index, live: &HashSet<Id>, report: &mut PruneReport) {
        let p = &mut report.plan;
        p.objects_total = index.len() as u64;
        for (id, f) in index.iter() {
            if !live.contains(&id) {
                p.objects_unused += 1;
                p.bytes_unused += f.loc.len as u64;
            }
        }
        p.packs_total = self.sizes.len() as u64;
        p.packs_delete = (self.delete.len() + self.orphans.len()) as u64;
        p.packs_repack = self.repack.len() as u64;
        p.bytes_repack = self.repack.iter().map(|k| self.live_bytes[k]).sum();
        let gone: u64 = self
            .delete
            .iter()
            .chain(&self.repack)
            .chain(&self.orphans)
            .map(|k| self.sizes[k])
            .sum();
        p.bytes_freed = gone.saturating_sub(p.bytes_repack);
    }
}

/// Copy the live objects of the packs to repack into new packs; returns the index objects
/// the copies are named in.
fn repack(
    shared: &Arc<Shared>,
    index: &Index,
    live: &HashSet<Id>,
    plan: &Plan,
    report: &mut PruneReport,
) -> Result<Index> {
    if plan.repack.is_empty() {
        return Ok(Index::default());
    }
    let packs: HashSet<&str> = plan.repack.iter().map(String::as_str).collect();
    let ids: Vec<Id> = index
        .iter()
        .filter(|(_, f)| packs.contains(f.pack))
        .map(|(id, _)| id)
        .collect();
    let reader = super::S3Reader {
        shared: shared.clone(),
        index: Mutex::new(Arc::new(index.clone())),
    };
    let mut writer = S3Writer::new(shared, 32 << 20);
    let live_ids: Vec<Id> = ids.into_iter().filter(|id| live.contains(id)).collect();
    crate::storage::Reader::read_many(&reader, &live_ids, &mut |id, got| {
        let (kind, bytes) = got?;
        report.objects_repacked += 1;
        report.bytes_repacked += bytes.len() as u64;
        crate::storage::Writer::add(&mut writer, id, kind, &bytes)
    })?;
    written_index(shared, writer)
}

/// Store what `writer` holds; returns the index of what it stored.
fn written_index(shared: &Shared, mut writer: S3Writer<'_>) -> Result<Index> {
    crate::storage::Writer::checkpoint(&mut writer)?;
    let mut fresh = Index::default();
    for name in &writer.written {
        let bytes = shared
            .client
            .get(name)?
            .ok_or_else(|| Error::Missing(format!("{name} in {}", shared.client.url)))?;
        fresh.add_file(name, &bytes)?;
    }
    Ok(fresh)
}

/// `Storage::repair` on S3. Like a collection (it waits for writers and other collections
/// first), it stores the copies in new packs, then one merged index object naming the
/// copies and every other object as before, then deletes the old index objects. Nothing
/// names the damaged copies after that; the next collection gives their bytes back.
pub(super) fn repair(
    shared: &Arc<Shared>,
    beats: &Heartbeat,
    objects: &[crate::storage::ObjectCopy],
    snapshots: &[(Id, Vec<u8>)],
) -> Result<()> {
    // Running backups end within minutes; past ten the repair gives up (`Locked`) and says
    // so, rather than wait an hour in silence.
    let opts = PruneOptions {
        wait: Duration::from_secs(600),
        ..PruneOptions::default()
    };
    let _running = wait_for_writers(shared, beats, &opts, &|_| {}, &mut PruneReport::default())?;
    if !objects.is_empty() {
        let index = full_index(shared)?;
        let mut writer = S3Writer::new(shared, 32 << 20);
        for o in objects {
            crate::storage::Writer::add(&mut writer, o.id, o.kind, &o.sealed)?;
        }
        let fresh = written_index(shared, writer)?;
        let every: HashSet<Id> = index.iter().map(|(id, _)| id).collect();
        replace_index(shared, &index, &fresh, &every)?;
    }
    for (id, blob) in snapshots {
        shared.client.put(&super::snapshot_name(id), blob.clone())?;
    }
    Ok(())
}

/// One merged index object of every live object (copies from `fresh` first), then the old
/// index objects go.
fn replace_index(shared: &Shared, old: &Index, fresh: &Index, live: &HashSet<Id>) -> Result<()> {
    let rest = old
        .iter()
        .filter(|(id, _)| live.contains(id) && !fresh.contains(id));
    let name = index_name();
    shared
        .client
        .put(&name, index::encode_found(fresh.iter().chain(rest)))?;
    for f in old.files().chain(fresh.files()) {
        shared.client.delete(f)?;
    }
    Ok(())
}
