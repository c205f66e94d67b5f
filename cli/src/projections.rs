//! `strata projections`: thin wrappers around
//! `strata_projections::postgres`, and the status table.

use std::error::Error as StdError;
use std::io::{self, Write};

use chrono::{DateTime, Utc};
use clap::Subcommand;
use strata_core::Uuid;
use strata_core::error::Preview;
use strata_projections::postgres::{self, ProjectionStatus};
use strata_projections::{ProjectionError, name_problem};

use crate::BoxError;

/// Longest error text shown in a status table's row.
const ERROR_SHOWN: usize = 60;

#[derive(Debug, Subcommand)]
pub(crate) enum Projections {
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

pub(crate) async fn run(
    pool: &sqlx::PgPool,
    command: Projections,
    out: &mut impl Write,
) -> Result<(), BoxError> {
    let printed = match command {
        Projections::List => {
            for name in postgres::names(pool).await.map_err(with_migrate_hint)? {
                writeln!(out, "{name}")?;
            }
            return Ok(());
        }
        Projections::Status { name, json } => {
            if let Some(name) = &name {
                checked(name)?;
            }
            let builds = postgres::status(pool, name.as_deref())
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
            postgres::pause(pool, checked(&name)?)
                .await
                .map_err(with_migrate_hint)?;
            format!("pause requested for projection `{name}`: it applies nothing until resumed")
        }
        Projections::Resume { name } => {
            postgres::resume(pool, checked(&name)?)
                .await
                .map_err(with_migrate_hint)?;
            format!("resume requested for projection `{name}`")
        }
        Projections::Reset { name } => {
            postgres::reset(pool, checked(&name)?)
                .await
                .map_err(with_migrate_hint)?;
            format!("reset requested for projection `{name}`: its active build starts again from position 0")
        }
        Projections::Rebuild { name } => {
            postgres::rebuild(pool, checked(&name)?)
                .await
                .map_err(with_migrate_hint)?;
            format!(
                "rebuild requested for projection `{name}`: a new build catches up beside the active one, \
                 then replaces it"
            )
        }
        Projections::Skip { name, event } => {
            postgres::skip(pool, checked(&name)?, event)
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
}
