//! The read side: a catalogue of content, one row per piece (id, title,
//! type, status), queried by title (case-insensitive) and filtered by type
//! and status. One projection, `content`, kept in memory or in PostgreSQL.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use sqlx::{PgConnection, PgPool};
use strata_core::error::BoxError;
use strata_core::{Envelope, LogFilter};
use strata_projections::Projection;
use strata_projections::memory::MemoryProjection;
use strata_projections::postgres::PgProjection;

use crate::domain::{Content, ContentEvent, ContentType, Status};

/// One piece of content, as readers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentRow {
    pub id: String,
    pub title: String,
    pub kind: ContentType,
    pub status: Status,
}

impl fmt::Display for ContentRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<12} {:<28} {:<8} {}",
            self.id, self.title, self.kind, self.status
        )
    }
}

/// A question to the catalogue: every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Part of the title, in any case.
    pub title: Option<String>,
    pub kind: Option<ContentType>,
    pub status: Option<Status>,
}

impl Query {
    /// Whether `row` answers it: the same rule as the SQL in [`query_pg`].
    fn admits(&self, row: &ContentRow) -> bool {
        let title = self
            .title
            .as_ref()
            .is_none_or(|t| row.title.to_lowercase().contains(&t.to_lowercase()));
        title && self.kind.is_none_or(|k| row.kind == k) && self.status.is_none_or(|s| row.status == s)
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(t) = &self.title {
            parts.push(format!("title contains {t:?}"));
        }
        if let Some(k) = self.kind {
            parts.push(format!("type={k}"));
        }
        if let Some(s) = self.status {
            parts.push(format!("status={s}"));
        }
        if parts.is_empty() {
            parts.push("everything".to_owned());
        }
        f.write_str(&parts.join(" & "))
    }
}

/// The catalogue in memory.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    rows: BTreeMap<String, ContentRow>,
}

impl Catalog {
    /// The rows that answer `query`, by title then id.
    pub fn query(&self, query: &Query) -> Vec<ContentRow> {
        let mut rows: Vec<ContentRow> = self.rows.values().filter(|r| query.admits(r)).cloned().collect();
        rows.sort_by(|a, b| (&a.title, &a.id).cmp(&(&b.title, &b.id)));
        rows
    }
}

/// The projection that keeps the catalogue.
pub struct ContentCatalog;

/// The content id of an event's stream (`content-{id}`).
fn content_id(event: &Envelope<ContentEvent>) -> &str {
    let stream = event.stream_id.as_str();
    stream
        .strip_prefix(<Content as strata_core::Aggregate>::TYPE)
        .and_then(|s| s.strip_prefix('-'))
        .unwrap_or(stream)
}

impl Projection for ContentCatalog {
    type Event = ContentEvent;

    fn name(&self) -> &str {
        "content"
    }

    fn filter(&self) -> LogFilter {
        LogFilter::categories([<Content as strata_core::Aggregate>::TYPE])
    }
}

impl MemoryProjection for ContentCatalog {
    type Model = Catalog;

    fn apply(&self, catalog: &mut Catalog, event: &Envelope<ContentEvent>) -> Result<(), BoxError> {
        let id = content_id(event);
        match &event.event {
            ContentEvent::Uploaded { title, kind } => {
                let row = ContentRow {
                    id: id.to_owned(),
                    title: title.clone(),
                    kind: *kind,
                    status: Status::Uploaded,
                };
                catalog.rows.insert(id.to_owned(), row);
            }
            other => {
                let row = catalog
                    .rows
                    .get_mut(id)
                    .ok_or_else(|| format!("content `{id}` changed before it was uploaded"))?;
                row.status = other.status();
            }
        }
        Ok(())
    }
}

#[async_trait]
impl PgProjection for ContentCatalog {
    async fn setup(&self, tx: &mut PgConnection) -> Result<(), BoxError> {
        // Trigram index for `ILIKE '%...%'` title search (extension pg_trgm,
        // shipped with PostgreSQL's contrib); a b-tree for the filters.
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "CREATE TABLE content (
                 id text PRIMARY KEY,
                 title text NOT NULL,
                 kind text NOT NULL,
                 status text NOT NULL
             )",
        )
        .execute(&mut *tx)
        .await?;
        let trgm_schema: String = sqlx::query_scalar(
            "SELECT n.nspname FROM pg_opclass c JOIN pg_namespace n ON n.oid = c.opcnamespace
             WHERE c.opcname = 'gin_trgm_ops'",
        )
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "CREATE INDEX content_title_trgm ON content USING gin (title \"{trgm_schema}\".gin_trgm_ops)"
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query("CREATE INDEX content_kind_status ON content (kind, status)")
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn apply(&self, tx: &mut PgConnection, event: &Envelope<ContentEvent>) -> Result<(), BoxError> {
        let id = content_id(event);
        let updated = match &event.event {
            ContentEvent::Uploaded { title, kind } => {
                sqlx::query(
                    "INSERT INTO content (id, title, kind, status) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (id) DO UPDATE SET title = excluded.title, kind = excluded.kind,
                         status = excluded.status",
                )
                .bind(id)
                .bind(title)
                .bind(kind.as_str())
                .bind(Status::Uploaded.as_str())
                .execute(tx)
                .await?
            }
            other => {
                sqlx::query("UPDATE content SET status = $2 WHERE id = $1")
                    .bind(id)
                    .bind(other.status().as_str())
                    .execute(tx)
                    .await?
            }
        };
        if updated.rows_affected() != 1 {
            return Err(format!("content `{id}` changed before it was uploaded").into());
        }
        Ok(())
    }
}

/// Answer `query` from the readers' view in PostgreSQL (the schema named
/// after the projection), by the same rule as [`Catalog::query`].
pub async fn query_pg(pool: &PgPool, query: &Query) -> Result<Vec<ContentRow>, BoxError> {
    // The user's text is a literal: `%`, `_` and `\` lose their LIKE meaning.
    let pattern = query.title.as_ref().map(|t| {
        let escaped = t.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        format!("%{escaped}%")
    });
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT id, title, kind, status FROM content.content
         WHERE ($1::text IS NULL OR title ILIKE $1)
           AND ($2::text IS NULL OR kind = $2)
           AND ($3::text IS NULL OR status = $3)
         ORDER BY title COLLATE \"C\", id COLLATE \"C\"",
    )
    .bind(pattern)
    .bind(query.kind.map(ContentType::as_str))
    .bind(query.status.map(Status::as_str))
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, title, kind, status)| {
            Ok(ContentRow {
                id,
                title,
                kind: kind.parse()?,
                status: status.parse()?,
            })
        })
        .collect()
}
