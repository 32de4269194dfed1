//! The Garage harness (tests/support/garage.rs, scripts/garage) starts what it says: three real
//! Garage processes in three zones, a bucket and a key, one node can be killed and restarted,
//! two clusters can run at once, and no node outlives the test process. (The S3 round trips are
//! the storage conformance tests' job: signing SigV4 needs a crate, this file uses std only.)

#[path = "support/garage.rs"]
mod garage;

use garage::Garage;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The rows of the HEALTHY and FAILED sections of `garage status`.
fn nodes(status: &str) -> (Vec<String>, Vec<String>) {
    let (mut healthy, mut failed) = (vec![], vec![]);
    let mut section = None;
    for line in status.lines() {
        match line.trim() {
            "==== HEALTHY NODES ====" => section = Some(true),
            "==== FAILED NODES ====" => section = Some(false),
            "" => section = None,
            l if l.starts_with("ID ") => {}
            l => match section {
                Some(true) => healthy.push(l.to_string()),
                Some(false) => failed.push(l.to_string()),
                None => {}
            },
        }
    }
    (healthy, failed)
}

fn zone(row: &str) -> &str {
    row.split_whitespace()
        .find(|t| matches!(*t, "z1" | "z2" | "z3"))
        .unwrap_or_else(|| panic!("no zone in status row {row:?}"))
}

/// Polls `garage status` on node N until it lists `up` healthy and `down` failed nodes.
fn wait_for_nodes(g: &Garage, n: usize, up: usize, down: usize) -> String {
    let t = Instant::now();
    loop {
        let status = g.cli_ok(n, &["status"]);
        let (h, f) = nodes(&status);
        if h.len() == up && f.len() == down {
            return status;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "node {n} never saw {up} healthy and {down} failed nodes:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An unsigned GET of the bucket on one S3 port: Garage answers with its S3 error document.
fn s3_answer(port: u16, bucket: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

fn process_of(pid: u32, dir: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&*dir.to_string_lossy()))
        .unwrap_or(false)
}

fn wait_gone(pids: &[u32], dir: &Path, what: &str) {
    let t = Instant::now();
    while pids.iter().any(|&p| process_of(p, dir)) || dir.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{what}: 20 s later, nodes {:?} or {} are still there",
            pids.iter()
                .filter(|&&p| process_of(p, dir))
                .collect::<Vec<_>>(),
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_nodes_in_three_zones_survive_one_killed_and_restarted() {
    let t = Instant::now();
    let g = Garage::start();
    eprintln!("cluster started in {:.1} s", t.elapsed().as_secs_f64());

    // The environment a client takes.
    let ports = g.s3_ports();
    assert_eq!(ports.len(), 3);
    assert_ne!(ports[0], ports[1]);
    assert_ne!(ports[1], ports[2]);
    assert_eq!(g.endpoint(), format!("http://127.0.0.1:{}", ports[0]));
    assert_eq!(g.var("AWS_REGION"), "garage");
    assert_eq!(
        g.bucket(),
        std::env::var("GARAGE_BUCKET").unwrap_or("cairn-test".into())
    );
    let key_id = g.var("AWS_ACCESS_KEY_ID").to_string();
    let secret = g.var("AWS_SECRET_ACCESS_KEY").to_string();
    assert!(
        key_id.starts_with("GK") && secret.len() >= 32,
        "{key_id} {secret}"
    );
    let mode = std::fs::metadata(g.dir().join("env"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "DIR/env holds the secret");

    // Three processes, each its own config, each in its own zone, all healthy.
    let pids: Vec<u32> = (1..=3).map(|n| g.pid(n).expect("a pid file")).collect();
    for (n, &pid) in pids.iter().enumerate() {
        assert!(
            process_of(pid, &g.config(n + 1)),
            "node {} (pid {pid}) is not running",
            n + 1
        );
    }
    let status = g.cli_ok(1, &["status"]);
    let (healthy, failed) = nodes(&status);
    assert_eq!(healthy.len(), 3, "{status}");
    assert!(failed.is_empty(), "{status}");
    let mut zones: Vec<&str> = healthy.iter().map(|r| zone(r)).collect();
    zones.sort();
    assert_eq!(zones, ["z1", "z2", "z3"], "{status}");
    let health = g.cli_ok(2, &["health"]);
    assert!(
        health.contains("HEALTHY") && health.contains("Storage nodes up:          3"),
        "{health}"
    );
    let layout = g.cli_ok(3, &["layout", "show"]);
    assert!(layout.contains("Zone redundancy: maximum"), "{layout}");

    // The bucket exists, the key may read, write and own it.
    let info = g.cli_ok(1, &["bucket", "info", g.bucket()]);
    assert!(
        info.contains(&format!("Global alias:    {}", g.bucket())),
        "{info}"
    );
    assert!(
        info.lines()
            .any(|l| l.starts_with("RWO") && l.contains(&key_id)),
        "{info}"
    );

    // Every node serves S3 (an unsigned request gets Garage's S3 error, in region "garage").
    for &port in &ports {
        let a = s3_answer(port, g.bucket()).unwrap();
        assert!(
            a.starts_with("HTTP/1.1 403") && a.contains("<Code>AccessDenied</Code>"),
            "{a}"
        );
        assert!(a.contains("<Region>garage</Region>"), "{a}");
    }

    // No process has the S3 secret or the RPC secret on its command line.
    let rpc_secret = std::fs::read_to_string(g.dir().join("rpc_secret")).unwrap();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline);
            assert!(
                !cmdline.contains(&secret),
                "the S3 secret is on {cmdline:?}"
            );
            assert!(
                !cmdline.contains(rpc_secret.trim()),
                "the RPC secret is on {cmdline:?}"
            );
        }
    }

    // One node killed: the other two say so and keep serving.
    g.kill_node(3);
    assert!(
        !process_of(pids[2], &g.config(3)),
        "node 3 survived kill -9"
    );
    let status = wait_for_nodes(&g, 1, 2, 1);
    let (healthy, failed) = nodes(&status);
    assert_eq!(zone(&failed[0]), "z3", "{status}");
    assert!(healthy.iter().all(|r| zone(r) != "z3"), "{status}");
    wait_for_nodes(&g, 2, 2, 1);
    let health = g.cli_ok(1, &["health"]);
    assert!(health.contains("DEGRADED"), "{health}");
    assert!(
        health.contains("Partitions with quorum:    256"),
        "{health}"
    );
    assert!(
        s3_answer(ports[2], g.bucket()).is_err(),
        "node 3's S3 port still answers"
    );
    for &port in &ports[..2] {
        let a = s3_answer(port, g.bucket()).unwrap();
        assert!(a.contains("<Code>AccessDenied</Code>"), "{a}");
    }
    let info = g.cli_ok(2, &["bucket", "info", g.bucket()]);
    assert!(info.contains(&key_id), "{info}");

    // Restarted on its config and data: the same node, in zone z3, all three healthy again.
    let t = Instant::now();
    g.restart_node(3);
    eprintln!("node 3 restarted in {:.1} s", t.elapsed().as_secs_f64());
    for n in 1..=3 {
        let status = wait_for_nodes(&g, n, 3, 0);
        let healthy = nodes(&status).0;
        let mut zones: Vec<&str> = healthy.iter().map(|r| zone(r)).collect();
        zones.sort();
        assert_eq!(zones, ["z1", "z2", "z3"], "{status}");
    }
    assert!(g.cli_ok(3, &["health"]).contains("HEALTHY"));
    // Restarted by the `scripts/garage run` that holds the cluster, as its child like the others
    // (so it reaps it: no zombie is left behind).
    let supervisor = std::fs::read_to_string(g.dir().join("supervisor")).unwrap();
    for n in 1..=3 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", g.pid(n).unwrap())).unwrap();
        let ppid = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap();
        assert_eq!(ppid, supervisor.trim(), "node {n}'s parent");
    }
    assert!(s3_answer(ports[2], g.bucket())
        .unwrap()
        .contains("AccessDenied"));

    // Dropped: the nodes are gone, and so is the directory.
    let dir = g.dir().to_path_buf();
    let pids: Vec<u32> = (1..=3).map(|n| g.pid(n).unwrap()).collect();
    let t = Instant::now();
    drop(g);
    eprintln!("cluster stopped in {:.1} s", t.elapsed().as_secs_f64());
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert!(
        pids.iter().all(|&p| !process_of(p, &dir)),
        "a node outlived the drop"
    );
}

#[test]
fn two_clusters_at_once_and_another_bucket() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(Garage::start);
        let b = s.spawn(Garage::start);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.dir(), b.dir());
    for p in a.s3_ports() {
        assert!(!b.s3_ports().contains(&p));
    }
    assert_ne!(a.var("AWS_ACCESS_KEY_ID"), b.var("AWS_ACCESS_KEY_ID"));

    // Another bucket, the same key allowed on it, in one cluster only.
    a.create_bucket("cairn-second");
    let info = a.cli_ok(3, &["bucket", "info", "cairn-second"]);
    let key_id = a.var("AWS_ACCESS_KEY_ID");
    assert!(
        info.lines()
            .any(|l| l.starts_with("RWO") && l.contains(key_id)),
        "{info}"
    );
    let list = a.cli_ok(2, &["bucket", "list"]);
    assert!(
        list.contains("cairn-second") && list.contains(a.bucket()),
        "{list}"
    );
    assert!(!b
        .cli(1, &["bucket", "info", "cairn-second"])
        .status
        .success());
    assert!(a.status().contains("HEALTHY"));

    let (dir, pids) = (
        a.dir().to_path_buf(),
        (1..=3).filter_map(|n| a.pid(n)).collect::<Vec<_>>(),
    );
    assert_eq!(pids.len(), 3);
    drop(a);
    wait_gone(&pids, &dir, "after the drop");
    // The other one did not notice.
    assert_eq!(nodes(&b.cli_ok(1, &["status"])).0.len(), 3);
}

/// `Garage::shared()` is one cluster per process. Run on its own by the next test, it also
/// reports the cluster (and, asked to, waits to be killed).
#[test]
fn shared_cluster_is_one_per_process() {
    let g = Garage::shared();
    assert!(std::ptr::eq(g, Garage::shared()));
    let again = std::thread::spawn(|| Garage::shared() as *const Garage as usize)
        .join()
        .unwrap();
    assert_eq!(again, g as *const Garage as usize);
    assert_eq!(nodes(&g.cli_ok(1, &["status"])).0.len(), 3);
    if std::env::var_os("CAIRN_GARAGE_HARNESS_REPORT").is_some() {
        let pids: Vec<String> = (1..=3).map(|n| g.pid(n).unwrap().to_string()).collect();
        println!("garage-dir: {}", g.dir().display());
        println!("garage-pids: {}", pids.join(" "));
        std::io::stdout().flush().unwrap();
        if std::env::var_os("CAIRN_GARAGE_HARNESS_HOLD").is_some() {
            std::thread::sleep(Duration::from_secs(600));
        }
    }
}

/// This test binary, running only `shared_cluster_is_one_per_process`.
fn child(extra_env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "shared_cluster_is_one_per_process",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("CAIRN_GARAGE_HARNESS_REPORT", "1")
    .envs(extra_env.iter().copied())
    .stdin(Stdio::null());
    c
}

/// Reads the child's report (libtest may have printed "test … ... " in front of it).
fn report(line: &str, dir: &mut Option<std::path::PathBuf>, pids: &mut Vec<u32>) {
    let after = |tag: &str| line.find(tag).map(|i| &line[i + tag.len()..]);
    if let Some(d) = after("garage-dir: ") {
        *dir = Some(d.into());
    }
    if let Some(p) = after("garage-pids: ") {
        *pids = p.split_whitespace().map(|p| p.parse().unwrap()).collect();
    }
}

#[test]
fn no_node_outlives_the_test_process() {
    // A process that ends normally: statics are not dropped, the nodes go all the same.
    let out = child(&[]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut dir, mut pids) = (None, vec![]);
    stdout.lines().for_each(|l| report(l, &mut dir, &mut pids));
    let dir = dir.unwrap_or_else(|| panic!("no report in {stdout}"));
    assert_eq!(pids.len(), 3);
    // Gone by the time the process is (the atexit handler waited for the script), not later.
    let left: Vec<_> = pids.iter().filter(|&&p| process_of(p, &dir)).collect();
    assert!(left.is_empty(), "nodes {left:?} outlived the test process");
    assert!(!dir.exists(), "{} outlived the test process", dir.display());

    // A process killed with SIGKILL mid-test.
    let mut c = child(&[("CAIRN_GARAGE_HARNESS_HOLD", "1")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut dir, mut pids) = (None, vec![]);
    for line in BufReader::new(c.stdout.take().unwrap()).lines() {
        report(&line.unwrap(), &mut dir, &mut pids);
        if !pids.is_empty() {
            break;
        }
    }
    let dir = dir.expect("no report from the child");
    assert!(
        pids.iter().all(|&p| process_of(p, &dir)),
        "the child's nodes are not running"
    );
    c.kill().unwrap();
    c.wait().unwrap();
    wait_gone(&pids, &dir, "after the test process was killed");
}

#[test]
fn a_missing_garage_binary_fails_the_test_and_says_how_to_install_it() {
    let out = child(&[("CAIRN_GARAGE", "/nonexistent/garage")])
        .output()
        .unwrap();
    let all =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("/nonexistent/garage") && all.contains("scripts/garage install"),
        "{all}"
    );
}
