//! Retention tables for the forget policy: calendar edges, ISO weeks, same-day snapshots,
//! time zones, several reasons per snapshot, grouping.
#![allow(clippy::unwrap_used)]

use super::*;

fn utc(_: i64) -> i64 {
    0
}

/// Seconds since the epoch of a UTC wall-clock time.
fn at(y: i64, m: u32, d: u32, h: i64, mi: i64) -> i64 {
    days_from_civil(y, m, d) * 86400 + h * 3600 + mi * 60
}

fn snap(n: u8, sec: i64) -> Candidate {
    Candidate {
        id: Id([n; 32]),
        sec,
        nsec: 0,
        host: "h".into(),
        paths: vec![b"/data".to_vec()],
        tags: Vec::new(),
    }
}

/// Run the policy on one group with the given offset; return (snapshot number, reasons) newest
/// first.
fn table(
    policy: &Policy,
    snaps: &[Candidate],
    offset: &dyn Fn(i64) -> i64,
) -> Vec<(u8, Vec<String>)> {
    let groups = apply(policy, GroupBy::default(), snaps, offset).unwrap();
    assert_eq!(groups.len(), 1);
    groups[0]
        .decisions
        .iter()
        .map(|d| {
            assert_eq!(d.keep, !d.reasons.is_empty());
            (d.id.0[0], d.reasons.clone())
        })
        .collect()
}

fn kept(policy: &Policy, snaps: &[Candidate], offset: &dyn Fn(i64) -> i64) -> Vec<u8> {
    table(policy, snaps, offset)
        .into_iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(n, _)| n)
        .collect()
}

fn r(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn civil_date_round_trip_and_known_days() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(days_from_civil(2000, 3, 1), 11017);
    assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    for d in -800_000..800_000i64 {
        if d % 997 == 0 {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }
}

#[test]
fn iso_weeks_at_year_boundaries() {
    let w = |y, m, d| iso_week(days_from_civil(y, m, d));
    assert_eq!(
        w(2021, 1, 3),
        (2020, 53),
        "Sunday 3 Jan 2021 is in 2020's last week"
    );
    assert_eq!(w(2021, 1, 4), (2021, 1));
    assert_eq!(
        w(2019, 12, 30),
        (2020, 1),
        "Monday 30 Dec 2019 starts ISO 2020-W01"
    );
    assert_eq!(w(2026, 12, 31), (2026, 53));
    assert_eq!(w(2027, 1, 3), (2026, 53));
    assert_eq!(w(2027, 1, 4), (2027, 1));
}

#[test]
fn keep_last_keeps_the_newest() {
    let snaps: Vec<Candidate> = (1..=5)
        .map(|n| snap(n, at(2026, 1, n as u32, 12, 0)))
        .collect();
    let p = Policy {
        last: Some(3),
        ..Default::default()
    };
    assert_eq!(kept(&p, &snaps, &utc), vec![5, 4, 3]);
    let p = Policy {
        last: Some(-1),
        ..Default::default()
    };
    assert_eq!(kept(&p, &snaps, &utc).len(), 5, "negative means unlimited");
}

#[test]
fn same_day_snapshots_keep_only_the_newest_of_the_day() {
    let snaps = vec![
        snap(1, at(2026, 1, 1, 9, 0)),
        snap(2, at(2026, 1, 1, 12, 0)),
        snap(3, at(2026, 1, 1, 18, 0)),
        snap(4, at(2026, 1, 2, 8, 0)),
        snap(5, at(2026, 1, 2, 20, 0)),
    ];
    let p = Policy {
        daily: Some(2),
        ..Default::default()
    };
    assert_eq!(
        table(&p, &snaps, &utc),
        vec![
            (5, r(&["daily"])),
            (4, r(&[])),
            (3, r(&["daily"])),
            (2, r(&[])),
            (1, r(&[]))
        ]
    );
    let p = Policy {
        hourly: Some(10),
        ..Default::default()
    };
    assert_eq!(kept(&p, &snaps, &utc), vec![5, 4, 3, 2, 1]);
}

#[test]
fn month_and_year_boundaries() {
    let snaps = vec![
        snap(1, at(2025, 11, 30, 12, 0)),
        snap(2, at(2025, 12, 31, 23, 59)),
        snap(3, at(2026, 1, 1, 0, 1)),
        snap(4, at(2026, 1, 31, 10, 0)),
        snap(5, at(2026, 2, 1, 10, 0)),
    ];
    let p = Policy {
        monthly: Some(3),
        ..Default::default()
    };
    assert_eq!(
        kept(&p, &snaps, &utc),
        vec![5, 4, 2],
        "Feb, Jan (newest of Jan), Dec"
    );
    let p = Policy {
        yearly: Some(5),
        ..Default::default()
    };
    assert_eq!(
        kept(&p, &snaps, &utc),
        vec![5, 2],
        "newest of 2026, newest of 2025"
    );
}

#[test]
fn weekly_uses_iso_weeks_across_new_year() {
    let snaps = vec![
        snap(1, at(2026, 12, 27, 12, 0)), // Sunday, 2026-W52
        snap(2, at(2026, 12, 28, 12, 0)), // Monday, 2026-W53
        snap(3, at(2027, 1, 3, 12, 0)),   // Sunday, still 2026-W53
        snap(4, at(2027, 1, 4, 12, 0)),   // Monday, 2027-W01
    ];
    let p = Policy {
        weekly: Some(3),
        ..Default::default()
    };
    assert_eq!(kept(&p, &snaps, &utc), vec![4, 3, 1]);
    let p = Policy {
        weekly: Some(2),
        yearly: Some(2),
        ..Default::default()
    };
    assert_eq!(
        table(&p, &snaps, &utc),
        vec![
            (4, r(&["weekly", "yearly"])),
            (3, r(&["weekly"])),
            (2, r(&["yearly"])),
            (1, r(&[]))
        ],
        "yearly follows the calendar year, not the ISO year"
    );
}

#[test]
fn buckets_follow_the_time_zone() {
    // 23:30 and 00:30 UTC: two UTC days, one day at UTC+2 and at UTC-1.
    let snaps = vec![
        snap(1, at(2026, 3, 1, 23, 30)),
        snap(2, at(2026, 3, 2, 0, 30)),
    ];
    let p = Policy {
        daily: Some(5),
        ..Default::default()
    };
    assert_eq!(kept(&p, &snaps, &utc), vec![2, 1]);
    assert_eq!(kept(&p, &snaps, &|_| 2 * 3600), vec![2]);
    assert_eq!(kept(&p, &snaps, &|_| -3600), vec![2]);
    // New year at UTC+9: 2025-12-31 15:30 UTC is already 2026 in Tokyo.
    let snaps = vec![
        snap(1, at(2025, 12, 31, 14, 30)),
        snap(2, at(2025, 12, 31, 15, 30)),
    ];
    let p = Policy {
        yearly: Some(5),
        ..Default::default()
    };
    assert_eq!(kept(&p, &snaps, &utc), vec![2]);
    assert_eq!(kept(&p, &snaps, &|_| 9 * 3600), vec![2, 1]);
}

#[test]
fn every_reason_is_reported() {
    let snaps = vec![
        snap(1, at(2026, 5, 1, 10, 0)),
        snap(2, at(2026, 5, 2, 10, 0)),
    ];
    let mut p = Policy {
        last: Some(1),
        daily: Some(1),
        monthly: Some(1),
        yearly: Some(1),
        ..Default::default()
    };
    p.tags.push("keep".into());
    let mut snaps2 = snaps.clone();
    snaps2[0].tags.push("keep".into());
    assert_eq!(
        table(&p, &snaps2, &utc),
        vec![
            (2, r(&["last", "daily", "monthly", "yearly"])),
            (1, r(&["tag keep"]))
        ]
    );
}

#[test]
fn keep_within_counts_back_from_the_newest_snapshot() {
    let newest = at(2026, 3, 31, 12, 0);
    let snaps = vec![
        snap(1, at(2026, 2, 27, 12, 0)),
        snap(2, at(2026, 2, 28, 12, 1)),
        snap(3, at(2026, 3, 29, 12, 0)),
        snap(4, newest),
    ];
    let p = Policy {
        within: Some(Span::parse("2d").unwrap()),
        ..Default::default()
    };
    assert_eq!(
        kept(&p, &snaps, &utc),
        vec![4],
        "exactly 2 days old is not within 2d"
    );
    let p = Policy {
        within: Some(Span::parse("1m").unwrap()),
        ..Default::default()
    };
    assert_eq!(
        kept(&p, &snaps, &utc),
        vec![4, 3, 2],
        "31 March minus a month is 28 February"
    );
    assert_eq!(table(&p, &snaps, &utc)[0].1, r(&["within 1m"]));
    assert_eq!(
        Span::parse("1m").unwrap().before(newest, &utc),
        at(2026, 2, 28, 12, 0)
    );
    assert_eq!(
        Span::parse("1y")
            .unwrap()
            .before(at(2024, 2, 29, 0, 0), &utc),
        at(2023, 2, 28, 0, 0)
    );
}

#[test]
fn span_parsing() {
    assert_eq!(
        Span::parse("7d").unwrap(),
        Span {
            days: 7,
            ..Default::default()
        }
    );
    assert_eq!(
        Span::parse("2w").unwrap(),
        Span {
            days: 14,
            ..Default::default()
        }
    );
    assert_eq!(
        Span::parse("1y2m").unwrap(),
        Span {
            years: 1,
            months: 2,
            ..Default::default()
        }
    );
    assert_eq!(Span::parse("36h").unwrap().to_string(), "36h");
    for bad in ["", "7", "d", "7x", "-1d", "1.5d"] {
        assert!(Span::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn groups_by_host_and_paths() {
    let mut a = snap(1, at(2026, 1, 1, 0, 0));
    let mut b = snap(2, at(2026, 1, 2, 0, 0));
    let c = snap(3, at(2026, 1, 3, 0, 0));
    a.host = "other".into();
    b.paths = vec![b"/b".to_vec(), b"/a".to_vec()];
    let mut d = snap(4, at(2026, 1, 4, 0, 0));
    d.paths = vec![b"/a".to_vec(), b"/b".to_vec()];
    let all = vec![a, b, c, d];
    let p = Policy {
        last: Some(1),
        ..Default::default()
    };
    let groups = apply(&p, GroupBy::default(), &all, &utc).unwrap();
    assert_eq!(groups.len(), 3, "path sets compare unordered");
    assert_eq!(to_remove(&groups), vec![Id([2; 32])]);
    let groups = apply(&p, GroupBy::parse("none").unwrap(), &all, &utc).unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(to_remove(&groups).len(), 3);
    let groups = apply(&p, GroupBy::parse("host").unwrap(), &all, &utc).unwrap();
    assert_eq!(groups.len(), 2);
    assert!(GroupBy::parse("tags").is_err());
}

#[test]
fn refuses_an_empty_policy() {
    let snaps = vec![snap(1, 0)];
    assert!(apply(&Policy::default(), GroupBy::default(), &snaps, &utc).is_err());
    let zeros = Policy {
        last: Some(0),
        daily: Some(0),
        within: Some(Span::parse("0d").unwrap()),
        ..Default::default()
    };
    assert!(
        apply(&zeros, GroupBy::default(), &snaps, &utc).is_err(),
        "all-zero rules keep nothing: refused"
    );
}

/// The real local offset honours `TZ` (run in a child process so the environment of this one
/// stays untouched). POSIX TZ strings need no tzdata.
#[test]
fn local_offset_follows_tz_in_a_subprocess() {
    let exe = std::env::current_exe().unwrap();
    // 22:30 and 23:30 UTC on 15 January: one local day in Tokyo and in UTC, two in Paris.
    let cases = [
        ("JST-9", "offsets=32400,32400;kept=1;"),
        ("CET-1CEST,M3.5.0,M10.5.0/3", "offsets=3600,7200;kept=2;"),
        ("UTC0", "offsets=0,0;kept=1;"),
    ];
    for (tz, want) in cases {
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "forget::tests::tz_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TZ", tz)
            .env("CAIRN_TZ_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.replace('\n', "").contains(want), "TZ={tz}: {text}");
    }
}

/// The child half of `local_offset_follows_tz_in_a_subprocess`; does nothing unless started by it.
#[test]
fn tz_child() {
    if std::env::var_os("CAIRN_TZ_CHILD").is_none() {
        return;
    }
    let winter = local_offset(at(2026, 1, 15, 12, 0));
    let summer = local_offset(at(2026, 7, 15, 12, 0));
    print!("offsets={winter},{summer};");
    // A daily policy in this zone splits at local midnight.
    let snaps = vec![
        snap(1, at(2026, 1, 15, 22, 30)),
        snap(2, at(2026, 1, 15, 23, 30)),
    ];
    let p = Policy {
        daily: Some(5),
        ..Default::default()
    };
    let groups = apply(&p, GroupBy::default(), &snaps, &local_offset).unwrap();
    println!(
        "kept={};",
        groups[0].decisions.iter().filter(|d| d.keep).count()
    );
}
