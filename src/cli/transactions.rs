//! `asbb transactions list|show`.

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::json;

use super::output::{entries_table, entry_json, print_json, print_table, ts};
use super::{job_arg, CliError, Ctx};
use crate::db::models::hold_reference;
use crate::db::queries::{self, EntryFilter};
use crate::domain::ledger::{EntryKind, HoldState};
use crate::domain::time::{parse_span, DateInput};
use crate::exit;

/// `asbb transactions`.
#[derive(Debug, Subcommand)]
pub enum TransactionsCmd {
    /// List journal entries, newest first.
    List(ListArgs),
    /// Show one journal entry with its hash-chain links.
    Show(ShowArgs),
}

/// `asbb transactions list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this account.
    #[arg(long)]
    pub account: Option<String>,
    /// Only this job.
    #[arg(long)]
    pub job: Option<String>,
    /// Only this type: credit (deposit), hold, release, charge, refund, adjustment, expiry.
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// Only entries whose hold is: pending (open), charged, released, expired.
    #[arg(long)]
    pub status: Option<String>,
    /// Only the last span, e.g. 30d, 12h, 2w (counted back from --as-of or now).
    #[arg(long, value_name = "SPAN", conflicts_with = "since")]
    pub last: Option<String>,
    /// Only entries effective on or after this date.
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// Only entries effective before this date.
    #[arg(long, value_name = "DATE")]
    pub until: Option<String>,
    /// At most this many, newest first (0 = all).
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
}

/// `asbb transactions show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Entry id.
    pub id: i64,
}

pub(crate) fn run(
    ctx: &Ctx<'_>,
    cmd: &TransactionsCmd,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    match cmd {
        TransactionsCmd::List(a) => {
            let kind = a
                .kind
                .as_deref()
                .map(|k| {
                    k.parse::<EntryKind>()
                        .map_err(|e| CliError::usage("--type", e))
                })
                .transpose()?;
            let hold_state = a
                .status
                .as_deref()
                .map(|s| {
                    s.parse::<HoldState>()
                        .map_err(|e| CliError::usage("--status", e))
                })
                .transpose()?;
            let since = match (&a.last, &a.since) {
                (Some(span), _) => Some(
                    ctx.as_of()? - parse_span(span).map_err(|e| CliError::usage("--last", e))?,
                ),
                (None, Some(d)) => Some(
                    DateInput::parse(d)
                        .map_err(|e| CliError::usage("--since", e))?
                        .start(),
                ),
                (None, None) => None,
            };
            let until = a
                .until
                .as_deref()
                .map(|d| {
                    DateInput::parse(d)
                        .map(|d| d.start())
                        .map_err(|e| CliError::usage("--until", e))
                })
                .transpose()?;
            let job_id = job_arg("--job", a.job.as_deref())?;
            if a.limit < 0 {
                return Err(CliError::usage("--limit", "must be 0 (all) or more"));
            }
            let filter = EntryFilter {
                account: a.account.clone(),
                job_id,
                kind,
                hold_state,
                since,
                until,
                hold_id: None,
                limit: (a.limit > 0).then_some(a.limit),
            };
            let mut conn = ctx.conn()?;
            let entries = queries::entries(&mut conn, &filter)?;
            if ctx.cli.json {
                print_json(
                    out,
                    &json!(entries.iter().map(entry_json).collect::<Vec<_>>()),
                )?;
            } else if entries.is_empty() {
                writeln!(out, "no journal entries match")?;
            } else {
                print_table(out, &entries_table(&entries))?;
                if a.limit > 0 && entries.len() as i64 == a.limit {
                    writeln!(out, "showing the newest {}; use --limit 0 for all", a.limit)?;
                }
            }
        }
        TransactionsCmd::Show(a) => {
            let mut conn = ctx.conn()?;
            let e = queries::entry(&mut conn, a.id)?.ok_or_else(|| CliError {
                code: exit::ERROR,
                message: format!("no journal entry {} (see `asbb transactions list`)", a.id),
            })?;
            if ctx.cli.json {
                print_json(out, &entry_json(&e))?;
            } else {
                super::output::kv(
                    out,
                    &[
                        ("entry", e.id.to_string()),
                        (
                            "account",
                            format!("{} (entry #{} of its chain)", e.account, e.seq),
                        ),
                        ("type", e.kind.to_string()),
                        ("amount", format!("${}", e.amount)),
                        (
                            "effect",
                            format!(
                                "credited {:+}, charged {:+}, held {:+} (micro-dollars)",
                                e.effect.credited.micros(),
                                e.effect.charged.micros(),
                                e.effect.held.micros()
                            ),
                        ),
                        (
                            "hold",
                            e.hold_id
                                .map(|h| {
                                    format!(
                                        "{}{}",
                                        hold_reference(h),
                                        e.hold_state.map(|s| format!(" ({s})")).unwrap_or_default()
                                    )
                                })
                                .unwrap_or_default(),
                        ),
                        ("job", e.job_id.clone().unwrap_or_default()),
                        ("cluster", e.cluster.clone().unwrap_or_default()),
                        ("partition", e.partition.clone().unwrap_or_default()),
                        ("user", e.user_name.clone().unwrap_or_default()),
                        ("actor", e.actor.clone()),
                        ("reason", e.reason.clone()),
                        ("flags", e.flags.clone()),
                        ("idempotency key", e.idempotency_key.clone()),
                        ("effective", ts(e.effective_at)),
                        ("recorded", ts(e.recorded_at)),
                        ("previous hash", e.prev_hash.clone()),
                        ("hash", e.hash.clone()),
                    ],
                )?;
            }
        }
    }
    Ok(exit::OK)
}
