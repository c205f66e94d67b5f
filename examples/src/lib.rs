//! strata's runnable examples: `cargo run --example bank` and
//! `cargo run --example content` (see each example's header). The crate
//! holds nothing else, and nothing depends on it.
