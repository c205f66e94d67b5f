//! Benchmark programs for strata; see the binaries in `src/bin`.
