//! Small helpers: clock, host and user names.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Now as (seconds, nanoseconds) since the epoch.
pub fn now_precise() -> (i64, u32) {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() as i64, d.subsec_nanos()))
        .unwrap_or((0, 0))
}

pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

pub fn username() -> String {
    let uid = rustix::process::getuid().as_raw();
    uzers::get_user_by_uid(uid)
        .map(|u| u.name().to_string_lossy().into_owned())
        .unwrap_or_else(|| uid.to_string())
}

/// Who is writing: stored in the sessions table so prune can tell live writers from dead ones.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct SessionInfo {
    pub pid: u32,
    pub host: String,
    /// Process start time in clock ticks since boot (/proc/PID/stat field 22): with the pid,
    /// identifies the process even after pid reuse.
    pub start_ticks: u64,
}

pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

pub fn session_info() -> Vec<u8> {
    let pid = std::process::id();
    let info = SessionInfo {
        pid,
        host: hostname(),
        start_ticks: process_start_ticks(pid).unwrap_or(0),
    };
    postcard::to_stdvec(&info).unwrap_or_default()
}

/// Whether the process that wrote `info` is still running (only knowable on the same host).
pub fn session_alive(info: &[u8]) -> bool {
    let Ok(info) = postcard::from_bytes::<SessionInfo>(info) else {
        return false;
    };
    if info.host != hostname() {
        return true;
    }
    process_start_ticks(info.pid) == Some(info.start_ticks)
}

/// Threads for backup and restore: four per core, at least 8, because much of the work waits
/// on the disk (stat, open, small reads and writes) rather than the CPU. Measured on 2 cores,
/// 2 GiB / 55,000 files from a cold cache: no-change backup 0.94 s with 4 threads, 0.55 s
/// with 8, 0.50 s with 16; first backup 9.6 s with 4, 6.8 s with 8.
pub fn default_threads() -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    (cores * 4).max(8)
}

pub fn pool(threads: usize) -> crate::Result<rayon::ThreadPool> {
    let n = if threads == 0 {
        default_threads()
    } else {
        threads
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .map_err(|e| crate::Error::Internal(format!("cannot start {n} worker threads: {e}")))
}

/// The broken-down local time (honours `TZ`) of `sec` seconds since the epoch.
pub fn local_tm(sec: i64) -> Option<libc::tm> {
    let t = sec as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value; localtime_r only writes into the one we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    ok.then_some(tm)
}

/// The broken-down UTC time of `sec` seconds since the epoch.
pub fn utc_tm(sec: i64) -> Option<libc::tm> {
    let t = sec as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value; gmtime_r only writes into the one we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call.
    let ok = unsafe { !libc::gmtime_r(&t, &mut tm).is_null() };
    ok.then_some(tm)
}

/// A raw path for messages.
pub fn display_path(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// `parent/name` for raw paths.
pub fn join_path(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// A size in binary units for messages: `500 GiB`, `1.5 TiB`, `812.25 MiB`, `100 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    let text = format!("{v:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} {}", UNITS[u])
}

#[cfg(test)]
mod bytes_tests {
    #[test]
    fn sizes_read_as_an_administrator_writes_them() {
        assert_eq!(super::bytes(500 << 30), "500 GiB");
        assert_eq!(super::bytes(3 << 39), "1.5 TiB");
        assert_eq!(super::bytes(100), "100 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
    }
}
