//! What `cairn --version` says: the program's version and the repository format and sync
//! protocol versions it reads and writes, so that whoever runs a server (`cairn serve`) can
//! tell at a glance whether a client and a server fit together.

use cairn_repo::format::CONFIG_VERSION;
use cairn_repo::storage::REDB_LAYOUT_VERSION;
use cairn_repo::sync::proto::{MIN_VERSION, SYNC_VERSION, VERSION};
use std::sync::LazyLock;

static TEXT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} (repository format {CONFIG_VERSION}, redb layout {REDB_LAYOUT_VERSION}, protocol {VERSION}: \
         sync {SYNC_VERSION}, store {VERSION}; serves protocol {})",
        env!("CARGO_PKG_VERSION"),
        served_range()
    )
});

/// The protocol versions `cairn serve` answers: `1-4`, or `4` when there is only one.
fn served_range() -> String {
    if MIN_VERSION == VERSION {
        VERSION.to_string()
    } else {
        format!("{MIN_VERSION}-{VERSION}")
    }
}

/// The version line's text after `cairn `, e.g.
/// `0.1.0 (repository format 2, redb layout 1, protocol 4: sync 2, store 4; serves protocol 1-4)`.
pub fn text() -> &'static str {
    &TEXT
}
