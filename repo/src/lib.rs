//! cairn-repo: the Cairn repository engine. No command-line parsing, no printing, no exits:
//! callers get values and typed errors. The format is specified in `DESIGN.md`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod backup;
pub mod check;
pub mod crypto;
pub mod diff;
pub(crate) mod error;
pub mod forget;
pub mod format;
pub(crate) mod fsmeta;
pub mod graph;
pub(crate) mod id;
pub mod prune;
pub mod reach;
pub mod reader;
pub(crate) mod repo;
pub mod restore;
mod restore_batch;
pub mod storage;
pub mod sync;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod util;

pub use error::{Error, Result};
pub use format::{Content, Entry, Extent, FileType, Snapshot, Time, Tree};
pub use id::Id;
pub use repo::{OpenOptions, Repository, SnapshotEntry};
