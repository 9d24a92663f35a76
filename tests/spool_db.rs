//! Spool intake and reconciliation through the library, on SQLite and (when
//! `ASBB_TEST_POSTGRES_URL` is set) PostgreSQL: exactly-once storage, duplicates and conflicts,
//! every way a run finds its hold, arrays, requeues, refunds, recovery and accuracy.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use asbb::db::check::{self, CheckRequest, Pricing};
use asbb::db::ledger::{self, HoldOutcome, HoldRequest, NewAccount, OpContext};
use asbb::db::models::Hold;
use asbb::db::reconcile::{self, ReconcilePolicy, RecoverPolicy, SacctJob};
use asbb::db::spool as dbspool;
use asbb::db::{audit, queries, DbConn};
use asbb::domain::estimate::{History, Rates, Resources, TimeLimit};
use asbb::domain::{AccountName, EntryKind, HoldState, UsdMicros};
use asbb::spool::intake::{Intake, IntakeOptions, ScanReport, SpoolDirs};
use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;

fn t(d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, d, h, 0, 0).unwrap()
}

fn ctx_at(at: DateTime<Utc>) -> OpContext {
    OpContext::at("tester", at)
}

fn usd(s: &str) -> UsdMicros {
    UsdMicros::parse(s).unwrap()
}

fn create(conn: &mut DbConn, name: &str, budget: &str) {
    ledger::create_account(
        conn,
        &ctx_at(t(1, 0)),
        &NewAccount {
            name: AccountName::new(name).unwrap(),
            display_name: name.to_string(),
            description: String::new(),
            starts_at: Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
            ends_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            overdraft: UsdMicros::ZERO,
            budget: usd(budget),
        },
    )
    .unwrap();
}

fn hold(
    conn: &mut DbConn,
    account: &str,
    estimate: &str,
    job: Option<&str>,
    tasks: Option<u32>,
) -> Hold {
    let key = format!("test-hold-{account}-{estimate}-{job:?}-{tasks:?}");
    match ledger::place_hold(
        conn,
        &ctx_at(t(1, 1)),
        &HoldRequest {
            account,
            partition: None,
            estimate: usd(estimate),
            buffer: Decimal::ONE,
            cluster: None,
            job_id: job,
            user_name: None,
            expires_at: Some(t(20, 0)),
            tasks,
            key: &key,
        },
    )
    .unwrap()
    {
        HoldOutcome::Placed { hold, .. } => *hold,
        other => panic!("{other:?}"),
    }
}

/// A spool with the three directories.
struct Spool {
    _dir: tempfile::TempDir,
    dirs: SpoolDirs,
}

impl Spool {
    fn new() -> Spool {
        let dir = tempfile::tempdir().unwrap();
        let mk = |n: &str| {
            let p = dir.path().join(n);
            std::fs::create_dir(&p).unwrap();
            p
        };
        let dirs = SpoolDirs {
            asbx: Some(mk("asbx")),
            jobs: Some(mk("jobs")),
            plans: Some(mk("plans")),
        };
        Spool { _dir: dir, dirs }
    }

    fn asbx(&self) -> &Path {
        self.dirs.asbx.as_deref().unwrap()
    }

    fn jobs(&self) -> &Path {
        self.dirs.jobs.as_deref().unwrap()
    }

    fn cost(&self, name: &str, body: &str) -> PathBuf {
        let p = self.asbx().join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    fn job_end(&self, cluster: &str, job: &str, end: i64, body_extra: &str, started: bool) {
        let start = if started { "1741000000" } else { "null" };
        let body = format!(
            r#"{{"schema_version":1,"cluster":"{cluster}","job_id":"{job}","account":"physics","state":"COMPLETED","submit_time":1740999000,"start_time":{start},"end_time":{end}{body_extra}}}"#
        );
        std::fs::write(
            self.jobs()
                .join(format!("jobend.{cluster}.{job}.{end}.json")),
            body,
        )
        .unwrap();
    }

    fn scan(&self, conn: &mut DbConn, grace: Duration) -> ScanReport {
        let mut intake = Intake::new(IntakeOptions {
            not_ready_grace: grace,
            batch_size: 3,
            ..Default::default()
        });
        intake
            .scan(conn, &self.dirs, Utc::now(), &|| false, &mut |_| {})
            .unwrap()
    }

    fn names(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.asbx().join(sub))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn reconcile_at(conn: &mut DbConn, at: DateTime<Utc>) -> reconcile::ReconcileReport {
    reconcile::reconcile(
        conn,
        &ctx_at(at),
        &ReconcilePolicy::default(),
        None,
        &|| false,
    )
    .unwrap()
}

fn balances(conn: &mut DbConn, name: &str) -> (String, String, String) {
    let a = queries::account(conn, name).unwrap();
    (
        a.balances.credited.to_string(),
        a.balances.charged.to_string(),
        a.balances.held.to_string(),
    )
}

fn assert_clean(conn: &mut DbConn) {
    let r = audit::verify(conn, None, &mut |_| {}).unwrap();
    assert!(r.discrepancies.is_empty(), "audit: {:?}", r.discrepancies);
}

fn entries(conn: &mut DbConn) -> usize {
    queries::entries(conn, &Default::default()).unwrap().len()
}

const NOW_GRACE: Duration = Duration::from_secs(600);

db_test!(files_are_stored_once_and_moved, |db| {
    let mut conn = db.conn();
    let s = Spool::new();
    s.cost(
        "job_1_cost.json",
        r#"{"job_id":1,"account":"physics","actual_cost":"10.00"}"#,
    );
    s.cost(
        "job-2-asbb-reconciliation.json",
        r#"{"slurm_job_id":"slurm_2","project_id":"physics","total_cost_usd":2}"#,
    );
    s.cost(".job_3_cost.json.tmp", "{");
    let r = s.scan(&mut conn, NOW_GRACE);
    assert_eq!((r.stored, r.rejected, r.temporary), (2, 0, 1));
    assert_eq!(
        s.names("processed"),
        vec!["job-2-asbb-reconciliation.json", "job_1_cost.json"]
    );
    // The producer's temporary file is left alone.
    assert!(s.asbx().join(".job_3_cost.json.tmp").exists());
    let again = s.scan(&mut conn, NOW_GRACE);
    assert_eq!(again.handled(), 0);
    let counts = dbspool::counts(&mut conn).unwrap();
    assert_eq!(counts.cost_records, vec![("pending".to_string(), 2)]);
});

db_test!(
    identical_reexports_are_duplicates_and_different_ones_conflicts,
    |db| {
        let mut conn = db.conn();
        create(&mut conn, "physics", "100");
        let s = Spool::new();
        let body = r#"{"job_id":"5","account":"physics","actual_cost":10,"export_time":"2025-03-01T00:00:00Z"}"#;
        s.cost("job_5_cost.json", body);
        assert_eq!(s.scan(&mut conn, NOW_GRACE).stored, 1);
        // The same facts again (a later export time only): a duplicate.
        s.cost("job_5_cost.json", &body.replace("00:00:00Z", "01:00:00Z"));
        let r = s.scan(&mut conn, NOW_GRACE);
        assert_eq!((r.stored, r.duplicates, r.conflicts), (0, 1, 0));
        // Another cost for the same run: a conflict, never an overwrite.
        s.cost("job_5_cost.json", &body.replace("10", "99"));
        let r = s.scan(&mut conn, NOW_GRACE);
        assert_eq!((r.stored, r.duplicates, r.conflicts), (0, 0, 1));
        assert!(r.has_problems());
        assert_eq!(s.names("processed").len(), 3, "every arrival is kept");
        reconcile_at(&mut conn, t(2, 0));
        assert_eq!(
            balances(&mut conn, "physics").1,
            "10.00",
            "charged once, at the stored cost"
        );
        let c = dbspool::conflicts(&mut conn, false).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].run, "5#0");
        assert!(c[0].stored.contains("10.00"), "{}", c[0].stored);
        dbspool::resolve_conflict(&mut conn, c[0].id, "admin", "checked with ASBX", t(3, 0))
            .unwrap();
        assert!(dbspool::conflicts(&mut conn, false).unwrap().is_empty());
        assert_eq!(dbspool::conflicts(&mut conn, true).unwrap().len(), 1);
        assert!(dbspool::resolve_conflict(&mut conn, c[0].id, "admin", "again", t(3, 0)).is_err());
    }
);

db_test!(
    a_file_recorded_but_not_moved_is_only_moved_on_rescan,
    |db| {
        let mut conn = db.conn();
        let s = Spool::new();
        s.cost(
            "job_7_cost.json",
            r#"{"job_id":"7","account":"physics","actual_cost":1}"#,
        );
        assert_eq!(s.scan(&mut conn, NOW_GRACE).stored, 1);
        // A crash between commit and rename leaves the very same file (same inode, time, content)
        // in the spool: a hard link recreates exactly that.
        std::fs::hard_link(
            s.asbx().join("processed/job_7_cost.json"),
            s.asbx().join("job_7_cost.json"),
        )
        .unwrap();
        let r = s.scan(&mut conn, NOW_GRACE);
        assert_eq!((r.stored, r.duplicates, r.finished_moves), (0, 0, 1));
        assert!(!s.asbx().join("job_7_cost.json").exists());
        let files: i64 = dbspool::counts(&mut conn)
            .unwrap()
            .files
            .iter()
            .map(|f| f.2)
            .sum();
        assert_eq!(files, 1, "the arrival is recorded once");
    }
);

db_test!(unfinished_files_wait_for_the_grace_period, |db| {
    let mut conn = db.conn();
    let s = Spool::new();
    s.cost("job_8_cost.json", "");
    s.cost("job_9_cost.json", r#"{"job_id":"9","acc"#);
    // Cut inside a two-byte character (Go writes µ as C2 B5): still being written.
    std::fs::write(
        s.asbx().join("job_10_cost.json"),
        b"{\"job_id\":\"10\",\"actual_wall_time\":\"1.5\xc2",
    )
    .unwrap();
    // Invalid bytes in the middle: refused at once.
    std::fs::write(
        s.asbx().join("job_11_cost.json"),
        b"{\"job_id\":\"11\",\"account\":\"a\xffb\"}",
    )
    .unwrap();
    let r = s.scan(&mut conn, NOW_GRACE);
    assert_eq!((r.not_ready, r.rejected), (3, 1));
    assert!(s.asbx().join("job_8_cost.json").exists());
    // The producer finishes one; the other stays broken past the grace period.
    s.cost(
        "job_9_cost.json",
        r#"{"job_id":"9","account":"physics","actual_cost":1}"#,
    );
    let r = s.scan(&mut conn, Duration::ZERO);
    assert_eq!((r.stored, r.rejected, r.not_ready), (1, 2, 0));
    let cut: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(s.asbx().join("rejected/job_10_cost.json.error.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cut["reasons"][0]["code"], "not_utf8");
    let sidecar =
        std::fs::read_to_string(s.asbx().join("rejected/job_8_cost.json.error.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&sidecar).unwrap();
    assert_eq!(v["reasons"][0]["code"], "empty");
    assert_eq!(v["file"], "job_8_cost.json");
    assert!(v["sha256"].as_str().unwrap().len() == 64);
});

db_test!(runs_find_their_holds_every_way, |db| {
    let mut conn = db.conn();
    create(&mut conn, "physics", "1000");
    let by_ref = hold(&mut conn, "physics", "100", None, None);
    let by_job_end = hold(&mut conn, "physics", "50", None, None);
    let by_job_id = hold(&mut conn, "physics", "30", Some("103"), None);
    let s = Spool::new();
    s.cost(
        "job_101_cost.json",
        &format!(r#"{{"job_id":"101","account":"physics","actual_cost":80,"budget_transaction_id":"txn_{}"}}"#, by_ref.id),
    );
    s.job_end(
        "lab",
        "102",
        1741003600,
        &format!(r#","hold_id":"hold-{}""#, by_job_end.id),
        true,
    );
    s.cost(
        "job_102_cost.json",
        r#"{"job_id":"102","account":"physics","actual_cost":60}"#,
    );
    s.cost(
        "job_103_cost.json",
        r#"{"job_id":"103","account":"physics","actual_cost":"29.999999"}"#,
    );
    s.cost(
        "job_104_cost.json",
        r#"{"job_id":"104","account":"physics","actual_cost":5}"#,
    );
    let r = s.scan(&mut conn, NOW_GRACE);
    assert_eq!((r.stored, r.rejected), (5, 0));
    let rep = reconcile_at(&mut conn, t(2, 0));
    assert_eq!(
        (rep.charged, rep.unmatched, rep.overruns, rep.waiting),
        (3, 1, 1, 0)
    );
    for (h, charged) in [
        (by_ref.id, "80.00"),
        (by_job_end.id, "60.00"),
        (by_job_id.id, "29.999999"),
    ] {
        let h = queries::hold(&mut conn, h).unwrap();
        assert_eq!(h.state, HoldState::Charged);
        assert_eq!(h.charged.to_string(), charged);
        assert_eq!(h.remaining, UsdMicros::ZERO);
    }
    // 80 + 60 (an overrun of the $50 hold, charged in full) + 29.999999 + 5 unmatched.
    assert_eq!(
        balances(&mut conn, "physics"),
        ("1000.00".into(), "174.999999".into(), "0.00".into())
    );
    let unmatched = queries::entries(&mut conn, &Default::default())
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EntryKind::Charge && e.flags == "unmatched")
        .count();
    assert_eq!(unmatched, 1);
    assert_clean(&mut conn);
    // Running it again books nothing.
    let before = entries(&mut conn);
    let again = reconcile_at(&mut conn, t(2, 1));
    assert_eq!((again.charged, again.unmatched), (0, 0));
    assert_eq!(entries(&mut conn), before);
});

db_test!(costs_for_unknown_or_hidden_accounts_wait_visibly, |db| {
    let mut conn = db.conn();
    create(&mut conn, "physics", "100");
    let s = Spool::new();
    s.cost(
        "job_201_cost.json",
        r#"{"job_id":"201","account":"newlab","actual_cost":7}"#,
    );
    s.cost(
        "job_202_cost.json",
        r#"{"job_id":"202","account":"anonymized","user_id":"anonymous","actual_cost":3}"#,
    );
    s.scan(&mut conn, NOW_GRACE);
    let rep = reconcile_at(&mut conn, t(2, 0));
    assert_eq!(rep.waiting, 2);
    let p = reconcile::pending(&mut conn).unwrap();
    let reasons: Vec<&str> = p.iter().map(|p| p.reason.as_str()).collect();
    assert_eq!(reasons, vec!["unknown_account", "anonymized_account"]);
    // The account appears; an admin assigns the anonymised run.
    create(&mut conn, "newlab", "100");
    assert_eq!(
        reconcile::assign_account(&mut conn, 202, "physics").unwrap(),
        1
    );
    assert!(reconcile::assign_account(&mut conn, 202, "nosuch").is_err());
    let rep = reconcile_at(&mut conn, t(2, 1));
    assert_eq!((rep.unmatched, rep.waiting), (2, 0));
    assert_eq!(balances(&mut conn, "newlab").1, "7.00");
    assert_eq!(balances(&mut conn, "physics").1, "3.00");
    assert!(reconcile::pending(&mut conn).unwrap().is_empty());
    assert_clean(&mut conn);
});

db_test!(
    waiting_and_pending_runs_are_taken_in_id_order_batch_by_batch,
    |db| {
        // Runs 1, 3 and 5 wait for an unknown account; once it exists they are charged together
        // with the pending runs 7 to 10, batches of two taken in id order across both states.
        let mut conn = db.conn();
        create(&mut conn, "physics", "100");
        let s = Spool::new();
        for job in 1..=6 {
            let account = if job % 2 == 1 { "newlab" } else { "physics" };
            s.cost(
                &format!("job_{job}_cost.json"),
                &format!(r#"{{"job_id":"{job}","account":"{account}","actual_cost":{job}}}"#),
            );
        }
        s.scan(&mut conn, NOW_GRACE);
        let rep = reconcile_at(&mut conn, t(2, 0));
        assert_eq!((rep.unmatched, rep.waiting), (3, 3));
        create(&mut conn, "newlab", "100");
        for job in 7..=10 {
            s.cost(
                &format!("job_{job}_cost.json"),
                &format!(r#"{{"job_id":"{job}","account":"newlab","actual_cost":{job}}}"#),
            );
        }
        s.scan(&mut conn, NOW_GRACE);
        let policy = ReconcilePolicy {
            batch_size: 2,
            ..ReconcilePolicy::default()
        };
        let rep =
            reconcile::reconcile(&mut conn, &ctx_at(t(2, 1)), &policy, None, &|| false).unwrap();
        // Seven runs, two to a batch: 1+3, 5+7, 8+9, 10.
        assert_eq!((rep.unmatched, rep.waiting, rep.batches), (7, 0, 4));
        // 1 + 3 + 5 + 7 + 8 + 9 + 10.
        assert_eq!(balances(&mut conn, "newlab").1, "43.00");
        assert!(reconcile::pending(&mut conn).unwrap().is_empty());
        let idle =
            reconcile::reconcile(&mut conn, &ctx_at(t(2, 2)), &policy, None, &|| false).unwrap();
        assert_eq!((idle.unmatched, idle.batches), (0, 0));
        assert_clean(&mut conn);
    }
);

db_test!(requeued_runs_are_charged_per_run, |db| {
    let mut conn = db.conn();
    create(&mut conn, "physics", "100");
    let h = hold(&mut conn, "physics", "20", Some("301"), None);
    let s = Spool::new();
    s.cost(
        "job_301_cost.json",
        r#"{"job_id":"301","account":"physics","actual_cost":4,"job_state":"PREEMPTED"}"#,
    );
    s.scan(&mut conn, NOW_GRACE);
    s.cost(
        "job_301_cost.json",
        r#"{"job_id":"301","account":"physics","actual_cost":9,"restart_count":1}"#,
    );
    let r = s.scan(&mut conn, NOW_GRACE);
    assert_eq!(
        (r.stored, r.conflicts),
        (1, 0),
        "another run is a new record, not a conflict"
    );
    let rep = reconcile_at(&mut conn, t(2, 0));
    assert_eq!((rep.charged, rep.unmatched), (1, 1));
    assert_eq!(
        queries::hold(&mut conn, h.id).unwrap().charged.to_string(),
        "4.00"
    );
    assert_eq!(balances(&mut conn, "physics").1, "13.00");
    assert_clean(&mut conn);
});

db_test!(
    array_tasks_draw_from_one_hold_and_the_last_releases_the_rest,
    |db| {
        let mut conn = db.conn();
        create(&mut conn, "physics", "100");
        let h = hold(&mut conn, "physics", "30", Some("400"), Some(3));
        let s = Spool::new();
        s.cost(
            "job_400_0_cost.json",
            r#"{"job_id":"400_0","account":"physics","actual_cost":8}"#,
        );
        s.cost(
            "job_400_1_cost.json",
            r#"{"job_id":"400_1","account":"physics","actual_cost":9}"#,
        );
        s.scan(&mut conn, NOW_GRACE);
        reconcile_at(&mut conn, t(2, 0));
        let mid = queries::hold(&mut conn, h.id).unwrap();
        assert_eq!(
            (mid.state, mid.remaining.to_string(), mid.tasks_charged),
            (HoldState::Open, "13.00".into(), 2)
        );
        assert_eq!(
            balances(&mut conn, "physics"),
            ("100.00".into(), "17.00".into(), "13.00".into())
        );
        assert_clean(&mut conn);
        s.cost(
            "job_400_2_cost.json",
            r#"{"job_id":"400_2","account":"physics","actual_cost":7}"#,
        );
        s.scan(&mut conn, NOW_GRACE);
        reconcile_at(&mut conn, t(2, 1));
        let done = queries::hold(&mut conn, h.id).unwrap();
        assert_eq!(
            (done.state, done.charged.to_string(), done.remaining),
            (HoldState::Charged, "24.00".into(), UsdMicros::ZERO)
        );
        assert_eq!(
            balances(&mut conn, "physics"),
            ("100.00".into(), "24.00".into(), "0.00".into())
        );
        // The estimate per task is the array's estimate shared out.
        let acc = reconcile::accuracy(&mut conn, t(1, 0), t(3, 0)).unwrap();
        assert_eq!(acc.last().unwrap().mean_estimate, "10.00");
        assert_clean(&mut conn);
    }
);

db_test!(
    an_array_that_stops_short_is_released_after_its_tasks_ended,
    |db| {
        let mut conn = db.conn();
        create(&mut conn, "physics", "100");
        let h = hold(&mut conn, "physics", "30", Some("500"), Some(2));
        let s = Spool::new();
        s.cost(
            "job_500_0_cost.json",
            r#"{"job_id":"500_0","account":"physics","actual_cost":8}"#,
        );
        s.job_end("lab", "500_0", 1741003600, "", true);
        s.job_end("lab", "500_1", 1741003700, "", true);
        s.scan(&mut conn, NOW_GRACE);
        reconcile_at(&mut conn, t(3, 0));
        let policy = RecoverPolicy {
            grace: Duration::from_secs(3600),
        };
        // The last task ended at 2025-03-03 12:08 UTC; within the grace period nothing happens.
        let early = reconcile::recover(
            &mut conn,
            &ctx_at(Utc.timestamp_opt(1741003700 + 60, 0).unwrap()),
            &policy,
            &[],
        )
        .unwrap();
        assert_eq!(early.released_no_cost, 0);
        let late = reconcile::recover(
            &mut conn,
            &ctx_at(Utc.timestamp_opt(1741003700 + 7200, 0).unwrap()),
            &policy,
            &[],
        )
        .unwrap();
        assert_eq!(late.released_no_cost, 1);
        let h = queries::hold(&mut conn, h.id).unwrap();
        assert_eq!(
            (h.state, h.charged.to_string()),
            (HoldState::Released, "8.00".into())
        );
        assert_eq!(
            balances(&mut conn, "physics"),
            ("100.00".into(), "8.00".into(), "0.00".into())
        );
        assert_clean(&mut conn);
    }
);

db_test!(
    the_refund_policy_gives_back_what_the_user_did_not_cause,
    |db| {
        let mut conn = db.conn();
        create(&mut conn, "physics", "100");
        hold(&mut conn, "physics", "50", Some("601"), None);
        let s = Spool::new();
        s.cost(
            "job_601_cost.json",
            r#"{"job_id":"601","account":"physics","actual_cost":40,"job_state":"node_fail"}"#,
        );
        s.cost(
            "job_602_cost.json",
            r#"{"job_id":"602","account":"physics","actual_cost":10,"job_state":"FAILED"}"#,
        );
        s.scan(&mut conn, NOW_GRACE);
        let policy = ReconcilePolicy {
            refund_percent: Decimal::from(50),
            ..ReconcilePolicy::default()
        };
        let rep =
            reconcile::reconcile(&mut conn, &ctx_at(t(2, 0)), &policy, None, &|| false).unwrap();
        assert_eq!(rep.refunded, 1);
        // 40 + 10 charged, 20 refunded.
        assert_eq!(balances(&mut conn, "physics").1, "30.00");
        let refund = queries::entries(&mut conn, &Default::default())
            .unwrap()
            .into_iter()
            .find(|e| e.kind == EntryKind::Refund)
            .unwrap();
        assert_eq!(refund.amount.to_string(), "20.00");
        assert!(refund.reason.contains("NODE_FAIL"), "{}", refund.reason);
        assert_eq!(refund.job_id.as_deref(), Some("601"));
        assert_clean(&mut conn);
    }
);

db_test!(
    recover_releases_cancelled_and_silent_jobs_and_expires_old_holds,
    |db| {
        let mut conn = db.conn();
        create(&mut conn, "physics", "1000");
        let cancelled = hold(&mut conn, "physics", "10", None, None);
        let silent = hold(&mut conn, "physics", "20", Some("702"), None);
        let costed = hold(&mut conn, "physics", "30", Some("703"), None);
        let old = hold(&mut conn, "physics", "40", None, None);
        let asked = hold(&mut conn, "physics", "50", Some("705"), None);
        let s = Spool::new();
        s.job_end(
            "lab",
            "701",
            1741000100,
            &format!(r#","hold_id":"{}""#, cancelled.id),
            false,
        );
        s.job_end("lab", "702", 1741003600, "", true);
        s.job_end("lab", "703", 1741003600, "", true);
        s.cost(
            "job_703_cost.json",
            r#"{"job_id":"703","account":"physics","actual_cost":1}"#,
        );
        s.scan(&mut conn, NOW_GRACE);
        let policy = RecoverPolicy {
            grace: Duration::from_secs(86_400),
        };
        let sacct = [SacctJob {
            job_id: "705".into(),
            state: "TIMEOUT".into(),
            ended_at: Some(Utc.timestamp_opt(1741003600, 0).unwrap()),
        }];
        // Soon after: only the job cancelled before it started is released.
        let soon = ctx_at(Utc.timestamp_opt(1741003600 + 60, 0).unwrap());
        let r = reconcile::recover(&mut conn, &soon, &policy, &sacct).unwrap();
        assert_eq!(
            (
                r.released_cancelled,
                r.released_no_cost,
                r.released_by_sacct,
                r.expired
            ),
            (1, 0, 0, 0)
        );
        assert_eq!(
            queries::hold(&mut conn, cancelled.id).unwrap().state,
            HoldState::Released
        );
        // Two days later: the silent job's hold goes, the job with a cost keeps its hold for
        // reconcile, sacct's job goes; at the 20th every hold still open expires.
        let later = ctx_at(Utc.timestamp_opt(1741003600 + 2 * 86_400, 0).unwrap());
        let r = reconcile::recover(&mut conn, &later, &policy, &sacct).unwrap();
        assert_eq!(
            (r.released_no_cost, r.released_by_sacct, r.expired),
            (1, 1, 0)
        );
        assert_eq!(
            queries::hold(&mut conn, silent.id).unwrap().state,
            HoldState::Released
        );
        assert_eq!(
            queries::hold(&mut conn, costed.id).unwrap().state,
            HoldState::Open
        );
        assert_eq!(
            queries::hold(&mut conn, asked.id).unwrap().state,
            HoldState::Released
        );
        let r = reconcile::recover(&mut conn, &ctx_at(t(21, 0)), &policy, &sacct).unwrap();
        assert_eq!(r.expired, 2);
        assert_eq!(
            queries::hold(&mut conn, old.id).unwrap().state,
            HoldState::Expired
        );
        // Twice changes nothing.
        let before = entries(&mut conn);
        let r = reconcile::recover(&mut conn, &ctx_at(t(21, 1)), &policy, &sacct).unwrap();
        assert_eq!(
            r.released_cancelled + r.released_no_cost + r.released_by_sacct + r.expired,
            0
        );
        assert_eq!(entries(&mut conn), before);
        // The cost arrives after the hold expired: it is still charged, unmatched.
        let rep = reconcile_at(&mut conn, t(21, 2));
        assert_eq!((rep.charged, rep.unmatched), (0, 1));
        assert_clean(&mut conn);
    }
);

db_test!(accuracy_counts_runs_within_ten_percent, |db| {
    let mut conn = db.conn();
    create(&mut conn, "physics", "1000");
    hold(&mut conn, "physics", "100", Some("801"), None);
    hold(&mut conn, "physics", "100", Some("802"), None);
    let s = Spool::new();
    s.cost(
        "job_801_cost.json",
        r#"{"job_id":"801","account":"physics","actual_cost":95,"partition":"aws"}"#,
    );
    s.cost(
        "job_802_cost.json",
        r#"{"job_id":"802","account":"physics","actual_cost":50}"#,
    );
    s.cost(
        "job_803_cost.json",
        r#"{"job_id":"803","account":"physics","actual_cost":10,"estimated_cost":11}"#,
    );
    s.scan(&mut conn, NOW_GRACE);
    reconcile_at(&mut conn, t(2, 0));
    let rows = reconcile::accuracy(&mut conn, t(1, 0), t(3, 0)).unwrap();
    let total = rows.last().unwrap();
    assert_eq!((total.runs, total.within_10pct), (3, 2));
    assert_eq!(total.within_10pct_share, "66.67");
    // |100-95| + |100-50| + |11-10| = 56 over 3 runs.
    assert_eq!(total.mean_abs_error, "18.666667");
    assert_eq!(
        rows.len(),
        3,
        "two partitions of one account, and the total"
    );
    // Outside the period: nothing.
    let none = reconcile::accuracy(&mut conn, t(5, 0), t(6, 0)).unwrap();
    assert_eq!(none.last().unwrap().runs, 0);
});

db_test!(
    a_job_charged_by_hand_is_not_billed_again_by_its_export,
    |db| {
        let mut conn = db.conn();
        create(&mut conn, "physics", "100");
        let h = hold(&mut conn, "physics", "20", Some("901"), None);
        ledger::charge_hold(
            &mut conn,
            &ctx_at(t(2, 0)),
            &ledger::ChargeHold {
                hold_id: h.id,
                actual: usd("12"),
                job_id: Some("901"),
                reason: "",
                key: &format!("charge:hold-{}", h.id),
            },
        )
        .unwrap();
        let s = Spool::new();
        s.cost(
            "job_901_cost.json",
            r#"{"job_id":"901","account":"physics","actual_cost":12}"#,
        );
        s.scan(&mut conn, NOW_GRACE);
        let rep = reconcile_at(&mut conn, t(2, 1));
        assert_eq!((rep.charged, rep.unmatched, rep.waiting), (0, 0, 1));
        assert_eq!(
            reconcile::pending(&mut conn).unwrap()[0].reason,
            "already_charged"
        );
        assert_eq!(balances(&mut conn, "physics").1, "12.00");
    }
);

db_test!(one_batch_with_the_same_run_twice_stores_it_once, |db| {
    let mut conn = db.conn();
    create(&mut conn, "physics", "100");
    let s = Spool::new();
    // Three exports of job 77 in one batch: the same facts twice, and another cost.
    s.cost(
        "job_77_cost.json",
        r#"{"job_id":"77","account":"physics","actual_cost":4}"#,
    );
    s.cost(
        "job-77-asbb-reconciliation.json",
        r#"{"slurm_job_id":"77","project_id":"physics","total_cost_usd":"4.00"}"#,
    );
    s.cost("job-77-performance.json", r#"{"job_metadata":{"job_id":"77","project_id":"physics"},"cost_analysis":{"total_cost_usd":5}}"#);
    let r = s.scan(&mut conn, NOW_GRACE);
    assert_eq!(r.batches, 1);
    assert_eq!(r.stored, 1, "{r:?}");
    assert_eq!(r.duplicates + r.conflicts, 2, "{r:?}");
    let conflicts = dbspool::conflicts(&mut conn, false).unwrap();
    assert!(
        !conflicts.is_empty() && conflicts.iter().all(|c| c.run == "77#0"),
        "{conflicts:?}"
    );
    reconcile_at(&mut conn, t(2, 0));
    let used = balances(&mut conn, "physics").1;
    assert!(used == "4.00" || used == "5.00", "charged once: {used}");
    assert_clean(&mut conn);
});

/// Builds the same mixed workload on a fresh database: every way a run finds its hold,
/// arrays, requeues, overruns, refunds, runs that wait, a job charged by hand, and a run that
/// names another job's hold (which only the one-at-a-time path can explain).
fn mixed_reconcile_workload(conn: &mut DbConn, s: &Spool) {
    create(conn, "physics", "10000");
    create(conn, "chem", "500");
    let place = |conn: &mut DbConn,
                 account: &str,
                 part: Option<&str>,
                 est: &str,
                 job: Option<&str>,
                 tasks: Option<u32>| {
        let key = format!("w-{account}-{est}-{job:?}-{part:?}");
        match ledger::place_hold(
            conn,
            &ctx_at(t(1, 1)),
            &HoldRequest {
                account,
                partition: part,
                estimate: usd(est),
                buffer: Decimal::ONE,
                cluster: None,
                job_id: job,
                user_name: Some("alice"),
                expires_at: Some(t(20, 0)),
                tasks,
                key: &key,
            },
        )
        .unwrap()
        {
            HoldOutcome::Placed { hold, .. } => *hold,
            other => panic!("{other:?}"),
        }
    };
    place(conn, "physics", Some("aws"), "100", Some("1001"), None);
    place(conn, "physics", Some("aws"), "50", Some("1002"), None);
    let named = place(conn, "physics", Some("cpu"), "40", None, None);
    let by_job_end = place(conn, "chem", Some("aws"), "60", None, None);
    place(conn, "physics", Some("gpu"), "90", Some("1005"), Some(3));
    place(conn, "physics", Some("aws"), "20", Some("1006"), None);
    place(conn, "chem", None, "15", Some("1007"), None);
    let by_hand = place(conn, "physics", None, "25", Some("1011"), None);
    let other_job = place(conn, "chem", None, "5", Some("2000"), None);
    ledger::charge_hold(
        conn,
        &ctx_at(t(2, 0)),
        &ledger::ChargeHold {
            hold_id: by_hand.id,
            actual: usd("24"),
            job_id: Some("1011"),
            reason: "",
            key: "manual-1011",
        },
    )
    .unwrap();
    let costs = [
        (
            "1001",
            r#""account":"physics","actual_cost":80"#.to_string(),
        ),
        (
            "1002",
            r#""account":"physics","actual_cost":"70.25""#.to_string(),
        ),
        (
            "1003",
            format!(
                r#""account":"physics","actual_cost":30,"budget_transaction_id":"hold-{}""#,
                named.id
            ),
        ),
        (
            "1004",
            r#""account":"chem","actual_cost":61,"partition":"aws""#.to_string(),
        ),
        (
            "1005_0",
            r#""account":"physics","actual_cost":20"#.to_string(),
        ),
        (
            "1005_1",
            r#""account":"physics","actual_cost":25"#.to_string(),
        ),
        (
            "1005_2",
            r#""account":"physics","actual_cost":"30.5""#.to_string(),
        ),
        (
            "1006",
            r#""account":"physics","actual_cost":18,"job_state":"NODE_FAIL""#.to_string(),
        ),
        (
            "1008",
            r#""account":"physics","actual_cost":7,"partition":"cpu","user_id":"bob""#.to_string(),
        ),
        (
            "1009",
            r#""account":"anonymized","actual_cost":3"#.to_string(),
        ),
        ("1010", r#""account":"ghost","actual_cost":4"#.to_string()),
        (
            "1011",
            r#""account":"physics","actual_cost":24"#.to_string(),
        ),
        (
            "1012",
            r#""account":"chem","actual_cost":2,"job_state":"BOOT_FAIL","partition":"cpu""#
                .to_string(),
        ),
        (
            "2001",
            format!(
                r#""account":"chem","actual_cost":5,"budget_transaction_id":"hold-{}""#,
                other_job.id
            ),
        ),
    ];
    for (job, rest) in &costs {
        s.cost(
            &format!("job_{job}_cost.json"),
            &format!(r#"{{"job_id":"{job}",{rest}}}"#),
        );
    }
    // A requeued job: two runs of one id, each charged.
    s.cost(
        "job_1007_cost.json",
        r#"{"job_id":"1007","account":"chem","actual_cost":9}"#,
    );
    s.cost(
        "job-1007-performance.json",
        r#"{"job_id":"1007","account":"chem","actual_cost":11,"restart_count":1}"#,
    );
    s.job_end(
        "lab",
        "1004",
        1741003600,
        &format!(r#","hold_id":"hold-{}""#, by_job_end.id),
        true,
    );
    s.scan(conn, NOW_GRACE);
}

/// Everything reconcile writes, in a form two ledgers can be compared by.
fn ledger_dump(conn: &mut DbConn) -> Vec<String> {
    use asbb::db::schema::cost_records;
    use diesel::prelude::*;
    let mut out: Vec<String> = queries::entries(conn, &Default::default())
        .unwrap()
        .into_iter()
        .map(|e| format!("{e:?}"))
        .collect();
    let mut holds = queries::holds(conn, None, None, None).unwrap();
    holds.sort_by_key(|h| h.id);
    out.extend(holds.into_iter().map(|h| format!("{h:?}")));
    for name in ["physics", "chem"] {
        out.push(format!("{:?}", queries::account(conn, name).unwrap()));
    }
    type Run = (
        (String, String, String),
        (Option<i64>, Option<i64>, Option<i64>, Option<i64>),
        (Option<String>, Option<String>),
    );
    let runs: Vec<Run> = cost_records::table
        .order(cost_records::run_key)
        .select((
            (
                cost_records::run_key,
                cost_records::status,
                cost_records::status_reason,
            ),
            (
                cost_records::hold_id,
                cost_records::charge_entry_id,
                cost_records::refund_entry_id,
                cost_records::estimate_micros,
            ),
            (
                cost_records::charged_account,
                cost_records::charged_partition,
            ),
        ))
        .load(conn)
        .unwrap();
    out.extend(runs.into_iter().map(|r| format!("{r:?}")));
    out
}

db_test!(batch_and_one_by_one_book_the_same_ledger, |db| {
    let backend = db.backend;
    let fresh = || match backend {
        common::Backend::Sqlite => common::TestDb::sqlite(),
        common::Backend::Postgres => common::TestDb::postgres().unwrap(),
    };
    let mut dumps = Vec::new();
    for (batch_ledger, db) in [(true, db), (false, fresh())] {
        let mut conn = db.conn();
        let s = Spool::new();
        mixed_reconcile_workload(&mut conn, &s);
        let policy = ReconcilePolicy {
            batch_size: 4,
            batch_ledger,
            ..ReconcilePolicy::default()
        };
        let rep =
            reconcile::reconcile(&mut conn, &ctx_at(t(3, 0)), &policy, None, &|| false).unwrap();
        assert_eq!(
            (
                rep.charged,
                rep.unmatched,
                rep.refunded,
                rep.waiting,
                rep.overruns
            ),
            (9, 3, 2, 4, 2),
            "{rep:?}"
        );
        if batch_ledger {
            // Four transactions; only the one holding the run that names another job's hold
            // books one at a time.
            assert_eq!((rep.batches, rep.booked_together), (4, 3), "{rep:?}");
        } else {
            assert_eq!(rep.booked_together, 0, "{rep:?}");
        }
        assert_clean(&mut conn);
        dumps.push(ledger_dump(&mut conn));
        // Nothing left to do either way.
        let again =
            reconcile::reconcile(&mut conn, &ctx_at(t(3, 1)), &policy, None, &|| false).unwrap();
        assert_eq!((again.charged, again.unmatched), (0, 0), "{again:?}");
    }
    let (batched, single) = (&dumps[0], &dumps[1]);
    assert_eq!(batched.len(), single.len());
    for (a, b) in batched.iter().zip(single) {
        assert_eq!(a, b, "the batch path booked differently");
    }
});

#[derive(diesel::QueryableByName)]
struct Analyzed {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    analyzed: bool,
}

fn cost_records_analyzed(c: &mut DbConn) -> Option<bool> {
    let DbConn::Postgres(pg) = c else { return None };
    let r: Analyzed = diesel::RunQueryDsl::get_result(
        diesel::sql_query(
            "SELECT last_analyze IS NOT NULL AS analyzed FROM pg_stat_user_tables WHERE relname = 'cost_records'",
        ),
        pg,
    )
    .unwrap();
    Some(r.analyzed)
}

// After a bulk change the batch commands refresh PostgreSQL's statistics of the tables they
// changed, so that the planner does not keep reading them through the wrong index; below the
// threshold they leave it to autovacuum. (SQLite: nothing to do, nothing fails.)
db_test!(bulk_changes_refresh_the_planner_statistics, |db| {
    let mut c = db.conn();
    asbb::db::refresh_statistics(&mut c, &["cost_records"], asbb::db::BULK_CHANGE_ROWS - 1);
    if let Some(analyzed) = cost_records_analyzed(&mut c) {
        assert!(
            !analyzed,
            "a small change leaves the statistics to autovacuum"
        );
    }
    asbb::db::refresh_statistics(&mut c, &["cost_records"], asbb::db::BULK_CHANGE_ROWS);
    if let Some(analyzed) = cost_records_analyzed(&mut c) {
        assert!(analyzed, "a bulk change runs ANALYZE");
    }
});

// Runs are charged in job order, whatever order their files arrived in: jobs are submitted,
// and their holds placed, in job-id order, so charging in that order writes neighbouring
// pages of the holds and of the journal's indexes. The runs of one job keep their arrival
// order (a requeued job's first run is charged first).
db_test!(
    reconcile_charges_in_job_order_and_each_jobs_runs_in_arrival_order,
    |db| {
        let mut conn = db.conn();
        create(&mut conn, "physics", "1000");
        let held = hold(&mut conn, "physics", "10", Some("903"), None);
        let s = Spool::new();
        // One file per scan, so that the arrival order is the order written here.
        for (job, body_extra) in [
            ("905", ""),
            ("903", ""),
            ("901", r#","job_state":"PREEMPTED""#),
            ("904", ""),
            ("901", r#","restart_count":1"#),
            ("902", ""),
        ] {
            s.cost(
                &format!("job_{job}_cost.json"),
                &format!(r#"{{"job_id":"{job}","account":"physics","actual_cost":2{body_extra}}}"#),
            );
            assert_eq!(s.scan(&mut conn, NOW_GRACE).stored, 1, "job {job}");
        }
        let rep = reconcile_at(&mut conn, t(2, 0));
        assert_eq!((rep.charged, rep.unmatched), (1, 5));
        let mut charges: Vec<_> = queries::entries(&mut conn, &Default::default())
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == EntryKind::Charge)
            .collect();
        charges.sort_by_key(|e| e.id);
        let charged: Vec<(String, String)> = charges
            .into_iter()
            .map(|e| (e.job_id.unwrap_or_default(), e.idempotency_key))
            .collect();
        assert_eq!(
            charged,
            [
                ("901", "charge:run:901#0"),
                ("901", "charge:run:901#1"),
                ("902", "charge:run:902#0"),
                ("903", "charge:run:903#0"),
                ("904", "charge:run:904#0"),
                ("905", "charge:run:905#0"),
            ]
            .map(|(j, k)| (j.to_string(), k.to_string()))
        );
        assert_eq!(
            queries::hold(&mut conn, held.id).unwrap().state,
            HoldState::Charged
        );
        assert_clean(&mut conn);
    }
);

// Reconcile reads the runs not yet charged as a range of `(status, job_base, id)` (migration
// reconcile_job_order), and the runs another reconciler booked meanwhile by primary key: a
// filter on the status there would let the planner walk every run ever charged.
db_test!(
    reconcile_reads_runs_by_the_status_job_index_and_booked_runs_by_key,
    |db| {
        let mut conn = db.conn();
        let next = common::query_plan(
            &mut conn,
            "SELECT id FROM cost_records WHERE status = 'pending' AND job_base >= 5 \
             AND (job_base > 5 OR id > 7) ORDER BY job_base, id LIMIT 500",
        )
        .join("\n");
        assert!(next.contains("cost_records_status_job"), "{next}");
        assert!(!next.to_uppercase().contains("TEMP B-TREE"), "{next}");
        assert!(!next.contains("Sort"), "{next}");
        let booked = common::query_plan(
            &mut conn,
            "SELECT id, status FROM cost_records WHERE id IN (1, 2, 3)",
        )
        .join("\n");
        assert!(
            booked.contains("PRIMARY KEY") || booked.contains("cost_records_pkey"),
            "{booked}"
        );
    }
);

// One scan stores a backlog in name order, which is job order, whatever order the directory
// lists it in: the records' ids and index entries then follow the jobs (see
// `intake::SORT_WINDOW`). Batches of three here, so the order holds across transactions.
db_test!(a_backlog_is_stored_in_name_order, |db| {
    use diesel::prelude::*;
    let mut conn = db.conn();
    let s = Spool::new();
    let jobs = [
        "1017", "1003", "1011", "1005", "1019", "1001", "1013", "1007", "1015", "1009",
    ];
    for job in jobs {
        s.cost(
            &format!("job_{job}_cost.json"),
            &format!(r#"{{"job_id":"{job}","account":"physics","actual_cost":1}}"#),
        );
    }
    assert_eq!(s.scan(&mut conn, NOW_GRACE).stored, jobs.len() as u64);
    let stored: Vec<String> = asbb::db::schema::cost_records::table
        .order(asbb::db::schema::cost_records::id)
        .select(asbb::db::schema::cost_records::job_id)
        .load(&mut conn)
        .unwrap();
    let mut sorted = jobs.map(str::to_string).to_vec();
    sorted.sort();
    assert_eq!(stored, sorted);
});

// The learned correction of an account and partition comes from its runs as reconcile books
// them: a check's hold, the run's cost file, reconcile. Each key sees only its own runs, and
// the one-key reading (`asbb check`) agrees with what asbb-checkd caches for every key.
db_test!(
    learned_corrections_come_from_the_runs_reconcile_booked,
    |db| {
        let mut conn = db.conn();
        let s = Spool::new();
        create(&mut conn, "physics", "1000");
        create(&mut conn, "chem", "1000");
        let mut pricing = Pricing::default();
        for p in ["aws", "big"] {
            pricing.partitions.insert(
                p.into(),
                Rates {
                    cpu_hour: Decimal::new(60, 2),
                    ..Default::default()
                },
            );
        }
        // (account, partition, first job, runs, actual cost of each run); each is estimated at
        // 0.60 (one CPU for an hour).
        let runs = [
            ("physics", "aws", 100, 5, "0.75"),
            ("chem", "aws", 200, 3, "0.30"),
            ("physics", "big", 300, 3, "1.20"),
        ];
        for (account, partition, first, n, actual) in runs {
            for job in first..first + n {
                let a = check::check(
                    &mut conn,
                    &ctx_at(t(1, 2)),
                    &pricing,
                    &CheckRequest {
                        account: account.into(),
                        partition: partition.into(),
                        resources: Resources {
                            nodes: 1,
                            cpus: 1,
                            ..Default::default()
                        },
                        time_limit: Some(TimeLimit::Seconds(3600)),
                        job_id: Some(job.to_string()),
                        ..Default::default()
                    },
                )
                .unwrap();
                assert!(a.available, "{a:?}");
                s.cost(
                    &format!("job_{job}_cost.json"),
                    &format!(
                        r#"{{"job_id":"{job}","account":"{account}","actual_cost":"{actual}"}}"#
                    ),
                );
            }
        }
        // A run charged without a hold teaches nothing.
        s.cost(
            "job_999_cost.json",
            r#"{"job_id":"999","account":"physics","actual_cost":"9"}"#,
        );
        assert_eq!(s.scan(&mut conn, NOW_GRACE).stored, 12);
        let rep = reconcile_at(&mut conn, t(2, 0));
        assert_eq!((rep.charged, rep.unmatched), (11, 1));
        let since = t(1, 0);
        let one = |conn: &mut DbConn, a: &str, p: &str| {
            let h = check::history(conn, a, p, since).unwrap();
            (h.runs, h.estimated.to_string(), h.actual.to_string())
        };
        assert_eq!(
            one(&mut conn, "physics", "aws"),
            (5, "3.00".into(), "3.75".into())
        );
        assert_eq!(
            one(&mut conn, "chem", "aws"),
            (3, "1.80".into(), "0.90".into())
        );
        assert_eq!(
            one(&mut conn, "physics", "big"),
            (3, "1.80".into(), "3.60".into())
        );
        assert_eq!(
            one(&mut conn, "chem", "big"),
            (0, "0.00".into(), "0.00".into())
        );
        let all = check::histories(&mut conn, since).unwrap();
        assert_eq!(all.len(), 3, "{all:?}");
        for ((a, p), h) in &all {
            let single: History = check::history(&mut conn, a, p, since).unwrap();
            assert_eq!(&single, h, "{a}/{p}");
        }
        // Reconciled before the window: forgotten.
        assert_eq!(
            check::history(&mut conn, "physics", "aws", t(3, 0))
                .unwrap()
                .runs,
            0
        );
        assert_clean(&mut conn);
    }
);
