//! The store contract suite against the in-memory store.

use strata_core::InMemoryEventStore;

#[tokio::test]
async fn in_memory_store_honours_the_contract() -> strata_core::Result<()> {
    strata_core::testing::contract::run_all(|| async { Ok(InMemoryEventStore::new()) }).await
}
