//! Job-end records: our own format, written by the SLURM jobcomp hook once for every finished
//! job (jobs cancelled while pending included). `spool-schemas/job-end.v1.schema.json`.

use chrono::{DateTime, Utc};

use super::json::{Fields, J};
use super::values::Check;
use super::{early, parse_object, Code, Parsed, Reason};
use crate::domain::ledger::request_digest;
use crate::domain::names::{AccountName, JobId};

/// The record version this build reads and the hook writes.
pub const SCHEMA_VERSION: u64 = 1;

/// One finished run of a job, as SLURM saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEndRecord {
    /// SLURM cluster name.
    pub cluster: String,
    /// The job (an array task as `ARRAYJOBID_TASK`).
    pub job: JobId,
    /// SLURM's own id of this task.
    pub raw_job_id: Option<u64>,
    /// Account, lower case.
    pub account: String,
    /// Partition.
    pub partition: Option<String>,
    /// User name.
    pub user: Option<String>,
    /// Final state, upper case, first word.
    pub state: String,
    /// Exit code `N:S`.
    pub exit_code: Option<String>,
    /// Submission time.
    pub submitted_at: DateTime<Utc>,
    /// Start time; `None` for a job that never started.
    pub started_at: Option<DateTime<Utc>>,
    /// End time.
    pub ended_at: DateTime<Utc>,
    /// Time limit as SLURM printed it.
    pub time_limit: Option<String>,
    /// Nodes.
    pub nodes: Option<u64>,
    /// CPUs.
    pub cpus: Option<u64>,
    /// The hold `job_submit.lua` attached (`hold-17`).
    pub hold_id: Option<String>,
}

impl JobEndRecord {
    /// The key of this run: cluster, job, submission and start (a requeued job starts again).
    pub fn run_key(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.cluster,
            self.job,
            self.submitted_at.timestamp(),
            self.started_at.map_or(0, |t| t.timestamp())
        )
    }

    /// Whether the job ended without ever running.
    pub fn never_started(&self) -> bool {
        self.started_at.is_none()
    }

    /// Digest of the facts, to tell duplicates from conflicting rewrites.
    pub fn content_digest(&self) -> String {
        let ended = self.ended_at.timestamp().to_string();
        request_digest(&[
            "job-end",
            &self.run_key(),
            &self.account,
            self.partition.as_deref().unwrap_or(""),
            self.user.as_deref().unwrap_or(""),
            &self.state,
            self.exit_code.as_deref().unwrap_or(""),
            &ended,
            self.hold_id.as_deref().unwrap_or(""),
        ])
    }
}

/// Reads a job-end record; `name` carries the cluster and job id from the file name.
pub fn read(name: Option<(&str, &JobId)>, text: &str) -> Parsed<JobEndRecord> {
    let j = match parse_object(text) {
        Ok(j) => j,
        Err(p) => return early(p),
    };
    let f = Fields::new(j.as_obj().expect("parse_object returns objects"));
    let mut c = Check::default();
    match c.lookup(&f, &["schema_version"]) {
        None => c.missing(&f, &["schema_version"]),
        Some((_, J::Num(n))) if n.parse::<u64>() == Ok(SCHEMA_VERSION) => {}
        Some((_, v)) => c.reasons.push(Reason::field(
            Code::UnsupportedVersion,
            "schema_version",
            format!(
                "version {v} is not one this asbb reads (it reads {SCHEMA_VERSION}); upgrade asbb"
            ),
        )),
    }
    let cluster = c.req_str(&f, &["cluster"]);
    if let Some(cl) = &cluster {
        if cl.is_empty()
            || cl.len() > 64
            || !cl
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            c.reasons.push(Reason::field(
                Code::WrongType,
                "cluster",
                format!("'{cl}' is not a cluster name (letters, digits, _ and -)"),
            ));
        }
    }
    let job = c.req_job(&f, &["job_id"]);
    let raw_job_id = c.opt_uint(&f, &["raw_job_id"]);
    c.opt_uint(&f, &["array_job_id"]);
    c.opt_uint(&f, &["array_task_id"]);
    let account = c.req_str(&f, &["account"]).and_then(|a| {
        let lower = a.to_ascii_lowercase();
        match AccountName::new(&lower) {
            Ok(n) => Some(n.as_str().to_string()),
            Err(e) => {
                c.reasons
                    .push(Reason::field(Code::BadAccount, "account", e.to_string()));
                None
            }
        }
    });
    let partition = c.opt_str(&f, &["partition"]);
    let user = c.opt_str(&f, &["user"]);
    c.opt_uint(&f, &["uid"]);
    let state = c.req_str(&f, &["state"]).and_then(|s| {
        let first = s.split_whitespace().next().map(str::to_ascii_uppercase);
        if first.is_none() {
            c.reasons.push(Reason::field(
                Code::MissingField,
                "state",
                "state is empty; it is required (COMPLETED, FAILED, CANCELLED, ...)",
            ));
        }
        first
    });
    let exit_code = c.opt_exit_code(&f, "exit_code");
    c.opt_exit_code(&f, "derived_exit_code");
    let submitted_at = c.req_time(&f, &["submit_time"]);
    let started_at = c.opt_time(&f, &["start_time"]);
    let ended_at = c.req_time(&f, &["end_time"]);
    if let Some(end) = ended_at {
        if started_at.is_some_and(|s| end < s) || submitted_at.is_some_and(|s| end < s) {
            c.reasons.push(Reason::field(
                Code::BadTime,
                "end_time",
                "end_time is earlier than start_time or submit_time",
            ));
        }
    }
    let time_limit = c.opt_str(&f, &["time_limit"]);
    let nodes = c.opt_uint(&f, &["nodes"]);
    let cpus = c.opt_uint(&f, &["cpus"]);
    c.opt_str(&f, &["job_name"]);
    c.opt_str(&f, &["qos"]);
    let hold_id = c.opt_str(&f, &["hold_id"]);
    if let Some(h) = &hold_id {
        if crate::db::models::parse_hold_reference(h).is_none() {
            c.reasons.push(Reason::field(
                Code::WrongType,
                "hold_id",
                format!("'{h}' is not a hold id (hold-17)"),
            ));
        }
    }
    c.opt_time(&f, &["written_at"]);
    if let (Some((name_cluster, name_job)), Some(cl), Some(jb)) = (name, &cluster, &job) {
        if name_cluster != cl {
            c.reasons.push(Reason::field(
                Code::ClusterMismatch,
                "cluster",
                format!("the file name says cluster {name_cluster} but the body says {cl}"),
            ));
        }
        if name_job != jb {
            c.reasons.push(Reason::field(
                Code::JobIdMismatch,
                "job_id",
                format!("the file name says job {name_job} but the body says {jb}"),
            ));
        }
    }
    if !c.is_ok() {
        return Parsed::Rejected(c.reasons);
    }
    match (cluster, job, account, state, submitted_at, ended_at) {
        (
            Some(cluster),
            Some(job),
            Some(account),
            Some(state),
            Some(submitted_at),
            Some(ended_at),
        ) => Parsed::Record(JobEndRecord {
            cluster,
            job,
            raw_job_id,
            account,
            partition,
            user,
            state,
            exit_code,
            submitted_at,
            started_at,
            ended_at,
            time_limit,
            nodes,
            cpus,
            hold_id,
        }),
        _ => Parsed::Rejected(c.reasons),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"schema_version":1,"cluster":"lab","job_id":"1234_5","raw_job_id":1240,
        "array_job_id":1234,"array_task_id":5,"account":"physics","partition":"aws","user":"alice",
        "uid":1000,"state":"CANCELLED by 1000","exit_code":"0:15","submit_time":1737000000,
        "start_time":null,"end_time":1737000500,"time_limit":"1-00:00:00","nodes":1,"cpus":4,
        "hold_id":"hold-17"}"#;

    #[test]
    fn reads_a_cancelled_array_task() {
        let id = JobId::parse("1234_5").unwrap();
        let Parsed::Record(r) = read(Some(("lab", &id)), OK) else {
            panic!("{:?}", read(None, OK))
        };
        assert_eq!(r.state, "CANCELLED");
        assert!(r.never_started());
        assert_eq!(r.run_key(), "lab:1234_5:1737000000:0");
        assert_eq!(r.hold_id.as_deref(), Some("hold-17"));
    }

    #[test]
    fn version_cluster_and_order_are_checked() {
        let bad = OK
            .replace("\"schema_version\":1", "\"schema_version\":2")
            .replace("\"end_time\":1737000500", "\"end_time\":1736000000");
        let id = JobId::parse("1234_5").unwrap();
        let Parsed::Rejected(rs) = read(Some(("other", &id)), &bad) else {
            panic!()
        };
        let mut codes: Vec<Code> = rs.iter().map(|r| r.code).collect();
        codes.sort();
        assert_eq!(
            codes,
            vec![
                Code::ClusterMismatch,
                Code::BadTime,
                Code::UnsupportedVersion
            ]
        );
    }
}
