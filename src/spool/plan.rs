//! ASBA execution plans: a cost ceiling proposed before submission (never a cost record).
//! Two shapes: ASBX's (`execution_metadata`) and ASBA's (`job_metadata` / `generated_at`).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::json::{Fields, J};
use super::values::Check;
use super::{early, parse_object, Code, Limits, Parsed, Reason};
use crate::domain::ledger::request_digest;
use crate::domain::names::{AccountName, JobId};
use crate::domain::UsdMicros;

/// Which producer's shape the plan had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanShape {
    /// `execution_metadata`: what ASBX reads.
    Asbx,
    /// `job_metadata` / `generated_at`: what ASBA writes.
    Asba,
}

impl PlanShape {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanShape::Asbx => "asbx",
            PlanShape::Asba => "asba",
        }
    }
}

/// A plan, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRecord {
    /// The plan id: the file name without `.json`.
    pub plan_id: String,
    /// Shape.
    pub shape: PlanShape,
    /// Account.
    pub account: String,
    /// Cost ceiling for the whole job (ASBA already added its buffer).
    pub max_total_cost: UsdMicros,
    /// Whether ASBA advises bursting to AWS.
    pub should_burst: Option<bool>,
    /// Longest expected duration, in microseconds.
    pub max_duration_micros: Option<i64>,
    /// Instance types.
    pub instance_types: Vec<String>,
    /// Instance count.
    pub instance_count: Option<u64>,
    /// `spot`, `on-demand` or `mixed`.
    pub purchasing_option: Option<String>,
    /// Expected runtime in nanoseconds.
    pub expected_runtime_ns: Option<u64>,
    /// ASBA's confidence, 0–1, as written.
    pub confidence: Option<String>,
    /// When the plan was made.
    pub generated_at: Option<DateTime<Utc>>,
    /// The job, when the ASBX shape names one.
    pub job: Option<JobId>,
}

impl PlanRecord {
    /// Digest of the facts, to tell duplicates from conflicting rewrites.
    pub fn content_digest(&self) -> String {
        let cost = self.max_total_cost.micros().to_string();
        let job = self.job.map(|j| j.to_string()).unwrap_or_default();
        let burst = format!("{:?}", self.should_burst);
        request_digest(&[
            "plan",
            &self.plan_id,
            self.shape.as_str(),
            &self.account,
            &cost,
            &burst,
            &job,
            &self.instance_types.join(","),
        ])
    }
}

/// Reads a plan named `plan_id`.
pub fn read(plan_id: &str, text: &str, lim: &Limits) -> Parsed<PlanRecord> {
    let j = match parse_object(text) {
        Ok(j) => j,
        Err(p) => return early(p),
    };
    let f = Fields::new(j.as_obj().expect("parse_object returns objects"));
    let mut c = Check::default();
    let shape = if matches!(f.get("execution_metadata"), Some(J::Obj(_))) {
        PlanShape::Asbx
    } else if matches!(f.get("job_metadata"), Some(J::Obj(_))) || f.has("generated_at") {
        PlanShape::Asba
    } else {
        return Parsed::Rejected(vec![Reason::file(
            Code::UnknownShape,
            "neither an ASBX plan (execution_metadata) nor an ASBA plan (job_metadata, generated_at)",
        )]);
    };
    let exec = c.opt_object(&f, &["execution_metadata"]);
    let meta = c.opt_object(&f, &["job_metadata"]);
    let cons = c.opt_object(&f, &["cost_constraints"]);
    let spec = c.opt_object(&f, &["instance_specification"]);
    let perf = c.opt_object(&f, &["performance_target"]);
    let should_burst = c.opt_bool(&f, &["should_burst"]);

    let sub = |c: &mut Check, prefix: &str, run: &mut dyn FnMut(&mut Check)| {
        let n = c.reasons.len();
        run(c);
        for r in &mut c.reasons[n..] {
            if let Some(field) = &mut r.field {
                *field = format!("{prefix}.{field}");
            }
        }
    };
    let mut max_total_cost = None;
    let mut max_duration_micros = None;
    let mut account_raw = None;
    match &cons {
        Some(cons) => sub(&mut c, "cost_constraints", &mut |c| {
            max_total_cost = c.req_money(cons, &["max_total_cost"], lim);
            account_raw = c.opt_str(cons, &["budget_account"]);
            max_duration_micros = c.opt_duration(cons, &["max_duration_hours"], true);
        }),
        None => c.missing(&f, &["cost_constraints"]),
    }
    if let Some(meta) = &meta {
        sub(&mut c, "job_metadata", &mut |c| {
            if account_raw.is_none() {
                account_raw = c.opt_str(meta, &["account"]);
            }
        });
    }
    let mut job = None;
    let mut generated_at = None;
    if let Some(exec) = &exec {
        sub(&mut c, "execution_metadata", &mut |c| {
            if account_raw.is_none() {
                account_raw = c.opt_str(exec, &["project_id"]);
            }
            if let Some((name, v)) = c.lookup(exec, &["job_id"]) {
                if *v != J::Str("standalone".into()) {
                    job = c.job(&name, v);
                }
            }
            generated_at = c.opt_time(exec, &["analysis_timestamp"]);
        });
    }
    if generated_at.is_none() {
        generated_at = c.opt_time(&f, &["generated_at"]);
    }
    let account = match account_raw {
        None => {
            c.reasons.push(Reason::field(
                Code::MissingField,
                "cost_constraints.budget_account",
                "the account is required (cost_constraints.budget_account, job_metadata.account or execution_metadata.project_id)",
            ));
            None
        }
        Some(a) => match AccountName::new(&a.to_ascii_lowercase()) {
            Ok(n) => Some(n.as_str().to_string()),
            Err(e) => {
                c.reasons
                    .push(Reason::field(Code::BadAccount, "account", e.to_string()));
                None
            }
        },
    };
    let mut instance_types = Vec::new();
    let mut instance_count = None;
    let mut purchasing_option = None;
    if let Some(spec) = &spec {
        sub(&mut c, "instance_specification", &mut |c| {
            instance_types = c.opt_str_array(spec, &["instance_types"]);
            instance_count = c.opt_uint(spec, &["instance_count"]);
            purchasing_option = c.opt_str(spec, &["purchasing_option"]);
            if let Some(p) = &purchasing_option {
                if !matches!(p.as_str(), "spot" | "on-demand" | "mixed") {
                    c.reasons.push(Reason::field(
                        Code::WrongType,
                        "purchasing_option",
                        format!("'{p}' is not spot, on-demand or mixed"),
                    ));
                }
            }
        });
    }
    let mut expected_runtime_ns = None;
    if let Some(perf) = &perf {
        sub(&mut c, "performance_target", &mut |c| {
            expected_runtime_ns = c.opt_uint(perf, &["expected_runtime"]);
        });
    }
    let confidence = match c.lookup(&f, &["confidence_level"]) {
        None => None,
        Some((_, J::Num(n))) => match n.parse::<rust_decimal::Decimal>() {
            Ok(d) if d >= rust_decimal::Decimal::ZERO && d <= rust_decimal::Decimal::ONE => {
                Some(n.clone())
            }
            _ => {
                c.reasons.push(Reason::field(
                    Code::OutOfRange,
                    "confidence_level",
                    format!("{n} is not between 0 and 1"),
                ));
                None
            }
        },
        Some((_, v)) => {
            c.reasons.push(Reason::field(
                Code::WrongType,
                "confidence_level",
                format!("expected a number between 0 and 1, found {}", v.type_name()),
            ));
            None
        }
    };
    if !c.is_ok() {
        return Parsed::Rejected(c.reasons);
    }
    match (account, max_total_cost) {
        (Some(account), Some(max_total_cost)) => Parsed::Record(PlanRecord {
            plan_id: plan_id.to_string(),
            shape,
            account,
            max_total_cost,
            should_burst,
            max_duration_micros,
            instance_types,
            instance_count,
            purchasing_option,
            expected_runtime_ns,
            confidence,
            generated_at,
            job,
        }),
        _ => Parsed::Rejected(c.reasons),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes() {
        let asba = r#"{"job_metadata":{"account":"bio","partition":"aws"},"generated_at":"2025-09-15T10:04:05Z",
            "should_burst":true,"cost_constraints":{"max_total_cost":120,"max_duration_hours":2},
            "instance_specification":{"instance_types":["c5.xlarge"],"instance_count":2,"purchasing_option":"spot"},
            "performance_target":{"expected_runtime":3600000000000},"confidence_level":0.85}"#;
        let Parsed::Record(p) = read("plan-1", asba, &Limits::default()) else {
            panic!()
        };
        assert_eq!(p.shape, PlanShape::Asba);
        assert_eq!(p.account, "bio");
        assert_eq!(p.max_total_cost.to_string(), "120.00");
        assert_eq!(p.job, None);
        let asbx = r#"{"execution_metadata":{"job_id":"standalone","project_id":"bio"},
            "cost_constraints":{"max_total_cost":"10.5"}}"#;
        let Parsed::Record(p) = read("p2", asbx, &Limits::default()) else {
            panic!()
        };
        assert_eq!(p.shape, PlanShape::Asbx);
        assert_eq!(p.job, None);
        let asbx = asbx.replace("standalone", "777");
        let Parsed::Record(p) = read("p3", &asbx, &Limits::default()) else {
            panic!()
        };
        assert_eq!(p.job.unwrap().to_string(), "777");
    }

    #[test]
    fn bad_plans() {
        let p = read("x", r#"{"foo":1}"#, &Limits::default());
        assert!(matches!(p, Parsed::Rejected(ref r) if r[0].code == Code::UnknownShape));
        let p = read(
            "x",
            r#"{"generated_at":null,"cost_constraints":{"max_total_cost":-1,"budget_account":"a"},"confidence_level":1.5}"#,
            &Limits::default(),
        );
        let Parsed::Rejected(r) = p else { panic!() };
        let codes: Vec<Code> = r.iter().map(|r| r.code).collect();
        assert_eq!(codes, vec![Code::NegativeAmount, Code::OutOfRange]);
    }
}
