//! Format 2 (issue 12): what a server can do with no key, walking trees by their public
//! references — sync, garbage collection marks, reachability — gives what the key holder's
//! walk gives; a missing object is found; objects sealed before format 2 are named, not
//! skipped.

use cairn_repo::backup::{backup, BackupOptions, Progress};
use cairn_repo::crypto::Kind;
use cairn_repo::format::{Snapshot, SnapshotStats, Time, Tree};
use cairn_repo::graph::{Graph, Source};
use cairn_repo::prune::{GraphMarker, Mark};
use cairn_repo::storage::{self, Storage, Url, WriterOptions};
use cairn_repo::sync::{self, LocalTarget, SyncOptions, SyncProgress, SyncReport};
use cairn_repo::{Error, Id, OpenOptions, Repository};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

const PASSWORD: &[u8] = b"key-free test password";

fn opts() -> OpenOptions {
    cairn_repo::testkit::insecure_fast_kdf()
}

fn make_source(dir: &Path, seed: u64) {
    for d in 0..3 {
        let sub = dir.join(format!("d{d}/nested"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..4 {
            std::fs::write(
                sub.join(format!("s{f}")),
                format!("{seed} {d} {f}\n").repeat(40),
            )
            .unwrap();
        }
        std::fs::write(
            dir.join(format!("d{d}/big")),
            cairn_repo::testkit::noise(seed * 10 + d, 900_000 + d as usize * 600_000),
        )
        .unwrap();
    }
}

/// A primary with two snapshots (the second after a change), closed again.
fn primary(root: &Path) -> PathBuf {
    let dir = root.join("primary");
    let src = root.join("src");
    make_source(&src, 1);
    let repo = Repository::init(&dir, PASSWORD, &opts()).unwrap();
    let o = BackupOptions {
        paths: vec![src.clone()],
        ..BackupOptions::default()
    };
    backup(&repo, &o, &Progress::default()).unwrap();
    make_source(&src.join("more"), 2);
    backup(&repo, &o, &Progress::default()).unwrap();
    dir
}

fn bare(dir: &Path) -> Box<dyn Storage> {
    storage::open(&Url::Local(dir.to_path_buf()), &opts()).unwrap()
}

fn sync_to(source: &dyn Source, dir: &Path) -> SyncReport {
    let (store, created) = sync::open_replica_at(source, &Url::Local(dir.into()), &opts()).unwrap();
    let mut target = LocalTarget::new(&*store).unwrap();
    let mut report = SyncReport {
        created,
        ..SyncReport::default()
    };
    sync::sync(
        source,
        &mut target,
        &SyncOptions::default(),
        &SyncProgress::default(),
        &mut report,
    )
    .unwrap();
    report
}

fn marks(source: &dyn Source) -> HashSet<Id> {
    let snaps: Vec<Id> = source
        .storage()
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    GraphMarker::new(source).unwrap().mark(&snaps).unwrap()
}

#[test]
fn the_key_free_walk_sends_and_marks_exactly_what_the_keyed_walk_does() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = primary(tmp.path());
    let keyed = Repository::open(&dir, PASSWORD, &opts()).unwrap();
    let with_key = sync_to(&keyed, &tmp.path().join("a"));
    let marked_with_key = marks(&keyed);
    drop(keyed);
    let store = bare(&dir);
    let without = sync_to(&store, &tmp.path().join("b"));
    assert_eq!(without.objects_sent, with_key.objects_sent);
    assert_eq!(without.bytes_sent, with_key.bytes_sent);
    assert_eq!(without.snapshots_sent, 2);
    let marked_without = marks(&store);
    assert_eq!(marked_without, marked_with_key);
    assert_eq!(
        marked_without.len() as u64,
        store.reader().unwrap().count().unwrap(),
        "every object of the primary is reached"
    );
    let reach = cairn_repo::reach::check_reachable(&*store).unwrap();
    assert!(
        reach.problems.is_empty() && reach.need_key.is_empty(),
        "{reach:?}"
    );
    assert_eq!(reach.objects, marked_without.len() as u64);
    drop(store);
    // The key-free replica is the same repository: it opens with the password, and the key
    // holder's check of every byte is clean.
    let replica = Repository::open(&tmp.path().join("b"), PASSWORD, &opts()).unwrap();
    let report = cairn_repo::check::check(
        &replica,
        &cairn_repo::check::CheckOptions {
            read_data: true,
            subset_percent: None,
        },
    )
    .unwrap();
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
}

#[test]
fn a_missing_object_is_found_without_a_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = primary(tmp.path());
    let store = bare(&dir);
    // A copy of the primary without one chunk: every object but it, then the snapshots.
    let marked = marks(&store);
    let copy_dir = tmp.path().join("copy");
    let config = store.config().unwrap();
    let copy = storage::create(&Url::Local(copy_dir.clone()), &config, &opts()).unwrap();
    let view = store.reader().unwrap();
    let chunk = *marked
        .iter()
        .find(|id| view.info(id).unwrap().unwrap().kind == Kind::Chunk)
        .unwrap();
    let mut w = copy.writer(WriterOptions::default()).unwrap();
    for (id, _) in view.list(&Id::default(), usize::MAX).unwrap() {
        if id != chunk {
            let (kind, sealed) = view.read(&id).unwrap();
            w.add(id, kind, &sealed).unwrap();
        }
    }
    w.commit(&store.snapshots().unwrap()).unwrap();
    drop(w);
    let reach = cairn_repo::reach::check_reachable(&*copy).unwrap();
    assert_eq!(reach.snapshots, 2);
    assert_eq!(reach.problems.len(), 1, "{reach:?}");
    assert_eq!(reach.problems[0].0, chunk);
    assert!(reach.problems[0].2.contains("missing"), "{reach:?}");
}

#[test]
fn objects_sealed_before_format_2_are_named_and_walked_with_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("old");
    let repo = Repository::init(&dir, PASSWORD, &opts()).unwrap();
    // What a format 1 cairn wrote: a tree and a snapshot in version 1 envelopes.
    let keys = repo.keys();
    let plain = Tree { entries: vec![] }.encode();
    let tree = keys.id_of(Kind::Tree, &plain);
    let sealed_tree = keys.seal(Kind::Tree, &tree, &plain, 3).unwrap();
    let snapshot = Snapshot {
        time: Time {
            sec: 1_700_000_000,
            nsec: 0,
        },
        host: "old".into(),
        user: "u".into(),
        tags: vec![],
        paths: vec![b"/x".to_vec()],
        root: tree,
        parent: None,
        stats: SnapshotStats::default(),
        program: "cairn 0.1".into(),
    };
    let plain = snapshot.encode();
    let snap = keys.id_of(Kind::Snapshot, &plain);
    let sealed_snap = keys.seal(Kind::Snapshot, &snap, &plain, 3).unwrap();
    let mut w = repo.storage().writer(WriterOptions::default()).unwrap();
    w.add(tree, Kind::Tree, &sealed_tree).unwrap();
    w.commit(&[(snap, sealed_snap.clone())]).unwrap();
    drop(w);
    // With the key: read as before.
    assert_eq!(repo.snapshots().unwrap().len(), 1);
    assert_eq!(
        Graph::with_key(&repo)
            .snapshot(&snap, &sealed_snap)
            .unwrap()
            .trees,
        vec![tree]
    );
    assert_eq!(marks(&repo), HashSet::from([tree]));
    drop(repo);
    // Without: a clear error naming the snapshot, never an empty walk that frees everything.
    let store = bare(&dir);
    let err = GraphMarker::new(&store).unwrap().mark(&[snap]).unwrap_err();
    assert!(matches!(err, Error::KeyNeeded(_)), "{err}");
    assert!(err.to_string().contains(&snap.to_hex()), "{err}");
    assert!(err.to_string().contains("CAIRN_PASSWORD"), "{err}");
    let reach = cairn_repo::reach::check_reachable(&*store).unwrap();
    assert_eq!(reach.need_key, vec![snap]);
    assert!(reach.problems.is_empty());
}

/// What the public references cost: their bytes against everything stored. Backs up
/// `CAIRN_MEASURE_DIR` when set (e.g. /usr/share, 45k files) and prints the figures quoted in
/// DESIGN.md §3; otherwise the fixture, where each reference costs its 32 bytes plus a little.
#[test]
fn public_references_cost_their_ids_and_little_more() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, src) = (tmp.path().join("repo"), tmp.path().join("src"));
    let src = match std::env::var_os("CAIRN_MEASURE_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            make_source(&src, 3);
            src
        }
    };
    let repo = Repository::init(&dir, PASSWORD, &opts()).unwrap();
    let o = BackupOptions {
        paths: vec![src],
        ..BackupOptions::default()
    };
    backup(&repo, &o, &Progress::default()).unwrap();
    let view = repo.reader().unwrap();
    let (mut total, mut graph, mut public, mut refs) = (0u64, 0u64, 0u64, 0u64);
    for (id, info) in view.list(&Id::default(), usize::MAX).unwrap() {
        total += info.len as u64;
        if info.kind == Kind::Chunk {
            continue;
        }
        let (_, sealed) = view.read(&id).unwrap();
        let r = cairn_repo::graph::public_refs(&id, &sealed)
            .unwrap()
            .unwrap();
        graph += sealed.len() as u64;
        public += r.encode().len() as u64 + 5;
        refs += r.all().count() as u64;
    }
    println!(
        "stored {total} B; trees and lists {graph} B, of which public references {public} B \
         ({refs} ids): {:.3} % of all stored bytes, {:.1} % of the trees' bytes",
        100.0 * public as f64 / total as f64,
        100.0 * public as f64 / graph as f64
    );
    assert!(
        public <= 34 * refs + 16 * view.count().unwrap(),
        "{public} B for {refs} ids"
    );
}
