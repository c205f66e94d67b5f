//! Commit notifications: one `LISTEN strata_events` connection per store,
//! shared by all its subscriptions through a watch channel.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The channel the `strata.events` trigger notifies on commit.
pub const CHANNEL: &str = "strata_events";

/// Counts notifications (and reconnects, after which some may have been
/// lost); a change means "read the log again".
#[derive(Debug)]
pub(crate) struct Notifier {
    tx: Arc<watch::Sender<u64>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Notifier {
    pub(crate) fn new() -> Self {
        Notifier {
            tx: Arc::new(watch::channel(0).0),
            task: Mutex::new(None),
        }
    }

    /// A receiver of the notification counter, starting the listening task
    /// if it is not running. Must be called within a Tokio runtime.
    pub(crate) fn subscribe(&self, pool: &PgPool, retry: Duration) -> watch::Receiver<u64> {
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
    }
}

fn bump(tx: &watch::Sender<u64>) {
    tx.send_modify(|n| *n = n.wrapping_add(1));
}

async fn listen(pool: PgPool, tx: Arc<watch::Sender<u64>>, retry: Duration) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(CHANNEL).await {
                Ok(()) => {
                    // Events may have committed while nobody listened.
                    bump(&tx);
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(_)) => bump(&tx),
                            // Reconnected: notifications may have been lost.
                            Ok(None) => bump(&tx),
                            Err(e) => {
                                tracing::warn!(error = %e, "strata_events listener failed, reconnecting");
                                bump(&tx);
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen on strata_events"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot connect the strata_events listener"),
        }
        tokio::time::sleep(retry).await;
    }
}
