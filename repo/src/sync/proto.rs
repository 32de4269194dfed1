//! The sync wire protocol (DESIGN.md, "Sync protocol"): length-prefixed frames carrying
//! postcard-encoded messages. Every decoder here takes hostile bytes: lengths are checked
//! against hard limits before anything is allocated, and a bad frame is a clean
//! protocol error (`Error::Protocol`), never a panic.

use crate::error::{Error, Result};
use crate::id::Id;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

/// Protocol version spoken by this build. Version 2 appended `ListSnapshotChecks`; a server
/// answers clients of `MIN_VERSION..=VERSION` in the client's version, and an older server
/// refuses a newer client in the hello, saying which versions it speaks.
pub const VERSION: u32 = 2;
pub const MIN_VERSION: u32 = 1;
/// The first bytes of a client hello, so a peer that is not cairn fails fast.
pub const MAGIC: [u8; 8] = *b"CAIRNSYN";
/// Largest frame body either side accepts (the 4-byte length prefix excluded).
pub const MAX_FRAME: usize = 64 << 20;
/// Most ids in one `Have` request.
pub const MAX_HAVE: usize = 16 * 1024;
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
    pub sealed: Vec<u8>,
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
}

/// Encode a message into a frame body.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    let body = postcard::to_stdvec(msg)
        .map_err(|e| Error::Invalid(format!("encoding sync message: {e}")))?;
    if body.is_empty() || body.len() > MAX_FRAME {
        return Err(Error::Invalid(format!(
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
    if crate::store::checksum(&o.sealed) != o.check {
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
            check: crate::store::checksum(&sealed),
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
                for o in &objs { let _ = check_object(o); }
            }
            let _ = decode::<Response>(&got);
        }
    }
}
