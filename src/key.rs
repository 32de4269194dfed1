use crate::{output, secrets, CmdResult, Global};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Add another password that opens the repository
    Add {
        /// Read the new password from this file
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
    /// List key slots
    List,
    /// Remove a key slot by its number (not the last one)
    Remove { id: u64 },
    /// Change the password you opened the repository with
    Passwd {
        /// Read the new password from this file
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
}

pub fn run(g: &Global, c: &Command) -> CmdResult {
    let mut repo = g.open()?;
    match c {
        Command::Add { new_password_file } => {
            let p = secrets::new_password(new_password_file.as_deref())?;
            let id = repo.add_password(p.as_bytes(), None)?;
            output::info(g, &format!("added key slot {id}"));
        }
        Command::List => {
            let slots = repo.key_slots()?;
            if g.json {
                output::json(&serde_json::Value::Array(slots.iter().map(|(id, s)| serde_json::json!({
                    "id": id, "current": *id == repo.current_slot(), "created": s.created, "host": s.host, "user": s.user,
                })).collect()));
            } else {
                output::line(&format!(
                    "{:>4}  {:<7}  {:<19}  {}",
                    "id", "current", "created", "user@host"
                ));
                for (id, s) in &slots {
                    let cur = if *id == repo.current_slot() { "*" } else { "" };
                    let when = crate::snapshots::format_local(s.created, "%Y-%m-%d %H:%M:%S");
                    output::line(&format!(
                        "{:>4}  {:<7}  {:<19}  {}@{}",
                        id, cur, when, s.user, s.host
                    ));
                }
            }
        }
        Command::Remove { id } => {
            crate::require(repo.storage(), &[cairn_repo::storage::Right::Prune])?;
            if *id == repo.current_slot() {
                return Err(crate::Failure::fatal("refusing to remove the key slot you opened the repository with; use `cairn key passwd` to change it"));
            }
            repo.remove_key_slot(*id)?;
            output::info(g, &format!("removed key slot {id}"));
        }
        Command::Passwd { new_password_file } => {
            // It adds a slot, then removes the old one: both, or neither.
            crate::require(repo.storage(), &[cairn_repo::storage::Right::Prune])?;
            let p = secrets::new_password(new_password_file.as_deref())?;
            let id = repo.change_password(p.as_bytes(), None)?;
            output::info(g, &format!("password changed (now key slot {id})"));
        }
    }
    Ok(0)
}
