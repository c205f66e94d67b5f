//! [`Horizon`]: how far the global log is readable, and what holds it back.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The readable horizon of the global log at one moment.
///
/// Readers only see positions below [`readable_below`](Horizon::readable_below):
/// the oldest transaction still running anywhere on the server (one that
/// has a transaction id, in any database: transaction ids are
/// server-wide), prepared transactions of two-phase commit included, holds
/// every reader back, including for events other transactions committed
/// since. A growing [`held_back_events`](Horizon::held_back_events) with an
/// old [`oldest_transaction_age_seconds`](Horizon::oldest_transaction_age_seconds)
/// points at a transaction left open.
///
/// Its `Display` is a sentence for an operator: what is held back, by
/// which transaction, and how to end it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Horizon {
    /// Every event with a position below this is final and readable; none
    /// at or above it is returned yet.
    pub readable_below: u64,
    /// Committed events at or above the horizon, waiting for older
    /// transactions to end.
    pub held_back_events: u64,
    /// How long the oldest running transaction that has a transaction id
    /// has been open (for a prepared transaction: since it was prepared),
    /// in seconds; `None` if there is none, or if the role may not see it.
    pub oldest_transaction_age_seconds: Option<f64>,
    /// Backend process id of that transaction (`None` for a prepared
    /// transaction, which belongs to no backend).
    pub oldest_transaction_pid: Option<i32>,
    /// The global id of that transaction if it is a prepared transaction
    /// (`PREPARE TRANSACTION 'gid'`).
    pub oldest_prepared_gid: Option<String>,
    /// The database that transaction runs in.
    pub oldest_transaction_database: Option<String>,
    /// The role that runs it.
    pub oldest_transaction_user: Option<String>,
    /// Its backend's state (`active`, `idle in transaction`, ...), or
    /// `prepared`.
    pub oldest_transaction_state: Option<String>,
}

impl fmt::Display for Horizon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.held_back_events;
        let events = if held == 1 { "event is" } else { "events are" };
        let owner = |f: &mut fmt::Formatter<'_>| -> fmt::Result {
            let user = self.oldest_transaction_user.as_deref().unwrap_or("?");
            let database = self.oldest_transaction_database.as_deref().unwrap_or("?");
            write!(f, "user {user}, database {database}")
        };
        let age = self.oldest_transaction_age_seconds.unwrap_or(0.0);
        match (&self.oldest_prepared_gid, self.oldest_transaction_pid) {
            (None, None) if held == 0 => {
                f.write_str("every committed event is readable; no open transaction holds the log back")
            }
            (None, None) => write!(
                f,
                "{held} committed {events} not readable yet, held back by an open transaction this role cannot \
                 see in pg_stat_activity (or one that has just ended)"
            ),
            (Some(gid), _) => {
                if held == 0 {
                    write!(
                        f,
                        "every committed event is readable, but prepared transaction '{gid}' ("
                    )?;
                } else {
                    write!(
                        f,
                        "{held} committed {events} not readable yet: prepared transaction '{gid}' ("
                    )?;
                }
                owner(f)?;
                write!(
                    f,
                    ") has waited {age:.1} s to be finished{}; readers wait until it is: run COMMIT PREPARED '{gid}' \
                     or ROLLBACK PREPARED '{gid}'",
                    if held == 0 {
                        " and will hold back every event committed from now on"
                    } else {
                        ""
                    }
                )
            }
            (None, Some(pid)) => {
                let state = self
                    .oldest_transaction_state
                    .as_deref()
                    .unwrap_or("unknown state");
                if held == 0 {
                    write!(
                        f,
                        "every committed event is readable; the oldest open transaction, backend pid {pid} ("
                    )?;
                } else {
                    write!(
                        f,
                        "{held} committed {events} not readable yet: the transaction of backend pid {pid} ("
                    )?;
                }
                owner(f)?;
                write!(f, ", {state}) has been open for {age:.1} s")?;
                if held == 0 {
                    f.write_str(" and will hold back events committed from now on until it ends")
                } else {
                    write!(
                        f,
                        "; readers wait until it ends: end it in its application, or run \
                         SELECT pg_terminate_backend({pid})"
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn horizon() -> Horizon {
        Horizon {
            readable_below: 1 << 30,
            held_back_events: 3,
            oldest_transaction_age_seconds: Some(42.0),
            oldest_transaction_pid: Some(4242),
            oldest_prepared_gid: None,
            oldest_transaction_database: Some("shop".into()),
            oldest_transaction_user: Some("app".into()),
            oldest_transaction_state: Some("idle in transaction".into()),
        }
    }

    #[test]
    fn the_sentence_names_the_holder_and_how_to_end_it() {
        let text = horizon().to_string();
        assert_eq!(
            text,
            "3 committed events are not readable yet: the transaction of backend pid 4242 (user app, database shop, \
             idle in transaction) has been open for 42.0 s; readers wait until it ends: end it in its application, \
             or run SELECT pg_terminate_backend(4242)"
        );
        let prepared = Horizon {
            oldest_transaction_pid: None,
            oldest_prepared_gid: Some("tx-1".into()),
            oldest_transaction_state: Some("prepared".into()),
            ..horizon()
        };
        assert!(
            prepared.to_string().contains("COMMIT PREPARED 'tx-1'"),
            "{prepared}"
        );
        let quiet = Horizon {
            held_back_events: 0,
            oldest_transaction_age_seconds: None,
            oldest_transaction_pid: None,
            ..horizon()
        };
        assert!(quiet.to_string().starts_with("every committed event is readable"));
    }
}
