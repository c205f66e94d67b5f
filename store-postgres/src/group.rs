//! Group commit: appends that arrive while the store already has
//! [`PgEventStoreOptions::max_concurrent_appends`](crate::PgEventStoreOptions::max_concurrent_appends)
//! statements in flight wait, and go together in one statement when one
//! of those finishes.
//!
//! A lone writer never waits: its append is sent at once, as its own
//! statement. Under load, each commit carries the appends of many writers,
//! so the server does one transaction, one round trip and one commit for
//! all of them instead of one each.
//!
//! Each member keeps its own semantics. The statement checks every
//! member's expected version separately and inserts only the members whose
//! check passes, all events of a member or none; a member that fails its
//! check goes through the usual conflict handling, alone. If the statement
//! fails as a whole (a concurrent writer elsewhere took a version, say),
//! every member is tried again alone, so one member's trouble costs the
//! others a round trip, never their append. At most one append per stream
//! waits: further appends to that stream, rivals for its next version, are
//! sent alone at once and race as they would without grouping. So a group
//! holds at most one member per stream.
//!
//! The global log's guarantees hold unchanged: the statement is its
//! transaction's first write, positions are `(xid << 20) | ord` with `ord`
//! running over the whole group, and a group holds at most one member per
//! stream, so a stream's events still take increasing positions. Members
//! are ordered by stream id, so two groups (of this process or another)
//! take the unique index entries of shared streams in the same order and
//! cannot deadlock on them.

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use strata_core::{AppendResult, StreamId};
use tokio::sync::oneshot;

use crate::conns::Conns;
use crate::known::KnownVersions;
use crate::options::MAX_BATCH_SIZE;
use crate::store::Batch;

/// Appends of more events than this never wait for a group: a batch that
/// large already spreads its statement's fixed costs, and is better run
/// beside others than folded into one long statement.
const GROUP_MEMBER_EVENTS: usize = 32;

/// A group stops taking members before it holds more events than this.
/// Positions number a transaction's events in 20 bits, so a group must stay
/// within [`MAX_BATCH_SIZE`].
const GROUP_EVENTS: usize = 2_000;
const _: () = assert!(GROUP_EVENTS <= MAX_BATCH_SIZE);

/// The grouped append. Every member's version is read and checked on its
/// own (`req`, `ok`); the insert takes the events of the members that
/// passed, in `ord` order, which is stream id order. It answers, per
/// member that was appended, its version before the append and the
/// transaction's position base: positions and the new version follow from
/// the member's place in the arrays, so no row comes back per event.
static GROUP_SQL: LazyLock<String> = LazyLock::new(|| {
    crate::store::with_log_base("\
WITH req AS MATERIALIZED (
    SELECT r.i, r.stream_id, r.category, r.exact, r.must_exist,
           (SELECT coalesce(max(s.stream_version), 0) FROM strata.events s WHERE s.stream_id = r.stream_id) AS v
    FROM unnest($1::text[], $2::bigint[], $3::bool[], $11::text[])
         WITH ORDINALITY AS r(stream_id, exact, must_exist, category, i)
), ok AS (
    SELECT i, stream_id, category, v FROM req WHERE (exact IS NULL OR v = exact) AND (NOT must_exist OR v > 0)
), base AS (
    SELECT pg_current_xact_id()::text::bigint << 20 AS b
), ins AS (
    INSERT INTO strata.events
        (global_position, stream_id, stream_version, event_id, event_type, schema_version, payload, metadata, category)
    SELECT base.b | e.ord, ok.stream_id, ok.v + e.k, e.id, e.ty, e.sv, e.payload::jsonb, e.metadata::jsonb, ok.category
    FROM unnest($4::bigint[], $5::bigint[], $6::uuid[], $7::text[], $8::int[], $9::text[], $10::text[])
             WITH ORDINALITY AS e(req, k, id, ty, sv, payload, metadata, ord)
    JOIN ok ON ok.i = e.req
    CROSS JOIN base
    ORDER BY e.ord
)
SELECT ok.i, ok.v, base.b, 'strata.events'::regclass::oid::bigint FROM ok CROSS JOIN base")
});

/// What the group statement did with one member.
#[derive(Debug)]
pub(crate) enum Grouped {
    /// Appended, into the table with this OID.
    Appended(AppendResult, i64),
    /// The stream's version, as the statement saw it, failed the member's
    /// expectation; nothing was written for it.
    Rejected,
    /// The statement failed as a whole, and nothing was written for
    /// anybody: append alone.
    Alone,
}

/// An append waiting for a group.
struct Member {
    stream: StreamId,
    exact: Option<i64>,
    must_exist: bool,
    batch: Arc<Batch>,
    tx: oneshot::Sender<Grouped>,
}

#[derive(Default)]
struct State {
    in_flight: usize,
    queue: VecDeque<Member>,
}

/// Counts append statements in flight and holds the appends waiting for
/// one to finish.
pub(crate) struct Grouper {
    conns: Arc<Conns>,
    known: Arc<KnownVersions>,
    limit: usize,
    state: Mutex<State>,
}

impl std::fmt::Debug for Grouper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Grouper")
            .field("limit", &self.limit)
            .field("in_flight", &state.in_flight)
            .field("waiting", &state.queue.len())
            .finish()
    }
}

/// How an append goes: alone, holding one of the in-flight slots, or in a
/// group, by waiting for its outcome.
pub(crate) enum Entry {
    /// Alone, outside the count of statements in flight: a large batch,
    /// or a second append to a stream that already has one waiting.
    Bypass,
    Alone(Slot),
    Queued(oneshot::Receiver<Grouped>),
}

/// An in-flight slot. Dropping it (also when the append is cancelled)
/// hands the slot to the waiting appends, if any.
pub(crate) struct Slot(Arc<Grouper>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Grouper {
    pub(crate) fn new(conns: Arc<Conns>, known: Arc<KnownVersions>, limit: usize) -> Self {
        Grouper {
            conns,
            known,
            limit: limit.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a slot if one is free, else join the queue.
    pub(crate) fn enter(
        self: &Arc<Self>,
        stream: &StreamId,
        exact: Option<i64>,
        must_exist: bool,
        batch: &Arc<Batch>,
    ) -> Entry {
        if batch.len() > GROUP_MEMBER_EVENTS {
            return Entry::Bypass;
        }
        let mut state = self.lock();
        if state.in_flight < self.limit {
            state.in_flight += 1;
            return Entry::Alone(Slot(self.clone()));
        }
        // One waiting member per stream: a group takes one member per
        // stream, and rivals for a hot stream's next version would
        // otherwise wait a group each, to find their expectation stale.
        if state.queue.iter().any(|m| m.stream == *stream) {
            return Entry::Bypass;
        }
        let (tx, rx) = oneshot::channel();
        state.queue.push_back(Member {
            stream: stream.clone(),
            exact,
            must_exist,
            batch: batch.clone(),
            tx,
        });
        Entry::Queued(rx)
    }

    /// A statement finished: serve the queue with its slot, or free it.
    fn release(self: &Arc<Self>) {
        let mut state = self.lock();
        if !state.queue.is_empty()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            drop(state);
            runtime.spawn(self.clone().serve());
            return;
        }
        state.in_flight -= 1;
        // Without a runtime nothing can serve the queue; its members see
        // their channel closed and append alone.
        state.queue.clear();
    }

    /// Run groups with the slot it was handed until the queue is empty.
    async fn serve(self: Arc<Self>) {
        let mut serving = Serving(Some(self));
        loop {
            let Some(grouper) = serving.0.as_ref() else { return };
            let group = {
                let mut state = grouper.lock();
                let group = take_group(&mut state.queue);
                if group.is_empty() {
                    state.in_flight -= 1;
                    drop(state);
                    serving.0 = None;
                    return;
                }
                group
            };
            run_group(&grouper.conns, &grouper.known, group).await;
        }
    }
}

/// The slot a [`Grouper::serve`] task holds. Should the task end any other
/// way than by finding the queue empty (a panic, or its runtime shutting
/// down), this frees the slot and lets the waiting appends go alone, so no
/// slot is lost and nobody waits forever.
struct Serving(Option<Arc<Grouper>>);

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(grouper) = self.0.take() {
            let mut state = grouper.lock();
            state.in_flight -= 1;
            state.queue.clear();
        }
    }
}

/// The next group from the front of the queue, up to [`GROUP_EVENTS`]
/// events. Members whose caller gave up are dropped.
fn take_group(queue: &mut VecDeque<Member>) -> Vec<Member> {
    let mut group = Vec::new();
    let mut events = 0;
    while let Some(member) = queue.pop_front() {
        if member.tx.is_closed() {
            continue;
        }
        if events + member.batch.len() > GROUP_EVENTS {
            queue.push_front(member);
            break;
        }
        events += member.batch.len();
        group.push(member);
    }
    group
}

/// Append a group and tell each member what became of it.
async fn run_group(conns: &Conns, known: &KnownVersions, mut group: Vec<Member>) {
    if group.len() == 1 {
        let member = group.pop().expect("one member");
        let outcome = match crate::store::insert_alone(
            conns,
            known,
            &member.stream,
            member.exact,
            member.must_exist,
            &member.batch,
        )
        .await
        {
            Ok(Some((result, table))) => Grouped::Appended(result, table),
            Ok(None) => Grouped::Rejected,
            Err(_) => Grouped::Alone,
        };
        let _ = member.tx.send(outcome);
        return;
    }
    group.sort_by(|a, b| a.stream.as_str().cmp(b.stream.as_str()));
    let events: usize = group.iter().map(|m| m.batch.len()).sum();
    let mut streams = Vec::with_capacity(group.len());
    let mut exact = Vec::with_capacity(group.len());
    let mut must_exist = Vec::with_capacity(group.len());
    let mut first_ord = Vec::with_capacity(group.len());
    let mut req = Vec::with_capacity(events);
    let mut k = Vec::with_capacity(events);
    let mut categories = Vec::with_capacity(group.len());
    let mut ids = Vec::with_capacity(events);
    let mut types = Vec::with_capacity(events);
    let mut schema_versions = Vec::with_capacity(events);
    let mut payloads = Vec::with_capacity(events);
    let mut metadata = Vec::with_capacity(events);
    for (i, m) in group.iter().enumerate() {
        streams.push(m.stream.as_str());
        categories.push(m.stream.category());
        exact.push(m.exact);
        must_exist.push(m.must_exist);
        first_ord.push(ids.len() as i64 + 1);
        let b = &m.batch;
        for n in 0..b.len() {
            req.push(i as i64 + 1);
            k.push(n as i64 + 1);
            ids.push(b.ids[n]);
            types.push(b.types[n].as_str());
            schema_versions.push(b.schema_versions[n]);
            payloads.push(b.payloads[n].as_str());
            metadata.push(b.metadata[n].as_str());
        }
    }
    let rows: Result<Vec<(i64, i64, i64, i64)>, sqlx::Error> = conns
        .fetch_all(|| {
            sqlx::query_as(&GROUP_SQL)
                .bind(&streams)
                .bind(&exact)
                .bind(&must_exist)
                .bind(&req)
                .bind(&k)
                .bind(&ids)
                .bind(&types)
                .bind(&schema_versions)
                .bind(&payloads)
                .bind(&metadata)
                .bind(&categories)
        })
        .await;
    let mut outcomes: Vec<Grouped> = match &rows {
        Ok(_) => group.iter().map(|_| Grouped::Rejected).collect(),
        Err(e) => {
            tracing::debug!(error = %e, members = group.len(), "grouped append failed, members append alone");
            group.iter().map(|_| Grouped::Alone).collect()
        }
    };
    for (i, v, base, table) in rows.into_iter().flatten() {
        let Some(at) = usize::try_from(i - 1).ok().filter(|&at| at < group.len()) else {
            continue;
        };
        let count = group[at].batch.len() as u64;
        let (Ok(v), Ok(first)) = (u64::try_from(v), u64::try_from(base | first_ord[at])) else {
            outcomes[at] = Grouped::Alone;
            continue;
        };
        let result = AppendResult {
            stream_version: v + count,
            positions: (first..first + count).collect(),
        };
        outcomes[at] = Grouped::Appended(result, table);
    }
    metrics::histogram!("strata_store_append_group_size").record(group.len() as f64);
    for (member, outcome) in group.into_iter().zip(outcomes) {
        let _ = member.tx.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(events: usize) -> Arc<Batch> {
        Arc::new(Batch {
            ids: (0..events).map(|_| uuid::Uuid::now_v7()).collect(),
            types: vec!["A".into(); events],
            schema_versions: vec![1; events],
            payloads: vec!["{}".into(); events],
            metadata: vec!["{}".into(); events],
        })
    }

    #[tokio::test]
    async fn who_waits_and_who_goes_alone() {
        let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").expect("a valid URL");
        let grouper = Arc::new(Grouper::new(Arc::new(Conns::new(pool)), Arc::default(), 1));
        let (s, t) = (StreamId::new("s").unwrap(), StreamId::new("t").unwrap());
        let small = batch(1);
        let slot = grouper.enter(&s, None, false, &small);
        assert!(matches!(slot, Entry::Alone(_)), "a free slot is taken");
        let waiting_s = grouper.enter(&s, None, false, &small);
        assert!(matches!(waiting_s, Entry::Queued(_)), "no free slot: wait");
        let waiting_t = grouper.enter(&t, None, false, &small);
        assert!(matches!(waiting_t, Entry::Queued(_)));
        assert!(
            matches!(grouper.enter(&s, None, false, &small), Entry::Bypass),
            "a stream waits once; its rivals go alone"
        );
        assert!(
            matches!(
                grouper.enter(
                    &StreamId::new("u").unwrap(),
                    None,
                    false,
                    &batch(GROUP_MEMBER_EVENTS + 1)
                ),
                Entry::Bypass
            ),
            "large batches never wait"
        );
        assert_eq!(grouper.lock().queue.len(), 2);

        // A caller that gave up is not served; the others keep their order.
        drop(waiting_s);
        let group = take_group(&mut grouper.lock().queue);
        assert_eq!(group.len(), 1);
        assert_eq!(group[0].stream, t);
        assert!(grouper.lock().queue.is_empty());
    }

    #[test]
    fn a_group_stops_at_its_event_budget() {
        let mut queue = VecDeque::new();
        let mut receivers = Vec::new();
        for i in 0..(GROUP_EVENTS / GROUP_MEMBER_EVENTS + 5) {
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            queue.push_back(Member {
                stream: StreamId::new(format!("s-{i}")).unwrap(),
                exact: None,
                must_exist: false,
                batch: batch(GROUP_MEMBER_EVENTS),
                tx,
            });
        }
        let group = take_group(&mut queue);
        assert_eq!(group.len(), GROUP_EVENTS / GROUP_MEMBER_EVENTS);
        assert_eq!(queue.len(), 5);
        assert_eq!(queue[0].stream.as_str(), format!("s-{}", group.len()));
    }
}
