//! A small fixed thread pool for prefetching. Idle workers sleep on a condition variable;
//! (rayon's workers spin with `sched_yield` between jobs, which on a 2-core machine took a
//! quarter of the CPU time of a `tar` through the mount, with jobs arriving one per file).

use crate::cache::lock;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Queue {
    jobs: VecDeque<Job>,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

pub(crate) struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    /// `threads` workers named `name-i`; `None` if no thread could be started.
    pub(crate) fn new(threads: usize, name: &str) -> Option<Pool> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                stop: false,
            }),
            ready: Condvar::new(),
        });
        let mut started = 0;
        for i in 0..threads {
            let s = shared.clone();
            let ok = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || work(&s))
                .is_ok();
            started += ok as usize;
        }
        (started > 0).then_some(Pool { shared })
    }

    pub(crate) fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        lock(&self.shared.queue).jobs.push_back(Box::new(job));
        self.shared.ready.notify_one();
    }
}

impl Drop for Pool {
    /// Workers finish the queued jobs and exit (not joined: the last job may be what drops
    /// the pool, on a worker thread).
    fn drop(&mut self) {
        lock(&self.shared.queue).stop = true;
        self.shared.ready.notify_all();
    }
}

fn work(s: &Shared) {
    loop {
        let job = {
            let mut q = lock(&s.queue);
            loop {
                if let Some(j) = q.jobs.pop_front() {
                    break j;
                }
                if q.stop {
                    return;
                }
                q = s.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        // A panicking prefetch must not kill the worker; the reader that needs the chunk
        // loads it again and gets the error.
        let _ = catch_unwind(AssertUnwindSafe(job));
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn runs_every_job_and_survives_panics() {
        let pool = Pool::new(3, "t").expect("threads");
        let done = Arc::new(AtomicUsize::new(0));
        for i in 0..100 {
            let d = done.clone();
            pool.spawn(move || {
                if i % 10 == 0 {
                    panic!("job {i}");
                }
                d.fetch_add(1, Ordering::SeqCst);
            });
        }
        let t = std::time::Instant::now();
        while done.load(Ordering::SeqCst) < 90 && t.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(done.load(Ordering::SeqCst), 90);
    }
}
