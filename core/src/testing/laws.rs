//! Property laws over random command sequences.

use std::fmt;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde_json::Value;

use crate::aggregate::Aggregate;
use crate::event::{Event, Metadata, NewEvent};
use crate::memory::DEFAULT_MAX_EVENT_SIZE;
use crate::upcast::Upcasters;

type Invariant<A> = Box<dyn Fn(&A, &[<A as Aggregate>::Event]) -> Result<(), String>>;
type LegacyEncoder = Box<dyn Fn(&Value) -> Value>;

/// Property tests of an aggregate over random command sequences.
///
/// For every generated sequence the commands are decided in turn (refused
/// commands change nothing, as in production) and these laws are checked:
/// 1. every produced event is accepted by a store (with the default size
///    limit) and survives a JSON round trip through the stored form and
///    the [`Upcasters`] (decode(encode(e)) == e), and every registered
///    legacy encoding of it upcasts back to the same event;
/// 2. replaying the round-tripped events from scratch rebuilds the state
///    reached step by step;
/// 3. a snapshot (the state serialized after any step) plus the events after
///    it rebuilds the same state;
/// 4. each invariant holds after every step.
///
/// A failure is shrunk by proptest, then cut down until no single command
/// can be removed with the laws still broken, and reported as a
/// [`LawViolation`].
///
/// Refused commands exercise none of the laws, so a generator whose
/// commands the aggregate mostly refuses would pass while testing little.
/// [`run`](Laws::run) reports the share of generated commands that were
/// accepted ([`LawsReport`]) and fails when it is below
/// [`min_acceptance`](Laws::min_acceptance) (default
/// [`DEFAULT_MIN_ACCEPTANCE`]).
pub struct Laws<A: Aggregate> {
    upcasters: Upcasters,
    legacy: Vec<(String, u32, LegacyEncoder)>,
    invariants: Vec<(String, Invariant<A>)>,
    max_commands: usize,
    cases: u32,
    min_acceptance: f64,
}

/// Default of [`Laws::min_acceptance`]: at least a fifth of the generated
/// commands must be accepted.
pub const DEFAULT_MIN_ACCEPTANCE: f64 = 0.2;

/// What a passing [`Laws::run`] exercised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LawsReport {
    /// Command sequences checked.
    pub cases: u32,
    /// Commands generated, over all sequences.
    pub commands: u64,
    /// Commands the aggregate accepted (refused ones change nothing and
    /// exercise no law).
    pub accepted: u64,
}

impl LawsReport {
    /// `accepted / commands` (1 when no command was generated).
    pub fn acceptance_rate(&self) -> f64 {
        if self.commands == 0 {
            1.0
        } else {
            self.accepted as f64 / self.commands as f64
        }
    }
}

impl fmt::Display for LawsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sequences, {} commands, {} accepted ({:.1}%)",
            self.cases,
            self.commands,
            self.accepted,
            self.acceptance_rate() * 100.0
        )
    }
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
            .field("min_acceptance", &self.min_acceptance)
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
    /// Laws with the upcasters declared with the event type
    /// ([`Event::upcasters`]), no invariants, 256 cases of up to 20 commands.
    pub fn new() -> Self {
        Laws {
            upcasters: A::Event::upcasters(),
            legacy: Vec::new(),
            invariants: Vec::new(),
            max_commands: 20,
            cases: 256,
            min_acceptance: DEFAULT_MIN_ACCEPTANCE,
        }
    }

    /// Decode stored events through these upcasters (instead of those
    /// declared with the event type), as a handler given them would.
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

    /// Fail a run in which less than this share (0 to 1) of the generated
    /// commands was accepted: the laws were barely exercised.
    pub fn min_acceptance(mut self, rate: f64) -> Self {
        self.min_acceptance = rate;
        self
    }

    /// Run the laws over sequences of `commands`; a failure comes back
    /// shrunk. A pass reports how many commands were accepted, and is a
    /// failure (with no command sequence) when that is less than
    /// [`min_acceptance`](Laws::min_acceptance).
    pub fn run<S>(&self, commands: S) -> Result<LawsReport, LawViolation<A::Command>>
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
        let report = std::cell::Cell::new(LawsReport {
            cases: 0,
            commands: 0,
            accepted: 0,
        });
        let outcome = runner.run(&sequences, |cmds| {
            let accepted = self.check_counting(&cmds).map_err(TestCaseError::fail)?;
            let mut r = report.get();
            r.cases += 1;
            r.commands += cmds.len() as u64;
            r.accepted += accepted as u64;
            report.set(r);
            Ok(())
        });
        match outcome {
            Ok(()) => {
                let report = report.get();
                if report.acceptance_rate() < self.min_acceptance {
                    return Err(LawViolation {
                        reason: format!(
                            "too few commands accepted to exercise the laws: {report}, below the minimum of \
                             {:.1}%; generate commands the aggregate accepts more often, or lower \
                             Laws::min_acceptance",
                            self.min_acceptance * 100.0
                        ),
                        commands: Vec::new(),
                    });
                }
                Ok(report)
            }
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

    /// Run the laws, print the [`LawsReport`] to standard error, and panic
    /// with the minimal failing sequence.
    #[track_caller]
    pub fn check_all<S>(&self, commands: S) -> LawsReport
    where
        S: Strategy<Value = A::Command>,
    {
        match self.run(commands) {
            Ok(report) => {
                eprintln!("aggregate `{}` obeys the laws: {report}", A::TYPE);
                report
            }
            Err(violation) => panic!("aggregate `{}` breaks a law: {violation}", A::TYPE),
        }
    }

    /// Check the laws for one command sequence.
    pub fn check(&self, commands: &[A::Command]) -> Result<(), String> {
        self.check_counting(commands).map(drop)
    }

    /// [`check`](Laws::check), answering how many commands were accepted.
    fn check_counting(&self, commands: &[A::Command]) -> Result<usize, String> {
        let mut accepted = 0;
        let mut state = A::default();
        let mut history: Vec<A::Event> = Vec::new();
        let mut stored: Vec<A::Event> = Vec::new();
        let mut snapshots: Vec<(usize, Value)> = vec![(0, to_json(&state)?)];
        for (step, command) in commands.iter().enumerate() {
            let Ok(events) = state.decide(command) else {
                continue;
            };
            accepted += 1;
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
        Ok(accepted)
    }

    /// Store `event` as the store would, read it back, and compare.
    fn round_trip(&self, event: &A::Event) -> Result<A::Event, String> {
        // decode(encode(e)) == e, and the store would accept it.
        let new = NewEvent::from_event(event, Metadata::default())
            .and_then(|new| new.validate(DEFAULT_MAX_EVENT_SIZE).map(|()| new))
            .map_err(|e| format!("{event:?} cannot be stored: {e}"))?;
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
