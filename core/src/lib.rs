//! # strata-core
//!
//! The heart of strata, an event-sourcing and CQRS framework: the traits
//! every other crate builds on, and an embedded in-memory engine.
//!
//! - [`Aggregate`]: pure `decide` (state + command → events or a domain
//!   error) and `apply` (state + event → state).
//! - [`Event`], [`NewEvent`], [`RecordedEvent`], [`Envelope`], [`Metadata`]:
//!   events, their envelope (UUID v7 id, stream, version, global position,
//!   type, schema version, recorded-at) and metadata (correlation,
//!   causation, W3C `traceparent`, tenant, headers).
//! - [`Upcasters`]: lift old stored events to the current schema on every
//!   read path.
//! - [`EventStore`]: append with an expected version, read streams and the
//!   global log, snapshots, subscriptions; see its contract.
//! - [`CommandHandler`]: load, decide, append, retry on conflict with
//!   back-off, de-duplicate by command id, propagate metadata; an optional
//!   aggregate cache ([`CacheOptions`], on by default) and a per-stream
//!   command line that batches the commands queued behind an append.
//! - [`InMemoryEventStore`] and [`InMemoryBus`]: the embedded default.
//!
//! It depends on no database, broker or async runtime: the in-memory engine
//! works on any executor.
//!
//! ## Quick start
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use strata_core::{Aggregate, CommandHandler, Event, InMemoryEventStore};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! enum CounterEvent { Added { n: u32 } }
//!
//! #[derive(Debug, Serialize, Deserialize, thiserror::Error)]
//! #[error("too many")]
//! struct TooMany;
//!
//! #[derive(Debug, Clone, Default, Serialize, Deserialize)]
//! struct Counter { total: u32 }
//!
//! impl Aggregate for Counter {
//!     const TYPE: &'static str = "counter";
//!     type Command = u32;
//!     type Event = CounterEvent;
//!     type Error = TooMany;
//!     fn decide(&self, n: &u32) -> Result<Vec<CounterEvent>, TooMany> {
//!         if self.total + n > 10 { return Err(TooMany) }
//!         Ok(vec![CounterEvent::Added { n: *n }])
//!     }
//!     fn apply(&mut self, CounterEvent::Added { n }: &CounterEvent) { self.total += n }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let handler = CommandHandler::<Counter, _>::new(InMemoryEventStore::new());
//! handler.execute("c1", 4).await?;
//! handler.execute("c1", 5).await?;
//! assert!(handler.execute("c1", 5).await.unwrap_err().domain().is_some());
//! let (counter, version) = handler.load("c1").await?;
//! assert_eq!((counter.total, version), (9, 2));
//!
//! // Ids and JSON values come re-exported: no `uuid` or `serde_json` in
//! // your manifest. A command id makes a command idempotent.
//! let ctx = strata_core::CommandContext::with_id(strata_core::Uuid::now_v7());
//! let first = handler.execute_with("c2", 1, ctx.clone()).await?;
//! let again = handler.execute_with("c2", 1, ctx).await?;
//! assert!(again.deduplicated && again.stream_version == first.stream_version);
//! assert_eq!(strata_core::json!({"n": 1}), first.events[0].event.encode()?);
//! # Ok(()) }
//! ```
//!
//! ## Feature flags
//!
//! - `derive` (default): `#[derive(Event)]`, see [`Event`](trait@Event).
//! - `testing`: the `testing` module: the store contract suite any
//!   [`EventStore`] can run, and the aggregate test kit (given / when /
//!   then, and proptest laws over random command sequences).

// `#[derive(Event)]` names `::strata_core`, also inside this crate.
extern crate self as strata_core;

pub mod aggregate;
pub mod bus;
pub mod command;
pub mod error;
pub mod event;
pub mod memory;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod upcast;

#[cfg(all(doctest, feature = "testing"))]
#[doc = include_str!("../../README.md")]
mod readme {}

pub use aggregate::Aggregate;
pub use bus::{BusConsumer, Delivery, InMemoryBus, MessageBus};
pub use command::{
    AsOf, CacheOptions, CacheStats, CommandContext, CommandError, CommandHandler, CommandHandlerOptions,
    CommandOutcome, Decided,
};
pub use error::{BoxError, Error, Result};
pub use event::{Envelope, Event, Metadata, NewEvent, RecordedEvent, StreamId};
pub use memory::InMemoryEventStore;
/// Re-exported, so that aggregates, upcasters and command contexts can name
/// ids and JSON values without their own dependency on these crates.
pub use serde_json::{self, Value, json};
pub use store::{
    AppendResult, EventStore, ExpectedVersion, FilteredSubscription, FoldEvent, FoldPayload, LogFilter,
    LogItem, LogPage, Snapshot, Subscription,
};
/// `#[derive(Event)]`: see [`Event`](trait@Event).
#[cfg(feature = "derive")]
pub use strata_macros::Event;
pub use upcast::Upcasters;
/// Re-exported: event and command ids are [`Uuid`]s.
pub use uuid::{self, Uuid};
