//! Property laws over random command sequences.

use std::fmt;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde_json::Value;

use crate::aggregate::Aggregate;
use crate::event::{Event, Metadata, NewEvent};
use crate::upcast::Upcasters;

type Invariant<A> = Box<dyn Fn(&A, &[<A as Aggregate>::Event]) -> Result<(), String>>;
type LegacyEncoder = Box<dyn Fn(&Value) -> Value>;

/// Property tests of an aggregate over random command sequences.
///
/// For every generated sequence the commands are decided in turn (refused
/// commands are skipped, as in production) and these laws are checked:
/// 1. every produced event survives a JSON round trip through the stored
///    form and the [`Upcasters`], and every registered legacy encoding of it
///    upcasts back to the same event;
/// 2. replaying the round-tripped events from scratch rebuilds the state
///    reached step by step;
/// 3. a snapshot (the state serialized after any step) plus the events after
///    it rebuilds the same state;
/// 4. each invariant holds after every step.
///
/// A failure is shrunk by proptest, then cut down until no single command
/// can be removed with the laws still broken, and reported as a
/// [`LawViolation`].
pub struct Laws<A: Aggregate> {
    upcasters: Upcasters,
    legacy: Vec<(String, u32, LegacyEncoder)>,
    invariants: Vec<(String, Invariant<A>)>,
    max_commands: usize,
    cases: u32,
}

impl<A: Aggregate> fmt::Debug for Laws<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Laws")
            .field("upcasters", &self.upcasters)
            .field(
                "invariants",
                &self.invariants.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("max_commands", &self.max_commands)
            .field("cases", &self.cases)
            .finish()
    }
}

impl<A> Default for Laws<A>
where
    A: Aggregate + PartialEq,
    A::Event: PartialEq,
    A::Command: Clone,
{
    fn default() -> Self {
        Self::new()
    }
}

/// A law that failed, with the minimal command sequence that breaks it.
#[derive(Debug, Clone)]
pub struct LawViolation<C> {
    /// Which law broke and how.
    pub reason: String,
    /// The shrunk command sequence: without any one of its commands, the
    /// laws hold.
    pub commands: Vec<C>,
}

impl<C: fmt::Debug> fmt::Display for LawViolation<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\nminimal command sequence: {:#?}",
            self.reason, self.commands
        )
    }
}

impl<A> Laws<A>
where
    A: Aggregate + PartialEq,
    A::Event: PartialEq,
    A::Command: Clone,
{
    /// Laws with no upcasters or invariants, 256 cases of up to 20 commands.
    pub fn new() -> Self {
        Laws {
            upcasters: Upcasters::new(),
            legacy: Vec::new(),
            invariants: Vec::new(),
            max_commands: 20,
            cases: 256,
        }
    }

    /// Decode stored events through these upcasters, as production does.
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Also check that `event_type` written at old schema `version` (as
    /// `encode` renders it from the current payload) upcasts back to the same
    /// event.
    pub fn legacy_encoding(
        mut self,
        event_type: &str,
        version: u32,
        encode: impl Fn(&Value) -> Value + 'static,
    ) -> Self {
        self.legacy
            .push((event_type.to_owned(), version, Box::new(encode)));
        self
    }

    /// An invariant over the state and the events so far, checked after
    /// every command.
    pub fn invariant(
        mut self,
        name: &str,
        check: impl Fn(&A, &[A::Event]) -> Result<(), String> + 'static,
    ) -> Self {
        self.invariants.push((name.to_owned(), Box::new(check)));
        self
    }

    /// Longest command sequence generated.
    pub fn max_commands(mut self, n: usize) -> Self {
        self.max_commands = n;
        self
    }

    /// Number of random sequences tried.
    pub fn cases(mut self, n: u32) -> Self {
        self.cases = n;
        self
    }

    /// Run the laws over sequences of `commands`; a failure comes back shrunk.
    pub fn run<S>(&self, commands: S) -> Result<(), LawViolation<A::Command>>
    where
        S: Strategy<Value = A::Command>,
    {
        let config = Config {
            cases: self.cases,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let sequences = proptest::collection::vec(commands, 0..=self.max_commands);
        match runner.run(&sequences, |cmds| self.check(&cmds).map_err(TestCaseError::fail)) {
            Ok(()) => Ok(()),
            Err(TestError::Fail(reason, commands)) => {
                let commands = self.drop_redundant(commands);
                let reason = self.check(&commands).err().unwrap_or_else(|| reason.to_string());
                Err(LawViolation { reason, commands })
            }
            Err(TestError::Abort(reason)) => Err(LawViolation {
                reason: format!("property run aborted: {reason}"),
                commands: Vec::new(),
            }),
        }
    }

    /// Remove commands one at a time while the sequence still breaks a law.
    ///
    /// proptest shrinks a sequence by dropping elements and then shrinking
    /// their values, and can stop where a command became removable only
    /// after a value shrank. This pass makes the result 1-minimal: without
    /// any single one of its commands, the laws hold.
    fn drop_redundant(&self, mut commands: Vec<A::Command>) -> Vec<A::Command> {
        let mut i = 0;
        while i < commands.len() {
            let mut without = commands.clone();
            without.remove(i);
            if self.check(&without).is_err() {
                commands = without;
            } else {
                i += 1;
            }
        }
        commands
    }

    /// Run the laws and panic with the minimal failing sequence.
    #[track_caller]
    pub fn check_all<S>(&self, commands: S)
    where
        S: Strategy<Value = A::Command>,
    {
        if let Err(violation) = self.run(commands) {
            panic!("aggregate `{}` breaks a law: {violation}", A::TYPE);
        }
    }

    /// Check the laws for one command sequence.
    pub fn check(&self, commands: &[A::Command]) -> Result<(), String> {
        let mut state = A::default();
        let mut history: Vec<A::Event> = Vec::new();
        let mut stored: Vec<A::Event> = Vec::new();
        let mut snapshots: Vec<(usize, Value)> = vec![(0, to_json(&state)?)];
        for (step, command) in commands.iter().enumerate() {
            let Ok(events) = state.decide(command) else {
                continue;
            };
            for event in events {
                stored.push(self.round_trip(&event)?);
                state.apply(&event);
                history.push(event);
            }
            snapshots.push((history.len(), to_json(&state)?));
            for (name, check) in &self.invariants {
                check(&state, &history).map_err(|m| {
                    format!("invariant `{name}` broken after command #{step} {command:?}: {m}")
                })?;
            }
        }
        let replayed = A::replay(&stored);
        if replayed != state {
            return Err(format!(
                "replaying the stored events gives {replayed:?}, but deciding step by step gave {state:?}"
            ));
        }
        for (at, snapshot) in snapshots {
            let mut restored: A = serde_json::from_value(snapshot.clone()).map_err(|e| {
                format!("snapshot after {at} events does not decode: {e}; snapshot: {snapshot}")
            })?;
            for e in &stored[at..] {
                restored.apply(e);
            }
            if restored != state {
                return Err(format!(
                    "snapshot after {at} events plus the tail gives {restored:?}, full replay gives {state:?}"
                ));
            }
        }
        Ok(())
    }

    /// Store `event` as the store would, read it back, and compare.
    fn round_trip(&self, event: &A::Event) -> Result<A::Event, String> {
        let new = NewEvent::from_event(event, Metadata::default()).map_err(|e| format!("{event:?}: {e}"))?;
        let text = serde_json::to_string(&new.payload).map_err(|e| e.to_string())?;
        let payload: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let decoded: A::Event = self
            .upcasters
            .decode(&new.event_type, new.schema_version, payload)
            .map_err(|e| format!("{event:?} does not decode after a JSON round trip: {e}"))?;
        if decoded != *event {
            return Err(format!("{event:?} comes back from JSON as {decoded:?}"));
        }
        for (event_type, version, encode) in &self.legacy {
            if *event_type == event.event_type() {
                let old = encode(&new.payload);
                let lifted: A::Event = self
                    .upcasters
                    .decode(event_type, *version, old.clone())
                    .map_err(|e| format!("{event:?} written at v{version} as {old} does not upcast: {e}"))?;
                if lifted != *event {
                    return Err(format!(
                        "{event:?} written at v{version} as {old} upcasts to {lifted:?}"
                    ));
                }
            }
        }
        Ok(decoded)
    }
}

fn to_json<T: serde::Serialize + fmt::Debug>(state: &T) -> Result<Value, String> {
    serde_json::to_value(state).map_err(|e| format!("state {state:?} does not serialize: {e}"))
}
