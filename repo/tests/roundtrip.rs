//! Property test: restore(backup(tree)) == tree for generated trees, through the engine API.

use cairn_repo::backup::{backup, BackupOptions, Progress};
use cairn_repo::restore::{restore, Overwrite, RestoreOptions, RestoreProgress};
use cairn_repo::{OpenOptions, Repository};
use proptest::prelude::*;
use std::path::Path;

fn fast_open() -> OpenOptions {
    cairn_repo::testkit::insecure_fast_kdf()
}

#[derive(Debug, Clone)]
enum Node {
    File(Vec<u8>, u32),
    Dir(Vec<(String, Node)>),
    Link(String),
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (
            proptest::collection::vec(any::<u8>(), 0..3000),
            prop_oneof![Just(0o644u32), Just(0o600), Just(0o755), Just(0o4755)]
        )
            .prop_map(|(d, m)| Node::File(d, m)),
        "[a-z]{1,8}".prop_map(Node::Link),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        proptest::collection::btree_map("[a-zA-Z0-9_.-]{1,12}", inner, 0..5).prop_map(|m| {
            Node::Dir(
                m.into_iter()
                    .filter(|(k, _)| k != "." && k != "..")
                    .collect(),
            )
        })
    })
}

fn write(path: &Path, n: &Node) {
    use std::os::unix::fs::PermissionsExt;
    match n {
        Node::File(d, mode) => {
            std::fs::write(path, d).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        Node::Link(t) => std::os::unix::fs::symlink(t, path).unwrap(),
        Node::Dir(children) => {
            std::fs::create_dir(path).unwrap();
            for (name, c) in children {
                write(&path.join(name), c);
            }
        }
    }
}

fn same(a: &Path, b: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let (ma, mb) = (
        std::fs::symlink_metadata(a).unwrap(),
        std::fs::symlink_metadata(b).map_err(|e| format!("{}: {e}", b.display()))?,
    );
    if ma.mode() != mb.mode()
        || (!ma.is_dir() && ma.mtime_nsec() != mb.mtime_nsec())
        || ma.mtime() != mb.mtime()
    {
        return Err(format!("metadata of {} differs", a.display()));
    }
    if ma.file_type().is_symlink() {
        if std::fs::read_link(a).unwrap() != std::fs::read_link(b).unwrap() {
            return Err(format!("link {} differs", a.display()));
        }
    } else if ma.is_file() {
        if std::fs::read(a).unwrap() != std::fs::read(b).unwrap() {
            return Err(format!("content of {} differs", a.display()));
        }
    } else {
        let mut na: Vec<_> = std::fs::read_dir(a)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let mut nb: Vec<_> = std::fs::read_dir(b)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        na.sort();
        nb.sort();
        if na != nb {
            return Err(format!("entries of {} differ", a.display()));
        }
        for n in na {
            same(&a.join(&n), &b.join(&n))?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn restore_of_backup_equals_source(children in proptest::collection::btree_map("[a-z]{1,6}", node(), 1..6)) {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        write(&src, &Node::Dir(children.into_iter().collect()));
        let repo = Repository::init(&t.path().join("repo"), b"pw", &fast_open()).unwrap();
        let opts = BackupOptions { paths: vec![src.clone()], ..BackupOptions::default() };
        let report = backup(&repo, &opts, &Progress::default()).unwrap();
        prop_assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        let out = t.path().join("out");
        let ropts = RestoreOptions { target: out.clone(), includes: vec![], overwrite: Overwrite::Always, threads: 0 };
        restore(&repo, &report.snapshot.root, &ropts, &RestoreProgress::default()).unwrap();
        let restored = out.join(src.strip_prefix("/").unwrap());
        prop_assert_eq!(same(&src, &restored), Ok(()));
    }
}

#[test]
fn chunk_boundaries_are_stable_and_keyed() {
    // The same content in two files of one repository dedups; an insertion early in a file
    // changes only the chunks around it.
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut data = vec![0u8; 12 << 20];
    let mut x: u64 = 88172645463325252;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(src.join("a"), &data).unwrap();
    let repo = Repository::init(&t.path().join("repo"), b"pw", &fast_open()).unwrap();
    let opts = BackupOptions {
        paths: vec![src.clone()],
        ..BackupOptions::default()
    };
    let first = backup(&repo, &opts, &Progress::default()).unwrap();
    assert_eq!(
        stored_chunk_lengths(&repo, &first.snapshot.root, &src.join("a")),
        whole_stream_chunk_lengths(&repo, &data),
        "reading the file in pieces cuts it exactly where chunking it whole does"
    );
    let mut shifted = b"an insertion at the front".to_vec();
    shifted.extend_from_slice(&data);
    std::fs::write(src.join("a"), &shifted).unwrap();
    let second = backup(&repo, &opts, &Progress::default()).unwrap();
    let added = second.snapshot.stats.bytes_added;
    assert!(
        added < first.snapshot.stats.bytes_added / 3,
        "only the first chunk(s) are new: {added}"
    );
}

/// The chunk lengths of the file at absolute `path` in the snapshot with root tree `root`.
fn stored_chunk_lengths(repo: &Repository, root: &cairn_repo::Id, path: &Path) -> Vec<u64> {
    let view = repo.reader().unwrap();
    let mut tree = repo.load_tree(&view, root).unwrap();
    let names: Vec<_> = path.components().skip(1).collect();
    for (i, name) in names.iter().enumerate() {
        let name = name.as_os_str().as_encoded_bytes();
        let e = tree
            .entries
            .iter()
            .find(|e| e.name == name)
            .unwrap()
            .clone();
        if i + 1 == names.len() {
            let extents = repo.extents(&view, &e.content).unwrap();
            return extents.iter().map(|x| x.len).collect();
        }
        tree = repo.load_tree(&view, &e.subtree.unwrap()).unwrap();
    }
    unreachable!("empty path")
}

/// The chunk lengths FastCDC gives `data` as one stream, with the repository's parameters.
fn whole_stream_chunk_lengths(repo: &Repository, data: &[u8]) -> Vec<u64> {
    let c = repo.config();
    fastcdc::v2020::FastCDC::with_level_and_seed(
        data,
        c.chunk_min as usize,
        c.chunk_avg as usize,
        c.chunk_max as usize,
        fastcdc::v2020::Normalization::Level1,
        repo.keys().chunker_seed(),
    )
    .map(|c| c.length as u64)
    .collect()
}

#[test]
fn the_repository_file_stays_within_3_percent_of_what_it_stores() {
    // Incompressible data in large chunks: nearly all of the file is pieces, so a piece that
    // stopped fitting its 1 MiB allocation (a redb layout change) would double the file.
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4 {
        let data = cairn_repo::testkit::noise(i, 10 << 20);
        std::fs::write(src.join(format!("f{i}")), data).unwrap();
    }
    let repo = Repository::init(&t.path().join("repo"), b"pw", &fast_open()).unwrap();
    let opts = BackupOptions {
        paths: vec![src],
        ..BackupOptions::default()
    };
    backup(&repo, &opts, &Progress::default()).unwrap();
    let s = repo.local("test").unwrap().space().unwrap();
    let ratio = s.file_bytes as f64 / s.object_bytes as f64;
    assert!(
        (1.0..1.03).contains(&ratio),
        "file {} bytes for {} stored: {ratio:.3}",
        s.file_bytes,
        s.object_bytes
    );
}
