//! ASBX cost exports: `job_<ID>_cost.json`, `job-<ID>-asbb-reconciliation.json` and the nested
//! `job-<ID>-performance.json`, in every shape and alias listed in `spool-schemas/`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::json::{Fields, J};
use super::values::Check;
use super::{early, parse_object, Code, Limits, Parsed, Reason};
use crate::domain::ledger::request_digest;
use crate::domain::names::{AccountName, JobId};
use crate::domain::UsdMicros;

/// The account name ASBX writes into anonymised exports.
pub const ANONYMIZED: &str = "anonymized";

/// Which shape the file had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CostShape {
    /// The flat export (`job_<ID>_cost.json` or the reconciliation file).
    Flat,
    /// The nested performance file.
    Performance,
}

/// One job run's actual cost, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostRecord {
    /// The job (array task and het component included).
    pub job: JobId,
    /// The run: ASBX's `restart_count` (0 for the first run of the job).
    pub run: u32,
    /// The SLURM account, lower case; [`ANONYMIZED`] when the export hid it.
    pub account: String,
    /// Actual cost of this run.
    pub actual: UsdMicros,
    /// The hold this run belongs to, as the producer wrote it (`hold-17`, `txn_17`).
    pub budget_transaction_id: Option<String>,
    /// SLURM state, upper case, first word (`CANCELLED by 1000` → `CANCELLED`).
    pub job_state: Option<String>,
    /// Exit code as `N` or `N:S`.
    pub exit_code: Option<String>,
    /// User.
    pub user: Option<String>,
    /// Partition.
    pub partition: Option<String>,
    /// Submission time.
    pub submitted_at: Option<DateTime<Utc>>,
    /// Start time.
    pub started_at: Option<DateTime<Utc>>,
    /// End time.
    pub completed_at: Option<DateTime<Utc>>,
    /// When the producer exported the record.
    pub export_time: Option<DateTime<Utc>>,
    /// Wall time in microseconds.
    pub duration_micros: Option<i64>,
    /// What the producer expected the run to cost.
    pub estimated_cost: Option<UsdMicros>,
    /// Instance types used.
    pub instance_types: Vec<String>,
    /// Which shape the file had.
    pub shape: CostShape,
    /// Keys the reader did not know (ignored, logged).
    pub unknown_keys: Vec<String>,
}

impl CostRecord {
    /// The key of this run: the job id and the run number.
    pub fn run_key(&self) -> String {
        format!("{}#{}", self.job, self.run)
    }

    /// The digest of what matters for money. Two exports of one run with the same digest are
    /// duplicates; with different digests they are a conflict for an administrator.
    pub fn content_digest(&self) -> String {
        let actual = self.actual.micros().to_string();
        let run = self.run.to_string();
        let job = self.job.to_string();
        request_digest(&[
            "cost",
            &job,
            &run,
            &self.account,
            &actual,
            self.budget_transaction_id.as_deref().unwrap_or(""),
            self.job_state.as_deref().unwrap_or(""),
            self.partition.as_deref().unwrap_or(""),
            self.user.as_deref().unwrap_or(""),
        ])
    }

    /// Whether the account was hidden by an anonymised export.
    pub fn is_anonymized(&self) -> bool {
        self.account == ANONYMIZED
    }
}

const FLAT_KEYS: &[&str] = &[
    "job_id",
    "slurm_job_id",
    "account",
    "project_id",
    "actual_cost",
    "total_cost_usd",
    "currency",
    "budget_transaction_id",
    "job_state",
    "success",
    "exit_code",
    "user_id",
    "partition",
    "submitted_at",
    "started_at",
    "completed_at",
    "export_time",
    "restart_count",
    "duration_hours",
    "actual_wall_time",
    "estimated_cost",
    "estimated_cost_usd",
    "compute_cost",
    "compute_cost_usd",
    "storage_cost",
    "storage_cost_usd",
    "network_cost",
    "network_cost_usd",
    "aws_cost",
    "aws_cost_usd",
    "local_cost",
    "local_cost_usd",
    "cost_breakdown",
    "spot_savings",
    "spot_savings_usd",
    "instance_types",
    "instance_types_used",
];

const INFORMATIONAL: &[[&str; 2]] = &[
    ["compute_cost", "compute_cost_usd"],
    ["storage_cost", "storage_cost_usd"],
    ["network_cost", "network_cost_usd"],
    ["aws_cost", "aws_cost_usd"],
    ["local_cost", "local_cost_usd"],
    ["spot_savings", "spot_savings_usd"],
];

/// Reads a cost export. `name_job` is the job id in the file name, which must agree with the
/// body's.
pub fn read(name_job: Option<&JobId>, text: &str, lim: &Limits) -> Parsed<CostRecord> {
    let j = match parse_object(text) {
        Ok(j) => j,
        Err(p) => return early(p),
    };
    let top = Fields::new(j.as_obj().expect("parse_object returns objects"));
    let mut c = Check::default();
    let is_perf = matches!(top.get("job_metadata"), Some(J::Obj(_)))
        && matches!(top.get("cost_analysis"), Some(J::Obj(_)));
    let rec = if is_perf {
        read_performance(&top, &mut c, lim, name_job)
    } else {
        read_flat(&top, &mut c, lim, name_job)
    };
    match rec {
        Some(r) if c.is_ok() => Parsed::Record(r),
        _ => Parsed::Rejected(c.reasons),
    }
}

fn account(c: &mut Check, field: &str, raw: Option<String>) -> Option<String> {
    let raw = raw?;
    let lower = raw.to_ascii_lowercase();
    match AccountName::new(&lower) {
        Ok(a) => Some(a.as_str().to_string()),
        Err(e) => {
            c.reasons
                .push(Reason::field(Code::BadAccount, field, e.to_string()));
            None
        }
    }
}

fn state(raw: Option<String>) -> Option<String> {
    raw.and_then(|s| s.split_whitespace().next().map(str::to_ascii_uppercase))
}

fn currency(c: &mut Check, f: &Fields<'_>) {
    if let Some(cur) = c.opt_str(f, &["currency"]) {
        if !cur.eq_ignore_ascii_case("USD") {
            c.reasons.push(Reason::field(
                Code::UnknownCurrency,
                "currency",
                format!("'{cur}' is not USD; asbb books US dollars only"),
            ));
        }
    }
}

/// The job id in the file name must be the body's.
fn check_name(c: &mut Check, field: &str, body: Option<&JobId>, name: Option<&JobId>) {
    if let (Some(body), Some(name)) = (body, name) {
        if body != name {
            c.reasons.push(Reason::field(
                Code::JobIdMismatch,
                field,
                format!("the file name says job {name} but the body says {body}; a file carries one job"),
            ));
        }
    }
}

fn read_flat(
    f: &Fields<'_>,
    c: &mut Check,
    lim: &Limits,
    name_job: Option<&JobId>,
) -> Option<CostRecord> {
    let job = c.req_job(f, &["job_id", "slurm_job_id"]);
    check_name(c, "job_id", job.as_ref(), name_job);
    let acct_raw = c.req_str(f, &["account", "project_id"]);
    let account = account(c, "account", acct_raw);
    let actual = c.req_money(f, &["actual_cost", "total_cost_usd"], lim);
    currency(c, f);
    let budget_transaction_id = c.opt_str(f, &["budget_transaction_id"]);
    let success = c.opt_bool(f, &["success"]);
    let job_state = state(c.opt_str(f, &["job_state"])).or(match success {
        Some(true) => Some("COMPLETED".into()),
        Some(false) => Some("FAILED".into()),
        None => None,
    });
    let exit_code = c.opt_exit_code(f, "exit_code");
    let user = c.opt_str(f, &["user_id"]);
    let partition = c.opt_str(f, &["partition"]);
    let submitted_at = c.opt_time(f, &["submitted_at"]);
    let started_at = c.opt_time(f, &["started_at"]);
    let completed_at = c.opt_time(f, &["completed_at"]);
    let export_time = c.opt_time(f, &["export_time"]);
    let run = c.opt_uint(f, &["restart_count"]).unwrap_or(0);
    let run = match u32::try_from(run) {
        Ok(r) => r,
        Err(_) => {
            c.reasons.push(Reason::field(
                Code::OutOfRange,
                "restart_count",
                format!("{run} restarts is not plausible"),
            ));
            0
        }
    };
    let hours = c.opt_duration(f, &["duration_hours"], true);
    let wall = c.opt_duration(f, &["actual_wall_time"], false);
    let estimated_cost = c.opt_money(f, &["estimated_cost", "estimated_cost_usd"], lim);
    for pair in INFORMATIONAL {
        c.opt_money(f, pair, lim);
    }
    c.opt_object(f, &["cost_breakdown"]);
    let instance_types = c.opt_str_array(f, &["instance_types", "instance_types_used"]);
    Some(CostRecord {
        job: job?,
        run,
        account: account?,
        actual: actual?,
        budget_transaction_id,
        job_state,
        exit_code,
        user,
        partition,
        submitted_at,
        started_at,
        completed_at,
        export_time,
        duration_micros: wall.or(hours),
        estimated_cost,
        instance_types,
        shape: CostShape::Flat,
        unknown_keys: f.unknown(FLAT_KEYS).into_iter().map(String::from).collect(),
    })
}

fn read_performance(
    top: &Fields<'_>,
    c: &mut Check,
    lim: &Limits,
    name_job: Option<&JobId>,
) -> Option<CostRecord> {
    let meta = c.opt_object(top, &["job_metadata"])?;
    let costs = c.opt_object(top, &["cost_analysis"])?;
    let prefix = |c: &mut Check, from: usize, p: &str| {
        for r in &mut c.reasons[from..] {
            if let Some(f) = &mut r.field {
                *f = format!("{p}.{f}");
            }
        }
    };
    let n = c.reasons.len();
    let job = c.req_job(&meta, &["job_id", "slurm_job_id"]);
    check_name(c, "job_id", job.as_ref(), name_job);
    let acct_raw = c.req_str(&meta, &["project_id", "account"]);
    let account = account(c, "project_id", acct_raw);
    let user = c.opt_str(&meta, &["user_id"]);
    let partition = c.opt_str(&meta, &["partition"]);
    let exec = c.opt_object(&meta, &["actual_execution"]);
    prefix(c, n, "job_metadata");
    let n = c.reasons.len();
    let actual = c.req_money(&costs, &["total_cost_usd", "actual_cost"], lim);
    prefix(c, n, "cost_analysis");
    if let Some(exec) = exec {
        // Informational; when it disagrees, cost_analysis.total_cost_usd wins.
        let n = c.reasons.len();
        c.opt_money(&exec, &["actual_cost_usd"], lim);
        prefix(c, n, "job_metadata.actual_execution");
    }
    currency(c, top);
    let job_state = state(c.opt_str(top, &["job_state"]));
    let export_time = c.opt_time(top, &["export_time", "generated_at"]);
    Some(CostRecord {
        job: job?,
        run: 0,
        account: account?,
        actual: actual?,
        budget_transaction_id: c.opt_str(top, &["budget_transaction_id"]),
        job_state,
        exit_code: None,
        user,
        partition,
        submitted_at: None,
        started_at: None,
        completed_at: None,
        export_time,
        duration_micros: None,
        estimated_cost: None,
        instance_types: Vec::new(),
        shape: CostShape::Performance,
        unknown_keys: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(p: &Parsed<CostRecord>) -> Vec<Code> {
        match p {
            Parsed::Rejected(r) | Parsed::NotReady(r) => {
                let mut v: Vec<Code> = r.iter().map(|r| r.code).collect();
                v.sort();
                v.dedup();
                v
            }
            Parsed::Record(_) => vec![],
        }
    }

    #[test]
    fn flat_export_with_aliases() {
        let text = r#"{"slurm_job_id":"slurm_67890","project_id":"Physics","total_cost_usd":"118.50",
            "success":false,"started_at":"0001-01-01T00:00:00Z","restart_count":1,
            "actual_wall_time":"2h0m0s","instance_types_used":null,"cost_breakdown":{"ec2":1},
            "spot_savings_usd":3,"whatever":1}"#;
        let id = JobId::parse("67890").unwrap();
        let Parsed::Record(r) = read(Some(&id), text, &Limits::default()) else {
            panic!("{:?}", read(Some(&id), text, &Limits::default()))
        };
        assert_eq!(r.account, "physics");
        assert_eq!(r.actual.to_string(), "118.50");
        assert_eq!(r.job_state.as_deref(), Some("FAILED"));
        assert_eq!(r.started_at, None);
        assert_eq!(r.run, 1);
        assert_eq!(r.run_key(), "67890#1");
        assert_eq!(r.duration_micros, Some(7_200_000_000));
        assert_eq!(r.unknown_keys, vec!["whatever".to_string()]);
    }

    #[test]
    fn every_reason_is_reported() {
        let text = r#"{"job_id":"1234.batch","account":7,"actual_cost":12.3456789,
            "currency":"EUR","started_at":"yesterday"}"#;
        let p = read(None, text, &Limits::default());
        assert_eq!(
            codes(&p),
            vec![
                Code::WrongType,
                Code::TooPrecise,
                Code::UnknownCurrency,
                Code::StepId,
                Code::BadTime
            ]
        );
    }

    #[test]
    fn name_and_body_must_agree_and_aliases_must_not_conflict() {
        let id = JobId::parse("2").unwrap();
        let p = read(
            Some(&id),
            r#"{"job_id":1,"account":"a","actual_cost":1}"#,
            &Limits::default(),
        );
        assert_eq!(codes(&p), vec![Code::JobIdMismatch]);
        let p = read(
            None,
            r#"{"job_id":1,"slurm_job_id":"2","account":"a","actual_cost":1}"#,
            &Limits::default(),
        );
        assert_eq!(codes(&p), vec![Code::ConflictingFields]);
        let p = read(
            None,
            r#"{"job_id":1,"slurm_job_id":"1","account":"a","actual_cost":1}"#,
            &Limits::default(),
        );
        assert!(matches!(p, Parsed::Record(_)));
    }

    #[test]
    fn empty_and_partial_files_are_not_ready() {
        assert!(matches!(
            read(None, "", &Limits::default()),
            Parsed::NotReady(_)
        ));
        assert!(matches!(
            read(None, "{\"job_id\": 1, \"acc", &Limits::default()),
            Parsed::NotReady(_)
        ));
        assert_eq!(
            codes(&read(None, "[1]", &Limits::default())),
            vec![Code::NotAnObject]
        );
        assert_eq!(
            codes(&read(
                None,
                r#"{"job_id":1,"JOB_ID":1}"#,
                &Limits::default()
            )),
            vec![Code::DuplicateKey]
        );
    }

    #[test]
    fn performance_shape_prefers_total_cost() {
        let text = r#"{"job_metadata":{"job_id":"555","project_id":"bio","user_id":"u",
            "actual_execution":{"actual_cost_usd":9}},"cost_analysis":{"total_cost_usd":10.25}}"#;
        let Parsed::Record(r) = read(None, text, &Limits::default()) else {
            panic!()
        };
        assert_eq!(r.actual.to_string(), "10.25");
        assert_eq!(r.shape, CostShape::Performance);
        let p = read(
            None,
            r#"{"job_metadata":{"job_id":"x"},"cost_analysis":{}}"#,
            &Limits::default(),
        );
        let Parsed::Rejected(rs) = p else { panic!() };
        let fields: Vec<_> = rs.iter().filter_map(|r| r.field.clone()).collect();
        assert_eq!(
            fields,
            vec![
                "job_metadata.job_id",
                "job_metadata.project_id",
                "cost_analysis.total_cost_usd"
            ]
        );
    }
}
