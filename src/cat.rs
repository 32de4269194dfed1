use crate::{output, CmdResult, Failure, Global};
use cairn_repo::format::FileType;
use cairn_repo::reader::{load_chunk, ExtentMap};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Snapshot id prefix or `latest`
    snapshot: String,
    /// Absolute path of a file inside the snapshot (any bytes, as stored)
    path: PathBuf,
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    let repo = g.open()?;
    crate::require(repo.storage(), &[cairn_repo::storage::Right::Restore])?;
    let snap = repo.find_snapshot(&a.snapshot)?;
    let view = repo.reader()?;
    let path = a.path.as_os_str().as_bytes();
    let shown = String::from_utf8_lossy(path);
    let entry = repo
        .lookup(&view, &snap.snapshot.root, path)?
        .ok_or_else(|| {
            Failure::fatal(format!(
                "{shown}: no such path in snapshot {}; find it with `cairn ls {}`",
                snap.id.short(),
                a.snapshot
            ))
        })?;
    if entry.kind != FileType::File {
        return Err(Failure::fatal(format!(
            "{shown}: not a regular file; `cairn cat` prints files only (see `cairn ls -l`)"
        )));
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
