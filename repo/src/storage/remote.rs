//! The remote store: a repository behind `cairn serve`, over the sync protocol's framing
//! (DESIGN.md §9, "The remote store"). The client does all chunking, compression and
//! encryption; the server (`storage::server`) sees sealed bytes, ids, kinds and lengths only.
//!
//! Connections come from a `Connector` (ssh in use, a socket pair in tests). Store calls and
//! readers share a pool of connections, opened lazily (one per thread calling at once, up to
//! `POOL`; more callers wait a moment for one to come back); a writer and a session each have
//! a connection of their own, because the server keeps a writer and the sessions it began per connection and drops them
//! when it ends. A connection that fails is dropped and the next call opens another.

use super::cache::ObjectCache;
use super::{
    checksum, Capabilities, Mark, ObjectCopy, ObjectInfo, PruneOptions, PruneReport, ReadEach,
    Reader, Rights, Space, Storage, Writer, WriterOptions,
};
use crate::crypto::Kind;
use crate::error::{Error, Result};
use crate::format::Config;
use crate::id::Id;
use crate::sync::mux::{Master, Slot};
use crate::sync::proto::{self, ReadAnswer, Request, Response, WireInfo, WireObject};
use crate::sync::remote::{ssh_argv_with, unexpected, SshProcess};
use crate::sync::{SshOptions, SshUrl};
use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, BufWriter, Read, Write};
use std::process::{ChildStdin, ChildStdout};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How a remote store reaches its server.
pub trait Connector: Send + Sync {
    /// A fresh connection to the server: (its replies, our requests).
    fn connect(&self) -> Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)>;
    /// For messages: host[:port] or similar.
    fn label(&self) -> String;
}

/// Connections for store calls and readers: more callers at once wait (up to `POOL_WAIT`)
/// for one to come back instead of each opening its own (a new `cairn serve` on the server
/// each: restore's 8 threads opened 26 for one restore with 4 kept).
const POOL: usize = 8;
/// How long a caller waits for a pooled connection before it opens one more anyway (a caller
/// that holds one while it asks for another must not wait on itself).
const POOL_WAIT: Duration = Duration::from_millis(200);
/// `PutObjects` batches a writer keeps in flight before it waits for a reply.
const WINDOW: usize = 3;
/// A writer sends its objects in batches of about this many bytes (or its `batch_bytes`
/// when smaller).
const SEND_BATCH: usize = 8 << 20;
/// Room left in a frame for everything around the objects' bytes.
const FRAME_SLACK: usize = 64 << 10;
/// Ids per `ReadMany` request, and requests a `read_many` keeps in flight.
const READ_IDS: usize = 256;
const READ_WINDOW: usize = 2;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the client says when the first reply is a version-2 (or older) server's error: such
/// a server cannot decode `OpenStore`.
fn too_old(location: &str, said: &str) -> Error {
    Error::Protocol(format!(
        "the server's cairn at {location} is too old (speaks sync protocol ≤ 2) to serve a repository; upgrade cairn on the server [it said: {said}]"
    ))
}

/// One connection, in step with the server: every request sent has its replies read before
/// another caller uses it.
struct Conn {
    r: BufReader<Box<dyn Read + Send>>,
    w: BufWriter<Box<dyn Write + Send>>,
    /// A transport or protocol failure: the connection is out of step; drop it.
    broken: bool,
    /// The stream itself failed or ended (the server is gone), rather than a bad reply.
    dead: bool,
}

impl Conn {
    /// Connect and open the store (creating it from `create`); returns what the server lets
    /// this client do. An older server refuses a newer version in the hello: the client then
    /// asks again one version lower, down to 3, and speaks the version the server took (from
    /// now on, for the whole store).
    fn open(shared: &Shared, create: Option<Vec<u8>>) -> Result<(Conn, Rights)> {
        let mut version = shared.version.load(Ordering::Relaxed);
        loop {
            match Conn::open_in(shared, create.clone(), version) {
                Err(Error::Protocol(m))
                    if version > proto::STORE_VERSION && m.contains("is not supported here") =>
                {
                    version -= 1;
                    shared.version.store(version, Ordering::Relaxed);
                }
                other => return other,
            }
        }
    }

    fn open_in(shared: &Shared, create: Option<Vec<u8>>, version: u32) -> Result<(Conn, Rights)> {
        let loc = &shared.location;
        let (r, w) = shared.connector.connect()?;
        let mut c = Conn {
            r: BufReader::with_capacity(256 << 10, r),
            w: BufWriter::with_capacity(256 << 10, w),
            broken: false,
            dead: false,
        };
        c.send(
            loc,
            &Request::OpenStore {
                magic: proto::MAGIC,
                version,
                create,
            },
        )?;
        let reply = proto::read_msg(&mut c.r).map_err(|e| talking(loc, e))?;
        match reply {
            Response::StoreOpenedWith { version: v, rights } if v == version => {
                Ok((c, rights.known()))
            }
            // Protocol 3: only whether it deletes nothing.
            Response::StoreOpened {
                version: v,
                append_only,
            } if v == version => Ok((c, Rights::append_only_if(append_only))),
            Response::StoreOpened { version: v, .. }
            | Response::StoreOpenedWith { version: v, .. } => Err(proto::protocol_error(format!(
                "{loc} answered in store protocol version {v}, not {version}"
            ))),
            Response::Failed(e) => Err(e.into_error(loc)),
            Response::Error(said) => Err(too_old(loc, &said)),
            other => Err(unexpected(&other)),
        }
    }

    fn send(&mut self, loc: &str, req: &Request) -> Result<()> {
        // Encoding fails before anything is written: the connection stays in step.
        let body = proto::encode(req)?;
        if let Err(e) = proto::write_frame(&mut self.w, &body) {
            self.broken = true;
            self.dead = true;
            // The far side is gone; what it said last (its error, or for ssh what ssh
            // printed) is the better error.
            return Err(match proto::read_msg::<_, Response>(&mut self.r) {
                Ok(Response::Failed(w)) => w.into_error(loc),
                Err(better) => talking(loc, better),
                Ok(_) => talking(loc, e),
            });
        }
        Ok(())
    }

    /// The next reply; a `Failed` one becomes its error.
    fn recv(&mut self, loc: &str) -> Result<Response> {
        match proto::read_msg(&mut self.r) {
            Ok(Response::Failed(e)) => {
                let e = e.into_error(loc);
                if matches!(e, Error::Protocol(_)) {
                    self.broken = true;
                }
                Err(e)
            }
            Ok(resp) => Ok(resp),
            Err(e) => {
                self.broken = true;
                self.dead = matches!(&e, Error::Io { .. })
                    || matches!(&e, Error::Protocol(m) if m.contains("closed the connection"));
                Err(talking(loc, e))
            }
        }
    }

    fn call(&mut self, loc: &str, req: &Request) -> Result<Response> {
        self.send(loc, req)?;
        self.recv(loc)
    }

    /// A reply that was not what the request asks for: the connection is out of step.
    fn unexpected(&mut self, resp: &Response) -> Error {
        self.broken = true;
        unexpected(resp)
    }
}

/// A transport error, naming the server.
fn talking(loc: &str, e: Error) -> Error {
    match e {
        Error::Io { source, .. } => {
            use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
            let what = match source.kind() {
                BrokenPipe | ConnectionReset | UnexpectedEof => format!(
                    "the connection to {loc} was lost (the server or the network went away; nothing half-written is visible there, run it again)"
                ),
                _ => format!("talking to {loc}"),
            };
            Error::io(what, source)
        }
        Error::Protocol(m) => Error::Protocol(format!("{m} (from {loc})")),
        other => other,
    }
}

/// What the store and its readers share: the way to the server and the idle connections.
struct Shared {
    connector: Box<dyn Connector>,
    location: String,
    idle: Mutex<Vec<Conn>>,
    /// Signalled when a connection goes back to `idle` or is closed.
    returned: Condvar,
    /// Pool connections open: lent or idle.
    open: AtomicUsize,
    /// The store protocol version the server speaks (`proto::VERSION`, or 3 for an older
    /// server).
    version: AtomicU32,
}

/// A connection lent from the pool; back to it when dropped, unless it broke.
struct Lease<'a> {
    shared: &'a Shared,
    conn: Option<Conn>,
    /// Whether the connection was idle in the pool (it may have died there).
    reused: bool,
}

impl Lease<'_> {
    fn conn(&mut self) -> &mut Conn {
        #[allow(clippy::expect_used)]
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }

    fn call(&mut self, req: &Request) -> Result<Response> {
        let loc = &self.shared.location;
        self.conn().call(loc, req)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let mut idle = lock(&self.shared.idle);
            if c.dead {
                // The others most likely went with it (the server or the network is gone).
                let n = idle.len() + 1;
                idle.clear();
                self.shared.open.fetch_sub(n, Ordering::AcqRel);
            } else if !c.broken && idle.len() < POOL {
                idle.push(c);
            } else {
                self.shared.open.fetch_sub(1, Ordering::AcqRel);
            }
            drop(idle);
            self.shared.returned.notify_one();
        }
    }
}

impl Shared {
    /// An idle connection; a new one while fewer than `POOL` are open; else one that comes
    /// back within `POOL_WAIT`, or a new one after all (so a caller that holds one while it
    /// asks for another cannot deadlock).
    fn lease(&self) -> Result<Lease<'_>> {
        let deadline = Instant::now() + POOL_WAIT;
        let mut idle = lock(&self.idle);
        loop {
            if let Some(c) = idle.pop() {
                return Ok(Lease {
                    shared: self,
                    conn: Some(c),
                    reused: true,
                });
            }
            let now = Instant::now();
            if self.open.load(Ordering::Acquire) < POOL || now >= deadline {
                break;
            }
            idle = self
                .returned
                .wait_timeout(idle, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(idle);
        self.fresh()
    }

    /// A new pool connection.
    fn fresh(&self) -> Result<Lease<'_>> {
        self.open.fetch_add(1, Ordering::AcqRel);
        match Conn::open(self, None) {
            Ok((conn, _)) => Ok(Lease {
                shared: self,
                conn: Some(conn),
                reused: false,
            }),
            Err(e) => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.returned.notify_one();
                Err(e)
            }
        }
    }

    /// Run `f`, which only reads, on a lent connection; when a connection that waited in the
    /// pool turns out dead (the server went away meanwhile), once more on a new one.
    fn reading<T>(&self, mut f: impl FnMut(&mut Lease<'_>) -> Result<T>) -> Result<T> {
        let mut l = self.lease()?;
        match f(&mut l) {
            Err(_) if l.reused && l.conn().dead => {
                drop(l);
                f(&mut self.fresh()?)
            }
            r => r,
        }
    }

    /// One request, one reply; `pick` takes what it expects from the reply. A request that
    /// only reads (`idempotent`) is sent again on a new connection when a pooled one was dead.
    fn ask<T>(
        &self,
        req: &Request,
        idempotent: bool,
        pick: impl Fn(Response) -> std::result::Result<T, Response>,
    ) -> Result<T> {
        let once = |l: &mut Lease<'_>| match pick(l.call(req)?) {
            Ok(v) => Ok(v),
            Err(other) => Err(l.conn().unexpected(&other)),
        };
        if idempotent {
            self.reading(once)
        } else {
            once(&mut self.lease()?)
        }
    }

    fn done(&self, req: &Request) -> Result<()> {
        self.ask(req, false, |r| match r {
            Response::Done => Ok(()),
            other => Err(other),
        })
    }

    fn number(&self, req: &Request, idempotent: bool) -> Result<u64> {
        self.ask(req, idempotent, |r| match r {
            Response::Number(n) => Ok(n),
            other => Err(other),
        })
    }

    fn numbered(&self, req: &Request) -> Result<Vec<(u64, Vec<u8>)>> {
        self.ask(req, true, |r| match r {
            Response::Numbered(v) => Ok(v),
            other => Err(other),
        })
    }
}

/// A repository behind `cairn serve` (see the module documentation).
pub struct RemoteStore {
    shared: Arc<Shared>,
    config: Config,
    /// What the server lets this client do (`cairn serve --allow`).
    rights: Rights,
    /// Each session's own connection: the server ends the session when it closes.
    sessions: Mutex<HashMap<u64, Conn>>,
    /// Trees and content lists read before (see `storage::cache`).
    cache: Option<Arc<ObjectCache>>,
}

impl RemoteStore {
    /// Open the repository the server serves; Error::RepoNotFound when there is none there.
    pub fn open(connector: Box<dyn Connector>) -> Result<RemoteStore> {
        RemoteStore::start(connector, None)
    }

    /// Create it from `config` (Error::RepoExists when one is there already).
    pub fn create(connector: Box<dyn Connector>, config: &Config) -> Result<RemoteStore> {
        RemoteStore::start(connector, Some(config.encode()))
    }

    fn start(connector: Box<dyn Connector>, create: Option<Vec<u8>>) -> Result<RemoteStore> {
        let shared = Arc::new(Shared {
            location: connector.label(),
            connector,
            idle: Mutex::new(Vec::new()),
            returned: Condvar::new(),
            open: AtomicUsize::new(1),
            version: AtomicU32::new(proto::VERSION),
        });
        let (mut conn, rights) = Conn::open(&shared, create)?;
        let config = match conn.call(&shared.location, &Request::Config)? {
            Response::Blob(b) => Config::decode(&b)?,
            other => return Err(unexpected(&other)),
        };
        lock(&shared.idle).push(conn);
        Ok(RemoteStore {
            shared,
            config,
            rights,
            sessions: Mutex::new(HashMap::new()),
            cache: None,
        })
    }

    /// Answer reads of trees and content lists from `cache` where it can.
    pub(crate) fn set_cache(&mut self, cache: Option<Arc<ObjectCache>>) {
        self.cache = cache;
    }

    /// Whether the server refuses every deletion (`cairn serve --append-only`).
    pub fn append_only(&self) -> bool {
        self.rights.append_only()
    }

    /// `prune --compact` on the server: it closes the repository, compacts its file (which
    /// needs every other process to have closed it: it waits a few seconds for this
    /// client's other connections to go), answers and ends the connection. Returns whether
    /// the file changed, and its length after.
    pub fn compact(&self) -> Result<(bool, u64)> {
        self.needs(5, "prune --compact")?;
        let loc = &self.shared.location;
        let spare = {
            let mut idle = lock(&self.shared.idle);
            let spare = idle.pop();
            idle.clear();
            spare
        };
        let mut conn = match spare {
            Some(c) => c,
            None => Conn::open(&self.shared, None)?.0,
        };
        match conn.call(loc, &Request::Compact)? {
            Response::Compacted { changed, file_len } => Ok((changed, file_len)),
            other => Err(unexpected(&other)),
        }
    }

    /// `Error::Protocol` unless the server speaks at least `version` (what `what` needs).
    fn needs(&self, version: u32, what: &str) -> Result<()> {
        let speaks = self.shared.version.load(Ordering::Relaxed);
        if speaks < version {
            return Err(proto::protocol_error(format!(
                "the server's cairn at {} speaks store protocol {speaks}, and `{what}` needs {version}; upgrade cairn on the server",
                self.shared.location
            )));
        }
        Ok(())
    }
}

/// Groups of copies for `Request::Repair`: at most `MAX_HAVE` objects and about 16 MiB each.
fn repair_groups(objects: &[ObjectCopy]) -> Vec<&[ObjectCopy]> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, o) in objects.iter().enumerate() {
        if i > start && (bytes + o.sealed.len() > 16 << 20 || i - start == proto::MAX_HAVE) {
            groups.push(&objects[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += o.sealed.len();
    }
    if start < objects.len() || groups.is_empty() {
        groups.push(&objects[start..]);
    }
    groups
}

/// An object as it crosses the wire to the server, with its checksum.
fn wire_object(id: Id, kind: Kind, sealed: &[u8]) -> WireObject {
    WireObject {
        id,
        kind: kind as u8,
        check: checksum(sealed),
        sealed: sealed.to_vec(),
    }
}

/// A kind as the server sent it.
fn wire_kind(k: u8) -> Result<Kind> {
    Kind::from_u8(k).ok_or_else(|| proto::protocol_error(format!("unknown object kind {k}")))
}

fn object_info(i: &WireInfo) -> Result<ObjectInfo> {
    Ok(ObjectInfo {
        kind: wire_kind(i.kind)?,
        len: i.len,
        check: i.check,
    })
}

impl Storage for RemoteStore {
    fn location(&self) -> String {
        self.shared.location.clone()
    }

    fn config(&self) -> Result<Config> {
        Ok(self.config.clone())
    }

    fn key_slots(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        self.shared.numbered(&Request::KeySlots)
    }

    fn add_key_slot(&self, slot: &[u8]) -> Result<u64> {
        self.shared
            .number(&Request::AddKeySlot(slot.to_vec()), false)
    }

    fn remove_key_slot(&self, id: u64) -> Result<()> {
        self.shared.done(&Request::RemoveKeySlot(id))
    }

    fn snapshots(&self) -> Result<Vec<(Id, Vec<u8>)>> {
        self.shared.reading(|l| {
            let mut out: Vec<(Id, Vec<u8>)> = Vec::new();
            loop {
                let after = out.last().map(|s| s.0);
                let (blobs, more) = match l.call(&Request::Snapshots(after))? {
                    Response::SnapshotPage { blobs, more } => (blobs, more),
                    other => return Err(l.conn().unexpected(&other)),
                };
                let mut last = after;
                for (id, _) in &blobs {
                    if last.is_some_and(|l| *id <= l) {
                        l.conn().broken = true;
                        return Err(proto::protocol_error(
                            "the server's snapshot list is out of order",
                        ));
                    }
                    last = Some(*id);
                }
                if more && blobs.is_empty() {
                    l.conn().broken = true;
                    return Err(proto::protocol_error(
                        "an empty snapshot page with more to come",
                    ));
                }
                out.extend(blobs);
                if !more {
                    return Ok(out);
                }
            }
        })
    }

    fn remove_snapshots(&self, ids: &[Id]) -> Result<()> {
        for part in ids.chunks(proto::MAX_HAVE) {
            self.shared.done(&Request::RemoveSnapshots(part.to_vec()))?;
        }
        Ok(())
    }

    fn reader(&self) -> Result<Box<dyn Reader>> {
        let reader = Box::new(RemoteReader(self.shared.clone()));
        Ok(super::cache::wrap(reader, &self.cache))
    }

    fn writer(&self, opts: WriterOptions) -> Result<Box<dyn Writer + '_>> {
        let writer = Box::new(RemoteWriter::new(self.shared.clone(), opts)?);
        Ok(super::cache::wrap_writer(writer, &self.cache))
    }

    fn begin_session(&self, _info: &[u8]) -> Result<u64> {
        // The server records the session in its own name (this side's process means nothing
        // there) and ends it when this connection closes: when the session ends, or this
        // process dies.
        let loc = &self.shared.location;
        let (mut conn, _) = Conn::open(&self.shared, None)?;
        let id = match conn.call(loc, &Request::BeginSession)? {
            Response::Number(id) => id,
            other => return Err(unexpected(&other)),
        };
        lock(&self.sessions).insert(id, conn);
        Ok(id)
    }

    fn end_session(&self, id: u64) -> Result<()> {
        let conn = lock(&self.sessions).remove(&id);
        let Some(mut conn) = conn else {
            // Not begun here: the server refuses unless it is this connection's.
            return self.shared.done(&Request::EndSession(id));
        };
        match conn.call(&self.shared.location, &Request::EndSession(id))? {
            Response::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    fn sessions(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        self.shared.numbered(&Request::Sessions)
    }

    fn recover(&self) -> Result<u64> {
        self.shared.number(&Request::Recover, false)
    }

    fn space(&self) -> Result<Space> {
        self.shared.reading(|l| match l.call(&Request::Space)? {
            Response::Space(s) => Ok(s),
            other => Err(l.conn().unexpected(&other)),
        })
    }

    fn state(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.shared
            .ask(&Request::State(key.to_string()), true, |r| match r {
                Response::State(v) => Ok(v),
                other => Err(other),
            })
    }

    fn set_state(&self, key: &str, value: &[u8]) -> Result<()> {
        self.shared.done(&Request::SetState {
            key: key.to_string(),
            value: value.to_vec(),
        })
    }

    fn collect_garbage(
        &self,
        marker: &mut dyn Mark,
        opts: &PruneOptions,
        notify: &dyn Fn(&str),
    ) -> Result<PruneReport> {
        // A connection of its own: the server calls back for marks in the middle of it.
        let loc = &self.shared.location;
        let (mut conn, _) = Conn::open(&self.shared, None)?;
        conn.send(loc, &Request::Collect(proto::WireGcOptions::of(opts)))?;
        loop {
            match conn.recv(loc)? {
                Response::MarkRequest(snapshots) => {
                    let marked: Vec<Id> = marker.mark(&snapshots)?.into_iter().collect();
                    for page in marked.chunks(proto::MAX_MARKS) {
                        conn.send(loc, &Request::Marks(page.to_vec()))?;
                    }
                    conn.send(loc, &Request::MarksEnd)?;
                }
                Response::Notice(msg) => notify(&msg),
                Response::Collected(report) => return Ok(*report),
                other => return Err(conn.unexpected(&other)),
            }
        }
    }

    fn repair(
        &self,
        objects: &[ObjectCopy],
        snapshots: &[(Id, Vec<u8>)],
    ) -> Result<Vec<(Id, String)>> {
        self.needs(5, "check --repair-from")?;
        let groups = repair_groups(objects);
        let mut refused = Vec::new();
        for (i, group) in groups.iter().enumerate() {
            let req = Request::Repair {
                objects: group
                    .iter()
                    .map(|o| wire_object(o.id, o.kind, &o.sealed))
                    .collect(),
                snapshots: match i + 1 == groups.len() {
                    true => snapshots.to_vec(),
                    false => Vec::new(),
                },
            };
            refused.extend(self.shared.ask(&req, false, |r| match r {
                Response::Repaired(v) => Ok(v),
                other => Err(other),
            })?);
        }
        Ok(refused)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            remote: true,
            rights: self.rights,
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A reader of a remote store. Each request is answered from the server's state when it
/// arrives (objects committed since the reader was made may be seen; the contract allows it).
struct RemoteReader(Arc<Shared>);

/// Check an object the server sent for `id`: the id asked, a known kind, bytes that match the
/// checksum the server keeps for it.
fn verified(o: WireObject, id: &Id) -> Result<(Kind, Vec<u8>)> {
    if o.id != *id {
        return Err(proto::protocol_error(format!(
            "asked for object {id}, the server sent {}",
            o.id
        )));
    }
    let kind = wire_kind(o.kind)?;
    if checksum(&o.sealed) != o.check {
        return Err(Error::corrupt(
            id,
            "the server sent bytes that do not match its checksum",
        ));
    }
    Ok((kind, o.sealed))
}

impl Reader for RemoteReader {
    fn info(&self, id: &Id) -> Result<Option<ObjectInfo>> {
        self.0
            .reading(|l| match l.call(&Request::ObjectInfo(*id))? {
                Response::ObjectInfo(i) => i.as_ref().map(object_info).transpose(),
                other => Err(l.conn().unexpected(&other)),
            })
    }

    fn contains(&self, ids: &[Id]) -> Result<Vec<bool>> {
        let loc = &self.0.location;
        self.0.reading(|l| {
            let c = l.conn();
            let parts: Vec<&[Id]> = ids.chunks(proto::MAX_HAVE).collect();
            let mut out = Vec::with_capacity(ids.len());
            let mut sent = 0;
            for (i, part) in parts.iter().enumerate() {
                while sent < parts.len() && sent < i + READ_WINDOW {
                    c.send(loc, &Request::Have(parts[sent].to_vec()))?;
                    sent += 1;
                }
                match c.recv(loc) {
                    Ok(Response::Have(v)) if v.len() == part.len() => out.extend(v),
                    Ok(Response::Have(v)) => {
                        c.broken = true;
                        return Err(proto::protocol_error(format!(
                            "asked about {} ids, the server answered {}",
                            part.len(),
                            v.len()
                        )));
                    }
                    Ok(other) => return Err(c.unexpected(&other)),
                    Err(e) => {
                        c.broken = true; // the other requests' replies are still coming
                        return Err(e);
                    }
                }
            }
            Ok(out)
        })
    }

    fn read(&self, id: &Id) -> Result<(Kind, Vec<u8>)> {
        self.0.reading(|l| match l.call(&Request::GetObject(*id))? {
            Response::Object(None) => Err(Error::Missing(id.to_hex())),
            Response::Object(Some(o)) => verified(o, id).inspect_err(|e| {
                if matches!(e, Error::Protocol(_)) {
                    l.conn().broken = true;
                }
            }),
            other => Err(l.conn().unexpected(&other)),
        })
    }

    fn read_many(&self, ids: &[Id], f: &mut ReadEach<'_>) -> Result<()> {
        let loc = &self.0.location;
        // Ids handed to `f` so far: a retry on a new connection (when a pooled one was dead)
        // goes on after them.
        let mut delivered = 0;
        self.0.reading(|l| {
            let c = l.conn();
            let parts: Vec<&[Id]> = ids[delivered..].chunks(READ_IDS).collect();
            let mut sent = 0;
            let result = (|| {
                for (i, part) in parts.iter().enumerate() {
                    while sent < parts.len() && sent < i + READ_WINDOW {
                        c.send(loc, &Request::ReadMany(parts[sent].to_vec()))?;
                        sent += 1;
                    }
                    let mut at = 0;
                    loop {
                        let (answers, more) = match c.recv(loc)? {
                            Response::ObjectsRead { answers, more } => (answers, more),
                            other => return Err(unexpected(&other)),
                        };
                        if at + answers.len() > part.len()
                            || (!more && at + answers.len() < part.len())
                        {
                            return Err(proto::protocol_error(format!(
                                "asked for {} objects, the server answered {}",
                                part.len(),
                                at + answers.len()
                            )));
                        }
                        for a in answers {
                            let id = part[at];
                            at += 1;
                            let got = match a {
                                ReadAnswer::Found(o) => match verified(o, &id) {
                                    Err(e @ Error::Protocol(_)) => return Err(e),
                                    got => got,
                                },
                                ReadAnswer::Missing => Err(Error::Missing(id.to_hex())),
                                ReadAnswer::Failed(e) => Err(e.into_error(loc)),
                            };
                            delivered += 1;
                            f(id, got)?;
                        }
                        if !more {
                            break;
                        }
                    }
                }
                Ok(())
            })();
            if result.is_err() {
                // Replies may still be on their way: the connection is out of step.
                c.broken = true;
            }
            result
        })
    }

    fn list(&self, from: &Id, limit: usize) -> Result<Vec<(Id, ObjectInfo)>> {
        self.0.reading(|l| {
            let mut out: Vec<(Id, ObjectInfo)> = Vec::new();
            let mut from = *from;
            // After the first page, each page starts at the last id already listed.
            let mut skip: Option<Id> = None;
            while out.len() < limit {
                let want =
                    (limit - out.len()).min(proto::MAX_LIST - 1) + usize::from(skip.is_some());
                let page = match l.call(&Request::List {
                    from,
                    limit: want as u32,
                })? {
                    Response::Listed(v) => v,
                    other => return Err(l.conn().unexpected(&other)),
                };
                let n = page.len();
                let mut last: Option<Id> = None;
                for (id, _) in &page {
                    if *id < from || last.is_some_and(|l| *id <= l) {
                        l.conn().broken = true;
                        return Err(proto::protocol_error(
                            "the server's object list is out of order",
                        ));
                    }
                    last = Some(*id);
                }
                if n > want {
                    l.conn().broken = true;
                    return Err(proto::protocol_error(format!(
                        "asked for {want} objects, the server listed {n}"
                    )));
                }
                for (id, info) in page {
                    if Some(id) != skip {
                        out.push((id, object_info(&info)?));
                    }
                }
                match out.last() {
                    Some((id, _)) if n == want => {
                        from = *id;
                        skip = Some(*id);
                    }
                    _ => break,
                }
            }
            out.truncate(limit);
            Ok(out)
        })
    }

    fn count(&self) -> Result<u64> {
        self.0.number(&Request::Count, true)
    }
}

/// What a request a writer sent is answered with.
enum Expect {
    Done,
    Stored(u64),
}

/// A writer over its own connection; the server holds the `Writer` it feeds.
struct RemoteWriter {
    shared: Arc<Shared>,
    conn: Option<Conn>,
    batch: Vec<WireObject>,
    batch_bytes: usize,
    send_at: usize,
    in_flight: VecDeque<Expect>,
    /// Why this writer was given up (its connection is closed: the server dropped what was
    /// not checkpointed).
    failed: Option<String>,
}

impl RemoteWriter {
    fn new(shared: Arc<Shared>, opts: WriterOptions) -> Result<RemoteWriter> {
        let (mut conn, _) = Conn::open(&shared, None)?;
        conn.send(
            &shared.location,
            &Request::BeginWriter {
                batch_bytes: opts.batch_bytes as u64,
                index_every: opts.index_every,
            },
        )?;
        Ok(RemoteWriter {
            shared,
            conn: Some(conn),
            batch: Vec::new(),
            batch_bytes: 0,
            send_at: opts.batch_bytes.clamp(1, SEND_BATCH),
            in_flight: VecDeque::from([Expect::Done]),
            failed: None,
        })
    }

    /// The connection, unless the writer was given up.
    fn conn(&mut self) -> Result<&mut Conn> {
        match (&self.failed, self.conn.as_mut()) {
            (None, Some(c)) => Ok(c),
            (why, _) => Err(Error::Refused(format!(
                "an earlier write to {} failed ({}); what was not checkpointed is not stored",
                self.shared.location,
                why.as_deref().unwrap_or("closed")
            ))),
        }
    }

    /// Give the writer up after `e`: the connection closes, the server drops its writer.
    fn give_up(&mut self, e: Error) -> Error {
        self.failed = Some(e.to_string());
        self.conn = None;
        self.batch.clear();
        self.in_flight.clear();
        e
    }

    fn send(&mut self, req: Request, expect: Expect) -> Result<()> {
        let loc = self.shared.location.clone();
        let sent = self.conn()?.send(&loc, &req);
        sent.map_err(|e| self.give_up(e))?;
        self.in_flight.push_back(expect);
        while self.in_flight.len() > WINDOW {
            self.recv_one().map_err(|e| self.give_up(e))?;
        }
        Ok(())
    }

    /// Read the reply of the oldest request in flight.
    fn recv_one(&mut self) -> Result<()> {
        let loc = self.shared.location.clone();
        let Some(expect) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let c = self.conn()?;
        match (expect, c.recv(&loc)?) {
            (Expect::Done, Response::Done) => Ok(()),
            (Expect::Stored(n), Response::Stored { objects, .. }) if objects == n => Ok(()),
            (_, other) => Err(c.unexpected(&other)),
        }
    }

    fn flush_batch(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let n = batch.len() as u64;
        self.send(Request::PutObjects(batch), Expect::Stored(n))
    }

    /// Send `last` after what is buffered, then wait for every reply. A refusal (a snapshot
    /// stored with other bytes) leaves the writer usable; any other failure gives it up.
    fn finish(&mut self, last: Request) -> Result<()> {
        self.conn()?;
        self.flush_batch()?;
        self.send(last, Expect::Done)?;
        let mut first: Option<Error> = None;
        while !self.in_flight.is_empty() {
            if let Err(e) = self.recv_one() {
                let broken = self.conn.as_ref().is_none_or(|c| c.broken);
                first.get_or_insert(e);
                if broken {
                    break;
                }
            }
        }
        match first {
            None => Ok(()),
            Some(e @ Error::Refused(_)) if self.conn.as_ref().is_some_and(|c| !c.broken) => Err(e),
            Some(e) => Err(self.give_up(e)),
        }
    }
}

impl Writer for RemoteWriter {
    fn add(&mut self, id: Id, kind: Kind, sealed: &[u8]) -> Result<()> {
        self.conn()?;
        if sealed.len() > proto::MAX_FRAME - FRAME_SLACK {
            return Err(Error::Refused(format!(
                "object {id} of {} bytes is too large for the remote protocol (at most {})",
                sealed.len(),
                proto::MAX_FRAME - FRAME_SLACK
            )));
        }
        if self.batch_bytes + sealed.len() > proto::MAX_FRAME - FRAME_SLACK {
            self.flush_batch()?;
        }
        self.batch.push(wire_object(id, kind, sealed));
        self.batch_bytes += sealed.len() + 64;
        if self.batch_bytes >= self.send_at {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<()> {
        self.finish(Request::Checkpoint)
    }

    fn commit(&mut self, snapshots: &[(Id, Vec<u8>)]) -> Result<()> {
        self.finish(Request::Commit(snapshots.to_vec()))
    }
}

/// ssh running `cairn serve --repo PATH` on the far side (reuse sync::remote::ssh_argv /
/// SshOptions / SshUrl).
pub fn ssh(url: &SshUrl, opts: &SshOptions) -> Box<dyn Connector> {
    Box::new(SshConnector {
        url: url.clone(),
        opts: opts.clone(),
        multiplex: std::sync::atomic::AtomicBool::new(crate::sync::mux::applies(opts)),
        masters: Mutex::new(Masters::default()),
    })
}

struct SshConnector {
    url: SshUrl,
    opts: SshOptions,
    /// Whether connections are multiplexed (`sync::mux`): the ssh command allows it, and no
    /// master failed to come up.
    multiplex: std::sync::atomic::AtomicBool,
    /// The ssh connections the others are multiplexed over, each carrying up to
    /// `mux::SESSIONS`, and when a master last failed to start and why.
    masters: Mutex<Masters>,
}

#[derive(Default)]
struct Masters {
    live: Vec<Arc<Master>>,
    failed: Option<(Instant, String)>,
}

/// How long a failure to start a master is the answer for every connection (the callers
/// waiting for the first one would otherwise each try again, one after another).
const MASTER_RETRY: Duration = Duration::from_secs(10);

impl SshConnector {
    /// A session over a live master with room for one; when every master is full or dead, a
    /// new one, started while the other callers wait (one login at a time). `None`: not
    /// multiplexed.
    fn slot(&self) -> Result<Option<Slot>> {
        if !self.multiplex.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let mut masters = lock(&self.masters);
        // Decided while this caller waited for the lock: no multiplexing, or a fresh failure.
        if !self.multiplex.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if let Some((when, said)) = &masters.failed {
            if when.elapsed() < MASTER_RETRY {
                return Err(Error::Connection(said.clone()));
            }
        }
        masters.live.retain(|m| m.alive());
        if let Some(slot) = masters.live.iter().find_map(|m| m.slot()) {
            return Ok(Some(slot));
        }
        let started = match Master::start(&self.url, &self.opts) {
            Err(Error::Connection(said)) => {
                let said = format!("cannot reach {}: {said}", self.label());
                masters.failed = Some((Instant::now(), said.clone()));
                return Err(Error::Connection(said));
            }
            other => other?,
        };
        let Some(master) = started else {
            self.multiplex.store(false, Ordering::Relaxed);
            return Ok(None);
        };
        masters.failed = None;
        let slot = master.slot();
        masters.live.push(master);
        Ok(slot)
    }
}

impl Connector for SshConnector {
    fn connect(&self) -> Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        let slot = self.slot()?;
        let extra = slot.as_ref().map(Slot::options).unwrap_or_default();
        let argv = ssh_argv_with(&self.url, &self.opts, &extra, true);
        let (process, out, inp) = SshProcess::spawn_argv(&self.url, argv)?;
        let process = Arc::new(Mutex::new(Reaper {
            ssh: process,
            _slot: slot,
        }));
        Ok((
            Box::new(SshOut {
                out,
                process: process.clone(),
            }),
            Box::new(SshIn { inp, process }),
        ))
    }

    fn label(&self) -> String {
        let u = &self.url;
        let host = if u.host.contains(':') {
            format!("[{}]", u.host)
        } else {
            u.host.clone()
        };
        format!(
            "ssh://{}{host}{}{}",
            u.user.as_ref().map(|u| format!("{u}@")).unwrap_or_default(),
            u.port.map(|p| format!(":{p}")).unwrap_or_default(),
            u.path
        )
    }
}

/// The ssh process, waited for (and killed if it lingers) when both halves are dropped; then
/// its claim on the master, if it is multiplexed.
struct Reaper {
    ssh: SshProcess,
    _slot: Option<Slot>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.ssh.finish();
    }
}

/// ssh's stdout: the end of the stream becomes what ssh said when it failed.
struct SshOut {
    out: ChildStdout,
    process: Arc<Mutex<Reaper>>,
}

impl Read for SshOut {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.out.read(buf)? {
            0 if !buf.is_empty() => match lock(&self.process).ssh.failure() {
                Some(said) => Err(std::io::Error::other(said)),
                None => Ok(0),
            },
            n => Ok(n),
        }
    }
}

/// ssh's stdin (declared before the process, so it closes first).
struct SshIn {
    inp: ChildStdin,
    #[allow(dead_code)]
    process: Arc<Mutex<Reaper>>,
}

impl Write for SshIn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inp.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fake_ssh(script: &str) -> SshOptions {
        SshOptions {
            command: vec!["sh".into(), "-c".into(), script.into(), "ssh".into()],
            remote_binary: "cairn".into(),
        }
    }

    #[test]
    fn what_ssh_says_reaches_the_user() {
        let url = SshUrl::parse("ssh://me@example.invalid:2222/srv/r").unwrap();
        let c = ssh(
            &url,
            &fake_ssh("echo 'ssh: connect to host example.invalid port 2222: Connection refused' >&2; exit 255"),
        );
        assert_eq!(c.label(), "ssh://me@example.invalid:2222/srv/r");
        let e = RemoteStore::open(c).err().unwrap().to_string();
        assert!(
            e.contains("Connection refused") && e.contains("exit 255"),
            "{e}"
        );
        let e = RemoteStore::open(ssh(&url, &fake_ssh("exit 127")))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is cairn installed"), "{e}");
        // A far side that is not cairn at all (prints garbage, exits 0).
        let e = RemoteStore::open(ssh(&url, &fake_ssh("cat >/dev/null & printf 'hello\\n'")))
            .err()
            .unwrap();
        assert!(matches!(e, Error::Protocol(_) | Error::Io { .. }), "{e}");
    }

    /// A server of store protocol 3 (before rights): it refuses version 4 in the hello as
    /// such a server does, and serves version 3.
    struct OldServer {
        dir: std::path::PathBuf,
        /// The newest store protocol version it serves.
        speaks: u32,
        /// How many hellos it refused.
        refused: Arc<Mutex<u32>>,
    }

    impl Connector for OldServer {
        fn connect(&self) -> Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
            let (ours, theirs) =
                std::os::unix::net::UnixStream::pair().map_err(|e| Error::io("pair", e))?;
            let (dir, refused, speaks) = (self.dir.clone(), self.refused.clone(), self.speaks);
            std::thread::spawn(move || {
                let (mut r, mut w) = (theirs.try_clone().unwrap(), theirs);
                let Ok(Request::OpenStore {
                    magic,
                    version,
                    create,
                }) = proto::read_msg(&mut r)
                else {
                    return;
                };
                if version > speaks {
                    *lock(&refused) += 1;
                    let said = proto::protocol_error(format!(
                        "store protocol version {version} is not supported here (this cairn serves stores in 3 to {speaks}); use the same cairn version on both sides"
                    ));
                    let _ =
                        proto::write_msg(&mut w, &Response::Failed(proto::WireError::of(&said)));
                    return;
                }
                let policy = crate::sync::serve::Policy::append_only(true);
                let _ = crate::storage::server::serve_dir(
                    &dir,
                    &policy,
                    (magic, version, create),
                    &mut r,
                    &mut w,
                    &mut |_| {},
                );
            });
            Ok((Box::new(ours.try_clone().unwrap()), Box::new(ours)))
        }

        fn label(&self) -> String {
            "old-server".into()
        }
    }

    #[test]
    fn a_server_of_protocol_3_is_spoken_to_in_3() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::testkit::small_config();
        crate::storage::redb::Store::create(dir.path(), &[("config", config.encode())]).unwrap();
        let refused = Arc::new(Mutex::new(0));
        let store = RemoteStore::open(Box::new(OldServer {
            dir: dir.path().to_path_buf(),
            speaks: 3,
            refused: refused.clone(),
        }))
        .unwrap();
        assert_eq!(store.capabilities().rights, Rights::APPEND_ONLY);
        assert_eq!(store.reader().unwrap().count().unwrap(), 0);
        // A connection of its own, opened in 3 straight away.
        let session = store.begin_session(&[]).unwrap();
        store.end_session(session).unwrap();
        assert_eq!(
            *lock(&refused),
            proto::VERSION - 3,
            "asked once in each newer version, then in 3"
        );
    }

    #[test]
    fn a_server_of_protocol_4_is_told_it_is_too_old_to_repair_or_compact() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::testkit::small_config();
        crate::storage::redb::Store::create(dir.path(), &[("config", config.encode())]).unwrap();
        let store = RemoteStore::open(Box::new(OldServer {
            dir: dir.path().to_path_buf(),
            speaks: 4,
            refused: Arc::default(),
        }))
        .unwrap();
        let copy = crate::storage::ObjectCopy {
            id: Id([1; 32]),
            kind: Kind::Chunk,
            sealed: vec![1, 2, 3],
        };
        for e in [
            store.repair(&[copy], &[]).unwrap_err(),
            store.compact().unwrap_err(),
        ] {
            assert!(e.to_string().contains("upgrade cairn on the server"), "{e}");
        }
        assert_eq!(store.reader().unwrap().count().unwrap(), 0);
    }
}
