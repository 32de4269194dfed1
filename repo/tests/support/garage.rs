//! A real S3 server for tests: a three-node, three-zone Garage cluster on 127.0.0.1
//! (`replication_factor = 3`) started by `scripts/garage`. Standard library only, so that any test
//! file of any crate of the workspace can include it:
//!
//! ```ignore
//! #[path = "support/garage.rs"]   // from repo/tests/*.rs; "../repo/tests/support/garage.rs" from tests/*.rs
//! mod garage;
//! let g = garage::Garage::start();            // its own cluster, stopped and deleted on drop
//! let g = garage::Garage::shared();           // one per test binary, gone when the process ends
//! Command::new(cairn).envs(g.env().iter().cloned())   // AWS_ENDPOINT_URL, AWS_REGION, keys, …
//! ```
//!
//! The Garage binary is `$CAIRN_GARAGE` (which `scripts/test` exports) or the one that
//! `scripts/garage install` puts in the cache. Without it the tests fail with a message saying
//! so; they never skip.
//!
//! No node outlives the test process: the cluster is run by `scripts/garage run DIR`, which keeps
//! it only as long as its stdin (a pipe from this process) stays open, then kills the nodes and
//! deletes DIR. Drop closes the pipe and waits; the shared cluster is stopped the same way by an
//! `atexit` handler; and however else the process ends (SIGKILL, abort), the kernel closes the
//! pipe and the script cleans up moments later.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// A running cluster. Nodes are numbered 1, 2, 3 (zones z1, z2, z3).
pub struct Garage {
    dir: PathBuf,
    env: Vec<(String, String)>,
    root: PathBuf,
    bin: PathBuf,
    /// `scripts/garage run DIR` and the write end of its stdin; closing it stops the cluster.
    run: Mutex<Option<(Child, ChildStdin)>>,
}

/// The directory holding `scripts/garage`, found from this crate's manifest dir upwards.
pub fn repo_root() -> PathBuf {
    let start = Path::new(env!("CARGO_MANIFEST_DIR"));
    start
        .ancestors()
        .find(|d| d.join("scripts/garage").is_file())
        .unwrap_or_else(|| panic!("no scripts/garage in {} or above it", start.display()))
        .to_path_buf()
}

/// The Garage binary: `$CAIRN_GARAGE`, else where `scripts/garage install` puts it (asked with
/// `scripts/garage path`, which installs nothing). Panics when it is not there.
pub fn garage_binary() -> PathBuf {
    let root = repo_root();
    let bin = match std::env::var_os("CAIRN_GARAGE") {
        Some(b) if !b.is_empty() => PathBuf::from(b),
        _ => {
            let out = Command::new(root.join("scripts/garage"))
                .arg("path")
                .stdin(Stdio::null())
                .output()
                .expect("run scripts/garage path");
            assert!(
                out.status.success(),
                "scripts/garage path failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    };
    if !bin.is_file() {
        panic!(
            "the Garage binary is not installed at {}: these tests run a real Garage cluster; \
             run `scripts/garage install` (builds Garage 2.5.0 once into the cache, it takes \
             minutes) or `scripts/test` (which does), or point CAIRN_GARAGE at a garage binary",
            bin.display()
        );
    }
    bin
}

static SHARED: OnceLock<Garage> = OnceLock::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Garage {
    /// Starts a fresh cluster in a new directory under `std::env::temp_dir()`, with a bucket
    /// (`$GARAGE_BUCKET` or `cairn-test`) and a key that may read, write and own it. Panics, with
    /// the script's message (and the failing node's log), if it does not come up.
    pub fn start() -> Garage {
        let root = repo_root();
        let bin = garage_binary();
        let dir = std::env::temp_dir().join(format!(
            "cairn-garage-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap(); // left by an earlier process with our pid
        }
        std::fs::create_dir_all(&dir).unwrap();

        let mut child = Command::new(root.join("scripts/garage"))
            .arg("run")
            .arg(&dir)
            .env("CAIRN_GARAGE", &bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run scripts/garage run");
        // The script closes stdout and stderr once the cluster is up (or exits if it fails).
        let mut stderr = child.stderr.take().unwrap();
        let errors = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut printed = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut printed)
            .unwrap();
        let errors = errors.join().unwrap();
        let env = parse_env(&printed);
        if !env.iter().any(|(k, _)| k == "AWS_ENDPOINT_URL") {
            let stdin = child.stdin.take();
            drop(stdin);
            let status = child.wait().unwrap();
            panic!(
                "scripts/garage run {} did not start a cluster ({status}):\n{errors}{printed}",
                dir.display()
            );
        }
        let stdin = child.stdin.take().unwrap();
        Garage {
            dir,
            env,
            root,
            bin,
            run: Mutex::new(Some((child, stdin))),
        }
    }

    /// One cluster for the whole test binary, started by the first caller. It is never dropped:
    /// its nodes go when the process ends (see the module comment). Tests that kill nodes should
    /// start their own.
    pub fn shared() -> &'static Garage {
        SHARED.get_or_init(|| {
            let g = Garage::start();
            // SAFETY: atexit is libc's (std links it); the handler only touches a static.
            unsafe { atexit(stop_shared) };
            g
        })
    }

    /// Stops the cluster now and waits for it: closes the script's stdin, and it kills the nodes
    /// and deletes the directory. Done by drop; again later is a no-op.
    pub fn stop(&self) {
        let run = self.run.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((mut child, stdin)) = run {
            drop(stdin);
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// `AWS_ENDPOINT_URL` (node 1), `AWS_REGION` (`garage`), `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `CAIRN_TEST_BUCKET`, `GARAGE_S3_PORTS` (`"p1 p2 p3"`), as in
    /// `DIR/env`.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// One variable of `env()`; panics if absent.
    pub fn var(&self, name: &str) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{name} is not in {}/env", self.dir.display()))
    }

    /// `http://127.0.0.1:PORT`, node 1's S3 API.
    pub fn endpoint(&self) -> &str {
        self.var("AWS_ENDPOINT_URL")
    }

    /// Node N's S3 API (1..=3).
    pub fn endpoint_of(&self, n: usize) -> String {
        format!("http://127.0.0.1:{}", self.s3_ports()[n - 1])
    }

    /// The bucket created with the cluster.
    pub fn bucket(&self) -> &str {
        self.var("CAIRN_TEST_BUCKET")
    }

    /// The S3 ports of nodes 1, 2, 3.
    pub fn s3_ports(&self) -> Vec<u16> {
        self.var("GARAGE_S3_PORTS")
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect()
    }

    /// Creates another bucket that the cluster's key may read, write and own.
    pub fn create_bucket(&self, name: &str) {
        self.script(&["bucket", name]);
    }

    /// `kill -9` node N (1..=3); returns once the process is gone.
    pub fn kill_node(&self, n: usize) {
        self.script(&["kill", &n.to_string()]);
    }

    /// Starts node N again with its config and data; returns once the cluster is healthy again.
    pub fn restart_node(&self, n: usize) {
        self.script(&["restart", &n.to_string()]);
    }

    /// `scripts/garage status DIR`: `garage status` and `garage health` from a live node.
    pub fn status(&self) -> String {
        self.script(&["status"])
    }

    /// The cluster's directory (node N in `DIR/nodeN`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Node N's config file, for `garage -c`.
    pub fn config(&self, n: usize) -> PathBuf {
        self.dir.join(format!("node{n}/garage.toml"))
    }

    /// The Garage binary the cluster runs.
    pub fn binary(&self) -> &Path {
        &self.bin
    }

    /// The pid of node N's server, if its pid file names one (it is removed on kill and stop).
    pub fn pid(&self, n: usize) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(format!("node{n}/pid")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// `garage -c <node N's config> ARGS…` (the admin CLI, talking to node N over RPC).
    pub fn cli(&self, n: usize, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c")
            .arg(self.config(n))
            .args(args)
            .stdin(Stdio::null());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("GARAGE_") {
                cmd.env_remove(k); // would override the config (GARAGE_RPC_SECRET, GARAGE_RPC_HOST…)
            }
        }
        cmd.output().expect("run garage")
    }

    /// Like `cli`, but panics unless it succeeds; returns stdout.
    pub fn cli_ok(&self, n: usize, args: &[&str]) -> String {
        let out = self.cli(n, args);
        assert!(
            out.status.success(),
            "garage -c {} {} failed ({}):\n{}{}",
            self.config(n).display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn script(&self, args: &[&str]) -> String {
        let (cmd, rest) = args.split_first().unwrap();
        let out = Command::new(self.root.join("scripts/garage"))
            .arg(cmd)
            .arg(&self.dir)
            .args(rest)
            .env("CAIRN_GARAGE", &self.bin)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/garage");
        assert!(
            out.status.success(),
            "scripts/garage {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}

extern "C" {
    fn atexit(handler: extern "C" fn()) -> std::os::raw::c_int;
}

/// At exit (the test binary returning from main, or `process::exit` after a failed test), the
/// shared cluster is stopped before the process is gone, so none of it is left when `cargo test`
/// returns. (A process killed outright skips this; its closed pipe stops the cluster instead.)
extern "C" fn stop_shared() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(g) = SHARED.get() {
            g.stop();
        }
    });
}

/// `export NAME=VALUE` lines, VALUE optionally in one pair of quotes.
fn parse_env(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.to_string(), v.to_string())
        })
        .collect()
}
