//! Issue 16: damaged repositories give a report, never a panic. Damage is injected into
//! copies of one fixture repository (random-looking bytes over whole pages, truncation,
//! truncation then zeros), and every reading command must end with an exit code of the
//! contract, keep readable what is readable, and heal from a replica.

mod common;

use common::*;
use std::path::{Path, PathBuf};

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    repo: PathBuf,
    replica: PathBuf,
    src: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let (repo, replica, src) = (root.join("repo"), root.join("replica"), root.join("src"));
    for d in 0..6 {
        let dir = src.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..30 {
            std::fs::write(dir.join(format!("f{f}")), format!("{d}/{f} ").repeat(300)).unwrap();
        }
        std::fs::write(dir.join("big"), cairn_repo::testkit::noise(d, 1 << 20)).unwrap();
    }
    init(&repo);
    backup(&repo, &[&src]);
    backup(&repo, &[&src.join("d1")]);
    ok(cairn(&repo).arg("sync").arg(&replica), 0);
    Fixture {
        _tmp: tmp,
        root,
        repo,
        replica,
        src,
    }
}

/// A copy of the fixture repository with `damage` applied to its database file.
fn damaged_copy(f: &Fixture, name: &str, damage: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let dir = f.root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = std::fs::read(f.repo.join("cairn.redb")).unwrap();
    damage(&mut bytes);
    std::fs::write(dir.join("cairn.redb"), bytes).unwrap();
    dir
}

fn scribble(bytes: &mut [u8], at: usize, len: usize) {
    let end = (at + len).min(bytes.len());
    let noise = cairn_repo::testkit::noise(at as u64, end - at);
    bytes[at..end].copy_from_slice(&noise);
}

/// Every reading command on `repo` ends with a contract exit code (0, 1, 3), never a panic's
/// 101 or a signal, and names the repository or the damaged object when it fails.
fn assert_reports(repo: &Path, scratch: &Path, case: &str) {
    let target = scratch.join(format!("restore-{case}"));
    let commands: Vec<Vec<String>> = vec![
        vec!["snapshots".into()],
        vec!["ls".into(), "latest".into()],
        vec!["check".into()],
        vec!["check".into(), "--read-data".into()],
        vec!["check".into(), "--storage-only".into()],
        vec![
            "restore".into(),
            "latest".into(),
            "--target".into(),
            target.display().to_string(),
        ],
        vec!["stats".into()],
    ];
    for args in commands {
        let r = run(cairn(repo).args(&args).env_remove("RUST_BACKTRACE"));
        assert!(
            [0, 1, 3].contains(&r.code),
            "{case}: `cairn {}` exited {}:\n{}",
            args.join(" "),
            r.code,
            r.stderr
        );
        assert!(
            r.stderr.matches("panicked").count() == 0,
            "{case}: `cairn {}` printed panics:\n{}",
            args.join(" "),
            r.stderr
        );
        if r.code != 0 {
            let said = format!("{}{}", r.stdout, r.stderr);
            assert!(
                said.contains("damaged") || said.contains("no snapshots"),
                "{case}: `cairn {}` failed without saying what is damaged:\n{said}",
                args.join(" "),
            );
        }
    }
}

#[test]
fn issue16_damaged_pages_give_reports_never_panics() {
    let f = fixture();
    let len = std::fs::metadata(f.repo.join("cairn.redb")).unwrap().len() as usize;
    let mut cases: Vec<(String, PathBuf)> = Vec::new();
    for page in [1usize, 2, 3, 4, 5, 6, 8, 12, 16] {
        let name = format!("page{page}");
        let dir = damaged_copy(&f, &name, |b| scribble(b, page * 4096, 4096));
        cases.push((name, dir));
    }
    for (name, at) in [("third", len / 3), ("half", len / 2), ("end", len - 70_000)] {
        let dir = damaged_copy(&f, name, |b| scribble(b, at, 64 << 10));
        cases.push((name.to_string(), dir));
    }
    let dir = damaged_copy(&f, "cut-half-zeros", |b| {
        let n = b.len();
        b.truncate(n / 2);
        b.resize(n, 0);
    });
    cases.push(("cut-half-zeros".into(), dir));
    let dir = damaged_copy(&f, "cut-4k", |b| {
        let n = b.len();
        b.truncate(n - 4096);
    });
    cases.push(("cut-4k".into(), dir));
    for (name, dir) in &cases {
        assert_reports(dir, &f.root, name);
    }
}

/// A file cut short (a copy that stopped early) is read up to the cut when redb's header
/// records the full length and the file was closed cleanly: redb refuses it, Cairn opens it
/// read-only with zeros past the cut. When the file was left needing redb's crash recovery
/// (measured: about two runs in five of this fixture end so, with a file grown ahead of its
/// layout), redb rebuilds its layout from the short file and the open fails as damage; that
/// case is the `cut-4k` one of the test above (a report, no panic; healed by a rebuild).
#[test]
fn issue16_a_truncated_repository_is_read_not_refused() {
    let f = fixture();
    // A clean close at the exact layout length: compaction has the file to itself.
    ok(cairn(&f.repo).args(["prune", "--compact"]), 0);
    let dir = damaged_copy(&f, "cut", |b| {
        let n = b.len();
        b.truncate(n - 4096);
    });
    let r = run(cairn(&dir).arg("snapshots").env_remove("RUST_BACKTRACE"));
    assert_eq!(
        r.code, 0,
        "a damaged repository is not a missing one: {}",
        r.stderr
    );
    assert_eq!(snapshots(&dir).len(), 2);
    let target = f.root.join("out");
    let r = run(cairn(&dir)
        .args(["restore", "latest", "--target"])
        .arg(&target));
    assert!([0, 3].contains(&r.code), "{}", r.stderr);
    assert!(target
        .join(f.src.strip_prefix("/").unwrap())
        .join("d1/f0")
        .is_file());
    let r = run(cairn(&dir).arg("backup").arg(&f.src));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("truncated"), "{}", r.stderr);
    assert_reports(&dir, &f.root, "cut");
}

#[test]
fn issue16_a_database_that_does_not_open_is_rebuilt_from_a_replica() {
    let f = fixture();
    // Find damage that keeps the database from opening at all.
    let dir = (1..64)
        .map(|page| {
            damaged_copy(&f, &format!("p{page}"), |b| {
                b[page * 4096..(page + 1) * 4096].fill(0xA5)
            })
        })
        .find(|dir| {
            let r = run(cairn(dir).arg("snapshots").env_remove("RUST_BACKTRACE"));
            assert!([0, 1].contains(&r.code), "{}", r.stderr);
            r.code == 1
        })
        .expect("some page's damage keeps the database from opening");
    let r = run(cairn(&dir).arg("snapshots").env_remove("RUST_BACKTRACE"));
    assert!(r.stderr.contains("is damaged"), "{}", r.stderr);
    assert!(
        r.stderr.contains("--repair-from"),
        "says what to do: {}",
        r.stderr
    );

    let out = ok(
        cairn(&dir)
            .arg("check")
            .arg("--repair-from")
            .arg(&f.replica),
        0,
    );
    assert!(out.contains("rebuilt"), "{out}");
    assert_eq!(snapshots(&dir).len(), 2);
    ok(cairn(&dir).args(["check", "--read-data"]), 0);
    let kept: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cairn.redb.damaged-"))
        .collect();
    assert_eq!(kept.len(), 1, "the damaged file is kept, not deleted");
    let target = f.root.join("healed");
    ok(
        cairn(&dir)
            .args(["restore", "latest", "--target"])
            .arg(&target),
        0,
    );
}

/// A damaged directory (tree object) is reported and passed over: `ls` and `restore` show
/// and restore everything else, and exit 3.
#[test]
fn issue16_a_damaged_directory_is_passed_over_by_ls_and_restore() {
    let f = fixture();
    let d2 = f.src.join("d2");
    {
        let repo = cairn_repo::Repository::open(
            &f.repo,
            PASSWORD.as_bytes(),
            &cairn_repo::OpenOptions::default(),
        )
        .unwrap();
        // The first snapshot holds the whole source.
        let snap = repo.snapshots().unwrap().remove(0);
        let view = repo.reader().unwrap();
        let tree = repo
            .lookup(
                &view,
                &snap.snapshot.root,
                d2.as_os_str().as_encoded_bytes(),
            )
            .unwrap()
            .unwrap()
            .subtree
            .unwrap();
        drop(view);
        let ps = repo.config().piece_size;
        cairn_repo::testkit::damage_object(repo.local("test").unwrap(), &tree, ps, 5).unwrap();
    }
    let first = snapshots(&f.repo)[0]["id"].as_str().unwrap().to_string();
    let r = run(cairn(&f.repo).args(["ls", &first]));
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("/d2"), "{}", r.stderr);
    assert!(
        r.stdout.contains("/d3/f0"),
        "the rest is listed: {}",
        r.stdout
    );
    let target = f.root.join("out");
    let r = run(cairn(&f.repo)
        .args(["restore", &first, "--target"])
        .arg(&target));
    assert_eq!(r.code, 3, "{}", r.stderr);
    let restored = target.join(f.src.strip_prefix("/").unwrap());
    assert!(restored.join("d3/f0").is_file());
    assert!(!restored.join("d2/f0").exists());
}
