//! The sync wire protocol (DESIGN.md, "Sync protocol"): length-prefixed frames carrying
//! postcard-encoded messages. Every decoder here takes hostile bytes: lengths are checked
//! against hard limits before anything is allocated, and a bad frame is a clean
//! protocol error (`Error::Protocol`), never a panic.

use crate::error::{Error, Result};
use crate::id::Id;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

/// Protocol version spoken by this build. Version 2 appended `ListSnapshotChecks`; version 3
/// the store protocol (`OpenStore` and what follows it, DESIGN.md §9); version 4 the rights a
/// store client has (`Response::StoreOpenedWith`); version 5 `Repair` and `Compact`. A server answers clients of
/// `MIN_VERSION..=VERSION` in the client's version, and an older server refuses a newer
/// client in the hello, saying which versions it speaks.
pub const VERSION: u32 = 5;
pub const MIN_VERSION: u32 = 1;
/// The version a sync client says in its hello: sync's messages did not change in 3, so a
/// new client still syncs to a version-2 server.
pub const SYNC_VERSION: u32 = 2;
/// The first version that serves store clients (`Request::OpenStore`).
pub const STORE_VERSION: u32 = 3;
/// The first bytes of a client hello, so a peer that is not cairn fails fast.
pub const MAGIC: [u8; 8] = *b"CAIRNSYN";
/// Largest frame body either side accepts (the 4-byte length prefix excluded).
pub const MAX_FRAME: usize = 64 << 20;
/// Most ids in one `Have` request (and in one `ReadMany` or `RemoveSnapshots`).
pub const MAX_HAVE: usize = 16 * 1024;
/// About how many bytes of objects or snapshot blobs one reply page carries (a page holds at
/// least one entry, so it stays below `MAX_FRAME` for any object that fits a frame at all).
pub const PAGE_BYTES: usize = 4 << 20;
/// Most objects one `List` reply carries.
pub const MAX_LIST: usize = 64 * 1024;
/// Object kinds that travel in `PutObjects` (snapshots travel only in `PutSnapshots`).
pub const OBJECT_KINDS: [u8; 3] = [1, 2, 3];

/// A protocol failure: the peer sent something this side cannot accept.
pub fn protocol_error(msg: impl std::fmt::Display) -> Error {
    Error::Protocol(msg.to_string())
}

/// One sealed object as it travels: stored bytes verbatim plus the index checksum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireObject {
    pub id: Id,
    pub kind: u8,
    pub check: [u8; 16],
    #[serde(with = "bytes")]
    pub sealed: Vec<u8>,
}

/// A `Vec<u8>` as serde bytes: postcard encodes bytes exactly as a sequence of `u8` (a varint
/// length, then the bytes), so the wire is unchanged, but whole slices are copied instead of
/// one element at a time (about 4x faster for a 1 MiB object).
mod bytes {
    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// Client to server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Hello {
        magic: [u8; 8],
        version: u32,
        repo_id: [u8; 16],
    },
    /// Create the replica (only after a hello answered `exists: false`).
    Create {
        config: Vec<u8>,
        key_slots: Vec<Vec<u8>>,
    },
    Info,
    ListSnapshots,
    Have(Vec<Id>),
    PutObjects(Vec<WireObject>),
    /// Commit everything sent so far, then these snapshot blobs, in one final transaction.
    PutSnapshots(Vec<(Id, Vec<u8>)>),
    /// Add key slots the replica lacks (compared byte for byte).
    AddKeySlots(Vec<Vec<u8>>),
    DeleteSnapshots(Vec<Id>),
    Bye,
    /// The stored copy of one object, for `check --repair-from` (added after version 1
    /// shipped: an older server answers with a protocol error).
    GetObject(Id),
    /// The stored blob of one snapshot, likewise.
    GetSnapshot(Id),
    /// Each snapshot's id and the checksum of its stored blob (appended later, like the two
    /// above), so a sender notices a copy that is not the one it sent.
    ListSnapshotChecks,
    // Version 3, the store protocol: a store client's first message is `OpenStore`; every
    // request after it is answered from the server's `Storage` (storage/server.rs).
    /// Open the repository served (`create: None`), or create it from this encoded config.
    OpenStore {
        magic: [u8; 8],
        version: u32,
        create: Option<Vec<u8>>,
    },
    Config,
    KeySlots,
    AddKeySlot(Vec<u8>),
    RemoveKeySlot(u64),
    /// Snapshot blobs with ids after the given one (all from the first), one page.
    Snapshots(Option<Id>),
    RemoveSnapshots(Vec<Id>),
    ObjectInfo(Id),
    /// Read objects (≤ `MAX_HAVE`); answered by `ObjectsRead` pages until `more` is false.
    ReadMany(Vec<Id>),
    List {
        from: Id,
        limit: u32,
    },
    Count,
    /// Open this connection's writer; `PutObjects`, `Checkpoint` and `Commit` then go to it.
    BeginWriter {
        batch_bytes: u64,
        /// `WriterOptions::index_every`.
        index_every: u64,
    },
    Checkpoint,
    Commit(Vec<(Id, Vec<u8>)>),
    /// Begin a session in the server's name; it ends at the latest with the connection.
    BeginSession,
    EndSession(u64),
    Sessions,
    Recover,
    Space,
    /// A state record (`Storage::state`), answered by `State`.
    State(String),
    SetState {
        key: String,
        value: Vec<u8>,
    },
    /// Collect garbage (`Storage::collect_garbage`). The server asks for marks with
    /// `MarkRequest` (answered by `Marks` pages, then `MarksEnd`), says what it does with
    /// `Notice`, and ends with `Collected`.
    Collect(WireGcOptions),
    Marks(Vec<Id>),
    MarksEnd,
    // Version 5.
    /// Put these copies in place of damaged objects and snapshots (`Storage::repair`; at
    /// most `MAX_HAVE` objects, the client sends groups of about 16 MiB); answered by
    /// `Repaired`.
    Repair {
        objects: Vec<WireObject>,
        snapshots: Vec<(Id, Vec<u8>)>,
    },
    /// Give the repository file's free space back (`prune --compact`): the server closes
    /// the repository, compacts it, answers `Compacted` and ends the connection.
    Compact,
}

/// `PruneOptions` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireGcOptions {
    /// The repack threshold in thousandths (`repack_below` × 1000).
    pub repack_below_permille: u32,
    pub wait_ms: u64,
    pub poll_ms: u64,
    pub dry_run: bool,
}

/// Most ids in one `Marks` message.
pub const MAX_MARKS: usize = 1 << 20;
/// Longest state key and value a server takes.
pub const MAX_STATE_KEY: usize = 256;
pub const MAX_STATE_VALUE: usize = 64 << 10;

impl WireGcOptions {
    pub fn of(o: &crate::prune::PruneOptions) -> WireGcOptions {
        WireGcOptions {
            repack_below_permille: (o.repack_below.clamp(0.0, 1.0) * 1000.0).round() as u32,
            wait_ms: o.wait.as_millis().min(u64::MAX as u128) as u64,
            poll_ms: o.poll.as_millis().min(u64::MAX as u128) as u64,
            dry_run: o.dry_run,
        }
    }

    /// The options again; a hostile client's values are brought into range (a wait of at
    /// most a day, a poll of 10 ms to a minute).
    pub fn options(&self) -> crate::prune::PruneOptions {
        use std::time::Duration;
        crate::prune::PruneOptions {
            repack_below: self.repack_below_permille.min(1000) as f64 / 1000.0,
            wait: Duration::from_millis(self.wait_ms.min(86_400_000)),
            poll: Duration::from_millis(self.poll_ms.clamp(10, 60_000)),
            dry_run: self.dry_run,
        }
    }
}

/// An error as it crosses the wire: its kind (see `WireError::of`) and its words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub kind: u32,
    /// The object id or the I/O context, where the kind has one.
    pub subject: String,
    pub detail: String,
    /// The OS error number of an I/O error (0: none).
    pub os_code: i32,
}

/// What a store knows of one object, on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireInfo {
    pub kind: u8,
    pub len: u32,
    pub check: [u8; 16],
}

/// One answer of a `ReadMany`, in the order of the ids asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadAnswer {
    Found(WireObject),
    Missing,
    Failed(WireError),
}

/// Server to client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Hello {
        version: u32,
        repo_id: [u8; 16],
        exists: bool,
        append_only: bool,
    },
    Info {
        snapshots: u64,
        objects: u64,
        append_only: bool,
    },
    Snapshots(Vec<Id>),
    Have(Vec<bool>),
    /// Objects accepted (buffered or committed) and their bytes.
    Stored {
        objects: u64,
        bytes: u64,
    },
    Done,
    Error(String),
    /// The object as stored (unverified: the client checks it), or `None` if absent.
    Object(Option<WireObject>),
    /// The snapshot blob as stored, or `None` if absent.
    SnapshotBlob(Option<Vec<u8>>),
    /// Answer to `ListSnapshotChecks`: (snapshot id, checksum of the stored blob).
    SnapshotChecks(Vec<(Id, [u8; 16])>),
    // Version 3, the store protocol.
    /// Answer to `OpenStore`, in the client's version.
    StoreOpened {
        version: u32,
        append_only: bool,
    },
    /// A store request failed; the client rebuilds the error's kind.
    Failed(WireError),
    /// The encoded config.
    Blob(Vec<u8>),
    Number(u64),
    /// Key slots or sessions by number.
    Numbered(Vec<(u64, Vec<u8>)>),
    SnapshotPage {
        blobs: Vec<(Id, Vec<u8>)>,
        more: bool,
    },
    ObjectInfo(Option<WireInfo>),
    ObjectsRead {
        answers: Vec<ReadAnswer>,
        more: bool,
    },
    Listed(Vec<(Id, WireInfo)>),
    Space(crate::storage::Space),
    /// Answer to `State`.
    State(Option<Vec<u8>>),
    /// During a `Collect`: which objects do these snapshots reference?
    MarkRequest(Vec<Id>),
    /// During a `Collect`: progress for the user.
    Notice(String),
    Collected(Box<crate::prune::PruneReport>),
    // Version 4.
    /// Answer to `OpenStore` of version 4 and later: what this client may do.
    StoreOpenedWith {
        version: u32,
        rights: crate::storage::Rights,
    },
    // Version 5.
    /// Answer to `Repair`: the ids not taken, each with why.
    Repaired(Vec<(Id, String)>),
    /// Answer to `Compact`: whether the file changed, and its length after it.
    Compacted {
        changed: bool,
        file_len: u64,
    },
}

mod kind {
    pub const MISSING: u32 = 1;
    pub const REFUSED: u32 = 2;
    pub const REPO_NOT_FOUND: u32 = 3;
    pub const REPO_EXISTS: u32 = 4;
    pub const LOCKED: u32 = 5;
    pub const READ_ONLY: u32 = 6;
    pub const CORRUPT: u32 = 7;
    pub const DAMAGED: u32 = 8;
    pub const IO: u32 = 9;
    pub const DB: u32 = 10;
    pub const FORMAT: u32 = 11;
    pub const INVALID: u32 = 12;
    pub const PROTOCOL: u32 = 13;
    pub const PERMISSION_DENIED: u32 = 14;
    pub const INTERRUPTED: u32 = 15;
    pub const WRONG_PASSWORD: u32 = 16;
    pub const USAGE: u32 = 17;
    pub const NOT_FOUND: u32 = 18;
    pub const CRYPTO: u32 = 19;
    pub const INTERNAL: u32 = 20;
    pub const LOCAL_ONLY: u32 = 21;
    pub const NOT_ALLOWED: u32 = 22;
    pub const QUOTA_EXCEEDED: u32 = 23;
    pub const KEY_NEEDED: u32 = 24;
    pub const CONNECTION: u32 = 25;
}

impl WireError {
    /// The wire form of an error the server met.
    pub fn of(e: &Error) -> WireError {
        let w = |kind, subject: &str, detail: &str| WireError {
            kind,
            subject: subject.to_string(),
            detail: detail.to_string(),
            os_code: 0,
        };
        match e {
            Error::Missing(id) => w(kind::MISSING, id, ""),
            Error::Refused(m) => w(kind::REFUSED, "", m),
            Error::RepoNotFound { reason, .. } => w(kind::REPO_NOT_FOUND, "", reason),
            Error::RepoExists(_) => w(kind::REPO_EXISTS, "", ""),
            Error::Locked { reason, .. } => w(kind::LOCKED, "", reason),
            Error::ReadOnly { why, .. } => w(kind::READ_ONLY, "", why),
            Error::Corrupt { id, reason } => w(kind::CORRUPT, id, reason),
            Error::Damaged { reason, .. } => w(kind::DAMAGED, "", reason),
            Error::Io { context, source } => WireError {
                os_code: source.raw_os_error().unwrap_or(0),
                ..w(kind::IO, context, &source.to_string())
            },
            Error::Db(m) => w(kind::DB, "", m),
            Error::Format(m) => w(kind::FORMAT, "", m),
            Error::Remote(m) => w(kind::INVALID, "", m),
            Error::Protocol(m) => w(kind::PROTOCOL, "", m),
            Error::PermissionDenied(_) => w(kind::PERMISSION_DENIED, "", ""),
            Error::Interrupted => w(kind::INTERRUPTED, "", ""),
            Error::WrongPassword(_) => w(kind::WRONG_PASSWORD, "", ""),
            Error::Usage(m) => w(kind::USAGE, "", m),
            Error::NotFound(m) => w(kind::NOT_FOUND, "", m),
            Error::Crypto(m) => w(kind::CRYPTO, "", m),
            Error::Internal(m) => w(kind::INTERNAL, "", m),
            Error::LocalOnly { what, .. } => w(kind::LOCAL_ONLY, what, ""),
            Error::KeyNeeded(m) => w(kind::KEY_NEEDED, "", m),
            Error::Connection(m) => w(kind::CONNECTION, "", m),
            // The subject is the right and the rights granted (`forget backup,restore`); the
            // detail the whole message, for a client that does not know the kind.
            Error::NotAllowed { right, granted, .. } => w(
                kind::NOT_ALLOWED,
                &format!("{right} {granted}"),
                &e.to_string(),
            ),
            Error::QuotaExceeded { quota, used, .. } => w(
                kind::QUOTA_EXCEEDED,
                &format!("{quota} {used}"),
                &e.to_string(),
            ),
        }
    }

    /// The error again, on the client: errors about the repository as a whole name
    /// `location` (the client's name for it, a URL), not the server's path.
    pub fn into_error(self, location: &str) -> Error {
        let path = std::path::PathBuf::from(location);
        let WireError {
            kind,
            subject,
            detail,
            os_code,
        } = self;
        match kind {
            kind::MISSING => Error::Missing(subject),
            kind::REFUSED => Error::Refused(detail),
            kind::REPO_NOT_FOUND => Error::RepoNotFound {
                path,
                reason: detail,
            },
            kind::REPO_EXISTS => Error::RepoExists(path),
            kind::LOCKED => Error::Locked {
                path,
                reason: detail,
            },
            // The reason is a static string on this side; the server's words are lost.
            kind::READ_ONLY => Error::ReadOnly {
                path,
                why: "the server opened it read-only",
            },
            kind::CORRUPT => Error::Corrupt {
                id: subject,
                reason: detail,
            },
            kind::DAMAGED => Error::Damaged {
                path,
                reason: detail,
            },
            kind::IO => Error::io(
                format!("on the server of {location}: {subject}"),
                if os_code != 0 {
                    std::io::Error::from_raw_os_error(os_code)
                } else {
                    std::io::Error::other(detail)
                },
            ),
            kind::DB => Error::Db(detail),
            kind::KEY_NEEDED => Error::KeyNeeded(detail),
            kind::CONNECTION => Error::Connection(format!("on the server of {location}: {detail}")),
            kind::FORMAT => Error::Format(detail),
            kind::INVALID => Error::Remote(format!("the server of {location} failed: {detail}")),
            kind::PROTOCOL => Error::Protocol(format!("the server of {location} says: {detail}")),
            kind::PERMISSION_DENIED => Error::PermissionDenied(path),
            kind::INTERRUPTED => Error::Interrupted,
            kind::WRONG_PASSWORD => Error::WrongPassword(path),
            kind::USAGE => Error::Usage(detail),
            kind::NOT_FOUND => Error::NotFound(detail),
            kind::CRYPTO => Error::Crypto(detail),
            kind::INTERNAL => Error::Internal(format!("on the server of {location}: {detail}")),
            kind::LOCAL_ONLY => Error::LocalOnly {
                what: subject,
                location: location.to_string(),
            },
            kind::NOT_ALLOWED => match refused_right(&subject) {
                Some((right, granted)) => Error::NotAllowed {
                    right,
                    granted,
                    location: location.to_string(),
                },
                None => Error::Remote(format!("the server of {location} says: {detail}")),
            },
            kind::QUOTA_EXCEEDED => match numbers(&subject) {
                Some((quota, used)) => Error::QuotaExceeded {
                    location: location.to_string(),
                    quota,
                    used,
                },
                None => Error::Remote(format!("the server of {location} says: {detail}")),
            },
            _ => Error::Remote(format!("the server of {location} failed: {detail}")),
        }
    }
}

/// `forget backup,restore`: the right refused and the rights granted.
fn refused_right(s: &str) -> Option<(crate::storage::Right, crate::storage::Rights)> {
    let (right, granted) = s.split_once(' ')?;
    Some((
        crate::storage::Right::named(right)?,
        crate::storage::Rights::parse(granted).ok()?,
    ))
}

fn numbers(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once(' ')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Checks a store server applies to one object a client writes: a known kind and bytes that
/// match the checksum. Unlike `check_object` (replicas take only sealed chunks, trees and
/// lists) the store below the seam takes whatever bytes its caller seals.
pub fn check_store_object(o: &WireObject) -> Result<crate::crypto::Kind> {
    let kind = crate::crypto::Kind::from_u8(o.kind)
        .ok_or_else(|| protocol_error(format!("object {} has unknown kind {}", o.id, o.kind)))?;
    if u32::try_from(o.sealed.len()).is_err() {
        return Err(protocol_error(format!("object {} is too long", o.id)));
    }
    if crate::storage::checksum(&o.sealed) != o.check {
        return Err(Error::corrupt(
            o.id,
            "arrived with bytes that do not match its checksum",
        ));
    }
    Ok(kind)
}

/// Encode a message into a frame body.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    let body = postcard::to_stdvec(msg)
        .map_err(|e| Error::Internal(format!("encoding sync message: {e}")))?;
    if body.is_empty() || body.len() > MAX_FRAME {
        return Err(Error::Refused(format!(
            "sync message of {} bytes exceeds the frame limit of {MAX_FRAME}",
            body.len()
        )));
    }
    Ok(body)
}

/// Decode a frame body; the whole body must be one message.
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T> {
    let (msg, rest) = postcard::take_from_bytes(body)
        .map_err(|e| protocol_error(format!("undecodable message: {e}")))?;
    if !rest.is_empty() {
        return Err(protocol_error("trailing bytes after the message"));
    }
    Ok(msg)
}

/// Write one frame: `u32` little-endian body length, then the body.
pub fn write_frame<W: Write>(w: &mut W, body: &[u8]) -> Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| protocol_error("frame too large"))?;
    w.write_all(&len.to_le_bytes())
        .and_then(|_| w.write_all(body))
        .and_then(|_| w.flush())
        .map_err(|e| Error::io("sending to the sync peer", e))
}

/// Read one frame body. `Ok(None)` on a clean end of stream before a frame starts.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match read_full(r, &mut len)? {
        0 => return Ok(None),
        4 => {}
        n => {
            return Err(protocol_error(format!(
                "stream ended inside a frame header ({n} of 4 bytes)"
            )))
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(protocol_error(format!(
            "frame length {len} is outside 1..={MAX_FRAME}"
        )));
    }
    // Grow with the data actually received, so a lying length costs no memory up front.
    let mut body = Vec::with_capacity(len.min(1 << 20));
    r.take(len as u64)
        .read_to_end(&mut body)
        .map_err(|e| Error::io("reading from the sync peer", e))?;
    if body.len() != len {
        return Err(protocol_error(format!(
            "truncated frame: {} of {len} bytes",
            body.len()
        )));
    }
    Ok(Some(body))
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading from the sync peer", e)),
        }
    }
    Ok(got)
}

/// Read and decode one message; end of stream is an error here.
pub fn read_msg<R: Read, T: for<'de> Deserialize<'de>>(r: &mut R) -> Result<T> {
    match read_frame(r)? {
        Some(body) => decode(&body),
        None => Err(protocol_error("the peer closed the connection")),
    }
}

pub fn write_msg<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<()> {
    write_frame(w, &encode(msg)?)
}

/// Checks a server applies to one incoming object before storing it.
pub fn check_object(o: &WireObject) -> Result<crate::crypto::Kind> {
    let kind = crate::crypto::Kind::from_u8(o.kind)
        .filter(|_| OBJECT_KINDS.contains(&o.kind))
        .ok_or_else(|| {
            protocol_error(format!(
                "object {} has kind {}, not chunk, tree or list",
                o.id, o.kind
            ))
        })?;
    if u32::try_from(o.sealed.len()).is_err() || o.sealed.len() < crate::crypto::SEAL_OVERHEAD {
        return Err(protocol_error(format!(
            "object {} has an impossible length {}",
            o.id,
            o.sealed.len()
        )));
    }
    if crate::storage::checksum(&o.sealed) != o.check {
        return Err(Error::corrupt(
            o.id,
            "arrived with bytes that do not match its checksum",
        ));
    }
    Ok(kind)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn round_trip() {
        let req = Request::Have(vec![Id([7; 32]), Id([8; 32])]);
        let mut buf = Vec::new();
        write_msg(&mut buf, &req).unwrap();
        let back: Request = read_msg(&mut buf.as_slice()).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let mut big = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        big.extend_from_slice(&[0; 16]);
        assert!(read_frame(&mut big.as_slice()).is_err());
        let zero = 0u32.to_le_bytes();
        assert!(read_frame(&mut zero.as_slice()).is_err());
        let mut short = frame(b"abcdef");
        short.truncate(7);
        assert!(read_frame(&mut short.as_slice()).is_err());
        assert!(read_frame(&mut [1u8, 0].as_slice()).is_err());
        assert!(read_frame(&mut [].as_slice()).unwrap().is_none());
    }

    #[test]
    fn trailing_bytes_and_wrong_kinds_are_errors() {
        let mut body = encode(&Request::Info).unwrap();
        body.push(0);
        assert!(decode::<Request>(&body).is_err());
        let sealed = vec![1u8; 64];
        let o = WireObject {
            id: Id([1; 32]),
            kind: 4,
            check: crate::storage::checksum(&sealed),
            sealed,
        };
        assert!(check_object(&o).is_err());
        let o = WireObject {
            kind: 1,
            check: [0; 16],
            ..o
        };
        assert!(check_object(&o).is_err(), "checksum mismatch");
    }

    #[test]
    fn store_messages_round_trip_and_errors_keep_their_kind() {
        let o = WireObject {
            id: Id([1; 32]),
            kind: 1,
            check: [2; 16],
            sealed: vec![3; 10],
        };
        let info = WireInfo {
            kind: 2,
            len: 5,
            check: [4; 16],
        };
        let requests = [
            Request::OpenStore {
                magic: MAGIC,
                version: VERSION,
                create: Some(vec![1, 2]),
            },
            Request::Snapshots(Some(Id([9; 32]))),
            Request::ReadMany(vec![Id([1; 32])]),
            Request::List {
                from: Id([0; 32]),
                limit: 7,
            },
            Request::BeginWriter {
                batch_bytes: 1,
                index_every: 0,
            },
            Request::Collect(WireGcOptions::of(&crate::prune::PruneOptions::default())),
            Request::Marks(vec![Id([3; 32])]),
            Request::SetState {
                key: "k".into(),
                value: vec![1],
            },
            Request::Commit(vec![(Id([1; 32]), vec![1])]),
            Request::Space,
        ];
        for r in requests {
            assert_eq!(decode::<Request>(&encode(&r).unwrap()).unwrap(), r);
        }
        let responses = [
            Response::ObjectsRead {
                answers: vec![
                    ReadAnswer::Found(o.clone()),
                    ReadAnswer::Missing,
                    ReadAnswer::Failed(WireError::of(&Error::Missing("x".into()))),
                ],
                more: true,
            },
            Response::Listed(vec![(Id([1; 32]), info)]),
            Response::ObjectInfo(Some(info)),
            Response::Space(crate::storage::Space {
                db_bytes: Some(3),
                ..Default::default()
            }),
        ];
        for r in responses {
            assert_eq!(decode::<Response>(&encode(&r).unwrap()).unwrap(), r);
        }
        // An object's bytes encode as a plain `Vec<u8>` does (what older peers send and expect).
        #[derive(Serialize)]
        struct Plain {
            id: Id,
            kind: u8,
            check: [u8; 16],
            sealed: Vec<u8>,
        }
        let big = WireObject {
            sealed: (0..300u32).map(|i| i as u8).collect(),
            ..o.clone()
        };
        let plain = Plain {
            id: big.id,
            kind: big.kind,
            check: big.check,
            sealed: big.sealed.clone(),
        };
        assert_eq!(encode(&big).unwrap(), encode(&plain).unwrap());
        assert_eq!(decode::<WireObject>(&encode(&plain).unwrap()).unwrap(), big);
        // The old variants keep their tags (postcard numbers variants by position).
        assert_eq!(
            encode(&Request::Hello {
                magic: MAGIC,
                version: 2,
                repo_id: [0; 16]
            })
            .unwrap()[0],
            0
        );
        assert_eq!(encode(&Request::ListSnapshotChecks).unwrap()[0], 12);
        assert_eq!(encode(&Response::SnapshotChecks(vec![])).unwrap()[0], 9);

        let cases = [
            Error::Missing("ab".into()),
            Error::Refused("no".into()),
            Error::RepoNotFound {
                path: "/srv/x".into(),
                reason: "empty".into(),
            },
            Error::RepoExists("/srv/x".into()),
            Error::Locked {
                path: "/srv/x".into(),
                reason: "busy".into(),
            },
            Error::ReadOnly {
                path: "/srv/x".into(),
                why: "ro",
            },
            Error::corrupt("cd", "bad"),
            Error::Damaged {
                path: "/srv/x".into(),
                reason: "torn".into(),
            },
            Error::io("writing", std::io::Error::from_raw_os_error(libc::ENOSPC)),
            Error::Db("db".into()),
            Error::Format("fmt".into()),
            Error::Remote("inv".into()),
            Error::Connection("conn".into()),
            Error::Protocol("proto".into()),
            Error::PermissionDenied("/srv/x".into()),
            Error::Interrupted,
            Error::NotAllowed {
                right: crate::storage::Right::Forget,
                granted: crate::storage::Rights::APPEND_ONLY,
                location: "/srv/x".into(),
            },
            Error::QuotaExceeded {
                location: "/srv/x".into(),
                quota: 500 << 30,
                used: 499 << 30,
            },
        ];
        for e in cases {
            let wire = WireError::of(&e);
            let back = decode::<WireError>(&encode(&wire).unwrap())
                .unwrap()
                .into_error("ssh://h/x");
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&e),
                "{e} came back as {back}"
            );
            if e.is_disk_full() {
                assert!(back.is_disk_full(), "{back}");
            }
            if let Error::NotAllowed { .. } | Error::QuotaExceeded { .. } = &e {
                // The same error, about the client's location.
                assert_eq!(
                    back.to_string(),
                    e.to_string().replace("/srv/x", "ssh://h/x"),
                    "{back}"
                );
            }
            if let Error::RepoNotFound { path, .. } = &back {
                assert_eq!(
                    path.to_str(),
                    Some("ssh://h/x"),
                    "names the client's location"
                );
            }
        }
        let unknown = WireError {
            kind: 9999,
            subject: String::new(),
            detail: "what".into(),
            os_code: 0,
        };
        assert!(matches!(unknown.into_error("x"), Error::Remote(_)));
    }

    proptest! {
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut r = bytes.as_slice();
            while let Ok(Some(body)) = read_frame(&mut r) {
                let _ = decode::<Request>(&body);
                let _ = decode::<Response>(&body);
            }
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
        }

        #[test]
        fn framed_hostile_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 1..2048)) {
            let f = frame(&body);
            let got = read_frame(&mut f.as_slice()).unwrap().unwrap();
            prop_assert_eq!(&got, &body);
            if let Ok(Request::PutObjects(objs)) = decode::<Request>(&got) {
                for o in &objs { let _ = check_object(o); let _ = check_store_object(o); }
            }
            if let Ok(Response::Failed(e)) = decode::<Response>(&got) {
                let _ = e.into_error("x").to_string();
            }
            if let Ok(Response::ObjectsRead { answers, .. }) = decode::<Response>(&got) {
                for a in answers {
                    if let ReadAnswer::Failed(e) = a { let _ = e.into_error("x").to_string(); }
                }
            }
            let _ = decode::<Response>(&got);
        }
    }
}
