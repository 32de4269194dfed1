//! `cairn serve`: the far side of an ssh target. Reads frames from a stream, answers each one,
//! and never needs the password.

use super::proto::{self, Request, Response};
use super::sink::{self, Sink};
use crate::error::Result;
use crate::repo::OpenOptions;
use crate::storage::{rights, Quota, Rights, Storage, Url};
use std::io::{Read, Write};
use std::path::Path;

/// The state record where `cairn serve --quota` notes its quota, JSON `{"bytes":N}` (for
/// `cairn status`): the quota of the last `cairn serve --quota` that served the repository.
pub const QUOTA_KEY: &str = "quota";

/// What `cairn serve` lets its client do: the rights of `--allow` (or `--append-only`) and
/// the quota of `--quota`, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub rights: Rights,
    pub quota: Option<u64>,
}

impl Policy {
    /// `cairn serve` with or without `--append-only`, and no quota.
    pub fn append_only(append_only: bool) -> Policy {
        Policy {
            rights: Rights::append_only_if(append_only),
            quota: None,
        }
    }

    /// Note the quota in the repository's state records (when it differs from the one
    /// there), for `cairn status`. Serving without one leaves the record as it is: several
    /// keys may serve one repository, and only some of them with `--quota`.
    pub(crate) fn record_quota(&self, store: &dyn Storage, log: &mut dyn FnMut(&str)) {
        let Some(bytes) = self.quota else { return };
        let want = format!("{{\"bytes\":{bytes}}}");
        let result = store.state(QUOTA_KEY).and_then(|had| match had {
            Some(had) if had == want.as_bytes() => Ok(()),
            _ => store.set_state(QUOTA_KEY, want.as_bytes()),
        });
        if let Err(e) = result {
            log(&format!("could not record the quota: {e}"));
        }
    }
}

/// Serve one client session on `r`/`w` for the repository at `dir`. Returns when the client
/// says goodbye or closes the stream; a protocol violation is reported to the client (when it
/// can still be) and returned as an error.
///
/// The first message decides what the session is: a sync client's `Hello` (a replica
/// receiver, protocol versions 1..=4, answered as before) or a store client's `OpenStore`
/// (version 3 and later: the repository served behind the storage seam, `storage::remote` is
/// the client). Every request is refused that `policy`'s rights do not cover
/// (`storage::rights::needed`), and writes stop at its quota.
///
/// Every refusal and error answered to the client is also passed to `log` (the server's
/// record of what a client tried: `cairn serve` writes it to stderr and `--log-file`).
pub fn serve<R: Read, W: Write>(
    dir: &Path,
    policy: &Policy,
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
                policy,
                (magic, version, create),
                r,
                w,
                log,
            )
        }
        Ok(first) => session(first, dir, policy, r, w, log),
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
    policy: &Policy,
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
    let store = open_or_create(dir, &repo_id, version, policy.rights, r, w)?;
    policy.record_quota(&*store, log);
    let quota = policy.quota.map(|bytes| Quota::new(&*store, bytes));
    let served: &dyn Storage = match &quota {
        Some(q) => q,
        None => &*store,
    };
    let mut sink = Sink::serving(served, policy.rights)?;
    let location = store.location();
    loop {
        let req: Request = match proto::read_frame(r)? {
            Some(body) => proto::decode(&body)?,
            None => return sink.flush(),
        };
        let bye = req == Request::Bye;
        let resp = match policy.rights.allow(rights::needed(&req), &location) {
            Err(e) => Response::Error(e.to_string()),
            Ok(()) => sink.handle(req),
        };
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
    granted: Rights,
    r: &mut R,
    w: &mut W,
) -> Result<Box<dyn Storage>> {
    let hello = |exists| Response::Hello {
        version,
        repo_id: *repo_id,
        exists,
        append_only: granted.append_only(),
    };
    let url = Url::Local(dir.to_path_buf());
    let opts = OpenOptions::default();
    if let Some(store) = sink::open_replica(&url, repo_id, &opts)? {
        proto::write_msg(w, &hello(true))?;
        return Ok(store);
    }
    proto::write_msg(w, &hello(false))?;
    let req = proto::read_msg(r)?;
    granted.allow(rights::needed(&req), &dir.display().to_string())?;
    match req {
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
    use crate::error::Error;
    use crate::format::Config;
    use crate::id::Id;
    use crate::storage::redb::{Store, DEFAULT_DB_CACHE};
    use crate::storage::{Reader, Right};

    fn config() -> Config {
        crate::testkit::small_config()
    }

    /// Serve a whole recorded client session; returns the replies.
    fn session(dir: &Path, requests: &[Request]) -> (Result<()>, Vec<Response>) {
        session_with(dir, &Policy::default(), requests)
    }

    fn session_with(
        dir: &Path,
        policy: &Policy,
        requests: &[Request],
    ) -> (Result<()>, Vec<Response>) {
        let mut input = Vec::new();
        for r in requests {
            proto::write_msg(&mut input, r).unwrap();
        }
        let mut out = Vec::new();
        let result = serve(dir, policy, &mut input.as_slice(), &mut out, &mut |_| {});
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
                Response::StoreOpenedWith {
                    version: proto::VERSION,
                    rights: Rights::FULL
                },
                Response::Blob(config().encode()),
                Response::Number(0)
            ]
        );
        // The repository is an ordinary local one.
        assert_eq!(
            Store::open(dir.path(), DEFAULT_DB_CACHE)
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

    fn open_store(version: u32, create: Option<Vec<u8>>) -> Request {
        Request::OpenStore {
            magic: proto::MAGIC,
            version,
            create,
        }
    }

    /// Store one chunk and one tree, committed, through a full-rights session.
    fn chunk_and_tree(dir: &Path) -> (Id, Id) {
        let object = |n: u8, kind: crate::crypto::Kind| {
            let sealed = vec![n; 100];
            proto::WireObject {
                id: Id([n; 32]),
                kind: kind as u8,
                check: crate::storage::checksum(&sealed),
                sealed,
            }
        };
        let (chunk, tree) = (
            object(1, crate::crypto::Kind::Chunk),
            object(2, crate::crypto::Kind::Tree),
        );
        let (result, replies) = session(
            dir,
            &[
                open_store(proto::VERSION, Some(config().encode())),
                Request::BeginWriter {
                    batch_bytes: 1 << 20,
                    index_every: 0,
                },
                Request::PutObjects(vec![chunk.clone(), tree.clone()]),
                Request::Commit(vec![]),
            ],
        );
        result.unwrap();
        assert_eq!(replies[3], Response::Done, "{replies:?}");
        (chunk.id, tree.id)
    }

    fn refused_right(r: &Response) -> Option<Right> {
        match r {
            Response::Failed(e) => match e.clone().into_error("x") {
                Error::NotAllowed { right, .. } => Some(right),
                _ => None,
            },
            _ => None,
        }
    }

    #[test]
    fn a_backup_key_reads_trees_but_no_chunk_and_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (chunk, tree) = chunk_and_tree(dir.path());
        let backup = Policy {
            rights: Rights::parse("backup").unwrap(),
            quota: None,
        };
        let (result, replies) = session_with(
            dir.path(),
            &backup,
            &[
                open_store(proto::VERSION, None),
                Request::GetObject(tree),
                Request::GetObject(chunk),
                Request::ReadMany(vec![tree, chunk]),
                Request::RemoveSnapshots(vec![tree]),
                Request::RemoveKeySlot(0),
                Request::SetState {
                    key: "check.last".into(),
                    value: vec![],
                },
                Request::Collect(proto::WireGcOptions::of(
                    &crate::prune::PruneOptions::default(),
                )),
                Request::Count,
            ],
        );
        result.unwrap();
        assert_eq!(
            replies[0],
            Response::StoreOpenedWith {
                version: proto::VERSION,
                rights: backup.rights
            }
        );
        assert!(matches!(&replies[1], Response::Object(Some(o)) if o.id == tree));
        assert_eq!(refused_right(&replies[2]), Some(Right::Restore));
        match &replies[3] {
            Response::ObjectsRead { answers, more } => {
                assert!(!more);
                assert!(matches!(&answers[0], proto::ReadAnswer::Found(o) if o.id == tree));
                assert!(matches!(&answers[1], proto::ReadAnswer::Failed(e)
                    if matches!(e.clone().into_error("x"), Error::NotAllowed { right: Right::Restore, .. })));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(refused_right(&replies[4]), Some(Right::Forget));
        assert_eq!(refused_right(&replies[5]), Some(Right::Prune));
        assert_eq!(refused_right(&replies[6]), Some(Right::Prune));
        assert_eq!(refused_right(&replies[7]), Some(Right::Prune));
        assert_eq!(replies[8], Response::Number(2), "the session goes on");

        // A store client of protocol 3 learns only that it may delete nothing.
        let (_, replies) = session_with(dir.path(), &backup, &[open_store(3, None)]);
        assert_eq!(
            replies[0],
            Response::StoreOpened {
                version: 3,
                append_only: true
            }
        );
        // Nor may a restore-only key create a repository.
        let restore = Policy {
            rights: Rights::parse("restore").unwrap(),
            quota: None,
        };
        let other = dir.path().join("other");
        let (result, replies) = session_with(
            &other,
            &restore,
            &[open_store(proto::VERSION, Some(config().encode()))],
        );
        assert!(result.is_err());
        assert_eq!(refused_right(&replies[0]), Some(Right::Backup));
        assert!(!other.exists());
    }

    #[test]
    fn a_quota_stops_a_writer_and_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        chunk_and_tree(dir.path());
        let used = Store::open(dir.path(), DEFAULT_DB_CACHE)
            .unwrap()
            .space()
            .unwrap()
            .used();
        let policy = Policy {
            rights: Rights::FULL,
            quota: Some(used + 1000),
        };
        let sealed = vec![9; 2000];
        let big = proto::WireObject {
            id: Id([9; 32]),
            kind: 1,
            check: crate::storage::checksum(&sealed),
            sealed,
        };
        let (_, replies) = session_with(
            dir.path(),
            &policy,
            &[
                open_store(proto::VERSION, None),
                Request::BeginWriter {
                    batch_bytes: 1 << 20,
                    index_every: 0,
                },
                Request::PutObjects(vec![big]),
                Request::State(QUOTA_KEY.into()),
            ],
        );
        match &replies[2] {
            Response::Failed(e) => {
                let e = e.clone().into_error("ssh://h/acme");
                assert!(matches!(e, Error::QuotaExceeded { .. }), "{e}");
                assert!(e.to_string().contains("ssh://h/acme"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        let recorded = format!("{{\"bytes\":{}}}", used + 1000).into_bytes();
        assert_eq!(replies[3], Response::State(Some(recorded)));
        let store = Store::open(dir.path(), DEFAULT_DB_CACHE).unwrap();
        let count = crate::storage::Storage::reader(&store).unwrap().count();
        assert_eq!(count.unwrap(), 2, "nothing more stored");
    }
}
