//! The spool commands and `asbb-spoold` as an admin runs them: real binaries, a temporary spool,
//! a fresh database on each backend.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::TestDb;
use serde_json::Value;

struct Env {
    db: TestDb,
    dir: tempfile::TempDir,
}

impl Env {
    fn new(db: TestDb) -> Env {
        let dir = tempfile::tempdir().unwrap();
        for d in ["asbx", "jobs", "plans"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("asbb.toml"), "").unwrap();
        Env { db, dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn env(&self, c: &mut Command) {
        c.current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("ASBB_CONFIG", self.path("asbb.toml"))
            .env("ASBB_DATABASE_URL", &self.db.url)
            .env("ASBB_SPOOL_ASBX_DIR", self.path("asbx"))
            .env("ASBB_SPOOL_JOBS_DIR", self.path("jobs"))
            .env("ASBB_SPOOL_PLANS_DIR", self.path("plans"))
            .env("USER", "tester");
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_asbb"));
        self.env(&mut c);
        c.args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn code(&self, args: &[&str], code: i32) -> String {
        let o = self.run(args);
        assert_eq!(
            o.status.code(),
            Some(code),
            "asbb {args:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        self.code(args, 0)
    }

    fn json(&self, args: &[&str], code: i32) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let o = self.run(&a);
        assert_eq!(
            o.status.code(),
            Some(code),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn write(&self, rel: &str, body: &str) {
        std::fs::write(self.path(rel), body).unwrap();
    }

    fn account(&self, name: &str) {
        self.ok(&[
            "account",
            "create",
            "--account",
            name,
            "--name",
            name,
            "--budget",
            "500",
            "--start",
            "2025-01-01",
            "--end",
            "2030-12-31",
            "--as-of",
            "2025-06-01",
        ]);
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

db_test!(
    scan_reports_and_exits_four_when_something_is_rejected,
    |db| {
        let e = Env::new(db);
        e.account("physics");
        e.write(
            "asbx/job_11_cost.json",
            r#"{"job_id":"11","account":"physics","actual_cost":5}"#,
        );
        e.write(
            "asbx/job_12_cost.json",
            r#"{"job_id":"13","account":"physics","actual_cost":"1,000.00"}"#,
        );
        e.write("jobs/jobend.lab.11.1748800000.json", r#"{"schema_version":1,"cluster":"lab","job_id":"11","account":"physics","state":"COMPLETED","submit_time":1748790000,"start_time":1748790100,"end_time":1748800000}"#);
        e.write("plans/plan-a.json", r#"{"job_metadata":{"account":"physics"},"generated_at":"2025-06-01T00:00:00Z","cost_constraints":{"max_total_cost":40}}"#);
        let r = e.json(&["spool", "scan"], 4);
        assert_eq!(
            (r["stored"].as_u64(), r["rejected"].as_u64()),
            (Some(3), Some(1)),
            "{r}"
        );
        let sidecar: Value = serde_json::from_str(
            &std::fs::read_to_string(e.path("asbx/rejected/job_12_cost.json.error.json")).unwrap(),
        )
        .unwrap();
        let mut codes: Vec<&str> = sidecar["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["code"].as_str().unwrap())
            .collect();
        codes.sort();
        // Every reason, not just the first.
        assert_eq!(codes, vec!["bad_amount", "job_id_mismatch"]);
        assert_eq!(listing(&e.path("plans/processed")), vec!["plan-a.json"]);
        // Nothing left to do: exit 0.
        let r = e.json(&["spool", "scan"], 0);
        assert_eq!(r["stored"], 0);
        let status = e.json(&["spool", "status"], 0);
        assert_eq!(status["cost_records"][0]["records"], 1, "{status}");
        // Reconcile charges the run, unmatched; nothing waits afterwards.
        let rec = e.json(&["reconcile", "--as-of", "2025-06-02"], 0);
        assert_eq!(rec["unmatched"], 1);
        assert_eq!(e.json(&["reconcile", "--pending"], 0), Value::Array(vec![]));
        let acct = e.json(&["account", "show", "physics"], 0);
        assert_eq!(acct["budget_used"], "5.00");
        e.ok(&["audit", "verify"]);
    }
);

db_test!(conflicts_pending_and_accuracy_are_visible, |db| {
    let e = Env::new(db);
    e.account("physics");
    e.ok(&[
        "hold",
        "place",
        "--account",
        "physics",
        "--estimate",
        "10",
        "--job",
        "21",
        "--as-of",
        "2025-06-01",
    ]);
    e.write(
        "asbx/job_21_cost.json",
        r#"{"job_id":"21","account":"physics","actual_cost":9.5}"#,
    );
    e.write(
        "asbx/job_22_cost.json",
        r#"{"job_id":"22","account":"nolab","actual_cost":1}"#,
    );
    e.ok(&["spool", "scan"]);
    e.write(
        "asbx/job_21_cost.json",
        r#"{"job_id":"21","account":"physics","actual_cost":19.5}"#,
    );
    let out = e.code(&["spool", "scan"], 4);
    assert!(out.contains("1 conflicts"), "{out}");
    let c = e.json(&["spool", "conflicts"], 0);
    assert_eq!(c[0]["run"], "21#0", "{c}");
    let table = e.ok(&["spool", "conflicts"]);
    assert!(table.contains("9.50"), "{table}");
    e.ok(&["reconcile", "--as-of", "2025-06-02"]);
    let p = e.json(&["reconcile", "--pending"], 0);
    assert_eq!(p[0]["reason"], "unknown_account");
    assert_eq!(p[0]["job"], "22");
    let err = e.code(&["reconcile", "--job", "22", "--account", "nosuch"], 1);
    assert!(err.contains("nosuch"), "{err}");
    e.ok(&[
        "reconcile",
        "--job",
        "22",
        "--account",
        "physics",
        "--as-of",
        "2025-06-02",
    ]);
    let acc = e.json(&["analytics", "accuracy", "--as-of", "2025-06-03"], 0);
    let total = acc["groups"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(total["runs"], 1);
    assert_eq!(total["within_10pct"], 1, "{acc}");
    let id = c[0]["id"].as_i64().unwrap().to_string();
    e.ok(&[
        "spool",
        "conflicts",
        "--resolve",
        &id,
        "--note",
        "ASBX fixed its export",
    ]);
    assert_eq!(e.json(&["spool", "conflicts"], 0), Value::Array(vec![]));
    e.ok(&["audit", "verify"]);
});

db_test!(recover_asks_a_fake_sacct, |db| {
    let e = Env::new(db);
    e.account("physics");
    e.ok(&[
        "hold",
        "place",
        "--account",
        "physics",
        "--estimate",
        "10",
        "--job",
        "31",
        "--as-of",
        "2025-06-01",
    ]);
    e.ok(&[
        "hold",
        "place",
        "--account",
        "physics",
        "--estimate",
        "10",
        "--job",
        "32",
        "--as-of",
        "2025-06-01",
    ]);
    let bin = e.path("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = e.path("sacct.args");
    let script = format!(
        "#!/bin/sh\necho \"$@\" > {}\nprintf '31|COMPLETED|2025-06-01T10:00:00\\n32|RUNNING|Unknown\\n'\n",
        log.display()
    );
    std::fs::write(bin.join("sacct"), script).unwrap();
    std::process::Command::new("chmod")
        .args(["+x"])
        .arg(bin.join("sacct"))
        .status()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = e
        .cmd(&[
            "recover",
            "--sacct",
            "--grace",
            "1h",
            "--as-of",
            "2025-06-02",
            "--json",
        ])
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["released_by_sacct"], 1, "{r}");
    let args = std::fs::read_to_string(&log).unwrap();
    assert!(args.contains("--jobs 31,32"), "{args}");
    let released = e.json(&["hold", "list", "--state", "released"], 0);
    assert_eq!(released.as_array().unwrap().len(), 1, "{released}");
    assert_eq!(released[0]["job_id"], "31", "{released}");
    // Without sacct on PATH the rest of the recovery still runs, and the exit code says so.
    let out = e
        .cmd(&[
            "recover",
            "--sacct",
            "--grace",
            "1h",
            "--as-of",
            "2025-06-02",
        ])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sacct: cannot run"));
});

db_test!(
    the_daemon_takes_files_in_as_they_arrive_and_stops_cleanly,
    |db| {
        let e = Env::new(db);
        e.account("physics");
        let mut d = Command::new(env!("CARGO_BIN_EXE_asbb-spoold"));
        e.env(&mut d);
        d.env("ASBB_SPOOL_RESCAN_INTERVAL", "30s")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = d.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        // Written the way ASBX does: in place, no rename.
        e.write(
            "asbx/job_41_cost.json",
            r#"{"job_id":"41","account":"physics","actual_cost":2.5}"#,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = e.json(&["account", "show", "physics"], 0);
            if v["budget_used"] == "2.50" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not charge the file: {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(listing(&e.path("asbx/processed")), vec!["job_41_cost.json"]);
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "asbb-spoold did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(0));
    }
);

#[test]
fn scan_names_the_missing_setting() {
    let e = Env::new(TestDb::sqlite());
    let out = e
        .cmd(&["spool", "scan"])
        .env("ASBB_SPOOL_ASBX_DIR", e.path("nope"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spool.asbx_dir") && err.contains("--asbx-dir"),
        "{err}"
    );
    let out = e
        .cmd(&["spool", "scan"])
        .env("ASBB_SPOOL_ASBX_DIR", "")
        .env("ASBB_SPOOL_JOBS_DIR", "")
        .env("ASBB_SPOOL_PLANS_DIR", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no spool directory"));
    let out = e
        .cmd(&["config", "validate"])
        .env("ASBB_RECONCILE_REFUND_PERCENT", "150")
        .env("ASBB_SPOOL_NOT_READY_GRACE", "soon")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reconcile.refund_percent") && err.contains("spool.not_ready_grace"),
        "{err}"
    );
}

db_test!(batch_jobs_run_twice_or_at_once_book_everything_once, |db| {
    let e = Env::new(db);
    e.account("physics");
    e.account("chem");
    for j in 1..=30 {
        let acct = if j % 2 == 0 { "physics" } else { "chem" };
        if j % 3 != 0 {
            e.ok(&[
                "hold",
                "place",
                "--account",
                acct,
                "--estimate",
                "5",
                "--job",
                &format!("{}", 900 + j),
                "--as-of",
                "2025-06-01",
            ]);
        }
        e.write(
            &format!("asbx/job_{}_cost.json", 900 + j),
            &format!(
                r#"{{"job_id":"{}","account":"{acct}","actual_cost":"{}.25"}}"#,
                900 + j,
                j % 7
            ),
        );
    }
    let spawn = |args: &[&str]| {
        let mut c = e.cmd(args);
        c.env("ASBB_SPOOL_BATCH_SIZE", "4")
            .env("ASBB_RECONCILE_BATCH_SIZE", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    // Three scans and a one-shot daemon at once, then three reconciles at once.
    let mut scans: Vec<_> = (0..3).map(|_| spawn(&["spool", "scan"])).collect();
    let mut d = Command::new(env!("CARGO_BIN_EXE_asbb-spoold"));
    e.env(&mut d);
    d.args(["--once"])
        .env("ASBB_SPOOL_RECONCILE", "false")
        .stderr(Stdio::piped());
    scans.push(d.spawn().unwrap());
    for c in scans {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let recs: Vec<_> = (0..3)
        .map(|_| spawn(&["reconcile", "--as-of", "2025-06-02"]))
        .collect();
    for c in recs {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(listing(&e.path("asbx/processed")).len(), 30);
    let status = e.json(&["spool", "status"], 0);
    assert_eq!(
        status["files"][0]["files"], 30,
        "each arrival recorded once: {status}"
    );
    assert_eq!(status["cost_records"][0]["status"], "charged");
    assert_eq!(status["cost_records"][0]["records"], 30);
    // Sum of j % 7 + 0.25 over 1..=30, split by parity.
    let used = |a: &str| e.json(&["account", "show", a], 0)["budget_used"].clone();
    let expect = |even: bool| -> String {
        let cents: u32 = (1..=30u32)
            .filter(|j| (j % 2 == 0) == even)
            .map(|j| (j % 7) * 100 + 25)
            .sum();
        format!("{}.{:02}", cents / 100, cents % 100)
    };
    assert_eq!(used("physics"), Value::String(expect(true)));
    assert_eq!(used("chem"), Value::String(expect(false)));
    // And again, one after the other: nothing changes.
    let before = e.ok(&["transactions", "list", "--limit", "0"]);
    e.ok(&["spool", "scan"]);
    e.ok(&["reconcile"]);
    e.ok(&["recover", "--as-of", "2025-06-02"]);
    assert_eq!(e.ok(&["transactions", "list", "--limit", "0"]), before);
    e.ok(&["audit", "verify"]);
});
