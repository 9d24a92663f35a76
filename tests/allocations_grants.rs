//! Allocation schedules, grants with budget periods, burn-rate snapshots and alerts, simulated
//! over years in seconds through `--as-of` times, on both backends. Every figure is checked
//! against a hand-computed expectation (the arithmetic is in the comments).

mod common;

use asbb::config::Config;
use asbb::db::allocations::{self, ProcessFilter};
use asbb::db::burn::{self, window_len, ComputeOptions};
use asbb::db::ledger::{self, ChargeUnmatched, NewAccount, OpContext};
use asbb::db::{alerts, audit, grants, queries, DbConn};
use asbb::domain::burn::{BurnStatus, BurnThresholds, HealthBand};
use asbb::domain::grant::CarryOver;
use asbb::domain::schedule::{Frequency, Schedule};
use asbb::domain::{AccountName, UsdMicros};
use chrono::{DateTime, Duration, TimeZone, Utc};
use rust_decimal::Decimal;

fn day(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
}

fn usd(s: &str) -> UsdMicros {
    UsdMicros::parse(s).unwrap()
}

fn at(t: DateTime<Utc>) -> OpContext {
    OpContext::at("test", t)
}

fn account(conn: &mut DbConn, name: &str, start: DateTime<Utc>, end: DateTime<Utc>) {
    ledger::create_account(
        conn,
        &at(start),
        &NewAccount {
            name: AccountName::new(name).unwrap(),
            display_name: name.into(),
            description: String::new(),
            starts_at: start,
            ends_at: end,
            overdraft: UsdMicros::ZERO,
            budget: UsdMicros::ZERO,
        },
    )
    .unwrap();
}

fn charge(conn: &mut DbConn, name: &str, amount: &str, t: DateTime<Utc>) {
    let key = format!("test-charge:{name}:{}", t.timestamp());
    ledger::charge_without_hold(
        conn,
        &at(t),
        &ChargeUnmatched {
            account: name,
            amount: usd(amount),
            partition: None,
            cluster: None,
            job_id: None,
            user_name: None,
            reason: "",
            key: &key,
        },
    )
    .unwrap();
}

fn credits(conn: &mut DbConn, name: &str) -> Vec<(String, i64, String)> {
    let mut v: Vec<_> = queries::entries(
        conn,
        &queries::EntryFilter {
            account: Some(name.into()),
            ..Default::default()
        },
    )
    .unwrap()
    .into_iter()
    .filter(|e| !e.effect.credited.is_zero())
    .map(|e| {
        (
            e.effective_at.format("%Y-%m-%d").to_string(),
            e.effect.credited.micros(),
            e.idempotency_key,
        )
    })
    .collect();
    v.reverse();
    v
}

fn assert_audit_clean(conn: &mut DbConn) {
    let r = audit::verify(conn, None, &mut |_| {}).unwrap();
    assert!(r.is_clean(), "{:?}", r.discrepancies);
}

db_test!(month_end_schedule_with_missed_timer_and_pause, |db| {
    let mut c = db.conn();
    account(&mut c, "month-end", day(2024, 1, 31), day(2025, 1, 1));
    let terms = Schedule::new(
        day(2024, 1, 31),
        day(2025, 1, 1),
        usd("100"),
        usd("1200"),
        Frequency::Monthly,
    )
    .unwrap();
    let s = allocations::create_schedule(&mut c, &at(day(2024, 1, 31)), "month-end", &terms, "")
        .unwrap();
    let run = |c: &mut DbConn, t| {
        allocations::process(c, &at(t), &ProcessFilter::default(), false).unwrap()
    };
    // Mid-May: Jan 31, Feb 29 (leap year), Mar 31, Apr 30.
    let r = run(&mut c, day(2024, 5, 15));
    assert_eq!(r.periods.len(), 4);
    assert_eq!(
        credits(&mut c, "month-end"),
        [
            (
                "2024-01-31".into(),
                100_000_000,
                format!("alloc:{}:1", s.id)
            ),
            (
                "2024-02-29".into(),
                100_000_000,
                format!("alloc:{}:2", s.id)
            ),
            (
                "2024-03-31".into(),
                100_000_000,
                format!("alloc:{}:3", s.id)
            ),
            (
                "2024-04-30".into(),
                100_000_000,
                format!("alloc:{}:4", s.id)
            ),
        ]
    );
    // Run again at the same time: nothing more, twice.
    assert!(run(&mut c, day(2024, 5, 15)).periods.is_empty());
    // A dry run shows the next one without booking it.
    let dry = allocations::process(
        &mut c,
        &at(day(2024, 6, 1)),
        &ProcessFilter::default(),
        true,
    )
    .unwrap();
    assert_eq!(dry.periods.len(), 1);
    assert_eq!(
        queries::account(&mut c, "month-end")
            .unwrap()
            .balances
            .credited,
        usd("400")
    );
    // The timer misses June and July: mid-August catches up May 31, Jun 30, Jul 31.
    let r = run(&mut c, day(2024, 8, 15));
    let dates: Vec<_> = r.periods.iter().map(|p| p.due_at).collect();
    assert_eq!(
        dates,
        [day(2024, 5, 31), day(2024, 6, 30), day(2024, 7, 31)]
    );
    // Paused Aug 20 to Oct 10 without catch-up: Aug 31 and Sep 30 are skipped for good.
    allocations::pause(&mut c, &at(day(2024, 8, 20)), s.id, "grant renewal pending").unwrap();
    assert!(
        run(&mut c, day(2024, 10, 1)).periods.is_empty(),
        "paused schedules wait"
    );
    let (after, report) = allocations::resume(&mut c, &at(day(2024, 10, 10)), s.id, false).unwrap();
    assert_eq!(
        report
            .periods
            .iter()
            .filter(|p| p.outcome == "skipped")
            .count(),
        2
    );
    assert_eq!(after.skipped_count, 2);
    // Oct 31 and Nov 30 come; Dec 31 too (inside the end): 7 + 3 = 10 credits, $1000 of $1200.
    run(&mut c, day(2025, 3, 1));
    let s = allocations::load(&mut c, s.id).unwrap();
    assert_eq!(
        (s.credited, s.credited_count, s.skipped_count),
        (usd("1000"), 10, 2)
    );
    assert_eq!(s.status, "finished", "the end date has passed");
    assert_eq!(
        queries::account(&mut c, "month-end")
            .unwrap()
            .balances
            .credited,
        usd("1000")
    );
    let periods = allocations::periods(&mut c, s.id).unwrap();
    assert_eq!(periods.len(), 12);
    assert_eq!(periods[11].due_at, day(2024, 12, 31));
    // The finished schedule raised one info alert, once.
    let a = alerts::list(&mut c, &alerts::AlertFilter::default()).unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(
        (a[0].kind.as_str(), a[0].severity.as_str()),
        ("allocations_finished", "info")
    );
    run(&mut c, day(2025, 4, 1));
    assert_eq!(
        alerts::list(&mut c, &alerts::AlertFilter::default())
            .unwrap()
            .len(),
        1
    );
    assert_audit_clean(&mut c);
});

db_test!(catch_up_with_resume_credits_at_the_resume, |db| {
    let mut c = db.conn();
    account(&mut c, "weekly", day(2025, 1, 1), day(2026, 1, 1));
    let terms = Schedule::new(
        day(2025, 1, 1),
        day(2026, 1, 1),
        usd("10"),
        usd("520"),
        Frequency::Weekly,
    )
    .unwrap();
    let s =
        allocations::create_schedule(&mut c, &at(day(2025, 1, 1)), "weekly", &terms, "").unwrap();
    allocations::pause(&mut c, &at(day(2025, 1, 2)), s.id, "").unwrap();
    // Paused from Jan 2 to Jan 30: Jan 8, 15, 22, 29 are caught up, effective Jan 30.
    let (_, r) = allocations::resume(&mut c, &at(day(2025, 1, 30)), s.id, true).unwrap();
    assert_eq!(r.periods.len(), 4);
    assert!(r.periods.iter().all(|p| p.effective_at == day(2025, 1, 30)));
    // The whole year: 52 credits of $10 (the 53rd, Dec 31, would pass the total).
    allocations::process(
        &mut c,
        &at(day(2026, 1, 5)),
        &ProcessFilter::default(),
        false,
    )
    .unwrap();
    let s = allocations::load(&mut c, s.id).unwrap();
    assert_eq!((s.credited, s.credited_count), (usd("520"), 52));
    assert_audit_clean(&mut c);
});

fn config() -> Config {
    Config::default()
}

db_test!(
    three_year_grant_with_periods_carry_over_burn_and_alerts,
    |db| {
        let mut c = db.conn();
        // $36,000 over 2024-2026 (2024 is a leap year), 12-month periods: $12,000 each; two
        // accounts with half each: $6,000 a period. Indirect 50 %, carry-over capped at 10 %.
        account(&mut c, "over", day(2024, 1, 1), day(2027, 1, 1));
        account(&mut c, "under", day(2024, 1, 1), day(2027, 1, 1));
        let g = grants::create(
            &mut c,
            &at(day(2024, 1, 1)),
            &grants::NewGrant {
                number: "NSF-2024-1".into(),
                agency: "NSF".into(),
                program: String::new(),
                pi: "Dr. PI".into(),
                co_pis: vec!["Dr. A".into(), "Dr. B, Jr.".into()],
                institution: String::new(),
                department: String::new(),
                amount: usd("36000"),
                start: day(2024, 1, 1),
                end: day(2027, 1, 1),
                period_months: 12,
                indirect_rate: Decimal::new(5, 1),
                federal_award_id: "47.070".into(),
                project_code: String::new(),
                cost_center: String::new(),
                carry_over: CarryOver::Capped(Decimal::from(10)),
                period_budgets: None,
            },
        )
        .unwrap();
        assert_eq!(g.co_pis, ["Dr. A", "Dr. B, Jr."]);
        grants::link(
            &mut c,
            &at(day(2024, 1, 1)),
            "NSF-2024-1",
            "over",
            Decimal::from(50),
        )
        .unwrap();
        grants::link(
            &mut c,
            &at(day(2024, 1, 1)),
            "NSF-2024-1",
            "under",
            Decimal::from(50),
        )
        .unwrap();
        assert!(grants::link(
            &mut c,
            &at(day(2024, 1, 1)),
            "NSF-2024-1",
            "under",
            Decimal::from(1)
        )
        .is_err());
        // A monthly timer and monthly charges: "over" spends $900 on the 15th (plan: $500),
        // "under" $200. The timer misses February and March 2025.
        let mut t = day(2024, 1, 1);
        while t < day(2026, 1, 1) {
            let missed = t == day(2025, 2, 1) || t == day(2025, 3, 1);
            if !missed {
                grants::process(&mut c, &at(t), None, false).unwrap();
            }
            let mid = t + Duration::days(14);
            charge(&mut c, "over", "900", mid);
            charge(&mut c, "under", "200", mid);
            t = t.checked_add_months(chrono::Months::new(1)).unwrap();
        }
        grants::process(&mut c, &at(day(2026, 1, 1)), None, false).unwrap();
        let p = grants::period_rows(&mut c, g.id).unwrap();
        assert_eq!(
            p.iter().map(|p| p.budget_micros).collect::<Vec<_>>(),
            [12_000_000_000; 3]
        );
        // Period 1: "over" spent 12 x 900 = 10,800 of 6,000: nothing left. "under" spent 2,400:
        // 3,600 left, 10 % of 6,000 = 600 carried, 3,000 expired.
        assert_eq!(p[0].status, "closed");
        assert_eq!(p[0].spent_micros, Some(13_200_000_000));
        assert_eq!(p[0].carried_out_micros, Some(600_000_000));
        assert_eq!(p[0].expired_micros, Some(3_000_000_000));
        // Period 2 starts with 600 carried in; same spending: "under" has 6,000 + 600 - 2,400 =
        // 4,200 left, 600 carried, 3,600 expired. Closed at 2026-01-01 (the missed months do not
        // matter: every transition has its own date).
        assert_eq!(p[1].carry_in_micros, 600_000_000);
        assert_eq!(p[1].expired_micros, Some(3_600_000_000));
        assert_eq!(p[2].status, "active");
        let under = credits(&mut c, "under");
        let keys: Vec<&str> = under.iter().map(|x| x.2.as_str()).collect();
        assert_eq!(
            keys,
            [
                format!("grant:{}:p1:credit:under", g.id).as_str(),
                format!("grant:{}:p1:expire:under", g.id).as_str(),
                format!("grant:{}:p2:credit:under", g.id).as_str(),
                format!("grant:{}:p2:expire:under", g.id).as_str(),
                format!("grant:{}:p3:credit:under", g.id).as_str(),
            ]
        );
        assert_eq!(
            under[1],
            ("2025-01-01".into(), -3_000_000_000, keys[1].to_string())
        );
        // Running the transitions again books nothing.
        let again = grants::process(&mut c, &at(day(2026, 1, 1)), None, false).unwrap();
        assert!(again.transitions.is_empty());
        assert_audit_clean(&mut c);

        // Burn rate of "over" as of 2024-07-01, 30-day window (June): $900 spent; expected
        // 6,000 x 30 / 366 = 491.80; 900 x 366 / (6,000 x 30) = 1.83: +83 %.
        let th = BurnThresholds::default();
        let b =
            burn::account_burn(&mut c, "over", day(2024, 7, 1), Duration::days(30), &th).unwrap();
        let f = &b.figures;
        assert_eq!(f.window_spent, usd("900"));
        assert_eq!(f.window_expected, usd("491.803279"));
        assert_eq!(f.variance_percent, Some(Decimal::from(83)));
        assert_eq!(f.status, BurnStatus::Overspending);
        assert_eq!(f.daily_rate, usd("30"));
        // Money left 6,000 - 6 x 900 = 600 lasts 20 days (Jul 21): 164 of 184 days short;
        // 100 - 83 - 33.33 x 164 / 184 < 0: health 0, CRITICAL.
        assert_eq!(f.projection.remaining, usd("600"));
        assert_eq!(f.projection.depletion, Some(day(2024, 7, 21)));
        assert_eq!((f.health, f.band), (0, HealthBand::Critical));
        // 5,400 + 30 x 184 = 10,920 at period end: 4,920 over a 6,000 budget.
        assert_eq!(f.projection.period_end_spend, usd("10920"));
        assert_eq!(f.projection.period_overrun, usd("4920"));
        assert_eq!(f.utilisation_percent, Some(Decimal::from(90)));
        let u =
            burn::account_burn(&mut c, "under", day(2024, 7, 1), Duration::days(30), &th).unwrap();
        // 200 x 366 / 180,000 = 0.40667: -59.33 %; health 100 - 29.67 = 70.33 -> 70.
        assert_eq!(u.figures.variance_percent, Some(Decimal::new(-5933, 2)));
        assert_eq!(u.figures.status, BurnStatus::Underspending);
        assert_eq!(u.figures.health, 70);
        // The grant together: $1,100 in June against 12,000 x 30 / 366 = 983.61: +11.83 %.
        let gb = burn::grant_burn(
            &mut c,
            "NSF-2024-1",
            day(2024, 7, 1),
            Duration::days(30),
            &th,
        )
        .unwrap();
        assert_eq!(gb.figures.window_spent, usd("1100"));
        assert_eq!(gb.figures.variance_percent, Some(Decimal::new(1183, 2)));
        assert_eq!(gb.figures.status, BurnStatus::OnTrack);

        // The snapshot of the last day of period 1 (as of 2025-01-01 00:00, when period 2
        // starts) says what a live analysis says then: period 2, nothing spent in it yet.
        let opts = ComputeOptions {
            window_days: 30,
            thresholds: th,
        };
        burn::compute(
            &mut c,
            day(2025, 1, 2),
            day(2026, 1, 2),
            &opts,
            &mut |_, _| {},
        )
        .unwrap();
        let t = day(2025, 1, 1);
        for name in ["over", "under"] {
            let s = burn::snapshots(
                &mut c,
                name,
                day(2024, 12, 31).date_naive(),
                day(2024, 12, 31).date_naive(),
            )
            .unwrap()
            .remove(0);
            let live = burn::account_burn(&mut c, name, t, window_len(t, 30), &th).unwrap();
            assert_eq!(s.period_start, asbb::domain::time::to_naive(t), "{name}");
            assert_eq!(s.period_spent_micros, 0, "{name}");
            assert_eq!(s.period_spent_micros, live.inputs.period_spent.micros());
            assert_eq!(s.health_score, i64::from(live.figures.health), "{name}");
            assert_eq!(
                s.projected_period_micros,
                live.figures.projection.period_end_spend.micros(),
                "{name}"
            );
            assert_eq!(
                s.risk_level,
                live.figures.projection.risk.as_str(),
                "{name}"
            );
        }
    }
);

db_test!(snapshots_catch_up_match_live_and_follow_backfills, |db| {
    let mut c = db.conn();
    account(&mut c, "acct", day(2024, 1, 1), day(2025, 1, 1));
    ledger::credit(
        &mut c,
        &at(day(2024, 1, 1)),
        &ledger::MoneyOp {
            account: "acct",
            amount: usd("3660"),
            reason: "budget",
            key: "k-budget",
            job_id: None,
            partition: None,
        },
    )
    .unwrap();
    // $12 a day, every day, for the first half of 2024.
    let mut t = day(2024, 1, 1) + Duration::hours(10);
    while t < day(2024, 7, 1) {
        charge(&mut c, "acct", "12", t);
        t += Duration::days(1);
    }
    let opts = ComputeOptions {
        window_days: 30,
        thresholds: BurnThresholds::default(),
    };
    let now = day(2026, 1, 1);
    let r = burn::compute(&mut c, day(2024, 7, 1), now, &opts, &mut |_, _| {}).unwrap();
    // Jan 1 to Jun 30 2024: 182 days.
    assert_eq!(r.days_written, 182);
    let again = burn::compute(&mut c, day(2024, 7, 1), now, &opts, &mut |_, _| {}).unwrap();
    assert_eq!(again.days_written, 0, "a rerun writes nothing");
    let snaps = burn::snapshots(
        &mut c,
        "acct",
        day(2024, 1, 1).date_naive(),
        day(2024, 12, 31).date_naive(),
    )
    .unwrap();
    assert_eq!(snaps.len(), 182);
    let last = snaps.last().unwrap();
    // Plan: 3,660 over 366 days = $10 a day; spending $12: +20 % exactly, ON_TRACK (not above 20).
    assert_eq!(last.spent_micros, 12_000_000);
    assert_eq!(last.charged_micros, 182 * 12_000_000);
    assert_eq!(last.window_spent_micros, 360_000_000);
    assert_eq!(last.window_expected_micros, 300_000_000);
    assert_eq!(last.variance_percent.as_deref(), Some("20.00"));
    assert_eq!(last.burn_status, "ON_TRACK");
    // Each stored day equals the live analysis as of the following midnight.
    for s in [&snaps[40], &snaps[100], last] {
        let t = burn::day_start(s.day) + Duration::days(1);
        let live =
            burn::account_burn(&mut c, "acct", t, window_len(t, 30), &opts.thresholds).unwrap();
        assert_eq!(s.health_score, i64::from(live.figures.health), "{}", s.day);
        assert_eq!(
            s.window_spent_micros,
            live.figures.window_spent.micros(),
            "{}",
            s.day
        );
        assert_eq!(
            stored(&s.variance_percent),
            live.figures.variance_percent,
            "{}",
            s.day
        );
        assert_eq!(s.rate_7d_micros, live.figures.rate_7d.micros());
        assert_eq!(
            s.projected_period_micros,
            live.figures.projection.period_end_spend.micros()
        );
    }
    // A charge booked later, effective June 20: the next run recomputes from that day.
    ledger::charge_without_hold(
        &mut c,
        &OpContext {
            actor: "test".into(),
            effective_at: day(2024, 6, 20) + Duration::hours(12),
            recorded_at: now,
        },
        &ChargeUnmatched {
            account: "acct",
            amount: usd("100"),
            partition: None,
            cluster: None,
            job_id: None,
            user_name: None,
            reason: "late",
            key: "late-1",
        },
    )
    .unwrap();
    let r = burn::compute(&mut c, day(2024, 7, 2), now, &opts, &mut |_, _| {}).unwrap();
    assert_eq!(r.recomputed, 1);
    assert_eq!(r.days_written, 12, "June 20 to July 1");
    let snaps = burn::snapshots(
        &mut c,
        "acct",
        day(2024, 6, 30).date_naive(),
        day(2024, 6, 30).date_naive(),
    )
    .unwrap();
    assert_eq!(snaps[0].window_spent_micros, 460_000_000);
    let t = day(2024, 7, 1);
    let live = burn::account_burn(&mut c, "acct", t, Duration::days(30), &opts.thresholds).unwrap();
    assert_eq!(snaps[0].health_score, i64::from(live.figures.health));
    assert_eq!(
        stored(&snaps[0].variance_percent),
        live.figures.variance_percent
    );
});

fn stored(s: &Option<String>) -> Option<Decimal> {
    burn::stored_variance(s)
}

db_test!(alerts_are_raised_once_resolved_and_acknowledged, |db| {
    let mut c = db.conn();
    account(&mut c, "hot", day(2024, 1, 1), day(2025, 1, 1));
    ledger::credit(
        &mut c,
        &at(day(2024, 1, 1)),
        &ledger::MoneyOp {
            account: "hot",
            amount: usd("3660"),
            reason: "budget",
            key: "k-b",
            job_id: None,
            partition: None,
        },
    )
    .unwrap();
    // $20 a day against a $10 plan for 60 days: +100 %, money gone by day 183.
    let mut t = day(2024, 1, 1) + Duration::hours(3);
    while t < day(2024, 3, 1) {
        charge(&mut c, "hot", "20", t);
        t += Duration::days(1);
    }
    let cfg = config();
    let s = asbb::burn::run_compute(
        &mut c,
        &cfg,
        day(2024, 3, 1),
        day(2026, 1, 1),
        &mut |_, _| {},
    )
    .unwrap();
    let open = alerts::list(&mut c, &alerts::AlertFilter::default()).unwrap();
    let kinds: Vec<(String, String)> = open
        .iter()
        .map(|a| (a.kind.clone(), a.severity.clone()))
        .collect();
    // +100 % > 50 %: critical; health 100 - 100 - ... = 0: critical. Utilisation 1,200 / 3,660
    // = 32.8 %: none. Money (2,460 at $20/day) runs out on Jul 2, before Dec 31, and the
    // period is projected at 1,200 + 20 x 306 = 7,320, more than 50 % over 3,660: critical.
    assert!(
        kinds.contains(&("spend_over_expected".into(), "critical".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("health_low".into(), "critical".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("projected_depletion".into(), "critical".into())),
        "{kinds:?}"
    );
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert!(!kinds.iter().any(|k| k.0 == "utilisation"), "{kinds:?}");
    assert_eq!(s.alerts.raised.len(), open.len());
    // Again: nothing new.
    let s2 = asbb::burn::run_compute(
        &mut c,
        &cfg,
        day(2024, 3, 1),
        day(2026, 1, 1),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(s2.alerts.raised.is_empty());
    assert_eq!(s2.alerts.kept, open.len());
    let id = open[0].id;
    let a = alerts::acknowledge(&mut c, id, "alice", "talked to the PI", day(2026, 1, 1)).unwrap();
    assert_eq!(
        (a.state(), a.acknowledged_by.as_deref()),
        ("acknowledged", Some("alice"))
    );
    assert!(alerts::list(
        &mut c,
        &alerts::AlertFilter {
            severity: Some("loud".into()),
            ..Default::default()
        }
    )
    .is_err());
    // Spending stops for 60 days: the overspending alerts resolve.
    let s3 = asbb::burn::run_compute(
        &mut c,
        &cfg,
        day(2024, 5, 1),
        day(2026, 1, 1),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(s3.alerts.resolved >= 2, "{:?}", s3.alerts);
    let still = alerts::list(&mut c, &alerts::AlertFilter::default()).unwrap();
    assert!(
        !still.iter().any(|a| a.kind == "spend_over_expected"),
        "{still:?}"
    );
    let all = alerts::list(
        &mut c,
        &alerts::AlertFilter {
            all: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(all.iter().any(|a| a.id == id && a.state() == "resolved"));
});

/// A charge recorded now, effective `t`, under `key`.
fn backfill(conn: &mut DbConn, name: &str, amount: &str, t: DateTime<Utc>, key: &str) {
    ledger::charge_without_hold(
        conn,
        &OpContext {
            actor: "test".into(),
            effective_at: t,
            recorded_at: day(2026, 1, 1),
        },
        &ChargeUnmatched {
            account: name,
            amount: usd(amount),
            partition: None,
            cluster: None,
            job_id: None,
            user_name: None,
            reason: "late",
            key,
        },
    )
    .unwrap();
}

db_test!(a_backfill_that_commits_after_a_run_is_found, |db| {
    // Journal ids are handed out before commit: on PostgreSQL an entry can commit with an id
    // below one that committed earlier. A run that happens in between must not make the next
    // run skip it.
    let mut c = db.conn();
    account(&mut c, "slow", day(2024, 1, 1), day(2025, 1, 1));
    account(&mut c, "fast", day(2024, 1, 1), day(2025, 1, 1));
    for a in ["slow", "fast"] {
        ledger::credit(
            &mut c,
            &at(day(2024, 1, 1)),
            &ledger::MoneyOp {
                account: a,
                amount: usd("3660"),
                reason: "budget",
                key: &format!("budget-{a}"),
                job_id: None,
                partition: None,
            },
        )
        .unwrap();
    }
    let opts = ComputeOptions {
        window_days: 30,
        thresholds: BurnThresholds::default(),
    };
    let now = day(2026, 1, 1);
    burn::compute(&mut c, day(2024, 3, 1), now, &opts, &mut |_, _| {}).unwrap();
    if db.backend == common::Backend::Postgres {
        // "slow" books a backfill for February 10 and has not committed yet, while "fast"
        // books one (a higher journal id) that commits at once; a run starts, reads the
        // journal, and has to wait for "slow"'s account row to write its snapshots. Only then
        // does "slow" commit. (On SQLite the one writer makes ids follow commit order.)
        let mut slow = db.conn();
        let mut watcher = db.conn();
        type Run = std::thread::JoinHandle<burn::ComputeReport>;
        asbb::db::write_transaction(&mut slow, |slow| -> Result<Run, ledger::LedgerError> {
            backfill(slow, "slow", "100", day(2024, 2, 10), "late-slow");
            backfill(&mut c, "fast", "5", day(2024, 2, 29), "late-fast");
            let url = db.url.clone();
            let run = std::thread::spawn(move || {
                let mut c = asbb::db::connect_checked(
                    &asbb::db::DbUrl::parse(&url).unwrap(),
                    &asbb::db::ConnectOptions::default(),
                )
                .unwrap();
                burn::compute(&mut c, day(2024, 3, 2), now, &opts, &mut |_, _| {}).unwrap()
            });
            wait_for_a_lock_wait(&mut watcher);
            Ok(run)
        })
        .map(|run| {
            let r = run.join().unwrap();
            assert_eq!(r.recomputed, 1, "the run saw the backfill of 'fast'");
        })
        .unwrap();
    } else {
        burn::compute(&mut c, day(2024, 3, 2), now, &opts, &mut |_, _| {}).unwrap();
        backfill(&mut c, "slow", "100", day(2024, 2, 10), "late-slow");
    }
    // The next run finds the late entry and recomputes "slow" from February 10.
    let r = burn::compute(&mut c, day(2024, 3, 3), now, &opts, &mut |_, _| {}).unwrap();
    assert_eq!(r.recomputed, 1, "the backfill of 'slow' was found");
    let s = burn::snapshots(
        &mut c,
        "slow",
        day(2024, 2, 10).date_naive(),
        day(2024, 3, 2).date_naive(),
    )
    .unwrap();
    assert_eq!(s.len(), 22, "Feb 10 to Mar 2");
    assert_eq!(s[0].spent_micros, 100_000_000);
    assert!(s.iter().all(|x| x.charged_micros == 100_000_000));
    // A run with nothing new recomputes nothing.
    let r = burn::compute(&mut c, day(2024, 3, 3), now, &opts, &mut |_, _| {}).unwrap();
    assert_eq!((r.recomputed, r.days_written), (0, 0));
});

/// Waits until some session of this PostgreSQL database waits for a row lock (the burn-rate run
/// writing the snapshots of an account whose ledger operation has not committed).
fn wait_for_a_lock_wait(conn: &mut DbConn) {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let DbConn::Postgres(pg) = conn else {
        unreachable!("PostgreSQL only")
    };
    for _ in 0..6000 {
        let w: N = diesel::sql_query(
            "SELECT COUNT(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .get_result(pg)
        .unwrap();
        if w.n > 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the burn-rate run never waited for the uncommitted account");
}

db_test!(a_no_cost_extension_lengthens_the_last_period, |db| {
    let mut c = db.conn();
    account(&mut c, "ext", day(2025, 1, 1), day(2027, 1, 1));
    let g = grants::create(
        &mut c,
        &at(day(2025, 1, 1)),
        &grants::NewGrant {
            number: "EXT-1".into(),
            agency: "NSF".into(),
            program: String::new(),
            pi: "Dr. PI".into(),
            co_pis: vec![],
            institution: String::new(),
            department: String::new(),
            amount: usd("24000"),
            start: day(2025, 1, 1),
            end: day(2027, 1, 1),
            period_months: 12,
            indirect_rate: Decimal::ZERO,
            federal_award_id: String::new(),
            project_code: String::new(),
            cost_center: String::new(),
            carry_over: CarryOver::None,
            period_budgets: None,
        },
    )
    .unwrap();
    grants::link(
        &mut c,
        &at(day(2025, 1, 1)),
        "EXT-1",
        "ext",
        Decimal::from(100),
    )
    .unwrap();
    let extend = |c: &mut DbConn, t, end| {
        grants::update(
            c,
            &at(t),
            "EXT-1",
            &grants::GrantUpdate {
                end: Some(end),
                reason: "no-cost extension".into(),
                ..Default::default()
            },
        )
    };
    // Earlier is refused; later lengthens period 2 (pending) with the same budget.
    assert!(extend(&mut c, day(2025, 6, 1), day(2026, 7, 1)).is_err());
    let after = extend(&mut c, day(2025, 6, 1), day(2027, 7, 1)).unwrap();
    assert_eq!((after.end, after.amount), (day(2027, 7, 1), usd("24000")));
    let p = grants::period_rows(&mut c, g.id).unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(
        (p[0].start(), p[0].end()),
        (day(2025, 1, 1), day(2026, 1, 1))
    );
    assert_eq!(
        (p[1].start(), p[1].end()),
        (day(2026, 1, 1), day(2027, 7, 1))
    );
    assert_eq!(p[1].budget_micros, 12_000_000_000);
    let changes: Vec<(String, String, String)> = grants::changes(&mut c, g.id)
        .unwrap()
        .into_iter()
        .map(|(f, o, n, _, r, _)| {
            assert_eq!(r, "no-cost extension");
            (f, o, n)
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("end".into(), "2026-12-31".into(), "2027-06-30".into()),
            (
                "period_end".into(),
                "2:2026-12-31".into(),
                "2:2027-06-30".into()
            ),
        ]
    );
    // Nothing expires at the old end: period 2 runs on.
    grants::process(&mut c, &at(day(2027, 2, 1)), None, false).unwrap();
    let p = grants::period_rows(&mut c, g.id).unwrap();
    assert_eq!(p[1].status, "active");
    // At the new end it closes, and then it cannot be extended again.
    grants::process(&mut c, &at(day(2027, 7, 1)), None, false).unwrap();
    let p = grants::period_rows(&mut c, g.id).unwrap();
    assert_eq!(
        (p[1].status.as_str(), p[1].expired_micros),
        ("closed", Some(12_000_000_000))
    );
    assert!(extend(&mut c, day(2027, 7, 2), day(2027, 12, 31)).is_err());
    assert_audit_clean(&mut c);
});
