//! Runs the real `asbb` binary in a temporary directory against a fresh database on each
//! backend, the way an admin would.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::{Backend, TestDb};
use diesel::connection::SimpleConnection;
use serde_json::Value;

/// The `asbb` binary with an isolated environment: its own config file, the test database.
struct Asbb {
    db: TestDb,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Asbb {
    fn new(db: TestDb) -> Asbb {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("asbb.toml");
        std::fs::write(
            &config,
            "[ledger]\ndefault_hold_buffer = \"1.2\"\nhold_lifetime = \"7d\"\n",
        )
        .unwrap();
        Asbb { db, dir, config }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_asbb"));
        c.args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("ASBB_CONFIG", &self.config)
            .env("ASBB_DATABASE_URL", &self.db.url)
            .env("USER", "tester");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run asbb")
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "asbb {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs with --json and expects success.
    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok(&a);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("asbb {args:?} printed invalid JSON ({e}): {out}"))
    }

    /// Runs and expects exit `code`; returns stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let o = self.run(args);
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(
            o.status.code(),
            Some(code),
            "asbb {args:?}: expected exit {code}\nstdout: {}\nstderr: {stderr}",
            String::from_utf8_lossy(&o.stdout)
        );
        stderr
    }

    fn create(&self, account: &str, budget: &str) {
        self.ok(&[
            "account",
            "create",
            "--account",
            account,
            "--name",
            "Test Account",
            "--budget",
            budget,
            "--start",
            "2026-01-01",
            "--end",
            "2026-12-31",
            "--as-of",
            "2026-02-01",
        ]);
    }
}

const AT: &str = "2026-03-01T12:00:00Z";

db_test!(account_lifecycle, |db| {
    let a = Asbb::new(db);
    a.create("ml-proj-001", "600");
    let v = a.json(&["account", "show", "ml-proj-001"]);
    assert_eq!(v["account"], "ml-proj-001");
    assert_eq!(v["name"], "Test Account");
    assert_eq!(v["status"], "active");
    assert_eq!(v["budget_limit"], "600.00");
    assert_eq!(v["budget_used"], "0.00");
    assert_eq!(v["budget_held"], "0.00");
    assert_eq!(v["budget_available"], "600.00");
    assert_eq!(v["end"], "2027-01-01T00:00:00Z", "an end date is inclusive");

    let list = a.json(&["account", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(a.ok(&["account", "list"]).contains("ml-proj-001"));

    // Suspend: holds are refused with account_inactive and exit code 3.
    a.ok(&[
        "account",
        "update",
        "ml-proj-001",
        "--status",
        "suspended",
        "--name",
        "Renamed",
        "--reason",
        "audit",
    ]);
    let v = a.json(&["account", "show", "ml-proj-001"]);
    assert_eq!(v["status"], "suspended");
    assert_eq!(v["name"], "Renamed");
    // Six changes record the settings it was created with, then the two of the update.
    let changes = v["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 8, "{v}");
    let last: Vec<&str> = changes[6..]
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(last, ["display_name", "status"]);
    let err = a.fails(
        &[
            "hold",
            "place",
            "--account",
            "ml-proj-001",
            "--estimate",
            "10",
            "--as-of",
            AT,
        ],
        3,
    );
    assert!(err.contains("account_inactive"), "{err}");
    let denied = a.run(&[
        "hold",
        "place",
        "--account",
        "ml-proj-001",
        "--estimate",
        "10",
        "--as-of",
        AT,
        "--json",
    ]);
    assert_eq!(denied.status.code(), Some(3));
    let d: Value = serde_json::from_slice(&denied.stdout).unwrap();
    assert_eq!(d["available"], false);
    assert_eq!(d["reason"], "account_inactive");

    a.ok(&["account", "update", "ml-proj-001", "--status", "active"]);
    let err = a.fails(&["account", "delete", "ml-proj-001"], 1);
    assert!(
        err.contains("never deleted") && err.contains("asbb account close ml-proj-001"),
        "{err}"
    );
    a.ok(&["account", "close", "ml-proj-001", "--reason", "grant ended"]);
    assert_eq!(
        a.json(&["account", "show", "ml-proj-001"])["status"],
        "closed"
    );
    let err = a.fails(&["deposit", "ml-proj-001", "5"], 1);
    assert!(err.contains("closed"), "{err}");

    // An account that never had money can be deleted.
    a.create("typo-acct", "0");
    a.ok(&["account", "delete", "typo-acct"]);
    let err = a.fails(&["account", "show", "typo-acct"], 1);
    assert!(err.contains("no budget account named 'typo-acct'"), "{err}");
});

db_test!(hold_charge_reconcile_flow, |db| {
    let a = Asbb::new(db);
    a.create("lab", "500");
    a.ok(&[
        "account",
        "limit",
        "lab",
        "--partition",
        "gpu",
        "--amount",
        "200",
    ]);

    let h = a.json(&[
        "hold",
        "place",
        "--account",
        "lab",
        "--partition",
        "gpu",
        "--estimate",
        "100",
        "--job",
        "1234",
        "--as-of",
        AT,
    ]);
    assert_eq!(h["hold_id"], "hold-1");
    assert_eq!(h["amount"], "120.00");
    assert_eq!(h["budget_remaining"], "380.00");
    // The partition limit counts what is held.
    let err = a.fails(
        &[
            "hold",
            "place",
            "--account",
            "lab",
            "--partition",
            "gpu",
            "--estimate",
            "70",
            "--as-of",
            AT,
        ],
        3,
    );
    assert!(
        err.contains("partition_limit") && err.contains("$80.00 of it left"),
        "{err}"
    );

    // The seed's manual reconcile, run twice: one charge.
    let r = a.json(&[
        "reconcile",
        "job_1234",
        "--transaction",
        "hold-1",
        "--actual-cost",
        "118.50",
        "--as-of",
        AT,
    ]);
    assert_eq!(r["charge"]["amount"], "118.50");
    assert_eq!(r["release"]["amount"], "1.50");
    assert_eq!(r["replayed"], false);
    let again = a.json(&[
        "reconcile",
        "1234",
        "--transaction",
        "hold-1",
        "--actual-cost",
        "118.50",
        "--as-of",
        AT,
    ]);
    assert_eq!(again["replayed"], true);
    let err = a.fails(
        &[
            "reconcile",
            "1234",
            "--transaction",
            "hold-1",
            "--actual-cost",
            "99",
            "--as-of",
            AT,
        ],
        1,
    );
    assert!(err.contains("already reconciled"), "{err}");

    // Overrun: charged in full and flagged.
    a.json(&[
        "hold",
        "place",
        "--account",
        "lab",
        "--amount",
        "10",
        "--job",
        "1235",
        "--as-of",
        AT,
    ]);
    let r = a.json(&[
        "charge", "--hold", "hold-2", "--amount", "14.25", "--as-of", AT,
    ]);
    assert_eq!(r["overrun"], "4.25");
    assert_eq!(r["charge"]["flags"], "overrun");
    assert!(r["release"].is_null());

    // No hold: charged anyway, flagged unmatched.
    let r = a.json(&[
        "charge",
        "--account",
        "lab",
        "--amount",
        "3.000001",
        "--job",
        "77_3",
        "--partition",
        "cpu",
        "--as-of",
        AT,
    ]);
    assert_eq!(r["charge"]["flags"], "unmatched");
    assert_eq!(r["charge"]["job_id"], "77_3");

    // A pending hold, then released.
    a.json(&[
        "hold",
        "place",
        "--account",
        "lab",
        "--estimate",
        "5",
        "--as-of",
        AT,
    ]);
    let pending = a.json(&[
        "transactions",
        "list",
        "--type",
        "hold",
        "--status",
        "pending",
    ]);
    assert_eq!(pending.as_array().unwrap().len(), 1, "{pending}");
    assert_eq!(pending[0]["hold_id"], "hold-3");
    a.ok(&[
        "hold",
        "release",
        "hold-3",
        "--reason",
        "cancelled",
        "--as-of",
        AT,
    ]);
    assert!(
        a.ok(&["hold", "release", "hold-3"])
            .contains("already done"),
        "releasing again is a replay"
    );
    let err = a.fails(&["charge", "--hold", "hold-3", "--amount", "1"], 1);
    assert!(err.contains("already released"), "{err}");

    let v = a.json(&["account", "show", "lab"]);
    // 500 − 118.50 − 14.25 − 3.000001
    assert_eq!(v["budget_used"], "135.750001");
    assert_eq!(v["budget_held"], "0.00");
    assert_eq!(v["budget_available"], "364.249999");
    let usage = a.json(&["usage", "show", "lab"]);
    assert_eq!(usage["charges"], 3);
    assert_eq!(usage["overruns"], 1);
    assert_eq!(usage["unmatched_charges"], 1);

    // History filters.
    let by_job = a.json(&["transactions", "list", "--job", "1234"]);
    let kinds: Vec<&str> = by_job
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["release", "charge", "hold"]);
    let recent = a.json(&[
        "transactions",
        "list",
        "--last",
        "30d",
        "--as-of",
        "2026-03-05",
    ]);
    assert!(recent
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["effective_at"].as_str().unwrap() >= "2026-02-03"));
    assert!(
        !recent
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "credit"),
        "the initial credit is older than 30 days"
    );
    let first = a.json(&["transactions", "show", "1"]);
    assert_eq!(first["type"], "credit");
    assert_eq!(first["amount"], "500.00");
    assert_eq!(first["hash"].as_str().unwrap().len(), 64);

    assert!(a.ok(&["audit", "verify"]).contains("ledger verified"));
});

db_test!(deposits_adjustments_refunds, |db| {
    let a = Asbb::new(db);
    a.create("lab", "100");
    a.ok(&["deposit", "lab", "50.25", "--reason", "top-up"]);
    a.ok(&["adjust", "lab", "-20", "--reason", "correction"]);
    let err = a.fails(&["adjust", "lab", "5"], 2);
    assert!(err.contains("--reason"), "{err}");
    a.ok(&["charge", "--account", "lab", "--amount", "30"]);
    a.ok(&[
        "refund",
        "lab",
        "10",
        "--reason",
        "NODE_FAIL",
        "--job",
        "42",
    ]);
    let err = a.fails(&["refund", "lab", "100", "--reason", "too much"], 1);
    assert!(err.contains("more than the $20.00 charged"), "{err}");
    let v = a.json(&["account", "show", "lab"]);
    assert_eq!(v["budget_limit"], "130.25");
    assert_eq!(v["budget_used"], "20.00");
    assert_eq!(v["budget_available"], "110.25");

    // Idempotency keys on manual commands.
    a.ok(&["deposit", "lab", "5", "--idempotency-key", "grant-2026-q1"]);
    assert!(a
        .ok(&["deposit", "lab", "5", "--idempotency-key", "grant-2026-q1"])
        .contains("already done"));
    let err = a.fails(
        &["deposit", "lab", "6", "--idempotency-key", "grant-2026-q1"],
        1,
    );
    assert!(
        err.contains("already used for a different request"),
        "{err}"
    );
    assert_eq!(
        a.json(&["account", "show", "lab"])["budget_limit"],
        "135.25"
    );

    let summary = a.json(&["usage", "summary"]);
    assert_eq!(summary["totals"]["accounts"], 1);
    assert_eq!(summary["totals"]["budget_available"], "115.25");
});

db_test!(bad_input_names_the_flag, |db| {
    let a = Asbb::new(db);
    let create = |extra: &[&str]| {
        let mut args = vec![
            "account",
            "create",
            "--account",
            "x1",
            "--name",
            "X",
            "--start",
            "2026-01-01",
            "--end",
            "2026-12-31",
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |extra: &[&str], code: i32| {
        let args = create(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        a.fails(&refs, code)
    };
    let err = run(&["--budget", "12.3456789"], 1);
    assert!(
        err.contains("--budget") && err.contains("more than 6 decimals"),
        "{err}"
    );
    let err = run(&["--budget", "-5"], 1);
    assert!(
        err.contains("--budget") && err.contains("negative"),
        "{err}"
    );
    let err = run(&["--budget", "1,000"], 1);
    assert!(
        err.contains("--budget") && err.contains("not a decimal amount"),
        "{err}"
    );
    let err = a.fails(
        &[
            "account",
            "create",
            "--account",
            "x1",
            "--name",
            "X",
            "--budget",
            "5",
            "--start",
            "2026-12-31",
            "--end",
            "2026-01-01",
        ],
        1,
    );
    assert!(
        err.contains("--end") && err.contains("must be after the start"),
        "{err}"
    );
    let err = a.fails(
        &[
            "account",
            "create",
            "--account",
            "x1",
            "--name",
            "X",
            "--budget",
            "5",
            "--start",
            "31/12/2026",
            "--end",
            "2027-01-01",
        ],
        1,
    );
    assert!(
        err.contains("--start") && err.contains("YYYY-MM-DD"),
        "{err}"
    );
    let err = a.fails(
        &[
            "account",
            "create",
            "--account",
            "ML-Proj",
            "--name",
            "X",
            "--budget",
            "5",
            "--start",
            "2026-01-01",
            "--end",
            "2027-01-01",
        ],
        1,
    );
    assert!(
        err.contains("--account") && err.contains("use 'ml-proj'"),
        "{err}"
    );
    let err = a.fails(
        &[
            "account",
            "create",
            "--account",
            "a;rm",
            "--name",
            "X",
            "--budget",
            "5",
            "--start",
            "2026-01-01",
            "--end",
            "2027-01-01",
        ],
        1,
    );
    assert!(err.contains("--account") && err.contains("';'"), "{err}");
    a.create("x1", "5");
    let err = a.fails(
        &[
            "account",
            "create",
            "--account",
            "x1",
            "--name",
            "X",
            "--budget",
            "5",
            "--start",
            "2026-01-01",
            "--end",
            "2027-01-01",
        ],
        1,
    );
    assert!(err.contains("already exists"), "{err}");
    let err = a.fails(&["deposit", "nobody", "5"], 1);
    assert!(err.contains("no budget account named 'nobody'"), "{err}");
    let err = a.fails(&["transactions", "list", "--type", "bogus"], 1);
    assert!(
        err.contains("--type") && err.contains("expected one of"),
        "{err}"
    );
    let err = a.fails(&["transactions", "list", "--last", "30 days"], 1);
    assert!(err.contains("--last"), "{err}");
    let err = a.fails(&["charge", "--hold", "txn_abc123", "--amount", "1"], 1);
    assert!(
        err.contains("--hold") && err.contains("not a hold id"),
        "{err}"
    );
    let err = a.fails(
        &[
            "reconcile",
            "1234.batch",
            "--transaction",
            "hold-1",
            "--actual-cost",
            "1",
        ],
        1,
    );
    assert!(
        err.contains("JOB") && err.contains("not a SLURM job id"),
        "{err}"
    );
    let err = a.fails(&["charge", "--hold", "hold-99", "--amount", "1"], 1);
    assert!(err.contains("no hold hold-99"), "{err}");
    let err = a.fails(
        &[
            "hold",
            "place",
            "--account",
            "x1",
            "--estimate",
            "1",
            "--buffer",
            "0.5",
        ],
        1,
    );
    assert!(err.contains("--buffer"), "{err}");
    // clap's own usage errors exit 2 and name the missing flag.
    let err = a.fails(&["account", "create", "--account", "x2"], 2);
    assert!(err.contains("--name"), "{err}");
});

db_test!(audit_verify_detects_tampering, |db| {
    let a = Asbb::new(db);
    a.create("lab", "100");
    a.ok(&[
        "hold",
        "place",
        "--account",
        "lab",
        "--estimate",
        "10",
        "--as-of",
        AT,
    ]);
    a.ok(&["charge", "--hold", "hold-1", "--amount", "9", "--as-of", AT]);
    let clean = a.json(&["audit", "verify"]);
    assert_eq!(clean["clean"], true);
    assert_eq!(clean["report"]["entries"], 4);

    // Someone with database access rewrites history.
    let mut conn = a.db.conn();
    let sql = match a.db.backend {
        Backend::Sqlite => "DROP TRIGGER journal_no_update; UPDATE journal SET amount_micros = 1000000, charged_delta_micros = 1000000 WHERE kind = 'charge';",
        Backend::Postgres => "DROP TRIGGER journal_no_update ON journal; UPDATE journal SET amount_micros = 1000000, charged_delta_micros = 1000000 WHERE kind = 'charge';",
    };
    conn.batch_execute(sql).unwrap();
    drop(conn);
    let o = a.run(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(5));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("[hash_mismatch]") && out.contains("[balance_mismatch]"),
        "{out}"
    );
});

db_test!(schema_guard_and_migrate, |db| {
    let a = Asbb::new(db);
    let status = a.json(&["database", "status"]);
    assert_eq!(status["pending"].as_array().unwrap().len(), 0);
    assert!(a.ok(&["database", "migrate"]).contains("up to date"));
    // A database with a migration this build does not know is refused.
    let mut conn = a.db.conn();
    conn.batch_execute(
        "INSERT INTO __diesel_schema_migrations (version) VALUES ('99990101000000')",
    )
    .unwrap();
    drop(conn);
    let err = a.fails(&["account", "list"], 6);
    assert!(err.contains("newer than this asbb knows"), "{err}");
    let err = a.fails(&["database", "migrate"], 6);
    assert!(err.contains("newer"), "{err}");
});

#[test]
fn a_missing_database_says_how_to_create_it() {
    let a = Asbb::new(TestDb::unmigrated_sqlite());
    let err = a.fails(&["account", "list"], 6);
    assert!(
        err.contains("does not exist") && err.contains("asbb database migrate"),
        "{err}"
    );
    a.ok(&["database", "migrate"]);
    assert!(a
        .ok(&["account", "list"])
        .contains("no budget accounts yet"));
}

#[test]
fn config_init_validate_and_overrides() {
    let a = Asbb::new(TestDb::sqlite());
    let path = a.dir.path().join("new.toml");
    let p = path.to_str().unwrap();
    a.ok(&["config", "init", "--output", p]);
    let err = a.fails(&["config", "init", "--output", p], 1);
    assert!(err.contains("--force"), "{err}");
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("[database]"));
    // --config may come after the subcommand.
    assert!(a
        .ok(&["config", "validate", "--config", p])
        .contains("configuration is valid"));
    std::fs::write(
        &path,
        "[database]\nbusy_timeout_ms = 0\nsqlite_synchronous = \"off\"\n",
    )
    .unwrap();
    let err = a.fails(&["config", "validate", "--config", p], 1);
    assert!(
        err.contains("database.busy_timeout_ms") && err.contains("database.sqlite_synchronous"),
        "{err}"
    );
    std::fs::write(&path, "[databse]\nurl = \"x.db\"\n").unwrap();
    let err = a.fails(&["config", "validate", "--config", p], 1);
    assert!(err.contains("databse"), "{err}");
    // The environment overrides the file, and --database-url overrides both.
    let shown = a.json(&["config", "show"]);
    assert_eq!(shown["database"]["url"], a.db.url.as_str());
    let other = a.dir.path().join("other.db");
    let o = a.run(&["account", "list", "--database-url", other.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(6),
        "a different, missing database was used"
    );
    let err = a.fails(&["account", "list", "--database-url", "mysql://x/y"], 1);
    assert!(
        err.contains("--database-url") && err.contains("unsupported scheme"),
        "{err}"
    );
}

#[test]
fn help_lists_the_seed_commands() {
    let a = Asbb::new(TestDb::sqlite());
    let help = a.ok(&["--help"]);
    for cmd in [
        "account",
        "deposit",
        "adjust",
        "refund",
        "hold",
        "charge",
        "reconcile",
        "transactions",
        "usage",
        "audit",
        "database",
        "config",
    ] {
        assert!(help.contains(cmd), "--help lacks {cmd}:\n{help}");
    }
}

db_test!(review_fixes_hold_keys_and_flags, |db| {
    let a = Asbb::new(db);
    a.create("lab", "100");
    a.ok(&[
        "hold",
        "place",
        "--account",
        "lab",
        "--estimate",
        "10",
        "--as-of",
        AT,
    ]);
    // `charge --hold` then `reconcile` of the same cost is one charge, whatever job is named.
    a.ok(&["charge", "--hold", "hold-1", "--amount", "5", "--as-of", AT]);
    let again = a.json(&[
        "reconcile",
        "55",
        "--transaction",
        "hold-1",
        "--actual-cost",
        "5",
        "--as-of",
        AT,
    ]);
    assert_eq!(again["replayed"], true);
    assert_eq!(a.json(&["account", "show", "lab"])["budget_used"], "5.00");

    // Keys asbb derives itself cannot be taken by hand.
    for key in [
        "charge:hold-2",
        "release:hold-2",
        "expiry:hold-2",
        "account-create:x:budget",
        "manual:x",
    ] {
        let err = a.fails(&["deposit", "lab", "1", "--idempotency-key", key], 1);
        assert!(
            err.contains("--idempotency-key") && err.contains("reserved"),
            "{key}: {err}"
        );
    }
    let err = a.fails(
        &[
            "hold",
            "place",
            "--account",
            "lab",
            "--amount",
            "5",
            "--buffer",
            "3",
        ],
        1,
    );
    assert!(err.contains("--buffer"), "{err}");
    // Signs are checked against the flag the admin typed.
    let err = a.fails(
        &["hold", "place", "--account", "lab", "--estimate", "-5"],
        1,
    );
    assert!(
        err.contains("--estimate") && err.contains("negative"),
        "{err}"
    );
    let err = a.fails(&["charge", "--hold", "hold-1", "--amount", "-1"], 1);
    assert!(
        err.contains("--amount") && err.contains("negative"),
        "{err}"
    );
    let err = a.fails(&["refund", "lab", "-5", "--reason", "x"], 1);
    assert!(err.contains("AMOUNT") && err.contains("negative"), "{err}");
    // Writes can be backdated, not dated ahead.
    let err = a.fails(&["deposit", "lab", "1", "--as-of", "2999-01-01"], 1);
    assert!(err.contains("--as-of") && err.contains("future"), "{err}");

    // An expired hold, expired again, is a replay.
    a.ok(&[
        "hold",
        "place",
        "--account",
        "lab",
        "--amount",
        "5",
        "--expires-in",
        "1h",
        "--as-of",
        AT,
    ]);
    let err = a.fails(&["hold", "expire", "hold-2", "--as-of", AT], 1);
    assert!(err.contains("not yet"), "{err}");
    assert!(a
        .ok(&["hold", "expire", "hold-2", "--as-of", "2026-03-02"])
        .contains("expired hold-2"));
    assert!(a
        .ok(&["hold", "expire", "hold-2", "--as-of", "2026-03-02"])
        .contains("already done"));

    // A refund can name its partition, which gives the partition limit room back.
    a.ok(&[
        "charge",
        "--account",
        "lab",
        "--amount",
        "12",
        "--partition",
        "cpu",
        "--as-of",
        AT,
    ]);
    let err = a.fails(
        &["refund", "lab", "13", "--partition", "cpu", "--reason", "x"],
        1,
    );
    assert!(
        err.contains("--partition") && err.contains("$12.00 charged in partition 'cpu'"),
        "{err}"
    );
    a.ok(&[
        "refund",
        "lab",
        "6",
        "--partition",
        "cpu",
        "--reason",
        "NODE_FAIL",
        "--as-of",
        AT,
    ]);
    let v = a.json(&["account", "show", "lab"]);
    let cpu = v["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["partition"] == "cpu")
        .unwrap()
        .clone();
    assert_eq!(cpu["charged"], "6.00");
    assert_eq!(a.json(&["audit", "verify"])["clean"], true);
});

db_test!(audit_verify_detects_edited_hold_rows, |db| {
    let a = Asbb::new(db);
    a.create("lab", "100");
    a.ok(&[
        "hold",
        "place",
        "--account",
        "lab",
        "--partition",
        "gpu",
        "--estimate",
        "10",
        "--as-of",
        AT,
    ]);
    a.ok(&[
        "hold",
        "place",
        "--account",
        "lab",
        "--partition",
        "gpu",
        "--estimate",
        "10",
        "--as-of",
        AT,
    ]);
    a.ok(&["charge", "--hold", "hold-2", "--amount", "5", "--as-of", AT]);
    let v = a.json(&["audit", "verify"]);
    assert_eq!(v["clean"], true);
    assert_eq!(v["report"]["chain_heads"][0]["account"], "lab");
    assert_eq!(v["report"]["chain_heads"][0]["entries"], 5);
    assert_eq!(
        v["report"]["chain_heads"][0]["head"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    // The hold rows are not hash-covered themselves, but must agree with their entries.
    let mut conn = a.db.conn();
    conn.batch_execute("UPDATE holds SET partition = 'cpu' WHERE id = 1; UPDATE holds SET charged_micros = 1 WHERE id = 2;")
        .unwrap();
    drop(conn);
    let o = a.run(&["audit", "verify", "--json"]);
    assert_eq!(o.status.code(), Some(5));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let found: Vec<(String, i64)> = v["report"]["discrepancies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["hold_id"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert!(
        found.contains(&("hold_mismatch".to_string(), 1)),
        "{found:?}"
    );
    assert!(
        found.contains(&("hold_mismatch".to_string(), 2)),
        "{found:?}"
    );
});

db_test!(audit_verify_detects_edited_settings, |db| {
    let a = Asbb::new(db);
    a.create("lab", "100");
    a.ok(&[
        "account",
        "update",
        "lab",
        "--overdraft",
        "10",
        "--reason",
        "approved",
    ]);
    a.ok(&[
        "account",
        "limit",
        "lab",
        "--partition",
        "gpu",
        "--amount",
        "50",
    ]);
    assert_eq!(a.json(&["audit", "verify"])["clean"], true);
    // Raising an overdraft or a limit by hand would give away money; the settings chain shows it.
    let mut conn = a.db.conn();
    conn.batch_execute(
        "UPDATE accounts SET overdraft_micros = 1000000000; UPDATE account_partitions SET limit_micros = 99000000;",
    )
    .unwrap();
    drop(conn);
    let o = a.run(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(5));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("overdraft is '1000.00' but its recorded changes end at '10.00'"),
        "{out}"
    );
    assert!(
        out.contains("partition 'gpu' limit is 99.00 but its recorded changes end at 50.00"),
        "{out}"
    );
    // Rewriting the history of a change is caught by the chain.
    let mut conn = a.db.conn();
    conn.batch_execute(
        "UPDATE accounts SET overdraft_micros = 10000000; UPDATE account_partitions SET limit_micros = 50000000; \
         UPDATE account_changes SET reason = 'forged' WHERE field = 'overdraft' AND reason = 'approved';",
    )
    .unwrap();
    drop(conn);
    let o = a.run(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(5));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("[settings_mismatch]") && out.contains("was altered"),
        "{out}"
    );
});

db_test!(checks_prune_from_the_command_line, |db| {
    let a = Asbb::new(db);
    std::fs::write(&a.config, "[partitions.aws]\ncpu_hour = \"0.60\"\n").unwrap();
    a.create("lab", "100");
    a.ok(&[
        "check",
        "--account",
        "lab",
        "--partition",
        "aws",
        "--nodes",
        "1",
        "--cpus",
        "1",
        "--wall-time",
        "10",
        "--request-id",
        "old-1",
        "--as-of",
        "2026-02-02",
    ]);
    // Shorter than the learning window of corrections: refused, naming the flag and the key.
    let err = a.fails(&["checks", "prune", "--older-than", "10d"], 1);
    assert!(
        err.contains("--older-than") && err.contains("estimate.correction_window"),
        "{err}"
    );
    let err = a.fails(&["checks", "prune", "--older-than", "soon"], 1);
    assert!(err.contains("--older-than"), "{err}");
    // The check's hold is open: kept, and counted.
    let v = a.json(&[
        "checks",
        "prune",
        "--older-than",
        "90d",
        "--as-of",
        "2026-09-01",
    ]);
    assert_eq!(
        (v["removed"].as_u64(), v["kept_open"].as_u64()),
        (Some(0), Some(1)),
        "{v}"
    );
    assert_eq!(v["before"], "2026-06-03T00:00:00Z");
    let hold = a.json(&["hold", "list", "--account", "lab"])[0]["hold_id"]
        .as_str()
        .unwrap()
        .to_string();
    a.ok(&[
        "hold",
        "release",
        &hold,
        "--reason",
        "cancelled",
        "--as-of",
        "2026-02-03",
    ]);
    let v = a.json(&[
        "checks",
        "prune",
        "--dry-run",
        "--older-than",
        "90d",
        "--as-of",
        "2026-09-01",
    ]);
    assert_eq!(
        (v["removed"].as_u64(), v["dry_run"].as_bool()),
        (Some(1), Some(true)),
        "{v}"
    );
    let out = a.ok(&[
        "checks",
        "prune",
        "--older-than",
        "90d",
        "--as-of",
        "2026-09-01",
    ]);
    assert!(
        out.contains("1 checks created before 2026-06-03T00:00:00Z removed"),
        "{out}"
    );
    let v = a.json(&[
        "checks",
        "prune",
        "--older-than",
        "90d",
        "--as-of",
        "2026-09-01",
    ]);
    assert_eq!(v["removed"].as_u64(), Some(0), "{v}");
    // check.retention is validated against the same window.
    std::fs::write(&a.config, "[check]\nretention = \"30d\"\n").unwrap();
    let err = a.fails(&["checks", "prune"], 1);
    assert!(err.contains("check.retention"), "{err}");
});
