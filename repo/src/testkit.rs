//! Helpers shared by the test suites of the workspace (engine, filesystem, command line) and
//! the benchmarks. Nothing here is for real repositories.

use crate::crypto::KdfParams;
use crate::repo::OpenOptions;

/// Open options whose new key slots use a deliberately weak Argon2 setting, so that tests
/// creating hundreds of repositories stay fast. INSECURE: never for real data.
pub fn insecure_fast_kdf() -> OpenOptions {
    OpenOptions {
        kdf: Some(KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            salt: [7; 16],
        }),
        ..OpenOptions::default()
    }
}

/// Deterministic, incompressible bytes (xorshift64) for test files.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A valid config with tiny chunk and piece sizes, for stores made directly in unit tests.
pub fn small_config() -> crate::format::Config {
    crate::format::Config {
        repo_id: [5; 16],
        chunk_min: 64,
        chunk_avg: 256,
        chunk_max: 1024,
        piece_size: 64 << 10,
        pack_max: 256 << 10,
        created: 0,
    }
}
