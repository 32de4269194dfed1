use crate::{output, CmdResult, Global};

#[derive(clap::Args)]
pub struct Args {
    /// Older snapshot (id prefix or `latest`)
    first: String,
    /// Newer snapshot (id prefix or `latest`)
    second: String,
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    let repo = g.open()?;
    let s1 = repo.find_snapshot(&a.first)?;
    let s2 = repo.find_snapshot(&a.second)?;
    let lines = cairn_repo::diff::diff(&repo, &s1.snapshot.root, &s2.snapshot.root)?;
    if g.json {
        output::json(&serde_json::Value::Array(
            lines
                .iter()
                .map(|l| serde_json::json!({"change": l.change.symbol().to_string(), "path": String::from_utf8_lossy(&l.path), "type": format!("{:?}", l.kind).to_lowercase()}))
                .collect(),
        ));
        return Ok(0);
    }
    for l in &lines {
        let slash = if l.kind == cairn_repo::FileType::Dir {
            "/"
        } else {
            ""
        };
        output::line(&format!(
            "{}    {}{}",
            l.change.symbol(),
            String::from_utf8_lossy(&l.path),
            slash
        ));
    }
    output::info(
        g,
        &format!(
            "{} changes between {} and {}",
            lines.len(),
            s1.id.short(),
            s2.id.short()
        ),
    );
    Ok(0)
}
