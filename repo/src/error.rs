//! Errors the engine reports. Callers match on the variant (the CLI maps them to exit codes);
//! every message says what is wrong and, where it helps, what to do.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no Cairn repository at {path}: {reason}")]
    RepoNotFound { path: PathBuf, reason: String },
    #[error("a repository already exists at {0}; choose another path or use it as it is")]
    RepoExists(PathBuf),
    #[error("wrong password: no key slot of the repository at {0} opens with it")]
    WrongPassword(PathBuf),
    #[error(
        "repository {path} is locked by another process ({reason}); try again when it is done"
    )]
    Locked { path: PathBuf, reason: String },
    #[error(
        "object {id} is damaged: {reason}; run `cairn check --read-data` to see what depends on it"
    )]
    Corrupt { id: String, reason: String },
    #[error(
        "object {0} is missing from the repository; run `cairn check` to see what depends on it"
    )]
    Missing(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("repository database error: {0}")]
    Db(String),
    #[error("unsupported repository format: {0}")]
    Format(String),
    #[error("{0}")]
    Invalid(String),
    /// A request the repository refuses by rule: a deletion on an append-only server, or an
    /// attempt to replace a stored snapshot, object or key slot with other bytes.
    #[error("refused: {0}")]
    Refused(String),
    /// The peer of a sync or serve session sent something this side cannot accept.
    #[error("sync protocol error: {0}")]
    Protocol(String),
    #[error(
        "the repository at {0} is open read-only (read-only media or no write permission on its file) and this needs to write to it; run it where the repository is writable"
    )]
    ReadOnly(PathBuf),
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn corrupt(id: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            id: id.to_string(),
            reason: reason.into(),
        }
    }

    /// True for errors that mean the stored data itself is bad (as opposed to I/O or usage).
    pub fn is_damage(&self) -> bool {
        matches!(self, Error::Corrupt { .. } | Error::Missing(_))
    }
}

macro_rules! db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Db(e.to_string())
            }
        }
    )*};
}
db_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
