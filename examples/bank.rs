//! A bank account on strata's embedded in-memory store.
//!
//! Run it with `cargo run --example bank`: it opens an account, deposits,
//! withdraws, attempts an overdraft (a domain error), lets two concurrent
//! writers collide and resolve the conflict by retry, and prints the events
//! and the final state. No server is needed.

use std::time::Duration;

use strata_core::testing::DelayedAppends;
use strata_core::testing::fixtures::bank::{self, BankAccount, BankCommand, BankError, BankEvent};
use strata_core::{
    CommandError, CommandHandler, CommandHandlerOptions, EventStore, InMemoryEventStore, StreamId,
};

type Handler = CommandHandler<BankAccount, DelayedAppends<InMemoryEventStore>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The delay before each append stands in for a network hop; it widens
    // the window in which two writers can load the same version.
    let store = DelayedAppends::new(InMemoryEventStore::new(), Duration::from_millis(5));
    let options = CommandHandlerOptions {
        snapshot_every: Some(10),
        ..CommandHandlerOptions::default()
    };
    let handler = Handler::with_options(store.clone(), bank::upcasters(), options);
    let id = "acc-1";

    println!("strata bank example (embedded in-memory store)\n");
    run(&handler, id, BankCommand::Open { owner: "Ada".into() }).await?;
    run(&handler, id, BankCommand::Deposit { amount: 10_000 }).await?;
    run(&handler, id, BankCommand::Withdraw { amount: 2_500 }).await?;

    match handler
        .execute(id, BankCommand::Withdraw { amount: 100_000 })
        .await
    {
        Err(CommandError::Domain(e @ BankError::InsufficientFunds { .. })) => {
            println!("withdraw 100000 refused: {e} (nothing appended)");
        }
        other => return Err(format!("the overdraft should have been refused: {other:?}").into()),
    }

    // Commands sent through one handler wait their turn and never collide;
    // a second handler on the same store stands in for another process.
    println!("\ntwo processes deposit 100 five times each, at the same time:");
    let other = Handler::with_options(store.clone(), bank::upcasters(), CommandHandlerOptions::default());
    let writer = |name: &'static str, handler: &Handler| {
        let handler = handler.clone();
        tokio::spawn(async move {
            let mut retries = 0;
            for _ in 0..5 {
                let outcome = handler.execute(id, BankCommand::Deposit { amount: 100 }).await?;
                retries += outcome.retries;
            }
            println!("  writer {name}: 5 deposits accepted after {retries} conflict retries");
            Ok::<_, CommandError<BankError>>(retries)
        })
    };
    let (a, b) = (writer("A", &handler), writer("B", &other));
    let retries = a.await?? + b.await??;
    println!("  conflicts resolved: {retries} retries in all, no deposit lost or doubled");

    let stream = StreamId::for_aggregate(<BankAccount as strata_core::Aggregate>::TYPE, id)?;
    let upcasters = bank::upcasters();
    println!("\nevents of stream `{stream}`:");
    for recorded in store.read_stream_to_end(&stream, 1, 100).await? {
        // Decoding upcasts: a v1 `Deposited` would come out as v2 here.
        let envelope = recorded.decode::<BankEvent>(&upcasters)?;
        println!(
            "  v{:<2} pos {:<3} {:<10} {}",
            envelope.stream_version, recorded.global_position, envelope.event_type, recorded.payload
        );
    }

    let (account, version) = handler.load(id).await?;
    println!(
        "\nfinal state at version {version}: owner {}, open {}, balance {}",
        account.owner.as_deref().unwrap_or("-"),
        account.open,
        account.balance
    );
    assert_eq!(account.balance, 10_000 - 2_500 + 10 * 100);
    Ok(())
}

async fn run(handler: &Handler, id: &str, command: BankCommand) -> Result<(), CommandError<BankError>> {
    let label = format!("{command:?}");
    let outcome = handler.execute(id, command).await?;
    println!("{label:<32} -> stream version {}", outcome.stream_version);
    Ok(())
}
