//! Helpers shared by the end-to-end tests: run the real `cairn` binary against throwaway
//! repositories.
#![allow(dead_code)]

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "correct horse battery staple";

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

/// A `cairn` command with the test password in the environment and no inherited repo.
pub fn cairn(repo: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env_remove("CAIRN_PASSWORD_FILE")
        .env_remove("CAIRN_PASSWORD_COMMAND")
        .env("CAIRN_PASSWORD", PASSWORD)
        .env("CAIRN_REPO", repo)
        // Remote repositories' object caches stay out of the home directory.
        .env(
            "XDG_CACHE_HOME",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache"),
        );
    c
}

/// A `cairn` command with no password anywhere (what a provider's server runs).
pub fn keyless(repo: &Path) -> Command {
    let mut c = cairn(repo);
    c.env_remove("CAIRN_PASSWORD");
    c
}

/// Restore the latest snapshot of `repo` into `out` and compare it with `src`.
pub fn restore_and_compare(repo: &Path, src: &Path, out: &Path) {
    ok(
        cairn(repo).args(["restore", "latest", "--target"]).arg(out),
        0,
    );
    assert_same_tree(src, &out.join(src.strip_prefix("/").unwrap()));
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(c: &mut Command) -> Run {
    let out: Output = c.output().expect("cairn runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run and require exit code `code`, returning stdout.
pub fn ok(c: &mut Command, code: i32) -> String {
    let r = run(c);
    assert_eq!(
        r.code, code,
        "exit code; stdout:\n{}\nstderr:\n{}",
        r.stdout, r.stderr
    );
    r.stdout
}

pub fn init(repo: &Path) {
    ok(cairn(repo).arg("init"), 0);
}

pub fn backup(repo: &Path, paths: &[&Path]) -> serde_json::Value {
    let out = ok(cairn(repo).args(["backup", "--json"]).args(paths), 0);
    serde_json::from_str(&out).expect("backup --json")
}

pub fn snapshots(repo: &Path) -> Vec<serde_json::Value> {
    let out = ok(cairn(repo).args(["snapshots", "--json"]), 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("snapshots --json");
    v["snapshots"].as_array().cloned().unwrap_or_default()
}

/// `diff -r --no-dereference` plus a metadata comparison via `stat`, failing with the output.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b)
        .output()
        .expect("diff");
    // diff reports special files it cannot compare ("X is a fifo while file Y is a fifo");
    // their metadata is compared below.
    let text = String::from_utf8_lossy(&out.stdout);
    let real: Vec<&str> = text.lines().filter(|l| !is_special_pair(l)).collect();
    assert!(
        out.status.code() == Some(0) || (out.status.code() == Some(1) && real.is_empty()),
        "trees differ:\n{text}"
    );
    let meta = |root: &Path| -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg("cd \"$1\" && find . -mindepth 1 -print0 | sort -z | xargs -0 stat --printf '%n %f %u %g %s %Y %y %h %t:%T\\n'")
            .arg("sh")
            .arg(root)
            .output()
            .expect("stat");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        meta(a),
        meta(b),
        "metadata differs between {} and {}",
        a.display(),
        b.display()
    );
}

fn is_special_pair(line: &str) -> bool {
    [
        "fifo",
        "socket",
        "character special file",
        "block special file",
    ]
    .iter()
    .any(|k| line.starts_with("File ") && line.matches(&format!(" is a {k}")).count() == 2)
}

/// Some chunk of the repository, and the repository's piece size (to damage it in tests).
pub fn some_chunk(repo: &Path) -> (cairn_repo::Id, u32) {
    let store = cairn_repo::storage::LocalStore::open(repo, 1 << 20).unwrap();
    let found = cairn_repo::testkit::objects(&store)
        .unwrap()
        .into_iter()
        .find(|(_, o)| o.kind == cairn_repo::crypto::Kind::Chunk)
        .map(|(id, _)| id);
    (found.unwrap(), store.config().unwrap().piece_size)
}

pub const WAIT: Duration = Duration::from_secs(20);

/// A running `cairn mount`; dropping it stops the process and clears the mountpoint.
pub struct Mount {
    pub child: Child,
    pub dir: PathBuf,
    log: PathBuf,
}

impl Mount {
    pub fn start(repo: &Path, dir: &Path, extra: &[&str]) -> Mount {
        Mount::start_with(cairn(repo), dir, extra)
    }

    /// Mount with a prepared `cairn` command (its environment: a repository over ssh).
    pub fn start_with(mut cmd: Command, dir: &Path, extra: &[&str]) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.with_extension("log");
        let child = cmd
            .args(["mount", "--refresh", "1"])
            .args(extra)
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cairn mount starts");
        let mut m = Mount {
            child,
            dir: dir.to_path_buf(),
            log,
        };
        m.wait_ready();
        m
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("cairn mount exited early ({st}): {}", self.stderr());
            }
            if mounted(&self.dir) && self.dir.join("snapshots").is_dir() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mount did not come up within {WAIT:?}: {}", self.stderr());
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Wait for the process to exit, with a bound.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The snapshot directory `latest` points at.
    pub fn latest(&self) -> PathBuf {
        let t = std::fs::read_link(self.dir.join("latest")).unwrap();
        self.dir.join(t)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if mounted(&self.dir) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.dir)
                .status();
        }
    }
}

pub fn mounted(dir: &Path) -> bool {
    let Ok(canon) = dir.canonicalize().or_else(|_| std::path::absolute(dir)) else {
        return false;
    };
    let info = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    let want = canon.as_os_str().as_bytes();
    info.split(|b| *b == b'\n')
        .any(|l| l.split(|b| *b == b' ').nth(4) == Some(want))
}
pub mod ssh;

/// A small tree: a text file, 3 MB of noise, an empty file and a symlink.
pub fn small_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("docs/old")).unwrap();
    std::fs::write(dir.join("docs/letter.txt"), "dear customer\n".repeat(500)).unwrap();
    std::fs::write(
        dir.join("docs/old/random"),
        cairn_repo::testkit::noise(7, 3_000_000),
    )
    .unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("docs/letter.txt", dir.join("link")).unwrap();
}

/// 80 MB of incompressible data in 40 files (long enough to kill a backup in the middle).
pub fn forty_files(dir: &Path, seed: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..40 {
        std::fs::write(
            dir.join(format!("f{i}")),
            cairn_repo::testkit::noise(seed + i, 2_000_000),
        )
        .unwrap();
    }
    dir.to_path_buf()
}

/// Run, require exit 0, and parse stdout as the command's `--json` report.
pub fn json(c: &mut Command) -> serde_json::Value {
    let out = ok(c, 0);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("--json: {e}\n{out}"))
}

/// How many snapshots `c` (a `cairn` command for some repository) lists.
pub fn snapshot_count(c: &mut Command) -> usize {
    json(c.args(["snapshots", "--json"]))["snapshots"]
        .as_array()
        .unwrap()
        .len()
}
