//! Scenario folders: `tests/fixtures/scenarios/NN-name/` each hold a `scenario.toml` (the
//! accounts, grants and schedules as an admin creates them, the timer runs, and the charge
//! stream, as `asbb` command lines with their `--as-of` times) and `expected/` golden files.
//! This driver runs every scenario against the real `asbb` binary on a fresh ledger, on SQLite
//! and (with `ASBB_TEST_POSTGRES_URL`) PostgreSQL, writes what the ledger says as CSV files and
//! a transcript, and compares each with its golden file exactly.
//!
//! `ASBB_SCENARIOS_UPDATE=1 cargo test --test scenarios` rewrites the golden files from the
//! SQLite run (the PostgreSQL run still compares): review every changed figure against the
//! hand computation in the scenario's README.md before committing it.
//! The format is described in `tests/fixtures/scenarios/README.md`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, Duration, Months, NaiveDate, TimeZone, Utc};
use common::TestDb;
use serde::Deserialize;
use serde_json::Value;

/// The golden files a scenario may have; each is produced for every scenario.
const OUTPUTS: [&str; 7] = [
    "ledger.csv",
    "balances.csv",
    "periods.csv",
    "schedules.csv",
    "burn.csv",
    "alerts.csv",
    "transcript.txt",
];

/// The most repetitions of one step (a typo in `every` must not run forever).
const REPEATS_MAX: usize = 2000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    #[allow(dead_code)]
    description: String,
    #[serde(rename = "step")]
    steps: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    /// The `--as-of` time: `YYYY-MM-DD` (midnight UTC) or RFC 3339.
    at: String,
    /// The command line after `asbb` (double quotes group words; `{date}` and `{time}` are
    /// replaced by the run's time, e.g. for idempotency keys of a repeated charge).
    run: String,
    /// Repeat: `day`, `week`, `month` or `N days`, from `at` ...
    every: Option<String>,
    /// ... until this time (inclusive) ...
    until: Option<String>,
    /// ... except at these times (a missed timer).
    #[serde(default)]
    skip: Vec<String>,
    /// `burn`: the command's `--json` output is a row of burn.csv.
    record: Option<String>,
    /// The command's output goes into transcript.txt.
    #[serde(default)]
    show: bool,
    /// The exit code the command must end with (0 by default).
    #[serde(default)]
    exit: i32,
}

fn time(s: &str) -> DateTime<Utc> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap());
    }
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("'{s}' is not a date or RFC 3339 time: {e}"))
        .with_timezone(&Utc)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Every run of a step: at `at`, then every `every` (anchored to `at`) until `until`.
fn times(s: &Step) -> Vec<DateTime<Utc>> {
    let first = time(&s.at);
    let Some(every) = &s.every else {
        return vec![first];
    };
    let until = time(s.until.as_deref().expect("`every` needs `until`"));
    let skip: Vec<DateTime<Utc>> = s.skip.iter().map(|t| time(t)).collect();
    let mut out = Vec::new();
    for k in 0u32.. {
        assert!(
            (k as usize) < REPEATS_MAX,
            "step '{}' repeats too often",
            s.run
        );
        let t = match every.trim() {
            "day" => first + Duration::days(i64::from(k)),
            "week" => first + Duration::weeks(i64::from(k)),
            "month" => first
                .checked_add_months(Months::new(k))
                .expect("date in range"),
            other => {
                let n: i64 = other
                    .strip_suffix(" days")
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or_else(|| panic!("every = '{other}': use day, week, month or N days"));
                first + Duration::days(n * i64::from(k))
            }
        };
        if t > until {
            break;
        }
        if !skip.contains(&t) {
            out.push(t);
        }
    }
    out
}

/// Splits a command line at spaces; double quotes group words (and are removed).
fn split_args(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quotes in: {line}");
    if any {
        out.push(cur);
    }
    out
}

struct Runner {
    db: TestDb,
    dir: tempfile::TempDir,
    config: PathBuf,
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Runner {
    fn new(db: TestDb) -> Runner {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("asbb.toml");
        std::fs::write(
            &config,
            format!(
                "[burn]\nstatus_dir = \"{}\"\n",
                dir.path().join("status").display()
            ),
        )
        .unwrap();
        Runner { db, dir, config }
    }

    fn run(&self, args: &[String]) -> Ran {
        let o = Command::new(env!("CARGO_BIN_EXE_asbb"))
            .args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("ASBB_CONFIG", &self.config)
            .env("ASBB_DATABASE_URL", &self.db.url)
            .env("USER", "scenario")
            .output()
            .expect("run asbb");
        Ran {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.push("--json".into());
        let r = self.run(&a);
        assert_eq!(r.code, 0, "asbb {a:?}: {}{}", r.stdout, r.stderr);
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("asbb {a:?}: not JSON ({e}): {}", r.stdout))
    }
}

/// A JSON value as a CSV field: strings bare, null empty.
fn field(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn csv_of(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header).unwrap();
    for r in rows {
        w.write_record(r).unwrap();
    }
    String::from_utf8(w.into_inner().unwrap()).unwrap()
}

fn at_path(v: &Value, path: &str) -> String {
    let mut cur = v;
    for part in path.split('.') {
        cur = &cur[part];
    }
    field(cur)
}

const BURN_COLUMNS: [(&str, &str); 17] = [
    ("as_of", "as_of"),
    ("window_spent", "window_spent"),
    ("window_expected", "window_expected"),
    ("daily_rate", "daily_rate"),
    ("expected_daily_rate", "expected_daily_rate"),
    ("variance_percent", "variance_percent"),
    ("status", "burn_status"),
    ("health", "health_score"),
    ("band", "health_band"),
    ("utilization_percent", "utilization_percent"),
    ("period_budget", "period.budget"),
    ("period_spent", "period.spent"),
    ("remaining", "projection.remaining"),
    ("depletion", "projection.depletion_date"),
    (
        "projected_period_spend",
        "projection.projected_period_spend",
    ),
    ("period_overrun", "projection.period_overrun"),
    ("risk", "projection.risk_level"),
];

/// Runs a scenario; returns every output file by name.
fn play(dir: &Path, db: TestDb) -> BTreeMap<&'static str, String> {
    let text = std::fs::read_to_string(dir.join("scenario.toml")).unwrap();
    let sc: Scenario = toml::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join("scenario.toml").display()));
    let r = Runner::new(db);
    // Every run of every step, in time order; at one time in the order of the file.
    let mut runs: Vec<(DateTime<Utc>, usize, &Step)> = Vec::new();
    for (i, s) in sc.steps.iter().enumerate() {
        for t in times(s) {
            runs.push((t, i, s));
        }
    }
    runs.sort_by_key(|(t, i, _)| (*t, *i));
    let mut transcript = String::new();
    let mut burn_rows: Vec<Vec<String>> = Vec::new();
    for (t, _, s) in &runs {
        let line = s
            .run
            .replace("{date}", &t.format("%Y-%m-%d").to_string())
            .replace("{time}", &rfc3339(*t));
        let mut args = split_args(&line);
        args.push("--as-of".into());
        args.push(rfc3339(*t));
        if s.record.is_some() {
            args.push("--json".into());
        }
        let out = r.run(&args);
        assert_eq!(
            out.code,
            s.exit,
            "{}: `asbb {}` at {} exited {} (expected {})\nstdout: {}\nstderr: {}",
            dir.display(),
            s.run,
            rfc3339(*t),
            out.code,
            s.exit,
            out.stdout,
            out.stderr
        );
        if s.show {
            transcript.push_str(&format!("$ asbb {line} --as-of {}\n", rfc3339(*t)));
            transcript.push_str(&out.stdout);
            if !out.stderr.is_empty() {
                transcript.push_str(&format!("[stderr] {}", out.stderr));
            }
            if out.code != 0 {
                transcript.push_str(&format!("[exit {}]\n", out.code));
            }
            transcript.push('\n');
        }
        match s.record.as_deref() {
            None => {}
            Some("burn") => {
                let v: Value = serde_json::from_str(&out.stdout)
                    .unwrap_or_else(|e| panic!("`asbb {}`: not JSON ({e}): {}", s.run, out.stdout));
                let target = split_args(&s.run)
                    .get(1)
                    .cloned()
                    .expect("burn-rate TARGET");
                let mut row = vec![target];
                row.extend(BURN_COLUMNS.iter().map(|(_, p)| at_path(&v, p)));
                burn_rows.push(row);
            }
            Some(other) => panic!("record = '{other}': only 'burn' is known"),
        }
    }
    let mut out = BTreeMap::new();
    // The journal: every entry, by account and effective time.
    let entries = r.json(&["transactions", "list", "--limit", "0"]);
    let mut rows: Vec<(String, String, i64, Vec<String>)> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                field(&e["account"]),
                field(&e["effective_at"]),
                e["seq"].as_i64().unwrap(),
                [
                    "account",
                    "effective_at",
                    "type",
                    "amount",
                    "credited_delta",
                    "charged_delta",
                    "idempotency_key",
                ]
                .iter()
                .map(|k| field(&e[*k]))
                .collect(),
            )
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
    out.insert(
        "ledger.csv",
        csv_of(
            &[
                "account",
                "effective_at",
                "type",
                "amount",
                "credited",
                "charged",
                "key",
            ],
            &rows.into_iter().map(|r| r.3).collect::<Vec<_>>(),
        ),
    );
    let accounts = r.json(&["account", "list"]);
    out.insert(
        "balances.csv",
        csv_of(
            &[
                "account",
                "status",
                "credited",
                "charged",
                "held",
                "available",
            ],
            &accounts
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    [
                        "account",
                        "status",
                        "budget_limit",
                        "budget_used",
                        "budget_held",
                        "budget_available",
                    ]
                    .iter()
                    .map(|k| field(&a[*k]))
                    .collect()
                })
                .collect::<Vec<_>>(),
        ),
    );
    let mut periods = Vec::new();
    for g in r.json(&["grant", "list"]).as_array().unwrap() {
        let number = field(&g["number"]);
        for p in r.json(&["grant", "periods", &number]).as_array().unwrap() {
            let mut row = vec![number.clone()];
            row.extend(
                [
                    "period",
                    "start",
                    "end",
                    "status",
                    "budget.total",
                    "budget.direct",
                    "budget.indirect",
                    "carry_in",
                    "credited_to_accounts",
                    "spent.total",
                    "spent.direct",
                    "spent.indirect",
                    "carried_out",
                    "expired",
                ]
                .iter()
                .map(|k| at_path(p, k)),
            );
            periods.push(row);
        }
    }
    out.insert(
        "periods.csv",
        csv_of(
            &[
                "grant",
                "period",
                "start",
                "end",
                "status",
                "budget",
                "budget_direct",
                "budget_indirect",
                "carry_in",
                "credited",
                "spent",
                "spent_direct",
                "spent_indirect",
                "carried_out",
                "expired",
            ],
            &periods,
        ),
    );
    let mut sched = Vec::new();
    for s in r.json(&["allocations", "list"]).as_array().unwrap() {
        let id = field(&s["id"]);
        let v = r.json(&["allocations", "show", &id]);
        for p in v["periods"].as_array().unwrap() {
            let mut row = vec![id.clone(), field(&v["account"])];
            row.extend(
                ["period", "due", "outcome", "amount", "effective_at"]
                    .iter()
                    .map(|k| field(&p[*k])),
            );
            sched.push(row);
        }
        sched.push(vec![
            id.clone(),
            field(&v["account"]),
            "total".into(),
            String::new(),
            field(&v["status"]),
            field(&v["credited"]),
            field(&v["finished_at"]),
        ]);
    }
    out.insert(
        "schedules.csv",
        csv_of(
            &[
                "schedule",
                "account",
                "period",
                "due",
                "outcome",
                "amount",
                "effective_at",
            ],
            &sched,
        ),
    );
    let mut header = vec!["target"];
    header.extend(BURN_COLUMNS.iter().map(|(h, _)| *h));
    out.insert("burn.csv", csv_of(&header, &burn_rows));
    let mut alerts: Vec<Vec<String>> = r
        .json(&["alerts", "list", "--all"])
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            [
                "raised_at",
                "kind",
                "severity",
                "subject_kind",
                "subject",
                "value",
                "threshold",
                "resolved_at",
                "state",
            ]
            .iter()
            .map(|k| field(&a[*k]))
            .collect()
        })
        .collect();
    alerts.sort();
    out.insert(
        "alerts.csv",
        csv_of(
            &[
                "raised_at",
                "kind",
                "severity",
                "subject_kind",
                "subject",
                "value",
                "threshold",
                "resolved_at",
                "state",
            ],
            &alerts,
        ),
    );
    out.insert("transcript.txt", transcript);
    // The ledger the scenario left must audit clean.
    let audit = r.run(&["audit".into(), "verify".into()]);
    assert_eq!(
        audit.code,
        0,
        "{}: audit verify: {}{}",
        dir.display(),
        audit.stdout,
        audit.stderr
    );
    out
}

fn scenario_dirs() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scenarios");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("scenario.toml").is_file())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no scenarios in {}", root.display());
    dirs
}

/// The first lines where two texts differ, for the failure message.
fn diff(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let mut out = String::new();
    let mut shown = 0;
    for i in 0..e.len().max(a.len()) {
        let (x, y) = (e.get(i).copied(), a.get(i).copied());
        if x != y {
            out.push_str(&format!(
                "  line {}:\n    expected: {}\n    actual:   {}\n",
                i + 1,
                x.unwrap_or("<none>"),
                y.unwrap_or("<none>")
            ));
            shown += 1;
            if shown == 8 {
                out.push_str("  ...\n");
                break;
            }
        }
    }
    out
}

fn check_all(backend: &str, fresh: impl Fn() -> Option<TestDb>) {
    let update =
        backend == "sqlite" && std::env::var("ASBB_SCENARIOS_UPDATE").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    for dir in scenario_dirs() {
        let Some(db) = fresh() else {
            eprintln!("ASBB_TEST_POSTGRES_URL not set: postgres variant skipped");
            return;
        };
        let outputs = play(&dir, db);
        let expected_dir = dir.join("expected");
        for name in OUTPUTS {
            let actual = &outputs[name];
            let path = expected_dir.join(name);
            if update {
                std::fs::create_dir_all(&expected_dir).unwrap();
                std::fs::write(&path, actual).unwrap();
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(expected) if &expected == actual => {}
                Ok(expected) => failures.push(format!(
                    "{} ({backend}): {name} differs from the golden file\n{}",
                    dir.display(),
                    diff(&expected, actual)
                )),
                Err(e) => failures.push(format!(
                    "{} ({backend}): no golden {} ({e}); ASBB_SCENARIOS_UPDATE=1 writes it",
                    dir.display(),
                    path.display()
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn scenarios_sqlite() {
    check_all("sqlite", || Some(TestDb::sqlite()));
}

#[test]
fn scenarios_postgres() {
    check_all("postgres", TestDb::postgres);
}

#[test]
fn command_lines_split_like_a_shell_would() {
    assert_eq!(
        split_args(r#"grant create --pi "Dr. Jane Smith" --co-pi="Dr. A,Dr. B" --amount 5"#),
        [
            "grant",
            "create",
            "--pi",
            "Dr. Jane Smith",
            "--co-pi=Dr. A,Dr. B",
            "--amount",
            "5"
        ]
    );
    let s = Step {
        at: "2024-01-31".into(),
        run: "allocations process".into(),
        every: Some("month".into()),
        until: Some("2024-05-31".into()),
        skip: vec!["2024-03-31".into()],
        record: None,
        show: false,
        exit: 0,
    };
    // Anchored to the 31st: Feb 29 (leap year), Mar 31 skipped, Apr 30, May 31.
    let got: Vec<String> = times(&s).into_iter().map(rfc3339).collect();
    assert_eq!(
        got,
        [
            "2024-01-31T00:00:00Z",
            "2024-02-29T00:00:00Z",
            "2024-04-30T00:00:00Z",
            "2024-05-31T00:00:00Z"
        ]
    );
}
