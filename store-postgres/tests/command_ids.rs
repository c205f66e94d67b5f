//! A command id names one outcome, across processes: two stores on one
//! database stand in for two processes.

use strata_core::error::BoxError;
use strata_core::testing::fixtures::bank::{BankAccount, BankCommand, BankError};
use strata_core::{CommandContext, CommandError, CommandHandler, EventStore, StreamId};
use strata_store_postgres::PgEventStore;
use strata_store_postgres::testing::fresh_database_url;
use uuid::Uuid;

async fn two_processes() -> Result<
    (
        CommandHandler<BankAccount, PgEventStore>,
        CommandHandler<BankAccount, PgEventStore>,
    ),
    BoxError,
> {
    let (url, _db) = fresh_database_url().await?;
    Ok((
        CommandHandler::new(PgEventStore::connect(&url).await?),
        CommandHandler::new(PgEventStore::connect(&url).await?),
    ))
}

/// Open account `w` for Ada.
async fn open(handler: &CommandHandler<BankAccount, PgEventStore>) -> Result<(), BoxError> {
    handler
        .execute("w", BankCommand::Open { owner: "ada".into() })
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_refusal_is_the_outcome_of_its_command_id_in_every_process() -> Result<(), BoxError> {
    let (one, two) = two_processes().await?;
    open(&one).await?;
    let ctx = CommandContext::with_id(Uuid::now_v7());
    let short = BankError::InsufficientFunds {
        balance: 0,
        requested: 5,
    };
    let err = one
        .execute_with("w", BankCommand::Withdraw { amount: 5 }, ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.domain(), Some(&short));
    two.execute("w", BankCommand::Deposit { amount: 10 }).await?;
    let err = two
        .execute_with("w", BankCommand::Withdraw { amount: 5 }, ctx)
        .await
        .unwrap_err();
    assert_eq!(
        err.domain(),
        Some(&short),
        "the first outcome, though 10 are there now"
    );
    assert_eq!(one.load("w").await?.0.balance, 10);
    Ok(())
}

#[tokio::test]
async fn an_accepted_command_id_returns_its_events_and_refuses_another_stream() -> Result<(), BoxError> {
    let (one, two) = two_processes().await?;
    open(&one).await?;
    let id = Uuid::now_v7();
    let first = one
        .execute_with(
            "w",
            BankCommand::Deposit { amount: 3 },
            CommandContext::with_id(id),
        )
        .await?;
    let again = two
        .execute_with(
            "w",
            BankCommand::Deposit { amount: 3 },
            CommandContext::with_id(id),
        )
        .await?;
    assert!(again.deduplicated);
    assert_eq!(again.stream_version, first.stream_version);
    assert_eq!(again.events[0].event, first.events[0].event);
    assert_eq!(again.events[0].event_id, first.events[0].event_id);
    let err = two
        .execute_with(
            "other",
            BankCommand::Deposit { amount: 3 },
            CommandContext::with_id(id),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::CommandIdReused { .. }), "{err:?}");
    assert_eq!(
        two.store()
            .stream_version(&StreamId::new("account-other")?)
            .await?,
        0,
        "nothing written for the other stream"
    );
    assert_eq!(one.load("w").await?.0.balance, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_of_one_id_from_two_processes_have_one_outcome() -> Result<(), BoxError> {
    for _ in 0..10 {
        let (one, two) = two_processes().await?;
        open(&one).await?;
        one.execute("w", BankCommand::Deposit { amount: 5 }).await?;
        let ctx = CommandContext::with_id(Uuid::now_v7());
        // Racing the same id with a deposit that flips its decision.
        let (a, b, _) = tokio::join!(
            one.execute_with("w", BankCommand::Withdraw { amount: 8 }, ctx.clone()),
            two.execute_with("w", BankCommand::Withdraw { amount: 8 }, ctx.clone()),
            two.execute("w", BankCommand::Deposit { amount: 5 }),
        );
        let outcome = |r: Result<_, CommandError<BankError>>| match r {
            Ok(o) => {
                let o: strata_core::CommandOutcome<_> = o;
                Ok(o.events.iter().map(|e| e.event_id).collect::<Vec<_>>())
            }
            Err(e) => Err(e.domain().cloned().ok_or_else(|| e.to_string())),
        };
        let (a, b) = (outcome(a), outcome(b));
        assert_eq!(a, b, "one id, one outcome");
        let (state, _) = one.load("w").await?;
        let taken = a.is_ok();
        assert_eq!(state.balance, if taken { 2 } else { 10 }, "taken at most once");
    }
    Ok(())
}
