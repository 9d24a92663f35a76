//! `asbb deposit`, `asbb adjust`, `asbb refund`.

use std::io::Write;

use clap::Args;
use serde_json::json;

use super::output::{account_json, entry_json, print_json};
use super::{amount_arg, job_arg, positive_arg, user_key, CliError, Ctx};
use crate::db::ledger::{self, LedgerError, MoneyOp, OpContext, Posted};
use crate::db::DbConn;
use crate::exit;

/// `asbb deposit`.
#[derive(Debug, Args)]
pub struct DepositArgs {
    /// SLURM account name.
    pub account: String,
    /// Amount in USD, e.g. 250 or 118.50.
    #[arg(allow_hyphen_values = true)]
    pub amount: String,
    /// Why, recorded in the journal.
    #[arg(long, default_value = "deposit")]
    pub reason: String,
    /// Makes a retry safe: a second call with the same key books nothing [default: a new key].
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

/// `asbb adjust`.
#[derive(Debug, Args)]
pub struct AdjustArgs {
    /// SLURM account name.
    pub account: String,
    /// Signed amount in USD: -50 lowers the budget, 25.5 raises it.
    #[arg(allow_hyphen_values = true)]
    pub amount: String,
    /// Why (required).
    #[arg(long)]
    pub reason: String,
    /// Makes a retry safe [default: a new key].
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

/// `asbb refund`.
#[derive(Debug, Args)]
pub struct RefundArgs {
    /// SLURM account name.
    pub account: String,
    /// Amount in USD to give back.
    #[arg(allow_hyphen_values = true)]
    pub amount: String,
    /// Why (required), e.g. "NODE_FAIL on job 1234".
    #[arg(long)]
    pub reason: String,
    /// The job refunded, if any.
    #[arg(long, value_name = "JOB")]
    pub job: Option<String>,
    /// The partition the refunded cost was charged in (gives its partition limit room back).
    #[arg(long)]
    pub partition: Option<String>,
    /// Makes a retry safe [default: a new key].
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

fn report(ctx: &Ctx<'_>, out: &mut dyn Write, verb: &str, p: &Posted) -> Result<i32, CliError> {
    if ctx.cli.json {
        print_json(
            out,
            &json!({"entry": entry_json(&p.entry), "replayed": p.replayed, "account": account_json(&p.account, None)}),
        )?;
    } else if p.replayed {
        writeln!(
            out,
            "already done: entry {} ({verb} ${}) was booked by an earlier call with this key",
            p.entry.id, p.entry.amount
        )?;
    } else {
        writeln!(
            out,
            "{verb} ${} on '{}' (entry {}); available now ${}",
            p.entry.amount,
            p.account.name,
            p.entry.id,
            p.account.available()
        )?;
    }
    Ok(exit::OK)
}

/// The ledger operations that take a [`MoneyOp`].
type MoneyFn = fn(&mut DbConn, &OpContext, &MoneyOp<'_>) -> Result<Posted, LedgerError>;

fn post(
    ctx: &Ctx<'_>,
    out: &mut dyn Write,
    verb: &str,
    f: MoneyFn,
    op: &MoneyOp<'_>,
) -> Result<i32, CliError> {
    let mut conn = ctx.conn()?;
    let p = f(&mut conn, &ctx.op()?, op)?;
    report(ctx, out, verb, &p)
}

pub(crate) fn deposit(
    ctx: &Ctx<'_>,
    a: &DepositArgs,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    let amount = positive_arg("AMOUNT", &a.amount)?;
    let key = user_key(a.idempotency_key.as_deref(), "deposit")?;
    let op = MoneyOp {
        account: &a.account,
        amount,
        reason: &a.reason,
        key: &key,
        job_id: None,
        partition: None,
    };
    post(ctx, out, "deposited", ledger::credit, &op)
}

pub(crate) fn adjust(ctx: &Ctx<'_>, a: &AdjustArgs, out: &mut dyn Write) -> Result<i32, CliError> {
    let amount = amount_arg("AMOUNT", &a.amount)?;
    let key = user_key(a.idempotency_key.as_deref(), "adjust")?;
    let op = MoneyOp {
        account: &a.account,
        amount,
        reason: &a.reason,
        key: &key,
        job_id: None,
        partition: None,
    };
    post(ctx, out, "adjusted by", ledger::adjust, &op)
}

pub(crate) fn refund(ctx: &Ctx<'_>, a: &RefundArgs, out: &mut dyn Write) -> Result<i32, CliError> {
    let amount = positive_arg("AMOUNT", &a.amount)?;
    if let Some(p) = &a.partition {
        crate::domain::PartitionName::new(p).map_err(|e| CliError::usage("--partition", e))?;
    }
    let job = job_arg("--job", a.job.as_deref())?;
    let key = user_key(a.idempotency_key.as_deref(), "refund")?;
    let op = MoneyOp {
        account: &a.account,
        amount,
        reason: &a.reason,
        key: &key,
        job_id: job.as_deref(),
        partition: a.partition.as_deref(),
    };
    post(ctx, out, "refunded", ledger::refund, &op)
}
