//! One ssh connection per command: an OpenSSH `ControlMaster` (DESIGN.md §9, "One ssh
//! connection"). A remote store opens several connections to `cairn serve` (a writer, the
//! readers' pool, sessions); without this each was a TCP connection, a key exchange and an
//! authentication of its own, 0.1–0.2 s apiece. The master is started on the first
//! connection, authenticates once, and every connection after it is a session multiplexed over
//! it; it ends when the store and all its connections are gone.
//!
//! Used only when the ssh command is OpenSSH's `ssh` and the user's own options name no
//! `ControlMaster`/`ControlPath` (theirs are kept; `-o ControlPath=none` switches this off).
//! A master carries `SESSIONS` connections at once (sshd's `MaxSessions` is 10 by default);
//! beyond that the store starts another master (one login at a time, so a burst of
//! connections never meets sshd's `MaxStartups`), and a master whose ssh died is replaced.

use super::remote::{ssh_argv_with, SshProcess};
use super::{SshOptions, SshUrl};
use crate::error::{Error, Result};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sessions multiplexed over one master at most (sshd's `MaxSessions` default is 10; the
/// master itself, `-N`, has none).
const SESSIONS: usize = 10;
/// How long the master may take to connect and authenticate before cairn gives up on
/// multiplexing (and lets each connection try on its own, with ssh's own error if it fails).
const READY_WITHIN: Duration = Duration::from_secs(120);

/// A running `ssh -M -N` and the private directory holding its socket.
pub(crate) struct Master {
    process: std::sync::Mutex<SshProcess>,
    dir: PathBuf,
    socket: PathBuf,
    live: AtomicUsize,
}

/// A session's claim on the master (dropped when its connection ends).
pub(crate) struct Slot {
    master: Arc<Master>,
}

/// Whether connections through this ssh command can be multiplexed by cairn.
pub(crate) fn applies(opts: &SshOptions) -> bool {
    let program = opts.command.first().map(String::as_str).unwrap_or("ssh");
    let is_ssh = std::path::Path::new(program).file_name() == Some("ssh".as_ref());
    let own = opts.command.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        a.contains("controlmaster") || a.contains("controlpath")
    });
    is_ssh && !own
}

impl Master {
    /// Connect and authenticate once. `Ok(None)`: no multiplexing for this command (see
    /// `applies`, or no socket came up in time); an error: ssh failed (refused, unknown host,
    /// permission denied), as the first plain connection would have.
    pub(crate) fn start(url: &SshUrl, opts: &SshOptions) -> Result<Option<Arc<Master>>> {
        if !applies(opts) {
            return Ok(None);
        }
        let dir = private_dir()?;
        let socket = dir.join("s");
        let extra: Vec<String> = [
            "-M",
            "-N",
            "-n",
            "-o",
            &format!("ControlPath={}", socket.display()),
            "-o",
            "ControlPersist=no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let argv = ssh_argv_with(url, opts, &extra, false);
        let (process, _out, _in) = match SshProcess::spawn_tied(url, argv) {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut master = Master {
            process: std::sync::Mutex::new(process),
            dir,
            socket,
            live: AtomicUsize::new(0),
        };
        master.ready().map(|up| up.then(|| Arc::new(master)))
    }

    /// Wait until the socket is there (connected and authenticated), or ssh has failed.
    fn ready(&mut self) -> Result<bool> {
        let start = Instant::now();
        let process = self.process.get_mut().unwrap_or_else(|e| e.into_inner());
        while start.elapsed() < READY_WITHIN {
            if self.socket.exists() {
                return Ok(true);
            }
            if process.has_exited() {
                let said = process.failure();
                return Err(Error::Connection(
                    said.unwrap_or_else(|| "ssh ended before it connected".into()),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(false)
    }

    /// Whether its ssh still runs (a network cut, or ssh's `ServerAlive` giving up, ends it:
    /// its sessions fail, and later connections need another master).
    pub(crate) fn alive(&self) -> bool {
        let mut process = self.process.lock().unwrap_or_else(|e| e.into_inner());
        !process.has_exited()
    }

    /// A session over this master, unless `SESSIONS` are open already.
    pub(crate) fn slot(self: &Arc<Master>) -> Option<Slot> {
        let claimed = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < SESSIONS).then_some(n + 1)
            })
            .is_ok();
        claimed.then(|| Slot {
            master: self.clone(),
        })
    }
}

impl Slot {
    /// The options that make an ssh a session of the master (ssh falls back to a connection
    /// of its own if the master is gone).
    pub(crate) fn options(&self) -> Vec<String> {
        vec![
            "-o".into(),
            format!("ControlPath={}", self.master.socket.display()),
            "-o".into(),
            "ControlMaster=no".into(),
        ]
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.master.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.process
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new directory only this user can enter, for the master's socket (a socket's path must be
/// short: under `$XDG_RUNTIME_DIR` or the temporary directory, not the repository's).
fn private_dir() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    remove_stale(&base);
    for attempt in 0..100u32 {
        let nonce: u32 = rand::random();
        let dir = base.join(format!("cairn-ssh-{}-{nonce:08x}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 99 => {}
            Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
        }
    }
    unreachable!("the loop returns on its last attempt")
}

/// Remove the socket directories of cairn processes that are gone (killed before they could
/// remove their own): `cairn-ssh-PID-…` of this user whose process does not exist.
fn remove_stale(base: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cairn-ssh-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let ours = entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == uid);
        // SAFETY: signal 0 only asks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        // A process of another pid namespace may share this directory: a socket that still
        // answers is a live master's.
        let answers = std::os::unix::net::UnixStream::connect(entry.path().join("s")).is_ok();
        if ours && gone && !answers {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(command: &[&str]) -> SshOptions {
        SshOptions {
            command: command.iter().map(|s| s.to_string()).collect(),
            remote_binary: "cairn".into(),
        }
    }

    #[test]
    fn the_socket_directories_of_dead_processes_are_removed() {
        let base = tempfile::tempdir().unwrap();
        let mine = base
            .path()
            .join(format!("cairn-ssh-{}-00000001", std::process::id()));
        // Far above any pid the kernel hands out (pid_max is at most 2^22).
        let dead = base.path().join("cairn-ssh-99999999-00000002");
        let other = base.path().join("something-else");
        for d in [&mine, &dead, &other] {
            std::fs::create_dir(d).unwrap();
        }
        remove_stale(base.path());
        assert!(mine.exists() && other.exists());
        assert!(!dead.exists());
    }

    #[test]
    fn only_openssh_without_the_users_own_control_options_is_multiplexed() {
        assert!(applies(&opts(&["ssh"])));
        assert!(applies(&opts(&[
            "/usr/bin/ssh",
            "-F",
            "/etc/cairn/ssh_config"
        ])));
        assert!(!applies(&opts(&["ssh", "-o", "ControlPath=none"])));
        assert!(!applies(&opts(&["ssh", "-oControlMaster=auto"])));
        assert!(!applies(&opts(&["/opt/bin/pipe-to-server"])));
        assert!(!applies(&opts(&["autossh", "-M", "0"])));
    }

    #[test]
    fn the_socket_directory_is_private_and_new() {
        let a = private_dir().expect("a directory");
        let b = private_dir().expect("another");
        assert_ne!(a, b);
        let mode = std::fs::metadata(&a).expect("made").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
        for d in [a, b] {
            std::fs::remove_dir(d).expect("empty");
        }
    }
}
