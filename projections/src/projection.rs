//! What every projection declares, whatever keeps its read model.

use std::time::Duration;

use strata_core::{Event, LogFilter, Upcasters};

/// A read model built from the global log: a stable name and version, and
/// the events it wants. How each event changes the model is said by the
/// trait of the store that keeps it, such as
/// `postgres::PgProjection`.
pub trait Projection: Send + Sync + 'static {
    /// The events it decodes, upcast to their current schema.
    type Event: Event;

    /// Stable name: a lower-case letter, then up to 39 lower-case letters,
    /// digits or single `_` (it names the read model's PostgreSQL schema).
    fn name(&self) -> &str;

    /// The read model's version, from 1. Raising it builds the new version
    /// from position 0 beside the old one, which serves readers until the
    /// new one has caught up.
    fn version(&self) -> u32 {
        1
    }

    /// The events it wants, read through the store's filtered reads, so
    /// that the runner neither fetches nor decodes the others. By default
    /// the event types [`Event::event_types`] lists (all events when it
    /// lists none).
    fn filter(&self) -> LogFilter {
        let types = Self::Event::event_types();
        if types.is_empty() {
            LogFilter::all()
        } else {
            LogFilter::all().with_event_types(types.iter().copied())
        }
    }

    /// The upcasters applied before decoding; by default those
    /// [`Event::upcasters`] declares.
    fn upcasters(&self) -> Upcasters {
        Self::Event::upcasters()
    }
}

/// Why a name cannot name a projection, if it cannot.
pub fn name_problem(name: &str) -> Option<&'static str> {
    let mut chars = name.chars();
    match chars.next() {
        None => Some("a projection name must not be empty"),
        Some(c) if !c.is_ascii_lowercase() => {
            Some("a projection name must start with a lower-case ASCII letter")
        }
        _ if name.len() > 40 => Some("a projection name is at most 40 characters"),
        _ if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') => {
            Some("a projection name may hold only lower-case ASCII letters, digits and `_`")
        }
        // Build schemas are `{name}__g{generation}`.
        _ if name.contains("__") => Some("a projection name must not contain `__`"),
        _ => None,
    }
}

/// How a runner batches, retries and waits. The defaults suit a daemon;
/// tests shorten the times.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Events applied and committed together, at most (default 500).
    pub batch_size: usize,
    /// How long a runner that is caught up waits for a commit announcement
    /// before it reads the log again anyway (default 500 ms).
    pub max_wait: Duration,
    /// Tries of a failing event before the projection parks as `faulted`
    /// (default 5).
    pub max_attempts: u32,
    /// Pause after the first failure of an event, doubled after each
    /// further one (default 100 ms).
    pub retry_backoff: Duration,
    /// How long a runner's lease lasts without renewal (default 10 s). A
    /// runner renews it at every batch, every `lease / 3` while a batch
    /// runs and when idle; another daemon takes over a projection whose
    /// lease ran out.
    pub lease: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            batch_size: 500,
            max_wait: Duration::from_millis(500),
            max_attempts: 5,
            retry_backoff: Duration::from_millis(100),
            lease: Duration::from_secs(10),
        }
    }
}

impl RunnerOptions {
    /// The pause before try `attempt` (from 2) of a failing event.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(2).min(16);
        self.retry_backoff.saturating_mul(1 << doublings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(name_problem("content_catalog_2"), None);
        for bad in ["", "2x", "Upper", "with-dash", "é", "a__g1", &"x".repeat(41)] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
        assert_eq!(name_problem(&"x".repeat(40)), None);
    }

    #[test]
    fn backoff_doubles_from_the_second_try() {
        let o = RunnerOptions {
            retry_backoff: Duration::from_millis(10),
            ..RunnerOptions::default()
        };
        assert_eq!(o.backoff(2), Duration::from_millis(10));
        assert_eq!(o.backoff(3), Duration::from_millis(20));
        assert_eq!(o.backoff(5), Duration::from_millis(80));
    }
}
