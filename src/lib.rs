//! asbb: a budget ledger for SLURM clusters that burst jobs to AWS.
//!
//! A job's estimated cost is held when it is submitted, the actual cost is charged when the
//! execution engine reports it, and every change of money is an entry in an append-only,
//! hash-chained journal. See `ARCHITECTURE.md` for the map of this crate.

pub mod burn;
pub mod check;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod exit;
pub mod report;
pub mod spool;
