//! # strata-saga — not implemented yet
//!
//! This crate will hold the durable saga orchestrator: saga definitions
//! whose every transition is persisted before it is acted on, compensations
//! run in exact reverse order, stable idempotency keys for every action, and
//! a single executor per saga instance across processes.
//!
//! Today it contains no code and offers no API.
