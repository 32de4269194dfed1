//! The repository as the commands that can work without its key open it (`sync`, `prune`,
//! `status`, the key-free check): unlocked when a password is given (`CAIRN_PASSWORD`,
//! `--password-file`, `--password-command`), otherwise a bare store walked by the public
//! references of format 2 (repo/DESIGN.md §3). A server's cron job holds no customer's
//! password and is never prompted for one.

use crate::{secrets, Failure, Global, EXIT_LOCKED};
use cairn_repo::graph::Source;
use cairn_repo::storage::Storage;
use cairn_repo::{Error, Repository};
use std::time::{Duration, Instant};

pub enum Primary {
    Keyed(Repository),
    KeyFree(Box<dyn Storage>),
}

impl Primary {
    /// Open `--repo`, waiting up to `lock_wait` seconds while it is locked.
    pub fn open(g: &Global, lock_wait: u64) -> Result<Primary, Failure> {
        let deadline = Instant::now() + Duration::from_secs(lock_wait);
        loop {
            match Primary::open_once(g) {
                Err(f) if f.code == EXIT_LOCKED && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(250))
                }
                r => return r,
            }
        }
    }

    fn open_once(g: &Global) -> Result<Primary, Failure> {
        if secrets::given(g) {
            return Ok(Primary::Keyed(g.open()?));
        }
        let store = cairn_repo::storage::open(&g.repo_url()?, &g.open_options())?;
        Ok(Primary::KeyFree(store))
    }

    pub fn source(&self) -> &dyn Source {
        match self {
            Primary::Keyed(r) => r,
            Primary::KeyFree(s) => s,
        }
    }

    pub fn storage(&self) -> &dyn Storage {
        self.source().storage()
    }

    pub fn has_key(&self) -> bool {
        matches!(self, Primary::Keyed(_))
    }

    /// Run `f` key-free; when it meets objects sealed before format 2 and a terminal can be
    /// asked for the password, unlock and run it again with the key (it changed nothing:
    /// every key-free walk reads the whole graph before it acts). Returns the repository as
    /// it ended (unlocked or not) with what `f` gave.
    pub fn with_fallback<T>(
        self,
        g: &Global,
        mut f: impl FnMut(&Primary) -> Result<T, Error>,
    ) -> Result<(Primary, T), Failure> {
        match f(&self) {
            Err(Error::KeyNeeded(_)) if !self.has_key() && secrets::can_prompt() => {
                let keyed = self.unlock(g)?;
                let out = f(&keyed)?;
                Ok((keyed, out))
            }
            r => Ok((self, r?)),
        }
    }

    /// Ask for the password and unlock a key-free store.
    pub fn unlock(self, g: &Global) -> Result<Primary, Failure> {
        match self {
            Primary::KeyFree(store) => {
                let password = secrets::password(g, false)?;
                Ok(Primary::Keyed(Repository::unlock(
                    store,
                    password.as_bytes(),
                )?))
            }
            keyed => Ok(keyed),
        }
    }
}
