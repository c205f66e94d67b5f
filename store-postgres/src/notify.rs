//! Commit notifications: one `LISTEN strata_events` connection per store,
//! shared by all its subscriptions through a watch channel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::conns::{Conns, on_conn};

/// The channel appending stores notify after their appends commit.
pub const CHANNEL: &str = "strata_events";

/// After sending a notification, the publisher waits this long before the
/// next: the first append after a quiet spell is announced at once, and a
/// busy store sends at most one `NOTIFY` per interval.
const COALESCE: Duration = Duration::from_millis(10);

/// What woke subscriptions so far; a change means "read the log again".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Wakes {
    /// Commits announced: by a notification, or by an append of this store.
    pub(crate) commits: u64,
    /// Times `LISTEN` was (re-)established: notifications may have been
    /// missed before, but nothing says an event committed.
    pub(crate) listens: u64,
}

/// Counts notifications and reconnects; also publishes this store's
/// appends to other processes.
#[derive(Debug)]
pub(crate) struct Notifier {
    tx: Arc<watch::Sender<Wakes>>,
    task: Mutex<Option<JoinHandle<()>>>,
    appended: Arc<Notify>,
    /// Whether a publisher task is alive. The task clears it when it ends,
    /// also when its runtime shuts down and drops it, so the next append
    /// (from whatever runtime) starts a new one.
    publishing: Arc<AtomicBool>,
    /// Held while starting a publisher, so only one starts.
    starting: Mutex<()>,
}

impl Notifier {
    pub(crate) fn new() -> Self {
        Notifier {
            tx: Arc::new(watch::channel(Wakes::default()).0),
            task: Mutex::new(None),
            appended: Arc::new(Notify::new()),
            publishing: Arc::new(AtomicBool::new(false)),
            starting: Mutex::new(()),
        }
    }

    /// Announce a committed append: wake this store's subscriptions now,
    /// and have the publisher task send one `NOTIFY` for other processes.
    ///
    /// The notification is not sent by the appending transaction: a `NOTIFY`
    /// at commit takes a server-wide lock that serializes concurrent
    /// committers (it halved 16-writer append throughput when a trigger
    /// sent it). Sent afterwards and coalesced, it costs an append no more
    /// than waking a task; it is only a wake-up, subscribers poll as well.
    /// It goes out on one of the store's kept connections, which, unlike a
    /// connection checked out of the pool, costs no extra round trips.
    pub(crate) fn appended(&self, conns: &Arc<Conns>) {
        bump(&self.tx);
        if !self.publishing.load(Ordering::Acquire) {
            self.start_publisher(conns);
        }
        self.appended.notify_one();
    }

    fn start_publisher(&self, conns: &Arc<Conns>) {
        let _starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
        if self.publishing.swap(true, Ordering::AcqRel) {
            return;
        }
        let alive = Alive(self.publishing.clone());
        tokio::spawn(publish(Arc::clone(conns), self.appended.clone(), alive));
    }

    /// A receiver of the wake-up counts, starting the listening task if it
    /// is not running (it ends with the runtime it ran on). Must be called
    /// within a Tokio runtime.
    pub(crate) fn subscribe(&self, pool: &PgPool, retry: Duration) -> watch::Receiver<Wakes> {
        let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if task.as_ref().is_none_or(JoinHandle::is_finished) {
            *task = Some(tokio::spawn(listen(pool.clone(), self.tx.clone(), retry)));
        }
        self.tx.subscribe()
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        let task = self.task.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(task) = task.take() {
            task.abort();
        }
        // The publisher is not aborted: it still sends what is pending (a
        // store dropped right after an append), then sees it is alone and ends.
        self.appended.notify_one();
    }
}

/// Wakes a reader of the log when a commit is announced: an append of this
/// store, or a notification from another process. It is only a hint (a
/// notification can be missed while the listening connection reconnects),
/// so a reader waits with a timeout and reads again either way. Made by
/// [`PgEventStore::commit_signal`](crate::PgEventStore::commit_signal).
#[derive(Debug)]
pub struct CommitSignal {
    rx: watch::Receiver<Wakes>,
    seen: u64,
}

impl CommitSignal {
    pub(crate) fn new(rx: watch::Receiver<Wakes>) -> Self {
        let seen = rx.borrow().commits;
        CommitSignal { rx, seen }
    }

    /// Wait until a commit is announced that this signal has not reported
    /// yet, or until `timeout` passes; true if a commit was announced.
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let commits = self.rx.borrow_and_update().commits;
            if commits != self.seen {
                self.seen = commits;
                return true;
            }
            match tokio::time::timeout_at(deadline, self.rx.changed()).await {
                Ok(Ok(())) => continue,
                // The store was dropped: nothing will announce anything.
                Ok(Err(_)) => {
                    tokio::time::sleep_until(deadline).await;
                    return false;
                }
                Err(_) => return false,
            }
        }
    }
}

/// Clears the publisher's flag when the task ends, however it ends.
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

async fn publish(conns: Arc<Conns>, appended: Arc<Notify>, _alive: Alive) {
    loop {
        appended.notified().await;
        // A pooled connection left by an ended runtime fails once and is
        // dropped: try the next one.
        for _ in 0..=conns.pool().size() {
            match on_conn!(&conns, |c| sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(c))
            {
                Err(e) if crate::error::sqlx_from_ended_runtime(&e) => continue,
                // Subscribers poll too: a lost notification only delays them.
                Err(e) => tracing::debug!(error = %e, "cannot send the strata_events notification"),
                Ok(_) => {}
            }
            break;
        }
        if Arc::strong_count(&appended) == 1 {
            return;
        }
        tokio::time::sleep(COALESCE).await;
    }
}

fn bump(tx: &watch::Sender<Wakes>) {
    tx.send_modify(|w| w.commits = w.commits.wrapping_add(1));
}

async fn listen(pool: PgPool, tx: Arc<watch::Sender<Wakes>>, retry: Duration) {
    loop {
        let listening = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match listening.await {
            Ok(listener) => listener,
            Err(e) => {
                // Subscribers go on polling meanwhile.
                tracing::warn!(error = %e, "cannot listen on strata_events, retrying");
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        // Only now that LISTEN is in place: whatever committed while nobody
        // listened is found by the read this wake-up causes, and whatever
        // commits later is announced on this connection.
        tx.send_modify(|w| w.listens = w.listens.wrapping_add(1));
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => bump(&tx),
                // The connection was lost. sqlx would re-listen lazily on the
                // next call; reconnecting here instead means subscribers are
                // woken after LISTEN is back, never before.
                Ok(None) => {
                    tracing::warn!("strata_events listener connection lost, reconnecting");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "strata_events listener failed, reconnecting");
                    break;
                }
            }
        }
    }
}
