//! The client side of the sync protocol: a hostile server's replies (the input, as a byte
//! stream) to a handshake and a whole sync from a small real repository. Any outcome but a
//! panic (or a hang: the stream ends) is fine.
#![no_main]
use cairn_repo::sync::{self, StreamTarget, SyncOptions, SyncProgress, SyncReport};
use cairn_repo::Repository;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn primary() -> &'static (tempfile::TempDir, Repository) {
    static P: OnceLock<(tempfile::TempDir, Repository)> = OnceLock::new();
    P.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        for i in 0..5 {
            std::fs::write(src.join(format!("d/f{i}")), format!("file {i} ").repeat(100)).unwrap();
        }
        let repo = Repository::init(
            &tmp.path().join("repo"),
            b"fuzz",
            &cairn_repo::testkit::insecure_fast_kdf(),
        )
        .unwrap();
        let o = cairn_repo::backup::BackupOptions {
            paths: vec![src],
            ..Default::default()
        };
        cairn_repo::backup::backup(&repo, &o, &Default::default()).unwrap();
        (tmp, repo)
    })
}

fuzz_target!(|data: &[u8]| {
    let (_, repo) = primary();
    let mut target = StreamTarget::new(data, std::io::sink());
    if target.handshake(repo).is_err() {
        return;
    }
    let _ = sync::sync(
        repo,
        &mut target,
        &SyncOptions::default(),
        &SyncProgress::default(),
        &mut SyncReport::default(),
    );
});
