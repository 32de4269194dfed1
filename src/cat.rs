use crate::{output, CmdResult, Failure, Global};
use cairn_repo::format::FileType;
use cairn_repo::reader::{load_chunk, ExtentMap};

#[derive(clap::Args)]
pub struct Args {
    /// Snapshot id prefix or `latest`
    snapshot: String,
    /// Absolute path of a file inside the snapshot
    path: String,
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    let repo = g.open()?;
    let snap = repo.find_snapshot(&a.snapshot)?;
    let view = repo.view()?;
    let entry = repo
        .lookup(&view, &snap.snapshot.root, a.path.as_bytes())?
        .ok_or_else(|| {
            Failure::fatal(format!(
                "{}: no such path in snapshot {}",
                a.path,
                snap.id.short()
            ))
        })?;
    if entry.kind != FileType::File {
        return Err(Failure::fatal(format!("{}: not a regular file", a.path)));
    }
    let map = ExtentMap::new(repo.extents(&view, &entry.content)?);
    let zeros = vec![0u8; 1 << 20];
    for x in map.extents() {
        let io = match x.id {
            Some(id) => output::raw(&load_chunk(&repo, &view, &id)?),
            None => {
                let mut left = x.len;
                let mut r = Ok(());
                while left > 0 && r.is_ok() {
                    let n = left.min(zeros.len() as u64) as usize;
                    r = output::raw(&zeros[..n]);
                    left -= n as u64;
                }
                r
            }
        };
        if let Err(e) = io {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(0);
            }
            return Err(Failure::fatal(format!("writing to stdout: {e}")));
        }
    }
    Ok(0)
}
