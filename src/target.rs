//! `cairn target add|list|remove`: named sync targets, kept in the repository. No password
//! needed: the names and URLs are not secret.

use crate::{output, CmdResult, Failure, Global};
use cairn_repo::storage::LocalStore as Store;
use cairn_repo::storage::Url as TargetUrl;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Add a named target: an absolute path (another disk, a NAS mount) or ssh://[user@]host[:port]/path
    Add { name: String, url: String },
    /// List the named targets
    List,
    /// Remove a named target (the replica itself is left alone)
    Remove { name: String },
}

/// A local path given relative to the current directory becomes absolute.
pub fn absolute_url(url: &str) -> Result<String, Failure> {
    if url.contains("://") || url.starts_with('/') {
        return Ok(url.to_string());
    }
    let cwd =
        std::env::current_dir().map_err(|e| Failure::fatal(format!("current directory: {e}")))?;
    Ok(cwd.join(url).to_string_lossy().into_owned())
}

pub fn run(g: &Global, c: &Command) -> CmdResult {
    let store = cairn_repo::storage::LocalStore::open(&g.repo_path("target")?, 1 << 20)?;
    match c {
        Command::Add { name, url } => {
            let url = absolute_url(url)?;
            store.add_target(name, &url)?;
            output::info(g, &format!("added target {name} -> {url}"));
        }
        Command::List => list(g, &store)?,
        Command::Remove { name } => {
            store.remove_target(name)?;
            output::info(g, &format!("removed target {name}"));
        }
    }
    Ok(0)
}

fn list(g: &Global, store: &Store) -> Result<(), Failure> {
    let targets = store.targets()?;
    if g.json {
        let list: Vec<serde_json::Value> = targets
            .iter()
            .map(|(n, u)| {
                // A path is "local"; a URL is named by its scheme ("ssh", and whatever
                // `storage::Url` learns next).
                let kind = match TargetUrl::parse_target(u) {
                    Ok(TargetUrl::Local(_)) => "local",
                    Ok(_) => u.split_once("://").map_or("invalid", |(scheme, _)| scheme),
                    Err(_) => "invalid",
                };
                serde_json::json!({ "name": n, "url": u, "kind": kind })
            })
            .collect();
        output::json(&serde_json::json!({ "targets": list }));
        return Ok(());
    }
    for (n, u) in &targets {
        output::line(&format!("{n:<16}  {u}"));
    }
    if targets.is_empty() {
        output::info(g, "no targets; add one with `cairn target add NAME URL`");
    }
    Ok(())
}
