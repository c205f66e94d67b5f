//! Content of an education platform, with a CQRS read model.
//!
//! - `cargo run --example content`: on the embedded in-memory store and
//!   projection runner, no server needed. It runs a handful of commands
//!   (upload, process, publish, and a few refused ones), waits for the
//!   read model to pass the last append (read your writes) and prints the
//!   answers to some queries.
//! - `cargo run --example content -- --database-url URL`: the same against
//!   PostgreSQL: the read model is the `content` table of a `PgProjection`,
//!   applied by a `PgDaemon` in a task of this process, and the queries
//!   are SQL over the readers' view, `content.content`.
//! - `cargo run --example content -- --database-url URL --daemon
//!   [--metrics-addr 127.0.0.1:9187]`: only the projection daemon, until
//!   SIGTERM or ctrl-c (it finishes the batch in flight, then stops);
//!   start two for fail-over. With `--metrics-addr` it serves its metrics
//!   at `http://ADDR/metrics` in the Prometheus text format.
//!
//! Commands carry ids derived from their names, so a second run against
//! the same database changes nothing: each command returns its first
//! outcome, a refusal included.

mod catalog;
mod domain;

use std::net::SocketAddr;
use std::time::Duration;

use strata_core::error::BoxError;
use strata_core::{CommandContext, CommandError, CommandHandler, EventStore, InMemoryEventStore, Uuid};
use strata_projections::memory::MemoryDaemon;
use strata_projections::postgres::{self, PgDaemon};
use strata_store_postgres::PgEventStore;
use tokio::sync::oneshot;

use catalog::{ContentCatalog, Query, query_pg};
use domain::{Content, ContentCommand, ContentType, Status};

const USAGE: &str = "usage: content [--database-url URL [--daemon [--metrics-addr ADDR]]]";

/// What the command line asks for.
#[derive(Debug, Default)]
struct Args {
    database_url: Option<String>,
    daemon: bool,
    metrics_addr: Option<SocketAddr>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--database-url" => {
                parsed.database_url = Some(args.next().ok_or("--database-url needs a URL")?);
            }
            "--daemon" => parsed.daemon = true,
            "--metrics-addr" => {
                let addr = args.next().ok_or("--metrics-addr needs an address")?;
                let addr = addr
                    .parse()
                    .map_err(|e| format!("--metrics-addr `{addr}` is not a socket address: {e}"))?;
                parsed.metrics_addr = Some(addr);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    if parsed.daemon && parsed.database_url.is_none() {
        return Err("--daemon needs --database-url".to_owned());
    }
    if parsed.metrics_addr.is_some() && !parsed.daemon {
        return Err("--metrics-addr goes with --daemon".to_owned());
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(problem) => {
            if problem.is_empty() {
                println!("{USAGE}");
                return Ok(());
            }
            eprintln!("content: {problem}\n{USAGE}");
            std::process::exit(2);
        }
    };
    match (&args.database_url, args.daemon) {
        (None, _) => run_in_memory().await,
        (Some(url), false) => run_on_postgres(url).await,
        (Some(url), true) => run_daemon(url, args.metrics_addr).await,
    }
}

/// The commands the example runs: (content id, command).
fn script() -> Vec<(&'static str, ContentCommand)> {
    use ContentCommand::*;
    let upload = |title: &str, kind| Upload {
        title: title.to_owned(),
        kind,
    };
    vec![
        ("rust-intro", upload("Intro to Rust", ContentType::Video)),
        ("rust-quiz", upload("Rust Ownership Quiz", ContentType::Quiz)),
        (
            "es-article",
            upload("Event Sourcing in Practice", ContentType::Article),
        ),
        ("async-rust", upload("Async rust in depth", ContentType::Video)),
        ("sql-basics", upload("SQL Basics", ContentType::Video)),
        ("rust-intro", StartProcessing),
        ("rust-intro", CompleteProcessing),
        ("rust-intro", Publish),
        ("rust-quiz", StartProcessing),
        ("rust-quiz", CompleteProcessing),
        ("rust-quiz", Publish),
        // Refused: not processed yet.
        ("es-article", Publish),
        ("es-article", StartProcessing),
        ("async-rust", StartProcessing),
        (
            "async-rust",
            FailProcessing {
                reason: "transcoding failed".to_owned(),
            },
        ),
        ("sql-basics", StartProcessing),
        ("sql-basics", CompleteProcessing),
        ("sql-basics", Publish),
        // Refused: already published.
        ("sql-basics", Publish),
        // Refused: never uploaded.
        ("nothing", StartProcessing),
    ]
}

/// The queries the example answers.
fn queries() -> Vec<Query> {
    vec![
        Query {
            title: Some("rust".to_owned()),
            ..Query::default()
        },
        Query {
            kind: Some(ContentType::Video),
            status: Some(Status::Published),
            ..Query::default()
        },
        Query {
            title: Some("RUST".to_owned()),
            status: Some(Status::Published),
            ..Query::default()
        },
        Query {
            status: Some(Status::Failed),
            ..Query::default()
        },
        Query {
            kind: Some(ContentType::Article),
            ..Query::default()
        },
    ]
}

/// Run the script; the highest global position it appended (or found
/// appended by an earlier run), for read-your-writes.
async fn run_commands<S: EventStore + Clone>(handler: &CommandHandler<Content, S>) -> Result<u64, BoxError> {
    let mut last = 0;
    for (step, (id, command)) in script().into_iter().enumerate() {
        let label = format!("{id} {command:?}");
        // An id per step: running the script again changes nothing.
        let command_id = Uuid::new_v5(
            &Uuid::NAMESPACE_URL,
            format!("strata:content-example:{step}").as_bytes(),
        );
        match handler
            .execute_with(id, command, CommandContext::with_id(command_id))
            .await
        {
            Ok(outcome) => {
                let positions = outcome.events.iter().filter_map(|e| e.global_position);
                last = positions.fold(last, u64::max);
                println!("{label:<72} -> version {}", outcome.stream_version);
            }
            Err(CommandError::Domain(refusal)) => println!("{label:<72} -> refused: {refusal}"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(last)
}

fn print_rows(query: &Query, rows: &[catalog::ContentRow]) {
    println!("\n{query}:");
    if rows.is_empty() {
        println!("  (none)");
    }
    for row in rows {
        println!("  {row}");
    }
}

const READ_YOUR_WRITES: Duration = Duration::from_secs(30);

async fn run_in_memory() -> Result<(), BoxError> {
    println!("strata content example (embedded in-memory store and read model)\n");
    let store = InMemoryEventStore::new();
    let mut daemon = MemoryDaemon::new(store.clone());
    let catalog = daemon.register(ContentCatalog)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let daemon = tokio::spawn(daemon.run(async {
        let _ = stopped.await;
    }));

    let handler = CommandHandler::<Content, _>::new(store);
    let last = run_commands(&handler).await?;
    catalog.wait_for(last, READ_YOUR_WRITES).await?;
    println!(
        "\nread model at position {} (the last append was {last})",
        catalog.snapshot().position
    );
    for query in queries() {
        print_rows(&query, &catalog.read(|c| c.query(&query)));
    }

    stop.send(()).ok();
    daemon.await??;
    Ok(())
}

async fn connect(url: &str) -> Result<PgEventStore, BoxError> {
    let store = PgEventStore::connect(url).await?;
    store.migrate().await?;
    Ok(store)
}

async fn run_on_postgres(url: &str) -> Result<(), BoxError> {
    println!("strata content example (PostgreSQL store and read model)\n");
    let store = connect(url).await?;
    let daemon = PgDaemon::new(store.clone()).register(ContentCatalog)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let daemon = tokio::spawn(daemon.run(async {
        let _ = stopped.await;
    }));

    let handler = CommandHandler::<Content, _>::new(store.clone());
    let last = run_commands(&handler).await?;
    // Another daemon (`--daemon`) may hold the projection's lease: whoever
    // applies it, the readers' view passes the last append.
    postgres::wait_for(store.pool(), "content", last, READ_YOUR_WRITES).await?;
    println!("\nread model has passed the last append");
    for query in queries() {
        print_rows(&query, &query_pg(store.pool(), &query).await?);
    }

    stop.send(()).ok();
    daemon.await??;
    Ok(())
}

async fn run_daemon(url: &str, metrics_addr: Option<SocketAddr>) -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .init();
    if let Some(addr) = metrics_addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()?;
    }
    let store = connect(url).await?;
    let daemon = PgDaemon::new(store).register(ContentCatalog)?;
    let owner = daemon.owner().to_owned();
    match metrics_addr {
        Some(addr) => println!("daemon {owner} running; metrics at http://{addr}/metrics"),
        None => println!("daemon {owner} running"),
    }
    daemon.run(shutdown_signal()).await?;
    println!("daemon {owner} stopped");
    Ok(())
}

/// Completes on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                eprintln!("content: cannot listen for SIGTERM ({e}); stop with ctrl-c");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
