//! The budget check against a real ledger, on both backends: holds and their estimates,
//! idempotent request ids, denials, plans, re-pricing, learned corrections, group commits.

mod common;

use std::str::FromStr;

use asbb::db::check::{self, CheckRequest, Pricing};
use asbb::db::ledger::{self, ChargeHold, NewAccount, OpContext};
use asbb::db::{queries, DbConn};
use asbb::domain::estimate::{Rates, Resources, TimeLimit};
use asbb::domain::{AccountName, HoldState, UsdMicros};
use chrono::{TimeZone, Utc};
use diesel::prelude::*;
use rust_decimal::Decimal;

fn at(day: u32) -> OpContext {
    OpContext::at(
        "test",
        Utc.with_ymd_and_hms(2026, 3, day, 12, 0, 0).unwrap(),
    )
}

fn usd(s: &str) -> UsdMicros {
    UsdMicros::parse(s).unwrap()
}

fn account(conn: &mut DbConn, name: &str, budget: &str) {
    ledger::create_account(
        conn,
        &at(1),
        &NewAccount {
            name: AccountName::new(name).unwrap(),
            display_name: name.into(),
            description: String::new(),
            starts_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            ends_at: Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap(),
            overdraft: UsdMicros::ZERO,
            budget: usd(budget),
        },
    )
    .unwrap();
}

fn pricing() -> Pricing {
    let mut p = Pricing::default();
    p.partitions.insert(
        "aws".into(),
        Rates {
            cpu_hour: Decimal::from_str("0.60").unwrap(),
            gpu_hour: Decimal::from_str("3").unwrap(),
            minimum: usd("0.10"),
            max_time_seconds: Some(86_400),
            ..Default::default()
        },
    );
    p
}

fn req(account: &str, cpus: u64, minutes: u64) -> CheckRequest {
    CheckRequest {
        account: account.into(),
        partition: "aws".into(),
        resources: Resources {
            nodes: 1,
            cpus,
            ..Default::default()
        },
        time_limit: Some(TimeLimit::Seconds(minutes * 60)),
        ..Default::default()
    }
}

fn hold_of(conn: &mut DbConn, a: &check::CheckAnswer) -> asbb::db::models::Hold {
    let id = asbb::db::models::parse_hold_reference(a.transaction_id.as_deref().unwrap()).unwrap();
    queries::hold(conn, id).unwrap()
}

db_test!(a_check_holds_the_estimate_times_the_buffer, |db| {
    let mut c = db.conn();
    account(&mut c, "lab", "100");
    // 4 CPUs for 90 minutes at 0.60 = 3.60; held x 1.2 = 4.32.
    let a = check::check(&mut c, &at(2), &pricing(), &req("lab", 4, 90)).unwrap();
    assert!(a.available, "{a:?}");
    assert_eq!(
        (
            a.reason.as_str(),
            a.estimated_cost.as_str(),
            a.hold_amount.as_str()
        ),
        ("ok", "3.60", "4.32")
    );
    assert_eq!(a.budget_remaining.as_deref(), Some("95.68"));
    let h = hold_of(&mut c, &a);
    assert_eq!(
        (h.amount, h.state, h.partition.as_deref()),
        (usd("4.32"), HoldState::Open, Some("aws"))
    );
    // The hold outlives the job's time limit by the hold lifetime.
    assert_eq!(
        h.expires_at.unwrap() - h.created_at,
        chrono::Duration::days(7) + chrono::Duration::minutes(90)
    );
    // Unlimited: the partition's maximum (a day) is priced.
    let mut r = req("lab", 1, 1);
    r.time_limit = Some(TimeLimit::Unlimited);
    let a = check::check(&mut c, &at(2), &pricing(), &r).unwrap();
    assert_eq!(
        (a.estimated_cost.as_str(), a.estimate.time_source.as_str()),
        ("14.40", "partition_max")
    );
    // The minimum charge.
    let a = check::check(&mut c, &at(2), &pricing(), &req("lab", 1, 1)).unwrap();
    assert_eq!(
        (a.estimated_cost.as_str(), a.estimate.minimum_applied),
        ("0.10", true)
    );
});

db_test!(denials_carry_reason_codes_and_write_nothing, |db| {
    let mut c = db.conn();
    account(&mut c, "poor", "1");
    let entries = |c: &mut DbConn| queries::account(c, "poor").unwrap().entry_count;
    let before = entries(&mut c);
    let a = check::check(&mut c, &at(2), &pricing(), &req("poor", 2, 24 * 60)).unwrap();
    assert!(!a.available);
    assert_eq!(a.reason, "insufficient_funds");
    assert!(a.message.contains("has $1.00 available"), "{}", a.message);
    assert_eq!(a.budget_remaining.as_deref(), Some("1.00"));
    assert_eq!(entries(&mut c), before);
    let a = check::check(&mut c, &at(2), &pricing(), &req("nobody", 1, 10)).unwrap();
    assert_eq!(a.reason, "unknown_account");
    let mut r = req("poor", 1, 10);
    r.partition = "debug".into();
    let a = check::check(&mut c, &at(2), &pricing(), &r).unwrap();
    assert_eq!(
        (a.available, a.reason.as_str()),
        (false, "unpriced_partition")
    );
    let mut p = pricing();
    p.allow_unpriced = true;
    let a = check::check(&mut c, &at(2), &p, &r).unwrap();
    assert_eq!(
        (a.available, a.reason.as_str(), a.transaction_id.clone()),
        (true, "not_priced", None)
    );
    let rows: i64 = asbb::db::schema::checks::table
        .count()
        .get_result(&mut c)
        .unwrap();
    assert_eq!(
        rows, 0,
        "answers without a hold or a request id are not stored"
    );
});

db_test!(a_request_id_returns_the_first_answer, |db| {
    let mut c = db.conn();
    account(&mut c, "lab", "10");
    let mut r = req("lab", 4, 60);
    r.request_id = Some("c1:42".into());
    let first = check::check(&mut c, &at(2), &pricing(), &r).unwrap();
    let again = check::check(&mut c, &at(3), &pricing(), &r).unwrap();
    assert!(again.replayed && !first.replayed);
    assert_eq!(again.transaction_id, first.transaction_id);
    assert_eq!(
        queries::account(&mut c, "lab").unwrap().balances.held,
        usd("2.88")
    );
    // The same id for another request is refused.
    let mut other = r.clone();
    other.resources.cpus = 5;
    assert!(matches!(
        check::check(&mut c, &at(3), &pricing(), &other),
        Err(check::CheckError::RequestIdConflict(_))
    ));
    // A denial is remembered too: money freed later does not change the first answer.
    let mut big = req("lab", 8, 24 * 60);
    big.request_id = Some("c1:43".into());
    let denied = check::check(&mut c, &at(3), &pricing(), &big).unwrap();
    assert!(!denied.available);
    ledger::credit(
        &mut c,
        &at(3),
        &ledger::MoneyOp {
            account: "lab",
            amount: usd("1000"),
            reason: "top-up",
            key: "k-topup",
            job_id: None,
            partition: None,
        },
    )
    .unwrap();
    let again = check::check(&mut c, &at(4), &pricing(), &big).unwrap();
    assert!(!again.available && again.replayed);
});

db_test!(arrays_hold_for_every_task, |db| {
    let mut c = db.conn();
    account(&mut c, "lab", "100");
    let mut r = req("lab", 1, 10);
    r.array_tasks = Some(4);
    let a = check::check(&mut c, &at(2), &pricing(), &r).unwrap();
    assert_eq!(
        (a.estimated_cost.as_str(), a.hold_amount.as_str()),
        ("0.40", "0.48")
    );
    assert_eq!(hold_of(&mut c, &a).tasks, Some(4));
});

db_test!(a_plan_ceiling_replaces_the_rate_estimate, |db| {
    let mut c = db.conn();
    account(&mut c, "lab", "100");
    let now = asbb::domain::time::to_naive(Utc::now());
    for (id, acct) in [("plan-1", "lab"), ("plan-other", "elsewhere")] {
        diesel::insert_into(asbb::db::schema::plans::table)
            .values((
                asbb::db::schema::plans::plan_id.eq(id),
                asbb::db::schema::plans::shape.eq("asba"),
                asbb::db::schema::plans::account.eq(acct),
                asbb::db::schema::plans::max_total_micros.eq(25_000_000i64),
                asbb::db::schema::plans::instance_types.eq(""),
                asbb::db::schema::plans::content_digest.eq("x"),
                asbb::db::schema::plans::received_at.eq(now),
            ))
            .execute(&mut c)
            .unwrap();
    }
    let mut r = req("lab", 1, 10);
    r.plan = Some("plan-1".into());
    let a = check::check(&mut c, &at(2), &pricing(), &r).unwrap();
    assert_eq!(
        (
            a.estimate.source.as_str(),
            a.estimated_cost.as_str(),
            a.hold_amount.as_str()
        ),
        ("plan", "25.00", "25.00")
    );
    // Another account's plan, or one never taken in: the rates, with a note saying why.
    for plan in ["plan-other", "plan-missing"] {
        r.plan = Some(plan.into());
        let a = check::check(&mut c, &at(2), &pricing(), &r).unwrap();
        assert_eq!(a.estimate.source, "rates");
        assert!(
            a.estimate.notes.iter().any(|n| n.contains(plan)),
            "{:?}",
            a.estimate.notes
        );
    }
});

db_test!(repricing_replaces_the_hold_or_keeps_it, |db| {
    let mut c = db.conn();
    account(&mut c, "lab", "10");
    let a = check::check(&mut c, &at(2), &pricing(), &req("lab", 1, 60)).unwrap();
    let old = hold_of(&mut c, &a);
    let mut r = req("lab", 1, 120);
    r.replace_hold = Some(old.id);
    r.job_id = Some("77".into());
    let b = check::check(&mut c, &at(2), &pricing(), &r).unwrap();
    assert_eq!(b.replaced_hold.as_deref(), Some(old.reference().as_str()));
    assert_eq!(
        queries::hold(&mut c, old.id).unwrap().state,
        HoldState::Released
    );
    let new = hold_of(&mut c, &b);
    assert_eq!(
        (new.amount, new.job_id.as_deref()),
        (usd("1.44"), Some("77"))
    );
    // Too expensive: refused, and the hold it would replace stays.
    let mut r = req("lab", 8, 24 * 60);
    r.replace_hold = Some(new.id);
    let d = check::check(&mut c, &at(2), &pricing(), &r).unwrap();
    assert!(!d.available);
    assert_eq!(
        queries::hold(&mut c, new.id).unwrap().state,
        HoldState::Open
    );
    assert_eq!(
        queries::account(&mut c, "lab").unwrap().balances.held,
        usd("1.44")
    );
    // Another account's hold cannot be replaced.
    account(&mut c, "other", "10");
    let mut r = req("other", 1, 60);
    r.replace_hold = Some(new.id);
    assert!(matches!(
        check::check(&mut c, &at(2), &pricing(), &r),
        Err(check::CheckError::UnknownHold(_))
    ));
});

db_test!(corrections_are_learned_from_reconciled_runs, |db| {
    let mut c = db.conn();
    account(&mut c, "lab", "1000");
    // Five runs estimated at 0.60 each that really cost 0.75: factor 1.25.
    for i in 0..5 {
        let a = check::check(&mut c, &at(2), &pricing(), &req("lab", 1, 60)).unwrap();
        let h = hold_of(&mut c, &a);
        ledger::charge_hold(
            &mut c,
            &at(3),
            &ChargeHold {
                hold_id: h.id,
                actual: usd("0.75"),
                job_id: Some(&format!("{}", 100 + i)),
                reason: "",
                key: &format!("charge:test:{i}"),
            },
        )
        .unwrap();
        // What reconcile records for a run: its hold, what it was booked to, and when.
        diesel::insert_into(asbb::db::schema::cost_records::table)
            .values((
                asbb::db::schema::cost_records::run_key.eq(format!("{}#0", 100 + i)),
                asbb::db::schema::cost_records::job_id.eq(format!("{}", 100 + i)),
                asbb::db::schema::cost_records::job_base.eq(100 + i as i64),
                asbb::db::schema::cost_records::run.eq(0i64),
                asbb::db::schema::cost_records::account.eq("lab"),
                asbb::db::schema::cost_records::actual_micros.eq(750_000i64),
                asbb::db::schema::cost_records::content_digest.eq("x"),
                asbb::db::schema::cost_records::status.eq("charged"),
                asbb::db::schema::cost_records::hold_id.eq(Some(h.id)),
                asbb::db::schema::cost_records::charged_account.eq(Some("lab")),
                asbb::db::schema::cost_records::charged_partition.eq(Some("aws")),
                asbb::db::schema::cost_records::received_at
                    .eq(asbb::domain::time::to_naive(at(3).effective_at)),
                asbb::db::schema::cost_records::reconciled_at
                    .eq(Some(asbb::domain::time::to_naive(at(3).effective_at))),
            ))
            .execute(&mut c)
            .unwrap();
    }
    let a = check::check(&mut c, &at(4), &pricing(), &req("lab", 1, 60)).unwrap();
    let corr = a
        .estimate
        .correction
        .clone()
        .expect("a correction after 5 runs");
    assert_eq!(
        (corr.factor.as_str(), corr.runs, corr.bounded),
        ("1.25", 5, false)
    );
    assert_eq!(
        (a.estimate.base_per_task.as_str(), a.estimated_cost.as_str()),
        ("0.60", "0.75")
    );
    // Learning compares with the uncorrected estimate, so it does not feed on itself.
    let h = check::history(&mut c, "lab", "aws", at(1).effective_at).unwrap();
    assert_eq!(
        (h.runs, h.estimated, h.actual),
        (5, usd("3.00"), usd("3.75"))
    );
    // Switched off: the rates alone.
    let mut p = pricing();
    p.correction.enabled = false;
    let a = check::check(&mut c, &at(4), &p, &req("lab", 1, 60)).unwrap();
    assert_eq!(
        (a.estimated_cost.as_str(), a.estimate.correction.is_none()),
        ("0.60", true)
    );
    // Outside the window: forgotten.
    p = pricing();
    p.correction_window = std::time::Duration::from_secs(3600);
    let a = check::check(&mut c, &at(20), &p, &req("lab", 1, 60)).unwrap();
    assert!(a.estimate.correction.is_none());
    assert_eq!(
        check::histories(&mut c, at(1).effective_at).unwrap().len(),
        1
    );
});

db_test!(checks_commit_together_in_one_transaction, |db| {
    let mut c = db.conn();
    account(&mut c, "a1", "10");
    account(&mut c, "a2", "1");
    let p = pricing();
    let reqs = [req("a1", 1, 60), req("a2", 8, 600), req("a1", 2, 60)];
    let priced: Vec<_> = reqs
        .iter()
        .map(|r| check::price(&mut c, &p, r, Default::default()).unwrap())
        .collect();
    let answers = asbb::db::write_transaction(&mut c, |c| {
        Ok::<_, check::CheckError>(
            reqs.iter()
                .zip(&priced)
                .map(|(r, pr)| check::commit(c, &at(2), &p, r, pr).unwrap())
                .collect::<Vec<_>>(),
        )
    })
    .unwrap();
    let ok: Vec<bool> = answers.iter().map(|a| a.available).collect();
    assert_eq!(ok, [true, false, true]);
    assert_eq!(
        queries::account(&mut c, "a1").unwrap().balances.held,
        usd("2.16")
    );
    let audit = asbb::db::audit::verify(&mut c, None, &mut |_| {}).unwrap();
    assert!(audit.discrepancies.is_empty(), "{:?}", audit.discrepancies);
});

fn checks_count(c: &mut DbConn) -> i64 {
    use asbb::db::schema::checks;
    checks::table.count().get_result(c).unwrap()
}

fn journal_count(c: &mut DbConn) -> i64 {
    use asbb::db::schema::journal;
    journal::table.count().get_result(c).unwrap()
}

db_test!(pruning_deletes_old_checks_of_resolved_holds_only, |db| {
    let mut c = db.conn();
    account(&mut c, "lab", "1000");
    let checked = |c: &mut DbConn, day: u32, rid: &str| {
        let mut r = req("lab", 1, 60);
        r.request_id = Some(rid.into());
        let a = check::check(c, &at(day), &pricing(), &r).unwrap();
        assert!(a.available, "{a:?}");
        hold_of(c, &a).id
    };
    let _open_old = checked(&mut c, 2, "a");
    let released = checked(&mut c, 2, "b");
    let charged = checked(&mut c, 10, "d");
    let _open_new = checked(&mut c, 20, "e");
    ledger::release_hold(&mut c, &at(3), released, "job cancelled", "rel-b").unwrap();
    ledger::charge_hold(
        &mut c,
        &at(11),
        &ChargeHold {
            hold_id: charged,
            actual: usd("0.50"),
            job_id: None,
            reason: "",
            key: "chg-d",
        },
    )
    .unwrap();
    // A denial of day 2 is a row without a hold.
    let mut big = req("lab", 64, 24 * 60 * 30);
    big.request_id = Some("denied".into());
    assert!(
        !check::check(&mut c, &at(2), &pricing(), &big)
            .unwrap()
            .available
    );
    let journal = journal_count(&mut c);
    assert_eq!(checks_count(&mut c), 5);
    let before = at(15).effective_at;

    let dry = check::prune(&mut c, before, true).unwrap();
    assert_eq!((dry.removed, dry.kept_open, dry.dry_run), (3, 1, true));
    assert_eq!(checks_count(&mut c), 5, "a dry run deletes nothing");

    let r = check::prune(&mut c, before, false).unwrap();
    assert_eq!((r.removed, r.kept_open, r.dry_run), (3, 1, false));
    assert_eq!(
        checks_count(&mut c),
        2,
        "the open old one and the new one stay"
    );
    assert_eq!(journal_count(&mut c), journal, "the journal is untouched");
    let audit = asbb::db::audit::verify(&mut c, None, &mut |_| {}).unwrap();
    assert!(audit.discrepancies.is_empty(), "{:?}", audit.discrepancies);
    // The open hold's request still replays its first answer.
    let mut r1 = req("lab", 1, 60);
    r1.request_id = Some("a".into());
    assert!(
        check::check(&mut c, &at(16), &pricing(), &r1)
            .unwrap()
            .replayed
    );
    // Twice: nothing more.
    let again = check::prune(&mut c, before, false).unwrap();
    assert_eq!((again.removed, again.kept_open), (0, 1));
});
