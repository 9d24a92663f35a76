//! Behaviour of the ledger operations, queries and audit, on SQLite and (when
//! `ASBB_TEST_POSTGRES_URL` is set) PostgreSQL.

mod common;

use asbb::db::ledger::{
    self, AccountUpdate, BatchCharge, BatchResult, BatchTarget, ChargeHold, ChargeOutcome,
    ChargeUnmatched, HoldOutcome, HoldRequest, LedgerError, MoneyOp, NewAccount, OpContext,
};
use asbb::db::models::{Account, Hold};
use asbb::db::queries::{self, EntryFilter};
use asbb::db::{audit, DbConn, DbError};
use asbb::domain::{
    AccountName, AccountStatus, DenyReason, EntryKind, HoldState, PartitionName, UsdMicros,
};
use chrono::{DateTime, Duration, TimeZone, Utc};
use common::{index_columns, query_plan, Backend, TestDb};
use diesel::connection::SimpleConnection;
use rust_decimal::Decimal;

// ---------------------------------------------------------------------------------------------
// Helpers

/// 2025-03-DD HH:00 UTC: inside every test account's active period (2025).
fn day(d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, d, h, 0, 0).unwrap()
}

fn t0() -> DateTime<Utc> {
    day(1, 12)
}

fn ctx() -> OpContext {
    OpContext::at("tester", t0())
}

fn ctx_at(t: DateTime<Utc>) -> OpContext {
    OpContext::at("tester", t)
}

fn usd(s: &str) -> UsdMicros {
    UsdMicros::parse(s).unwrap()
}

fn micros(m: i64) -> UsdMicros {
    UsdMicros::from_micros(m).unwrap()
}

fn new_account(name: &str, budget: &str) -> NewAccount {
    NewAccount {
        name: AccountName::new(name).unwrap(),
        display_name: format!("Project {name}"),
        description: String::new(),
        starts_at: Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
        ends_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        overdraft: UsdMicros::ZERO,
        budget: usd(budget),
    }
}

fn create(conn: &mut DbConn, name: &str, budget: &str) -> Account {
    ledger::create_account(conn, &ctx(), &new_account(name, budget)).unwrap()
}

fn account(conn: &mut DbConn, name: &str) -> Account {
    queries::account(conn, name).unwrap()
}

fn op<'a>(account: &'a str, amount: UsdMicros, reason: &'a str, key: &'a str) -> MoneyOp<'a> {
    MoneyOp {
        account,
        amount,
        reason,
        key,
        job_id: None,
        partition: None,
    }
}

fn hold_req<'a>(account: &'a str, estimate: &str, key: &'a str) -> HoldRequest<'a> {
    HoldRequest {
        account,
        partition: None,
        estimate: usd(estimate),
        buffer: Decimal::ONE,
        cluster: None,
        job_id: None,
        user_name: None,
        expires_at: None,
        tasks: None,
        key,
    }
}

/// Places a hold that must succeed (and not be a replay).
fn place(conn: &mut DbConn, c: &OpContext, req: &HoldRequest<'_>) -> Hold {
    match ledger::place_hold(conn, c, req).unwrap() {
        HoldOutcome::Placed {
            hold,
            replayed: false,
            ..
        } => *hold,
        other => panic!("expected a new hold for key {}, got {other:?}", req.key),
    }
}

/// Places a hold that must be denied; returns the reason.
fn deny(conn: &mut DbConn, c: &OpContext, req: &HoldRequest<'_>) -> DenyReason {
    match ledger::place_hold(conn, c, req).unwrap() {
        HoldOutcome::Denied(d) => {
            assert!(!d.message.is_empty());
            d.reason
        }
        other => panic!("expected a denial for key {}, got {other:?}", req.key),
    }
}

fn charge(conn: &mut DbConn, hold_id: i64, actual: &str, key: &str) -> ChargeOutcome {
    ledger::charge_hold(
        conn,
        &ctx(),
        &ChargeHold {
            hold_id,
            actual: usd(actual),
            job_id: None,
            reason: "",
            key,
        },
    )
    .unwrap()
}

fn unmatched<'a>(account: &'a str, amount: UsdMicros, key: &'a str) -> ChargeUnmatched<'a> {
    ChargeUnmatched {
        account,
        amount,
        partition: None,
        cluster: None,
        job_id: None,
        user_name: None,
        reason: "",
        key,
    }
}

fn all_entries(conn: &mut DbConn, account: &str) -> Vec<asbb::db::models::Entry> {
    queries::entries(
        conn,
        &EntryFilter {
            account: Some(account.into()),
            ..Default::default()
        },
    )
    .unwrap()
}

fn audit_kinds(conn: &mut DbConn) -> Vec<&'static str> {
    let report = audit::verify(conn, None, &mut |_| {}).unwrap();
    let mut kinds: Vec<&'static str> = report.discrepancies.iter().map(|d| d.kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds
}

fn assert_audit_clean(conn: &mut DbConn) -> audit::AuditReport {
    let report = audit::verify(conn, None, &mut |_| {}).unwrap();
    assert!(
        report.is_clean(),
        "audit found discrepancies: {:#?}",
        report.discrepancies
    );
    report
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, LedgerError>, want_field: &str) {
    match result {
        Err(LedgerError::Invalid { field, message }) => {
            assert_eq!(field, want_field, "wrong field named (message: {message})");
            assert!(!message.is_empty());
        }
        other => panic!("expected Invalid {{ field: {want_field} }}, got {other:?}"),
    }
}

fn assert_hold_resolved<T: std::fmt::Debug>(
    result: Result<T, LedgerError>,
    want_id: i64,
    want: HoldState,
) {
    match result {
        Err(LedgerError::HoldResolved { id, state }) => {
            assert_eq!((id, state), (want_id, want));
        }
        other => panic!("expected HoldResolved for hold-{want_id} ({want}), got {other:?}"),
    }
}

fn assert_conflict<T: std::fmt::Debug>(result: Result<T, LedgerError>, want_key: &str) -> i64 {
    match result {
        Err(LedgerError::IdempotencyConflict { key, entry }) => {
            assert_eq!(key, want_key);
            entry
        }
        other => panic!("expected IdempotencyConflict for {want_key}, got {other:?}"),
    }
}

fn drop_append_only_triggers(conn: &mut DbConn, backend: Backend) {
    let sql = match backend {
        Backend::Sqlite => "DROP TRIGGER journal_no_update; DROP TRIGGER journal_no_delete;",
        // On PostgreSQL one trigger covers both UPDATE and DELETE.
        Backend::Postgres => "DROP TRIGGER journal_no_update ON journal;",
    };
    conn.batch_execute(sql).unwrap();
}

/// A bit of everything on two accounts, leaving one hold open on each.
fn mixed_workload(conn: &mut DbConn) {
    create(conn, "alpha", "1000");
    create(conn, "beta", "500");
    let c = ctx();
    ledger::credit(conn, &c, &op("alpha", usd("250"), "grant", "w-credit")).unwrap();
    ledger::adjust(
        conn,
        &c,
        &op("beta", usd("-20.5"), "correction", "w-adjust"),
    )
    .unwrap();
    let mut r = hold_req("alpha", "100", "w-h1");
    r.partition = Some("gpu");
    r.buffer = Decimal::new(12, 1);
    let h1 = place(conn, &c, &r);
    charge(conn, h1.id, "90", "w-c1");
    let mut r = hold_req("alpha", "10", "w-h2");
    r.partition = Some("cpu");
    let h2 = place(conn, &c, &r);
    charge(conn, h2.id, "15", "w-c2");
    let h3 = place(conn, &c, &hold_req("beta", "30", "w-h3"));
    ledger::release_hold(conn, &c, h3.id, "job cancelled", "w-r3").unwrap();
    let mut r = hold_req("beta", "5", "w-h4");
    r.expires_at = Some(t0() + Duration::hours(1));
    let h4 = place(conn, &c, &r);
    ledger::expire_hold(conn, &ctx_at(t0() + Duration::hours(2)), h4.id, "w-e4").unwrap();
    ledger::charge_without_hold(conn, &c, &unmatched("beta", usd("3.25"), "w-u1")).unwrap();
    ledger::refund(conn, &c, &op("alpha", usd("5"), "failed run", "w-refund")).unwrap();
    let mut r = hold_req("alpha", "40", "w-h5");
    r.partition = Some("gpu");
    place(conn, &c, &r);
    place(conn, &c, &hold_req("beta", "7", "w-h6"));
}

// ---------------------------------------------------------------------------------------------
// Accounts

db_test!(create_account_credits_the_budget, |db| {
    let mut conn = db.conn();
    let a = create(&mut conn, "proj-a", "1000");
    assert_eq!(a.name, "proj-a");
    assert_eq!(a.display_name, "Project proj-a");
    assert_eq!(a.status, AccountStatus::Active);
    assert_eq!(a.balances.credited, usd("1000"));
    assert_eq!(a.balances.charged, UsdMicros::ZERO);
    assert_eq!(a.balances.held, UsdMicros::ZERO);
    assert_eq!(a.available(), usd("1000"));
    assert_eq!(a.entry_count, 1);
    assert_eq!(
        account(&mut conn, "proj-a"),
        a,
        "returned record equals the stored one"
    );
    let entries = all_entries(&mut conn, "proj-a");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].kind, EntryKind::Credit);
    assert_eq!(entries[0].amount, usd("1000"));
    assert_eq!(entries[0].seq, 1);
    assert_eq!(entries[0].actor, "tester");
    assert_eq!(entries[0].effective_at, t0());

    let empty = create(&mut conn, "proj-empty", "0");
    assert_eq!(empty.entry_count, 0, "a zero budget writes no entry");
    assert_eq!(empty.available(), UsdMicros::ZERO);
    let names: Vec<String> = queries::accounts(&mut conn, None)
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["proj-a", "proj-empty"]);
    assert_audit_clean(&mut conn);
});

db_test!(create_account_refuses_bad_input, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "1000");
    match ledger::create_account(&mut conn, &ctx(), &new_account("proj-a", "5")) {
        Err(LedgerError::AccountExists(n)) => assert_eq!(n, "proj-a"),
        other => panic!("expected AccountExists, got {other:?}"),
    }
    assert_eq!(
        account(&mut conn, "proj-a").balances.credited,
        usd("1000"),
        "not credited twice"
    );

    let mut bad = new_account("proj-b", "10");
    bad.ends_at = bad.starts_at - Duration::days(1);
    assert_invalid(ledger::create_account(&mut conn, &ctx(), &bad), "--end");
    bad.ends_at = bad.starts_at;
    assert_invalid(ledger::create_account(&mut conn, &ctx(), &bad), "--end");

    let mut bad = new_account("proj-b", "10");
    bad.budget = usd("-1");
    assert_invalid(ledger::create_account(&mut conn, &ctx(), &bad), "--budget");
    let mut bad = new_account("proj-b", "10");
    bad.overdraft = usd("-0.01");
    assert_invalid(
        ledger::create_account(&mut conn, &ctx(), &bad),
        "--overdraft",
    );
    let mut bad = new_account("proj-b", "10");
    bad.display_name = "  ".into();
    assert_invalid(ledger::create_account(&mut conn, &ctx(), &bad), "--name");

    assert!(matches!(
        queries::account(&mut conn, "proj-b"),
        Err(LedgerError::UnknownAccount(n)) if n == "proj-b"
    ));
    assert_eq!(queries::accounts(&mut conn, None).unwrap().len(), 1);
});

db_test!(update_account_records_changes, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "100");
    let upd = AccountUpdate {
        status: Some(AccountStatus::Suspended),
        overdraft: Some(usd("25")),
        reason: "overspending".into(),
        ..Default::default()
    };
    let a = ledger::update_account(&mut conn, &ctx(), "proj-a", &upd).unwrap();
    assert_eq!(a.status, AccountStatus::Suspended);
    assert_eq!(a.overdraft, usd("25"));
    assert_eq!(a.available(), usd("125"));
    let all = queries::account_changes(&mut conn, "proj-a").unwrap();
    // The first six record the settings the account was created with.
    assert_eq!(all.len(), 8);
    assert!(all[..6]
        .iter()
        .all(|c| c.old_value.is_empty() && c.reason == "account created"));
    let changes = &all[6..];
    let fields: Vec<(&str, &str, &str)> = changes
        .iter()
        .map(|c| (c.field.as_str(), c.old_value.as_str(), c.new_value.as_str()))
        .collect();
    assert_eq!(
        fields,
        [
            ("overdraft", "0.00", "25.00"),
            ("status", "active", "suspended")
        ]
    );
    assert!(changes
        .iter()
        .all(|c| c.reason == "overspending" && c.actor == "tester"));

    let upd = AccountUpdate {
        status: Some(AccountStatus::Closed),
        ..Default::default()
    };
    assert_invalid(
        ledger::update_account(&mut conn, &ctx(), "proj-a", &upd),
        "--status",
    );
    let upd = AccountUpdate {
        ends_at: Some(Utc.with_ymd_and_hms(2024, 6, 1, 0, 0, 0).unwrap()),
        ..Default::default()
    };
    assert_invalid(
        ledger::update_account(&mut conn, &ctx(), "proj-a", &upd),
        "--end",
    );
});

// ---------------------------------------------------------------------------------------------
// Money in and out

db_test!(credit_adjust_and_refund, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "1000");
    let c = ctx();
    let p = ledger::credit(
        &mut conn,
        &c,
        &op("proj-a", usd("250"), "grant", "k-credit"),
    )
    .unwrap();
    assert!(!p.replayed);
    assert_eq!(p.entry.kind, EntryKind::Credit);
    assert_eq!(p.entry.amount, usd("250"));
    assert_eq!(p.entry.effect.credited, usd("250"));
    assert_eq!(p.entry.seq, 2);
    assert_eq!(p.account.balances.credited, usd("1250"));

    let p = ledger::adjust(&mut conn, &c, &op("proj-a", usd("-100"), "typo", "k-adj1")).unwrap();
    assert_eq!(p.entry.kind, EntryKind::Adjustment);
    assert_eq!(p.entry.effect.credited, usd("-100"));
    assert_eq!(p.account.balances.credited, usd("1150"));
    let p = ledger::adjust(&mut conn, &c, &op("proj-a", usd("50.5"), "bonus", "k-adj2")).unwrap();
    assert_eq!(p.account.balances.credited, usd("1200.5"));

    assert_invalid(
        ledger::adjust(
            &mut conn,
            &c,
            &op("proj-a", UsdMicros::ZERO, "nothing", "k-adj0"),
        ),
        "AMOUNT",
    );
    assert_invalid(
        ledger::adjust(&mut conn, &c, &op("proj-a", usd("5"), " ", "k-adj3")),
        "--reason",
    );
    assert_invalid(
        ledger::credit(
            &mut conn,
            &c,
            &op("proj-a", UsdMicros::ZERO, "", "k-credit0"),
        ),
        "AMOUNT",
    );
    assert_invalid(
        ledger::credit(&mut conn, &c, &op("proj-a", usd("-5"), "", "k-credit-neg")),
        "AMOUNT",
    );
    assert_invalid(
        ledger::credit(&mut conn, &c, &op("proj-a", usd("5"), "", "")),
        "--idempotency-key",
    );
    assert_invalid(
        ledger::credit(&mut conn, &c, &op("proj-a", usd("5"), "", "has space")),
        "--idempotency-key",
    );
    assert!(matches!(
        ledger::credit(&mut conn, &c, &op("nobody", usd("5"), "", "k-nobody")),
        Err(LedgerError::UnknownAccount(n)) if n == "nobody"
    ));

    // Refunds need a reason and cannot exceed what was charged.
    assert_invalid(
        ledger::refund(&mut conn, &c, &op("proj-a", usd("1"), "", "k-ref0")),
        "--reason",
    );
    assert_invalid(
        ledger::refund(&mut conn, &c, &op("proj-a", usd("1"), "failed", "k-ref1")),
        "AMOUNT",
    );
    ledger::charge_without_hold(&mut conn, &c, &unmatched("proj-a", usd("40"), "k-charge"))
        .unwrap();
    assert_invalid(
        ledger::refund(
            &mut conn,
            &c,
            &op("proj-a", usd("40.000001"), "failed", "k-ref2"),
        ),
        "AMOUNT",
    );
    let mut r = op("proj-a", usd("10"), "node failure", "k-ref3");
    r.job_id = Some("4242");
    let p = ledger::refund(&mut conn, &c, &r).unwrap();
    assert_eq!(p.entry.kind, EntryKind::Refund);
    assert_eq!(p.entry.effect.charged, usd("-10"));
    assert_eq!(p.entry.job_id.as_deref(), Some("4242"));
    assert_eq!(p.entry.reason, "node failure");
    let a = account(&mut conn, "proj-a");
    assert_eq!(a.balances.charged, usd("30"));
    assert_eq!(a.balances.credited, usd("1200.5"));
    assert_eq!(a.available(), usd("1170.5"));
    // initial + credit + 2 adjustments + charge + refund
    assert_eq!(a.entry_count, 6);
    assert_audit_clean(&mut conn);
});

db_test!(closed_account_refuses_new_money, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "100");
    let closed = ledger::close_account(&mut conn, &ctx(), "proj-a", "grant ended").unwrap();
    assert_eq!(closed.status, AccountStatus::Closed);
    for result in [
        ledger::credit(&mut conn, &ctx(), &op("proj-a", usd("5"), "", "k1")),
        ledger::adjust(&mut conn, &ctx(), &op("proj-a", usd("5"), "why", "k2")),
    ] {
        match result {
            Err(LedgerError::AccountState {
                account, status, ..
            }) => {
                assert_eq!(
                    (account.as_str(), status),
                    ("proj-a", AccountStatus::Closed)
                );
            }
            other => panic!("expected AccountState, got {other:?}"),
        }
    }
    let upd = AccountUpdate {
        description: Some("x".into()),
        ..Default::default()
    };
    assert!(matches!(
        ledger::update_account(&mut conn, &ctx(), "proj-a", &upd),
        Err(LedgerError::AccountState {
            status: AccountStatus::Closed,
            ..
        })
    ));
    assert_eq!(
        deny(&mut conn, &ctx(), &hold_req("proj-a", "1", "k3")),
        DenyReason::AccountInactive
    );
    let a = account(&mut conn, "proj-a");
    assert_eq!((a.entry_count, a.balances.credited), (1, usd("100")));
});

// ---------------------------------------------------------------------------------------------
// Holds

db_test!(hold_reserves_estimate_times_buffer, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "1000");
    let mut r = hold_req("proj-a", "100", "h1");
    r.buffer = Decimal::new(12, 1);
    r.cluster = Some("aws-east");
    r.job_id = Some("1001");
    r.user_name = Some("alice");
    r.partition = Some("gpu");
    r.expires_at = Some(day(2, 12));
    let (hold, account_after) = match ledger::place_hold(&mut conn, &ctx(), &r).unwrap() {
        HoldOutcome::Placed {
            hold,
            replayed: false,
            account,
        } => (*hold, *account),
        other => panic!("{other:?}"),
    };
    assert_eq!(hold.estimate, usd("100"));
    assert_eq!(hold.buffer, "1.2");
    assert_eq!(hold.amount, usd("120.00"));
    assert_eq!(hold.remaining, usd("120"));
    assert_eq!(hold.charged, UsdMicros::ZERO);
    assert_eq!(hold.state, HoldState::Open);
    assert_eq!(hold.account, "proj-a");
    assert_eq!(hold.job_id.as_deref(), Some("1001"));
    assert_eq!(hold.expires_at, Some(day(2, 12)));
    assert_eq!(hold.created_at, t0());
    assert_eq!(hold.resolved_at, None);
    assert_eq!(hold.reference(), format!("hold-{}", hold.id));
    assert_eq!(account_after.balances.held, usd("120"));
    assert_eq!(account_after.available(), usd("880"));
    assert_eq!(account_after.entry_count, 2);
    assert_eq!(account(&mut conn, "proj-a"), account_after);
    assert_eq!(queries::hold(&mut conn, hold.id).unwrap(), hold);

    let e = &all_entries(&mut conn, "proj-a")[0];
    assert_eq!(e.kind, EntryKind::Hold);
    assert_eq!(e.amount, usd("120"));
    assert_eq!(e.effect.held, usd("120"));
    assert_eq!(e.hold_id, Some(hold.id));
    assert_eq!(e.hold_state, Some(HoldState::Open));
    assert_eq!(e.partition.as_deref(), Some("gpu"));
    assert_eq!(e.user_name.as_deref(), Some("alice"));

    // The buffer must be between 1 and 100, and the amount above zero.
    let mut bad = hold_req("proj-a", "1", "h-bad");
    bad.buffer = Decimal::new(9, 1);
    assert_invalid(ledger::place_hold(&mut conn, &ctx(), &bad), "--buffer");
    assert_invalid(
        ledger::place_hold(&mut conn, &ctx(), &hold_req("proj-a", "0", "h-zero")),
        "--amount",
    );
    assert_invalid(
        ledger::place_hold(&mut conn, &ctx(), &hold_req("proj-a", "-1", "h-neg")),
        "--amount",
    );
    assert_eq!(account(&mut conn, "proj-a").entry_count, 2);
});

db_test!(hold_denials_name_the_reason, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "100");
    let c = ctx();

    // Insufficient funds: 90 × 1.2 = 108 > 100. Nothing is written.
    let mut r = hold_req("proj-a", "90", "d1");
    r.buffer = Decimal::new(12, 1);
    assert_eq!(deny(&mut conn, &c, &r), DenyReason::InsufficientFunds);
    let a = account(&mut conn, "proj-a");
    assert_eq!((a.entry_count, a.balances.held), (1, UsdMicros::ZERO));
    assert!(queries::holds(&mut conn, Some("proj-a"), None, None)
        .unwrap()
        .is_empty());
    // Exactly the available amount fits; one micro-dollar more does not.
    let h = place(&mut conn, &c, &hold_req("proj-a", "100", "d1b"));
    ledger::release_hold(&mut conn, &c, h.id, "", "d1c").unwrap();
    assert_eq!(
        deny(&mut conn, &c, &hold_req("proj-a", "100.000001", "d1d")),
        DenyReason::InsufficientFunds
    );

    // Partition limit: 50 in gpu, other partitions unaffected.
    let gpu = PartitionName::new("gpu").unwrap();
    ledger::set_partition_limit(&mut conn, &c, "proj-a", &gpu, Some(usd("50"))).unwrap();
    let mut r = hold_req("proj-a", "40", "d2");
    r.partition = Some("gpu");
    place(&mut conn, &c, &r);
    let mut r = hold_req("proj-a", "10.000001", "d3");
    r.partition = Some("gpu");
    assert_eq!(deny(&mut conn, &c, &r), DenyReason::PartitionLimit);
    let mut r = hold_req("proj-a", "10", "d4");
    r.partition = Some("cpu");
    place(&mut conn, &c, &r);
    let mut r = hold_req("proj-a", "10", "d4b");
    r.partition = Some("gpu");
    place(&mut conn, &c, &r);
    // Removing the limit lifts the denial.
    ledger::set_partition_limit(&mut conn, &c, "proj-a", &gpu, None).unwrap();
    let mut r = hold_req("proj-a", "10", "d3");
    r.partition = Some("gpu");
    place(&mut conn, &c, &r);
    assert_eq!(account(&mut conn, "proj-a").balances.held, usd("70"));

    // Suspended, then active again.
    let suspend = AccountUpdate {
        status: Some(AccountStatus::Suspended),
        ..Default::default()
    };
    ledger::update_account(&mut conn, &c, "proj-a", &suspend).unwrap();
    assert_eq!(
        deny(&mut conn, &c, &hold_req("proj-a", "1", "d5")),
        DenyReason::AccountInactive
    );
    let resume = AccountUpdate {
        status: Some(AccountStatus::Active),
        ..Default::default()
    };
    ledger::update_account(&mut conn, &c, "proj-a", &resume).unwrap();
    place(&mut conn, &c, &hold_req("proj-a", "1", "d5"));

    // Outside the active period [2025-01-01, 2026-01-01).
    let before = ctx_at(Utc.with_ymd_and_hms(2024, 12, 31, 23, 59, 59).unwrap());
    assert_eq!(
        deny(&mut conn, &before, &hold_req("proj-a", "1", "d6")),
        DenyReason::AccountInactive
    );
    let at_end = ctx_at(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
    assert_eq!(
        deny(&mut conn, &at_end, &hold_req("proj-a", "1", "d7")),
        DenyReason::AccountExpired
    );
    let first_instant = ctx_at(Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap());
    place(&mut conn, &first_instant, &hold_req("proj-a", "1", "d8"));

    // Unknown account.
    assert_eq!(
        deny(&mut conn, &c, &hold_req("nobody", "1", "d9")),
        DenyReason::UnknownAccount
    );

    // Overdraft lets a hold beyond the budget through.
    let mut od = new_account("proj-od", "100");
    od.overdraft = usd("50");
    ledger::create_account(&mut conn, &c, &od).unwrap();
    create(&mut conn, "proj-nood", "100");
    assert_eq!(
        deny(&mut conn, &c, &hold_req("proj-nood", "140", "d10")),
        DenyReason::InsufficientFunds
    );
    place(&mut conn, &c, &hold_req("proj-od", "140", "d11"));
    let a = account(&mut conn, "proj-od");
    assert_eq!(a.balances.held, usd("140"));
    assert_eq!(a.available(), usd("10"));
    assert_eq!(
        deny(&mut conn, &c, &hold_req("proj-od", "10.01", "d12")),
        DenyReason::InsufficientFunds
    );
    assert_audit_clean(&mut conn);
});

// ---------------------------------------------------------------------------------------------
// Idempotency

db_test!(credit_is_idempotent, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "100");
    create(&mut conn, "proj-b", "100");
    let c = ctx();
    let first = ledger::credit(&mut conn, &c, &op("proj-a", usd("25"), "grant", "k1")).unwrap();
    let before = account(&mut conn, "proj-a");
    // A retry, even at another time, replays the first result.
    let again = ledger::credit(
        &mut conn,
        &ctx_at(day(5, 0)),
        &op("proj-a", usd("25"), "grant", "k1"),
    )
    .unwrap();
    assert!(again.replayed);
    assert_eq!(again.entry, first.entry);
    assert_eq!(again.account, before);
    assert_eq!(
        account(&mut conn, "proj-a"),
        before,
        "no second entry, balances unchanged"
    );
    assert_eq!(before.entry_count, 2);
    assert_eq!(before.balances.credited, usd("125"));

    let id = assert_conflict(
        ledger::credit(&mut conn, &c, &op("proj-a", usd("26"), "grant", "k1")),
        "k1",
    );
    assert_eq!(id, first.entry.id);
    assert_conflict(
        ledger::credit(&mut conn, &c, &op("proj-b", usd("25"), "grant", "k1")),
        "k1",
    );
    assert_conflict(
        ledger::adjust(&mut conn, &c, &op("proj-a", usd("25"), "grant", "k1")),
        "k1",
    );
    assert_eq!(account(&mut conn, "proj-a"), before);
    assert_eq!(account(&mut conn, "proj-b").entry_count, 1);
});

db_test!(hold_is_idempotent, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "1000");
    let c = ctx();
    let mut r = hold_req("proj-a", "100", "hk");
    r.buffer = Decimal::new(12, 1);
    r.job_id = Some("77");
    let first = place(&mut conn, &c, &r);
    let before = account(&mut conn, "proj-a");
    match ledger::place_hold(&mut conn, &c, &r).unwrap() {
        HoldOutcome::Placed {
            hold,
            replayed,
            account,
        } => {
            assert!(replayed);
            assert_eq!(*hold, first);
            assert_eq!(*account, before);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(account(&mut conn, "proj-a"), before);
    assert_eq!(before.balances.held, usd("120"));
    assert_eq!(
        queries::holds(&mut conn, Some("proj-a"), None, None)
            .unwrap()
            .len(),
        1
    );

    let mut other = r.clone();
    other.estimate = usd("101");
    assert_conflict(ledger::place_hold(&mut conn, &c, &other), "hk");
    let mut other = r.clone();
    other.job_id = Some("78");
    assert_conflict(ledger::place_hold(&mut conn, &c, &other), "hk");
    assert_eq!(account(&mut conn, "proj-a"), before);
});

db_test!(charge_hold_is_idempotent, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "1000");
    let h = place(&mut conn, &ctx(), &hold_req("proj-a", "100", "h1"));
    let first = charge(&mut conn, h.id, "60", "c1");
    assert!(!first.replayed);
    let before = account(&mut conn, "proj-a");
    let again = charge(&mut conn, h.id, "60", "c1");
    assert!(again.replayed);
    assert_eq!(again.charge, first.charge);
    assert_eq!(again.release, first.release);
    assert_eq!(again.hold, first.hold);
    assert_eq!(again.overrun, first.overrun);
    assert_eq!(again.account, before);
    assert_eq!(account(&mut conn, "proj-a"), before);
    assert_eq!(before.entry_count, 4);
    assert_eq!(before.balances.charged, usd("60"));

    assert_conflict(
        ledger::charge_hold(
            &mut conn,
            &ctx(),
            &ChargeHold {
                hold_id: h.id,
                actual: usd("61"),
                job_id: None,
                reason: "",
                key: "c1",
            },
        ),
        "c1",
    );
    assert_eq!(account(&mut conn, "proj-a"), before);
});

db_test!(charge_without_hold_is_idempotent, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "100");
    let mut req = unmatched("proj-a", usd("12.5"), "u1");
    req.job_id = Some("88");
    let first = ledger::charge_without_hold(&mut conn, &ctx(), &req).unwrap();
    assert_eq!(first.overrun, UsdMicros::ZERO);
    let before = account(&mut conn, "proj-a");
    let again = ledger::charge_without_hold(&mut conn, &ctx(), &req).unwrap();
    assert!(again.replayed);
    assert_eq!(again.charge, first.charge);
    assert_eq!(again.hold, None);
    assert_eq!(again.release, None);
    assert_eq!(
        again.overrun, first.overrun,
        "a replayed unmatched charge must report the same overrun as the first call"
    );
    assert_eq!(account(&mut conn, "proj-a"), before);
    let mut other = req.clone();
    other.amount = usd("12.6");
    assert_conflict(ledger::charge_without_hold(&mut conn, &ctx(), &other), "u1");
    assert_eq!(account(&mut conn, "proj-a"), before);
});

db_test!(release_hold_is_idempotent, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "1000");
    let h1 = place(&mut conn, &ctx(), &hold_req("proj-a", "100", "h1"));
    let h2 = place(&mut conn, &ctx(), &hold_req("proj-a", "50", "h2"));
    let first = ledger::release_hold(&mut conn, &ctx(), h1.id, "cancelled", "r1").unwrap();
    assert!(!first.replayed);
    let before = account(&mut conn, "proj-a");
    let again = ledger::release_hold(&mut conn, &ctx(), h1.id, "cancelled", "r1").unwrap();
    assert!(again.replayed);
    assert_eq!(again.entry, first.entry);
    assert_eq!(again.hold, first.hold);
    assert_eq!(account(&mut conn, "proj-a"), before);
    assert_eq!(before.balances.held, usd("50"));
    // The same key for another hold is another request.
    assert_conflict(
        ledger::release_hold(&mut conn, &ctx(), h2.id, "cancelled", "r1"),
        "r1",
    );
    // A new key for the released hold: it resolves only once.
    assert_hold_resolved(
        ledger::release_hold(&mut conn, &ctx(), h1.id, "again", "r2"),
        h1.id,
        HoldState::Released,
    );
    assert_eq!(account(&mut conn, "proj-a"), before);
    assert_eq!(
        queries::hold(&mut conn, h2.id).unwrap().state,
        HoldState::Open
    );
});

// ---------------------------------------------------------------------------------------------
// Charges

db_test!(charge_below_the_hold_releases_the_remainder, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "1000");
    let mut r = hold_req("proj-a", "100", "h1");
    r.buffer = Decimal::new(12, 1);
    r.partition = Some("gpu");
    let h = place(&mut conn, &ctx(), &r);
    let out = ledger::charge_hold(
        &mut conn,
        &ctx_at(day(2, 0)),
        &ChargeHold {
            hold_id: h.id,
            actual: usd("90"),
            job_id: Some("5001"),
            reason: "",
            key: "c1",
        },
    )
    .unwrap();
    assert_eq!(out.charge.kind, EntryKind::Charge);
    assert_eq!(out.charge.amount, usd("90"));
    assert_eq!(out.charge.effect.charged, usd("90"));
    assert_eq!(out.charge.effect.held, usd("-90"));
    assert_eq!(out.charge.flags, "");
    assert_eq!(out.charge.job_id.as_deref(), Some("5001"));
    let release = out.release.expect("the remainder is released");
    assert_eq!(release.kind, EntryKind::Release);
    assert_eq!(release.amount, usd("30"));
    assert_eq!(release.effect.held, usd("-30"));
    assert_eq!(release.hold_id, Some(h.id));
    assert_eq!(release.seq, out.charge.seq + 1);
    assert_eq!(out.overrun, UsdMicros::ZERO);
    let hold = out.hold.unwrap();
    assert_eq!(hold.state, HoldState::Charged);
    assert_eq!(hold.remaining, UsdMicros::ZERO);
    assert_eq!(hold.charged, usd("90"));
    assert_eq!(
        hold.job_id.as_deref(),
        Some("5001"),
        "the charge tells the hold its job"
    );
    assert_eq!(hold.resolved_at, Some(day(2, 0)));
    let a = account(&mut conn, "proj-a");
    assert_eq!(a.balances.held, UsdMicros::ZERO);
    assert_eq!(a.balances.charged, usd("90"));
    assert_eq!(a.available(), usd("910"));
    assert_eq!(a.entry_count, 4);
    assert_eq!(a.updated_at, day(2, 0));
    assert_eq!(
        a, out.account,
        "the returned account is the stored one (incl. updated_at)"
    );
    assert_audit_clean(&mut conn);
});

db_test!(charge_above_the_hold_is_an_overrun, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "1000");
    let mut r = hold_req("proj-a", "100", "h1");
    r.buffer = Decimal::new(12, 1);
    let h = place(&mut conn, &ctx(), &r);
    let out = charge(&mut conn, h.id, "150", "c1");
    assert_eq!(out.charge.amount, usd("150"));
    assert_eq!(out.charge.effect.charged, usd("150"));
    assert_eq!(out.charge.effect.held, usd("-120"));
    assert_eq!(out.charge.flags, "overrun");
    assert!(
        out.charge.reason.contains("exceeds"),
        "{}",
        out.charge.reason
    );
    assert_eq!(out.release, None);
    assert_eq!(out.overrun, usd("30"));
    let hold = out.hold.unwrap();
    assert_eq!(
        (hold.state, hold.flags.as_str()),
        (HoldState::Charged, "overrun")
    );
    assert_eq!(hold.charged, usd("150"));
    let a = account(&mut conn, "proj-a");
    assert_eq!(a.balances.held, UsdMicros::ZERO);
    assert_eq!(a.balances.charged, usd("150"));
    assert_eq!(a.available(), usd("850"));
    assert_eq!(a.entry_count, 3, "no release entry after an overrun");
    let counts = queries::activity(&mut conn, "proj-a").unwrap();
    assert_eq!(
        counts,
        queries::ActivityCounts {
            open_holds: 0,
            charges: 1,
            overruns: 1,
            unmatched: 0
        }
    );
    // A replay reports the same overrun.
    assert_eq!(charge(&mut conn, h.id, "150", "c1").overrun, usd("30"));
    assert_audit_clean(&mut conn);
});

db_test!(charging_a_resolved_hold_or_the_wrong_job_is_refused, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "1000");
    let mut r = hold_req("proj-a", "100", "h1");
    r.job_id = Some("1234");
    let h = place(&mut conn, &ctx(), &r);
    assert_invalid(
        ledger::charge_hold(
            &mut conn,
            &ctx(),
            &ChargeHold {
                hold_id: h.id,
                actual: usd("5"),
                job_id: Some("999"),
                reason: "",
                key: "c0",
            },
        ),
        "--job",
    );
    assert_invalid(
        ledger::charge_hold(
            &mut conn,
            &ctx(),
            &ChargeHold {
                hold_id: h.id,
                actual: usd("-5"),
                job_id: None,
                reason: "",
                key: "c0",
            },
        ),
        "--actual-cost",
    );
    assert_eq!(account(&mut conn, "proj-a").entry_count, 2);
    // Exactly the hold: nothing to release.
    let out = ledger::charge_hold(
        &mut conn,
        &ctx(),
        &ChargeHold {
            hold_id: h.id,
            actual: usd("100"),
            job_id: Some("1234"),
            reason: "cur",
            key: "c1",
        },
    )
    .unwrap();
    assert_eq!(out.release, None);
    assert_eq!(out.overrun, UsdMicros::ZERO);
    assert_eq!(out.charge.reason, "cur");
    assert_hold_resolved(
        ledger::charge_hold(
            &mut conn,
            &ctx(),
            &ChargeHold {
                hold_id: h.id,
                actual: usd("1"),
                job_id: None,
                reason: "",
                key: "c2",
            },
        ),
        h.id,
        HoldState::Charged,
    );
    assert_hold_resolved(
        ledger::release_hold(&mut conn, &ctx(), h.id, "", "c3"),
        h.id,
        HoldState::Charged,
    );
    assert_hold_resolved(
        ledger::expire_hold(&mut conn, &ctx_at(day(30, 0)), h.id, "c4"),
        h.id,
        HoldState::Charged,
    );
    assert!(matches!(
        ledger::charge_hold(
            &mut conn,
            &ctx(),
            &ChargeHold {
                hold_id: 999_999,
                actual: usd("1"),
                job_id: None,
                reason: "",
                key: "c5"
            },
        ),
        Err(LedgerError::UnknownHold(999_999))
    ));
    assert!(matches!(
        ledger::release_hold(&mut conn, &ctx(), 999_999, "", "c6"),
        Err(LedgerError::UnknownHold(999_999))
    ));
    let a = account(&mut conn, "proj-a");
    assert_eq!((a.entry_count, a.balances.charged), (3, usd("100")));
    assert_audit_clean(&mut conn);
});

db_test!(
    charge_without_hold_is_flagged_unmatched_even_when_closed,
    |db| {
        let mut conn = db.conn();
        create(&mut conn, "proj-a", "100");
        ledger::close_account(&mut conn, &ctx(), "proj-a", "done").unwrap();
        let mut req = unmatched("proj-a", usd("25"), "u1");
        req.partition = Some("gpu");
        req.job_id = Some("77");
        req.cluster = Some("aws");
        req.user_name = Some("bob");
        let out = ledger::charge_without_hold(&mut conn, &ctx(), &req).unwrap();
        assert_eq!(out.hold, None);
        assert_eq!(out.release, None);
        assert_eq!(out.charge.kind, EntryKind::Charge);
        assert_eq!(out.charge.flags, "unmatched");
        assert_eq!(out.charge.effect.charged, usd("25"));
        assert_eq!(out.charge.effect.held, UsdMicros::ZERO);
        assert_eq!(out.charge.hold_id, None);
        assert_eq!(out.charge.reason, "actual cost without a hold");
        assert_eq!(out.account.status, AccountStatus::Closed);
        assert_eq!(out.account.balances.charged, usd("25"));
        assert_eq!(out.account.available(), usd("75"));
        // A refund books on a closed account too.
        ledger::refund(&mut conn, &ctx(), &op("proj-a", usd("5"), "bad node", "u2")).unwrap();
        let a = account(&mut conn, "proj-a");
        assert_eq!(a.balances.charged, usd("20"));
        assert_eq!(a.entry_count, 3);
        let parts = queries::partitions(&mut conn, "proj-a").unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(
            (parts[0].partition.as_str(), parts[0].charged),
            ("gpu", usd("25"))
        );
        assert_eq!(queries::activity(&mut conn, "proj-a").unwrap().unmatched, 1);
        assert!(matches!(
            ledger::charge_without_hold(&mut conn, &ctx(), &unmatched("nobody", usd("1"), "u3")),
            Err(LedgerError::UnknownAccount(_))
        ));
        assert_audit_clean(&mut conn);
    }
);

// ---------------------------------------------------------------------------------------------
// Release and expiry

db_test!(release_and_expire_resolve_once, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "1000");
    let c = ctx();
    let mut r = hold_req("proj-a", "100", "h1");
    r.expires_at = Some(t0() + Duration::hours(2));
    let expiring = place(&mut conn, &c, &r);
    let released = place(&mut conn, &c, &hold_req("proj-a", "50", "h2"));
    let forever = place(&mut conn, &c, &hold_req("proj-a", "25", "h3"));
    assert_eq!(account(&mut conn, "proj-a").balances.held, usd("175"));

    let out = ledger::release_hold(&mut conn, &ctx_at(day(1, 13)), released.id, "", "r2").unwrap();
    assert_eq!(out.entry.kind, EntryKind::Release);
    assert_eq!(out.entry.amount, usd("50"));
    assert_eq!(out.entry.effect.held, usd("-50"));
    assert_eq!(out.entry.reason, "released by an administrator");
    assert_eq!(out.hold.state, HoldState::Released);
    assert_eq!(out.hold.remaining, UsdMicros::ZERO);
    assert_eq!(out.hold.resolved_at, Some(day(1, 13)));
    assert_eq!(account(&mut conn, "proj-a").balances.held, usd("125"));

    // Not yet expired one hour in; expired at exactly its expiry time.
    assert_invalid(
        ledger::expire_hold(
            &mut conn,
            &ctx_at(t0() + Duration::hours(1)),
            expiring.id,
            "e1",
        ),
        "--as-of",
    );
    assert_eq!(
        queries::hold(&mut conn, expiring.id).unwrap().state,
        HoldState::Open
    );
    let out = ledger::expire_hold(
        &mut conn,
        &ctx_at(t0() + Duration::hours(2)),
        expiring.id,
        "e1",
    )
    .unwrap();
    assert_eq!(out.entry.kind, EntryKind::Expiry);
    assert_eq!(out.entry.amount, usd("100"));
    assert_eq!(out.entry.effect.held, usd("-100"));
    assert_eq!(out.hold.state, HoldState::Expired);
    assert_eq!(out.hold.remaining, UsdMicros::ZERO);
    // A hold without an expiry cannot expire.
    assert_invalid(
        ledger::expire_hold(&mut conn, &ctx_at(day(30, 0)), forever.id, "e3"),
        "HOLD",
    );

    // Resolving twice is refused, whatever the second way.
    assert_hold_resolved(
        ledger::expire_hold(&mut conn, &ctx_at(day(30, 0)), expiring.id, "e2"),
        expiring.id,
        HoldState::Expired,
    );
    assert_hold_resolved(
        ledger::release_hold(&mut conn, &c, expiring.id, "", "e4"),
        expiring.id,
        HoldState::Expired,
    );
    assert_hold_resolved(
        ledger::release_hold(&mut conn, &c, released.id, "", "r3"),
        released.id,
        HoldState::Released,
    );
    let a = account(&mut conn, "proj-a");
    assert_eq!(a.balances.held, usd("25"));
    assert_eq!(a.available(), usd("975"));
    assert_eq!(a.entry_count, 6);
    assert_audit_clean(&mut conn);
});

// ---------------------------------------------------------------------------------------------
// Closing and deleting

db_test!(close_refuses_open_holds_and_delete_refuses_history, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "1000");
    let h1 = place(&mut conn, &ctx(), &hold_req("proj-a", "10", "h1"));
    let h2 = place(&mut conn, &ctx(), &hold_req("proj-a", "10", "h2"));
    match ledger::close_account(&mut conn, &ctx(), "proj-a", "done") {
        Err(e @ LedgerError::AccountState { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&format!("hold-{}", h1.id)), "{msg}");
            assert!(msg.contains(&format!("hold-{}", h2.id)), "{msg}");
        }
        other => panic!("expected AccountState, got {other:?}"),
    }
    assert_eq!(account(&mut conn, "proj-a").status, AccountStatus::Active);
    ledger::release_hold(&mut conn, &ctx(), h1.id, "", "r1").unwrap();
    charge(&mut conn, h2.id, "3", "c2");
    let closed = ledger::close_account(&mut conn, &ctx(), "proj-a", "done").unwrap();
    assert_eq!(closed.status, AccountStatus::Closed);
    // Closing again is harmless.
    let again = ledger::close_account(&mut conn, &ctx(), "proj-a", "done").unwrap();
    assert_eq!(again.status, AccountStatus::Closed);
    assert_eq!(
        queries::accounts(&mut conn, Some(AccountStatus::Closed))
            .unwrap()
            .len(),
        1
    );
    assert!(queries::accounts(&mut conn, Some(AccountStatus::Active))
        .unwrap()
        .is_empty());

    match ledger::delete_account(&mut conn, "proj-a") {
        Err(LedgerError::HasHistory { account, entries }) => {
            assert_eq!((account.as_str(), entries), ("proj-a", 6));
        }
        other => panic!("expected HasHistory, got {other:?}"),
    }
    assert_eq!(account(&mut conn, "proj-a").entry_count, 6);

    // An account that never held money can be deleted, with its settings history.
    create(&mut conn, "typo", "0");
    let gpu = PartitionName::new("gpu").unwrap();
    ledger::set_partition_limit(&mut conn, &ctx(), "typo", &gpu, Some(usd("5"))).unwrap();
    let upd = AccountUpdate {
        description: Some("oops".into()),
        ..Default::default()
    };
    ledger::update_account(&mut conn, &ctx(), "typo", &upd).unwrap();
    ledger::delete_account(&mut conn, "typo").unwrap();
    assert!(matches!(
        queries::account(&mut conn, "typo"),
        Err(LedgerError::UnknownAccount(_))
    ));
    assert!(matches!(
        ledger::delete_account(&mut conn, "typo"),
        Err(LedgerError::UnknownAccount(_))
    ));
    // The name is free again.
    let again = create(&mut conn, "typo", "1");
    assert_eq!(again.entry_count, 1);
    assert!(queries::partitions(&mut conn, "typo").unwrap().is_empty());
    let changes = queries::account_changes(&mut conn, "typo").unwrap();
    assert_eq!(changes.len(), 6, "only the new account's creation settings");
    assert_eq!(changes[0].seq, 1);
    assert_audit_clean(&mut conn);
});

// ---------------------------------------------------------------------------------------------
// Partitions and queries

db_test!(partition_caches_follow_holds_and_charges, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "1000");
    let c = ctx();
    let in_part = |est: &'static str, part: Option<&'static str>, key: &'static str| {
        let mut r = hold_req("proj-a", est, key);
        r.partition = part;
        r
    };
    let h1 = place(&mut conn, &c, &in_part("100", Some("gpu"), "h1"));
    let h2 = place(&mut conn, &c, &in_part("50", Some("gpu"), "h2"));
    let h3 = place(&mut conn, &c, &in_part("30", Some("cpu"), "h3"));
    place(&mut conn, &c, &in_part("10", None, "h4"));
    let use_of = |conn: &mut DbConn| -> Vec<(String, UsdMicros, UsdMicros)> {
        queries::partitions(conn, "proj-a")
            .unwrap()
            .into_iter()
            .map(|p| (p.partition, p.charged, p.held))
            .collect()
    };
    let z = UsdMicros::ZERO;
    assert_eq!(
        use_of(&mut conn),
        [
            ("cpu".to_string(), z, usd("30")),
            ("gpu".to_string(), z, usd("150"))
        ]
    );
    charge(&mut conn, h1.id, "80", "c1");
    assert_eq!(
        use_of(&mut conn)[1],
        ("gpu".to_string(), usd("80"), usd("50"))
    );
    ledger::release_hold(&mut conn, &c, h2.id, "", "r2").unwrap();
    assert_eq!(use_of(&mut conn)[1], ("gpu".to_string(), usd("80"), z));
    charge(&mut conn, h3.id, "40", "c3");
    let mut u = unmatched("proj-a", usd("5"), "u1");
    u.partition = Some("gpu");
    ledger::charge_without_hold(&mut conn, &c, &u).unwrap();
    assert_eq!(
        use_of(&mut conn),
        [
            ("cpu".to_string(), usd("40"), z),
            ("gpu".to_string(), usd("85"), z)
        ]
    );
    let gpu = PartitionName::new("gpu").unwrap();
    ledger::set_partition_limit(&mut conn, &c, "proj-a", &gpu, Some(usd("500"))).unwrap();
    let parts = queries::partitions(&mut conn, "proj-a").unwrap();
    assert_eq!(parts[0].limit, None);
    assert_eq!(parts[1].limit, Some(usd("500")));
    assert_eq!(
        (parts[1].charged, parts[1].held),
        (usd("85"), z),
        "a limit keeps the use"
    );
    let a = account(&mut conn, "proj-a");
    assert_eq!(
        (a.balances.charged, a.balances.held),
        (usd("125"), usd("10"))
    );
    assert_audit_clean(&mut conn);
});

db_test!(entry_filters, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "1000"); // entry 1, day 1
    create(&mut conn, "proj-b", "1000"); // entry 2, day 1
    let d2 = ctx_at(day(2, 0));
    let d3 = ctx_at(day(3, 0));
    let d4 = ctx_at(day(4, 0));
    let mut r = hold_req("proj-a", "100", "h1");
    r.job_id = Some("101");
    let h1 = place(&mut conn, &d2, &r);
    let mut r = hold_req("proj-a", "20", "h2");
    r.job_id = Some("102");
    let h2 = place(&mut conn, &d2, &r);
    let mut r = hold_req("proj-b", "30", "h3");
    r.job_id = Some("103");
    let h3 = place(&mut conn, &d3, &r);
    ledger::charge_hold(
        &mut conn,
        &d3,
        &ChargeHold {
            hold_id: h1.id,
            actual: usd("60"),
            job_id: None,
            reason: "",
            key: "c1",
        },
    )
    .unwrap();
    ledger::credit(
        &mut conn,
        &d4,
        &op("proj-b", usd("5"), "top-up", "k-credit"),
    )
    .unwrap();

    let list = |conn: &mut DbConn, f: EntryFilter| -> Vec<(String, EntryKind)> {
        queries::entries(conn, &f)
            .unwrap()
            .into_iter()
            .map(|e| (e.account, e.kind))
            .collect()
    };
    let a = |k| ("proj-a".to_string(), k);
    let b = |k| ("proj-b".to_string(), k);
    use EntryKind::{Charge, Credit, Hold as H, Release};

    let all = queries::entries(&mut conn, &EntryFilter::default()).unwrap();
    assert_eq!(all.len(), 8);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");

    let f = EntryFilter {
        account: Some("proj-a".into()),
        ..Default::default()
    };
    assert_eq!(
        list(&mut conn, f),
        [a(Release), a(Charge), a(H), a(H), a(Credit)]
    );
    let f = EntryFilter {
        job_id: Some("101".into()),
        ..Default::default()
    };
    assert_eq!(list(&mut conn, f), [a(Release), a(Charge), a(H)]);
    let f = EntryFilter {
        kind: Some(Credit),
        ..Default::default()
    };
    assert_eq!(list(&mut conn, f), [b(Credit), b(Credit), a(Credit)]);

    // Open holds: hold entries whose hold is still open.
    let f = EntryFilter {
        kind: Some(H),
        hold_state: Some(HoldState::Open),
        ..Default::default()
    };
    let open = queries::entries(&mut conn, &f).unwrap();
    let ids: Vec<Option<i64>> = open.iter().map(|e| e.hold_id).collect();
    assert_eq!(ids, [Some(h3.id), Some(h2.id)]);
    assert!(open.iter().all(|e| e.hold_state == Some(HoldState::Open)));
    let f = EntryFilter {
        hold_state: Some(HoldState::Charged),
        ..Default::default()
    };
    assert_eq!(list(&mut conn, f), [a(Release), a(Charge), a(H)]);
    let f = EntryFilter {
        hold_id: Some(h2.id),
        ..Default::default()
    };
    assert_eq!(list(&mut conn, f), [a(H)]);

    // since is inclusive, until exclusive.
    let f = EntryFilter {
        since: Some(day(3, 0)),
        ..Default::default()
    };
    assert_eq!(list(&mut conn, f), [b(Credit), a(Release), a(Charge), b(H)]);
    let f = EntryFilter {
        until: Some(day(3, 0)),
        ..Default::default()
    };
    assert_eq!(list(&mut conn, f), [a(H), a(H), b(Credit), a(Credit)]);
    let f = EntryFilter {
        since: Some(day(2, 0)),
        until: Some(day(3, 0)),
        account: Some("proj-a".into()),
        ..Default::default()
    };
    assert_eq!(list(&mut conn, f), [a(H), a(H)]);
    let f = EntryFilter {
        limit: Some(2),
        ..Default::default()
    };
    assert_eq!(list(&mut conn, f), [b(Credit), a(Release)]);
    let f = EntryFilter {
        account: Some("proj-b".into()),
        limit: Some(1),
        ..Default::default()
    };
    assert_eq!(list(&mut conn, f), [b(Credit)]);
    let f = EntryFilter {
        account: Some("nobody".into()),
        ..Default::default()
    };
    assert!(matches!(
        queries::entries(&mut conn, &f),
        Err(LedgerError::UnknownAccount(_))
    ));

    let one = queries::entry(&mut conn, all[0].id).unwrap().unwrap();
    assert_eq!(one, all[0]);
    assert_eq!(queries::entry(&mut conn, 999_999).unwrap(), None);
    assert_eq!(
        ledger::entry(&mut conn, all[0].id).unwrap().map(|e| e.hash),
        Some(all[0].hash.clone())
    );

    // Holds: newest first, by account, state and limit.
    let ids = |v: Vec<Hold>| v.into_iter().map(|h| h.id).collect::<Vec<_>>();
    assert_eq!(
        ids(queries::holds(&mut conn, None, None, None).unwrap()),
        [h3.id, h2.id, h1.id]
    );
    assert_eq!(
        ids(queries::holds(&mut conn, Some("proj-a"), None, None).unwrap()),
        [h2.id, h1.id]
    );
    assert_eq!(
        ids(queries::holds(&mut conn, None, Some(HoldState::Open), None).unwrap()),
        [h3.id, h2.id]
    );
    assert_eq!(
        ids(queries::holds(&mut conn, None, Some(HoldState::Charged), None).unwrap()),
        [h1.id]
    );
    assert_eq!(
        ids(queries::holds(&mut conn, None, None, Some(1)).unwrap()),
        [h3.id]
    );
    assert!(
        queries::holds(&mut conn, Some("proj-b"), Some(HoldState::Released), None)
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        queries::hold(&mut conn, 999_999),
        Err(LedgerError::UnknownHold(999_999))
    ));
});

// ---------------------------------------------------------------------------------------------
// Audit

db_test!(audit_is_clean_after_a_mixed_workload, |db| {
    let mut conn = db.conn();
    mixed_workload(&mut conn);
    let mut calls = 0u64;
    let report = audit::verify(&mut conn, None, &mut |_| calls += 1).unwrap();
    assert!(report.is_clean(), "{:#?}", report.discrepancies);
    let accounts = queries::accounts(&mut conn, None).unwrap();
    assert_eq!(report.accounts, 2);
    assert_eq!(
        report.entries,
        accounts.iter().map(|a| a.entry_count as u64).sum::<u64>()
    );
    assert_eq!(report.entries, 17);
    assert_eq!(report.holds, 6);
    assert!(calls >= 2, "progress is reported per account");
    let one = audit::verify(&mut conn, Some("beta"), &mut |_| {}).unwrap();
    assert!(one.is_clean());
    assert_eq!((one.accounts, one.holds), (1, 3));
    assert!(matches!(
        audit::verify(&mut conn, Some("nobody"), &mut |_| {}),
        Err(LedgerError::UnknownAccount(_))
    ));
    // The numbers the workload should produce.
    let alpha = account(&mut conn, "alpha");
    assert_eq!(alpha.balances.credited, usd("1250"));
    assert_eq!(alpha.balances.charged, usd("100")); // 90 + 15 - 5
    assert_eq!(alpha.balances.held, usd("40"));
    let beta = account(&mut conn, "beta");
    assert_eq!(beta.balances.credited, usd("479.5"));
    assert_eq!(beta.balances.charged, usd("3.25"));
    assert_eq!(beta.balances.held, usd("7"));
});

db_test!(journal_is_append_only, |db| {
    let mut conn = db.conn();
    mixed_workload(&mut conn);
    let first = all_entries(&mut conn, "alpha").pop().unwrap();
    let update = format!(
        "UPDATE journal SET reason = 'forged' WHERE id = {}",
        first.id
    );
    let err = conn
        .batch_execute(&update)
        .expect_err("UPDATE on journal must be refused");
    assert!(err.to_string().contains("append-only"), "{err}");
    let delete = format!("DELETE FROM journal WHERE id = {}", first.id);
    let err = conn
        .batch_execute(&delete)
        .expect_err("DELETE on journal must be refused");
    assert!(err.to_string().contains("append-only"), "{err}");
    if db.backend == Backend::Postgres {
        // CASCADE, or the tables that refer to the journal would refuse it before the
        // trigger is asked.
        let err = conn
            .batch_execute("TRUNCATE journal CASCADE")
            .expect_err("TRUNCATE must be refused");
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    assert_eq!(queries::entry(&mut conn, first.id).unwrap().unwrap(), first);
    assert_audit_clean(&mut conn);
});

db_test!(audit_detects_an_altered_entry, |db| {
    let mut conn = db.conn();
    mixed_workload(&mut conn);
    drop_append_only_triggers(&mut conn, db.backend);
    assert_audit_clean(&mut conn);
    let alpha_credit = all_entries(&mut conn, "alpha")
        .into_iter()
        .find(|e| e.kind == EntryKind::Credit && e.reason == "grant")
        .unwrap();
    conn.batch_execute(&format!(
        "UPDATE journal SET reason = 'grant (forged)' WHERE id = {}",
        alpha_credit.id
    ))
    .unwrap();
    let report = audit::verify(&mut conn, None, &mut |_| {}).unwrap();
    let found: Vec<_> = report
        .discrepancies
        .iter()
        .map(|d| (d.account.as_str(), d.kind, d.entry_id))
        .collect();
    assert_eq!(found, [("alpha", "hash_mismatch", Some(alpha_credit.id))]);

    // The amount of an entry in the other account, with its effect to match.
    let beta_adjust = all_entries(&mut conn, "beta")
        .into_iter()
        .find(|e| e.kind == EntryKind::Adjustment)
        .unwrap();
    conn.batch_execute(&format!(
        "UPDATE journal SET amount_micros = 1000000, credited_delta_micros = 1000000 WHERE id = {}",
        beta_adjust.id
    ))
    .unwrap();
    let report = audit::verify(&mut conn, Some("beta"), &mut |_| {}).unwrap();
    assert!(
        report
            .discrepancies
            .iter()
            .any(|d| d.kind == "hash_mismatch" && d.entry_id == Some(beta_adjust.id)),
        "{:#?}",
        report.discrepancies
    );
    assert!(report
        .discrepancies
        .iter()
        .any(|d| d.kind == "balance_mismatch"));
    assert!(report.discrepancies.iter().all(|d| d.account == "beta"));
});

db_test!(audit_detects_a_changed_balance, |db| {
    let mut conn = db.conn();
    mixed_workload(&mut conn);
    conn.batch_execute(
        "UPDATE accounts SET credited_micros = credited_micros + 1 WHERE name = 'beta'",
    )
    .unwrap();
    let report = audit::verify(&mut conn, None, &mut |_| {}).unwrap();
    assert_eq!(report.discrepancies.len(), 1, "{:#?}", report.discrepancies);
    let d = &report.discrepancies[0];
    assert_eq!((d.account.as_str(), d.kind), ("beta", "balance_mismatch"));
    assert!(d.detail.contains("credited"), "{}", d.detail);
});

db_test!(audit_detects_a_changed_hold, |db| {
    let mut conn = db.conn();
    mixed_workload(&mut conn);
    let open = queries::holds(&mut conn, Some("alpha"), Some(HoldState::Open), None).unwrap();
    assert_eq!(open.len(), 1);
    let h = &open[0];
    conn.batch_execute(&format!(
        "UPDATE holds SET remaining_micros = remaining_micros - 1 WHERE id = {}",
        h.id
    ))
    .unwrap();
    let report = audit::verify(&mut conn, None, &mut |_| {}).unwrap();
    let found: Vec<_> = report
        .discrepancies
        .iter()
        .map(|d| (d.kind, d.hold_id))
        .collect();
    assert_eq!(
        found,
        [("hold_mismatch", Some(h.id))],
        "{:#?}",
        report.discrepancies
    );

    // A partition cache is checked too.
    conn.batch_execute(&format!(
        "UPDATE holds SET remaining_micros = remaining_micros + 1 WHERE id = {}",
        h.id
    ))
    .unwrap();
    assert_audit_clean(&mut conn);
    conn.batch_execute(
        "UPDATE account_partitions SET charged_micros = charged_micros + 7 WHERE partition = 'cpu'",
    )
    .unwrap();
    assert_eq!(audit_kinds(&mut conn), ["partition_mismatch"]);
});

// The audit finds an account's holds through its journal entries: a hold row moved to another
// account, and one that no entry links, are both reported.
db_test!(audit_detects_a_moved_or_unlinked_hold, |db| {
    let mut conn = db.conn();
    mixed_workload(&mut conn);
    let open = queries::holds(&mut conn, Some("alpha"), Some(HoldState::Open), None).unwrap();
    let h = open[0].id;
    conn.batch_execute(&format!(
        "UPDATE holds SET account_id = (SELECT id FROM accounts WHERE name = 'beta') WHERE id = {h}"
    ))
    .unwrap();
    let report = audit::verify(&mut conn, None, &mut |_| {}).unwrap();
    let found: Vec<_> = report
        .discrepancies
        .iter()
        .map(|d| (d.account.as_str(), d.kind, d.hold_id))
        .collect();
    // The open hold it lost also leaves alpha's cached count of open holds one too high.
    assert_eq!(
        found,
        [
            ("alpha", "hold_mismatch", Some(h)),
            ("alpha", "count_mismatch", None)
        ],
        "{:#?}",
        report.discrepancies
    );
    conn.batch_execute(&format!(
        "UPDATE holds SET account_id = (SELECT id FROM accounts WHERE name = 'alpha') WHERE id = {h}"
    ))
    .unwrap();
    assert_audit_clean(&mut conn);

    // A hold row written past the ledger: no entry links it.
    conn.batch_execute(&format!(
        "INSERT INTO holds (account_id, partition, cluster, job_id, user_name, estimate_micros, buffer, \
         amount_micros, remaining_micros, charged_micros, state, flags, expires_at, created_at, \
         idempotency_key, tasks) \
         SELECT account_id, partition, cluster, job_id, user_name, estimate_micros, buffer, \
         amount_micros, remaining_micros, charged_micros, state, flags, expires_at, created_at, \
         'forged', tasks FROM holds WHERE id = {h}"
    ))
    .unwrap();
    for only in [None, Some("alpha")] {
        let report = audit::verify(&mut conn, only, &mut |_| {}).unwrap();
        let found: Vec<_> = report
            .discrepancies
            .iter()
            .map(|d| (d.account.as_str(), d.kind, d.detail.contains("found none")))
            .collect();
        assert_eq!(
            found,
            [("alpha", "hold_mismatch", true)],
            "{:#?}",
            report.discrepancies
        );
    }
    let report = audit::verify(&mut conn, Some("beta"), &mut |_| {}).unwrap();
    assert!(report.is_clean(), "{:#?}", report.discrepancies);
});

db_test!(audit_detects_a_deleted_entry, |db| {
    let mut conn = db.conn();
    mixed_workload(&mut conn);
    drop_append_only_triggers(&mut conn, db.backend);
    let last = all_entries(&mut conn, "beta").into_iter().next().unwrap();
    assert_eq!(last.kind, EntryKind::Hold);
    conn.batch_execute(&format!("DELETE FROM journal WHERE id = {}", last.id))
        .unwrap();
    let kinds = audit_kinds(&mut conn);
    assert!(kinds.contains(&"seq_gap"), "{kinds:?}");
    assert!(kinds.contains(&"chain_broken"), "{kinds:?}");
    let report = audit::verify(&mut conn, Some("alpha"), &mut |_| {}).unwrap();
    assert!(
        report.is_clean(),
        "the other account is untouched: {:#?}",
        report.discrepancies
    );

    // A gap in the middle of a chain.
    let middle = all_entries(&mut conn, "alpha")[3].clone();
    conn.batch_execute(&format!("DELETE FROM journal WHERE id = {}", middle.id))
        .unwrap();
    let report = audit::verify(&mut conn, Some("alpha"), &mut |_| {}).unwrap();
    assert!(
        report.discrepancies.iter().any(|d| d.kind == "seq_gap"),
        "{:#?}",
        report.discrepancies
    );
    assert!(report
        .discrepancies
        .iter()
        .any(|d| d.kind == "chain_broken"));
});

// ---------------------------------------------------------------------------------------------
// Schema

/// The migrations this build knows, oldest first (read from a fully migrated database).
/// Reverts migrations, newest first, up to and including `version` (its directory's date and
/// number, as in `migrations/`).
fn revert_through(conn: &mut DbConn, version: &str) {
    let digits: String = version.chars().filter(char::is_ascii_digit).collect();
    assert!(
        known_versions(conn)
            .iter()
            .any(|v| v.replace('-', "") == digits),
        "no migration {version}"
    );
    while asbb::db::revert_last(conn).unwrap().replace('-', "") != digits {}
}

fn known_versions(conn: &mut DbConn) -> Vec<String> {
    let status = asbb::db::schema_status(conn).unwrap();
    assert!(
        status.pending.is_empty() && status.unknown.is_empty(),
        "{status:?}"
    );
    let mut v = status.applied;
    v.sort();
    v
}

#[test]
fn connect_checked_refuses_a_missing_file() {
    let db = TestDb::unmigrated_sqlite();
    match asbb::db::connect_checked(&db.db_url(), &Default::default()) {
        Err(DbError::MissingFile(p)) => assert_eq!(p.to_str(), Some(db.url.as_str())),
        Err(e) => panic!("expected MissingFile, got {e:?}"),
        Ok(_) => panic!("expected MissingFile, got a connection"),
    }
    assert!(
        !std::path::Path::new(&db.url).exists(),
        "checking must not create the file"
    );
}

#[test]
fn connect_checked_refuses_an_empty_file() {
    let known = known_versions(&mut TestDb::sqlite().conn());
    let db = TestDb::unmigrated_sqlite();
    std::fs::write(&db.url, b"").unwrap();
    match asbb::db::connect_checked(&db.db_url(), &Default::default()) {
        Err(DbError::Unmigrated { pending, first }) => {
            assert_eq!(pending, known.len());
            assert_eq!(first, known[0]);
        }
        Err(e) => panic!("expected Unmigrated, got {e:?}"),
        Ok(_) => panic!("expected Unmigrated, got a connection"),
    }
    // Migrating it makes it usable.
    let mut conn =
        asbb::db::connect(&db.db_url(), &Default::default(), asbb::db::Create::Refuse).unwrap();
    assert_eq!(asbb::db::migrate(&mut conn).unwrap(), known);
    assert_eq!(asbb::db::migrate(&mut conn).unwrap(), Vec::<String>::new());
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "1");
}

db_test!(connect_checked_refuses_a_newer_schema, |db| {
    let mut conn = db.conn();
    let status = asbb::db::schema_status(&mut conn).unwrap();
    assert!(
        status.applied.contains(&"20261123000001".to_string()),
        "{status:?}"
    );
    assert!(status.pending.is_empty() && status.unknown.is_empty());
    conn.batch_execute(
        "INSERT INTO __diesel_schema_migrations (version) VALUES ('99990101000000')",
    )
    .unwrap();
    match asbb::db::connect_checked(&db.db_url(), &Default::default()) {
        Err(DbError::TooNew(v)) => assert_eq!(v, "99990101000000"),
        Err(e) => panic!("expected TooNew, got {e:?}"),
        Ok(_) => panic!("expected TooNew, got a connection"),
    }
    assert!(
        matches!(asbb::db::migrate(&mut conn), Err(DbError::TooNew(v)) if v == "99990101000000")
    );
    assert!(matches!(
        asbb::db::check_schema(&mut conn),
        Err(DbError::TooNew(_))
    ));
});

db_test!(migrations_are_reversible, |db| {
    let mut conn = db.conn();
    create(&mut conn, "before", "5");
    let known = known_versions(&mut conn);
    assert!(known.contains(&"20261123000001".to_string()));
    // Revert every migration, newest first.
    for (i, v) in known.iter().enumerate().rev() {
        assert_eq!(asbb::db::revert_last(&mut conn).unwrap(), *v);
        match asbb::db::check_schema(&mut conn) {
            Err(DbError::Unmigrated { pending, first }) => {
                assert_eq!(
                    (pending, first.as_str()),
                    (known.len() - i, known[i].as_str())
                );
            }
            other => panic!("expected Unmigrated, got {other:?}"),
        }
    }
    assert!(
        matches!(
            queries::account(&mut conn, "before"),
            Err(LedgerError::Db(_))
        ),
        "tables are gone"
    );
    assert!(matches!(
        asbb::db::connect_checked(&db.db_url(), &Default::default()),
        Err(DbError::Unmigrated { .. })
    ));
    assert_eq!(asbb::db::migrate(&mut conn).unwrap(), known);
    let mut conn = db.conn();
    assert!(matches!(
        queries::account(&mut conn, "before"),
        Err(LedgerError::UnknownAccount(_))
    ));
    mixed_workload(&mut conn);
    assert_audit_clean(&mut conn);
    // The triggers came back with the schema.
    let err = conn
        .batch_execute("DELETE FROM journal")
        .expect_err("append-only again");
    assert!(err.to_string().contains("append-only"), "{err}");
});

// ---------------------------------------------------------------------------------------------
// Money arithmetic

db_test!(money_is_exact_through_the_database, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "100");
    let c = ctx();
    for (i, amount) in ["0.000001", "0.000001", "0.000001", "33.333333"]
        .iter()
        .enumerate()
    {
        let key = format!("u{i}");
        ledger::charge_without_hold(&mut conn, &c, &unmatched("proj-a", usd(amount), &key))
            .unwrap();
    }
    for i in 0..10 {
        let key = format!("k{i}");
        ledger::credit(&mut conn, &c, &op("proj-a", usd("0.1"), "", &key)).unwrap();
    }
    let a = account(&mut conn, "proj-a");
    assert_eq!(a.balances.charged, micros(33_333_336));
    assert_eq!(a.balances.credited, micros(101_000_000));
    assert_eq!(a.available(), micros(67_666_664));
    assert_eq!(a.available().to_string(), "67.666664");

    // 0.000005 × 1.5 = 7.5 micro-dollars, rounded half away from zero to 8.
    let mut r = hold_req("proj-a", "0.000005", "h1");
    r.buffer = Decimal::new(15, 1);
    let h = place(&mut conn, &c, &r);
    assert_eq!(h.amount, micros(8));
    let out = charge(&mut conn, h.id, "0.000003", "c1");
    assert_eq!(out.release.unwrap().amount, micros(5));
    // Large amounts survive the round trip unchanged.
    let big = UsdMicros::parse("999999999.999999").unwrap();
    ledger::credit(&mut conn, &c, &op("proj-a", big, "", "big")).unwrap();
    let a = account(&mut conn, "proj-a");
    assert_eq!(
        a.balances.credited.micros(),
        101_000_000 + 999_999_999_999_999
    );
    assert_eq!(a.balances.charged, micros(33_333_339));
    assert_audit_clean(&mut conn);
});

db_test!(batches_share_one_commit_and_isolate_failures, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "100");
    let held = place(&mut conn, &ctx(), &hold_req("proj-a", "10", "b-hold"));
    let before = account(&mut conn, "proj-a").entry_count;
    // Operations inside a caller's write transaction join it, each in a savepoint.
    let outcome: Result<(), LedgerError> = asbb::db::write_transaction(&mut conn, |c| {
        ledger::credit(c, &ctx(), &op("proj-a", usd("5"), "b", "b-1"))?;
        // A failing operation is rolled back alone and the batch goes on.
        let conflict = ledger::credit(c, &ctx(), &op("proj-a", usd("6"), "b", "b-1"));
        assert!(
            matches!(conflict, Err(LedgerError::IdempotencyConflict { .. })),
            "{conflict:?}"
        );
        charge(c, held.id, "4", "b-charge");
        let twice = ledger::release_hold(c, &ctx(), held.id, "", "b-release");
        assert_hold_resolved(twice, held.id, HoldState::Charged);
        ledger::credit(c, &ctx(), &op("proj-a", usd("7"), "b", "b-2"))?;
        Ok(())
    });
    outcome.unwrap();
    let a = account(&mut conn, "proj-a");
    assert_eq!(
        a.entry_count,
        before + 4,
        "two credits, a charge and its release"
    );
    assert_eq!(a.balances.credited, usd("112"));
    assert_eq!(a.balances.charged, usd("4"));
    assert_eq!(a.balances.held, UsdMicros::ZERO);
    // A batch that fails as a whole leaves nothing behind.
    let aborted: Result<(), LedgerError> = asbb::db::write_transaction(&mut conn, |c| {
        ledger::credit(c, &ctx(), &op("proj-a", usd("50"), "b", "b-3"))?;
        Err(LedgerError::Invalid {
            field: "batch",
            message: "stopped on purpose".into(),
        })
    });
    assert!(aborted.is_err());
    let after = account(&mut conn, "proj-a");
    assert_eq!(after.entry_count, a.entry_count);
    assert_eq!(after.balances, a.balances);
    assert!(queries::entries(
        &mut conn,
        &EntryFilter {
            account: Some("proj-a".into()),
            ..Default::default()
        }
    )
    .unwrap()
    .iter()
    .all(|e| e.idempotency_key != "b-3"));
    assert_audit_clean(&mut conn);
});

// An account's open holds are counted on its row by every change of a hold's state (placed,
// an array task's charge that is not the last, the last charge, release, expiry, a batch of
// charges), recounted by the audit, and filled in by the migration that added the counter.
// Listing them reads the open entries of `holds_state_expires`; no index of holds is keyed by
// account, since a check would write it at a random place.
db_test!(open_hold_counts_are_cached_audited_and_backfilled, |db| {
    let mut conn = db.conn();
    create(&mut conn, "proj-a", "1000");
    create(&mut conn, "proj-b", "1000");
    let open_of = |conn: &mut DbConn, a: &str| {
        let cached = queries::activity(conn, a).unwrap().open_holds;
        let listed = queries::holds(conn, Some(a), Some(HoldState::Open), None)
            .unwrap()
            .len();
        assert_eq!(cached, listed as i64, "{a}: cached and listed open holds");
        cached
    };
    let h1 = place(&mut conn, &ctx(), &hold_req("proj-a", "10", "o-h1"));
    let array = place(
        &mut conn,
        &ctx(),
        &HoldRequest {
            tasks: Some(2),
            ..hold_req("proj-a", "20", "o-h2")
        },
    );
    let h3 = place(&mut conn, &ctx(), &hold_req("proj-a", "5", "o-h3"));
    let h4 = place(
        &mut conn,
        &ctx(),
        &HoldRequest {
            expires_at: Some(day(2, 0)),
            ..hold_req("proj-a", "5", "o-h4")
        },
    );
    let b1 = place(&mut conn, &ctx(), &hold_req("proj-b", "5", "o-b1"));
    place(&mut conn, &ctx(), &hold_req("proj-b", "5", "o-b2"));
    assert_eq!(
        [open_of(&mut conn, "proj-a"), open_of(&mut conn, "proj-b")],
        [4, 2]
    );
    charge(&mut conn, h1.id, "4", "o-c1");
    assert_eq!(open_of(&mut conn, "proj-a"), 3);
    // The array's first task leaves it open; its last resolves it.
    charge(&mut conn, array.id, "3", "o-c2");
    assert_eq!(open_of(&mut conn, "proj-a"), 3);
    ledger::release_hold(&mut conn, &ctx(), h3.id, "", "o-r3").unwrap();
    assert_eq!(open_of(&mut conn, "proj-a"), 2);
    ledger::expire_hold(&mut conn, &ctx_at(day(3, 0)), h4.id, "o-e4").unwrap();
    assert_eq!(open_of(&mut conn, "proj-a"), 1);
    let batch = [
        BatchCharge {
            target: BatchTarget::Hold(ChargeHold {
                hold_id: array.id,
                actual: usd("3"),
                job_id: None,
                reason: "",
                key: "o-c2b",
            }),
            refund: None,
        },
        BatchCharge {
            target: BatchTarget::Hold(ChargeHold {
                hold_id: b1.id,
                actual: usd("1"),
                job_id: None,
                reason: "",
                key: "o-cb1",
            }),
            refund: None,
        },
    ];
    assert!(matches!(
        ledger::charge_batch(&mut conn, &ctx(), &batch).unwrap(),
        BatchResult::Booked(b) if b.len() == 2
    ));
    assert_eq!(
        [open_of(&mut conn, "proj-a"), open_of(&mut conn, "proj-b")],
        [0, 1]
    );
    // Replays change nothing.
    charge(&mut conn, h1.id, "4", "o-c1");
    ledger::release_hold(&mut conn, &ctx(), h3.id, "", "o-r3").unwrap();
    assert_eq!(
        [open_of(&mut conn, "proj-a"), open_of(&mut conn, "proj-b")],
        [0, 1]
    );
    assert_audit_clean(&mut conn);
    let states = |conn: &mut DbConn, a: &str, s: HoldState| {
        queries::holds(conn, Some(a), Some(s), None)
            .unwrap()
            .iter()
            .map(|h| h.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        states(&mut conn, "proj-a", HoldState::Charged),
        [array.id, h1.id]
    );
    assert_eq!(states(&mut conn, "proj-a", HoldState::Expired), [h4.id]);
    let plan = query_plan(
        &mut conn,
        "SELECT id FROM holds WHERE state = 'open' AND account_id = 2",
    );
    assert!(
        plan.iter().any(|l| l.contains("holds_state_expires")),
        "plan: {plan:?}"
    );

    // The migration that added the counter fills it in from the holds.
    let newest = known_versions(&mut conn).pop().unwrap();
    assert_eq!(asbb::db::revert_last(&mut conn).unwrap(), newest);
    asbb::db::migrate(&mut conn).unwrap();
    let mut conn = db.conn();
    assert_eq!(
        [open_of(&mut conn, "proj-a"), open_of(&mut conn, "proj-b")],
        [0, 1]
    );
    assert_audit_clean(&mut conn);

    // A wrong counter is found by the audit, and does not let an account with an open hold
    // be closed.
    conn.batch_execute("UPDATE accounts SET open_hold_count = 0 WHERE name = 'proj-b'")
        .unwrap();
    let report = audit::verify(&mut conn, None, &mut |_| {}).unwrap();
    assert_eq!(report.discrepancies.len(), 1, "{:#?}", report.discrepancies);
    let d = &report.discrepancies[0];
    assert_eq!((d.account.as_str(), d.kind), ("proj-b", "count_mismatch"));
    assert!(
        d.detail
            .contains("open holds: the holds have 1, the account says 0"),
        "{}",
        d.detail
    );
    let err = ledger::close_account(&mut conn, &ctx(), "proj-b", "done").unwrap_err();
    assert!(err.to_string().contains("open holds (hold-"), "{err}");
});

// What a submission check writes (a hold, its journal entry, a check row) takes no index
// keyed by account but the journal's: each such index costs every check a page at a random
// place, since accounts interleave (see the migration check_write_path).
db_test!(
    a_check_writes_no_index_keyed_by_account_but_the_journals,
    |db| {
        let mut conn = db.conn();
        let mut seen = 0;
        for table in ["holds", "checks"] {
            let indexes = index_columns(&mut conn, table);
            seen += indexes.len();
            for (name, cols) in indexes {
                assert!(
                    !["account_id", "account"].contains(&cols[0].as_str()),
                    "{table}: index {name} on {cols:?}"
                );
            }
        }
        assert!(seen >= 3, "found only {seen} indexes");
        let journal = index_columns(&mut conn, "journal");
        assert!(
            journal.iter().any(|(_, c)| c[0] == "account_id"),
            "{journal:?}"
        );
    }
);

// The charge counts are cached on the account row by every path that books a charge (one
// operation, a batch), recounted by the audit, and filled in by the migration that added them.
db_test!(charge_counts_are_cached_audited_and_backfilled, |db| {
    let mut conn = db.conn();
    mixed_workload(&mut conn);
    // A batch of three more on alpha: one overrun, one plain, one unmatched.
    let h7 = place(&mut conn, &ctx(), &hold_req("alpha", "4", "w-h7"));
    let h8 = place(&mut conn, &ctx(), &hold_req("alpha", "4", "w-h8"));
    let items = [
        BatchCharge {
            target: BatchTarget::Hold(ChargeHold {
                hold_id: h7.id,
                actual: usd("9"),
                job_id: None,
                reason: "",
                key: "w-c7",
            }),
            refund: None,
        },
        BatchCharge {
            target: BatchTarget::Hold(ChargeHold {
                hold_id: h8.id,
                actual: usd("1"),
                job_id: None,
                reason: "",
                key: "w-c8",
            }),
            refund: None,
        },
        BatchCharge {
            target: BatchTarget::Unmatched(unmatched("alpha", usd("2"), "w-u9")),
            refund: None,
        },
    ];
    assert!(matches!(
        ledger::charge_batch(&mut conn, &ctx(), &items).unwrap(),
        BatchResult::Booked(b) if b.len() == 3
    ));
    let counts = |conn: &mut DbConn| {
        ["alpha", "beta"].map(|a| {
            let c = queries::activity(conn, a).unwrap();
            (c.charges, c.overruns, c.unmatched)
        })
    };
    // alpha: w-c1, w-c2 (over its hold of 10), w-c7 (overrun), w-c8, w-u9 (unmatched);
    // beta: w-u1 (unmatched).
    assert_eq!(counts(&mut conn), [(5, 2, 1), (1, 0, 1)]);
    assert_audit_clean(&mut conn);

    // The migration that added the counters fills them in from the journal.
    revert_through(&mut conn, "2026-12-06-000001");
    asbb::db::migrate(&mut conn).unwrap();
    let mut conn = db.conn();
    assert_eq!(counts(&mut conn), [(5, 2, 1), (1, 0, 1)]);
    assert_audit_clean(&mut conn);

    conn.batch_execute("UPDATE accounts SET overrun_count = overrun_count + 1 WHERE name = 'beta'")
        .unwrap();
    let report = audit::verify(&mut conn, None, &mut |_| {}).unwrap();
    assert_eq!(report.discrepancies.len(), 1, "{:#?}", report.discrepancies);
    let d = &report.discrepancies[0];
    assert_eq!((d.account.as_str(), d.kind), ("beta", "count_mismatch"));
    assert!(d.detail.contains("overrun charges"), "{}", d.detail);
});
