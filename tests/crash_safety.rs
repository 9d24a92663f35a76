//! Crash safety, proven: `asbb spool scan`, `asbb reconcile` and `asbb-spoold` are killed with
//! SIGKILL at many different points of a large batch and restarted until they finish. The final
//! ledger must equal the ledger of an uninterrupted run, every file must be in exactly one place,
//! and `audit verify` must be clean — on both backends.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use asbb::db::ledger::{self, HoldOutcome, HoldRequest, LedgerError, NewAccount, OpContext};
use asbb::db::{queries, DbConn};
use asbb::domain::{AccountName, UsdMicros};
use chrono::{TimeZone, Utc};
use common::TestDb;
use rust_decimal::Decimal;

const JOBS: u64 = 150;
const ACCOUNTS: [&str; 3] = ["astro", "bio", "chem"];

fn ctx() -> OpContext {
    OpContext::at("tester", Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap())
}

/// Accounts and holds: two jobs in three have a hold; every fifth names its hold in the file.
fn setup_ledger(conn: &mut DbConn) -> BTreeMap<u64, i64> {
    let mut holds = BTreeMap::new();
    asbb::db::write_transaction(conn, |conn| {
        for a in ACCOUNTS {
            ledger::create_account(
                conn,
                &ctx(),
                &NewAccount {
                    name: AccountName::new(a).unwrap(),
                    display_name: a.into(),
                    description: String::new(),
                    starts_at: Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
                    ends_at: Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap(),
                    overdraft: UsdMicros::ZERO,
                    budget: UsdMicros::from_usd(100_000).unwrap(),
                },
            )?;
        }
        for j in 1..=JOBS {
            if j % 3 == 0 {
                continue;
            }
            let job = (7000 + j).to_string();
            let key = format!("hold-{job}");
            let req = HoldRequest {
                account: ACCOUNTS[(j % 3) as usize],
                partition: None,
                estimate: UsdMicros::from_usd(10).unwrap(),
                buffer: Decimal::new(12, 1),
                cluster: None,
                job_id: (j % 5 != 0).then_some(job.as_str()),
                user_name: None,
                expires_at: None,
                tasks: None,
                key: &key,
            };
            match ledger::place_hold(conn, &ctx(), &req)? {
                HoldOutcome::Placed { hold, .. } => {
                    holds.insert(j, hold.id);
                }
                HoldOutcome::Denied(d) => panic!("{d:?}"),
            }
        }
        Ok::<_, LedgerError>(())
    })
    .unwrap();
    holds
}

/// The same spool every time: cost files (some naming their hold, some over their hold, some
/// unmatched, one requeued run) and a few bad files.
fn write_spool(dir: &Path, holds: &BTreeMap<u64, i64>) {
    let asbx = dir.join("asbx");
    std::fs::create_dir_all(&asbx).unwrap();
    for d in ["jobs", "plans"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    for j in 1..=JOBS {
        let job = 7000 + j;
        let account = ACCOUNTS[(j % 3) as usize];
        let cost = format!("{}.{:02}", j % 17, j % 100);
        let hold_ref = match (j % 5 == 0, holds.get(&j)) {
            (true, Some(h)) => format!(r#","budget_transaction_id":"hold-{h}""#),
            _ => String::new(),
        };
        let state = if j % 11 == 0 {
            "NODE_FAIL"
        } else {
            "COMPLETED"
        };
        std::fs::write(
            asbx.join(format!("job_{job}_cost.json")),
            format!(r#"{{"job_id":"{job}","account":"{account}","actual_cost":"{cost}","job_state":"{state}"{hold_ref}}}"#),
        )
        .unwrap();
    }
    std::fs::write(
        asbx.join(format!("job-{}-asbb-reconciliation.json", 7001)),
        r#"{"slurm_job_id":"7001","project_id":"bio","total_cost_usd":3,"restart_count":1}"#,
    )
    .unwrap();
    std::fs::write(
        asbx.join("job_7999_cost.json"),
        r#"{"job_id":"7999","account":"bio","actual_cost":1.2345678}"#,
    )
    .unwrap();
    std::fs::write(asbx.join("readme.txt"), "not a cost file").unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap())
                .filter(|e| e.file_type().unwrap().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

struct Setup {
    db: TestDb,
    dir: tempfile::TempDir,
}

fn setup(db: TestDb) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let holds = setup_ledger(&mut db.conn());
    write_spool(dir.path(), &holds);
    std::fs::write(dir.path().join("asbb.toml"), "").unwrap();
    Setup { db, dir }
}

impl Setup {
    fn cmd(&self, bin: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin);
        let p = |s: &str| self.dir.path().join(s);
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("ASBB_CONFIG", p("asbb.toml"))
            .env("ASBB_DATABASE_URL", &self.db.url)
            .env("ASBB_SPOOL_ASBX_DIR", p("asbx"))
            .env("ASBB_SPOOL_JOBS_DIR", p("jobs"))
            .env("ASBB_SPOOL_PLANS_DIR", p("plans"))
            .env("ASBB_SPOOL_BATCH_SIZE", "6")
            .env("ASBB_RECONCILE_BATCH_SIZE", "4")
            .env("ASBB_SPOOL_RESCAN_INTERVAL", "1s")
            .env("USER", "tester")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    fn asbb(&self, args: &[&str]) -> Command {
        self.cmd(env!("CARGO_BIN_EXE_asbb"), args)
    }

    fn finish(&self, args: &[&str]) {
        let st = self.asbb(args).status().unwrap();
        assert!(st.success() || st.code() == Some(4), "asbb {args:?}: {st}");
    }

    /// Ledger and files in a form that does not depend on the order of work.
    fn snapshot(&self) -> Snapshot {
        let mut conn = self.db.conn();
        let mut balances = Vec::new();
        for a in ACCOUNTS {
            let acct = queries::account(&mut conn, a).unwrap();
            balances.push((
                a.to_string(),
                acct.balances.credited.to_string(),
                acct.balances.charged.to_string(),
                acct.balances.held.to_string(),
            ));
        }
        let mut entries: Vec<String> = queries::entries(&mut conn, &Default::default())
            .unwrap()
            .into_iter()
            .map(|e| {
                format!(
                    "{} {} {} {:?} {} {:?}",
                    e.account,
                    e.kind.as_str(),
                    e.amount,
                    e.job_id,
                    e.flags,
                    e.hold_id
                )
            })
            .collect();
        entries.sort();
        let mut holds: Vec<String> = queries::holds(&mut conn, None, None, None)
            .unwrap()
            .into_iter()
            .map(|h| format!("{} {:?} {} {}", h.id, h.state, h.remaining, h.charged))
            .collect();
        holds.sort();
        let pending: Vec<String> = asbb::db::reconcile::pending(&mut conn)
            .unwrap()
            .into_iter()
            .map(|p| format!("{} {} {}", p.job, p.status, p.reason))
            .collect();
        let counts = asbb::db::spool::counts(&mut conn).unwrap();
        let base = self.dir.path().join("asbx");
        let rejected: Vec<String> = names(&base.join("rejected"));
        Snapshot {
            balances,
            entries,
            holds,
            pending,
            files: counts.files,
            incoming: names(&base),
            processed: names(&base.join("processed")),
            rejected,
        }
    }

    fn audit_clean(&self) {
        let st = self.asbb(&["audit", "verify"]).status().unwrap();
        assert!(st.success(), "audit verify failed after the crashes");
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    balances: Vec<(String, String, String, String)>,
    entries: Vec<String>,
    holds: Vec<String>,
    pending: Vec<String>,
    files: Vec<(String, String, i64)>,
    incoming: Vec<String>,
    processed: Vec<String>,
    rejected: Vec<String>,
}

/// Delays (µs) at which to kill: from "before it read anything" to "late in the run".
fn delays() -> impl Iterator<Item = Duration> {
    [
        300u64, 1_000, 2_500, 4_000, 6_000, 9_000, 13_000, 18_000, 25_000, 35_000, 50_000, 70_000,
    ]
    .into_iter()
    .cycle()
    .map(Duration::from_micros)
}

/// Starts `make()` and SIGKILLs it after each delay until one run ends by itself. Returns how
/// many kills landed while it was still running, and checks that kills landed in different
/// places: `progress()` (work done so far) must show at least three different partial values.
fn kill_until_done(
    make: impl Fn() -> Command,
    progress: impl Fn() -> usize,
    total: usize,
    min_kills: usize,
) -> usize {
    let mut landed = 0;
    let mut partial = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for delay in delays() {
        assert!(Instant::now() < deadline, "never finished");
        let mut child = make().spawn().unwrap();
        std::thread::sleep(delay);
        match child.try_wait().unwrap() {
            Some(status) if landed >= min_kills && partial.len() >= 3 => {
                assert!(status.success() || status.code() == Some(4), "{status}");
                return landed;
            }
            Some(_) => {}
            None => {
                child.kill().unwrap();
                let st = child.wait().unwrap();
                // Killed by SIGKILL, or it finished in the same instant.
                if st.code().is_none() {
                    landed += 1;
                    let p = progress();
                    if p > 0 && p < total {
                        partial.insert(p);
                    }
                }
            }
        }
    }
    unreachable!()
}

/// How far intake and reconcile have got.
fn processed(s: &Setup) -> usize {
    names(&s.dir.path().join("asbx/processed")).len()
}

fn charged(s: &Setup) -> usize {
    let mut conn = s.db.conn();
    asbb::db::spool::counts(&mut conn)
        .unwrap()
        .cost_records
        .iter()
        .filter(|(status, _)| status == "charged")
        .map(|(_, n)| *n as usize)
        .sum()
}

fn reference(backend_db: TestDb) -> Snapshot {
    let r = setup(backend_db);
    r.finish(&["spool", "scan"]);
    r.finish(&["reconcile", "--as-of", "2025-06-02"]);
    r.audit_clean();
    r.snapshot()
}

fn check(s: &Setup, reference: &Snapshot) {
    let snap = s.snapshot();
    assert!(
        snap.incoming.is_empty(),
        "files left behind: {:?}",
        snap.incoming
    );
    assert_eq!(snap, *reference);
    s.audit_clean();
}

fn fresh(backend: common::Backend) -> TestDb {
    match backend {
        common::Backend::Sqlite => TestDb::sqlite(),
        common::Backend::Postgres => TestDb::postgres().expect("postgres"),
    }
}

fn backend_of(db: &TestDb) -> common::Backend {
    db.backend
}

db_test!(
    killed_scans_and_reconciles_converge_to_the_same_ledger,
    |db| {
        let backend = backend_of(&db);
        let want = reference(db);
        assert_eq!(
            want.processed.len() as u64,
            JOBS + 1,
            "every good file processed once"
        );

        let s = setup(fresh(backend));
        let total = JOBS as usize + 1;
        let scans = kill_until_done(|| s.asbb(&["spool", "scan"]), || processed(&s), total, 8);
        // A last scan, uninterrupted, must find nothing left to do but moves.
        s.finish(&["spool", "scan"]);
        let recs = kill_until_done(
            || s.asbb(&["reconcile", "--as-of", "2025-06-02"]),
            || charged(&s),
            total,
            8,
        );
        s.finish(&["reconcile", "--as-of", "2025-06-02"]);
        eprintln!("{backend:?}: {scans} scans and {recs} reconciles killed mid-run");
        check(&s, &want);
    }
);

db_test!(a_killed_daemon_converges_to_the_same_ledger, |db| {
    let backend = backend_of(&db);
    let want = reference(db);
    let s = setup(fresh(backend));
    let kills = kill_until_done(
        || s.cmd(env!("CARGO_BIN_EXE_asbb-spoold"), &["--once"]),
        || processed(&s) + charged(&s),
        2 * (JOBS as usize + 1),
        10,
    );
    // The daemon reconciles with the wall clock; the reference used 2025-06-02. Only dates
    // differ, which the snapshot leaves out.
    s.finish(&["spool", "scan"]);
    s.finish(&["reconcile", "--as-of", "2025-06-02"]);
    eprintln!("{backend:?}: asbb-spoold killed {kills} times mid-run");
    check(&s, &want);
});
