//! The top of the mount: snapshot names and the by-host and by-tag views, rebuilt from the
//! snapshot list on every refresh.

use cairn_repo::{Id, Repository, SnapshotEntry, Time};
use std::collections::{BTreeMap, HashMap};

/// One snapshot as the mount shows it.
#[derive(Clone, Debug)]
pub struct SnapView {
    /// `YYYY-MM-DD_HH-MM-SS` in local time, with `-2`, `-3`… for same-second snapshots.
    pub name: String,
    /// `@GMT-YYYY.MM.DD-HH.MM.SS` in UTC (Samba's shadow_copy2 format), unique without a
    /// suffix: a snapshot in the same second as an earlier one takes the next free second.
    pub gmt: String,
    pub id: Id,
    pub root: Id,
    pub time: Time,
}

#[derive(Clone, Debug, Default)]
pub struct Layout {
    /// Chronological (oldest first).
    pub snaps: Vec<SnapView>,
    by_name: HashMap<String, usize>,
    /// Safe host name -> indexes into `snaps`.
    pub hosts: BTreeMap<String, Vec<usize>>,
    /// Safe tag name -> indexes into `snaps`.
    pub tags: BTreeMap<String, Vec<usize>>,
    /// A hash of the snapshot ids in order: equal for two builds from the same list, so what
    /// is derived from the list (the history view's caches) survives a refresh that changed
    /// nothing.
    pub(crate) fingerprint: u64,
}

impl Layout {
    /// Build from the engine's snapshot list (oldest first).
    pub fn build(list: &[SnapshotEntry]) -> Layout {
        let mut l = Layout::default();
        let mut seen: HashMap<String, u32> = HashMap::new();
        let mut last_gmt: Option<i64> = None;
        let mut fingerprint = blake3::Hasher::new();
        for s in list {
            fingerprint.update(&s.id.0);
            let sec = match last_gmt {
                Some(last) if s.snapshot.time.sec <= last => last + 1,
                _ => s.snapshot.time.sec,
            };
            last_gmt = Some(sec);
            let base = local_name(s.snapshot.time);
            let n = seen.entry(base.clone()).or_insert(0);
            *n += 1;
            let name = if *n == 1 { base } else { format!("{base}-{n}") };
            let i = l.snaps.len();
            l.by_name.insert(name.clone(), i);
            l.hosts
                .entry(safe_name(&s.snapshot.host))
                .or_default()
                .push(i);
            for t in &s.snapshot.tags {
                let v = l.tags.entry(safe_name(t)).or_default();
                if v.last() != Some(&i) {
                    v.push(i);
                }
            }
            l.snaps.push(SnapView {
                name,
                gmt: gmt_name(sec),
                id: s.id,
                root: s.snapshot.root,
                time: s.snapshot.time,
            });
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&fingerprint.finalize().as_bytes()[..8]);
        l.fingerprint = u64::from_le_bytes(b);
        l
    }

    pub fn find(&self, name: &[u8]) -> Option<&SnapView> {
        let name = std::str::from_utf8(name).ok()?;
        self.by_name.get(name).map(|i| &self.snaps[*i])
    }

    pub fn latest(&self) -> Option<&SnapView> {
        self.snaps.last()
    }

    pub fn newest_time(&self) -> Time {
        self.latest().map(|s| s.time).unwrap_or_default()
    }

    /// The snapshots of one group (a host's or a tag's).
    pub fn group(&self, indexes: &[usize]) -> Vec<&SnapView> {
        indexes.iter().filter_map(|i| self.snaps.get(*i)).collect()
    }
}

/// The repository's snapshots, oldest first, skipping any that do not decrypt or decode: one
/// damaged snapshot must not hide the others. Returns the skipped ones as messages naming them.
pub fn load_snapshots(repo: &Repository) -> cairn_repo::Result<(Vec<SnapshotEntry>, Vec<String>)> {
    Ok(decode_snapshots(repo, repo.storage().snapshots()?))
}

pub fn decode_snapshots(
    repo: &Repository,
    blobs: Vec<(Id, Vec<u8>)>,
) -> (Vec<SnapshotEntry>, Vec<String>) {
    let (ok, bad) = repo.decode_snapshots(blobs);
    let bad = bad
        .into_iter()
        .map(|(id, e)| format!("snapshot {id} is not shown: {e}"))
        .collect();
    (ok, bad)
}

/// `YYYY-MM-DD_HH-MM-SS` in the local time zone (no `:`, sorts chronologically).
pub fn local_name(t: Time) -> String {
    let Some(tm) = cairn_repo::util::local_tm(t.sec) else {
        return format!("t{}", t.sec);
    };
    format!(
        "{:04}-{:02}-{:02}_{:02}-{:02}-{:02}",
        tm.tm_year as i64 + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// `@GMT-YYYY.MM.DD-HH.MM.SS` in UTC: the name Samba's `vfs_shadow_copy2` parses with its
/// default `shadow:format` and `shadow:localtime = no`.
fn gmt_name(sec: i64) -> String {
    let Some(tm) = cairn_repo::util::utc_tm(sec) else {
        return format!("t{sec}");
    };
    format!(
        "@GMT-{:04}.{:02}.{:02}-{:02}.{:02}.{:02}",
        tm.tm_year as i64 + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// A host or tag as a directory name: no `/`, `:` or NUL, never empty, `.` or `..`.
pub fn safe_name(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if matches!(c, '/' | ':' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect();
    match cleaned.as_str() {
        "" => "_".into(),
        "." | ".." => cleaned.replace('.', "_"),
        _ => cleaned,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use cairn_repo::format::{Snapshot, SnapshotStats};

    fn snap(sec: i64, host: &str, tags: &[&str], byte: u8) -> SnapshotEntry {
        SnapshotEntry {
            id: Id([byte; 32]),
            snapshot: Snapshot {
                time: Time { sec, nsec: 0 },
                host: host.into(),
                user: "u".into(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                paths: vec![],
                root: Id([0; 32]),
                parent: None,
                stats: SnapshotStats::default(),
                program: String::new(),
            },
        }
    }

    #[test]
    fn same_second_snapshots_get_suffixes_and_views() {
        let l = Layout::build(&[
            snap(1000, "a", &["x"], 1),
            snap(1000, "a/b", &["x", "y:z"], 2),
            snap(1000, "a", &[], 3),
        ]);
        let base = local_name(Time { sec: 1000, nsec: 0 });
        let names: Vec<&str> = l.snaps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            vec![base.clone(), format!("{base}-2"), format!("{base}-3")]
        );
        assert!(!base.contains(':'));
        assert_eq!(l.hosts.keys().collect::<Vec<_>>(), vec!["a", "a_b"]);
        assert_eq!(l.tags["x"], vec![0, 1]);
        assert_eq!(l.tags["y_z"], vec![1]);
        assert_eq!(l.latest().map(|s| s.id), Some(Id([3; 32])));
        assert_eq!(
            l.find(format!("{base}-2").as_bytes()).map(|s| s.id),
            Some(Id([2; 32]))
        );
    }

    #[test]
    fn gmt_names_are_unique_and_in_order_without_suffixes() {
        // 2026-11-29 14:05:03 UTC twice, then a snapshot in the next second, then a later one.
        let t = 1_795_961_103;
        let l = Layout::build(&[
            snap(t, "a", &[], 1),
            snap(t, "a", &[], 2),
            snap(t + 1, "a", &[], 3),
            snap(t + 60, "a", &[], 4),
        ]);
        let gmt: Vec<&str> = l.snaps.iter().map(|s| s.gmt.as_str()).collect();
        assert_eq!(
            gmt,
            vec![
                "@GMT-2026.11.29-14.05.03",
                "@GMT-2026.11.29-14.05.04",
                "@GMT-2026.11.29-14.05.05",
                "@GMT-2026.11.29-14.06.03",
            ]
        );
        assert_eq!(gmt_name(-1), "@GMT-1969.12.31-23.59.59");
    }

    #[test]
    fn safe_names() {
        assert_eq!(safe_name(""), "_");
        assert_eq!(safe_name(".."), "__");
        assert_eq!(safe_name("a:b/c"), "a_b_c");
    }
}
