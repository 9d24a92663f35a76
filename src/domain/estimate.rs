//! Cost estimates at submission: what a job will cost at its partition's rates, read from the
//! resources and time limit SLURM knows before the job runs.
//!
//! Pure: rates, resources and history come in as values. Money stays exact: rates are
//! [`Decimal`]s, the cost of one task is computed in one decimal expression and rounded once,
//! half away from zero, to the micro-dollar.
//!
//! The pieces, in the order the check uses them:
//! - [`TimeLimit::parse`] reads every SLURM spelling of a time limit; [`resolve_time`] turns an
//!   unlimited or missing one into the partition's maximum or the configured default.
//! - [`parse_memory_mb`] and [`parse_gpus`] read memory sizes (`64G`) and gres/TRES strings
//!   (`gpu:2`, `gres/gpu:a100:4`, `cpu=4,gres/gpu=2`).
//! - [`array_size`] counts the tasks of an array spec (`0-9`, `1,3,5-7`, `0-15:4%2`).
//! - [`Correction::learn`] derives a bounded correction factor from estimate-vs-actual history.
//! - [`estimate`] puts them together.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};

use super::money::{UsdMicros, MICROS_PER_USD};

/// Longest time limit priced: SLURM allows longer, but a year is beyond any partition's limit
/// and keeps the arithmetic far from overflow.
pub const TIME_LIMIT_SECONDS_MAX: u64 = 366 * 86_400;
/// Most nodes one job may ask for.
pub const NODES_MAX: u64 = 100_000;
/// Most CPUs one job may ask for.
pub const CPUS_MAX: u64 = 100_000_000;
/// Most GPUs one job may ask for.
pub const GPUS_MAX: u64 = 10_000_000;
/// Most memory one node (or CPU) may ask for: 1 PiB, in MiB.
pub const MEMORY_MB_MAX: u64 = 1 << 30;
/// Most tasks of one array (SLURM's own `MaxArraySize` cannot exceed 4,000,001).
pub const ARRAY_TASKS_MAX: u64 = 4_000_001;

/// Why an input of the estimate was refused. The message names the value and the spelling
/// expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EstimateError {
    /// A time limit in no SLURM spelling.
    #[error("'{0}' is not a SLURM time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED)")]
    BadTimeLimit(String),
    /// A time limit beyond [`TIME_LIMIT_SECONDS_MAX`].
    #[error("time limit '{0}' is longer than 366 days")]
    TimeLimitTooLong(String),
    /// A memory size in no SLURM spelling.
    #[error("'{0}' is not a memory size (a whole number with an optional unit K, M, G or T, like 64G; no unit means megabytes)")]
    BadMemory(String),
    /// A gres/TRES string that cannot be read.
    #[error("'{0}' is not a GPU count or gres/TRES string (like 2, gpu:2, gpu:a100:4, gres/gpu:a100:4 or gres/gpu=2)")]
    BadGres(String),
    /// An array spec that cannot be read.
    #[error("'{0}' is not a job array spec (like 0-9, 1,3,5-7, 0-15:4 or 1-100%10)")]
    BadArray(String),
    /// A count out of range.
    #[error("{what} {value} is out of range (at most {max})")]
    OutOfRange {
        /// What was counted.
        what: &'static str,
        /// The value given.
        value: u64,
        /// The largest accepted.
        max: u64,
    },
    /// The estimate itself is too large to be money.
    #[error("the estimate is too large to hold (over {0} dollars)")]
    TooLarge(i64),
}

// ---------------------------------------------------------------------------------------------
// Time limits

/// A job's time limit as SLURM spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeLimit {
    /// A limit, in seconds.
    Seconds(u64),
    /// `UNLIMITED`, `INFINITE`, or `0` (SLURM: "no time limit is imposed").
    Unlimited,
}

impl TimeLimit {
    /// Parses `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`, `UNLIMITED` or
    /// `INFINITE` (any case). A bare number is minutes, as for `sbatch --time`. The first field
    /// may be as large as the caller likes (`90` minutes, `36:00:00`); later fields must stay
    /// below 60 (hours below 24 after a day count).
    pub fn parse(text: &str) -> Result<TimeLimit, EstimateError> {
        let t = text.trim();
        let bad = || EstimateError::BadTimeLimit(t.to_string());
        if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("infinite") {
            return Ok(TimeLimit::Unlimited);
        }
        let num = |s: &str| -> Result<u64, EstimateError> {
            if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse().map_err(|_| bad())
        };
        let below = |v: u64, limit: u64| if v < limit { Ok(v) } else { Err(bad()) };
        let seconds = match t.split_once('-') {
            Some((days, rest)) => {
                let d = num(days)?;
                let parts: Vec<&str> = rest.split(':').collect();
                let (h, m, s) = match parts.as_slice() {
                    [h] => (num(h)?, 0, 0),
                    [h, m] => (num(h)?, below(num(m)?, 60)?, 0),
                    [h, m, s] => (num(h)?, below(num(m)?, 60)?, below(num(s)?, 60)?),
                    _ => return Err(bad()),
                };
                below(h, 24)?;
                d * 86_400 + h * 3_600 + m * 60 + s
            }
            None => {
                let parts: Vec<&str> = t.split(':').collect();
                match parts.as_slice() {
                    [m] => num(m)? * 60,
                    [m, s] => num(m)? * 60 + below(num(s)?, 60)?,
                    [h, m, s] => num(h)? * 3_600 + below(num(m)?, 60)? * 60 + below(num(s)?, 60)?,
                    _ => return Err(bad()),
                }
            }
        };
        if seconds == 0 {
            return Ok(TimeLimit::Unlimited);
        }
        if seconds > TIME_LIMIT_SECONDS_MAX {
            return Err(EstimateError::TimeLimitTooLong(t.to_string()));
        }
        Ok(TimeLimit::Seconds(seconds))
    }

    /// A limit given in whole minutes (as `job_submit.lua` sees it).
    pub fn minutes(m: u64) -> Result<TimeLimit, EstimateError> {
        match m {
            0 => Ok(TimeLimit::Unlimited),
            m if m > TIME_LIMIT_SECONDS_MAX / 60 => {
                Err(EstimateError::TimeLimitTooLong(format!("{m} minutes")))
            }
            m => Ok(TimeLimit::Seconds(m * 60)),
        }
    }
}

impl FromStr for TimeLimit {
    type Err = EstimateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TimeLimit::parse(s)
    }
}

/// Prints a number of seconds the way SLURM does: `[D-]HH:MM:SS`.
pub fn format_seconds(seconds: u64) -> String {
    let (d, rest) = (seconds / 86_400, seconds % 86_400);
    let (h, m, s) = (rest / 3_600, rest % 3_600 / 60, rest % 60);
    if d > 0 {
        format!("{d}-{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// Where the priced time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSource {
    /// The job's own limit.
    Request,
    /// The job asked for none (or `UNLIMITED`): its partition's maximum.
    PartitionMax,
    /// Neither the job nor the partition sets one: the configured default.
    Default,
}

impl TimeSource {
    /// Machine-readable name.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeSource::Request => "request",
            TimeSource::PartitionMax => "partition_max",
            TimeSource::Default => "default",
        }
    }
}

/// The seconds to price: the job's limit; for an unlimited or missing one, the partition's
/// maximum, else `default`.
pub fn resolve_time(
    requested: Option<TimeLimit>,
    partition_max: Option<u64>,
    default: u64,
) -> (u64, TimeSource) {
    match requested {
        Some(TimeLimit::Seconds(s)) => match partition_max {
            // SLURM refuses (or cuts) a job above its partition's limit; never price more.
            Some(max) if s > max => (max, TimeSource::PartitionMax),
            _ => (s, TimeSource::Request),
        },
        Some(TimeLimit::Unlimited) | None => match partition_max {
            Some(max) => (max, TimeSource::PartitionMax),
            None => (default, TimeSource::Default),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Resources

/// Reads a memory size as SLURM spells it: a whole number with an optional unit `K`, `M`, `G`,
/// `T` (also `KB`, `MiB`, …, any case; binary units as SLURM uses them). No unit means
/// megabytes. Returns MiB, rounded up (`512K` is 1 MiB).
pub fn parse_memory_mb(text: &str) -> Result<u64, EstimateError> {
    let t = text.trim();
    let bad = || EstimateError::BadMemory(t.to_string());
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() || digits.len() > 15 {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let unit = unit.to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let mb = match unit {
        "k" => n.div_ceil(1024),
        "" | "m" => n,
        "g" => n.checked_mul(1024).ok_or_else(bad)?,
        "t" => n.checked_mul(1024 * 1024).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if mb > MEMORY_MB_MAX {
        return Err(EstimateError::OutOfRange {
            what: "memory (MiB)",
            value: mb,
            max: MEMORY_MB_MAX,
        });
    }
    Ok(mb)
}

/// Counts the GPUs in a gres or TRES string, or a bare number.
///
/// Accepted entries, comma-separated: `gpu`, `gpu:2`, `gpu:a100:2`, with an optional prefix
/// `gres/` or `gres:` (`gres/gpu:a100:4`, `gres:gpu:2` as SLURM 22.05 stores `--gres`), and the
/// TRES form `gres/gpu=2` / `gres/gpu:a100=2`. Entries of other kinds (`mps:100`, `shard:2`,
/// `cpu=4`, `mem=16G`, `node=1`, `billing=8`, licenses) are read and ignored. An empty string
/// is no GPU.
pub fn parse_gpus(text: &str) -> Result<u64, EstimateError> {
    let t = text.trim();
    let bad = || EstimateError::BadGres(t.to_string());
    if t.is_empty() {
        return Ok(0);
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = t.parse().map_err(|_| bad())?;
        return check_gpus(n);
    }
    let count = |s: &str| -> Result<u64, EstimateError> {
        if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let word = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    // A gres type (a100, tesla_v100) starts with a letter, so it cannot be mistaken for a count.
    let ty = |s: &str| word(s) && s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic());
    let mut total: u64 = 0;
    for entry in t.split(',') {
        let e = entry.trim();
        let e = e
            .strip_prefix("gres/")
            .or_else(|| e.strip_prefix("gres:"))
            .unwrap_or(e);
        let (spec, tres_count) = match e.split_once('=') {
            // TRES form: name[:type]=count (the count may carry a unit for mem: 16G).
            Some((spec, value)) => (spec, Some(value)),
            None => (e, None),
        };
        let mut parts = spec.split(':');
        let name = parts.next().unwrap_or("");
        if !word(name) {
            return Err(bad());
        }
        let rest: Vec<&str> = parts.collect();
        let n = match (tres_count, rest.as_slice()) {
            (Some(v), [] | [_]) => {
                if rest.first().is_some_and(|t| !ty(t)) {
                    return Err(bad());
                }
                if name != "gpu" {
                    // cpu=4, mem=16G, node=1, billing=8: not GPUs; only their shape is checked.
                    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
                        return Err(bad());
                    }
                    continue;
                }
                count(v)?
            }
            (None, []) => 1,
            (None, [x]) if x.bytes().all(|b| b.is_ascii_digit()) => count(x)?,
            (None, [t]) if ty(t) => 1,
            (None, [t, x]) if ty(t) => count(x)?,
            _ => return Err(bad()),
        };
        if name == "gpu" {
            total = total.checked_add(n).ok_or_else(bad)?;
        }
    }
    check_gpus(total)
}

fn check_gpus(n: u64) -> Result<u64, EstimateError> {
    if n > GPUS_MAX {
        return Err(EstimateError::OutOfRange {
            what: "GPUs",
            value: n,
            max: GPUS_MAX,
        });
    }
    Ok(n)
}

/// The totals a SLURM TRES string names (`cpu=4,mem=16G,node=1,billing=4,gres/gpu:a100=2`, as
/// `scontrol show job` prints `ReqTRES`). Keys it does not price are read and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tres {
    /// `node=`.
    pub nodes: Option<u64>,
    /// `cpu=`.
    pub cpus: Option<u64>,
    /// `mem=`, MiB.
    pub memory_mb: Option<u64>,
    /// `gres/gpu=` (every type summed).
    pub gpus: u64,
}

/// Reads a TRES string (see [`Tres`]).
pub fn parse_tres(text: &str) -> Result<Tres, EstimateError> {
    let t = text.trim();
    let bad = || EstimateError::BadGres(t.to_string());
    let mut out = Tres::default();
    if t.is_empty() {
        return Ok(out);
    }
    for entry in t.split(',') {
        let (key, value) = entry.trim().split_once('=').ok_or_else(bad)?;
        let count = || -> Result<u64, EstimateError> {
            if value.is_empty() || value.len() > 12 || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            value.parse().map_err(|_| bad())
        };
        match key {
            "cpu" => out.cpus = Some(count()?),
            "node" => out.nodes = Some(count()?),
            "mem" => out.memory_mb = Some(parse_memory_mb(value)?),
            k if k == "gres/gpu" || k.starts_with("gres/gpu:") => {
                out.gpus = out.gpus.checked_add(count()?).ok_or_else(bad)?;
            }
            k if !k.is_empty()
                && k.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'/' | b':' | b'_' | b'-' | b'.')
                }) => {}
            _ => return Err(bad()),
        }
    }
    check_gpus(out.gpus)?;
    Ok(out)
}

/// Counts the tasks of a job array spec: comma-separated indexes and ranges, each range with an
/// optional step (`0-15:4` is 0, 4, 8, 12), and an optional `%N` limit on tasks running at once
/// (which does not change how many there are). Indexes given twice count once.
pub fn array_size(spec: &str) -> Result<u64, EstimateError> {
    let t = spec.trim();
    let bad = || EstimateError::BadArray(t.to_string());
    let body = match t.split_once('%') {
        Some((b, limit)) => {
            if limit.is_empty() || !limit.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            b
        }
        None => t,
    };
    let num = |s: &str| -> Result<u64, EstimateError> {
        if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let mut ranges: Vec<(u64, u64, u64)> = Vec::new();
    for part in body.split(',') {
        let (range, step) = match part.split_once(':') {
            Some((r, s)) => (r, num(s)?),
            None => (part, 1),
        };
        if step == 0 {
            return Err(bad());
        }
        let (lo, hi) = match range.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let n = num(range)?;
                (n, n)
            }
        };
        if hi < lo || hi >= ARRAY_TASKS_MAX * 4 {
            return Err(bad());
        }
        ranges.push((lo, hi, step));
    }
    // Indexes may repeat across parts (`1-5,3`): count distinct ones. Ranges are short enough
    // (bounded above) to walk; the common single range is counted without walking.
    let count = if let [(lo, hi, step)] = ranges.as_slice() {
        (hi - lo) / step + 1
    } else {
        let mut seen: Vec<u64> = Vec::new();
        for (lo, hi, step) in &ranges {
            let mut i = *lo;
            while i <= *hi {
                seen.push(i);
                if seen.len() as u64 > ARRAY_TASKS_MAX * 2 {
                    return Err(EstimateError::OutOfRange {
                        what: "array tasks",
                        value: seen.len() as u64,
                        max: ARRAY_TASKS_MAX,
                    });
                }
                i += step;
            }
        }
        seen.sort_unstable();
        seen.dedup();
        seen.len() as u64
    };
    if count > ARRAY_TASKS_MAX {
        return Err(EstimateError::OutOfRange {
            what: "array tasks",
            value: count,
            max: ARRAY_TASKS_MAX,
        });
    }
    Ok(count)
}

/// What one task of a job asks for (an array's tasks each ask for the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resources {
    /// Nodes.
    pub nodes: u64,
    /// CPUs in total (all nodes).
    pub cpus: u64,
    /// GPUs in total (all nodes).
    pub gpus: u64,
    /// Memory in total (all nodes), MiB.
    pub memory_mb: u64,
}

impl Resources {
    /// Checks each count against its limit.
    pub fn check(&self) -> Result<(), EstimateError> {
        for (what, value, max) in [
            ("nodes", self.nodes, NODES_MAX),
            ("CPUs", self.cpus, CPUS_MAX),
            ("GPUs", self.gpus, GPUS_MAX),
            (
                "memory (MiB)",
                self.memory_mb,
                MEMORY_MB_MAX.saturating_mul(NODES_MAX),
            ),
        ] {
            if value > max {
                return Err(EstimateError::OutOfRange { what, value, max });
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Rates and the estimate

/// What a partition costs. Every rate is USD per hour of one unit; zero means the unit is free.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rates {
    /// Per node-hour.
    pub node_hour: Decimal,
    /// Per CPU-hour.
    pub cpu_hour: Decimal,
    /// Per GPU-hour.
    pub gpu_hour: Decimal,
    /// Per GiB-hour of memory.
    pub mem_gb_hour: Decimal,
    /// The least one task is estimated at.
    pub minimum: UsdMicros,
    /// The partition's longest time limit, seconds: what an unlimited job is priced at.
    pub max_time_seconds: Option<u64>,
}

/// A learned correction of the rate estimate for one account and partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Correction {
    /// The factor applied: the observed one, bounded.
    pub factor: Decimal,
    /// Actual ÷ estimate over the history, before bounding (4 decimals).
    pub observed: Decimal,
    /// Runs the history covers.
    pub runs: u64,
    /// Whether `observed` was outside the bounds.
    pub bounded: bool,
}

/// What the history of an account and partition says: runs reconciled against a rate estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct History {
    /// Runs.
    pub runs: u64,
    /// Sum of their rate estimates before correction.
    pub estimated: UsdMicros,
    /// Sum of their actual costs.
    pub actual: UsdMicros,
}

/// How corrections are learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrectionPolicy {
    /// Off: estimates are the rates alone.
    pub enabled: bool,
    /// Fewer runs than this teach nothing.
    pub min_runs: u64,
    /// The smallest factor applied.
    pub min_factor: Decimal,
    /// The largest factor applied.
    pub max_factor: Decimal,
}

impl Default for CorrectionPolicy {
    fn default() -> Self {
        CorrectionPolicy {
            enabled: true,
            min_runs: 5,
            min_factor: Decimal::new(5, 1),
            max_factor: Decimal::from(2),
        }
    }
}

/// Why no correction applies (for the explanation in the answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoCorrection {
    /// Switched off in the configuration.
    Disabled,
    /// Too little history.
    TooFewRuns {
        /// Runs seen.
        runs: u64,
        /// Runs needed.
        needed: u64,
    },
}

impl fmt::Display for NoCorrection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoCorrection::Disabled => f.write_str("learned corrections are switched off"),
            NoCorrection::TooFewRuns { runs, needed } => write!(
                f,
                "{runs} reconciled run(s) of this account and partition; {needed} are needed to learn a correction"
            ),
        }
    }
}

impl Correction {
    /// The factor `actual ÷ estimated` of the history, rounded to 4 decimals and bounded by the
    /// policy; none while the history is shorter than `min_runs`.
    pub fn learn(h: &History, p: &CorrectionPolicy) -> Result<Correction, NoCorrection> {
        if !p.enabled {
            return Err(NoCorrection::Disabled);
        }
        if h.runs < p.min_runs.max(1) || h.estimated.micros() <= 0 {
            return Err(NoCorrection::TooFewRuns {
                runs: h.runs,
                needed: p.min_runs.max(1),
            });
        }
        let observed = (Decimal::from(h.actual.micros()) / Decimal::from(h.estimated.micros()))
            .round_dp_with_strategy(4, RoundingStrategy::MidpointAwayFromZero);
        let factor = observed.clamp(p.min_factor, p.max_factor);
        Ok(Correction {
            factor,
            observed,
            runs: h.runs,
            bounded: factor != observed,
        })
    }
}

/// An estimate, with everything needed to explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Estimate {
    /// One task at the rates, before any correction (at least the minimum).
    pub base_per_task: UsdMicros,
    /// One task after the correction (at least the minimum).
    pub per_task: UsdMicros,
    /// Tasks (1 unless an array).
    pub tasks: u64,
    /// All tasks: `per_task × tasks`.
    pub total: UsdMicros,
    /// Seconds priced.
    pub seconds: u64,
    /// Whether the minimum charge lifted the estimate.
    pub minimum_applied: bool,
}

/// Prices one task of `res` for `seconds` at `rates`, applies `factor` (a learned correction),
/// and multiplies by `tasks`.
pub fn estimate(
    rates: &Rates,
    res: &Resources,
    seconds: u64,
    factor: Option<Decimal>,
    tasks: u64,
) -> Result<Estimate, EstimateError> {
    res.check()?;
    if seconds > TIME_LIMIT_SECONDS_MAX {
        return Err(EstimateError::TimeLimitTooLong(format_seconds(seconds)));
    }
    if tasks == 0 || tasks > ARRAY_TASKS_MAX {
        return Err(EstimateError::OutOfRange {
            what: "array tasks",
            value: tasks,
            max: ARRAY_TASKS_MAX,
        });
    }
    let too_large = || EstimateError::TooLarge(super::money::MAX_ABS_USD);
    let d = |n: u64| Decimal::from(n);
    // USD per hour of the whole task, then × seconds ÷ 3600 and to micro-dollars, one rounding.
    let per_hour = [
        rates.node_hour.checked_mul(d(res.nodes)),
        rates.cpu_hour.checked_mul(d(res.cpus)),
        rates.gpu_hour.checked_mul(d(res.gpus)),
        rates
            .mem_gb_hour
            .checked_mul(d(res.memory_mb))
            .and_then(|x| x.checked_div(Decimal::from(1024))),
    ]
    .into_iter()
    .try_fold(Decimal::ZERO, |acc, x| acc.checked_add(x?))
    .ok_or_else(too_large)?;
    let micros = per_hour
        .checked_mul(d(seconds))
        .and_then(|x| x.checked_mul(Decimal::from(MICROS_PER_USD)))
        .and_then(|x| x.checked_div(Decimal::from(3600)))
        .ok_or_else(too_large)?;
    let to_money = |x: Decimal| -> Result<UsdMicros, EstimateError> {
        let r = x.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
        let i: i64 = r.try_into().map_err(|_| too_large())?;
        UsdMicros::from_micros(i).map_err(|_| too_large())
    };
    let raw = to_money(micros)?;
    let minimum = rates.minimum.max(UsdMicros::ZERO);
    let base_per_task = raw.max(minimum);
    let corrected = match factor {
        Some(f) => raw.mul_decimal(f).map_err(|_| too_large())?,
        None => raw,
    };
    let per_task = corrected.max(minimum);
    let total = per_task
        .micros()
        .checked_mul(i64::try_from(tasks).map_err(|_| too_large())?)
        .ok_or_else(too_large)
        .and_then(|m| UsdMicros::from_micros(m).map_err(|_| too_large()))?;
    Ok(Estimate {
        base_per_task,
        per_task,
        tasks,
        total,
        seconds,
        minimum_applied: corrected < minimum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn every_slurm_time_spelling() {
        let s = |t: &str| TimeLimit::parse(t).unwrap();
        assert_eq!(s("90"), TimeLimit::Seconds(5_400));
        assert_eq!(s("5:30"), TimeLimit::Seconds(330));
        assert_eq!(s("2:00:00"), TimeLimit::Seconds(7_200));
        assert_eq!(s("36:00:00"), TimeLimit::Seconds(129_600));
        assert_eq!(s("1-12"), TimeLimit::Seconds(129_600));
        assert_eq!(s("1-12:30"), TimeLimit::Seconds(131_400));
        assert_eq!(s("2-00:00:01"), TimeLimit::Seconds(172_801));
        assert_eq!(s("UNLIMITED"), TimeLimit::Unlimited);
        assert_eq!(s("infinite"), TimeLimit::Unlimited);
        assert_eq!(s("0"), TimeLimit::Unlimited);
        assert_eq!(s(" 10 "), TimeLimit::Seconds(600));
        for bad in [
            "",
            "-",
            "1-",
            "-5",
            "1:2:3:4",
            "1-2:3:4:5",
            "5:60",
            "1:60:00",
            "1-24",
            "a",
            "1h",
            "1.5",
            "1-1-1",
            "+5",
            "1- 2",
            "1--2",
            "1:",
            ":1",
        ] {
            assert!(TimeLimit::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            TimeLimit::parse("400-00:00:00"),
            Err(EstimateError::TimeLimitTooLong(_))
        ));
        assert_eq!(TimeLimit::minutes(60).unwrap(), TimeLimit::Seconds(3600));
        assert_eq!(TimeLimit::minutes(0).unwrap(), TimeLimit::Unlimited);
        assert_eq!(format_seconds(131_400), "1-12:30:00");
        assert_eq!(format_seconds(330), "00:05:30");
    }

    #[test]
    fn unlimited_falls_back_to_the_partition_then_the_default() {
        let day = 86_400;
        assert_eq!(
            resolve_time(Some(TimeLimit::Seconds(60)), Some(day), 3600),
            (60, TimeSource::Request)
        );
        assert_eq!(
            resolve_time(Some(TimeLimit::Unlimited), Some(day), 3600),
            (day, TimeSource::PartitionMax)
        );
        assert_eq!(
            resolve_time(None, Some(day), 3600),
            (day, TimeSource::PartitionMax)
        );
        assert_eq!(resolve_time(None, None, 3600), (3600, TimeSource::Default));
        assert_eq!(
            resolve_time(Some(TimeLimit::Seconds(2 * day)), Some(day), 3600),
            (day, TimeSource::PartitionMax)
        );
    }

    #[test]
    fn memory_spellings() {
        assert_eq!(parse_memory_mb("64G").unwrap(), 65_536);
        assert_eq!(parse_memory_mb("64GB").unwrap(), 65_536);
        assert_eq!(parse_memory_mb("64gib").unwrap(), 65_536);
        assert_eq!(parse_memory_mb("512").unwrap(), 512);
        assert_eq!(parse_memory_mb("512M").unwrap(), 512);
        assert_eq!(parse_memory_mb("1T").unwrap(), 1_048_576);
        assert_eq!(parse_memory_mb("512K").unwrap(), 1);
        assert_eq!(parse_memory_mb("0").unwrap(), 0);
        for bad in ["", "G", "1.5G", "-1G", "64X", "64 G", "1e3", "64GG"] {
            assert!(parse_memory_mb(bad).is_err(), "{bad}");
        }
        assert!(parse_memory_mb("2000000T").is_err());
    }

    #[test]
    fn gres_and_tres_strings() {
        for (text, n) in [
            ("", 0),
            ("2", 2),
            ("gpu", 1),
            ("gpu:2", 2),
            ("gpu:a100:4", 4),
            ("gpu:a100", 1),
            ("gres/gpu:a100:4", 4),
            ("gres:gpu:2", 2),
            ("gres/gpu=2", 2),
            ("gres/gpu:a100=3", 3),
            ("cpu=4,mem=16G,node=1,billing=4,gres/gpu=2", 2),
            ("gpu:2,mps:100", 2),
            ("gres:gpu:1,gres:gpu:tesla:2", 3),
            ("shard:4", 0),
        ] {
            assert_eq!(parse_gpus(text).unwrap(), n, "{text}");
        }
        for bad in [
            "gpu:-1",
            "gpu:a:b:c",
            "gpu:2:x",
            ":2",
            "gpu=",
            "gpu=x",
            "gpu:2,",
            "g pu:2",
            "gpu;2",
            "mem=",
        ] {
            assert!(parse_gpus(bad).is_err(), "{bad}");
        }
        assert!(parse_gpus("99999999").is_err());
    }

    #[test]
    fn tres_strings() {
        let t = parse_tres("cpu=4,mem=16G,node=1,billing=4,gres/gpu=2,gres/gpu:a100=2").unwrap();
        assert_eq!(
            t,
            Tres {
                nodes: Some(1),
                cpus: Some(4),
                memory_mb: Some(16_384),
                gpus: 4
            }
        );
        assert_eq!(parse_tres("").unwrap(), Tres::default());
        for bad in ["cpu", "cpu=x", "mem=lots", "cpu=4,,node=1", "a b=1"] {
            assert!(parse_tres(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn array_specs() {
        for (spec, n) in [
            ("0-9", 10),
            ("1-100%10", 100),
            ("1,3,5-7", 5),
            ("0-15:4", 4),
            ("0-15:4%2", 4),
            ("7", 1),
            ("1-5,3", 5),
        ] {
            assert_eq!(array_size(spec).unwrap(), n, "{spec}");
        }
        for bad in ["", "5-1", "1-", "a", "1-5:0", "1-5%", "1,,2", "-1"] {
            assert!(array_size(bad).is_err(), "{bad}");
        }
    }

    fn gpu_rates() -> Rates {
        Rates {
            node_hour: dec("0.10"),
            cpu_hour: dec("0.05"),
            gpu_hour: dec("3.06"),
            mem_gb_hour: dec("0.004"),
            minimum: UsdMicros::parse("0.01").unwrap(),
            max_time_seconds: Some(86_400),
        }
    }

    #[test]
    fn the_estimate_is_exact() {
        // 2 nodes × 0.10 + 16 CPUs × 0.05 + 4 GPUs × 3.06 + 64 GiB × 0.004 = 13.496 $/h; 90 min.
        let res = Resources {
            nodes: 2,
            cpus: 16,
            gpus: 4,
            memory_mb: 65_536,
        };
        let e = estimate(&gpu_rates(), &res, 5_400, None, 1).unwrap();
        assert_eq!(e.per_task.to_string(), "20.244");
        assert_eq!(e.total, e.per_task);
        assert!(!e.minimum_applied);
        // A third of an hour of one CPU at 0.05: 0.0166666… rounds half away to 0.016667.
        let one = Resources {
            nodes: 1,
            cpus: 1,
            ..Default::default()
        };
        let rates = Rates {
            cpu_hour: dec("0.05"),
            ..Default::default()
        };
        let e = estimate(&rates, &one, 1_200, None, 3).unwrap();
        assert_eq!(e.per_task.to_string(), "0.016667");
        assert_eq!(e.total.to_string(), "0.050001");
    }

    #[test]
    fn the_minimum_charge_and_corrections() {
        let one = Resources {
            nodes: 1,
            cpus: 1,
            ..Default::default()
        };
        let e = estimate(&gpu_rates(), &one, 60, None, 1).unwrap();
        assert_eq!(e.per_task.to_string(), "0.01");
        assert!(e.minimum_applied);
        let res = Resources {
            nodes: 1,
            cpus: 10,
            ..Default::default()
        };
        let e = estimate(&gpu_rates(), &res, 3_600, Some(dec("1.5")), 2).unwrap();
        assert_eq!(e.base_per_task.to_string(), "0.60");
        assert_eq!(e.per_task.to_string(), "0.90");
        assert_eq!(e.total.to_string(), "1.80");
    }

    #[test]
    fn huge_requests_are_refused_not_wrapped() {
        let rates = Rates {
            node_hour: Decimal::from(1_000_000_000),
            ..Default::default()
        };
        let res = Resources {
            nodes: NODES_MAX,
            ..Default::default()
        };
        assert!(matches!(
            estimate(&rates, &res, TIME_LIMIT_SECONDS_MAX, None, 1),
            Err(EstimateError::TooLarge(_))
        ));
        let res = Resources {
            nodes: NODES_MAX + 1,
            ..Default::default()
        };
        assert!(matches!(
            estimate(&rates, &res, 60, None, 1),
            Err(EstimateError::OutOfRange { .. })
        ));
    }

    #[test]
    fn corrections_are_bounded_and_need_history() {
        let p = CorrectionPolicy::default();
        let h = |runs, est: &str, act: &str| History {
            runs,
            estimated: UsdMicros::parse(est).unwrap(),
            actual: UsdMicros::parse(act).unwrap(),
        };
        let c = Correction::learn(&h(10, "100", "115"), &p).unwrap();
        assert_eq!((c.factor, c.bounded, c.runs), (dec("1.15"), false, 10));
        let c = Correction::learn(&h(10, "100", "500"), &p).unwrap();
        assert_eq!(
            (c.factor, c.observed, c.bounded),
            (dec("2"), dec("5"), true)
        );
        let c = Correction::learn(&h(10, "300", "100"), &p).unwrap();
        assert_eq!((c.factor, c.observed), (dec("0.5"), dec("0.3333")));
        assert_eq!(
            Correction::learn(&h(4, "100", "115"), &p),
            Err(NoCorrection::TooFewRuns { runs: 4, needed: 5 })
        );
        let off = CorrectionPolicy {
            enabled: false,
            ..p
        };
        assert_eq!(
            Correction::learn(&h(10, "100", "115"), &off),
            Err(NoCorrection::Disabled)
        );
    }
}
