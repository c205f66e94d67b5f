//! The aggregate the PostgreSQL tests share: a wallet that refuses to go
//! below zero.

#![allow(dead_code)]

use serde::{Deserialize, Serialize};
use strata_core::{Aggregate, Event};

/// Money in a wallet, in cents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Wallet {
    pub balance: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WalletCommand {
    Add(u64),
    Take(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WalletEvent {
    Added { amount: u64 },
    Taken { amount: u64 },
}

impl Event for WalletEvent {
    fn event_type(&self) -> &'static str {
        match self {
            WalletEvent::Added { .. } => "Added",
            WalletEvent::Taken { .. } => "Taken",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum WalletError {
    #[error("only {balance} left, {wanted} wanted")]
    Short { balance: u64, wanted: u64 },
}

impl Aggregate for Wallet {
    const TYPE: &'static str = "wallet";
    type Command = WalletCommand;
    type Event = WalletEvent;
    type Error = WalletError;

    fn decide(&self, command: &WalletCommand) -> Result<Vec<WalletEvent>, WalletError> {
        match *command {
            WalletCommand::Add(amount) => Ok(vec![WalletEvent::Added { amount }]),
            WalletCommand::Take(wanted) if wanted > self.balance => Err(WalletError::Short {
                balance: self.balance,
                wanted,
            }),
            WalletCommand::Take(amount) => Ok(vec![WalletEvent::Taken { amount }]),
        }
    }

    fn apply(&mut self, event: &WalletEvent) {
        match event {
            WalletEvent::Added { amount } => self.balance += amount,
            WalletEvent::Taken { amount } => self.balance -= amount,
        }
    }
}
