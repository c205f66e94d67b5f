//! # strata-bus-kafka — not implemented yet
//!
//! This crate will hold the Kafka side of strata: a relay that tails the
//! PostgreSQL event log and publishes each event to Kafka (key = stream id),
//! moving its checkpoint only after the broker acknowledged, and consumers
//! with retries, a dead-letter topic and de-duplication by event id.
//!
//! Today it contains no code and offers no API. Until it lands, use the
//! in-memory bus in `strata_core::bus`.
