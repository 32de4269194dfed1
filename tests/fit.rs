//! Everyday fit: `cairn --version`, shell completions, manual pages and `scripts/install`.

mod common;

use common::*;
use std::process::Command;

fn expected_version() -> String {
    use cairn_repo::sync::proto::{MIN_VERSION, VERSION};
    let served = if MIN_VERSION == VERSION {
        VERSION.to_string()
    } else {
        format!("{MIN_VERSION}-{VERSION}")
    };
    format!(
        "cairn {} (repository format {}, sync protocol {VERSION}; serves sync protocol {served})",
        env!("CARGO_PKG_VERSION"),
        cairn_repo::store::FORMAT_VERSION,
    )
}

#[test]
fn version_names_repository_format_and_sync_protocols() {
    for flag in ["--version", "-V"] {
        let out = ok(Command::new(bin()).arg(flag), 0);
        assert_eq!(out.trim_end(), expected_version(), "cairn {flag}");
    }
    assert!(expected_version().contains(&format!(
        "repository format {}",
        cairn_repo::store::FORMAT_VERSION
    )));
}
