//! `cairn serve`: the far side of an ssh sync target. Speaks the sync protocol on stdin and
//! stdout (nothing else may be printed there) and needs no password.

use crate::{CmdResult, Failure, Global};

#[derive(clap::Args)]
pub struct Args {
    /// Refuse every deletion (for offsite copies a compromised client must not destroy)
    #[arg(long)]
    append_only: bool,
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    let dir = g.repo_path()?;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let (mut r, mut w) = (stdin.lock(), stdout.lock());
    cairn_repo::sync::serve::serve(&dir, a.append_only, &mut r, &mut w)
        .map_err(|e| Failure::fatal(format!("serve {}: {e}", dir.display())))?;
    Ok(0)
}
