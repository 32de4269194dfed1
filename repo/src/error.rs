//! Errors the engine reports. Callers match on the variant (the CLI maps them to exit codes);
//! every message says what is wrong and, where it helps, what to do.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no Cairn repository at {path}: {reason}")]
    RepoNotFound { path: PathBuf, reason: String },
    #[error(
        "permission denied: cannot open {0}; run cairn as a user who can read the repository (its owner, or root), or fix its permissions"
    )]
    PermissionDenied(PathBuf),
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
    /// The database file's own structure is damaged: redb cannot open or walk it.
    #[error(
        "the repository database at {path} is damaged ({reason}); heal it from a replica with `cairn check --repair-from REPLICA` (which rebuilds it if it does not open), or put back a copy of the file"
    )]
    Damaged { path: PathBuf, reason: String },
    #[error("unsupported repository format: {0}")]
    Format(String),
    /// The server failed with an error of a kind this cairn does not know (a newer or an
    /// older `cairn serve`), in its words.
    #[error("{0}")]
    Remote(String),
    /// The command was asked something it cannot do as given: a bad option value or URL.
    #[error("{0}")]
    Usage(String),
    /// What the command names does not exist: a snapshot, key slot, target or path.
    #[error("{0}")]
    NotFound(String),
    /// Encryption or key derivation failed (not a wrong password: that is `WrongPassword`).
    #[error("cryptography failed: {0}")]
    Crypto(String),
    /// A bug or a broken invariant inside cairn (a worker thread died, encoding failed).
    #[error("internal error: {0}")]
    Internal(String),
    /// A request the repository refuses by rule: an attempt to replace a stored snapshot,
    /// object or key slot with other bytes, or to pass a limit (key slots). A right the
    /// client's key lacks is `NotAllowed`.
    #[error("refused: {0}")]
    Refused(String),
    /// The peer of a sync or serve session sent something this side cannot accept.
    #[error("sync protocol error: {0}")]
    Protocol(String),
    #[error(
        "the repository at {path} is open read-only ({why}) and this needs to write to it; run it where the repository is writable"
    )]
    ReadOnly { path: PathBuf, why: &'static str },
    /// A command that needs the repository's own files (not yet through the storage seam)
    /// was given a repository elsewhere.
    #[error(
        "`{what}` cannot work on a repository on a server yet ({location}); run it where the repository is, with --repo PATH there"
    )]
    LocalOnly { what: String, location: String },
    /// A command working without the key met an object sealed before format 2, whose
    /// references only the key can read.
    #[error(
        "{0}: run this with the repository's password (CAIRN_PASSWORD_FILE, CAIRN_PASSWORD_COMMAND or CAIRN_PASSWORD), or forget the snapshots written before format 2"
    )]
    KeyNeeded(String),
    /// A `cairn serve` refused a request its client's key has no right to (`--allow`).
    #[error("refused: {}", crate::storage::rights::refusal(*right, *granted, location))]
    NotAllowed {
        right: crate::storage::Right,
        granted: crate::storage::Rights,
        location: String,
    },
    /// Storing more would pass the repository's quota (`cairn serve --quota`).
    #[error(
        "quota of {} for {location} reached: {} used; forget snapshots and prune, or ask the administrator for more",
        crate::util::bytes(*quota),
        crate::util::bytes(*used)
    )]
    QuotaExceeded {
        location: String,
        quota: u64,
        /// What the repository occupies plus what the refused write would have added.
        used: u64,
    },
    /// The server could not be reached, or the connection to it broke (what ssh said, or
    /// what was cut).
    #[error("{0}")]
    Connection(String),
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

    /// Run `f`, which reads or writes the database, turning a panic into an error: redb
    /// trusts its file's structure, and random bytes in a b-tree page reach an `unreachable!`
    /// inside it. A damaged repository must give a report, never a crash.
    pub fn guard<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a damaged structure".into());
            Err(Error::Db(format!("DB corrupted: {msg}")))
        })
    }

    /// The error for object `id` when reading it met damage in the database's structure.
    pub fn at_object(self, id: &crate::Id) -> Error {
        match self {
            Error::Db(m) | Error::Damaged { reason: m, .. } => Error::corrupt(
                id,
                format!("the repository database is damaged where it is kept ({m})"),
            ),
            other => other,
        }
    }

    /// True when the disk (or quota) holding what was being written is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Io { source, .. } => {
                matches!(
                    source.raw_os_error(),
                    Some(libc::ENOSPC) | Some(libc::EDQUOT)
                )
            }
            _ => false,
        }
    }

    /// True for errors that mean the stored data itself is bad (as opposed to I/O or usage).
    pub fn is_damage(&self) -> bool {
        matches!(self, Error::Corrupt { .. } | Error::Missing(_))
    }
}

/// redb's errors: its I/O errors stay `Error::Io` (so a full disk is one callers can match,
/// `is_disk_full`), everything else is `Error::Db` with redb's message.
macro_rules! db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                match redb::Error::from(e) {
                    redb::Error::Io(io) => Error::io("I/O error on the repository database", io),
                    other => Error::Db(other.to_string()),
                }
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
