use crate::{output, secrets, CmdResult, Global};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(g: &Global, _a: &Args) -> CmdResult {
    let path = g.repo_path()?;
    let password = secrets::init_password(g)?;
    let repo = cairn_repo::Repository::init(
        &path,
        password.as_bytes(),
        &cairn_repo::OpenOptions::default(),
    )?;
    if g.json {
        output::json(&serde_json::json!({
            "repository": path,
            "id": hex::encode(repo.config().repo_id),
        }));
    } else {
        output::info(
            g,
            &format!(
                "created Cairn repository {} at {}",
                hex::encode(&repo.config().repo_id[..4]),
                path.display()
            ),
        );
        output::info(
            g,
            "keep the password safe: without it the data cannot be read back",
        );
    }
    Ok(0)
}
