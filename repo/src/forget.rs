//! Retention policy (`cairn forget`): which snapshots to keep, with restic's semantics.
//!
//! Snapshots are grouped (by default by host and path set); inside a group they are ordered
//! newest first. Each `keep-<period> N` rule walks that list and keeps the newest snapshot of each
//! of the first N distinct buckets (hour, day, ISO week, month, year — computed in local time);
//! `keep-last N` keeps the N newest; `keep-within D` keeps everything newer than the group's
//! newest snapshot minus D; `keep-tag T` keeps every snapshot tagged T. A snapshot may be kept by
//! several rules and every reason is reported. A negative count means "no limit".
//!
//! The policy is a pure function of the snapshots and a function giving the local UTC offset
//! of an instant, so it is tested with tables and fixed time zones.

use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::{Repository, SnapshotEntry};
use std::collections::BTreeMap;

/// Counts per rule; `None` = rule not given, negative = unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: Option<i64>,
    pub hourly: Option<i64>,
    pub daily: Option<i64>,
    pub weekly: Option<i64>,
    pub monthly: Option<i64>,
    pub yearly: Option<i64>,
    pub within: Option<Span>,
    pub tags: Vec<String>,
}

impl Policy {
    /// True when no rule keeps anything (none given, or all counts 0 and spans empty):
    /// forgetting with it would remove everything, so we refuse (as restic does).
    pub fn is_empty(&self) -> bool {
        let counts = [
            self.last,
            self.hourly,
            self.daily,
            self.weekly,
            self.monthly,
            self.yearly,
        ];
        counts.iter().all(|c| c.unwrap_or(0) == 0)
            && self.within.is_none_or(|w| w == Span::default())
            && self.tags.is_empty()
    }
}

/// A calendar span like `1y2m3w4d5h` (years, months, weeks, days, hours).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub years: i64,
    pub months: i64,
    pub days: i64,
    pub hours: i64,
}

impl Span {
    pub fn parse(s: &str) -> Result<Span> {
        let bad = || Error::Usage(format!("`{s}` is not a duration like 7d, 2w, 1y2m or 36h"));
        let mut span = Span::default();
        let mut num = String::new();
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: i64 = num.parse().map_err(|_| bad())?;
            num.clear();
            match c {
                'y' => span.years += n,
                'm' => span.months += n,
                'w' => span.days += 7 * n,
                'd' => span.days += n,
                'h' => span.hours += n,
                _ => return Err(bad()),
            }
        }
        if !num.is_empty() || s.trim().is_empty() {
            return Err(bad());
        }
        Ok(span)
    }

    /// The instant `self` before `t`, counting years and months on the local calendar (the day
    /// is clamped to the month's length: 31 March minus one month is 28/29 February).
    pub fn before(&self, t: i64, offset: &dyn Fn(i64) -> i64) -> i64 {
        let off = offset(t);
        let local = t + off;
        let (days, secs) = (local.div_euclid(86400), local.rem_euclid(86400));
        let (y, m, d) = civil_from_days(days);
        let months = y * 12 + (m as i64 - 1) - self.years * 12 - self.months;
        let (ny, nm) = (months.div_euclid(12), (months.rem_euclid(12) + 1) as u32);
        let nd = d.min(days_in_month(ny, nm));
        let local_new =
            days_from_civil(ny, nm, nd) * 86400 + secs - self.days * 86400 - self.hours * 3600;
        local_new - offset(local_new - off)
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ];
        let mut any = false;
        for (n, u) in parts.into_iter().filter(|(n, _)| *n != 0) {
            write!(f, "{n}{u}")?;
            any = true;
        }
        if !any {
            f.write_str("0d")?;
        }
        Ok(())
    }
}

/// How snapshots are grouped before the policy applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
        }
    }
}

impl GroupBy {
    /// `host,paths`, `host`, `paths` or `none`.
    pub fn parse(s: &str) -> Result<GroupBy> {
        let mut g = GroupBy {
            host: false,
            paths: false,
        };
        for part in s.split(',').map(str::trim) {
            match part {
                "host" => g.host = true,
                "paths" => g.paths = true,
                "none" | "" => {}
                other => {
                    return Err(Error::Usage(format!(
                        "cannot group by `{other}`: use host,paths | host | paths | none"
                    )))
                }
            }
        }
        Ok(g)
    }
}

/// What one snapshot needs for the policy.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub id: Id,
    /// Seconds since the epoch (UTC); ties are broken by `nsec` then id.
    pub sec: i64,
    pub nsec: u32,
    pub host: String,
    pub paths: Vec<Vec<u8>>,
    pub tags: Vec<String>,
}

impl From<&SnapshotEntry> for Candidate {
    fn from(s: &SnapshotEntry) -> Self {
        let sn = &s.snapshot;
        Candidate {
            id: s.id,
            sec: sn.time.sec,
            nsec: sn.time.nsec,
            host: sn.host.clone(),
            paths: sn.paths.clone(),
            tags: sn.tags.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub id: Id,
    pub keep: bool,
    /// Every rule that keeps it, e.g. `daily`, `last`, `within 7d`, `tag important`.
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Group {
    pub host: Option<String>,
    pub paths: Option<Vec<Vec<u8>>>,
    /// Newest first.
    pub decisions: Vec<Decision>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

/// The bucket a local instant falls in for a period.
fn bucket(period: Period, t: i64, offset: &dyn Fn(i64) -> i64) -> i64 {
    let local = t + offset(t);
    let days = local.div_euclid(86400);
    let (y, m, _) = civil_from_days(days);
    match period {
        Period::Hour => local.div_euclid(3600),
        Period::Day => days,
        Period::Week => {
            let (iy, iw) = iso_week(days);
            iy * 100 + iw
        }
        Period::Month => y * 100 + m as i64,
        Period::Year => y,
    }
}

/// (host, sorted path set), each `None` when not grouped by it.
type GroupKey = (Option<String>, Option<Vec<Vec<u8>>>);

/// Apply `policy` to `snapshots` grouped by `group_by`; `offset(t)` gives the local UTC offset in
/// seconds at instant `t` (e.g. [`local_offset`]).
pub fn apply(
    policy: &Policy,
    group_by: GroupBy,
    snapshots: &[Candidate],
    offset: &dyn Fn(i64) -> i64,
) -> Result<Vec<Group>> {
    if policy.is_empty() {
        return Err(Error::Usage(
            "no retention rule given: refusing to forget every snapshot (give --keep-last, --keep-daily, … or --keep-within)".into(),
        ));
    }
    let mut groups: BTreeMap<GroupKey, Vec<&Candidate>> = BTreeMap::new();
    for s in snapshots {
        let mut paths = s.paths.clone();
        paths.sort();
        let key = (
            group_by.host.then(|| s.host.clone()),
            group_by.paths.then_some(paths),
        );
        groups.entry(key).or_default().push(s);
    }
    Ok(groups
        .into_iter()
        .map(|((host, paths), mut list)| {
            list.sort_by_key(|s| std::cmp::Reverse((s.sec, s.nsec, s.id)));
            Group {
                host,
                paths,
                decisions: decide(policy, &list, offset),
            }
        })
        .collect())
}

/// Decisions for one group, newest first.
fn decide(policy: &Policy, list: &[&Candidate], offset: &dyn Fn(i64) -> i64) -> Vec<Decision> {
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); list.len()];
    if let Some(n) = policy.last {
        for (i, r) in reasons.iter_mut().enumerate() {
            if n < 0 || (i as i64) < n {
                r.push("last".into());
            }
        }
    }
    let periods = [
        (policy.hourly, Period::Hour, "hourly"),
        (policy.daily, Period::Day, "daily"),
        (policy.weekly, Period::Week, "weekly"),
        (policy.monthly, Period::Month, "monthly"),
        (policy.yearly, Period::Year, "yearly"),
    ];
    for (count, period, name) in periods {
        let Some(mut left) = count else { continue };
        let mut last_bucket = None;
        for (i, s) in list.iter().enumerate() {
            if left == 0 {
                break;
            }
            let b = bucket(period, s.sec, offset);
            if last_bucket != Some(b) {
                reasons[i].push(name.into());
                last_bucket = Some(b);
                left -= 1;
            }
        }
    }
    if let (Some(span), Some(newest)) = (policy.within, list.first()) {
        let cutoff = span.before(newest.sec, offset);
        for (i, s) in list.iter().enumerate() {
            if s.sec > cutoff {
                reasons[i].push(format!("within {span}"));
            }
        }
    }
    for (i, s) in list.iter().enumerate() {
        for t in policy.tags.iter().filter(|t| s.tags.contains(*t)) {
            reasons[i].push(format!("tag {t}"));
        }
    }
    list.iter()
        .zip(reasons)
        .map(|(s, reasons)| Decision {
            id: s.id,
            keep: !reasons.is_empty(),
            reasons,
        })
        .collect()
}

/// The snapshots of `groups` the policy removes.
pub fn to_remove(groups: &[Group]) -> Vec<Id> {
    groups
        .iter()
        .flat_map(|g| g.decisions.iter().filter(|d| !d.keep).map(|d| d.id))
        .collect()
}

/// Evaluate the policy on the repository's snapshots and, unless `dry_run`, remove the
/// snapshots it does not keep (their data goes with the next `prune`).
pub fn forget(
    repo: &Repository,
    policy: &Policy,
    group_by: GroupBy,
    dry_run: bool,
) -> Result<Vec<Group>> {
    let snaps: Vec<Candidate> = repo.snapshots()?.iter().map(Candidate::from).collect();
    let groups = apply(policy, group_by, &snaps, &local_offset)?;
    if !dry_run {
        repo.storage().remove_snapshots(&to_remove(&groups))?;
    }
    Ok(groups)
}

/// The local time zone's UTC offset in seconds at instant `t` (honours `TZ`).
pub fn local_offset(t: i64) -> i64 {
    crate::util::local_tm(t).map_or(0, |tm| tm.tm_gmtoff)
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a civil date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (days_from_civil(ny, nm, 1) - days_from_civil(y, m, 1)) as u32
}

/// ISO 8601 (year, week) of a day: weeks start on Monday; week 1 holds the year's first Thursday.
pub fn iso_week(days: i64) -> (i64, i64) {
    let weekday = (days + 3).rem_euclid(7); // Monday = 0; 1970-01-01 was a Thursday
    let thursday = days - weekday + 3;
    let (y, _, _) = civil_from_days(thursday);
    let week = (thursday - days_from_civil(y, 1, 1)) / 7 + 1;
    (y, week)
}

#[cfg(test)]
#[path = "forget_tests.rs"]
mod tests;
