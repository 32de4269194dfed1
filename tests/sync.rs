//! `cairn sync`, `cairn target` and `cairn serve` end to end with the real binary: a local
//! replica, and a replica over a real sshd started on 127.0.0.1 with throwaway keys.

mod common;

use common::ssh::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    cairn_repo::testkit::noise(seed, n)
}

fn make_source(dir: &Path) {
    std::fs::create_dir_all(dir.join("a/b")).unwrap();
    std::fs::write(dir.join("a/b/text"), "hello sync\n".repeat(1000)).unwrap();
    std::fs::write(dir.join("a/random"), pseudo_random(2_500_000, 3)).unwrap();
    std::fs::write(dir.join("top"), b"top file\n").unwrap();
    std::os::unix::fs::symlink("a/b/text", dir.join("link")).unwrap();
}

/// A repository with one backup of `make_source`, and where a replica may go ("nas").
fn backed_up() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, src, nas) = (
        tmp.path().join("repo"),
        tmp.path().join("src"),
        tmp.path().join("nas"),
    );
    make_source(&src);
    init(&repo);
    backup(&repo, &[&src]);
    (tmp, repo, src, nas)
}

fn sync_json(c: &mut Command, code: i32) -> serde_json::Value {
    let out = ok(c, code);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("sync --json: {e}\n{out}"))
}

fn snapshot_ids(repo: &Path) -> Vec<String> {
    snapshots(repo)
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn sync_state(repo: &Path, key: &str) -> serde_json::Value {
    let store = cairn_repo::storage::LocalStore::open(repo, 1 << 20).unwrap();
    let bytes = store
        .state(&format!("sync.{key}"))
        .unwrap()
        .unwrap_or_else(|| panic!("no state sync.{key}"));
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn local_target_add_list_sync_restore() {
    let (tmp, repo, src, nas) = backed_up();
    ok(cairn(&repo).args(["target", "add", "nas"]).arg(&nas), 0);
    let r = run(cairn(&repo).args(["target", "add", "nas", "/elsewhere"]));
    assert_ne!(r.code, 0, "duplicate names are refused");
    let list = ok(cairn(&repo).args(["target", "list", "--json"]), 0);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["targets"][0]["name"], "nas");
    assert_eq!(list["targets"][0]["kind"], "local");

    let v = sync_json(cairn(&repo).args(["sync", "--json"]), 0);
    let t = &v["targets"][0];
    assert_eq!(
        (
            t["target"].as_str(),
            t["ok"].as_bool(),
            t["created"].as_bool()
        ),
        (Some("nas"), Some(true), Some(true))
    );
    assert_eq!(t["snapshots_sent"], 1);
    assert!(t["bytes"].as_u64().unwrap() > 2_000_000, "{t}");
    assert!(t["error"].is_null());
    assert_eq!(snapshot_ids(&nas), snapshot_ids(&repo));
    restore_and_compare(&nas, &src, &tmp.path().join("out"));
    let state = sync_state(&repo, "nas");
    assert_eq!(state["ok"], true);
    assert_eq!(state["snapshots"].as_array().unwrap().len(), 1);
    assert!(state["error"].is_null() && state["time"].as_i64().unwrap() > 0);

    // Again: nothing to send. Quiet prints nothing.
    let out = ok(cairn(&repo).args(["sync", "--quiet", "nas"]), 0);
    assert_eq!(out, "");
    let v = sync_json(cairn(&repo).args(["sync", "--json", "nas"]), 0);
    assert_eq!(
        (
            v["targets"][0]["objects"].as_u64(),
            v["targets"][0]["bytes"].as_u64()
        ),
        (Some(0), Some(0))
    );

    ok(cairn(&repo).args(["target", "remove", "nas"]), 0);
    let r = run(cairn(&repo).args(["sync"]));
    assert_eq!(r.code, 2, "no targets is a usage error: {}", r.stderr);
}

#[test]
fn limit_rate_caps_the_sending_speed() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, src) = (tmp.path().join("repo"), tmp.path().join("src"));
    make_source(&src);
    init(&repo);
    backup(&repo, &[&src]);
    let dest = tmp.path().join("slow");
    let v = sync_json(
        cairn(&repo)
            .args(["sync", "--json", "--limit-rate", "1M"])
            .arg(&dest),
        0,
    );
    let t = &v["targets"][0];
    let (bytes, secs) = (t["bytes"].as_f64().unwrap(), t["seconds"].as_f64().unwrap());
    assert!(bytes > 2_000_000.0);
    assert!(
        secs >= bytes / (1 << 20) as f64 * 0.8,
        "{bytes} bytes in {secs} s at 1 MiB/s"
    );
}

#[test]
fn a_foreign_repository_is_refused() {
    let (tmp, repo, _src, _) = backed_up();
    let other = tmp.path().join("other");
    init(&other);
    let r = run(cairn(&repo).arg("sync").arg(&other));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("not a replica of this repository"),
        "{}",
        r.stderr
    );
    assert!(snapshot_ids(&other).is_empty());
}

#[test]
fn sync_runs_beside_a_backup() {
    let (_tmp, repo, src, nas) = backed_up();
    std::fs::write(src.join("bigger"), pseudo_random(40_000_000, 9)).unwrap();
    let mut running = cairn(&repo)
        .args(["backup", "--quiet"])
        .arg(&src)
        .spawn()
        .unwrap();
    let first = sync_json(cairn(&repo).args(["sync", "--json"]).arg(&nas), 0);
    assert_eq!(first["targets"][0]["ok"], true);
    assert!(
        running.wait().unwrap().success(),
        "the backup beside the sync succeeds"
    );
    ok(cairn(&repo).arg("sync").arg(&nas), 0);
    assert_eq!(snapshot_ids(&nas), snapshot_ids(&repo));
    assert_eq!(snapshot_ids(&nas).len(), 2);
    ok(cairn(&nas).args(["check", "--read-data"]), 0);
}

// ----- over ssh -----

#[test]
fn over_ssh_with_an_unreachable_second_target() {
    let tmp = tempfile::tempdir().unwrap();
    let sshd = start_sshd(&tmp.path().join("ssh").tap_create());
    let (repo, src) = (tmp.path().join("repo"), tmp.path().join("src"));
    let remote = tmp.path().join("remote replica");
    make_source(&src);
    init(&repo);
    backup(&repo, &[&src]);
    let url = ssh_url(&sshd, &remote);
    ok(cairn(&repo).args(["target", "add", "offsite", &url]), 0);
    let dead = format!("ssh://127.0.0.1:{}/nowhere", free_port());
    ok(cairn(&repo).args(["target", "add", "dead", &dead]), 0);

    let v = sync_json(ssh_cairn(&repo, &sshd).args(["sync", "--json"]), 3);
    let by_name = |n: &str| {
        v["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["target"] == n)
            .cloned()
            .unwrap()
    };
    let (off, dead_t) = (by_name("offsite"), by_name("dead"));
    assert_eq!(off["ok"], true, "{off}");
    assert_eq!(off["snapshots_sent"], 1);
    assert_eq!(dead_t["ok"], false);
    assert!(
        dead_t["error"].as_str().unwrap().contains("ssh"),
        "{dead_t}"
    );
    assert_eq!((v["ok"].as_u64(), v["failed"].as_u64()), (Some(1), Some(1)));
    assert_eq!(
        snapshot_ids(&remote),
        snapshot_ids(&repo),
        "the replica opens with the same password"
    );
    restore_and_compare(&remote, &src, &tmp.path().join("out"));
    assert_eq!(sync_state(&repo, "dead")["ok"], false);
    assert_eq!(sync_state(&repo, "offsite")["ok"], true);

    // An increment sends little; only the unreachable target: exit 1.
    std::fs::write(src.join("top"), b"changed\n").unwrap();
    backup(&repo, &[&src]);
    let v = sync_json(
        ssh_cairn(&repo, &sshd).args(["sync", "--json", "offsite"]),
        0,
    );
    let t = &v["targets"][0];
    assert_eq!(t["snapshots_sent"], 1);
    assert!(t["bytes"].as_u64().unwrap() < 50_000, "{t}");
    assert_eq!(snapshot_ids(&remote), snapshot_ids(&repo));
    let r = run(ssh_cairn(&repo, &sshd).args(["sync", "--quiet", "dead"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("dead"), "{}", r.stderr);

    // A far side without cairn: a clear message.
    let r = run(ssh_cairn(&repo, &sshd).args([
        "sync",
        "--remote-cairn",
        "/nonexistent/cairn",
        "offsite",
    ]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("is cairn installed on the far side"),
        "{}",
        r.stderr
    );
}

#[test]
fn serve_append_only_and_hostile_input() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("served");
    // Garbage instead of a hello: a clean protocol error, exit 1, no repository created.
    let mut child = Command::new(bin())
        .args(["serve", "--append-only", "--repo"])
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&[0xff, 0xff, 0xff, 0x7f, 1, 2, 3]).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("protocol error"), "{err}");
    assert!(!dir.exists());

    // A real client against `cairn serve --append-only`: syncs, but deletions are refused.
    let (repo, src) = (tmp.path().join("repo"), tmp.path().join("src"));
    make_source(&src);
    init(&repo);
    backup(&repo, &[&src]);
    let primary = cairn_repo::Repository::open(
        &repo,
        PASSWORD.as_bytes(),
        &cairn_repo::OpenOptions::default(),
    )
    .unwrap();
    let log = tmp.path().join("serve.log");
    let mut child = Command::new(bin())
        .args(["serve", "--append-only", "--log-file"])
        .arg(&log)
        .arg("--repo")
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut client = cairn_repo::sync::StreamTarget::new(
        child.stdout.take().unwrap(),
        child.stdin.take().unwrap(),
    );
    assert!(client.handshake(&primary).unwrap());
    let mut report = cairn_repo::sync::SyncReport::default();
    let progress = cairn_repo::sync::SyncProgress::default();
    cairn_repo::sync::sync(
        &primary,
        &mut client,
        &Default::default(),
        &progress,
        &mut report,
    )
    .unwrap();
    assert_eq!(report.snapshots_sent, 1);
    use cairn_repo::sync::{proto::Request, Target};
    let err = client
        .call(Request::DeleteSnapshots(report.target_snapshots.clone()))
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    // Issue 16: nor can a client replace what is stored: the same ids with other bytes are
    // refused (and logged on the server), the same bytes again are a no-op.
    let real = primary.local("test").unwrap().snapshot_blobs().unwrap();
    let forged: Vec<_> = real.iter().map(|(id, _)| (*id, vec![0x42; 300])).collect();
    let err = client.call(Request::PutSnapshots(forged)).unwrap_err();
    assert!(err.to_string().contains("never replaced"), "{err}");
    client.call(Request::PutSnapshots(real)).unwrap();
    client.call(Request::Bye).unwrap();
    drop(client);
    assert!(child.wait().unwrap().success());
    assert_eq!(snapshot_ids(&dir), snapshot_ids(&repo));
    ok(cairn(&dir).args(["check", "--read-data"]), 0);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("append-only") && logged.contains("never replaced"),
        "{logged}"
    );
}

trait TapCreate {
    fn tap_create(self) -> Self;
}

impl TapCreate for PathBuf {
    fn tap_create(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

/// Hold an exclusive lock on a repository's database file for `secs` seconds (as another
/// process opening it exclusively would); returns once the lock is held.
fn hold_exclusively(repo: &Path, secs: f64) -> Child {
    let db = repo.join("cairn.redb");
    let child = Command::new("flock")
        .arg("-x")
        .arg(&db)
        .args(["sleep", &secs.to_string()])
        .spawn()
        .expect("flock (util-linux) runs");
    let start = Instant::now();
    // Held once a non-blocking shared lock fails.
    while Command::new("flock")
        .args(["-n", "-s"])
        .arg(&db)
        .arg("true")
        .status()
        .unwrap()
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "lock never taken"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn lock_wait_waits_for_a_locked_primary_or_replica() {
    let (_tmp, repo, src, nas) = backed_up();
    let sync = |wait: &str| {
        let mut c = cairn(&repo);
        c.args(["sync", "--quiet", "--lock-wait", wait]).arg(&nas);
        c
    };

    // The primary locked: no wait gives the contract's exit code; a wait succeeds after it.
    let mut holder = hold_exclusively(&repo, 1.5);
    let r = run(&mut sync("0"));
    assert_eq!(r.code, 11, "locked primary: {}", r.stderr);
    assert!(r.stderr.contains("locked"), "{}", r.stderr);
    let start = Instant::now();
    ok(&mut sync("30"), 0);
    assert!(start.elapsed() > Duration::from_millis(500), "it waited");
    holder.wait().unwrap();
    assert_eq!(snapshot_ids(&nas), snapshot_ids(&repo));

    // The replica locked: that target (the only one: exit 1) fails without a wait, and
    // syncs with one.
    backup(&repo, &[&src]);
    let mut holder = hold_exclusively(&nas, 1.5);
    let r = run(&mut sync("0"));
    assert_eq!(r.code, 1, "every target failed: {}", r.stderr);
    assert!(r.stderr.contains("locked"), "{}", r.stderr);
    ok(&mut sync("30"), 0);
    holder.wait().unwrap();
    assert_eq!(snapshot_ids(&nas), snapshot_ids(&repo));
}

#[test]
fn check_repairs_from_a_replica_over_ssh() {
    let tmp = tempfile::tempdir().unwrap();
    let sshd = start_sshd(&tmp.path().join("ssh").tap_create());
    let (_t, repo, src, _nas) = backed_up();
    let remote = tmp.path().join("offsite");
    let url = ssh_url(&sshd, &remote);
    ok(cairn(&repo).args(["target", "add", "offsite", &url]), 0);
    ok(ssh_cairn(&repo, &sshd).args(["sync", "--quiet"]), 0);

    let (chunk, piece_size) = some_chunk(&repo);
    let damage = |seed: u64| {
        let store = cairn_repo::storage::LocalStore::open(&repo, 1 << 20).unwrap();
        cairn_repo::testkit::damage_object(&store, &chunk, piece_size, seed).unwrap();
    };
    damage(11);
    let r = run(cairn(&repo).args(["check", "--read-data"]));
    assert_eq!(r.code, 1, "the damage is found: {}", r.stdout);

    // Key-less: the replica's copy matches the checksum recorded here, so it comes back
    // without the password.
    let out = ok(
        ssh_cairn(&repo, &sshd)
            .args(["check", "--storage-only", "--repair-from", "offsite"])
            .env_remove("CAIRN_PASSWORD"),
        0,
    );
    assert!(
        out.contains(&format!("repaired {chunk} from ssh://")),
        "{out}"
    );
    ok(cairn(&repo).args(["check", "--read-data"]), 0);
    damage(12);

    // An ssh URL with no replica behind it: refused, and nothing is created there.
    let nowhere = ssh_url(&sshd, &tmp.path().join("none"));
    let r = run(ssh_cairn(&repo, &sshd).args(["check", "--repair-from", &nowhere]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no replica"), "{}", r.stderr);
    assert!(!tmp.path().join("none").exists());

    // The named ssh target: the copy is fetched, verified here and stored; clean afterwards.
    let out = ok(
        ssh_cairn(&repo, &sshd).args(["check", "--read-data", "--repair-from", "offsite"]),
        0,
    );
    assert!(
        out.contains(&format!("repaired {chunk} from ssh://")),
        "{out}"
    );
    ok(cairn(&repo).args(["check", "--read-data"]), 0);
    restore_and_compare(&repo, &src, &tmp.path().join("out"));

    // A replica whose copy is damaged too: nothing is stored, and the check says why.
    for dir in [&repo, &remote] {
        let store = cairn_repo::storage::LocalStore::open(dir, 1 << 20).unwrap();
        cairn_repo::testkit::damage_object(&store, &chunk, piece_size, 13).unwrap();
    }
    let r = run(ssh_cairn(&repo, &sshd).args(["check", "--read-data", "--repair-from", "offsite"]));
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("damaged too"), "{}", r.stderr);
}
