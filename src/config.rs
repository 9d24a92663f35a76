//! Configuration: one TOML file with `ASBB_*` environment overrides, validated at load.
//!
//! Where the file comes from: `--config`, else `ASBB_CONFIG`, else `/etc/asbb/asbb.toml`.
//! An explicitly named file must exist; the default path falls back to the built-in defaults
//! when absent. Every key can be overridden by `ASBB_<SECTION>_<KEY>` in upper case, e.g.
//! `ASBB_DATABASE_URL`. Unknown keys are errors, so a typo never silently does nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::db::{ConnectOptions, DbUrl, SqliteSync};
use crate::domain::estimate::{Rates, TimeLimit};
use crate::domain::time::parse_span;

/// Where asbb looks for its configuration when nothing names a file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/asbb/asbb.toml";

/// The commented default written by `asbb config init`. A test checks that it parses to
/// [`Config::default`].
pub const DEFAULT_CONFIG_TOML: &str = r#"# asbb configuration.
#
# Every key can be overridden from the environment as ASBB_<SECTION>_<KEY>, for example
# ASBB_DATABASE_URL. Check a file with `asbb config validate`.

[database]
# Where the ledger lives. A file path (or sqlite://PATH) is the embedded SQLite database;
# postgres://user:password@host/dbname is a PostgreSQL server that several clusters can share.
url = "/var/lib/asbb/asbb.db"

# How long a writer waits for the SQLite write lock before giving up, in milliseconds.
busy_timeout_ms = 30000

# SQLite durability: "full" syncs every commit to disk and survives a power loss; "normal"
# (with the write-ahead log) survives a crashed process but may lose the last commits on a
# power loss, and is several times faster. PostgreSQL ignores this.
sqlite_synchronous = "full"

[ledger]
# Hold = estimate x this factor (1.2 holds 20 % more than the estimate).
default_hold_buffer = "1.2"

# How long a hold lives before it may be expired (`asbb hold expire`): 90m, 12h, 7d, 2w.
hold_lifetime = "7d"

[spool]
# Where producers drop files. An empty string leaves that kind out of `asbb spool scan` and
# `asbb-spoold`. Processed files move to processed/ beside them, refused ones to rejected/
# (with a <name>.error.json saying why). Nothing is ever deleted.
asbx_dir = "/var/spool/asbx"
jobs_dir = "/var/spool/asbb/jobs"
plans_dir = "/var/spool/asba/plans"

# An empty or unparsable file may still be being written (ASBX writes in place). It is retried
# until it is this old (by modification time), then rejected. "0" rejects at once.
not_ready_grace = "10m"

# Files larger than this (bytes) are refused.
max_file_size = 1048576

# The largest cost one run may report, in USD; larger amounts are refused as implausible.
max_cost = "1000000"

# Files recorded per database transaction.
batch_size = 1000

# asbb-spoold rescans this often even when no file event arrives (NFS spools see none).
rescan_interval = "60s"

# asbb-spoold reconciles what it took in after each batch (otherwise only `asbb reconcile` does).
reconcile = true

[reconcile]
# Runs that ended in one of these SLURM states failed for reasons the user did not cause;
# they get refund_percent of their cost back, with the reason in the journal.
refund_states = "NODE_FAIL,BOOT_FAIL"
refund_percent = "100"

# Records per database transaction.
batch_size = 500

[recover]
# How long after a job ended its cost may still arrive; after that `asbb recover` releases
# the hold of a job without a cost record. "0" releases at once.
grace = "1d"

# Ask SLURM (`sacct`) about jobs whose hold is open but whose job-end record never came.
use_sacct = false
sacct_command = "sacct"

[burn]
# The window of the daily snapshots, the status files and the alerts: 7d, 30d or 90d.
window = "30d"

# Spending within +/- this percentage of the plan is ON_TRACK.
on_track_percent = "20"

# No verdict on over- or underspending while the window holds fewer days of the budget's life.
min_active_days = 7

# Money projected to run out within this many days (before its period ends) is CRITICAL risk.
critical_days = 14

# Spending takes time to start: during the first this many days of a budget period (a grant's
# period, else the account's active period) underspending lowers the health score only in
# proportion to the days passed (a third after 30 of 90 days). 0 counts it in full at once.
underspend_grace_days = 90

# `asbb burn-rate compute` writes one <account>.json budget status per account here for the
# advisor (ASBA); "" writes none. Format: spool-schemas/budget-status.v1.schema.json.
status_dir = ""

[alerts]
# Spending above the plan over the window, percent.
variance_warning_percent = "20"
variance_critical_percent = "50"

# Health score below these.
health_warning = 60
health_critical = 40

# Utilisation ((charged + held) / credited) of an account or a grant period, percent.
utilisation_warning_percent = "80"
utilisation_critical_percent = "100"

# A grant or budget period ending within this many days.
ending_within_days = 30

# Run for each new alert, without a shell: the program and its arguments, split at spaces.
# It gets the alert as JSON on stdin and ASBB_ALERT_* variables. "" runs nothing.
notify_command = ""

# Also (or instead) write each new alert as alert-<id>.json into this directory.
notify_spool_dir = ""

# A hook that runs longer is killed and tried again on the next run, at most
# notify_max_attempts times.
notify_timeout = "30s"
notify_max_attempts = 5

[check]
# Where asbb-checkd listens. Keep it on loopback: slurmctld on this host is its only client.
# (With socket activation, systemd's socket is used instead.)
listen = "127.0.0.1:8080"

# A file holding a bearer token (one line). When set, every request but GET /health must send
# "Authorization: Bearer <token>". Empty: no token.
token_file = ""

# Worker threads answering requests (a fixed pool).
workers = 4

# A request must arrive in full within this time; a slower client gets 408 and is cut off.
request_timeout = "2s"

# Largest request body, bytes; larger ones get 413 without being read.
max_body_bytes = 65536

# Checks arriving together are committed in one write transaction (each in its own savepoint),
# at most this many: one disk sync for all of them.
max_batch = 64

# The cluster name recorded on holds when a check does not give one.
cluster = ""

# `asbb checks prune` (its timer runs daily) deletes the request log of checks older than this
# whose hold is no longer open: their answers for retries and the estimates behind learned
# corrections (so it must be at least estimate.correction_window). Holds and the journal are
# never pruned. "0" keeps every check.
retention = "400d"

[estimate]
# What a job without a time limit (or UNLIMITED) is priced at when its partition has no
# max_time: a SLURM time limit such as "01:00:00" or "1-00:00:00".
default_time_limit = "1-00:00:00"

# A partition without a [partitions.NAME] table: "refuse" (the check denies the job with the
# reason unpriced_partition) or "allow" (the job runs and nothing is held).
unpriced_partitions = "refuse"

# An ASBA plan's cost ceiling already includes ASBA's own buffer; it is held times this factor.
plan_buffer = "1"

# Learned corrections: the estimate of an account and partition is multiplied by
# actual / estimated over its runs reconciled in the last correction_window, once there are
# correction_min_runs of them, bounded to [correction_min_factor, correction_max_factor].
correction = true
correction_min_runs = 5
correction_min_factor = "0.5"
correction_max_factor = "2"
correction_window = "90d"
# asbb-checkd re-reads the history this often.
correction_refresh = "60s"

# Rates per partition, USD per hour of one unit (quoted decimals, kept exact). Every key is
# optional (0 = free); minimum is the least one job (one array task) is estimated at; max_time
# is what a job without a time limit is priced at.
#
# [partitions.gpu-aws]
# node_hour = "0"
# cpu_hour = "0.05"
# gpu_hour = "3.06"
# mem_gb_hour = "0.004"
# minimum = "0.01"
# max_time = "2-00:00:00"

[reports]
# Where `asbb report --scheduled` (the timer job) writes its sets: daily/YYYY-MM-DD/ and
# monthly/YYYY-MM/, each with README.txt and manifest.json (SHA-256 of every file).
dir = "/var/lib/asbb/reports"

# A directory of site templates replacing the shipped ones (reports/templates/: *.columns.toml,
# summary.html, table.html, readme.txt); "" uses the shipped ones. Checked at every run.
templates_dir = ""

# Formats of the scheduled sets: csv, html, json (comma-separated).
formats = "csv,html"

# Reports of each complete day, and of each complete month (kinds as for `asbb report`).
daily = "journal,holds,alerts"
monthly = "journal,grant-statement,account-statement,usage,holds,refunds,accuracy,alerts"

# Days and months that ended within this span and have no set yet are written by the next run.
catch_up = "31d"

# Start CSV files with a UTF-8 byte order mark, so that Excel reads non-ASCII names right.
csv_bom = true
"#;

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[database]`.
    pub database: DatabaseConfig,
    /// `[ledger]`.
    pub ledger: LedgerConfig,
    /// `[spool]`.
    pub spool: SpoolConfig,
    /// `[reconcile]`.
    pub reconcile: ReconcileConfig,
    /// `[recover]`.
    pub recover: RecoverConfig,
    /// `[burn]`.
    pub burn: BurnConfig,
    /// `[alerts]`.
    pub alerts: AlertsConfig,
    /// `[check]`.
    pub check: CheckConfig,
    /// `[estimate]`.
    pub estimate: EstimateConfig,
    /// `[partitions.NAME]`: rates per partition.
    pub partitions: BTreeMap<String, PartitionRates>,
    /// `[reports]`.
    pub reports: ReportsConfig,
}

/// `[reports]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportsConfig {
    /// Where the scheduled sets go.
    pub dir: String,
    /// Site templates ("" for the shipped ones).
    pub templates_dir: String,
    /// Formats of the scheduled sets.
    pub formats: String,
    /// Kinds of the daily set.
    pub daily: String,
    /// Kinds of the month-end set.
    pub monthly: String,
    /// How far back missed sets are written.
    pub catch_up: String,
    /// UTF-8 byte order mark at the start of CSV files.
    pub csv_bom: bool,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        ReportsConfig {
            dir: "/var/lib/asbb/reports".into(),
            templates_dir: String::new(),
            formats: "csv,html".into(),
            daily: "journal,holds,alerts".into(),
            monthly:
                "journal,grant-statement,account-statement,usage,holds,refunds,accuracy,alerts"
                    .into(),
            catch_up: "31d".into(),
            csv_bom: true,
        }
    }
}

/// `[burn]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BurnConfig {
    /// Snapshot window: 7d, 30d or 90d.
    pub window: String,
    /// ON_TRACK tolerance, percent.
    pub on_track_percent: String,
    /// Fewest days of history for a verdict.
    pub min_active_days: u64,
    /// Depletion within this many days is CRITICAL.
    pub critical_days: u64,
    /// Days into a budget period before underspending lowers health in full.
    pub underspend_grace_days: u64,
    /// Where the budget status files go ("" for none).
    pub status_dir: String,
}

impl Default for BurnConfig {
    fn default() -> Self {
        BurnConfig {
            window: "30d".into(),
            on_track_percent: "20".into(),
            min_active_days: 7,
            critical_days: 14,
            underspend_grace_days: 90,
            status_dir: String::new(),
        }
    }
}

/// `[check]`: asbb-checkd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckConfig {
    /// Listen address.
    pub listen: String,
    /// Bearer token file, or empty.
    pub token_file: String,
    /// Worker threads.
    pub workers: u64,
    /// Time a request has to arrive.
    pub request_timeout: String,
    /// Largest body.
    pub max_body_bytes: u64,
    /// Checks per group commit.
    pub max_batch: u64,
    /// Default cluster name.
    pub cluster: String,
    /// How long the `checks` rows are kept (`0`: for ever).
    pub retention: String,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            listen: "127.0.0.1:8080".into(),
            token_file: String::new(),
            workers: 4,
            request_timeout: "2s".into(),
            max_body_bytes: 65_536,
            max_batch: 64,
            cluster: String::new(),
            retention: "400d".into(),
        }
    }
}

/// `[alerts]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Warning above this variance.
    pub variance_warning_percent: String,
    /// Critical above this variance.
    pub variance_critical_percent: String,
    /// Warning below this health.
    pub health_warning: u64,
    /// Critical below this health.
    pub health_critical: u64,
    /// Warning at this utilisation.
    pub utilisation_warning_percent: String,
    /// Critical at this utilisation.
    pub utilisation_critical_percent: String,
    /// Ending within this many days.
    pub ending_within_days: u64,
    /// The hook command.
    pub notify_command: String,
    /// The hook spool directory.
    pub notify_spool_dir: String,
    /// The hook's time limit.
    pub notify_timeout: String,
    /// Attempts per alert.
    pub notify_max_attempts: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            variance_warning_percent: "20".into(),
            variance_critical_percent: "50".into(),
            health_warning: 60,
            health_critical: 40,
            utilisation_warning_percent: "80".into(),
            utilisation_critical_percent: "100".into(),
            ending_within_days: 30,
            notify_command: String::new(),
            notify_spool_dir: String::new(),
            notify_timeout: "30s".into(),
            notify_max_attempts: 5,
        }
    }
}

/// `[estimate]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EstimateConfig {
    /// Time priced for unlimited jobs in partitions without max_time.
    pub default_time_limit: String,
    /// `refuse` or `allow`.
    pub unpriced_partitions: String,
    /// Buffer on plan ceilings.
    pub plan_buffer: String,
    /// Learned corrections on or off.
    pub correction: bool,
    /// Runs needed.
    pub correction_min_runs: u64,
    /// Lower bound.
    pub correction_min_factor: String,
    /// Upper bound.
    pub correction_max_factor: String,
    /// History window.
    pub correction_window: String,
    /// How often asbb-checkd re-reads the history.
    pub correction_refresh: String,
}

impl Default for EstimateConfig {
    fn default() -> Self {
        EstimateConfig {
            default_time_limit: "1-00:00:00".into(),
            unpriced_partitions: "refuse".into(),
            plan_buffer: "1".into(),
            correction: true,
            correction_min_runs: 5,
            correction_min_factor: "0.5".into(),
            correction_max_factor: "2".into(),
            correction_window: "90d".into(),
            correction_refresh: "60s".into(),
        }
    }
}

/// Alert thresholds, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertThresholds {
    /// Warning above this variance, percent.
    pub variance_warning: Decimal,
    /// Critical above this variance.
    pub variance_critical: Decimal,
    /// Warning below this health.
    pub health_warning: u8,
    /// Critical below this health.
    pub health_critical: u8,
    /// Warning at this utilisation, percent.
    pub utilisation_warning: Decimal,
    /// Critical at this utilisation.
    pub utilisation_critical: Decimal,
    /// Days before an end that raise an alert.
    pub ending_within_days: i64,
}

/// `[partitions.NAME]`: USD per hour of one unit, as quoted decimals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PartitionRates {
    /// Per node-hour.
    pub node_hour: String,
    /// Per CPU-hour.
    pub cpu_hour: String,
    /// Per GPU-hour.
    pub gpu_hour: String,
    /// Per GiB-hour.
    pub mem_gb_hour: String,
    /// Least estimate of one job.
    pub minimum: String,
    /// Longest time limit, SLURM spelling; empty = none.
    pub max_time: String,
}

impl Default for PartitionRates {
    fn default() -> Self {
        PartitionRates {
            node_hour: "0".into(),
            cpu_hour: "0".into(),
            gpu_hour: "0".into(),
            mem_gb_hour: "0".into(),
            minimum: "0".into(),
            max_time: String::new(),
        }
    }
}

/// `[spool]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// ASBX cost exports.
    pub asbx_dir: String,
    /// Job-end records.
    pub jobs_dir: String,
    /// ASBA plans.
    pub plans_dir: String,
    /// Retry period for empty or unparsable files.
    pub not_ready_grace: String,
    /// Largest file, bytes.
    pub max_file_size: u64,
    /// Largest cost per run, USD.
    pub max_cost: String,
    /// Files per transaction.
    pub batch_size: u64,
    /// Daemon rescan period.
    pub rescan_interval: String,
    /// Whether the daemon reconciles after intake.
    pub reconcile: bool,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            asbx_dir: "/var/spool/asbx".into(),
            jobs_dir: "/var/spool/asbb/jobs".into(),
            plans_dir: "/var/spool/asba/plans".into(),
            not_ready_grace: "10m".into(),
            max_file_size: 1 << 20,
            max_cost: "1000000".into(),
            batch_size: 1000,
            rescan_interval: "60s".into(),
            reconcile: true,
        }
    }
}

/// `[reconcile]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Comma-separated SLURM states that earn a refund.
    pub refund_states: String,
    /// Percent refunded.
    pub refund_percent: String,
    /// Records per transaction.
    pub batch_size: u64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            refund_states: "NODE_FAIL,BOOT_FAIL".into(),
            refund_percent: "100".into(),
            batch_size: 500,
        }
    }
}

/// `[recover]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoverConfig {
    /// Grace after job end.
    pub grace: String,
    /// Whether to ask sacct.
    pub use_sacct: bool,
    /// The sacct command.
    pub sacct_command: String,
}

impl Default for RecoverConfig {
    fn default() -> Self {
        RecoverConfig {
            grace: "1d".into(),
            use_sacct: false,
            sacct_command: "sacct".into(),
        }
    }
}

/// `[database]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// A file path, `sqlite://PATH`, or `postgres://…`.
    pub url: String,
    /// SQLite busy timeout in milliseconds.
    pub busy_timeout_ms: u64,
    /// `full` or `normal`.
    pub sqlite_synchronous: String,
}

/// `[ledger]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Hold buffer factor, a decimal string.
    pub default_hold_buffer: String,
    /// Hold lifetime, a span like `7d`.
    pub hold_lifetime: String,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "/var/lib/asbb/asbb.db".into(),
            busy_timeout_ms: 30_000,
            sqlite_synchronous: "full".into(),
        }
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            default_hold_buffer: "1.2".into(),
            hold_lifetime: "7d".into(),
        }
    }
}

impl PartitionRates {
    /// The rates, or the key that is wrong and why.
    pub fn rates(&self) -> Result<Rates, (&'static str, String)> {
        let rate = |key: &'static str, v: &str| match Decimal::from_str_exact(v.trim()) {
            Ok(d) if d >= Decimal::ZERO && d <= Decimal::from(1_000_000) => Ok(d),
            _ => Err((
                key,
                format!("'{v}' must be a decimal USD rate between 0 and 1000000, like \"3.06\""),
            )),
        };
        let minimum = crate::domain::UsdMicros::parse(&self.minimum)
            .ok()
            .filter(|m| !m.is_negative())
            .ok_or((
                "minimum",
                format!("'{}' must be an amount like \"0.01\"", self.minimum),
            ))?;
        let max_time_seconds = match self.max_time.trim() {
            "" => None,
            t => match TimeLimit::parse(t) {
                Ok(TimeLimit::Seconds(s)) => Some(s),
                Ok(TimeLimit::Unlimited) => None,
                Err(e) => return Err(("max_time", e.to_string())),
            },
        };
        Ok(Rates {
            node_hour: rate("node_hour", &self.node_hour)?,
            cpu_hour: rate("cpu_hour", &self.cpu_hour)?,
            gpu_hour: rate("gpu_hour", &self.gpu_hour)?,
            mem_gb_hour: rate("mem_gb_hour", &self.mem_gb_hour)?,
            minimum,
            max_time_seconds,
        })
    }
}

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `section.key`.
    pub key: String,
    /// What is wrong and what would be right.
    pub message: String,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The named file could not be read.
    #[error("failed to read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or wrong types.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, naming the key and line.
        message: String,
    },
    /// Values are out of range.
    #[error("configuration is invalid:\n{}", .0.iter().map(|p| format!("  {}: {}", p.key, p.message)).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// A loaded configuration and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The values.
    pub config: Config,
    /// The file read, if any.
    pub path: Option<PathBuf>,
    /// Environment variables that overrode a key.
    pub overrides: Vec<String>,
}

/// Every key as `(section, key)`, from the default's serialisation.
pub fn keys() -> Vec<(String, String)> {
    let v = toml::Value::try_from(Config::default()).expect("default config serialises");
    let mut out = Vec::new();
    if let toml::Value::Table(sections) = v {
        for (section, table) in sections {
            if let toml::Value::Table(t) = table {
                out.extend(t.keys().map(|k| (section.clone(), k.clone())));
            }
        }
    }
    out
}

/// The environment variable that overrides `section.key`.
pub fn env_name(section: &str, key: &str) -> String {
    format!(
        "ASBB_{}_{}",
        section.to_ascii_uppercase(),
        key.to_ascii_uppercase()
    )
}

/// Loads the configuration. `explicit` is `--config`; `env` reads environment variables
/// (injected so tests need not touch the process environment).
pub fn load(
    explicit: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let named = explicit.map(Path::to_path_buf).or_else(|| {
        env("ASBB_CONFIG")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    });
    let (text, path) = match named {
        Some(p) => {
            let t = std::fs::read_to_string(&p).map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })?;
            (t, Some(p))
        }
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG_PATH);
            match std::fs::read_to_string(&p) {
                Ok(t) => (t, Some(p)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), None),
                Err(source) => return Err(ConfigError::Read { path: p, source }),
            }
        }
    };
    let origin = path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(built-in defaults)".into());
    let mut value: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: origin.clone(),
        message: e.to_string(),
    })?;
    let defaults = toml::Value::try_from(Config::default()).expect("default config serialises");
    let mut overrides = Vec::new();
    for (section, key) in keys() {
        let name = env_name(&section, &key);
        let Some(raw) = env(&name) else { continue };
        let default = defaults.get(&section).and_then(|s| s.get(&key));
        let default_is_int = default.is_some_and(toml::Value::is_integer);
        let v = if default.is_some_and(toml::Value::is_bool) {
            match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => toml::Value::Boolean(true),
                "false" | "0" | "no" => toml::Value::Boolean(false),
                _ => {
                    return Err(ConfigError::Invalid(vec![Problem {
                        key: format!("{section}.{key}"),
                        message: format!("{name}='{raw}' is neither true nor false"),
                    }]))
                }
            }
        } else if default_is_int {
            match raw.trim().parse::<i64>() {
                Ok(i) => toml::Value::Integer(i),
                Err(_) => {
                    return Err(ConfigError::Invalid(vec![Problem {
                        key: format!("{section}.{key}"),
                        message: format!("{name}='{raw}' is not a whole number"),
                    }]))
                }
            }
        } else {
            toml::Value::String(raw)
        };
        let table = value
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = table {
            t.insert(key.clone(), v);
        }
        overrides.push(name);
    }
    let config: Config = toml::Value::Table(value)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: origin,
            message: e.to_string(),
        })?;
    let problems = config.problems();
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    Ok(Loaded {
        config,
        path,
        overrides,
    })
}

/// A comma-separated list of report kinds (`""` for none).
pub fn report_kinds(text: &str) -> Result<Vec<crate::report::Kind>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let k = crate::report::Kind::parse(part).ok_or_else(|| {
            format!(
                "'{part}' is not a report kind ({})",
                crate::report::Kind::ALL.map(|k| k.as_str()).join(", ")
            )
        })?;
        if !out.contains(&k) {
            out.push(k);
        }
    }
    Ok(out)
}

/// A span like `10m`, or `0` for none.
pub fn span_or_zero(text: &str) -> Result<Duration, crate::domain::time::TimeError> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    let d = parse_span(text)?;
    Ok(d.to_std().unwrap_or(Duration::ZERO))
}

impl Config {
    /// Every out-of-range value, each naming its key.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |key: &str, message: String| {
            out.push(Problem {
                key: key.into(),
                message,
            })
        };
        if let Err(e) = DbUrl::parse(&self.database.url) {
            bad("database.url", e.to_string());
        }
        if !(1..=600_000).contains(&self.database.busy_timeout_ms) {
            bad(
                "database.busy_timeout_ms",
                format!("{} is outside 1..=600000", self.database.busy_timeout_ms),
            );
        }
        if self.sqlite_sync().is_none() {
            bad(
                "database.sqlite_synchronous",
                format!(
                    "'{}' is neither \"full\" nor \"normal\"",
                    self.database.sqlite_synchronous
                ),
            );
        }
        match Decimal::from_str(self.ledger.default_hold_buffer.trim()) {
            Ok(d) if d >= Decimal::ONE && d <= Decimal::from(100) => {}
            _ => bad(
                "ledger.default_hold_buffer",
                format!(
                    "'{}' must be a decimal between 1 and 100, like \"1.2\"",
                    self.ledger.default_hold_buffer
                ),
            ),
        }
        if let Err(e) = parse_span(&self.ledger.hold_lifetime) {
            bad("ledger.hold_lifetime", e.to_string());
        }
        for (key, v) in [
            ("spool.not_ready_grace", &self.spool.not_ready_grace),
            ("spool.rescan_interval", &self.spool.rescan_interval),
            ("recover.grace", &self.recover.grace),
        ] {
            if let Err(e) = span_or_zero(v) {
                bad(key, e.to_string());
            }
        }
        if !(1..=1 << 30).contains(&self.spool.max_file_size) {
            bad(
                "spool.max_file_size",
                format!(
                    "{} is outside 1..=1073741824 bytes",
                    self.spool.max_file_size
                ),
            );
        }
        match crate::domain::UsdMicros::parse(&self.spool.max_cost) {
            Ok(m) if !m.is_negative() && !m.is_zero() => {}
            _ => bad(
                "spool.max_cost",
                format!(
                    "'{}' must be a positive amount like \"1000000\"",
                    self.spool.max_cost
                ),
            ),
        }
        for (key, v) in [
            ("spool.batch_size", self.spool.batch_size),
            ("reconcile.batch_size", self.reconcile.batch_size),
        ] {
            if !(1..=100_000).contains(&v) {
                bad(key, format!("{v} is outside 1..=100000"));
            }
        }
        match Decimal::from_str(self.reconcile.refund_percent.trim()) {
            Ok(d) if d >= Decimal::ZERO && d <= Decimal::from(100) => {}
            _ => bad(
                "reconcile.refund_percent",
                format!(
                    "'{}' must be a percentage between 0 and 100",
                    self.reconcile.refund_percent
                ),
            ),
        }
        for state in self.refund_states() {
            if state.is_empty() || !state.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                bad(
                    "reconcile.refund_states",
                    format!("'{state}' is not a SLURM state name like NODE_FAIL"),
                );
            }
        }
        if self.recover.sacct_command.trim().is_empty() {
            bad("recover.sacct_command", "must name a command".into());
        }
        if !["7d", "30d", "90d"].contains(&self.burn.window.trim()) {
            bad(
                "burn.window",
                format!("'{}' must be 7d, 30d or 90d", self.burn.window),
            );
        }
        for (key, v) in [
            ("burn.on_track_percent", &self.burn.on_track_percent),
            (
                "alerts.variance_warning_percent",
                &self.alerts.variance_warning_percent,
            ),
            (
                "alerts.variance_critical_percent",
                &self.alerts.variance_critical_percent,
            ),
            (
                "alerts.utilisation_warning_percent",
                &self.alerts.utilisation_warning_percent,
            ),
            (
                "alerts.utilisation_critical_percent",
                &self.alerts.utilisation_critical_percent,
            ),
        ] {
            match Decimal::from_str(v.trim()) {
                Ok(d) if d >= Decimal::ZERO && d <= Decimal::from(10_000) => {}
                _ => bad(key, format!("'{v}' must be a percentage like \"20\"")),
            }
        }
        if !(1..=365).contains(&self.burn.min_active_days) {
            bad(
                "burn.min_active_days",
                format!("{} is outside 1..=365", self.burn.min_active_days),
            );
        }
        if !(1..=3650).contains(&self.burn.critical_days) {
            bad(
                "burn.critical_days",
                format!("{} is outside 1..=3650", self.burn.critical_days),
            );
        }
        if self.burn.underspend_grace_days > 3650 {
            bad(
                "burn.underspend_grace_days",
                format!("{} is outside 0..=3650", self.burn.underspend_grace_days),
            );
        }
        for (key, v) in [
            ("alerts.health_warning", self.alerts.health_warning),
            ("alerts.health_critical", self.alerts.health_critical),
        ] {
            if v > 100 {
                bad(key, format!("{v} is outside 0..=100"));
            }
        }
        if self.alerts.health_critical > self.alerts.health_warning {
            bad(
                "alerts.health_critical",
                "must not be above alerts.health_warning".into(),
            );
        }
        if !(1..=3650).contains(&self.alerts.ending_within_days) {
            bad(
                "alerts.ending_within_days",
                format!("{} is outside 1..=3650", self.alerts.ending_within_days),
            );
        }
        if let Err(e) = parse_span(&self.alerts.notify_timeout) {
            bad("alerts.notify_timeout", e.to_string());
        }
        if !(1..=1000).contains(&self.alerts.notify_max_attempts) {
            bad(
                "alerts.notify_max_attempts",
                format!("{} is outside 1..=1000", self.alerts.notify_max_attempts),
            );
        }
        if self.check.listen.parse::<std::net::SocketAddr>().is_err() {
            bad(
                "check.listen",
                format!(
                    "'{}' is not an address like 127.0.0.1:8080",
                    self.check.listen
                ),
            );
        }
        if !(1..=256).contains(&self.check.workers) {
            bad(
                "check.workers",
                format!("{} is outside 1..=256", self.check.workers),
            );
        }
        if !(1..=1000).contains(&self.check.max_batch) {
            bad(
                "check.max_batch",
                format!("{} is outside 1..=1000", self.check.max_batch),
            );
        }
        if !(1024..=16 << 20).contains(&self.check.max_body_bytes) {
            bad(
                "check.max_body_bytes",
                format!("{} is outside 1024..=16777216", self.check.max_body_bytes),
            );
        }
        if !self.check.cluster.is_empty()
            && crate::domain::PartitionName::new(&self.check.cluster).is_err()
        {
            bad(
                "check.cluster",
                format!("'{}' is not a cluster name", self.check.cluster),
            );
        }
        for (key, v) in [
            ("check.request_timeout", &self.check.request_timeout),
            (
                "estimate.correction_window",
                &self.estimate.correction_window,
            ),
            (
                "estimate.correction_refresh",
                &self.estimate.correction_refresh,
            ),
        ] {
            match span_or_zero(v) {
                Ok(d) if !d.is_zero() => {}
                Ok(_) => bad(key, "must be longer than 0".into()),
                Err(e) => bad(key, e.to_string()),
            }
        }
        match (
            span_or_zero(&self.check.retention),
            span_or_zero(&self.estimate.correction_window),
        ) {
            (Err(e), _) => bad("check.retention", e.to_string()),
            (Ok(keep), Ok(window)) if !keep.is_zero() && keep < window => bad(
                "check.retention",
                format!(
                    "{} is shorter than estimate.correction_window ({}): learned corrections read the checks of that window; keep them at least that long, or \"0\" for ever",
                    self.check.retention, self.estimate.correction_window
                ),
            ),
            _ => {}
        }
        match TimeLimit::parse(&self.estimate.default_time_limit) {
            Ok(TimeLimit::Seconds(_)) => {}
            Ok(TimeLimit::Unlimited) => bad(
                "estimate.default_time_limit",
                "must be a time limit, not UNLIMITED".into(),
            ),
            Err(e) => bad("estimate.default_time_limit", e.to_string()),
        }
        if !matches!(
            self.estimate.unpriced_partitions.as_str(),
            "refuse" | "allow"
        ) {
            bad(
                "estimate.unpriced_partitions",
                format!(
                    "'{}' is neither \"refuse\" nor \"allow\"",
                    self.estimate.unpriced_partitions
                ),
            );
        }
        let factor = |key: &str, v: &str, out: &mut dyn FnMut(&str, String)| match Decimal::from_str(
            v.trim(),
        ) {
            Ok(d) if d > Decimal::ZERO && d <= Decimal::from(100) => Some(d),
            _ => {
                out(
                    key,
                    format!("'{v}' must be a decimal above 0 and at most 100"),
                );
                None
            }
        };
        let mut push = |k: &str, m: String| bad(k, m);
        if let Some(d) = factor(
            "estimate.plan_buffer",
            &self.estimate.plan_buffer,
            &mut push,
        ) {
            if d < Decimal::ONE {
                push("estimate.plan_buffer", "must be at least 1".into());
            }
        }
        let lo = factor(
            "estimate.correction_min_factor",
            &self.estimate.correction_min_factor,
            &mut push,
        );
        let hi = factor(
            "estimate.correction_max_factor",
            &self.estimate.correction_max_factor,
            &mut push,
        );
        if let (Some(lo), Some(hi)) = (lo, hi) {
            if lo > Decimal::ONE || hi < Decimal::ONE {
                push(
                    "estimate.correction_min_factor",
                    format!("the bounds [{lo}, {hi}] must include 1"),
                );
            }
        }
        if !(1..=1_000_000).contains(&self.estimate.correction_min_runs) {
            push(
                "estimate.correction_min_runs",
                format!(
                    "{} is outside 1..=1000000",
                    self.estimate.correction_min_runs
                ),
            );
        }
        for (name, r) in &self.partitions {
            if crate::domain::PartitionName::new(name).is_err() {
                push(
                    &format!("partitions.{name}"),
                    "is not a SLURM partition name".into(),
                );
            }
            if let Err(m) = r.rates() {
                push(&format!("partitions.{name}.{}", m.0), m.1);
            }
        }
        if self.reports.dir.trim().is_empty() {
            bad("reports.dir", "must name a directory".into());
        }
        if let Err(e) = crate::report::Format::parse_list(&self.reports.formats) {
            bad("reports.formats", e);
        }
        for (key, v) in [
            ("reports.daily", &self.reports.daily),
            ("reports.monthly", &self.reports.monthly),
        ] {
            if let Err(e) = report_kinds(v) {
                bad(key, e);
            }
        }
        match parse_span(&self.reports.catch_up) {
            Ok(d) if d >= chrono::Duration::days(1) && d <= chrono::Duration::days(3660) => {}
            _ => bad(
                "reports.catch_up",
                format!(
                    "'{}' must be a span from 1d to 3660d, like \"31d\"",
                    self.reports.catch_up
                ),
            ),
        }
        out
    }

    /// The scheduled report plan from `[reports]` (validated at load); `dir` overrides
    /// `reports.dir`.
    pub fn report_plan(&self, dir: Option<PathBuf>) -> crate::report::scheduled::Plan {
        crate::report::scheduled::Plan {
            dir: dir.unwrap_or_else(|| PathBuf::from(&self.reports.dir)),
            daily: report_kinds(&self.reports.daily).unwrap_or_default(),
            monthly: report_kinds(&self.reports.monthly).unwrap_or_default(),
            formats: crate::report::Format::parse_list(&self.reports.formats)
                .unwrap_or_else(|_| vec![crate::report::Format::Csv]),
            catch_up: parse_span(&self.reports.catch_up).unwrap_or(chrono::Duration::days(31)),
        }
    }

    /// The site template directory, if one is set.
    pub fn report_templates_dir(&self) -> Option<PathBuf> {
        let d = self.reports.templates_dir.trim();
        (!d.is_empty()).then(|| PathBuf::from(d))
    }

    /// The burn-rate thresholds from `[burn]` (validated at load).
    pub fn burn_thresholds(&self) -> crate::domain::burn::BurnThresholds {
        crate::domain::burn::BurnThresholds {
            on_track_percent: Decimal::from_str(self.burn.on_track_percent.trim())
                .unwrap_or(Decimal::from(20)),
            min_active_days: Decimal::from(self.burn.min_active_days),
            critical_days: self.burn.critical_days as i64,
            underspend_grace_days: self.burn.underspend_grace_days as i64,
        }
    }

    /// The snapshot window in days.
    pub fn burn_window_days(&self) -> i64 {
        match self.burn.window.trim() {
            "7d" => 7,
            "90d" => 90,
            _ => 30,
        }
    }

    /// The alert thresholds from `[alerts]` (validated at load).
    pub fn alert_thresholds(&self) -> AlertThresholds {
        let d = |s: &str, dflt: i64| Decimal::from_str(s.trim()).unwrap_or(Decimal::from(dflt));
        AlertThresholds {
            variance_warning: d(&self.alerts.variance_warning_percent, 20),
            variance_critical: d(&self.alerts.variance_critical_percent, 50),
            health_warning: self.alerts.health_warning.min(100) as u8,
            health_critical: self.alerts.health_critical.min(100) as u8,
            utilisation_warning: d(&self.alerts.utilisation_warning_percent, 80),
            utilisation_critical: d(&self.alerts.utilisation_critical_percent, 100),
            ending_within_days: self.alerts.ending_within_days as i64,
        }
    }

    /// The notification hook's time limit.
    pub fn notify_timeout(&self) -> Duration {
        parse_span(&self.alerts.notify_timeout)
            .ok()
            .and_then(|d| d.to_std().ok())
            .unwrap_or(Duration::from_secs(30))
    }

    /// What the check needs to price a job, from `[estimate]`, `[partitions]` and `[ledger]`
    /// (validated at load).
    pub fn pricing(&self) -> crate::db::check::Pricing {
        let dec = |s: &str, d: Decimal| Decimal::from_str(s.trim()).unwrap_or(d);
        let default_seconds = match TimeLimit::parse(&self.estimate.default_time_limit) {
            Ok(TimeLimit::Seconds(s)) => s,
            _ => 86_400,
        };
        crate::db::check::Pricing {
            partitions: self
                .partitions
                .iter()
                .filter_map(|(n, r)| r.rates().ok().map(|r| (n.clone(), r)))
                .collect(),
            default_time_seconds: default_seconds,
            allow_unpriced: self.estimate.unpriced_partitions == "allow",
            buffer: self.hold_buffer(),
            plan_buffer: dec(&self.estimate.plan_buffer, Decimal::ONE),
            hold_lifetime: self.hold_lifetime(),
            correction: crate::domain::estimate::CorrectionPolicy {
                enabled: self.estimate.correction,
                min_runs: self.estimate.correction_min_runs,
                min_factor: dec(&self.estimate.correction_min_factor, Decimal::new(5, 1)),
                max_factor: dec(&self.estimate.correction_max_factor, Decimal::from(2)),
            },
            correction_window: span_or_zero(&self.estimate.correction_window)
                .unwrap_or(Duration::from_secs(90 * 86_400)),
            cluster: (!self.check.cluster.is_empty()).then(|| self.check.cluster.clone()),
        }
    }

    /// The spool directories (empty strings leave a kind out).
    pub fn spool_dirs(&self) -> crate::spool::intake::SpoolDirs {
        let dir = |s: &str| (!s.trim().is_empty()).then(|| PathBuf::from(s));
        crate::spool::intake::SpoolDirs {
            asbx: dir(&self.spool.asbx_dir),
            jobs: dir(&self.spool.jobs_dir),
            plans: dir(&self.spool.plans_dir),
        }
    }

    /// Intake options from `[spool]` (validated at load).
    pub fn intake_options(&self) -> crate::spool::intake::IntakeOptions {
        crate::spool::intake::IntakeOptions {
            limits: crate::spool::Limits {
                max_cost: crate::domain::UsdMicros::parse(&self.spool.max_cost)
                    .unwrap_or(crate::spool::Limits::default().max_cost),
            },
            max_file_size: self.spool.max_file_size,
            not_ready_grace: span_or_zero(&self.spool.not_ready_grace)
                .unwrap_or(Duration::from_secs(600)),
            batch_size: self.spool.batch_size as usize,
        }
    }

    /// The daemon's rescan period.
    pub fn rescan_interval(&self) -> Duration {
        span_or_zero(&self.spool.rescan_interval).unwrap_or(Duration::from_secs(60))
    }

    /// Refund states, upper case.
    pub fn refund_states(&self) -> Vec<String> {
        self.reconcile
            .refund_states
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// The reconcile policy from `[reconcile]`.
    pub fn reconcile_policy(&self) -> crate::db::reconcile::ReconcilePolicy {
        crate::db::reconcile::ReconcilePolicy {
            refund_states: self.refund_states(),
            refund_percent: Decimal::from_str(self.reconcile.refund_percent.trim())
                .unwrap_or(Decimal::from(100)),
            batch_size: self.reconcile.batch_size as usize,
            batch_ledger: true,
        }
    }

    /// The recover policy from `[recover]`.
    pub fn recover_policy(&self) -> crate::db::reconcile::RecoverPolicy {
        crate::db::reconcile::RecoverPolicy {
            grace: span_or_zero(&self.recover.grace).unwrap_or(Duration::from_secs(86_400)),
        }
    }

    fn sqlite_sync(&self) -> Option<SqliteSync> {
        match self
            .database
            .sqlite_synchronous
            .to_ascii_lowercase()
            .as_str()
        {
            "full" => Some(SqliteSync::Full),
            "normal" => Some(SqliteSync::Normal),
            _ => None,
        }
    }

    /// Connection options from `[database]`.
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            busy_timeout: Duration::from_millis(self.database.busy_timeout_ms),
            sqlite_synchronous: self.sqlite_sync().unwrap_or(SqliteSync::Full),
        }
    }

    /// The configuration of `asbb-checkd` (without its token, which the binary reads).
    pub fn server_config(
        &self,
        listen: &str,
        db_url: DbUrl,
    ) -> Result<crate::check::ServerConfig, ConfigError> {
        let mut cfg = crate::check::ServerConfig::new(listen, db_url, self.connect_options());
        cfg.workers = self.check.workers as usize;
        cfg.request_timeout =
            span_or_zero(&self.check.request_timeout).unwrap_or(Duration::from_secs(2));
        cfg.body_bytes_max = self.check.max_body_bytes as usize;
        cfg.max_batch = self.check.max_batch as usize;
        cfg.pricing = self.pricing();
        cfg.correction_refresh =
            span_or_zero(&self.estimate.correction_refresh).unwrap_or(Duration::from_secs(60));
        Ok(cfg)
    }

    /// The hold buffer (validated at load).
    pub fn hold_buffer(&self) -> Decimal {
        Decimal::from_str(self.ledger.default_hold_buffer.trim()).unwrap_or(Decimal::new(12, 1))
    }

    /// How long `checks` rows are kept; `None`: for ever (validated at load).
    pub fn check_retention(&self) -> Option<chrono::Duration> {
        span_or_zero(&self.check.retention)
            .ok()
            .filter(|d| !d.is_zero())
            .and_then(|d| chrono::Duration::from_std(d).ok())
    }

    /// The shortest retention of checks allowed: the learning window of corrections.
    pub fn min_check_retention(&self) -> chrono::Duration {
        span_or_zero(&self.estimate.correction_window)
            .ok()
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .unwrap_or(chrono::Duration::days(90))
    }

    /// The hold lifetime (validated at load).
    pub fn hold_lifetime(&self) -> chrono::Duration {
        parse_span(&self.ledger.hold_lifetime).unwrap_or(chrono::Duration::days(7))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn the_commented_default_is_the_default() {
        let parsed: Config = toml::from_str(DEFAULT_CONFIG_TOML).unwrap();
        assert_eq!(parsed, Config::default());
        assert!(Config::default().problems().is_empty());
    }

    #[test]
    fn env_overrides_win_over_the_file() {
        let f = write("[database]\nurl = \"/a.db\"\nbusy_timeout_ms = 10\n");
        let l = load(
            Some(f.path()),
            &env_of(&[
                ("ASBB_DATABASE_URL", "/b.db"),
                ("ASBB_DATABASE_BUSY_TIMEOUT_MS", "77"),
            ]),
        )
        .unwrap();
        assert_eq!(l.config.database.url, "/b.db");
        assert_eq!(l.config.database.busy_timeout_ms, 77);
        assert_eq!(l.overrides.len(), 2);
    }

    #[test]
    fn asbb_config_names_the_file() {
        let f = write("[ledger]\nhold_lifetime = \"2d\"\n");
        let l = load(
            None,
            &env_of(&[("ASBB_CONFIG", f.path().to_str().unwrap())]),
        )
        .unwrap();
        assert_eq!(l.config.ledger.hold_lifetime, "2d");
        assert_eq!(l.config.database, DatabaseConfig::default());
    }

    #[test]
    fn unknown_keys_are_named() {
        let f = write("[database]\nurll = \"x\"\n");
        let e = load(Some(f.path()), &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("urll"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let f = write("[database]\nurl = \"mysql://x\"\nsqlite_synchronous = \"off\"\n[ledger]\ndefault_hold_buffer = \"0.5\"\nhold_lifetime = \"forever\"\n");
        let e = load(Some(f.path()), &env_of(&[])).unwrap_err();
        let ConfigError::Invalid(problems) = e else {
            panic!("{e}")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "database.url",
                "database.sqlite_synchronous",
                "ledger.default_hold_buffer",
                "ledger.hold_lifetime"
            ]
        );
    }

    #[test]
    fn check_and_rate_problems_name_their_key() {
        let f = write(
            "[check]\nlisten = \"nowhere\"\n[estimate]\nunpriced_partitions = \"maybe\"\ndefault_time_limit = \"UNLIMITED\"\n[partitions.aws]\ncpu_hour = \"1e3\"\n[partitions.gpu]\nmax_time = \"soon\"\n",
        );
        let ConfigError::Invalid(problems) = load(Some(f.path()), &env_of(&[])).unwrap_err() else {
            panic!()
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "check.listen",
                "estimate.default_time_limit",
                "estimate.unpriced_partitions",
                "partitions.aws.cpu_hour",
                "partitions.gpu.max_time"
            ]
        );
        let f = write("[partitions.aws]\ncpu_hour = \"0.05\"\nmax_time = \"2-00:00:00\"\n");
        let p = load(Some(f.path()), &env_of(&[])).unwrap().config.pricing();
        let r = &p.partitions["aws"];
        assert_eq!(r.cpu_hour.to_string(), "0.05");
        assert_eq!(r.max_time_seconds, Some(172_800));
    }

    #[test]
    fn a_missing_named_file_is_an_error() {
        let e = load(Some(Path::new("/nonexistent/asbb.toml")), &env_of(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
    }

    #[test]
    fn a_non_numeric_env_override_is_named() {
        let e = load(
            None,
            &env_of(&[
                ("ASBB_CONFIG", write("").path().to_str().unwrap()),
                ("ASBB_DATABASE_BUSY_TIMEOUT_MS", "soon"),
            ]),
        );
        // The temp file is dropped right away, so either the read fails or the override does;
        // both must name what is wrong.
        let msg = e.unwrap_err().to_string();
        assert!(
            msg.contains("ASBB_DATABASE_BUSY_TIMEOUT_MS") || msg.contains("failed to read"),
            "{msg}"
        );
    }

    #[test]
    fn every_key_has_an_env_name() {
        let names: Vec<String> = keys().iter().map(|(s, k)| env_name(s, k)).collect();
        assert!(names.contains(&"ASBB_DATABASE_URL".to_string()));
        assert!(names.contains(&"ASBB_LEDGER_HOLD_LIFETIME".to_string()));
    }
}
