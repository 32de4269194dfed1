//! Bounded caches: a weighted LRU, and a loader on top of it that lets concurrent readers of
//! the same key share one load ("single flight") instead of decoding a chunk twice.

use crate::error::{FsError, FsResult};
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Lock a mutex, taking the data even if another thread panicked while holding it (the caches
/// hold no invariants a panic could break halfway).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A least-recently-used map bounded by the sum of its values' weights.
pub struct Lru<K, V> {
    map: HashMap<K, (V, u64, usize)>,
    order: BTreeMap<u64, K>,
    tick: u64,
    used: usize,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    pub fn new(capacity: usize) -> Self {
        Lru {
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            used: 0,
            capacity,
        }
    }

    pub fn get(&mut self, key: &K) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        let (value, t, _) = self.map.get_mut(key)?;
        self.order.remove(t);
        *t = tick;
        self.order.insert(tick, key.clone());
        Some(value.clone())
    }

    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// Insert, then evict the least recently used entries until the weights fit (an entry
    /// heavier than the whole capacity is not kept).
    pub fn insert(&mut self, key: K, value: V, weight: usize) {
        self.remove(&key);
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        self.map.insert(key, (value, self.tick, weight));
        self.used += weight;
        while self.used > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, _, w)) = self.map.remove(&oldest) {
                self.used -= w;
            }
        }
    }

    pub fn remove(&mut self, key: &K) {
        if let Some((_, t, w)) = self.map.remove(key) {
            self.order.remove(&t);
            self.used -= w;
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn used(&self) -> usize {
        self.used
    }
}

type Outcome<V> = Option<FsResult<Arc<V>>>;

struct Flight<V> {
    done: Mutex<Outcome<V>>,
    cv: Condvar,
}

impl<V> Flight<V> {
    /// A load in flight, landed by its leader.
    fn new() -> Arc<Flight<V>> {
        Arc::new(Flight {
            done: Mutex::new(None),
            cv: Condvar::new(),
        })
    }
}

/// An LRU of decoded objects whose loads are shared between concurrent callers.
pub struct Loader<K, V> {
    lru: Mutex<Lru<K, Arc<V>>>,
    inflight: Mutex<HashMap<K, Arc<Flight<V>>>>,
}

impl<K: Hash + Eq + Clone, V> Loader<K, V> {
    pub fn new(capacity: usize) -> Self {
        Loader {
            lru: Mutex::new(Lru::new(capacity)),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// True if the key is cached or being loaded right now.
    pub fn present(&self, key: &K) -> bool {
        lock(&self.lru).contains(key) || lock(&self.inflight).contains_key(key)
    }

    pub fn cached(&self, key: &K) -> Option<Arc<V>> {
        lock(&self.lru).get(key)
    }

    pub fn used(&self) -> usize {
        lock(&self.lru).used()
    }

    pub fn get_or_load(
        &self,
        key: &K,
        weight: impl Fn(&V) -> usize,
        load: impl FnOnce() -> FsResult<V>,
    ) -> FsResult<Arc<V>> {
        if let Some(v) = self.cached(key) {
            return Ok(v);
        }
        let (flight, leader) = {
            let mut inflight = lock(&self.inflight);
            match inflight.get(key) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Flight::new();
                    inflight.insert(key.clone(), f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            return wait(&flight);
        }
        let guard = Landing {
            loader: self,
            key,
            flight: &flight,
            landed: false,
        };
        let result = load().map(Arc::new);
        if let Ok(v) = &result {
            lock(&self.lru).insert(key.clone(), v.clone(), weight(v));
        }
        guard.land(result.clone());
        result
    }
}

impl<K: Hash + Eq + Clone, V> Loader<K, V> {
    /// Load the keys neither cached nor loading, all in one call of `load` (one request to a
    /// remote store instead of one per key). `load` reports each key's result through its
    /// callback; a key it does not report fails with EIO. Concurrent `get_or_load` callers of
    /// these keys wait for this batch instead of loading them again.
    pub fn load_many(
        &self,
        keys: &[K],
        weight: impl Fn(&V) -> usize,
        load: impl FnOnce(&[K], &mut dyn FnMut(&K, FsResult<V>)),
    ) {
        let mut claimed: Vec<(K, Arc<Flight<V>>)> = Vec::new();
        {
            let lru = lock(&self.lru);
            let mut inflight = lock(&self.inflight);
            for k in keys {
                if lru.contains(k) || inflight.contains_key(k) {
                    continue;
                }
                let f = Flight::new();
                inflight.insert(k.clone(), f.clone());
                claimed.push((k.clone(), f));
            }
        }
        if claimed.is_empty() {
            return;
        }
        let mut guards: HashMap<K, Landing<'_, K, V>> = claimed
            .iter()
            .map(|(k, flight)| {
                let landing = Landing {
                    loader: self,
                    key: k,
                    flight,
                    landed: false,
                };
                (k.clone(), landing)
            })
            .collect();
        let wanted: Vec<K> = claimed.iter().map(|(k, _)| k.clone()).collect();
        load(&wanted, &mut |k, result| {
            let Some(guard) = guards.remove(k) else {
                return;
            };
            let result = result.map(Arc::new);
            if let Ok(v) = &result {
                lock(&self.lru).insert(k.clone(), v.clone(), weight(v));
            }
            guard.land(result);
        });
        for (_, mut guard) in guards.drain() {
            guard.finish(Err(FsError::eio(
                "the batch read did not return this object",
            )));
        }
    }
}

/// Completes a flight exactly once: with the load's result, or with EIO if the load unwound,
/// so waiters never hang on a leader that panicked.
struct Landing<'a, K: Hash + Eq + Clone, V> {
    loader: &'a Loader<K, V>,
    key: &'a K,
    flight: &'a Arc<Flight<V>>,
    landed: bool,
}

impl<K: Hash + Eq + Clone, V> Landing<'_, K, V> {
    fn land(mut self, result: FsResult<Arc<V>>) {
        self.finish(result);
    }

    fn finish(&mut self, result: FsResult<Arc<V>>) {
        self.landed = true;
        *lock(&self.flight.done) = Some(result);
        self.flight.cv.notify_all();
        lock(&self.loader.inflight).remove(self.key);
    }
}

impl<K: Hash + Eq + Clone, V> Drop for Landing<'_, K, V> {
    fn drop(&mut self) {
        if !self.landed {
            self.finish(Err(FsError::eio(
                "a load failed unexpectedly (panic); see the log",
            )));
        }
    }
}

fn wait<V>(flight: &Flight<V>) -> FsResult<Arc<V>> {
    let mut done = lock(&flight.done);
    loop {
        if let Some(r) = done.as_ref() {
            return r.as_ref().map(Arc::clone).map_err(FsError::quiet);
        }
        done = flight.cv.wait(done).unwrap_or_else(|e| e.into_inner());
    }
}

/// A failed load seen by a waiter: same errno, no second log line.
impl FsError {
    pub(crate) fn quiet(&self) -> FsError {
        FsError::new(self.errno)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_least_recently_used_by_weight() {
        let mut l = Lru::new(10);
        l.insert(1, "a", 4);
        l.insert(2, "b", 4);
        assert_eq!(l.get(&1), Some("a"));
        l.insert(3, "c", 4);
        assert_eq!(l.get(&2), None, "2 was least recently used");
        assert_eq!(l.get(&1), Some("a"));
        assert_eq!(l.used(), 8);
        l.insert(4, "huge", 11);
        assert!(l.used() <= 10);
    }

    #[test]
    fn loader_shares_loads_and_caches() {
        let loader: Loader<u32, Vec<u8>> = Loader::new(100);
        let calls = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let v = loader
                        .get_or_load(
                            &7,
                            |v| v.len(),
                            || {
                                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                std::thread::sleep(std::time::Duration::from_millis(50));
                                Ok(vec![1, 2, 3])
                            },
                        )
                        .unwrap();
                    assert_eq!(*v, vec![1, 2, 3]);
                });
            }
        });
        assert!(calls.load(std::sync::atomic::Ordering::SeqCst) <= 2);
        assert!(loader.present(&7));
    }

    #[test]
    fn a_panicking_load_fails_waiters_instead_of_hanging_them() {
        let loader: Loader<u32, Vec<u8>> = Loader::new(100);
        std::thread::scope(|s| {
            let l = &loader;
            let leader = s.spawn(move || {
                let _ = l.get_or_load(
                    &5,
                    |v| v.len(),
                    || {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        panic!("boom")
                    },
                );
            });
            std::thread::sleep(std::time::Duration::from_millis(20));
            let waiter = l.get_or_load(&5, |v| v.len(), || Ok(vec![1]));
            assert!(waiter.is_err() || waiter.unwrap().len() == 1);
            assert!(leader.join().is_err());
        });
        assert!(!loader.present(&5) || loader.cached(&5).is_some());
    }

    #[test]
    fn load_many_loads_each_missing_key_once_and_fails_the_unreported() {
        let loader: Loader<u32, Vec<u8>> = Loader::new(100);
        loader.get_or_load(&1, |v| v.len(), || Ok(vec![1])).unwrap();
        let mut asked = Vec::new();
        loader.load_many(
            &[1, 2, 3, 2],
            |v| v.len(),
            |keys, each| {
                asked = keys.to_vec();
                each(&2, Ok(vec![2, 2]));
                each(&9, Ok(vec![9]));
            },
        );
        assert_eq!(asked, vec![2, 3], "1 was cached, 2 asked once");
        assert_eq!(*loader.cached(&2).unwrap(), vec![2, 2]);
        assert!(
            !loader.present(&3),
            "unreported: failed, not cached, not loading"
        );
        assert!(!loader.present(&9), "a key nobody asked for is not cached");
        let calls = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                loader.load_many(
                    &[5],
                    |v| v.len(),
                    |_, each| {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        each(&5, Ok(vec![5]));
                    },
                );
            });
            std::thread::sleep(std::time::Duration::from_millis(20));
            let v = loader
                .get_or_load(
                    &5,
                    |v| v.len(),
                    || {
                        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Ok(vec![0])
                    },
                )
                .unwrap();
            assert_eq!(*v, vec![5], "a reader waits for the batch");
        });
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn loader_does_not_cache_errors() {
        let loader: Loader<u32, Vec<u8>> = Loader::new(100);
        assert!(loader
            .get_or_load(&1, |v| v.len(), || Err(FsError::eio("bad")))
            .is_err());
        assert!(!loader.present(&1));
        assert!(loader.get_or_load(&1, |v| v.len(), || Ok(vec![1])).is_ok());
    }
}
