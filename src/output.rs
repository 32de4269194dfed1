//! The only place that prints. Human output on stdout, warnings and errors on stderr,
//! `--json` documents on stdout, progress bars only on a terminal.

use crate::Global;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub fn error(msg: &str) {
    eprintln!("cairn: error: {msg}");
}

/// Panics print one short line, the first only: the engine turns the panics a damaged
/// repository causes inside redb into errors (reported by the command itself), so the default
/// hook's message and backtrace for each would only bury the report. `RUST_BACKTRACE` set
/// keeps the default hook, for debugging.
pub fn quiet_panics() {
    if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
        return;
    }
    static SHOWN: AtomicBool = AtomicBool::new(false);
    std::panic::set_hook(Box::new(|info| {
        if !SHOWN.swap(true, Ordering::SeqCst) {
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            eprintln!("cairn: internal error{at} (further ones not shown); if the repository is damaged this is reported below, see `cairn check`");
        }
    }));
}

pub fn warn(msg: &str) {
    eprintln!("cairn: warning: {msg}");
}

/// Print a line of human output unless --quiet or --json.
pub fn info(g: &Global, msg: &str) {
    if !g.quiet && !g.json {
        println!("{msg}");
    }
}

/// Print a line of primary output (tables, listings) unless --json.
pub fn line(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{msg}");
}

pub fn raw(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
}

/// Print a `--json` report; a command that reached S3 adds what it cost (`s3_requests`).
pub fn json(value: &serde_json::Value) {
    let mut value = value.clone();
    if let (Some(r), Some(map)) = (
        cairn_repo::storage::s3::requests_made(),
        value.as_object_mut(),
    ) {
        map.insert(
            "s3_requests".into(),
            serde_json::to_value(r).unwrap_or_default(),
        );
    }
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, &value);
    let _ = writeln!(out);
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Whether a progress display is shown: on a terminal, without --quiet or --json.
pub fn shows_progress(g: &Global) -> bool {
    !g.quiet && !g.json && std::io::stderr().is_terminal()
}

/// A progress display refreshed from a closure on a background thread while `work` runs.
pub fn with_progress<T>(
    g: &Global,
    render: impl Fn() -> (u64, Option<u64>, String) + Send + Sync,
    work: impl FnOnce() -> T,
) -> T {
    if !shows_progress(g) {
        return work();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_msg} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let stop2 = stop.clone();
        let bar2 = bar.clone();
        let render = &render;
        s.spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let (pos, total, msg) = render();
                if let Some(t) = total {
                    bar2.set_length(t.max(pos));
                }
                bar2.set_position(pos);
                bar2.set_message(msg);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let r = work();
        stop.store(true, Ordering::Relaxed);
        bar.finish_and_clear();
        r
    })
}

/// A path for human output: as is when it is UTF-8 without control characters, else (on a
/// terminal, where escape sequences would be obeyed) quoted the way GNU `ls
/// --quoting-style=shell-escape` does, e.g. `'a'$'\033''[31mb'`; off a terminal, decoded
/// lossily as before (`--json` has the exact bytes).
pub fn path_for_humans(bytes: &[u8], terminal: bool) -> String {
    if terminal && needs_quoting(bytes) {
        shell_escape(bytes)
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// Whether stdout is a terminal.
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

fn needs_quoting(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.chars().any(char::is_control),
        Err(_) => true,
    }
}

/// GNU `ls --quoting-style=shell-escape` for a name with unprintable bytes: printable runs in
/// single quotes (`'` as `'\''`), control characters and bytes that are not UTF-8 in `$'…'`
/// with C escapes (`\t`, `\n`, …) or three-digit octal.
pub fn shell_escape(bytes: &[u8]) -> String {
    #[derive(PartialEq)]
    enum State {
        Quoted,
        Dollar,
    }
    fn escape(out: &mut String, state: &mut State, b: u8) {
        if *state == State::Quoted {
            out.push_str("'$'");
            *state = State::Dollar;
        }
        match b {
            0x07 => out.push_str("\\a"),
            0x08 => out.push_str("\\b"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            0x0b => out.push_str("\\v"),
            0x0c => out.push_str("\\f"),
            b'\r' => out.push_str("\\r"),
            _ => out.push_str(&format!("\\{b:03o}")),
        }
    }
    let mut out = String::from("'");
    let mut state = State::Quoted;
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                let mut buf = [0u8; 4];
                for &b in c.encode_utf8(&mut buf).as_bytes() {
                    escape(&mut out, &mut state, b);
                }
                continue;
            }
            if state == State::Dollar {
                out.push_str("''");
                state = State::Quoted;
            }
            if c == '\'' {
                out.push_str("'\\''");
            } else {
                out.push(c);
            }
        }
        for &b in chunk.invalid() {
            escape(&mut out, &mut state, b);
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_matches_gnu_ls_shell_escape() {
        // Each expectation is what GNU ls 9 prints with --quoting-style=shell-escape.
        assert_eq!(shell_escape(b"a\x1b[31mb"), r"'a'$'\033''[31mb'");
        assert_eq!(shell_escape(b"caf\xe9"), r"'caf'$'\351'");
        assert_eq!(shell_escape(b"new\nline"), r"'new'$'\n''line'");
        assert_eq!(shell_escape(b"tab\there"), r"'tab'$'\t''here'");
        assert_eq!(shell_escape(b"it's\x1bx"), r"'it'\''s'$'\033''x'");
        assert_eq!(shell_escape(b"\x7f"), r"''$'\177'");
        assert_eq!(shell_escape("\u{9b}".as_bytes()), r"''$'\302\233'");
        assert_eq!(path_for_humans(b"/plain/name", true), "/plain/name");
        assert_eq!(path_for_humans(b"/a\x1bb", false), "/a\x1bb");
        assert_eq!(path_for_humans(b"/a\x1bb", true), r"'/a'$'\033''b'");
    }
}
