//! [`PgEventStoreOptions`]: how to connect and tune a [`PgEventStore`].

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use strata_core::{Error, Result};

use crate::error::{ConnectTimeout, UnsupportedUrlScheme, database_error, from_sqlx, is_connection_error};
use crate::store::PgEventStore;

/// Default limit on one event's encoded payload plus metadata: 1 MiB.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 1 << 20;

/// Default of [`PgEventStoreOptions::max_concurrent_appends`].
pub const DEFAULT_MAX_CONCURRENT_APPENDS: usize = 1;

/// Most events one append may carry: the batch index takes the low 20 bits
/// of a global position.
pub const MAX_BATCH_SIZE: usize = (1 << 20) - 1;

/// Builder of a [`PgEventStore`], like sqlx's `PgPoolOptions`.
///
/// ```no_run
/// # async fn f() -> strata_core::Result<()> {
/// use std::time::Duration;
/// use strata_store_postgres::PgEventStoreOptions;
///
/// let store = PgEventStoreOptions::new("postgres://localhost/app")
///     .max_connections(20)
///     .poll_interval(Duration::from_millis(250))
///     .connect()
///     .await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgEventStoreOptions {
    pub(crate) url: String,
    pub(crate) max_connections: u32,
    pub(crate) acquire_timeout: Duration,
    pub(crate) max_event_size: usize,
    pub(crate) read_batch: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) max_concurrent_appends: usize,
}

impl PgEventStoreOptions {
    /// Options for the database at `url` (`postgres://user:pass@host:port/db`),
    /// with the defaults: 10 connections, a 10 s acquire timeout, events up to
    /// [`DEFAULT_MAX_EVENT_SIZE`], subscription batches of 500 and a 500 ms
    /// poll interval.
    pub fn new(url: impl Into<String>) -> Self {
        PgEventStoreOptions {
            url: url.into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
            read_batch: 500,
            poll_interval: Duration::from_millis(500),
            max_concurrent_appends: DEFAULT_MAX_CONCURRENT_APPENDS,
        }
    }

    /// Size of the connection pool. Once a subscription has started, one of
    /// these connections is held for `LISTEN` for as long as the store lives.
    /// The store keeps up to a quarter of them (at least one) checked out
    /// for its own statements (see the crate docs, "Connections").
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long to wait for a pooled connection before failing with
    /// [`strata_core::Error::Connection`].
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Largest accepted payload plus metadata of one event, in bytes.
    pub fn max_event_size(mut self, bytes: usize) -> Self {
        self.max_event_size = bytes;
        self
    }

    /// How many events a subscription reads per query.
    pub fn read_batch(mut self, n: usize) -> Self {
        self.read_batch = n.max(1);
        self
    }

    /// How often an idle subscription reads the log even without a
    /// notification (a notification can be lost while reconnecting, and a
    /// committed event can become readable later, when an older transaction
    /// ends). Reading never skips events, so this only bounds latency.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How many append statements the store runs at once. Appends that
    /// arrive while that many are in flight wait, and the next one to
    /// finish sends all of them as one statement (group commit): one
    /// transaction and one round trip for many writers. A lone writer never
    /// waits. Each append keeps its own expected version check and outcome;
    /// see the crate docs. `usize::MAX` turns grouping off (every append is
    /// its own statement); at least 1.
    pub fn max_concurrent_appends(mut self, n: usize) -> Self {
        self.max_concurrent_appends = n.max(1);
        self
    }

    /// Connect the pool (at least one connection is opened now) and build
    /// the store.
    ///
    /// A server that refuses connections or does not answer is tried again,
    /// with back-off, until the acquire timeout; then the result is
    /// [`Error::Connection`] saying what the last attempt got
    /// ([`ConnectTimeout`]). A malformed
    /// URL, a scheme other than `postgres` or `postgresql`, a wrong
    /// password, an unknown role or database is [`Error::Configuration`],
    /// at once.
    pub async fn connect(self) -> Result<PgEventStore> {
        // sqlx reads any scheme as PostgreSQL, and would then wait out the
        // acquire timeout on, say, a MySQL URL.
        let scheme = self.url.split_once("://").map_or("", |(scheme, _)| scheme);
        if !matches!(scheme, "postgres" | "postgresql") {
            return Err(Error::Configuration(Box::new(UnsupportedUrlScheme {
                scheme: scheme.to_owned(),
            })));
        }
        let connect = PgConnectOptions::from_str(&self.url).map_err(from_sqlx)?;
        first_connection(&connect, self.acquire_timeout).await?;
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(from_sqlx)?;
        Ok(self.with_pool(pool))
    }

    /// Build the store on an existing pool; the URL and pool settings of
    /// these options are ignored.
    pub fn with_pool(self, pool: PgPool) -> PgEventStore {
        PgEventStore::build(pool, self)
    }
}

/// Open (and close) one connection, trying again while the server refuses
/// or cannot accept connections yet, for at most `within`. The pool would
/// wait the same way, but then report only that it timed out.
async fn first_connection(options: &PgConnectOptions, within: Duration) -> Result<()> {
    let started = Instant::now();
    let deadline = started + within;
    let mut backoff = Duration::from_millis(10);
    let mut last_attempt;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, PgConnection::connect_with(options)).await {
            Ok(Ok(conn)) => {
                // Only a probe: the pool opens its own.
                let _ = conn.close().await;
                return Ok(());
            }
            Ok(Err(e)) if is_connection_error(&e) => last_attempt = Some(database_error(e)),
            Ok(Err(e)) => return Err(from_sqlx(e)),
            Err(_) => {
                // Still waiting for an answer at the deadline.
                last_attempt = None;
                break;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(backoff.min(left)).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
    let server = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    Err(Error::Connection(Box::new(ConnectTimeout {
        server,
        waited: started.elapsed(),
        last_attempt,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README and changelog quote this default; they must quote this one.
    #[test]
    fn docs_quote_the_group_commit_default() {
        let quoted = format!("`max_concurrent_appends` (default {DEFAULT_MAX_CONCURRENT_APPENDS})");
        for (name, text) in [
            ("README.md", include_str!("../../README.md")),
            ("CHANGELOG.md", include_str!("../../CHANGELOG.md")),
        ] {
            assert!(text.contains(&quoted), "{name} must say {quoted}");
        }
    }
}
