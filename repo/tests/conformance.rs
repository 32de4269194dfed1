//! The storage seam's conformance suite (`cairn_repo::storage`): every store passes the same
//! contract: the local redb repository, the in-memory store, the remote store talking to
//! `cairn serve`'s entry (over a redb repository) on a socket pair, and the S3 store on a real
//! three-node Garage cluster (one per test binary, a fresh prefix per case).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/garage.rs"]
mod garage;

use cairn_repo::crypto::Kind;
use cairn_repo::format::Config;
use cairn_repo::storage::memory::MemoryStore;
use cairn_repo::storage::remote::{Connector, RemoteStore};
use cairn_repo::storage::s3::{Endpoint, S3Store, S3Url};
use cairn_repo::storage::LocalStore;
use cairn_repo::storage::{checksum, ObjectCopy, Storage, WriterOptions};
use cairn_repo::sync::proto::{self, ReadAnswer, Request, Response, WireObject};
use cairn_repo::testkit::noise;
use cairn_repo::{Error, Id};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const PIECE: u32 = 64 << 10;

fn config() -> Config {
    Config {
        repo_id: [9; 16],
        chunk_min: 64,
        chunk_avg: 256,
        chunk_max: 1024,
        piece_size: PIECE,
        pack_max: 4 * PIECE as u64,
        created: 0,
    }
}

/// A new local redb store at `dir`, made as `cairn init` makes one.
fn local_store(dir: &Path, config: &Config) -> Box<dyn Storage> {
    let url = cairn_repo::storage::Url::Local(dir.to_path_buf());
    cairn_repo::storage::create(&url, config, &cairn_repo::OpenOptions::default()).unwrap()
}

/// Every store under test, fresh, with the directory that keeps a redb one alive.
fn stores() -> Vec<(Box<dyn Storage>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let redb = local_store(&dir.path().join("r"), &config());
    vec![
        (redb, Some(dir)),
        (Box::new(MemoryStore::new(config())), None),
        remote(),
        s3(),
    ]
}

/// An S3 store under a prefix of its own on the shared Garage cluster.
fn s3() -> (Box<dyn Storage>, Option<tempfile::TempDir>) {
    let g = garage::Garage::shared();
    let prefix = format!("conformance/{}", hex::encode(rand_bytes()));
    let url = S3Url::parse(&format!("s3://{}/{prefix}", g.bucket())).unwrap();
    let store = S3Store::create_with(&url, &endpoint(g), &config()).unwrap();
    (Box::new(store), None)
}

fn endpoint(g: &garage::Garage) -> Endpoint {
    let var = |k: &str| g.env().iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    Endpoint {
        bucket: g.bucket().to_string(),
        url: var("AWS_ENDPOINT_URL"),
        region: var("AWS_REGION"),
        access_key: var("AWS_ACCESS_KEY_ID"),
        secret_key: var("AWS_SECRET_ACCESS_KEY"),
        session_token: None,
    }
}

fn rand_bytes() -> [u8; 8] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    (t ^ (N.fetch_add(1, Ordering::Relaxed) << 48) ^ std::process::id() as u64).to_be_bytes()
}

/// `cairn serve`'s entry on a thread per connection, over a socket pair.
struct Served {
    dir: PathBuf,
    append_only: bool,
    log: Arc<Mutex<Vec<String>>>,
    /// Our ends of every connection made, to cut them all (a dropped connection).
    ends: Arc<Mutex<Vec<UnixStream>>>,
}

impl Served {
    fn new(dir: &Path, append_only: bool) -> Served {
        Served {
            dir: dir.to_path_buf(),
            append_only,
            log: Arc::default(),
            ends: Arc::default(),
        }
    }

    fn handle(&self) -> Served {
        Served {
            dir: self.dir.clone(),
            append_only: self.append_only,
            log: self.log.clone(),
            ends: self.ends.clone(),
        }
    }

    /// Cut every connection made so far, as a network failure or a killed ssh would.
    fn cut(&self) {
        for s in self.ends.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Connector for Served {
    fn connect(&self) -> cairn_repo::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| Error::io("socket pair", e))?;
        let (dir, append_only, log) = (self.dir.clone(), self.append_only, self.log.clone());
        std::thread::spawn(move || {
            let mut r = theirs.try_clone().unwrap();
            let mut w = theirs;
            let _ = cairn_repo::sync::serve::serve(
                &dir,
                &cairn_repo::sync::serve::Policy::append_only(append_only),
                &mut r,
                &mut w,
                &mut |m| log.lock().unwrap().push(m.to_string()),
            );
        });
        self.ends.lock().unwrap().push(ours.try_clone().unwrap());
        Ok((Box::new(ours.try_clone().unwrap()), Box::new(ours)))
    }

    fn label(&self) -> String {
        format!("remote:{}", self.dir.display())
    }
}

fn remote() -> (Box<dyn Storage>, Option<tempfile::TempDir>) {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::new(&dir.path().join("r"), false);
    let store = RemoteStore::create(Box::new(served), &config()).unwrap();
    (Box::new(store), Some(dir))
}

fn is_remote(store: &dyn Storage) -> bool {
    store.as_any().is::<RemoteStore>()
}

/// A key slot's bytes as `cairn key add` writes them (the remote store's server checks that a
/// slot decodes and asks for Argon2 parameters within the limits); `n` makes them differ.
fn slot(n: u8) -> Vec<u8> {
    let slot = cairn_repo::crypto::KeySlot {
        created: n as i64,
        host: "h".into(),
        user: "u".into(),
        kdf: cairn_repo::crypto::KdfParams {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
            salt: [n; 16],
        },
        nonce: [n; 24],
        wrapped: vec![n; 48],
    };
    postcard::to_stdvec(&slot).unwrap()
}

fn id(n: u64) -> Id {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b[31] = 1;
    Id(b)
}

fn small() -> WriterOptions {
    WriterOptions {
        batch_bytes: 1,
        ..Default::default()
    }
}

#[test]
fn objects_round_trip_empty_small_and_spanning_pieces() {
    for (store, _dir) in stores() {
        let at = store.location();
        let big = noise(1, 3 * PIECE as usize + 17);
        let objects = [
            (id(1), Kind::Chunk, Vec::new()),
            (id(2), Kind::Tree, b"x".to_vec()),
            (id(3), Kind::List, noise(2, 1000)),
            (id(4), Kind::Chunk, big),
        ];
        let mut w = store.writer(WriterOptions::default()).unwrap();
        for (i, k, b) in &objects {
            w.add(*i, *k, b).unwrap();
        }
        w.commit(&[]).unwrap();
        drop(w);
        let r = store.reader().unwrap();
        for (i, k, b) in &objects {
            assert_eq!(r.read(i).unwrap(), (*k, b.clone()), "{at}: object {i}");
            let info = r.info(i).unwrap().unwrap();
            assert_eq!(
                (info.kind, info.len as usize, info.check),
                (*k, b.len(), checksum(b)),
                "{at}"
            );
        }
        assert_eq!(r.count().unwrap(), 4, "{at}");
        let listed: Vec<Id> = r
            .list(&id(2), 10)
            .unwrap()
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(
            listed,
            vec![id(2), id(3), id(4)],
            "{at}: list from an id, in order"
        );
        assert_eq!(r.list(&Id::default(), 2).unwrap().len(), 2, "{at}: limit");
    }
}

#[test]
fn contains_answers_per_id_and_missing_reads_are_clean_errors() {
    for (store, _dir) in stores() {
        let at = store.location();
        let mut w = store.writer(WriterOptions::default()).unwrap();
        w.add(id(1), Kind::Chunk, b"one").unwrap();
        w.commit(&[]).unwrap();
        drop(w);
        let r = store.reader().unwrap();
        assert_eq!(
            r.contains(&[id(1), id(2), id(1), id(2)]).unwrap(),
            vec![true, false, true, false],
            "{at}"
        );
        assert!(r.contains(&[]).unwrap().is_empty(), "{at}");
        assert!(matches!(r.read(&id(2)), Err(Error::Missing(_))), "{at}");
        assert_eq!(r.info(&id(2)).unwrap(), None, "{at}");
    }
}

#[test]
fn nothing_is_visible_before_it_is_stored_and_a_repeat_keeps_the_first_copy() {
    for (store, _dir) in stores() {
        let at = store.location();
        let mut w = store.writer(WriterOptions::default()).unwrap();
        w.add(id(1), Kind::Chunk, b"first").unwrap();
        assert_eq!(
            store.reader().unwrap().count().unwrap(),
            0,
            "{at}: buffered"
        );
        w.commit(&[]).unwrap();
        w.add(id(1), Kind::Chunk, b"other").unwrap();
        w.commit(&[]).unwrap();
        drop(w);
        let got = store.reader().unwrap().read(&id(1)).unwrap();
        assert_eq!(got, (Kind::Chunk, b"first".to_vec()), "{at}");
    }
}

#[test]
fn a_snapshot_is_visible_only_with_every_object_before_it() {
    for (store, _dir) in stores() {
        let at = store.location();
        let mut w = store.writer(small()).unwrap();
        for n in 0..50 {
            w.add(id(n), Kind::Chunk, &noise(n, 5000)).unwrap();
            w.checkpoint().unwrap();
            assert!(store.snapshots().unwrap().is_empty(), "{at}");
        }
        w.commit(&[(id(900), b"snap".to_vec())]).unwrap();
        drop(w);
        let snaps = store.snapshots().unwrap();
        assert_eq!(snaps, vec![(id(900), b"snap".to_vec())], "{at}");
        let all: Vec<Id> = (0..50).map(id).collect();
        let present = store.reader().unwrap().contains(&all).unwrap();
        assert!(
            present.iter().all(|p| *p),
            "{at}: every object with the snapshot"
        );
    }
}

#[test]
fn a_dropped_writer_leaves_a_prefix_of_whole_objects() {
    for (store, _dir) in stores() {
        let at = store.location();
        let objects: Vec<(Id, Vec<u8>)> = (0..40)
            .map(|n| (id(n), noise(n, 7000 + n as usize * 311)))
            .collect();
        let mut w = store.writer(small()).unwrap();
        for (i, b) in &objects {
            w.add(*i, Kind::Chunk, b).unwrap();
        }
        w.checkpoint().unwrap();
        w.add(id(99), Kind::Chunk, &noise(99, 100)).unwrap();
        drop(w); // killed: never committed
        let r = store.reader().unwrap();
        let present = r
            .contains(&objects.iter().map(|o| o.0).collect::<Vec<_>>())
            .unwrap();
        let prefix = present.iter().take_while(|p| **p).count();
        assert!(
            present[prefix..].iter().all(|p| !p),
            "{at}: visible objects are a prefix of the added ones: {present:?}"
        );
        assert!(prefix > 0, "{at}: a checkpoint stores something");
        for (i, b) in &objects[..prefix] {
            assert_eq!(&r.read(i).unwrap().1, b, "{at}: a visible object is whole");
        }
        assert!(store.snapshots().unwrap().is_empty(), "{at}");
    }
}

#[test]
fn a_stored_snapshot_is_never_replaced() {
    for (store, _dir) in stores() {
        let at = store.location();
        let mut w = store.writer(WriterOptions::default()).unwrap();
        w.commit(&[(id(7), b"original".to_vec())]).unwrap();
        w.commit(&[(id(7), b"original".to_vec())]).unwrap();
        let e = w.commit(&[(id(7), b"forged".to_vec())]).unwrap_err();
        assert!(matches!(e, Error::Refused(_)), "{at}: {e}");
        drop(w);
        assert_eq!(
            store.snapshots().unwrap(),
            vec![(id(7), b"original".to_vec())],
            "{at}"
        );
        store.remove_snapshots(&[id(7), id(8)]).unwrap();
        assert!(store.snapshots().unwrap().is_empty(), "{at}");
    }
}

/// `repair` puts copies in place: readers get the copy from then on, a missing object comes
/// back, a snapshot's blob is replaced, and every other object stays as it was. (The store
/// takes the caller's word that the copies are verified; what a server lets a client repair
/// is tested in `storage::server`.)
#[test]
fn a_repair_replaces_objects_and_snapshots_and_keeps_the_rest() {
    for (store, _dir) in stores() {
        let at = store.location();
        let mut w = store.writer(small()).unwrap();
        for n in 0..20 {
            w.add(id(n), Kind::Chunk, &noise(n, 3000)).unwrap();
        }
        w.commit(&[(id(900), b"snap".to_vec())]).unwrap();
        drop(w);
        let copies = [
            ObjectCopy {
                id: id(3),
                kind: Kind::Chunk,
                sealed: noise(1003, 3000),
            },
            ObjectCopy {
                id: id(50),
                kind: Kind::Tree,
                sealed: noise(50, 100),
            },
        ];
        let refused = store
            .repair(&copies, &[(id(900), b"mended".to_vec())])
            .unwrap();
        assert!(refused.is_empty(), "{at}: {refused:?}");
        let r = store.reader().unwrap();
        assert_eq!(
            r.read(&id(3)).unwrap(),
            (Kind::Chunk, noise(1003, 3000)),
            "{at}"
        );
        assert_eq!(
            r.read(&id(50)).unwrap(),
            (Kind::Tree, noise(50, 100)),
            "{at}"
        );
        let info = r.info(&id(3)).unwrap().unwrap();
        assert_eq!(info.check, checksum(&noise(1003, 3000)), "{at}");
        for n in (0..20).filter(|n| *n != 3) {
            assert_eq!(r.read(&id(n)).unwrap().1, noise(n, 3000), "{at}: {n}");
        }
        assert_eq!(r.count().unwrap(), 21, "{at}");
        assert_eq!(
            store.snapshots().unwrap(),
            vec![(id(900), b"mended".to_vec())],
            "{at}"
        );
    }
}

#[test]
fn two_writers_at_once_keep_each_others_objects_whole() {
    for (store, _dir) in stores() {
        let at = store.location();
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let store = &store;
                s.spawn(move || {
                    let mut w = store.writer(small()).unwrap();
                    for n in 0..30 {
                        let k = t * 1000 + n;
                        w.add(id(k), Kind::Chunk, &noise(k, 3000)).unwrap();
                    }
                    w.commit(&[(id(5000 + t), vec![t as u8])]).unwrap();
                });
            }
        });
        let r = store.reader().unwrap();
        for t in 0..2u64 {
            for n in 0..30 {
                let k = t * 1000 + n;
                assert_eq!(r.read(&id(k)).unwrap().1, noise(k, 3000), "{at}: {k}");
            }
        }
        assert_eq!(store.snapshots().unwrap().len(), 2, "{at}");
    }
}

#[test]
fn key_slots_and_sessions_follow_the_rules() {
    for (store, _dir) in stores() {
        let at = store.location();
        let a = store.add_key_slot(&slot(1)).unwrap();
        let b = store.add_key_slot(&slot(2)).unwrap();
        assert_ne!(a, b, "{at}");
        store.remove_key_slot(a).unwrap();
        assert!(
            store.remove_key_slot(b).is_err(),
            "{at}: never the last slot"
        );
        assert!(store.remove_key_slot(12345).is_err(), "{at}: unknown slot");
        // The same bytes again may be one slot (S3 numbers a slot by its bytes): fill with
        // distinct ones.
        let mut n = 10;
        while store.key_slots().unwrap().len() < cairn_repo::crypto::MAX_KEY_SLOTS {
            store.add_key_slot(&slot(n)).unwrap();
            n += 1;
        }
        let e = store.add_key_slot(&slot(4)).unwrap_err();
        assert!(matches!(e, Error::Refused(_)), "{at}: {e}");
        let s = store.begin_session(b"me").unwrap();
        let sessions = store.sessions().unwrap();
        assert_eq!(sessions.len(), 1, "{at}");
        assert_eq!(sessions[0].0, s, "{at}");
        // A remote store's server records sessions in its own name (its process, which the
        // prune liveness check can see), not the client's.
        if !is_remote(&*store) {
            assert_eq!(sessions[0].1, b"me".to_vec(), "{at}");
        }
        store.end_session(s).unwrap();
        assert!(store.sessions().unwrap().is_empty(), "{at}");
        assert_eq!(store.config().unwrap(), config(), "{at}");
    }
}

/// A marker that knows what each snapshot references without any key (the test's graph).
struct Fixed(Vec<(Id, Vec<Id>)>);

impl cairn_repo::storage::Mark for Fixed {
    fn mark(&mut self, ids: &[Id]) -> cairn_repo::Result<std::collections::HashSet<Id>> {
        Ok(self
            .0
            .iter()
            .filter(|(s, _)| ids.contains(s))
            .flat_map(|(_, refs)| refs.iter().copied())
            .collect())
    }
}

#[test]
fn garbage_collection_keeps_what_snapshots_and_live_sessions_need() {
    use cairn_repo::storage::PruneOptions;
    use std::time::Duration;
    let quick = |wait_ms| PruneOptions {
        wait: Duration::from_millis(wait_ms),
        poll: Duration::from_millis(10),
        repack_below: 0.8,
        dry_run: false,
    };
    for (store, _dir) in stores() {
        let at = store.location();
        let snap = Id([0xee; 32]);
        let mut marks = Fixed(vec![(snap, vec![id(1)])]);
        let mut w = store.writer(small()).unwrap();
        for n in 1..=3 {
            w.add(id(n), Kind::Chunk, &noise(n, 2 * PIECE as usize))
                .unwrap();
        }
        w.commit(&[(snap, b"snapshot".to_vec())]).unwrap();
        drop(w);
        // A backup in flight: its objects are stored, its snapshot not yet.
        let session = store
            .begin_session(&cairn_repo::util::session_info())
            .unwrap();
        let mut w = store.writer(small()).unwrap();
        w.add(id(4), Kind::Chunk, &noise(4, 100)).unwrap();
        w.checkpoint().unwrap();
        w.commit(&[]).unwrap();
        drop(w);
        let dry = store
            .collect_garbage(
                &mut marks,
                &PruneOptions {
                    dry_run: true,
                    ..quick(0)
                },
                &|_| {},
            )
            .unwrap_or_else(|e| panic!("{at}: dry run: {e}"));
        assert!(dry.plan.objects_unused >= 2, "{at}: {dry:?}");
        assert_eq!(
            store.reader().unwrap().count().unwrap(),
            4,
            "{at}: a dry run deletes nothing"
        );
        match store.collect_garbage(&mut marks, &quick(100), &|_| {}) {
            Err(Error::Locked { .. }) => {}
            other => panic!("{at}: a live session must hold the sweep back, got {other:?}"),
        }
        let r = store.reader().unwrap();
        assert!(
            r.has(&id(4)).unwrap(),
            "{at}: the session's object survives"
        );
        store.end_session(session).unwrap();
        store
            .collect_garbage(&mut marks, &quick(1000), &|_| {})
            .unwrap_or_else(|e| panic!("{at}: {e}"));
        let r = store.reader().unwrap();
        assert!(r.has(&id(1)).unwrap(), "{at}: referenced");
        for n in [2, 3, 4] {
            assert!(!r.has(&id(n)).unwrap(), "{at}: object {n} is garbage now");
        }
        assert_eq!(
            r.read(&id(1)).unwrap().1,
            noise(1, 2 * PIECE as usize),
            "{at}"
        );
    }
}

// The remote store's own cases: what crosses the wire, and what a failing or hostile server
// does to a client.

#[test]
fn remote_errors_keep_their_kind_across_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::new(&dir.path().join("r"), false);
    let e = RemoteStore::open(Box::new(served.handle())).err().unwrap();
    assert!(matches!(e, Error::RepoNotFound { .. }), "{e}");
    assert!(e.to_string().contains("remote:"), "names the location: {e}");
    let store = RemoteStore::create(Box::new(served.handle()), &config()).unwrap();
    let e = RemoteStore::create(Box::new(served.handle()), &config())
        .err()
        .unwrap();
    assert!(matches!(e, Error::RepoExists(_)), "{e}");
    let mut w = store.writer(WriterOptions::default()).unwrap();
    w.add(id(1), Kind::Tree, b"one").unwrap();
    w.add(id(3), Kind::Chunk, b"three").unwrap();
    w.commit(&[]).unwrap();
    drop(w);
    let r = store.reader().unwrap();
    assert!(matches!(r.read(&id(2)), Err(Error::Missing(m)) if m == id(2).to_hex()));
    let mut got = Vec::new();
    r.read_many(&[id(1), id(2), id(3)], &mut |i, res| {
        got.push((i, res.map_err(|e| matches!(e, Error::Missing(_)))));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        got,
        vec![
            (id(1), Ok((Kind::Tree, b"one".to_vec()))),
            (id(2), Err(true)),
            (id(3), Ok((Kind::Chunk, b"three".to_vec()))),
        ]
    );
    // Many ids, more than one request and more than one reply page.
    let ids: Vec<Id> = (0..700).map(|n| id(n % 5)).collect();
    let mut n = 0;
    r.read_many(&ids, &mut |i, res| {
        assert_eq!(i, ids[n]);
        assert_eq!(res.is_ok(), [1, 3].contains(&(n % 5)));
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 700);
    let e = store.remove_key_slot(77).unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    let e = store.add_key_slot(b"not a key slot").unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    assert!(
        store.end_session(12345).is_err(),
        "not this client's session"
    );
}

#[test]
fn a_dropped_connection_leaves_whole_checkpointed_objects_and_the_next_call_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::new(&dir.path().join("r"), false);
    let store = RemoteStore::create(Box::new(served.handle()), &config()).unwrap();
    let objects: Vec<(Id, Vec<u8>)> = (0..60).map(|n| (id(n), noise(n, 9000))).collect();
    let mut w = store.writer(small()).unwrap();
    for (i, b) in &objects[..30] {
        w.add(*i, Kind::Chunk, b).unwrap();
    }
    w.checkpoint().unwrap();
    let session = store.begin_session(b"x").unwrap();
    assert_eq!(store.sessions().unwrap().len(), 1);
    for (i, b) in &objects[30..] {
        let _ = w.add(*i, Kind::Chunk, b);
    }
    served.cut();
    let e = w.commit(&[(id(900), b"snap".to_vec())]).unwrap_err();
    assert!(
        !e.to_string().is_empty(),
        "a dropped connection is an error, never a hang"
    );
    assert!(w.checkpoint().is_err(), "the writer is given up");
    drop(w);
    // The next calls connect again (pooled connections died with the cut).
    let r = store.reader().unwrap();
    let present = r
        .contains(&objects.iter().map(|o| o.0).collect::<Vec<_>>())
        .unwrap();
    let prefix = present.iter().take_while(|p| **p).count();
    assert!(prefix >= 30, "every checkpointed object stays: {prefix}");
    assert!(
        present[prefix..].iter().all(|p| !p),
        "a prefix: {present:?}"
    );
    for (i, b) in &objects[..prefix] {
        assert_eq!(&r.read(i).unwrap().1, b);
    }
    assert!(store.snapshots().unwrap().is_empty());
    // The server ended the session with its connection.
    for _ in 0..100 {
        if store.sessions().unwrap().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(store.sessions().unwrap().is_empty());
    let _ = store.end_session(session);
    let mut w = store.writer(small()).unwrap();
    w.add(id(99), Kind::Chunk, b"after").unwrap();
    w.commit(&[(id(900), b"snap".to_vec())]).unwrap();
    assert_eq!(store.snapshots().unwrap().len(), 1);
}

#[test]
fn append_only_refuses_removals_and_takes_additions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r");
    let store = RemoteStore::create(Box::new(Served::new(&path, false)), &config()).unwrap();
    store.add_key_slot(&slot(1)).unwrap();
    drop(store);
    let served = Served::new(&path, true);
    let store = RemoteStore::open(Box::new(served.handle())).unwrap();
    assert!(store.append_only());
    let mut w = store.writer(WriterOptions::default()).unwrap();
    w.add(id(1), Kind::Chunk, b"x").unwrap();
    w.commit(&[(id(7), b"snap".to_vec())]).unwrap();
    let e = w.commit(&[(id(7), b"other".to_vec())]).unwrap_err();
    assert!(matches!(e, Error::Refused(_)), "{e}");
    w.commit(&[(id(8), b"more".to_vec())]).unwrap();
    drop(w);
    // Refused as rights the key lacks, named (`--append-only` is `--allow backup,restore`).
    use cairn_repo::storage::Right;
    let e = store.remove_snapshots(&[id(7)]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NotAllowed {
                right: Right::Forget,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().starts_with("refused"), "{e}");
    let two = store.add_key_slot(&slot(2)).unwrap();
    let e = store.remove_key_slot(two).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NotAllowed {
                right: Right::Prune,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(store.snapshots().unwrap().len(), 2);
    assert_eq!(store.key_slots().unwrap().len(), 2);
    let log = served.log.lock().unwrap().join("\n");
    assert!(log.contains("append-only"), "refusals are logged: {log}");
}

#[test]
fn two_writers_interleaved_on_one_thread() {
    for (store, _dir) in stores() {
        let at = store.location();
        let mut a = store.writer(small()).unwrap();
        let mut b = store.writer(WriterOptions::default()).unwrap();
        for n in 0..20 {
            a.add(id(n), Kind::Chunk, &noise(n, 2000)).unwrap();
            b.add(id(100 + n), Kind::Tree, &noise(100 + n, 300))
                .unwrap();
        }
        b.commit(&[(id(901), b"b".to_vec())]).unwrap();
        a.commit(&[(id(900), b"a".to_vec())]).unwrap();
        drop((a, b));
        let r = store.reader().unwrap();
        for n in 0..20 {
            assert_eq!(r.read(&id(n)).unwrap().1, noise(n, 2000), "{at}");
            assert_eq!(
                r.read(&id(100 + n)).unwrap(),
                (Kind::Tree, noise(100 + n, 300)),
                "{at}"
            );
        }
        assert_eq!(store.snapshots().unwrap().len(), 2, "{at}");
    }
}

/// A scripted server: answers each request with what `script` says.
type Script = dyn Fn(proto::Request) -> Vec<proto::Response> + Send + Sync;
struct Fake(Arc<Script>);

impl Connector for Fake {
    fn connect(&self) -> cairn_repo::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let script = self.0.clone();
        std::thread::spawn(move || {
            let mut r = theirs.try_clone().unwrap();
            let mut w = theirs;
            while let Ok(req) = proto::read_msg::<_, proto::Request>(&mut r) {
                for resp in script(req) {
                    if proto::write_msg(&mut w, &resp).is_err() {
                        return;
                    }
                }
            }
        });
        Ok((Box::new(ours.try_clone().unwrap()), Box::new(ours)))
    }

    fn label(&self) -> String {
        "fake".into()
    }
}

fn hostile(f: impl Fn(Request) -> Vec<Response> + Send + Sync + 'static) -> RemoteStore {
    RemoteStore::open(Box::new(Fake(Arc::new(move |req| match req {
        Request::OpenStore { .. } => vec![Response::StoreOpened {
            version: proto::VERSION,
            append_only: false,
        }],
        Request::Config => vec![Response::Blob(config().encode())],
        other => f(other),
    }))))
    .unwrap()
}

#[test]
fn an_old_server_is_named_too_old() {
    let old = Fake(Arc::new(|_| {
        vec![Response::Error(
            "sync protocol error: undecodable message: Found an enum discriminant that was not expected".into(),
        )]
    }));
    let e = RemoteStore::open(Box::new(old)).err().unwrap();
    let msg = e.to_string();
    assert!(
        msg.contains("too old") && msg.contains("upgrade cairn on the server"),
        "{msg}"
    );
}

#[test]
fn a_hostile_server_gets_errors_not_crashes() {
    let obj = |i: Id, kind: u8, sealed: &[u8], check: [u8; 16]| WireObject {
        id: i,
        kind,
        check,
        sealed: sealed.to_vec(),
    };
    let store = hostile(move |req| match req {
        Request::Have(ids) => vec![Response::Have(vec![true; ids.len() + 1])],
        Request::GetObject(i) if i == id(1) => {
            vec![Response::Object(Some(obj(id(2), 1, b"x", checksum(b"x"))))]
        }
        Request::GetObject(_) => vec![Response::Object(Some(obj(id(3), 1, b"x", [0; 16])))],
        Request::ObjectInfo(_) => vec![Response::ObjectInfo(Some(proto::WireInfo {
            kind: 99,
            len: 1,
            check: [0; 16],
        }))],
        Request::ReadMany(ids) => vec![Response::ObjectsRead {
            answers: vec![ReadAnswer::Missing; ids.len() + 3],
            more: false,
        }],
        Request::List { .. } => vec![Response::Listed(vec![
            (
                id(5),
                proto::WireInfo {
                    kind: 1,
                    len: 1,
                    check: [0; 16],
                },
            ),
            (
                id(4),
                proto::WireInfo {
                    kind: 1,
                    len: 1,
                    check: [0; 16],
                },
            ),
        ])],
        Request::Snapshots(_) => vec![Response::SnapshotPage {
            blobs: vec![],
            more: true,
        }],
        Request::Count => vec![Response::Done],
        _ => vec![Response::Done],
    });
    let r = store.reader().unwrap();
    let e = r.contains(&[id(1)]).unwrap_err();
    assert!(e.to_string().contains("answered 2"), "{e}");
    let e = r.read(&id(1)).unwrap_err();
    assert!(e.to_string().contains("the server sent"), "another id: {e}");
    let e = r.read(&id(3)).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "bad checksum: {e}");
    assert!(r.info(&id(1)).is_err(), "unknown kind");
    assert!(r.read_many(&[id(1)], &mut |_, _| Ok(())).is_err());
    assert!(r.list(&Id::default(), 10).is_err(), "out of order");
    assert!(store.snapshots().is_err(), "an endless empty page");
    assert!(r.count().is_err(), "a reply of the wrong type");
}

/// A restore-like read loop over a socket pair: 2,000 reads of 1 MiB objects from 2 threads.
/// `cargo test --release -p cairn-repo --test conformance -- --ignored --nocapture read_loop`
#[test]
#[ignore]
fn read_loop_figure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r");
    let mut cfg = config();
    cfg.piece_size = 1 << 20;
    cfg.pack_max = 64 << 20;
    local_store(&path, &cfg);
    let store = RemoteStore::open(Box::new(Served::new(&path, false))).unwrap();
    let n = 200u64;
    let mut w = store.writer(WriterOptions::default()).unwrap();
    for k in 0..n {
        w.add(id(k), Kind::Chunk, &noise(k, 1 << 20)).unwrap();
    }
    w.commit(&[]).unwrap();
    drop(w);
    let r = store.reader().unwrap();
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let r = &r;
            s.spawn(move || {
                for k in 0..1000u64 {
                    let got = r.read(&id((k * 2 + t) % n)).unwrap();
                    assert_eq!(got.1.len(), 1 << 20);
                }
            });
        }
    });
    let single = t.elapsed();
    let ids: Vec<Id> = (0..2000u64).map(|k| id(k % n)).collect();
    let t = std::time::Instant::now();
    let mut bytes = 0usize;
    r.read_many(&ids, &mut |_, got| {
        bytes += got?.1.len();
        Ok(())
    })
    .unwrap();
    let many = t.elapsed();
    assert_eq!(bytes, 2000 << 20);
    let local = LocalStore::open(&path, 16 << 20).unwrap();
    let lr = Storage::reader(&local).unwrap();
    let t = std::time::Instant::now();
    for i in &ids {
        assert_eq!(lr.read(i).unwrap().1.len(), 1 << 20);
    }
    let direct = t.elapsed();
    println!(
        "2,000 reads of 1 MiB: read() from 2 threads {:.2} s ({:.0} MiB/s); read_many {:.2} s ({:.0} MiB/s); the redb store read directly, 1 thread, {:.2} s",
        single.as_secs_f64(),
        2000.0 / single.as_secs_f64(),
        many.as_secs_f64(),
        2000.0 / many.as_secs_f64(),
        direct.as_secs_f64()
    );
}

/// A server that opens properly, then answers every request with `bytes` (the same stream on
/// every connection): whatever they are, the client gets errors or values, never a panic or
/// a hang (the stream ends).
struct Garbage(Vec<u8>);

impl Connector for Garbage {
    fn connect(&self) -> cairn_repo::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        let mut stream = Vec::new();
        for r in [
            Response::StoreOpened {
                version: proto::VERSION,
                append_only: false,
            },
            Response::Blob(config().encode()),
        ] {
            proto::write_msg(&mut stream, &r).unwrap();
        }
        stream.extend_from_slice(&self.0);
        Ok((
            Box::new(std::io::Cursor::new(stream)),
            Box::new(std::io::sink()),
        ))
    }

    fn label(&self) -> String {
        "garbage".into()
    }
}

/// Everything a client asks, against one hostile byte stream.
fn exercise(bytes: Vec<u8>) {
    let Ok(store) = RemoteStore::open(Box::new(Garbage(bytes))) else {
        return;
    };
    let _ = store.key_slots();
    let _ = store.snapshots();
    let _ = store.sessions();
    let _ = store.state("check.last");
    let _ = store.space();
    if let Ok(r) = store.reader() {
        let _ = r.contains(&[id(1), id(2)]);
        let _ = r.read(&id(1));
        let _ = r.info(&id(1));
        let _ = r.read_many(&[id(1), id(2)], &mut |_, _| Ok(()));
        let _ = r.list(&Id::default(), 100);
        let _ = r.count();
    }
    if let Ok(mut w) = store.writer(small()) {
        let _ = w.add(id(1), Kind::Chunk, b"abc");
        let _ = w.commit(&[(id(9), b"s".to_vec())]);
    }
    let _ = store.collect_garbage(
        &mut Fixed(vec![]),
        &cairn_repo::storage::PruneOptions {
            wait: std::time::Duration::ZERO,
            ..Default::default()
        },
        &|_| {},
    );
}

#[test]
fn a_server_sending_random_bytes_gets_errors_not_crashes() {
    for seed in 0..300u64 {
        let len = (seed as usize * 37) % 4096;
        let mut bytes = noise(seed, len);
        // Half of them as frames with a plausible length, so decoding is reached.
        if seed % 2 == 0 && len > 4 {
            let body = (len as u32 - 4).to_le_bytes();
            bytes[..4].copy_from_slice(&body);
        }
        exercise(bytes);
    }
    // Valid replies of the wrong kinds, in a row.
    let mut stream = Vec::new();
    for r in [
        Response::MarkRequest(vec![id(1)]),
        Response::Notice("x".into()),
        Response::Number(3),
        Response::Have(vec![true]),
        Response::State(None),
        Response::Done,
    ] {
        proto::write_msg(&mut stream, &r).unwrap();
    }
    exercise(stream);
}
