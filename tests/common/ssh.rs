//! A real sshd on 127.0.0.1 with throwaway host and user keys, for the tests that reach a
//! repository or a replica over ssh.

use super::{bin, cairn};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An sshd on 127.0.0.1 with throwaway host and user keys, killed on drop.
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub ssh_command: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_sshd() -> PathBuf {
    for p in ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("sshd not found: the ssh sync tests need OpenSSH's server; install openssh-server (scripts/test does)");
}

pub fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs (install openssh-client)");
    assert!(st.success(), "ssh-keygen failed");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn start_sshd(dir: &Path) -> Sshd {
    let sshd = find_sshd();
    keygen(&dir.join("host_key"));
    keygen(&dir.join("user_key"));
    std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).unwrap();
    // sshd insists on its privilege separation directory.
    let _ = std::fs::create_dir_all("/run/sshd");
    let port = free_port();
    // MaxStartups: by default sshd starts dropping connections once 10 are unauthenticated at
    // once (10:30:100); several clients backing up at once, each over pooled connections, pass
    // that on one loopback server, as they would on a provider's.
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\n\
         AuthorizedKeysFile {d}/authorized_keys\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nLogLevel INFO\n\
         MaxStartups 100\n",
        d = dir.display()
    );
    std::fs::write(dir.join("sshd_config"), config).unwrap();
    let client = format!(
        "Host *\n  IdentityFile {d}/user_key\n  IdentitiesOnly yes\n  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  LogLevel ERROR\n  ConnectTimeout 10\n",
        d = dir.display()
    );
    std::fs::write(dir.join("ssh_config"), client).unwrap();
    let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
    let child = Command::new(&sshd)
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", sshd.display()));
    let mut s = Sshd {
        child,
        port,
        dir: dir.to_path_buf(),
        ssh_command: format!("ssh -F {}/ssh_config", dir.display()),
    };
    wait_listening(&mut s);
    s
}

impl Sshd {
    /// How many logins sshd has accepted so far (one per ssh connection; sessions
    /// multiplexed over a connection are not logins).
    pub fn logins(&self) -> usize {
        std::fs::read_to_string(self.dir.join("sshd.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Accepted publickey"))
            .count()
    }
}

fn wait_listening(s: &mut Sshd) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", s.port)).is_err() {
        if let Ok(Some(st)) = s.child.try_wait() {
            let log = std::fs::read_to_string(s.dir.join("sshd.log")).unwrap_or_default();
            panic!("sshd exited ({st}) before listening:\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "sshd did not listen on port {} within 15 s",
            s.port
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The ssh:// URL of `path` on the test sshd, as the current user.
pub fn ssh_url(sshd: &Sshd, path: &Path) -> String {
    format!("ssh://{}@127.0.0.1:{}{}", user(), sshd.port, path.display())
}

pub fn ssh_cairn(repo: &Path, sshd: &Sshd) -> Command {
    let mut c = cairn(repo);
    c.env("CAIRN_SSH_COMMAND", &sshd.ssh_command)
        .env("CAIRN_REMOTE_BINARY", bin());
    c
}

/// A new user key `name` whose every session runs `cairn serve SERVE_ARGS` on the server (a
/// forced command in authorized_keys, as a provider gives each customer); returns the ssh
/// command that logs in with it, for `CAIRN_SSH_COMMAND`.
pub fn forced_key(sshd: &Sshd, name: &str, serve_args: &str) -> String {
    let key = sshd.dir.join(name);
    keygen(&key);
    let public = std::fs::read_to_string(sshd.dir.join(format!("{name}.pub"))).unwrap();
    let line = format!(
        "command=\"{} serve {serve_args}\",restrict {}",
        bin().display(),
        public.trim()
    );
    let keys = sshd.dir.join("authorized_keys");
    let all = std::fs::read_to_string(&keys).unwrap();
    std::fs::write(&keys, format!("{line}\n{all}")).unwrap();
    let config = std::fs::read_to_string(sshd.dir.join("ssh_config"))
        .unwrap()
        .replace("/user_key", &format!("/{name}"));
    let path = sshd.dir.join(format!("{name}_config"));
    std::fs::write(&path, config).unwrap();
    format!("ssh -F {}", path.display())
}

/// A server: an sshd whose own key (the administrator's) runs whatever `cairn serve` the
/// client asks for, and the directory its repositories live in.
pub struct Server {
    _tmp: tempfile::TempDir,
    pub sshd: Sshd,
    pub root: PathBuf,
}

/// A customer's key, forced to one repository, and the URL its client asks for.
pub struct Customer {
    pub ssh: String,
    pub url: String,
}

impl Customer {
    pub fn cairn(&self) -> Command {
        let mut c = cairn(Path::new(&self.url));
        c.env("CAIRN_SSH_COMMAND", &self.ssh);
        c
    }
}

impl Server {
    pub fn start() -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let ssh = tmp.path().join("ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        let sshd = start_sshd(&ssh);
        let root = tmp.path().join("srv");
        std::fs::create_dir_all(&root).unwrap();
        Server {
            _tmp: tmp,
            sshd,
            root,
        }
    }

    pub fn url(&self, name: &str) -> String {
        ssh_url(&self.sshd, &self.root.join(name))
    }

    /// `cairn` with `--repo URL` through this server's ssh.
    pub fn cairn(&self, url: &str) -> Command {
        ssh_cairn(Path::new(url), &self.sshd)
    }

    /// `cairn` with the administrator's key (no forced command) on repository `name`.
    pub fn admin(&self, name: &str) -> Command {
        self.cairn(&self.url(name))
    }

    /// A key `key` forced to `cairn serve --repo <root>/<repo> SERVE_ARGS`; its client asks
    /// for `asks` (any path: the forced command decides).
    pub fn customer(&self, key: &str, repo: &str, serve_args: &str, asks: &str) -> Customer {
        let args = format!("--repo {} {serve_args}", self.root.join(repo).display());
        Customer {
            ssh: forced_key(&self.sshd, key, &args),
            url: self.url(asks),
        }
    }
}
