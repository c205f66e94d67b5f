//! How sqlx failures map onto [`strata_core::Error`].

use strata_core::Error;

/// A stored value this crate cannot represent: a negative or oversized
/// number, an id that is no longer a valid stream id. Returned boxed in
/// [`Error::Backend`]; it means the table was written by something other
/// than this crate.
#[derive(Debug, thiserror::Error)]
#[error("{what} is out of range: {value}")]
pub struct OutOfRange {
    /// Which column or argument.
    pub what: &'static str,
    /// The offending value.
    pub value: i128,
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

/// Wrap a sqlx error as [`Error::Connection`] or [`Error::Backend`].
pub(crate) fn from_sqlx(e: sqlx::Error) -> Error {
    if matches!(e, sqlx::Error::Configuration(_)) {
        Error::Configuration(Box::new(e))
    } else if is_connection_error(&e) {
        Error::Connection(Box::new(e))
    } else {
        Error::Backend(Box::new(e))
    }
}

/// Wrap a migration failure.
pub(crate) fn from_migrate(e: sqlx::migrate::MigrateError) -> Error {
    match e {
        sqlx::migrate::MigrateError::Execute(e) => from_sqlx(e),
        other => Error::Backend(Box::new(other)),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_timeout_is_a_connection_error() {
        assert!(matches!(
            from_sqlx(sqlx::Error::PoolTimedOut),
            Error::Connection(_)
        ));
        assert!(matches!(from_sqlx(sqlx::Error::RowNotFound), Error::Backend(_)));
        let bad_url = sqlx::Error::Configuration("invalid port number".into());
        assert!(matches!(from_sqlx(bad_url), Error::Configuration(_)));
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

/// An [`ExpectedVersion`](strata_core::ExpectedVersion) variant this
/// version of the crate does not know (the enum is non-exhaustive).
#[derive(Debug, thiserror::Error)]
#[error("unsupported expected version: {0}")]
pub struct UnsupportedExpectedVersion(pub strata_core::ExpectedVersion);
