//! The [`Aggregate`] trait: pure decisions and state transitions.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::event::Event;

/// A consistency boundary whose state is the fold of its events.
///
/// `decide` and `apply` are pure: no I/O, no clock, no randomness. That is
/// what makes an aggregate replayable and testable with the
/// test kit (module `testing`, feature `testing`).
///
/// The state must serialize with serde so it can be snapshotted; bump
/// [`SNAPSHOT_VERSION`](Aggregate::SNAPSHOT_VERSION) whenever its shape
/// changes, and stored snapshots of other versions are ignored (the state is
/// rebuilt from the events).
pub trait Aggregate:
    Default + Clone + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// Stable type name, the prefix of this aggregate's stream ids.
    const TYPE: &'static str;

    /// Schema version of the serialized state used in snapshots.
    const SNAPSHOT_VERSION: u32 = 1;

    /// The commands this aggregate decides on. They own their data
    /// (`'static`): a command may wait in its stream's line in the
    /// [`CommandHandler`](crate::CommandHandler) and be decided by another
    /// task's batch.
    type Command: fmt::Debug + Send + Sync + 'static;

    /// The events it emits and is built from.
    type Event: Event;

    /// Why a command is refused (a domain outcome, not a failure).
    ///
    /// It serializes because a refusal is an outcome too: a command
    /// submitted again under the same id gets the first refusal back, from
    /// the store, in any process.
    type Error: std::error::Error + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Decide what happens: the events a command produces from this state,
    /// or why it is refused.
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Evolve the state by one event. Must accept every event `decide` can
    /// produce, and must not fail: the event already happened.
    fn apply(&mut self, event: &Self::Event);

    /// Fold events into a fresh state.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self {
        let mut state = Self::default();
        for e in events {
            state.apply(e);
        }
        state
    }
}
