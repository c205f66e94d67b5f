//! Upcasters: lift stored events written under an older schema to the
//! current one, on every read path.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::error::{BoxError, Error, Result};
use crate::event::Event;

type UpcastFn = Arc<dyn Fn(Value) -> std::result::Result<Value, BoxError> + Send + Sync>;

/// A chain of upcasters keyed by (event type, schema version).
///
/// Each registered function lifts a payload of one type from version `n` to
/// `n + 1`; [`decode`](Upcasters::decode) applies them in turn until the
/// event type's [`current_version`](Event::current_version) is reached. A
/// missing step is [`Error::UnknownSchemaVersion`], a stored version newer
/// than the current one (written by a newer build) is
/// [`Error::NewerSchemaVersion`]; nothing is silently dropped.
///
/// ```
/// use strata_core::upcast::Upcasters;
/// let upcasters = Upcasters::new().register("Deposited", 1, |mut v| {
///     // v1 stored cents as `amount`; v2 calls the field `cents`.
///     let cents = v["amount"].take();
///     v["cents"] = cents;
///     Ok(v)
/// });
/// assert_eq!(upcasters.len(), 1);
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), UpcastFn>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<_> = self.steps.keys().collect();
        keys.sort();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}

impl Upcasters {
    /// An empty chain: every stored event must already be current.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register the step lifting `event_type` from `from_version` to
    /// `from_version + 1`. A later registration for the same key replaces
    /// the earlier one.
    pub fn register<F>(mut self, event_type: &str, from_version: u32, step: F) -> Self
    where
        F: Fn(Value) -> std::result::Result<Value, BoxError> + Send + Sync + 'static,
    {
        self.steps
            .insert((event_type.to_owned(), from_version), Arc::new(step));
        self
    }

    /// Number of registered steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether no step is registered.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// These steps and `other`'s; where both have a step for the same
    /// (type, version), `other`'s wins.
    pub fn merge(mut self, other: Upcasters) -> Self {
        self.steps.extend(other.steps);
        self
    }

    /// Check at start-up that every event type `E` lists
    /// ([`Event::event_types`]) can be lifted from version 1 to its current
    /// version: a missing step is [`Error::UnknownSchemaVersion`] now, not
    /// on the first old event read.
    pub fn check<E: Event>(&self) -> Result<()> {
        for &event_type in E::event_types() {
            let current = E::current_version(event_type);
            if let Some(found) = (1..current).find(|&v| !self.has_step(event_type, v)) {
                return Err(Error::UnknownSchemaVersion {
                    event_type: event_type.to_owned(),
                    found,
                    current,
                });
            }
        }
        Ok(())
    }

    /// Whether a step from (`event_type`, `version`) exists.
    pub fn has_step(&self, event_type: &str, version: u32) -> bool {
        self.steps.contains_key(&(event_type.to_owned(), version))
    }

    /// Lift a payload from `version` to `target`.
    pub fn upcast(
        &self,
        event_type: &str,
        mut version: u32,
        target: u32,
        mut payload: Value,
    ) -> Result<Value> {
        while version < target {
            let step = self.steps.get(&(event_type.to_owned(), version)).ok_or_else(|| {
                Error::UnknownSchemaVersion {
                    event_type: event_type.to_owned(),
                    found: version,
                    current: target,
                }
            })?;
            payload = step(payload).map_err(|error| Error::Upcast {
                event_type: event_type.to_owned(),
                from_version: version,
                error,
            })?;
            version += 1;
        }
        if version > target {
            return Err(Error::NewerSchemaVersion {
                event_type: event_type.to_owned(),
                found: version,
                current: target,
            });
        }
        Ok(payload)
    }

    /// Upcast a stored payload to the current schema of its type and decode it.
    pub fn decode<E: Event>(&self, event_type: &str, version: u32, payload: Value) -> Result<E> {
        let current = E::current_version(event_type);
        let payload = self.upcast(event_type, version, current, payload)?;
        E::decode(event_type, current, payload)
    }

    /// [`decode`](Self::decode) from the payload's JSON text: read straight
    /// into the event ([`Event::decode_json`]) when it is stored at the
    /// current schema version, else parsed, upcast and decoded.
    pub fn decode_json<E: Event>(&self, event_type: &str, version: u32, payload: &str) -> Result<E> {
        let current = E::current_version(event_type);
        if version == current {
            return E::decode_json(event_type, current, payload);
        }
        let value = serde_json::from_str(payload)
            .map_err(|e| Error::decode(format!("payload of `{event_type}`"), e))?;
        self.decode(event_type, version, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Ev {
        Renamed { cents: i64 },
        Marker,
    }

    impl Event for Ev {
        fn event_type(&self) -> &'static str {
            match self {
                Ev::Renamed { .. } => "Renamed",
                Ev::Marker => "Marker",
            }
        }
        fn current_version(event_type: &str) -> u32 {
            if event_type == "Renamed" { 3 } else { 1 }
        }
    }

    fn chain() -> Upcasters {
        Upcasters::new()
            .register("Renamed", 1, |v| Ok(json!({ "amount_cents": v["amount"] })))
            .register("Renamed", 2, |v| Ok(json!({ "cents": v["amount_cents"] })))
    }

    #[test]
    fn decode_lifts_through_every_step() -> Result<()> {
        let ev: Ev = chain().decode("Renamed", 1, json!({ "amount": 7 }))?;
        assert_eq!(ev, Ev::Renamed { cents: 7 });
        let ev: Ev = chain().decode("Renamed", 3, json!({ "cents": 9 }))?;
        assert_eq!(ev, Ev::Renamed { cents: 9 });
        let ev: Ev = chain().decode("Marker", 1, Value::Null)?;
        assert_eq!(ev, Ev::Marker);
        Ok(())
    }

    #[test]
    fn missing_step_is_unknown_schema_version() {
        let only_second = Upcasters::new().register("Renamed", 2, Ok);
        let err = only_second.decode::<Ev>("Renamed", 1, json!({})).unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnknownSchemaVersion {
                    found: 1,
                    current: 3,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn future_version_is_newer_than_this_build() {
        let err = chain().decode::<Ev>("Renamed", 4, json!({})).unwrap_err();
        assert!(
            matches!(
                err,
                Error::NewerSchemaVersion {
                    found: 4,
                    current: 3,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("newer than this build knows"), "{err}");
    }

    #[test]
    fn unknown_type_is_typed_error() {
        let err = chain().decode::<Ev>("Vanished", 1, json!({})).unwrap_err();
        assert!(
            matches!(err, Error::UnknownEventType { ref event_type, .. } if event_type == "Vanished"),
            "{err:?}"
        );
    }

    #[test]
    fn undecodable_payload_is_serialization_error() {
        let err = chain()
            .decode::<Ev>("Renamed", 3, json!({ "cents": "many" }))
            .unwrap_err();
        assert!(
            matches!(err, Error::Serialization { op: "decode", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn failing_step_is_upcast_error() {
        let failing = Upcasters::new()
            .register("Renamed", 1, |_| Err("field gone".into()))
            .register("Renamed", 2, Ok);
        let err = failing.decode::<Ev>("Renamed", 1, json!({})).unwrap_err();
        assert!(matches!(err, Error::Upcast { from_version: 1, .. }), "{err:?}");
    }
}
