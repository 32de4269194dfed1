//! `cairn serve`: the far side of an ssh sync target and of a repository used over ssh (the
//! remote store). Speaks the protocol on stdin and stdout (nothing else may be printed there)
//! and needs no password; the client's first message says which of the two it is.

use crate::{CmdResult, Failure, Global};

#[derive(clap::Args)]
pub struct Args {
    /// Refuse every deletion (for offsite copies a compromised client must not destroy)
    #[arg(long)]
    append_only: bool,
    /// Also append every refusal and error answered to a client to this file (with the time)
    #[arg(long)]
    log_file: Option<std::path::PathBuf>,
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    let dir = g.repo_path("serve")?;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let (mut r, mut w) = (stdin.lock(), stdout.lock());
    let mut log_file = match &a.log_file {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| {
                    Failure::fatal(format!("cannot open log file {}: {e}", p.display()))
                })?,
        ),
        None => None,
    };
    let mut log = |msg: &str| {
        let line = format!(
            "{} cairn serve {}: {msg}\n",
            cairn_repo::util::now_unix(),
            dir.display()
        );
        // stderr reaches the client's terminal through ssh; the file stays on the server.
        eprint!("{line}");
        if let Some(f) = log_file.as_mut() {
            use std::io::Write;
            let _ = f.write_all(line.as_bytes());
        }
    };
    cairn_repo::sync::serve::serve(&dir, a.append_only, &mut r, &mut w, &mut log)
        .map_err(|e| Failure::fatal(format!("serve {}: {e}", dir.display())))?;
    Ok(0)
}
