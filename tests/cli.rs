//! End-to-end tests of the real `cairn` binary: every core subcommand, exit codes, bad input,
//! full metadata fidelity, crashes and concurrent processes.

mod common;

use common::*;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn sh(script: &str, dir: &Path) {
    let out = Command::new("bash")
        .arg("-euc")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "script failed: {script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A source tree with every kind of thing Linux stores.
fn rich_tree(root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    sh(
        r#"
        mkdir -p dir/sub empty
        echo hello > dir/a.txt
        head -c 3000000 /dev/urandom > dir/sub/random.bin
        yes 'compressible log line' | head -c 2000000 > dir/log.txt
        ln -s a.txt dir/link
        ln -s /nonexistent/target dangling
        ln dir/a.txt dir/sub/hardlink
        ln -s a.txt dir/symlink-for-hardlink && ln dir/symlink-for-hardlink dir/hardlinked-symlink
        mkfifo fifo
        python3 -c "import socket; s=socket.socket(socket.AF_UNIX); s.bind('sock')"
        mknod chardev c 1 3
        mknod blockdev b 259 1048575
        truncate -s 50M sparse && printf x | dd of=sparse bs=1 seek=20000000 conv=notrunc status=none
        echo suid > suid && chmod 4755 suid
        echo sgid > sgid && chmod 2710 sgid
        mkdir sticky && chmod 1777 sticky
        echo owned > owned && chown 1234:5678 owned
        setfattr -n user.comment -v "hello xattr" dir/a.txt
        setfattr -n user.binary -v 0x00ff10 dir/a.txt
        setfacl -m u:1234:rwx dir/sub
        setfattr -n security.capability -v 0x0100000200100000000000000000000000000000 suid
        echo old > old && touch -d '1901-12-14 00:00:00.123456789 UTC' old
        echo future > future && touch -d '2400-02-29 12:00:00.987654321 UTC' future
        echo y2038 > y2038 && touch -d '2038-01-19 03:14:08 UTC' y2038
        "#,
        root,
    );
    // A name that is not UTF-8, and a symlink target that is not either.
    let bad = root.join(std::ffi::OsStr::from_bytes(b"caf\xe9-latin1"));
    std::fs::write(&bad, b"latin1 name").unwrap();
    std::os::unix::fs::symlink(
        std::ffi::OsStr::from_bytes(b"\xff\xfe-target"),
        root.join("weird-link"),
    )
    .unwrap();
}

fn restored(target: &Path, source: &Path) -> PathBuf {
    target.join(source.strip_prefix("/").unwrap())
}

#[test]
fn backup_restore_keeps_every_kind_of_metadata() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    rich_tree(&src);
    let repo = t.path().join("repo");
    init(&repo);
    let b = backup(&repo, &[&src]);
    assert_eq!(b["files_new"].as_u64(), Some(b["files"].as_u64().unwrap()));
    let out = t.path().join("out");
    ok(
        cairn(&repo)
            .args(["restore", "latest", "--target"])
            .arg(&out),
        0,
    );
    let r = restored(&out, &src);
    assert_same_tree(&src, &r);
    // Sparse: holes come back as holes (allocated blocks far below the size).
    let blocks = std::fs::metadata(r.join("sparse"))
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m))
        .unwrap();
    assert!(blocks < 1000, "sparse file restored with {blocks} blocks");
    // xattrs, ACLs and capabilities.
    let attrs = |p: &Path| {
        let o = Command::new("getfattr")
            .args(["-d", "-m", "-", "--absolute-names"])
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .skip(1)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    for f in ["dir/a.txt", "dir/sub", "suid"] {
        assert_eq!(attrs(&src.join(f)), attrs(&r.join(f)), "xattrs of {f}");
        assert!(!attrs(&r.join(f)).is_empty(), "{f} has xattrs");
    }
    // Hard links (also to a symlink) are one inode again.
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| std::fs::symlink_metadata(r.join(p)).unwrap().ino();
    assert_eq!(ino("dir/a.txt"), ino("dir/sub/hardlink"));
    assert_eq!(
        ino("dir/symlink-for-hardlink"),
        ino("dir/hardlinked-symlink")
    );
    // Device numbers.
    let rdev = |p: &Path| std::fs::symlink_metadata(p).unwrap().rdev();
    assert_eq!(rdev(&src.join("blockdev")), rdev(&r.join("blockdev")));
}

#[test]
fn cat_ls_diff_and_snapshots() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f.txt"), "version one\n").unwrap();
    let repo = t.path().join("repo");
    init(&repo);
    let first = backup(&repo, &[&src]);
    std::fs::write(src.join("d/f.txt"), "version two!\n").unwrap();
    std::fs::write(src.join("new.txt"), "new\n").unwrap();
    let second = backup(&repo, &[&src]);
    assert_eq!(second["parent"], first["snapshot"]);
    let f = src.join("d/f.txt");
    let old = ok(
        cairn(&repo)
            .args(["cat", first["short_id"].as_str().unwrap()])
            .arg(&f),
        0,
    );
    assert_eq!(old, "version one\n");
    assert_eq!(
        ok(cairn(&repo).args(["cat", "latest"]).arg(&f), 0),
        "version two!\n"
    );
    let ls = ok(cairn(&repo).args(["ls", "latest"]).arg(&src), 0);
    assert!(ls.contains("/d/f.txt") && ls.contains("/new.txt"), "{ls}");
    let ls_l = ok(cairn(&repo).args(["ls", "-l", "latest"]).arg(&src), 0);
    assert!(ls_l.contains("-rw-r--r--"), "{ls_l}");
    let diff = ok(
        cairn(&repo).args(["diff", first["short_id"].as_str().unwrap(), "latest"]),
        0,
    );
    assert!(diff.contains(&format!("M    {}", f.display())), "{diff}");
    assert!(
        diff.contains(&format!("+    {}/new.txt", src.display())),
        "{diff}"
    );
    let snaps = snapshots(&repo);
    assert_eq!(snaps.len(), 2);
    let table = ok(cairn(&repo).arg("snapshots"), 0);
    assert!(table.contains(first["short_id"].as_str().unwrap()));
    // Restore --include picks one file.
    let out = t.path().join("partial");
    ok(
        cairn(&repo)
            .args(["restore", "latest", "--target"])
            .arg(&out)
            .arg("--include")
            .arg(&f),
        0,
    );
    assert!(restored(&out, &f).is_file());
    assert!(!restored(&out, &src.join("new.txt")).exists());
    // Unknown snapshot and path are errors with exit 1.
    assert_eq!(run(cairn(&repo).args(["cat", "ffffffff"]).arg(&f)).code, 1);
    assert_eq!(
        run(cairn(&repo).args(["cat", "latest", "/no/such"])).code,
        1
    );
}

#[test]
fn exit_codes_for_bad_repository_and_password() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    // No repository: 10, before asking for a password.
    let r = run(cairn(&repo).arg("snapshots").env_remove("CAIRN_PASSWORD"));
    assert_eq!(r.code, 10, "{}", r.stderr);
    assert!(r.stderr.contains("cairn init"), "{}", r.stderr);
    // A directory that is not a repository: 10.
    std::fs::create_dir_all(t.path().join("plain")).unwrap();
    assert_eq!(
        run(cairn(&t.path().join("plain")).arg("snapshots")).code,
        10
    );
    // A file that is not a database: 10.
    let junk = t.path().join("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("cairn.redb"), vec![7u8; 10000]).unwrap();
    assert_eq!(run(cairn(&junk).arg("snapshots")).code, 10);
    init(&repo);
    // Wrong password: 12.
    let r = run(cairn(&repo).arg("snapshots").env("CAIRN_PASSWORD", "wrong"));
    assert_eq!(r.code, 12);
    assert!(r.stderr.contains("wrong password"), "{}", r.stderr);
    // Usage error: 2.
    assert_eq!(run(cairn(&repo).args(["backup"])).code, 2);
    assert_eq!(
        run(Command::new(bin())
            .arg("snapshots")
            .env_remove("CAIRN_REPO")
            .env("CAIRN_PASSWORD", "x"))
        .code,
        2
    );
    // init on an existing repository refuses and keeps it.
    assert_eq!(run(cairn(&repo).arg("init")).code, 1);
    assert!(snapshots(&repo).is_empty());
    // Repository files are private.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&repo).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(repo.join("cairn.redb"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

#[test]
fn password_sources_and_key_management() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    init(&repo);
    let pwfile = t.path().join("pw");
    std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
    let mut c = cairn(&repo);
    c.env_remove("CAIRN_PASSWORD")
        .env("CAIRN_PASSWORD_FILE", &pwfile)
        .arg("snapshots");
    ok(&mut c, 0);
    let mut c = cairn(&repo);
    c.env_remove("CAIRN_PASSWORD").args([
        "--password-command",
        &format!("echo '{PASSWORD}'"),
        "snapshots",
    ]);
    ok(&mut c, 0);
    // No password source and no terminal: a clear error, not a hang.
    let r = run(cairn(&repo)
        .env_remove("CAIRN_PASSWORD")
        .arg("snapshots")
        .stdin(std::process::Stdio::null()));
    assert_ne!(r.code, 0);
    // Add a second password; both work; remove the first; passwd changes the current one.
    ok(
        cairn(&repo)
            .args(["key", "add"])
            .env("CAIRN_NEW_PASSWORD", "second"),
        0,
    );
    ok(
        cairn(&repo)
            .arg("snapshots")
            .env("CAIRN_PASSWORD", "second"),
        0,
    );
    let list = ok(cairn(&repo).args(["key", "list", "--json"]), 0);
    let slots: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(slots.as_array().unwrap().len(), 2);
    assert_eq!(
        run(cairn(&repo).args(["key", "remove", "1"])).code,
        1,
        "cannot remove own slot"
    );
    ok(
        cairn(&repo)
            .args(["key", "remove", "1"])
            .env("CAIRN_PASSWORD", "second"),
        0,
    );
    assert_eq!(run(cairn(&repo).arg("snapshots")).code, 12);
    ok(
        cairn(&repo)
            .args(["key", "passwd"])
            .env("CAIRN_PASSWORD", "second")
            .env("CAIRN_NEW_PASSWORD", "third"),
        0,
    );
    assert_eq!(
        run(cairn(&repo)
            .arg("snapshots")
            .env("CAIRN_PASSWORD", "second"))
        .code,
        12
    );
    ok(
        cairn(&repo).arg("snapshots").env("CAIRN_PASSWORD", "third"),
        0,
    );
}

#[test]
fn excludes_caches_and_unreadable_files() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("cache")).unwrap();
    std::fs::create_dir_all(src.join("keep/build")).unwrap();
    std::fs::write(
        src.join("cache/CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .unwrap();
    std::fs::write(src.join("cache/blob"), "cached").unwrap();
    std::fs::write(src.join("keep/a.tmp"), "tmp").unwrap();
    std::fs::write(src.join("keep/a.txt"), "txt").unwrap();
    std::fs::write(src.join("keep/build/out.o"), "obj").unwrap();
    let exfile = t.path().join("excludes");
    std::fs::write(&exfile, "# comment\nbuild\n").unwrap();
    let repo = t.path().join("repo");
    init(&repo);
    ok(
        cairn(&repo)
            .args([
                "backup",
                "--exclude",
                "*.tmp",
                "--exclude-caches",
                "--exclude-file",
            ])
            .arg(&exfile)
            .arg(&src),
        0,
    );
    let ls = ok(cairn(&repo).args(["ls", "latest"]).arg(&src), 0);
    assert!(ls.contains("keep/a.txt"), "{ls}");
    assert!(
        !ls.contains("a.tmp") && !ls.contains("build") && !ls.contains("cache/blob"),
        "{ls}"
    );
    assert!(ls.contains("cache/CACHEDIR.TAG"), "{ls}");
    // --one-file-system: a filesystem mounted inside the source is recorded as an empty dir.
    let inner = src.join("keep/other-fs");
    std::fs::create_dir_all(&inner).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&inner)
        .status()
        .unwrap()
        .success());
    std::fs::write(inner.join("on-other-fs"), "x").unwrap();
    let r = run(cairn(&repo).args(["backup", "--one-file-system"]).arg(&src));
    let _ = Command::new("umount").arg("-l").arg(&inner).status();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let ls = ok(cairn(&repo).args(["ls", "latest"]).arg(&src), 0);
    assert!(
        ls.contains("keep/other-fs") && !ls.contains("on-other-fs"),
        "{ls}"
    );
    // A path that does not exist among ones that do: snapshot of the rest, exit 3.
    let r = run(cairn(&repo)
        .arg("backup")
        .arg(&src)
        .arg(t.path().join("missing")));
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
    // Only missing paths: fatal.
    assert_eq!(
        run(cairn(&repo).arg("backup").arg(t.path().join("missing"))).code,
        1
    );
}

/// A temporary directory under /tmp for tests that run cairn as `nobody`; `None` unless
/// this runs as root (root reads everything, and only root can switch users).
fn tempdir_for_nobody(prefix: &str) -> Option<tempfile::TempDir> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    root.then(|| {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .unwrap()
    })
}

#[test]
fn unreadable_file_as_non_root_gives_exit_3() {
    // Root reads everything; run the backup as `nobody` on a repository it owns.
    let Some(t) = tempdir_for_nobody("cairn-nobody") else {
        return;
    };
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("readable"), "ok").unwrap();
    std::fs::write(src.join("secret"), "no").unwrap();
    sh("chmod 755 . src && chmod 644 src/readable && chmod 600 src/secret && mkdir repo && chown nobody repo", t.path());
    let repo = t.path().join("repo").join("r");
    let as_nobody = |args: &str| {
        let cmd = format!(
            "CAIRN_PASSWORD=pw {} --repo {} {args}",
            bin().display(),
            repo.display()
        );
        Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "sh",
                "-c",
                &cmd,
            ])
            .output()
            .unwrap()
    };
    assert!(as_nobody("init").status.success());
    let out = as_nobody(&format!("backup {}", src.display()));
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("secret"));
    let ls = as_nobody(&format!("ls latest {}", src.display()));
    assert!(String::from_utf8_lossy(&ls.stdout).contains("readable"));
}

#[test]
fn unchanged_files_are_not_read_again() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..50 {
        std::fs::write(
            src.join(format!("f{i}")),
            format!("content {i}").repeat(1000),
        )
        .unwrap();
    }
    let repo = t.path().join("repo");
    init(&repo);
    backup(&repo, &[&src]);
    let again = backup(&repo, &[&src]);
    assert_eq!(again["files_unchanged"].as_u64(), Some(50));
    assert_eq!(again["bytes_read"].as_u64(), Some(0));
    std::fs::write(src.join("f7"), "changed").unwrap();
    let third = backup(&repo, &[&src]);
    assert_eq!(third["files_changed"].as_u64(), Some(1));
    assert_eq!(third["bytes_read"].as_u64(), Some(7));
    // A different host has its own parent: everything is read.
    let other = ok(
        cairn(&repo)
            .args(["backup", "--json", "--host", "elsewhere"])
            .arg(&src),
        0,
    );
    let other: serde_json::Value = serde_json::from_str(&other).unwrap();
    assert_eq!(other["files_new"].as_u64(), Some(50));
    assert!(
        other["bytes_added"].as_u64().unwrap() < 20_000,
        "content deduplicated, only directory trees are new: {other}"
    );
}

#[test]
fn paths_longer_than_path_max() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // 40 levels of 200-byte names: about 8 KB of path, twice PATH_MAX.
    let name = "d".repeat(200);
    let script =
        format!("for i in $(seq 40); do mkdir {name} && cd {name}; done; echo deep > file");
    sh(&script, &src);
    let repo = t.path().join("repo");
    init(&repo);
    backup(&repo, &[&src]);
    let out = t.path().join("out");
    ok(
        cairn(&repo)
            .args(["restore", "latest", "--target"])
            .arg(&out),
        0,
    );
    let check = format!(
        "cd {}; for i in $(seq 40); do cd {name}; done; test \"$(cat file)\" = deep",
        restored(&out, &src).display()
    );
    sh(&check, t.path());
}

#[test]
fn restore_does_not_silently_overwrite_newer_files() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "from backup").unwrap();
    sh("touch -d '2020-01-01' f", &src);
    let repo = t.path().join("repo");
    init(&repo);
    backup(&repo, &[&src]);
    let out = t.path().join("out");
    let dst = restored(&out, &src.join("f"));
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    std::fs::write(&dst, "newer local edit").unwrap();
    let r = run(cairn(&repo)
        .args(["restore", "latest", "--target"])
        .arg(&out));
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("not overwritten"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&dst).unwrap(), "newer local edit");
    ok(
        cairn(&repo)
            .args(["restore", "latest", "--overwrite", "always", "--target"])
            .arg(&out),
        0,
    );
    assert_eq!(std::fs::read_to_string(&dst).unwrap(), "from backup");
}

#[test]
fn check_names_damaged_objects_and_their_paths() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    sh("head -c 300000 /dev/urandom > victim.bin", &src);
    std::fs::write(src.join("bystander.txt"), "fine").unwrap();
    let repo = t.path().join("repo");
    init(&repo);
    backup(&repo, &[&src]);
    ok(cairn(&repo).args(["check", "--read-data"]), 0);
    damage_victim(&repo, &src.join("victim.bin"));
    let r = run(cairn(&repo).args(["check", "--read-data", "--json"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let damaged = v["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{}", r.stdout);
    let path = damaged[0]["used_by"][0]["path"].as_str().unwrap();
    assert!(path.ends_with("victim.bin"), "{path}");
    // The unaffected file still restores; the damaged one is reported.
    let out = t.path().join("out");
    let r = run(cairn(&repo)
        .args(["restore", "latest", "--target"])
        .arg(&out));
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(restored(&out, &src.join("bystander.txt"))).unwrap(),
        "fine"
    );
    assert!(r.stderr.contains("victim.bin"), "{}", r.stderr);
}

/// Simulate disk damage: find the sealed bytes of victim.bin's first chunk in the database
/// file (through the engine's read API) and flip one byte of them in the file itself.
fn damage_victim(repo: &Path, victim: &Path) {
    use cairn_repo::{OpenOptions, Repository};
    let sealed = {
        let r = Repository::open(repo, PASSWORD.as_bytes(), &OpenOptions::default()).unwrap();
        let snap = r.find_snapshot("latest").unwrap();
        let view = r.reader().unwrap();
        let entry = r
            .lookup(&view, &snap.snapshot.root, victim.as_os_str().as_bytes())
            .unwrap()
            .unwrap();
        let id = r.extents(&view, &entry.content).unwrap()[0].id.unwrap();
        view.read(&id).unwrap().1
    };
    flip_in_file(repo, &sealed[1000..1064]);
}

/// Flip a byte in the middle of the one place `needle` occurs in the database file.
fn flip_in_file(repo: &Path, needle: &[u8]) {
    let path = repo.join("cairn.redb");
    let mut file = std::fs::read(&path).unwrap();
    let pos = file
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("bytes are in the file");
    file[pos + needle.len() / 2] ^= 0x5a;
    std::fs::write(&path, file).unwrap();
}

#[test]
fn a_damaged_snapshot_does_not_hide_the_others() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "one").unwrap();
    let repo = t.path().join("repo");
    init(&repo);
    let first = backup(&repo, &[&src]);
    std::fs::write(src.join("f"), "two").unwrap();
    let second = backup(&repo, &[&src]);
    let blob = {
        let store = cairn_repo::storage::LocalStore::open(&repo, 1 << 20).unwrap();
        let id = second["snapshot"].as_str().unwrap();
        store
            .snapshot_blobs()
            .unwrap()
            .into_iter()
            .find(|(i, _)| i.to_hex() == id)
            .unwrap()
            .1
    };
    flip_in_file(&repo, &blob[8..blob.len() - 8]);
    let r = run(cairn(&repo).args(["snapshots", "--json"]));
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&second["short_id"].as_str().unwrap().to_string()),
        "{}",
        r.stderr
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 1);
    assert_eq!(v["snapshots"][0]["id"], first["snapshot"]);
    // The intact snapshot still restores, and `latest` now means it.
    assert_eq!(
        ok(cairn(&repo).args(["cat", "latest"]).arg(src.join("f")), 0),
        "one"
    );
    assert_eq!(run(cairn(&repo).args(["check"])).code, 1);
    // The nightly backup keeps working.
    std::fs::write(src.join("f"), "three").unwrap();
    backup(&repo, &[&src]);
    assert_eq!(
        ok(cairn(&repo).args(["cat", "latest"]).arg(src.join("f")), 0),
        "three"
    );
}

/// A source of `files` random 20 MB files and a new repository, for tests that stop a backup
/// half-way: (temporary dir, source, repository).
fn big_source_and_repo(files: u32) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    sh(
        &format!("for i in $(seq {files}); do head -c 20000000 /dev/urandom > big$i; done"),
        &src,
    );
    let repo = t.path().join("repo");
    init(&repo);
    (t, src, repo)
}

/// Bytes the repository's database file occupies on disk.
fn used(repo: &Path) -> u64 {
    let db = repo.join("cairn.redb");
    std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(db).unwrap()) * 512
}

#[test]
fn killed_backup_leaves_a_repository_that_checks_clean_and_is_reused() {
    let (t, src, repo) = big_source_and_repo(12);
    // Kill at once, then after the database has grown by about one and three batches.
    for grow in [0u64, 50_000_000, 150_000_000] {
        let start = used(&repo);
        let mut child = cairn(&repo)
            .args(["backup", "--quiet"])
            .arg(&src)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while used(&repo) < start + grow
            && std::time::Instant::now() < deadline
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        ok(cairn(&repo).args(["check", "--read-data"]), 0);
    }
    assert!(
        snapshots(&repo).is_empty(),
        "no snapshot from killed backups"
    );
    let b = backup(&repo, &[&src]);
    assert!(
        b["bytes_added"].as_u64().unwrap() < 140_000_000,
        "reused what the killed backups wrote: {b}"
    );
    ok(cairn(&repo).args(["check", "--read-data"]), 0);
    let out = t.path().join("out");
    ok(
        cairn(&repo)
            .args(["restore", "latest", "--target"])
            .arg(&out),
        0,
    );
    assert_same_tree(&src, &restored(&out, &src));
}

/// Issue 10: SIGINT (or SIGTERM) stops a backup cleanly: exit 130, what was written is
/// committed for the next backup to reuse, no snapshot, a clean check.
#[test]
fn an_interrupted_backup_exits_130_and_keeps_what_it_wrote() {
    let (_t, src, repo) = big_source_and_repo(10);
    let start = used(&repo);
    let mut child = cairn(&repo)
        .args(["backup", "--quiet"])
        .arg(&src)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while used(&repo) < start + 30_000_000 && std::time::Instant::now() < deadline {
        assert!(
            child.try_wait().unwrap().is_none(),
            "still running when signalled"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(snapshots(&repo).is_empty());
    ok(cairn(&repo).args(["check", "--read-data"]), 0);
    let b = backup(&repo, &[&src]);
    assert!(
        b["bytes_added"].as_u64().unwrap() < 200_000_000 - 20_000_000,
        "reused what the interrupted backup wrote: {b}"
    );
}

#[test]
fn a_second_process_reads_while_a_backup_writes() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("small"), "first").unwrap();
    let repo = t.path().join("repo");
    init(&repo);
    backup(&repo, &[&src]);
    sh(
        "for i in $(seq 10); do head -c 30000000 /dev/urandom > big$i; done",
        &src,
    );
    let mut child = cairn(&repo)
        .args(["backup", "--quiet"])
        .arg(&src)
        .spawn()
        .unwrap();
    let mut reads = 0;
    while child.try_wait().unwrap().is_none() {
        let out = ok(
            cairn(&repo).args(["cat", "latest"]).arg(src.join("small")),
            0,
        );
        assert_eq!(out, "first");
        reads += 1;
    }
    assert!(child.wait().unwrap().success());
    assert!(reads >= 1, "the reader ran beside the backup");
    assert_eq!(snapshots(&repo).len(), 2);
    // Two backups at once also work (one write transaction at a time, both commit).
    let a = cairn(&repo)
        .args(["backup", "--quiet", "--host", "a"])
        .arg(&src)
        .spawn()
        .unwrap();
    let b = cairn(&repo)
        .args(["backup", "--quiet", "--host", "b"])
        .arg(&src)
        .spawn()
        .unwrap();
    assert!(a.wait_with_output().unwrap().status.success());
    assert!(b.wait_with_output().unwrap().status.success());
    assert_eq!(snapshots(&repo).len(), 4);
    ok(cairn(&repo).args(["check", "--read-data"]), 0);
}

#[test]
fn full_disk_fails_cleanly_and_keeps_the_repository() {
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "mounting a small tmpfs (tests run as root)"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("first"), "small first file").unwrap();
    let repo = mnt.join("repo");
    init(&repo);
    backup(&repo, &[&src]);
    sh("head -c 60000000 /dev/urandom > big", &src);
    let r = run(cairn(&repo).args(["backup"]).arg(&src));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.to_lowercase().contains("space"),
        "names the problem: {}",
        r.stderr
    );
    std::fs::remove_file(src.join("big")).unwrap();
    assert_eq!(snapshots(&repo).len(), 1);
    ok(cairn(&repo).args(["check", "--read-data"]), 0);
    assert_eq!(
        ok(
            cairn(&repo).args(["cat", "latest"]).arg(src.join("first")),
            0
        ),
        "small first file"
    );
}

/// The environment variables that carry a password or say where one is.
const SECRET_VARS: [&str; 5] = [
    "CAIRN_PASSWORD",
    "CAIRN_PASSWORD_FILE",
    "CAIRN_PASSWORD_COMMAND",
    "CAIRN_NEW_PASSWORD",
    "CAIRN_NEW_PASSWORD_FILE",
];

fn assert_no_secrets(env_dump: &Path) {
    let env = std::fs::read_to_string(env_dump).expect("the child recorded its environment");
    assert!(env.contains("PATH="), "not an environment dump: {env}");
    for v in SECRET_VARS {
        assert!(
            !env.lines().any(|l| l.starts_with(&format!("{v}="))),
            "{v} leaked into a child:\n{env}"
        );
    }
    assert!(!env.contains(PASSWORD), "the password leaked into a child");
}

#[test]
fn passwords_never_reach_child_processes() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    init(&repo);
    let pwfile = t.path().join("pw");
    std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
    let with_all_secrets = |c: &mut Command| {
        c.env("CAIRN_PASSWORD_FILE", &pwfile)
            .env("CAIRN_PASSWORD_COMMAND", format!("echo '{PASSWORD}'"))
            .env("CAIRN_NEW_PASSWORD", PASSWORD)
            .env("CAIRN_NEW_PASSWORD_FILE", &pwfile);
    };
    // The ssh child of `sync`: a fake ssh records its environment and fails.
    let fake_ssh = t.path().join("fake-ssh");
    let ssh_env = t.path().join("ssh-env");
    std::fs::write(
        &fake_ssh,
        format!("#!/bin/sh\nenv > '{}'\nexit 255\n", ssh_env.display()),
    )
    .unwrap();
    sh("chmod 755 fake-ssh", t.path());
    let mut c = cairn(&repo);
    with_all_secrets(&mut c);
    c.env("CAIRN_SSH_COMMAND", &fake_ssh)
        .args(["sync", "ssh://backup.invalid/srv/replica"]);
    let r = run(&mut c);
    assert_ne!(r.code, 0, "the fake ssh fails the sync");
    assert_no_secrets(&ssh_env);
    // The shell child of --password-command (given through its variable).
    let cmd_env = t.path().join("cmd-env");
    let mut c = cairn(&repo);
    with_all_secrets(&mut c);
    c.env_remove("CAIRN_PASSWORD")
        .env(
            "CAIRN_PASSWORD_COMMAND",
            format!("env > '{}'; echo '{PASSWORD}'", cmd_env.display()),
        )
        .env_remove("CAIRN_PASSWORD_FILE")
        .arg("snapshots");
    ok(&mut c, 0);
    assert_no_secrets(&cmd_env);
}

/// Run cairn under a 1 GiB address-space limit, so a read that never ends fails fast.
fn limited(c: &mut Command) -> Run {
    let start = std::time::Instant::now();
    let prog = c.get_program().to_owned();
    let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(r#"ulimit -v 1048576; exec "$@""#)
        .arg("sh")
        .arg(prog)
        .args(args);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    let r = run(&mut sh);
    assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
    r
}

#[test]
fn endless_password_sources_are_cut_short() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    init(&repo);
    let r = limited(cairn(&repo).env_remove("CAIRN_PASSWORD").args([
        "--password-file",
        "/dev/zero",
        "snapshots",
    ]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("/dev/zero") && r.stderr.contains("64 KiB"),
        "{}",
        r.stderr
    );
    let r = limited(cairn(&repo).env_remove("CAIRN_PASSWORD").args([
        "--password-command",
        "cat /dev/zero",
        "snapshots",
    ]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("64 KiB"), "{}", r.stderr);
    let r = limited(cairn(&repo).args(["key", "add", "--new-password-file", "/dev/zero"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("64 KiB"), "{}", r.stderr);
    // Only the first line of a password file counts, however long the rest.
    let pw = t.path().join("pw");
    let mut text = format!("{PASSWORD}\n").into_bytes();
    text.extend(std::iter::repeat_n(b'x', 1 << 20));
    std::fs::write(&pw, text).unwrap();
    ok(
        cairn(&repo)
            .env_remove("CAIRN_PASSWORD")
            .arg("--password-file")
            .arg(&pw)
            .arg("snapshots"),
        0,
    );
    assert_eq!(run(cairn(&repo).arg("snapshots")).code, 0);
}

#[test]
fn empty_passwords_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    let r = run(cairn(&repo).arg("init").env("CAIRN_PASSWORD", ""));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("empty password"), "{}", r.stderr);
    assert!(!repo.join("cairn.redb").exists());
    let empty = t.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let r = run(cairn(&repo)
        .env_remove("CAIRN_PASSWORD")
        .arg("--password-file")
        .arg(&empty)
        .arg("init"));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("empty password"), "{}", r.stderr);
    assert!(!repo.join("cairn.redb").exists());
    init(&repo);
    let r = run(cairn(&repo)
        .args(["key", "add"])
        .env("CAIRN_NEW_PASSWORD", ""));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("empty password"), "{}", r.stderr);
    let r = run(cairn(&repo)
        .args(["key", "passwd", "--new-password-file"])
        .arg(&empty));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("empty password"), "{}", r.stderr);
    let list = ok(cairn(&repo).args(["key", "list", "--json"]), 0);
    let slots: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(slots.as_array().unwrap().len(), 1, "no slot was added");
    ok(cairn(&repo).arg("snapshots"), 0);
}

#[test]
fn empty_exclude_patterns_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/keep.txt"), "keep").unwrap();
    std::fs::write(src.join("drop.tmp"), "drop").unwrap();
    let repo = t.path().join("repo");
    init(&repo);
    for bad in ["", "/", "//"] {
        let r = run(cairn(&repo).args(["backup", "--exclude", bad]).arg(&src));
        assert_eq!(r.code, 2, "--exclude {bad:?}: {}", r.stderr);
        assert!(r.stderr.contains("exclude everything"), "{}", r.stderr);
    }
    let r = run(cairn(&repo).arg("backup").arg("--exclude=").arg(&src));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        snapshots(&repo).is_empty(),
        "no snapshot from a refused backup"
    );
    // Blank and whitespace-only lines of an exclude file are skipped, not match-all.
    let exfile = t.path().join("excludes");
    std::fs::write(&exfile, "\n   \n*.tmp\n\n\t\n# comment\n").unwrap();
    ok(
        cairn(&repo)
            .args(["backup", "--exclude-file"])
            .arg(&exfile)
            .arg(&src),
        0,
    );
    let ls = ok(cairn(&repo).args(["ls", "latest"]).arg(&src), 0);
    assert!(
        ls.contains("sub/keep.txt") && !ls.contains("drop.tmp"),
        "{ls}"
    );
    // A `/` line in an exclude file is refused like `--exclude /`.
    std::fs::write(&exfile, "*.tmp\n/\n").unwrap();
    let r = run(cairn(&repo)
        .args(["backup", "--exclude-file"])
        .arg(&exfile)
        .arg(&src));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("exclude everything") && r.stderr.contains("excludes"),
        "{}",
        r.stderr
    );
    assert_eq!(snapshots(&repo).len(), 1);
}

#[test]
fn absurd_thread_counts_and_cache_sizes_are_usage_errors() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    init(&repo);
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let target = t.path().join("target");
    for n in ["0", "999999999", "-1", "many"] {
        let r = run(cairn(&repo)
            .arg("backup")
            .arg(format!("--threads={n}"))
            .arg(&src));
        assert_eq!(r.code, 2, "backup --threads {n}: {}", r.stderr);
        assert!(r.stderr.contains("from 1 to 256"), "{}", r.stderr);
        let r = run(cairn(&repo)
            .args(["restore", "latest"])
            .arg(format!("--threads={n}"))
            .arg("--target")
            .arg(&target));
        assert_eq!(r.code, 2, "restore --threads {n}: {}", r.stderr);
        assert!(r.stderr.contains("from 1 to 256"), "{}", r.stderr);
        let r = run(cairn(&repo)
            .arg("mount")
            .arg(format!("--threads={n}"))
            .arg(&target));
        assert_eq!(r.code, 2, "mount --threads {n}: {}", r.stderr);
        assert!(r.stderr.contains("from 1 to 256"), "{}", r.stderr);
    }
    for n in ["0", "999999999999", "18446744073709551616"] {
        let r = run(cairn(&repo).args(["mount", "--cache-size", n]).arg(&target));
        assert_eq!(r.code, 2, "mount --cache-size {n}: {}", r.stderr);
        assert!(r.stderr.contains("size in MiB from 1 to"), "{}", r.stderr);
    }
    assert!(snapshots(&repo).is_empty());
    // Sane values still work.
    ok(cairn(&repo).args(["backup", "--threads", "2"]).arg(&src), 0);
    ok(
        cairn(&repo)
            .args(["restore", "latest", "--threads", "256", "--target"])
            .arg(&target),
        0,
    );
}

#[test]
fn ls_quotes_control_characters_on_a_terminal_and_json_keeps_every_byte() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a\x1b[31mred"), "escape").unwrap();
    let latin1 = src.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    std::fs::write(&latin1, "latin1 name").unwrap();
    std::fs::write(src.join("plain"), "plain").unwrap();
    std::os::unix::fs::symlink(
        std::ffi::OsStr::from_bytes(b"\xff-target"),
        src.join("link"),
    )
    .unwrap();
    let repo = t.path().join("repo");
    init(&repo);
    backup(&repo, &[&src]);
    // On a terminal (util-linux `script` gives it one): GNU ls shell-escape quoting.
    let out = Command::new("script")
        .arg("-qec")
        .arg(format!(
            "{} ls -l latest {}",
            bin().display(),
            src.display()
        ))
        .arg("/dev/null")
        .env_remove("CAIRN_PASSWORD_FILE")
        .env_remove("CAIRN_PASSWORD_COMMAND")
        .env("CAIRN_PASSWORD", PASSWORD)
        .env("CAIRN_REPO", &repo)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(
        !tty.contains('\x1b'),
        "a raw escape reached the terminal: {tty:?}"
    );
    let dir = src.display();
    assert!(
        tty.contains(&format!("'{dir}/a'$'\\033''[31mred'")),
        "{tty}"
    );
    assert!(tty.contains(&format!("'{dir}/caf'$'\\351'")), "{tty}");
    assert!(
        tty.contains(&format!("{dir}/link -> ''$'\\377''-target'")),
        "{tty}"
    );
    assert!(tty.contains(&format!(" {dir}/plain\r\n")), "{tty:?}");
    // Off a terminal: the names as before.
    let piped = ok(cairn(&repo).args(["ls", "latest"]).arg(&src), 0);
    assert!(
        piped.contains(&format!("{dir}/a\x1b[31mred\n")),
        "{piped:?}"
    );
    // --json: the exact bytes of a name that is not UTF-8, and only then.
    let json = ok(cairn(&repo).args(["ls", "--json", "latest"]).arg(&src), 0);
    let items: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let hex_of = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let bad = items
        .iter()
        .find(|i| i["path_hex"] == hex_of(latin1.as_os_str().as_bytes()).as_str())
        .unwrap_or_else(|| panic!("no path_hex for the latin1 name: {json}"));
    assert_eq!(bad["size"], 11);
    let link = items
        .iter()
        .find(|i| i["path"] == format!("{dir}/link").as_str())
        .unwrap();
    assert_eq!(link["target_hex"], hex_of(b"\xff-target").as_str());
    assert!(link.get("path_hex").is_none(), "{link}");
    let plain = items
        .iter()
        .find(|i| i["path"] == format!("{dir}/plain").as_str())
        .unwrap();
    assert!(plain.get("path_hex").is_none() && plain.get("target_hex").is_none());
    assert_eq!(items.len(), 4, "{json}");
}

#[test]
fn cat_ls_and_restore_take_paths_that_are_not_utf8() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let latin1 = src.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    std::fs::write(&latin1, "latin1 name\n").unwrap();
    std::fs::write(src.join("other"), "other").unwrap();
    let repo = t.path().join("repo");
    init(&repo);
    backup(&repo, &[&src]);
    let out = cairn(&repo)
        .args(["cat", "latest"])
        .arg(&latin1)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"latin1 name\n");
    let ls = ok(cairn(&repo).args(["ls", "latest"]).arg(&latin1), 0);
    assert!(ls.contains("caf\u{fffd}"), "{ls}");
    let target = t.path().join("target");
    ok(
        cairn(&repo)
            .args(["restore", "latest", "--target"])
            .arg(&target)
            .arg("--include")
            .arg(&latin1),
        0,
    );
    let back = restored(&target, &latin1);
    assert_eq!(std::fs::read(&back).unwrap(), b"latin1 name\n");
    assert!(!restored(&target, &src.join("other")).exists());
}

#[test]
fn a_repository_this_user_cannot_read_is_permission_denied_not_missing() {
    // Root reads everything; run cairn as `nobody` against root's 0700 repository.
    let Some(t) = tempdir_for_nobody("cairn-eacces") else {
        return;
    };
    sh("chmod 755 .", t.path());
    let repo = t.path().join("repo");
    init(&repo);
    let as_nobody = |args: &[&str], repo: &Path| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin())
            .arg("--repo")
            .arg(repo)
            .args(args)
            .env("CAIRN_PASSWORD", PASSWORD)
            .env_remove("CAIRN_PASSWORD_FILE")
            .env_remove("CAIRN_PASSWORD_COMMAND")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for args in [
        &["snapshots"][..],
        &["ls", "latest"],
        &["check", "--storage-only"],
        &["target", "list"],
    ] {
        let (code, err) = as_nobody(args, &repo);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("permission denied") && err.contains("run cairn as a user who can"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("no Cairn repository"), "{err}");
    }
    // The directory is open to everyone but the database is not.
    sh("chmod 755 repo", t.path());
    let (code, err) = as_nobody(&["snapshots"], &repo);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("permission denied") && err.contains("cairn.redb"),
        "{err}"
    );
    // What is really missing is still exit 10.
    let (code, err) = as_nobody(&["snapshots"], &t.path().join("missing"));
    assert_eq!(code, 10, "{err}");
    let (code, err) = as_nobody(&["snapshots"], t.path());
    assert_eq!(code, 10, "{err}");
    // And root, who may read it, opens it as before.
    ok(cairn(&repo).arg("snapshots"), 0);
}

#[test]
fn files_that_read_shorter_or_longer_than_their_size_are_stored_as_read() {
    // sysfs says 4096 bytes (and no blocks), procfs says 0: neither is what reading gives.
    let pseudo: Vec<&Path> = [
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "/sys/kernel/mm/transparent_hugepage/defrag",
        "/sys/kernel/mm/ksm/run",
        "/sys/kernel/mm/ksm/pages_to_scan",
        "/proc/sys/kernel/ostype",
    ]
    .iter()
    .map(Path::new)
    .filter(|p| std::fs::read(p).is_ok())
    .collect();
    assert!(!pseudo.is_empty(), "no sysfs or procfs file to test with");
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    init(&repo);
    let r = run(cairn(&repo).args(["backup", "--json"]).args(&pseudo));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["warnings"], serde_json::json!([]), "{}", r.stdout);
    for p in &pseudo {
        let want = std::fs::read(p).unwrap();
        assert!(
            (want.len() as u64) < 4096 && std::fs::metadata(p).unwrap().len() != want.len() as u64
        );
        let out = cairn(&repo)
            .args(["cat", "latest"])
            .arg(p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&want),
            "{} is stored as read, without padding",
            p.display()
        );
        let ls = ok(cairn(&repo).args(["ls", "--json", "latest"]).arg(p), 0);
        let items: serde_json::Value = serde_json::from_str(&ls).unwrap();
        assert_eq!(items[0]["size"], want.len(), "{ls}");
    }
    let target = t.path().join("target");
    ok(
        cairn(&repo)
            .args(["restore", "latest", "--target"])
            .arg(&target),
        0,
    );
    for p in &pseudo {
        assert_eq!(
            std::fs::read(restored(&target, p)).unwrap(),
            std::fs::read(p).unwrap()
        );
    }
}

/// Issue 10: a repository URL is never taken for a relative directory: `ssh://…` goes to the
/// server (here an unknown host: a clear error), S3 without credentials is a usage error
/// naming what to set, unknown schemes are refused; none creates anything here; `file://PATH`
/// is a path.
#[test]
fn repository_urls_are_not_taken_for_local_directories() {
    let t = tempfile::tempdir().unwrap();
    for (url, code) in [
        ("ssh://backup.invalid/srv/repo", 1),
        ("s3://bucket/prefix", 2),
        ("ftp://host/x", 2),
    ] {
        let r = run(Command::new(bin())
            .current_dir(t.path())
            .args(["init", "--repo", url])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env("HOME", "/nonexistent")
            .env("CAIRN_PASSWORD", PASSWORD));
        assert_eq!(r.code, code, "{url}: {}", r.stderr);
        assert!(r.stderr.contains(url), "{}", r.stderr);
        if url.starts_with("s3:") {
            assert!(r.stderr.contains("AWS_ACCESS_KEY_ID"), "{}", r.stderr);
        }
        assert_eq!(
            std::fs::read_dir(t.path()).unwrap().count(),
            0,
            "{url}: nothing created in the current directory"
        );
    }
    let repo = t.path().join("repo");
    let url = format!("file://{}", repo.display());
    ok(
        Command::new(bin())
            .args(["init", "--repo", &url])
            .env("CAIRN_PASSWORD", PASSWORD),
        0,
    );
    assert!(repo.join("cairn.redb").is_file());
    assert!(snapshots(&repo).is_empty());
}
