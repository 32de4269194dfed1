//! Sync between repositories: local replicas, resumption after an interrupted sync, refusal
//! of foreign repositories, append-only serving, and the wire protocol in-process.

use cairn_repo::backup::{backup, BackupOptions, Progress};
use cairn_repo::check::{check, CheckOptions};
use cairn_repo::restore::{restore, Overwrite, RestoreOptions, RestoreProgress};
use cairn_repo::storage::{LocalStore, Storage};
use cairn_repo::sync::proto::{self, Request, Response};
use cairn_repo::sync::{
    self, LocalTarget, Sink, StreamTarget, SyncOptions, SyncProgress, SyncReport, Target,
};
use cairn_repo::{Error, Id, OpenOptions, Repository, Result};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const PASSWORD: &[u8] = b"sync test password";

fn opts() -> OpenOptions {
    cairn_repo::testkit::insecure_fast_kdf()
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    cairn_repo::testkit::noise(seed, n)
}

/// A source tree with nested directories, small files and a few multi-chunk files.
fn make_source(dir: &Path) {
    for d in 0..4 {
        let sub = dir.join(format!("dir{d}/nested"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..5 {
            std::fs::write(
                sub.join(format!("small{f}")),
                format!("file {d}/{f}\n").repeat(50),
            )
            .unwrap();
        }
        std::fs::write(
            dir.join(format!("dir{d}/big")),
            pseudo_random(1_500_000 + d * 700_000, d as u64 + 1),
        )
        .unwrap();
    }
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::create_dir_all(dir.join("dir0/empty")).unwrap();
}

struct Fixture {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    primary: Repository,
    root: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let src = root.join("src");
    make_source(&src);
    let primary = Repository::init(&root.join("primary"), PASSWORD, &opts()).unwrap();
    run_backup(&primary, &src);
    Fixture {
        _tmp: tmp,
        src,
        primary,
        root,
    }
}

fn run_backup(repo: &Repository, src: &Path) -> Id {
    let o = BackupOptions {
        paths: vec![src.to_path_buf()],
        ..BackupOptions::default()
    };
    backup(repo, &o, &Progress::default()).unwrap().id
}

fn sync_local(primary: &Repository, dir: &Path, o: &SyncOptions) -> Result<SyncReport> {
    let (store, created) = sync::open_local_replica(primary, dir)?;
    let mut target = LocalTarget::new(&*store)?;
    let mut report = SyncReport {
        created,
        ..SyncReport::default()
    };
    sync::sync(
        primary,
        &mut target,
        o,
        &SyncProgress::default(),
        &mut report,
    )?;
    Ok(report)
}

fn restore_latest(repo: &Repository, dir: &Path) {
    let latest = repo.find_snapshot("latest").unwrap();
    let o = RestoreOptions {
        target: dir.to_path_buf(),
        includes: Vec::new(),
        overwrite: Overwrite::Always,
        threads: 0,
    };
    restore(repo, &latest.snapshot.root, &o, &RestoreProgress::default()).unwrap();
}

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.push((p.strip_prefix(dir).unwrap().to_path_buf(), Vec::new()));
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn snapshot_ids(repo: &Repository) -> Vec<Id> {
    repo.snapshots()
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect()
}

fn assert_clean(repo: &Repository) {
    let r = check(
        repo,
        &CheckOptions {
            read_data: true,
            subset_percent: None,
        },
    )
    .unwrap();
    assert!(
        r.damaged.is_empty(),
        "replica damaged: {:?}",
        r.damaged.iter().map(|d| &d.problem).collect::<Vec<_>>()
    );
}

#[test]
fn replica_restores_with_the_same_password_and_matches() {
    let f = fixture();
    let replica_dir = f.root.join("replica");
    let report = sync_local(&f.primary, &replica_dir, &SyncOptions::default()).unwrap();
    assert!(report.created);
    assert_eq!(report.snapshots_sent, 1);
    assert!(
        report.objects_sent > 10 && report.bytes_sent > 4_000_000,
        "{report:?}"
    );

    let replica = Repository::open(&replica_dir, PASSWORD, &opts()).unwrap();
    assert_eq!(replica.config(), f.primary.config());
    assert_eq!(snapshot_ids(&replica), snapshot_ids(&f.primary));
    assert_clean(&replica);
    restore_latest(&f.primary, &f.root.join("out-primary"));
    restore_latest(&replica, &f.root.join("out-replica"));
    let (a, b) = (
        files(&f.root.join("out-primary")),
        files(&f.root.join("out-replica")),
    );
    assert!(a.len() > 20);
    assert_eq!(a, b);
    assert!(matches!(
        Repository::open(&replica_dir, b"wrong", &opts()),
        Err(Error::WrongPassword(_))
    ));
    assert_verbatim(&f.primary, &replica);
}

/// Every object of the primary is in the replica with the same kind, checksum and sealed bytes.
fn assert_verbatim(primary: &Repository, replica: &Repository) {
    let (pv, rv) = (
        primary.storage().reader().unwrap(),
        replica.storage().reader().unwrap(),
    );
    let mut n = 0;
    for (id, ours) in cairn_repo::testkit::objects(primary.storage()).unwrap() {
        let theirs = rv
            .info(&id)
            .unwrap()
            .unwrap_or_else(|| panic!("{id} missing from the replica"));
        assert_eq!(
            (theirs.kind, theirs.check, theirs.len),
            (ours.kind, ours.check, ours.len)
        );
        assert_eq!(pv.read(&id).unwrap(), rv.read(&id).unwrap(), "{id} differs");
        n += 1;
    }
    assert!(n > 10);
}

/// A file whose extents live in `List` objects (backups make these only for files of
/// thousands of chunks, so the objects are written by hand here).
#[test]
fn content_lists_and_their_chunks_travel() {
    use cairn_repo::crypto::Kind;
    use cairn_repo::format::{
        encode_list, Content, Entry, Extent, FileType, ListRef, Snapshot, Time, Tree,
    };
    let tmp = tempfile::tempdir().unwrap();
    let primary = Repository::init(&tmp.path().join("primary"), PASSWORD, &opts()).unwrap();
    let keys = primary.keys();
    let mut writer = primary
        .storage()
        .writer(cairn_repo::storage::WriterOptions {
            batch_bytes: 1 << 20,
            ..Default::default()
        })
        .unwrap();
    let mut add = |kind: Kind, plain: &[u8]| {
        let id = keys.id_of(kind, plain);
        writer
            .add(id, kind, &keys.seal(kind, &id, plain, 3).unwrap())
            .unwrap();
        id
    };
    let mut lists = Vec::new();
    for l in 0..3u8 {
        let extents: Vec<Extent> = (0..4u8)
            .map(|c| Extent {
                id: Some(add(Kind::Chunk, &[l, c, 42].repeat(100))),
                len: 300,
            })
            .collect();
        lists.push(ListRef {
            id: add(Kind::List, &encode_list(&extents)),
            len: 1200,
            count: 4,
        });
    }
    let mut file = Entry::new(b"big".to_vec(), FileType::File);
    file.size = 3600;
    file.mode = 0o644;
    file.content = Content::Lists(lists);
    let root = add(
        Kind::Tree,
        &Tree {
            entries: vec![file],
        }
        .encode(),
    );
    let snapshot = Snapshot {
        time: Time {
            sec: 1_700_000_000,
            nsec: 0,
        },
        host: "h".into(),
        user: "u".into(),
        tags: Vec::new(),
        paths: vec![b"/".to_vec()],
        root,
        parent: None,
        stats: Default::default(),
        program: "test".into(),
    };
    let sealed = primary.seal_snapshot(&snapshot).unwrap();
    writer.commit(&[sealed]).unwrap();
    drop(writer);

    let dir = tmp.path().join("replica");
    let report = sync_local(&primary, &dir, &SyncOptions::default()).unwrap();
    assert_eq!(
        (report.snapshots_sent, report.objects_sent),
        (1, 12 + 3 + 1),
        "{report:?}"
    );
    let replica = Repository::open(&dir, PASSWORD, &opts()).unwrap();
    assert_verbatim(&primary, &replica);
    assert_clean(&replica);
}

#[test]
fn second_sync_sends_nothing_and_an_increment_sends_little() {
    let f = fixture();
    for d in 0..40 {
        let sub = f.src.join(format!("many/d{d}"));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("a"), format!("a{d}")).unwrap();
        std::fs::write(sub.join("b"), format!("b{d}")).unwrap();
    }
    run_backup(&f.primary, &f.src);
    let dir = f.root.join("replica");
    let first = sync_local(&f.primary, &dir, &SyncOptions::default()).unwrap();
    assert!(first.objects_sent > 150, "{first:?}");
    let again = sync_local(&f.primary, &dir, &SyncOptions::default()).unwrap();
    assert!(!again.created);
    assert_eq!(
        (again.snapshots_sent, again.objects_sent, again.bytes_sent),
        (0, 0, 0)
    );
    assert_eq!(
        again.round_trips, 0,
        "nothing missing: only the snapshot list is exchanged"
    );

    std::fs::write(f.src.join("dir2/nested/small1"), b"changed\n").unwrap();
    run_backup(&f.primary, &f.src);
    let inc = sync_local(&f.primary, &dir, &SyncOptions::default()).unwrap();
    assert_eq!(inc.snapshots_sent, 1);
    // The changed file's chunk and the trees on its path (nested, dir2, src, and the root chain).
    assert!(inc.objects_sent >= 4 && inc.objects_sent <= 10, "{inc:?}");
    assert!(
        inc.bytes_sent * 20 < first.bytes_sent,
        "{inc:?} vs {first:?}"
    );
    // Negotiation skips the subtrees the target holds: the 80 files under `many/` are never asked
    // about. (`many` itself may count as changed: the first backup's reads can change its
    // entries' atimes, so its 40 subtree ids are asked once.)
    assert!(
        inc.ids_asked * 2 < first.objects_sent,
        "asked about {} ids: {inc:?}",
        inc.ids_asked
    );
    assert!(inc.round_trips < 30, "{inc:?}");
    let replica = Repository::open(&dir, PASSWORD, &opts()).unwrap();
    assert_eq!(snapshot_ids(&replica), snapshot_ids(&f.primary));
    assert_clean(&replica);
}

/// Fails every `PutObjects` once at least `budget` objects have gone through.
struct FailAfter<T> {
    inner: T,
    budget: usize,
}

impl<T: Target> Target for FailAfter<T> {
    fn call(&mut self, req: Request) -> Result<Response> {
        if let Request::PutObjects(objs) = &req {
            // Let whole batches through until the budget is spent, then drop the link: how
            // many objects a batch holds depends on the (random) keys' id order.
            if self.budget == 0 {
                return Err(Error::Connection("injected failure: link dropped".into()));
            }
            self.budget = self.budget.saturating_sub(objs.len());
        }
        self.inner.call(req)
    }
}

#[test]
fn interrupted_sync_shows_nothing_partial_and_resumes() {
    let f = fixture();
    let dir = f.root.join("replica");
    let small = SyncOptions {
        batch_bytes: 64 << 10,
        ..SyncOptions::default()
    };
    let total = {
        let (store, _) = sync::open_local_replica(&f.primary, &dir).unwrap();
        let mut t = FailAfter {
            inner: LocalTarget::new(&*store).unwrap(),
            budget: 8,
        };
        let mut report = SyncReport::default();
        let err = sync::sync(
            &f.primary,
            &mut t,
            &small,
            &SyncProgress::default(),
            &mut report,
        )
        .unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        assert!(
            report.objects_sent > 0 && report.snapshots_sent == 0,
            "{report:?}"
        );
        f.primary.storage().reader().unwrap().count().unwrap()
    };
    {
        let store = LocalStore::open(&dir, 1 << 20).unwrap();
        assert!(
            store.snapshot_blobs().unwrap().is_empty(),
            "no snapshot may show before its data"
        );
        let stored = Storage::reader(&store).unwrap().count().unwrap();
        assert!(
            stored > 0 && stored < total,
            "a prefix was kept: {stored} of {total}"
        );
    }
    let resumed = sync_local(&f.primary, &dir, &small).unwrap();
    assert_eq!(resumed.snapshots_sent, 1);
    assert!(
        resumed.objects_sent < total,
        "resume sends only what is missing: {resumed:?}"
    );
    let replica = Repository::open(&dir, PASSWORD, &opts()).unwrap();
    assert_eq!(snapshot_ids(&replica), snapshot_ids(&f.primary));
    assert_clean(&replica);
}

#[test]
fn a_foreign_repository_is_refused_and_untouched() {
    let f = fixture();
    let other_dir = f.root.join("other");
    let other = Repository::init(&other_dir, PASSWORD, &opts()).unwrap();
    run_backup(&other, &f.src.join("dir1"));
    let before = snapshot_ids(&other);
    drop(other);
    let err = sync_local(&f.primary, &other_dir, &SyncOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("not a replica of this repository"),
        "{err}"
    );
    let other = Repository::open(&other_dir, PASSWORD, &opts()).unwrap();
    assert_eq!(snapshot_ids(&other), before);

    // A non-empty directory that is no repository is not overwritten either.
    let junk = f.root.join("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("keep"), b"mine").unwrap();
    assert!(sync_local(&f.primary, &junk, &SyncOptions::default()).is_err());
    assert_eq!(std::fs::read(junk.join("keep")).unwrap(), b"mine");
}

type Served = (
    StreamTarget<UnixStream, UnixStream>,
    std::thread::JoinHandle<Result<()>>,
);

/// Run `serve` on one end of a socket pair in a thread; return a client on the other end.
fn served(dir: PathBuf, append_only: bool) -> Served {
    served_logged(dir, append_only, Arc::default())
}

/// Likewise, with the server's log lines collected in `log`.
fn served_logged(dir: PathBuf, append_only: bool, log: Arc<Mutex<Vec<String>>>) -> Served {
    let (a, b) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        let mut r = b.try_clone().unwrap();
        let mut w = b;
        let mut record = |line: &str| log.lock().unwrap().push(line.to_string());
        sync::serve::serve(
            &dir,
            &sync::serve::Policy::append_only(append_only),
            &mut r,
            &mut w,
            &mut record,
        )
    });
    let client = StreamTarget::new(a.try_clone().unwrap(), a);
    (client, server)
}

#[test]
fn over_the_protocol_append_only_syncs_but_refuses_deletes() {
    let f = fixture();
    let dir = f.root.join("remote");
    let (mut client, server) = served(dir.clone(), true);
    assert!(
        client.handshake(&f.primary).unwrap(),
        "created on first use"
    );
    let mut report = SyncReport::default();
    sync::sync(
        &f.primary,
        &mut client,
        &SyncOptions::default(),
        &SyncProgress::default(),
        &mut report,
    )
    .unwrap();
    assert_eq!(report.snapshots_sent, 1);
    let ids = sync::list_snapshots(&mut client).unwrap();
    let err = client
        .call(Request::DeleteSnapshots(ids.clone()))
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    assert_eq!(sync::list_snapshots(&mut client).unwrap(), ids);
    assert_eq!(client.call(Request::Bye).unwrap(), Response::Done);
    server.join().unwrap().unwrap();

    let replica = Repository::open(&dir, PASSWORD, &opts()).unwrap();
    assert_eq!(snapshot_ids(&replica), snapshot_ids(&f.primary));
    assert_clean(&replica);

    // The same sink, not append-only, deletes.
    let store = LocalStore::open(&dir, 1 << 20).unwrap();
    let mut sink = Sink::new(&store, false).unwrap();
    assert_eq!(
        sink.try_handle(Request::DeleteSnapshots(ids)).unwrap(),
        Response::Done
    );
    assert!(store.snapshot_blobs().unwrap().is_empty());
}

#[test]
fn over_the_protocol_a_dropped_connection_keeps_what_arrived_and_resumes() {
    let f = fixture();
    let dir = f.root.join("remote");
    let small = SyncOptions {
        batch_bytes: 64 << 10,
        ..SyncOptions::default()
    };
    let (mut client, server) = served(dir.clone(), false);
    client.handshake(&f.primary).unwrap();
    let mut t = FailAfter {
        inner: client,
        budget: 8,
    };
    let mut report = SyncReport::default();
    assert!(sync::sync(
        &f.primary,
        &mut t,
        &small,
        &SyncProgress::default(),
        &mut report
    )
    .is_err());
    drop(t); // the connection drops without a goodbye
    server.join().unwrap().unwrap();
    let total = f.primary.storage().reader().unwrap().count().unwrap();
    {
        let store = LocalStore::open(&dir, 1 << 20).unwrap();
        assert!(store.snapshot_blobs().unwrap().is_empty());
        let kept = Storage::reader(&store).unwrap().count().unwrap();
        assert!(kept > 0 && kept < total, "{kept} of {total}");
    }
    let (mut client, server) = served(dir.clone(), false);
    assert!(
        !client.handshake(&f.primary).unwrap(),
        "the replica exists now"
    );
    let mut resumed = SyncReport::default();
    sync::sync(
        &f.primary,
        &mut client,
        &small,
        &SyncProgress::default(),
        &mut resumed,
    )
    .unwrap();
    assert!(
        resumed.snapshots_sent == 1 && resumed.objects_sent < total,
        "{resumed:?}"
    );
    drop(client);
    server.join().unwrap().unwrap();
    let replica = Repository::open(&dir, PASSWORD, &opts()).unwrap();
    assert_verbatim(&f.primary, &replica);
    assert_clean(&replica);
}

#[test]
fn over_the_protocol_pipelined_replies_come_back_in_order() {
    let f = fixture();
    let (mut client, server) = served(f.root.join("remote"), false);
    client.handshake(&f.primary).unwrap();
    let sealed = vec![1u8; 100];
    let good = proto::WireObject {
        id: Id([5; 32]),
        kind: 1,
        check: cairn_repo::storage::checksum(&sealed),
        sealed,
    };
    let bad = proto::WireObject {
        check: [0; 16],
        id: Id([6; 32]),
        ..good.clone()
    };
    assert!(client
        .send(Request::PutObjects(vec![bad]))
        .unwrap()
        .is_none());
    assert!(client
        .send(Request::PutObjects(vec![good]))
        .unwrap()
        .is_none());
    let first = client.recv().unwrap_err();
    assert!(first.to_string().contains("checksum"), "{first}");
    assert_eq!(
        client.recv().unwrap(),
        Response::Stored {
            objects: 1,
            bytes: 100
        }
    );
    assert_eq!(
        client.call(Request::Have(vec![Id([6; 32])])).unwrap(),
        Response::Have(vec![false])
    );
    assert_eq!(client.call(Request::Bye).unwrap(), Response::Done);
    server.join().unwrap().unwrap();
}

#[test]
fn over_the_protocol_a_foreign_repository_is_refused() {
    let f = fixture();
    let other_dir = f.root.join("other");
    drop(Repository::init(&other_dir, PASSWORD, &opts()).unwrap());
    let (mut client, server) = served(other_dir, false);
    let err = client.handshake(&f.primary).unwrap_err();
    assert!(
        err.to_string().contains("not a replica of this repository"),
        "{err}"
    );
    assert!(server.join().unwrap().is_err());
}

#[test]
fn hostile_peers_get_clean_errors() {
    let f = fixture();
    // A client that sends garbage: the server answers with an error and stops.
    let (a, b) = UnixStream::pair().unwrap();
    let dir = f.root.join("r1");
    let server = std::thread::spawn(move || {
        let mut r = b.try_clone().unwrap();
        let mut w = b;
        sync::serve::serve(
            &dir,
            &sync::serve::Policy::default(),
            &mut r,
            &mut w,
            &mut |_| {},
        )
    });
    let mut w = a.try_clone().unwrap();
    std::io::Write::write_all(&mut w, &u32::MAX.to_le_bytes()).unwrap();
    let err = server.join().unwrap().unwrap_err();
    assert!(err.to_string().contains("protocol error"), "{err}");
    let mut r = a;
    let reply: Response = proto::read_msg(&mut r).unwrap();
    assert!(matches!(reply, Response::Error(m) if m.contains("frame length")));

    // A server that answers a hello with garbage, then hangs up mid-frame.
    let (a, b) = UnixStream::pair().unwrap();
    let fake = std::thread::spawn(move || {
        let mut r = b.try_clone().unwrap();
        let mut w = b;
        let _ = proto::read_frame(&mut r);
        std::io::Write::write_all(&mut w, &[10, 0, 0, 0, 1, 2, 3]).unwrap();
    });
    let mut client = StreamTarget::new(a.try_clone().unwrap(), a);
    let err = client.handshake(&f.primary).unwrap_err();
    assert!(err.to_string().contains("truncated frame"), "{err}");
    fake.join().unwrap();

    // A server that claims another repository id, or answers with the wrong number of flags.
    for (reply, expect) in [
        (
            Response::Hello {
                version: proto::VERSION,
                repo_id: [9; 16],
                exists: true,
                append_only: false,
            },
            "repository id",
        ),
        (Response::Have(vec![true]), "unexpected have list reply"),
    ] {
        let (a, b) = UnixStream::pair().unwrap();
        let fake = std::thread::spawn(move || {
            let mut r = b.try_clone().unwrap();
            let mut w = b;
            let _ = proto::read_frame(&mut r);
            proto::write_msg(&mut w, &reply).unwrap();
        });
        let mut client = StreamTarget::new(a.try_clone().unwrap(), a);
        let err = client.handshake(&f.primary).unwrap_err();
        assert!(err.to_string().contains(expect), "{err}");
        fake.join().unwrap();
    }
    let (a, b) = UnixStream::pair().unwrap();
    let fake = std::thread::spawn(move || {
        let mut r = b.try_clone().unwrap();
        let mut w = b;
        let _ = proto::read_frame(&mut r);
        proto::write_msg(&mut w, &Response::Have(vec![false])).unwrap();
    });
    let mut client = StreamTarget::new(a.try_clone().unwrap(), a);
    let mut plan = sync::plan::Plan::default();
    let err =
        sync::plan::missing(&mut client, &[Id([1; 32]), Id([2; 32])], 100, &mut plan).unwrap_err();
    assert!(
        err.to_string()
            .contains("asked about 2 ids, the target answered 1"),
        "{err}"
    );
    fake.join().unwrap();

    // Objects whose bytes do not match their checksum are refused by the sink.
    let dir = f.root.join("r2");
    let (store, _) = sync::open_local_replica(&f.primary, &dir).unwrap();
    let mut sink = Sink::new(&*store, false).unwrap();
    let o = proto::WireObject {
        id: Id([1; 32]),
        kind: 1,
        check: [0; 16],
        sealed: vec![1; 100],
    };
    assert!(sink.try_handle(Request::PutObjects(vec![o])).is_err());
    assert!(sink
        .try_handle(Request::Have(vec![Id([0; 32]); proto::MAX_HAVE + 1]))
        .is_err());
}

/// Sync `f.primary` to an append-only server at `dir` and return a connected client.
fn synced_append_only(f: &Fixture, dir: &Path, log: Arc<Mutex<Vec<String>>>) -> Served {
    let (mut client, server) = served_logged(dir.to_path_buf(), true, log);
    client.handshake(&f.primary).unwrap();
    sync::sync(
        &f.primary,
        &mut client,
        &SyncOptions::default(),
        &SyncProgress::default(),
        &mut SyncReport::default(),
    )
    .unwrap();
    (client, server)
}

#[test]
fn issue16_append_only_never_replaces_a_snapshot() {
    let f = fixture();
    let dir = f.root.join("remote");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (mut client, server) = synced_append_only(&f, &dir, log.clone());
    let real = f.primary.local("test").unwrap().snapshot_blobs().unwrap();
    let garbage: Vec<(Id, Vec<u8>)> = real.iter().map(|(id, _)| (*id, vec![0xAB; 200])).collect();
    let err = client.call(Request::PutSnapshots(garbage)).unwrap_err();
    assert!(err.to_string().contains("never replaced"), "{err}");
    // The same bytes again are a no-op, not an error.
    assert_eq!(
        client.call(Request::PutSnapshots(real.clone())).unwrap(),
        Response::Done
    );
    assert_eq!(client.call(Request::Bye).unwrap(), Response::Done);
    server.join().unwrap().unwrap();
    let logged = log.lock().unwrap().join("\n");
    assert!(
        logged.contains("never replaced"),
        "refusal logged: {logged}"
    );

    let store = LocalStore::open(&dir, 1 << 20).unwrap();
    assert_eq!(
        store.snapshot_blobs().unwrap(),
        real,
        "replica's snapshots intact"
    );
    drop(store);
    let replica = Repository::open(&dir, PASSWORD, &opts()).unwrap();
    assert_eq!(snapshot_ids(&replica), snapshot_ids(&f.primary));
    assert_clean(&replica);
}

#[test]
fn issue16_sync_notices_a_snapshot_replaced_on_the_target() {
    let f = fixture();
    let dir = f.root.join("replica");
    sync_local(&f.primary, &dir, &SyncOptions::default()).unwrap();
    let (id, _) = f
        .primary
        .local("test")
        .unwrap()
        .snapshot_blobs()
        .unwrap()
        .remove(0);
    {
        // What a hostile server (or disk damage) could do to its copy, below the protocol.
        let store = LocalStore::open(&dir, 1 << 20).unwrap();
        cairn_repo::testkit::replace_snapshot(&store, id, vec![0xCD; 300]).unwrap();
    }
    let (store, _) = sync::open_local_replica(&f.primary, &dir).unwrap();
    let mut target = LocalTarget::new(&*store).unwrap();
    let mut report = SyncReport::default();
    let err = sync::sync(
        &f.primary,
        &mut target,
        &SyncOptions::default(),
        &SyncProgress::default(),
        &mut report,
    )
    .unwrap_err();
    assert!(err.to_string().contains("other bytes"), "{err}");
    assert_eq!(report.differing, vec![id]);
}

fn planted_slot(memory_kib: u32, iterations: u32) -> Vec<u8> {
    let slot = cairn_repo::crypto::KeySlot {
        created: 0,
        host: "h".into(),
        user: "u".into(),
        kdf: cairn_repo::crypto::KdfParams {
            memory_kib,
            iterations,
            parallelism: 1,
            salt: [1; 16],
        },
        nonce: [2; 24],
        wrapped: vec![3; 96],
    };
    postcard::to_stdvec(&slot).unwrap()
}

#[test]
fn issue16_key_slots_from_a_peer_are_bounded() {
    let f = fixture();
    let dir = f.root.join("remote");
    let (mut client, server) = synced_append_only(&f, &dir, Arc::default());
    // One slot of 1 GiB x 8 iterations would make every wrong-password open take seconds.
    let err = client
        .call(Request::AddKeySlots(vec![planted_slot(1 << 20, 8)]))
        .unwrap_err();
    assert!(err.to_string().contains("Argon2"), "{err}");
    let many: Vec<Vec<u8>> = (0..20).map(|i| planted_slot(64 + i, 1)).collect();
    let err = client.call(Request::AddKeySlots(many)).unwrap_err();
    assert!(err.to_string().contains("at most 16"), "{err}");
    assert_eq!(client.call(Request::Bye).unwrap(), Response::Done);
    server.join().unwrap().unwrap();
    let store = LocalStore::open(&dir, 1 << 20).unwrap();
    assert_eq!(store.key_slots().unwrap().len(), 1, "nothing was added");

    // A slot beyond the limits that got in anyway (an older server) is never derived: a
    // wrong password is answered at once, the right one still opens.
    store.add_key_slot(&planted_slot(1 << 20, 8)).unwrap();
    drop(store);
    let t = std::time::Instant::now();
    assert!(matches!(
        Repository::open(&dir, b"wrong", &opts()),
        Err(Error::WrongPassword(_))
    ));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    Repository::open(&dir, PASSWORD, &opts()).unwrap();
}

#[test]
fn issue16_a_hello_with_another_id_does_not_learn_the_real_one() {
    let f = fixture();
    let dir = f.root.join("remote");
    let (mut client, server) = synced_append_only(&f, &dir, Arc::default());
    client.call(Request::Bye).unwrap();
    server.join().unwrap().unwrap();
    let stranger = Repository::init(&f.root.join("stranger"), PASSWORD, &opts()).unwrap();
    let (mut client, server) = served(dir, true);
    let err = client.handshake(&stranger).unwrap_err().to_string();
    let real = hex::encode(f.primary.config().repo_id);
    assert!(!err.contains(&real), "the real id leaked: {err}");
    assert!(err.contains("not a replica"), "{err}");
    assert!(server.join().unwrap().is_err());
}
