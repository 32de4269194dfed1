//! The key-free side of format 2 on hostile bytes: the public-reference parser, and a whole
//! key-free verification walk (`reach::check_reachable`) over a store whose snapshot names a
//! tree holding the input (what a damaged or hostile store could hold). Any outcome but a
//! panic is fine.
#![no_main]
use cairn_repo::crypto::{Kind, SEAL_VERSION_PUBLIC};
use cairn_repo::graph::{public_refs, Refs};
use cairn_repo::storage::memory::MemoryStore;
use cairn_repo::storage::{Storage, WriterOptions};
use cairn_repo::{Id, Repository};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Refs::decode(data);
    let _ = public_refs(&Id([0; 32]), data);
    let tree = Id([1; 32]);
    let public = Refs {
        time: 1,
        trees: vec![tree],
        ..Refs::default()
    }
    .encode();
    let mut snapshot = vec![SEAL_VERSION_PUBLIC];
    snapshot.extend_from_slice(&(public.len() as u32).to_le_bytes());
    snapshot.extend_from_slice(&public);
    snapshot.extend_from_slice(&[0; 41]);
    let store = MemoryStore::new(Repository::new_config());
    let Ok(mut w) = store.writer(WriterOptions::default()) else {
        return;
    };
    if w.add(tree, Kind::Tree, data).is_err() || w.commit(&[(Id([2; 32]), snapshot)]).is_err() {
        return;
    }
    drop(w);
    let _ = cairn_repo::reach::check_reachable(&store);
});
