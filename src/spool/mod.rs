//! Spool files: the only place that knows the input formats.
//!
//! Three kinds of file arrive in spool directories: ASBX cost exports ([`cost`]), our own
//! job-end records ([`jobend`]) and ASBA plans ([`plan`]). Each reader turns one file into one
//! normalised record or into the complete list of reasons it was refused ([`Reason`]). File
//! handling (what is picked up, moved, retried) is in [`files`]; the intake loop shared by
//! `asbb spool scan` and `asbb-spoold` is in [`intake`]. Nothing here knows the database: the
//! intake loop hands records to [`crate::db::spool`].

pub mod cost;
pub mod daemon;
pub mod files;
pub mod intake;
pub mod jobend;
pub mod json;
pub mod plan;
pub mod values;

use std::fmt;

use serde::Serialize;

pub use cost::CostRecord;
pub use jobend::JobEndRecord;
pub use plan::PlanRecord;

/// The kind of a spool file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// ASBX cost export.
    Cost,
    /// Job-end record from our SLURM hook.
    JobEnd,
    /// ASBA execution plan.
    Plan,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Cost, Kind::JobEnd, Kind::Plan];

    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Cost => "cost",
            Kind::JobEnd => "job_end",
            Kind::Plan => "plan",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a file (or one of its fields) was refused. The codes are documented for producers in
/// `spool-schemas/README.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The name is a symbolic link.
    Symlink,
    /// A directory, socket, device or other non-regular file.
    NotAFile,
    /// Larger than `spool.max_file_size`.
    TooLarge,
    /// The name matches no expected pattern (or tries to traverse directories).
    BadName,
    /// The file could not be read.
    Unreadable,
    /// The bytes are not UTF-8.
    NotUtf8,
    /// Empty for longer than the grace period.
    Empty,
    /// Not valid JSON for longer than the grace period.
    InvalidJson,
    /// Valid JSON but not an object.
    NotAnObject,
    /// A key occurs twice (case-insensitively).
    DuplicateKey,
    /// The object matches none of the known shapes.
    UnknownShape,
    /// A required field is missing or null.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// A field and its alias disagree.
    ConflictingFields,
    /// An amount is not a decimal number.
    BadAmount,
    /// An amount is negative.
    NegativeAmount,
    /// An amount has more than six decimals.
    TooPrecise,
    /// An amount is above `spool.max_cost`.
    AmountTooLarge,
    /// The currency is not USD.
    UnknownCurrency,
    /// The job id is malformed.
    BadJobId,
    /// The job id is a step id (`1234.batch`), not a job.
    StepId,
    /// The job id in the name and the body disagree.
    JobIdMismatch,
    /// The cluster in the name and the body disagree.
    ClusterMismatch,
    /// The account is not a SLURM account name.
    BadAccount,
    /// A timestamp is malformed or out of order.
    BadTime,
    /// A duration is malformed.
    BadDuration,
    /// `schema_version` is not one this build reads.
    UnsupportedVersion,
    /// A number is outside its allowed range.
    OutOfRange,
}

impl Code {
    /// Every code.
    pub const ALL: [Code; 28] = [
        Code::Symlink,
        Code::NotAFile,
        Code::TooLarge,
        Code::BadName,
        Code::Unreadable,
        Code::NotUtf8,
        Code::Empty,
        Code::InvalidJson,
        Code::NotAnObject,
        Code::DuplicateKey,
        Code::UnknownShape,
        Code::MissingField,
        Code::WrongType,
        Code::ConflictingFields,
        Code::BadAmount,
        Code::NegativeAmount,
        Code::TooPrecise,
        Code::AmountTooLarge,
        Code::UnknownCurrency,
        Code::BadJobId,
        Code::StepId,
        Code::JobIdMismatch,
        Code::ClusterMismatch,
        Code::BadAccount,
        Code::BadTime,
        Code::BadDuration,
        Code::UnsupportedVersion,
        Code::OutOfRange,
    ];

    /// Parses a code.
    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Symlink => "symlink",
            Code::NotAFile => "not_a_file",
            Code::TooLarge => "too_large",
            Code::BadName => "bad_name",
            Code::Unreadable => "unreadable",
            Code::NotUtf8 => "not_utf8",
            Code::Empty => "empty",
            Code::InvalidJson => "invalid_json",
            Code::NotAnObject => "not_an_object",
            Code::DuplicateKey => "duplicate_key",
            Code::UnknownShape => "unknown_shape",
            Code::MissingField => "missing_field",
            Code::WrongType => "wrong_type",
            Code::ConflictingFields => "conflicting_fields",
            Code::BadAmount => "bad_amount",
            Code::NegativeAmount => "negative_amount",
            Code::TooPrecise => "too_precise",
            Code::AmountTooLarge => "amount_too_large",
            Code::UnknownCurrency => "unknown_currency",
            Code::BadJobId => "bad_job_id",
            Code::StepId => "step_id",
            Code::JobIdMismatch => "job_id_mismatch",
            Code::ClusterMismatch => "cluster_mismatch",
            Code::BadAccount => "bad_account",
            Code::BadTime => "bad_time",
            Code::BadDuration => "bad_duration",
            Code::UnsupportedVersion => "unsupported_version",
            Code::OutOfRange => "out_of_range",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason a file was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// Machine-readable code.
    pub code: Code,
    /// The field, when the reason is about one (`job_id`, `cost_analysis.total_cost_usd`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong, for a person.
    pub message: String,
}

impl Reason {
    /// A reason about the whole file.
    pub fn file(code: Code, message: impl Into<String>) -> Reason {
        Reason {
            code,
            field: None,
            message: message.into(),
        }
    }

    /// A reason about one field.
    pub fn field(code: Code, field: &str, message: impl Into<String>) -> Reason {
        Reason {
            code,
            field: Some(field.to_string()),
            message: message.into(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {field}: {}", self.code, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

/// Limits the readers apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest cost one run may report.
    pub max_cost: crate::domain::UsdMicros,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_cost: crate::domain::UsdMicros::from_usd(1_000_000).expect("in range"),
        }
    }
}

/// What a reader made of a file's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// A valid record.
    Record(T),
    /// Empty or not (yet) valid JSON: retried until the grace period ends, then rejected with
    /// these reasons.
    NotReady(Vec<Reason>),
    /// Refused, with every reason found.
    Rejected(Vec<Reason>),
}

/// A normalised record of any kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Cost export.
    Cost(CostRecord),
    /// Job-end record.
    JobEnd(JobEndRecord),
    /// Plan.
    Plan(PlanRecord),
}

/// Parses the top level of a spool file: empty and invalid JSON are "not ready"; anything that
/// is not an object, or has duplicated keys, is refused.
pub(crate) fn parse_object(text: &str) -> Result<json::J, Parsed<std::convert::Infallible>> {
    if text.trim().is_empty() {
        return Err(Parsed::NotReady(vec![Reason::file(
            Code::Empty,
            "the file is empty (a producer may still be writing it)",
        )]));
    }
    let j = match json::J::parse(text) {
        Ok(j) => j,
        Err(e) => {
            return Err(Parsed::NotReady(vec![Reason::file(
                Code::InvalidJson,
                format!("not valid JSON ({e}); a producer may still be writing it"),
            )]))
        }
    };
    let Some(pairs) = j.as_obj() else {
        return Err(Parsed::Rejected(vec![Reason::file(
            Code::NotAnObject,
            format!("the file holds {}, not a JSON object", j.type_name()),
        )]));
    };
    let dups = json::Fields::new(pairs).duplicates();
    if !dups.is_empty() {
        return Err(Parsed::Rejected(
            dups.into_iter()
                .map(|k| {
                    Reason::field(
                        Code::DuplicateKey,
                        &k,
                        "the key occurs more than once (keys are compared case-insensitively); \
                         which value is meant cannot be known",
                    )
                })
                .collect(),
        ));
    }
    Ok(j)
}

/// Converts an early `parse_object` failure to any record type.
pub(crate) fn early<T>(p: Parsed<std::convert::Infallible>) -> Parsed<T> {
    match p {
        Parsed::NotReady(r) => Parsed::NotReady(r),
        Parsed::Rejected(r) => Parsed::Rejected(r),
        Parsed::Record(never) => match never {},
    }
}
