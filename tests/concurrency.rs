//! Many processes place holds on one account at the same moment: exactly as many are granted
//! as the budget covers, on both backends, and the ledger still verifies.

mod common;

use std::process::{Command, Stdio};

const PROCESSES: usize = 24;

fn asbb(url: &str, config: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_asbb"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("ASBB_CONFIG", config)
        .env("ASBB_DATABASE_URL", url)
        .env("USER", "tester");
    c
}

/// A config file in a fresh directory and the account `shared` with a $100 budget.
fn shared_account(url: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("asbb.toml");
    std::fs::write(&config, "").unwrap();
    let st = asbb(url, &config)
        .args([
            "account",
            "create",
            "--account",
            "shared",
            "--name",
            "Shared",
            "--budget",
            "100",
            "--start",
            "2026-01-01",
            "--end",
            "2026-12-31",
            "--as-of",
            "2026-01-02",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    (dir, config)
}

db_test!(concurrent_holds_never_overspend, |db| {
    let (_dir, config) = shared_account(&db.url);
    // Each hold is $7: the budget covers 14 of them and leaves $2.
    let children: Vec<_> = (0..PROCESSES)
        .map(|i| {
            asbb(&db.url, &config)
                .args([
                    "hold",
                    "place",
                    "--account",
                    "shared",
                    "--amount",
                    "7",
                    "--job",
                    &format!("{}", 1000 + i),
                    "--as-of",
                    "2026-02-01",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut granted = 0;
    let mut denied = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        match out.status.code() {
            Some(0) => granted += 1,
            Some(3) => {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("insufficient_funds"), "{err}");
                denied += 1;
            }
            other => panic!(
                "unexpected exit {other:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
    assert_eq!(granted, 14, "exactly what the budget covers");
    assert_eq!(denied, PROCESSES - 14);
    let out = asbb(&db.url, &config)
        .args(["account", "show", "shared", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["budget_held"], "98.00");
    assert_eq!(v["budget_available"], "2.00");
    let audit = asbb(&db.url, &config)
        .args(["audit", "verify"])
        .status()
        .unwrap();
    assert_eq!(audit.code(), Some(0));
});

db_test!(concurrent_charges_resolve_a_hold_once, |db| {
    let (_dir, config) = shared_account(&db.url);
    let run = |args: &[&str]| asbb(&db.url, &config).args(args).output().unwrap();
    assert!(run(&[
        "hold",
        "place",
        "--account",
        "shared",
        "--amount",
        "50",
        "--as-of",
        "2026-02-01"
    ])
    .status
    .success());
    // Eight different charges (different keys and amounts) race for the same hold.
    let children: Vec<_> = (1..=8)
        .map(|i| {
            asbb(&db.url, &config)
                .args([
                    "charge",
                    "--hold",
                    "hold-1",
                    "--amount",
                    &format!("{i}"),
                    "--idempotency-key",
                    &format!("race-{i}"),
                    "--as-of",
                    "2026-02-02",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut won = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        match out.status.code() {
            Some(0) => won += 1,
            Some(1) => {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("already charged"), "{err}");
            }
            other => panic!(
                "unexpected exit {other:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
    assert_eq!(won, 1, "a hold resolves exactly once");
    let out = run(&["account", "show", "shared", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["budget_held"], "0.00");
    assert_eq!(
        run(&["transactions", "list", "--type", "charge", "--json"])
            .stdout
            .iter()
            .filter(|b| **b == b'{')
            .count(),
        1
    );
    assert_eq!(run(&["audit", "verify"]).status.code(), Some(0));
});
