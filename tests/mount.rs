//! Real mounts of the real binary (needs /dev/fuse; run as root or with fusermount3).
//! Every test unmounts through a Drop guard, also when it fails, and never waits unbounded.

mod common;

use common::*;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display())
}

/// A source tree with the attributes the mount must show exactly.
fn make_source(src: &Path) {
    let s = q(src);
    sh(&format!(
        "set -e; mkdir -p {s}/d/sticky {s}/d/sgid {s}/empty
         printf 'hello\\n' > {s}/a.txt
         head -c 3000000 /dev/urandom > {s}/d/big.bin
         printf 'x' > {s}/d/suid && chmod 4755 {s}/d/suid
         chmod 1777 {s}/d/sticky && chmod 2750 {s}/d/sgid
         ln {s}/a.txt {s}/d/hard
         ln -s ../a.txt {s}/d/link
         mkfifo {s}/d/fifo
         printf 'raw' > {s}/$(printf 'n\\377me')
         setfattr -n user.note -v 'kept' {s}/a.txt
         touch -h -d '2001-02-03 04:05:06.123456789' {s}/d/link
         touch -d '1969-07-20 20:17:40.5' {s}/d/big.bin
         touch -d '2099-12-31 23:59:59.999999999' {s}/d/suid
         touch -d '2020-05-06 07:08:09.5' {s}/d/fifo {s}/d/sgid {s}/d/sticky {s}/empty {s}/d"
    ));
}

struct Setup {
    tmp: tempfile::TempDir,
    repo: PathBuf,
    src: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = tmp.path().join("src");
    make_source(&src);
    init(&repo);
    backup(&repo, &[&src]);
    Setup { tmp, repo, src }
}

/// Metadata of every entry below `root` (directory sizes excluded: they are not stored).
fn listing(root: &Path) -> String {
    sh(&format!(
        "cd {} && find . -mindepth 1 \\( -type d -printf '%p %M %U %G %T@ %n\\n' \\) -o -printf '%p %M %U %G %s %T@ %n %l\\n' | LC_ALL=C sort",
        q(root)
    ))
}

/// `diff -r` (GNU diff reports any two fifos as different: those lines are not differences)
/// plus the metadata listing.
fn same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let real: Vec<&str> = text
        .lines()
        .filter(|l| !(l.contains(" is a fifo while file ") && l.ends_with(" is a fifo")))
        .collect();
    assert!(
        real.is_empty() && out.stderr.is_empty(),
        "trees differ:\n{}\n{}",
        real.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        listing(a),
        listing(b),
        "metadata differs between {} and {}",
        a.display(),
        b.display()
    );
}

fn inside(m: &Mount, src: &Path) -> PathBuf {
    m.latest().join(src.strip_prefix("/").unwrap())
}

#[test]
fn mount_layout_and_attributes() {
    let s = setup();
    let m = Mount::start(&s.repo, &s.tmp.path().join("mnt"), &[]);
    let top = sh(&format!("ls {}", q(&m.dir)));
    assert_eq!(
        top.split_whitespace().collect::<Vec<_>>(),
        vec![
            "calendar",
            "gmt",
            "history",
            "hosts",
            "latest",
            "snapshots",
            "tags"
        ]
    );
    let snaps = sh(&format!("ls {}/snapshots", q(&m.dir)));
    let name = snaps.trim();
    assert_eq!(name.len(), 19, "YYYY-MM-DD_HH-MM-SS: {name}");
    assert!(!name.contains(':'));
    assert_eq!(
        std::fs::read_link(m.dir.join("latest")).unwrap(),
        Path::new("snapshots").join(name)
    );
    let host = sh(&format!("ls {}/hosts", q(&m.dir)));
    assert_eq!(
        sh(&format!("ls {}/hosts/{}", q(&m.dir), host.trim())).trim(),
        name
    );
    let mounted_src = inside(&m, &s.src);
    assert_eq!(
        listing(&s.src),
        listing(&mounted_src),
        "modes, owners, sizes, nsec mtimes, link counts, targets"
    );
    // The calendar view leads to the same snapshot (issue 13).
    let by_day = m.dir.join(format!(
        "calendar/{}/{}/{}/{}",
        &name[..4],
        &name[5..7],
        &name[8..10],
        &name[11..]
    ));
    assert_eq!(
        listing(&by_day.join(s.src.strip_prefix("/").unwrap())),
        listing(&mounted_src)
    );
    let (a, h) = (
        std::fs::metadata(mounted_src.join("a.txt")).unwrap(),
        std::fs::metadata(mounted_src.join("d/hard")).unwrap(),
    );
    assert_eq!(a.ino(), h.ino(), "hard links are one inode");
    assert_eq!(a.nlink(), 2);
    let blocks = std::fs::metadata(s.src.join("d/big.bin")).unwrap().blocks();
    assert_eq!(
        std::fs::metadata(mounted_src.join("d/big.bin"))
            .unwrap()
            .blocks(),
        blocks,
        "st_blocks for du"
    );
    let xattr = sh(&format!(
        "getfattr --only-values -n user.note {}",
        q(&mounted_src.join("a.txt"))
    ));
    assert_eq!(xattr, "kept");
}

#[test]
fn cp_a_tar_and_rsync_out_of_the_mount_reproduce_the_source() {
    let s = setup();
    let m = Mount::start(
        &s.repo,
        &s.tmp.path().join("mnt"),
        &["--threads", "4", "--cache-size", "16"],
    );
    let from = inside(&m, &s.src);
    same_tree(&s.src, &from);
    // Each copy: the same tree, and the xattr (diff -r and the listing do not see those).
    let same_copy = |copy: &Path| {
        same_tree(&s.src, copy);
        let note = sh(&format!(
            "getfattr --only-values -n user.note {}",
            q(&copy.join("a.txt"))
        ));
        assert_eq!(note, "kept", "{}", copy.display());
    };
    let copy = s.tmp.path().join("copy");
    sh(&format!("cp -a {} {}", q(&from), q(&copy)));
    same_copy(&copy);
    let untar = s.tmp.path().join("untar");
    std::fs::create_dir(&untar).unwrap();
    sh(&format!(
        "cd {} && tar --xattrs -cf - . | (cd {} && tar --xattrs -xpf -)",
        q(&from),
        q(&untar)
    ));
    same_copy(&untar);
    let rsynced = s.tmp.path().join("rsynced");
    sh(&format!("rsync -aHAX {}/ {}/", q(&from), q(&rsynced)));
    same_copy(&rsynced);
}

#[test]
fn new_snapshot_appears_in_a_live_mount() {
    let s = setup();
    let m = Mount::start(&s.repo, &s.tmp.path().join("mnt"), &[]);
    let count = || std::fs::read_dir(m.dir.join("snapshots")).unwrap().count();
    assert_eq!(count(), 1);
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(s.src.join("new.txt"), b"new").unwrap();
    backup(&s.repo, &[&s.src]);
    let start = Instant::now();
    while count() < 2 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(count(), 2, "the new snapshot shows within seconds");
    let start = Instant::now();
    while !inside(&m, &s.src).join("new.txt").exists() && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        std::fs::read(inside(&m, &s.src).join("new.txt")).unwrap(),
        b"new",
        "latest follows"
    );
}

/// `ls` of a directory in the mount, in byte order.
fn ls(dir: &Path) -> Vec<String> {
    sh(&format!("LC_ALL=C ls -A {}", q(dir)))
        .lines()
        .map(str::to_string)
        .collect()
}

/// Sleep until just after the start of the next second (snapshot names are per second).
fn next_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(Duration::from_nanos(
        1_000_000_000 - now.subsec_nanos() as u64 + 5_000_000,
    ));
}

#[test]
fn history_shows_three_contents_of_five_snapshots_in_order_and_keeps_a_deleted_file() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("docs")).unwrap();
    init(&repo);
    let report = src.join("docs/report.odt");
    let contents: [&[u8]; 5] = [b"one", b"one", b"two two", b"two two", b"three three three"];
    for (i, c) in contents.iter().enumerate() {
        if i == 0 || contents[i - 1] != *c {
            std::fs::write(&report, c).unwrap();
            sh(&format!(
                "touch -d '2020-01-0{} 12:00:00.25' {}",
                i + 1,
                q(&report)
            ));
        }
        match i {
            0 => std::fs::write(src.join("docs/gone.txt"), b"bye").unwrap(),
            // A chmod alone is no new version.
            1 => std::fs::set_permissions(
                &report,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap(),
            2 => std::fs::remove_file(src.join("docs/gone.txt")).unwrap(),
            _ => {}
        }
        if i > 0 {
            next_second();
        }
        backup(&repo, &[&src]);
    }
    let m = Mount::start(&repo, &tmp.path().join("mnt"), &[]);
    let snaps = ls(&m.dir.join("snapshots"));
    assert_eq!(snaps.len(), 5, "{snaps:?}");
    let docs = m
        .dir
        .join("history")
        .join(src.join("docs").strip_prefix("/").unwrap());
    assert_eq!(ls(&docs), ["gone.txt", "report.odt"]);
    let hist = docs.join("report.odt");
    let versions = ls(&hist);
    let want: Vec<String> = [0, 2, 4]
        .iter()
        .map(|i| format!("{}.odt", snaps[*i]))
        .collect();
    assert_eq!(
        versions, want,
        "three versions, oldest first, extension kept"
    );
    for (v, i) in versions.iter().zip([0, 2, 4]) {
        assert_eq!(std::fs::read(hist.join(v)).unwrap(), contents[i], "{v}");
        let mtime = sh(&format!("stat -c %y {}", q(&hist.join(v))));
        assert!(
            mtime.starts_with(&format!("2020-01-0{} 12:00:00.250000000", i + 1)),
            "the stored mtime of {v}: {mtime}"
        );
    }
    assert_eq!(
        sh(&format!("stat -c %a {}", q(&hist.join(&versions[0])))).trim(),
        "644"
    );
    assert_eq!(
        sh(&format!("stat -c %a {}", q(&hist.join(&versions[1])))).trim(),
        "600"
    );
    let gone = docs.join("gone.txt");
    assert_eq!(
        ls(&gone),
        [format!("{}.txt", snaps[0])],
        "a deleted file keeps its history"
    );
    assert_eq!(
        std::fs::read(gone.join(format!("{}.txt", snaps[0]))).unwrap(),
        b"bye"
    );
    let err = std::fs::metadata(docs.join("never.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    // A new content in a new snapshot shows as a new version in the live mount.
    next_second();
    std::fs::write(&report, b"four").unwrap();
    backup(&repo, &[&src]);
    let start = Instant::now();
    while ls(&hist).len() < 4 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let versions = ls(&hist);
    assert_eq!(versions.len(), 4, "{versions:?}");
    assert_eq!(std::fs::read(hist.join(&versions[3])).unwrap(), b"four");
}

/// VmRSS and VmHWM of a process, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// FUSE inodes the kernel holds, all mounts together (`fuse_inode` in /proc/slabinfo).
fn kernel_fuse_inodes() -> u64 {
    let info = std::fs::read_to_string("/proc/slabinfo").unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("fuse_inode "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("fuse_inode in /proc/slabinfo")
}

/// Issue 14: a walk over more files than the mount's inode limit does not pin them all, in
/// the kernel or in the mount: the mount asks the kernel to drop the oldest entries, and the
/// kernel forgets them. `--cache-size 4` allows about 3,500 inodes; 12,000 files are walked.
/// An entry dropped early is looked up again as the same file when asked for.
#[test]
fn a_walk_over_many_files_holds_only_the_mounts_inode_limit() {
    let s = tempfile::tempdir().unwrap();
    let src = s.path().join("src");
    sh(&format!(
        "set -e; for d in $(seq 16); do mkdir -p {src}/d$d; cd {src}/d$d; seq 750 | xargs touch; done
         printf 'first\\n' > {src}/d1/1",
        src = q(&src)
    ));
    let repo = s.path().join("repo");
    init(&repo);
    backup(&repo, &[&src]);
    let before = kernel_fuse_inodes();
    let m = Mount::start(&repo, &s.path().join("mnt"), &["--cache-size", "4"]);
    let root = inside(&m, &src);
    let found = sh(&format!("find {} -type f | wc -l", q(&root)));
    assert_eq!(found.trim(), "12000");
    let start = Instant::now();
    let mut held = kernel_fuse_inodes().saturating_sub(before);
    while held >= 6000 && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
        held = kernel_fuse_inodes().saturating_sub(before);
    }
    assert!(
        held < 6000,
        "the kernel still holds {held} inodes after a walk over 12,000 files: {}",
        m.stderr()
    );
    assert_eq!(std::fs::read(root.join("d1/1")).unwrap(), b"first\n");
    let again = sh(&format!("ls -lR {} | grep -c '^-'", q(&root)));
    assert_eq!(again.trim(), "12000");
}

/// Wall time of a shell command, and its output.
fn timed(script: &str) -> (Duration, String) {
    let t = Instant::now();
    let out = sh(script);
    (t.elapsed(), out)
}

/// Issue 13's measure: 1,000 hourly snapshots in which a file had ten contents (each for 100
/// snapshots, beside 200 files that never change) → wall time of `ls history/<file>` and the
/// mount's memory. Prints the figures (`cargo test --test mount history_figures --
/// --nocapture`); fails on wrong results only, never on timings.
#[test]
fn history_figures_over_a_thousand_snapshots() {
    use cairn_repo::backup::{backup, BackupOptions, Progress};
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("docs/other")).unwrap();
    for i in 0..200 {
        std::fs::write(src.join(format!("docs/other/f{i}")), format!("file {i}\n")).unwrap();
    }
    init(&repo_dir);
    let report = src.join("docs/report.txt");
    let content = |v: usize| format!("version {v}\n").repeat(v + 1).into_bytes();
    {
        let repo = cairn_repo::Repository::open(
            &repo_dir,
            PASSWORD.as_bytes(),
            &cairn_repo::OpenOptions::default(),
        )
        .unwrap();
        let opts = BackupOptions {
            paths: vec![src.clone()],
            ..BackupOptions::default()
        };
        let mut real = Vec::new();
        for v in 0..10 {
            std::fs::write(&report, content(v)).unwrap();
            real.push(backup(&repo, &opts, &Progress::default()).unwrap());
        }
        // Each real snapshot stands for 100 hourly ones (same trees, as with a file that
        // changes every few days), then the real ones go.
        let start = real[0].snapshot.time.sec - 1000 * 3600;
        let sealed: Vec<_> = (0..1000)
            .map(|k| {
                let mut s = real[k / 100].snapshot.clone();
                s.time.sec = start + k as i64 * 3600;
                repo.seal_snapshot(&s).unwrap()
            })
            .collect();
        cairn_repo::testkit::commit_snapshots(repo.storage(), &sealed).unwrap();
        let ids: Vec<_> = real.iter().map(|r| r.id).collect();
        repo.local("test").unwrap().remove_snapshots(&ids).unwrap();
    }
    let m = Mount::start(&repo_dir, &tmp.path().join("mnt"), &[]);
    let pid = m.child.id();
    let (t_snaps, snaps) = timed(&format!("ls {}/snapshots", q(&m.dir)));
    assert_eq!(snaps.lines().count(), 1000);
    let (base, _) = timed(&format!(
        "ls {}",
        q(&m.latest().join(src.join("docs").strip_prefix("/").unwrap()))
    ));
    let before = rss_kib(pid);
    let hist = m
        .dir
        .join("history")
        .join(report.strip_prefix("/").unwrap());
    let (cold, out) = timed(&format!("ls {}", q(&hist)));
    let versions: Vec<&str> = out.lines().collect();
    assert_eq!(versions.len(), 10, "{versions:?}");
    let (warm, _) = timed(&format!("ls {}", q(&hist)));
    let (long, _) = timed(&format!("ls -l {}", q(&hist)));
    let (merged, names) = timed(&format!("ls {}", q(hist.parent().unwrap())));
    assert_eq!(names.lines().collect::<Vec<_>>(), ["other", "report.txt"]);
    let (other, names) = timed(&format!("ls {}", q(&hist.parent().unwrap().join("other"))));
    assert_eq!(names.lines().count(), 200);
    for (v, name) in versions.iter().enumerate() {
        assert_eq!(
            std::fs::read(hist.join(name)).unwrap(),
            content(v),
            "{name}"
        );
    }
    let after = rss_kib(pid);
    eprintln!(
        "history figures, 1,000 snapshots (10 distinct versions of {}):\n\
         ls snapshots/: {t_snaps:?}; ls latest/<its dir> (for scale: sh, ls, 2 names): {base:?}\n\
         ls history/<file> first: {cold:?}, again: {warm:?}, ls -l: {long:?}\n\
         ls history/<its dir> (2 names, 10 distinct trees): {merged:?}; \
         ls history/<dir of 200 files>: {other:?}\n\
         mount RSS before history: {} KiB (peak {} KiB); after, all versions read: {} KiB (peak {} KiB)",
        report.display(),
        before.0,
        before.1,
        after.0,
        after.1
    );
}

#[test]
fn writes_fail_with_erofs() {
    let s = setup();
    let m = Mount::start(&s.repo, &s.tmp.path().join("mnt"), &[]);
    let d = inside(&m, &s.src);
    let erofs =
        |r: std::io::Result<()>| assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    erofs(std::fs::write(d.join("new"), b"x"));
    erofs(std::fs::write(d.join("a.txt"), b"x"));
    erofs(std::fs::create_dir(m.dir.join("x")));
    erofs(std::fs::remove_file(d.join("a.txt")));
    erofs(std::fs::rename(d.join("a.txt"), d.join("b.txt")));
    erofs(std::fs::set_permissions(
        d.join("a.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    ));
    let setx = Command::new("setfattr")
        .args(["-n", "user.x", "-v", "1"])
        .arg(d.join("a.txt"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&setx.stderr).contains("Read-only file system"));
    assert_eq!(std::fs::read(d.join("a.txt")).unwrap(), b"hello\n");
}

#[test]
fn sigterm_and_sigint_unmount_cleanly_even_when_busy() {
    let s = setup();
    let dir = s.tmp.path().join("mnt");
    let mut m = Mount::start(&s.repo, &dir, &[]);
    m.signal(libc::SIGTERM);
    assert_eq!(
        m.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        m.stderr()
    );
    assert!(!mounted(&dir), "mountpoint is clean after SIGTERM");
    let mut m = Mount::start(&s.repo, &dir, &[]);
    let busy = std::fs::File::open(inside(&m, &s.src).join("a.txt")).unwrap();
    m.signal(libc::SIGINT);
    assert_eq!(
        m.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        m.stderr()
    );
    assert!(!mounted(&dir), "a busy mount is detached");
    drop(busy);
    let mut m = Mount::start(&s.repo, &dir, &[]);
    sh(&format!("fusermount3 -u {}", q(&dir)));
    assert_eq!(
        m.wait_exit(Duration::from_secs(10)),
        Some(0),
        "fusermount3 -u ends the process: {}",
        m.stderr()
    );
}

#[test]
fn damaged_chunk_reads_eio_and_is_logged() {
    let s = setup();
    let repo = cairn_repo::Repository::open(
        &s.repo,
        PASSWORD.as_bytes(),
        &cairn_repo::OpenOptions::default(),
    )
    .unwrap();
    let snap = repo.find_snapshot("latest").unwrap();
    let view = repo.reader().unwrap();
    let path = s.src.join("d/big.bin");
    let entry = repo
        .lookup(&view, &snap.snapshot.root, path.as_os_str().as_bytes())
        .unwrap()
        .unwrap();
    let id = repo.extents(&view, &entry.content).unwrap()[0].id.unwrap();
    drop(view);
    cairn_repo::testkit::damage_object(
        repo.local("test").unwrap(),
        &id,
        repo.config().piece_size,
        10,
    )
    .unwrap();
    drop(repo);
    let m = Mount::start(&s.repo, &s.tmp.path().join("mnt"), &[]);
    let err = std::fs::read(inside(&m, &s.src).join("d/big.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(
        m.stderr().contains(&id.to_hex()),
        "log names the object: {}",
        m.stderr()
    );
    assert_eq!(
        std::fs::read(inside(&m, &s.src).join("a.txt")).unwrap(),
        b"hello\n",
        "the rest still reads"
    );
}

#[test]
fn unreadable_repository_gives_eio_and_still_unmounts_cleanly() {
    let s = setup();
    let dir = s.tmp.path().join("mnt");
    let mut m = Mount::start(&s.repo, &dir, &[]);
    let file = inside(&m, &s.src).join("d/big.bin");
    std::fs::OpenOptions::new()
        .write(true)
        .open(s.repo.join("cairn.redb"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let err = std::fs::read(&file).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        m.dir.join("snapshots").is_dir(),
        "the top level keeps the last good snapshot list"
    );
    m.signal(libc::SIGTERM);
    assert_eq!(
        m.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        m.stderr()
    );
    assert!(!mounted(&dir), "mountpoint is clean");
    assert!(
        m.stderr().contains("error"),
        "the failure is logged: {}",
        m.stderr()
    );
}

#[test]
fn mount_refuses_bad_input_with_the_contract_exit_codes() {
    let s = setup();
    let missing = s.tmp.path().join("no-such-dir");
    ok(cairn(&s.repo).arg("mount").arg(&missing), 2);
    ok(cairn(&s.repo).arg("mount").arg(s.src.join("a.txt")), 2);
    ok(
        cairn(&s.tmp.path().join("no-repo"))
            .arg("mount")
            .arg(s.tmp.path()),
        10,
    );
    let mnt = s.tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    ok(
        cairn(&s.repo)
            .env("CAIRN_PASSWORD", "wrong")
            .arg("mount")
            .arg(&mnt),
        12,
    );
    assert!(!mounted(&mnt));
}

#[test]
fn allow_other_lets_other_users_read_only_what_the_stored_modes_allow() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (repo, src) = (tmp.path().join("repo"), tmp.path().join("src"));
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("public"), b"for all").unwrap();
    std::fs::write(src.join("secret"), b"root only").unwrap();
    std::fs::set_permissions(
        src.join("secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    init(&repo);
    backup(&repo, &[&src]);
    let m = Mount::start(&repo, &tmp.path().join("mnt"), &["--allow-other"]);
    let inside = inside(&m, &src);
    let as_nobody = |file: &str| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(inside.join(file))
            .output()
            .unwrap()
    };
    let public = as_nobody("public");
    assert!(
        public.status.success(),
        "{}",
        String::from_utf8_lossy(&public.stderr)
    );
    assert_eq!(public.stdout, b"for all");
    let secret = as_nobody("secret");
    assert!(!secret.status.success());
    assert!(String::from_utf8_lossy(&secret.stderr).contains("Permission denied"));
}

#[test]
fn sparse_files_show_their_holes_through_lseek() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, src) = (tmp.path().join("repo"), tmp.path().join("src"));
    std::fs::create_dir(&src).unwrap();
    sh(&format!("dd if=/dev/urandom of={} bs=64k count=2 seek=64 conv=notrunc status=none && truncate -s 16M {0}", q(&src.join("sparse"))));
    init(&repo);
    backup(&repo, &[&src]);
    let m = Mount::start(&repo, &tmp.path().join("mnt"), &[]);
    let seek = |p: &Path, off: i64, whence: i32| {
        let f = std::fs::File::open(p).unwrap();
        unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&f), off, whence) }
    };
    let (a, b) = (src.join("sparse"), inside(&m, &src).join("sparse"));
    assert_eq!(seek(&b, 0, libc::SEEK_DATA), seek(&a, 0, libc::SEEK_DATA));
    assert_eq!(
        seek(&b, 4 << 20, libc::SEEK_HOLE),
        seek(&a, 4 << 20, libc::SEEK_HOLE)
    );
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let copy = tmp.path().join("copy");
    sh(&format!("cp -a {} {}", q(&b), q(&copy)));
    let blocks = |p: &Path| std::fs::metadata(p).unwrap().blocks();
    assert!(
        blocks(&copy) <= blocks(&a) + 64,
        "cp -a out of the mount keeps the file sparse"
    );
}

/// Pages of `file` in the page cache (`fincore`), without reading it.
fn cached_pages(file: &Path) -> u64 {
    let out = sh(&format!("fincore --noheadings --output PAGES {}", q(file)));
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("fincore said {out:?}"))
}

#[test]
fn readers_in_order_find_the_next_files_and_chunks_already_in_the_page_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, src) = (tmp.path().join("repo"), tmp.path().join("src"));
    // 120 small files of different sizes and kinds (random, text, empty), and a big one.
    sh(&format!(
        "set -e; mkdir -p {s}/many; cd {s}/many
         for i in $(seq 100 219); do
           head -c $(( (i * 7919) % 60000 )) /dev/urandom > f$i
           [ $((i % 3)) = 0 ] && seq $i $((i * 40)) > f$i
         done
         head -c 2000000 /dev/urandom > f150big",
        s = q(&src)
    ));
    init(&repo);
    backup(&repo, &[&src]);
    let m = Mount::start(&repo, &tmp.path().join("mnt"), &[]);
    let many = inside(&m, &src).join("many");
    sh(&format!("ls -l {} > /dev/null", q(&many)));
    let ahead = many.join("f110");
    assert_eq!(cached_pages(&ahead), 0, "nothing read yet");
    // The first read pushes a few files; reading on past them pushes a full window.
    sh(&format!("cat {0}/f10[0-5] > /dev/null", q(&many)));
    let start = Instant::now();
    while cached_pages(&ahead) == 0 && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        cached_pages(&ahead) > 0,
        "f110 was put in the page cache ahead of the reader"
    );
    // A sequential reader of a big file finds the following chunks there too.
    let big = many.join("f150big");
    sh(&format!(
        "dd if={} bs=128k count=2 status=none > /dev/null",
        q(&big)
    ));
    let start = Instant::now();
    while cached_pages(&big) < 400 && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pages = cached_pages(&big);
    assert!(
        pages >= 400,
        "488 pages of f150big cached after reading 64: {pages}"
    );
    same_tree(&src, &inside(&m, &src));
}

/// Unmounts a bind mount when dropped.
struct BindMount(PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Issue 16: a repository on read-only media (a read-only bind mount, as a backup disk
/// mounted `ro`) is read by every reading command and the mount; writing ones say why not.
#[test]
fn issue16_a_repository_on_read_only_media_can_be_read_and_mounted() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let (repo, src) = (root.join("repo"), root.join("src"));
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/file"), b"read me from read-only media\n").unwrap();
    init(&repo);
    backup(&repo, &[&src]);
    let ro = root.join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    let st = Command::new("mount")
        .args(["--bind", "-o", "ro"])
        .arg(&repo)
        .arg(&ro)
        .status()
        .unwrap();
    assert!(st.success(), "read-only bind mount");
    let _bind = BindMount(ro.clone());
    assert!(
        std::fs::write(ro.join("probe"), b"x").is_err(),
        "really read-only"
    );

    let file = src.join("d/file");
    assert_eq!(snapshots(&ro).len(), 1);
    ok(cairn(&ro).args(["ls", "latest"]), 0);
    let cat = ok(cairn(&ro).args(["cat", "latest"]).arg(&file), 0);
    assert_eq!(cat, "read me from read-only media\n");
    ok(cairn(&ro).args(["check", "--read-data"]), 0);
    ok(cairn(&ro).args(["check", "--storage-only"]), 0);
    let out = root.join("out");
    ok(
        cairn(&ro).args(["restore", "latest", "--target"]).arg(&out),
        0,
    );
    assert_eq!(
        std::fs::read(out.join(file.strip_prefix("/").unwrap())).unwrap(),
        b"read me from read-only media\n"
    );
    let r = run(cairn(&ro).arg("backup").arg(&src));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("read-only"), "{}", r.stderr);

    let m = Mount::start(&ro, &root.join("mnt"), &[]);
    let through = m.latest().join(file.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(&through).unwrap(),
        b"read me from read-only media\n"
    );
    drop(m);

    // As an unprivileged user: a file that may only be read opens read-only; one that may
    // not be read at all is "permission denied", not "no repository".
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    mode(&root, 0o755).unwrap();
    mode(&repo, 0o755).unwrap();
    mode(&repo.join("cairn.redb"), 0o444).unwrap();
    let as_nobody = || {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin())
            .args(["snapshots", "--repo"])
            .arg(&repo)
            .env("CAIRN_PASSWORD", PASSWORD);
        c
    };
    let out = ok(&mut as_nobody(), 0);
    assert!(out.contains("1 snapshots"), "{out}");
    mode(&repo, 0o700).unwrap();
    let r = run(&mut as_nobody());
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("permission denied"), "{}", r.stderr);
}

/// Issue 16: a mount of a repository whose database has damaged pages keeps serving: files on
/// damaged pages give EIO, every other file reads exactly, and the mount stays up.
#[test]
fn issue16_a_mount_of_a_damaged_repository_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, src) = (tmp.path().join("repo"), tmp.path().join("src"));
    for d in 0..8 {
        let dir = src.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..10 {
            let data = cairn_repo::testkit::noise(d * 100 + f, 200 << 10);
            std::fs::write(dir.join(format!("f{f}")), data).unwrap();
        }
    }
    init(&repo);
    backup(&repo, &[&src]);
    // 64 KiB of noise at a fifth, two fifths… of what the database file holds (its length
    // runs ahead into a sparse tail).
    let db = repo.join("cairn.redb");
    let used = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&db).unwrap()) * 512;
    let mut bytes = std::fs::read(&db).unwrap();
    for k in 1..5 {
        let at = (used as usize / 5) * k;
        bytes[at..at + (64 << 10)].copy_from_slice(&cairn_repo::testkit::noise(k as u64, 64 << 10));
    }
    std::fs::write(&db, bytes).unwrap();

    let mut m = Mount::start(&repo, &tmp.path().join("mnt"), &[]);
    let inside = m.latest().join(src.strip_prefix("/").unwrap());
    let (mut good, mut eio) = (0, 0);
    for d in 0..8 {
        for f in 0..10 {
            let rel = format!("d{d}/f{f}");
            match std::fs::read(inside.join(&rel)) {
                Ok(data) => {
                    assert_eq!(data, std::fs::read(src.join(&rel)).unwrap(), "{rel}");
                    good += 1;
                }
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{rel}: {e}");
                    eio += 1;
                }
            }
        }
    }
    assert!(good > 0, "the intact files read ({eio} gave EIO)");
    assert!(eio > 0, "the damage hit some file's data");
    assert!(
        m.child.try_wait().unwrap().is_none(),
        "the mount is still up"
    );
    assert!(mounted(&m.dir));
}
