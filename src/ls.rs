use crate::{output, CmdResult, Failure, Global};
use cairn_repo::format::{Entry, FileType};
use cairn_repo::Repository;
use std::os::unix::ffi::OsStrExt;

#[derive(clap::Args)]
pub struct Args {
    /// Snapshot id prefix or `latest`
    snapshot: String,
    /// Absolute path inside the snapshot (default: everything); any bytes, as stored
    path: Option<std::path::PathBuf>,
    /// Long listing: mode, owner, size, mtime
    #[arg(long, short = 'l')]
    long: bool,
    /// List only the directory itself and its direct children
    #[arg(long)]
    no_recursive: bool,
}

fn type_char(k: FileType) -> char {
    match k {
        FileType::File => '-',
        FileType::Dir => 'd',
        FileType::Symlink => 'l',
        FileType::Fifo => 'p',
        FileType::Socket => 's',
        FileType::CharDev => 'c',
        FileType::BlockDev => 'b',
    }
}

pub fn mode_string(e: &Entry) -> String {
    let m = e.mode;
    let mut s = String::new();
    s.push(type_char(e.kind));
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o40, 'r'),
        (0o20, 'w'),
        (0o10, 'x'),
        (0o4, 'r'),
        (0o2, 'w'),
        (0o1, 'x'),
    ];
    for (i, (bit, c)) in bits.iter().enumerate() {
        let special = match i {
            2 => m & 0o4000 != 0,
            5 => m & 0o2000 != 0,
            8 => m & 0o1000 != 0,
            _ => false,
        };
        let set = m & bit != 0;
        let ch = match (special, set, i) {
            (true, true, 8) => 't',
            (true, false, 8) => 'T',
            (true, true, _) => 's',
            (true, false, _) => 'S',
            (false, true, _) => *c,
            _ => '-',
        };
        s.push(ch);
    }
    s
}

/// One entry of `ls --json`. `path` and `target` are text (bytes that are not UTF-8 become
/// U+FFFD); when they are not valid UTF-8, `path_hex` / `target_hex` hold the exact bytes.
fn entry_json(path: &[u8], e: &Entry) -> serde_json::Value {
    let mut v = serde_json::json!({
        "path": String::from_utf8_lossy(path), "type": format!("{:?}", e.kind).to_lowercase(), "mode": e.mode,
        "uid": e.uid, "gid": e.gid, "user": e.user, "group": e.group, "size": e.size,
        "mtime": e.mtime.sec, "mtime_nsec": e.mtime.nsec,
        "target": (e.kind == FileType::Symlink).then(|| String::from_utf8_lossy(&e.target).into_owned()),
    });
    if std::str::from_utf8(path).is_err() {
        v["path_hex"] = hex::encode(path).into();
    }
    if e.kind == FileType::Symlink && std::str::from_utf8(&e.target).is_err() {
        v["target_hex"] = hex::encode(&e.target).into();
    }
    v
}

struct Lister<'a> {
    repo: &'a Repository,
    view: Box<dyn cairn_repo::storage::Reader>,
    long: bool,
    json: bool,
    recursive: bool,
    /// Stdout is a terminal: names with control characters are quoted.
    terminal: bool,
    items: Vec<serde_json::Value>,
    /// Directories that could not be read (damaged), reported and passed over.
    damaged: u64,
}

impl Lister<'_> {
    fn print(&mut self, path: &[u8], e: &Entry) {
        let shown = output::path_for_humans(path, self.terminal);
        if self.json {
            self.items.push(entry_json(path, e));
        } else if self.long {
            let owner = if e.user.is_empty() {
                e.uid.to_string()
            } else {
                e.user.clone()
            };
            let group = if e.group.is_empty() {
                e.gid.to_string()
            } else {
                e.group.clone()
            };
            let when = crate::snapshots::format_local(e.mtime.sec, "%Y-%m-%d %H:%M:%S");
            let mut l = format!(
                "{} {:>8} {:>8} {:>12} {} {}",
                mode_string(e),
                owner,
                group,
                e.size,
                when,
                shown
            );
            if e.kind == FileType::Symlink {
                l.push_str(&format!(
                    " -> {}",
                    output::path_for_humans(&e.target, self.terminal)
                ));
            }
            output::line(&l);
        } else {
            output::line(&shown);
        }
    }

    fn walk(&mut self, path: &[u8], e: &Entry, depth: usize) -> Result<(), Failure> {
        if depth > 0 {
            self.print(path, e);
        }
        if e.kind != FileType::Dir || (depth > 0 && !self.recursive) {
            return Ok(());
        }
        let Some(sub) = e.subtree else { return Ok(()) };
        // A damaged directory is reported and passed over; the rest is still listed (exit 3).
        let tree = match self.repo.load_tree(&self.view, &sub) {
            Ok(t) => t,
            Err(err) if err.is_damage() => {
                output::warn(&format!(
                    "{}: cannot list: {err}",
                    output::path_for_humans(path, self.terminal)
                ));
                self.damaged += 1;
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        };
        let base = path.strip_suffix(b"/").unwrap_or(path);
        for child in &tree.entries {
            let mut p = Vec::with_capacity(base.len() + 1 + child.name.len());
            p.extend_from_slice(base);
            p.push(b'/');
            p.extend_from_slice(&child.name);
            self.walk(&p, child, depth + 1)?;
        }
        Ok(())
    }
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    let repo = g.open()?;
    let snap = repo.find_snapshot(&a.snapshot)?;
    let view = repo.reader()?;
    let path: Vec<u8> = match &a.path {
        Some(p) => p.as_os_str().as_bytes().to_vec(),
        None => b"/".to_vec(),
    };
    let entry = repo
        .lookup(&view, &snap.snapshot.root, &path)?
        .ok_or_else(|| {
            Failure::fatal(format!(
                "{}: no such path in snapshot {}; list it with `cairn ls {}`",
                String::from_utf8_lossy(&path),
                snap.id.short(),
                a.snapshot
            ))
        })?;
    let mut l = Lister {
        repo: &repo,
        view,
        long: a.long,
        json: g.json,
        recursive: !a.no_recursive,
        terminal: !g.json && output::stdout_is_terminal(),
        items: Vec::new(),
        damaged: 0,
    };
    if entry.kind != FileType::Dir {
        l.print(&path, &entry);
    } else {
        l.walk(&path, &entry, 0)?;
    }
    if g.json {
        output::json(&serde_json::Value::Array(l.items));
    }
    Ok(if l.damaged > 0 {
        crate::EXIT_INCOMPLETE
    } else {
        0
    })
}
