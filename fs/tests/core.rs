//! The filesystem core driven without FUSE, over a real repository built in a tempdir.

use cairn_fs::{Attr, DirItem, FsCore, FsOptions, ROOT_INO};
use cairn_repo::backup::{backup, BackupOptions, Progress};
use cairn_repo::format::FileType;
use cairn_repo::{OpenOptions, Repository};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Fixture {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    repo: Arc<Repository>,
}

fn repo_opts() -> OpenOptions {
    cairn_repo::testkit::insecure_fast_kdf()
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    cairn_repo::testkit::noise(seed, n)
}

fn set_times(p: &Path, sec: i64, nsec: i64) {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    assert_eq!(
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        },
        0
    );
}

fn build_source(src: &Path) {
    std::fs::create_dir_all(src.join("dir/deep")).unwrap();
    std::fs::write(src.join("small.txt"), b"hello mount\n").unwrap();
    std::fs::write(src.join("dir/big.bin"), noise(5 << 20, 42)).unwrap();
    std::fs::write(src.join("dir/deep/zeros"), vec![0u8; 300_000]).unwrap();
    std::fs::write(
        src.join(std::ffi::OsStr::from_bytes(b"raw\xff\xfename")),
        b"raw",
    )
    .unwrap();
    std::os::unix::fs::symlink("../small.txt", src.join("dir/link")).unwrap();
    std::fs::hard_link(src.join("small.txt"), src.join("dir/hard")).unwrap();
    std::fs::set_permissions(
        src.join("dir/deep"),
        std::fs::Permissions::from_mode(0o2755),
    )
    .unwrap();
    std::fs::set_permissions(
        src.join("dir/big.bin"),
        std::fs::Permissions::from_mode(0o4751),
    )
    .unwrap();
    let c = std::ffi::CString::new(src.join("dir/big.bin").as_os_str().as_bytes()).unwrap();
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"user.cairn".as_ptr(),
            b"v\x00\xff".as_ptr().cast(),
            3,
            0,
        )
    };
    assert_eq!(rc, 0, "user xattrs must work on the test filesystem");
    set_times(&src.join("dir/deep/zeros"), -86_400 * 365, 123_456_789);
    set_times(
        &src.join(std::ffi::OsStr::from_bytes(b"raw\xff\xfename")),
        4_102_444_800,
        999_999_999,
    );
}

fn fixture() -> Fixture {
    fixture_with(&repo_opts())
}

fn fixture_with(opts: &OpenOptions) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_source(&src);
    let repo = Repository::init(&tmp.path().join("repo"), b"pw", opts).unwrap();
    snapshot(&repo, &src);
    Fixture {
        src,
        repo: Arc::new(repo),
        _tmp: tmp,
    }
}

/// A new repository in `dir`/repo holding one snapshot of `src`.
fn backed_up(dir: &Path, src: &Path) -> Repository {
    let repo = Repository::init(&dir.join("repo"), b"pw", &repo_opts()).unwrap();
    snapshot(&repo, src);
    repo
}

fn snapshot(repo: &Repository, src: &Path) {
    let opts = BackupOptions {
        paths: vec![src.to_path_buf()],
        tags: vec!["daily".into()],
        host: Some("box".into()),
        ..BackupOptions::default()
    };
    backup(repo, &opts, &Progress::default()).unwrap();
}

fn core(f: &Fixture, refresh: Duration) -> FsCore {
    FsCore::new(
        f.repo.clone(),
        FsOptions {
            refresh,
            chunk_cache_bytes: 8 << 20,
            ..FsOptions::default()
        },
    )
    .unwrap()
}

fn list(core: &FsCore, ino: u64) -> Vec<(Vec<u8>, u64, FileType)> {
    let mut out = Vec::new();
    core.readdir(ino, 0, false, |it: &DirItem| {
        out.push((it.name.to_vec(), it.ino, it.kind));
        false
    })
    .unwrap();
    out
}

fn names(core: &FsCore, ino: u64) -> Vec<String> {
    list(core, ino)
        .into_iter()
        .map(|(n, _, _)| String::from_utf8_lossy(&n).into_owned())
        .collect()
}

/// Walk an absolute path from `start`, looking up each component.
fn walk(core: &FsCore, start: u64, path: &Path) -> Attr {
    let mut attr = core.getattr(start).unwrap();
    for c in path.components().skip(1) {
        attr = core
            .lookup(attr.ino, c.as_os_str().as_bytes())
            .unwrap_or_else(|e| panic!("lookup {c:?}: {e:?}"));
    }
    attr
}

fn only_snapshot(core: &FsCore) -> u64 {
    let snaps = core.lookup(ROOT_INO, b"snapshots").unwrap();
    let l = list(core, snaps.ino);
    assert_eq!(l.len(), 3, "., .. and one snapshot: {l:?}");
    core.lookup(snaps.ino, &l[2].0).unwrap().ino
}

fn read_all(core: &FsCore, ino: u64, step: u32) -> Vec<u8> {
    let fh = core.open(ino).unwrap();
    let mut out = Vec::new();
    loop {
        let part = core.read(fh, out.len() as u64, step).unwrap();
        if part.is_empty() {
            break;
        }
        out.extend_from_slice(&part);
    }
    core.release(fh);
    out
}

#[test]
fn top_level_layout() {
    let f = fixture();
    let c = core(&f, Duration::from_secs(60));
    assert_eq!(
        names(&c, ROOT_INO),
        vec![
            ".",
            "..",
            "snapshots",
            "hosts",
            "tags",
            "calendar",
            "gmt",
            "history",
            "latest"
        ]
    );
    let snaps = c.lookup(ROOT_INO, b"snapshots").unwrap();
    let snap_names = names(&c, snaps.ino);
    let name = &snap_names[2];
    assert_eq!(name.len(), "2026-11-29_14-05-03".len());
    assert!(!name.contains(':'));
    let latest = c.lookup(ROOT_INO, b"latest").unwrap();
    assert_eq!(latest.kind, FileType::Symlink);
    assert_eq!(
        c.readlink(latest.ino).unwrap(),
        format!("snapshots/{name}").into_bytes()
    );
    let hosts = c.lookup(ROOT_INO, b"hosts").unwrap();
    assert_eq!(names(&c, hosts.ino), vec![".", "..", "box"]);
    let host = c.lookup(hosts.ino, b"box").unwrap();
    assert_eq!(&names(&c, host.ino)[2], name);
    // calendar/YYYY/MM/DD/HH-MM-SS/ is the same snapshot (issue 13).
    let mut at = c.lookup(ROOT_INO, b"calendar").unwrap();
    for (level, part) in [(0, &name[..4]), (1, &name[5..7]), (2, &name[8..10])] {
        assert_eq!(names(&c, at.ino), vec![".", "..", part], "level {level}");
        at = c.lookup(at.ino, part.as_bytes()).unwrap();
    }
    assert_eq!(names(&c, at.ino), vec![".", "..", &name[11..]]);
    let by_day = c.lookup(at.ino, &name.as_bytes()[11..]).unwrap();
    let direct = c.lookup(snaps.ino, name.as_bytes()).unwrap();
    assert_eq!(names(&c, by_day.ino), names(&c, direct.ino));
    assert_eq!(by_day.mtime, direct.mtime);
    assert_ne!(by_day.ino, direct.ino, "a directory has one inode per view");
    assert_eq!(
        c.lookup(at.ino, b"99-99-99").unwrap_err().errno,
        libc::ENOENT
    );
    // gmt/@GMT-YYYY.MM.DD-HH.MM.SS/ is the same snapshot, named in UTC (issue 13).
    let gmt = c.lookup(ROOT_INO, b"gmt").unwrap();
    let gmt_names = names(&c, gmt.ino);
    assert_eq!(gmt_names.len(), 3, "{gmt_names:?}");
    let g = &gmt_names[2];
    assert!(
        g.starts_with("@GMT-") && g.len() == "@GMT-2026.11.29-14.05.03".len(),
        "{g}"
    );
    let via_gmt = c.lookup(gmt.ino, g.as_bytes()).unwrap();
    assert_eq!(names(&c, via_gmt.ino), names(&c, direct.ino));
    assert_eq!(via_gmt.mtime, direct.mtime);
    let tags = c.lookup(ROOT_INO, b"tags").unwrap();
    let daily = c.lookup(tags.ino, b"daily").unwrap();
    let via_tag = c.lookup(daily.ino, name.as_bytes()).unwrap();
    let via_snaps = c.lookup(snaps.ino, name.as_bytes()).unwrap();
    assert_ne!(
        via_tag.ino, via_snaps.ino,
        "a directory has one inode per view"
    );
    assert_eq!(
        c.lookup(snaps.ino, b"nope").unwrap_err().errno,
        libc::ENOENT
    );
}

#[test]
fn attributes_match_the_source() {
    let f = fixture();
    let c = core(&f, Duration::from_secs(60));
    let snap = only_snapshot(&c);
    for rel in [
        "small.txt",
        "dir",
        "dir/big.bin",
        "dir/deep",
        "dir/deep/zeros",
        "dir/link",
        "dir/hard",
    ] {
        let p = f.src.join(rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let a = walk(&c, snap, &p);
        assert_eq!(a.perm as u32, m.mode() & 0o7777, "{rel} mode");
        assert_eq!((a.uid, a.gid), (m.uid(), m.gid()), "{rel} owner");
        // Directory sizes are not stored (they depend on the source filesystem): shown as 0.
        assert_eq!(a.size, if m.is_dir() { 0 } else { m.size() }, "{rel} size");
        assert_eq!(a.blocks, m.blocks(), "{rel} blocks");
        assert_eq!(
            (a.mtime.sec, a.mtime.nsec as i64),
            (m.mtime(), m.mtime_nsec()),
            "{rel} mtime"
        );
        assert_eq!(a.nlink as u64, m.nlink(), "{rel} nlink");
    }
    let zeros = walk(&c, snap, &f.src.join("dir/deep/zeros"));
    assert!(zeros.mtime.sec < 0, "negative times survive");
    let raw = c
        .lookup(walk(&c, snap, &f.src).ino, b"raw\xff\xfename")
        .unwrap();
    assert_eq!(raw.mtime.sec, 4_102_444_800, "times after 2038 survive");
    let link = walk(&c, snap, &f.src.join("dir/link"));
    assert_eq!(c.readlink(link.ino).unwrap(), b"../small.txt");
}

#[test]
fn hard_links_share_an_inode_and_xattrs_show() {
    let f = fixture();
    let c = core(&f, Duration::from_secs(60));
    let snap = only_snapshot(&c);
    let a = walk(&c, snap, &f.src.join("small.txt"));
    let b = walk(&c, snap, &f.src.join("dir/hard"));
    assert_eq!(a.ino, b.ino);
    assert_eq!(a.nlink, 2);
    assert_eq!(c.listxattr(a.ino).unwrap(), Vec::<u8>::new());
    assert_eq!(
        c.getxattr(a.ino, b"user.none").unwrap_err().errno,
        libc::ENODATA
    );
    let big = walk(&c, snap, &f.src.join("dir/big.bin"));
    assert_eq!(c.listxattr(big.ino).unwrap(), b"user.cairn\0");
    assert_eq!(c.getxattr(big.ino, b"user.cairn").unwrap(), b"v\x00\xff");
}

#[test]
fn reads_at_random_offsets_equal_the_source() {
    let f = fixture();
    let c = core(&f, Duration::from_secs(60));
    let snap = only_snapshot(&c);
    let src = std::fs::read(f.src.join("dir/big.bin")).unwrap();
    let a = walk(&c, snap, &f.src.join("dir/big.bin"));
    let fh = c.open(a.ino).unwrap();
    let mut x = 12345u64;
    for _ in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 20) % (src.len() as u64 + 100);
        let len = ((x >> 8) % 300_000) as u32;
        let got = c.read(fh, off, len).unwrap();
        let s = (off as usize).min(src.len());
        let e = (s + len as usize).min(src.len());
        assert_eq!(got, &src[s..e], "offset {off} len {len}");
        // The kernel's no-open mode reads by inode, without a handle.
        let by_ino = c.read_ino(a.ino, off, len).unwrap();
        assert_eq!(by_ino, &src[s..e], "by inode: offset {off} len {len}");
    }
    c.release(fh);
    assert_eq!(c.seek_ino(a.ino, 0, true).unwrap(), 0);
    assert_eq!(c.seek_ino(a.ino, 0, false).unwrap(), src.len() as u64);
    let mut all = Vec::new();
    while let Ok(part) = c.read_ino(a.ino, all.len() as u64, 100_000) {
        if part.is_empty() {
            break;
        }
        all.extend_from_slice(&part);
    }
    assert_eq!(all, src, "sequential read by inode");
    assert_eq!(
        read_all(&c, a.ino, 128 << 10),
        src,
        "sequential read with prefetch"
    );
    assert!(c.chunk_cache_used() <= 8 << 20, "chunk cache stays bounded");
    let z = walk(&c, snap, &f.src.join("dir/deep/zeros"));
    assert_eq!(read_all(&c, z.ino, 4096), vec![0u8; 300_000]);
}

#[test]
fn inode_numbers_are_stable_across_sessions() {
    let f = fixture();
    let a = core(&f, Duration::from_secs(60));
    let b = core(&f, Duration::from_secs(60));
    for rel in ["dir", "dir/big.bin", "dir/deep/zeros", "dir/link"] {
        let p = f.src.join(rel);
        assert_eq!(
            walk(&a, only_snapshot(&a), &p).ino,
            walk(&b, only_snapshot(&b), &p).ino,
            "{rel}"
        );
    }
    let dir = walk(&a, only_snapshot(&a), &f.src.join("dir"));
    let listed: Vec<u64> = list(&a, dir.ino)
        .into_iter()
        .skip(2)
        .map(|(_, i, _)| i)
        .collect();
    let looked: Vec<u64> = ["big.bin", "deep", "hard", "link"]
        .iter()
        .map(|n| a.lookup(dir.ino, n.as_bytes()).unwrap().ino)
        .collect();
    assert_eq!(listed, looked, "readdir and lookup agree on numbers");
}

#[test]
fn readdir_resumes_at_offsets_and_forget_frees_inodes() {
    let f = fixture();
    let c = core(&f, Duration::from_secs(60));
    let dir = walk(&c, only_snapshot(&c), &f.src.join("dir"));
    let full = list(&c, dir.ino);
    let mut got = Vec::new();
    let mut offset = 0;
    loop {
        let mut page = Vec::new();
        c.readdir(dir.ino, offset, true, |it: &DirItem| {
            if page.len() == 2 {
                return true;
            }
            page.push((it.name.to_vec(), it.ino, it.kind, it.offset));
            false
        })
        .unwrap();
        let Some(last) = page.last() else { break };
        offset = last.3;
        got.extend(page.into_iter().map(|(n, i, k, _)| (n, i, k)));
    }
    assert_eq!(got, full);
    let before = c.known_inodes();
    for (name, ino, _) in full.iter().skip(2) {
        c.forget(*ino, 1);
        let _ = name;
    }
    assert!(
        c.known_inodes() <= before - 3,
        "forgotten entries are dropped"
    );
}

#[test]
fn new_snapshots_appear_after_refresh() {
    let f = fixture();
    let c = core(&f, Duration::from_millis(1));
    let snaps = c.lookup(ROOT_INO, b"snapshots").unwrap();
    assert_eq!(names(&c, snaps.ino).len(), 3);
    std::fs::write(f.src.join("new.txt"), b"new").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    snapshot(&f.repo, &f.src);
    std::thread::sleep(Duration::from_millis(5));
    let now = names(&c, snaps.ino);
    assert_eq!(now.len(), 4, "{now:?}");
    let latest = c.lookup(ROOT_INO, b"latest").unwrap();
    assert_eq!(
        c.readlink(latest.ino).unwrap(),
        format!("snapshots/{}", now[3]).into_bytes()
    );
}

#[test]
fn write_type_errors_and_damage_is_eio_with_the_object_named() {
    // The objects are damaged on disk after the mount has read their neighbours: no cached
    // copy of the raw pieces may hide that.
    let f = fixture_with(&OpenOptions {
        piece_cache_pieces: 0,
        ..repo_opts()
    });
    let logged = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = logged.clone();
    let opts = FsOptions {
        log: Some(Arc::new(move |m: &str| {
            sink.lock().unwrap().push(m.to_string())
        })),
        chunk_cache_bytes: 1 << 20,
        ..FsOptions::default()
    };
    let c = FsCore::new(f.repo.clone(), opts).unwrap();
    let snap = only_snapshot(&c);
    let a = walk(&c, snap, &f.src.join("dir/big.bin"));
    // Find the file's first chunk through the engine and damage it.
    let view = f.repo.reader().unwrap();
    let s = f.repo.find_snapshot("latest").unwrap();
    let path = f.src.join("dir/big.bin");
    let entry = f
        .repo
        .lookup(&view, &s.snapshot.root, path.as_os_str().as_bytes())
        .unwrap()
        .unwrap();
    let id = f.repo.extents(&view, &entry.content).unwrap()[0]
        .id
        .unwrap();
    drop(view);
    cairn_repo::testkit::damage_object(
        f.repo.local("test").unwrap(),
        &id,
        f.repo.config().piece_size,
        100,
    )
    .unwrap();
    // Damage made through a transaction is seen once the mount's reused read transaction
    // (at most 0.5 s old) is replaced.
    std::thread::sleep(Duration::from_millis(600));
    let fh = c.open(a.ino).unwrap();
    let err = c.read(fh, 0, 4096).unwrap_err();
    assert_eq!(err.errno, libc::EIO);
    assert!(
        err.detail.unwrap_or_default().contains(&id.to_hex()),
        "the log line names the object"
    );
    // A damaged tree: EIO on lookup, never ENOENT.
    let deep_entry = f
        .repo
        .lookup(
            &f.repo.reader().unwrap(),
            &s.snapshot.root,
            f.src.join("dir/deep").as_os_str().as_bytes(),
        )
        .unwrap()
        .unwrap();
    let tree = deep_entry.subtree.unwrap();
    cairn_repo::testkit::damage_object(
        f.repo.local("test").unwrap(),
        &tree,
        f.repo.config().piece_size,
        50,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let deep = walk(&c, snap, &f.src.join("dir/deep"));
    let err = c.lookup(deep.ino, b"zeros").unwrap_err();
    assert_eq!(err.errno, libc::EIO);
    assert!(err.detail.unwrap_or_default().contains(&tree.to_hex()));
    assert_eq!(c.open(deep.ino).unwrap_err().errno, libc::EISDIR);
}

#[test]
fn large_directory_lists_in_pages_and_forget_frees_every_inode() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("many");
    std::fs::create_dir(&src).unwrap();
    for i in 0..5000 {
        std::fs::write(src.join(format!("f{i:05}")), b"").unwrap();
    }
    let repo = backed_up(tmp.path(), &src);
    let c = FsCore::new(
        Arc::new(repo),
        FsOptions {
            tree_cache_bytes: 1 << 20,
            ..FsOptions::default()
        },
    )
    .unwrap();
    let dir = walk(&c, only_snapshot(&c), &src);
    let base = c.known_inodes();
    let (mut offset, mut seen) = (0, Vec::new());
    loop {
        let mut page = 0;
        c.readdir(dir.ino, offset, true, |it: &DirItem| {
            if page == 100 {
                return true;
            }
            page += 1;
            offset = it.offset;
            seen.push((it.name.to_vec(), it.ino));
            false
        })
        .unwrap();
        if page == 0 {
            break;
        }
    }
    assert_eq!(seen.len(), 5002, ". and .. and every entry exactly once");
    assert!(
        seen.windows(2).skip(2).all(|w| w[0].0 < w[1].0),
        "sorted, no repeats"
    );
    assert_eq!(
        c.known_inodes(),
        base + 5000,
        "readdirplus counts one reference per entry"
    );
    for (_, ino) in seen.iter().skip(2) {
        c.forget(*ino, 1);
    }
    assert_eq!(
        c.known_inodes(),
        base,
        "memory follows the kernel's references"
    );
}

/// Above its limit the core asks the kernel to drop the least recently looked-up entries, by
/// their real (parent, name), down to three quarters of the limit; a node leaves only when the
/// kernel forgets it, and the ones it still holds keep resolving.
#[test]
fn over_the_inode_limit_the_oldest_entries_are_handed_back_to_the_kernel() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("many");
    for d in 0..4 {
        std::fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for i in 0..500 {
            std::fs::write(src.join(format!("d{d}/f{i:03}")), b"x").unwrap();
        }
    }
    let repo = backed_up(tmp.path(), &src);
    let c = FsCore::new(
        Arc::new(repo),
        FsOptions {
            inode_bytes: 1,
            ..FsOptions::default()
        },
    )
    .unwrap();
    let limit = c.inode_limit();
    assert_eq!(limit, 1024, "the smallest limit");
    let top = walk(&c, only_snapshot(&c), &src);
    // Looked up in order: d0's files first, so they are the oldest.
    let mut by_place = std::collections::HashMap::new();
    let mut newest = (0, Vec::new());
    for d in 0..4 {
        let dir = c.lookup(top.ino, format!("d{d}").as_bytes()).unwrap();
        newest = (dir.ino, b"f499".to_vec());
        for i in 0..500 {
            let name = format!("f{i:03}").into_bytes();
            let a = c.lookup(dir.ino, &name).unwrap();
            by_place.insert((dir.ino, name), a.ino);
        }
    }
    let held = c.known_inodes();
    assert!(held > 2000, "{held}");
    let asked = Arc::new(Mutex::new(Vec::new()));
    let record = asked.clone();
    let evict: cairn_fs::Evictor = Arc::new(move |parent, name: &[u8]| {
        record.lock().unwrap().push((parent, name.to_vec()));
        true
    });
    assert_eq!(c.evict_oldest(&evict), held - limit * 3 / 4);
    let asked = std::mem::take(&mut *asked.lock().unwrap());
    let mut files = 0;
    for (parent, name) in &asked {
        match by_place.get(&(*parent, name.clone())) {
            Some(ino) => {
                files += 1;
                c.forget(*ino, 1); // what the kernel does once it has dropped the entry
            }
            None => {
                let name = String::from_utf8_lossy(name);
                assert!(
                    name.starts_with('d') || src.to_string_lossy().contains(&*name),
                    "asked for {name:?}: neither a looked-up file nor a directory above them"
                )
            }
        }
    }
    assert!(files > 1000, "{files} files asked for");
    assert!(!asked.contains(&newest), "the newest entry is kept");
    let last = by_place[&newest];
    assert!(c.known_inodes() <= limit, "{} held", c.known_inodes());
    assert_eq!(
        c.getattr(last).unwrap().size,
        1,
        "a held inode still resolves"
    );
    assert_eq!(
        c.evict_oldest(&evict),
        0,
        "within the limit nothing more is asked"
    );
}

#[test]
fn a_damaged_snapshot_is_skipped_and_named_not_fatal() {
    let f = fixture();
    let mut blobs = f.repo.local("test").unwrap().snapshot_blobs().unwrap();
    let (_, good) = blobs[0].clone();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    blobs.push((cairn_repo::Id([9; 32]), bad));
    let (ok, damaged) = cairn_fs::layout::decode_snapshots(&f.repo, blobs);
    assert_eq!(ok.len(), 1);
    assert_eq!(damaged.len(), 1);
    assert!(
        damaged[0].contains(&cairn_repo::Id([9; 32]).to_hex()),
        "{damaged:?}"
    );
}

#[test]
fn seek_data_and_hole_follow_the_stored_holes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("sparse");
    std::fs::create_dir(&src).unwrap();
    let path = src.join("file");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(&path).unwrap();
        f.seek(SeekFrom::Start(4 << 20)).unwrap();
        f.write_all(&noise(100_000, 3)).unwrap();
        f.set_len(12 << 20).unwrap();
    }
    let fd = std::fs::File::open(&path).unwrap();
    let os_seek = |off: i64, whence: i32| unsafe {
        libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&fd), off, whence)
    };
    let repo = backed_up(tmp.path(), &src);
    let c = FsCore::new(Arc::new(repo), FsOptions::default()).unwrap();
    let a = walk(&c, only_snapshot(&c), &path);
    let fh = c.open(a.ino).unwrap();
    let first_data = c.seek(fh, 0, true).unwrap();
    assert_eq!(
        first_data as i64,
        os_seek(0, libc::SEEK_DATA),
        "first data as on the source"
    );
    let hole_after = c.seek(fh, first_data, false).unwrap();
    assert_eq!(
        hole_after as i64,
        os_seek(first_data as i64, libc::SEEK_HOLE)
    );
    assert_eq!(
        c.seek(fh, hole_after, true).unwrap_err().errno,
        libc::ENXIO,
        "no data after the last hole"
    );
    assert_eq!(
        c.seek(fh, 12 << 20, false).unwrap_err().errno,
        libc::ENXIO,
        "past the end"
    );
    assert_eq!(c.read(fh, 0, 4096).unwrap(), vec![0u8; 4096]);
}

type Pushes = Arc<Mutex<Vec<(u64, u64, Vec<u8>)>>>;

/// A pusher that records what it is given: (inode, offset, bytes).
fn recording_pusher(c: &FsCore) -> Pushes {
    let pushed: Pushes = Arc::new(Mutex::new(Vec::new()));
    let p = pushed.clone();
    c.set_pusher(Arc::new(move |ino, offset, data: &[u8]| {
        p.lock().unwrap().push((ino, offset, data.to_vec()));
        true
    }));
    pushed
}

/// Wait until `pushed` holds `n` entries (pushes run on the prefetch pool), or a few seconds.
fn wait_for_pushes(pushed: &Pushes, n: usize) {
    for _ in 0..500 {
        if pushed.lock().unwrap().len() >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn reading_a_directory_in_order_pushes_the_next_small_files_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("walk");
    std::fs::create_dir(&src).unwrap();
    for i in 0..40u64 {
        let size = 1000 + 3000 * i as usize; // up to ~118 KiB: several chunks for some
        std::fs::write(src.join(format!("f{i:02}")), noise(size, i)).unwrap();
    }
    std::fs::write(src.join("f05big"), noise(1_500_000, 99)).unwrap(); // over the push limit
    std::fs::create_dir(src.join("f07dir")).unwrap();
    std::fs::write(src.join("f09empty"), b"").unwrap();
    let repo = backed_up(tmp.path(), &src);
    let c = FsCore::new(Arc::new(repo), FsOptions::default()).unwrap();
    let pushed = recording_pusher(&c);
    let dir = walk(&c, only_snapshot(&c), &src);
    let by_ino: std::collections::HashMap<u64, Vec<u8>> = list(&c, dir.ino)
        .into_iter()
        .filter(|(_, _, k)| *k == FileType::File)
        .map(|(name, ino, _)| (ino, std::fs::read(src.join(OsStrPath(&name))).unwrap()))
        .collect();
    let ino_of = |name: &str| walk(&c, dir.ino, Path::new(&format!("/{name}"))).ino;

    // A first read in a directory fetches a few files ahead, no more. (The file read is
    // pushed too: a read of its first chunk hands the whole chunk over.)
    assert_eq!(
        c.read_ino(ino_of("f00"), 0, 1 << 20).unwrap(),
        by_ino[&ino_of("f00")]
    );
    wait_for_pushes(&pushed, 4);
    std::thread::sleep(Duration::from_millis(100));
    let first: Vec<u64> = pushed.lock().unwrap().iter().map(|(i, _, _)| *i).collect();
    let want: Vec<u64> = ["f00", "f01", "f02", "f03"]
        .iter()
        .map(|n| ino_of(n))
        .collect();
    let mut got = first.clone();
    got.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(
        got, want_sorted,
        "the first read pushes the next three: {first:?}"
    );

    // Reading on in order pushes the following small files whole, skipping the big one,
    // the directory and the empty file.
    assert_eq!(
        c.read_ino(ino_of("f04"), 0, 1 << 20).unwrap(),
        by_ino[&ino_of("f04")]
    );
    wait_for_pushes(&pushed, 4 + 20);
    std::thread::sleep(Duration::from_millis(100));
    let all = pushed.lock().unwrap().clone();
    for (ino, offset, data) in &all {
        let want = by_ino
            .get(ino)
            .expect("only files of this directory are pushed");
        assert_eq!(*offset, 0);
        assert_eq!(data, want, "pushed bytes are the file's whole content");
    }
    let inos: std::collections::HashSet<u64> = all.iter().map(|(i, _, _)| *i).collect();
    for name in ["f05", "f06", "f10", "f20", "f30"] {
        assert!(inos.contains(&ino_of(name)), "{name} pushed");
    }
    for name in ["f05big", "f09empty", "f39"] {
        assert!(!inos.contains(&ino_of(name)), "{name} not pushed");
    }
}

/// A raw name as a relative path.
struct OsStrPath<'a>(&'a [u8]);
impl AsRef<Path> for OsStrPath<'_> {
    fn as_ref(&self) -> &Path {
        Path::new(std::ffi::OsStr::from_bytes(self.0))
    }
}

#[test]
fn a_listing_decodes_the_subdirectories_trees_ahead() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("top");
    for i in 0..6 {
        let d = src.join(format!("sub{i}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("file"), format!("content {i}")).unwrap();
    }
    let repo = backed_up(tmp.path(), &src);
    let repo = Arc::new(repo);
    // What listing every subdirectory by hand leaves in the tree cache...
    let by_hand = FsCore::new(repo.clone(), FsOptions::default()).unwrap();
    let top = walk(&by_hand, only_snapshot(&by_hand), &src);
    for i in 0..6 {
        let sub = by_hand
            .lookup(top.ino, format!("sub{i}").as_bytes())
            .unwrap();
        assert_eq!(list(&by_hand, sub.ino).len(), 3);
    }
    let want = by_hand.tree_cache_used();
    // ...a listing of the top directory alone brings in ahead of time.
    let c = FsCore::new(repo, FsOptions::default()).unwrap();
    let top = walk(&c, only_snapshot(&c), &src);
    assert_eq!(list(&c, top.ino).len(), 8);
    let before = c.tree_cache_used();
    assert!(before < want);
    c.listed(top.ino);
    let start = std::time::Instant::now();
    while c.tree_cache_used() < want && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        c.tree_cache_used(),
        want,
        "the six subdirectory trees were decoded"
    );
}

#[test]
fn a_sequential_reader_finds_the_next_chunks_pushed_on_whole_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("big");
    std::fs::create_dir(&src).unwrap();
    let data = noise(9_000_001, 7); // several chunks; the size is not a multiple of a page
    std::fs::write(src.join("file"), &data).unwrap();
    let repo = backed_up(tmp.path(), &src);
    let c = FsCore::new(Arc::new(repo), FsOptions::default()).unwrap();
    let pushed = recording_pusher(&c);
    let ino = walk(&c, only_snapshot(&c), &src.join("file")).ino;

    // A read far from the start is not sequential: nothing is pushed.
    let far = 6 << 20;
    assert_eq!(
        c.read_ino(ino, far, 4096).unwrap(),
        data[far as usize..][..4096]
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        pushed.lock().unwrap().is_empty(),
        "random access pushes nothing"
    );

    // Reading from the start, 128 KiB at a time like the kernel, hands chunks over ahead.
    let mut pos = 0;
    while pos < 2 << 20 {
        let part = c.read_ino(ino, pos, 128 << 10).unwrap();
        assert_eq!(part, data[pos as usize..pos as usize + part.len()]);
        pos += part.len() as u64;
    }
    wait_for_pushes(&pushed, 4);
    std::thread::sleep(Duration::from_millis(300));
    let all = pushed.lock().unwrap().clone();
    let mut covered = 0;
    for (i, offset, bytes) in &all {
        assert_eq!(*i, ino);
        let end = offset + bytes.len() as u64;
        assert_eq!(offset % 4096, 0, "pushes start on a page");
        assert!(
            end.is_multiple_of(4096) || end == data.len() as u64,
            "and end on one (or at EOF)"
        );
        assert_eq!(
            bytes[..],
            data[*offset as usize..end as usize],
            "the file's bytes"
        );
        covered += bytes.len();
    }
    assert!(
        covered > 4 << 20,
        "chunks beyond the read were pushed: {covered} bytes"
    );
}

#[test]
fn a_new_snapshot_reads_at_once_though_read_transactions_are_reused() {
    let f = fixture();
    let c = core(&f, Duration::from_millis(1));
    // Read something: a read transaction is now open and kept for reuse.
    let first = only_snapshot(&c);
    let a = walk(&c, first, &f.src.join("small.txt"));
    assert!(!read_all(&c, a.ino, 4096).is_empty());
    // A new snapshot with new objects, read at once (well within the reuse time).
    std::fs::write(f.src.join("fresh.bin"), noise(300_000, 42)).unwrap();
    snapshot(&f.repo, &f.src);
    std::thread::sleep(Duration::from_millis(5));
    let latest = c.lookup(ROOT_INO, b"latest").unwrap();
    let target = String::from_utf8(c.readlink(latest.ino).unwrap()).unwrap();
    let snap = walk(&c, ROOT_INO, Path::new(&format!("/{target}")));
    let fresh = walk(&c, snap.ino, &f.src.join("fresh.bin"));
    assert_eq!(read_all(&c, fresh.ino, 65536), noise(300_000, 42));
}

/// Issue 13: `history/<path>`. `report.txt` has three contents over five snapshots (a chmod
/// and a touch alone are no new version), `gone.txt` is deleted after the second, `only.txt`
/// exists in the third only.
struct HistoryFixture {
    _tmp: tempfile::TempDir,
    repo: Arc<Repository>,
    docs: PathBuf,
    /// Snapshot names, oldest first.
    names: Vec<String>,
}

const REPORT: [&[u8]; 5] = [
    b"one\n",
    b"one\n",
    b"two two\n",
    b"two two\n",
    b"three three three\n",
];

fn history_fixture() -> HistoryFixture {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("src/docs");
    std::fs::create_dir_all(&docs).unwrap();
    // No piece cache: one test damages trees this process has read, and the mount must see it.
    let opts = OpenOptions {
        piece_cache_pieces: 0,
        ..repo_opts()
    };
    let repo = Repository::init(&tmp.path().join("repo"), b"pw", &opts).unwrap();
    for (i, content) in REPORT.iter().enumerate() {
        let report = docs.join("report.txt");
        if i == 0 || REPORT[i - 1] != *content {
            std::fs::write(&report, content).unwrap();
        }
        match i {
            0 => std::fs::write(docs.join("gone.txt"), b"bye").unwrap(),
            1 => std::fs::set_permissions(&report, std::fs::Permissions::from_mode(0o600)).unwrap(),
            2 => {
                std::fs::remove_file(docs.join("gone.txt")).unwrap();
                std::fs::write(docs.join("only.txt"), b"once").unwrap();
            }
            3 => {
                std::fs::remove_file(docs.join("only.txt")).unwrap();
                set_times(&report, 1_000_000_000, 5);
            }
            _ => {}
        }
        snapshot(&repo, &tmp.path().join("src"));
    }
    let repo = Arc::new(repo);
    let c = FsCore::new(repo.clone(), FsOptions::default()).unwrap();
    let snaps = c.lookup(ROOT_INO, b"snapshots").unwrap();
    let names = names(&c, snaps.ino)[2..].to_vec();
    assert_eq!(names.len(), 5);
    HistoryFixture {
        _tmp: tmp,
        repo,
        docs,
        names,
    }
}

#[test]
fn history_shows_each_distinct_version_once_with_its_bytes_and_keeps_deleted_files() {
    let h = history_fixture();
    let c = FsCore::new(h.repo.clone(), FsOptions::default()).unwrap();
    let history = c.lookup(ROOT_INO, b"history").unwrap();
    assert_eq!(history.kind, FileType::Dir);
    let top = h.docs.components().nth(1).unwrap();
    assert_eq!(
        names(&c, history.ino)[2..],
        [top.as_os_str().to_string_lossy().into_owned()]
    );
    let docs = walk(&c, history.ino, &h.docs);
    assert_eq!(
        names(&c, docs.ino)[2..],
        ["gone.txt", "only.txt", "report.txt"],
        "the union of the names in every snapshot"
    );
    let report = c.lookup(docs.ino, b"report.txt").unwrap();
    assert_eq!(report.kind, FileType::Dir);
    let versions = names(&c, report.ino)[2..].to_vec();
    let want: Vec<String> = [0, 2, 4]
        .iter()
        .map(|i| format!("{}.txt", h.names[*i]))
        .collect();
    assert_eq!(
        versions, want,
        "three contents, each named by its first snapshot"
    );
    for (v, i) in versions.iter().zip([0, 2, 4]) {
        let a = c.lookup(report.ino, v.as_bytes()).unwrap();
        assert_eq!(a.kind, FileType::File);
        assert_eq!(a.size, REPORT[i].len() as u64);
        assert_eq!(read_all(&c, a.ino, 3), REPORT[i], "{v}");
        assert!(c.immutable(a.ino), "a version never changes");
    }
    // Each version shows the metadata stored where it first appeared: mode 0644 then the
    // chmod's 0600 (the chmod alone made no version).
    let first = c.lookup(report.ino, want[0].as_bytes()).unwrap();
    let second = c.lookup(report.ino, want[1].as_bytes()).unwrap();
    assert_eq!((first.perm & 0o777, second.perm & 0o777), (0o644, 0o600));
    assert_eq!(
        report.perm, 0o500,
        "the newest version's read bits, searchable"
    );
    let gone = c.lookup(docs.ino, b"gone.txt").unwrap();
    let gone_versions = names(&c, gone.ino)[2..].to_vec();
    assert_eq!(gone_versions, [format!("{}.txt", h.names[0])]);
    let v = c.lookup(gone.ino, gone_versions[0].as_bytes()).unwrap();
    assert_eq!(
        read_all(&c, v.ino, 4096),
        b"bye",
        "a deleted file keeps its history"
    );
    // Paths in no snapshot, and names that are no version: ENOENT.
    assert_eq!(c.lookup(docs.ino, b"nope").unwrap_err().errno, libc::ENOENT);
    assert_eq!(
        c.lookup(report.ino, b"2001-01-01_00-00-00.txt")
            .unwrap_err()
            .errno,
        libc::ENOENT
    );
    assert_eq!(
        c.lookup(history.ino, b"nowhere").unwrap_err().errno,
        libc::ENOENT
    );
    // Same numbers in a new session.
    let again = FsCore::new(h.repo.clone(), FsOptions::default()).unwrap();
    let h2 = again.lookup(ROOT_INO, b"history").unwrap();
    let r2 = walk(&again, h2.ino, &h.docs.join("report.txt"));
    assert_eq!(r2.ino, report.ino);
    assert_eq!(
        again.lookup(r2.ino, want[2].as_bytes()).unwrap().ino,
        c.lookup(report.ino, want[2].as_bytes()).unwrap().ino
    );
}

#[test]
fn history_through_a_damaged_tree_is_eio_named_and_the_other_versions_stay_readable() {
    let h = history_fixture();
    let snaps = h.repo.snapshots().unwrap();
    // The docs directory's tree in the third snapshot (only it holds only.txt).
    let view = h.repo.reader().unwrap();
    let tree = h
        .repo
        .lookup(
            &view,
            &snaps[2].snapshot.root,
            h.docs.as_os_str().as_bytes(),
        )
        .unwrap()
        .unwrap()
        .subtree
        .unwrap();
    drop(view);
    cairn_repo::testkit::damage_object(
        h.repo.local("test").unwrap(),
        &tree,
        h.repo.config().piece_size,
        40,
    )
    .unwrap();
    let logged = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = logged.clone();
    let c = FsCore::new(
        h.repo.clone(),
        FsOptions {
            log: Some(Arc::new(move |m: &str| {
                sink.lock().unwrap().push(m.to_string())
            })),
            ..FsOptions::default()
        },
    )
    .unwrap();
    let history = c.lookup(ROOT_INO, b"history").unwrap();
    let docs = walk(&c, history.ino, &h.docs);
    assert_eq!(names(&c, docs.ino)[2..], ["gone.txt", "report.txt"]);
    let err = c.lookup(docs.ino, b"only.txt").unwrap_err();
    assert_eq!(
        err.errno,
        libc::EIO,
        "not ENOENT: the damaged tree may hold it"
    );
    assert!(err.detail.unwrap_or_default().contains(&tree.to_hex()));
    assert!(
        logged
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains(&tree.to_hex())),
        "the log names the tree: {:?}",
        logged.lock().unwrap()
    );
    // "two two" is now first seen in the fourth snapshot; every content is still there.
    let report = c.lookup(docs.ino, b"report.txt").unwrap();
    let versions = names(&c, report.ino)[2..].to_vec();
    let want: Vec<String> = [0, 3, 4]
        .iter()
        .map(|i| format!("{}.txt", h.names[*i]))
        .collect();
    assert_eq!(versions, want);
    for (v, i) in versions.iter().zip([0, 3, 4]) {
        let a = c.lookup(report.ino, v.as_bytes()).unwrap();
        assert_eq!(read_all(&c, a.ino, 4096), REPORT[i]);
    }
}

/// 1,000 snapshots of one unchanged tree: the history of a file is one version, and finding it
/// costs the tree cache what one snapshot's path costs, however many snapshots.
#[test]
fn history_over_a_thousand_identical_snapshots_costs_one_snapshots_trees() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/b/f.txt"), b"same").unwrap();
    let repo = Arc::new(backed_up(tmp.path(), &src));
    let s = repo.snapshots().unwrap().remove(0).snapshot;
    let sealed: Vec<_> = (1..1000)
        .map(|i| {
            let mut snap = s.clone();
            snap.time.sec += i;
            repo.seal_snapshot(&snap).unwrap()
        })
        .collect();
    cairn_repo::testkit::commit_snapshots(repo.storage(), &sealed).unwrap();
    let one = FsCore::new(repo.clone(), FsOptions::default()).unwrap();
    let snap = one.lookup(ROOT_INO, b"latest").unwrap();
    let target = String::from_utf8(one.readlink(snap.ino).unwrap()).unwrap();
    let snap = walk(&one, ROOT_INO, Path::new(&format!("/{target}")));
    walk(&one, snap.ino, &src.join("a/b/f.txt"));

    let c = FsCore::new(repo.clone(), FsOptions::default()).unwrap();
    assert_eq!(c.layout().snaps.len(), 1000);
    let t = std::time::Instant::now();
    let history = c.lookup(ROOT_INO, b"history").unwrap();
    let f = walk(&c, history.ino, &src.join("a/b/f.txt"));
    let versions = names(&c, f.ino);
    let took = t.elapsed();
    assert_eq!(versions.len(), 3, "one version: {versions:?}");
    assert_eq!(
        c.tree_cache_used(),
        one.tree_cache_used(),
        "the trees of one snapshot's path"
    );
    eprintln!("history of a file over 1,000 identical snapshots: {took:?}");
}

/// A version stays readable through an open handle after its snapshot is forgotten; the
/// history then no longer lists it.
#[test]
fn a_history_version_open_when_its_snapshot_is_forgotten_reads_until_closed() {
    let h = history_fixture();
    let c = core_of(&h.repo);
    let history = c.lookup(ROOT_INO, b"history").unwrap();
    let report = walk(&c, history.ino, &h.docs.join("report.txt"));
    let first = format!("{}.txt", h.names[0]);
    let v = c.lookup(report.ino, first.as_bytes()).unwrap();
    let fh = c.open(v.ino).unwrap();
    let snaps = h.repo.snapshots().unwrap();
    h.repo
        .local("test")
        .unwrap()
        .remove_snapshots(&[snaps[0].id, snaps[1].id])
        .unwrap();
    c.refresh().unwrap();
    assert_eq!(c.read(fh, 0, 4096).unwrap(), REPORT[0]);
    c.release(fh);
    // Names are those of the remaining snapshots (same-second suffixes may have moved).
    let snaps = c.lookup(ROOT_INO, b"snapshots").unwrap();
    let now = names(&c, snaps.ino)[2..].to_vec();
    assert_eq!(now.len(), 3);
    assert_eq!(
        names(&c, report.ino)[2..],
        [format!("{}.txt", now[0]), format!("{}.txt", now[2])]
    );
}

fn core_of(repo: &Arc<Repository>) -> FsCore {
    FsCore::new(repo.clone(), FsOptions::default()).unwrap()
}
