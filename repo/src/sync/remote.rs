//! Targets behind the wire protocol: any byte stream (`StreamTarget`), and `ssh` running
//! `cairn serve` on the far side (`SshTarget`).

use super::proto::{self, Request, Response};
use super::Target;
use crate::error::{Error, Result};
use crate::graph::Source;
use std::io::{BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A protocol client over a reader (the server's replies) and a writer (our requests).
pub struct StreamTarget<R: Read, W: Write> {
    r: BufReader<R>,
    w: BufWriter<W>,
}

impl<R: Read, W: Write> StreamTarget<R, W> {
    pub fn new(r: R, w: W) -> Self {
        StreamTarget {
            r: BufReader::new(r),
            w: BufWriter::new(w),
        }
    }

    fn exchange(&mut self, req: &Request) -> Result<Response> {
        proto::write_msg(&mut self.w, req)?;
        self.reply()
    }

    fn reply(&mut self) -> Result<Response> {
        match proto::read_msg(&mut self.r)? {
            Response::Error(msg) => Err(Error::Refused(format!("by the target: {msg}"))),
            resp => Ok(resp),
        }
    }

    /// Hello, and create the replica if the far side has none. Refuses a foreign repository.
    pub fn handshake(&mut self, primary: &dyn Source) -> Result<bool> {
        self.hello(primary, true)
    }

    /// Hello to a replica that must exist already (to read from it).
    pub fn handshake_existing(&mut self, primary: &dyn Source) -> Result<()> {
        self.hello(primary, false).map(|_| ())
    }

    fn hello(&mut self, primary: &dyn Source, create: bool) -> Result<bool> {
        let config = primary.storage().config()?;
        let repo_id = config.repo_id;
        let hello = Request::Hello {
            magic: proto::MAGIC,
            version: proto::SYNC_VERSION,
            repo_id,
        };
        let exists = match self.exchange(&hello)? {
            Response::Hello {
                version,
                repo_id: theirs,
                exists,
                ..
            } => {
                if version != proto::SYNC_VERSION || theirs != repo_id {
                    return Err(proto::protocol_error(
                        "the server answered the hello with another version or repository id",
                    ));
                }
                exists
            }
            other => return Err(unexpected(&other)),
        };
        if !exists && !create {
            return Err(Error::NotFound(
                "there is no replica of this repository there".into(),
            ));
        }
        if !exists {
            let key_slots = super::slot_blobs(primary)?;
            let create = Request::Create {
                config: config.encode(),
                key_slots,
            };
            expect_done(self.exchange(&create)?)?;
        }
        Ok(!exists)
    }
}

impl<R: Read, W: Write> Target for StreamTarget<R, W> {
    fn call(&mut self, req: Request) -> Result<Response> {
        self.exchange(&req)
    }

    fn send(&mut self, req: Request) -> Result<Option<Response>> {
        proto::write_msg(&mut self.w, &req).map(|_| None)
    }

    fn recv(&mut self) -> Result<Response> {
        self.reply()
    }
}

pub fn unexpected(resp: &Response) -> Error {
    let name = match resp {
        Response::Hello { .. } => "hello",
        Response::Info { .. } => "info",
        Response::Snapshots(_) => "snapshot list",
        Response::Have(_) => "have list",
        Response::Stored { .. } => "stored",
        Response::Done => "done",
        Response::Error(_) => "error",
        Response::Object(_) => "object",
        Response::SnapshotBlob(_) => "snapshot blob",
        Response::SnapshotChecks(_) => "snapshot checksums",
        Response::StoreOpened { .. } => "store opened",
        Response::Failed(_) => "failure",
        Response::Blob(_) => "blob",
        Response::Number(_) => "number",
        Response::Numbered(_) => "numbered list",
        Response::SnapshotPage { .. } => "snapshot page",
        Response::ObjectInfo(_) => "object info",
        Response::ObjectsRead { .. } => "objects read",
        Response::Listed(_) => "object list",
        Response::Space(_) => "space",
        Response::State(_) => "state",
        Response::MarkRequest(_) => "mark request",
        Response::Notice(_) => "notice",
        Response::Collected(_) => "collected",
        Response::StoreOpenedWith { .. } => "store opened",
        Response::Repaired(_) => "repaired",
        Response::Compacted { .. } => "compacted",
    };
    proto::protocol_error(format!("unexpected {name} reply"))
}

pub fn expect_done(resp: Response) -> Result<()> {
    match resp {
        Response::Done => Ok(()),
        other => Err(unexpected(&other)),
    }
}

/// A parsed `ssh://[user@]host[:port]/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshUrl {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
}

impl SshUrl {
    pub fn parse(url: &str) -> Result<SshUrl> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "`{url}` is not a valid ssh target ({why}); use ssh://[user@]host[:port]/path"
            ))
        };
        let rest = url
            .strip_prefix("ssh://")
            .ok_or_else(|| bad("no ssh:// prefix"))?;
        let slash = rest.find('/').ok_or_else(|| bad("no path"))?;
        let (auth, path) = rest.split_at(slash);
        let (user, hostport) = match auth.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, auth),
        };
        let (host, port) = split_port(hostport).ok_or_else(|| bad("bad port"))?;
        let host_ok = !host.is_empty()
            && !host.starts_with('-')
            && host.bytes().all(|b| b.is_ascii_graphic());
        let user_ok = user.as_deref().is_none_or(|u| {
            !u.is_empty() && !u.starts_with('-') && u.bytes().all(|b| b.is_ascii_graphic())
        });
        if !host_ok || !user_ok || path.len() < 2 {
            return Err(bad("empty or invalid user, host or path"));
        }
        Ok(SshUrl {
            user,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

fn split_port(hostport: &str) -> Option<(&str, Option<u16>)> {
    if let Some(inner) = hostport.strip_prefix('[') {
        let (h, after) = inner.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(p) => Some((h, Some(p.parse().ok()?))),
            None if after.is_empty() => Some((h, None)),
            None => None,
        };
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None => Some((hostport, None)),
    }
}

/// Quote for a POSIX shell (the remote command line is run by the remote user's shell).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// How to reach the far side.
#[derive(Clone, Debug)]
pub struct SshOptions {
    /// The ssh program and its own options, e.g. `["ssh", "-F", "/etc/cairn/ssh_config"]`.
    pub command: Vec<String>,
    /// The `cairn` binary on the far side.
    pub remote_binary: String,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            command: vec!["ssh".into()],
            remote_binary: "cairn".into(),
        }
    }
}

/// The argument vector that runs `cairn serve` through ssh.
pub fn ssh_argv(url: &SshUrl, opts: &SshOptions) -> Vec<String> {
    ssh_argv_with(url, opts, &[], true)
}

/// `ssh_argv` with `extra` options after the user's own, and the remote `cairn serve`
/// command only when `command` (a multiplexing master runs none).
pub(crate) fn ssh_argv_with(
    url: &SshUrl,
    opts: &SshOptions,
    extra: &[String],
    command: bool,
) -> Vec<String> {
    let mut argv = opts.command.clone();
    if argv.is_empty() {
        argv.push("ssh".into());
    }
    argv.extend(extra.iter().cloned());
    // No prompts; and a server that goes silent (a dead link, a hung host) ends the
    // connection within a minute instead of hanging a backup or a mount's reads. Options the
    // user's ssh command gives first win (ssh keeps the first value of each).
    for o in [
        "BatchMode=yes",
        "ServerAliveInterval=15",
        "ServerAliveCountMax=4",
    ] {
        argv.extend(["-o".into(), o.into()]);
    }
    if let Some(p) = url.port {
        argv.extend(["-p".into(), p.to_string()]);
    }
    if let Some(u) = &url.user {
        argv.extend(["-l".into(), u.clone()]);
    }
    argv.push(url.host.clone());
    if !command {
        return argv;
    }
    // `ssh://host/~/dir`: relative to the remote home, where ssh starts the command.
    let path = url.path.strip_prefix("/~/").unwrap_or(&url.path);
    argv.push(format!(
        "{} serve --repo {}",
        shell_quote(&opts.remote_binary),
        shell_quote(path)
    ));
    argv
}

/// A running `ssh … cairn serve`: the process and what it says on stderr (collected by a
/// thread, for the error when the connection fails).
pub(crate) struct SshProcess {
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// `host[:port]`, for messages.
    label: String,
}

/// The ssh of `argv`, with pipes for its three streams.
fn ssh_command(argv: &[String]) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        // ssh and what it runs (ProxyCommand, askpass) never see a repository password.
        .env_remove("CAIRN_PASSWORD")
        .env_remove("CAIRN_PASSWORD_FILE")
        .env_remove("CAIRN_PASSWORD_COMMAND")
        .env_remove("CAIRN_NEW_PASSWORD")
        .env_remove("CAIRN_NEW_PASSWORD_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Spawn `cmd` with `PR_SET_PDEATHSIG`: the kernel sends the child SIGKILL when its parent
/// ends (not SIGTERM: an ssh master keeps SIGTERM blocked outside its session loop, and it
/// stays pending for good). The kernel means the spawning *thread*, so every such child is
/// spawned by one thread that lives as long as the process (a worker thread that ends must
/// not end the child).
fn spawn_tied(mut cmd: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: std::sync::OnceLock<mpsc::Sender<Request>> = std::sync::OnceLock::new();
    // SAFETY: getpid has no preconditions. The closure runs in the child between fork and
    // exec and only calls prctl and getppid, which are async-signal-safe. A parent that died
    // before prctl took effect shows in getppid (the child was reparented): the spawn fails
    // instead of leaving an ssh that nothing ends.
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            match libc::getppid() == parent {
                true => Ok(()),
                false => Err(std::io::Error::other("cairn ended while starting ssh")),
            }
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        let _ = std::thread::Builder::new()
            .name("cairn-spawner".into())
            .spawn(move || {
                for (mut cmd, back) in rx {
                    let _ = back.send(cmd.spawn());
                }
            });
        tx
    });
    let gone = || std::io::Error::other("the spawning thread is gone");
    let (back, answer) = mpsc::channel();
    spawner.send((cmd, back)).map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

impl SshProcess {
    /// Start ssh running `cairn serve` on the far side; returns its stdout (the server's
    /// replies) and stdin (our requests).
    pub(crate) fn spawn(
        url: &SshUrl,
        opts: &SshOptions,
    ) -> Result<(SshProcess, ChildStdout, ChildStdin)> {
        SshProcess::spawn_argv(url, ssh_argv(url, opts))
    }

    /// Start ssh with this argument vector (from `ssh_argv_with`) for `url`.
    pub(crate) fn spawn_argv(
        url: &SshUrl,
        argv: Vec<String>,
    ) -> Result<(SshProcess, ChildStdout, ChildStdin)> {
        let child = ssh_command(&argv)
            .spawn()
            .map_err(|e| Error::io(format!("running {}", argv[0]), e))?;
        SshProcess::wrap(url, child)
    }

    /// `spawn_argv` for an ssh that must not outlive this process even when it is killed
    /// (an ssh master: nothing else ends it): the kernel kills it when cairn ends.
    pub(crate) fn spawn_tied(
        url: &SshUrl,
        argv: Vec<String>,
    ) -> Result<(SshProcess, ChildStdout, ChildStdin)> {
        let child = spawn_tied(ssh_command(&argv))
            .map_err(|e| Error::io(format!("running {}", argv[0]), e))?;
        SshProcess::wrap(url, child)
    }

    fn wrap(url: &SshUrl, mut child: Child) -> Result<(SshProcess, ChildStdout, ChildStdin)> {
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = String::new();
                let _ = pipe.read_to_string(&mut buf);
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&buf);
                }
            });
        }
        let (Some(out), Some(inp)) = (child.stdout.take(), child.stdin.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Internal("ssh started without pipes".into()));
        };
        let label = format!(
            "{}{}",
            url.host,
            url.port.map(|p| format!(":{p}")).unwrap_or_default()
        );
        Ok((
            SshProcess {
                child,
                stderr,
                label,
            },
            out,
            inp,
        ))
    }

    /// What ssh said on stderr once it has exited (waiting up to two seconds), so "connection
    /// refused" and "permission denied" reach the user instead of a bare protocol error.
    /// `None` when it said nothing and has not exited.
    pub(crate) fn failure(&mut self) -> Option<String> {
        let status = self.wait_briefly(Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(50));
        let said = self
            .stderr
            .lock()
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let code = status.and_then(|s| s.code());
        if said.is_empty() && matches!(code, None | Some(0)) {
            return None;
        }
        let last: Vec<&str> = said.lines().rev().take(3).collect();
        let said: Vec<&str> = last.into_iter().rev().collect();
        let hint = match code {
            Some(127) => {
                "; is cairn installed on the far side? (--remote-cairn, $CAIRN_REMOTE_BINARY)"
            }
            _ => "",
        };
        let how = code.map(|c| format!(" (exit {c})")).unwrap_or_default();
        Some(format!(
            "ssh to {} failed{how}: {}{hint}",
            self.label,
            said.join("; ")
        ))
    }

    /// `e` with what ssh said added (see `failure`).
    pub(crate) fn explain(&mut self, e: Error) -> Error {
        match self.failure() {
            Some(said) => Error::Connection(format!("{said} [{e}]")),
            None => e,
        }
    }

    /// Whether ssh has exited (without waiting).
    pub(crate) fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Stop ssh now.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn wait_briefly(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Err(_) => return None,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        None
    }

    /// Wait a little for ssh to exit (its stdin should be closed by now), then kill it.
    pub(crate) fn finish(&mut self) {
        if self.wait_briefly(Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `cairn serve` on another machine through the system ssh.
pub struct SshTarget {
    process: SshProcess,
    stream: Option<StreamTarget<ChildStdout, ChildStdin>>,
}

impl SshTarget {
    pub fn connect(url: &SshUrl, opts: &SshOptions) -> Result<SshTarget> {
        let (process, out, inp) = SshProcess::spawn(url, opts)?;
        Ok(SshTarget {
            process,
            stream: Some(StreamTarget::new(out, inp)),
        })
    }

    pub fn handshake(&mut self, primary: &dyn Source) -> Result<bool> {
        self.with_stream(|s| s.handshake(primary))
    }

    pub fn handshake_existing(&mut self, primary: &dyn Source) -> Result<()> {
        self.with_stream(|s| s.handshake_existing(primary))
    }
}

impl SshTarget {
    fn with_stream<T>(
        &mut self,
        f: impl FnOnce(&mut StreamTarget<ChildStdout, ChildStdin>) -> Result<T>,
    ) -> Result<T> {
        let r = match self.stream.as_mut() {
            Some(s) => f(s),
            None => Err(Error::Connection("the connection closed".into())),
        };
        r.map_err(|e| self.process.explain(e))
    }
}

impl Target for SshTarget {
    fn call(&mut self, req: Request) -> Result<Response> {
        self.with_stream(|s| s.call(req))
    }

    fn send(&mut self, req: Request) -> Result<Option<Response>> {
        self.with_stream(|s| s.send(req))
    }

    fn recv(&mut self) -> Result<Response> {
        self.with_stream(|s| s.recv())
    }
}

impl Drop for SshTarget {
    fn drop(&mut self) {
        if let Some(mut s) = self.stream.take() {
            let _ = s.call(Request::Bye);
        }
        self.process.finish();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_ssh_urls() {
        let u = SshUrl::parse("ssh://bob@example.org:2222/srv/backup").unwrap();
        assert_eq!(
            u,
            SshUrl {
                user: Some("bob".into()),
                host: "example.org".into(),
                port: Some(2222),
                path: "/srv/backup".into()
            }
        );
        let u = SshUrl::parse("ssh://host/x").unwrap();
        assert_eq!((u.user, u.port, u.path.as_str()), (None, None, "/x"));
        let u = SshUrl::parse("ssh://[::1]:22/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", Some(22)));
        for bad in [
            "ssh://host",
            "ssh://-oProxyCommand=x/p",
            "ssh://h:99999/p",
            "http://h/p",
            "ssh:///p",
            "ssh://h/",
        ] {
            assert!(SshUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn argv_quotes_the_remote_command() {
        let u = SshUrl::parse("ssh://me@h:2200/it's here").unwrap();
        let argv = ssh_argv(&u, &SshOptions::default());
        assert_eq!(
            &argv[..11],
            [
                "ssh",
                "-o",
                "BatchMode=yes",
                "-o",
                "ServerAliveInterval=15",
                "-o",
                "ServerAliveCountMax=4",
                "-p",
                "2200",
                "-l",
                "me"
            ]
        );
        assert_eq!(argv[11], "h");
        assert_eq!(argv[12], r"'cairn' serve --repo '/it'\''s here'");
        let u = SshUrl::parse("ssh://h/~/backups/x").unwrap();
        assert_eq!(
            ssh_argv(&u, &SshOptions::default()).last().unwrap(),
            "'cairn' serve --repo 'backups/x'"
        );
    }
}
