//! The `cairn` command line: parse, dispatch, map errors to the exit codes of the contract
//! (design.md §5). Subcommands live one per file; all printing goes through `output`.

mod backup;
mod cat;
mod check;
mod completions;
mod diff;
mod forget;
mod init;
mod key;
mod ls;
mod man;
mod mount;
mod output;
mod primary;
mod prune;
mod restore;
mod secrets;
mod serve;
mod signals;
mod snapshots;
mod stats;
mod status;
mod sync;
mod target;
mod version;

use cairn_repo::storage::Right;
use cairn_repo::Error;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

pub const EXIT_FATAL: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_INCOMPLETE: u8 = 3;
pub const EXIT_NO_REPO: u8 = 10;
pub const EXIT_LOCKED: u8 = 11;
pub const EXIT_WRONG_PASSWORD: u8 = 12;
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser)]
#[command(
    name = "cairn",
    version = version::text(),
    about = "Versioned, deduplicating, encrypted backups you can mount"
)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
pub struct Global {
    /// Repository: a directory, file://PATH or ssh://[user@]host[:port]/path
    #[arg(long, short = 'r', env = "CAIRN_REPO", global = true)]
    pub repo: Option<PathBuf>,
    /// Read the password from this file (first line)
    #[arg(long, env = "CAIRN_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Run this shell command and use its output's first line as the password
    #[arg(long, env = "CAIRN_PASSWORD_COMMAND", global = true)]
    pub password_command: Option<String>,
    /// Machine-readable output
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress and no informational output (errors and warnings still go to stderr)
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// Keep no local cache of a remote repository's trees (by default in
    /// $XDG_CACHE_HOME/cairn/objects or ~/.cache/cairn/objects)
    #[arg(long, global = true)]
    pub no_cache: bool,
    #[command(flatten)]
    pub ssh: sync::SshArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new repository
    Init(init::Args),
    /// Back up files and directories into a new snapshot
    Backup(backup::Args),
    /// List snapshots
    Snapshots(snapshots::Args),
    /// List files in a snapshot
    Ls(ls::Args),
    /// Print a file from a snapshot to stdout
    Cat(cat::Args),
    /// Show what changed between two snapshots
    Diff(diff::Args),
    /// Restore a snapshot (or parts of it) into a directory
    Restore(restore::Args),
    /// Mount the snapshots as a read-only filesystem (foreground until unmounted)
    Mount(mount::Args),
    /// Verify the repository's structure and (optionally) its data
    Check(check::Args),
    /// Manage passwords (key slots)
    #[command(subcommand)]
    Key(key::Command),
    /// Show repository size, deduplication and space efficiency
    Stats(stats::Args),
    /// Push snapshots to secondary repositories (replicas)
    Sync(sync::Args),
    /// Manage named sync targets
    #[command(subcommand)]
    Target(target::Command),
    /// Serve the repository over stdin/stdout to `--repo ssh://…` clients and `cairn sync` (run by ssh on the far side)
    Serve(serve::Args),
    /// Remove snapshots by retention rules (--keep-daily 7 …); --prune frees their data
    Forget(forget::Args),
    /// Delete data no snapshot references (safe beside running backups)
    Prune(prune::Args),
    /// Health at a glance; exit 3 when something is overdue or failed
    #[command(
        after_help = "Exit status: 0 healthy; 3 something is overdue (--max-age, --max-sync-age, \
--max-check-age) or failed (last sync of a target, last check found damage); 1 error; \
10 no repository; 12 wrong password."
    )]
    Status(status::Args),
    /// Print the shell completion script for bash, zsh or fish to stdout
    Completions(completions::Args),
    /// Write the manual pages (cairn.1 and one per subcommand) into a directory
    Man(man::Args),
}

/// The most worker threads `--threads` accepts.
pub const MAX_THREADS: usize = 256;

/// Value parser for `--threads`: 1 to `MAX_THREADS`.
pub fn parse_threads(s: &str) -> Result<usize, String> {
    let hint = format!(
        "give a number of threads from 1 to {MAX_THREADS}, or leave the option out for the default"
    );
    match s.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_THREADS as u64).contains(&n) => Ok(n as usize),
        Ok(0) => Err(format!("0 threads cannot do any work; {hint}")),
        Ok(_) => Err(format!(
            "more than {MAX_THREADS} threads is too many; {hint}"
        )),
        Err(_) => Err(format!("not a whole number; {hint}")),
    }
}

/// Refuse, before any work, what the repository's server does not let this key do (it would
/// refuse the request anyway; this keeps `forget --prune` or `key passwd` from doing half).
pub fn require(store: &dyn cairn_repo::storage::Storage, rights: &[Right]) -> Result<(), Failure> {
    let granted = store.capabilities().rights;
    for r in rights {
        granted.require(*r, &store.location())?;
    }
    Ok(())
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::RepoNotFound { .. } => EXIT_NO_REPO,
            Error::Locked { .. } => EXIT_LOCKED,
            Error::WrongPassword(_) => EXIT_WRONG_PASSWORD,
            Error::Interrupted => EXIT_INTERRUPTED,
            Error::Usage(_) | Error::LocalOnly { .. } => EXIT_USAGE,
            _ => EXIT_FATAL,
        };
        let mut message = e.to_string();
        if e.is_disk_full() {
            message.push_str(
                "; the disk is full: free space there and run it again (on a repository's disk, the next backup first gives back what a failed one wrote, and `cairn prune` drops data no snapshot uses)",
            );
        }
        Failure { code, message }
    }
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_FATAL,
            message: message.into(),
        }
    }
}

/// What a command returns: the exit code on success (0, or 3 for "finished but incomplete").
pub type CmdResult = Result<u8, Failure>;

impl Global {
    /// Where the repository is, from `--repo`/`$CAIRN_REPO`: a path, `file://PATH` or
    /// `ssh://…`. A URL of another scheme is refused, never taken for a relative directory
    /// (which made `--repo ssh://host/path` back up into a local folder named `ssh:`).
    pub fn repo_url(&self) -> Result<cairn_repo::storage::Url, Failure> {
        let raw = self.repo.as_ref().ok_or_else(|| {
            Failure::usage("no repository given: use --repo PATH (or ssh://…) or set CAIRN_REPO")
        })?;
        Ok(cairn_repo::storage::Url::parse(raw.as_os_str())?)
    }

    /// The repository's directory, for what works on the repository's own files only (the
    /// server side, `check --storage-only`, `target`); `what` names it for the error.
    pub fn repo_path(&self, what: &str) -> Result<PathBuf, Failure> {
        match self.repo_url()? {
            cairn_repo::storage::Url::Local(p) => Ok(p),
            url => Err(Error::LocalOnly {
                what: what.to_string(),
                location: url.to_string(),
            }
            .into()),
        }
    }

    /// How to open a repository: the defaults, with this command line's ssh options.
    pub fn open_options(&self) -> cairn_repo::OpenOptions {
        cairn_repo::OpenOptions {
            ssh: self.ssh.options(),
            object_cache: if self.no_cache { None } else { cache_root() },
            ..Default::default()
        }
    }

    /// `open_options` without the object cache: for `check`, which must read what the store
    /// holds, not what this machine kept.
    pub fn open_options_uncached(&self) -> cairn_repo::OpenOptions {
        cairn_repo::OpenOptions {
            object_cache: None,
            ..self.open_options()
        }
    }

    pub fn open(&self) -> Result<cairn_repo::Repository, Failure> {
        self.open_tuned(&self.open_options())
    }

    /// Open the repository with these caches (`kdf` is not used: no key slot is made); a
    /// missing repository is reported before the password is asked for.
    pub fn open_tuned(
        &self,
        opts: &cairn_repo::OpenOptions,
    ) -> Result<cairn_repo::Repository, Failure> {
        let store = cairn_repo::storage::open(&self.repo_url()?, opts)?;
        let password = secrets::password(self, false)?;
        Ok(cairn_repo::Repository::unlock(store, password.as_bytes())?)
    }
}

/// Where remote repositories' trees are cached: `$XDG_CACHE_HOME/cairn/objects`, or
/// `~/.cache/cairn/objects` (`None` without either).
fn cache_root() -> Option<PathBuf> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    let base = std::env::var_os("XDG_CACHE_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".cache"))
        })?;
    Some(base.join("cairn").join("objects"))
}

fn main() -> ExitCode {
    output::quiet_panics();
    let cli = Cli::parse();
    // Before any thread or child starts: no password variable reaches a child process.
    secrets::take_from_env();
    // A panic that got past the engine's guards still ends as an error with the contract's
    // exit code 1, never Rust's 101.
    let result = std::panic::catch_unwind(|| dispatch(&cli)).unwrap_or_else(|_| {
        Err(Failure::fatal(
            "internal error (see the line above); if the repository may be damaged, run `cairn check`",
        ))
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            output::error(&f.message);
            ExitCode::from(f.code)
        }
    }
}

fn dispatch(cli: &Cli) -> CmdResult {
    let g = &cli.global;
    match &cli.command {
        Command::Init(a) => init::run(g, a),
        Command::Backup(a) => backup::run(g, a),
        Command::Snapshots(a) => snapshots::run(g, a),
        Command::Ls(a) => ls::run(g, a),
        Command::Cat(a) => cat::run(g, a),
        Command::Diff(a) => diff::run(g, a),
        Command::Restore(a) => restore::run(g, a),
        Command::Mount(a) => mount::run(g, a),
        Command::Check(a) => check::run(g, a),
        Command::Key(c) => key::run(g, c),
        Command::Stats(a) => stats::run(g, a),
        Command::Sync(a) => sync::run(g, a),
        Command::Target(c) => target::run(g, c),
        Command::Serve(a) => serve::run(g, a),
        Command::Forget(a) => forget::run(g, a),
        Command::Prune(a) => prune::run(g, a),
        Command::Status(a) => status::run(g, a),
        Command::Completions(a) => completions::run(a),
        Command::Man(a) => man::run(g, a),
    }
}
