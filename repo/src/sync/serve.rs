//! `cairn serve`: the far side of an ssh target. Reads frames from a stream, answers each one,
//! and never needs the password.

use super::proto::{self, Request, Response};
use super::sink::{self, Sink};
use crate::error::Result;
use crate::repo::OpenOptions;
use crate::storage::{Storage, Url};
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
    let mut sink = Sink::new(&*store, append_only)?;
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

/// The replica this session writes: the repository at `dir` (the redb store, behind the
/// seam like any other), created from the client's `Create` when there is none yet.
fn open_or_create<R: Read, W: Write>(
    dir: &Path,
    repo_id: &[u8; 16],
    version: u32,
    append_only: bool,
    r: &mut R,
    w: &mut W,
) -> Result<Box<dyn Storage>> {
    let hello = |exists| Response::Hello {
        version,
        repo_id: *repo_id,
        exists,
        append_only,
    };
    let url = Url::Local(dir.to_path_buf());
    let opts = OpenOptions::default();
    if let Some(store) = sink::open_replica(&url, repo_id, &opts)? {
        proto::write_msg(w, &hello(true))?;
        return Ok(store);
    }
    proto::write_msg(w, &hello(false))?;
    match proto::read_msg(r)? {
        Request::Create { config, key_slots } => {
            let store = sink::create_replica(&url, repo_id, &config, &key_slots, &opts)?;
            proto::write_msg(w, &Response::Done)?;
            Ok(store)
        }
        _ => Err(proto::protocol_error(
            "expected a create request for the new replica",
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::crypto::{KdfParams, KeySlot};
    use crate::format::Config;
    use crate::store::DEFAULT_DB_CACHE;

    fn config() -> Config {
        Config {
            repo_id: [5; 16],
            chunk_min: 64,
            chunk_avg: 256,
            chunk_max: 1024,
            piece_size: 64 << 10,
            pack_max: 256 << 10,
            created: 0,
        }
    }

    /// Serve a whole recorded client session; returns the replies.
    fn session(dir: &Path, requests: &[Request]) -> (Result<()>, Vec<Response>) {
        let mut input = Vec::new();
        for r in requests {
            proto::write_msg(&mut input, r).unwrap();
        }
        let mut out = Vec::new();
        let result = serve(dir, false, &mut input.as_slice(), &mut out, &mut |_| {});
        let mut replies = Vec::new();
        let mut r = out.as_slice();
        while let Some(body) = proto::read_frame(&mut r).unwrap() {
            replies.push(proto::decode(&body).unwrap());
        }
        (result, replies)
    }

    #[test]
    fn old_sync_clients_are_served_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let slot = KeySlot {
            created: 0,
            host: "h".into(),
            user: "u".into(),
            kdf: KdfParams {
                memory_kib: 8,
                iterations: 1,
                parallelism: 1,
                salt: [1; 16],
            },
            nonce: [2; 24],
            wrapped: vec![3; 48],
        };
        for version in [1, 2] {
            let at = dir.path().join(format!("v{version}"));
            let hello = Request::Hello {
                magic: proto::MAGIC,
                version,
                repo_id: [5; 16],
            };
            let (result, replies) = session(
                &at,
                &[
                    hello.clone(),
                    Request::Create {
                        config: config().encode(),
                        key_slots: vec![postcard::to_stdvec(&slot).unwrap()],
                    },
                    Request::Info,
                    Request::Bye,
                ],
            );
            result.unwrap();
            let hello_reply = |exists| Response::Hello {
                version,
                repo_id: [5; 16],
                exists,
                append_only: false,
            };
            assert_eq!(
                replies,
                vec![
                    hello_reply(false),
                    Response::Done,
                    Response::Info {
                        snapshots: 0,
                        objects: 0,
                        append_only: false
                    },
                    Response::Done
                ]
            );
            // The frames are the version-2 encoding: a hello reply is tag 0, then the fields.
            let mut out = Vec::new();
            proto::write_msg(&mut out, &hello_reply(true)).unwrap();
            assert_eq!(out[4], 0);
            let (result, replies) = session(&at, &[hello, Request::Bye]);
            result.unwrap();
            assert_eq!(replies, vec![hello_reply(true), Response::Done]);
        }
        // A store request on a sync connection is refused, and the session goes on.
        let (_, replies) = session(
            &dir.path().join("v2"),
            &[
                Request::Hello {
                    magic: proto::MAGIC,
                    version: 2,
                    repo_id: [5; 16],
                },
                Request::Count,
                Request::Bye,
            ],
        );
        assert!(matches!(&replies[1], Response::Error(m) if m.contains("store request")));
        assert_eq!(replies[2], Response::Done);
    }

    #[test]
    fn the_same_entry_serves_a_store_client() {
        let dir = tempfile::tempdir().unwrap();
        let open = |create| Request::OpenStore {
            magic: proto::MAGIC,
            version: proto::VERSION,
            create,
        };
        let (result, replies) = session(dir.path(), &[open(None)]);
        assert!(result.is_err());
        assert!(matches!(
            &replies[..],
            [Response::Failed(e)] if e.clone().into_error("x").to_string().contains("no Cairn repository")
        ));
        let (result, replies) = session(
            dir.path(),
            &[
                open(Some(config().encode())),
                Request::Config,
                Request::Count,
            ],
        );
        result.unwrap();
        assert_eq!(
            replies,
            vec![
                Response::StoreOpened {
                    version: proto::VERSION,
                    append_only: false
                },
                Response::Blob(config().encode()),
                Response::Number(0)
            ]
        );
        // The repository is an ordinary local one.
        assert_eq!(
            crate::store::Store::open(dir.path(), DEFAULT_DB_CACHE)
                .unwrap()
                .config()
                .unwrap(),
            config()
        );
        let (result, replies) = session(
            dir.path(),
            &[Request::OpenStore {
                magic: proto::MAGIC,
                version: 2,
                create: None,
            }],
        );
        assert!(result.is_err());
        assert!(matches!(&replies[..], [Response::Failed(_)]));
    }
}
