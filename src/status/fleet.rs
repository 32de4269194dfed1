//! `cairn status REPO|DIR…`: one row per repository of a provider's fleet, without any key,
//! and the same figures as Prometheus gauges for node_exporter's textfile collector.

use super::{gather, problems, Args, Facts};
use crate::primary::Primary;
use crate::{output, CmdResult, Failure, Global, EXIT_INCOMPLETE};
use cairn_repo::storage::{Space, Url};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One repository's figures, or why it could not be read.
pub struct Row {
    pub name: String,
    pub url: String,
    pub facts: Facts,
    pub space: Option<Space>,
    pub quota: Option<u64>,
    pub problems: Vec<String>,
}

/// The repositories `args` name: URLs as they are; a directory that is a repository; the
/// repositories directly inside a directory that is not one (sorted by name).
fn expand(args: &[String]) -> Result<Vec<(String, String)>, Failure> {
    let mut out = Vec::new();
    for a in args {
        let url = Url::parse(std::ffi::OsStr::new(a))?;
        let Url::Local(dir) = &url else {
            out.push((a.clone(), a.clone()));
            continue;
        };
        if is_repo(dir) {
            out.push((name_of(dir), dir.display().to_string()));
            continue;
        }
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Failure::from(cairn_repo::Error::RepoNotFound {
                path: dir.clone(),
                reason: format!("neither a repository nor a directory of repositories ({e})"),
            })
        })?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_repo(p))
            .collect();
        found.sort();
        if found.is_empty() {
            return Err(cairn_repo::Error::RepoNotFound {
                path: dir.clone(),
                reason: "no repository in it".into(),
            }
            .into());
        }
        out.extend(found.iter().map(|p| (name_of(p), p.display().to_string())));
    }
    Ok(out)
}

fn is_repo(dir: &Path) -> bool {
    cairn_repo::storage::LocalStore::exists(dir)
}

fn name_of(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// The quota `cairn serve --quota` recorded in the repository's state (`{"bytes": N}`).
pub fn quota(store: &dyn cairn_repo::storage::Storage) -> Result<Option<u64>, Failure> {
    Ok(store
        .state(cairn_repo::sync::serve::QUOTA_KEY)?
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["bytes"].as_u64()))
}

/// The figures of one repository of a fleet.
fn row(name: String, url: String, primary: Result<Primary, Failure>, a: &Args) -> Row {
    let mut row = Row {
        name,
        url,
        facts: Facts::default(),
        space: None,
        quota: None,
        problems: Vec::new(),
    };
    let gathered = primary.and_then(|p| Ok((gather(&p)?, quota(p.storage())?)));
    match gathered {
        Ok(((facts, _, space), quota)) => {
            row.problems = problems(&facts, a, cairn_repo::util::now_unix());
            row.facts = facts;
            row.space = Some(space);
            row.quota = quota;
        }
        Err(f) => row.problems.push(format!("cannot read it: {}", f.message)),
    }
    row
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    let rows: Vec<Row> = expand(&a.repos)?
        .into_iter()
        .map(|(name, url)| {
            let primary = Url::parse(std::ffi::OsStr::new(&url))
                .map_err(Failure::from)
                .and_then(|u| Ok(cairn_repo::storage::open(&u, &g.open_options())?))
                .map(Primary::KeyFree);
            row(name, url, primary, a)
        })
        .collect();
    if let Some(file) = &a.prometheus {
        write_prometheus(file, &rows)?;
    }
    let now = cairn_repo::util::now_unix();
    if g.json {
        output::json(&serde_json::json!({
            "repositories": rows.iter().map(|r| row_json(r, now)).collect::<Vec<_>>(),
            "healthy": rows.iter().filter(|r| r.problems.is_empty()).count(),
            "unhealthy": rows.iter().filter(|r| !r.problems.is_empty()).count(),
        }));
    } else {
        print_table(&rows, now);
    }
    Ok(match rows.iter().all(|r| r.problems.is_empty()) {
        true => 0,
        false => EXIT_INCOMPLETE,
    })
}

fn hours(now: i64, t: i64) -> f64 {
    (now - t) as f64 / 3600.0
}

pub fn row_json(r: &Row, now: i64) -> serde_json::Value {
    let f = &r.facts;
    serde_json::json!({
        "name": r.name,
        "url": r.url,
        "healthy": r.problems.is_empty(),
        "problems": r.problems,
        "snapshots": f.snapshots,
        "newest": f.newest.as_ref().map(|(id, t)| serde_json::json!({"id": id, "time": t, "age_hours": hours(now, *t)})),
        "stored_bytes": r.space.as_ref().map(|s| s.object_bytes),
        "quota_bytes": r.quota,
        "used_bytes": r.space.as_ref().map(|s| s.used()),
        "targets": f.targets.iter().map(|t| serde_json::json!({
            "name": t.name, "url": t.url, "last_sync": t.last, "unsynced_snapshots": t.unsynced.len(),
        })).collect::<Vec<_>>(),
        "last_check": f.check,
    })
}

fn print_table(rows: &[Row], now: i64) {
    output::line(&format!(
        "{:<20} {:>5} {:>9} {:>10} {:>10} {:>14} {:>11}  status",
        "repository", "snaps", "newest", "stored", "quota", "sync", "check"
    ));
    for r in rows {
        let f = &r.facts;
        let age = |t: Option<i64>| t.map_or("-".to_string(), |t| format!("{:.1} h", hours(now, t)));
        let sync = f
            .targets
            .iter()
            .map(|t| match t.last.as_ref().and_then(|v| v["ok"].as_bool()) {
                Some(true) => age(t.last.as_ref().and_then(|v| v["time"].as_i64())),
                Some(false) => "FAILED".into(),
                None => "never".into(),
            })
            .collect::<Vec<_>>()
            .join(",");
        let check = match f.check.as_ref() {
            Some(c) if c["damaged"].as_u64().unwrap_or(0) > 0 => "DAMAGED".to_string(),
            Some(c) => format!(
                "{:.1} d",
                (now - c["time"].as_i64().unwrap_or(now)) as f64 / 86400.0
            ),
            None => "never".into(),
        };
        output::line(&format!(
            "{:<20} {:>5} {:>9} {:>10} {:>10} {:>14} {:>11}  {}",
            r.name,
            f.snapshots,
            age(f.newest.as_ref().map(|(_, t)| *t)),
            r.space
                .as_ref()
                .map_or("-".into(), |s| output::bytes(s.object_bytes)),
            r.quota.map_or("-".into(), |q| format!(
                "{}%",
                r.space.as_ref().map_or(0, |s| s.used() * 100 / q.max(1))
            )),
            if sync.is_empty() { "-".into() } else { sync },
            check,
            if r.problems.is_empty() {
                "ok".to_string()
            } else {
                r.problems.join("; ")
            }
        ));
    }
}

/// Prometheus label values escape `\`, `"` and newlines.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A gauge: name, help text, samples (labels, value).
type Gauge = (&'static str, &'static str, Vec<(String, f64)>);

/// The gauges, in the text exposition format.
pub fn prometheus_text(rows: &[Row]) -> String {
    let mut metrics: Vec<Gauge> = vec![
        ("cairn_up", "1 when the repository could be read", vec![]),
        (
            "cairn_healthy",
            "1 when nothing is overdue or failed",
            vec![],
        ),
        ("cairn_snapshots", "snapshots in the repository", vec![]),
        (
            "cairn_newest_snapshot_timestamp_seconds",
            "time of the newest snapshot",
            vec![],
        ),
        ("cairn_stored_bytes", "bytes of stored objects", vec![]),
        ("cairn_quota_bytes", "the repository's quota", vec![]),
        (
            "cairn_last_sync_timestamp_seconds",
            "time of the last sync to a target",
            vec![],
        ),
        (
            "cairn_last_sync_ok",
            "1 when the last sync to a target succeeded",
            vec![],
        ),
        (
            "cairn_last_check_timestamp_seconds",
            "time of the last check",
            vec![],
        ),
        (
            "cairn_last_check_damaged",
            "damaged or missing objects the last check found",
            vec![],
        ),
        (
            "cairn_used_bytes",
            "what the repository occupies, as its quota counts it",
            vec![],
        ),
    ];
    for r in rows {
        let repo = format!("repo=\"{}\"", label(&r.name));
        let mut put = |i: usize, labels: &str, v: f64| metrics[i].2.push((labels.to_string(), v));
        put(0, &repo, r.space.is_some() as u8 as f64);
        put(1, &repo, r.problems.is_empty() as u8 as f64);
        if r.space.is_none() {
            continue;
        }
        let f = &r.facts;
        put(2, &repo, f.snapshots as f64);
        if let Some((_, t)) = &f.newest {
            put(3, &repo, *t as f64);
        }
        if let Some(s) = &r.space {
            put(4, &repo, s.object_bytes as f64);
        }
        if let Some(q) = r.quota {
            put(5, &repo, q as f64);
        }
        if let Some(s) = &r.space {
            put(10, &repo, s.used() as f64);
        }
        for t in &f.targets {
            let labels = format!("{repo},target=\"{}\"", label(&t.name));
            if let Some(last) = &t.last {
                if let Some(time) = last["time"].as_i64() {
                    put(6, &labels, time as f64);
                }
                put(
                    7,
                    &labels,
                    last["ok"].as_bool().unwrap_or(false) as u8 as f64,
                );
            }
        }
        if let Some(c) = &f.check {
            if let Some(time) = c["time"].as_i64() {
                put(8, &repo, time as f64);
            }
            put(9, &repo, c["damaged"].as_f64().unwrap_or(0.0));
        }
    }
    let mut out = String::new();
    for (name, help, samples) in metrics.iter().filter(|m| !m.2.is_empty()) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, v) in samples {
            out.push_str(&format!("{name}{{{labels}}} {v}\n"));
        }
    }
    out
}

/// Write the gauges atomically: a temporary file beside `file`, then a rename, so the
/// collector never reads half a file.
pub fn write_prometheus(file: &Path, rows: &[Row]) -> Result<(), Failure> {
    let text = prometheus_text(rows);
    let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, file));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Failure::fatal(format!(
            "cannot write the Prometheus file {}: {e}; check that its directory exists and is writable",
            file.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_are_labelled_escaped_and_typed() {
        let mut ok = Row {
            name: "ac\"me".into(),
            url: "/srv/acme".into(),
            facts: Facts::default(),
            space: Some(Space::default()),
            quota: Some(500),
            problems: vec![],
        };
        ok.facts.snapshots = 3;
        ok.facts.newest = Some(("00".into(), 1_700_000_000));
        let down = Row {
            name: "gone".into(),
            url: "/srv/gone".into(),
            facts: Facts::default(),
            space: None,
            quota: None,
            problems: vec!["cannot read it".into()],
        };
        let text = prometheus_text(&[ok, down]);
        assert!(text.contains("# TYPE cairn_snapshots gauge\n"), "{text}");
        assert!(
            text.contains("cairn_snapshots{repo=\"ac\\\"me\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("cairn_up{repo=\"gone\"} 0\n"), "{text}");
        assert!(text.contains("cairn_healthy{repo=\"gone\"} 0\n"), "{text}");
        assert!(
            text.contains("cairn_quota_bytes{repo=\"ac\\\"me\"} 500\n"),
            "{text}"
        );
        assert!(!text.contains("cairn_snapshots{repo=\"gone\"}"), "{text}");
        assert!(
            text.contains(
                "cairn_newest_snapshot_timestamp_seconds{repo=\"ac\\\"me\"} 1700000000\n"
            ),
            "{text}"
        );
    }
}
