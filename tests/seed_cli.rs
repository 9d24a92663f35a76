//! Every allocation and grant example of the system this replaces, typed exactly as its README
//! shows them (flags included), against the real `asbb` binary on both backends, with the
//! figures a grants administrator computes by hand. The examples carry no --as-of: they run
//! "now", after all of 2025, so each 2025 schedule has credited everything it ever will.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::TestDb;
use serde_json::Value;

struct Asbb {
    db: TestDb,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Asbb {
    fn new(db: TestDb) -> Asbb {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("asbb.toml");
        let status = dir.path().join("status");
        std::fs::write(
            &config,
            format!("[burn]\nstatus_dir = \"{}\"\n[alerts]\nnotify_command = \"/bin/sh -c exit\"\nnotify_spool_dir = \"{}\"\n", status.display(), dir.path().join("alerts").display()),
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

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok(&a);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("asbb {args:?}: invalid JSON ({e}): {out}"))
    }
}

fn schema() -> jsonschema::Validator {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("spool-schemas/budget-status.v1.schema.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    jsonschema::validator_for(&v).unwrap()
}

fn credited(a: &Asbb, account: &str) -> (String, u64) {
    let v = a.json(&["allocations", "list", &format!("--account={account}")]);
    let s = &v[0];
    (
        s["credited"].as_str().unwrap().to_string(),
        s["credited_periods"].as_u64().unwrap(),
    )
}

db_test!(the_seed_allocation_examples, |db| {
    let a = Asbb::new(db);
    a.ok(&["database", "migrate"]);
    a.ok(&[
        "account",
        "create",
        "--name=ML Research Project",
        "--account=ml-proj-001",
        "--incremental",
        "--total-budget=600.00",
        "--allocation-amount=100.00",
        "--allocation-frequency=monthly",
        "--start=2025-01-01",
        "--end=2025-12-31",
    ]);
    a.ok(&[
        "account",
        "create",
        "--name=Research Project Alpha",
        "--account=research-alpha",
        "--incremental",
        "--total-budget=1200.00",
        "--allocation-amount=100.00",
        "--allocation-frequency=monthly",
        "--start=2025-01-01",
        "--end=2025-12-31",
    ]);
    a.ok(&[
        "account",
        "create",
        "--name=Student Compute",
        "--account=student-cs101",
        "--incremental",
        "--total-budget=520.00",
        "--allocation-amount=10.00",
        "--allocation-frequency=weekly",
        "--start=2025-01-01",
        "--end=2025-12-31",
    ]);
    a.ok(&[
        "account",
        "create",
        "--name=CS Department",
        "--account=cs-dept",
        "--incremental",
        "--total-budget=4000.00",
        "--allocation-amount=1000.00",
        "--allocation-frequency=quarterly",
        "--start=2025-01-01",
        "--end=2025-12-31",
    ]);
    // $600 at $100 a month: six credits, Jan to Jun, then the total is reached.
    assert_eq!(credited(&a, "ml-proj-001"), ("600.00".into(), 6));
    assert_eq!(credited(&a, "research-alpha"), ("1200.00".into(), 12));
    // 52 weeks of $10 (Dec 31 would be a 53rd, past the total).
    assert_eq!(credited(&a, "student-cs101"), ("520.00".into(), 52));
    assert_eq!(credited(&a, "cs-dept"), ("4000.00".into(), 4));
    let show = a.ok(&["account", "show", "ml-proj-001"]);
    assert!(
        show.contains("allocation schedules:") && show.contains("finished"),
        "{show}"
    );
    let v = a.json(&["allocations", "show", "4"]);
    let dues: Vec<&str> = v["periods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["due"].as_str().unwrap())
        .collect();
    assert_eq!(
        dues,
        [
            "2025-01-01T00:00:00Z",
            "2025-04-01T00:00:00Z",
            "2025-07-01T00:00:00Z",
            "2025-10-01T00:00:00Z"
        ]
    );
    a.ok(&[
        "transactions",
        "list",
        "--account=ml-proj-001",
        "--last=30d",
    ]);
    // The timer job afterwards finds nothing due, and twice is the same as once.
    let p = a.json(&["allocations", "process"]);
    assert_eq!(p["credited"], "0.00");
    a.ok(&["allocations", "process", "--dry-run"]);
    a.ok(&["audit", "verify"]);
    let e = String::from_utf8(
        a.run(&[
            "account",
            "create",
            "--name=X",
            "--account=x",
            "--incremental",
            "--total-budget=10",
            "--allocation-amount=20",
            "--allocation-frequency=monthly",
            "--start=2025-01-01",
            "--end=2025-12-31",
        ])
        .stderr,
    )
    .unwrap();
    assert!(e.contains("--allocation-amount"), "{e}");
    let e = String::from_utf8(
        a.run(&[
            "account",
            "create",
            "--name=X",
            "--account=x",
            "--incremental",
            "--total-budget=10",
            "--allocation-amount=1",
            "--allocation-frequency=fortnightly",
            "--start=2025-01-01",
            "--end=2025-12-31",
        ])
        .stderr,
    )
    .unwrap();
    assert!(e.contains("--allocation-frequency"), "{e}");
});

db_test!(the_seed_grant_and_burn_rate_examples, |db| {
    let a = Asbb::new(db);
    a.ok(&["database", "migrate"]);
    a.ok(&[
        "grant",
        "create",
        "--number=NSF-2025-12345",
        "--agency=National Science Foundation",
        "--program=Computer and Information Science and Engineering",
        "--pi=Dr. Jane Smith",
        "--co-pi=Dr. Bob Johnson,Dr. Alice Chen",
        "--institution=Research University",
        "--department=Computer Science",
        "--amount=750000",
        "--start=2025-01-01",
        "--end=2027-12-31",
        "--periods=12",
        "--indirect=0.30",
        "--federal-id=47.070",
    ]);
    a.ok(&[
        "grant",
        "create",
        "--number=NIH-R01-567890",
        "--agency=National Institutes of Health",
        "--program=National Cancer Institute",
        "--pi=Dr. Medical Researcher",
        "--institution=Medical University",
        "--amount=1250000",
        "--start=2025-07-01",
        "--end=2030-06-30",
        "--periods=12",
        "--indirect=0.25",
    ]);
    a.ok(&[
        "grant",
        "create",
        "--number=DOE-DE-SC-98765",
        "--agency=Department of Energy",
        "--program=Office of Science",
        "--pi=Dr. Energy Expert",
        "--amount=500000",
        "--start=2025-10-01",
        "--end=2027-09-30",
        "--periods=6",
        "--indirect=0.35",
    ]);
    let nsf = a.json(&["grant", "show", "NSF-2025-12345"]);
    assert_eq!(
        nsf["co_pis"],
        serde_json::json!(["Dr. Bob Johnson", "Dr. Alice Chen"])
    );
    assert_eq!(nsf["amount"]["direct"], "576923.076923");
    assert_eq!(nsf["amount"]["indirect"], "173076.923077");
    let periods = a.json(&["grant", "periods", "NSF-2025-12345"]);
    let p = periods.as_array().unwrap();
    assert_eq!(p.len(), 3);
    assert_eq!(p[0]["budget"]["total"], "250000.00");
    assert_eq!(p[0]["budget"]["direct"], "192307.692308");
    assert_eq!(p[2]["end"], "2028-01-01T00:00:00Z");
    let nih = a.json(&["grant", "periods", "NIH-R01-567890"]);
    assert_eq!(nih.as_array().unwrap().len(), 5);
    assert_eq!(nih[4]["budget"]["total"], "250000.00");
    assert_eq!(nih[0]["budget"]["indirect"], "50000.00");
    let doe = a.json(&["grant", "periods", "DOE-DE-SC-98765"]);
    assert_eq!(doe.as_array().unwrap().len(), 4);
    assert_eq!(doe[1]["start"], "2026-04-01T00:00:00Z");
    assert_eq!(doe[3]["budget"]["total"], "125000.00");
    // An account on the NSF grant with a realistic charge stream in its second year.
    a.ok(&[
        "account",
        "create",
        "--account",
        "ml-research-001",
        "--name",
        "ML Research",
        "--budget",
        "0",
        "--start",
        "2025-01-01",
        "--end",
        "2027-12-31",
        "--as-of",
        "2025-01-01",
    ]);
    a.ok(&[
        "grant",
        "link",
        "NSF-2025-12345",
        "ml-research-001",
        "--as-of",
        "2025-01-01",
    ]);
    a.ok(&["allocations", "process", "--as-of", "2026-01-01"]);
    for d in 1..=30 {
        let when = format!("2026-06-{d:02}T12:00:00Z");
        a.ok(&[
            "charge",
            "--account",
            "ml-research-001",
            "--amount",
            "1000",
            "--as-of",
            &when,
        ]);
    }
    a.ok(&[
        "burn-rate",
        "NSF-2025-12345",
        "--period=90d",
        "--projection",
    ]);
    a.ok(&["burn-rate", "NSF-2025-12345", "--alerts-only"]);
    let out = a.ok(&[
        "burn-rate",
        "ml-research-001",
        "--period=30d",
        "--as-of",
        "2026-07-01",
    ]);
    // 2026: its $250,000 plus the $250,000 carried from 2025 (nothing spent; the default
    // carry-over is all) over 365 days = $1,369.86 a day; spent $1,000 a day: -27.0 %.
    assert!(
        out.contains("Daily Rate: $1000.00 (Expected: $1369.86)"),
        "{out}"
    );
    assert!(out.contains("Variance: -27.0% (UNDERSPENDING)"), "{out}");
    a.ok(&[
        "burn-rate",
        "ml-research-001",
        "--period=6m",
        "--projection",
    ]);
    a.ok(&["forecast", "ml-research-001"]);
    // The seed's pipeline: `grant list --active` piped prints one number per line.
    let sh = format!(
        "{bin} grant list --active | xargs -I {{}} {bin} burn-rate {{}} --period=30d",
        bin = env!("CARGO_BIN_EXE_asbb")
    );
    let o = Command::new("sh")
        .args(["-c", &sh])
        .current_dir(a.dir.path())
        .env("ASBB_CONFIG", &a.config)
        .env("ASBB_DATABASE_URL", &a.db.url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for g in ["NSF-2025-12345", "NIH-R01-567890", "DOE-DE-SC-98765"] {
        assert!(text.contains(&format!("Burn rate of grant {g}")), "{text}");
    }
    // The timer job, the status files and the live status agree with the schema.
    a.ok(&["burn-rate", "compute"]);
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(a.dir.path().join("status/ml-research-001.json")).unwrap(),
    )
    .unwrap();
    let s = schema();
    assert!(
        s.is_valid(&v),
        "{:?}",
        s.iter_errors(&v).map(|e| e.to_string()).collect::<Vec<_>>()
    );
    let live = a.json(&["status", "ml-research-001", "--cost", "250"]);
    assert!(
        s.is_valid(&live),
        "{:?}",
        s.iter_errors(&live)
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(live["affordability"]["hold"], "300.00");
    assert_eq!(live["affordability"]["affordable"], true);
    let o = a.run(&["status", "ml-research-001", "--cost", "10000000", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "an unaffordable burst exits like a denied hold"
    );
    // Alerts went to the spool, once each; acknowledging one keeps it listed.
    let alerts = a.json(&["alerts", "list", "--grant", "NSF-2025-12345"]);
    let n = alerts.as_array().unwrap().len();
    let spooled = std::fs::read_dir(a.dir.path().join("alerts"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(spooled >= n, "{spooled} spooled, {n} listed");
    if let Some(first) = alerts.as_array().unwrap().first() {
        let id = first["id"].as_i64().unwrap().to_string();
        let ack = a.json(&[
            "alerts",
            "acknowledge",
            &id,
            "--user",
            "finance",
            "--notes",
            "expected: conference deadline",
        ]);
        assert_eq!(ack["state"], "acknowledged");
    }
    a.ok(&["burn-rate", "compute"]);
    assert_eq!(
        a.json(&["alerts", "list", "--grant", "NSF-2025-12345"])
            .as_array()
            .unwrap()
            .len(),
        n,
        "no duplicates"
    );
    a.ok(&["audit", "verify"]);
});
