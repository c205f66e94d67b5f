//! Each command runs in a `command` span carrying the aggregate type,
//! stream, command id and correlation id.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use strata_core::testing::fixtures::bank::{BankAccount, BankCommand};
use strata_core::{CommandContext, CommandHandler, InMemoryEventStore};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use uuid::Uuid;

type Spans = Arc<Mutex<Vec<(String, BTreeMap<String, String>)>>>;

/// Records the name and fields of every span created.
struct Capture {
    spans: Spans,
    next: AtomicU64,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        spans.push((attrs.metadata().name().to_owned(), fields));
        Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn command_runs_in_a_span_with_its_identity() -> Result<(), Box<dyn std::error::Error>> {
    let spans = Spans::default();
    let capture = Capture {
        spans: spans.clone(),
        next: AtomicU64::new(0),
    };
    let command_id = Uuid::now_v7();
    let correlation_id = Uuid::now_v7();
    tracing::subscriber::with_default(capture, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handler = CommandHandler::<BankAccount, _>::new(InMemoryEventStore::new());
        let ctx = CommandContext {
            correlation_id: Some(correlation_id),
            ..CommandContext::with_id(command_id)
        };
        runtime.block_on(handler.execute_with("acc-9", BankCommand::Open { owner: "ada".into() }, ctx))?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    let spans = spans.lock().unwrap_or_else(|p| p.into_inner());
    let (_, fields) = spans
        .iter()
        .find(|(name, _)| name == "command")
        .expect("a `command` span");
    assert_eq!(fields.get("aggregate").map(String::as_str), Some("account"));
    assert_eq!(fields.get("stream").map(String::as_str), Some("account-acc-9"));
    assert_eq!(fields.get("command_id"), Some(&command_id.to_string()));
    assert_eq!(fields.get("correlation_id"), Some(&correlation_id.to_string()));
    Ok(())
}
