//! Shared code of the strata examples (the examples themselves live beside this crate).
