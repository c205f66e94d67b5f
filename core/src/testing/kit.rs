//! Given / when / then for aggregates.

use std::fmt;

use crate::aggregate::Aggregate;

/// An aggregate scenario: the events that already happened.
///
/// ```
/// # use strata_core::testing::AggregateTest;
/// # fn demo<A: strata_core::Aggregate>(history: Vec<A::Event>, cmd: A::Command, expected: Vec<A::Event>)
/// # where A::Event: PartialEq {
/// AggregateTest::<A>::given(history).when(cmd).then_expect_events(expected);
/// # }
/// ```
#[derive(Debug)]
pub struct AggregateTest<A: Aggregate> {
    state: A,
}

impl<A: Aggregate> AggregateTest<A> {
    /// Start from the state built by `events`.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let events: Vec<_> = events.into_iter().collect();
        AggregateTest {
            state: A::replay(&events),
        }
    }

    /// Start from a new aggregate.
    pub fn given_no_events() -> Self {
        AggregateTest { state: A::default() }
    }

    /// Decide `command` on the given state.
    pub fn when(self, command: A::Command) -> Then<A> {
        let result = self.state.decide(&command);
        Then {
            state: self.state,
            command,
            result,
        }
    }
}

/// The outcome of [`AggregateTest::when`], to assert on.
pub struct Then<A: Aggregate> {
    state: A,
    command: A::Command,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> fmt::Debug for Then<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Then")
            .field("state", &self.state)
            .field("command", &self.command)
            .field("result", &self.result)
            .finish()
    }
}

impl<A: Aggregate> Then<A> {
    /// Assert the command produced exactly `expected`; returns the state
    /// after applying them.
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>) -> A
    where
        A::Event: PartialEq,
    {
        let expected: Vec<_> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(
                    events, expected,
                    "command {:?} produced other events",
                    self.command
                );
                let mut state = self.state;
                for e in &events {
                    state.apply(e);
                }
                state
            }
            Err(e) => panic!(
                "command {:?} was refused ({e}) but {expected:?} was expected",
                self.command
            ),
        }
    }

    /// Assert the command was refused with an error `check` accepts.
    #[track_caller]
    pub fn then_expect_error(self, check: impl FnOnce(&A::Error) -> bool) {
        match self.result {
            Ok(events) => panic!(
                "command {:?} produced {events:?} but an error was expected",
                self.command
            ),
            Err(e) => assert!(
                check(&e),
                "command {:?} was refused with an unexpected error: {e:?}",
                self.command
            ),
        }
    }

    /// Assert the command was refused with an error whose message is `message`.
    #[track_caller]
    pub fn then_expect_error_message(self, message: &str) {
        let command = format!("{:?}", self.command);
        self.then_expect_error(|e| {
            assert_eq!(
                e.to_string(),
                message,
                "command {command} refused with another message"
            );
            true
        })
    }

    /// The raw outcome.
    pub fn into_result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}
