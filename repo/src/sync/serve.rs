//! `cairn serve`: the far side of an ssh target. Reads frames from a stream, answers each one,
//! and never needs the password.

use super::proto::{self, Request, Response};
use super::sink::{self, Sink};
use crate::error::Result;
use crate::store::{Store, DEFAULT_DB_CACHE};
use std::io::{Read, Write};
use std::path::Path;

/// Serve one client session on `r`/`w` for the repository at `dir`. Returns when the client
/// says goodbye or closes the stream; a protocol violation is reported to the client (when it
/// can still be) and returned as an error.
///
/// The first message decides what the session is: a sync client's `Hello` (a replica
/// receiver, protocol versions 1..=3, answered as before) or a store client's `OpenStore`
/// (version 3: the repository served behind the storage seam, `storage::remote` is the
/// client).
///
/// Every refusal and error answered to the client is also passed to `log` (the server's
/// record of what a client tried: `cairn serve` writes it to stderr and `--log-file`).
pub fn serve<R: Read, W: Write>(
    dir: &Path,
    append_only: bool,
    r: &mut R,
    w: &mut W,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let result = match proto::read_msg(r) {
        Ok(Request::OpenStore {
            magic,
            version,
            create,
        }) => {
            return crate::storage::server::serve_dir(
                dir,
                append_only,
                (magic, version, create),
                r,
                w,
                log,
            )
        }
        Ok(first) => session(first, dir, append_only, r, w, log),
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        // Best effort: the peer may already be gone.
        let _ = proto::write_msg(w, &Response::Error(e.to_string()));
        log(&e.to_string());
    }
    result
}

fn session<R: Read, W: Write>(
    first: Request,
    dir: &Path,
    append_only: bool,
    r: &mut R,
    w: &mut W,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let (repo_id, version) = match first {
        Request::Hello {
            magic,
            version,
            repo_id,
        } => {
            if magic != proto::MAGIC {
                return Err(proto::protocol_error("the peer is not a cairn sync client"));
            }
            if !(proto::MIN_VERSION..=proto::VERSION).contains(&version) {
                return Err(proto::protocol_error(format!(
                    "sync protocol version {version} is not supported here (this cairn speaks {} to {}); use the same cairn version on both sides",
                    proto::MIN_VERSION,
                    proto::VERSION
                )));
            }
            (repo_id, version)
        }
        _ => return Err(proto::protocol_error("expected a hello")),
    };
    let store = open_or_create(dir, &repo_id, version, append_only, r, w)?;
    let mut sink = Sink::new(&store, append_only)?;
    loop {
        let req: Request = match proto::read_frame(r)? {
            Some(body) => proto::decode(&body)?,
            None => return sink.flush(),
        };
        let bye = req == Request::Bye;
        let resp = sink.handle(req);
        if let Response::Error(msg) = &resp {
            log(msg);
        }
        proto::write_msg(w, &resp)?;
        if bye {
            return Ok(());
        }
    }
}

fn open_or_create<R: Read, W: Write>(
    dir: &Path,
    repo_id: &[u8; 16],
    version: u32,
    append_only: bool,
    r: &mut R,
    w: &mut W,
) -> Result<Store> {
    let hello = |exists| Response::Hello {
        version,
        repo_id: *repo_id,
        exists,
        append_only,
    };
    if sink::repository_exists(dir) {
        let store = sink::open_replica(dir, repo_id, DEFAULT_DB_CACHE)?;
        proto::write_msg(w, &hello(true))?;
        return Ok(store);
    }
    proto::write_msg(w, &hello(false))?;
    match proto::read_msg(r)? {
        Request::Create { config, key_slots } => {
            let store = sink::create_replica(dir, repo_id, &config, &key_slots)?;
            proto::write_msg(w, &Response::Done)?;
            Ok(store)
        }
        _ => Err(proto::protocol_error(
            "expected a create request for the new replica",
        )),
    }
}
