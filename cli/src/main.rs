//! `strata` (crate `strata-cli`): operator commands for a strata PostgreSQL
//! event store. Install it with `cargo install --path cli`, or run it in
//! the workspace with `cargo run -p strata-cli -- ...`.
//!
//! ```text
//! strata migrate --database-url URL [--connect-timeout SECS]
//! strata events stream --stream ID [--from-version N] [--to-version N] [--as-of TIME]
//! strata events tail [--from-position N] [--follow]
//! strata events horizon [--json]
//! strata projections list
//! strata projections status [NAME] [--json]
//! strata projections pause NAME
//! strata projections resume NAME
//! strata projections reset NAME
//! strata projections rebuild NAME
//! strata projections skip NAME --event ID
//! ```
//!
//! Events are printed as JSON lines, one `RecordedEvent` per line; the URL
//! may also come from `DATABASE_URL`. `events stream --to-version N
//! --as-of TIME` prints the events that built the stream's state at that
//! point: up to version `N`, and up to the first event recorded after
//! `TIME` (RFC 3339, such as `2026-11-26T14:00:00Z`).
//!
//! `projections` commands read and write the projections' stored state
//! (`strata.projections`); they need no daemon. `status` prints one row
//! per build (`--json`: an array of `ProjectionStatus`); `pause`, `resume`,
//! `reset`, `rebuild` and `skip` store a request, which the daemon holding
//! the build's lease obeys at its next batch.
//!
//! Errors, wrong arguments included, go to standard error, one line each,
//! and make the exit status 1. A missing subcommand shows the help.

use std::error::Error as StdError;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use futures_util::StreamExt;
use strata_core::error::Preview;
use strata_core::{Error, EventStore, RecordedEvent, StreamId};
use strata_store_postgres::PgEventStoreOptions;

mod projections;

use projections::Projections;

/// Operator commands for a strata PostgreSQL event store.
#[derive(Debug, Parser)]
#[command(name = "strata", version)]
struct Cli {
    /// PostgreSQL URL of the event store's database.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// Seconds to wait for a database connection before giving up.
    #[arg(long, global = true, default_value_t = 10, value_name = "SECS")]
    connect_timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or upgrade the `strata` schema.
    Migrate,
    /// Read events.
    #[command(subcommand)]
    Events(Events),
    /// Inspect and control projections (read models).
    #[command(subcommand)]
    Projections(Projections),
}

#[derive(Debug, Subcommand)]
enum Events {
    /// Print the events of one stream, in version order.
    Stream {
        /// The stream id.
        #[arg(long)]
        stream: String,
        /// First version to print.
        #[arg(long, default_value_t = 1)]
        from_version: u64,
        /// Last version to print: the stream's state at this version.
        #[arg(long, value_name = "N")]
        to_version: Option<u64>,
        /// Print only the events recorded at or before this time (RFC 3339),
        /// stopping at the first one recorded after it: the stream's state
        /// at that time.
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        as_of: Option<DateTime<Utc>>,
    },
    /// Print the global log after a position, in log order.
    Tail {
        /// Print events with a position above this one.
        #[arg(long, default_value_t = 0)]
        from_position: u64,
        /// Keep following new events instead of stopping at the end.
        #[arg(long)]
        follow: bool,
    },
    /// Say how much of the global log is held back, and by which transaction.
    Horizon {
        /// Print the figures as one JSON object instead of a sentence.
        #[arg(long)]
        json: bool,
    },
}

const PAGE: usize = 500;

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e}: expected an RFC 3339 time such as 2026-11-26T14:00:00Z"))
}

type BoxError = Box<dyn StdError + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse().and_then(checked_args) {
        Ok(cli) => cli,
        // Help and version, and the help shown for a missing subcommand.
        Err(e) if !e.use_stderr() || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            e.exit()
        }
        Err(e) => {
            eprintln!("{}", one_line(&e.render().to_string()));
            return ExitCode::FAILURE;
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            // strata's errors say everything in their message; a source
            // adds to it only where it says something new.
            let mut message = format!("error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                let text = s.to_string();
                if !message.contains(&text) {
                    message.push_str(&format!(": {text}"));
                }
                source = s.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// The checks clap cannot make alone.
fn checked_args(cli: Cli) -> Result<Cli, clap::Error> {
    if let Command::Events(Events::Stream {
        from_version,
        to_version: Some(to),
        ..
    }) = &cli.command
        && to < from_version
    {
        return Err(Cli::command().error(
            ErrorKind::ArgumentConflict,
            format!("--to-version {to} is below --from-version {from_version}"),
        ));
    }
    Ok(cli)
}

/// A clap error in one line: its first paragraph (without the usage and
/// the tips that follow).
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_broken_pipe(e: &(dyn StdError + 'static)) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    let url = cli
        .database_url
        .ok_or("no database url: pass --database-url or set DATABASE_URL")?;
    let store = PgEventStoreOptions::new(url)
        .acquire_timeout(Duration::from_secs(cli.connect_timeout))
        .connect()
        .await?;
    let mut out = io::stdout().lock();
    match cli.command {
        Command::Migrate => {
            store.migrate().await?;
            eprintln!("migrations applied");
        }
        Command::Events(Events::Stream {
            stream,
            from_version,
            to_version,
            as_of,
        }) => {
            let stream = StreamId::new(stream)?;
            let mut next = from_version.max(1);
            let last = to_version.unwrap_or(u64::MAX);
            let mut printed = 0;
            'pages: while next <= last {
                let wanted = usize::try_from(last - next + 1).map_or(PAGE, |left| left.min(PAGE));
                let page = store.read_stream(&stream, next, wanted).await?;
                for e in &page {
                    if as_of.is_some_and(|t| e.recorded_at > t) {
                        break 'pages;
                    }
                    print_event(&mut out, e)?;
                    next = e.stream_version + 1;
                    printed += 1;
                }
                if page.len() < wanted {
                    break;
                }
            }
            if printed == 0 {
                let shown = Preview(stream.as_str());
                match store.stream_version(&stream).await? {
                    0 => return Err(format!("stream `{shown}` does not exist").into()),
                    version if version < from_version.max(1) => {
                        eprintln!(
                            "stream `{shown}` ends at version {version}: nothing from version {from_version}"
                        )
                    }
                    _ => {
                        if let Some(t) = as_of {
                            eprintln!(
                                "stream `{shown}` has no event from version {from_version} recorded at or before {}",
                                t.to_rfc3339()
                            )
                        }
                    }
                }
            }
        }
        Command::Events(Events::Tail {
            from_position,
            follow: false,
        }) => {
            let mut after = from_position;
            let mut skipped = 0;
            loop {
                let page = match store.read_all(after, PAGE).await {
                    Ok(page) => page,
                    Err(e) => match &e {
                        Error::UndecodableEvent { global_position, .. } => {
                            eprintln!("warning: skipped: {e}");
                            after = *global_position;
                            skipped += 1;
                            continue;
                        }
                        _ => return Err(e.into()),
                    },
                };
                // A page can end early (before an undecodable event, or at
                // the horizon): only an empty one is the end.
                if page.is_empty() {
                    break;
                }
                for e in &page {
                    print_event(&mut out, e)?;
                    after = e.global_position;
                }
            }
            if skipped > 0 {
                out.flush()?;
                return Err(format!("{skipped} undecodable events skipped (see the warnings above)").into());
            }
        }
        Command::Events(Events::Tail {
            from_position,
            follow: true,
        }) => {
            let mut feed = store.subscribe(from_position);
            while let Some(item) = feed.next().await {
                match item {
                    Ok(e) => {
                        print_event(&mut out, &e)?;
                        out.flush()?;
                    }
                    // It stands in for its event; the feed goes on after it.
                    Err(e @ Error::UndecodableEvent { .. }) => eprintln!("warning: skipped: {e}"),
                    // The feed reads again from the last event it delivered,
                    // after a pause that grows while failures go on.
                    Err(e) => eprintln!("warning: {e}; retrying"),
                }
            }
        }
        Command::Projections(command) => projections::run(store.pool(), command, &mut out).await?,
        Command::Events(Events::Horizon { json }) => {
            let horizon = store.horizon().await?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&horizon)?)?;
            } else {
                writeln!(out, "{horizon}")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn print_event(out: &mut impl Write, e: &RecordedEvent) -> Result<(), BoxError> {
    writeln!(out, "{}", serde_json::to_string(e)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_become_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  --event <ID>\n\nUsage: strata projections skip --event <ID> <NAME>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(rendered),
            "error: the following required arguments were not provided: --event <ID>"
        );
    }
}
