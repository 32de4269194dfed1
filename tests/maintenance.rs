//! End-to-end tests of issue 5 with the real binary: forget, prune, check --storage-only,
//! status exit codes.

mod common;

use common::*;
use std::path::Path;

fn noise(seed: u64, len: usize) -> Vec<u8> {
    cairn_repo::testkit::noise(seed, len)
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn space(repo: &Path) -> serde_json::Value {
    json(&ok(cairn(repo).args(["stats", "--json"]), 0))["space"].clone()
}

struct Setup {
    _tmp: tempfile::TempDir,
    repo: std::path::PathBuf,
    a: std::path::PathBuf,
    b: std::path::PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let (repo, a, b) = (root.join("repo"), root.join("a"), root.join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(a.join("f"), noise(1, 2 << 20)).unwrap();
    std::fs::write(b.join("g"), noise(2, 3 << 20)).unwrap();
    init(&repo);
    Setup {
        _tmp: tmp,
        repo,
        a,
        b,
    }
}

#[test]
fn forget_dry_run_shows_every_decision_and_its_rules() {
    let s = setup();
    backup(&s.repo, &[&s.a]);
    std::fs::write(s.a.join("f2"), b"more").unwrap();
    backup(&s.repo, &[&s.a]);
    backup(&s.repo, &[&s.b]);
    let out = ok(
        cairn(&s.repo).args(["forget", "--keep-last", "1", "--dry-run"]),
        0,
    );
    assert_eq!(out.matches("  keep    ").count(), 2, "{out}");
    assert_eq!(out.matches("  remove  ").count(), 1, "{out}");
    assert!(out.contains("last"), "{out}");
    assert!(
        out.contains(&format!("paths {}", s.a.display())),
        "grouped by path set: {out}"
    );
    assert_eq!(snapshots(&s.repo).len(), 3, "dry run changes nothing");

    let v = json(&ok(
        cairn(&s.repo).args([
            "forget",
            "--keep-last",
            "1",
            "--keep-daily",
            "3",
            "--dry-run",
            "--json",
        ]),
        0,
    ));
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    let a_group = groups
        .iter()
        .find(|g| g["snapshots"].as_array().unwrap().len() == 2)
        .unwrap();
    assert_eq!(a_group["snapshots"][0]["keep"], true);
    assert_eq!(
        a_group["snapshots"][0]["reasons"],
        serde_json::json!(["last", "daily"])
    );
    assert_eq!(
        a_group["snapshots"][1]["keep"], false,
        "same day: only the newest is the daily"
    );

    let v = json(&ok(
        cairn(&s.repo).args([
            "forget",
            "--keep-last",
            "1",
            "--group-by",
            "none",
            "--prune",
            "--json",
        ]),
        0,
    ));
    assert_eq!(snapshots(&s.repo).len(), 1);
    assert_eq!(
        v["forget"]["groups"][0]["snapshots"][2]["keep"], false,
        "{v}"
    );
    assert!(
        v["prune"]["objects_removed"].as_u64().unwrap() > 0,
        "one JSON document for both: {v}"
    );
    let r = run(cairn(&s.repo).args(["forget", "--dry-run"]));
    assert_eq!(r.code, 2, "no policy is refused: {}", r.stderr);
    let r = run(cairn(&s.repo).args(["forget", "--keep-within", "7x"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
}

/// A second process holding the repository open (as a mount would), until dropped.
struct HeldOpen(std::process::Child);

impl Drop for HeldOpen {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hold_open(repo: &Path) -> HeldOpen {
    let db = repo.join("cairn.redb");
    HeldOpen(
        std::process::Command::new("sh")
            .arg("-c")
            .arg("exec 3<\"$1\"; sleep 60")
            .arg("sh")
            .arg(&db)
            .spawn()
            .unwrap(),
    )
}

#[test]
fn prune_frees_space_and_compact_shrinks_the_file() {
    let s = setup();
    backup(&s.repo, &[&s.b]);
    backup(&s.repo, &[&s.a]);
    let before = space(&s.repo);
    // Keep only a's (newest) snapshot; b's 3 MiB become garbage.
    ok(
        cairn(&s.repo).args(["forget", "--keep-last", "1", "--group-by", "none"]),
        0,
    );
    let plan = json(&ok(
        cairn(&s.repo).args(["prune", "--dry-run", "--json"]),
        0,
    ));
    assert!(
        plan["plan"]["bytes_freed"].as_u64().unwrap() > 2 << 20,
        "{plan}"
    );
    assert_eq!(plan["packs"][0]["action"], "delete", "{plan}");
    assert_eq!(
        space(&s.repo)["pack_bytes"],
        before["pack_bytes"],
        "dry run frees nothing"
    );
    let text = ok(cairn(&s.repo).args(["prune", "--dry-run"]), 0);
    assert!(text.contains("would free"), "{text}");
    // stats tells what the database uses and what is free inside its file (a mount keeps
    // the file open, so a prune frees pages without shrinking it).
    let used = |sp: &serde_json::Value| sp["db_bytes"].as_u64().unwrap();
    assert!(
        used(&before) <= before["file_bytes"].as_u64().unwrap(),
        "{before}"
    );
    let reader = hold_open(&s.repo);
    let done = json(&ok(cairn(&s.repo).args(["prune", "--json"]), 0));
    assert!(done["packs_deleted"].as_u64().unwrap() >= 1, "{done}");
    let pruned = space(&s.repo);
    assert!(
        used(&pruned) + (2 << 20) < used(&before),
        "prune frees pages: {before} -> {pruned}"
    );
    assert_eq!(
        pruned["free_in_file_bytes"].as_u64().unwrap(),
        pruned["file_bytes"].as_u64().unwrap() - used(&pruned)
    );
    drop(reader);

    let done = json(&ok(
        cairn(&s.repo).args(["prune", "--json", "--compact"]),
        0,
    ));
    assert_eq!(done["compacted"], true, "{done}");
    let after = space(&s.repo);
    assert!(
        after["pack_bytes"].as_u64().unwrap() + (2 << 20) < before["pack_bytes"].as_u64().unwrap(),
        "{before} -> {after}"
    );
    assert!(
        after["file_bytes"].as_u64().unwrap() + (2 << 20) < before["file_bytes"].as_u64().unwrap(),
        "compact shrinks the file: {before} -> {after}"
    );
    ok(cairn(&s.repo).args(["check", "--read-data"]), 0);
    let again = json(&ok(
        cairn(&s.repo).args(["prune", "--dry-run", "--json"]),
        0,
    ));
    assert_eq!(again["plan"]["objects_unused"], 0);
}

#[test]
fn storage_only_check_needs_no_password() {
    let s = setup();
    backup(&s.repo, &[&s.a]);
    let mut c = cairn(&s.repo);
    c.env_remove("CAIRN_PASSWORD")
        .args(["check", "--storage-only", "--json"]);
    let v = json(&ok(&mut c, 0));
    assert_eq!(v["ok"], true);
    assert!(v["objects"].as_u64().unwrap() >= 3);
}

#[test]
fn status_exit_codes() {
    let s = setup();
    let r = run(cairn(&s.repo).args(["status", "--max-age", "24"]));
    assert_eq!(r.code, 3, "no snapshots at all is overdue: {}", r.stdout);
    backup(&s.repo, &[&s.a]);
    ok(cairn(&s.repo).arg("status"), 0);
    ok(cairn(&s.repo).args(["status", "--max-age", "24"]), 0);
    let r = run(cairn(&s.repo).args(["status", "--max-check-age", "7"]));
    assert_eq!(r.code, 3, "never checked: {}", r.stdout);
    assert!(r.stdout.contains("never checked"), "{}", r.stdout);
    ok(cairn(&s.repo).arg("check"), 0);
    let v = json(&ok(
        cairn(&s.repo).args(["status", "--max-check-age", "7", "--json"]),
        0,
    ));
    assert_eq!(v["healthy"], true);
    assert_eq!(v["last_check"]["damaged"], 0);
    assert_eq!(v["hosts"].as_array().unwrap().len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = run(cairn(&s.repo).args(["status", "--max-age", "0.0001"]));
    assert_eq!(r.code, 3, "{}", r.stdout);
}

/// A chunk of the repository, found without the password.

#[test]
fn check_names_damage_and_repair_from_a_replica_heals_it() {
    let s = setup();
    backup(&s.repo, &[&s.a]);
    let replica = s.repo.with_file_name("replica");
    std::fs::create_dir_all(&replica).unwrap();
    std::fs::copy(s.repo.join("cairn.redb"), replica.join("cairn.redb")).unwrap();
    let (chunk, ps) = some_chunk(&s.repo);
    {
        let store = cairn_repo::storage::LocalStore::open(&s.repo, 1 << 20).unwrap();
        cairn_repo::testkit::damage_object(&store, &chunk, ps, 7).unwrap();
    }
    let r = run(cairn(&s.repo).args(["check", "--read-data"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stdout.contains(&format!("damaged object {chunk}")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("at {}/f", s.a.display())),
        "names the path: {}",
        r.stdout
    );
    let mut keyless = cairn(&s.repo);
    keyless
        .env_remove("CAIRN_PASSWORD")
        .args(["check", "--storage-only"]);
    let r = run(&mut keyless);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains(&chunk.to_hex()), "{}", r.stdout);

    let out = ok(
        cairn(&s.repo)
            .args(["check", "--read-data", "--repair-from"])
            .arg(&replica),
        0,
    );
    assert!(out.contains(&format!("repaired {chunk}")), "{out}");
    ok(cairn(&s.repo).args(["check", "--read-data"]), 0);

    // Again, without the password: the replica's bytes must match the recorded checksum.
    let (chunk, ps) = some_chunk(&s.repo);
    {
        let store = cairn_repo::storage::LocalStore::open(&s.repo, 1 << 20).unwrap();
        cairn_repo::testkit::damage_object(&store, &chunk, ps, 9).unwrap();
    }
    let mut keyless = cairn(&s.repo);
    keyless
        .env_remove("CAIRN_PASSWORD")
        .args(["check", "--storage-only", "--repair-from"])
        .arg(&replica);
    let out = ok(&mut keyless, 0);
    assert!(out.contains(&format!("repaired {chunk}")), "{out}");
    ok(cairn(&s.repo).args(["check", "--read-data"]), 0);
    let target = s.repo.with_file_name("restored");
    ok(
        cairn(&s.repo)
            .args(["restore", "latest", "--target"])
            .arg(&target),
        0,
    );
    assert_same_tree(&s.a, &target.join(s.a.strip_prefix("/").unwrap()));
}

#[test]
fn prune_beside_a_backup_in_another_process_loses_nothing() {
    let s = setup();
    let src = s.repo.with_file_name("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..24 {
        std::fs::write(src.join(format!("f{i}")), noise(50 + i, 1 << 20)).unwrap();
    }
    backup(&s.repo, &[&src]);
    // Forget everything: all of it is unused until the next backup reuses it.
    ok(
        cairn(&s.repo).args(["forget", "--keep-tag", "no-such-tag"]),
        0,
    );
    assert!(snapshots(&s.repo).is_empty());
    std::fs::write(src.join("new"), noise(99, 3 << 20)).unwrap();
    let mut child = cairn(&s.repo)
        .args(["backup", "--quiet"])
        .arg(&src)
        .spawn()
        .unwrap();
    let mut prunes = 0;
    while child.try_wait().unwrap().is_none() {
        ok(
            cairn(&s.repo).args(["prune", "--quiet", "--wait", "120"]),
            0,
        );
        prunes += 1;
    }
    assert!(child.wait().unwrap().success());
    ok(cairn(&s.repo).args(["prune", "--quiet"]), 0);
    assert!(prunes >= 1);
    ok(cairn(&s.repo).args(["check", "--read-data"]), 0);
    let target = s.repo.with_file_name("restored");
    ok(
        cairn(&s.repo)
            .args(["restore", "latest", "--target"])
            .arg(&target),
        0,
    );
    assert_same_tree(&src, &target.join(src.strip_prefix("/").unwrap()));
}

/// A tmpfs of `size` (as `mount -o size=` takes it) on `dir`, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount a {size} tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Issue 16: a backup that fills the repository's disk fails clearly and gives back what it
/// wrote (the pages return to the database, whose file keeps its size), so the next, smaller
/// backup fits without a prune.
#[test]
fn issue16_a_backup_that_fills_the_disk_gives_back_its_space() {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let disk = root.join("disk");
    let _disk = Tmpfs::mount(&disk, "64m");
    let repo = disk.join("repo");
    init(&repo);
    let (big, small) = (root.join("big"), root.join("small"));
    std::fs::create_dir_all(&big).unwrap();
    std::fs::create_dir_all(&small).unwrap();
    for i in 0..4 {
        std::fs::write(big.join(format!("f{i}")), noise(10 + i, 25 << 20)).unwrap();
    }
    std::fs::write(small.join("note"), b"hello!").unwrap();
    std::fs::write(small.join("data"), noise(99, 30 << 20)).unwrap();
    let r = run(cairn(&repo).arg("backup").arg(&big));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("disk is full"), "{}", r.stderr);
    assert!(snapshots(&repo).is_empty());
    let r = run(cairn(&repo).arg("backup").arg(&small));
    assert_eq!(
        r.code, 0,
        "the next, smaller backup needs no prune: {}",
        r.stderr
    );
    assert_eq!(snapshots(&repo).len(), 1);
    ok(cairn(&repo).args(["check", "--read-data"]), 0);
}

/// Issue 16: a restore into a disk that fills up leaves no empty or half-written file under
/// a real name (each is renamed into place only when whole) and no temporary file, so a retry
/// elsewhere, or after freeing space, finds nothing that looks newer than the snapshot.
#[test]
fn issue16_a_restore_into_a_full_disk_leaves_only_whole_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let (repo, src, disk) = (root.join("repo"), root.join("src"), root.join("disk"));
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..40 {
        std::fs::write(src.join(format!("f{i:02}")), noise(200 + i, 500 << 10)).unwrap();
    }
    init(&repo);
    backup(&repo, &[&src]);
    let _disk = Tmpfs::mount(&disk, "8m");
    let r = run(cairn(&repo)
        .args(["restore", "latest", "--target"])
        .arg(&disk));
    assert_ne!(r.code, 0, "the disk is too small: {}", r.stderr);
    let restored = disk.join(src.strip_prefix("/").unwrap());
    let mut whole = 0;
    for e in std::fs::read_dir(&restored).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".cairn-restore-"),
            "temporary file left: {name}"
        );
        assert_eq!(
            std::fs::read(e.path()).unwrap(),
            std::fs::read(src.join(&name)).unwrap(),
            "{name} is whole or absent"
        );
        whole += 1;
    }
    assert!(whole > 0 && whole < 40, "{whole} of 40 fit");
}
