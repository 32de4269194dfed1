//! The sealed-object envelope parser (version, nonce, tag, codec, zstd frame) on hostile bytes.
#![no_main]
use cairn_repo::crypto::{Kind, MasterKeys};
use cairn_repo::Id;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static KEYS: OnceLock<MasterKeys> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let keys = KEYS.get_or_init(MasterKeys::random);
    let id = Id([7; 32]);
    let _ = keys.open(Kind::Chunk, &id, data);
    let _ = keys.open_verified(Kind::Tree, &id, data);
});
