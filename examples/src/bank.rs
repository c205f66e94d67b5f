//! A bank account: the aggregate every strata example and test kit test uses.

use serde::{Deserialize, Serialize};
use strata_core::{Aggregate, Event, Upcasters};

/// What a customer can ask of an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BankCommand {
    /// Open the account for `owner`.
    Open {
        /// The account holder.
        owner: String,
    },
    /// Put money in.
    Deposit {
        /// Amount in cents.
        amount: u64,
    },
    /// Take money out; refused if it would overdraw the account.
    Withdraw {
        /// Amount in cents.
        amount: u64,
    },
    /// Close the account; only when its balance is zero.
    Close,
}

/// What happened to an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BankEvent {
    /// The account was opened.
    Opened {
        /// The account holder.
        owner: String,
    },
    /// Money was deposited. Schema v2; v1 called the field `value`.
    Deposited {
        /// Amount in cents.
        amount: u64,
    },
    /// Money was withdrawn.
    Withdrawn {
        /// Amount in cents.
        amount: u64,
    },
    /// The account was closed.
    Closed,
}

impl Event for BankEvent {
    fn event_type(&self) -> &'static str {
        match self {
            BankEvent::Opened { .. } => "Opened",
            BankEvent::Deposited { .. } => "Deposited",
            BankEvent::Withdrawn { .. } => "Withdrawn",
            BankEvent::Closed => "Closed",
        }
    }

    fn current_version(event_type: &str) -> u32 {
        match event_type {
            "Deposited" => 2,
            _ => 1,
        }
    }
}

/// The upcasters for stored bank events: `Deposited` v1 `{"value": n}`
/// becomes v2 `{"amount": n}`.
pub fn upcasters() -> Upcasters {
    Upcasters::new().register("Deposited", 1, |mut payload| {
        let value = payload
            .as_object_mut()
            .and_then(|o| o.remove("value"))
            .ok_or("Deposited v1 has no `value`")?;
        Ok(serde_json::json!({ "amount": value }))
    })
}

/// Why an account refuses a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum BankError {
    /// The account was never opened, or is closed.
    #[error("account is not open")]
    NotOpen,
    /// The account is already open.
    #[error("account is already open")]
    AlreadyOpen,
    /// Amounts must be positive.
    #[error("amount must be positive")]
    ZeroAmount,
    /// The withdrawal would overdraw the account.
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds {
        /// Current balance.
        balance: u64,
        /// Requested withdrawal.
        requested: u64,
    },
    /// Only an empty account can be closed.
    #[error("balance must be zero to close, it is {0}")]
    BalanceNotZero(u64),
}

/// The state of an account.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BankAccount {
    /// Holder, once opened.
    pub owner: Option<String>,
    /// Whether it accepts money movements.
    pub open: bool,
    /// Balance in cents.
    pub balance: u64,
}

impl Aggregate for BankAccount {
    const TYPE: &'static str = "account";
    type Command = BankCommand;
    type Event = BankEvent;
    type Error = BankError;

    fn decide(&self, command: &BankCommand) -> Result<Vec<BankEvent>, BankError> {
        let requires_open = || {
            if self.open {
                Ok(())
            } else {
                Err(BankError::NotOpen)
            }
        };
        match command {
            BankCommand::Open { owner } => {
                if self.owner.is_some() {
                    return Err(BankError::AlreadyOpen);
                }
                Ok(vec![BankEvent::Opened { owner: owner.clone() }])
            }
            BankCommand::Deposit { amount } => {
                requires_open()?;
                if *amount == 0 {
                    return Err(BankError::ZeroAmount);
                }
                Ok(vec![BankEvent::Deposited { amount: *amount }])
            }
            BankCommand::Withdraw { amount } => {
                requires_open()?;
                if *amount == 0 {
                    return Err(BankError::ZeroAmount);
                }
                if *amount > self.balance {
                    return Err(BankError::InsufficientFunds {
                        balance: self.balance,
                        requested: *amount,
                    });
                }
                Ok(vec![BankEvent::Withdrawn { amount: *amount }])
            }
            BankCommand::Close => {
                requires_open()?;
                if self.balance != 0 {
                    return Err(BankError::BalanceNotZero(self.balance));
                }
                Ok(vec![BankEvent::Closed])
            }
        }
    }

    fn apply(&mut self, event: &BankEvent) {
        match event {
            BankEvent::Opened { owner } => {
                self.owner = Some(owner.clone());
                self.open = true;
            }
            BankEvent::Deposited { amount } => self.balance += amount,
            BankEvent::Withdrawn { amount } => self.balance -= amount,
            BankEvent::Closed => self.open = false,
        }
    }
}
