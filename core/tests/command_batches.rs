//! The command handler's per-stream line: commands for one stream wait
//! their turn, and those queued behind an append in flight are decided in
//! order and appended together, each keeping its own outcome.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use strata_core::store::{CommandDecision, EventStore};
use strata_core::testing::{DelayedAppends, Held};
use strata_core::{
    Aggregate, CommandContext, CommandError, CommandHandler, CommandHandlerOptions, CommandOutcome, Error,
    Event, InMemoryEventStore, StreamId, Upcasters, Uuid,
};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
enum NoteEvent {
    Added { text: String },
    Cleared,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Notes {
    texts: Vec<String>,
}

#[derive(Debug, Clone)]
enum NoteCommand {
    Add(String),
    /// Add unless there are `max` notes already.
    AddBelow(String, usize),
    Clear,
    /// A bug in the aggregate: deciding it panics.
    Panic,
}

#[derive(Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
enum NoteError {
    #[error("a note needs text")]
    Empty,
    #[error("{0} notes already")]
    Full(usize),
}

impl Aggregate for Notes {
    const TYPE: &'static str = "notes";
    type Command = NoteCommand;
    type Event = NoteEvent;
    type Error = NoteError;

    fn decide(&self, command: &NoteCommand) -> Result<Vec<NoteEvent>, NoteError> {
        let (text, max) = match command {
            NoteCommand::Clear => return Ok(vec![NoteEvent::Cleared]),
            NoteCommand::Panic => panic!("a bug in decide"),
            NoteCommand::Add(text) => (text, usize::MAX),
            NoteCommand::AddBelow(text, max) => (text, *max),
        };
        if text.is_empty() {
            return Err(NoteError::Empty);
        }
        if self.texts.len() >= max {
            return Err(NoteError::Full(self.texts.len()));
        }
        Ok(vec![NoteEvent::Added { text: text.clone() }])
    }

    fn apply(&mut self, event: &NoteEvent) {
        match event {
            NoteEvent::Added { text } => self.texts.push(text.clone()),
            NoteEvent::Cleared => self.texts.clear(),
        }
    }
}

type Store = DelayedAppends<InMemoryEventStore>;
type Handler = CommandHandler<Notes, Store>;
type Reply = Result<CommandOutcome<NoteEvent>, CommandError<NoteError>>;
type TestResult = Result<(), Box<dyn std::error::Error>>;

fn store() -> Store {
    DelayedAppends::new(InMemoryEventStore::new(), Duration::ZERO)
}

fn handler(store: Store) -> Handler {
    Handler::with_options(store, Upcasters::new(), CommandHandlerOptions::default())
}

fn add(text: &str) -> NoteCommand {
    NoteCommand::Add(text.to_owned())
}

/// A command submitted and polled once, so it has joined its stream's
/// line, then left to run on its own task.
async fn submit(handler: &Handler, command: NoteCommand, id: Option<Uuid>) -> tokio::task::JoinHandle<Reply> {
    let handler = handler.clone();
    let mut run: Pin<Box<dyn Future<Output = Reply> + Send>> = Box::pin(async move {
        let ctx = CommandContext {
            command_id: id,
            ..CommandContext::default()
        };
        handler.execute_with("n", command, ctx).await
    });
    assert!(
        futures_util::poll!(run.as_mut()).is_pending(),
        "the command must wait its turn"
    );
    tokio::spawn(run)
}

async fn replies(tasks: Vec<tokio::task::JoinHandle<Reply>>) -> Vec<Reply> {
    join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task ran"))
        .collect()
}

/// A handler on `store` whose first command, `a`, is submitted and held
/// in its append: the commands submitted next queue behind it.
async fn behind_a_held_append(store: &Store) -> (Handler, Held, tokio::task::JoinHandle<Reply>) {
    let handler = handler(store.clone());
    let held = store.hold_next();
    let first = submit(&handler, add("a"), None).await;
    held.entered().await;
    (handler, held, first)
}

/// The texts of the stream's events in order (`(cleared)` for a clear),
/// checking that versions run 1, 2, 3, ...
async fn stored(store: &Store) -> Result<Vec<String>, Error> {
    let events = store
        .inner()
        .read_stream(&StreamId::new("notes-n")?, 1, 100_000)
        .await?;
    let mut texts = Vec::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.stream_version, i as u64 + 1, "versions are contiguous");
        texts.push(e.payload["text"].as_str().unwrap_or("(cleared)").to_owned());
    }
    Ok(texts)
}

fn version(reply: &Reply) -> u64 {
    match reply {
        Ok(outcome) => outcome.stream_version,
        Err(e) => panic!("expected an outcome, got {e:?}"),
    }
}

#[tokio::test]
async fn commands_queued_behind_an_append_are_appended_together_and_a_refusal_spares_the_others() -> TestResult
{
    let store = store();
    let (handler, held, first) = behind_a_held_append(&store).await;
    let (refused_id, c_id) = (Uuid::now_v7(), Uuid::now_v7());
    let queued = vec![
        submit(&handler, add("b"), None).await,
        submit(&handler, add(""), Some(refused_id)).await,
        submit(&handler, add("c"), Some(c_id)).await,
    ];
    held.release();
    assert_eq!(version(&first.await?), 1);
    let queued = replies(queued).await;
    assert_eq!(version(&queued[0]), 2);
    assert!(
        matches!(&queued[1], Err(CommandError::Domain(NoteError::Empty))),
        "{:?}",
        queued[1]
    );
    assert_eq!(version(&queued[2]), 3);
    assert_eq!(store.appends(), 2, "the three queued commands go in one append");
    assert_eq!(stored(&store).await?, ["a", "b", "c"]);
    // Each keeps its own outcome, record and metadata.
    let c = queued[2].as_ref().map_err(|e| e.to_string())?;
    assert_eq!(c.events.len(), 1);
    assert_eq!(c.events[0].stream_version, 3);
    assert_eq!(c.events[0].metadata.causation_id, Some(c_id));
    let record = store
        .inner()
        .read_command(refused_id)
        .await?
        .expect("refusal recorded");
    assert!(matches!(
        record.decision,
        CommandDecision::Refused { version: 2, .. }
    ));
    let record = store.inner().read_command(c_id).await?.expect("outcome recorded");
    assert_eq!(
        record.decision,
        CommandDecision::Appended {
            first_version: 3,
            last_version: 3
        }
    );
    assert!(queued.iter().flatten().all(|o| o.retries == 0));
    Ok(())
}

#[tokio::test]
async fn a_batch_whose_append_conflicts_is_decided_again_as_a_whole() -> TestResult {
    let store = store();
    let handler = handler(store.clone());
    // Another process, writing to the same store around this handler's holds.
    let other = CommandHandler::<Notes, _>::new(store.inner().clone());
    other.execute("n", add("x")).await?;
    let (held, held_again) = (store.hold_next(), store.hold_next());
    let first = submit(&handler, add("a"), None).await;
    held.entered().await;
    let queued = vec![
        submit(&handler, NoteCommand::AddBelow("b".into(), 4), None).await,
        // Refused on the state the batch first sees (three notes).
        submit(&handler, NoteCommand::AddBelow("c".into(), 3), None).await,
        submit(&handler, add("d"), None).await,
    ];
    held.release();
    assert_eq!(version(&first.await?), 2);
    held_again.entered().await;
    other.execute("n", NoteCommand::Clear).await?;
    held_again.release();
    let queued = replies(queued).await;
    // Decided again on the cleared list, all three pass.
    assert_eq!(queued.iter().map(version).collect::<Vec<_>>(), [4, 5, 6]);
    assert!(queued.iter().flatten().all(|o| o.retries == 1), "{queued:?}");
    assert_eq!(store.appends(), 3);
    assert_eq!(stored(&store).await?, ["x", "a", "(cleared)", "b", "c", "d"]);
    assert_eq!(handler.load("n").await?.0.texts, ["b", "c", "d"]);
    Ok(())
}

#[tokio::test]
async fn a_command_id_repeated_in_a_batch_gets_the_first_outcome() -> TestResult {
    let store = store();
    let (x, y) = (Uuid::now_v7(), Uuid::now_v7());
    let (handler, held, first) = behind_a_held_append(&store).await;
    let queued = vec![
        submit(&handler, add("b"), Some(x)).await,
        submit(&handler, add("not stored"), Some(x)).await,
        submit(&handler, add(""), Some(y)).await,
        submit(&handler, add("not stored either"), Some(y)).await,
        submit(&handler, add("f"), None).await,
    ];
    held.release();
    first.await??;
    let queued = replies(queued).await;
    let (b, b_again) = (queued[0].as_ref().unwrap(), queued[1].as_ref().unwrap());
    assert!(!b.deduplicated && b_again.deduplicated);
    assert_eq!(b_again.stream_version, b.stream_version);
    assert_eq!(b_again.events[0].event_id, b.events[0].event_id);
    assert!(matches!(queued[2], Err(CommandError::Domain(NoteError::Empty))));
    assert!(matches!(queued[3], Err(CommandError::Domain(NoteError::Empty))));
    assert_eq!(stored(&store).await?, ["a", "b", "f"]);
    // And later, from another handler: the same first outcome.
    let later = CommandHandler::<Notes, _>::new(store.clone())
        .execute_with("n", add("late"), CommandContext::with_id(x))
        .await?;
    assert!(later.deduplicated);
    assert_eq!(later.stream_version, b.stream_version);
    Ok(())
}

#[tokio::test]
async fn an_event_the_store_refuses_fails_its_command_alone() -> TestResult {
    let store = DelayedAppends::new(InMemoryEventStore::with_max_event_size(1000), Duration::ZERO);
    let (handler, held, first) = behind_a_held_append(&store).await;
    let queued = vec![
        submit(&handler, add("b"), None).await,
        submit(&handler, add(&"x".repeat(5000)), None).await,
        submit(&handler, add("d"), None).await,
    ];
    held.release();
    first.await??;
    let queued = replies(queued).await;
    assert_eq!(version(&queued[0]), 2);
    assert!(
        matches!(queued[1], Err(CommandError::Store(Error::PayloadTooLarge { .. }))),
        "{:?}",
        queued[1]
    );
    assert_eq!(version(&queued[2]), 3);
    assert_eq!(stored(&store).await?, ["a", "b", "d"]);
    Ok(())
}

#[tokio::test]
async fn a_caller_that_gives_up_does_not_strand_the_commands_behind_it() -> TestResult {
    let store = store();
    let (handler, held, abandoned) = behind_a_held_append(&store).await;
    let behind = submit(&handler, add("b"), None).await;
    abandoned.abort();
    assert!(abandoned.await.is_err_and(|e| e.is_cancelled()));
    held.release();
    // The batch behind drives the abandoned one to its end first.
    assert_eq!(version(&behind.await?), 2);
    assert_eq!(stored(&store).await?, ["a", "b"]);
    assert_eq!(version(&handler.execute("n", add("c")).await), 3);
    Ok(())
}

#[tokio::test]
async fn a_panic_in_the_aggregate_fails_its_batch_and_the_line_goes_on() -> TestResult {
    let store = store();
    let (handler, held, first) = behind_a_held_append(&store).await;
    let queued = vec![
        submit(&handler, add("b"), None).await,
        submit(&handler, NoteCommand::Panic, None).await,
    ];
    held.release();
    assert_eq!(version(&first.await?), 1);
    for reply in replies(queued).await {
        let message = reply.map(|_| ()).unwrap_err().to_string();
        assert!(message.contains("a bug in decide"), "{message}");
    }
    // The stream's line is not poisoned: the next command goes through.
    assert_eq!(version(&handler.execute("n", add("c")).await), 2);
    assert_eq!(stored(&store).await?, ["a", "c"]);
    Ok(())
}

#[tokio::test]
async fn a_batch_whose_callers_all_gave_up_is_finished_all_the_same() -> TestResult {
    let store = store();
    let (_handler, held, abandoned) = behind_a_held_append(&store).await;
    abandoned.abort();
    assert!(abandoned.await.is_err_and(|e| e.is_cancelled()));
    // Nothing comes behind it: the batch goes on on a task of its own.
    held.release();
    tokio::time::timeout(Duration::from_secs(10), async {
        while stored(&store).await.ok().map(|t| t.len()) != Some(1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    assert_eq!(stored(&store).await?, ["a"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_writers_on_one_stream_all_succeed_with_default_options() -> TestResult {
    let store = DelayedAppends::new(InMemoryEventStore::new(), Duration::from_micros(200));
    let handler = handler(store.clone());
    let writers: Vec<_> = (0..64)
        .map(|w| {
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut retries = 0;
                for i in 0..100 {
                    retries += handler.execute("n", add(&format!("{w}-{i}"))).await?.retries;
                }
                Ok::<_, CommandError<NoteError>>(retries)
            })
        })
        .collect();
    for w in writers {
        assert_eq!(w.await??, 0, "commands within one handler never conflict");
    }
    let texts = stored(&store).await?;
    assert_eq!(texts.len(), 6400);
    assert!(store.appends() < 6400, "queued commands were batched");
    // Each writer's commands landed in the order it sent them.
    for w in 0..64 {
        let mine: Vec<_> = texts.iter().filter(|t| t.starts_with(&format!("{w}-"))).collect();
        let expected: Vec<_> = (0..100).map(|i| format!("{w}-{i}")).collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>());
    }
    Ok(())
}
