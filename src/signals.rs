//! Stop signals (SIGINT, SIGTERM, SIGHUP) for the long-running commands: blocked in every
//! thread, then taken by one thread with `sigwait`, which decides what a stop means (the mount
//! unmounts; a backup commits what it wrote and exits 130).

fn set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a plain sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block the stop signals in this thread and every thread started after it, so only the
/// signal thread (via `sigwait`) receives them.
pub fn block() {
    let set = set();
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

pub fn wait() -> i32 {
    let set = set();
    let mut sig = 0;
    // SAFETY: `set` is initialised and `sig` is a valid out pointer.
    unsafe { libc::sigwait(&set, &mut sig) };
    sig
}
