//! The server side of the store protocol (DESIGN.md §9, "The remote store"): `cairn serve`
//! answers a store client's requests from a `&dyn Storage`, without any key. The client is
//! `storage::remote`.
//!
//! One connection is one session of requests, answered in order. Per connection the server
//! keeps at most one writer (when the connection ends, what it received whole is stored
//! without a snapshot, so the client's next backup reuses it) and the sessions it began, which it ends with the connection.

use super::rights::{self, Rights};
use super::{ObjectCopy, ObjectInfo, Quota, Storage, Writer, WriterOptions};
use crate::crypto::{KeySlot, MAX_KEY_SLOTS};
use crate::error::{Error, Result};
use crate::format::Config;
use crate::id::Id;
use crate::storage::redb::{Store, DEFAULT_DB_CACHE};
use crate::sync::proto::{self, ReadAnswer, Request, Response, WireError, WireInfo, WireObject};
use crate::sync::serve::{Policy, QUOTA_KEY};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

/// Largest writer batch a client may ask for (what the writer buffers before storing).
const MAX_BATCH_BYTES: u64 = 256 << 20;

/// The first message of a store client: magic, version, config to create from.
pub(crate) type OpenStore = ([u8; 8], u32, Option<Vec<u8>>);

/// Serve a store client whose `OpenStore` has been read: open the repository at `dir` (or
/// create it from the config sent, as `Repository::init` does locally), then answer requests
/// until the client closes the connection.
pub(crate) fn serve_dir<R: Read, W: Write>(
    dir: &Path,
    policy: &Policy,
    (magic, version, create): OpenStore,
    r: &mut R,
    w: &mut W,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let opened = check_hello(&magic, version)
        .and_then(|_| may_create(policy.rights, create.is_some(), dir))
        .and_then(|_| match &create {
            None => Store::open(dir, DEFAULT_DB_CACHE),
            Some(config) => {
                Config::decode(config)?;
                Store::create(dir, &[("config", config.clone())])
            }
        });
    let store = match opened {
        Ok(s) => s,
        Err(e) => {
            log(&e.to_string());
            let _ = proto::write_msg(w, &Response::Failed(WireError::of(&e)));
            return Err(e);
        }
    };
    if create.is_some() {
        log("created the repository for a store client");
    }
    proto::write_msg(w, &opened_reply(version, policy.rights))?;
    policy.record_quota(&store, log);
    let quota = policy.quota.map(|bytes| Quota::new(&store, bytes));
    let served: &dyn Storage = match &quota {
        Some(q) => q,
        None => &store,
    };
    match serve_storage(served, policy.rights, r, w, log)? {
        Served::Closed => Ok(()),
        Served::Compact => {
            drop(store);
            compact(dir, w, log)
        }
    }
}

/// How long a compaction waits for other processes to close the repository (a client's
/// other connections, closed as it asks, take a moment to end their `cairn serve`).
const COMPACT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `Request::Compact`, with this process's store closed: compact the repository file, then
/// answer with its length after it; the connection ends.
fn compact<W: Write>(dir: &Path, w: &mut W, log: &mut dyn FnMut(&str)) -> Result<()> {
    let deadline = std::time::Instant::now() + COMPACT_WAIT;
    let compacted = loop {
        match Store::compact(dir) {
            Err(Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            other => break other,
        }
    };
    let answer = compacted.map(|changed| Response::Compacted {
        changed,
        file_len: Store::file_bytes(dir).unwrap_or(0),
    });
    let resp = match answer {
        Ok(r) => {
            log("compacted the repository file for a client");
            r
        }
        Err(e) => {
            log(&e.to_string());
            Response::Failed(WireError::of(&e))
        }
    };
    proto::write_msg(w, &resp)
}

/// Creating the repository is adding to it: it needs `backup`.
fn may_create(granted: Rights, create: bool, dir: &Path) -> Result<()> {
    let req = Request::OpenStore {
        magic: proto::MAGIC,
        version: proto::VERSION,
        create: create.then(Vec::new),
    };
    granted.allow(rights::needed(&req), &dir.display().to_string())
}

/// The answer to `OpenStore`, in the client's version: from 4 on with the client's rights,
/// before only whether it may delete nothing.
fn opened_reply(version: u32, rights: Rights) -> Response {
    if version >= 4 {
        Response::StoreOpenedWith { version, rights }
    } else {
        Response::StoreOpened {
            version,
            append_only: rights.append_only(),
        }
    }
}

fn check_hello(magic: &[u8; 8], version: u32) -> Result<()> {
    if magic != &proto::MAGIC {
        return Err(proto::protocol_error("the peer is not a cairn client"));
    }
    if !(proto::STORE_VERSION..=proto::VERSION).contains(&version) {
        return Err(proto::protocol_error(format!(
            "store protocol version {version} is not supported here (this cairn serves stores in {} to {}); use the same cairn version on both sides",
            proto::STORE_VERSION,
            proto::VERSION
        )));
    }
    Ok(())
}

/// How a store connection ended.
enum Served {
    /// The client closed it, or said goodbye.
    Closed,
    /// The client asked for `Request::Compact` (and may): the caller closes the store,
    /// compacts and answers.
    Compact,
}

/// Answer store requests from `store` until the client closes the connection (after its
/// `OpenStore` was answered) or asks for a compaction. A request that fails is answered with
/// `Response::Failed` and logged; a message that does not decode ends the connection.
fn serve_storage<R: Read, W: Write>(
    store: &dyn Storage,
    rights: Rights,
    r: &mut R,
    w: &mut W,
    log: &mut dyn FnMut(&str),
) -> Result<Served> {
    let mut r = BufReader::new(r);
    let mut w = BufWriter::new(w);
    let mut conn = Connection {
        store,
        rights,
        writer: None,
        writer_failed: None,
        sessions: Vec::new(),
    };
    loop {
        let req: Request = match proto::read_frame(&mut r) {
            Ok(Some(body)) => match proto::decode(&body) {
                Ok(req) => req,
                Err(e) => return Err(fail(&mut w, e, log)),
            },
            Ok(None) => return Ok(Served::Closed),
            Err(e) => return Err(fail(&mut w, e, log)),
        };
        if let Err(e) = conn.allowed(&req) {
            log(&e.to_string());
            proto::write_msg(&mut w, &Response::Failed(WireError::of(&e)))?;
            continue;
        }
        if req == Request::Bye {
            proto::write_msg(&mut w, &Response::Done)?;
            return Ok(Served::Closed);
        }
        if req == Request::Compact {
            return Ok(Served::Compact);
        }
        if let Request::ReadMany(ids) = req {
            conn.read_many(&ids, &mut w, log)?;
            continue;
        }
        if let Request::Collect(opts) = req {
            let resp = match collect(store, &opts, &mut r, &mut w) {
                Ok(report) => Response::Collected(Box::new(report)),
                Err(e) if matches!(e, Error::Protocol(_)) => return Err(fail(&mut w, e, log)),
                Err(e) => {
                    log(&e.to_string());
                    Response::Failed(WireError::of(&e))
                }
            };
            proto::write_msg(&mut w, &resp)?;
            continue;
        }
        let resp = match conn.handle(req) {
            Ok(resp) => resp,
            Err(e) => {
                log(&e.to_string());
                Response::Failed(WireError::of(&e))
            }
        };
        proto::write_msg(&mut w, &resp)?;
    }
}

/// Collect garbage for a client that holds the key: the store asks the client for marks
/// through `WireMarker` and tells it what it does (`Notice`).
fn collect<R: Read, W: Write>(
    store: &dyn Storage,
    opts: &proto::WireGcOptions,
    r: &mut R,
    w: &mut W,
) -> Result<crate::prune::PruneReport> {
    // A true mark set names stored objects (and perhaps a few missing ones); far more is a
    // client trying to exhaust the server's memory.
    let cap = store.reader()?.count()? as usize + proto::MAX_MARKS;
    let io = std::cell::RefCell::new((r, w));
    let mut marker = WireMarker { io: &io, cap };
    let notify = |msg: &str| {
        let mut io = io.borrow_mut();
        let _ = proto::write_msg(&mut io.1, &Response::Notice(msg.to_string()));
    };
    store.collect_garbage(&mut marker, &opts.options(), &notify)
}

/// The client's marks, asked for over the connection.
struct WireMarker<'a, R, W> {
    io: &'a std::cell::RefCell<(&'a mut R, &'a mut W)>,
    cap: usize,
}

impl<R: Read, W: Write> crate::prune::Mark for WireMarker<'_, R, W> {
    fn mark(&mut self, ids: &[Id]) -> Result<std::collections::HashSet<Id>> {
        let mut io = self.io.borrow_mut();
        let (r, w) = &mut *io;
        proto::write_msg(w, &Response::MarkRequest(ids.to_vec()))?;
        let mut marked = std::collections::HashSet::new();
        loop {
            match proto::read_msg(r)? {
                Request::Marks(page) => {
                    at_most("a marks page", page.len(), proto::MAX_MARKS)
                        .map_err(|e| proto::protocol_error(e.to_string()))?;
                    marked.extend(page);
                    if marked.len() > self.cap {
                        return Err(proto::protocol_error(
                            "the client marked far more objects than the repository holds",
                        ));
                    }
                }
                Request::MarksEnd => return Ok(marked),
                _ => return Err(proto::protocol_error("expected marks")),
            }
        }
    }
}

/// Report a protocol error to the client (best effort) and the log; returns it.
fn fail<W: Write>(w: &mut W, e: Error, log: &mut dyn FnMut(&str)) -> Error {
    log(&e.to_string());
    let _ = proto::write_msg(w, &Response::Failed(WireError::of(&e)));
    e
}

struct Connection<'s> {
    store: &'s dyn Storage,
    /// What the client may do (`cairn serve --allow`).
    rights: Rights,
    writer: Option<Box<dyn Writer + 's>>,
    /// Why the writer was given up: after a failed write the objects stored are no longer a
    /// prefix of those sent, so nothing more is taken.
    writer_failed: Option<String>,
    /// Sessions begun on this connection, ended with it.
    sessions: Vec<u64>,
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        // The writer first. Its objects arrived whole and in order, so what it holds is a
        // prefix of whole objects: store it (no snapshot), so a client killed or cut off
        // mid-backup sends only the rest next time. A writer that failed holds nothing.
        if let Some(mut w) = self.writer.take() {
            if self.writer_failed.is_none() {
                let _ = w.commit(&[]);
            }
        }
        for id in self.sessions.drain(..) {
            let _ = self.store.end_session(id);
        }
    }
}

fn wire_info(i: &ObjectInfo) -> WireInfo {
    WireInfo {
        kind: i.kind as u8,
        len: i.len,
        check: i.check,
    }
}

fn at_most(what: &str, n: usize, max: usize) -> Result<()> {
    if n > max {
        return Err(proto::protocol_error(format!(
            "{what} of {n} exceeds the limit of {max}"
        )));
    }
    Ok(())
}

/// A key slot sent by a client: it must decode, and its Argon2 parameters must be within the
/// limits (as a replica receiver checks them, `sync::sink`).
fn peer_slot(bytes: &[u8]) -> Result<()> {
    let slot = postcard::from_bytes::<KeySlot>(bytes)
        .map_err(|_| proto::protocol_error("undecodable key slot"))?;
    slot.kdf.check_limits()
}

impl<'s> Connection<'s> {
    /// `Error::NotAllowed` unless the client has the right `req` needs.
    fn allowed(&self, req: &Request) -> Result<()> {
        self.rights
            .allow(rights::needed(req), &self.store.location())
    }

    fn handle(&mut self, req: Request) -> Result<Response> {
        let store = self.store;
        Ok(match req {
            Request::Config => Response::Blob(store.config()?.encode()),
            Request::KeySlots => Response::Numbered(store.key_slots()?),
            Request::AddKeySlot(slot) => {
                if store.key_slots()?.len() >= MAX_KEY_SLOTS {
                    return Err(Error::Refused(format!(
                        "a repository holds at most {MAX_KEY_SLOTS} key slots; remove unused ones with `cairn key remove`"
                    )));
                }
                peer_slot(&slot)?;
                Response::Number(store.add_key_slot(&slot)?)
            }
            Request::RemoveKeySlot(id) => {
                store.remove_key_slot(id)?;
                Response::Done
            }
            Request::Snapshots(after) => {
                let mut blobs = Vec::new();
                let mut bytes = 0;
                let mut more = false;
                for (id, blob) in store.snapshots()? {
                    if after.is_some_and(|a| id <= a) {
                        continue;
                    }
                    if !blobs.is_empty() && bytes + blob.len() > proto::PAGE_BYTES {
                        more = true;
                        break;
                    }
                    bytes += blob.len() + 64;
                    blobs.push((id, blob));
                }
                Response::SnapshotPage { blobs, more }
            }
            Request::RemoveSnapshots(ids) => {
                at_most("a removal", ids.len(), proto::MAX_HAVE)?;
                store.remove_snapshots(&ids)?;
                Response::Done
            }
            Request::ObjectInfo(id) => {
                Response::ObjectInfo(store.reader()?.info(&id)?.as_ref().map(wire_info))
            }
            Request::Have(ids) => {
                at_most("a have request", ids.len(), proto::MAX_HAVE)?;
                let answers = store.reader()?.contains(&ids)?;
                if answers.len() != ids.len() {
                    return Err(Error::Internal(
                        "the store answered contains wrongly".into(),
                    ));
                }
                Response::Have(answers)
            }
            Request::GetObject(id) => {
                let reader = store.reader()?;
                Response::Object(
                    match read_one(&*reader, &id, self.rights, &store.location())? {
                        ReadAnswer::Found(o) => Some(o),
                        _ => None,
                    },
                )
            }
            Request::List { from, limit } => {
                let limit = (limit as usize).min(proto::MAX_LIST);
                let listed = store.reader()?.list(&from, limit)?;
                Response::Listed(
                    listed
                        .into_iter()
                        .take(limit)
                        .map(|(id, i)| (id, wire_info(&i)))
                        .collect(),
                )
            }
            Request::Count => Response::Number(store.reader()?.count()?),
            Request::BeginWriter {
                batch_bytes,
                index_every,
            } => {
                if self.writer.is_some() || self.writer_failed.is_some() {
                    return Err(proto::protocol_error(
                        "a connection has one writer; open another connection",
                    ));
                }
                let batch_bytes = batch_bytes.clamp(1, MAX_BATCH_BYTES) as usize;
                self.writer = Some(store.writer(WriterOptions {
                    batch_bytes,
                    index_every,
                })?);
                Response::Done
            }
            Request::PutObjects(objs) => {
                let (objects, bytes) = (
                    objs.len() as u64,
                    objs.iter().map(|o| o.sealed.len() as u64).sum(),
                );
                self.write(|w| {
                    for o in objs {
                        let kind = proto::check_store_object(&o)?;
                        w.add(o.id, kind, &o.sealed)?;
                    }
                    Ok(())
                })?;
                Response::Stored { objects, bytes }
            }
            Request::Checkpoint => {
                self.write(|w| w.checkpoint())?;
                Response::Done
            }
            Request::Commit(snapshots) => {
                self.write(|w| w.commit(&snapshots))?;
                Response::Done
            }
            Request::BeginSession => {
                // In the server's name: a client's process id means nothing here, and the
                // session's liveness is this server process's.
                let id = store.begin_session(&crate::util::session_info())?;
                self.sessions.push(id);
                Response::Number(id)
            }
            Request::EndSession(id) => {
                let Some(at) = self.sessions.iter().position(|s| *s == id) else {
                    return Err(Error::Refused(format!(
                        "session {id} was not begun on this connection"
                    )));
                };
                self.sessions.remove(at);
                store.end_session(id)?;
                Response::Done
            }
            Request::Sessions => Response::Numbered(store.sessions()?),
            Request::Recover => Response::Number(store.recover()?),
            Request::State(key) => {
                at_most("a state key", key.len(), proto::MAX_STATE_KEY)?;
                Response::State(store.state(&key)?)
            }
            Request::SetState { key, value } => {
                at_most("a state key", key.len(), proto::MAX_STATE_KEY)?;
                at_most("a state value", value.len(), proto::MAX_STATE_VALUE)?;
                // The records are the server's account of checks and syncs: only a key with
                // the prune right rewrites them (`allowed`), and none the quota's.
                if key == QUOTA_KEY {
                    return Err(Error::Refused(format!(
                        "the `{QUOTA_KEY}` record is the server's: `cairn serve --quota` sets it"
                    )));
                }
                store.set_state(&key, &value)?;
                Response::Done
            }
            Request::Space => Response::Space(store.space()?),
            Request::OpenStore { .. } | Request::Hello { .. } | Request::Create { .. } => {
                return Err(proto::protocol_error("a hello after the session started"))
            }
            Request::Repair { objects, snapshots } => {
                Response::Repaired(self.repair(objects, &snapshots)?)
            }
            Request::ReadMany(_)
            | Request::Bye
            | Request::Compact
            | Request::Collect(_)
            | Request::Marks(_)
            | Request::MarksEnd => return Err(proto::protocol_error("unexpected request")),
            Request::Info
            | Request::ListSnapshots
            | Request::PutSnapshots(_)
            | Request::AddKeySlots(_)
            | Request::DeleteSnapshots(_)
            | Request::GetSnapshot(_)
            | Request::ListSnapshotChecks => {
                return Err(proto::protocol_error(
                    "a sync request on a store connection",
                ))
            }
        })
    }

    /// `Request::Repair`: store the copies the client's rights allow (`rights::may_repair`);
    /// returns the others, with why. A copy of an object that was missing is added as a
    /// writer adds (the first copy stored wins, so a writer that stores the object meanwhile
    /// keeps its own); only a copy of a damaged object replaces what is stored.
    fn repair(
        &self,
        objects: Vec<WireObject>,
        snapshots: &[(Id, Vec<u8>)],
    ) -> Result<Vec<(Id, String)>> {
        at_most("a repair", objects.len(), proto::MAX_HAVE)?;
        let reader = self.store.reader()?;
        let (mut added, mut replaced, mut refused) = (Vec::new(), Vec::new(), Vec::new());
        for o in objects {
            let copy = ObjectCopy {
                id: o.id,
                kind: proto::check_store_object(&o)?,
                sealed: o.sealed,
            };
            match rights::may_repair(self.rights, &*reader, &copy) {
                Ok(rights::Mend::Add) => added.push(copy),
                Ok(rights::Mend::Replace) => replaced.push(copy),
                Err(why) => refused.push((copy.id, why)),
            }
        }
        drop(reader);
        if !added.is_empty() {
            let mut w = self.store.writer(WriterOptions::default())?;
            for c in &added {
                w.add(c.id, c.kind, &c.sealed)?;
            }
            w.commit(&[])?;
        }
        // Replacing a snapshot's blob is removing it and storing another.
        let snapshots = match self.rights.has(rights::Right::Forget) {
            true => snapshots,
            false => {
                refused.extend(snapshots.iter().map(|(id, _)| {
                    (
                        *id,
                        "replacing a snapshot's blob needs the forget right".to_string(),
                    )
                }));
                &[]
            }
        };
        refused.extend(self.store.repair(&replaced, snapshots)?);
        Ok(refused)
    }

    /// Run `f` on the writer. A failure other than a refusal gives the writer up: nothing
    /// more is stored through this connection, so what is stored stays a prefix.
    fn write(&mut self, f: impl FnOnce(&mut dyn Writer) -> Result<()>) -> Result<()> {
        if let Some(why) = &self.writer_failed {
            return Err(Error::Refused(format!(
                "an earlier write on this connection failed ({why}); nothing more is taken"
            )));
        }
        let Some(w) = self.writer.as_mut() else {
            return Err(proto::protocol_error(
                "no writer is open on this connection",
            ));
        };
        let result = f(w.as_mut());
        if let Err(e) = &result {
            if !matches!(e, Error::Refused(_)) {
                self.writer = None;
                self.writer_failed = Some(e.to_string());
            }
        }
        result
    }

    /// Answer a `ReadMany` in pages of about `PAGE_BYTES`, one answer per id, in order.
    fn read_many<W: Write>(
        &mut self,
        ids: &[Id],
        w: &mut W,
        log: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let reader =
            match at_most("a read", ids.len(), proto::MAX_HAVE).and_then(|_| self.store.reader()) {
                Ok(r) => r,
                Err(e) => {
                    log(&e.to_string());
                    return proto::write_msg(w, &Response::Failed(WireError::of(&e)));
                }
            };
        let mut answers = Vec::new();
        let mut bytes = 0;
        let location = self.store.location();
        // A key without `restore` asking for chunks is refused for each; logged once.
        let mut refused = false;
        for id in ids {
            let answer = read_one(&*reader, id, self.rights, &location).unwrap_or_else(|e| {
                let not_allowed = matches!(e, Error::NotAllowed { .. });
                if !(not_allowed && refused) {
                    log(&e.to_string());
                }
                refused |= not_allowed;
                ReadAnswer::Failed(WireError::of(&e))
            });
            let len = match &answer {
                ReadAnswer::Found(o) => o.sealed.len(),
                _ => 0,
            } + 128;
            if !answers.is_empty() && bytes + len > proto::PAGE_BYTES {
                let page = std::mem::take(&mut answers);
                proto::write_msg(
                    w,
                    &Response::ObjectsRead {
                        answers: page,
                        more: true,
                    },
                )?;
                bytes = 0;
            }
            bytes += len;
            answers.push(answer);
        }
        proto::write_msg(
            w,
            &Response::ObjectsRead {
                answers,
                more: false,
            },
        )
    }
}

/// One object as stored, with the checksum the store keeps for it (so the client can tell
/// bytes damaged where they are kept from good ones); `Error::NotAllowed` when `rights` do
/// not cover reading its kind (a chunk without `restore`).
fn read_one(
    reader: &dyn super::Reader,
    id: &Id,
    rights: Rights,
    location: &str,
) -> Result<ReadAnswer> {
    let Some(info) = reader.info(id)? else {
        return Ok(ReadAnswer::Missing);
    };
    rights.allow(rights::to_read(info.kind), location)?;
    match reader.read(id) {
        // Stored locally it may be larger than a frame (a huge tree): say so, and keep the
        // connection.
        Ok((_, sealed)) if sealed.len() > proto::MAX_FRAME - (64 << 10) => {
            Err(Error::Refused(format!(
                "object {id} of {} bytes is too large for the remote protocol",
                sealed.len()
            )))
        }
        Ok((kind, sealed)) => Ok(ReadAnswer::Found(WireObject {
            id: *id,
            kind: kind as u8,
            check: info.check,
            sealed,
        })),
        Err(Error::Missing(_)) => Ok(ReadAnswer::Missing),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::crypto::Kind;

    fn wire(id: Id, sealed: &[u8]) -> WireObject {
        WireObject {
            id,
            kind: Kind::Chunk as u8,
            check: super::super::checksum(sealed),
            sealed: sealed.to_vec(),
        }
    }

    fn connection(store: &dyn Storage, rights: Rights) -> Connection<'_> {
        Connection {
            store,
            rights,
            writer: None,
            writer_failed: None,
            sessions: Vec::new(),
        }
    }

    /// A key without `prune` may mend a damaged object with the bytes its checksum records,
    /// and nothing else: not an intact object, not other bytes, not a snapshot blob.
    #[test]
    fn a_key_without_prune_mends_damage_but_replaces_nothing_intact() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::testkit::small_config();
        let store = Store::create(dir.path(), &[("config", config.encode())]).unwrap();
        let (good, bad) = (Id([1; 32]), Id([2; 32]));
        let (a, b) = (
            crate::testkit::noise(1, 3000),
            crate::testkit::noise(2, 3000),
        );
        let mut w = Storage::writer(&store, WriterOptions::default()).unwrap();
        w.add(good, Kind::Chunk, &a).unwrap();
        w.add(bad, Kind::Chunk, &b).unwrap();
        w.commit(&[]).unwrap();
        drop(w);
        crate::storage::redb::damage_object(&store, &bad, config.piece_size, 10).unwrap();
        drop(store);
        let store = Store::open(dir.path(), DEFAULT_DB_CACHE).unwrap();
        let read = Storage::reader(&store)
            .unwrap()
            .read(&bad)
            .map(|r| r.1)
            .ok();
        assert_ne!(read.as_ref(), Some(&b), "damaged");

        let conn = connection(&store, Rights::APPEND_ONLY);
        let copies = vec![wire(good, &b), wire(good, &a), wire(bad, &a), wire(bad, &b)];
        let refused = conn.repair(copies, &[]).unwrap();
        let whys: Vec<(Id, &str)> = refused.iter().map(|(id, w)| (*id, w.as_str())).collect();
        assert_eq!(whys.len(), 3, "{whys:?}");
        assert!(whys[0].0 == good && whys[0].1.contains("does not match the checksum"));
        assert!(whys[1].0 == good && whys[1].1.contains("intact"));
        assert!(whys[2].0 == bad && whys[2].1.contains("does not match the checksum"));
        let reader = Storage::reader(&store).unwrap();
        assert_eq!(reader.read(&bad).unwrap().1, b, "the damage is mended");
        assert_eq!(reader.read(&good).unwrap().1, a, "the intact copy stays");
        drop(reader);

        // A snapshot's blob needs `forget`: refused, while the objects beside it are stored.
        let missing = Id([5; 32]);
        let refused = conn
            .repair(vec![wire(missing, &b)], &[(Id([9; 32]), vec![1])])
            .unwrap();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].0 == Id([9; 32]) && refused[0].1.contains("forget"));
        assert!(Storage::snapshots(&store).unwrap().is_empty());
        let reader = Storage::reader(&store).unwrap();
        assert_eq!(
            reader.read(&missing).unwrap().1,
            b,
            "a missing object is added"
        );
        drop(reader);

        // The prune right can remove any object anyway: it may replace one too.
        let full = connection(&store, Rights::FULL);
        assert!(full.repair(vec![wire(good, &a)], &[]).unwrap().is_empty());
    }
}
