//! Every command against a repository in an S3 bucket (`--repo s3://…`) and sync to and from
//! one, on a real three-node Garage cluster in three zones on 127.0.0.1 (issue 11).

mod common;

#[path = "../repo/tests/support/garage.rs"]
mod garage;

use common::*;
use garage::Garage;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A local repository under `dir` holding one backup of the small tree (`dir/src`).
fn backed_up_small_tree(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    small_tree(&src);
    let local = dir.join("local");
    init(&local);
    backup(&local, &[&src]);
    local
}

/// A fresh prefix in the cluster's bucket.
fn fresh_url(g: &Garage, name: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("s3://{}/{name}-{n:x}", g.bucket())
}

/// `cairn --repo URL` with the cluster's endpoint and credentials in the environment (the
/// AWS way), and a cache of its own.
fn s3cairn(g: &Garage, url: &str, cache: &Path) -> Command {
    with_s3(cairn(Path::new(url)), g, cache)
}

/// `c` with the cluster's endpoint and credentials, and `cache` for the S3 cache.
fn with_s3(mut c: Command, g: &Garage, cache: &Path) -> Command {
    for (k, v) in g.env() {
        c.env(k, v);
    }
    c.env("CAIRN_CACHE_DIR", cache).env("HOME", cache);
    c
}

/// `cairn sync --json TO` of the local repository `from`, reaching S3 as `s3cairn` does.
fn sync_to(g: &Garage, from: &Path, to: &str, cache: &Path) -> Command {
    let mut c = with_s3(cairn(from), g, cache);
    c.args(["sync", "--json", to]);
    c
}

#[test]
fn every_command_works_on_a_repository_in_s3() {
    let g = Garage::shared();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let src = work.path().join("src");
    small_tree(&src);
    let url = fresh_url(g, "acme");
    let c = |extra: &[&str]| {
        let mut c = s3cairn(g, &url, &cache);
        c.args(extra);
        c
    };
    ok(&mut c(&["init"]), 0);
    assert_eq!(run(&mut c(&["init"])).code, 1, "init twice refuses");
    let first = json(c(&["backup", "--json"]).arg(&src));
    std::fs::write(src.join("docs/letter.txt"), "dear customer, again\n").unwrap();
    std::fs::write(src.join("new"), b"a new file\n").unwrap();
    let second = json(c(&["backup", "--json"]).arg(&src));
    assert!(
        second["bytes_added_stored"].as_u64().unwrap() < 100_000,
        "the second backup stores only the change: {second}"
    );
    assert_eq!(snapshot_count(&mut c(&[])), 2);
    let short = first["short_id"].as_str().unwrap();
    let ls = ok(c(&["ls", "latest"]).arg(src.join("docs")), 0);
    assert!(ls.contains("letter.txt") && ls.contains("old"), "{ls}");
    let cat = ok(c(&["cat", short]).arg(src.join("docs/letter.txt")), 0);
    assert_eq!(cat, "dear customer\n".repeat(500));
    let diff = ok(&mut c(&["diff", short, "latest"]), 0);
    assert!(
        diff.contains("letter.txt") && diff.contains("new"),
        "{diff}"
    );
    let out = work.path().join("out");
    ok(c(&["restore", "latest", "--target"]).arg(&out), 0);
    assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
    ok(&mut c(&["check", "--read-data"]), 0);
    // Key-less: every stored object against its checksum, no password at all.
    let mut keyless = c(&["check", "--storage-only", "--json"]);
    keyless.env_remove("CAIRN_PASSWORD");
    let v = json(&mut keyless);
    assert!(v["objects"].as_u64().unwrap() > 3, "{v}");
    assert_eq!(v["ok"].as_bool(), Some(true), "{v}");
    ok(&mut c(&["stats"]), 0);
    ok(&mut c(&["status"]), 0);
    ok(
        c(&["key", "add"]).env("CAIRN_NEW_PASSWORD", "second password"),
        0,
    );
    ok(
        c(&["snapshots"]).env("CAIRN_PASSWORD", "second password"),
        0,
    );
    assert_eq!(
        run(c(&["snapshots"]).env("CAIRN_PASSWORD", "wrong")).code,
        12,
        "wrong password"
    );
    {
        let mnt = work.path().join("mnt");
        let mut cmd = c(&[]);
        cmd.stdin(Stdio::null());
        let m = Mount::start_with(cmd, &mnt, &[]);
        let inside = m.latest().join(src.strip_prefix("/").unwrap());
        assert_eq!(
            std::fs::read(inside.join("docs/old/random")).unwrap(),
            std::fs::read(src.join("docs/old/random")).unwrap(),
            "a file read through a mount of the bucket"
        );
    }
    ok(&mut c(&["forget", "--keep-last", "1"]), 0);
    assert_eq!(snapshot_count(&mut c(&[])), 1);
    let dry = json(&mut c(&["prune", "--dry-run", "--json"]));
    assert!(dry["plan"]["objects_unused"].as_u64().unwrap() > 0, "{dry}");
    let pruned = json(&mut c(&["prune", "--json"]));
    assert!(pruned["objects_removed"].as_u64().unwrap() > 0, "{pruned}");
    ok(&mut c(&["check", "--read-data"]), 0);
    let out2 = work.path().join("out2");
    ok(c(&["restore", "latest", "--target"]).arg(&out2), 0);
    assert_same_tree(&src, &out2.join(src.strip_prefix("/").unwrap()));
    // A fresh cache (another machine): the same answers, from the bucket alone.
    let other = work.path().join("cache2");
    ok(s3cairn(g, &url, &other).args(["check", "--read-data"]), 0);
}

#[test]
fn wrong_credentials_missing_buckets_and_unreachable_servers_are_clear_errors() {
    let g = Garage::shared();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let url = fresh_url(g, "errors");
    // No repository under the prefix: 10, before any password is asked.
    let r = run(s3cairn(g, &url, &cache).arg("snapshots"));
    assert_eq!(r.code, 10, "{}", r.stderr);
    assert!(r.stderr.contains(&url), "{}", r.stderr);
    // A bucket that does not exist.
    let r = run(s3cairn(g, "s3://no-such-bucket-here/x", &cache).arg("init"));
    assert_eq!(r.code, 10, "{}", r.stderr);
    assert!(r.stderr.contains("bucket"), "{}", r.stderr);
    // Wrong secret: the server refuses, the message says which settings to check, and the
    // secret itself is never printed.
    let r = run(s3cairn(g, &url, &cache)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123456789")
        .arg("init"));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("AWS_SECRET_ACCESS_KEY"), "{}", r.stderr);
    assert!(!r.stderr.contains("not-the-secret"), "{}", r.stderr);
    // Nothing listens there.
    let r = run(s3cairn(g, &url, &cache)
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .arg("init"));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("AWS_ENDPOINT_URL"), "{}", r.stderr);
}

/// The main use: a local repository replicated to S3 by `sync`, with no key on the far side,
/// then pulled back to a new disk after losing the site; one Garage node down meanwhile.
#[test]
fn sync_to_s3_and_back_survives_a_node_down() {
    let g = Garage::start();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let src = work.path().join("src");
    small_tree(&src);
    for i in 0..20 {
        std::fs::write(
            src.join(format!("big{i}")),
            cairn_repo::testkit::noise(100 + i, 1_500_000),
        )
        .unwrap();
    }
    let local = work.path().join("local");
    init(&local);
    backup(&local, &[&src]);
    let url = fresh_url(&g, "offsite");
    let sync = |from: &Path, to: &str| sync_to(&g, from, to, &cache);
    // Kill a node while the first sync uploads; it finishes, or the next run completes it.
    let mut child = sync(&local, &url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    g.kill_node(3);
    let status = child.wait().unwrap();
    if !status.success() {
        ok(&mut sync(&local, &url), 0);
    }
    let again = json(&mut sync(&local, &url));
    assert_eq!(
        again["targets"][0]["snapshots_sent"].as_u64(),
        Some(0),
        "a no-change sync sends nothing: {again}"
    );
    let requests = again["s3_requests"]["total"].as_u64().unwrap();
    assert!(
        requests < 20,
        "a no-change sync costs a handful of requests: {again}"
    );
    // Restore straight from S3 with the node still down.
    let out = work.path().join("out");
    ok(
        s3cairn(&g, &url, &cache)
            .args(["restore", "latest", "--target"])
            .arg(&out),
        0,
    );
    assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
    g.restart_node(3);
    // The site is lost: pull the replica to a new disk with one sync.
    let rebuilt = work.path().join("rebuilt");
    let mut c = s3cairn(&g, &url, &cache);
    ok(c.args(["sync"]).arg(&rebuilt), 0);
    ok(cairn(&rebuilt).args(["check", "--read-data"]), 0);
    assert_eq!(snapshots(&rebuilt).len(), 1);
}

/// A sync killed in the middle of an upload leaves no snapshot visible in the bucket, and the
/// next sync sends only the rest.
#[test]
fn a_sync_killed_mid_upload_leaves_no_partial_snapshot() {
    let g = Garage::shared();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let src: PathBuf = forty_files(&work.path().join("src"), 500);
    let local = work.path().join("local");
    init(&local);
    backup(&local, &[&src]);
    let url = fresh_url(g, "killed");
    let sync = || sync_to(g, &local, &url, &cache);
    let mut child = sync()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let _ = child.kill();
    let _ = child.wait();
    let seen = run(s3cairn(g, &url, &cache).args(["snapshots", "--json"]));
    if seen.code == 0 {
        let v: serde_json::Value = serde_json::from_str(&seen.stdout).unwrap();
        let n = v["snapshots"].as_array().map_or(0, |a| a.len());
        if n > 0 {
            // The sync had finished before the kill: then everything must be whole.
            ok(s3cairn(g, &url, &cache).args(["check", "--read-data"]), 0);
        }
    }
    let done = json(&mut sync());
    assert_eq!(done["targets"][0]["ok"].as_bool(), Some(true), "{done}");
    ok(s3cairn(g, &url, &cache).args(["check", "--read-data"]), 0);
    assert_eq!(snapshot_count(&mut s3cairn(g, &url, &cache)), 1);
}

/// A first sync lists the bucket a handful of times however many requests it takes: the
/// receiving side answers them all from one reader (an S3 reader lists `index/`) until its
/// own commit, instead of opening one per request.
#[test]
fn a_first_sync_lists_the_bucket_a_handful_of_times() {
    let g = Garage::shared();
    let work = tempfile::tempdir().unwrap();
    let (cache, local) = (work.path().join("cache"), backed_up_small_tree(work.path()));
    let url = fresh_url(g, "lists");
    let first = json(&mut sync_to(g, &local, &url, &cache));
    let target = &first["targets"][0];
    assert_eq!(target["snapshots_sent"].as_u64(), Some(1), "{first}");
    let trips = target["round_trips"].as_u64().unwrap();
    let lists = first["s3_requests"]["list"].as_u64().unwrap();
    assert!(
        trips >= 10,
        "the walk of a deep tree takes many round trips: {first}"
    );
    assert!(
        lists <= LISTS_OF_A_FIRST_SYNC,
        "{lists} listings for {trips} round trips: {first}"
    );
}

/// Listings a first sync makes: keys (creating the replica, then adding slots), the
/// collections (beginning the session), snapshots, the index once.
const LISTS_OF_A_FIRST_SYNC: u64 = 5;

/// `check --repair-from s3://…` heals a damaged local repository from its replica in a
/// bucket, named by URL or as a sync target; every copy is verified here first.
#[test]
fn check_repairs_a_local_repository_from_its_replica_in_s3() {
    let g = Garage::shared();
    let work = tempfile::tempdir().unwrap();
    let (cache, local) = (work.path().join("cache"), backed_up_small_tree(work.path()));
    let url = fresh_url(g, "heal");
    ok(&mut sync_to(g, &local, &url, &cache), 0);
    let with_bucket = || with_s3(cairn(&local), g, &cache);
    let damage = |seed: u64| {
        let (chunk, piece_size) = some_chunk(&local);
        let store = cairn_repo::storage::LocalStore::open(&local, 1 << 20).unwrap();
        cairn_repo::testkit::damage_object(&store, &chunk, piece_size, seed).unwrap();
        chunk
    };
    let chunk = damage(7);
    let r = run(cairn(&local).args(["check", "--read-data"]));
    assert_eq!(r.code, 1, "the damage is found: {}", r.stdout);
    assert!(
        r.stdout.contains(&format!("damaged object {chunk}")),
        "{}",
        r.stdout
    );

    // Key-less: the bucket's copy matches the checksum recorded here, so it comes back
    // without the password.
    let out = ok(
        with_bucket()
            .args(["check", "--storage-only", "--repair-from", &url])
            .env_remove("CAIRN_PASSWORD"),
        0,
    );
    assert!(out.contains(&format!("repaired {chunk} from")), "{out}");
    ok(cairn(&local).args(["check", "--read-data"]), 0);
    let chunk = damage(8);
    // No replica under that prefix: refused, and nothing is created there.
    let nowhere = fresh_url(g, "none");
    let r = run(with_bucket().args(["check", "--repair-from", &nowhere]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no replica"), "{}", r.stderr);
    let r = run(s3cairn(g, &nowhere, &cache).arg("snapshots"));
    assert_eq!(r.code, 10, "nothing was created: {}", r.stderr);

    // The URL: the copy is read from the bucket, verified and stored; clean afterwards.
    let out = ok(
        with_bucket().args(["check", "--read-data", "--repair-from", &url]),
        0,
    );
    assert!(
        out.contains(&format!("repaired {chunk} from {url}")),
        "{out}"
    );
    ok(cairn(&local).args(["check", "--read-data"]), 0);

    // Again, the replica named as a sync target.
    ok(cairn(&local).args(["target", "add", "cloud", &url]), 0);
    let chunk = damage(9);
    assert_eq!(run(cairn(&local).args(["check", "--read-data"])).code, 1);
    let out = ok(
        with_bucket().args(["check", "--read-data", "--repair-from", "cloud"]),
        0,
    );
    assert!(
        out.contains(&format!("repaired {chunk} from {url}")),
        "{out}"
    );
    ok(cairn(&local).args(["check", "--read-data"]), 0);
    restore_and_compare(&local, &work.path().join("src"), &work.path().join("out"));
}
