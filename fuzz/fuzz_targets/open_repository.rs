//! The repository open path on damaged files: a small real repository is made once, then each
//! input patches its database file (pairs of offset and bytes) before every reading step runs
//! on it: open, unlock, snapshots, a walk of every tree, a read-data check, a key-less storage
//! check. Any outcome but a panic is fine; redb's own panics on hostile pages are what
//! `Error::guard` must turn into errors.
#![no_main]
use cairn_repo::check::{check, check_storage, CheckOptions};
use cairn_repo::{OpenOptions, Repository};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

const PW: &[u8] = b"fuzz";

fn fixture() -> &'static (tempfile::TempDir, Vec<u8>) {
    static F: OnceLock<(tempfile::TempDir, Vec<u8>)> = OnceLock::new();
    F.get_or_init(|| {
        // redb panics on hostile pages and `Error::guard` catches them; libfuzzer-sys's hook
        // would abort at the panic itself. A panic that escapes the guards still ends the
        // run, since the fuzz target's own catch aborts.
        std::panic::set_hook(Box::new(|_| {}));
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        for i in 0..20 {
            std::fs::write(src.join(format!("d/f{i}")), format!("file {i} ").repeat(100)).unwrap();
        }
        std::fs::write(src.join("big"), cairn_repo::testkit::noise(1, 600 << 10)).unwrap();
        let dir = tmp.path().join("repo");
        let repo = Repository::init(&dir, PW, &cairn_repo::testkit::insecure_fast_kdf()).unwrap();
        let o = cairn_repo::backup::BackupOptions {
            paths: vec![src],
            ..Default::default()
        };
        cairn_repo::backup::backup(&repo, &o, &Default::default()).unwrap();
        drop(repo);
        let bytes = std::fs::read(dir.join("cairn.redb")).unwrap();
        (tmp, bytes)
    })
}

fuzz_target!(|data: &[u8]| {
    let (tmp, base) = fixture();
    let mut bytes = base.clone();
    // Patches: u32 offset (modulo the length), u8 length, then that many bytes.
    let mut d = data;
    while d.len() >= 5 {
        let off = u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as usize % bytes.len();
        let n = (d[4] as usize).min(d.len() - 5);
        let end = (off + n).min(bytes.len());
        bytes[off..end].copy_from_slice(&d[5..5 + (end - off)]);
        d = &d[5 + n..];
    }
    if d.len() == 1 {
        // A last lone byte cuts the file: by that many pages.
        let cut = (d[0] as usize * 4096).min(bytes.len());
        bytes.truncate(bytes.len() - cut);
    }
    let dir: PathBuf = tmp.path().join("case");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cairn.redb"), &bytes).unwrap();
    let _ = check_storage(&dir);
    if let Ok(repo) = Repository::open(&dir, PW, &OpenOptions::default()) {
        let _ = repo.snapshots_tolerant();
        let _ = check(
            &repo,
            &CheckOptions {
                read_data: true,
                subset_percent: None,
            },
        );
    }
});
