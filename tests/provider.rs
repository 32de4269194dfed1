//! A provider's server (issue 12): each customer's ssh key is forced to `cairn serve --repo
//! /srv/…/customer` with its rights (`--allow`) and quota (`--quota`), through a real sshd on
//! 127.0.0.1.

mod common;

use common::ssh::*;
use common::*;
use std::path::Path;
use std::process::Command;

/// Run and require exit code `code`; returns stderr.
fn fails(c: &mut Command, code: i32) -> String {
    let r = run(c);
    assert_eq!(r.code, code, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    r.stderr
}

fn assert_says(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "`{p}` missing from:\n{text}");
    }
}

/// A key slot of the repository other than the one the test password opens.
fn other_slot(c: &mut Command) -> String {
    let slots = json(c.args(["key", "list", "--json"]));
    let other = slots
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == false)
        .expect("a second key slot");
    other["id"].to_string()
}

#[test]
fn a_backup_key_backs_up_but_cannot_read_contents_or_delete() {
    let p = Server::start();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    small_tree(&src);
    ok(p.admin("acme").arg("init"), 0);
    ok(
        p.admin("acme")
            .args(["key", "add"])
            .env("CAIRN_NEW_PASSWORD", "second password"),
        0,
    );
    let c = p.customer("acme_key", "acme", "--allow backup", "acme");

    json(c.cairn().args(["backup", "--json"]).arg(&src));
    std::fs::write(src.join("docs/letter.txt"), "dear customer, again\n").unwrap();
    let second = json(c.cairn().args(["backup", "--json"]).arg(&src));
    assert!(
        second["bytes_added_stored"].as_u64().unwrap() < 100_000,
        "the second backup is incremental: {second}"
    );
    assert_eq!(snapshot_count(&mut c.cairn()), 2);
    // The structure is the backup's to read: listings and diffs work.
    let ls = ok(c.cairn().args(["ls", "latest"]).arg(src.join("docs")), 0);
    assert!(ls.contains("letter.txt"), "{ls}");

    let grant = |right: &str| format!("--allow backup,{right}`");
    let err = fails(c.cairn().args(["forget", "--keep-last", "1"]), 1);
    assert_says(
        &err,
        &[
            "refused",
            "remove snapshots",
            &grant("forget"),
            "authorized_keys",
        ],
    );
    let err = fails(c.cairn().arg("prune"), 1);
    assert_says(&err, &["refused", "collect garbage", &grant("prune")]);
    assert_eq!(snapshot_count(&mut c.cairn()), 2);
    let out = work.path().join("out");
    let err = fails(
        c.cairn().args(["restore", "latest", "--target"]).arg(&out),
        1,
    );
    assert_says(&err, &["refused", "read file contents", &grant("restore")]);
    assert!(!out.exists(), "refused before anything was written");
    let err = fails(
        c.cairn()
            .args(["cat", "latest"])
            .arg(src.join("docs/letter.txt")),
        1,
    );
    assert_says(&err, &[&grant("restore")]);
    let err = fails(c.cairn().args(["check", "--read-data"]), 1);
    assert_says(&err, &[&grant("restore")]);
    let mnt = work.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let err = fails(c.cairn().arg("mount").arg(&mnt), 1);
    assert_says(&err, &[&grant("restore")]);
    let replica = work.path().join("replica");
    let err = fails(c.cairn().arg("sync").arg(&replica), 1);
    assert_says(&err, &[&grant("restore")]);
    assert!(!replica.exists());
    let slot = other_slot(&mut c.cairn());
    let err = fails(c.cairn().args(["key", "remove", &slot]), 1);
    assert_says(&err, &["remove key slots", &grant("prune")]);
    // The server refuses what the client does not refuse first (and logs it).
    let err = fails(c.cairn().args(["prune", "--dry-run"]), 1);
    assert_says(&err, &["cairn serve", &grant("prune")]);

    // Nothing was lost.
    assert_eq!(snapshot_count(&mut p.admin("acme")), 2);
    let slots = json(p.admin("acme").args(["key", "list", "--json"]));
    assert_eq!(slots.as_array().unwrap().len(), 2);
    ok(p.admin("acme").args(["check", "--read-data"]), 0);
}

#[test]
fn a_backup_and_restore_key_restores_but_cannot_forget() {
    let p = Server::start();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    small_tree(&src);
    ok(p.admin("acme").arg("init"), 0);
    let c = p.customer("acme_key", "acme", "--allow backup,restore", "acme");
    ok(c.cairn().arg("backup").arg(&src), 0);
    let out = work.path().join("out");
    ok(
        c.cairn().args(["restore", "latest", "--target"]).arg(&out),
        0,
    );
    assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
    ok(c.cairn().args(["check", "--read-data"]), 0);

    let err = fails(c.cairn().args(["forget", "--keep-last", "1", "--prune"]), 1);
    assert_says(
        &err,
        &["refused", "append-only", "--allow backup,restore,forget`"],
    );
    // `key passwd` adds a slot and removes the old one: refused before either.
    let err = fails(
        c.cairn()
            .args(["key", "passwd"])
            .env("CAIRN_NEW_PASSWORD", "new password"),
        1,
    );
    assert_says(&err, &["remove key slots"]);
    let slots = json(p.admin("acme").args(["key", "list", "--json"]));
    assert_eq!(slots.as_array().unwrap().len(), 1, "no slot was added");
    assert_eq!(snapshot_count(&mut p.admin("acme")), 1);

    // A key with `restore` alone lists and restores, and adds nothing.
    let r = p.customer("restore_key", "acme", "--allow restore", "acme");
    assert_eq!(snapshot_count(&mut r.cairn()), 1);
    let again = work.path().join("again");
    ok(
        r.cairn()
            .args(["restore", "latest", "--target"])
            .arg(&again),
        0,
    );
    assert_same_tree(&src, &again.join(src.strip_prefix("/").unwrap()));
    let err = fails(r.cairn().arg("backup").arg(&src), 1);
    assert_says(
        &err,
        &["refused", "--allow restore`", "--allow backup,restore`"],
    );
    assert_eq!(snapshot_count(&mut p.admin("acme")), 1);
}

#[test]
fn a_full_key_forgets_and_prunes() {
    let p = Server::start();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    small_tree(&src);
    ok(p.admin("acme").arg("init"), 0);
    let c = p.customer("acme_key", "acme", "--allow full", "acme");
    ok(c.cairn().arg("backup").arg(&src), 0);
    std::fs::write(src.join("docs/old/random"), b"replaced\n").unwrap();
    ok(c.cairn().arg("backup").arg(&src), 0);
    let pruned = json(
        c.cairn()
            .args(["forget", "--keep-last", "1", "--prune", "--json"]),
    );
    assert!(
        pruned["prune"]["objects_removed"].as_u64().unwrap() > 0,
        "{pruned}"
    );
    assert_eq!(snapshot_count(&mut c.cairn()), 1);
    ok(c.cairn().args(["check", "--read-data"]), 0);
}

#[test]
fn a_quota_stops_a_backup_cleanly() {
    let p = Server::start();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    small_tree(&src);
    ok(p.admin("acme").arg("init"), 0);
    ok(p.admin("acme").arg("backup").arg(&src), 0);
    let dir = p.root.join("acme");
    let used = cairn_repo::storage::LocalStore::open(&dir, 1 << 20)
        .unwrap()
        .space()
        .unwrap()
        .used();
    let quota = used + (20 << 20);
    let c = p.customer(
        "acme_key",
        "acme",
        &format!("--allow backup,restore --quota {quota}"),
        "acme",
    );
    // A small change fits.
    std::fs::write(src.join("new"), b"a new file\n").unwrap();
    ok(c.cairn().arg("backup").arg(&src), 0);
    let big = forty_files(&work.path().join("big"), 40);
    let err = fails(c.cairn().arg("backup").arg(&big), 1);
    assert_says(
        &err,
        &[
            "quota of ",
            &c.url,
            "reached",
            "forget snapshots and prune, or ask the administrator for more",
        ],
    );
    assert!(!err.contains("panicked"), "{err}");
    // The quota is noted for `cairn status`.
    let store = cairn_repo::storage::LocalStore::open(&dir, 1 << 20).unwrap();
    assert_eq!(
        store.state("quota").unwrap(),
        Some(format!("{{\"bytes\":{quota}}}").into_bytes())
    );
    drop(store);
    // ...and shown there, key-free, against what the repository uses.
    let status = json(keyless(&dir).args(["status", "--json"]));
    assert_eq!(status["quota_bytes"], quota, "{status}");
    assert!(status["used_bytes"].as_u64().unwrap() <= quota, "{status}");
    let fleet = json(keyless(&dir).args(["status", "--json"]).arg(&p.root));
    assert_eq!(fleet["repositories"][0]["quota_bytes"], quota, "{fleet}");
    assert_eq!(snapshot_count(&mut p.admin("acme")), 2, "no new snapshot");
    ok(p.admin("acme").args(["check", "--read-data"]), 0);
}

#[test]
fn a_quota_stops_a_sync_to_an_ssh_target_cleanly() {
    let p = Server::start();
    let work = tempfile::tempdir().unwrap();
    let primary = work.path().join("primary");
    init(&primary);
    let big = forty_files(&work.path().join("big"), 70);
    backup(&primary, &[big.as_path()]);
    let c = p.customer(
        "acme_key",
        "replica",
        "--append-only --quota 20M",
        "replica",
    );
    let r = run(cairn(&primary)
        .args(["sync", &c.url])
        .env("CAIRN_SSH_COMMAND", &c.ssh));
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert_says(
        &r.stderr,
        &["quota of 20 MiB", "reached", "ask the administrator"],
    );
    // The replica was made, holds no snapshot and checks clean.
    let replica = p.root.join("replica");
    assert_eq!(snapshots(&replica).len(), 0);
    ok(cairn(&replica).args(["check", "--read-data"]), 0);
}

#[test]
fn a_customer_key_reaches_only_its_own_repository() {
    let p = Server::start();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    small_tree(&src);
    const THEIRS: &str = "the other customer's password";
    ok(p.admin("acme").arg("init"), 0);
    ok(
        p.admin("other").arg("init").env("CAIRN_PASSWORD", THEIRS),
        0,
    );
    ok(
        p.admin("other")
            .arg("backup")
            .arg(&src)
            .env("CAIRN_PASSWORD", THEIRS),
        0,
    );
    let other_db = p.root.join("other/cairn.redb");
    let before = std::fs::read(&other_db).unwrap();

    // Acme's key, full rights, asking for the other customer's repository.
    let c = p.customer("acme_key", "acme", "", "other");
    assert_eq!(snapshot_count(&mut c.cairn()), 0, "it sees acme's");
    ok(c.cairn().arg("backup").arg(&src), 0);
    assert_eq!(
        snapshot_count(&mut p.admin("acme")),
        1,
        "the backup landed in acme"
    );
    let err = fails(c.cairn().arg("snapshots").env("CAIRN_PASSWORD", THEIRS), 12);
    assert_says(&err, &["wrong password"]);
    let err = fails(
        c.cairn()
            .args(["forget", "--keep-last", "1", "--prune"])
            .env("CAIRN_PASSWORD", THEIRS),
        12,
    );
    assert_says(&err, &["wrong password"]);
    // Nor can it make a repository anywhere else.
    let mut elsewhere = cairn(Path::new(&p.url("new-customer")));
    elsewhere.env("CAIRN_SSH_COMMAND", &c.ssh);
    let err = fails(elsewhere.arg("init"), 1);
    assert_says(&err, &["already exists"]);
    assert!(!p.root.join("new-customer").exists());

    assert_eq!(
        std::fs::read(&other_db).unwrap(),
        before,
        "the other repository is unchanged"
    );
    assert_eq!(
        snapshot_count(p.admin("other").env("CAIRN_PASSWORD", THEIRS)),
        1
    );
}

#[test]
fn serve_refuses_absurd_quotas_and_unknown_rights() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("r");
    for (args, says) in [
        (&["--quota", "0"][..], "quota"),
        (&["--quota", "12Q"], "not a size"),
        (&["--quota", "3000P"], "outside 1 MiB to 1 EiB"),
        (&["--allow", "everything"], "not a right"),
        (
            &["--allow", "backup", "--append-only"],
            "cannot be used with",
        ),
    ] {
        let r = run(cairn(&repo)
            .arg("serve")
            .args(args)
            .stdin(std::process::Stdio::null()));
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
    }
    assert!(!repo.exists());
}
