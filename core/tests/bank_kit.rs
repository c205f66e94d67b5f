//! The aggregate test kit on the bank account, and a deliberately broken
//! aggregate caught by the property laws.

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use strata_core::Aggregate;
use strata_core::testing::fixtures::bank::{self, BankAccount, BankCommand, BankError, BankEvent};
use strata_core::testing::{AggregateTest, Laws};

fn opened() -> BankEvent {
    BankEvent::Opened { owner: "ada".into() }
}

#[test]
fn deposit_on_open_account_emits_deposited() {
    let state = AggregateTest::<BankAccount>::given([opened()])
        .when(BankCommand::Deposit { amount: 50 })
        .then_expect_events([BankEvent::Deposited { amount: 50 }]);
    assert_eq!(state.balance, 50);
}

#[test]
fn overdraft_is_refused() {
    AggregateTest::<BankAccount>::given([opened(), BankEvent::Deposited { amount: 10 }])
        .when(BankCommand::Withdraw { amount: 11 })
        .then_expect_error(|e| {
            *e == BankError::InsufficientFunds {
                balance: 10,
                requested: 11,
            }
        });
}

#[test]
fn closed_account_refuses_deposits() {
    AggregateTest::<BankAccount>::given([opened(), BankEvent::Closed])
        .when(BankCommand::Deposit { amount: 1 })
        .then_expect_error_message("account is not open");
}

#[test]
#[should_panic(expected = "produced other events")]
fn then_expect_events_fails_on_other_events() {
    AggregateTest::<BankAccount>::given([opened()])
        .when(BankCommand::Deposit { amount: 5 })
        .then_expect_events([BankEvent::Deposited { amount: 6 }]);
}

fn bank_commands() -> impl Strategy<Value = BankCommand> {
    prop_oneof![
        1 => "[a-z]{1,8}".prop_map(|owner| BankCommand::Open { owner }),
        4 => (0u64..500).prop_map(|amount| BankCommand::Deposit { amount }),
        4 => (0u64..500).prop_map(|amount| BankCommand::Withdraw { amount }),
        1 => Just(BankCommand::Close),
    ]
}

/// Deposits minus withdrawals, from the events alone.
fn ledger(events: &[BankEvent]) -> i128 {
    events
        .iter()
        .map(|e| match e {
            BankEvent::Deposited { amount } => i128::from(*amount),
            BankEvent::Withdrawn { amount } => -i128::from(*amount),
            _ => 0,
        })
        .sum()
}

fn balance_matches_ledger<A>(balance: impl Fn(&A) -> u64) -> impl Fn(&A, &[BankEvent]) -> Result<(), String> {
    move |state, events| {
        let expected = ledger(events);
        if i128::from(balance(state)) == expected {
            Ok(())
        } else {
            Err(format!(
                "balance {} but the ledger says {expected}",
                balance(state)
            ))
        }
    }
}

#[test]
fn bank_account_obeys_the_laws() {
    Laws::<BankAccount>::new()
        .upcasters(bank::upcasters())
        .legacy_encoding("Deposited", 1, |v2| json!({ "value": v2["amount"] }))
        .invariant(
            "balance equals the ledger",
            balance_matches_ledger(|a: &BankAccount| a.balance),
        )
        .invariant("closed accounts are empty", |a: &BankAccount, _| {
            if a.owner.is_some() && !a.open && a.balance != 0 {
                Err(format!("closed with balance {}", a.balance))
            } else {
                Ok(())
            }
        })
        .check_all(bank_commands());
}

/// An account whose `apply` disagrees with `decide`: `decide` allows any
/// covered withdrawal, but `apply` forgets to take out withdrawals over 100.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct BrokenAccount(BankAccount);

impl Aggregate for BrokenAccount {
    const TYPE: &'static str = "broken-account";
    type Command = BankCommand;
    type Event = BankEvent;
    type Error = BankError;

    fn decide(&self, command: &BankCommand) -> Result<Vec<BankEvent>, BankError> {
        self.0.decide(command)
    }

    fn apply(&mut self, event: &BankEvent) {
        match event {
            BankEvent::Withdrawn { amount } if *amount > 100 => {}
            other => self.0.apply(other),
        }
    }
}

#[test]
fn broken_aggregate_is_caught_with_a_shrunk_sequence() {
    let laws = Laws::<BrokenAccount>::new()
        .upcasters(bank::upcasters())
        .invariant(
            "balance equals the ledger",
            balance_matches_ledger(|a: &BrokenAccount| a.0.balance),
        )
        .cases(512);
    let violation = laws
        .run(bank_commands())
        .expect_err("the broken apply must be caught");
    assert!(
        violation.reason.contains("balance equals the ledger"),
        "{violation}"
    );
    // Minimal: without any single command the laws hold again.
    for i in 0..violation.commands.len() {
        let mut without = violation.commands.clone();
        without.remove(i);
        assert!(
            laws.check(&without).is_ok(),
            "command #{i} is redundant: {violation}"
        );
    }
    // And it shows the bug: an opened account and a withdrawal over 100 last.
    assert!(
        matches!(violation.commands[0], BankCommand::Open { .. }),
        "{violation}"
    );
    assert!(
        matches!(violation.commands.last(), Some(BankCommand::Withdraw { amount }) if *amount > 100),
        "{violation}"
    );
}

/// State that loses a field in its snapshot breaks the snapshot law.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ForgetfulAccount {
    #[serde(skip)]
    inner: BankAccount,
}

impl Aggregate for ForgetfulAccount {
    const TYPE: &'static str = "forgetful-account";
    type Command = BankCommand;
    type Event = BankEvent;
    type Error = BankError;

    fn decide(&self, command: &BankCommand) -> Result<Vec<BankEvent>, BankError> {
        self.inner.decide(command)
    }

    fn apply(&mut self, event: &BankEvent) {
        self.inner.apply(event);
    }
}

#[test]
fn state_lost_in_snapshots_breaks_the_snapshot_law() {
    let violation = Laws::<ForgetfulAccount>::new()
        .upcasters(bank::upcasters())
        .run(bank_commands())
        .expect_err("a state that does not survive snapshots must be caught");
    assert!(violation.reason.contains("snapshot after"), "{violation}");
    assert_eq!(violation.commands.len(), 1, "not shrunk: {violation}");
}

#[test]
fn events_without_upcasters_for_old_versions_break_the_round_trip_law() {
    let violation = Laws::<BankAccount>::new()
        .upcasters(strata_core::Upcasters::new())
        .legacy_encoding("Deposited", 1, |v2| json!({ "value": v2["amount"] }))
        .run(bank_commands())
        .expect_err("v1 deposits cannot be read without the upcaster");
    assert!(violation.reason.contains("does not upcast"), "{violation}");
}

#[test]
fn a_generator_of_mostly_refused_commands_fails_the_laws() {
    // On a never-opened account every withdrawal is refused.
    let withdrawals = (1u64..500).prop_map(|amount| BankCommand::Withdraw { amount });
    let violation = Laws::<BankAccount>::new()
        .upcasters(bank::upcasters())
        .run(withdrawals.clone())
        .expect_err("nothing was exercised");
    assert!(
        violation.reason.contains("too few commands accepted"),
        "{violation}"
    );
    assert!(violation.reason.contains("0 accepted (0.0%)"), "{violation}");
    let report = Laws::<BankAccount>::new()
        .upcasters(bank::upcasters())
        .min_acceptance(0.0)
        .run(withdrawals)
        .expect("the threshold is the user's");
    assert_eq!(report.accepted, 0);
    assert!(report.commands > 0);
}

#[test]
fn the_laws_report_their_acceptance_rate() {
    let report = Laws::<BankAccount>::new()
        .upcasters(bank::upcasters())
        .legacy_encoding("Deposited", 1, |v2| json!({ "value": v2["amount"] }))
        .check_all(bank_commands());
    assert_eq!(report.cases, 256);
    assert!(
        report.accepted > 0 && report.accepted < report.commands,
        "{report}"
    );
    assert!(report.acceptance_rate() >= strata_core::testing::DEFAULT_MIN_ACCEPTANCE);
}

/// Bank events whose `event_type()` is not the serde variant name: the
/// default encoding cannot store them faithfully.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Misnamed(BankEvent);

impl strata_core::Event for Misnamed {
    fn event_type(&self) -> &'static str {
        match self.0 {
            BankEvent::Opened { .. } => "AccountOpened",
            _ => "Other",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct MisnamedAccount(BankAccount);

impl Aggregate for MisnamedAccount {
    const TYPE: &'static str = "misnamed-account";
    type Command = BankCommand;
    type Event = Misnamed;
    type Error = BankError;

    fn decide(&self, command: &BankCommand) -> Result<Vec<Misnamed>, BankError> {
        Ok(self.0.decide(command)?.into_iter().map(Misnamed).collect())
    }

    fn apply(&mut self, event: &Misnamed) {
        self.0.apply(&event.0);
    }
}

#[test]
fn events_that_do_not_encode_faithfully_break_the_round_trip_law() {
    let violation = Laws::<MisnamedAccount>::new()
        .run(bank_commands())
        .expect_err("the payload would be lost");
    assert!(
        violation.reason.contains("cannot be encoded faithfully"),
        "{violation}"
    );
    assert_eq!(violation.commands.len(), 1, "not shrunk: {violation}");
}
