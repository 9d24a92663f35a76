//! The budget check at submission: price a job, hold its estimate, and remember the answer.
//!
//! A check has two halves so that `asbb-checkd` can do the reading on its worker threads and
//! the writing on one writer thread that commits many checks together:
//!
//! - [`price`] reads (the plan, if one is named) and prices the job with the pure rules of
//!   `domain::estimate`: a plan's cost ceiling, or the partition's rates times a learned
//!   correction factor.
//! - [`commit`] writes: it returns the first answer for a client request id seen before,
//!   releases the hold a re-priced job replaces, places the hold (`ledger::place_hold`), and
//!   records the check in `checks`. Inside a caller's transaction (the writer's group commit)
//!   it joins that transaction without a savepoint of its own, so an error from it means the
//!   caller must roll back (see [`commit`]).
//!
//! [`check`] is both, for `asbb check` and for tests. Learning reads `checks` joined with the
//! reconciled `cost_records`: [`history`] for one account and partition, [`histories`] for all.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::ledger::{self, HoldOutcome, HoldRequest, LedgerError, OpContext};
use super::models::hold_reference;
use super::schema::{accounts, checks, cost_records, holds, plans};
use super::{joined_write_transaction, write_transaction, DbConn};
use crate::domain::estimate::{
    self, format_seconds, resolve_time, Correction, CorrectionPolicy, EstimateError, History,
    NoCorrection, Rates, Resources, TimeLimit,
};
use crate::domain::ledger::{request_digest, Balances};
use crate::domain::time::to_naive;
use crate::domain::{HoldState, UsdMicros};

/// Longest client request id.
pub const REQUEST_ID_LEN_MAX: usize = 128;

/// Everything the configuration says about pricing (see `Config::pricing`).
#[derive(Debug, Clone)]
pub struct Pricing {
    /// Rates by partition name.
    pub partitions: HashMap<String, Rates>,
    /// Seconds priced for a job without a time limit in a partition without a maximum.
    pub default_time_seconds: u64,
    /// A partition without rates: allowed with nothing held (`true`) or refused.
    pub allow_unpriced: bool,
    /// Hold = estimate × this.
    pub buffer: Decimal,
    /// Hold = plan ceiling × this.
    pub plan_buffer: Decimal,
    /// How long a hold lives after the job's time limit would have run out.
    pub hold_lifetime: chrono::Duration,
    /// Learned corrections.
    pub correction: CorrectionPolicy,
    /// How far back learning looks.
    pub correction_window: Duration,
    /// Cluster recorded on holds when the request names none.
    pub cluster: Option<String>,
}

impl Default for Pricing {
    fn default() -> Self {
        Pricing {
            partitions: HashMap::new(),
            default_time_seconds: 86_400,
            allow_unpriced: false,
            buffer: Decimal::new(12, 1),
            plan_buffer: Decimal::ONE,
            hold_lifetime: chrono::Duration::days(7),
            correction: CorrectionPolicy::default(),
            correction_window: Duration::from_secs(90 * 86_400),
            cluster: None,
        }
    }
}

/// A validated check request (the wire formats are read in `crate::check` and `crate::cli`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckRequest {
    /// SLURM account (a valid [`crate::domain::AccountName`]).
    pub account: String,
    /// Partition (a valid [`crate::domain::PartitionName`]).
    pub partition: String,
    /// What one task asks for.
    pub resources: Resources,
    /// The job's time limit; `None` when it gave none.
    pub time_limit: Option<TimeLimit>,
    /// Tasks of a job array; `None` for a plain job.
    pub array_tasks: Option<u64>,
    /// SLURM user.
    pub user: Option<String>,
    /// Cluster.
    pub cluster: Option<String>,
    /// Job id, when known (a job modified after submission).
    pub job_id: Option<String>,
    /// An ASBA plan id.
    pub plan: Option<String>,
    /// The client's id for this request: a retry with the same id gets the first answer.
    pub request_id: Option<String>,
    /// The hold this check replaces (a pending job whose time limit or partition changed).
    pub replace_hold: Option<i64>,
}

impl CheckRequest {
    /// Digest of everything that decides the answer, to tell a retry from a different request
    /// that reuses an id.
    pub fn digest(&self) -> String {
        let r = &self.resources;
        let t = match self.time_limit {
            Some(TimeLimit::Seconds(s)) => s.to_string(),
            Some(TimeLimit::Unlimited) => "unlimited".into(),
            None => String::new(),
        };
        let res = format!("{}/{}/{}/{}", r.nodes, r.cpus, r.gpus, r.memory_mb);
        let tasks = self.array_tasks.map(|n| n.to_string()).unwrap_or_default();
        let replace = self.replace_hold.map(|n| n.to_string()).unwrap_or_default();
        request_digest(&[
            "check",
            &self.account,
            &self.partition,
            &res,
            &t,
            &tasks,
            self.user.as_deref().unwrap_or(""),
            self.cluster.as_deref().unwrap_or(""),
            self.job_id.as_deref().unwrap_or(""),
            self.plan.as_deref().unwrap_or(""),
            &replace,
        ])
    }
}

/// Why a check could not be answered with a decision.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A field of the request is wrong.
    #[error("{field}: {message}")]
    Invalid {
        /// The field (request key or CLI flag).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A request id was reused for a different request.
    #[error("request id '{0}' was already used for a different request; use a new id")]
    RequestIdConflict(String),
    /// The same request id is being answered at this moment; retry.
    #[error("request id '{0}' is being answered by another request at this moment; retry")]
    InProgress(String),
    /// The hold to replace does not exist or belongs to another account.
    #[error("{0}")]
    UnknownHold(String),
    /// The ledger failed.
    #[error("{0}")]
    Ledger(#[from] LedgerError),
}

impl From<diesel::result::Error> for CheckError {
    fn from(e: diesel::result::Error) -> Self {
        CheckError::Ledger(LedgerError::Db(e))
    }
}

impl CheckError {
    /// Whether the database failed (the answer is "try again", not "no").
    pub fn is_db_failure(&self) -> bool {
        matches!(self, CheckError::Ledger(LedgerError::Db(_)))
    }
}

/// Parses a plan reference: a plan id, or the path of a plan file (`…/<plan-id>.json`).
pub fn plan_id(reference: &str) -> Result<String, CheckError> {
    let r = reference.trim();
    let name = r.rsplit('/').next().unwrap_or(r);
    let id = name.strip_suffix(".json").unwrap_or(name);
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(CheckError::Invalid {
            field: "plan",
            message: format!(
                "'{reference}' is neither a plan id nor the path of a plan file (<plan-id>.json)"
            ),
        });
    }
    Ok(id.to_string())
}

/// Parses a client request id.
pub fn request_id(text: &str) -> Result<String, CheckError> {
    if text.is_empty()
        || text.len() > REQUEST_ID_LEN_MAX
        || text.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(CheckError::Invalid {
            field: "request_id",
            message: format!(
                "must be 1 to {REQUEST_ID_LEN_MAX} printable characters without spaces"
            ),
        });
    }
    Ok(text.to_string())
}

// ---------------------------------------------------------------------------------------------
// The answer

/// A learned correction, as explained in an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrectionInfo {
    /// The factor applied.
    pub factor: String,
    /// Actual ÷ estimate over the history before bounding.
    pub observed: String,
    /// Runs it was learned from.
    pub runs: u64,
    /// Whether the observed factor was outside the bounds.
    pub bounded: bool,
}

/// How the estimate was made, in full, so that a user or an admin can follow it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EstimateInfo {
    /// `rates`, `plan`, or `none` (an unpriced partition).
    pub source: String,
    /// The ASBA plan used (or named and not used: see `notes`).
    pub plan_id: Option<String>,
    /// Tasks priced (1 unless an array).
    pub tasks: u64,
    /// One task at the rates, before the correction.
    pub base_per_task: String,
    /// One task after the correction.
    pub per_task: String,
    /// All tasks.
    pub total: String,
    /// Hold = total × buffer.
    pub buffer: String,
    /// Time priced, `[D-]HH:MM:SS`.
    pub time_limit: String,
    /// The same, in seconds.
    pub time_limit_seconds: u64,
    /// `request`, `partition_max` or `default`.
    pub time_source: String,
    /// Nodes per task.
    pub nodes: u64,
    /// CPUs per task.
    pub cpus: u64,
    /// GPUs per task.
    pub gpus: u64,
    /// Memory per task, MiB.
    pub memory_mb: u64,
    /// Whether the partition's minimum lifted the estimate.
    pub minimum_applied: bool,
    /// The learned correction, if one applied.
    pub correction: Option<CorrectionInfo>,
    /// Anything else worth knowing (why no correction, why a plan was not used).
    pub notes: Vec<String>,
}

/// The answer to a check: the seed's response fields, a reason code, and the estimate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckAnswer {
    /// May the job run?
    pub available: bool,
    /// The hold placed (`hold-17`), if any.
    pub transaction_id: Option<String>,
    /// The estimate of the whole job, USD.
    pub estimated_cost: String,
    /// What was held (zero when nothing was).
    pub hold_amount: String,
    /// What the account has available after this check.
    pub budget_remaining: Option<String>,
    /// Why, for a person (a SLURM user sees it when the job is refused).
    pub message: String,
    /// Why, for a program: `ok`, `no_cost`, `not_priced`, or a denial code.
    pub reason: String,
    /// The client's request id.
    pub request_id: Option<String>,
    /// Whether this is the stored first answer to an earlier request with the same id.
    pub replayed: bool,
    /// Account.
    pub account: String,
    /// Partition.
    pub partition: String,
    /// The hold this check replaced, if any.
    pub replaced_hold: Option<String>,
    /// How the estimate was made.
    pub estimate: EstimateInfo,
}

// ---------------------------------------------------------------------------------------------
// Pricing

/// What the job costs and what to hold, before anything is written.
#[derive(Debug, Clone)]
pub struct Priced {
    /// The explanation.
    pub info: EstimateInfo,
    /// Estimate of all tasks.
    pub total: UsdMicros,
    /// One task at the rates before correction (what learning compares with).
    pub base_task: UsdMicros,
    /// The buffer to hold with.
    pub buffer: Decimal,
    /// Seconds priced (the hold outlives them by the hold lifetime).
    pub seconds: u64,
    /// The correction factor applied.
    pub factor: Option<Decimal>,
    /// `rates`, `plan` or `none`.
    pub method: &'static str,
    /// What to do.
    pub kind: PricedKind,
}

/// The decision pricing alone makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PricedKind {
    /// Hold `total × buffer`.
    Hold,
    /// Nothing to hold: the estimate is zero.
    NoCost,
    /// The partition has no rates and unpriced partitions are allowed.
    NotPriced,
    /// The partition has no rates and unpriced partitions are refused.
    Unpriced,
}

/// Prices a job. `history` is the estimate-vs-actual history of its account and partition
/// (from [`history`] or a cache of [`histories`]). Reads the plan when one is named.
pub fn price(
    conn: &mut DbConn,
    pricing: &Pricing,
    req: &CheckRequest,
    history: History,
) -> Result<Priced, CheckError> {
    let tasks = req.array_tasks.unwrap_or(1);
    let mut notes = Vec::new();
    let r = req.resources;
    let mut info = EstimateInfo {
        source: "rates".into(),
        plan_id: req.plan.clone(),
        tasks,
        base_per_task: "0.00".into(),
        per_task: "0.00".into(),
        total: "0.00".into(),
        buffer: pricing.buffer.normalize().to_string(),
        time_limit: String::new(),
        time_limit_seconds: 0,
        time_source: String::new(),
        nodes: r.nodes,
        cpus: r.cpus,
        gpus: r.gpus,
        memory_mb: r.memory_mb,
        minimum_applied: false,
        correction: None,
        notes: Vec::new(),
    };
    let rates = pricing.partitions.get(&req.partition);
    let (seconds, source) = resolve_time(
        req.time_limit,
        rates.and_then(|r| r.max_time_seconds),
        pricing.default_time_seconds,
    );
    info.time_limit = format_seconds(seconds);
    info.time_limit_seconds = seconds;
    info.time_source = source.as_str().into();

    if let Some(plan) = &req.plan {
        let found: Option<(String, i64)> = plans::table
            .filter(plans::plan_id.eq(plan))
            .select((plans::account, plans::max_total_micros))
            .get_result(conn)
            .optional()?;
        match found {
            Some((account, ceiling)) if account == req.account => {
                let total = UsdMicros::from_stored(ceiling);
                info.source = "plan".into();
                info.buffer = pricing.plan_buffer.normalize().to_string();
                info.total = total.to_string();
                info.per_task = total.to_string();
                info.base_per_task = total.to_string();
                notes.push(format!(
                    "ASBA plan '{plan}' caps the whole job at ${total}; held times {}",
                    pricing.plan_buffer.normalize()
                ));
                info.notes = notes;
                return Ok(Priced {
                    info,
                    total,
                    base_task: total,
                    buffer: pricing.plan_buffer,
                    seconds,
                    factor: None,
                    method: "plan",
                    kind: if total.is_zero() {
                        PricedKind::NoCost
                    } else {
                        PricedKind::Hold
                    },
                });
            }
            Some((account, _)) => notes.push(format!(
                "ASBA plan '{plan}' is for account '{account}', not '{}': priced at the partition's rates",
                req.account
            )),
            None => notes.push(format!(
                "ASBA plan '{plan}' has not been taken in (is asbb-spoold running?): priced at the partition's rates"
            )),
        }
    }

    let Some(rates) = rates else {
        info.source = "none".into();
        notes.push(format!(
            "partition '{}' has no rates in the configuration ([partitions.{}])",
            req.partition, req.partition
        ));
        info.notes = notes;
        return Ok(Priced {
            info,
            total: UsdMicros::ZERO,
            base_task: UsdMicros::ZERO,
            buffer: pricing.buffer,
            seconds,
            factor: None,
            method: "none",
            kind: if pricing.allow_unpriced {
                PricedKind::NotPriced
            } else {
                PricedKind::Unpriced
            },
        });
    };
    let correction = Correction::learn(&history, &pricing.correction);
    let factor = match &correction {
        Ok(c) => {
            info.correction = Some(CorrectionInfo {
                factor: c.factor.normalize().to_string(),
                observed: c.observed.normalize().to_string(),
                runs: c.runs,
                bounded: c.bounded,
            });
            Some(c.factor)
        }
        Err(NoCorrection::Disabled) => None,
        Err(why) => {
            notes.push(why.to_string());
            None
        }
    };
    let e = estimate::estimate(rates, &r, seconds, factor, tasks).map_err(|e| match e {
        EstimateError::TooLarge(_) | EstimateError::OutOfRange { .. } => CheckError::Invalid {
            field: "job",
            message: e.to_string(),
        },
        other => CheckError::Invalid {
            field: "wall_time",
            message: other.to_string(),
        },
    })?;
    info.base_per_task = e.base_per_task.to_string();
    info.per_task = e.per_task.to_string();
    info.total = e.total.to_string();
    info.minimum_applied = e.minimum_applied;
    info.notes = notes;
    Ok(Priced {
        info,
        total: e.total,
        base_task: e.base_per_task,
        buffer: pricing.buffer,
        seconds,
        factor,
        method: "rates",
        kind: if e.total.is_zero() {
            PricedKind::NoCost
        } else {
            PricedKind::Hold
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Committing

fn available_of(conn: &mut DbConn, account: &str) -> Result<Option<UsdMicros>, CheckError> {
    let row: Option<(i64, i64, i64, i64)> = accounts::table
        .filter(accounts::name.eq(account))
        .select((
            accounts::credited_micros,
            accounts::charged_micros,
            accounts::held_micros,
            accounts::overdraft_micros,
        ))
        .get_result(conn)
        .optional()?;
    Ok(row.and_then(|(c, ch, h, o)| {
        Balances {
            credited: UsdMicros::from_stored(c),
            charged: UsdMicros::from_stored(ch),
            held: UsdMicros::from_stored(h),
        }
        .available(UsdMicros::from_stored(o))
        .ok()
    }))
}

/// A denial inside the savepoint of a re-pricing: rolls the release of the old hold back.
struct Rollback(Box<CheckAnswer>);

enum Inner {
    Err(CheckError),
    Rollback(Rollback),
}

impl From<diesel::result::Error> for Inner {
    fn from(e: diesel::result::Error) -> Self {
        Inner::Err(e.into())
    }
}

impl From<LedgerError> for Inner {
    fn from(e: LedgerError) -> Self {
        Inner::Err(e.into())
    }
}

impl From<CheckError> for Inner {
    fn from(e: CheckError) -> Self {
        Inner::Err(e)
    }
}

/// Decides and writes a priced check: the stored answer for a request id seen before; else the
/// hold (releasing a replaced one first) and the `checks` row.
///
/// One write transaction of its own; inside a caller's transaction it joins that one
/// directly ([`joined_write_transaction`]). A denial writes nothing (a denied re-pricing is
/// undone in a savepoint of its own), but an error may come after part of the check was
/// written: the caller must then roll its transaction back, not commit the rest. That is what
/// `asbb-checkd`'s writer does, and it then writes the batch's checks one transaction each.
/// Why no savepoint per check: SQLite copies every page a savepoint changes into its
/// statement journal first, and leaving out the two a check had (this one and the hold's)
/// cut the writer's time in the checks by about a tenth.
pub fn commit(
    conn: &mut DbConn,
    ctx: &OpContext,
    pricing: &Pricing,
    req: &CheckRequest,
    priced: &Priced,
) -> Result<CheckAnswer, CheckError> {
    let digest = req.digest();
    joined_write_transaction(conn, |conn| {
        if let Some(rid) = &req.request_id {
            let seen: Option<(String, String)> = checks::table
                .filter(checks::request_id.eq(rid))
                .select((checks::request_digest, checks::response))
                .get_result(conn)
                .optional()?;
            if let Some((d, response)) = seen {
                if d != digest {
                    return Err(CheckError::RequestIdConflict(rid.clone()));
                }
                let mut first: CheckAnswer = serde_json::from_str(&response).map_err(|e| {
                    CheckError::Ledger(LedgerError::invalid(
                        "request_id",
                        format!("the stored answer to '{rid}' cannot be read: {e}"),
                    ))
                })?;
                first.replayed = true;
                return Ok(first);
            }
        }
        let cluster = req.cluster.clone().or_else(|| pricing.cluster.clone());
        let mut answer = CheckAnswer {
            available: true,
            transaction_id: None,
            estimated_cost: priced.total.to_string(),
            hold_amount: "0.00".into(),
            budget_remaining: None,
            message: String::new(),
            reason: "ok".into(),
            request_id: req.request_id.clone(),
            replayed: false,
            account: req.account.clone(),
            partition: req.partition.clone(),
            replaced_hold: None,
            estimate: priced.info.clone(),
        };
        let mut hold_id = None;
        match priced.kind {
            PricedKind::Unpriced => {
                answer.available = false;
                answer.reason = "unpriced_partition".into();
                answer.message = format!(
                    "partition '{}' has no budget rates; ask the cluster administrators to price it",
                    req.partition
                );
            }
            PricedKind::NotPriced | PricedKind::NoCost => {
                answer.reason = if priced.kind == PricedKind::NoCost {
                    "no_cost"
                } else {
                    "not_priced"
                }
                .into();
                answer.message = format!(
                    "nothing to hold: the job is estimated at ${} in partition '{}'",
                    priced.total, req.partition
                );
                answer.budget_remaining = available_of(conn, &req.account)?.map(|a| a.to_string());
            }
            PricedKind::Hold => {
                let hold = |conn: &mut DbConn| -> Result<CheckAnswer, Inner> {
                    let mut a = answer.clone();
                    if let Some(old) = req.replace_hold {
                        a.replaced_hold = replace(conn, ctx, req, old)?;
                    }
                    let key = match &req.request_id {
                        Some(rid) => format!("check:{rid}"),
                        None => format!("check:{}", uuid::Uuid::new_v4().simple()),
                    };
                    let expires = ctx.effective_at
                        + pricing.hold_lifetime
                        + chrono::Duration::seconds(priced.seconds as i64);
                    let outcome = ledger::place_hold(
                        conn,
                        ctx,
                        &HoldRequest {
                            account: &req.account,
                            partition: Some(&req.partition),
                            estimate: priced.total,
                            buffer: priced.buffer,
                            cluster: cluster.as_deref(),
                            job_id: req.job_id.as_deref(),
                            user_name: req.user.as_deref(),
                            expires_at: Some(expires),
                            tasks: req.array_tasks.map(|n| n as u32),
                            key: &key,
                        },
                    )
                    .map_err(|e| match e {
                        LedgerError::KeyInUse(_) => Inner::Err(CheckError::InProgress(
                            req.request_id.clone().unwrap_or_default(),
                        )),
                        other => other.into(),
                    })?;
                    match outcome {
                        HoldOutcome::Placed { hold, account, .. } => {
                            a.transaction_id = Some(hold.reference());
                            a.hold_amount = hold.amount.to_string();
                            a.budget_remaining = Some(account.available().to_string());
                            a.message = format!(
                                "held ${} on '{}' (estimate ${} x {}); ${} still available",
                                hold.amount,
                                req.account,
                                priced.total,
                                priced.buffer.normalize(),
                                account.available()
                            );
                            if let Some(old) = &a.replaced_hold {
                                a.message.push_str(&format!("; replaces {old}"));
                            }
                            Ok(a)
                        }
                        HoldOutcome::Denied(d) => {
                            a.available = false;
                            a.reason = d.reason.code().into();
                            a.message = d.message;
                            a.replaced_hold = None;
                            Err(Inner::Rollback(Rollback(Box::new(a))))
                        }
                    }
                };
                // Only a re-pricing needs its own savepoint: a denial must undo the release of
                // the hold it would have replaced. A plain denial has written nothing.
                let r = if req.replace_hold.is_some() {
                    write_transaction(conn, hold)
                } else {
                    hold(conn)
                };
                answer = match r {
                    Ok(a) => {
                        hold_id = a
                            .transaction_id
                            .as_deref()
                            .and_then(super::models::parse_hold_reference);
                        a
                    }
                    Err(Inner::Rollback(Rollback(a))) => {
                        let mut a = *a;
                        a.budget_remaining =
                            available_of(conn, &req.account)?.map(|x| x.to_string());
                        a
                    }
                    Err(Inner::Err(e)) => return Err(e),
                };
            }
        }
        // Every hold is recorded (learning needs its base estimate); other answers only when a
        // retry could ask for them again.
        if hold_id.is_some() || req.request_id.is_some() {
            let response = serde_json::to_string(&answer).expect("answers serialise");
            diesel::insert_into(checks::table)
                .values((
                    checks::request_id.eq(&req.request_id),
                    checks::request_digest.eq(&digest),
                    checks::account.eq(&req.account),
                    checks::partition.eq(&req.partition),
                    checks::cluster.eq(&cluster),
                    checks::user_name.eq(&req.user),
                    checks::job_id.eq(&req.job_id),
                    checks::allowed.eq(answer.available),
                    checks::reason.eq(&answer.reason),
                    checks::hold_id.eq(hold_id),
                    checks::replaced_hold_id.eq(answer
                        .replaced_hold
                        .as_deref()
                        .and_then(super::models::parse_hold_reference)),
                    checks::method.eq(priced.method),
                    checks::plan_id.eq(if priced.method == "plan" {
                        req.plan.as_deref()
                    } else {
                        None
                    }),
                    checks::tasks.eq(priced.info.tasks as i64),
                    checks::base_task_micros.eq(priced.base_task.micros()),
                    checks::estimate_micros.eq(priced.total.micros()),
                    checks::factor.eq(priced.factor.map(|f| f.normalize().to_string())),
                    checks::seconds.eq(priced.seconds as i64),
                    checks::response.eq(&response),
                    checks::created_at.eq(to_naive(ctx.effective_at)),
                ))
                .execute(conn)
                .map_err(|e| match e {
                    diesel::result::Error::DatabaseError(
                        diesel::result::DatabaseErrorKind::UniqueViolation,
                        _,
                    ) => CheckError::InProgress(req.request_id.clone().unwrap_or_default()),
                    other => other.into(),
                })?;
        }
        Ok(answer)
    })
}

/// Releases the hold a re-priced job replaces. A hold that is no longer open (charged,
/// released, expired) is left alone: the new hold stands on its own.
fn replace(
    conn: &mut DbConn,
    ctx: &OpContext,
    req: &CheckRequest,
    old: i64,
) -> Result<Option<String>, Inner> {
    let row: Option<(String, String)> = holds::table
        .inner_join(accounts::table)
        .filter(holds::id.eq(old))
        .select((accounts::name, holds::state))
        .get_result(conn)
        .optional()?;
    let Some((account, state)) = row else {
        return Err(CheckError::UnknownHold(format!(
            "replace_hold: no hold {} (see `asbb hold list`)",
            hold_reference(old)
        ))
        .into());
    };
    if account != req.account {
        return Err(CheckError::UnknownHold(format!(
            "replace_hold: {} belongs to account '{account}', not '{}'",
            hold_reference(old),
            req.account
        ))
        .into());
    }
    if state != HoldState::Open.as_str() {
        return Ok(None);
    }
    let reason = match &req.job_id {
        Some(j) => format!("job {j} was modified and re-priced"),
        None => "the job was modified and re-priced".to_string(),
    };
    // The key names the request that replaced it: a retry replays, another re-pricing of the
    // same hold finds it resolved.
    let key = format!(
        "release:replaced:{}:{}",
        hold_reference(old),
        req.request_id.as_deref().unwrap_or("-")
    );
    match ledger::release_hold(conn, ctx, old, &reason, &key) {
        Ok(_) => Ok(Some(hold_reference(old))),
        Err(LedgerError::HoldResolved { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Prices and commits one check (`asbb check`, tests), learning from the history as of
/// `ctx.effective_at`.
pub fn check(
    conn: &mut DbConn,
    ctx: &OpContext,
    pricing: &Pricing,
    req: &CheckRequest,
) -> Result<CheckAnswer, CheckError> {
    let h = if pricing.correction.enabled && pricing.partitions.contains_key(&req.partition) {
        history(
            conn,
            &req.account,
            &req.partition,
            since(ctx.effective_at, pricing),
        )?
    } else {
        History::default()
    };
    let priced = price(conn, pricing, req, h)?;
    commit(conn, ctx, pricing, req, &priced)
}

/// The start of the learning window as of `now`.
pub fn since(now: DateTime<Utc>, pricing: &Pricing) -> DateTime<Utc> {
    now - chrono::Duration::from_std(pricing.correction_window)
        .unwrap_or(chrono::Duration::days(90))
}

// ---------------------------------------------------------------------------------------------
// Learning

type HistoryRow = (String, String, i64, i64);

fn history_rows(
    conn: &mut DbConn,
    key: Option<(&str, &str)>,
    since: DateTime<Utc>,
) -> Result<Vec<HistoryRow>, CheckError> {
    let mut q = checks::table
        .inner_join(cost_records::table.on(cost_records::hold_id.eq(checks::hold_id)))
        .filter(checks::method.eq("rates"))
        .filter(cost_records::status.eq("charged"))
        .filter(cost_records::reconciled_at.ge(to_naive(since)))
        .into_boxed();
    if let Some((account, partition)) = key {
        // Found among the charged runs (`cost_records_charged_key`): a run charged against a
        // check's hold is booked to that check's account and partition, and no index of the
        // checks is keyed by them (a check would write it at a random place).
        q = q
            .filter(cost_records::hold_id.is_not_null())
            .filter(cost_records::charged_account.eq(account))
            .filter(cost_records::charged_partition.eq(partition))
            .filter(checks::account.eq(account))
            .filter(checks::partition.eq(partition));
    }
    Ok(q.select((
        checks::account,
        checks::partition,
        checks::base_task_micros,
        cost_records::actual_micros,
    ))
    .load(conn)?)
}

fn add(h: &mut History, base: i64, actual: i64) {
    h.runs += 1;
    h.estimated = UsdMicros::from_stored(h.estimated.micros().saturating_add(base));
    h.actual = UsdMicros::from_stored(h.actual.micros().saturating_add(actual));
}

/// The estimate-vs-actual history of one account and partition: its runs reconciled since
/// `since` whose hold a rate estimate placed.
pub fn history(
    conn: &mut DbConn,
    account: &str,
    partition: &str,
    since: DateTime<Utc>,
) -> Result<History, CheckError> {
    let mut h = History::default();
    for (_, _, base, actual) in history_rows(conn, Some((account, partition)), since)? {
        add(&mut h, base, actual);
    }
    Ok(h)
}

/// The histories of every account and partition (what `asbb-checkd` caches).
pub fn histories(
    conn: &mut DbConn,
    since: DateTime<Utc>,
) -> Result<HashMap<(String, String), History>, CheckError> {
    let mut out: HashMap<(String, String), History> = HashMap::new();
    for (a, p, base, actual) in history_rows(conn, None, since)? {
        add(out.entry((a, p)).or_default(), base, actual);
    }
    Ok(out)
}

/// Open holds placed by checks (for `/metrics`).
pub fn holds_outstanding(conn: &mut DbConn) -> Result<(i64, UsdMicros), CheckError> {
    let rows: Vec<i64> = holds::table
        .filter(holds::state.eq(HoldState::Open.as_str()))
        .select(holds::remaining_micros)
        .load(conn)?;
    let total = rows.iter().fold(0i64, |a, r| a.saturating_add(*r));
    Ok((rows.len() as i64, UsdMicros::from_stored(total)))
}

// ---------------------------------------------------------------------------------------------
// Retention

/// Rows deleted per transaction by [`prune`].
pub const PRUNE_BATCH: i64 = 5_000;

/// What [`prune`] removed, or would remove (`dry_run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Checks created before this were candidates.
    pub before: DateTime<Utc>,
    /// Rows removed (or, in a dry run, that would be).
    pub removed: u64,
    /// Older rows kept because their hold is still open.
    pub kept_open: u64,
    /// Nothing was deleted.
    pub dry_run: bool,
}

/// Deletes the `checks` rows created before `before` whose hold is no longer open (or that
/// placed none), [`PRUNE_BATCH`] rows to a transaction, in id order.
///
/// A check row is the request log of the endpoint: its answer for retries with the same
/// request id, and the estimate behind a hold for learned corrections. The money is in the
/// hold and the journal, which are never touched here. A row whose hold is still open stays:
/// a retry must still find the first answer, and a re-pricing its hold. Safe to run twice (the
/// second run finds nothing) and to kill at any moment (each batch commits whole).
pub fn prune(
    conn: &mut DbConn,
    before: DateTime<Utc>,
    dry_run: bool,
) -> Result<PruneReport, LedgerError> {
    let cut = to_naive(before);
    let mut removed = 0u64;
    let mut after = 0i64;
    loop {
        let ids: Vec<i64> = checks::table
            .left_join(holds::table.on(holds::id.nullable().eq(checks::hold_id)))
            .filter(checks::id.gt(after))
            .filter(checks::created_at.lt(cut))
            .filter(
                checks::hold_id
                    .is_null()
                    .or(holds::state.ne(HoldState::Open.as_str())),
            )
            .select(checks::id)
            .order(checks::id)
            .limit(PRUNE_BATCH)
            .load(conn)?;
        let Some(last) = ids.last() else { break };
        after = *last;
        if !dry_run {
            write_transaction(conn, |c| {
                diesel::delete(checks::table.filter(checks::id.eq_any(&ids))).execute(c)
            })?;
            tracing::info!("checks prune: removed {} rows up to id {after}", ids.len());
        }
        removed += ids.len() as u64;
    }
    let kept_open: i64 = checks::table
        .inner_join(holds::table.on(holds::id.nullable().eq(checks::hold_id)))
        .filter(checks::created_at.lt(cut))
        .filter(holds::state.eq(HoldState::Open.as_str()))
        .count()
        .get_result(conn)?;
    Ok(PruneReport {
        before,
        removed,
        kept_open: u64::try_from(kept_open).unwrap_or(0),
        dry_run,
    })
}
