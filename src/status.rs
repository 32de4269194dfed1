//! `cairn status`: is the repository healthy? Latest snapshot per host, sync state per target,
//! last check, size and dedup. Exit 0 when healthy, 3 when something is overdue or failed.
//! Given repositories or directories of them, one row each, key-free (`fleet`).

mod fleet;

use crate::primary::Primary;
use crate::{output, CmdResult, Global, EXIT_INCOMPLETE};
use cairn_repo::util::now_unix;
use std::collections::{BTreeMap, HashSet};

#[derive(clap::Args)]
pub struct Args {
    /// Several repositories at once (a provider's fleet): URLs, repository directories, or
    /// directories holding repositories; one row each, read without any key
    #[arg(value_name = "REPO|DIR")]
    repos: Vec<String>,
    /// Also write the figures as Prometheus gauges (`cairn_…{repo="NAME"}`) to this file,
    /// atomically, for node_exporter's textfile collector
    #[arg(long, value_name = "FILE")]
    prometheus: Option<std::path::PathBuf>,
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
    /// host -> (latest snapshot id, its unix time); empty without the key (hosts are
    /// encrypted), when `newest` stands for them all.
    pub hosts: BTreeMap<String, (String, i64)>,
    pub snapshots: u64,
    /// The newest snapshot and its time, from the public references when there is no key.
    pub newest: Option<(String, i64)>,
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
        if f.snapshots == 0 {
            out.push("no snapshots at all".into());
        }
        if let (true, Some((_, t))) = (f.hosts.is_empty(), &f.newest) {
            if hours(*t) > max {
                out.push(format!(
                    "the newest snapshot is {:.1} h old (limit {max} h)",
                    hours(*t)
                ));
            }
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

/// Snapshot ids with their times: decrypted with the key (and hosts and logical sizes), or
/// from the public references without it (snapshots from before format 2 have no time there).
fn snapshot_facts(primary: &Primary, f: &mut Facts) -> Result<(Vec<String>, u64), crate::Failure> {
    let mut times: Vec<(String, i64)> = Vec::new();
    let mut logical = 0;
    match primary {
        Primary::Keyed(repo) => {
            for s in repo.snapshots()? {
                f.hosts.insert(
                    s.snapshot.host.clone(),
                    (s.id.to_hex(), s.snapshot.time.sec),
                );
                logical += s.snapshot.stats.bytes;
                times.push((s.id.to_hex(), s.snapshot.time.sec));
            }
        }
        Primary::KeyFree(store) => {
            for (id, blob) in store.snapshots()? {
                let time = cairn_repo::graph::public_refs(&id, &blob)?.map_or(i64::MIN, |r| r.time);
                times.push((id.to_hex(), time));
            }
        }
    }
    f.snapshots = times.len() as u64;
    f.newest = times
        .iter()
        .filter(|(_, t)| *t != i64::MIN)
        .max_by_key(|(_, t)| *t)
        .cloned();
    Ok((times.into_iter().map(|(id, _)| id).collect(), logical))
}

fn gather(primary: &Primary) -> Result<(Facts, u64, cairn_repo::storage::Space), crate::Failure> {
    let mut f = Facts::default();
    let (ids, logical) = snapshot_facts(primary, &mut f)?;
    let store = primary.storage();
    let mut targets = cairn_repo::sync::targets::list(store)?;
    // And the URLs synced to without a name (`cairn sync URL`, a server's cron job).
    let urls: Vec<String> = store
        .state(crate::sync::URL_TARGETS_KEY)?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for url in urls {
        if !targets.iter().any(|(_, u)| *u == url) {
            targets.push((url.clone(), url));
        }
    }
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
        let unsynced = ids
            .iter()
            .filter(|id| !synced.contains(*id))
            .cloned()
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
    Ok((f, logical, store.space()?))
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    if !a.repos.is_empty() {
        return fleet::run(g, a);
    }
    // Without a password, what the store shows: no hosts or logical sizes (DESIGN.md §6).
    let primary = Primary::open(g, 0)?;
    let (f, logical, space) = gather(&primary)?;
    let quota = fleet::quota(primary.storage())?;
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
            "key_free": !primary.has_key(),
            "snapshots": f.snapshots,
            "newest": f.newest.as_ref().map(|(id, t)| serde_json::json!({"id": id, "time": t, "age_hours": (now - t) as f64 / 3600.0})),
            "hosts": f.hosts.iter().map(|(h, (id, t))| serde_json::json!({"host": h, "latest": id, "time": t, "age_hours": (now - t) as f64 / 3600.0})).collect::<Vec<_>>(),
            "targets": f.targets.iter().map(|t| serde_json::json!({"name": t.name, "url": t.url, "last_sync": t.last, "unsynced_snapshots": t.unsynced})).collect::<Vec<_>>(),
            "last_check": f.check,
            "space": crate::stats::space_json(&space),
            "quota_bytes": quota,
            "used_bytes": space.used(),
            "logical_bytes": logical,
            "dedup_ratio": (dedup > 0.0).then_some(dedup),
        }));
    } else {
        print_human(&f, &problems, now, &space, dedup);
        if let Some(q) = quota {
            output::line(&format!(
                "quota: {} of {} used",
                output::bytes(space.used()),
                output::bytes(q)
            ));
        }
    }
    let healthy = problems.is_empty();
    if let Some(file) = &a.prometheus {
        let name = g.repo_url()?.to_string();
        let row = fleet::Row {
            name: name.clone(),
            url: name,
            facts: f,
            space: Some(space),
            quota,
            problems,
        };
        fleet::write_prometheus(file, &[row])?;
    }
    Ok(if healthy { 0 } else { EXIT_INCOMPLETE })
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
    match (&f.newest, f.hosts.is_empty()) {
        _ if f.snapshots == 0 => output::line("no snapshots yet"),
        (Some((id, t)), true) => output::line(&format!(
            "{} snapshots; newest {} at {} ({:.1} h ago)",
            f.snapshots,
            &id[..8],
            crate::snapshots::format_local(*t, "%Y-%m-%d %H:%M:%S"),
            (now - t) as f64 / 3600.0
        )),
        (None, true) => output::line(&format!(
            "{} snapshots, all from before format 2 (their times need the key)",
            f.snapshots
        )),
        (_, false) => {}
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
    // Logical sizes are inside the encrypted snapshots: no ratio without the key.
    let ratio = match dedup > 0.0 {
        true => format!(", dedup+compression {dedup:.2}x"),
        false => String::new(),
    };
    output::line(&format!(
        "repository: {} stored, {} file{ratio}",
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
            repos: vec![],
            prometheus: None,
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
        f.snapshots = 1;
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
