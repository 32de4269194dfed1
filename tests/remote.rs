//! Every command against a repository on a server (`--repo ssh://…`), through a real sshd on
//! 127.0.0.1 that runs `cairn serve` on the far side (issue 10).

mod common;

use common::ssh::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn every_command_works_on_a_repository_over_ssh() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    small_tree(&src);
    let url = s.url("acme");
    ok(s.cairn(&url).arg("init"), 0);
    let on_server = s.root.join("acme");
    assert!(
        on_server.join("cairn.redb").is_file(),
        "init made the repository on the server"
    );
    let first = json(s.cairn(&url).args(["backup", "--json"]).arg(&src));
    std::fs::write(src.join("docs/letter.txt"), "dear customer, again\n").unwrap();
    std::fs::write(src.join("new"), b"a new file\n").unwrap();
    let second = json(s.cairn(&url).args(["backup", "--json"]).arg(&src));
    assert!(
        second["bytes_added_stored"].as_u64().unwrap() < 100_000,
        "the second backup sends only the change: {second}"
    );
    assert_eq!(snapshot_count(&mut s.cairn(&url)), 2);

    let ls = ok(
        s.cairn(&url).args(["ls", "latest"]).arg(src.join("docs")),
        0,
    );
    assert!(ls.contains("letter.txt") && ls.contains("old"), "{ls}");
    let cat = ok(
        s.cairn(&url)
            .args(["cat", first["short_id"].as_str().unwrap()])
            .arg(src.join("docs/letter.txt")),
        0,
    );
    assert_eq!(cat, "dear customer\n".repeat(500));
    let diff = ok(
        s.cairn(&url)
            .args(["diff", first["short_id"].as_str().unwrap(), "latest"]),
        0,
    );
    assert!(
        diff.contains("letter.txt") && diff.contains("new"),
        "{diff}"
    );

    let out = work.path().join("out");
    restores_the_same(&s, &url, &src, &out);

    ok(s.cairn(&url).args(["check", "--read-data"]), 0);
    ok(s.cairn(&url).arg("stats"), 0);
    ok(s.cairn(&url).arg("status"), 0);
    ok(
        s.cairn(&url)
            .args(["key", "add"])
            .env("CAIRN_NEW_PASSWORD", "second password"),
        0,
    );
    ok(
        s.cairn(&url)
            .arg("snapshots")
            .env("CAIRN_PASSWORD", "second password"),
        0,
    );

    {
        let mnt = work.path().join("mnt");
        let mut cmd = s.cairn(&url);
        cmd.stdin(Stdio::null());
        let m = Mount::start_with(cmd, &mnt, &[]);
        let inside = m.latest().join(src.strip_prefix("/").unwrap());
        assert_eq!(
            std::fs::read(inside.join("docs/old/random")).unwrap(),
            std::fs::read(src.join("docs/old/random")).unwrap(),
            "a file read through a mount of the server's repository"
        );
    }

    ok(s.cairn(&url).args(["forget", "--keep-last", "1"]), 0);
    assert_eq!(snapshot_count(&mut s.cairn(&url)), 1);
    let before = std::fs::metadata(on_server.join("cairn.redb"))
        .unwrap()
        .len();
    let dry = json(s.cairn(&url).args(["prune", "--dry-run", "--json"]));
    assert!(dry["plan"]["objects_unused"].as_u64().unwrap() > 0, "{dry}");
    let pruned = json(s.cairn(&url).args(["prune", "--json"]));
    assert!(pruned["objects_removed"].as_u64().unwrap() > 0, "{pruned}");
    assert!(
        std::fs::metadata(on_server.join("cairn.redb"))
            .unwrap()
            .len()
            <= before
    );
    // The server's own view of it, with the same binary on its path.
    ok(cairn(&on_server).args(["check", "--read-data"]), 0);
    ok(s.cairn(&url).args(["check", "--read-data"]), 0);
}

#[test]
fn bad_urls_missing_repositories_and_unreachable_servers_are_clear_errors() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    // A URL is never taken for a relative directory.
    for (url, code) in [
        ("gopher://h/x", 2),
        ("s3://Not_A_Bucket/prefix", 2),
        ("ssh://h", 2),
    ] {
        let r = run(cairn(Path::new(url)).arg("init").current_dir(work.path()));
        assert_eq!(r.code, code, "{url}: {}", r.stderr);
    }
    // A key the server does not know: ssh's own words reach the user.
    let stranger = s.sshd.dir.join("stranger_key");
    keygen(&stranger);
    let config = std::fs::read_to_string(s.sshd.dir.join("ssh_config"))
        .unwrap()
        .replace("user_key", "stranger_key");
    std::fs::write(s.sshd.dir.join("stranger_config"), config).unwrap();
    let r = run(s.cairn(&s.url("acme")).arg("snapshots").env(
        "CAIRN_SSH_COMMAND",
        format!("ssh -F {}", s.sshd.dir.join("stranger_config").display()),
    ));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    let dead = format!("ssh://127.0.0.1:{}/srv/x", free_port());
    let r = run(s.cairn(&dead).arg("init").current_dir(work.path()));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("ssh"), "names ssh: {}", r.stderr);
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        0,
        "nothing was created locally"
    );

    let missing = s.url("nobody");
    let r = run(s.cairn(&missing).arg("snapshots"));
    assert_eq!(r.code, 10, "no repository there: {}", r.stderr);
    assert!(r.stderr.contains("no Cairn repository"), "{}", r.stderr);
    std::fs::create_dir_all(s.root.join("plain/dir")).unwrap();
    let r = run(s.cairn(&s.url("plain")).arg("snapshots"));
    assert_eq!(r.code, 10, "not a repository: {}", r.stderr);

    let url = s.url("acme");
    ok(s.cairn(&url).arg("init"), 0);
    let r = run(s.cairn(&url).arg("init"));
    assert_ne!(r.code, 0, "init twice");
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    let r = run(s
        .cairn(&url)
        .arg("snapshots")
        .env("CAIRN_PASSWORD", "wrong"));
    assert_eq!(r.code, 12, "wrong password over ssh: {}", r.stderr);
    // The key-less check reads every object through the seam, without the password.
    let r = run(s
        .cairn(&url)
        .args(["check", "--storage-only"])
        .env_remove("CAIRN_PASSWORD"));
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn a_client_killed_mid_backup_leaves_no_partial_snapshot() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let src = forty_files(&work.path().join("src"), 100);
    let url = s.url("acme");
    ok(s.cairn(&url).arg("init"), 0);
    let mut child = s
        .cairn(&url)
        .args(["backup", "--quiet"])
        .arg(&src)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let db = s.root.join("acme/cairn.redb");
    let start = Instant::now();
    let grown = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512 > 20 << 20)
            .unwrap_or(false)
    };
    while !grown(&db) && start.elapsed() < Duration::from_secs(60) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = child.id();
    let _ = child.kill();
    let _ = child.wait();
    // Its ssh master goes with it (nothing else would end it).
    let master = format!("cairn-ssh-{killed}-");
    let start = Instant::now();
    let alive = || {
        Command::new("pgrep")
            .args(["-f", &master])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    while alive() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(), "the killed client's ssh master ended too");
    // The server notices the closed connection and drops what was not committed.
    let before = snapshot_count(&mut s.cairn(&url));
    assert!(before <= 1, "at most the whole snapshot, if it finished");
    ok(s.cairn(&url).args(["check", "--read-data"]), 0);
    let again = json(s.cairn(&url).args(["backup", "--json"]).arg(&src));
    assert!(
        again["bytes_added_stored"].as_u64().unwrap() < 78_000_000 || before == 1,
        "the next backup reuses what reached the server: {again}"
    );
    assert_eq!(snapshot_count(&mut s.cairn(&url)), before + 1);
    ok(s.cairn(&url).args(["check", "--read-data"]), 0);
    let out = work.path().join("out");
    restores_the_same(&s, &url, &src, &out);
}

#[test]
fn a_key_forced_to_an_append_only_repository_cannot_delete_history() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let (src, url) = backed_up(&s, work.path());
    // A second key whose every session is `cairn serve --append-only` on acme, whatever the
    // client asks for.
    let forced = forced_key(
        &s.sshd,
        "forced_key",
        &format!("--repo {} --append-only", s.root.join("acme").display()),
    );
    let elsewhere = s.url("someone-else");
    let client = |c: &mut Command| {
        c.env("CAIRN_SSH_COMMAND", &forced);
    };
    let mut c = cairn(Path::new(&elsewhere));
    client(&mut c);
    assert_eq!(
        json(c.args(["snapshots", "--json"]))["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let mut c = cairn(Path::new(&elsewhere));
    client(&mut c);
    ok(c.arg("backup").arg(&src), 0);
    let mut c = cairn(Path::new(&elsewhere));
    client(&mut c);
    let r = run(c.args(["forget", "--keep-last", "1"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("refused"), "{}", r.stderr);
    let mut c = cairn(Path::new(&elsewhere));
    client(&mut c);
    let r = run(c.arg("prune"));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("refused"), "{}", r.stderr);
    assert_eq!(snapshot_count(&mut s.cairn(&url)), 2, "history is intact");
    assert!(!s.root.join("someone-else").exists());
}

#[test]
fn a_server_killed_mid_backup_is_a_clear_error_and_loses_nothing() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let src = forty_files(&work.path().join("src"), 300);
    let url = s.url("acme");
    ok(s.cairn(&url).arg("init"), 0);
    ok(s.cairn(&url).arg("backup").arg(src.join("f0")), 0);
    let child = s
        .cairn(&url)
        .args(["backup", "--quiet"])
        .arg(&src)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill every `cairn serve` of this repository once the backup is sending.
    let db = s.root.join("acme/cairn.redb");
    let start = Instant::now();
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let first = size(&db);
    while size(&db) <= first + (8 << 20) && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pattern = format!("serve --repo {}", s.root.join("acme").display());
    let _ = Command::new("pkill").args(["-9", "-f", &pattern]).status();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // The backup finished before the kill reached the server: nothing to see.
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(&url) && stderr.contains("run it again"),
        "says what happened: {stderr}"
    );
    assert_eq!(snapshot_count(&mut s.cairn(&url)), 1, "no partial snapshot");
    ok(s.cairn(&url).args(["check", "--read-data"]), 0);
    ok(s.cairn(&url).arg("backup").arg(&src), 0);
    assert_eq!(snapshot_count(&mut s.cairn(&url)), 2);
    let out = work.path().join("out");
    restores_the_same(&s, &url, &src, &out);
}

/// A command reaches the server over one ssh connection, however many it uses: the others
/// are sessions multiplexed over it (OpenSSH's ControlMaster), so it logs in once. The
/// master and its socket directory are gone when the command ends. With the user's own
/// `-o ControlPath=none`, cairn leaves ssh alone (and then logs in several times).
#[test]
fn a_command_logs_in_to_the_server_once() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let tmp = work.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let src = work.path().join("src");
    small_tree(&src);
    for i in 0..40 {
        std::fs::write(
            src.join(format!("f{i}")),
            format!("file {i}\n").repeat(2000),
        )
        .unwrap();
    }
    let url = s.url("acme");
    let cairn = |args: &[&str]| {
        let mut c = s.cairn(&url);
        c.args(args)
            .env("TMPDIR", &tmp)
            .env_remove("XDG_RUNTIME_DIR");
        c
    };
    let logins = |what: &str, c: &mut Command| {
        let before = s.sshd.logins();
        ok(c, 0);
        let n = s.sshd.logins() - before;
        assert_eq!(
            std::fs::read_dir(&tmp).unwrap().count(),
            0,
            "{what}: the master's socket directory is removed"
        );
        (what.to_string(), n)
    };
    let mut seen = vec![logins("init", &mut cairn(&["init"]))];
    let src_arg = src.to_str().unwrap();
    seen.push(logins("backup", &mut cairn(&["backup", src_arg])));
    std::fs::write(src.join("f1"), "changed\n").unwrap();
    seen.push(logins("backup", &mut cairn(&["backup", src_arg])));
    let out = work.path().join("out");
    let out_arg = out.to_str().unwrap();
    seen.push(logins(
        "restore",
        &mut cairn(&["restore", "latest", "--target", out_arg]),
    ));
    seen.push(logins("check", &mut cairn(&["check", "--read-data"])));
    seen.push(logins(
        "forget",
        &mut cairn(&["forget", "--keep-last", "1", "--prune"]),
    ));
    {
        let before = s.sshd.logins();
        let mnt = work.path().join("mnt");
        let mut cmd = cairn(&[]);
        cmd.stdin(Stdio::null());
        let m = Mount::start_with(cmd, &mnt, &[]);
        let inside = m.latest().join(src.strip_prefix("/").unwrap());
        for i in 0..40 {
            assert_eq!(
                std::fs::read(inside.join(format!("f{i}"))).unwrap(),
                std::fs::read(src.join(format!("f{i}"))).unwrap()
            );
        }
        drop(m);
        seen.push(("mount".into(), s.sshd.logins() - before));
    }
    for (what, n) in &seen {
        assert_eq!(*n, 1, "{what} logged in {n} times: {seen:?}");
    }
    let mut own = cairn(&["backup", src_arg]);
    own.env(
        "CAIRN_SSH_COMMAND",
        format!("{} -o ControlPath=none", s.sshd.ssh_command),
    );
    let before = s.sshd.logins();
    ok(&mut own, 0);
    assert!(
        s.sshd.logins() - before > 1,
        "the user's own ControlPath=none is kept: each connection logs in"
    );
}

/// A repository on a server keeps its named targets too (a state record there): `target
/// add|list|remove` work over ssh, and a plain `sync` sends to them. A key that may only back
/// up cannot change them.
#[test]
fn a_repository_on_a_server_has_named_targets() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let (_, url) = backed_up(&s, work.path());
    let replica = work.path().join("offsite");
    ok(
        s.cairn(&url)
            .args(["target", "add", "offsite"])
            .arg(&replica),
        0,
    );
    let r = run(s
        .cairn(&url)
        .args(["target", "add", "offsite", "/elsewhere"]));
    assert_eq!(r.code, 2, "a name in use: {}", r.stderr);
    let listed = json(s.cairn(&url).args(["target", "list", "--json"]));
    assert_eq!(listed["targets"][0]["name"], "offsite", "{listed}");
    assert_eq!(
        listed["targets"][0]["url"],
        replica.to_str().unwrap(),
        "{listed}"
    );
    ok(s.cairn(&url).arg("sync"), 0);
    assert_eq!(
        snapshot_count(&mut cairn(&replica)),
        1,
        "synced to the named target"
    );
    let status = ok(s.cairn(&url).arg("status"), 0);
    assert!(status.contains("offsite"), "{status}");

    let backup_only = s.customer("backup-only", "acme", "--append-only", "acme");
    let r = run(backup_only.cairn().args(["target", "remove", "offsite"]));
    assert_ne!(
        r.code, 0,
        "an append-only key cannot remove a target: {}",
        r.stderr
    );
    assert!(r.stderr.contains("refused"), "{}", r.stderr);

    ok(s.cairn(&url).args(["target", "remove", "offsite"]), 0);
    let listed = json(s.cairn(&url).args(["target", "list", "--json"]));
    assert_eq!(listed["targets"].as_array().unwrap().len(), 0, "{listed}");
    let r = run(s.cairn(&url).args(["target", "remove", "offsite"]));
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("no target named"), "{}", r.stderr);
}

/// Repository `acme` on the server with one backup of a small tree in `work/src`; returns the
/// tree and the repository's URL.
fn backed_up(s: &Server, work: &Path) -> (PathBuf, String) {
    let src = work.join("src");
    small_tree(&src);
    let url = s.url("acme");
    ok(s.cairn(&url).arg("init"), 0);
    ok(s.cairn(&url).arg("backup").arg(&src), 0);
    (src, url)
}

/// A repository on a server keeps a local cache of the trees it read (sealed, 0700): the
/// second `ls` is answered from it even after the server's copy of the root tree is damaged,
/// `--no-cache` reads the server and finds the damage, and `check --read-data` never trusts
/// the cache.
#[test]
fn trees_read_from_a_server_are_cached_but_check_reads_the_server() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let (_, url) = backed_up(&s, work.path());
    let cache = work.path().join("xdg");
    let cairn = |args: &[&str]| {
        let mut c = s.cairn(&url);
        c.args(args).env("XDG_CACHE_HOME", &cache);
        c
    };
    let listed = ok(&mut cairn(&["ls", "latest"]), 0);
    assert!(listed.contains("letter.txt"), "{listed}");
    let objects = cache.join("cairn/objects");
    let repo_dir = std::fs::read_dir(&objects)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mode = std::fs::metadata(&repo_dir).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );
    assert!(
        std::fs::read_dir(&repo_dir).unwrap().count() > 0,
        "trees were kept"
    );

    let on_server = s.root.join("acme");
    let repo = cairn_repo::Repository::open(
        &on_server,
        PASSWORD.as_bytes(),
        &cairn_repo::OpenOptions::default(),
    )
    .unwrap();
    let root = repo.snapshots().unwrap()[0].snapshot.root;
    let ps = repo.config().piece_size;
    cairn_repo::testkit::damage_object(repo.local("test").unwrap(), &root, ps, 3).unwrap();
    drop(repo);

    let again = ok(&mut cairn(&["ls", "latest"]), 0);
    assert_eq!(again, listed, "answered from the cache");
    let r = run(&mut cairn(&["--no-cache", "ls", "latest"]));
    assert_ne!(r.code, 0, "the server's copy is damaged: {}", r.stdout);
    let r = run(&mut cairn(&["check", "--read-data"]));
    assert_ne!(
        r.code, 0,
        "check reads the server, not the cache: {}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&root.to_hex()[..8]) || r.stderr.contains(&root.to_hex()[..8]),
        "names the damaged tree: {} {}",
        r.stdout,
        r.stderr
    );
}

/// A damaged repository on a server is repaired from a local replica through `cairn serve`:
/// with the key (`check --read-data --repair-from`), and key-free by an append-only
/// customer's key (`--storage-only`: the replica's bytes match the checksum recorded on
/// the server, so even a key that may delete nothing may put them back).
#[test]
fn a_repository_on_a_server_is_repaired_from_a_replica() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let (src, url) = backed_up(&s, work.path());
    let replica = work.path().join("replica");
    ok(s.cairn(&url).arg("sync").arg(&replica), 0);
    let on_server = s.root.join("acme");
    let (chunk, piece_size) = some_chunk(&on_server);
    let damage = |seed: u64| {
        let store = cairn_repo::storage::LocalStore::open(&on_server, 1 << 20).unwrap();
        cairn_repo::testkit::damage_object(&store, &chunk, piece_size, seed).unwrap();
    };
    damage(21);
    let r = run(s.cairn(&url).args(["check", "--read-data"]));
    assert_eq!(r.code, 1, "the damage is found: {}", r.stdout);

    let out = ok(
        s.cairn(&url)
            .args(["check", "--read-data", "--repair-from"])
            .arg(&replica),
        0,
    );
    assert!(
        out.contains(&format!("repaired {chunk} from {}", replica.display())),
        "{out}"
    );
    ok(s.cairn(&url).args(["check", "--read-data"]), 0);

    damage(22);
    let customer = s.customer("mender", "acme", "--append-only", "acme");
    let out = ok(
        customer
            .cairn()
            .args(["check", "--storage-only", "--repair-from"])
            .arg(&replica)
            .env_remove("CAIRN_PASSWORD"),
        0,
    );
    assert!(out.contains(&format!("repaired {chunk}")), "{out}");
    ok(s.cairn(&url).args(["check", "--read-data"]), 0);
    let restored = work.path().join("out");
    restores_the_same(&s, &url, &src, &restored);
}

/// `prune --compact` of a repository on a server: the server closes it, compacts its file
/// and says how long it is now; a key without the prune right is refused and changes nothing.
#[test]
fn prune_compact_shrinks_a_repository_file_on_a_server() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let (src, url) = backed_up(&s, work.path());
    // A hole in the middle of the file: the first big file's pages are freed, the second's
    // stay after them.
    std::fs::write(src.join("big"), cairn_repo::testkit::noise(5, 12 << 20)).unwrap();
    ok(s.cairn(&url).arg("backup").arg(&src), 0);
    std::fs::write(src.join("big2"), cairn_repo::testkit::noise(6, 4 << 20)).unwrap();
    ok(s.cairn(&url).arg("backup").arg(&src), 0);
    std::fs::remove_file(src.join("big")).unwrap();
    ok(s.cairn(&url).arg("backup").arg(&src), 0);
    ok(
        s.cairn(&url)
            .args(["forget", "--keep-last", "1", "--prune"]),
        0,
    );
    let file = s.root.join("acme/cairn.redb");
    let allocated =
        || std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&file).unwrap()) * 512;
    let before = allocated();

    let customer = s.customer("backup-only", "acme", "--append-only", "acme");
    let r = run(customer.cairn().args(["prune", "--compact"]));
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("refused"), "{}", r.stderr);
    assert_eq!(allocated(), before);

    let done = json(s.cairn(&url).args(["prune", "--compact", "--json"]));
    assert_eq!(done["compacted"], true, "{done}");
    let len = std::fs::metadata(&file).unwrap().len();
    assert_eq!(done["file_bytes"].as_u64(), Some(len), "{done}");
    assert!(
        allocated() + (8 << 20) < before,
        "compaction gave the freed pages back: {before} -> {}",
        allocated()
    );
    ok(s.cairn(&url).args(["check", "--read-data"]), 0);
    assert_eq!(snapshot_count(&mut s.cairn(&url)), 1);
}

/// A mount of a repository on a server whose connections all die (every `cairn serve` of the
/// repository and the mount's ssh processes killed, as a network cut would): a read then
/// gives the file or EIO, never a hang, and the mount reconnects: every file reads exactly
/// afterwards, with the mount still up.
#[test]
fn a_mount_of_a_server_reconnects_after_its_connections_die() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let (src, url) = forty_backed_up(&s, work.path(), 31);
    let mnt = work.path().join("mnt");
    let mut cmd = s.cairn(&url);
    cmd.stdin(Stdio::null());
    let mut m = Mount::start_with(cmd, &mnt, &[]);
    let inside = m.latest().join(src.strip_prefix("/").unwrap());
    let same = |name: &str| {
        std::fs::read(inside.join(name)).map(|b| b == std::fs::read(src.join(name)).unwrap())
    };
    assert!(same("f0").unwrap(), "read before the cut");

    let serve = format!("serve --repo {}", s.root.join("acme").display());
    let master = format!("cairn-ssh-{}-", m.child.id());
    for pattern in [&serve, &master] {
        let _ = Command::new("pkill").args(["-9", "-f", pattern]).status();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let path = inside.join("f20");
    let expected = std::fs::read(src.join("f20")).unwrap();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read(path));
    });
    match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(Ok(bytes)) => assert!(bytes == expected, "the file, or EIO"),
        Ok(Err(e)) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
        Err(_) => panic!("a read after the cut hangs: {}", m.stderr()),
    }
    for i in 0..40 {
        let name = format!("f{i}");
        assert!(
            same(&name).unwrap_or_else(|e| panic!("{name} after the cut: {e}: {}", m.stderr())),
            "{name}"
        );
    }
    assert!(m.child.try_wait().unwrap().is_none(), "the mount is up");
}

/// Many workers at once (`restore --threads 32`, four times the connections one ssh master
/// carries): the store starts more masters, one login at a time, so sshd's `MaxStartups`
/// never refuses a burst of logins, and the restore is whole.
#[test]
fn many_workers_share_a_few_logins() {
    let s = Server::start();
    let work = tempfile::tempdir().unwrap();
    let (src, url) = forty_backed_up(&s, work.path(), 51);
    let before = s.sshd.logins();
    let out = work.path().join("out");
    ok(
        s.cairn(&url)
            .args(["restore", "latest", "--threads", "32", "--target"])
            .arg(&out),
        0,
    );
    assert_same_tree(&src, &out.join(src.strip_prefix("/").unwrap()));
    let logins = s.sshd.logins() - before;
    assert!(
        (1..=5).contains(&logins),
        "{logins} logins for up to 40 connections"
    );
}

/// `restore latest` from the server into `out` gives back the tree `src`.
fn restores_the_same(s: &Server, url: &str, src: &Path, out: &Path) {
    ok(
        s.cairn(url)
            .args(["restore", "latest", "--target"])
            .arg(out),
        0,
    );
    assert_same_tree(src, &out.join(src.strip_prefix("/").unwrap()));
}

/// Repository `acme` on the server with one backup of `forty_files` (seed `seed`) in
/// `work/src`; returns the tree and the repository's URL.
fn forty_backed_up(s: &Server, work: &Path, seed: u64) -> (PathBuf, String) {
    let src = forty_files(&work.join("src"), seed);
    let url = s.url("acme");
    ok(s.cairn(&url).arg("init"), 0);
    ok(s.cairn(&url).args(["backup", "--quiet"]).arg(&src), 0);
    (src, url)
}
