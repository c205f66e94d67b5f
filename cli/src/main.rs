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
use strata_core::{Error, EventStore, RecordedEvent, StreamId, Uuid};
use strata_projections::postgres::{self as projections, ProjectionStatus};
use strata_projections::{ProjectionError, name_problem};
use strata_store_postgres::PgEventStoreOptions;

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

#[derive(Debug, Subcommand)]
enum Projections {
    /// Print the names of the stored projections, one per line.
    List,
    /// Print each build's state, position, lag, lease and last error.
    Status {
        /// Only this projection.
        name: Option<String>,
        /// Print a JSON array of the builds' status instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ask the projection's runner to apply nothing until `resume`.
    Pause {
        /// The projection.
        name: String,
    },
    /// Ask the projection's runner to go on after `pause`, or to try the
    /// event it is faulted at again.
    Resume {
        /// The projection.
        name: String,
    },
    /// Ask for the active build to be emptied and built again from position
    /// 0, in place (readers see it empty, then filling).
    Reset {
        /// The projection.
        name: String,
    },
    /// Ask for a new build from position 0 beside the active one, which
    /// serves readers until the new one has caught up and replaces it.
    Rebuild {
        /// The projection.
        name: String,
    },
    /// Ask the projection to pass over the event it is faulted at (recorded
    /// in `strata.projection_skips`) and go on.
    Skip {
        /// The projection.
        name: String,
        /// The id of the event it is faulted at.
        #[arg(long, value_name = "ID")]
        event: Uuid,
    },
}

const PAGE: usize = 500;

/// Longest error text shown in a status table's row.
const ERROR_SHOWN: usize = 60;

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
        Command::Projections(command) => projections_command(store.pool(), command, &mut out).await?,
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

async fn projections_command(
    pool: &sqlx::PgPool,
    command: Projections,
    out: &mut impl Write,
) -> Result<(), BoxError> {
    let printed = match command {
        Projections::List => {
            for name in projections::names(pool).await.map_err(with_migrate_hint)? {
                writeln!(out, "{name}")?;
            }
            return Ok(());
        }
        Projections::Status { name, json } => {
            if let Some(name) = &name {
                checked(name)?;
            }
            let builds = projections::status(pool, name.as_deref())
                .await
                .map_err(with_migrate_hint)?;
            if let (Some(name), true) = (name, builds.is_empty()) {
                return Err(ProjectionError::NotFound(name).into());
            }
            if json {
                writeln!(out, "{}", serde_json::to_string(&builds)?)?;
            } else {
                write_status_table(out, &builds, Utc::now())?;
            }
            return Ok(());
        }
        Projections::Pause { name } => {
            projections::pause(pool, checked(&name)?)
                .await
                .map_err(with_migrate_hint)?;
            format!("pause requested for projection `{name}`: it applies nothing until resumed")
        }
        Projections::Resume { name } => {
            projections::resume(pool, checked(&name)?)
                .await
                .map_err(with_migrate_hint)?;
            format!("resume requested for projection `{name}`")
        }
        Projections::Reset { name } => {
            projections::reset(pool, checked(&name)?)
                .await
                .map_err(with_migrate_hint)?;
            format!("reset requested for projection `{name}`: its active build starts again from position 0")
        }
        Projections::Rebuild { name } => {
            projections::rebuild(pool, checked(&name)?)
                .await
                .map_err(with_migrate_hint)?;
            format!(
                "rebuild requested for projection `{name}`: a new build catches up beside the active one, \
                 then replaces it"
            )
        }
        Projections::Skip { name, event } => {
            projections::skip(pool, checked(&name)?, event)
                .await
                .map_err(with_migrate_hint)?;
            format!("skip of event {event} requested for projection `{name}`")
        }
    };
    writeln!(out, "{printed}")?;
    Ok(())
}

/// `name`, if it can name a projection.
fn checked(name: &str) -> Result<&str, ProjectionError> {
    match name_problem(name) {
        None => Ok(name),
        Some(reason) => Err(ProjectionError::InvalidName {
            name: Preview(name).to_string(),
            reason,
        }),
    }
}

/// A projections error, with the hint to run `strata migrate` when the
/// projections' tables are missing.
fn with_migrate_hint(e: ProjectionError) -> BoxError {
    if let ProjectionError::Database(sqlx::Error::Database(db)) = &e
        && matches!(db.code().as_deref(), Some("42P01" | "3F000"))
        && db.message().contains("strata")
    {
        return Box::new(NeedsMigration(e));
    }
    Box::new(e)
}

/// The projections' tables are missing: the schema is older than the
/// projections (migration 0006), or was never created.
#[derive(Debug)]
struct NeedsMigration(ProjectionError);

impl std::fmt::Display for NeedsMigration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; the strata schema is missing or outdated: run `strata migrate`",
            self.0
        )
    }
}

impl StdError for NeedsMigration {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

/// The builds as a table, one row each, columns aligned; `now` ages the
/// heartbeats.
fn write_status_table(
    out: &mut impl Write,
    builds: &[ProjectionStatus],
    now: DateTime<Utc>,
) -> io::Result<()> {
    let header = [
        "NAME", "GEN", "VERSION", "STATE", "STAGE", "POSITION", "HEAD", "LAG", "LAG_SECS", "OWNER", "LEASE",
        "ERROR",
    ];
    let rows: Vec<[String; 12]> = builds
        .iter()
        .map(|b| {
            let lease = match (&b.owner, b.lease_current) {
                (None, _) => "-".to_owned(),
                (Some(_), current) => {
                    let held = if current { "current" } else { "expired" };
                    match b.heartbeat_at {
                        Some(at) => {
                            let age = (now - at).num_milliseconds().max(0) as f64 / 1000.0;
                            format!("{held}, beat {age:.1}s ago")
                        }
                        None => held.to_owned(),
                    }
                }
            };
            let error = match (b.fault_event_id, &b.last_error) {
                (Some(id), error) => format!("at event {id}: {}", shortened(error.as_deref().unwrap_or(""))),
                (None, Some(error)) => shortened(error),
                (None, None) => "-".to_owned(),
            };
            [
                b.name.clone(),
                b.generation.to_string(),
                b.version.to_string(),
                b.state.clone(),
                b.stage.clone(),
                b.position.to_string(),
                b.head.to_string(),
                b.lag_events.to_string(),
                format!("{:.1}", b.lag_seconds),
                b.owner.clone().unwrap_or_else(|| "-".to_owned()),
                lease,
                error,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header = header.map(str::to_owned);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// An error's text on one line, cut after [`ERROR_SHOWN`] characters.
fn shortened(error: &str) -> String {
    let flat: String = error
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match flat.char_indices().nth(ERROR_SHOWN) {
        None => flat,
        Some((cut, _)) => format!("{}...", &flat[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str) -> ProjectionStatus {
        ProjectionStatus {
            name: name.to_owned(),
            generation: 1,
            version: 1,
            state: "running".to_owned(),
            stage: "active".to_owned(),
            position: 10,
            head: 10,
            lag_events: 0,
            lag_seconds: 0.0,
            events_applied: 3,
            owner: None,
            lease_current: false,
            heartbeat_at: None,
            fault_event_id: None,
            fault_position: None,
            last_error: None,
        }
    }

    #[test]
    fn a_status_row_shows_an_expired_lease_and_a_cut_error_on_one_line() -> Result<(), BoxError> {
        let now = Utc::now();
        let event = Uuid::now_v7();
        let parked = ProjectionStatus {
            state: "faulted".to_owned(),
            owner: Some("pid1-abc".to_owned()),
            heartbeat_at: Some(now - chrono::Duration::milliseconds(12_300)),
            fault_event_id: Some(event),
            last_error: Some(format!("line one\nline two {}", "x".repeat(100))),
            ..status("a_long_projection_name")
        };
        let mut out = Vec::new();
        write_status_table(&mut out, &[status("short"), parked], now)?;
        let text = String::from_utf8(out)?;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        // Columns line up under the header.
        let state = lines[0].find("STATE").ok_or("no STATE")?;
        assert_eq!(
            lines[1][state..].split_whitespace().next(),
            Some("running"),
            "{text}"
        );
        assert_eq!(
            lines[2][state..].split_whitespace().next(),
            Some("faulted"),
            "{text}"
        );
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells[cells.len() - 3..],
            ["-", "-", "-"],
            "no owner, lease or error: {text}"
        );
        let error = format!(
            "at event {event}: line one line two {}...",
            "x".repeat(ERROR_SHOWN - 18)
        );
        assert!(
            lines[2].ends_with(&format!("pid1-abc  expired, beat 12.3s ago  {error}")),
            "{text}"
        );
        Ok(())
    }

    #[test]
    fn long_errors_are_cut_at_a_character() {
        assert_eq!(shortened("short"), "short");
        let long = "é".repeat(ERROR_SHOWN + 1);
        assert_eq!(shortened(&long), format!("{}...", "é".repeat(ERROR_SHOWN)));
        assert_eq!(shortened(&"é".repeat(ERROR_SHOWN)), "é".repeat(ERROR_SHOWN));
    }

    #[test]
    fn clap_errors_become_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  --event <ID>\n\nUsage: strata projections skip --event <ID> <NAME>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(rendered),
            "error: the following required arguments were not provided: --event <ID>"
        );
    }
}
