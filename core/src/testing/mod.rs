//! Test support (feature `testing`).
//!
//! - [`contract`]: the store contract suite, for any [`EventStore`](crate::EventStore).
//! - [`AggregateTest`]: given events / when command / then events or error.
//! - [`Laws`]: property tests over random command sequences, checking that
//!   replay rebuilds the same state, events survive a JSON round trip (and
//!   upcasting from older versions), snapshot + tail equals full replay, and
//!   user invariants hold after every step; failures shrink to a minimal
//!   command sequence.
//! - [`DelayedAppends`]: a store wrapper that makes concurrent writers collide.
//! - [`fixtures`]: sample aggregates (a bank account, a counter) shared by
//!   tests, benchmarks and examples.

pub mod contract;
mod delay;
pub mod fixtures;
mod kit;
mod laws;

pub use delay::{DelayedAppends, Held};
pub use kit::{AggregateTest, Then};
pub use laws::{DEFAULT_MIN_ACCEPTANCE, LawViolation, Laws, LawsReport};
pub use proptest;
