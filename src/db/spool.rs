//! Storing spool records exactly once, and what an administrator sees of them: conflicts,
//! rejections, counts.
//!
//! Every arrival of a file is one `spool_files` row keyed by its `file_key`; its record is
//! stored once per run (`run_key`) in `cost_records`, `job_end_records` or `plans`. A second
//! arrival with the same facts is a duplicate; with other facts it is a conflict that waits
//! for an administrator and never overwrites or charges twice.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use super::ledger::LedgerError;
use super::schema::{cost_records, job_end_records, plans, spool_files};
use super::DbConn;
use crate::domain::names::JobPart;
use crate::domain::time::{from_naive, to_naive};
use crate::spool::{Kind, Reason, Record};

/// What the intake knows about a file when it records it.
#[derive(Debug, Clone, Copy)]
pub struct FileFacts<'a> {
    /// Kind.
    pub kind: Kind,
    /// Name.
    pub name: &'a str,
    /// Arrival key.
    pub file_key: &'a str,
    /// SHA-256 of the content.
    pub sha256: &'a str,
    /// Size.
    pub size: u64,
}

/// What the file turned out to be.
#[derive(Debug, Clone, Copy)]
pub enum Content<'a> {
    /// A valid record.
    Record(&'a Record),
    /// Refused, with every reason.
    Rejected(&'a [Reason]),
}

/// Where a file's record stands after it was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A new record.
    Stored,
    /// The same facts as a record already stored.
    Duplicate,
    /// Other facts for a run already stored: for an administrator.
    Conflict,
    /// Refused.
    Rejected,
}

impl Outcome {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Stored => "stored",
            Outcome::Duplicate => "duplicate",
            Outcome::Conflict => "conflict",
            Outcome::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Outcome {
        match s {
            "stored" => Outcome::Stored,
            "duplicate" => Outcome::Duplicate,
            "conflict" => Outcome::Conflict,
            _ => Outcome::Rejected,
        }
    }
}

/// The result of recording one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The outcome.
    pub outcome: Outcome,
    /// Whether this arrival had been recorded before (a rescan after a crash): only the move
    /// is left to do.
    pub already: bool,
    /// The reasons, for a rejected file (also when `already`).
    pub reasons: Vec<Reason>,
}

/// Records one arrival. Call inside a write transaction (the intake batches many files into one).
pub fn record_file(
    conn: &mut DbConn,
    now: DateTime<Utc>,
    f: FileFacts<'_>,
    content: Content<'_>,
) -> Result<Recorded, LedgerError> {
    let seen: Option<(String, String)> = spool_files::table
        .filter(spool_files::file_key.eq(f.file_key))
        .select((spool_files::outcome, spool_files::reasons))
        .get_result(conn)
        .optional()?;
    if let Some((outcome, reasons)) = seen {
        return Ok(Recorded {
            outcome: Outcome::parse(&outcome),
            already: true,
            reasons: parse_reasons(&reasons),
        });
    }
    let now = to_naive(now);
    let (outcome, record_id, reasons) = match content {
        Content::Rejected(reasons) => (Outcome::Rejected, None, reasons.to_vec()),
        Content::Record(rec) => {
            let (outcome, id) = store_record(conn, now, rec)?;
            (outcome, Some(id), Vec::new())
        }
    };
    let reasons_json = serde_json::to_string(&reasons).expect("reasons serialise");
    diesel::insert_into(spool_files::table)
        .values((
            spool_files::kind.eq(f.kind.as_str()),
            spool_files::name.eq(f.name),
            spool_files::file_key.eq(f.file_key),
            spool_files::sha256.eq(f.sha256),
            spool_files::size_bytes.eq(i64::try_from(f.size).unwrap_or(i64::MAX)),
            spool_files::outcome.eq(outcome.as_str()),
            spool_files::record_id.eq(record_id),
            spool_files::reasons.eq(&reasons_json),
            spool_files::seen_at.eq(now),
        ))
        .execute(conn)?;
    Ok(Recorded {
        outcome,
        already: false,
        reasons,
    })
}

fn parse_reasons(text: &str) -> Vec<Reason> {
    #[derive(serde::Deserialize)]
    struct R {
        code: String,
        field: Option<String>,
        message: String,
    }
    let raw: Vec<R> = serde_json::from_str(text).unwrap_or_default();
    raw.into_iter()
        .map(|r| Reason {
            code: crate::spool::Code::parse(&r.code).unwrap_or(crate::spool::Code::BadName),
            field: r.field,
            message: r.message,
        })
        .collect()
}

fn same_or_conflict(existing: Option<(i64, String)>, digest: &str) -> Option<(Outcome, i64)> {
    existing.map(|(id, d)| {
        if d == digest {
            (Outcome::Duplicate, id)
        } else {
            (Outcome::Conflict, id)
        }
    })
}

fn store_record(
    conn: &mut DbConn,
    now: NaiveDateTime,
    rec: &Record,
) -> Result<(Outcome, i64), LedgerError> {
    match rec {
        Record::Cost(c) => {
            let key = c.run_key();
            let digest = c.content_digest();
            let existing = cost_records::table
                .filter(cost_records::run_key.eq(&key))
                .select((cost_records::id, cost_records::content_digest))
                .get_result(conn)
                .optional()?;
            if let Some(found) = same_or_conflict(existing, &digest) {
                return Ok(found);
            }
            let (task, het) = parts(c.job.part());
            let id = diesel::insert_into(cost_records::table)
                .values((
                    cost_records::run_key.eq(&key),
                    cost_records::job_id.eq(c.job.to_string()),
                    cost_records::job_base.eq(c.job.base() as i64),
                    cost_records::array_task.eq(task),
                    cost_records::het_offset.eq(het),
                    cost_records::run.eq(i64::from(c.run)),
                    cost_records::account.eq(&c.account),
                    cost_records::actual_micros.eq(c.actual.micros()),
                    cost_records::producer_estimate_micros.eq(c.estimated_cost.map(|m| m.micros())),
                    cost_records::transaction_ref.eq(&c.budget_transaction_id),
                    cost_records::job_state.eq(&c.job_state),
                    cost_records::exit_code.eq(&c.exit_code),
                    cost_records::user_name.eq(&c.user),
                    cost_records::partition.eq(&c.partition),
                    cost_records::submitted_at.eq(c.submitted_at.map(to_naive)),
                    cost_records::started_at.eq(c.started_at.map(to_naive)),
                    cost_records::completed_at.eq(c.completed_at.map(to_naive)),
                    cost_records::export_time.eq(c.export_time.map(to_naive)),
                    cost_records::content_digest.eq(&digest),
                    cost_records::status.eq("pending"),
                    cost_records::received_at.eq(now),
                ))
                .returning(cost_records::id)
                .get_result(conn)?;
            Ok((Outcome::Stored, id))
        }
        Record::JobEnd(j) => {
            let key = j.run_key();
            let digest = j.content_digest();
            let existing = job_end_records::table
                .filter(job_end_records::run_key.eq(&key))
                .select((job_end_records::id, job_end_records::content_digest))
                .get_result(conn)
                .optional()?;
            if let Some(found) = same_or_conflict(existing, &digest) {
                return Ok(found);
            }
            let (task, _) = parts(j.job.part());
            let id = diesel::insert_into(job_end_records::table)
                .values((
                    job_end_records::run_key.eq(&key),
                    job_end_records::cluster.eq(&j.cluster),
                    job_end_records::job_id.eq(j.job.to_string()),
                    job_end_records::job_base.eq(j.job.base() as i64),
                    job_end_records::array_task.eq(task),
                    job_end_records::account.eq(&j.account),
                    job_end_records::partition.eq(&j.partition),
                    job_end_records::user_name.eq(&j.user),
                    job_end_records::state.eq(&j.state),
                    job_end_records::exit_code.eq(&j.exit_code),
                    job_end_records::submitted_at.eq(to_naive(j.submitted_at)),
                    job_end_records::started_at.eq(j.started_at.map(to_naive)),
                    job_end_records::ended_at.eq(to_naive(j.ended_at)),
                    job_end_records::time_limit.eq(&j.time_limit),
                    job_end_records::nodes.eq(j.nodes.map(|n| n as i64)),
                    job_end_records::cpus.eq(j.cpus.map(|n| n as i64)),
                    job_end_records::hold_ref.eq(&j.hold_id),
                    job_end_records::content_digest.eq(&digest),
                    job_end_records::received_at.eq(now),
                ))
                .returning(job_end_records::id)
                .get_result(conn)?;
            Ok((Outcome::Stored, id))
        }
        Record::Plan(p) => {
            let digest = p.content_digest();
            let existing = plans::table
                .filter(plans::plan_id.eq(&p.plan_id))
                .select((plans::id, plans::content_digest))
                .get_result(conn)
                .optional()?;
            if let Some(found) = same_or_conflict(existing, &digest) {
                return Ok(found);
            }
            let id = diesel::insert_into(plans::table)
                .values((
                    plans::plan_id.eq(&p.plan_id),
                    plans::shape.eq(p.shape.as_str()),
                    plans::account.eq(&p.account),
                    plans::max_total_micros.eq(p.max_total_cost.micros()),
                    plans::should_burst.eq(p.should_burst),
                    plans::max_duration_micros.eq(p.max_duration_micros),
                    plans::instance_types.eq(p.instance_types.join(",")),
                    plans::instance_count.eq(p.instance_count.map(|n| n as i64)),
                    plans::purchasing_option.eq(&p.purchasing_option),
                    plans::expected_runtime_ns.eq(p.expected_runtime_ns.map(|n| n as i64)),
                    plans::confidence.eq(&p.confidence),
                    plans::generated_at.eq(p.generated_at.map(to_naive)),
                    plans::job_id.eq(p.job.map(|j| j.to_string())),
                    plans::content_digest.eq(&digest),
                    plans::received_at.eq(now),
                ))
                .returning(plans::id)
                .get_result(conn)?;
            Ok((Outcome::Stored, id))
        }
    }
}

fn parts(p: JobPart) -> (Option<i64>, Option<i64>) {
    match p {
        JobPart::None => (None, None),
        JobPart::ArrayTask(t) => (Some(i64::from(t)), None),
        JobPart::HetOffset(o) => (None, Some(i64::from(o))),
    }
}

/// A conflicting re-export, as `asbb spool conflicts` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    /// The `spool_files` id of the conflicting arrival.
    pub id: i64,
    /// Kind.
    pub kind: Kind,
    /// File name (in `processed/`).
    pub file: String,
    /// When it arrived.
    pub seen_at: DateTime<Utc>,
    /// The run it conflicts with (job and run for costs, the plan id for plans).
    pub run: String,
    /// What the stored record says, in short.
    pub stored: String,
    /// SHA-256 of the conflicting file.
    pub sha256: String,
    /// Resolution note, once an administrator has looked at it.
    pub resolution: Option<String>,
    /// Who resolved it.
    pub resolved_by: Option<String>,
}

/// Conflicts, unresolved first; `all` includes resolved ones.
pub fn conflicts(conn: &mut DbConn, all: bool) -> Result<Vec<Conflict>, LedgerError> {
    let mut q = spool_files::table
        .filter(spool_files::outcome.eq("conflict"))
        .into_boxed();
    if !all {
        q = q.filter(spool_files::resolved_at.is_null());
    }
    type Row = (
        i64,
        String,
        String,
        NaiveDateTime,
        Option<i64>,
        String,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = q
        .select((
            spool_files::id,
            spool_files::kind,
            spool_files::name,
            spool_files::seen_at,
            spool_files::record_id,
            spool_files::sha256,
            spool_files::resolution,
            spool_files::resolved_by,
        ))
        .order(spool_files::id)
        .load(conn)?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, kind, name, seen, record_id, sha, resolution, resolved_by) in rows {
        let kind = Kind::parse(&kind).unwrap_or(Kind::Cost);
        let rid = record_id.unwrap_or(0);
        let (run, stored) = match kind {
            Kind::Cost => {
                let r: Option<(String, String, i64, String)> = cost_records::table
                    .find(rid)
                    .select((
                        cost_records::run_key,
                        cost_records::account,
                        cost_records::actual_micros,
                        cost_records::status,
                    ))
                    .get_result(conn)
                    .optional()?;
                r.map(|(k, a, m, s)| {
                    (
                        k,
                        format!(
                            "account {a}, actual ${}, {s}",
                            crate::domain::UsdMicros::from_stored(m)
                        ),
                    )
                })
                .unwrap_or_default()
            }
            Kind::JobEnd => {
                let r: Option<(String, String, String)> = job_end_records::table
                    .find(rid)
                    .select((
                        job_end_records::run_key,
                        job_end_records::account,
                        job_end_records::state,
                    ))
                    .get_result(conn)
                    .optional()?;
                r.map(|(k, a, s)| (k, format!("account {a}, state {s}")))
                    .unwrap_or_default()
            }
            Kind::Plan => {
                let r: Option<(String, String, i64)> = plans::table
                    .find(rid)
                    .select((plans::plan_id, plans::account, plans::max_total_micros))
                    .get_result(conn)
                    .optional()?;
                r.map(|(k, a, m)| {
                    (
                        k,
                        format!(
                            "account {a}, ceiling ${}",
                            crate::domain::UsdMicros::from_stored(m)
                        ),
                    )
                })
                .unwrap_or_default()
            }
        };
        out.push(Conflict {
            id,
            kind,
            file: name,
            seen_at: from_naive(seen),
            run,
            stored,
            sha256: sha,
            resolution,
            resolved_by,
        });
    }
    Ok(out)
}

/// Marks a conflict as looked at, with a note (the ledger itself is corrected with `asbb
/// adjust` or `asbb refund` where needed).
pub fn resolve_conflict(
    conn: &mut DbConn,
    id: i64,
    actor: &str,
    note: &str,
    at: DateTime<Utc>,
) -> Result<(), LedgerError> {
    let n = diesel::update(
        spool_files::table
            .find(id)
            .filter(spool_files::outcome.eq("conflict"))
            .filter(spool_files::resolved_at.is_null()),
    )
    .set((
        spool_files::resolved_at.eq(Some(to_naive(at))),
        spool_files::resolved_by.eq(Some(actor)),
        spool_files::resolution.eq(Some(note)),
    ))
    .execute(conn)?;
    if n == 0 {
        return Err(LedgerError::invalid(
            "ID",
            format!("no unresolved conflict {id} (see `asbb spool conflicts`)"),
        ));
    }
    Ok(())
}

/// Counts of spool files by kind and outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SpoolCounts {
    /// `(kind, outcome, count)`.
    pub files: Vec<(String, String, i64)>,
    /// Cost records by status.
    pub cost_records: Vec<(String, i64)>,
}

/// Counts for `asbb spool status`.
pub fn counts(conn: &mut DbConn) -> Result<SpoolCounts, LedgerError> {
    use diesel::dsl::count_star;
    let files = spool_files::table
        .group_by((spool_files::kind, spool_files::outcome))
        .select((spool_files::kind, spool_files::outcome, count_star()))
        .order((spool_files::kind, spool_files::outcome))
        .load(conn)?;
    let cost = cost_records::table
        .group_by(cost_records::status)
        .select((cost_records::status, count_star()))
        .order(cost_records::status)
        .load(conn)?;
    Ok(SpoolCounts {
        files,
        cost_records: cost,
    })
}
