//! Where passwords come from: $CAIRN_PASSWORD, --password-file, --password-command, or a
//! prompt on the terminal. Never from a command-line argument. Held in zeroizing memory.
//!
//! The variables that carry a password or say where one is (`SECRET_VARS`) are taken out of
//! this process's environment at start (`take_from_env`), so no child process (ssh, the
//! password command, fusermount3) ever inherits them; children spawned here also remove them
//! explicitly. A password file and a password command's output are read at most
//! `MAX_PASSWORD_BYTES` at a time: only the first line counts.

use crate::{Failure, Global};
use std::io::{IsTerminal, Read};
use std::os::unix::ffi::OsStringExt;
use std::sync::OnceLock;
use zeroize::Zeroizing;

/// Environment variables never passed on to a child process.
pub const SECRET_VARS: [&str; 5] = [
    "CAIRN_PASSWORD",
    "CAIRN_PASSWORD_FILE",
    "CAIRN_PASSWORD_COMMAND",
    "CAIRN_NEW_PASSWORD",
    "CAIRN_NEW_PASSWORD_FILE",
];

/// The longest password file line or password command output accepted.
pub const MAX_PASSWORD_BYTES: usize = 64 << 10;

/// `$CAIRN_PASSWORD` and `$CAIRN_NEW_PASSWORD` as they were at start.
struct Taken {
    password: Option<Zeroizing<Vec<u8>>>,
    new_password: Option<Zeroizing<Vec<u8>>>,
}

static TAKEN: OnceLock<Taken> = OnceLock::new();

/// Remember `$CAIRN_PASSWORD` and `$CAIRN_NEW_PASSWORD`, then remove every secret variable from
/// the process environment. Call once at the start of `main`, after the command line is parsed
/// (clap reads `$CAIRN_PASSWORD_FILE` and `$CAIRN_PASSWORD_COMMAND`) and before any thread
/// exists.
pub fn take_from_env() {
    let take = |name: &str| std::env::var_os(name).map(|v| Zeroizing::new(v.into_vec()));
    let taken = Taken {
        password: take("CAIRN_PASSWORD"),
        new_password: take("CAIRN_NEW_PASSWORD"),
    };
    for v in SECRET_VARS {
        // Edition 2021: safe to call; no other thread exists yet (see above).
        std::env::remove_var(v);
    }
    let _ = TAKEN.set(taken);
}

fn taken() -> &'static Taken {
    TAKEN.get_or_init(|| Taken {
        password: None,
        new_password: None,
    })
}

fn from_env(name: &str, value: &Zeroizing<Vec<u8>>) -> Result<Zeroizing<String>, Failure> {
    let s = std::str::from_utf8(value).map_err(|_| {
        Failure::usage(format!(
            "{name} is not valid UTF-8; give the password as UTF-8 text"
        ))
    })?;
    Ok(Zeroizing::new(s.to_string()))
}

/// The first line of `bytes` (without its `\n` or `\r\n`), as UTF-8.
fn first_line(bytes: &[u8], what: &str) -> Result<Zeroizing<String>, Failure> {
    let end = bytes
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .unwrap_or(bytes.len());
    let s = std::str::from_utf8(&bytes[..end]).map_err(|_| {
        Failure::fatal(format!(
            "{what} is not valid UTF-8 text; the password must be UTF-8"
        ))
    })?;
    Ok(Zeroizing::new(s.to_string()))
}

/// Read into a buffer of `MAX_PASSWORD_BYTES + 1` until EOF, a full buffer or (with
/// `to_newline`) the end of the first line; the bytes read. Allocated once at full size, so no
/// reallocation leaves a copy of the password behind.
fn read_bounded(
    r: &mut impl Read,
    what: &str,
    to_newline: bool,
) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let mut buf = Zeroizing::new(vec![0u8; MAX_PASSWORD_BYTES + 1]);
    let mut filled = 0;
    while filled < buf.len() {
        let n = match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::fatal(format!("reading {what}: {e}"))),
        };
        filled += n;
        if to_newline && buf[filled - n..filled].contains(&b'\n') {
            break;
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Read until the first newline or EOF, at most `MAX_PASSWORD_BYTES`. Returns the bytes read
/// (possibly more than the line) or an error naming `what` when no line ends within the bound.
fn read_line_bounded(r: &mut impl Read, what: &str) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let buf = read_bounded(r, what, true)?;
    let line = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    if line > MAX_PASSWORD_BYTES {
        return Err(Failure::fatal(format!(
            "{what}: no end of line within the first {} KiB; put the password alone on the first line",
            MAX_PASSWORD_BYTES >> 10
        )));
    }
    Ok(buf)
}

fn from_file(file: &std::path::Path, what: &str) -> Result<Zeroizing<String>, Failure> {
    let what = format!("{what} {}", file.display());
    let mut f = std::fs::File::open(file).map_err(|e| {
        Failure::fatal(format!(
            "cannot read {what}: {e}; check the path and its permissions"
        ))
    })?;
    let bytes = read_line_bounded(&mut f, &what)?;
    first_line(&bytes, &what)
}

/// Refuse an empty new password (for `init`, `key add`, `key passwd`).
pub fn require_non_empty(p: Zeroizing<String>, source: &str) -> Result<Zeroizing<String>, Failure> {
    if p.is_empty() {
        return Err(Failure::usage(format!(
            "empty password refused ({source}): a repository password must not be empty; give a non-empty one"
        )));
    }
    Ok(p)
}

/// The password and where it came from (for messages).
fn password_with_source(
    g: &Global,
    confirm: bool,
) -> Result<(Zeroizing<String>, &'static str), Failure> {
    if let Some(p) = &taken().password {
        return Ok((from_env("CAIRN_PASSWORD", p)?, "CAIRN_PASSWORD"));
    }
    if let Some(file) = &g.password_file {
        return Ok((from_file(file, "password file")?, "password file"));
    }
    if let Some(cmd) = &g.password_command {
        return Ok((from_command(cmd)?, "password command"));
    }
    Ok((prompt("Repository password: ", confirm)?, "prompt"))
}

/// Whether a password was given without a prompt (variable, file or command): the commands
/// that can work without the key use it only then.
pub fn given(g: &Global) -> bool {
    taken().password.is_some() || g.password_file.is_some() || g.password_command.is_some()
}

/// Whether a prompt could ask for the password.
pub fn can_prompt() -> bool {
    std::io::stdin().is_terminal() || std::fs::File::open("/dev/tty").is_ok()
}

pub fn password(g: &Global, confirm: bool) -> Result<Zeroizing<String>, Failure> {
    password_with_source(g, confirm).map(|(p, _)| p)
}

/// The password for a new repository (`init`): asked twice on a terminal, never empty.
pub fn init_password(g: &Global) -> Result<Zeroizing<String>, Failure> {
    let (p, source) = password_with_source(g, true)?;
    require_non_empty(p, source)
}

/// The new password for `key add` / `key passwd`: $CAIRN_NEW_PASSWORD, --new-password-file,
/// or a prompt (asked twice). Never empty.
pub fn new_password(file: Option<&std::path::Path>) -> Result<Zeroizing<String>, Failure> {
    if let Some(p) = &taken().new_password {
        return require_non_empty(from_env("CAIRN_NEW_PASSWORD", p)?, "CAIRN_NEW_PASSWORD");
    }
    if let Some(file) = file {
        return require_non_empty(from_file(file, "new password file")?, "new password file");
    }
    prompt("New password: ", true)
}

fn from_command(cmd: &str) -> Result<Zeroizing<String>, Failure> {
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    for v in SECRET_VARS {
        c.env_remove(v);
    }
    let mut child = c.spawn().map_err(|e| {
        Failure::fatal(format!(
            "cannot run password command: {e}; check --password-command / CAIRN_PASSWORD_COMMAND"
        ))
    })?;
    let what = "the password command's output";
    let read = match child.stdout.take() {
        Some(mut out) => read_all_bounded(&mut out, what),
        None => Err(Failure::fatal("password command started without a pipe")),
    };
    if read.is_err() {
        // Ours to stop: it printed too much (or its output could not be read).
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| Failure::fatal(format!("waiting for the password command: {e}")))?;
    let bytes = read?;
    if !status.success() {
        return Err(Failure::fatal(format!(
            "password command failed ({status}); run it by hand to see why"
        )));
    }
    first_line(&bytes, what)
}

/// Read to EOF, at most `MAX_PASSWORD_BYTES`.
fn read_all_bounded(r: &mut impl Read, what: &str) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let buf = read_bounded(r, what, false)?;
    if buf.len() > MAX_PASSWORD_BYTES {
        return Err(Failure::fatal(format!(
            "{what} is longer than {} KiB; the command must print the password on its first line",
            MAX_PASSWORD_BYTES >> 10
        )));
    }
    Ok(buf)
}

fn prompt(label: &str, confirm: bool) -> Result<Zeroizing<String>, Failure> {
    if !can_prompt() {
        return Err(Failure::fatal(
            "no password given: set CAIRN_PASSWORD_FILE, CAIRN_PASSWORD_COMMAND or CAIRN_PASSWORD, or run on a terminal",
        ));
    }
    let p = Zeroizing::new(
        rpassword::prompt_password(label)
            .map_err(|e| Failure::fatal(format!("reading password: {e}")))?,
    );
    if confirm {
        let again = Zeroizing::new(
            rpassword::prompt_password("Again: ")
                .map_err(|e| Failure::fatal(format!("reading password: {e}")))?,
        );
        if *again != *p {
            return Err(Failure::fatal(
                "the passwords do not match; run the command again and type the same password twice",
            ));
        }
    }
    if p.is_empty() {
        return Err(Failure::usage(
            "empty password refused: type a non-empty password",
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_only_and_bounded() {
        let mut r: &[u8] = b"secret\r\nsecond line\n";
        let b = read_line_bounded(&mut r, "x").unwrap();
        assert_eq!(&*first_line(&b, "x").unwrap(), "secret");
        let mut r: &[u8] = b"no newline";
        let b = read_line_bounded(&mut r, "x").unwrap();
        assert_eq!(&*first_line(&b, "x").unwrap(), "no newline");
        // A line of exactly the bound is fine; one byte more is not.
        let mut ok = vec![b'a'; MAX_PASSWORD_BYTES];
        ok.push(b'\n');
        assert!(read_line_bounded(&mut ok.as_slice(), "x").is_ok());
        let long = vec![b'a'; MAX_PASSWORD_BYTES + 1];
        let e = read_line_bounded(&mut long.as_slice(), "f").err().unwrap();
        assert!(e.message.contains("first line"), "{}", e.message);
        // An endless source is cut at the bound.
        let e = read_line_bounded(&mut std::io::repeat(0), "f")
            .err()
            .unwrap();
        assert!(e.message.contains("64 KiB"), "{}", e.message);
        let e = read_all_bounded(&mut std::io::repeat(b'y'), "out")
            .err()
            .unwrap();
        assert!(e.message.contains("64 KiB"), "{}", e.message);
    }
}
