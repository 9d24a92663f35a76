//! The pure domain: money, names, ledger rules, cost estimates, time parsing.
//!
//! Architecture invariant: nothing in `domain` does IO, reads the clock, or knows diesel or a
//! wire format. Everything here is testable with plain values.

pub mod burn;
pub mod estimate;
pub mod grant;
pub mod ledger;
pub mod money;
pub mod names;
pub mod schedule;
pub mod time;

pub use ledger::{AccountStatus, Balances, Denial, DenyReason, Effect, EntryKind, HoldState};
pub use money::UsdMicros;
pub use names::{AccountName, JobId, PartitionName};
