//! `cairn completions SHELL`: the shell's completion script, on stdout.

use crate::{CmdResult, Failure};
use clap::CommandFactory;
use clap_complete::Shell;

#[derive(clap::Args)]
#[command(
    after_help = "Install: cairn completions bash > /usr/local/share/bash-completion/completions/cairn
         cairn completions zsh > /usr/local/share/zsh/site-functions/_cairn
         cairn completions fish > /usr/local/share/fish/vendor_completions.d/cairn.fish
(scripts/install does this). Or, for the current shell only: source <(cairn completions bash)"
)]
pub struct Args {
    /// The shell to write the completion script for
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The completion script for `shell`.
pub fn script(shell: Shell) -> Vec<u8> {
    let mut cmd = crate::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "cairn", &mut out);
    out
}

pub fn run(a: &Args) -> CmdResult {
    match crate::output::raw(&script(a.shell)) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(Failure::fatal(format!("writing to stdout: {e}"))),
    }
}
