//! Benchmark programs for strata. `perf` (in `src/bin/perf.rs`) measures the
//! PostgreSQL event store beside a raw sqlx baseline doing the same database
//! work in the same run, and prints one JSON line per figure.
