//! `#[derive(Event)]`: names, versions and upcasters declared with the
//! event type, used by every reader without wiring.

use serde::{Deserialize, Serialize};
use strata_core::testing::Laws;
use strata_core::testing::proptest::prelude::*;
use strata_core::{
    Aggregate, BoxError, CommandHandler, CommandHandlerOptions, Error, Event, EventStore, ExpectedVersion,
    InMemoryEventStore, NewEvent, StreamId, Upcasters, Value, json,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum ShipEvent {
    Launched {
        name: String,
    },
    // Renamed in code; stored under its old name.
    #[strata(rename = "Docked")]
    Moored,
    #[serde(rename = "Sailed")]
    #[strata(version = 3, upcast(from = 1, with = knots_v1), upcast(from = 2, with = speed_v2))]
    Departed {
        speed: u32,
    },
    Flagged(Option<String>),
}

/// v1 `{"knots": n}` → v2 `{"knots_x10": 10 n}`.
fn knots_v1(v: Value) -> Result<Value, BoxError> {
    let knots = v["knots"].as_u64().ok_or("no knots")?;
    Ok(json!({ "knots_x10": knots * 10 }))
}

/// v2 `{"knots_x10": n}` → v3 `{"speed": n}`.
fn speed_v2(v: Value) -> Result<Value, BoxError> {
    Ok(json!({ "speed": v["knots_x10"] }))
}

#[test]
fn names_versions_and_encoding_come_from_the_variants() -> Result<(), Error> {
    assert_eq!(ShipEvent::Launched { name: "x".into() }.event_type(), "Launched");
    assert_eq!(ShipEvent::Moored.event_type(), "Docked");
    assert_eq!(ShipEvent::Departed { speed: 1 }.event_type(), "Sailed");
    assert_eq!(
        ShipEvent::event_types(),
        ["Launched", "Docked", "Sailed", "Flagged"]
    );
    assert_eq!(ShipEvent::current_version("Sailed"), 3);
    assert_eq!(ShipEvent::current_version("Docked"), 1);
    for e in [
        ShipEvent::Launched {
            name: "Nautilus".into(),
        },
        ShipEvent::Moored,
        ShipEvent::Departed { speed: 12 },
        ShipEvent::Flagged(None),
        ShipEvent::Flagged(Some("red".into())),
    ] {
        let new = NewEvent::from_event(&e, Default::default())?;
        assert_eq!(new.schema_version, ShipEvent::current_version(e.event_type()));
        // Straight from the stored text too, as a replay reads it.
        let text = new.payload.to_string();
        let from_text = ShipEvent::decode_json(&new.event_type, new.schema_version, &text)?;
        assert_eq!(from_text, e);
        let back = ShipEvent::decode(&new.event_type, new.schema_version, new.payload)?;
        assert_eq!(back, e);
    }
    let err = ShipEvent::decode("Moored", 1, Value::Null).unwrap_err();
    assert!(
        matches!(err, Error::UnknownEventType { .. }),
        "the code name is not a stored name: {err:?}"
    );
    let err = ShipEvent::decode_json("Moored", 1, "null").unwrap_err();
    assert!(matches!(err, Error::UnknownEventType { .. }), "{err:?}");
    let err = ShipEvent::decode_json("Launched", 1, r#"{"name": 7}"#).unwrap_err();
    assert!(matches!(err, Error::Serialization { .. }), "{err:?}");
    // An old version from text: parsed, upcast, decoded.
    let upcasters = ShipEvent::upcasters();
    let old: ShipEvent = upcasters.decode_json("Sailed", 1, r#"{"knots": 3}"#)?;
    assert_eq!(old, ShipEvent::Departed { speed: 30 });
    Ok(())
}

#[tokio::test]
async fn every_reader_gets_the_declared_upcasters_without_wiring() -> Result<(), BoxError> {
    let store = InMemoryEventStore::new();
    let stream = StreamId::new("ship-1")?;
    let v1 = NewEvent {
        event_type: "Sailed".into(),
        schema_version: 1,
        payload: json!({ "knots": 3 }),
        ..NewEvent::from_event(&ShipEvent::Moored, Default::default())?
    };
    store.append(&stream, ExpectedVersion::NoStream, vec![v1]).await?;
    let stored = store.read_stream(&stream, 1, 10).await?;
    let lifted = stored[0].decode::<ShipEvent>(&ShipEvent::upcasters())?;
    assert_eq!(lifted.event, ShipEvent::Departed { speed: 30 });
    // The command handler, given no upcasters, lifts it too.
    let ships = CommandHandler::<Ship, _>::new(store);
    assert_eq!(ships.load("1").await?.0.speed, 30);
    Ok(())
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Ship {
    speed: u32,
    docked: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("a docked ship cannot sail")]
struct Docked;

impl Aggregate for Ship {
    const TYPE: &'static str = "ship";
    type Command = Option<u32>;
    type Event = ShipEvent;
    type Error = Docked;

    /// `Some(speed)` sails, `None` docks.
    fn decide(&self, command: &Option<u32>) -> Result<Vec<ShipEvent>, Docked> {
        match command {
            Some(_) if self.docked => Err(Docked),
            Some(speed) => Ok(vec![ShipEvent::Departed { speed: *speed }]),
            None => Ok(vec![ShipEvent::Moored]),
        }
    }

    fn apply(&mut self, event: &ShipEvent) {
        match event {
            ShipEvent::Departed { speed } => self.speed = *speed,
            ShipEvent::Moored => self.docked = true,
            _ => {}
        }
    }
}

#[test]
fn derived_events_obey_the_laws_with_their_declared_upcasters() {
    let commands = prop_oneof![4 => (1u32..50).prop_map(Some), 1 => Just(None)];
    Laws::<Ship>::new()
        .legacy_encoding("Sailed", 2, |v3| json!({ "knots_x10": v3["speed"] }))
        .min_acceptance(0.1)
        .check_all(commands);
}

/// Hand-written: version 2 declared, no upcaster for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Gapped {
    Moved { to: u32 },
}

impl Event for Gapped {
    fn event_type(&self) -> &'static str {
        "Moved"
    }
    fn current_version(_: &str) -> u32 {
        2
    }
    fn event_types() -> &'static [&'static str] {
        &["Moved"]
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Piece;

impl Aggregate for Piece {
    const TYPE: &'static str = "piece";
    type Command = u32;
    type Event = Gapped;
    type Error = Docked;
    fn decide(&self, to: &u32) -> Result<Vec<Gapped>, Docked> {
        Ok(vec![Gapped::Moved { to: *to }])
    }
    fn apply(&mut self, _: &Gapped) {}
}

#[test]
fn an_incomplete_chain_is_an_error_at_start_up() {
    let err = CommandHandler::<Piece, _>::try_with_options(
        InMemoryEventStore::new(),
        Upcasters::new(),
        CommandHandlerOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnknownSchemaVersion {
                found: 1,
                current: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let mended = Upcasters::new().register("Moved", 1, Ok);
    assert!(
        CommandHandler::<Piece, _>::try_with_options(
            InMemoryEventStore::new(),
            mended,
            CommandHandlerOptions::default()
        )
        .is_ok()
    );
}
