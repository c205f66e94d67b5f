//! Stream versions this store has seen committed, so that an append with
//! `ExpectedVersion::Exact(n)` can skip reading the stream's version.
//!
//! An append must check two things: version `n + 1` is free, and version
//! `n` exists (else a wrong `n` would leave a gap in the stream). The
//! unique `(stream_id, stream_version)` index checks the first on every
//! insert. The second costs an index probe, about a sixth of a single
//! append's time on one writer. It is not needed when this store has itself
//! seen version `n` or a later one committed: `strata.events` is
//! append-only (its triggers refuse `UPDATE`, `DELETE` and `TRUNCATE`), so
//! a version, once committed, stays.
//!
//! What is remembered is tied to the table's OID. The statement that skips
//! the probe inserts nothing unless `strata.events` still has that OID, so
//! a table dropped and created again (a schema reset, a database created
//! anew under the same name) is noticed, and the store forgets what it knew
//! and reads the version again. Removing events with the triggers disabled
//! is the one change it cannot notice: restart the processes that use the
//! store after such surgery.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use strata_core::StreamId;

/// At most this many streams are remembered; when full, everything is
/// forgotten and learnt again (a forgotten stream only costs the probe).
const CAPACITY: usize = 100_000;

#[derive(Debug, Default)]
struct Known {
    /// The OID of `strata.events` the versions were seen in.
    table: Option<i64>,
    /// Per stream, a version known to be committed (the highest seen).
    versions: HashMap<String, u64>,
}

/// See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct KnownVersions {
    known: Mutex<Known>,
}

impl KnownVersions {
    fn lock(&self) -> MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The OID of the table in which `stream` is known to hold version
    /// `version`, if it is.
    pub(crate) fn table_holding(&self, stream: &StreamId, version: u64) -> Option<i64> {
        let known = self.lock();
        let table = known.table?;
        (known.versions.get(stream.as_str()).copied()? >= version).then_some(table)
    }

    /// `stream` holds `version`, committed, in the table with OID `table`.
    pub(crate) fn record(&self, table: i64, stream: &StreamId, version: u64) {
        let mut known = self.lock();
        if known.table != Some(table) {
            known.versions.clear();
            known.table = Some(table);
        }
        if let Some(v) = known.versions.get_mut(stream.as_str()) {
            *v = (*v).max(version);
            return;
        }
        if known.versions.len() >= CAPACITY {
            known.versions.clear();
        }
        known.versions.insert(stream.as_str().to_owned(), version);
    }

    /// Forget everything: the table is not the one the versions were seen in.
    pub(crate) fn forget(&self) {
        let mut known = self.lock();
        known.table = None;
        known.versions.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_highest_version_per_table() {
        let known = KnownVersions::default();
        let s = StreamId::new("s").unwrap();
        assert_eq!(known.table_holding(&s, 1), None);
        known.record(7, &s, 3);
        known.record(7, &s, 2);
        assert_eq!(known.table_holding(&s, 3), Some(7));
        assert_eq!(known.table_holding(&s, 1), Some(7));
        assert_eq!(known.table_holding(&s, 4), None, "version 4 was never seen");
        assert_eq!(known.table_holding(&StreamId::new("t").unwrap(), 1), None);

        // Another table: what was seen in the old one is void.
        known.record(8, &StreamId::new("t").unwrap(), 1);
        assert_eq!(known.table_holding(&s, 1), None);
        known.forget();
        assert_eq!(known.table_holding(&StreamId::new("t").unwrap(), 1), None);
    }

    #[test]
    fn a_full_cache_starts_over() {
        let known = KnownVersions::default();
        for i in 0..CAPACITY {
            known.record(1, &StreamId::new(format!("s-{i}")).unwrap(), 1);
        }
        let first = StreamId::new("s-0").unwrap();
        assert_eq!(known.table_holding(&first, 1), Some(1));
        known.record(1, &StreamId::new("one-more").unwrap(), 1);
        assert_eq!(known.table_holding(&first, 1), None);
        assert_eq!(known.lock().versions.len(), 1);
    }
}
