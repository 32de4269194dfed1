//! Engine tests for issue 5: prune frees objects and space, prune beside a backup loses
//! nothing, damage is reported exactly and healed from a replica, key-less storage checks,
//! rotating read-data subsets cover everything.

use cairn_repo::backup::{backup, BackupOptions, Progress};
use cairn_repo::check::{check, check_storage, repair_from, CheckOptions};
use cairn_repo::crypto::Kind;
use cairn_repo::prune::{execute, plan, prune, PackAction, PruneOptions};
use cairn_repo::restore::{restore, Overwrite, RestoreOptions, RestoreProgress};
use cairn_repo::storage::StorageProblem;
use cairn_repo::storage::{LocalStore, WriterOptions};
use cairn_repo::testkit::damage_object;
use cairn_repo::{Error, Id, OpenOptions, Repository};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PW: &[u8] = b"pw";

fn opts() -> OpenOptions {
    cairn_repo::testkit::insecure_fast_kdf()
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    cairn_repo::testkit::noise(seed, len)
}

fn write(dir: &Path, name: &str, seed: u64, len: usize) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), noise(seed, len)).unwrap();
}

fn backup_of(repo: &Repository, paths: &[&Path]) -> Id {
    let o = BackupOptions {
        paths: paths.iter().map(|p| p.to_path_buf()).collect(),
        ..Default::default()
    };
    backup(repo, &o, &Progress::default()).unwrap().id
}

fn quick() -> PruneOptions {
    PruneOptions {
        poll: Duration::from_millis(20),
        ..Default::default()
    }
}

/// Everything the plan found unused was either rescued (reused by a backup that ran
/// meanwhile) or dropped, and the repository is clean and restores `s2`.
fn assert_rescued_and_intact(
    repo: &Repository,
    report: &cairn_repo::prune::PruneReport,
    s2: &cairn_repo::Id,
    src: &Path,
    root: &Path,
) {
    assert_eq!(
        report.rescued + report.objects_dropped,
        report.plan.objects_unused,
        "{report:?}"
    );
    assert_clean(repo);
    assert_restores(repo, s2, src, root);
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
    assert!(r.damaged.is_empty(), "damage: {:?}", r.damaged);
}

/// Restore `snapshot` and compare every file under `src` with the restored copy.
fn assert_restores(repo: &Repository, snapshot: &Id, src: &Path, scratch: &Path) {
    let snap = repo
        .snapshots()
        .unwrap()
        .into_iter()
        .find(|s| s.id == *snapshot)
        .unwrap();
    let target = scratch.join(format!("restore-{}", snapshot.short()));
    let o = RestoreOptions {
        target: target.clone(),
        includes: Vec::new(),
        overwrite: Overwrite::Always,
        threads: 0,
    };
    restore(repo, &snap.snapshot.root, &o, &RestoreProgress::default()).unwrap();
    let restored: PathBuf = target.join(src.strip_prefix("/").unwrap());
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let a = std::fs::read(e.path()).unwrap();
        let b = std::fs::read(restored.join(e.file_name())).unwrap();
        assert!(a == b, "{} differs after restore", e.path().display());
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    repo_dir: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    Fixture {
        repo_dir: root.join("repo"),
        root,
        _tmp: tmp,
    }
}

#[test]
fn prune_frees_objects_and_space() {
    let f = fixture();
    let repo = Repository::init(&f.repo_dir, PW, &opts()).unwrap();
    let (a, b) = (f.root.join("a"), f.root.join("b"));
    write(&a, "big", 1, 3 << 20);
    write(&a, "small", 2, 300 << 10);
    write(&b, "other", 3, 2 << 20);
    let s1 = backup_of(&repo, &[&a]);
    let s2 = backup_of(&repo, &[&b]);
    std::fs::remove_file(a.join("big")).unwrap();
    let s3 = backup_of(&repo, &[&a]);
    let before = repo.local("test").unwrap().space().unwrap();

    // Forget s1 and s2: b's pack is wholly dead, a's first pack keeps only `small`.
    repo.local("test")
        .unwrap()
        .remove_snapshots(&[s1, s2])
        .unwrap();
    let p = plan(&repo, &quick()).unwrap();
    let sum = p.summary();
    assert!(sum.objects_unused >= 6, "{sum:?}");
    assert_eq!(
        p.packs
            .values()
            .filter(|x| x.action == PackAction::Delete)
            .count(),
        1,
        "{sum:?}"
    );
    assert_eq!(
        p.packs
            .values()
            .filter(|x| x.action == PackAction::Repack)
            .count(),
        1,
        "{sum:?}"
    );
    assert!(sum.bytes_freed > 5 << 20, "{sum:?}");
    // A plan changes nothing.
    assert_eq!(
        repo.local("test").unwrap().space().unwrap().pack_bytes,
        before.pack_bytes
    );

    let report = execute(&repo, p, &quick(), &|_| {}).unwrap();
    assert_eq!(report.objects_dropped, sum.objects_unused);
    assert_eq!(
        report.packs_deleted, 2,
        "the dead pack and the repacked one"
    );
    assert!(report.objects_repacked >= 1);
    let after = repo.local("test").unwrap().space().unwrap();
    assert_eq!(after.objects, before.objects - sum.objects_unused);
    assert!(
        after.pack_bytes + (5 << 20) < before.pack_bytes,
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        after.pack_bytes, after.object_bytes,
        "no dead bytes left in packs"
    );
    assert_clean(&repo);
    assert_restores(&repo, &s3, &a, &f.root);

    // A second prune finds nothing to do.
    let again = plan(&repo, &quick()).unwrap().summary();
    assert_eq!(
        (again.objects_unused, again.packs_delete, again.packs_repack),
        (0, 0, 0)
    );

    // Freed pages are reused: backing up new data of the freed size does not grow the file much.
    let file_before = repo.local("test").unwrap().space().unwrap().file_bytes;
    let c = f.root.join("c");
    write(&c, "new", 4, 3 << 20);
    backup_of(&repo, &[&c]);
    let file_after = repo.local("test").unwrap().space().unwrap().file_bytes;
    assert!(
        file_after < file_before + (1 << 20),
        "{file_before} -> {file_after}"
    );
}

#[test]
fn prune_keeps_objects_a_backup_reused_after_the_plan() {
    let f = fixture();
    let repo = Repository::init(&f.repo_dir, PW, &opts()).unwrap();
    let src = f.root.join("src");
    write(&src, "x", 5, 2 << 20);
    write(&src, "y", 6, 500 << 10);
    let s1 = backup_of(&repo, &[&src]);
    repo.local("test").unwrap().remove_snapshots(&[s1]).unwrap();
    let p = plan(&repo, &quick()).unwrap();
    assert_eq!(
        p.summary().objects_unused,
        p.summary().objects_total,
        "everything is unused at plan time"
    );
    // A backup between plan and execution dedups against every one of those objects.
    let s2 = backup_of(&repo, &[&src]);
    let report = execute(&repo, p, &quick(), &|_| {}).unwrap();
    // The file chunks and the tree of `src` are reused; only the trees of the parent
    // directories (whose mtimes changed) are really unused.
    assert!(report.rescued >= 3, "{report:?}");
    assert_rescued_and_intact(&repo, &report, &s2, &src, &f.root);
}

#[test]
fn prune_waits_for_a_live_session_then_keeps_what_it_reused() {
    let f = fixture();
    let repo = Repository::init(&f.repo_dir, PW, &opts()).unwrap();
    let src = f.root.join("src");
    write(&src, "x", 7, 1 << 20);
    let s1 = backup_of(&repo, &[&src]);
    repo.local("test").unwrap().remove_snapshots(&[s1]).unwrap();
    // A backup of this very process is running: its session is alive.
    let session = repo
        .local("test")
        .unwrap()
        .begin_session(&cairn_repo::util::session_info())
        .unwrap();
    let short = PruneOptions {
        wait: Duration::from_millis(200),
        ..quick()
    };
    match prune(&repo, &short, &|_| {}) {
        Err(Error::Locked { reason, .. }) => assert!(reason.contains("pid"), "{reason}"),
        other => panic!("prune must not run beside a live session: {other:?}"),
    }
    assert_eq!(
        repo.local("test").unwrap().space().unwrap().objects,
        plan(&repo, &quick()).unwrap().objects_total
    );
    let waited = std::sync::Mutex::new(0u32);
    let (report, s2) = std::thread::scope(|s| {
        let pruner = s.spawn(|| {
            prune(
                &repo,
                &PruneOptions {
                    wait: Duration::from_secs(60),
                    ..quick()
                },
                &|_| *waited.lock().unwrap() += 1,
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !pruner.is_finished(),
            "prune went ahead beside a live session"
        );
        // The "running backup" reuses the unused objects, commits, and ends its session.
        let s2 = backup_of(&repo, &[&src]);
        repo.local("test").unwrap().end_session(session).unwrap();
        (pruner.join().unwrap().unwrap(), s2)
    });
    assert!(*waited.lock().unwrap() > 0);
    assert!(report.rescued >= 2, "{report:?}");
    assert_rescued_and_intact(&repo, &report, &s2, &src, &f.root);
}

#[test]
fn prune_removes_sessions_of_dead_processes() {
    let f = fixture();
    let repo = Repository::init(&f.repo_dir, PW, &opts()).unwrap();
    let dead = cairn_repo::util::SessionInfo {
        pid: u32::MAX - 1,
        host: cairn_repo::util::hostname(),
        start_ticks: 1,
    };
    repo.local("test")
        .unwrap()
        .begin_session(&postcard::to_stdvec(&dead).unwrap())
        .unwrap();
    let report = prune(&repo, &quick(), &|_| {}).unwrap();
    assert_eq!(report.dead_sessions_removed, 1);
    assert!(repo.local("test").unwrap().sessions().unwrap().is_empty());
}

#[test]
fn prune_beside_real_backups_in_threads_loses_nothing() {
    let f = fixture();
    let repo = Repository::init(&f.repo_dir, PW, &opts()).unwrap();
    let src = f.root.join("src");
    for i in 0..12 {
        write(&src, &format!("f{i}"), 100 + i, 400 << 10);
    }
    let old = backup_of(&repo, &[&src]);
    repo.local("test")
        .unwrap()
        .remove_snapshots(&[old])
        .unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let snaps = std::thread::scope(|s| {
        let backups = s.spawn(|| {
            let ids: Vec<Id> = (0..3).map(|_| backup_of(&repo, &[&src])).collect();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            ids
        });
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            prune(
                &repo,
                &PruneOptions {
                    wait: Duration::from_secs(60),
                    ..quick()
                },
                &|_| {},
            )
            .unwrap();
        }
        backups.join().unwrap()
    });
    prune(&repo, &quick(), &|_| {}).unwrap();
    assert_clean(&repo);
    for s in &snaps {
        assert_restores(&repo, s, &src, &f.root);
    }
}

/// Damage is reported per object, with the paths using it, then healed from a replica copy
/// made before the damage; a key-less storage check sees the same damage.
#[test]
fn damage_is_reported_exactly_and_healed_from_a_replica() {
    let f = fixture();
    let src = f.root.join("src");
    write(&src, "one", 11, 600 << 10);
    write(&src, "two", 12, 700 << 10);
    let replica_dir = f.root.join("replica");
    let (snap, chunk, tree) = {
        let repo = Repository::init(&f.repo_dir, PW, &opts()).unwrap();
        let snap = backup_of(&repo, &[&src]);
        let view = repo.reader().unwrap();
        let root = repo.snapshots().unwrap()[0].snapshot.root;
        let entry = repo
            .lookup(&view, &root, src.join("two").as_os_str().as_encoded_bytes())
            .unwrap()
            .unwrap();
        let chunk = match &entry.content {
            cairn_repo::Content::Inline(x) => x[0].id.unwrap(),
            other => panic!("{other:?}"),
        };
        (snap, chunk, root)
    };
    std::fs::create_dir_all(&replica_dir).unwrap();
    std::fs::copy(
        f.repo_dir.join("cairn.redb"),
        replica_dir.join("cairn.redb"),
    )
    .unwrap();
    let repo = Repository::open(&f.repo_dir, PW, &opts()).unwrap();
    let ps = repo.config().piece_size;
    damage_object(repo.local("test").unwrap(), &chunk, ps, 100).unwrap();
    damage_object(repo.local("test").unwrap(), &tree, ps, 40).unwrap();

    let r = check(
        &repo,
        &CheckOptions {
            read_data: true,
            subset_percent: None,
        },
    )
    .unwrap();
    let ids: BTreeSet<Id> = r.damaged.iter().map(|d| d.id).collect();
    assert_eq!(ids, BTreeSet::from([chunk, tree]));
    let d = r.damaged.iter().find(|d| d.id == tree).unwrap();
    assert_eq!(d.used_by, vec![(snap, "/".to_string())]);
    let last = String::from_utf8(
        repo.local("test")
            .unwrap()
            .state("check.last")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(
        last.contains("\"read_data\":true") && last.contains("\"damaged\":2"),
        "{last}"
    );

    // Key-less, on the store alone.
    drop(repo);
    let storage = check_storage(&f.repo_dir).unwrap();
    let bad: BTreeSet<Id> = storage
        .problems
        .iter()
        .filter_map(|p| match p {
            StorageProblem::Object { id, .. } => Some(*id),
            StorageProblem::Piece { .. } => None,
        })
        .collect();
    assert_eq!(bad, BTreeSet::from([chunk, tree]));
    assert!(check_storage(&replica_dir).unwrap().problems.is_empty());

    let repo = Repository::open(&f.repo_dir, PW, &opts()).unwrap();
    let replica = Repository::open(&replica_dir, PW, &opts()).unwrap();
    let healed = repair_from(&repo, &replica, &ids.iter().copied().collect::<Vec<_>>()).unwrap();
    assert_eq!(healed.repaired.len(), 2, "{healed:?}");
    assert!(healed.failed.is_empty());
    assert_clean(&repo);
    assert_restores(&repo, &snap, &src, &f.root);
    // The damaged copies are now unreferenced bytes that prune reclaims: their packs are
    // marked and rewritten whatever their live share (issue 16: the damage stayed in a
    // mostly live pack, and redb's page check failed, forever).
    let marked = repo.local("test").unwrap().marked_for_repack().unwrap();
    assert!(!marked.is_empty());
    let p = plan(&repo, &quick()).unwrap();
    for pack in &marked {
        assert_ne!(
            p.packs[pack].action,
            PackAction::Keep,
            "{pack} is rewritten"
        );
    }
    prune(&repo, &quick(), &|_| {}).unwrap();
    assert!(repo
        .local("test")
        .unwrap()
        .marked_for_repack()
        .unwrap()
        .is_empty());
    assert_clean(&repo);
}

#[test]
fn repair_refuses_an_unrelated_repository_and_never_invents_data() {
    let f = fixture();
    let src = f.root.join("src");
    write(&src, "one", 21, 300 << 10);
    let repo = Repository::init(&f.repo_dir, PW, &opts()).unwrap();
    let other = Repository::init(&f.root.join("other"), PW, &opts()).unwrap();
    backup_of(&repo, &[&src]);
    let root = repo.snapshots().unwrap()[0].snapshot.root;
    assert!(matches!(
        repair_from(&repo, &other, &[root]),
        Err(Error::Usage(_))
    ));
    assert!(matches!(
        cairn_repo::check::repair_storage_from(&f.repo_dir, &f.root.join("other")),
        Err(Error::Usage(_))
    ));
    // A "replica" that is the damaged repository itself cannot supply an intact copy.
    damage_object(
        repo.local("test").unwrap(),
        &root,
        repo.config().piece_size,
        10,
    )
    .unwrap();
    drop(repo);
    let copy = f.root.join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(f.repo_dir.join("cairn.redb"), copy.join("cairn.redb")).unwrap();
    let repo = Repository::open(&f.repo_dir, PW, &opts()).unwrap();
    let replica = Repository::open(&copy, PW, &opts()).unwrap();
    let r = repair_from(&repo, &replica, &[root]).unwrap();
    assert!(r.repaired.is_empty() && r.failed.len() == 1, "{r:?}");
    assert!(
        repo.load(&repo.reader().unwrap(), &root, Kind::Tree)
            .is_err(),
        "still damaged, nothing invented"
    );
    drop((repo, replica));
    let r = cairn_repo::check::repair_storage_from(&f.repo_dir, &copy).unwrap();
    assert!(
        r.repaired.is_empty() && r.failed.len() == 1,
        "key-less: the copy fails the recorded checksum: {r:?}"
    );
}

#[test]
fn read_data_subset_covers_everything_over_successive_runs() {
    let f = fixture();
    let repo = Repository::init(&f.repo_dir, PW, &opts()).unwrap();
    let src = f.root.join("src");
    for i in 0..8 {
        write(&src, &format!("f{i}"), 200 + i, 300 << 10);
    }
    backup_of(&repo, &[&src]);
    let all: Vec<Id> = cairn_repo::testkit::objects(repo.storage())
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let ps = repo.config().piece_size;
    let damaged: BTreeSet<Id> = all.iter().step_by(3).copied().collect();
    for id in &damaged {
        damage_object(repo.local("test").unwrap(), id, ps, 50).unwrap();
    }
    let mut seen = BTreeSet::new();
    let mut read = 0;
    for _ in 0..4 {
        let r = check(
            &repo,
            &CheckOptions {
                read_data: false,
                subset_percent: Some(30.0),
            },
        )
        .unwrap();
        read += r.objects_read;
        seen.extend(
            r.damaged
                .iter()
                .map(|d| d.id)
                .filter(|id| damaged.contains(id)),
        );
    }
    assert!(read >= all.len() as u64);
    assert_eq!(seen, damaged, "four runs of 30% saw every damaged object");
    let last = String::from_utf8(
        repo.local("test")
            .unwrap()
            .state("check.last")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(last.contains("\"subset\":30"), "{last}");
    let _ = LocalStore::open(&f.repo_dir, 1 << 20).unwrap();
}

#[test]
fn compact_needs_the_repository_to_itself() {
    let f = fixture();
    let repo = Repository::init(&f.repo_dir, PW, &opts()).unwrap();
    match cairn_repo::storage::LocalStore::compact(&f.repo_dir) {
        Err(Error::Locked { .. }) => {}
        other => panic!("compact beside an open handle must report the lock: {other:?}"),
    }
    drop(repo);
    cairn_repo::storage::LocalStore::compact(&f.repo_dir).unwrap();
    assert_clean(&Repository::open(&f.repo_dir, PW, &opts()).unwrap());
}

#[test]
fn prune_leaves_a_damaged_live_object_in_place_and_frees_the_rest() {
    let f = fixture();
    let repo = Repository::init(&f.repo_dir, PW, &opts()).unwrap();
    let a = f.root.join("a");
    write(&a, "big", 31, 3 << 20);
    write(&a, "small", 32, 300 << 10);
    let s1 = backup_of(&repo, &[&a]);
    std::fs::remove_file(a.join("big")).unwrap();
    backup_of(&repo, &[&a]);
    repo.local("test").unwrap().remove_snapshots(&[s1]).unwrap();
    let view = repo.reader().unwrap();
    let root = repo.snapshots().unwrap()[0].snapshot.root;
    let entry = repo
        .lookup(&view, &root, a.join("small").as_os_str().as_encoded_bytes())
        .unwrap()
        .unwrap();
    let small = match &entry.content {
        cairn_repo::Content::Inline(x) => x[0].id.unwrap(),
        other => panic!("{other:?}"),
    };
    drop(view);
    damage_object(
        repo.local("test").unwrap(),
        &small,
        repo.config().piece_size,
        3,
    )
    .unwrap();
    let before = repo.local("test").unwrap().space().unwrap();
    let notes = std::sync::Mutex::new(Vec::new());
    let report = prune(&repo, &quick(), &|m| {
        notes.lock().unwrap().push(m.to_string())
    })
    .unwrap();
    assert_eq!(report.damaged_skipped, 1, "{report:?}");
    assert_eq!(
        report.packs_kept, 1,
        "the pack holding the damaged object stays: {report:?}"
    );
    assert!(notes
        .lock()
        .unwrap()
        .iter()
        .any(|m| m.contains(&small.to_hex())));
    assert!(repo.local("test").unwrap().space().unwrap().objects < before.objects);
    let r = check(
        &repo,
        &CheckOptions {
            read_data: true,
            subset_percent: None,
        },
    )
    .unwrap();
    assert_eq!(
        r.damaged.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![small]
    );
}

/// A pack a writer appends to after the plan must survive the sweep, even if everything the plan
/// saw in it was unused: the rows added later would otherwise point into a deleted pack.
#[test]
fn a_pack_appended_to_after_the_plan_is_kept() {
    let f = fixture();
    let repo = Repository::init(&f.repo_dir, PW, &opts()).unwrap();
    let ps = repo.config().piece_size;
    let session = repo
        .local("test")
        .unwrap()
        .begin_session(&cairn_repo::util::session_info())
        .unwrap();
    let mut writer = repo
        .storage()
        .writer(WriterOptions {
            batch_bytes: ps as usize,
            ..Default::default()
        })
        .unwrap();
    let (x, y) = (Id([1; 32]), Id([2; 32]));
    writer
        .add(x, Kind::Chunk, &noise(1, 2 * ps as usize))
        .unwrap();
    writer.checkpoint().unwrap();
    let p = plan(&repo, &quick()).unwrap();
    assert_eq!(
        p.packs
            .values()
            .filter(|x| x.action == PackAction::Delete)
            .count(),
        1
    );
    writer.add(y, Kind::Chunk, &noise(2, ps as usize)).unwrap();
    writer.checkpoint().unwrap();
    repo.local("test").unwrap().end_session(session).unwrap();
    let report = execute(&repo, p, &quick(), &|_| {}).unwrap();
    assert_eq!(
        (
            report.objects_dropped,
            report.packs_deleted,
            report.packs_kept
        ),
        (1, 0, 1),
        "{report:?}"
    );
    let reader = repo.storage().reader().unwrap();
    assert_eq!(reader.read(&y).unwrap().1, noise(2, ps as usize));
    assert!(reader.info(&x).unwrap().is_none());
}

/// Issue 16: `check` beside a running backup must not report the objects of a snapshot
/// committed while it starts as missing (it listed snapshots after opening its view).
#[test]
fn issue16_check_beside_backups_reports_no_false_damage() {
    let f = fixture();
    let repo = Repository::init(&f.repo_dir, PW, &opts()).unwrap();
    let src = f.root.join("src");
    // Reading the data is the long first phase of a check, for backups to commit inside.
    for i in 0..300 {
        write(&src, &format!("f{i}"), 1000 + i, 1 << 10);
    }
    write(&src, "big", 7, 24 << 20);
    backup_of(&repo, &[&src]);
    let done = std::sync::atomic::AtomicBool::new(false);
    let checks = std::thread::scope(|s| {
        s.spawn(|| {
            for round in 0..10u64 {
                write(&src, &format!("new{round}"), round, 64 << 10);
                backup_of(&repo, &[&src]);
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut checks = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let o = CheckOptions {
                read_data: true,
                subset_percent: None,
            };
            let r = check(&repo, &o).unwrap();
            assert!(
                r.damaged.is_empty(),
                "false damage beside a backup: {:?}",
                r.damaged.iter().map(|d| &d.problem).collect::<Vec<_>>()
            );
            checks += 1;
        }
        checks
    });
    assert!(checks > 0);
}

/// Issue 16: an object that fails verification but no snapshot uses (junk a hostile client
/// stored under a fresh id) is reported apart from damage, so the check stays green.
#[test]
fn issue16_unreferenced_junk_is_not_damage() {
    let f = fixture();
    let repo = Repository::init(&f.repo_dir, PW, &opts()).unwrap();
    let src = f.root.join("src");
    write(&src, "a", 1, 10 << 10);
    backup_of(&repo, &[&src]);
    let junk = vec![0x5A; 500];
    let mut p = repo
        .storage()
        .writer(WriterOptions {
            batch_bytes: 1 << 20,
            ..Default::default()
        })
        .unwrap();
    p.add(Id([9; 32]), Kind::Chunk, &junk).unwrap();
    p.commit(&[]).unwrap();
    drop(p);
    let r = check(
        &repo,
        &CheckOptions {
            read_data: true,
            subset_percent: None,
        },
    )
    .unwrap();
    assert!(r.damaged.is_empty(), "{:?}", r.damaged);
    assert_eq!(r.unreferenced.len(), 1);
    assert_eq!(r.unreferenced[0].id, Id([9; 32]));
    prune(&repo, &quick(), &|_| {}).unwrap();
    let r = check(
        &repo,
        &CheckOptions {
            read_data: true,
            subset_percent: None,
        },
    )
    .unwrap();
    assert!(r.unreferenced.is_empty(), "prune removed the junk");
}

/// Issue 16: a restore that meets a damaged chunk or tree restores everything else, reports
/// what it skipped, leaves no half-written file under a real name (nor a temporary one), and
/// keeps the file that was there before.
#[test]
fn issue16_restore_passes_over_damage_and_leaves_no_half_written_file() {
    let f = fixture();
    let src = f.root.join("src");
    write(&src.join("a"), "x", 21, 300 << 10);
    write(&src.join("b"), "y", 22, 10 << 10);
    write(&src, "top", 23, 50 << 10);
    let repo = Repository::init(&f.repo_dir, PW, &opts()).unwrap();
    backup_of(&repo, &[&src]);
    let root = repo.snapshots().unwrap()[0].snapshot.root;
    let view = repo.reader().unwrap();
    let at = |p: &Path| {
        repo.lookup(&view, &root, p.as_os_str().as_encoded_bytes())
            .unwrap()
            .unwrap()
    };
    let chunk = match &at(&src.join("a/x")).content {
        cairn_repo::Content::Inline(x) => x[0].id.unwrap(),
        other => panic!("{other:?}"),
    };
    let tree_b = at(&src.join("b")).subtree.unwrap();
    drop(view);
    let ps = repo.config().piece_size;
    damage_object(repo.local("test").unwrap(), &chunk, ps, 10).unwrap();
    damage_object(repo.local("test").unwrap(), &tree_b, ps, 10).unwrap();
    // The restore runs as a new process would: the pieces this one read above are cached by
    // its store and would hide the damage.
    drop(repo);
    let repo = Repository::open(&f.repo_dir, PW, &opts()).unwrap();

    let target = f.root.join("target");
    let restored = target.join(src.strip_prefix("/").unwrap());
    // An older copy of a/x is already there: a failed restore must not destroy it.
    std::fs::create_dir_all(restored.join("a")).unwrap();
    std::fs::write(restored.join("a/x"), b"old copy").unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    std::fs::File::options()
        .write(true)
        .open(restored.join("a/x"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let o = RestoreOptions {
        target: target.clone(),
        includes: Vec::new(),
        overwrite: Overwrite::IfNewer,
        threads: 0,
    };
    let r = restore(&repo, &root, &o, &RestoreProgress::default()).unwrap();
    assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
    assert!(
        r.warnings.iter().any(|w| w.contains("/a/x")),
        "{:?}",
        r.warnings
    );
    assert!(
        r.warnings.iter().any(|w| w.contains("/b")),
        "{:?}",
        r.warnings
    );
    assert_eq!(std::fs::read(restored.join("a/x")).unwrap(), b"old copy");
    assert_eq!(
        std::fs::read(restored.join("top")).unwrap(),
        std::fs::read(src.join("top")).unwrap()
    );
    let leftovers: Vec<_> = walk(&target)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".cairn-restore-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
