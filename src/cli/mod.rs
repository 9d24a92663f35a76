//! The `asbb` command line: argument definitions (clap derive, one module per command group)
//! and the code that runs each command. The binary only parses, calls [`run`], and exits with
//! the code it returns.

mod account;
mod admin;
mod allocations;
mod burn;
mod check;
mod grant;
mod holds;
mod money;
mod output;
mod report;
mod spool;
mod transactions;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

use crate::config::{self, Config, ConfigError};
use crate::db::ledger::{LedgerError, OpContext};
use crate::db::{self, DbConn, DbError, DbUrl};
use crate::domain::money::MoneyError;
use crate::domain::time::DateInput;
use crate::domain::UsdMicros;
use crate::exit;

/// asbb — budget ledger for SLURM clusters that burst jobs to AWS.
///
/// Holds a job's estimated cost at submission, charges the actual cost when the execution
/// engine reports it, and keeps every change of money in an append-only, hash-chained journal.
#[derive(Debug, Parser)]
#[command(name = "asbb", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Configuration file [default: $ASBB_CONFIG, else /etc/asbb/asbb.toml if it exists].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Database: a file path, sqlite://PATH, or postgres://… [default: $ASBB_DATABASE_URL, else
    /// the config file's database.url].
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Act as of this date or instant (YYYY-MM-DD or RFC 3339) instead of now.
    #[arg(long, global = true, value_name = "DATE")]
    pub as_of: Option<String>,
    /// Who is acting, recorded in the journal [default: $SUDO_USER, else $USER].
    #[arg(long, global = true, value_name = "NAME")]
    pub actor: Option<String>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Every command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect, change and close budget accounts.
    #[command(subcommand)]
    Account(account::AccountCmd),
    /// Credit money to an account.
    Deposit(money::DepositArgs),
    /// Correct an account's budget by a signed amount (e.g. -50 or +25.5), with a reason.
    Adjust(money::AdjustArgs),
    /// Give charged money back to an account, with a reason.
    Refund(money::RefundArgs),
    /// Would this job be allowed? Price it, hold its estimate (exit 0), or say why not (exit 3):
    /// the same check `asbb-checkd` answers for SLURM.
    Check(check::CheckArgs),
    /// The request log of the checks: `checks prune` deletes old rows (the timer job).
    #[command(subcommand)]
    Checks(check::ChecksCmd),
    /// Place, release, expire and inspect holds by hand.
    #[command(subcommand)]
    Hold(holds::HoldCmd),
    /// Charge an actual cost: against a hold (--hold), or to an account without one (--account).
    Charge(holds::ChargeArgs),
    /// Charge stored cost records against their holds (the timer job); or one job by hand
    /// with JOB --transaction HOLD --actual-cost X; or list what waits (--pending).
    Reconcile(spool::ReconcileArgs),
    /// Take in spool files (cost exports, job-end records, plans) and show conflicts.
    #[command(subcommand)]
    Spool(spool::SpoolCmd),
    /// Release holds of jobs that will never report a cost, and expire old holds (timer job).
    Recover(spool::RecoverArgs),
    /// How good the estimates are.
    #[command(subcommand)]
    Analytics(spool::AnalyticsCmd),
    /// Allocation schedules, and the timer job that credits them and books grant periods.
    #[command(subcommand)]
    Allocations(allocations::AllocationsCmd),
    /// Multi-year grants with budget periods.
    #[command(subcommand)]
    Grant(grant::GrantCmd),
    /// Spending against the plan: daily rate, variance, health, projection; or
    /// `burn-rate compute`, the timer job.
    BurnRate(burn::BurnRateArgs),
    /// Where an account's money is heading, month by month.
    Forecast(burn::ForecastArgs),
    /// An account's budget status for the advisor, live; with --cost, whether a burst fits.
    Status(burn::StatusArgs),
    /// Budget alerts: list and acknowledge.
    #[command(subcommand)]
    Alerts(burn::AlertsCmd),
    /// Finance reports (CSV, HTML, JSON) into a directory; or `--scheduled`, the timer job
    /// writing the daily and month-end sets.
    Report(report::ReportArgs),
    /// List and show journal entries.
    #[command(subcommand, visible_alias = "transaction")]
    Transactions(transactions::TransactionsCmd),
    /// Balances and activity.
    #[command(subcommand)]
    Usage(account::UsageCmd),
    /// Verify the ledger.
    #[command(subcommand)]
    Audit(admin::AuditCmd),
    /// Create and upgrade the database schema.
    #[command(subcommand)]
    Database(admin::DatabaseCmd),
    /// Write, check and show the configuration.
    #[command(subcommand)]
    Config(admin::ConfigCmd),
}

/// An error on its way to the user, with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// Exit code (see [`crate::exit`]).
    pub code: i32,
    /// The message, starting lower-case, saying what failed and what to do.
    pub message: String,
}

impl CliError {
    /// An error about a specific flag or argument.
    pub fn usage(flag: &str, message: impl std::fmt::Display) -> CliError {
        CliError {
            code: exit::ERROR,
            message: format!("{flag}: {message}"),
        }
    }
}

impl From<LedgerError> for CliError {
    fn from(e: LedgerError) -> Self {
        let code = match e {
            LedgerError::Denied(_) => exit::DENIED,
            _ => exit::ERROR,
        };
        CliError {
            code,
            message: e.to_string(),
        }
    }
}

impl From<DbError> for CliError {
    fn from(e: DbError) -> Self {
        let code = match e {
            DbError::Unmigrated { .. } | DbError::TooNew(_) | DbError::MissingFile(_) => {
                exit::SCHEMA
            }
            _ => exit::ERROR,
        };
        CliError {
            code,
            message: e.to_string(),
        }
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError {
            code: exit::ERROR,
            message: e.to_string(),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError {
            code: exit::ERROR,
            message: format!("failed to write output: {e}"),
        }
    }
}

/// How far ahead of this host's clock `--as-of` may be for a write (clock skew between hosts).
const FUTURE_SKEW_MINUTES: i64 = 5;

/// What every command gets: the parsed global flags, the configuration, the clock reading.
pub(crate) struct Ctx<'a> {
    pub cli: &'a Cli,
    pub loaded: Option<config::Loaded>,
    /// The wall clock, read once per command.
    pub now: DateTime<Utc>,
}

impl Ctx<'_> {
    pub fn config(&self) -> Result<&Config, CliError> {
        self.loaded
            .as_ref()
            .map(|l| &l.config)
            .ok_or_else(|| CliError {
                code: exit::ERROR,
                message: "configuration failed to load".into(),
            })
    }

    pub fn db_url(&self) -> Result<DbUrl, CliError> {
        let url = match &self.cli.database_url {
            Some(u) => u.clone(),
            None => self.config()?.database.url.clone(),
        };
        DbUrl::parse(&url).map_err(|e| CliError::usage("--database-url", e))
    }

    /// Opens the database, refusing one whose schema is not current.
    pub fn conn(&self) -> Result<DbConn, CliError> {
        Ok(db::connect_checked(
            &self.db_url()?,
            &self.config()?.connect_options(),
        )?)
    }

    /// For a batch command that commits many times: on SQLite, a thread that checkpoints the
    /// WAL beside `conn`, which then no longer stops to do it (see [`db::checkpoint`]).
    pub fn checkpointer(
        &self,
        conn: &mut DbConn,
    ) -> Result<Option<db::checkpoint::Checkpointer>, CliError> {
        let c = db::checkpoint::Checkpointer::start(
            &self.db_url()?,
            &self.config()?.connect_options(),
            db::checkpoint::INTERVAL,
        )
        .map_err(|e| CliError {
            code: exit::ERROR,
            message: format!("failed to start the checkpointer thread: {e}"),
        })?;
        if let Some(c) = &c {
            c.relieve(conn).map_err(LedgerError::from)?;
        }
        Ok(c)
    }

    /// The effective time: `--as-of`, else now.
    pub fn as_of(&self) -> Result<DateTime<Utc>, CliError> {
        match &self.cli.as_of {
            Some(t) => Ok(DateInput::parse(t)
                .map_err(|e| CliError::usage("--as-of", e))?
                .start()),
            None => Ok(self.now),
        }
    }

    pub fn actor(&self) -> String {
        self.cli
            .actor
            .clone()
            .or_else(|| std::env::var("SUDO_USER").ok().filter(|s| !s.is_empty()))
            .or_else(|| std::env::var("USER").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "unknown".into())
    }

    /// The context of a write. A write may be backdated with `--as-of`, never dated ahead:
    /// a future date is nearly always a typo, and it would let a hold expire early.
    pub fn op(&self) -> Result<OpContext, CliError> {
        let as_of = self.as_of()?;
        if as_of > self.now + chrono::Duration::minutes(FUTURE_SKEW_MINUTES) {
            return Err(CliError::usage(
                "--as-of",
                format!(
                    "{} is in the future; changes can be backdated, not dated ahead",
                    as_of.to_rfc3339()
                ),
            ));
        }
        let mut op = OpContext::at(&self.actor(), as_of);
        op.recorded_at = crate::domain::time::truncate_micros(self.now);
        Ok(op)
    }
}

/// Parses an amount argument, naming the flag on error.
pub(crate) fn amount_arg(flag: &str, text: &str) -> Result<UsdMicros, CliError> {
    UsdMicros::parse(text).map_err(|e: MoneyError| CliError::usage(flag, e))
}

/// Prefixes of the keys asbb derives itself (`charge:hold-7`, `release:hold-7`, …). A key an
/// admin chooses must not start with one, or it could block the operation it imitates.
pub(crate) const RESERVED_KEY_PREFIXES: [&str; 10] = [
    "alloc:",
    "grant:",
    "check:",
    "charge:",
    "release:",
    "expiry:",
    "refund:",
    "recover:",
    "account-create:",
    "manual:",
];

/// An idempotency key given with `--idempotency-key`, or a fresh one.
pub(crate) fn user_key(given: Option<&str>, what: &str) -> Result<String, CliError> {
    match given {
        None => Ok(fresh_key(what)),
        Some(k) => match RESERVED_KEY_PREFIXES.iter().find(|p| k.starts_with(*p)) {
            Some(p) => Err(CliError::usage(
                "--idempotency-key",
                format!("keys starting with '{p}' are reserved for keys asbb makes itself"),
            )),
            None => Ok(k.to_string()),
        },
    }
}

/// Parses an optional SLURM job id flag into its canonical spelling.
pub(crate) fn job_arg(flag: &str, text: Option<&str>) -> Result<Option<String>, CliError> {
    text.map(|j| {
        crate::domain::JobId::parse(j)
            .map(|j| j.to_string())
            .map_err(|e| CliError::usage(flag, e))
    })
    .transpose()
}

/// Parses an amount that must be greater than zero.
pub(crate) fn positive_arg(flag: &str, text: &str) -> Result<UsdMicros, CliError> {
    amount_arg(flag, text)?
        .positive()
        .map_err(|e| CliError::usage(flag, e))
}

/// Parses an amount that must not be negative.
pub(crate) fn non_negative_arg(flag: &str, text: &str) -> Result<UsdMicros, CliError> {
    amount_arg(flag, text)?
        .non_negative()
        .map_err(|e| CliError::usage(flag, e))
}

/// A fresh idempotency key for a manual operation that may legitimately repeat.
pub(crate) fn fresh_key(what: &str) -> String {
    format!("manual:{what}:{}", uuid::Uuid::new_v4().simple())
}

/// Runs a parsed command line; returns the exit code.
pub fn run(cli: &Cli) -> Result<i32, CliError> {
    let now = Utc::now();
    let needs_config = !matches!(&cli.command, Command::Config(admin::ConfigCmd::Init(_)));
    let loaded = if needs_config {
        Some(config::load(cli.config.as_deref(), &|k| {
            std::env::var(k).ok()
        })?)
    } else {
        None
    };
    let ctx = Ctx { cli, loaded, now };
    let out = &mut std::io::stdout().lock();
    match &cli.command {
        Command::Account(c) => account::run(&ctx, c, out),
        Command::Deposit(a) => money::deposit(&ctx, a, out),
        Command::Adjust(a) => money::adjust(&ctx, a, out),
        Command::Refund(a) => money::refund(&ctx, a, out),
        Command::Check(a) => check::run(&ctx, a, out),
        Command::Hold(c) => holds::run(&ctx, c, out),
        Command::Charge(a) => holds::charge(&ctx, a, out),
        Command::Reconcile(a) => spool::reconcile(&ctx, a, out),
        Command::Spool(c) => spool::run(&ctx, c, out),
        Command::Recover(a) => spool::recover(&ctx, a, out),
        Command::Checks(c) => check::checks(&ctx, c, out),
        Command::Analytics(c) => spool::analytics(&ctx, c, out),
        Command::Allocations(c) => allocations::run(&ctx, c, out),
        Command::Grant(c) => grant::run(&ctx, c, out),
        Command::BurnRate(a) => burn::burn_rate(&ctx, a, out),
        Command::Forecast(a) => burn::forecast(&ctx, a, out),
        Command::Status(a) => burn::status(&ctx, a, out),
        Command::Alerts(c) => burn::alerts_cmd(&ctx, c, out),
        Command::Report(a) => report::run(&ctx, a, out),
        Command::Transactions(c) => transactions::run(&ctx, c, out),
        Command::Usage(c) => account::usage(&ctx, c, out),
        Command::Audit(c) => admin::audit(&ctx, c, out),
        Command::Database(c) => admin::database(&ctx, c, out),
        Command::Config(c) => admin::config(&ctx, c, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let a = Cli::try_parse_from(["asbb", "--database-url", "x.db", "account", "list"]).unwrap();
        let b = Cli::try_parse_from([
            "asbb",
            "account",
            "list",
            "--database-url",
            "x.db",
            "--json",
        ])
        .unwrap();
        assert_eq!(a.database_url.as_deref(), Some("x.db"));
        assert_eq!(b.database_url.as_deref(), Some("x.db"));
        assert!(b.json);
    }

    #[test]
    fn negative_adjustments_parse() {
        let c = Cli::try_parse_from(["asbb", "adjust", "acct", "-50", "--reason", "fix"]).unwrap();
        let Command::Adjust(a) = c.command else {
            panic!()
        };
        assert_eq!(a.amount, "-50");
    }
}
