//! cairn-fs: the read-only filesystem over a Cairn repository.
//!
//! `core` serves every operation in plain terms (inode numbers, byte names, `Attr`) and is
//! tested without a mount; `fuse` is the only file that knows fuser. What the mount shows and
//! promises is in `SEMANTICS.md`.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod cache;
pub mod core;
pub mod error;
pub mod fuse;
mod history;
mod inodes;
pub mod layout;
pub mod node;
mod pool;
mod read;
mod source;

pub use crate::core::{DirItem, Evictor, FsCore, FsOptions, Logger};
pub use crate::error::{FsError, FsResult};
pub use crate::node::{Attr, ROOT_INO};
