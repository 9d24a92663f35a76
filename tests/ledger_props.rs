//! Property test: random sequences of ledger operations on two accounts, checked after every
//! step against a simple model of the balances, and audited at the end.
//!
//! SQLite gets a fresh database per case; PostgreSQL (when `ASBB_TEST_POSTGRES_URL` is set)
//! shares one database per test function, with fresh account names per case.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use asbb::db::ledger::{
    self, ChargeHold, ChargeUnmatched, HoldOutcome, HoldRequest, LedgerError, MoneyOp, NewAccount,
    OpContext, Posted,
};
use asbb::db::{audit, queries, DbConn};
use asbb::domain::{AccountName, DenyReason, EntryKind, HoldState, PartitionName, UsdMicros};
use chrono::{DateTime, Duration, TimeZone, Utc};
use common::TestDb;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use rust_decimal::Decimal;

/// Buffers as (numerator, denominator, stored spelling).
const BUFFERS: [(i64, i64, &str); 4] = [
    (1, 1, "1"),
    (12, 10, "1.2"),
    (125, 100, "1.25"),
    (15, 10, "1.5"),
];
const PARTS: [Option<&str>; 3] = [None, Some("gpu"), Some("cpu")];
const GPU_LIMIT: i64 = 300_000_000;

#[derive(Debug, Clone, Copy)]
enum Actual {
    Zero,
    Exact,
    /// A fraction of what is held, in per mille.
    Under(i64),
    /// This many micro-dollars above what is held.
    Over(i64),
}

#[derive(Debug, Clone)]
enum Op {
    Credit {
        acct: usize,
        micros: i64,
    },
    Adjust {
        acct: usize,
        micros: i64,
    },
    Hold {
        acct: usize,
        estimate: i64,
        buffer: usize,
        part: usize,
        expires_in_h: Option<i64>,
    },
    /// Charges the `pick`-th hold (of all, so resolved ones too).
    Charge {
        pick: usize,
        actual: Actual,
    },
    Release {
        pick: usize,
    },
    /// Expires the `pick`-th hold; with `catch_up`, first advances the clock to exactly its
    /// expiry time when that is still ahead.
    Expire {
        pick: usize,
        catch_up: bool,
    },
    Advance {
        hours: i64,
    },
    Refund {
        acct: usize,
        permille: i64,
    },
    Unmatched {
        acct: usize,
        micros: i64,
        part: usize,
    },
    /// Repeats an earlier successful operation with its key.
    Retry {
        pick: usize,
    },
    /// Reuses an earlier key for a different request.
    Conflict {
        pick: usize,
    },
}

fn actual_strategy() -> impl Strategy<Value = Actual> {
    prop_oneof![
        1 => Just(Actual::Zero),
        2 => Just(Actual::Exact),
        4 => (1i64..1000).prop_map(Actual::Under),
        3 => (1i64..=100_000_000).prop_map(Actual::Over),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0usize..2, 1i64..=500_000_000).prop_map(|(acct, micros)| Op::Credit { acct, micros }),
        1 => (0usize..2, -200_000_000i64..=200_000_000).prop_map(|(acct, m)| Op::Adjust {
            acct,
            micros: if m == 0 { 1 } else { m }
        }),
        5 => (0usize..2, 1i64..=300_000_000, 0usize..4, 0usize..3, proptest::option::of(1i64..=8))
            .prop_map(|(acct, estimate, buffer, part, expires_in_h)| Op::Hold {
                acct,
                estimate,
                buffer,
                part,
                expires_in_h
            }),
        4 => (any::<usize>(), actual_strategy()).prop_map(|(pick, actual)| Op::Charge { pick, actual }),
        2 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, catch_up)| Op::Expire { pick, catch_up }),
        2 => (1i64..=12).prop_map(|hours| Op::Advance { hours }),
        1 => (0usize..2, 0i64..=1200).prop_map(|(acct, permille)| Op::Refund { acct, permille }),
        1 => (0usize..2, 0i64..=50_000_000, 0usize..3)
            .prop_map(|(acct, micros, part)| Op::Unmatched { acct, micros, part }),
        2 => any::<usize>().prop_map(|pick| Op::Retry { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Conflict { pick }),
    ]
}

fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op_strategy(), 1..=40)
}

// ---------------------------------------------------------------------------------------------
// The model

struct MAcct {
    name: String,
    credited: i64,
    charged: i64,
    held: i64,
    overdraft: i64,
    entries: i64,
    gpu_limit: Option<i64>,
    /// Partition → (charged, held).
    parts: BTreeMap<&'static str, (i64, i64)>,
}

impl MAcct {
    fn available(&self) -> i64 {
        self.credited - self.charged - self.held + self.overdraft
    }

    fn part(&mut self, p: Option<&'static str>, charged: i64, held: i64) {
        if let Some(p) = p {
            let slot = self.parts.entry(p).or_default();
            slot.0 += charged;
            slot.1 += held;
        }
    }
}

struct MHold {
    id: i64,
    acct: usize,
    remaining: i64,
    state: HoldState,
    part: Option<&'static str>,
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
enum Done {
    Simple {
        kind: EntryKind,
        acct: usize,
        micros: i64,
        key: String,
        entry_id: i64,
    },
    Hold {
        acct: usize,
        estimate: i64,
        buffer: usize,
        part: usize,
        expires_at: Option<DateTime<Utc>>,
        key: String,
        hold_id: i64,
    },
    Charge {
        hold_id: i64,
        actual: i64,
        key: String,
        entry_id: i64,
    },
    End {
        expire: bool,
        hold_id: i64,
        key: String,
        entry_id: i64,
    },
    Unmatched {
        acct: usize,
        micros: i64,
        part: usize,
        key: String,
        entry_id: i64,
    },
}

struct Model {
    now: DateTime<Utc>,
    accts: Vec<MAcct>,
    holds: Vec<MHold>,
    done: Vec<Done>,
}

fn fail(what: &str, e: impl std::fmt::Debug) -> TestCaseError {
    TestCaseError::fail(format!("{what}: unexpected {e:?}"))
}

fn ctx(m: &Model) -> OpContext {
    OpContext::at("prop", m.now)
}

fn money(m: i64) -> UsdMicros {
    UsdMicros::from_micros(m).unwrap()
}

/// `estimate × buffer`, rounded half away from zero, in integers.
fn hold_amount(estimate: i64, buffer: usize) -> i64 {
    let (num, den, _) = BUFFERS[buffer];
    (2 * estimate * num + den) / (2 * den)
}

fn simple(
    conn: &mut DbConn,
    c: &OpContext,
    kind: EntryKind,
    account: &str,
    micros: i64,
    key: &str,
) -> Result<Posted, LedgerError> {
    let op = MoneyOp {
        account,
        amount: money(micros),
        reason: "property test",
        key,
        job_id: None,
        partition: None,
    };
    match kind {
        EntryKind::Credit => ledger::credit(conn, c, &op),
        EntryKind::Adjustment => ledger::adjust(conn, c, &op),
        EntryKind::Refund => ledger::refund(conn, c, &op),
        other => unreachable!("{other} is not a simple operation"),
    }
}

fn hold_request<'a>(
    account: &'a str,
    estimate: i64,
    buffer: usize,
    part: usize,
    expires_at: Option<DateTime<Utc>>,
    key: &'a str,
) -> HoldRequest<'a> {
    HoldRequest {
        account,
        partition: PARTS[part],
        estimate: money(estimate),
        buffer: BUFFERS[buffer].2.parse::<Decimal>().unwrap(),
        cluster: None,
        job_id: None,
        user_name: None,
        expires_at,
        tasks: None,
        key,
    }
}

fn end_hold(
    conn: &mut DbConn,
    c: &OpContext,
    expire: bool,
    hold_id: i64,
    key: &str,
) -> Result<ledger::Released, LedgerError> {
    if expire {
        ledger::expire_hold(conn, c, hold_id, key)
    } else {
        ledger::release_hold(conn, c, hold_id, "property test", key)
    }
}

fn expect_resolved<T: std::fmt::Debug>(
    r: Result<T, LedgerError>,
    id: i64,
    state: HoldState,
) -> Result<(), TestCaseError> {
    match r {
        Err(LedgerError::HoldResolved { id: got, state: s }) if got == id && s == state => Ok(()),
        other => Err(fail(
            &format!("hold-{id} is {state}; resolving it again must be HoldResolved"),
            other,
        )),
    }
}

fn expect_invalid<T: std::fmt::Debug>(
    r: Result<T, LedgerError>,
    field: &str,
) -> Result<(), TestCaseError> {
    match r {
        Err(LedgerError::Invalid { field: f, .. }) if f == field => Ok(()),
        other => Err(fail(&format!("expected Invalid {field}"), other)),
    }
}

fn expect_conflict<T: std::fmt::Debug>(
    r: Result<T, LedgerError>,
    key: &str,
) -> Result<(), TestCaseError> {
    match r {
        Err(LedgerError::IdempotencyConflict { key: k, .. }) if k == key => Ok(()),
        other => Err(fail(
            &format!("expected IdempotencyConflict for {key}"),
            other,
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Running one case

fn setup(conn: &mut DbConn, case: usize) -> Result<Model, TestCaseError> {
    let now = Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap();
    let c = OpContext::at("prop", now);
    let mut accts = Vec::new();
    for (suffix, budget, overdraft) in [
        ("a", 1_000_000_000i64, 0i64),
        ("b", 200_000_000, 50_000_000),
    ] {
        let name = format!("p{case}-{suffix}");
        let new = NewAccount {
            name: AccountName::new(&name).unwrap(),
            display_name: name.clone(),
            description: String::new(),
            starts_at: Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
            ends_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            overdraft: money(overdraft),
            budget: money(budget),
        };
        ledger::create_account(conn, &c, &new).map_err(|e| fail("create account", e))?;
        accts.push(MAcct {
            name,
            credited: budget,
            charged: 0,
            held: 0,
            overdraft,
            entries: 1,
            gpu_limit: None,
            parts: BTreeMap::new(),
        });
    }
    let gpu = PartitionName::new("gpu").unwrap();
    ledger::set_partition_limit(conn, &c, &accts[0].name, &gpu, Some(money(GPU_LIMIT)))
        .map_err(|e| fail("set limit", e))?;
    accts[0].gpu_limit = Some(GPU_LIMIT);
    Ok(Model {
        now,
        accts,
        holds: Vec::new(),
        done: Vec::new(),
    })
}

fn run_case(conn: &mut DbConn, case: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut m = setup(conn, case)?;
    check(conn, &m)?;
    for (step, op) in ops.iter().enumerate() {
        let key = format!("p{case}-{step}");
        apply(conn, &mut m, op, &key)
            .map_err(|e| TestCaseError::fail(format!("step {step} ({op:?}): {e}")))?;
        check(conn, &m)
            .map_err(|e| TestCaseError::fail(format!("after step {step} ({op:?}): {e}")))?;
    }
    finish(conn, &m)
}

fn apply(conn: &mut DbConn, m: &mut Model, op: &Op, key: &str) -> Result<(), TestCaseError> {
    let c = ctx(m);
    match *op {
        Op::Credit { acct, micros } | Op::Adjust { acct, micros } => {
            let kind = if matches!(op, Op::Credit { .. }) {
                EntryKind::Credit
            } else {
                EntryKind::Adjustment
            };
            let name = m.accts[acct].name.clone();
            let p =
                simple(conn, &c, kind, &name, micros, key).map_err(|e| fail("credit/adjust", e))?;
            prop_assert!(!p.replayed);
            prop_assert_eq!(p.entry.kind, kind);
            prop_assert_eq!(p.entry.effect.credited.micros(), micros);
            let a = &mut m.accts[acct];
            a.credited += micros;
            a.entries += 1;
            m.done.push(Done::Simple {
                kind,
                acct,
                micros,
                key: key.into(),
                entry_id: p.entry.id,
            });
        }
        Op::Refund { acct, permille } => {
            let charged = m.accts[acct].charged;
            let micros = (charged * permille / 1000).max(1);
            let name = m.accts[acct].name.clone();
            let r = simple(conn, &c, EntryKind::Refund, &name, micros, key);
            if micros > charged {
                expect_invalid(r, "AMOUNT")?;
            } else {
                let p = r.map_err(|e| fail("refund", e))?;
                prop_assert_eq!(p.entry.effect.charged.micros(), -micros);
                let a = &mut m.accts[acct];
                a.charged -= micros;
                a.entries += 1;
                m.done.push(Done::Simple {
                    kind: EntryKind::Refund,
                    acct,
                    micros,
                    key: key.into(),
                    entry_id: p.entry.id,
                });
            }
        }
        Op::Hold {
            acct,
            estimate,
            buffer,
            part,
            expires_in_h,
        } => {
            let expires_at = expires_in_h.map(|h| m.now + Duration::hours(h));
            let amount = hold_amount(estimate, buffer);
            let name = m.accts[acct].name.clone();
            let out = ledger::place_hold(
                conn,
                &c,
                &hold_request(&name, estimate, buffer, part, expires_at, key),
            )
            .map_err(|e| fail("place hold", e))?;
            let a = &mut m.accts[acct];
            let partition = PARTS[part];
            let used = partition
                .and_then(|p| a.parts.get(p))
                .map_or(0, |(ch, h)| ch + h);
            let limit = if partition == Some("gpu") {
                a.gpu_limit
            } else {
                None
            };
            let expected_denial = if a.available() < amount {
                Some(DenyReason::InsufficientFunds)
            } else if limit.is_some_and(|l| used + amount > l) {
                Some(DenyReason::PartitionLimit)
            } else {
                None
            };
            match (out, expected_denial) {
                (HoldOutcome::Denied(d), Some(want)) => prop_assert_eq!(d.reason, want),
                (HoldOutcome::Placed { hold, replayed, account }, None) => {
                    prop_assert!(!replayed);
                    prop_assert_eq!(hold.amount.micros(), amount);
                    prop_assert_eq!(hold.remaining.micros(), amount);
                    prop_assert_eq!(hold.buffer.as_str(), BUFFERS[buffer].2);
                    prop_assert_eq!(hold.state, HoldState::Open);
                    a.held += amount;
                    a.entries += 1;
                    a.part(partition, 0, amount);
                    prop_assert_eq!(account.balances.held.micros(), a.held);
                    m.holds.push(MHold { id: hold.id, acct, remaining: amount, state: HoldState::Open, part: partition, expires_at });
                    m.done.push(Done::Hold { acct, estimate, buffer, part, expires_at, key: key.into(), hold_id: hold.id });
                }
                (out, want) => {
                    return Err(TestCaseError::fail(format!(
                        "hold of {amount} µ$ with {} available (used {used}, limit {limit:?}): expected {want:?}, got {out:?}",
                        a.available()
                    )))
                }
            }
        }
        Op::Charge { pick, actual } => {
            if m.holds.is_empty() {
                return Ok(());
            }
            let i = pick % m.holds.len();
            let (id, state, r) = (m.holds[i].id, m.holds[i].state, m.holds[i].remaining);
            let actual = match actual {
                Actual::Zero => 0,
                Actual::Exact => r,
                Actual::Under(p) => r * p / 1000,
                Actual::Over(x) => r + x,
            };
            let req = ChargeHold {
                hold_id: id,
                actual: money(actual),
                job_id: None,
                reason: "",
                key,
            };
            let result = ledger::charge_hold(conn, &c, &req);
            if state != HoldState::Open {
                return expect_resolved(result, id, state);
            }
            let out = result.map_err(|e| fail("charge hold", e))?;
            let released = r - actual.min(r);
            prop_assert!(!out.replayed);
            prop_assert_eq!(out.charge.amount.micros(), actual);
            prop_assert_eq!(out.charge.effect.held.micros(), -actual.min(r));
            prop_assert_eq!(out.overrun.micros(), (actual - r).max(0));
            prop_assert_eq!(
                out.charge.flags.as_str(),
                if actual > r { "overrun" } else { "" }
            );
            prop_assert_eq!(
                out.release.as_ref().map(|e| e.amount.micros()),
                (released > 0).then_some(released)
            );
            let hold = out.hold.as_ref().unwrap();
            prop_assert_eq!(
                (hold.state, hold.remaining.micros(), hold.charged.micros()),
                (HoldState::Charged, 0, actual)
            );
            let h = &mut m.holds[i];
            h.state = HoldState::Charged;
            h.remaining = 0;
            let a = &mut m.accts[h.acct];
            a.charged += actual;
            a.held -= r;
            a.entries += if released > 0 { 2 } else { 1 };
            a.part(h.part, actual, -r);
            m.done.push(Done::Charge {
                hold_id: id,
                actual,
                key: key.into(),
                entry_id: out.charge.id,
            });
        }
        Op::Release { pick } | Op::Expire { pick, .. } => {
            if m.holds.is_empty() {
                return Ok(());
            }
            let expire = matches!(op, Op::Expire { .. });
            let i = pick % m.holds.len();
            let (id, state, r, expires_at) = (
                m.holds[i].id,
                m.holds[i].state,
                m.holds[i].remaining,
                m.holds[i].expires_at,
            );
            if let (Op::Expire { catch_up: true, .. }, Some(at)) = (op, expires_at) {
                if state == HoldState::Open && at > m.now {
                    m.now = at;
                }
            }
            let result = end_hold(conn, &ctx(m), expire, id, key);
            if state != HoldState::Open {
                return expect_resolved(result, id, state);
            }
            if expire {
                match expires_at {
                    None => return expect_invalid(result, "HOLD"),
                    Some(at) if at > m.now => return expect_invalid(result, "--as-of"),
                    Some(_) => {}
                }
            }
            let out = result.map_err(|e| fail("release/expire", e))?;
            let (kind, new_state) = if expire {
                (EntryKind::Expiry, HoldState::Expired)
            } else {
                (EntryKind::Release, HoldState::Released)
            };
            prop_assert!(!out.replayed);
            prop_assert_eq!(out.entry.kind, kind);
            prop_assert_eq!(out.entry.amount.micros(), r);
            prop_assert_eq!(
                (out.hold.state, out.hold.remaining.micros()),
                (new_state, 0)
            );
            let h = &mut m.holds[i];
            h.state = new_state;
            h.remaining = 0;
            let a = &mut m.accts[h.acct];
            a.held -= r;
            a.entries += 1;
            a.part(h.part, 0, -r);
            m.done.push(Done::End {
                expire,
                hold_id: id,
                key: key.into(),
                entry_id: out.entry.id,
            });
        }
        Op::Advance { hours } => m.now += Duration::hours(hours),
        Op::Unmatched { acct, micros, part } => {
            let name = m.accts[acct].name.clone();
            let req = unmatched(&name, micros, part, key);
            let out = ledger::charge_without_hold(conn, &c, &req)
                .map_err(|e| fail("charge without hold", e))?;
            prop_assert_eq!(out.charge.flags.as_str(), "unmatched");
            prop_assert_eq!(out.overrun.micros(), 0);
            let a = &mut m.accts[acct];
            a.charged += micros;
            a.entries += 1;
            a.part(PARTS[part], micros, 0);
            m.done.push(Done::Unmatched {
                acct,
                micros,
                part,
                key: key.into(),
                entry_id: out.charge.id,
            });
        }
        Op::Retry { pick } => {
            if m.done.is_empty() {
                return Ok(());
            }
            let done = m.done[pick % m.done.len()].clone();
            retry(conn, m, &c, &done)?;
        }
        Op::Conflict { pick } => {
            if m.done.is_empty() {
                return Ok(());
            }
            let done = m.done[pick % m.done.len()].clone();
            conflict(conn, m, &c, &done)?;
        }
    }
    Ok(())
}

fn unmatched<'a>(account: &'a str, micros: i64, part: usize, key: &'a str) -> ChargeUnmatched<'a> {
    ChargeUnmatched {
        account,
        amount: money(micros),
        partition: PARTS[part],
        cluster: None,
        job_id: None,
        user_name: None,
        reason: "",
        key,
    }
}

/// The same request with the same key: replayed, nothing written (the step's `check` then
/// verifies that balances and entry counts did not move).
fn retry(conn: &mut DbConn, m: &Model, c: &OpContext, done: &Done) -> Result<(), TestCaseError> {
    match done {
        Done::Simple {
            kind,
            acct,
            micros,
            key,
            entry_id,
        } => {
            let p = simple(conn, c, *kind, &m.accts[*acct].name, *micros, key)
                .map_err(|e| fail("retry", e))?;
            prop_assert!(p.replayed);
            prop_assert_eq!(p.entry.id, *entry_id);
        }
        Done::Hold {
            acct,
            estimate,
            buffer,
            part,
            expires_at,
            key,
            hold_id,
        } => {
            let req = hold_request(
                &m.accts[*acct].name,
                *estimate,
                *buffer,
                *part,
                *expires_at,
                key,
            );
            match ledger::place_hold(conn, c, &req).map_err(|e| fail("retry hold", e))? {
                HoldOutcome::Placed {
                    hold,
                    replayed: true,
                    ..
                } => prop_assert_eq!(hold.id, *hold_id),
                other => return Err(fail("retried hold must replay", other)),
            }
        }
        Done::Charge {
            hold_id,
            actual,
            key,
            entry_id,
        } => {
            let req = ChargeHold {
                hold_id: *hold_id,
                actual: money(*actual),
                job_id: None,
                reason: "",
                key,
            };
            let out = ledger::charge_hold(conn, c, &req).map_err(|e| fail("retry charge", e))?;
            prop_assert!(out.replayed);
            prop_assert_eq!(out.charge.id, *entry_id);
        }
        Done::End {
            expire,
            hold_id,
            key,
            entry_id,
        } => {
            let out = end_hold(conn, c, *expire, *hold_id, key)
                .map_err(|e| fail("retry release/expire", e))?;
            prop_assert!(out.replayed);
            prop_assert_eq!(out.entry.id, *entry_id);
        }
        Done::Unmatched {
            acct,
            micros,
            part,
            key,
            entry_id,
        } => {
            let req = unmatched(&m.accts[*acct].name, *micros, *part, key);
            let out = ledger::charge_without_hold(conn, c, &req)
                .map_err(|e| fail("retry unmatched", e))?;
            prop_assert!(out.replayed);
            prop_assert_eq!(out.charge.id, *entry_id);
            prop_assert_eq!(out.overrun.micros(), 0);
        }
    }
    Ok(())
}

/// An earlier key with a different request: refused, nothing written.
fn conflict(conn: &mut DbConn, m: &Model, c: &OpContext, done: &Done) -> Result<(), TestCaseError> {
    let other = |v: i64| if v + 1 == 0 { v + 2 } else { v + 1 };
    match done {
        Done::Simple {
            kind,
            acct,
            micros,
            key,
            ..
        } => expect_conflict(
            simple(conn, c, *kind, &m.accts[*acct].name, other(*micros), key),
            key,
        ),
        Done::Hold {
            acct,
            estimate,
            buffer,
            part,
            expires_at,
            key,
            ..
        } => {
            let req = hold_request(
                &m.accts[*acct].name,
                estimate + 1,
                *buffer,
                *part,
                *expires_at,
                key,
            );
            expect_conflict(ledger::place_hold(conn, c, &req), key)
        }
        Done::Charge {
            hold_id,
            actual,
            key,
            ..
        } => {
            let req = ChargeHold {
                hold_id: *hold_id,
                actual: money(actual + 1),
                job_id: None,
                reason: "",
                key,
            };
            expect_conflict(ledger::charge_hold(conn, c, &req), key)
        }
        Done::End {
            expire,
            hold_id,
            key,
            ..
        } => match m.holds.iter().find(|h| h.id != *hold_id) {
            Some(h) => expect_conflict(end_hold(conn, c, *expire, h.id, key), key),
            None => Ok(()),
        },
        Done::Unmatched {
            acct,
            micros,
            part,
            key,
            ..
        } => {
            let req = unmatched(&m.accts[*acct].name, micros + 1, *part, key);
            expect_conflict(ledger::charge_without_hold(conn, c, &req), key)
        }
    }
}

/// After every step: cached balances equal the model, `available` is the formula, and what is
/// held is exactly the sum of the open holds.
fn check(conn: &mut DbConn, m: &Model) -> Result<(), TestCaseError> {
    for (i, a) in m.accts.iter().enumerate() {
        let acc = queries::account(conn, &a.name).map_err(|e| fail("read account", e))?;
        let b = acc.balances;
        prop_assert_eq!(
            (b.credited.micros(), b.charged.micros(), b.held.micros()),
            (a.credited, a.charged, a.held),
            "balances of {}",
            a.name
        );
        prop_assert_eq!(acc.entry_count, a.entries, "entry count of {}", a.name);
        prop_assert_eq!(
            acc.available().micros(),
            b.credited.micros() - b.charged.micros() - b.held.micros() + a.overdraft
        );
        prop_assert_eq!(acc.available().micros(), a.available());
        let open = queries::holds(conn, Some(&a.name), Some(HoldState::Open), None)
            .map_err(|e| fail("list holds", e))?;
        prop_assert_eq!(
            open.iter().map(|h| h.remaining.micros()).sum::<i64>(),
            b.held.micros(),
            "held = sum of open holds of {}",
            a.name
        );
        let mut got: Vec<(i64, i64)> = open.iter().map(|h| (h.id, h.remaining.micros())).collect();
        got.sort_unstable();
        let want: Vec<(i64, i64)> = m
            .holds
            .iter()
            .filter(|h| h.acct == i && h.state == HoldState::Open)
            .map(|h| (h.id, h.remaining))
            .collect();
        prop_assert_eq!(got, want, "open holds of {}", a.name);
    }
    Ok(())
}

/// At the end: every hold's state, the partition caches, and a clean audit.
fn finish(conn: &mut DbConn, m: &Model) -> Result<(), TestCaseError> {
    for h in &m.holds {
        let got = queries::hold(conn, h.id).map_err(|e| fail("read hold", e))?;
        prop_assert_eq!(
            (got.state, got.remaining.micros()),
            (h.state, h.remaining),
            "hold-{}",
            h.id
        );
        prop_assert_eq!(got.resolved_at.is_some(), h.state != HoldState::Open);
    }
    for a in &m.accts {
        let rows = queries::partitions(conn, &a.name).map_err(|e| fail("partitions", e))?;
        let got: BTreeMap<String, (i64, i64)> = rows
            .iter()
            .map(|r| (r.partition.clone(), (r.charged.micros(), r.held.micros())))
            .filter(|(_, v)| *v != (0, 0))
            .collect();
        let want: BTreeMap<String, (i64, i64)> = a
            .parts
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .filter(|(_, v)| *v != (0, 0))
            .collect();
        prop_assert_eq!(got, want, "partitions of {}", a.name);
        let report =
            audit::verify(conn, Some(&a.name), &mut |_| {}).map_err(|e| fail("audit", e))?;
        prop_assert!(
            report.is_clean(),
            "audit of {}: {:#?}",
            a.name,
            report.discrepancies
        );
        prop_assert_eq!(report.entries, a.entries as u64);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The tests

static CASE: AtomicUsize = AtomicUsize::new(0);

fn next_case() -> usize {
    CASE.fetch_add(1, Ordering::Relaxed)
}

fn run(cases: u32, mut body: impl FnMut(usize, &[Op]) -> Result<(), TestCaseError>) {
    let mut runner = TestRunner::new(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    });
    let body = RefCell::new(&mut body);
    let result = runner.run(&ops_strategy(), |ops| {
        (body.borrow_mut())(next_case(), &ops)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn sqlite() {
    run(64, |case, ops| {
        let db = TestDb::sqlite();
        let mut conn = db.conn();
        run_case(&mut conn, case, ops)
    });
}

#[test]
fn postgres() {
    let Some(db) = TestDb::postgres() else {
        eprintln!("ASBB_TEST_POSTGRES_URL not set: postgres variant skipped");
        return;
    };
    let mut conn = db.conn();
    run(16, |case, ops| run_case(&mut conn, case, ops));
}
