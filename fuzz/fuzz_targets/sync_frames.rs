//! The sync protocol's framing and message decoders on hostile bytes, as a peer would send them.
#![no_main]
use cairn_repo::sync::proto::{read_frame, Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while let Ok(Some(frame)) = read_frame(&mut r) {
        let _ = cairn_repo::sync::proto::decode::<Request>(&frame);
        let _ = cairn_repo::sync::proto::decode::<Response>(&frame);
    }
});
