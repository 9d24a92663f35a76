//! `asbb hold …`, `asbb charge`, `asbb reconcile JOB`.

use std::io::Write;

use clap::{Args, Subcommand};
use rust_decimal::Decimal;
use serde_json::json;

use super::output::{account_json, entry_json, hold_json, holds_table, m, print_json, print_table};
use super::{job_arg, non_negative_arg, positive_arg, user_key, CliError, Ctx};
use crate::db::ledger::{
    self, ChargeHold, ChargeOutcome, ChargeUnmatched, HoldOutcome, HoldRequest, LedgerError,
};
use crate::db::models::parse_hold_reference;
use crate::db::queries;
use crate::domain::ledger::HoldState;
use crate::domain::time::parse_span;
use crate::domain::{AccountName, JobId, PartitionName};
use crate::exit;

/// `asbb hold`.
#[derive(Debug, Subcommand)]
pub enum HoldCmd {
    /// Hold money for a job (the check endpoint does this at submission; this is for manual work).
    Place(PlaceArgs),
    /// Release a hold without charging it.
    Release(ReleaseArgs),
    /// Expire a hold whose lifetime has passed.
    Expire(ExpireArgs),
    /// Show one hold.
    Show(HoldRef),
    /// List holds.
    List(ListArgs),
}

/// `asbb hold place`.
#[derive(Debug, Args)]
pub struct PlaceArgs {
    /// SLURM account name.
    #[arg(long)]
    pub account: String,
    /// Partition (its limit is checked).
    #[arg(long)]
    pub partition: Option<String>,
    /// Cost estimate in USD; the hold is the estimate times the buffer.
    #[arg(
        long,
        value_name = "AMOUNT",
        required_unless_present = "amount",
        conflicts_with = "amount",
        allow_hyphen_values = true
    )]
    pub estimate: Option<String>,
    /// Exact amount to hold in USD (no buffer).
    #[arg(long, value_name = "AMOUNT", allow_hyphen_values = true)]
    pub amount: Option<String>,
    /// Buffer factor for --estimate [default: ledger.default_hold_buffer, 1.2].
    #[arg(long, value_name = "FACTOR", requires = "estimate")]
    pub buffer: Option<String>,
    /// SLURM job id, if known.
    #[arg(long)]
    pub job: Option<String>,
    /// Cluster name.
    #[arg(long)]
    pub cluster: Option<String>,
    /// SLURM user.
    #[arg(long)]
    pub user: Option<String>,
    /// Lifetime before the hold may expire [default: ledger.hold_lifetime, 7d].
    #[arg(long, value_name = "SPAN")]
    pub expires_in: Option<String>,
    /// For a job array: how many tasks the hold covers. Each task's cost is charged against it
    /// and the last task releases what is left.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub tasks: Option<u32>,
    /// Makes a retry safe: a second call with the same key places no second hold.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

/// `asbb hold release`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The hold: hold-42 (or 42).
    pub hold: String,
    /// Why, recorded in the journal.
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// `asbb hold expire`.
#[derive(Debug, Args)]
pub struct ExpireArgs {
    /// The hold: hold-42 (or 42).
    pub hold: String,
}

/// A hold argument.
#[derive(Debug, Args)]
pub struct HoldRef {
    /// The hold: hold-42 (or 42).
    pub hold: String,
}

/// `asbb hold list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this account.
    #[arg(long)]
    pub account: Option<String>,
    /// Only holds in this state: open (pending), charged, released, expired.
    #[arg(long, alias = "status")]
    pub state: Option<String>,
    /// At most this many, newest first (0 = all).
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
}

/// `asbb charge`.
#[derive(Debug, Args)]
pub struct ChargeArgs {
    /// Charge against this hold (releases the remainder).
    #[arg(long, required_unless_present = "account", conflicts_with = "account")]
    pub hold: Option<String>,
    /// Charge this account without a hold (flagged unmatched).
    #[arg(long)]
    pub account: Option<String>,
    /// Actual cost in USD.
    #[arg(long, value_name = "AMOUNT", allow_hyphen_values = true)]
    pub amount: String,
    /// SLURM job id.
    #[arg(long)]
    pub job: Option<String>,
    /// Partition (for a charge without a hold).
    #[arg(long, requires = "account")]
    pub partition: Option<String>,
    /// SLURM user (for a charge without a hold).
    #[arg(long, requires = "account")]
    pub user: Option<String>,
    /// Cluster (for a charge without a hold).
    #[arg(long, requires = "account")]
    pub cluster: Option<String>,
    /// Why, recorded in the journal.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Makes a retry safe [default: charge:hold-N for a hold, a new key otherwise].
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

fn hold_id(flag: &str, text: &str) -> Result<i64, CliError> {
    parse_hold_reference(text).ok_or_else(|| {
        CliError::usage(
            flag,
            format!("'{text}' is not a hold id (expected hold-42 or 42)"),
        )
    })
}

fn optional_text(flag: &str, text: Option<&str>) -> Result<Option<String>, CliError> {
    match text {
        Some(t)
            if t.is_empty()
                || t.len() > 128
                || t.chars().any(|c| c.is_control() || c.is_whitespace()) =>
        {
            Err(CliError::usage(
                flag,
                format!("'{t}' must be 1 to 128 characters without spaces"),
            ))
        }
        other => Ok(other.map(str::to_string)),
    }
}

/// Prints the outcome of `hold release` or `hold expire`.
fn report_released(
    ctx: &Ctx<'_>,
    out: &mut dyn Write,
    r: &ledger::Released,
    verb: &str,
) -> Result<i32, CliError> {
    let hold = r.hold.reference();
    if ctx.cli.json {
        print_json(
            out,
            &json!({"hold": hold_json(&r.hold), "entry": entry_json(&r.entry), "replayed": r.replayed}),
        )?;
    } else if r.replayed {
        writeln!(
            out,
            "already done: {hold} was {verb} by entry {}",
            r.entry.id
        )?;
    } else {
        writeln!(
            out,
            "{verb} {hold}: ${} back to '{}' (entry {})",
            r.entry.amount, r.hold.account, r.entry.id
        )?;
    }
    Ok(exit::OK)
}

pub(crate) fn run(ctx: &Ctx<'_>, cmd: &HoldCmd, out: &mut dyn Write) -> Result<i32, CliError> {
    match cmd {
        HoldCmd::Place(a) => place(ctx, a, out),
        HoldCmd::Release(a) => {
            let id = hold_id("HOLD", &a.hold)?;
            let mut conn = ctx.conn()?;
            let r = ledger::release_hold(
                &mut conn,
                &ctx.op()?,
                id,
                &a.reason,
                &format!("release:hold-{id}"),
            )?;
            report_released(ctx, out, &r, "released")
        }
        HoldCmd::Expire(a) => {
            let id = hold_id("HOLD", &a.hold)?;
            let mut conn = ctx.conn()?;
            let r = ledger::expire_hold(&mut conn, &ctx.op()?, id, &format!("expiry:hold-{id}"))?;
            report_released(ctx, out, &r, "expired")
        }
        HoldCmd::Show(a) => {
            let id = hold_id("HOLD", &a.hold)?;
            let mut conn = ctx.conn()?;
            let h = queries::hold(&mut conn, id)?;
            let entries = queries::entries(
                &mut conn,
                &queries::EntryFilter {
                    hold_id: Some(id),
                    ..Default::default()
                },
            )?;
            if ctx.cli.json {
                let mut v = hold_json(&h);
                v["entries"] = entries.iter().map(entry_json).collect();
                print_json(out, &v)?;
            } else {
                print_table(out, &holds_table(std::slice::from_ref(&h)))?;
                print_table(out, &super::output::entries_table(&entries))?;
            }
            Ok(exit::OK)
        }
        HoldCmd::List(a) => {
            let state = a
                .state
                .as_deref()
                .map(|s| {
                    s.parse::<HoldState>()
                        .map_err(|e| CliError::usage("--state", e))
                })
                .transpose()?;
            let mut conn = ctx.conn()?;
            let holds = queries::holds(
                &mut conn,
                a.account.as_deref(),
                state,
                (a.limit > 0).then_some(a.limit),
            )?;
            if ctx.cli.json {
                print_json(out, &json!(holds.iter().map(hold_json).collect::<Vec<_>>()))?;
            } else if holds.is_empty() {
                writeln!(out, "no holds match")?;
            } else {
                print_table(out, &holds_table(&holds))?;
            }
            Ok(exit::OK)
        }
    }
}

fn place(ctx: &Ctx<'_>, a: &PlaceArgs, out: &mut dyn Write) -> Result<i32, CliError> {
    let config = ctx.config()?;
    AccountName::new(&a.account).map_err(|e| CliError::usage("--account", e))?;
    if let Some(p) = &a.partition {
        PartitionName::new(p).map_err(|e| CliError::usage("--partition", e))?;
    }
    if a.buffer.is_some() && a.amount.is_some() {
        return Err(CliError::usage(
            "--buffer",
            "applies to --estimate; --amount is held exactly",
        ));
    }
    let (estimate, buffer) = match (&a.estimate, &a.amount) {
        (Some(e), _) => {
            let buffer = match &a.buffer {
                Some(b) => b.trim().parse::<Decimal>().map_err(|_| {
                    CliError::usage("--buffer", format!("'{b}' is not a decimal like 1.2"))
                })?,
                None => config.hold_buffer(),
            };
            (non_negative_arg("--estimate", e)?, buffer)
        }
        (None, Some(x)) => (positive_arg("--amount", x)?, Decimal::ONE),
        (None, None) => return Err(CliError::usage("--estimate", "give --estimate or --amount")),
    };
    let lifetime = match &a.expires_in {
        Some(s) => parse_span(s).map_err(|e| CliError::usage("--expires-in", e))?,
        None => config.hold_lifetime(),
    };
    let job = job_arg("--job", a.job.as_deref())?;
    let cluster = optional_text("--cluster", a.cluster.as_deref())?;
    let user = optional_text("--user", a.user.as_deref())?;
    let key = user_key(a.idempotency_key.as_deref(), "hold")?;
    let op = ctx.op()?;
    let mut conn = ctx.conn()?;
    let outcome = ledger::place_hold(
        &mut conn,
        &op,
        &HoldRequest {
            account: &a.account,
            partition: a.partition.as_deref(),
            estimate,
            buffer,
            cluster: cluster.as_deref(),
            job_id: job.as_deref(),
            user_name: user.as_deref(),
            expires_at: Some(op.effective_at + lifetime),
            tasks: a.tasks,
            key: &key,
        },
    )?;
    match outcome {
        HoldOutcome::Placed {
            hold,
            replayed,
            account,
        } => {
            if ctx.cli.json {
                let mut v = hold_json(&hold);
                v["available"] = json!(true);
                v["replayed"] = json!(replayed);
                v["budget_remaining"] = m(account.available());
                print_json(out, &v)?;
            } else if replayed {
                writeln!(
                    out,
                    "already done: {} of ${} was placed by an earlier call with this key",
                    hold.reference(),
                    hold.amount
                )?;
            } else {
                writeln!(
                    out,
                    "placed {}: ${} held on '{}'; ${} still available",
                    hold.reference(),
                    hold.amount,
                    hold.account,
                    account.available()
                )?;
            }
            Ok(exit::OK)
        }
        HoldOutcome::Denied(d) => {
            if ctx.cli.json {
                print_json(
                    out,
                    &json!({"available": false, "reason": d.reason.code(), "message": d.message}),
                )?;
                Ok(exit::DENIED)
            } else {
                Err(CliError {
                    code: exit::DENIED,
                    message: format!("hold refused ({}): {}", d.reason.code(), d.message),
                })
            }
        }
    }
}

fn report_charge(ctx: &Ctx<'_>, out: &mut dyn Write, c: &ChargeOutcome) -> Result<i32, CliError> {
    if ctx.cli.json {
        print_json(
            out,
            &json!({
                "hold": c.hold.as_ref().map(hold_json),
                "charge": entry_json(&c.charge),
                "release": c.release.as_ref().map(entry_json),
                "overrun": m(c.overrun),
                "replayed": c.replayed,
                "account": account_json(&c.account, None),
            }),
        )?;
        return Ok(exit::OK);
    }
    if c.replayed {
        writeln!(
            out,
            "already done: entry {} charged ${} by an earlier call with this key",
            c.charge.id, c.charge.amount
        )?;
        return Ok(exit::OK);
    }
    match &c.hold {
        Some(h) => {
            write!(
                out,
                "charged ${} against {}",
                c.charge.amount,
                h.reference()
            )?;
            if let Some(r) = &c.release {
                write!(out, ", released ${}", r.amount)?;
            }
            if !c.overrun.is_zero() {
                write!(
                    out,
                    "; the cost exceeded the hold by ${} (flagged overrun)",
                    c.overrun
                )?;
            }
            writeln!(
                out,
                "; '{}' has ${} available",
                c.account.name,
                c.account.available()
            )?;
        }
        None => writeln!(
            out,
            "charged ${} to '{}' without a hold (flagged unmatched); ${} available",
            c.charge.amount,
            c.account.name,
            c.account.available()
        )?,
    }
    Ok(exit::OK)
}

pub(crate) fn charge(ctx: &Ctx<'_>, a: &ChargeArgs, out: &mut dyn Write) -> Result<i32, CliError> {
    let amount = non_negative_arg("--amount", &a.amount)?;
    let job = job_arg("--job", a.job.as_deref())?;
    let mut conn = ctx.conn()?;
    let op = ctx.op()?;
    let outcome = match (&a.hold, &a.account) {
        (Some(h), _) => {
            let id = hold_id("--hold", h)?;
            let key = match &a.idempotency_key {
                Some(k) => user_key(Some(k), "charge")?,
                None => format!("charge:hold-{id}"),
            };
            ledger::charge_hold(
                &mut conn,
                &op,
                &ChargeHold {
                    hold_id: id,
                    actual: amount,
                    job_id: job.as_deref(),
                    reason: &a.reason,
                    key: &key,
                },
            )?
        }
        (None, Some(acct)) => {
            if let Some(p) = &a.partition {
                PartitionName::new(p).map_err(|e| CliError::usage("--partition", e))?;
            }
            let key = user_key(a.idempotency_key.as_deref(), "charge")?;
            let user = optional_text("--user", a.user.as_deref())?;
            let cluster = optional_text("--cluster", a.cluster.as_deref())?;
            ledger::charge_without_hold(
                &mut conn,
                &op,
                &ChargeUnmatched {
                    account: acct,
                    amount,
                    partition: a.partition.as_deref(),
                    cluster: cluster.as_deref(),
                    job_id: job.as_deref(),
                    user_name: user.as_deref(),
                    reason: &a.reason,
                    key: &key,
                },
            )?
        }
        (None, None) => {
            return Err(CliError::usage(
                "--hold",
                "give --hold HOLD or --account ACCOUNT",
            ))
        }
    };
    report_charge(ctx, out, &outcome)
}

/// `asbb reconcile JOB --transaction T --actual-cost X`: one job by hand.
pub(crate) fn reconcile_manual(
    ctx: &Ctx<'_>,
    job: &str,
    transaction: &str,
    actual_cost: &str,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    let job = JobId::parse(job)
        .map_err(|e| CliError::usage("JOB", e))?
        .to_string();
    let id = hold_id("--transaction", transaction)?;
    let actual = non_negative_arg("--actual-cost", actual_cost)?;
    let mut conn = ctx.conn()?;
    // Deterministic key: re-running the same reconciliation is a no-op, not a second charge.
    let key = format!("charge:hold-{id}");
    let outcome = ledger::charge_hold(
        &mut conn,
        &ctx.op()?,
        &ChargeHold { hold_id: id, actual, job_id: Some(&job), reason: "", key: &key },
    )
    .map_err(|e| match e {
        LedgerError::IdempotencyConflict { .. } => CliError {
            code: exit::ERROR,
            message: format!("hold-{id} was already reconciled with a different cost; correct it with `asbb refund` or `asbb adjust`"),
        },
        other => other.into(),
    })?;
    report_charge(ctx, out, &outcome)
}
