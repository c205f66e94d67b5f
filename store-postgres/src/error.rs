//! How sqlx failures map onto [`strata_core::Error`].
//!
//! A database failure is kept whole as a [`DatabaseError`] inside
//! [`Error::Connection`], [`Error::Configuration`] or [`Error::Backend`];
//! its `Display` says what the server or driver said, once, with the
//! SQLSTATE and any hint.

use std::fmt;
use std::time::Duration;

use sqlx::postgres::PgDatabaseError;
use strata_core::Error;

/// A stored value this crate cannot represent: a negative or oversized
/// number, an id that is no longer a valid stream id. It means the table
/// was written by something other than this crate.
#[derive(Debug, thiserror::Error)]
#[error("{what} is out of range: {value}")]
pub struct OutOfRange {
    /// Which column or argument.
    pub what: &'static str,
    /// The offending value.
    pub value: i128,
}

/// A failure of the database or its driver, as sqlx reported it. Its
/// `Display` is complete; [`sqlx_error`](DatabaseError::sqlx_error) gives
/// the driver's error for matching.
#[derive(Debug)]
pub struct DatabaseError(sqlx::Error);

impl DatabaseError {
    /// The driver's error.
    pub fn sqlx_error(&self) -> &sqlx::Error {
        &self.0
    }

    /// The SQLSTATE the server answered with, if it answered.
    pub fn code(&self) -> Option<String> {
        match &self.0 {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        }
    }
}

impl std::error::Error for DatabaseError {}

impl fmt::Display for DatabaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            sqlx::Error::Database(db) => {
                f.write_str(db.message())?;
                if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
                    if let Some(detail) = pg.detail() {
                        write!(f, " ({detail})")?;
                    }
                    if let Some(hint) = pg.hint() {
                        write!(f, "; hint: {hint}")?;
                    }
                }
                if let Some(code) = db.code() {
                    write!(f, " [SQLSTATE {code}]")?;
                    let missing = matches!(&*code, "42P01" | "3F000" | "42883");
                    if missing && db.message().contains("strata") {
                        f.write_str("; the strata schema is missing or outdated: run `strata migrate`")?;
                    }
                }
                Ok(())
            }
            sqlx::Error::Configuration(e) => write!(f, "{e}"),
            sqlx::Error::Io(e) => write!(f, "{e}"),
            sqlx::Error::Tls(e) => write!(f, "TLS: {e}"),
            sqlx::Error::PoolTimedOut => f.write_str(
                "timed out waiting for a database connection: every pooled connection is busy, \
                 or new ones cannot be opened",
            ),
            other => write!(f, "{other}"),
        }
    }
}

/// A first connection that could not be opened before the deadline: what
/// the last attempt got, or that the server never answered.
#[derive(Debug)]
pub struct ConnectTimeout {
    /// `host:port` (or socket) tried.
    pub server: String,
    /// How long attempts went on.
    pub waited: Duration,
    /// What the last attempt got; `None` if it was still waiting for an
    /// answer at the deadline.
    pub last_attempt: Option<DatabaseError>,
}

impl std::error::Error for ConnectTimeout {}

impl fmt::Display for ConnectTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no connection to {} within {:.1} s: ",
            self.server,
            self.waited.as_secs_f64()
        )?;
        match &self.last_attempt {
            Some(e) => write!(f, "the last attempt got: {e}"),
            None => f.write_str("the server did not answer"),
        }
    }
}

/// Whether a sqlx error means the database could not be reached or the
/// connection was lost (worth retrying), rather than a failing statement.
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exception; 57P01..57P05: shutdown, crash, cannot connect now.
            code.starts_with("08") || code.starts_with("57P0")
        }),
        _ => false,
    }
}

/// Whether a sqlx error is a setting that no retry can fix: a malformed
/// URL, a wrong password, an unknown role or database.
pub fn is_configuration_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Configuration(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 28: invalid authorization (wrong password, unknown role);
            // 3D000: unknown database.
            code.starts_with("28") || code == "3D000"
        }),
        _ => false,
    }
}

/// Whether `e` is the failure of a pooled connection whose Tokio runtime
/// has ended (its socket belonged to that runtime's I/O driver).
pub(crate) fn is_from_ended_runtime(e: &Error) -> bool {
    let Error::Connection(boxed) = e else { return false };
    boxed
        .downcast_ref::<DatabaseError>()
        .is_some_and(|db| sqlx_from_ended_runtime(db.sqlx_error()))
}

/// [`is_from_ended_runtime`] for the driver's error.
pub(crate) fn sqlx_from_ended_runtime(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(io) if io.to_string().contains("is being shutdown"))
}

/// Wrap a sqlx error as [`Error::Configuration`], [`Error::Connection`] or
/// [`Error::Backend`].
pub(crate) fn from_sqlx(e: sqlx::Error) -> Error {
    if is_configuration_error(&e) {
        Error::Configuration(Box::new(DatabaseError(e)))
    } else if is_connection_error(&e) {
        Error::Connection(Box::new(DatabaseError(e)))
    } else {
        Error::Backend(Box::new(DatabaseError(e)))
    }
}

pub(crate) fn database_error(e: sqlx::Error) -> DatabaseError {
    DatabaseError(e)
}

/// Wrap a migration failure.
pub(crate) fn from_migrate(e: sqlx::migrate::MigrateError) -> Error {
    match e {
        sqlx::migrate::MigrateError::Execute(e) => from_sqlx(e),
        other => Error::Backend(Box::new(other)),
    }
}

/// New positions would fall at or below stored ones: the log was restored
/// into another cluster (whose transaction ids are lower), and its log base
/// was not raised. The store refuses to append until `strata migrate` (or
/// [`PgEventStore::migrate`](crate::PgEventStore::migrate)) raises it.
#[derive(Debug, thiserror::Error)]
#[error(
    "appending now would give positions below stored ones (stored up to {stored}, next from {next}): the log \
     was restored from another cluster; run `strata migrate` to raise the log base, then append"
)]
pub struct LogBaseBehind {
    /// The highest stored position.
    pub stored: i64,
    /// The lowest position an append could get now.
    pub next: i64,
}

/// A database URL whose scheme is not `postgres` or `postgresql`.
#[derive(Debug, thiserror::Error)]
#[error("database url must start with postgres:// or postgresql://, got {scheme:?}")]
pub struct UnsupportedUrlScheme {
    /// The scheme found (the text before `://`; empty when there is none,
    /// so that no part of a URL that may hold a password is repeated).
    pub scheme: String,
}

/// Whether `e` is a unique violation (SQLSTATE 23505).
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

pub(crate) fn out_of_range(what: &'static str, value: impl Into<i128>) -> Error {
    Error::Backend(Box::new(OutOfRange {
        what,
        value: value.into(),
    }))
}

/// An [`ExpectedVersion`](strata_core::ExpectedVersion) variant this
/// version of the crate does not know (the enum is non-exhaustive).
#[derive(Debug, thiserror::Error)]
#[error("unsupported expected version: {0}")]
pub struct UnsupportedExpectedVersion(pub strata_core::ExpectedVersion);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_and_said_once() {
        let timeout = from_sqlx(sqlx::Error::PoolTimedOut);
        assert!(matches!(timeout, Error::Connection(_)));
        assert!(
            timeout
                .to_string()
                .starts_with("connection to the backend failed: timed out")
        );
        assert!(matches!(from_sqlx(sqlx::Error::RowNotFound), Error::Backend(_)));
        let bad_url = from_sqlx(sqlx::Error::Configuration("invalid port number".into()));
        assert!(matches!(bad_url, Error::Configuration(_)));
        assert_eq!(bad_url.to_string(), "invalid configuration: invalid port number");
    }

    #[test]
    fn out_of_range_message_is_lowercase() {
        let e = OutOfRange {
            what: "stream_version",
            value: -1,
        };
        assert_eq!(e.to_string(), "stream_version is out of range: -1");
    }
}
