//! Where passwords come from: $CAIRN_PASSWORD, --password-file, --password-command, or a
//! prompt on the terminal. Never from a command-line argument. Held in zeroizing memory.

use crate::{Failure, Global};
use std::io::IsTerminal;
use zeroize::Zeroizing;

fn first_line(mut s: String) -> Zeroizing<String> {
    let end = s.find(['\n', '\r']).unwrap_or(s.len());
    s.truncate(end);
    Zeroizing::new(s)
}

pub fn password(g: &Global, confirm: bool) -> Result<Zeroizing<String>, Failure> {
    if let Ok(p) = std::env::var("CAIRN_PASSWORD") {
        return Ok(Zeroizing::new(p));
    }
    if let Some(file) = &g.password_file {
        let text = std::fs::read_to_string(file).map_err(|e| {
            Failure::fatal(format!("cannot read password file {}: {e}", file.display()))
        })?;
        return Ok(first_line(text));
    }
    if let Some(cmd) = &g.password_command {
        return from_command(cmd);
    }
    prompt("Repository password: ", confirm)
}

/// The new password for `key add` / `key passwd`: $CAIRN_NEW_PASSWORD, --new-password-file,
/// or a prompt (asked twice).
pub fn new_password(file: Option<&std::path::Path>) -> Result<Zeroizing<String>, Failure> {
    if let Ok(p) = std::env::var("CAIRN_NEW_PASSWORD") {
        return Ok(Zeroizing::new(p));
    }
    if let Some(file) = file {
        let text = std::fs::read_to_string(file).map_err(|e| {
            Failure::fatal(format!(
                "cannot read new password file {}: {e}",
                file.display()
            ))
        })?;
        return Ok(first_line(text));
    }
    prompt("New password: ", true)
}

fn from_command(cmd: &str) -> Result<Zeroizing<String>, Failure> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| Failure::fatal(format!("cannot run password command: {e}")))?;
    if !out.status.success() {
        return Err(Failure::fatal(format!(
            "password command failed ({})",
            out.status
        )));
    }
    let text = String::from_utf8(out.stdout)
        .map_err(|_| Failure::fatal("password command printed non-UTF-8 output"))?;
    Ok(first_line(text))
}

fn prompt(label: &str, confirm: bool) -> Result<Zeroizing<String>, Failure> {
    if !std::io::stdin().is_terminal() && std::fs::File::open("/dev/tty").is_err() {
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
            return Err(Failure::fatal("the passwords do not match"));
        }
    }
    if p.is_empty() {
        return Err(Failure::fatal("empty password refused"));
    }
    Ok(p)
}
