//! `cairn mount`: serve the repository's snapshots as a read-only filesystem in the
//! foreground until it is unmounted or the process gets SIGINT, SIGTERM or SIGHUP; on a signal
//! the mount is unmounted (detached if busy), so the mountpoint is always left clean.

use crate::{output, CmdResult, Failure, Global};
use cairn_fs::fuse::{self, MountOptions};
use cairn_fs::{FsCore, FsError, FsOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long after a signal the process waits for open files to close before it exits.
const GRACE: Duration = Duration::from_secs(3);
/// redb's page cache for the mount.
const DB_CACHE: usize = 16 << 20;

#[derive(clap::Args)]
pub struct Args {
    /// Existing empty directory to mount on
    mountpoint: PathBuf,
    /// Memory for decoded file chunks, in MiB; a quarter of it again holds decoded directories
    /// (at least 8 MiB), and another quarter the inodes kept for the kernel (beyond that, it
    /// is asked to drop the least recently used)
    #[arg(long, value_name = "MiB", default_value_t = 128, value_parser = parse_cache_mib)]
    cache_size: usize,
    /// Threads serving requests [default: number of CPUs, at least 2, at most 8]
    #[arg(long, value_name = "N", value_parser = crate::parse_threads)]
    threads: Option<usize>,
    /// Let other users see the mount (the stored permissions still apply); non-root users
    /// need `user_allow_other` in /etc/fuse.conf
    #[arg(long)]
    allow_other: bool,
    /// Seconds between re-reads of the snapshot list
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    refresh: u64,
}

/// This machine's memory in MiB (a bound for `--cache-size`).
fn memory_mib() -> u64 {
    // SAFETY: sysconf only reads system parameters.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page <= 0 {
        return 1 << 20;
    }
    (pages as u64).saturating_mul(page as u64) >> 20
}

/// Value parser for `--cache-size`: 1 MiB up to this machine's memory.
fn parse_cache_mib(s: &str) -> Result<usize, String> {
    let max = memory_mib().max(1);
    let hint = format!("give a size in MiB from 1 to {max} (this machine's memory)");
    match s.trim().parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n as usize),
        Ok(0) => Err(format!("a cache of 0 MiB cannot hold a chunk; {hint}")),
        Ok(_) => Err(format!("more than this machine's memory; {hint}")),
        Err(_) => Err(format!("not a whole number of MiB; {hint}")),
    }
}

pub fn run(g: &Global, a: &Args) -> CmdResult {
    // First, before any thread exists: every thread inherits the blocked set.
    crate::signals::block();
    single_malloc_arena();
    check_mountpoint(&a.mountpoint)?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let threads = a.threads.unwrap_or(cpus.clamp(2, 8));
    let repo = open_repo(g)?;
    // Every file read would fail on a server that does not let this key read contents.
    crate::require(repo.storage(), &[cairn_repo::storage::Right::Restore])?;
    let repo = Arc::new(repo);
    let core = FsCore::new(repo, fs_options(a, cpus)).map_err(fs_failure)?;
    let opts = MountOptions {
        threads,
        allow_other: a.allow_other,
        fsname: "cairn".into(),
    };
    let mut mounted = fuse::mount(core, &a.mountpoint, &opts)
        .map_err(|e| Failure::fatal(format!("cannot mount on {}: {e}", a.mountpoint.display())))?;
    let unmounter = mounted.unmounter();
    let path = a.mountpoint.clone();
    std::thread::spawn(move || on_signal(unmounter, &path));
    output::info(
        g,
        &format!(
            "serving snapshots at {}; stop with `fusermount3 -u {0}` or Ctrl-C",
            a.mountpoint.display()
        ),
    );
    mounted.run().map_err(|e| {
        Failure::fatal(format!(
            "mount at {} ended with an error: {e}",
            a.mountpoint.display()
        ))
    })?;
    Ok(0)
}

/// Pack pieces (about 1 MiB each) of raw repository bytes kept for neighbouring small files:
/// one piece read serves many of them.
const PIECE_CACHE_PIECES: usize = 16;

/// With a small database cache: file data passes through it once, the decoded-chunk cache is
/// what serves repeated reads.
fn open_repo(g: &Global) -> Result<cairn_repo::Repository, Failure> {
    g.open_tuned(&cairn_repo::OpenOptions {
        db_cache_bytes: DB_CACHE,
        piece_cache_pieces: PIECE_CACHE_PIECES,
        ..g.open_options()
    })
}

/// One malloc arena for the whole process: request and prefetch threads otherwise each keep
/// freed chunk buffers (about 1 MiB each) in their own arena, which added about 60 MB of
/// resident memory in measurements, with no measurable change in read speed.
fn single_malloc_arena() {
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn fs_options(a: &Args, cpus: usize) -> FsOptions {
    FsOptions {
        chunk_cache_bytes: a.cache_size.saturating_mul(1 << 20),
        tree_cache_bytes: a.cache_size.saturating_mul(1 << 18).max(8 << 20),
        inode_bytes: a.cache_size.saturating_mul(1 << 18),
        refresh: Duration::from_secs(a.refresh.max(1)),
        prefetch_threads: (cpus * 2).clamp(4, 16),
        // SAFETY: getuid/getgid cannot fail.
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
        log: Some(Arc::new(|m: &str| output::warn(&format!("mount: {m}")))),
        ..FsOptions::default()
    }
}

fn fs_failure(e: FsError) -> Failure {
    Failure::fatal(
        e.detail
            .unwrap_or_else(|| std::io::Error::from_raw_os_error(e.errno).to_string()),
    )
}

fn check_mountpoint(p: &Path) -> Result<(), Failure> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Failure::usage(format!(
            "{} is not a directory",
            p.display()
        ))),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(Failure::fatal(format!(
            "{}: a dead FUSE mount is still there; clear it with `fusermount3 -u {0}`",
            p.display()
        ))),
        Err(e) => Err(Failure::usage(format!("mountpoint {}: {e}", p.display()))),
    }
}

fn on_signal(mut unmounter: fuse::Unmounter, path: &Path) {
    crate::signals::wait();
    if let Err(e) = unmounter.unmount() {
        output::warn(&format!("unmounting {}: {e}", path.display()));
    }
    // The serving loop ends when the kernel lets go; if open files keep a detached mount
    // alive, stop anyway after a grace period (the mountpoint is already free).
    std::thread::sleep(GRACE);
    std::process::exit(0);
}
