//! Reading a database file that was cut short (a copy or a transfer that stopped early, a
//! `truncate`): redb refuses such a file outright, although everything before the cut is
//! intact. This backend presents the file at the length redb's header records, with zeros past
//! the real end, for read-only opening: what lies before the cut reads as usual, and what lay
//! in the lost tail reads as damaged pages, reported per object.

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use std::ops::Bound;

#[derive(Debug)]
pub(crate) struct ZeroTail {
    inner: FileBackend,
    real_len: u64,
    len: u64,
}

/// The length redb's header records, from its refusal of a truncated file (the wording of
/// the pinned redb 4.6: "File truncated below stored layout: file_len=N, layout_len=M").
pub(crate) fn recorded_len(reason: &str) -> Option<u64> {
    let rest = reason.split("File truncated below stored layout").nth(1)?;
    let n = rest.split("layout_len=").nth(1)?;
    n.chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

impl ZeroTail {
    pub(crate) fn new(file: std::fs::File, len: u64) -> std::io::Result<ZeroTail> {
        let real_len = file.metadata()?.len();
        let inner = FileBackend::new(file).map_err(std::io::Error::other)?;
        Ok(ZeroTail {
            inner,
            real_len,
            len: len.max(real_len),
        })
    }
}

fn read_only() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ReadOnlyFilesystem,
        "a truncated repository is opened for reading only",
    )
}

impl StorageBackend for ZeroTail {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let end = offset.saturating_add(out.len() as u64);
        let have = self.real_len.saturating_sub(offset).min(out.len() as u64) as usize;
        if have > 0 {
            self.inner.read(offset, &mut out[..have])?;
        }
        out[have..].fill(0);
        if end > self.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the recorded end of the database",
            ));
        }
        Ok(())
    }

    fn set_len(&self, _len: u64) -> Result<(), std::io::Error> {
        Err(read_only())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        Ok(())
    }

    fn write(&self, _offset: u64, _data: &[u8]) -> Result<(), std::io::Error> {
        Err(read_only())
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(s, e)
    }

    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(s, e)
    }

    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(s, e)
    }

    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(s, e)
    }

    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(s, e)
    }

    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(s, e)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_recorded_length_is_read_from_redbs_refusal() {
        let r = "DB corrupted: File truncated below stored layout: file_len=70254592, layout_len=70258688";
        assert_eq!(super::recorded_len(r), Some(70258688));
        assert_eq!(super::recorded_len("DB corrupted: other"), None);
    }
}
