//! Shared code of the strata examples: the bank-account aggregate used by
//! `cargo run --example bank` and by the core test kit's tests.

pub mod bank;
