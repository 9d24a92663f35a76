//! Validated names: SLURM accounts and partitions, job references.

use std::fmt;

/// Longest account or partition name accepted. SLURM itself allows longer names, but nothing
/// this long is a sensible account, and the limit keeps tables, file names and logs tidy.
pub const NAME_LEN_MAX: usize = 64;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty name.
    #[error("{what} name is empty")]
    Empty {
        /// "account" or "partition".
        what: &'static str,
    },
    /// Too long.
    #[error("{what} name '{name}' is longer than {NAME_LEN_MAX} characters")]
    TooLong {
        /// "account" or "partition".
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// Upper case: SLURM folds account names to lower case, so the ledger would never match.
    #[error("{what} name '{name}' has upper-case letters; SLURM stores account names in lower case, use '{lower}'")]
    UpperCase {
        /// "account" or "partition".
        what: &'static str,
        /// The name given.
        name: String,
        /// The lower-case spelling.
        lower: String,
    },
    /// A character outside `[a-z0-9_.-]` (account) or `[A-Za-z0-9_.-]` (partition).
    #[error("{what} name '{name}' contains '{ch}'; use letters, digits, '_', '-' and '.' only")]
    BadChar {
        /// "account" or "partition".
        what: &'static str,
        /// The name given.
        name: String,
        /// The offending character.
        ch: char,
    },
    /// Must start with a letter or digit.
    #[error("{what} name '{name}' must start with a letter or a digit")]
    BadStart {
        /// "account" or "partition".
        what: &'static str,
        /// The name given.
        name: String,
    },
}

fn check(what: &'static str, name: &str, allow_upper: bool) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > NAME_LEN_MAX {
        return Err(NameError::TooLong {
            what,
            name: name.into(),
        });
    }
    if !allow_upper && name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(NameError::UpperCase {
            what,
            name: name.into(),
            lower: name.to_ascii_lowercase(),
        });
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(NameError::BadChar {
            what,
            name: name.into(),
            ch,
        });
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(NameError::BadStart {
            what,
            name: name.into(),
        });
    }
    Ok(())
}

/// A SLURM account name as SLURM stores it: lower case letters, digits, `_`, `-`, `.`.
///
/// These names are also safe to put into a shell command or a file name, which the SLURM
/// integration relies on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountName(String);

impl AccountName {
    /// Validates a SLURM account name.
    pub fn new(name: &str) -> Result<Self, NameError> {
        check("account", name, false)?;
        Ok(AccountName(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SLURM partition name (SLURM keeps their case).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionName(String);

impl PartitionName {
    /// Validates a partition name.
    pub fn new(name: &str) -> Result<Self, NameError> {
        check("partition", name, true)?;
        Ok(PartitionName(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PartitionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a job id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job id '{0}' is not a SLURM job id (expected 1234, 1234_5 for an array task, or 1234+1 for a het component)")]
pub struct JobIdError(pub String);

/// A SLURM job id: a base id with an optional array task or heterogeneous component offset.
///
/// Step ids (`1234.batch`) are not jobs and are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId {
    base: u64,
    part: JobPart,
}

/// What follows the base id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobPart {
    /// A plain job.
    None,
    /// An array task: `1234_5`.
    ArrayTask(u32),
    /// A heterogeneous job component: `1234+1`.
    HetOffset(u32),
}

impl JobId {
    /// Parses `1234`, `1234_5`, `1234+1`; also the prefixed forms `job_1234` and `slurm_1234`
    /// that some producers write.
    pub fn parse(text: &str) -> Result<JobId, JobIdError> {
        let t = text.trim();
        let bad = || JobIdError(text.to_string());
        let t = t
            .strip_prefix("job_")
            .or_else(|| t.strip_prefix("slurm_"))
            .unwrap_or(t);
        let num = |s: &str| -> Result<u64, JobIdError> {
            if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse::<u64>().map_err(|_| bad())
        };
        let (base, part) = if let Some((b, task)) = t.split_once('_') {
            let task = u32::try_from(num(task)?).map_err(|_| bad())?;
            (num(b)?, JobPart::ArrayTask(task))
        } else if let Some((b, off)) = t.split_once('+') {
            let off = u32::try_from(num(off)?).map_err(|_| bad())?;
            (num(b)?, JobPart::HetOffset(off))
        } else {
            (num(t)?, JobPart::None)
        };
        if base == 0 {
            return Err(bad());
        }
        Ok(JobId { base, part })
    }

    /// The base job id.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The array task or het component, if any.
    pub fn part(&self) -> JobPart {
        self.part
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.part {
            JobPart::None => write!(f, "{}", self.base),
            JobPart::ArrayTask(t) => write!(f, "{}_{t}", self.base),
            JobPart::HetOffset(o) => write!(f, "{}+{o}", self.base),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_follow_slurm() {
        assert!(AccountName::new("ml-proj-001").is_ok());
        assert!(AccountName::new("a.b_c").is_ok());
        assert!(matches!(
            AccountName::new("ML"),
            Err(NameError::UpperCase { .. })
        ));
        assert!(matches!(
            AccountName::new("a b"),
            Err(NameError::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(
            AccountName::new("a;rm -rf"),
            Err(NameError::BadChar { ch: ';', .. })
        ));
        assert!(matches!(
            AccountName::new("-x"),
            Err(NameError::BadStart { .. })
        ));
        assert!(matches!(AccountName::new(""), Err(NameError::Empty { .. })));
        assert!(matches!(
            AccountName::new(&"a".repeat(65)),
            Err(NameError::TooLong { .. })
        ));
        assert!(matches!(
            AccountName::new("café"),
            Err(NameError::BadChar { .. })
        ));
    }

    #[test]
    fn partitions_keep_case() {
        assert!(PartitionName::new("GPU-aws").is_ok());
        assert!(PartitionName::new("gpu/aws").is_err());
    }

    #[test]
    fn job_ids_in_every_spelling() {
        assert_eq!(JobId::parse("1234").unwrap().to_string(), "1234");
        assert_eq!(
            JobId::parse("1234_5").unwrap().part(),
            JobPart::ArrayTask(5)
        );
        assert_eq!(
            JobId::parse("1234+1").unwrap().part(),
            JobPart::HetOffset(1)
        );
        assert_eq!(JobId::parse("job_12345").unwrap().base(), 12345);
        assert_eq!(JobId::parse("slurm_67890").unwrap().base(), 67890);
        for bad in [
            "",
            "1234.batch",
            "abc",
            "12_",
            "_3",
            "0",
            "1+2+3",
            "-5",
            "99999999999999999999",
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
