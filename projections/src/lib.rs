//! # strata-projections — not implemented yet
//!
//! This crate will hold read-model projections that commit their checkpoint
//! in the same PostgreSQL transaction as their update (exactly-once in
//! effect), the projection daemon, rebuilds and replays, and parking of a
//! failing projection with the offending event id.
//!
//! Today it contains no code and offers no API.
