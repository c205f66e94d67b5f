//! PostgreSQL event store (in progress).
