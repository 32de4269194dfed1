//! The provider's server does its work without any customer's key (issue 12): customers back
//! up over a real sshd; the server, with no password in its environment, replicates to a
//! second site, reports status, verifies every snapshot's objects and collects garbage after
//! a customer forgot.

mod common;

#[path = "../repo/tests/support/garage.rs"]
mod garage;

use common::ssh::*;
use common::*;
use std::path::Path;

fn object_bytes(repo: &Path) -> u64 {
    json(keyless(repo).args(["status", "--json"]))["space"]["object_bytes"]
        .as_u64()
        .unwrap()
}

#[test]
fn the_server_replicates_verifies_and_collects_garbage_without_any_key() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start();
    let (sshd, srv) = (&server.sshd, &server.root);
    let site2 = tmp.path().join("site2");
    let acme = srv.join("acme");
    let url = ssh_url(sshd, &acme);
    let customer = || ssh_cairn(Path::new(&url), sshd);
    // The customer backs up over ssh, twice (the second one after a change).
    let src = tmp.path().join("src");
    small_tree(&src);
    ok(customer().arg("init"), 0);
    ok(customer().arg("backup").arg(&src), 0);
    std::fs::write(
        src.join("docs/old/random"),
        cairn_repo::testkit::noise(8, 2_000_000),
    )
    .unwrap();
    ok(customer().arg("backup").arg(&src), 0);

    // The server: no password anywhere, never prompted.
    let sync = json(keyless(&acme).args(["sync", "--json"]).arg(&site2));
    assert_eq!(sync["key_free"], true, "{sync}");
    assert_eq!(sync["targets"][0]["snapshots_sent"], 2, "{sync}");
    let status = json(keyless(&acme).args(["status", "--json", "--max-age", "1"]));
    assert_eq!(status["key_free"], true, "{status}");
    let targets = status["targets"].as_array().unwrap();
    assert_eq!(
        targets.len(),
        1,
        "a target synced to by URL is shown: {status}"
    );
    assert_eq!(targets[0]["last_sync"]["ok"], true, "{status}");
    assert_eq!(status["snapshots"], 2, "{status}");
    assert_eq!(status["healthy"], true, "{status}");
    assert!(
        status["hosts"].as_array().unwrap().is_empty(),
        "no host names without the key"
    );
    let age = status["newest"]["age_hours"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&age), "{status}");
    let check = json(keyless(&acme).args(["check", "--storage-only", "--json"]));
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["snapshots"], 2, "{check}");
    assert!(check["reachable_objects"].as_u64().unwrap() > 4, "{check}");
    let status = json(keyless(&acme).args(["status", "--json"]));
    assert_eq!(status["last_check"]["storage_only"], true, "{status}");
    // The second site restores exactly, with the customer's key.
    restore_and_compare(&site2, &src, &tmp.path().join("out"));

    // The customer forgets the first snapshot; the server collects garbage key-free.
    ok(customer().args(["forget", "--keep-last", "1"]), 0);
    let before = object_bytes(&acme);
    let prune = json(keyless(&acme).args(["prune", "--json"]));
    let after = object_bytes(&acme);
    assert!(
        after + 1_000_000 < before,
        "the first version of the 3 MB file is freed: {before} -> {after}; {prune}"
    );
    ok(customer().args(["check", "--read-data"]), 0);
    restore_and_compare(&acme, &src, &tmp.path().join("out2"));
    // Retention reaches site 2 with --delete (without it, site 2 keeps both).
    let again = json(keyless(&acme).args(["sync", "--json"]).arg(&site2));
    assert_eq!(again["targets"][0]["target_snapshots"], 2, "{again}");
    let del = json(
        keyless(&acme)
            .args(["sync", "--json", "--delete"])
            .arg(&site2),
    );
    assert_eq!(del["targets"][0]["snapshots_deleted"], 1, "{del}");
    assert_eq!(snapshots(&site2).len(), 1);
    restore_and_compare(&site2, &src, &tmp.path().join("out3"));
    // An append-only site refuses the deletion: said, exit 3, its history kept.
    let site3 = srv.join("site3");
    let forced = forced_key(
        sshd,
        "site3_key",
        &format!("--repo {} --append-only", site3.display()),
    );
    let to_site3 = || {
        let mut c = keyless(&acme);
        c.env("CAIRN_SSH_COMMAND", &forced)
            .env("CAIRN_REMOTE_BINARY", bin());
        c.arg("sync").arg(ssh_url(sshd, &site3));
        c
    };
    ok(&mut to_site3(), 0);
    std::fs::write(src.join("third"), b"third\n").unwrap();
    ok(customer().arg("backup").arg(&src), 0);
    ok(customer().args(["forget", "--keep-last", "1"]), 0);
    let r = run(to_site3().arg("--delete"));
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("append-only"), "{}", r.stderr);
    assert_eq!(
        snapshots(&site3).len(),
        2,
        "the append-only site keeps its history"
    );
    let status = json(keyless(&acme).args(["status", "--json"]));
    assert_eq!(status["snapshots"], 1, "{status}");
    assert_eq!(
        status["last_check"]["read_data"], true,
        "the customer's check: {status}"
    );
}

#[test]
fn a_missing_object_fails_the_key_free_check_and_names_the_snapshot() {
    use cairn_repo::storage::{self, Url, WriterOptions};
    let tmp = tempfile::tempdir().unwrap();
    let (repo, src) = (tmp.path().join("repo"), tmp.path().join("src"));
    small_tree(&src);
    init(&repo);
    let snap = backup(&repo, &[&src])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    ok(keyless(&repo).args(["check", "--storage-only"]), 0);
    // A copy of it that lost one chunk (a replica a disk ate part of).
    let (chunk, _) = some_chunk(&repo);
    let copy = tmp.path().join("copy");
    {
        let o = cairn_repo::OpenOptions::default();
        let from = storage::open(&Url::Local(repo.clone()), &o).unwrap();
        let to = storage::create(&Url::Local(copy.clone()), &from.config().unwrap(), &o).unwrap();
        let view = from.reader().unwrap();
        let mut w = to.writer(WriterOptions::default()).unwrap();
        for (id, _) in view.list(&cairn_repo::Id::default(), usize::MAX).unwrap() {
            if id != chunk {
                let (kind, sealed) = view.read(&id).unwrap();
                w.add(id, kind, &sealed).unwrap();
            }
        }
        w.commit(&from.snapshots().unwrap()).unwrap();
    }
    let r = run(keyless(&copy).args(["check", "--storage-only"]));
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains(&chunk.to_hex()), "{all}");
    assert!(all.contains(&snap[..8]), "{all}");
    assert!(all.contains("missing"), "{all}");
}

#[test]
fn fleet_status_lists_every_repository_in_json_and_in_the_textfile() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = tmp.path().join("srv");
    let src = tmp.path().join("src");
    small_tree(&src);
    for name in ["acme", "globex", "initech"] {
        init(&srv.join(name));
    }
    backup(&srv.join("acme"), &[&src]);
    backup(&srv.join("globex"), &[&src]);
    std::fs::create_dir_all(srv.join("not-a-repository")).unwrap();
    let prom = tmp.path().join("cairn.prom");
    let r = run(keyless(Path::new("/nonexistent"))
        .env_remove("CAIRN_REPO")
        .args(["status", "--json", "--max-age", "24", "--prometheus"])
        .arg(&prom)
        .arg(&srv));
    assert_eq!(
        r.code, 3,
        "initech has no snapshot: overdue; {}{}",
        r.stdout, r.stderr
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let rows = v["repositories"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["acme", "globex", "initech"], "{v}");
    assert_eq!(rows[0]["snapshots"], 1, "{v}");
    assert_eq!(rows[0]["healthy"], true, "{v}");
    assert!(rows[0]["stored_bytes"].as_u64().unwrap() > 1_000_000, "{v}");
    assert_eq!(rows[2]["healthy"], false, "{v}");
    assert_eq!(
        (v["healthy"].as_u64(), v["unhealthy"].as_u64()),
        (Some(2), Some(1))
    );
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains("cairn_snapshots{repo=\"acme\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("cairn_healthy{repo=\"initech\"} 0\n"),
        "{text}"
    );
    assert!(text.contains("# TYPE cairn_stored_bytes gauge"), "{text}");
    assert!(
        std::fs::read_dir(tmp.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp")),
        "no temporary file is left beside the textfile"
    );
    // One repository by URL, human output; a path that is nothing is a clear error (exit 10).
    let out = ok(
        keyless(Path::new("/nonexistent"))
            .env_remove("CAIRN_REPO")
            .args(["status"])
            .arg(srv.join("acme")),
        0,
    );
    assert!(out.contains("acme") && out.contains("ok"), "{out}");
    let r = run(keyless(Path::new("/nonexistent"))
        .env_remove("CAIRN_REPO")
        .args(["status"])
        .arg(tmp.path().join("nothing")));
    assert_eq!(r.code, 10, "{}", r.stderr);
}

/// Beemo2Beemo: two sites, each holding its own customers' repositories and the other's
/// replicas, replicating to each other over ssh with no key; two customers back up to one
/// server at the same time without blocking each other.
#[test]
fn two_sites_replicate_to_each_other_and_customers_back_up_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start();
    let sshd = &server.sshd;
    let (east, west) = (tmp.path().join("east"), tmp.path().join("west"));
    let sources: Vec<_> = ["acme", "globex"]
        .iter()
        .map(|name| {
            let src = tmp.path().join(format!("src-{name}"));
            small_tree(&src);
            std::fs::write(src.join("owner"), name.as_bytes()).unwrap();
            src
        })
        .collect();
    // acme backs up to east, globex to west, both at once.
    let homes = [east.join("own/acme"), west.join("own/globex")];
    for home in &homes {
        ok(
            ssh_cairn(Path::new(&ssh_url(sshd, home)), sshd).arg("init"),
            0,
        );
    }
    let mut running: Vec<_> = homes
        .iter()
        .zip(&sources)
        .map(|(home, src)| {
            ssh_cairn(Path::new(&ssh_url(sshd, home)), sshd)
                .arg("backup")
                .arg(src)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in &mut running {
        assert!(c.wait().unwrap().success());
    }
    // Each site pushes its own repositories to the other, key-free, over ssh.
    for (own, other) in [(&east, &west), (&west, &east)] {
        let r = json(
            keyless(&east)
                .env_remove("CAIRN_REPO")
                .env("CAIRN_SSH_COMMAND", &sshd.ssh_command)
                .env("CAIRN_REMOTE_BINARY", bin())
                .args(["status", "--json"])
                .arg(own.join("own")),
        );
        assert_eq!(r["healthy"], 1, "{r}");
        for entry in std::fs::read_dir(own.join("own")).unwrap() {
            let repo = entry.unwrap().path();
            let name = repo.file_name().unwrap().to_owned();
            let to = ssh_url(sshd, &other.join("replicas").join(&name));
            let mut c = keyless(&repo);
            c.env("CAIRN_SSH_COMMAND", &sshd.ssh_command)
                .env("CAIRN_REMOTE_BINARY", bin());
            let out = json(c.args(["sync", "--json"]).arg(&to));
            assert_eq!(out["key_free"], true, "{out}");
        }
    }
    // Each replica restores its customer's tree exactly, with the customer's key.
    restore_and_compare(
        &west.join("replicas/acme"),
        &sources[0],
        &tmp.path().join("o1"),
    );
    restore_and_compare(
        &east.join("replicas/globex"),
        &sources[1],
        &tmp.path().join("o2"),
    );
    let fleet = json(
        keyless(&east)
            .env_remove("CAIRN_REPO")
            .args(["status", "--json"])
            .arg(east.join("own"))
            .arg(east.join("replicas")),
    );
    let names: Vec<&str> = fleet["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme", "globex"], "{fleet}");
}

/// A replica's server keeps its own retention without the key: grouped by the keyed
/// host-and-paths tag, by the public times.
#[test]
fn forget_and_prune_without_the_key_keep_the_newest_per_group() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, a, b) = (
        tmp.path().join("repo"),
        tmp.path().join("a"),
        tmp.path().join("b"),
    );
    small_tree(&a);
    small_tree(&b);
    init(&repo);
    let mut newest_a = String::new();
    for i in 0..3 {
        std::fs::write(a.join("counter"), format!("{i}")).unwrap();
        newest_a = backup(&repo, &[&a])["snapshot"]
            .as_str()
            .unwrap()
            .to_string();
    }
    let only_b = backup(&repo, &[&b])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let plan = json(keyless(&repo).args(["forget", "--keep-last", "1", "--dry-run", "--json"]));
    assert_eq!(plan["groups"].as_array().unwrap().len(), 2, "{plan}");
    let r = run(keyless(&repo).args(["forget", "--keep-last", "1", "--keep-tag", "x"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("need the key"), "{}", r.stderr);
    ok(
        keyless(&repo).args(["forget", "--keep-last", "1", "--prune"]),
        0,
    );
    let mut left: Vec<String> = snapshots(&repo)
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    left.sort();
    let mut want = vec![newest_a, only_b];
    want.sort();
    assert_eq!(left, want, "the newest of each path set stays");
    ok(cairn(&repo).args(["check", "--read-data"]), 0);
}

/// The offsite copy in an S3 bucket (a three-zone Garage cluster), kept by the server with no
/// key: replicate, verify in the bucket, follow the customer's forget, collect the garbage there.
#[test]
fn the_server_keeps_an_s3_replica_without_any_key() {
    let g = garage::Garage::shared();
    let tmp = tempfile::tempdir().unwrap();
    let (repo, src, cache) = (
        tmp.path().join("acme"),
        tmp.path().join("src"),
        tmp.path().join("cache"),
    );
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let bucket = format!("s3://{}/keyfree-{n:x}", g.bucket());
    let s3 = |mut c: std::process::Command| {
        for (k, v) in g.env() {
            c.env(k, v);
        }
        c.env("CAIRN_CACHE_DIR", &cache).env("HOME", &cache);
        c
    };
    small_tree(&src);
    init(&repo);
    backup(&repo, &[&src]);
    std::fs::write(
        src.join("docs/old/random"),
        cairn_repo::testkit::noise(9, 2_500_000),
    )
    .unwrap();
    backup(&repo, &[&src]);
    let mut c = s3(keyless(&repo));
    let out = json(c.args(["sync", "--json"]).arg(&bucket));
    assert_eq!(out["key_free"], true, "{out}");
    assert_eq!(out["targets"][0]["snapshots_sent"], 2, "{out}");
    let check = json(s3(keyless(Path::new(&bucket))).args(["check", "--storage-only", "--json"]));
    assert_eq!(
        (check["ok"].as_bool(), check["snapshots"].as_u64()),
        (Some(true), Some(2)),
        "{check}"
    );
    // The customer forgets; the server's next sync follows it and collects in the bucket.
    ok(cairn(&repo).args(["forget", "--keep-last", "1"]), 0);
    let del = json(
        s3(keyless(&repo))
            .args(["sync", "--json", "--delete"])
            .arg(&bucket),
    );
    assert_eq!(del["targets"][0]["snapshots_deleted"], 1, "{del}");
    let stored = |c: &mut std::process::Command| {
        json(c.args(["status", "--json"]))["space"]["object_bytes"]
            .as_u64()
            .unwrap()
    };
    let before = stored(&mut s3(keyless(Path::new(&bucket))));
    ok(s3(keyless(Path::new(&bucket))).args(["prune"]), 0);
    let after = stored(&mut s3(keyless(Path::new(&bucket))));
    assert!(after + 1_000_000 < before, "{before} -> {after}");
    // And the customer restores the latest snapshot from the bucket with the key.
    let out = tmp.path().join("out");
    ok(
        s3(cairn(Path::new(&bucket)))
            .args(["restore", "latest", "--target"])
            .arg(&out),
        0,
    );
    assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
}
