use crate::{output, secrets, CmdResult, Global};

#[derive(clap::Args)]
pub struct Args {}

pub fn run(g: &Global, _a: &Args) -> CmdResult {
    let url = g.repo_url()?;
    let password = secrets::init_password(g)?;
    let repo = cairn_repo::Repository::init_at(&url, password.as_bytes(), &g.open_options())?;
    let path = url.to_string();
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
                path
            ),
        );
        output::info(
            g,
            "keep the password safe: without it the data cannot be read back",
        );
    }
    Ok(0)
}
