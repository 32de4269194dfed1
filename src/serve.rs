//! `cairn serve`: the far side of an ssh sync target and of a repository used over ssh (the
//! remote store). Speaks the protocol on stdin and stdout (nothing else may be printed there)
//! and needs no password; the client's first message says which of the two it is.

use crate::{CmdResult, Failure, Global};
use cairn_repo::storage::Rights;
use cairn_repo::sync::serve::Policy;

#[derive(clap::Args)]
#[command(
    after_help = "Run it as the forced command of a customer's ssh key in authorized_keys, \
e.g.\n  command=\"cairn serve --repo /srv/cairn/acme --allow backup,restore --quota 500G\",restrict \
ssh-ed25519 AAAA… acme\nThe client's own path in ssh://host/path is never used: the key reaches \
only the repository of its --repo. A refused request tells the client which right is missing."
)]
pub struct Args {
    /// What the client may do, a comma list: backup (add objects and snapshots, list them,
    /// read snapshots and trees: what a backup and a sync to here need; no file contents),
    /// restore (list and read everything: restore, mount, check --read-data, sync from here;
    /// alone it writes nothing), forget (remove
    /// snapshots), prune (collect garbage, remove key slots, change records), or full (all;
    /// the default)
    #[arg(long, value_name = "RIGHTS", value_parser = parse_rights, conflicts_with = "append_only")]
    allow: Option<Rights>,
    /// Refuse every deletion (for offsite copies a compromised client must not destroy):
    /// the same as --allow backup,restore
    #[arg(long)]
    append_only: bool,
    /// Refuse to store more once the repository occupies this much (500G, 1.5T, 800M, or
    /// bytes; powers of 1024). Noted in the repository for `cairn status`
    #[arg(long, value_name = "SIZE", value_parser = parse_quota)]
    quota: Option<u64>,
    /// Also append every refusal and error answered to a client to this file (with the time)
    #[arg(long)]
    log_file: Option<std::path::PathBuf>,
}

fn parse_rights(s: &str) -> Result<Rights, String> {
    Rights::parse(s)
}

/// The smallest and largest quota taken: below 1 MiB an empty repository is full; above
/// 1 EiB it is a typo.
const MIN_QUOTA: u64 = 1 << 20;
const MAX_QUOTA: u64 = 1 << 60;

/// `--quota`: a number of bytes, or with a suffix K, M, G, T, P (powers of 1024; `KiB`, `GB`
/// and the like are read the same), fractions allowed (`1.5T`).
fn parse_quota(s: &str) -> Result<u64, String> {
    let hint = "give a size like 500G, 1.5T, 800M or a number of bytes";
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) => match "KMGTP".find(c.to_ascii_uppercase()) {
            Some(n) => (&t[..i], 10 * (n as u32 + 1)),
            None => (t, 0),
        },
        None => (t, 0),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size; {hint}"))?;
    let bytes = n * (1u64 << shift) as f64;
    if !(bytes >= MIN_QUOTA as f64 && bytes <= MAX_QUOTA as f64) {
        return Err(format!(
            "a quota of `{s}` is outside 1 MiB to 1 EiB; {hint}"
        ));
    }
    Ok(bytes as u64)
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    let dir = g.repo_path("serve")?;
    let policy = Policy {
        rights: a
            .allow
            .unwrap_or_else(|| Rights::append_only_if(a.append_only)),
        quota: a.quota,
    };
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
    cairn_repo::sync::serve::serve(&dir, &policy, &mut r, &mut w, &mut log)
        .map_err(|e| Failure::fatal(format!("serve {}: {e}", dir.display())))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_quota;

    #[test]
    fn quotas_read_as_an_administrator_writes_them() {
        assert_eq!(parse_quota("500G"), Ok(500 << 30));
        assert_eq!(parse_quota("1.5T"), Ok(3 << 39));
        assert_eq!(parse_quota("800M"), Ok(800 << 20));
        assert_eq!(parse_quota("800MiB"), Ok(800 << 20));
        assert_eq!(parse_quota("2g"), Ok(2 << 30));
        assert_eq!(parse_quota("1048576"), Ok(1 << 20));
        for absurd in [
            "0", "-5G", "12Q", "", "G", "NaNG", "inf", "2000P", "100K", "1e30",
        ] {
            assert!(parse_quota(absurd).is_err(), "{absurd}");
        }
    }
}
