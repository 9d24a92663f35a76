//! Crash safety, proven, on both backends.
//!
//! A large spool (about 320 files: cost exports with and without holds, holds named in the file,
//! found by job id or through a job-end record, array tasks sharing one hold, a requeued run, a
//! duplicate and a conflicting re-export, overruns, refunds, runs that must wait, job-end
//! records, plans and refused files) is taken in and reconciled on fresh databases: once
//! uninterrupted with the default batch sizes (the reference), and then in small batches while
//! `asbb spool scan`, `asbb reconcile` (one database) and `asbb-spoold` (another) are killed
//! with SIGKILL at many different points and restarted until they finish. Every third
//! interruption of asbb-spoold is a SIGTERM instead, which it must honour with exit 0, as it
//! must when it is left to finish and then stopped. Afterwards the accounts, the journal, the
//! holds, the runs that wait, the recorded arrivals and the files on disk must equal the
//! reference; every file must have been recorded once and moved once; `asbb audit verify` must
//! be clean; and another scan and reconcile must find nothing to do.
//!
//! Kill delays are fractions of how long an uninterrupted run took on this machine and backend,
//! adapted as the runs go, so that kills land in every phase: start-up, listing and reading,
//! inside a transaction, and between a commit and the renames that follow it. The tests count
//! the kills that landed after some but not all work was committed and fail if there are too
//! few, so they cannot pass without having interrupted anything. `ASBB_CRASH_TRACE=1` prints
//! every kill (delay and progress) to tune this.
//!
//! Which of two exports of one run is stored (and which is the duplicate or the conflict), and
//! which task of an array releases the rest of its hold, follow the order in which files are
//! listed. Both spools are written the same way in fresh directories, so they list in the
//! same order (ext4 and XFS by name hash, tmpfs and btrfs by creation), and a restarted scan
//! lists what is left in the same relative order.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use asbb::db::ledger::{self, HoldOutcome, HoldRequest, LedgerError, NewAccount, OpContext};
use asbb::db::schema::{cost_records, spool_files};
use asbb::db::DbConn;
use asbb::domain::{AccountName, UsdMicros};
use chrono::{TimeZone, Utc};
use common::{Backend, TestDb};
use diesel::prelude::*;
use rust_decimal::Decimal;
use serde_json::Value;

const ASBB: &str = env!("CARGO_BIN_EXE_asbb");
const SPOOLD: &str = env!("CARGO_BIN_EXE_asbb-spoold");

/// The budget accounts.
const ACCOUNTS: [&str; 4] = ["astro", "bio", "chem", "geo"];
/// Regular jobs 10001..=10260, one cost export each.
const REGULAR: u64 = 260;

/// Kills that must land after some but not all of the work was committed, per command.
const MIN_MID_WORK: usize = 5;
/// After this many such kills a command is left to finish.
const ENOUGH_MID_WORK: usize = 14;
/// Longest a kill loop may take.
const LOOP_LIMIT: Duration = Duration::from_secs(90);
/// When to kill: (percent of the start-up time, thousandths of the time the work took in an
/// uninterrupted run). The first kind lands in start-up (loading, config, connecting); the
/// others in listing and reading, inside transactions, and between commits and their moves.
const DELAYS: [(u64, u64); 16] = [
    (30, 0),
    (100, 40),
    (100, 10),
    (100, 120),
    (70, 0),
    (100, 70),
    (100, 20),
    (100, 200),
    (100, 0),
    (100, 90),
    (100, 5),
    (100, 150),
    (50, 0),
    (100, 30),
    (100, 60),
    (100, 300),
];
/// Runs after which a command is left to finish even if no kill landed between a commit and
/// its moves.
const MAX_RUNS: usize = 80;

// ---------------------------------------------------------------------------------------------
// The workload

/// A spool directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    Asbx,
    Jobs,
    Plans,
}

const DIRS: [Dir; 3] = [Dir::Asbx, Dir::Jobs, Dir::Plans];

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Asbx => "asbx",
            Dir::Jobs => "jobs",
            Dir::Plans => "plans",
        }
    }

    /// The `kind` asbb stores for its files.
    fn kind(self) -> &'static str {
        match self {
            Dir::Asbx => "cost",
            Dir::Jobs => "job_end",
            Dir::Plans => "plan",
        }
    }
}

/// Where a file must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// `processed/` (stored, a duplicate or a conflict).
    Processed,
    /// `rejected/`, with `<name>.error.json`.
    Rejected,
    /// A producer's temporary file: never touched.
    LeftAlone,
}

/// One file of the spool.
struct SpoolFile {
    dir: Dir,
    name: String,
    body: String,
    end: End,
}

/// One hold placed before any file is read.
struct HoldSpec {
    key: String,
    account: &'static str,
    job: Option<String>,
    estimate_usd: i64,
    tasks: Option<u32>,
}

fn account_of(j: u64) -> &'static str {
    ACCOUNTS[((j + j / 10) % 4) as usize]
}

/// How regular job `j` finds its hold: `None` for no hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    /// The hold carries the job id; the export does not name it.
    ByJob,
    /// The hold carries the job id and the export names it.
    NamedWithJob,
    /// The hold has no job id; the export names it.
    Named,
    /// The hold has no job id; the job-end record names it.
    ByJobEnd,
}

fn match_of(j: u64) -> Option<Match> {
    match j % 10 {
        0 | 2 | 4 => Some(Match::ByJob),
        6 => Some(Match::NamedWithJob),
        8 => Some(Match::Named),
        1 => Some(Match::ByJobEnd),
        _ => None,
    }
}

fn hold_specs() -> Vec<HoldSpec> {
    let mut v = Vec::new();
    for j in 1..=REGULAR {
        let Some(m) = match_of(j) else { continue };
        let job = 10_000 + j;
        v.push(HoldSpec {
            key: format!("job-{job}"),
            account: account_of(j),
            job: matches!(m, Match::ByJob | Match::NamedWithJob).then(|| job.to_string()),
            estimate_usd: 5 + (j % 13) as i64,
            tasks: None,
        });
    }
    let mut special = |key: &str, account, job: Option<&str>, estimate_usd, tasks| {
        v.push(HoldSpec {
            key: key.to_string(),
            account,
            job: job.map(str::to_string),
            estimate_usd,
            tasks,
        })
    };
    // An array whose three tasks all report, and one of five tasks of which three report.
    special("array-20000", "astro", Some("20000"), 30, Some(3));
    special("array-20001", "bio", Some("20001"), 50, Some(5));
    // A duplicate and a conflicting re-export, each for a job with a hold.
    special("job-20003", "geo", Some("20003"), 8, None);
    special("job-20004", "astro", Some("20004"), 6, None);
    // An anonymised export whose hold names the account.
    special("job-20006", "geo", Some("20006"), 10, None);
    // Holds of jobs that never report; an export names the first for another job.
    for (i, a) in ACCOUNTS.iter().enumerate() {
        special(
            &format!("idle-3000{i}"),
            a,
            Some(&format!("3000{i}")),
            4,
            None,
        );
    }
    special("idle-nojob", "chem", None, 9, None);
    v
}

fn usd(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// The spool, given the ids the holds got.
fn spool(holds: &BTreeMap<String, i64>) -> Vec<SpoolFile> {
    let href = |key: &str| format!("hold-{}", holds[key]);
    let mut v = Vec::new();
    let mut add = |dir, name: String, body: String, end| {
        v.push(SpoolFile {
            dir,
            name,
            body,
            end,
        })
    };
    let cost_file = |job: &str| format!("job_{job}_cost.json");
    let alias_file = |job: &str| format!("job-{job}-asbb-reconciliation.json");
    for j in 1..=REGULAR {
        let job = (10_000 + j).to_string();
        let m = match_of(j);
        let account = match (m, j % 50) {
            (None, 7) => "ghost",
            (None, 19) => "anonymized",
            _ => account_of(j),
        };
        let state = if j % 23 == 0 {
            "NODE_FAIL"
        } else if j % 17 == 0 {
            "FAILED"
        } else {
            "COMPLETED"
        };
        let cost = usd((j * 7919) % 2500);
        let amount = if j % 3 == 0 {
            cost
        } else {
            format!("\"{cost}\"")
        };
        let (name, mut body) = if j % 9 == 5 {
            (
                alias_file(&job),
                format!(
                    r#"{{"slurm_job_id":"{job}","project_id":"{account}","total_cost_usd":{amount},"job_state":"{state}""#
                ),
            )
        } else {
            (
                cost_file(&job),
                format!(
                    r#"{{"job_id":"{job}","account":"{account}","actual_cost":{amount},"job_state":"{state}""#
                ),
            )
        };
        if matches!(m, Some(Match::Named | Match::NamedWithJob)) {
            body.push_str(&format!(
                r#","budget_transaction_id":"{}""#,
                href(&format!("job-{job}"))
            ));
        }
        body.push('}');
        add(Dir::Asbx, name, body, End::Processed);
        // Job-end records: the ones that name a hold, and a few for jobs without one.
        let hold_ref = match m {
            Some(Match::ByJobEnd) => Some(format!("\"{}\"", href(&format!("job-{job}")))),
            None if j % 40 == 5 => Some("null".to_string()),
            _ => None,
        };
        if let Some(hold_ref) = hold_ref {
            let end = 1_757_950_000 + j * 60;
            add(
                Dir::Jobs,
                format!("jobend.lab.{job}.{end}.json"),
                format!(
                    r#"{{"schema_version":1,"cluster":"lab","job_id":"{job}","account":"{account}","state":"{state}","submit_time":{},"start_time":{},"end_time":{end},"hold_id":{hold_ref}}}"#,
                    end - 7200,
                    end - 3600
                ),
                End::Processed,
            );
        }
    }
    // The array tasks.
    for (t, cents) in [(1, 825), (2, 950), (3, 1075)] {
        add(
            Dir::Asbx,
            cost_file(&format!("20000_{t}")),
            format!(
                r#"{{"job_id":"20000_{t}","account":"astro","actual_cost":"{}","job_state":"COMPLETED"}}"#,
                usd(cents)
            ),
            End::Processed,
        );
    }
    for (t, cents) in [(1, 1200), (2, 900), (4, 1333)] {
        add(
            Dir::Asbx,
            cost_file(&format!("20001_{t}")),
            format!(
                r#"{{"job_id":"20001_{t}","account":"bio","actual_cost":{}}}"#,
                usd(cents)
            ),
            End::Processed,
        );
    }
    // A run requeued once: both runs are charged.
    add(
        Dir::Asbx,
        cost_file("20002"),
        r#"{"job_id":"20002","account":"chem","actual_cost":"4.00","job_state":"COMPLETED"}"#
            .into(),
        End::Processed,
    );
    add(
        Dir::Asbx,
        alias_file("20002"),
        r#"{"slurm_job_id":"20002","project_id":"chem","total_cost_usd":"6.50","restart_count":1,"job_state":"COMPLETED"}"#.into(),
        End::Processed,
    );
    // The same run exported twice with the same facts: a duplicate.
    add(
        Dir::Asbx,
        cost_file("20003"),
        r#"{"job_id":"20003","account":"geo","actual_cost":"7.25","job_state":"COMPLETED"}"#.into(),
        End::Processed,
    );
    add(
        Dir::Asbx,
        alias_file("20003"),
        r#"{"slurm_job_id":20003,"project_id":"geo","total_cost_usd":7.250,"job_state":"completed"}"#.into(),
        End::Processed,
    );
    // The same run exported twice with another partition: a conflict (the cost is the same, so
    // the ledger does not depend on which one came first).
    add(
        Dir::Asbx,
        cost_file("20004"),
        r#"{"job_id":"20004","account":"astro","actual_cost":"5.50","partition":"aws-a"}"#.into(),
        End::Processed,
    );
    add(
        Dir::Asbx,
        alias_file("20004"),
        r#"{"slurm_job_id":"20004","project_id":"astro","total_cost_usd":"5.50","partition":"aws-b"}"#.into(),
        End::Processed,
    );
    // Names a hold of another job: the ledger refuses, and the run waits.
    add(
        Dir::Asbx,
        cost_file("20005"),
        format!(
            r#"{{"job_id":"20005","account":"bio","actual_cost":"3.00","budget_transaction_id":"{}"}}"#,
            href("idle-30000")
        ),
        End::Processed,
    );
    // Anonymised, but its hold names the account.
    add(
        Dir::Asbx,
        cost_file("20006"),
        r#"{"job_id":"20006","account":"anonymized","actual_cost":"11.11"}"#.into(),
        End::Processed,
    );
    // Refused files.
    let bad = [
        (
            "job_20100_cost.json",
            r#"{"job_id":"20100","account":"astro","actual_cost":12.3456789}"#,
        ),
        ("notes.txt", "not a cost export"),
        ("job_20101_cost.json", ""),
        (
            "job_20102_cost.json",
            r#"{"job_id":"20103","account":"astro","actual_cost":"1.00"}"#,
        ),
        (
            "job_20104_cost.json",
            r#"{"job_id":"20104","account":"astro","actual_cost":"#,
        ),
        (
            "job_20105_cost.json",
            r#"{"job_id":"20105","account":"bio","actual_cost":"-3.25"}"#,
        ),
        ("job_20106_cost.json", "[1, 2]"),
    ];
    for (name, body) in bad {
        add(Dir::Asbx, name.into(), body.into(), End::Rejected);
    }
    add(
        Dir::Jobs,
        "jobend.lab.20110.1757955845.json".into(),
        r#"{"schema_version":2,"cluster":"lab","job_id":"20110","account":"astro","state":"COMPLETED","submit_time":1757948400,"end_time":1757955845}"#.into(),
        End::Rejected,
    );
    add(
        Dir::Jobs,
        "readme.md".into(),
        "# not a job-end record".into(),
        End::Rejected,
    );
    // Plans, and one of unknown shape.
    for (i, a) in ACCOUNTS.iter().enumerate() {
        add(
            Dir::Plans,
            format!("asba-plan-{i:04}.json"),
            format!(
                r#"{{"job_metadata":{{"account":"{a}"}},"generated_at":"2026-01-15T09:00:00Z","should_burst":true,"cost_constraints":{{"max_total_cost":"{}.50"}}}}"#,
                10 + i
            ),
            End::Processed,
        );
    }
    add(
        Dir::Plans,
        "broken-plan.json".into(),
        "{}".into(),
        End::Rejected,
    );
    // Producers' temporary files.
    add(
        Dir::Asbx,
        ".job_20200_cost.json.tmp".into(),
        r#"{"job_id":"20200","account":"astro","actual_cost":"#.into(),
        End::LeftAlone,
    );
    add(
        Dir::Jobs,
        "jobend.lab.20201.1757955845.json.part".into(),
        "{".into(),
        End::LeftAlone,
    );
    v
}

// ---------------------------------------------------------------------------------------------
// A database and a spool

fn fresh(backend: Backend) -> TestDb {
    match backend {
        Backend::Sqlite => TestDb::sqlite(),
        Backend::Postgres => TestDb::postgres().expect("ASBB_TEST_POSTGRES_URL is set"),
    }
}

/// Accounts and holds, through the library (placing ~140 holds with the CLI would take seconds).
fn setup_ledger(conn: &mut DbConn) -> BTreeMap<String, i64> {
    let ctx = OpContext::at(
        "tester",
        Utc.with_ymd_and_hms(2026, 1, 15, 8, 0, 0).unwrap(),
    );
    let mut ids = BTreeMap::new();
    asbb::db::write_transaction(conn, |conn| {
        for a in ACCOUNTS {
            ledger::create_account(
                conn,
                &ctx,
                &NewAccount {
                    name: AccountName::new(a).unwrap(),
                    display_name: a.to_uppercase(),
                    description: String::new(),
                    starts_at: Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
                    ends_at: Utc.with_ymd_and_hms(2031, 1, 1, 0, 0, 0).unwrap(),
                    overdraft: UsdMicros::ZERO,
                    budget: UsdMicros::from_usd(100_000).unwrap(),
                },
            )?;
        }
        for h in hold_specs() {
            let req = HoldRequest {
                account: h.account,
                partition: None,
                estimate: UsdMicros::from_usd(h.estimate_usd).unwrap(),
                buffer: Decimal::new(12, 1),
                cluster: None,
                job_id: h.job.as_deref(),
                user_name: None,
                expires_at: None,
                tasks: h.tasks,
                key: &h.key,
            };
            match ledger::place_hold(conn, &ctx, &req)? {
                HoldOutcome::Placed { hold, .. } => {
                    ids.insert(h.key.clone(), hold.id);
                }
                HoldOutcome::Denied(d) => panic!("hold {} denied: {d:?}", h.key),
            }
        }
        Ok::<_, LedgerError>(())
    })
    .unwrap();
    ids
}

/// Regular files in `dir`, sorted (none if it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// How far the work has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    /// Arrivals recorded (`spool_files` rows).
    recorded: usize,
    /// Files moved out of the incoming directories.
    moved: usize,
    /// Cost records reconciled (charged, or waiting with a reason).
    reconciled: usize,
}

/// A database and a spool with the workload, ready for intake.
struct Site {
    db: TestDb,
    dir: tempfile::TempDir,
    holds: BTreeMap<String, i64>,
    files: Vec<SpoolFile>,
    /// Files per intake transaction and runs per reconcile transaction.
    batches: (&'static str, &'static str),
}

impl Site {
    /// Small batches, so that a run commits many times and kills land between commits.
    fn new(db: TestDb) -> Site {
        Site::with_batches(db, ("7", "5"))
    }

    fn with_batches(db: TestDb, batches: (&'static str, &'static str)) -> Site {
        let holds = setup_ledger(&mut db.conn());
        let dir = tempfile::Builder::new()
            .prefix("asbb-crash-")
            .tempdir()
            .unwrap();
        for d in DIRS {
            std::fs::create_dir(dir.path().join(d.name())).unwrap();
        }
        let files = spool(&holds);
        for f in &files {
            std::fs::write(dir.path().join(f.dir.name()).join(&f.name), &f.body).unwrap();
        }
        std::fs::write(dir.path().join("asbb.toml"), "").unwrap();
        Site {
            db,
            dir,
            holds,
            files,
            batches,
        }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    /// Input files asbb must take in (everything but the temporary files).
    fn inputs(&self) -> usize {
        self.files
            .iter()
            .filter(|f| f.end != End::LeftAlone)
            .count()
    }

    /// Cost records the intake must store: cost exports in processed/, less the duplicate and
    /// the conflict.
    fn cost_records(&self) -> usize {
        self.files
            .iter()
            .filter(|f| f.dir == Dir::Asbx && f.end == End::Processed)
            .count()
            - 2
    }

    fn cmd(&self, bin: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin);
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("ASBB_CONFIG", self.path("asbb.toml"))
            .env("ASBB_DATABASE_URL", &self.db.url)
            .env("ASBB_SPOOL_ASBX_DIR", self.path("asbx"))
            .env("ASBB_SPOOL_JOBS_DIR", self.path("jobs"))
            .env("ASBB_SPOOL_PLANS_DIR", self.path("plans"))
            .env("ASBB_SPOOL_BATCH_SIZE", self.batches.0)
            .env("ASBB_SPOOL_NOT_READY_GRACE", "0")
            .env("ASBB_SPOOL_RESCAN_INTERVAL", "1s")
            .env("ASBB_SPOOL_RECONCILE", "true")
            .env("ASBB_RECONCILE_BATCH_SIZE", self.batches.1)
            .env("ASBB_LOG", "warn")
            .env("USER", "tester")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    fn asbb(&self, args: &[&str]) -> Command {
        self.cmd(ASBB, args)
    }

    /// Runs to the end and expects one of `codes`.
    fn run(&self, bin: &str, args: &[&str], codes: &[i32]) -> Output {
        let out = self
            .cmd(bin, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.code().is_some_and(|c| codes.contains(&c)),
            "{bin} {args:?}: {} (expected exit {codes:?})\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.run(ASBB, &a, &[0]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "asbb {args:?} printed invalid JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn audit_clean(&self) {
        let out = self
            .asbb(&["audit", "verify"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "audit verify is not clean\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn progress(&self) -> Progress {
        let mut conn = self.db.conn();
        let recorded: i64 = spool_files::table.count().get_result(&mut conn).unwrap();
        let reconciled: i64 = cost_records::table
            .filter(cost_records::status.ne("pending"))
            .count()
            .get_result(&mut conn)
            .unwrap();
        let moved = DIRS
            .iter()
            .map(|d| {
                let base = self.path(d.name());
                names(&base.join("processed")).len()
                    + names(&base.join("rejected"))
                        .iter()
                        .filter(|n| !n.ends_with(".error.json"))
                        .count()
            })
            .sum();
        Progress {
            recorded: recorded as usize,
            moved,
            reconciled: reconciled as usize,
        }
    }

    /// Everything that must not depend on how often the work was interrupted: no ids, times,
    /// hashes or actors (asbb-spoold books as itself), since those legitimately differ.
    fn snapshot(&self) -> Snapshot {
        let s = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        let accounts = ACCOUNTS
            .iter()
            .map(|a| {
                let v = self.json(&["account", "show", a]);
                format!(
                    "{a} status={} limit={} used={} held={} available={} entries={}",
                    s(&v["status"]),
                    s(&v["budget_limit"]),
                    s(&v["budget_used"]),
                    s(&v["budget_held"]),
                    s(&v["budget_available"]),
                    s(&v["entry_count"])
                )
            })
            .collect();
        let list = |v: Value| -> Vec<Value> {
            match v {
                Value::Array(a) => a,
                other => panic!("expected a JSON array, got {other}"),
            }
        };
        let mut entries: Vec<String> = list(self.json(&["transactions", "list", "--limit", "0"]))
            .iter()
            .map(|e| {
                format!(
                    "{} {} {} credited={} charged={} held={} hold={} ({}) job={} partition={} user={} flags={} key={} reason={}",
                    s(&e["account"]),
                    s(&e["type"]),
                    s(&e["amount"]),
                    s(&e["credited_delta"]),
                    s(&e["charged_delta"]),
                    s(&e["held_delta"]),
                    s(&e["hold_id"]),
                    s(&e["hold_status"]),
                    s(&e["job_id"]),
                    s(&e["partition"]),
                    s(&e["user"]),
                    s(&e["flags"]),
                    s(&e["idempotency_key"]),
                    s(&e["reason"]),
                )
            })
            .collect();
        entries.sort();
        let mut holds: Vec<String> = list(self.json(&["hold", "list", "--limit", "0"]))
            .iter()
            .map(|h| {
                format!(
                    "{} {} job={} estimate={} amount={} remaining={} charged={} {} flags={}",
                    s(&h["hold_id"]),
                    s(&h["account"]),
                    s(&h["job_id"]),
                    s(&h["estimate"]),
                    s(&h["amount"]),
                    s(&h["remaining"]),
                    s(&h["charged"]),
                    s(&h["status"]),
                    s(&h["flags"]),
                )
            })
            .collect();
        holds.sort();
        let mut pending: Vec<String> = list(self.json(&["reconcile", "--pending"]))
            .iter()
            .map(|p| {
                format!(
                    "{} run={} {} ${} {} {} {}",
                    s(&p["job"]),
                    s(&p["run"]),
                    s(&p["account"]),
                    s(&p["actual"]),
                    s(&p["status"]),
                    s(&p["reason"]),
                    s(&p["detail"]),
                )
            })
            .collect();
        pending.sort();
        let status = self.json(&["spool", "status"]);
        let mut spool_status: Vec<String> = list(status["files"].clone())
            .iter()
            .map(|f| format!("{} {} {}", s(&f["kind"]), s(&f["outcome"]), s(&f["files"])))
            .chain(
                list(status["cost_records"].clone())
                    .iter()
                    .map(|c| format!("records {} {}", s(&c["status"]), s(&c["records"]))),
            )
            .collect();
        spool_status.sort();

        let mut conn = self.db.conn();
        type FileRow = (String, String, String, i64, String, Option<i64>, String);
        let mut arrivals: Vec<String> = spool_files::table
            .select((
                spool_files::kind,
                spool_files::name,
                spool_files::outcome,
                spool_files::size_bytes,
                spool_files::sha256,
                spool_files::record_id,
                spool_files::reasons,
            ))
            .load::<FileRow>(&mut conn)
            .unwrap()
            .into_iter()
            .map(|(kind, name, outcome, size, sha, record, reasons)| {
                let codes: Vec<String> = serde_json::from_str::<Vec<Value>>(&reasons)
                    .unwrap()
                    .iter()
                    .map(|r| s(&r["code"]))
                    .collect();
                format!(
                    "{kind} {name} {outcome} size={size} sha256={sha} record={} reasons={}",
                    record.is_some(),
                    codes.join(",")
                )
            })
            .collect();
        arrivals.sort();
        type CostRow = (
            String,
            i64,
            String,
            i64,
            Option<String>,
            String,
            String,
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<i64>,
            Option<i64>,
        );
        let mut costs: Vec<String> = cost_records::table
            .select((
                cost_records::job_id,
                cost_records::run,
                cost_records::account,
                cost_records::actual_micros,
                cost_records::transaction_ref,
                cost_records::status,
                cost_records::status_reason,
                cost_records::hold_id,
                cost_records::estimate_micros,
                cost_records::charged_account,
                cost_records::charge_entry_id,
                cost_records::refund_entry_id,
            ))
            .load::<CostRow>(&mut conn)
            .unwrap()
            .into_iter()
            .map(
                |(job, run, account, actual, tref, status, reason, hold, est, charged_to, charge, refund)| {
                    format!(
                        "{job}#{run} {account} {actual} ref={tref:?} {status} {reason} hold={hold:?} estimate={est:?} charged_to={charged_to:?} charge={} refund={}",
                        charge.is_some(),
                        refund.is_some()
                    )
                },
            )
            .collect();
        costs.sort();
        drop(conn);

        let mut files = Vec::new();
        for d in DIRS {
            let base = self.path(d.name());
            for (sub, prefix) in [
                ("", ""),
                ("processed", "processed/"),
                ("rejected", "rejected/"),
            ] {
                for n in names(&base.join(sub)) {
                    files.push(format!("{}/{prefix}{n}", d.name()));
                }
            }
        }
        files.sort();
        Snapshot {
            accounts,
            entries,
            holds,
            pending,
            spool_status,
            arrivals,
            costs,
            files,
        }
    }

    /// Checks, without the reference, that every input file was recorded exactly once and moved
    /// exactly once to where it belongs, and that the temporary files were left alone.
    fn check_each_file_once(&self, snap: &Snapshot) {
        let mut want_files = Vec::new();
        let mut want_arrivals = Vec::new();
        for f in &self.files {
            let d = f.dir.name();
            match f.end {
                End::Processed => want_files.push(format!("{d}/processed/{}", f.name)),
                End::Rejected => {
                    want_files.push(format!("{d}/rejected/{}", f.name));
                    want_files.push(format!("{d}/rejected/{}.error.json", f.name));
                }
                End::LeftAlone => want_files.push(format!("{d}/{}", f.name)),
            }
            if f.end != End::LeftAlone {
                want_arrivals.push(format!("{} {}", f.dir.kind(), f.name));
            }
        }
        want_files.sort();
        same(
            "files on disk (each input once, in its place)",
            &snap.files,
            &want_files,
        );
        let mut arrivals: Vec<String> = snap
            .arrivals
            .iter()
            .map(|a| a.splitn(3, ' ').take(2).collect::<Vec<_>>().join(" "))
            .collect();
        arrivals.sort();
        want_arrivals.sort();
        same(
            "recorded arrivals (each input once)",
            &arrivals,
            &want_arrivals,
        );

        // `asbb spool status`: what was stored, refused, a duplicate or a conflict.
        let count = |dir: Dir, end: End| {
            self.files
                .iter()
                .filter(|f| f.dir == dir && f.end == end)
                .count()
        };
        let mut want_status = vec![
            format!("cost stored {}", self.cost_records()),
            "cost duplicate 1".to_string(),
            "cost conflict 1".to_string(),
            format!("cost rejected {}", count(Dir::Asbx, End::Rejected)),
            format!("job_end stored {}", count(Dir::Jobs, End::Processed)),
            format!("job_end rejected {}", count(Dir::Jobs, End::Rejected)),
            format!("plan stored {}", count(Dir::Plans, End::Processed)),
            format!("plan rejected {}", count(Dir::Plans, End::Rejected)),
        ];
        want_status.sort();
        let files_status: Vec<String> = snap
            .spool_status
            .iter()
            .filter(|l| !l.starts_with("records "))
            .cloned()
            .collect();
        same("spool status (files)", &files_status, &want_status);
        let records: usize = snap
            .spool_status
            .iter()
            .filter_map(|l| l.strip_prefix("records "))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<usize>().unwrap())
            .sum();
        assert_eq!(records, self.cost_records(), "cost records stored");
    }
}

/// What must come out the same however often the work was interrupted.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    /// Balances per account (`asbb account show --json`).
    accounts: Vec<String>,
    /// The journal as a multiset (`asbb transactions list --json`).
    entries: Vec<String>,
    /// Holds (`asbb hold list --json`).
    holds: Vec<String>,
    /// Runs not booked and why (`asbb reconcile --pending --json`).
    pending: Vec<String>,
    /// `asbb spool status --json`.
    spool_status: Vec<String>,
    /// Every recorded arrival: name, outcome, content, reasons.
    arrivals: Vec<String>,
    /// Every cost record: status, hold, charge.
    costs: Vec<String>,
    /// Every file in the spool directories and their processed/ and rejected/.
    files: Vec<String>,
}

/// Asserts two sorted lists are equal, showing what is missing and what is extra.
fn same(what: &str, got: &[String], want: &[String]) {
    if got == want {
        return;
    }
    let mut missing: BTreeMap<&str, i64> = BTreeMap::new();
    for w in want {
        *missing.entry(w.as_str()).or_default() += 1;
    }
    for g in got {
        *missing.entry(g.as_str()).or_default() -= 1;
    }
    let show = |sign: i64| {
        missing
            .iter()
            .filter(|(_, n)| n.signum() == sign)
            .map(|(k, n)| format!("  {}x {k}", n.abs()))
            .take(25)
            .collect::<Vec<_>>()
            .join("\n")
    };
    panic!(
        "{what} differ ({} items, {} expected)\nmissing:\n{}\nextra:\n{}",
        got.len(),
        want.len(),
        show(1),
        show(-1)
    );
}

fn same_snapshot(got: &Snapshot, want: &Snapshot) {
    same("accounts", &got.accounts, &want.accounts);
    same("journal entries", &got.entries, &want.entries);
    same("holds", &got.holds, &want.holds);
    same("pending runs", &got.pending, &want.pending);
    same("spool status", &got.spool_status, &want.spool_status);
    same("recorded arrivals", &got.arrivals, &want.arrivals);
    same("cost records", &got.costs, &want.costs);
    same("spool files", &got.files, &want.files);
    assert_eq!(got, want);
}

/// The reference must exercise what the workload is for, or the comparison proves little.
fn check_workload(snap: &Snapshot) {
    let entries_with = |needle: &str| snap.entries.iter().filter(|e| e.contains(needle)).count();
    let kinds = [
        (" charge ", 200),
        ("flags=overrun", 20),
        ("flags=unmatched", 80),
        (" refund ", 5),
        (" release ", 50),
    ];
    for (needle, at_least) in kinds {
        let n = entries_with(needle);
        assert!(
            n >= at_least,
            "the reference has {n} entries with '{needle}', expected {at_least} or more"
        );
    }
    let both = |a: &str, b: &str| {
        snap.entries
            .iter()
            .filter(|e| e.contains(a) && e.contains(b))
            .count()
    };
    assert_eq!(
        (
            both(" charge ", "job=20000_"),
            both(" release ", "job=20000_"),
            both(" charge ", "job=20001_"),
            both(" release ", "job=20001_")
        ),
        (3, 1, 3, 0),
        "array tasks are charged against their array's hold; the complete array releases the rest"
    );
    let holds_in = |state: &str| snap.holds.iter().filter(|h| h.contains(state)).count();
    assert!(holds_in(" charged ") > 100, "{:?}", snap.holds);
    assert_eq!(
        holds_in(" open "),
        6,
        "idle holds and the unfinished array stay open: {:?}",
        snap.holds
    );
    for reason in ["unknown_account", "anonymized_account", "ledger_error"] {
        assert!(
            snap.pending.iter().any(|p| p.contains(reason)),
            "a run waits with {reason}: {:?}",
            snap.pending
        );
    }
    assert!(
        snap.costs
            .iter()
            .any(|c| c.starts_with("20002#1 ") && c.contains(" charged ")),
        "the requeued run is charged"
    );
}

// ---------------------------------------------------------------------------------------------
// Killing

/// What happened to the runs of one command.
#[derive(Debug, Default)]
struct Kills {
    /// Processes started.
    runs: usize,
    /// Signals that ended a running process (SIGKILL, or SIGTERM before its handler was set).
    landed: usize,
    /// ... after some but not all of the work was committed.
    mid_work: usize,
    /// ... before it committed anything (start-up, listing, reading, an open transaction).
    before_work: usize,
    /// ... after all work was done.
    after_work: usize,
    /// ... leaving arrivals it recorded but did not move: between a commit and its renames.
    between_commit_and_move: usize,
    /// SIGTERMs that asbb-spoold honoured with exit 0.
    graceful: usize,
}

/// One command to interrupt.
struct Target<'a> {
    what: &'a str,
    command: &'a dyn Fn() -> Command,
    /// The part of [`Progress`] this command advances.
    metric: fn(&Progress) -> usize,
    total: usize,
    /// How long an uninterrupted run took.
    typical: Duration,
    /// How long the process takes to start and connect.
    startup: Duration,
    /// Whether the process ends by itself when done (`asbb`), or keeps watching (`asbb-spoold`).
    ends: bool,
    /// Every n-th interruption is a SIGTERM instead of a SIGKILL (0: never).
    term_every: usize,
    /// Whether it moves files (so kills can land between a commit and its moves).
    moves: bool,
}

/// A child process that is killed if the test fails while it runs: a watching asbb-spoold left
/// behind would run forever.
struct Running(Child);

impl Running {
    fn spawn(mut c: Command) -> Running {
        Running(c.spawn().unwrap())
    }
}

impl std::ops::Deref for Running {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::sleep(left.min(Duration::from_micros(300)));
    }
}

fn sigterm(child: &Child) {
    let st = Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -s TERM {}: {st}", child.id());
}

fn ended_well(st: ExitStatus) -> bool {
    matches!(st.code(), Some(0) | Some(4))
}

/// Starts the command and interrupts it after a delay, again and again, until a run ends by
/// itself (or, for asbb-spoold, until the work is done or enough kills landed mid-work).
fn interrupt_until_done(site: &Site, t: &Target<'_>) -> Kills {
    let started = Instant::now();
    let mut k = Kills::default();
    let startup = t.startup.as_micros() as u64;
    let mut scale = (t.typical.saturating_sub(t.startup).as_micros() as u64).max(2_000);
    let mut stalls = 0;
    let mut interruptions = 0;
    for i in 0.. {
        assert!(
            started.elapsed() < LOOP_LIMIT,
            "{}: not done after {:?}: {k:?}, progress {:?} of {}",
            t.what,
            LOOP_LIMIT,
            site.progress(),
            t.total
        );
        let before = site.progress();
        let b = (t.metric)(&before);
        // Enough kills landed mid-work and (for intake, as long as the work lasts and at most
        // MAX_RUNS) one between a commit and its moves: that is rare, so it is only reported.
        let enough = (k.mid_work >= ENOUGH_MID_WORK && (!t.moves || k.between_commit_and_move > 0))
            || k.runs >= MAX_RUNS;
        if !t.ends && (b >= t.total || enough) {
            break;
        }
        let (start_pct, work_permille) = DELAYS[i % DELAYS.len()];
        let delay = if enough {
            LOOP_LIMIT
        } else {
            Duration::from_micros(startup * start_pct / 100 + scale * work_permille / 1000)
        };
        let mut child = Running::spawn((t.command)());
        k.runs += 1;
        if let Some(st) = wait_for(&mut child, delay) {
            assert!(t.ends, "{} exited by itself: {st}", t.what);
            assert!(ended_well(st), "{}: {st}", t.what);
            break;
        }
        interruptions += 1;
        let graceful = t.term_every > 0 && interruptions % t.term_every == 0;
        let st = if graceful {
            sigterm(&child);
            wait_for(&mut child, Duration::from_secs(30))
                .unwrap_or_else(|| panic!("{} ignored SIGTERM for 30 s", t.what))
        } else {
            child.kill().unwrap();
            child.wait().unwrap()
        };
        match (st.signal(), st.code()) {
            (Some(9), _) => k.landed += 1,
            (Some(15), _) if graceful => k.landed += 1,
            (None, Some(0)) if graceful => k.graceful += 1,
            // It ended by itself in the same instant.
            (None, _) if t.ends => {
                assert!(ended_well(st), "{}: {st}", t.what);
                break;
            }
            _ => panic!("{}: unexpected {st}", t.what),
        }
        let p = site.progress();
        let a = (t.metric)(&p);
        if std::env::var_os("ASBB_CRASH_TRACE").is_some() {
            eprintln!(
                "TRACE {} typical={:?} scale={scale} delay={delay:?} {b} -> {a} of {}",
                t.what, t.typical, t.total
            );
        }
        assert!(a >= b, "{}: progress went backwards ({b} -> {a})", t.what);
        if p.recorded > before.recorded && p.recorded > p.moved {
            k.between_commit_and_move += 1;
        }
        if b >= t.total || a >= t.total {
            k.after_work += 1;
        } else if a == b {
            k.before_work += 1;
        } else {
            k.mid_work += 1;
        }
        // Keep each kill to a small share of the work, and move on when kills land too early.
        if a - b > t.total / 8 {
            scale = scale * 7 / 10;
        }
        if a == b {
            stalls += 1;
            if stalls >= 4 {
                scale = scale * 3 / 2;
                stalls = 0;
            }
        } else {
            stalls = 0;
        }
    }
    k
}

// ---------------------------------------------------------------------------------------------
// The scenarios

struct Reference {
    snap: Snapshot,
    holds: BTreeMap<String, i64>,
    scan: Duration,
    reconcile: Duration,
    /// Start-up and connecting: the quickest of a few `asbb spool status` runs.
    startup: Duration,
}

/// Scan, then reconcile, uninterrupted, on a fresh database, with the default batch sizes.
fn reference(db: TestDb) -> Reference {
    let site = Site::with_batches(db, ("1000", "500"));
    let t = Instant::now();
    site.run(ASBB, &["spool", "scan"], &[4]);
    let scan = t.elapsed();
    let t = Instant::now();
    site.run(ASBB, &["reconcile"], &[0]);
    let reconcile = t.elapsed();
    let startup = (0..3)
        .map(|_| {
            let t = Instant::now();
            site.run(ASBB, &["spool", "status"], &[0]);
            t.elapsed()
        })
        .min()
        .unwrap();
    site.audit_clean();
    let snap = site.snapshot();
    site.check_each_file_once(&snap);
    check_workload(&snap);
    Reference {
        snap,
        holds: site.holds.clone(),
        scan,
        reconcile,
        startup,
    }
}

/// The end state after the interruptions: the reference's, every file once, the audit clean;
/// and running scan and reconcile again changes nothing.
fn check_converged(site: &Site, want: &Reference) {
    let got = site.snapshot();
    site.check_each_file_once(&got);
    same_snapshot(&got, &want.snap);
    site.audit_clean();
    let again = site.json(&["spool", "scan"]);
    for k in [
        "stored",
        "duplicates",
        "conflicts",
        "rejected",
        "finished_moves",
    ] {
        assert_eq!(again[k], 0, "a last scan found work: {again}");
    }
    let again = site.json(&["reconcile"]);
    for k in ["charged", "unmatched", "refunded"] {
        assert_eq!(again[k], 0, "a last reconcile found work: {again}");
    }
    same_snapshot(&site.snapshot(), &want.snap);
}

fn report(backend: Backend, what: &str, k: &Kills) {
    eprintln!(
        "{backend:?} {what}: {} runs, {} interrupted ({} mid-work, {} before any commit, \
         {} after all work, {} between a commit and its moves), {} graceful SIGTERM stops",
        k.runs,
        k.landed + k.graceful,
        k.mid_work,
        k.before_work,
        k.after_work,
        k.between_commit_and_move,
        k.graceful
    );
}

db_test!(scan_and_reconcile, |db| {
    let started = Instant::now();
    let backend = db.backend;
    let want = reference(db);
    let site = Site::new(fresh(backend));
    assert_eq!(site.holds, want.holds, "the same holds, so the same spool");
    let inputs = site.inputs();

    let scan = || site.asbb(&["spool", "scan"]);
    let scans = interrupt_until_done(
        &site,
        &Target {
            what: "asbb spool scan",
            command: &scan,
            metric: |p| p.recorded + p.moved,
            total: 2 * inputs,
            typical: want.scan,
            startup: want.startup,
            ends: true,
            term_every: 0,
            moves: true,
        },
    );
    report(backend, "asbb spool scan", &scans);
    let p = site.progress();
    assert_eq!(
        (p.recorded, p.moved, p.reconciled),
        (inputs, inputs, 0),
        "after the scans every input is recorded and moved once, nothing reconciled"
    );

    let reconcile = || site.asbb(&["reconcile"]);
    let reconciles = interrupt_until_done(
        &site,
        &Target {
            what: "asbb reconcile",
            command: &reconcile,
            metric: |p| p.reconciled,
            total: site.cost_records(),
            typical: want.reconcile,
            startup: want.startup,
            ends: true,
            term_every: 0,
            moves: false,
        },
    );
    report(backend, "asbb reconcile", &reconciles);

    check_converged(&site, &want);
    for (what, k) in [("asbb spool scan", &scans), ("asbb reconcile", &reconciles)] {
        assert!(
            k.mid_work >= MIN_MID_WORK,
            "{what}: only {} kills landed mid-work: {k:?}",
            k.mid_work
        );
    }
    eprintln!("{backend:?} scan_and_reconcile: {:.1?}", started.elapsed());
});

db_test!(spoold, |db| {
    let started = Instant::now();
    let backend = db.backend;
    let want = reference(db);
    let site = Site::new(fresh(backend));
    assert_eq!(site.holds, want.holds, "the same holds, so the same spool");
    let total = 2 * site.inputs() + site.cost_records();
    let metric: fn(&Progress) -> usize = |p| p.recorded + p.moved + p.reconciled;

    // Watching (not --once), intake then reconcile; every third interruption is a SIGTERM.
    let daemon = || site.cmd(SPOOLD, &[]);
    let kills = interrupt_until_done(
        &site,
        &Target {
            what: "asbb-spoold",
            command: &daemon,
            metric,
            total,
            typical: want.scan + want.reconcile,
            startup: want.startup,
            ends: false,
            term_every: 3,
            moves: false,
        },
    );
    report(backend, "asbb-spoold", &kills);

    // A daemon left alone takes in and reconciles the rest, and stops on SIGTERM with 0.
    let log = site.path("spoold.log");
    let mut daemon = site.cmd(SPOOLD, &[]);
    daemon
        .env("ASBB_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = Running::spawn(daemon);
    // SIGTERM before the handler is set would just kill it: wait until it watches.
    let deadline = Instant::now() + Duration::from_secs(60);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    while !log_text().contains("watching") {
        assert!(
            child.try_wait().unwrap().is_none() && Instant::now() < deadline,
            "asbb-spoold did not start watching:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // It rescans every second, so it must not stall for long.
    let mut last = (0, Instant::now());
    loop {
        let p = site.progress();
        let m = metric(&p);
        if m >= total {
            break;
        }
        if m != last.0 {
            last = (m, Instant::now());
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "asbb-spoold exited ({st}) before it finished:\n{}",
                log_text()
            );
        }
        assert!(
            last.1.elapsed() < Duration::from_secs(15) && Instant::now() < deadline,
            "asbb-spoold stopped making progress: {p:?} of {total}\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sigterm(&child);
    let st = wait_for(&mut child, Duration::from_secs(30)).expect("asbb-spoold stops on SIGTERM");
    assert_eq!(
        st.code(),
        Some(0),
        "asbb-spoold on SIGTERM: {st}\n{}",
        log_text()
    );
    // One more pass finds nothing to do.
    site.run(SPOOLD, &["--once"], &[0]);

    check_converged(&site, &want);
    assert!(
        kills.mid_work >= MIN_MID_WORK,
        "asbb-spoold: only {} kills landed mid-work: {kills:?}",
        kills.mid_work
    );
    eprintln!("{backend:?} spoold: {:.1?}", started.elapsed());
});

#[test]
fn workload_is_deterministic() {
    let ids: BTreeMap<String, i64> = hold_specs()
        .iter()
        .enumerate()
        .map(|(i, h)| (h.key.clone(), i as i64 + 1))
        .collect();
    let a = spool(&ids);
    let b = spool(&ids);
    assert_eq!(a.len(), b.len());
    let mut seen = BTreeSet::new();
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.dir, &x.name, &x.body, x.end),
            (y.dir, &y.name, &y.body, y.end)
        );
        assert!(seen.insert((x.dir, x.name.clone())), "{} twice", x.name);
    }
    assert!(a.len() >= 300, "{} files", a.len());
}
