use crate::{output, CmdResult, Failure, Global};
use cairn_repo::format::{Entry, FileType};
use cairn_repo::{store::View, Repository};

#[derive(clap::Args)]
pub struct Args {
    /// Snapshot id prefix or `latest`
    snapshot: String,
    /// Absolute path inside the snapshot (default: everything)
    path: Option<String>,
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

fn entry_json(path: &str, e: &Entry) -> serde_json::Value {
    serde_json::json!({
        "path": path, "type": format!("{:?}", e.kind).to_lowercase(), "mode": e.mode,
        "uid": e.uid, "gid": e.gid, "user": e.user, "group": e.group, "size": e.size,
        "mtime": e.mtime.sec, "mtime_nsec": e.mtime.nsec,
        "target": (e.kind == FileType::Symlink).then(|| String::from_utf8_lossy(&e.target).into_owned()),
    })
}

struct Lister<'a> {
    repo: &'a Repository,
    view: View,
    long: bool,
    json: bool,
    recursive: bool,
    items: Vec<serde_json::Value>,
}

impl Lister<'_> {
    fn print(&mut self, path: &str, e: &Entry) {
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
                path
            );
            if e.kind == FileType::Symlink {
                l.push_str(&format!(" -> {}", String::from_utf8_lossy(&e.target)));
            }
            output::line(&l);
        } else {
            output::line(path);
        }
    }

    fn walk(&mut self, path: &str, e: &Entry, depth: usize) -> Result<(), Failure> {
        if depth > 0 {
            self.print(path, e);
        }
        if e.kind != FileType::Dir || (depth > 0 && !self.recursive) {
            return Ok(());
        }
        let Some(sub) = e.subtree else { return Ok(()) };
        let tree = self.repo.load_tree(&self.view, &sub)?;
        for child in &tree.entries {
            let p = format!(
                "{}/{}",
                path.trim_end_matches('/'),
                String::from_utf8_lossy(&child.name)
            );
            self.walk(&p, child, depth + 1)?;
        }
        Ok(())
    }
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    let repo = g.open()?;
    let snap = repo.find_snapshot(&a.snapshot)?;
    let view = repo.view()?;
    let path = a.path.clone().unwrap_or_else(|| "/".into());
    let entry = repo
        .lookup(&view, &snap.snapshot.root, path.as_bytes())?
        .ok_or_else(|| {
            Failure::fatal(format!(
                "{path}: no such path in snapshot {}",
                snap.id.short()
            ))
        })?;
    let mut l = Lister {
        repo: &repo,
        view,
        long: a.long,
        json: g.json,
        recursive: !a.no_recursive,
        items: Vec::new(),
    };
    if entry.kind != FileType::Dir {
        l.print(&path, &entry);
    } else {
        l.walk(&path, &entry, 0)?;
    }
    if g.json {
        output::json(&serde_json::Value::Array(l.items));
    }
    Ok(0)
}
