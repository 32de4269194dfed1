//! Every plaintext decoder must return an error, never panic or allocate without bound, on
//! hostile bytes. Run: `cargo +nightly fuzz run decode_objects -- -max_total_time=60`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cairn_repo::format::Tree::decode(data);
    let _ = cairn_repo::format::Snapshot::decode(data);
    let _ = cairn_repo::format::Config::decode(data);
    let _ = cairn_repo::format::decode_list(data);
});
