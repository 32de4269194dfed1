//! `cairn status`: is the repository healthy? Latest snapshot per host, sync state per target,
//! last check, size and dedup. Exit 0 when healthy, 3 when something is overdue or failed.

use crate::{output, CmdResult, Global, EXIT_INCOMPLETE};
use cairn_repo::util::now_unix;
use std::collections::{BTreeMap, HashSet};

#[derive(clap::Args)]
pub struct Args {
    /// Overdue when a host's latest snapshot is older than this many hours
    #[arg(long, value_name = "HOURS")]
    max_age: Option<f64>,
    /// Overdue when a target's last successful sync is older than this many hours
    #[arg(long, value_name = "HOURS")]
    max_sync_age: Option<f64>,
    /// Overdue when the last check is older than this many days
    #[arg(long, value_name = "DAYS")]
    max_check_age: Option<f64>,
}

/// What `status` knows, gathered from the repository.
#[derive(Debug, Default)]
pub struct Facts {
    /// host -> (latest snapshot id, its unix time)
    pub hosts: BTreeMap<String, (String, i64)>,
    pub targets: Vec<TargetFacts>,
    pub check: Option<serde_json::Value>,
}

#[derive(Debug, Default)]
pub struct TargetFacts {
    pub name: String,
    pub url: String,
    /// The `sync.<name>` record: {"time","ok","snapshots":[hex],"error"}.
    pub last: Option<serde_json::Value>,
    pub unsynced: Vec<String>,
}

/// Everything overdue or failed, as sentences; empty means healthy.
pub fn problems(f: &Facts, a: &Args, now: i64) -> Vec<String> {
    let mut out = Vec::new();
    let hours = |t: i64| (now - t) as f64 / 3600.0;
    if let Some(max) = a.max_age {
        if f.hosts.is_empty() {
            out.push("no snapshots at all".into());
        }
        for (host, (_, t)) in &f.hosts {
            if hours(*t) > max {
                out.push(format!(
                    "host {host}: latest snapshot is {:.1} h old (limit {max} h)",
                    hours(*t)
                ));
            }
        }
    }
    for t in &f.targets {
        let ok = t.last.as_ref().and_then(|v| v["ok"].as_bool());
        let time = t.last.as_ref().and_then(|v| v["time"].as_i64());
        if ok == Some(false) {
            let err = t
                .last
                .as_ref()
                .and_then(|v| v["error"].as_str())
                .unwrap_or("unknown error");
            out.push(format!("target {}: last sync failed: {err}", t.name));
        }
        if let Some(max) = a.max_sync_age {
            match time {
                None => out.push(format!("target {}: never synced", t.name)),
                Some(s) if hours(s) > max => out.push(format!(
                    "target {}: last sync {:.1} h ago (limit {max} h)",
                    t.name,
                    hours(s)
                )),
                Some(_) => {}
            }
        }
    }
    let damaged = f
        .check
        .as_ref()
        .and_then(|c| c["damaged"].as_u64())
        .unwrap_or(0);
    if damaged > 0 {
        out.push(format!("last check found {damaged} damaged objects"));
    }
    if let Some(max) = a.max_check_age {
        match f.check.as_ref().and_then(|c| c["time"].as_i64()) {
            None => out.push("never checked".into()),
            Some(t) if hours(t) / 24.0 > max => out.push(format!(
                "last check {:.1} days ago (limit {max} days)",
                hours(t) / 24.0
            )),
            Some(_) => {}
        }
    }
    out
}

fn gather(
    repo: &cairn_repo::Repository,
) -> Result<(Facts, u64, cairn_repo::storage::Space), crate::Failure> {
    let snaps = repo.snapshots()?;
    let mut f = Facts::default();
    for s in &snaps {
        f.hosts.insert(
            s.snapshot.host.clone(),
            (s.id.to_hex(), s.snapshot.time.sec),
        );
    }
    let store = repo.storage();
    // Named targets live with the repository's own files (a server's are its business).
    let targets = match repo.local("status") {
        Ok(local) => local.targets()?,
        Err(_) => Vec::new(),
    };
    for (name, url) in targets {
        let last: Option<serde_json::Value> = store
            .state(&format!("sync.{name}"))?
            .and_then(|b| serde_json::from_slice(&b).ok());
        let synced: HashSet<String> = last
            .as_ref()
            .and_then(|v| v["snapshots"].as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let unsynced = snaps
            .iter()
            .map(|s| s.id.to_hex())
            .filter(|id| !synced.contains(id))
            .collect();
        f.targets.push(TargetFacts {
            name,
            url,
            last,
            unsynced,
        });
    }
    f.check = store
        .state(cairn_repo::check::LAST_KEY)?
        .and_then(|b| serde_json::from_slice(&b).ok());
    let logical = snaps.iter().map(|s| s.snapshot.stats.bytes).sum();
    Ok((f, logical, store.space()?))
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    let repo = g.open()?;
    let (f, logical, space) = gather(&repo)?;
    let now = now_unix();
    let problems = problems(&f, a, now);
    let dedup = if space.object_bytes > 0 {
        logical as f64 / space.object_bytes as f64
    } else {
        0.0
    };
    if g.json {
        output::json(&serde_json::json!({
            "healthy": problems.is_empty(),
            "problems": problems,
            "hosts": f.hosts.iter().map(|(h, (id, t))| serde_json::json!({"host": h, "latest": id, "time": t, "age_hours": (now - t) as f64 / 3600.0})).collect::<Vec<_>>(),
            "targets": f.targets.iter().map(|t| serde_json::json!({"name": t.name, "url": t.url, "last_sync": t.last, "unsynced_snapshots": t.unsynced})).collect::<Vec<_>>(),
            "last_check": f.check,
            "space": crate::stats::space_json(&space),
            "logical_bytes": logical,
            "dedup_ratio": dedup,
        }));
    } else {
        print_human(&f, &problems, now, &space, dedup);
    }
    Ok(if problems.is_empty() {
        0
    } else {
        EXIT_INCOMPLETE
    })
}

fn print_human(
    f: &Facts,
    problems: &[String],
    now: i64,
    space: &cairn_repo::storage::Space,
    dedup: f64,
) {
    for (h, (id, t)) in &f.hosts {
        output::line(&format!(
            "host {h}: latest snapshot {} at {} ({:.1} h ago)",
            &id[..8],
            crate::snapshots::format_local(*t, "%Y-%m-%d %H:%M:%S"),
            (now - t) as f64 / 3600.0
        ));
    }
    if f.hosts.is_empty() {
        output::line("no snapshots yet");
    }
    for t in &f.targets {
        let when = t
            .last
            .as_ref()
            .and_then(|v| v["time"].as_i64())
            .map(|s| format!("last sync {:.1} h ago", (now - s) as f64 / 3600.0))
            .unwrap_or_else(|| "never synced".into());
        output::line(&format!(
            "target {} ({}): {when}, {} snapshots not yet synced",
            t.name,
            t.url,
            t.unsynced.len()
        ));
    }
    match f.check.as_ref().and_then(|c| c["time"].as_i64()) {
        Some(t) => output::line(&format!(
            "last check {:.1} days ago",
            (now - t) as f64 / 86400.0
        )),
        None => output::line("never checked"),
    }
    output::line(&format!(
        "repository: {} stored, {} file, dedup+compression {dedup:.2}x",
        output::bytes(space.object_bytes),
        output::bytes(space.file_bytes)
    ));
    if problems.is_empty() {
        output::line("healthy");
    }
    for p in problems {
        output::line(&format!("PROBLEM: {p}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(max_age: Option<f64>, max_sync_age: Option<f64>, max_check_age: Option<f64>) -> Args {
        Args {
            max_age,
            max_sync_age,
            max_check_age,
        }
    }

    #[test]
    fn overdue_and_failed_things_are_problems() {
        let now = 1_000_000;
        let mut f = Facts::default();
        f.hosts.insert("a".into(), ("00".into(), now - 2 * 3600));
        assert!(problems(&f, &args(Some(3.0), None, None), now).is_empty());
        assert_eq!(problems(&f, &args(Some(1.0), None, None), now).len(), 1);
        f.targets.push(TargetFacts {
            name: "nas".into(),
            ..Default::default()
        });
        assert!(
            problems(&f, &args(None, None, None), now).is_empty(),
            "no limit: never synced is not a failure"
        );
        assert_eq!(
            problems(&f, &args(None, Some(24.0), None), now),
            vec!["target nas: never synced".to_string()]
        );
        f.targets[0].last = Some(
            serde_json::json!({"time": now - 60, "ok": false, "snapshots": [], "error": "ssh refused"}),
        );
        assert_eq!(
            problems(&f, &args(None, Some(24.0), None), now),
            vec!["target nas: last sync failed: ssh refused".to_string()]
        );
        f.check =
            Some(serde_json::json!({"time": now - 3 * 86400, "read_data": true, "damaged": 0}));
        f.targets.clear();
        assert!(problems(&f, &args(None, None, Some(7.0)), now).is_empty());
        assert_eq!(problems(&f, &args(None, None, Some(2.0)), now).len(), 1);
        f.check = Some(serde_json::json!({"time": now, "read_data": false, "damaged": 2}));
        assert_eq!(problems(&f, &args(None, None, None), now).len(), 1);
    }
}
