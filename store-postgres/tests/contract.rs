//! The core store contract suite, against PostgreSQL.

use strata_core::error::BoxError;
use strata_core::{Error, testing::contract};
use strata_store_postgres::testing::fresh_database_with;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_event_store_honours_the_store_contract() -> Result<(), BoxError> {
    contract::run_all(|| async {
        let (store, _db) = fresh_database_with(|o| o.poll_interval(std::time::Duration::from_millis(100)))
            .await
            .map_err(Error::Backend)?;
        Ok(store)
    })
    .await?;
    Ok(())
}
