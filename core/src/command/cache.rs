//! The aggregate cache of a [`CommandHandler`](super::CommandHandler): the
//! last known state and version per stream, bounded, least recently used
//! first out.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::event::StreamId;

/// Bounds of the aggregate cache of a
/// [`CommandHandler`](super::CommandHandler); see
/// [`CommandHandlerOptions::cache`](super::CommandHandlerOptions::cache).
///
/// The cache holds, per stream, the last state and version the handler
/// knew. When either bound would be passed, the least recently used
/// streams are dropped first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheOptions {
    /// At most this many streams are cached (default 10,000).
    pub max_entries: usize,
    /// At most this many bytes, approximately, are cached (default 64 MiB).
    ///
    /// An entry weighs the length of its state's JSON encoding (what a
    /// snapshot of it would store) plus the length of its stream id,
    /// measured when the stream is first cached and again every
    /// 16th time its entry is stored; in between, the entry keeps the
    /// weight last measured. That is not the state's size in memory,
    /// which may be larger or smaller, but it grows with it. A state
    /// heavier than the whole bound, when weighed, is not cached.
    pub max_bytes: usize,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            max_entries: 10_000,
            max_bytes: 64 << 20,
        }
    }
}

/// What the aggregate cache of a [`CommandHandler`](super::CommandHandler)
/// did since the handler was built; see
/// [`CommandHandler::cache_stats`](super::CommandHandler::cache_stats).
/// Counters only grow; `entries` and `bytes` are the current contents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Look-ups that found the stream cached.
    pub hits: u64,
    /// Look-ups that did not, and loaded the stream from the store.
    pub misses: u64,
    /// Times a cached state turned out to be behind the store (an append
    /// at its version conflicted, or a check before a refusal or a `load`
    /// found newer events) and was brought up to date by reading only the
    /// events after its version.
    pub stale_refreshes: u64,
    /// Streams dropped to stay within the bounds.
    pub evictions: u64,
    /// Streams cached now.
    pub entries: u64,
    /// Approximate bytes cached now (see [`CacheOptions::max_bytes`]).
    pub bytes: u64,
}

struct Entry<A> {
    state: Arc<A>,
    version: u64,
    bytes: usize,
    /// Times the entry was stored since it was last weighed.
    unweighed: u32,
    /// Its place in the use order: higher is more recent.
    tick: u64,
}

/// An entry is weighed again when it is stored this many times after it
/// was last weighed: serializing a state on every command cost a measurable
/// share of a command's time.
const WEIGH_EVERY: u32 = 16;

struct Lru<A> {
    entries: HashMap<StreamId, Entry<A>>,
    /// Streams by last use, least recent first.
    order: BTreeMap<u64, StreamId>,
    next_tick: u64,
    bytes: usize,
}

impl<A> Lru<A> {
    /// The entry of `stream`, marked as just used.
    fn touch(&mut self, stream: &StreamId) -> Option<&mut Entry<A>> {
        let entry = self.entries.get_mut(stream)?;
        if let Some(key) = self.order.remove(&entry.tick) {
            entry.tick = self.next_tick;
            self.order.insert(self.next_tick, key);
            self.next_tick += 1;
        }
        Some(entry)
    }

    fn remove(&mut self, stream: &StreamId) -> bool {
        match self.entries.remove(stream) {
            Some(entry) => {
                self.order.remove(&entry.tick);
                self.bytes -= entry.bytes;
                true
            }
            None => false,
        }
    }
}

/// The cache itself; clones share it.
pub(crate) struct AggregateCache<A> {
    options: CacheOptions,
    /// The aggregate type, the `aggregate` label of the cache's metrics.
    aggregate: &'static str,
    lru: Arc<Mutex<Lru<A>>>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    stale_refreshes: AtomicU64,
    evictions: AtomicU64,
}

impl<A> Clone for AggregateCache<A> {
    fn clone(&self) -> Self {
        AggregateCache {
            options: self.options,
            aggregate: self.aggregate,
            lru: Arc::clone(&self.lru),
            counters: Arc::clone(&self.counters),
        }
    }
}

impl<A> fmt::Debug for AggregateCache<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateCache")
            .field("options", &self.options)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<A> AggregateCache<A> {
    pub(crate) fn new(options: CacheOptions, aggregate: &'static str) -> Self {
        AggregateCache {
            options,
            aggregate,
            lru: Arc::new(Mutex::new(Lru {
                entries: HashMap::new(),
                order: BTreeMap::new(),
                next_tick: 0,
                bytes: 0,
            })),
            counters: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lru<A>> {
        // Nothing panics while the lock is held (no user code runs under
        // it), and every mutation leaves the maps consistent.
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached state and version of `stream`, counted as a hit or a
    /// miss, and marked as just used.
    pub(crate) fn get(&self, stream: &StreamId) -> Option<(Arc<A>, u64)> {
        let found = self
            .lock()
            .touch(stream)
            .map(|e| (Arc::clone(&e.state), e.version));
        let (counter, name) = if found.is_some() {
            (&self.counters.hits, "strata_command_cache_hits_total")
        } else {
            (&self.counters.misses, "strata_command_cache_misses_total")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(name, "aggregate" => self.aggregate).increment(1);
        found
    }

    /// The cached state and version of `stream`, neither counted nor marked
    /// as used.
    pub(crate) fn peek(&self, stream: &StreamId) -> Option<(Arc<A>, u64)> {
        self.lock()
            .entries
            .get(stream)
            .map(|e| (Arc::clone(&e.state), e.version))
    }

    /// Cache `state` at `version` for `stream`, unless a later version is
    /// cached already (a state never moves back), then evict the least
    /// recently used streams until both bounds hold.
    pub(crate) fn put(&self, stream: &StreamId, state: Arc<A>, version: u64)
    where
        A: Serialize,
    {
        let mut guard = self.lock();
        let kept = match guard.entries.get(stream) {
            Some(entry) if entry.version > version => {
                guard.touch(stream);
                return;
            }
            Some(entry) if entry.unweighed + 1 < WEIGH_EVERY => Some((entry.bytes, entry.unweighed + 1)),
            _ => None,
        };
        let (bytes, unweighed) = match kept {
            Some(kept) => kept,
            None => {
                // Weighed without the lock: serializing may take a while.
                drop(guard);
                let Some(bytes) = weigh(&*state).map(|b| b.saturating_add(stream.as_str().len())) else {
                    self.remove(stream);
                    return;
                };
                guard = self.lock();
                if guard.entries.get(stream).is_some_and(|e| e.version > version) {
                    guard.touch(stream);
                    return;
                }
                (bytes, 0)
            }
        };
        let lru = &mut *guard;
        if bytes > self.options.max_bytes || self.options.max_entries == 0 {
            lru.remove(stream);
            return;
        }
        let before = (lru.entries.len(), lru.bytes);
        let tick = lru.next_tick;
        lru.next_tick += 1;
        let entry = Entry {
            state,
            version,
            bytes,
            unweighed,
            tick,
        };
        match lru.entries.get_mut(stream) {
            // A stream cached already keeps its key: it moves to the end of
            // the use order.
            Some(cached) => {
                let key = lru.order.remove(&cached.tick).unwrap_or_else(|| stream.clone());
                lru.order.insert(tick, key);
                lru.bytes = lru.bytes - cached.bytes + bytes;
                *cached = entry;
            }
            None => {
                lru.order.insert(tick, stream.clone());
                lru.entries.insert(stream.clone(), entry);
                lru.bytes += bytes;
            }
        }
        let mut evicted = 0;
        while lru.entries.len() > self.options.max_entries || lru.bytes > self.options.max_bytes {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            if let Some(entry) = lru.entries.remove(&oldest) {
                lru.bytes -= entry.bytes;
            }
            evicted += 1;
        }
        let after = (lru.entries.len(), lru.bytes);
        drop(guard);
        if evicted > 0 {
            self.counters.evictions.fetch_add(evicted, Ordering::Relaxed);
            metrics::counter!("strata_command_cache_evictions_total", "aggregate" => self.aggregate)
                .increment(evicted);
        }
        // Set when they change, not on every command.
        if after != before {
            let (entries, bytes) = after;
            metrics::gauge!("strata_command_cache_entries", "aggregate" => self.aggregate)
                .set(entries as f64);
            metrics::gauge!("strata_command_cache_bytes", "aggregate" => self.aggregate).set(bytes as f64);
        }
    }

    /// Forget `stream`.
    pub(crate) fn remove(&self, stream: &StreamId) {
        self.lock().remove(stream);
    }

    pub(crate) fn count_stale_refresh(&self) {
        self.counters.stale_refreshes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("strata_command_cache_stale_refreshes_total", "aggregate" => self.aggregate)
            .increment(1);
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let (entries, bytes) = {
            let lru = self.lock();
            (lru.entries.len() as u64, lru.bytes as u64)
        };
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            hits: read(&self.counters.hits),
            misses: read(&self.counters.misses),
            stale_refreshes: read(&self.counters.stale_refreshes),
            evictions: read(&self.counters.evictions),
            entries,
            bytes,
        }
    }
}

/// The length of `state`'s JSON encoding, without building it; `None` if it
/// does not serialize.
fn weigh<A: Serialize>(state: &A) -> Option<usize> {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, state).ok()?;
    Some(count.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(id: &str) -> StreamId {
        StreamId::new(id).expect("a valid stream id")
    }

    fn cache(max_entries: usize, max_bytes: usize) -> AggregateCache<String> {
        AggregateCache::new(
            CacheOptions {
                max_entries,
                max_bytes,
            },
            "test",
        )
    }

    #[test]
    fn an_entry_weighs_its_json_and_its_stream_id() {
        let cache = cache(10, 1000);
        cache.put(&stream("s-1"), Arc::new("abc".to_owned()), 1);
        // `"abc"` is 5 bytes of JSON, `s-1` 3 bytes of id.
        assert_eq!(cache.stats().bytes, 8);
        // Stored again, it keeps the weight last measured for 15 stores,
        // and is weighed again on the 16th.
        for version in 2..=16 {
            cache.put(&stream("s-1"), Arc::new("abcdef".to_owned()), version);
            assert_eq!((cache.stats().entries, cache.stats().bytes), (1, 8));
        }
        cache.put(&stream("s-1"), Arc::new("abcdef".to_owned()), 17);
        assert_eq!((cache.stats().entries, cache.stats().bytes), (1, 11));
        cache.remove(&stream("s-1"));
        assert_eq!((cache.stats().entries, cache.stats().bytes), (0, 0));
    }

    #[test]
    fn a_cached_state_never_moves_back() {
        let cache = cache(10, 1000);
        cache.put(&stream("s-1"), Arc::new("new".to_owned()), 5);
        cache.put(&stream("s-1"), Arc::new("old".to_owned()), 4);
        let (state, version) = cache.peek(&stream("s-1")).expect("cached");
        assert_eq!((state.as_str(), version), ("new", 5));
    }

    #[test]
    fn a_state_heavier_than_the_bound_is_not_cached_and_evicts_nothing() {
        // Entries of 6 bytes; the heavy ones weigh 17 and 22.
        let cache = cache(10, 16);
        cache.put(&stream("s-1"), Arc::new("a".to_owned()), 1);
        cache.put(&stream("s-2"), Arc::new("b".to_owned()), 1);
        for version in 2..=16 {
            cache.put(&stream("s-1"), Arc::new("a".to_owned()), version);
        }
        // Weighed again on this store, it is found too heavy.
        cache.put(&stream("s-1"), Arc::new("far too long".to_owned()), 17);
        assert!(cache.peek(&stream("s-1")).is_none());
        cache.put(&stream("s-3"), Arc::new("far, far too long".to_owned()), 1);
        assert!(cache.peek(&stream("s-3")).is_none());
        assert!(cache.peek(&stream("s-2")).is_some(), "a lighter entry stays");
        let stats = cache.stats();
        assert_eq!((stats.entries, stats.bytes, stats.evictions), (1, 6, 0));
    }

    #[test]
    fn the_least_recently_used_stream_goes_first() {
        let cache = cache(2, 1000);
        cache.put(&stream("s-a"), Arc::new("a".to_owned()), 1);
        cache.put(&stream("s-b"), Arc::new("b".to_owned()), 1);
        assert!(cache.get(&stream("s-a")).is_some());
        cache.put(&stream("s-c"), Arc::new("c".to_owned()), 1);
        assert!(cache.peek(&stream("s-a")).is_some());
        assert!(cache.peek(&stream("s-b")).is_none());
        assert!(cache.peek(&stream("s-c")).is_some());
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.evictions, stats.entries), (1, 1, 2));
    }
}
