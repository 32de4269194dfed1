//! Windows "Previous Versions" through Samba (issue 13): a real `smbd` on 127.0.0.1 shares a
//! live directory with `vfs_shadow_copy2` over a real `cairn mount`, set up with the share
//! lines of `scripts/samba-previous-versions.conf`, and `smbclient` lists and fetches the old
//! versions. Needs Debian's `samba` and `smbclient` (scripts/test installs them) and /dev/fuse.

mod common;

use cairn_repo::backup::{backup, BackupOptions, Progress};
use cairn_repo::{OpenOptions, Repository};
use common::*;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const RECIPE: &str = include_str!("../scripts/samba-previous-versions.conf");

/// A running `smbd`; dropping it stops it (SIGTERM, then SIGKILL after a bound).
struct Smbd {
    child: Child,
    log: PathBuf,
}

impl Smbd {
    /// Start smbd in the foreground with `conf`, and wait until it accepts connections.
    fn start(conf: &Path, port: u16, log: PathBuf) -> Smbd {
        // In a process group of its own: stopping, smbd signals its whole group.
        let child = Command::new("smbd")
            .process_group(0)
            .args(["--foreground", "--no-process-group", "--debug-stdout", "-s"])
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("smbd starts");
        let mut s = Smbd { child, log };
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("smbd exited early ({st}): {}", s.log());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("smbd did not listen within {WAIT:?}: {}", s.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Smbd {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fail clearly (never skip) when a tool the test needs is missing: CI installs it.
fn require(tool: &str, package: &str) {
    if Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        panic!("`{tool}` is not installed: apt-get install {package} (scripts/test does)");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn smbclient(port: u16, command: &str) -> String {
    let out = Command::new("smbclient")
        .args([
            "//127.0.0.1/share",
            "-N",
            "-p",
            &port.to_string(),
            "-c",
            command,
        ])
        .output()
        .expect("smbclient runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "smbclient -c '{command}' failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A throwaway smb.conf in `dir`: a standalone server on 127.0.0.1:`port` with every state
/// directory of its own, guests as `nobody`, and the recipe's share (renamed `share`, its
/// paths replaced by `share` and `mount`).
fn smb_conf(dir: &Path, port: u16, share: &Path, mount: &Path) -> PathBuf {
    let d = |name: &str| {
        let p = dir.join(name);
        std::fs::create_dir_all(&p).unwrap();
        p.display().to_string()
    };
    let mut conf = format!(
        "[global]
   server role = standalone server
   interfaces = 127.0.0.1
   bind interfaces only = yes
   smb ports = {port}
   disable netbios = yes
   lock directory = {}
   state directory = {}
   cache directory = {}
   private dir = {}
   pid directory = {}
   ncalrpc dir = {}
   log file = {}/log.%m
   load printers = no
   printcap name = /dev/null
   disable spoolss = yes
   map to guest = Bad User
   guest account = nobody
",
        d("lock"),
        d("state"),
        d("cache"),
        d("private"),
        d("pid"),
        d("ncalrpc"),
        d("log"),
    );
    let section = RECIPE
        .split_once("[data]")
        .expect("the recipe has a [data] share")
        .1;
    let share = share.display().to_string();
    conf.push_str("[share]\n   guest ok = yes\n   read only = yes\n");
    for line in section.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let line = line
            .replace("/mnt/backups", &mount.display().to_string())
            .replace("/srv/data", &share)
            .replace("srv/data", share.trim_start_matches('/'));
        conf.push_str(&line);
        conf.push('\n');
    }
    let path = dir.join("smb.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

fn snapshot(repo: &Repository, share: &Path) -> i64 {
    let opts = BackupOptions {
        paths: vec![share.to_path_buf()],
        ..BackupOptions::default()
    };
    backup(repo, &opts, &Progress::default())
        .unwrap()
        .snapshot
        .time
        .sec
}

/// Sleep until just after the start of the next second.
fn next_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    std::thread::sleep(Duration::from_nanos(
        1_000_000_000 - now.subsec_nanos() as u64 + 5_000_000,
    ));
}

#[test]
fn previous_versions_through_samba_reach_every_snapshot_even_two_in_one_second() {
    require("smbd", "samba");
    require("smbclient", "smbclient");
    let tmp = tempfile::tempdir().unwrap();
    // smbd reads as the guest `nobody`: the path down to the share must be searchable (the
    // mount checks the stored modes).
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::set_permissions(&share, std::fs::Permissions::from_mode(0o755)).unwrap();
    let repo_dir = tmp.path().join("repo");
    init(&repo_dir);

    // Snapshots of a changing file, the content at each kept in order: two a second apart,
    // then two in one second (retried until a pair lands in one second).
    let file = share.join("report.txt");
    let mut contents: Vec<Vec<u8>> = Vec::new();
    {
        let repo =
            Repository::open(&repo_dir, PASSWORD.as_bytes(), &OpenOptions::default()).unwrap();
        let mut take = |content: Vec<u8>| {
            std::fs::write(&file, &content).unwrap();
            contents.push(content);
            snapshot(&repo, &share)
        };
        take(b"first\n".to_vec());
        next_second();
        take(b"second, longer\n".to_vec());
        let mut pair = false;
        for attempt in 0..10 {
            next_second();
            let a = take(format!("third {attempt}\n").into_bytes());
            let b = take(format!("fourth, same second {attempt}\n").into_bytes());
            if a == b {
                pair = true;
                break;
            }
        }
        assert!(pair, "no two snapshots in one second in 10 tries");
    }
    let listed = snapshots(&repo_dir);
    assert_eq!(listed.len(), contents.len());

    let mnt = tmp.path().join("mnt");
    let m = Mount::start(&repo_dir, &mnt, &["--allow-other"]);
    let port = free_port();
    let conf = smb_conf(&tmp.path().join("smb"), port, &share, &m.dir);
    let smbd = Smbd::start(&conf, port, tmp.path().join("smbd.log"));

    let info = smbclient(port, "allinfo report.txt");
    let mut versions: Vec<&str> = info
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("@GMT-"))
        .collect();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(
        versions.len(),
        contents.len(),
        "one @GMT version per snapshot, the same-second one too:\n{info}\nsmbd: {}",
        smbd.log()
    );
    // Oldest first, each version holds exactly the bytes of its snapshot.
    for (v, want) in versions.iter().zip(&contents) {
        let out = tmp.path().join(format!("{v}.txt"));
        smbclient(
            port,
            &format!("get \"{v}\\report.txt\" \"{}\"", out.display()),
        );
        assert_eq!(&std::fs::read(&out).unwrap(), want, "{v}");
    }
    // The live file is the share's own.
    let live = tmp.path().join("live.txt");
    smbclient(port, &format!("get report.txt \"{}\"", live.display()));
    assert_eq!(&std::fs::read(&live).unwrap(), contents.last().unwrap());
    drop(smbd);
    drop(m);
}
