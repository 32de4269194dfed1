use crate::{output, CmdResult, Global};
use cairn_repo::SnapshotEntry;

#[derive(clap::Args)]
pub struct Args {
    /// Only snapshots of this host
    #[arg(long)]
    host: Option<String>,
    /// Only snapshots with this tag
    #[arg(long)]
    tag: Option<String>,
}

pub fn time_string(t: cairn_repo::Time) -> String {
    format_local(t.sec, "%Y-%m-%d %H:%M:%S")
}

/// Format seconds since the epoch in local time with strftime.
pub fn format_local(sec: i64, fmt: &str) -> String {
    let Some(tm) = cairn_repo::util::local_tm(sec) else {
        return sec.to_string();
    };
    let mut buf = [0u8; 64];
    let cfmt = std::ffi::CString::new(fmt).unwrap_or_default();
    // SAFETY: strftime writes at most buf.len() bytes into buf and reads the tm we own.
    let n = unsafe {
        libc::strftime(
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
            cfmt.as_ptr(),
            &tm,
        )
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

pub fn snapshot_json(s: &SnapshotEntry) -> serde_json::Value {
    let sn = &s.snapshot;
    let st = &sn.stats;
    serde_json::json!({
        "id": s.id.to_hex(),
        "short_id": s.id.short(),
        "time": time_string(sn.time),
        "unix_time": sn.time.sec,
        "unix_nanos": sn.time.nsec,
        "host": sn.host,
        "user": sn.user,
        "tags": sn.tags,
        "paths": sn.paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>(),
        "root": sn.root.to_hex(),
        "parent": sn.parent.map(|p| p.to_hex()),
        "stats": {
            "files": st.files, "dirs": st.dirs, "bytes": st.bytes,
            "files_new": st.files_new, "files_changed": st.files_changed, "files_unchanged": st.files_unchanged,
            "bytes_added": st.bytes_added, "bytes_added_stored": st.bytes_added_stored,
            "warnings": st.warnings, "duration_ms": st.duration_ms,
        },
    })
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    let repo = g.open()?;
    let (all, damaged) = repo.snapshots_tolerant()?;
    for (id, e) in &damaged {
        output::warn(&format!(
            "snapshot {} cannot be read and is not listed: {e}",
            id.short()
        ));
    }
    let list: Vec<SnapshotEntry> = all
        .into_iter()
        .filter(|s| a.host.as_ref().is_none_or(|h| &s.snapshot.host == h))
        .filter(|s| a.tag.as_ref().is_none_or(|t| s.snapshot.tags.contains(t)))
        .collect();
    if g.json {
        let space = repo.storage().space()?;
        output::json(&serde_json::json!({
            "snapshots": list.iter().map(snapshot_json).collect::<Vec<_>>(),
            "repository": crate::stats::space_json(&space),
        }));
        return Ok(exit_for(&damaged));
    }
    output::line(&format!(
        "{:<8}  {:<19}  {:<16}  {:<12}  {:>10}  paths",
        "id", "time", "host", "tags", "size"
    ));
    for s in &list {
        let sn = &s.snapshot;
        let paths: Vec<String> = sn
            .paths
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        output::line(&format!(
            "{:<8}  {:<19}  {:<16}  {:<12}  {:>10}  {}",
            s.id.short(),
            time_string(sn.time),
            sn.host,
            sn.tags.join(","),
            output::bytes(sn.stats.bytes),
            paths.join(" ")
        ));
    }
    output::info(g, &format!("{} snapshots", list.len()));
    Ok(exit_for(&damaged))
}

/// 3 ("finished but incomplete") when some snapshot could not be read.
fn exit_for(damaged: &[(cairn_repo::Id, cairn_repo::Error)]) -> u8 {
    if damaged.is_empty() {
        0
    } else {
        crate::EXIT_INCOMPLETE
    }
}
