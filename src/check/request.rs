//! The check request on the wire: the JSON body of `POST /api/v1/budget/check` and the flags of
//! `asbb check`, both read into [`RawCheck`] and validated into a [`CheckRequest`] the same way.
//!
//! Fields (null is the same as absent; keys match case-insensitively; a key given twice, an
//! unknown key, or a value of the wrong type is refused with the field named):
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `account` | string | SLURM account (required) |
//! | `partition` | string | partition (required) |
//! | `nodes` | integer | nodes (default 1) |
//! | `cpus` | integer | CPUs of the whole job (default 1 per node) |
//! | `gpus` | integer or gres string | GPUs of the whole job (`4`, `gpu:a100:4`) |
//! | `gres` | gres string | GPUs per node (`gpu:2`, `gres/gpu:a100:4`) |
//! | `tres` | TRES string | the job's totals (`cpu=4,mem=16G,node=1,gres/gpu=2`); the fields above win |
//! | `memory` | string or integer | memory per node (`64G`; a number is MiB) |
//! | `memory_per_cpu` | string or integer | memory per CPU, instead of `memory` |
//! | `wall_time` | string or integer | time limit in any SLURM spelling, or minutes |
//! | `user_id` | string or integer | SLURM user name (or uid) |
//! | `job_details` | object | free details of the job (accepted, not priced) |
//! | `array` | string | job array spec (`0-9`, `1-100%10`) |
//! | `array_size` | integer | number of array tasks, instead of `array` |
//! | `plan` | string | ASBA plan id or plan file path |
//! | `request_id` | string | client id: a retry with the same id gets the first answer |
//! | `cluster` | string | cluster name |
//! | `job_id` | string or integer | job id, when known (a modified job) |
//! | `replace_hold` | string or integer | the hold a re-priced job replaces (`hold-17`) |

use crate::db::check::{self, CheckError, CheckRequest};
use crate::db::models::parse_hold_reference;
use crate::domain::estimate::{
    array_size, parse_gpus, parse_memory_mb, parse_tres, Resources, TimeLimit, Tres,
};
use crate::domain::{AccountName, JobId, PartitionName};
use crate::spool::json::{Fields, J};

/// Every field of the request body.
pub const FIELDS: [&str; 19] = [
    "tres",
    "account",
    "partition",
    "nodes",
    "cpus",
    "gpus",
    "gres",
    "memory",
    "memory_per_cpu",
    "wall_time",
    "user_id",
    "job_details",
    "array",
    "array_size",
    "plan",
    "request_id",
    "cluster",
    "job_id",
    "replace_hold",
];

/// A check request as given, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawCheck {
    /// `account`.
    pub account: Option<String>,
    /// `partition`.
    pub partition: Option<String>,
    /// `nodes`.
    pub nodes: Option<u64>,
    /// `cpus`.
    pub cpus: Option<u64>,
    /// `gpus`.
    pub gpus: Option<String>,
    /// `gres`.
    pub gres: Option<String>,
    /// `tres`.
    pub tres: Option<String>,
    /// `memory`.
    pub memory: Option<String>,
    /// `memory_per_cpu`.
    pub memory_per_cpu: Option<String>,
    /// `wall_time`.
    pub wall_time: Option<String>,
    /// `user_id`.
    pub user: Option<String>,
    /// `array`.
    pub array: Option<String>,
    /// `array_size`.
    pub array_size: Option<u64>,
    /// `plan`.
    pub plan: Option<String>,
    /// `request_id`.
    pub request_id: Option<String>,
    /// `cluster`.
    pub cluster: Option<String>,
    /// `job_id`.
    pub job_id: Option<String>,
    /// `replace_hold`.
    pub replace_hold: Option<String>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> CheckError {
    CheckError::Invalid {
        field,
        message: message.into(),
    }
}

fn word(field: &'static str, v: Option<&String>, len: usize) -> Result<Option<String>, CheckError> {
    match v {
        None => Ok(None),
        Some(t)
            if !t.is_empty()
                && t.len() <= len
                && t.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@')
                }) =>
        {
            Ok(Some(t.clone()))
        }
        Some(t) => Err(invalid(
            field,
            format!("'{t}' must be 1 to {len} letters, digits, '_', '-', '.' or '@'"),
        )),
    }
}

impl RawCheck {
    /// Validates every field; the first fault is named.
    pub fn validate(&self) -> Result<CheckRequest, CheckError> {
        let account = self
            .account
            .as_deref()
            .ok_or_else(|| invalid("account", "is required"))?;
        AccountName::new(account).map_err(|e| invalid("account", e.to_string()))?;
        let partition = self
            .partition
            .as_deref()
            .ok_or_else(|| invalid("partition", "is required"))?;
        PartitionName::new(partition).map_err(|e| invalid("partition", e.to_string()))?;
        let tres = match &self.tres {
            Some(t) => parse_tres(t).map_err(|e| invalid("tres", e.to_string()))?,
            None => Tres::default(),
        };
        let nodes = self.nodes.or(tres.nodes).unwrap_or(1);
        if nodes == 0 {
            return Err(invalid("nodes", "must be at least 1"));
        }
        let cpus = self.cpus.or(tres.cpus).unwrap_or(nodes);
        if cpus == 0 {
            return Err(invalid("cpus", "must be at least 1"));
        }
        let mut gpus = match &self.gpus {
            Some(g) => parse_gpus(g).map_err(|e| invalid("gpus", e.to_string()))?,
            None if self.gres.is_none() => tres.gpus,
            None => 0,
        };
        if let Some(g) = &self.gres {
            let per_node = parse_gpus(g).map_err(|e| invalid("gres", e.to_string()))?;
            gpus = per_node
                .checked_mul(nodes)
                .and_then(|x| x.checked_add(gpus))
                .ok_or_else(|| invalid("gres", "too many GPUs"))?;
        }
        let memory_mb = match (&self.memory, &self.memory_per_cpu) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "memory_per_cpu",
                    "give memory (per node) or memory_per_cpu, not both",
                ))
            }
            (Some(m), None) => parse_memory_mb(m)
                .map_err(|e| invalid("memory", e.to_string()))?
                .checked_mul(nodes),
            (None, Some(m)) => parse_memory_mb(m)
                .map_err(|e| invalid("memory_per_cpu", e.to_string()))?
                .checked_mul(cpus),
            (None, None) => Some(tres.memory_mb.unwrap_or(0)),
        }
        .ok_or_else(|| invalid("memory", "too much memory"))?;
        let resources = Resources {
            nodes,
            cpus,
            gpus,
            memory_mb,
        };
        resources
            .check()
            .map_err(|e| invalid("job", e.to_string()))?;
        let time_limit = self
            .wall_time
            .as_deref()
            .map(TimeLimit::parse)
            .transpose()
            .map_err(|e| invalid("wall_time", e.to_string()))?;
        let array_tasks = match (&self.array, self.array_size) {
            (Some(_), Some(_)) => {
                return Err(invalid("array_size", "give array or array_size, not both"))
            }
            (Some(spec), None) => {
                Some(array_size(spec).map_err(|e| invalid("array", e.to_string()))?)
            }
            (None, Some(0)) => return Err(invalid("array_size", "must be at least 1")),
            (None, Some(n)) if n > crate::domain::estimate::ARRAY_TASKS_MAX => {
                return Err(invalid(
                    "array_size",
                    format!(
                        "{n} is more than {} tasks",
                        crate::domain::estimate::ARRAY_TASKS_MAX
                    ),
                ))
            }
            (None, n) => n,
        };
        let job_id = self
            .job_id
            .as_deref()
            .map(|j| {
                JobId::parse(j)
                    .map(|j| j.to_string())
                    .map_err(|e| invalid("job_id", e.to_string()))
            })
            .transpose()?;
        let replace_hold = self
            .replace_hold
            .as_deref()
            .map(|h| {
                parse_hold_reference(h).ok_or_else(|| {
                    invalid(
                        "replace_hold",
                        format!("'{h}' is not a hold id (hold-17 or 17)"),
                    )
                })
            })
            .transpose()?;
        let cluster = word("cluster", self.cluster.as_ref(), 64)?;
        if let Some(c) = &cluster {
            PartitionName::new(c).map_err(|e| invalid("cluster", e.to_string()))?;
        }
        Ok(CheckRequest {
            account: account.to_string(),
            partition: partition.to_string(),
            resources,
            time_limit,
            array_tasks,
            user: word("user_id", self.user.as_ref(), 64)?,
            cluster,
            job_id,
            plan: self.plan.as_deref().map(check::plan_id).transpose()?,
            request_id: self
                .request_id
                .as_deref()
                .map(check::request_id)
                .transpose()?,
            replace_hold,
        })
    }
}

/// Reads a request body. Every fault is a [`CheckError::Invalid`] naming the field.
pub fn from_json(body: &[u8]) -> Result<RawCheck, CheckError> {
    let text = std::str::from_utf8(body).map_err(|_| invalid("body", "is not UTF-8"))?;
    let j = J::parse(text).map_err(|e| invalid("body", format!("is not valid JSON: {e}")))?;
    let pairs = j.as_obj().ok_or_else(|| {
        invalid(
            "body",
            format!("must be a JSON object, not {}", j.type_name()),
        )
    })?;
    let f = Fields::new(pairs);
    if let Some(d) = f.duplicates().first() {
        return Err(CheckError::Invalid {
            field: "body",
            message: format!("key '{d}' is given twice"),
        });
    }
    if let Some(u) = f.unknown(&FIELDS).first() {
        return Err(CheckError::Invalid {
            field: "body",
            message: format!("unknown field '{u}' (fields: {})", FIELDS.join(", ")),
        });
    }
    let field = |name: &'static str| match f.get(name) {
        None | Some(J::Null) => None,
        Some(v) => Some(v),
    };
    let string = |name: &'static str| -> Result<Option<String>, CheckError> {
        match field(name) {
            None => Ok(None),
            Some(J::Str(s)) => Ok(Some(s.clone())),
            Some(v) => Err(invalid(
                name,
                format!("must be a string, not {}", v.type_name()),
            )),
        }
    };
    let integer = |name: &'static str| -> Result<Option<u64>, CheckError> {
        match field(name) {
            None => Ok(None),
            Some(J::Num(n)) => n.parse::<u64>().map(Some).map_err(|_| {
                invalid(
                    name,
                    format!("must be a whole number of at least 0, not {n}"),
                )
            }),
            Some(v) => Err(invalid(
                name,
                format!("must be a whole number, not {}", v.type_name()),
            )),
        }
    };
    let string_or_int = |name: &'static str| -> Result<Option<String>, CheckError> {
        match field(name) {
            None => Ok(None),
            Some(J::Str(s)) => Ok(Some(s.clone())),
            Some(J::Num(n)) if n.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(n.clone())),
            Some(v) => Err(invalid(
                name,
                format!("must be a string or a whole number, not {v}"),
            )),
        }
    };
    match field("job_details") {
        None | Some(J::Obj(_)) => {}
        Some(v) => {
            return Err(invalid(
                "job_details",
                format!("must be an object, not {}", v.type_name()),
            ))
        }
    }
    Ok(RawCheck {
        account: string("account")?,
        partition: string("partition")?,
        nodes: integer("nodes")?,
        cpus: integer("cpus")?,
        gpus: string_or_int("gpus")?,
        gres: string("gres")?,
        tres: string("tres")?,
        memory: string_or_int("memory")?,
        memory_per_cpu: string_or_int("memory_per_cpu")?,
        wall_time: string_or_int("wall_time")?,
        user: string_or_int("user_id")?,
        array: string("array")?,
        array_size: integer("array_size")?,
        plan: string("plan")?,
        request_id: string("request_id")?,
        cluster: string("cluster")?,
        job_id: string_or_int("job_id")?,
        replace_hold: string_or_int("replace_hold")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> String {
        match from_json(body.as_bytes()).and_then(|r| r.validate()) {
            Err(CheckError::Invalid { field, message }) => format!("{field}: {message}"),
            other => panic!("{body}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_full_request() {
        let r = from_json(
            br#"{"account":"ml-proj-001","partition":"gpu-aws","nodes":2,"cpus":16,"gres":"gpu:2",
                 "memory":"64G","wall_time":"1-00:00:00","user_id":"alice","job_details":{"name":"x"},
                 "array":"0-9","request_id":"c1:42","cluster":"c1","plan":"/var/spool/asba/plans/p-1.json"}"#,
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(r.resources.gpus, 4);
        assert_eq!(r.resources.memory_mb, 2 * 65_536);
        assert_eq!(r.time_limit, Some(TimeLimit::Seconds(86_400)));
        assert_eq!(r.array_tasks, Some(10));
        assert_eq!(r.plan.as_deref(), Some("p-1"));
        let r = from_json(br#"{"account":"a","partition":"p","wall_time":90,"gpus":"gres/gpu:a100:4","memory_per_cpu":"2G","cpus":4}"#)
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(r.time_limit, Some(TimeLimit::Seconds(5_400)));
        assert_eq!((r.resources.gpus, r.resources.memory_mb), (4, 8_192));
        let r = from_json(
            br#"{"account":"a","partition":"p","tres":"cpu=8,mem=4G,node=2,gres/gpu=2"}"#,
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(
            r.resources,
            Resources {
                nodes: 2,
                cpus: 8,
                gpus: 2,
                memory_mb: 4_096
            }
        );
    }

    #[test]
    fn faults_name_their_field() {
        for (body, want) in [
            ("[1]", "body: must be a JSON object"),
            ("{", "body: is not valid JSON"),
            (
                r#"{"account":"a","account":"b"}"#,
                "body: key 'account' is given twice",
            ),
            (
                r#"{"account":"a","partition":"p","wall_tme":"1"}"#,
                "body: unknown field 'wall_tme'",
            ),
            (r#"{"partition":"p"}"#, "account: is required"),
            (
                r#"{"account":"A","partition":"p"}"#,
                "account: account name 'A' has upper-case",
            ),
            (
                r#"{"account":"a","partition":"p","nodes":"2"}"#,
                "nodes: must be a whole number, not a string",
            ),
            (
                r#"{"account":"a","partition":"p","nodes":-1}"#,
                "nodes: must be a whole number of at least 0",
            ),
            (
                r#"{"account":"a","partition":"p","nodes":1.5}"#,
                "nodes: must be a whole number of at least 0",
            ),
            (
                r#"{"account":"a","partition":"p","nodes":0}"#,
                "nodes: must be at least 1",
            ),
            (
                r#"{"account":"a","partition":"p","wall_time":"soon"}"#,
                "wall_time: 'soon' is not a SLURM time limit",
            ),
            (
                r#"{"account":"a","partition":"p","wall_time":true}"#,
                "wall_time: must be a string or a whole number",
            ),
            (
                r#"{"account":"a","partition":"p","memory":"lots"}"#,
                "memory: 'lots' is not a memory size",
            ),
            (
                r#"{"account":"a","partition":"p","gpus":"gpu:x:y:z"}"#,
                "gpus: 'gpu:x:y:z' is not a GPU count",
            ),
            (
                r#"{"account":"a","partition":"p","array":"9-1"}"#,
                "array: '9-1' is not a job array spec",
            ),
            (
                r#"{"account":"a","partition":"p","user_id":"a b"}"#,
                "user_id: 'a b' must be",
            ),
            (
                r#"{"account":"a","partition":"p","request_id":""}"#,
                "request_id: must be 1 to",
            ),
            (
                r#"{"account":"a","partition":"p","replace_hold":"h"}"#,
                "replace_hold: 'h' is not a hold id",
            ),
            (
                r#"{"account":"a","partition":"p","job_details":"x"}"#,
                "job_details: must be an object",
            ),
            (
                r#"{"account":"a","partition":"p","plan":"../"}"#,
                "plan: '../' is neither",
            ),
            (
                r#"{"account":"a","partition":"p","nodes":200000}"#,
                "job: nodes 200000 is out of range",
            ),
        ] {
            let got = field_of(body);
            assert!(got.starts_with(want), "{body}: {got}");
        }
    }
}
