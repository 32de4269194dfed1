//! The storage seam's conformance suite (`cairn_repo::storage`): every store passes the same
//! contract. Today: the local redb repository and the in-memory store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_repo::crypto::Kind;
use cairn_repo::format::Config;
use cairn_repo::storage::memory::MemoryStore;
use cairn_repo::storage::{checksum, Storage, WriterOptions};
use cairn_repo::store::Store;
use cairn_repo::testkit::noise;
use cairn_repo::{Error, Id};

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

/// Every store under test, fresh, with the directory that keeps a redb one alive.
fn stores() -> Vec<(Box<dyn Storage>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let redb = Store::create(&dir.path().join("r"), &[("config", config().encode())]).unwrap();
    vec![
        (Box::new(redb) as Box<dyn Storage>, Some(dir)),
        (Box::new(MemoryStore::new(config())), None),
    ]
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
        let a = store.add_key_slot(b"slot a").unwrap();
        let b = store.add_key_slot(b"slot b").unwrap();
        assert_ne!(a, b, "{at}");
        store.remove_key_slot(a).unwrap();
        assert!(
            store.remove_key_slot(b).is_err(),
            "{at}: never the last slot"
        );
        assert!(store.remove_key_slot(12345).is_err(), "{at}: unknown slot");
        while store.key_slots().unwrap().len() < cairn_repo::crypto::MAX_KEY_SLOTS {
            store.add_key_slot(b"more").unwrap();
        }
        let e = store.add_key_slot(b"one too many").unwrap_err();
        assert!(matches!(e, Error::Refused(_)), "{at}: {e}");
        let s = store.begin_session(b"me").unwrap();
        assert_eq!(store.sessions().unwrap(), vec![(s, b"me".to_vec())], "{at}");
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
