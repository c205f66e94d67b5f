//! strata's runnable examples: `cargo run --example bank`. The crate holds
//! nothing else, and nothing depends on it.
