//! Finance reports as an admin writes them: the real binary on a ledger built through the CLI
//! with backdated commands, on both backends. Every statement must tie out to the ledger, the
//! journal export must re-total to the balances, CSV must be safe to open in a spreadsheet,
//! the same ledger must give the same bytes, and the timer job must be safe to rerun and kill.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::TestDb;
use serde_json::Value;

struct Env {
    db: TestDb,
    dir: tempfile::TempDir,
}

impl Env {
    fn new(db: TestDb) -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("asbb.toml"), "").unwrap();
        for d in ["asbx", "jobs", "plans"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        Env { db, dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_asbb"))
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("ASBB_CONFIG", self.path("asbb.toml"))
            .env("ASBB_DATABASE_URL", &self.db.url)
            .env("ASBB_SPOOL_ASBX_DIR", self.path("asbx"))
            .env("ASBB_SPOOL_JOBS_DIR", self.path("jobs"))
            .env("ASBB_SPOOL_PLANS_DIR", self.path("plans"))
            .env("USER", "tester")
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "asbb {args:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}

fn micros(v: &Value) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a money string: {v}"));
    let neg = s.starts_with('-');
    let t = s.trim_start_matches('-');
    let (w, f) = t.split_once('.').unwrap_or((t, ""));
    let f = format!("{f:0<6}");
    let m = w.parse::<i64>().unwrap() * 1_000_000 + f.parse::<i64>().unwrap();
    if neg {
        -m
    } else {
        m
    }
}

fn cents(m: i64) -> String {
    asbb::domain::UsdMicros::from_stored(m).to_cents_string()
}

/// A ledger with a grant of three 12-month periods (30 % F&A, 25 % carry-over), an account
/// linked throughout, one linked later and unlinked, one outside the grant; amounts that
/// round, refunds, corrections, holds, a period end, and text that looks like formulas.
fn build(e: &Env) {
    let ok = |a: &[&str]| {
        e.ok(a);
    };
    ok(&["database", "migrate"]);
    for (acct, budget) in [("a-lab", "1000"), ("b-lab", "0"), ("c-solo", "500")] {
        ok(&[
            "account",
            "create",
            "--account",
            acct,
            "--name",
            "Lab",
            "--budget",
            budget,
            "--start",
            "2025-01-01",
            "--end",
            "2027-12-31",
            "--as-of",
            "2025-01-01",
        ]);
    }
    ok(&[
        "grant",
        "create",
        "--number",
        "G-1",
        "--agency",
        "=Agency",
        "--pi",
        "Dr. P",
        "--amount",
        "30000",
        "--start",
        "2025-01-01",
        "--end",
        "2027-12-31",
        "--periods",
        "12",
        "--indirect",
        "0.30",
        "--carry-over",
        "25%",
        "--as-of",
        "2025-01-01",
    ]);
    ok(&[
        "grant",
        "link",
        "G-1",
        "a-lab",
        "--share",
        "60",
        "--as-of",
        "2025-01-01",
    ]);
    ok(&[
        "charge",
        "--account",
        "a-lab",
        "--amount",
        "1234.567891",
        "--job",
        "101",
        "--user",
        "alice",
        "--partition",
        "gpu",
        "--as-of",
        "2025-02-03",
    ]);
    ok(&[
        "refund",
        "a-lab",
        "34.000005",
        "--reason",
        "=HYPERLINK(\"http://x\",\"click\")",
        "--job",
        "101",
        "--as-of",
        "2025-03-01",
    ]);
    ok(&[
        "adjust",
        "a-lab",
        "-10.004999",
        "--reason=+1 wrong transfer",
        "--as-of",
        "2025-03-02",
        "--actor",
        "@admin",
    ]);
    ok(&[
        "deposit",
        "c-solo",
        "0.005",
        "--reason=-2 rounding test",
        "--as-of",
        "2025-03-03",
    ]);
    ok(&[
        "hold",
        "place",
        "--account",
        "c-solo",
        "--estimate",
        "10",
        "--job",
        "300",
        "--user",
        "=evil",
        "--as-of",
        "2025-03-03",
    ]);
    ok(&[
        "grant",
        "link",
        "G-1",
        "b-lab",
        "--share",
        "40",
        "--as-of",
        "2025-06-15",
    ]);
    ok(&[
        "deposit",
        "b-lab",
        "50",
        "--reason",
        "\tTAB then text",
        "--as-of",
        "2025-07-01",
    ]);
    ok(&[
        "charge",
        "--account",
        "b-lab",
        "--amount",
        "20.125",
        "--job",
        "201",
        "--as-of",
        "2025-08-01",
    ]);
    ok(&["allocations", "process", "--as-of", "2026-02-01"]);
    ok(&[
        "charge",
        "--account",
        "a-lab",
        "--amount",
        "99.995",
        "--job",
        "102",
        "--as-of",
        "2026-03-01",
    ]);
    ok(&[
        "hold",
        "place",
        "--account",
        "a-lab",
        "--estimate",
        "10",
        "--job",
        "103",
        "--as-of",
        "2026-03-02",
    ]);
    ok(&["grant", "unlink", "G-1", "b-lab", "--as-of", "2026-04-01"]);
    ok(&[
        "charge",
        "--account",
        "b-lab",
        "--amount",
        "5",
        "--as-of",
        "2026-05-01",
    ]);
}

fn balances(e: &Env, acct: &str) -> (i64, i64, i64) {
    let v = e.json(&["account", "show", acct]);
    (
        micros(&v["budget_limit"]),
        micros(&v["budget_used"]),
        micros(&v["budget_held"]),
    )
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.starts_with("\u{feff}".as_bytes()),
        "UTF-8 byte order mark: {path:?}"
    );
    let text = std::str::from_utf8(&bytes[3..]).expect("CSV is UTF-8");
    assert!(text.contains("\r\n"), "CRLF records: {path:?}");
    let mut r = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let headers = r.headers().unwrap().iter().map(str::to_string).collect();
    let rows = r
        .records()
        .map(|x| x.unwrap().iter().map(str::to_string).collect())
        .collect();
    (headers, rows)
}

fn col(headers: &[String], name: &str) -> usize {
    headers
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {headers:?}"))
}

fn report(e: &Env, out: &Path, args: &[&str]) {
    let mut a = vec!["report"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--out", out.to_str().unwrap()]);
    e.ok(&a);
}

/// Every report kind, every format, into `out`.
fn all_reports(e: &Env, out: &Path) {
    let f = "csv,html,json";
    report(e, out, &["journal", "--format", f]);
    report(
        e,
        out,
        &["journal", "--grant", "G-1", "--period", "1", "--format", f],
    );
    report(
        e,
        out,
        &["grant-statement", "--grant", "G-1", "--format", f],
    );
    for a in ["a-lab", "b-lab", "c-solo"] {
        report(
            e,
            out,
            &["account-statement", "--account", a, "--format", f],
        );
    }
    for k in ["usage", "holds", "refunds", "accuracy", "alerts"] {
        report(e, out, &[k, "--format", f]);
    }
}

db_test!(statements_and_the_journal_tie_out_to_the_ledger, |db| {
    let e = Env::new(db);
    build(&e);
    let out = e.path("reports");
    all_reports(&e, &out);

    // The journal export re-totals to every account's balances, exactly.
    let (h, rows) = read_csv(&out.join("journal.csv"));
    let (acct, cr, ch, he) = (
        col(&h, "Account"),
        col(&h, "Credited change (micro-USD)"),
        col(&h, "Charged change (micro-USD)"),
        col(&h, "Held change (micro-USD)"),
    );
    let (dm, im) = (
        col(&h, "Direct (micro-USD)"),
        col(&h, "Indirect (micro-USD)"),
    );
    let mut sums: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for r in &rows {
        let s = sums.entry(r[acct].clone()).or_default();
        s.0 += r[cr].parse::<i64>().unwrap();
        s.1 += r[ch].parse::<i64>().unwrap();
        s.2 += r[he].parse::<i64>().unwrap();
        if r[ch] != "0" {
            let split = r[dm].parse::<i64>().unwrap() + r[im].parse::<i64>().unwrap();
            assert_eq!(
                split,
                r[ch].parse::<i64>().unwrap(),
                "direct + indirect = charged: {r:?}"
            );
        }
    }
    for a in ["a-lab", "b-lab", "c-solo"] {
        assert_eq!(sums[a], balances(&e, a), "journal re-totals {a}");
    }
    // Money columns have exactly two decimals; dates are ISO 8601.
    let amount = col(&h, "Amount");
    for r in &rows {
        let m = &r[amount];
        let (w, f) = m.trim_start_matches('-').split_once('.').unwrap();
        assert!(f.len() == 2 && w.bytes().all(|b| b.is_ascii_digit()), "{m}");
        assert_eq!(r[0].len(), 10, "YYYY-MM-DD: {}", r[0]);
        assert!(r[1].ends_with('Z') && r[1].contains('T'), "{}", r[1]);
    }
    // The F&A split of a grant charge: 1234.567891 at 30 %.
    let charge = rows
        .iter()
        .find(|r| r[col(&h, "Job")] == "101" && r[col(&h, "Kind")] == "charge")
        .unwrap();
    assert_eq!(charge[dm], "949667608");
    assert_eq!(charge[im], "284900283");
    assert_eq!(charge[col(&h, "Grant")], "G-1");
    assert_eq!(charge[col(&h, "Period")], "1");

    // Account statements close at the ledger's balance and hold what it holds.
    for a in ["a-lab", "b-lab", "c-solo"] {
        let (c, u, held) = balances(&e, a);
        let v: Value = serde_json::from_slice(
            &std::fs::read(out.join(format!("account-statement-{a}.json"))).unwrap(),
        )
        .unwrap();
        let rows = v["rows"].as_array().unwrap();
        let total = rows.last().unwrap();
        assert_eq!(total["total"], true);
        assert_eq!(micros(&total["closing"]), c - u, "{a} closing");
        assert_eq!(micros(&total["holds"]), held, "{a} holds");
        assert_eq!(micros(&total["remaining"]), c - u - held);
        let mut opening = micros(&rows[0]["opening"]);
        for r in &rows[..rows.len() - 1] {
            assert_eq!(micros(&r["opening"]), opening);
            let net = micros(&r["credits"])
                - micros(&r["direct_charges"])
                - micros(&r["indirect_charges"])
                + micros(&r["refunds"])
                + micros(&r["adjustments"])
                - micros(&r["expired"]);
            assert_eq!(micros(&r["closing"]), opening + net, "{a} {r}");
            opening = micros(&r["closing"]);
        }
        // The CSV total is the exact closing, rounded once.
        let (h, csv_rows) = read_csv(&out.join(format!("account-statement-{a}.csv")));
        assert_eq!(
            csv_rows.last().unwrap()[col(&h, "Closing balance")],
            cents(c - u)
        );
    }

    // The grant statement: a-lab was linked throughout, b-lab left with its money, so the
    // grant closes at a-lab's balance and holds what a-lab holds.
    let (c, u, held) = balances(&e, "a-lab");
    let v: Value =
        serde_json::from_slice(&std::fs::read(out.join("grant-statement-G-1.json")).unwrap())
            .unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "three periods and a total");
    let total = &rows[3];
    assert_eq!(
        micros(&total["closing"]),
        c - u,
        "{}\n{}",
        std::fs::read_to_string(out.join("grant-statement-G-1.csv")).unwrap(),
        e.ok(&["transactions", "list"])
    );
    assert_eq!(micros(&total["holds"]), held);
    let mut opening = 0;
    for r in &rows[..3] {
        assert_eq!(micros(&r["opening"]), opening);
        let net = micros(&r["transfers"]) + micros(&r["credits"])
            - micros(&r["direct_charges"])
            - micros(&r["indirect_charges"])
            + micros(&r["refunds"])
            + micros(&r["adjustments"])
            - micros(&r["expired"]);
        assert_eq!(micros(&r["closing"]), opening + net, "{r}");
        opening = micros(&r["closing"]);
    }
    // Period 1 ended with unspent money; 25 % of each account's credit carried over.
    assert!(micros(&rows[0]["expired"]) > 0, "{}", rows[0]);
    assert_eq!(rows[0]["status"], "closed");
    // b-lab's money left the grant when it was unlinked (in period 2).
    assert!(micros(&rows[1]["transfers"]) < 0, "{}", rows[1]);
    assert_eq!(micros(&total["budget"]), 30_000_000_000);

    // The grant's journal of period 1 re-totals to period 1's flows.
    let (h, rows_p1) = read_csv(&out.join("journal-G-1-p1.csv"));
    let bal: i64 = rows_p1
        .iter()
        .map(|r| {
            r[col(&h, "Credited change (micro-USD)")]
                .parse::<i64>()
                .unwrap()
                - r[col(&h, "Charged change (micro-USD)")]
                    .parse::<i64>()
                    .unwrap()
        })
        .sum();
    let p1 = &rows[0];
    assert_eq!(
        bal,
        micros(&p1["closing"]) - micros(&p1["opening"]) - micros(&p1["transfers"])
    );

    // Outstanding holds total what the ledger holds.
    let (h, hold_rows) = read_csv(&out.join("holds.csv"));
    let held_all: i64 = ["a-lab", "b-lab", "c-solo"]
        .iter()
        .map(|a| balances(&e, a).2)
        .sum();
    assert_eq!(
        hold_rows.last().unwrap()[col(&h, "Outstanding")],
        cents(held_all)
    );
    assert_eq!(hold_rows.len(), 3, "two holds and a total");

    // `asbb grant report` (the seed's command) writes the same statement.
    let seed = e.path("seed");
    e.ok(&["grant", "report", "G-1", "--out", seed.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(seed.join("grant-statement-G-1.csv")).unwrap(),
        std::fs::read(out.join("grant-statement-G-1.csv")).unwrap()
    );
    assert!(seed.join("grant-statement-G-1.html").exists());

    // The summary page carries the chart.
    let html = std::fs::read_to_string(out.join("grant-statement-G-1.html")).unwrap();
    assert!(html.contains("<svg") && html.contains(asbb::report::chart::ACTUAL_COLOUR));
    // Text is escaped in HTML.
    assert!(html.contains("=Agency"));
    e.ok(&["audit", "verify"]);
});

db_test!(csv_cells_cannot_run_as_formulas, |db| {
    let e = Env::new(db);
    build(&e);
    let out = e.path("reports");
    all_reports(&e, &out);
    let mut seen_neutralised = 0;
    for entry in std::fs::read_dir(&out).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_none_or(|x| x != "csv") {
            continue;
        }
        let (_, rows) = read_csv(&p);
        for r in rows {
            for cell in r {
                if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                    // Only numbers may start so: negative money and counts stay numbers.
                    let ok = cell.strip_prefix('-').is_some_and(|n| {
                        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                    });
                    assert!(ok, "{p:?}: cell {cell:?} would run as a formula");
                }
                if cell.starts_with('\'') {
                    seen_neutralised += 1;
                }
            }
        }
    }
    let (h, rows) = read_csv(&out.join("journal.csv"));
    let reasons: Vec<&String> = rows.iter().map(|r| &r[col(&h, "Reason")]).collect();
    for want in [
        "'=HYPERLINK(\"http://x\",\"click\")",
        "'+1 wrong transfer",
        "'-2 rounding test",
        "'\tTAB then text",
    ] {
        assert!(
            reasons.iter().any(|r| *r == want),
            "{want:?} in {reasons:?}"
        );
    }
    assert!(rows.iter().any(|r| r[col(&h, "Actor")] == "'@admin"));
    assert!(rows.iter().any(|r| r[col(&h, "User")] == "'=evil"));
    // A negative amount is still a number.
    assert!(rows.iter().any(|r| r[col(&h, "Amount")] == "-10.00"));
    assert!(seen_neutralised >= 6, "{seen_neutralised}");
    // Account names cannot start with such characters at all (SLURM's rules).
    assert!(asbb::domain::AccountName::new("=cmd").is_err());
    assert!(asbb::domain::AccountName::new("-x").is_err());
});

fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

db_test!(the_same_ledger_gives_the_same_bytes, |db| {
    let e = Env::new(db);
    build(&e);
    let (a, b) = (e.path("one"), e.path("two"));
    all_reports(&e, &a);
    all_reports(&e, &b);
    let (fa, fb) = (files_of(&a), files_of(&b));
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
    for (name, bytes) in &fa {
        if name.ends_with(".manifest.json") {
            // Manifests carry the wall clock (and only they): compare without it.
            let strip = |b: &[u8]| {
                let mut v: Value = serde_json::from_slice(b).unwrap();
                v.as_object_mut().unwrap().remove("generated_at");
                v
            };
            assert_eq!(strip(bytes), strip(&fb[name]), "{name}");
            // Every file is listed with its true checksum.
            let m: Value = serde_json::from_slice(bytes).unwrap();
            for f in m["files"].as_array().unwrap() {
                let n = f["name"].as_str().unwrap();
                assert_eq!(f["sha256"].as_str().unwrap(), sha256_hex(&fa[n]), "{n}");
                assert_eq!(f["bytes"].as_u64().unwrap(), fa[n].len() as u64);
            }
            assert!(m["rounding"]
                .as_str()
                .unwrap()
                .contains("half away from zero"));
        } else {
            assert!(bytes == &fb[name], "{name} differs between two runs");
        }
    }
    assert!(fa.contains_key("README.txt"));
    // No temporary file is left behind.
    assert!(fa.keys().all(|n| !n.starts_with('.')));
});

db_test!(the_timer_job_is_safe_to_rerun_and_to_kill, |db| {
    let e = Env::new(db);
    build(&e);
    let dir = e.path("sets");
    let d = dir.to_str().unwrap();
    let v = e.json(&[
        "report",
        "--scheduled",
        "--out",
        d,
        "--as-of",
        "2025-03-05T06:00:00Z",
    ]);
    let sets = v["sets"].as_array().unwrap();
    // Catch-up of 31 days: the daily sets Feb 2 to Mar 4, and February's month-end set.
    let daily: Vec<&Value> = sets.iter().filter(|s| s["set"] == "daily").collect();
    assert_eq!(daily.len(), 31);
    assert_eq!(daily[0]["label"], "2025-02-02");
    assert_eq!(daily[30]["label"], "2025-03-04");
    let monthly: Vec<&Value> = sets.iter().filter(|s| s["set"] == "monthly").collect();
    assert_eq!(monthly.len(), 1);
    assert_eq!(monthly[0]["label"], "2025-02");
    assert!(sets.iter().all(|s| s["status"] == "written"));
    let feb = dir.join("monthly/2025-02");
    for f in [
        "grant-statement-G-1.csv",
        "grant-statement-G-1.html",
        "account-statement-a-lab.csv",
        "account-statement-a-lab-allocations.csv",
        "journal.csv",
        "usage.csv",
        "refunds.csv",
        "README.txt",
        "manifest.json",
    ] {
        assert!(feb.join(f).exists(), "{f}");
    }
    // February's journal is February's entries: the a-lab charge of Feb 3.
    let (_, rows) = read_csv(&feb.join("journal.csv"));
    assert_eq!(rows.len(), 1);
    let before = files_of(&feb);

    // A second run writes nothing.
    let v = e.json(&[
        "report",
        "--scheduled",
        "--out",
        d,
        "--as-of",
        "2025-03-05T07:00:00Z",
    ]);
    assert!(v["sets"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["status"] == "present"));
    assert_eq!(files_of(&feb), before);

    // A run killed while writing March 4 left a temporary directory and no set; the next run
    // removes the leftover and writes the set whole — the same bytes as before.
    let mar4 = dir.join("daily/2025-03-04");
    let old = files_of(&mar4);
    std::fs::remove_dir_all(&mar4).unwrap();
    let stale = dir.join("daily/.2025-03-04.tmp-999999");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("journal.csv"), "half a fi").unwrap();
    let v = e.json(&[
        "report",
        "--scheduled",
        "--out",
        d,
        "--as-of",
        "2025-03-05T08:00:00Z",
    ]);
    let written: Vec<&Value> = v["sets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "written")
        .collect();
    assert_eq!(written.len(), 1);
    assert_eq!(written[0]["label"], "2025-03-04");
    assert!(!stale.exists());
    let new = files_of(&mar4);
    for (name, bytes) in &old {
        if name != "manifest.json" {
            assert!(bytes == &new[name], "{name}");
        }
    }
});

db_test!(usage_by_instance_type_from_cost_exports, |db| {
    let e = Env::new(db);
    e.ok(&["database", "migrate"]);
    e.ok(&[
        "account",
        "create",
        "--account",
        "ml",
        "--name",
        "ML",
        "--budget",
        "1000",
        "--start",
        "2026-01-01",
        "--end",
        "2026-12-31",
        "--as-of",
        "2026-03-01",
    ]);
    e.ok(&[
        "hold",
        "place",
        "--account",
        "ml",
        "--partition",
        "gpu",
        "--estimate",
        "100",
        "--job",
        "1001",
        "--user",
        "alice",
        "--as-of",
        "2026-03-02",
    ]);
    e.ok(&[
        "hold",
        "place",
        "--account",
        "ml",
        "--partition",
        "gpu",
        "--estimate",
        "50",
        "--job",
        "1002",
        "--user",
        "alice",
        "--as-of",
        "2026-03-02",
    ]);
    std::fs::write(e.path("asbx/job_1001_cost.json"), r#"{"job_id":"1001","account":"ml","actual_cost":87.43,"budget_transaction_id":"hold-1","job_state":"COMPLETED","user_id":"alice","partition":"gpu","instance_types":["p3.2xlarge"]}"#).unwrap();
    std::fs::write(e.path("asbx/job_1002_cost.json"), r#"{"job_id":"1002","account":"ml","actual_cost":12,"budget_transaction_id":"hold-2","job_state":"NODE_FAIL","user_id":"alice","partition":"gpu","instance_types":["g5.xlarge"]}"#).unwrap();
    e.ok(&["spool", "scan"]);
    e.ok(&["reconcile", "--as-of", "2026-03-03"]);
    let out = e.path("r");
    report(&e, &out, &["usage"]);
    report(&e, &out, &["refunds"]);
    let (h, rows) = read_csv(&out.join("usage.csv"));
    let it = col(&h, "Instance type");
    let p3 = rows
        .iter()
        .find(|r| r[it] == "p3.2xlarge")
        .expect("a p3 row");
    assert_eq!(p3[col(&h, "Charged")], "87.43");
    assert_eq!(p3[col(&h, "Jobs")], "1");
    let g5 = rows
        .iter()
        .find(|r| r[it] == "g5.xlarge")
        .expect("a g5 row");
    // NODE_FAIL is refunded in full by the default policy.
    assert_eq!(g5[col(&h, "Refunded")], "12.00");
    assert_eq!(g5[col(&h, "Net")], "0.00");
    let total = rows.last().unwrap();
    assert_eq!(total[0], "Total");
    assert_eq!(total[col(&h, "Net")], "87.43");
    assert_eq!(total[col(&h, "Jobs")], "2");
    let (h, rows) = read_csv(&out.join("refunds.csv"));
    assert_eq!(rows[0][col(&h, "Source")], "policy");
    assert_eq!(rows[0][col(&h, "Job state")], "NODE_FAIL");
    assert!(!rows[0][col(&h, "Charge entry")].is_empty());
});

db_test!(
    a_site_template_renames_columns_and_a_bad_one_is_refused,
    |db| {
        let e = Env::new(db);
        e.ok(&["database", "migrate"]);
        e.ok(&[
            "account",
            "create",
            "--account",
            "ml",
            "--name",
            "ML",
            "--budget",
            "10",
            "--start",
            "2026-01-01",
            "--end",
            "2026-12-31",
            "--as-of",
            "2026-03-01",
        ]);
        let site = e.path("site");
        std::fs::create_dir(&site).unwrap();
        std::fs::write(site.join("journal.columns.toml"), "title = \"Ledger\"\n[[column]]\nheader = \"Montant\"\nfield = \"amount\"\n[[column]]\nheader = \"Compte\"\nfield = \"account\"\n").unwrap();
        std::fs::write(
            e.path("asbb.toml"),
            format!("[reports]\ntemplates_dir = \"{}\"\n", site.display()),
        )
        .unwrap();
        let out = e.path("r");
        report(&e, &out, &["journal"]);
        let (h, rows) = read_csv(&out.join("journal.csv"));
        assert_eq!(h, ["Montant", "Compte"]);
        assert_eq!(rows, [["10.00", "ml"]]);
        let m: Value =
            serde_json::from_slice(&std::fs::read(out.join("journal.manifest.json")).unwrap())
                .unwrap();
        assert_eq!(
            m["templates"]["journal.columns.toml"],
            site.join("journal.columns.toml").display().to_string()
        );
        std::fs::write(
            site.join("journal.columns.toml"),
            "title = \"Ledger\"\n[[column]]\nheader = \"Montant\"\nfield = \"montant\"\n",
        )
        .unwrap();
        let o = e.run(&["report", "journal", "--out", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("journal.columns.toml") && err.contains("unknown field 'montant'"),
            "{err}"
        );
        // Bad requests name the flag.
        std::fs::remove_file(site.join("journal.columns.toml")).unwrap();
        let o = e.run(&["report", "grant-statement", "--out", out.to_str().unwrap()]);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("--grant"),
            "{o:?}"
        );
        let o = e.run(&[
            "report",
            "usage",
            "--period",
            "2",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("--period"),
            "{o:?}"
        );
    }
);
