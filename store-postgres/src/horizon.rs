//! [`Horizon`]: how far the global log is readable, and what holds it back.

use serde::{Deserialize, Serialize};

/// The readable horizon of the global log at one moment.
///
/// Readers only see positions below [`readable_below`](Horizon::readable_below):
/// the oldest transaction still running anywhere in the database (one that
/// has a transaction id) holds every reader back, including for events
/// other transactions committed since. A growing
/// [`held_back_events`](Horizon::held_back_events) with an old
/// [`oldest_transaction_age_seconds`](Horizon::oldest_transaction_age_seconds)
/// points at a transaction left open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Horizon {
    /// Every event with a position below this is final and readable; none
    /// at or above it is returned yet.
    pub readable_below: u64,
    /// Committed events at or above the horizon, waiting for older
    /// transactions to end.
    pub held_back_events: u64,
    /// Age of the oldest running transaction that has a transaction id, in
    /// seconds (`None` if there is none, or if the role may not see it in
    /// `pg_stat_activity`).
    pub oldest_transaction_age_seconds: Option<f64>,
    /// Backend process id of that transaction.
    pub oldest_transaction_pid: Option<i32>,
}
