//! The client of the store protocol (`--repo ssh://…`): a server that opens properly and then
//! answers every request with the input bytes. Any outcome but a panic (or a hang: the stream
//! ends) is fine.
#![no_main]
use cairn_repo::crypto::Kind;
use cairn_repo::format::Config;
use cairn_repo::storage::remote::{Connector, RemoteStore};
use cairn_repo::storage::{Mark, PruneOptions, Storage, WriterOptions};
use cairn_repo::sync::proto::{self, Response};
use cairn_repo::Id;
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::io::{Read, Write};

struct Garbage(Vec<u8>);

impl Connector for Garbage {
    fn connect(&self) -> cairn_repo::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        let config = Config {
            repo_id: [1; 16],
            chunk_min: 64,
            chunk_avg: 256,
            chunk_max: 1024,
            piece_size: 1 << 16,
            pack_max: 1 << 20,
            created: 0,
        };
        let mut stream = Vec::new();
        for r in [
            Response::StoreOpened {
                version: proto::VERSION,
                append_only: false,
            },
            Response::Blob(config.encode()),
        ] {
            proto::write_msg(&mut stream, &r).unwrap();
        }
        stream.extend_from_slice(&self.0);
        Ok((Box::new(std::io::Cursor::new(stream)), Box::new(std::io::sink())))
    }

    fn label(&self) -> String {
        "fuzz".into()
    }
}

struct NoMarks;

impl Mark for NoMarks {
    fn mark(&mut self, _: &[Id]) -> cairn_repo::Result<HashSet<Id>> {
        Ok(HashSet::new())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(store) = RemoteStore::open(Box::new(Garbage(data.to_vec()))) else {
        return;
    };
    let (a, b) = (Id([1; 32]), Id([2; 32]));
    let _ = store.key_slots();
    let _ = store.snapshots();
    let _ = store.state("check.last");
    let _ = store.space();
    if let Ok(r) = store.reader() {
        let _ = r.contains(&[a, b]);
        let _ = r.read(&a);
        let _ = r.info(&a);
        let _ = r.read_many(&[a, b], &mut |_, _| Ok(()));
        let _ = r.list(&Id::default(), 100);
        let _ = r.count();
    }
    if let Ok(mut w) = store.writer(WriterOptions::default()) {
        let _ = w.add(a, Kind::Chunk, b"abc");
        let _ = w.commit(&[(b, b"s".to_vec())]);
    }
    let opts = PruneOptions {
        wait: std::time::Duration::ZERO,
        ..Default::default()
    };
    let _ = store.collect_garbage(&mut NoMarks, &opts, &|_| {});
});
