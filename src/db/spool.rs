//! Storing spool records exactly once, and what an administrator sees of them: conflicts,
//! rejections, counts.
//!
//! Every arrival of a file is one `spool_files` row keyed by its `file_key`; its record is
//! stored once per run (`run_key`) in `cost_records`, `job_end_records` or `plans`. A second
//! arrival with the same facts is a duplicate; with other facts it is a conflict that waits
//! for an administrator and never overwrites or charges twice.

use std::collections::HashMap;

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

/// Records one arrival. Call inside a write transaction.
pub fn record_file(
    conn: &mut DbConn,
    now: DateTime<Utc>,
    f: FileFacts<'_>,
    content: Content<'_>,
) -> Result<Recorded, LedgerError> {
    Ok(record_batch(conn, now, &[(f, content)])?.remove(0))
}

/// Records a batch of arrivals with a handful of statements, not a handful per file: which
/// arrivals and runs are already known is read in one query each, new cost records and all
/// arrivals are inserted as multi-row statements. Files of one batch that carry the same run
/// are told apart in order (the first is stored, the next a duplicate or a conflict). Call
/// inside a write transaction; the result is in the order of `items`.
pub fn record_batch(
    conn: &mut DbConn,
    now: DateTime<Utc>,
    items: &[(FileFacts<'_>, Content<'_>)],
) -> Result<Vec<Recorded>, LedgerError> {
    let now = to_naive(now);
    let keys: Vec<&str> = items.iter().map(|(f, _)| f.file_key).collect();
    let seen: HashMap<String, (String, String)> = spool_files::table
        .filter(spool_files::file_key.eq_any(&keys))
        .select((
            spool_files::file_key,
            spool_files::outcome,
            spool_files::reasons,
        ))
        .load::<(String, String, String)>(conn)?
        .into_iter()
        .map(|(k, o, r)| (k, (o, r)))
        .collect();
    // Runs of the batch's cost records already stored: run key -> (id, digest).
    let run_keys: Vec<String> = items
        .iter()
        .filter(|(f, _)| !seen.contains_key(f.file_key))
        .filter_map(|(_, c)| match c {
            Content::Record(Record::Cost(r)) => Some(r.run_key()),
            _ => None,
        })
        .collect();
    let mut runs: HashMap<String, (Option<i64>, String)> = cost_records::table
        .filter(cost_records::run_key.eq_any(&run_keys))
        .select((
            cost_records::run_key,
            cost_records::id,
            cost_records::content_digest,
        ))
        .load::<(String, i64, String)>(conn)?
        .into_iter()
        .map(|(k, id, d)| (k, (Some(id), d)))
        .collect();

    enum Slot {
        Known(i64),
        /// A cost record inserted by this batch, by run key.
        New(String),
        None,
    }
    let mut out = Vec::with_capacity(items.len());
    let mut slots: Vec<Option<(Outcome, Slot, Vec<Reason>)>> = Vec::with_capacity(items.len());
    let mut new_costs: Vec<&crate::spool::CostRecord> = Vec::new();
    for (f, content) in items {
        if let Some((outcome, reasons)) = seen.get(f.file_key) {
            out.push(Some(Recorded {
                outcome: Outcome::parse(outcome),
                already: true,
                reasons: parse_reasons(reasons),
            }));
            slots.push(None);
            continue;
        }
        out.push(None);
        let slot = match content {
            Content::Rejected(reasons) => (Outcome::Rejected, Slot::None, reasons.to_vec()),
            Content::Record(Record::Cost(c)) => {
                let key = c.run_key();
                let digest = c.content_digest();
                match runs.get(&key) {
                    Some((id, d)) => {
                        let outcome = if *d == digest {
                            Outcome::Duplicate
                        } else {
                            Outcome::Conflict
                        };
                        let slot = id.map_or(Slot::New(key.clone()), Slot::Known);
                        (outcome, slot, Vec::new())
                    }
                    None => {
                        runs.insert(key.clone(), (None, digest));
                        new_costs.push(c);
                        (Outcome::Stored, Slot::New(key), Vec::new())
                    }
                }
            }
            Content::Record(rec) => {
                let (outcome, id) = store_record(conn, now, rec)?;
                (outcome, Slot::Known(id), Vec::new())
            }
        };
        slots.push(Some(slot));
    }
    // The new cost records, in chunks that keep within both backends' limits on bind values.
    let mut new_ids: HashMap<String, i64> = HashMap::new();
    if let DbConn::Postgres(c) = &mut *conn {
        // One statement of fixed text (see `pg_batch`).
        let rows: Vec<NewCostRow<'_>> = new_costs.iter().map(|c| new_cost_row(c, now)).collect();
        new_ids.extend(
            super::pg_batch::insert_cost_records(c, &rows)?
                .into_iter()
                .map(|(id, k)| (k, id)),
        );
    } else {
        for chunk in new_costs.chunks(500) {
            let rows: Vec<NewCostRow<'_>> = chunk.iter().map(|c| new_cost_row(c, now)).collect();
            let ids: Vec<(i64, String)> =
                on_backend!(&mut *conn, |c| diesel::insert_into(cost_records::table)
                    .values(&rows)
                    .returning((cost_records::id, cost_records::run_key))
                    .get_results(c)?);
            new_ids.extend(ids.into_iter().map(|(id, k)| (k, id)));
        }
    }
    let mut file_rows = Vec::new();
    for ((f, _), (done, slot)) in items.iter().zip(out.iter_mut().zip(slots)) {
        let Some((outcome, slot, reasons)) = slot else {
            continue;
        };
        let record_id = match slot {
            Slot::Known(id) => Some(id),
            Slot::New(key) => new_ids.get(&key).copied(),
            Slot::None => None,
        };
        file_rows.push(NewFileRow {
            kind: f.kind.as_str(),
            name: f.name,
            file_key: f.file_key,
            sha256: f.sha256,
            size_bytes: i64::try_from(f.size).unwrap_or(i64::MAX),
            outcome: outcome.as_str(),
            record_id,
            reasons: serde_json::to_string(&reasons).expect("reasons serialise"),
            seen_at: now,
        });
        *done = Some(Recorded {
            outcome,
            already: false,
            reasons,
        });
    }
    if let DbConn::Postgres(c) = &mut *conn {
        super::pg_batch::insert_spool_files(c, &file_rows)?;
    } else {
        for chunk in file_rows.chunks(1000) {
            on_backend!(&mut *conn, |c| diesel::insert_into(spool_files::table)
                .values(chunk)
                .execute(c)?);
        }
    }
    Ok(out
        .into_iter()
        .map(|r| r.expect("every item decided"))
        .collect())
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
            let id = diesel::insert_into(cost_records::table)
                .values(&new_cost_row(c, now))
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

/// The row of a new cost record.
#[derive(Insertable, Clone)]
#[diesel(table_name = cost_records)]
// `None` is NULL, never DEFAULT: then diesel inserts many rows with one statement on SQLite
// too (with a possible DEFAULT it sends one statement per row).
#[diesel(treat_none_as_default_value = false)]
pub(super) struct NewCostRow<'a> {
    pub(super) run_key: String,
    pub(super) job_id: String,
    pub(super) job_base: i64,
    pub(super) array_task: Option<i64>,
    pub(super) het_offset: Option<i64>,
    pub(super) run: i64,
    pub(super) account: &'a str,
    pub(super) actual_micros: i64,
    pub(super) producer_estimate_micros: Option<i64>,
    pub(super) transaction_ref: Option<&'a str>,
    pub(super) job_state: Option<&'a str>,
    pub(super) exit_code: Option<&'a str>,
    pub(super) user_name: Option<&'a str>,
    pub(super) partition: Option<&'a str>,
    pub(super) submitted_at: Option<NaiveDateTime>,
    pub(super) started_at: Option<NaiveDateTime>,
    pub(super) completed_at: Option<NaiveDateTime>,
    pub(super) export_time: Option<NaiveDateTime>,
    pub(super) content_digest: String,
    pub(super) status: &'a str,
    pub(super) received_at: NaiveDateTime,
    pub(super) instance_types: String,
}

fn new_cost_row(c: &crate::spool::CostRecord, now: NaiveDateTime) -> NewCostRow<'_> {
    let (task, het) = parts(c.job.part());
    NewCostRow {
        run_key: c.run_key(),
        job_id: c.job.to_string(),
        job_base: c.job.base() as i64,
        array_task: task,
        het_offset: het,
        run: i64::from(c.run),
        account: &c.account,
        actual_micros: c.actual.micros(),
        producer_estimate_micros: c.estimated_cost.map(|m| m.micros()),
        transaction_ref: c.budget_transaction_id.as_deref(),
        job_state: c.job_state.as_deref(),
        exit_code: c.exit_code.as_deref(),
        user_name: c.user.as_deref(),
        partition: c.partition.as_deref(),
        submitted_at: c.submitted_at.map(to_naive),
        started_at: c.started_at.map(to_naive),
        completed_at: c.completed_at.map(to_naive),
        export_time: c.export_time.map(to_naive),
        content_digest: c.content_digest(),
        status: "pending",
        received_at: now,
        instance_types: c.instance_types.join(","),
    }
}

/// A new `spool_files` row.
#[derive(Insertable, Clone)]
#[diesel(table_name = spool_files)]
// `None` is NULL, never DEFAULT: then diesel inserts many rows with one statement on SQLite
// too (with a possible DEFAULT it sends one statement per row).
#[diesel(treat_none_as_default_value = false)]
pub(super) struct NewFileRow<'a> {
    pub(super) kind: &'a str,
    pub(super) name: &'a str,
    pub(super) file_key: &'a str,
    pub(super) sha256: &'a str,
    pub(super) size_bytes: i64,
    pub(super) outcome: &'a str,
    pub(super) record_id: Option<i64>,
    pub(super) reasons: String,
    pub(super) seen_at: NaiveDateTime,
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
