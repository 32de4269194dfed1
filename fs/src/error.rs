//! The error type of the filesystem core: an errno for the kernel plus, for failures that are
//! worth a log line (damaged or missing objects, I/O errors), the message to log.

use cairn_repo::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsError {
    pub errno: i32,
    /// Set when the failure should be logged (it names the object or the cause).
    pub detail: Option<String>,
}

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    pub fn new(errno: i32) -> FsError {
        FsError {
            errno,
            detail: None,
        }
    }

    pub fn noent() -> FsError {
        FsError::new(libc::ENOENT)
    }

    pub fn eio(detail: impl Into<String>) -> FsError {
        FsError {
            errno: libc::EIO,
            detail: Some(detail.into()),
        }
    }
}

impl From<Error> for FsError {
    /// Every engine error is an I/O error for the reader: a damaged or missing object must
    /// never look like a missing file (ENOENT).
    fn from(e: Error) -> FsError {
        FsError::eio(e.to_string())
    }
}
