//! `cairn sync`: push snapshots to secondary repositories (all named targets, or the ones
//! given), one after another; a failure on one does not stop the others.
//! Exit 0 when every target is in sync, 3 when some failed, 1 when none was.

use crate::primary::Primary;
use crate::{output, secrets, CmdResult, Failure, Global, EXIT_FATAL, EXIT_INCOMPLETE};
use cairn_repo::graph::Source;
use cairn_repo::storage::{Storage, Url};
use cairn_repo::sync::{
    self, LocalTarget, SshOptions, SshTarget, SyncOptions, SyncProgress, SyncReport,
};
use cairn_repo::Error;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Target names (see `cairn target list`) or URLs; default: every named target
    targets: Vec<String>,
    /// Cap on bytes sent per second, per target (suffixes K, M, G: powers of 1024), e.g. 10M
    #[arg(long, value_name = "RATE")]
    limit_rate: Option<String>,
    /// Wait up to this many seconds for a repository that is locked
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    lock_wait: u64,
    /// Also delete from each target the snapshots this repository no longer has (retention
    /// reaches the replicas; their own `prune` frees the data). Without it a target keeps
    /// every snapshot it received, for a longer retention of its own
    #[arg(long)]
    delete: bool,
}

/// How to reach ssh targets (shared by `sync` and `check --repair-from`).
#[derive(clap::Args, Clone)]
pub struct SshArgs {
    /// The ssh command and its options, split at whitespace (default: ssh)
    #[arg(long, env = "CAIRN_SSH_COMMAND", value_name = "COMMAND", global = true)]
    ssh_command: Option<String>,
    /// The cairn binary on ssh targets
    #[arg(
        long,
        env = "CAIRN_REMOTE_BINARY",
        default_value = "cairn",
        value_name = "PATH",
        global = true
    )]
    remote_cairn: String,
}

impl SshArgs {
    pub fn options(&self) -> SshOptions {
        let command = self
            .ssh_command
            .as_deref()
            .map(|c| c.split_whitespace().map(String::from).collect())
            .filter(|v: &Vec<String>| !v.is_empty())
            .unwrap_or_else(|| vec!["ssh".to_string()]);
        SshOptions {
            command,
            remote_binary: self.remote_cairn.clone(),
        }
    }
}

struct Resolved {
    /// The name, or the URL for an unnamed target.
    label: String,
    url: String,
}

/// The outcome for one target.
struct Outcome {
    label: String,
    url: String,
    report: SyncReport,
    seconds: f64,
    error: Option<String>,
    /// The walk met objects sealed before format 2 and had no key.
    key_needed: bool,
}

/// Parse `10M`, `512K`, `1G`, `1000` (bytes per second).
pub fn parse_rate(s: &str) -> Result<u64, Failure> {
    let t = s
        .trim()
        .trim_end_matches("/s")
        .trim_end_matches(['B', 'b'])
        .trim_end_matches('i');
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.eq_ignore_ascii_case(&'k') => (&t[..i], 1u64 << 10),
        Some((i, c)) if c.eq_ignore_ascii_case(&'m') => (&t[..i], 1 << 20),
        Some((i, c)) if c.eq_ignore_ascii_case(&'g') => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num.trim().parse().map_err(|_| {
        Failure::usage(format!(
            "--limit-rate {s}: give bytes per second like 10M or 512K"
        ))
    })?;
    if n.is_nan() || n <= 0.0 {
        return Err(Failure::usage(format!(
            "--limit-rate {s}: must be positive"
        )));
    }
    Ok(((n * mult as f64) as u64).max(1))
}

fn resolve(store: &dyn Storage, wanted: &[String]) -> Result<Vec<Resolved>, Failure> {
    let named = cairn_repo::sync::targets::list(store)?;
    if wanted.is_empty() {
        if named.is_empty() {
            return Err(Failure::usage(
                "no sync targets: add one with `cairn target add NAME URL` or give a URL",
            ));
        }
        return Ok(named
            .into_iter()
            .map(|(label, url)| Resolved { label, url })
            .collect());
    }
    wanted
        .iter()
        .map(|w| match named.iter().find(|(n, _)| n == w) {
            Some((n, u)) => Ok(Resolved {
                label: n.clone(),
                url: u.clone(),
            }),
            None if Url::looks_like_url(w) => {
                let url = crate::target::absolute_url(w)?;
                Ok(Resolved {
                    label: url.clone(),
                    url,
                })
            }
            None => Err(Failure::usage(format!(
                "no target named `{w}`; see `cairn target list`"
            ))),
        })
        .collect()
}

fn retry_locked<T>(lock_wait: u64, mut f: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let deadline = Instant::now() + Duration::from_secs(lock_wait);
    loop {
        match f() {
            Err(Error::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(250))
            }
            r => return r,
        }
    }
}

struct Ctx<'a> {
    repo: &'a dyn Source,
    opts: SyncOptions,
    ssh: SshOptions,
    /// How to open a replica that is not behind ssh (the options `--repo` is opened with).
    open: cairn_repo::OpenOptions,
    lock_wait: u64,
}

fn sync_one(
    ctx: &Ctx<'_>,
    url: &str,
    progress: &SyncProgress,
    report: &mut SyncReport,
) -> Result<(), Error> {
    match Url::parse_target(url)? {
        // A `cairn serve` at the far end of ssh: the sync protocol (DESIGN.md §7).
        Url::Ssh(u) => {
            let mut t = SshTarget::connect(&u, &ctx.ssh)?;
            report.created = t.handshake(ctx.repo)?;
            sync::sync(ctx.repo, &mut t, &ctx.opts, progress, report)
        }
        // Any other store: written from here, through the storage seam.
        url => {
            let (store, created) = retry_locked(ctx.lock_wait, || {
                sync::open_replica_at(ctx.repo, &url, &ctx.open)
            })?;
            report.created = created;
            let mut t = LocalTarget::new(&*store)?;
            sync::sync(ctx.repo, &mut t, &ctx.opts, progress, report)
        }
    }
}

fn ctx<'a>(g: &Global, a: &Args, primary: &'a Primary, opts: &SyncOptions) -> Ctx<'a> {
    Ctx {
        repo: primary.source(),
        opts: opts.clone(),
        ssh: g.ssh.options(),
        open: g.open_options(),
        lock_wait: a.lock_wait,
    }
}

fn run_target(g: &Global, ctx: &Ctx<'_>, t: &Resolved) -> Outcome {
    let started = Instant::now();
    let progress = SyncProgress::default();
    let mut report = SyncReport::default();
    let render = || {
        let (o, b) = (
            progress.objects.load(Ordering::Relaxed),
            progress.bytes.load(Ordering::Relaxed),
        );
        let total = progress.total_bytes.load(Ordering::Relaxed);
        (
            b,
            (total > 0).then_some(total),
            format!("{}: {o} objects", t.label),
        )
    };
    let result = output::with_progress(g, render, || sync_one(ctx, &t.url, &progress, &mut report));
    Outcome {
        label: t.label.clone(),
        url: t.url.clone(),
        report,
        seconds: started.elapsed().as_secs_f64(),
        key_needed: matches!(result, Err(Error::KeyNeeded(_))),
        error: result.err().map(|e| e.to_string()),
    }
}

/// Record the outcome in the primary's state table (read by `cairn status`).
fn record(store: &dyn Storage, o: &Outcome) {
    let value = serde_json::json!({
        "time": cairn_repo::util::now_unix(),
        "ok": o.error.is_none(),
        "snapshots": o.report.target_snapshots.iter().map(|id| id.to_hex()).collect::<Vec<_>>(),
        "error": o.error,
    });
    let recorded = store
        .set_state(&format!("sync.{}", o.label), value.to_string().as_bytes())
        .and_then(|_| remember_url_target(store, o));
    if let Err(e) = recorded {
        output::warn(&format!(
            "could not record the sync state of {}: {e}",
            o.label
        ));
    }
}

/// State key listing the targets synced to by URL rather than by name, so that `status` shows
/// them too (a server's cron job syncing to URLs): a JSON array of URLs.
pub const URL_TARGETS_KEY: &str = "sync.url-targets";

fn remember_url_target(store: &dyn Storage, o: &Outcome) -> Result<(), Error> {
    if o.label != o.url {
        return Ok(());
    }
    let mut urls: Vec<String> = store
        .state(URL_TARGETS_KEY)?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if urls.contains(&o.url) {
        return Ok(());
    }
    urls.push(o.url.clone());
    store.set_state(
        URL_TARGETS_KEY,
        serde_json::json!(urls).to_string().as_bytes(),
    )
}

fn outcome_json(o: &Outcome) -> serde_json::Value {
    serde_json::json!({
        "target": o.label,
        "url": o.url,
        "ok": o.error.is_none(),
        "created": o.report.created,
        "snapshots_sent": o.report.snapshots_sent,
        "objects": o.report.objects_sent,
        "bytes": o.report.bytes_sent,
        "round_trips": o.report.round_trips,
        "ids_asked": o.report.ids_asked,
        "seconds": (o.seconds * 1000.0).round() / 1000.0,
        "target_snapshots": o.report.target_snapshots.len(),
        "snapshots_deleted": o.report.snapshots_deleted,
        "delete_refused": o.report.delete_refused,
        "error": o.error,
    })
}

fn print_human(g: &Global, o: &Outcome) {
    match &o.error {
        Some(e) => output::warn(&format!("sync to {} failed: {e}", o.label)),
        None => output::info(
            g,
            &format!(
                "{}: {}{} snapshots, {} objects, {} sent{} in {:.1} s",
                o.label,
                if o.report.created {
                    "created replica; "
                } else {
                    ""
                },
                o.report.snapshots_sent,
                o.report.objects_sent,
                output::bytes(o.report.bytes_sent),
                match o.report.snapshots_deleted {
                    0 => String::new(),
                    n => format!(", {n} snapshots deleted"),
                },
                o.seconds
            ),
        ),
    }
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    let limit_rate = a.limit_rate.as_deref().map(parse_rate).transpose()?;
    let mut primary = Primary::open(g, a.lock_wait)?;
    // A sync reads every object it sends: from a server, that needs `restore`.
    crate::require(primary.storage(), &[cairn_repo::storage::Right::Restore])?;
    let targets = resolve(primary.storage(), &a.targets)?;
    let opts = SyncOptions {
        limit_rate,
        delete: a.delete,
        ..SyncOptions::default()
    };
    let mut outcomes = Vec::new();
    for t in &targets {
        let mut o = run_target(g, &ctx(g, a, &primary, &opts), t);
        if o.key_needed && !primary.has_key() && secrets::can_prompt() {
            // Snapshots from before format 2: walk them with the key (nothing was sent
            // for them yet: the walk comes before any object is sent).
            primary = primary.unlock(g)?;
            o = run_target(g, &ctx(g, a, &primary, &opts), t);
        }
        record(primary.storage(), &o);
        if let Some(why) = &o.report.delete_refused {
            output::warn(&format!(
                "{}: --delete was refused ({why}); the target keeps the snapshots this repository no longer has (an append-only target keeps its history by design)",
                o.label
            ));
        }
        if !g.json {
            print_human(g, &o);
        }
        outcomes.push(o);
    }
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    let refused = outcomes
        .iter()
        .filter(|o| o.report.delete_refused.is_some())
        .count();
    if g.json {
        output::json(&serde_json::json!({
            "targets": outcomes.iter().map(outcome_json).collect::<Vec<_>>(),
            "ok": outcomes.len() - failed,
            "failed": failed,
            "key_free": !primary.has_key(),
        }));
    }
    match failed {
        0 if refused > 0 => Ok(EXIT_INCOMPLETE),
        0 => Ok(0),
        n if n == outcomes.len() => Err(Failure {
            code: EXIT_FATAL,
            message: "sync failed for every target".into(),
        }),
        _ => Ok(EXIT_INCOMPLETE),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10M").ok(), Some(10 << 20));
        assert_eq!(parse_rate("512k").ok(), Some(512 << 10));
        assert_eq!(parse_rate("1.5G").ok(), Some(3 << 29));
        assert_eq!(parse_rate("1000").ok(), Some(1000));
        assert_eq!(parse_rate("10MiB/s").ok(), Some(10 << 20));
        assert!(parse_rate("fast").is_err() && parse_rate("0").is_err());
    }
}
