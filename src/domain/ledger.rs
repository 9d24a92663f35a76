//! The rules of the ledger: entry kinds and their effects on balances, the hold decision, hold
//! settlement, and the hash chain. Pure: no database, no clock.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::money::{MoneyError, UsdMicros};

/// What a journal entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKind {
    /// Money made available: a deposit, an allocation, a grant period's budget.
    Credit,
    /// An estimate set aside for a job that has not been charged yet.
    Hold,
    /// A hold (or what is left of it) given back.
    Release,
    /// Actual cost booked as used; may consume part of a hold.
    Charge,
    /// Used money given back (e.g. a run failed for reasons the user did not cause).
    Refund,
    /// A signed correction of the budget, always with a reason.
    Adjustment,
    /// A hold that outlived its lifetime, given back.
    Expiry,
}

impl EntryKind {
    /// Every kind, in a stable order.
    pub const ALL: [EntryKind; 7] = [
        EntryKind::Credit,
        EntryKind::Hold,
        EntryKind::Release,
        EntryKind::Charge,
        EntryKind::Refund,
        EntryKind::Adjustment,
        EntryKind::Expiry,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Credit => "credit",
            EntryKind::Hold => "hold",
            EntryKind::Release => "release",
            EntryKind::Charge => "charge",
            EntryKind::Refund => "refund",
            EntryKind::Adjustment => "adjustment",
            EntryKind::Expiry => "expiry",
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EntryKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        EntryKind::ALL
            .into_iter()
            .find(|k| k.as_str() == lower || (lower == "deposit" && *k == EntryKind::Credit))
            .ok_or_else(|| {
                format!(
                    "unknown entry type '{s}' (expected one of: {})",
                    EntryKind::ALL.map(|k| k.as_str()).join(", ")
                )
            })
    }
}

/// How one entry moves the three balance columns of its account. Stored on every entry so that
/// replaying the journal needs no other table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Effect {
    /// Change of money made available.
    pub credited: UsdMicros,
    /// Change of money used.
    pub charged: UsdMicros,
    /// Change of money held.
    pub held: UsdMicros,
}

/// An entry whose stored effect contradicts the rules of its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} of {amount} cannot have effect credited {credited:+}, charged {charged:+}, held {held:+}")]
pub struct EffectError {
    /// The entry's kind.
    pub kind: EntryKind,
    /// The entry's amount.
    pub amount: UsdMicros,
    /// The stored credited delta, in micro-dollars.
    pub credited: i64,
    /// The stored charged delta, in micro-dollars.
    pub charged: i64,
    /// The stored held delta, in micro-dollars.
    pub held: i64,
}

impl Effect {
    /// Checks that an effect obeys the rules of its kind:
    ///
    /// | kind | amount | credited | charged | held |
    /// |---|---|---|---|---|
    /// | credit | > 0 | +amount | 0 | 0 |
    /// | hold | > 0 | 0 | 0 | +amount |
    /// | release, expiry | > 0 | 0 | 0 | −amount |
    /// | charge | ≥ 0 | 0 | +amount | −(0..=amount) |
    /// | refund | > 0 | 0 | −amount | 0 |
    /// | adjustment | ≠ 0 | +amount | 0 | 0 |
    pub fn check(self, kind: EntryKind, amount: UsdMicros) -> Result<(), EffectError> {
        let (c, ch, h, a) = (
            self.credited.micros(),
            self.charged.micros(),
            self.held.micros(),
            amount.micros(),
        );
        let ok = match kind {
            EntryKind::Credit => a > 0 && c == a && ch == 0 && h == 0,
            EntryKind::Hold => a > 0 && c == 0 && ch == 0 && h == a,
            EntryKind::Release | EntryKind::Expiry => a > 0 && c == 0 && ch == 0 && h == -a,
            EntryKind::Charge => a >= 0 && c == 0 && ch == a && h <= 0 && -h <= a,
            EntryKind::Refund => a > 0 && c == 0 && ch == -a && h == 0,
            EntryKind::Adjustment => a != 0 && c == a && ch == 0 && h == 0,
        };
        if ok {
            Ok(())
        } else {
            Err(EffectError {
                kind,
                amount,
                credited: c,
                charged: ch,
                held: h,
            })
        }
    }

    /// The effect of a simple entry of `kind` (all but charge).
    pub fn simple(kind: EntryKind, amount: UsdMicros) -> Result<Effect, MoneyError> {
        let zero = UsdMicros::ZERO;
        Ok(match kind {
            EntryKind::Credit | EntryKind::Adjustment => Effect {
                credited: amount,
                charged: zero,
                held: zero,
            },
            EntryKind::Hold => Effect {
                credited: zero,
                charged: zero,
                held: amount,
            },
            EntryKind::Release | EntryKind::Expiry => Effect {
                credited: zero,
                charged: zero,
                held: amount.checked_neg()?,
            },
            EntryKind::Refund => Effect {
                credited: zero,
                charged: amount.checked_neg()?,
                held: zero,
            },
            EntryKind::Charge => Effect {
                credited: zero,
                charged: amount,
                held: zero,
            },
        })
    }
}

/// The balances of an account (or of one partition of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Balances {
    /// Money made available (the budget limit).
    pub credited: UsdMicros,
    /// Money used.
    pub charged: UsdMicros,
    /// Money held for running or pending jobs.
    pub held: UsdMicros,
}

impl Balances {
    /// Applies one entry's effect.
    pub fn apply(self, e: Effect) -> Result<Balances, MoneyError> {
        Ok(Balances {
            credited: self.credited.checked_add(e.credited)?,
            charged: self.charged.checked_add(e.charged)?,
            held: self.held.checked_add(e.held)?,
        })
    }

    /// `credited − charged − held + overdraft`: what a new hold may still take.
    pub fn available(self, overdraft: UsdMicros) -> Result<UsdMicros, MoneyError> {
        self.credited
            .checked_sub(self.charged)?
            .checked_sub(self.held)?
            .checked_add(overdraft)
    }
}

/// Lifecycle state of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    /// Holds may be placed.
    Active,
    /// Temporarily refuses new holds; charges still book.
    Suspended,
    /// Permanently retired; nothing new but late charges.
    Closed,
}

impl AccountStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::Suspended => "suspended",
            AccountStatus::Closed => "closed",
        }
    }
}

impl FromStr for AccountStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "active" => Ok(AccountStatus::Active),
            "suspended" => Ok(AccountStatus::Suspended),
            "closed" => Ok(AccountStatus::Closed),
            _ => Err(format!(
                "unknown account status '{s}' (expected active, suspended or closed)"
            )),
        }
    }
}

impl fmt::Display for AccountStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// State of a hold. A hold leaves `Open` exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    /// Still holding money.
    Open,
    /// Charged (fully or partly) with the remainder released.
    Charged,
    /// Released without a charge.
    Released,
    /// Released because it outlived its lifetime.
    Expired,
}

impl HoldState {
    /// Every state.
    pub const ALL: [HoldState; 4] = [
        HoldState::Open,
        HoldState::Charged,
        HoldState::Released,
        HoldState::Expired,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldState::Open => "open",
            HoldState::Charged => "charged",
            HoldState::Released => "released",
            HoldState::Expired => "expired",
        }
    }
}

impl FromStr for HoldState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "open" | "pending" => Ok(HoldState::Open),
            "charged" | "reconciled" => Ok(HoldState::Charged),
            "released" => Ok(HoldState::Released),
            "expired" => Ok(HoldState::Expired),
            _ => Err(format!(
                "unknown hold status '{s}' (expected pending/open, charged, released or expired)"
            )),
        }
    }
}

impl fmt::Display for HoldState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a hold was refused. The codes are part of the check endpoint's contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// `available` is below the amount.
    InsufficientFunds,
    /// The account's limit for the partition would be exceeded.
    PartitionLimit,
    /// The account is suspended, closed, or not yet started.
    AccountInactive,
    /// The account's end date has passed.
    AccountExpired,
    /// No such account.
    UnknownAccount,
}

impl DenyReason {
    /// The machine-readable reason code.
    pub fn code(self) -> &'static str {
        match self {
            DenyReason::InsufficientFunds => "insufficient_funds",
            DenyReason::PartitionLimit => "partition_limit",
            DenyReason::AccountInactive => "account_inactive",
            DenyReason::AccountExpired => "account_expired",
            DenyReason::UnknownAccount => "unknown_account",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A refused hold: the reason code and a sentence for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denial {
    /// Machine-readable reason.
    pub reason: DenyReason,
    /// Human-readable explanation, safe to show to a SLURM user.
    pub message: String,
}

/// What the hold decision needs to know about the account.
#[derive(Debug, Clone)]
pub struct HoldContext<'a> {
    /// The account name, for messages.
    pub account: &'a str,
    /// Its status.
    pub status: AccountStatus,
    /// Start of its active period (inclusive).
    pub starts_at: DateTime<Utc>,
    /// End of its active period (exclusive).
    pub ends_at: DateTime<Utc>,
    /// Its cached balances.
    pub balances: Balances,
    /// Its overdraft limit.
    pub overdraft: UsdMicros,
    /// The partition's limit and current use (charged + held), when the account has a limit
    /// for the partition of the hold.
    pub partition: Option<PartitionUse<'a>>,
}

/// A partition limit and the partition's current use.
#[derive(Debug, Clone, Copy)]
pub struct PartitionUse<'a> {
    /// Partition name, for messages.
    pub name: &'a str,
    /// The limit on charged + held in this partition.
    pub limit: UsdMicros,
    /// Charged + held in this partition now.
    pub used: UsdMicros,
}

/// Decides pessimistically whether a hold of `amount` may be placed at `at`.
pub fn decide_hold(
    ctx: &HoldContext<'_>,
    amount: UsdMicros,
    at: DateTime<Utc>,
) -> Result<(), Denial> {
    let deny = |reason, message: String| Err(Denial { reason, message });
    match ctx.status {
        AccountStatus::Active => {}
        other => {
            return deny(
                DenyReason::AccountInactive,
                format!("budget account '{}' is {other}", ctx.account),
            )
        }
    }
    if at < ctx.starts_at {
        return deny(
            DenyReason::AccountInactive,
            format!(
                "budget account '{}' starts on {}",
                ctx.account,
                ctx.starts_at.format("%Y-%m-%d")
            ),
        );
    }
    if at >= ctx.ends_at {
        return deny(
            DenyReason::AccountExpired,
            format!(
                "budget account '{}' ended on {}",
                ctx.account,
                ctx.ends_at.format("%Y-%m-%d %H:%M UTC")
            ),
        );
    }
    let available = ctx.balances.available(ctx.overdraft).map_err(|e| Denial {
        reason: DenyReason::InsufficientFunds,
        message: format!("budget account '{}': {e}", ctx.account),
    })?;
    if available < amount {
        return deny(
            DenyReason::InsufficientFunds,
            format!(
                "budget account '{}' has ${available} available; this job needs a hold of ${amount}",
                ctx.account
            ),
        );
    }
    if let Some(p) = ctx.partition {
        let after = p
            .used
            .checked_add(amount)
            .unwrap_or(UsdMicros::from_stored(i64::MAX));
        if after > p.limit {
            let left = p
                .limit
                .checked_sub(p.used)
                .unwrap_or(UsdMicros::ZERO)
                .max(UsdMicros::ZERO);
            return deny(
                DenyReason::PartitionLimit,
                format!(
                    "budget account '{}' may spend ${} in partition '{}' and has ${left} of it left; this job needs a hold of ${amount}",
                    ctx.account, p.limit, p.name
                ),
            );
        }
    }
    Ok(())
}

/// How a charge against a hold resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// Part of the hold consumed by the charge (`min(actual, remaining)`).
    pub consumed: UsdMicros,
    /// Part of the hold given back (`remaining − consumed`).
    pub released: UsdMicros,
    /// Cost beyond the hold (`actual − remaining` when positive); still charged in full.
    pub overrun: UsdMicros,
}

/// Settles a hold with `remaining` still held against an actual cost.
pub fn settle(remaining: UsdMicros, actual: UsdMicros) -> Result<Settlement, MoneyError> {
    let consumed = actual.min(remaining);
    Ok(Settlement {
        consumed,
        released: remaining.checked_sub(consumed)?,
        overrun: actual.checked_sub(consumed)?,
    })
}

/// Everything an entry's hash covers.
#[derive(Debug, Clone)]
pub struct ChainFields<'a> {
    /// Account name.
    pub account: &'a str,
    /// Position in the account's chain, from 1.
    pub seq: i64,
    /// Entry kind.
    pub kind: EntryKind,
    /// Headline amount.
    pub amount: UsdMicros,
    /// Balance effect.
    pub effect: Effect,
    /// Linked hold.
    pub hold_id: Option<i64>,
    /// Linked job.
    pub job_id: Option<&'a str>,
    /// Cluster of the job.
    pub cluster: Option<&'a str>,
    /// Partition.
    pub partition: Option<&'a str>,
    /// SLURM user.
    pub user_name: Option<&'a str>,
    /// Who made the entry.
    pub actor: &'a str,
    /// Why.
    pub reason: &'a str,
    /// Flags such as `overrun`.
    pub flags: &'a str,
    /// Idempotency key.
    pub idempotency_key: &'a str,
    /// When it takes effect.
    pub effective_at: DateTime<Utc>,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// Hash of the previous entry of the account.
    pub prev_hash: &'a str,
}

/// The chain's starting hash for an account.
pub fn genesis_hash(account: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"asbb-chain-v1\0genesis\0");
    h.update(account.as_bytes());
    hex(&h.finalize())
}

/// The hash of one entry: SHA-256 over every field, each length-prefixed so that no two field
/// lists encode alike, ending with the previous entry's hash.
pub fn entry_hash(f: &ChainFields<'_>) -> String {
    let mut h = Sha256::new();
    h.update(b"asbb-chain-v1\0");
    let mut field = |s: &str| {
        h.update((s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    };
    let opt = |o: Option<&str>| o.map(|s| format!("+{s}")).unwrap_or_else(|| "-".into());
    field(f.account);
    field(&f.seq.to_string());
    field(f.kind.as_str());
    field(&f.amount.micros().to_string());
    field(&f.effect.credited.micros().to_string());
    field(&f.effect.charged.micros().to_string());
    field(&f.effect.held.micros().to_string());
    field(&opt(f.hold_id.map(|i| i.to_string()).as_deref()));
    field(&opt(f.job_id));
    field(&opt(f.cluster));
    field(&opt(f.partition));
    field(&opt(f.user_name));
    field(f.actor);
    field(f.reason);
    field(f.flags);
    field(f.idempotency_key);
    field(&f.effective_at.timestamp_micros().to_string());
    field(&f.recorded_at.timestamp_micros().to_string());
    field(f.prev_hash);
    hex(&h.finalize())
}

/// The settings chain's starting hash for an account.
pub fn settings_genesis_hash(account: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"asbb-settings-v1\0genesis\0");
    h.update(account.as_bytes());
    hex(&h.finalize())
}

/// Everything a setting change's hash covers.
#[derive(Debug, Clone)]
pub struct SettingFields<'a> {
    /// Account name.
    pub account: &'a str,
    /// Position in the account's settings chain, from 1.
    pub seq: i64,
    /// Which setting (`created` for the initial settings).
    pub field: &'a str,
    /// Value before.
    pub old_value: &'a str,
    /// Value after.
    pub new_value: &'a str,
    /// Who changed it.
    pub actor: &'a str,
    /// Why.
    pub reason: &'a str,
    /// When.
    pub changed_at: DateTime<Utc>,
    /// Hash of the previous change.
    pub prev_hash: &'a str,
}

/// The hash of one setting change, built like [`entry_hash`].
pub fn setting_hash(f: &SettingFields<'_>) -> String {
    let mut h = Sha256::new();
    h.update(b"asbb-settings-v1\0");
    let seq = f.seq.to_string();
    let at = f.changed_at.timestamp_micros().to_string();
    for part in [
        f.account,
        &seq,
        f.field,
        f.old_value,
        f.new_value,
        f.actor,
        f.reason,
        &at,
        f.prev_hash,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex(&h.finalize())
}

/// A digest of an operation's request, stored with its first entry: a retry with the same
/// idempotency key must carry the same digest.
pub fn request_digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn usd(n: i64) -> UsdMicros {
        UsdMicros::from_usd(n).unwrap()
    }

    fn ctx(balances: Balances) -> HoldContext<'static> {
        HoldContext {
            account: "acct",
            status: AccountStatus::Active,
            starts_at: Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
            ends_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            balances,
            overdraft: UsdMicros::ZERO,
            partition: None,
        }
    }

    fn mid() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap()
    }

    #[test]
    fn hold_needs_available_funds() {
        let b = Balances {
            credited: usd(100),
            charged: usd(30),
            held: usd(20),
        };
        assert!(decide_hold(&ctx(b), usd(50), mid()).is_ok());
        let d =
            decide_hold(&ctx(b), UsdMicros::from_micros(50_000_001).unwrap(), mid()).unwrap_err();
        assert_eq!(d.reason, DenyReason::InsufficientFunds);
        assert!(d.message.contains("$50.00 available"), "{}", d.message);
    }

    #[test]
    fn overdraft_extends_available() {
        let b = Balances {
            credited: usd(10),
            charged: usd(10),
            held: UsdMicros::ZERO,
        };
        let mut c = ctx(b);
        assert_eq!(
            decide_hold(&c, usd(5), mid()).unwrap_err().reason,
            DenyReason::InsufficientFunds
        );
        c.overdraft = usd(5);
        assert!(decide_hold(&c, usd(5), mid()).is_ok());
    }

    #[test]
    fn status_and_dates_are_checked() {
        let b = Balances {
            credited: usd(100),
            ..Default::default()
        };
        let mut c = ctx(b);
        c.status = AccountStatus::Suspended;
        assert_eq!(
            decide_hold(&c, usd(1), mid()).unwrap_err().reason,
            DenyReason::AccountInactive
        );
        let c = ctx(b);
        let after = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(
            decide_hold(&c, usd(1), after).unwrap_err().reason,
            DenyReason::AccountExpired
        );
        let before = Utc.with_ymd_and_hms(2024, 12, 31, 23, 59, 59).unwrap();
        assert_eq!(
            decide_hold(&c, usd(1), before).unwrap_err().reason,
            DenyReason::AccountInactive
        );
    }

    #[test]
    fn partition_limit_applies() {
        let b = Balances {
            credited: usd(1000),
            ..Default::default()
        };
        let mut c = ctx(b);
        c.partition = Some(PartitionUse {
            name: "gpu",
            limit: usd(100),
            used: usd(90),
        });
        assert!(decide_hold(&c, usd(10), mid()).is_ok());
        let d = decide_hold(&c, usd(11), mid()).unwrap_err();
        assert_eq!(d.reason, DenyReason::PartitionLimit);
        assert!(d.message.contains("$10.00 of it left"), "{}", d.message);
    }

    #[test]
    fn settlement_releases_remainder_and_flags_overrun() {
        let s = settle(usd(120), usd(100)).unwrap();
        assert_eq!(
            (s.consumed, s.released, s.overrun),
            (usd(100), usd(20), UsdMicros::ZERO)
        );
        let s = settle(usd(120), usd(150)).unwrap();
        assert_eq!(
            (s.consumed, s.released, s.overrun),
            (usd(120), UsdMicros::ZERO, usd(30))
        );
        let s = settle(usd(120), UsdMicros::ZERO).unwrap();
        assert_eq!((s.consumed, s.released), (UsdMicros::ZERO, usd(120)));
    }

    #[test]
    fn effect_rules() {
        let a = usd(10);
        for kind in [
            EntryKind::Credit,
            EntryKind::Hold,
            EntryKind::Release,
            EntryKind::Refund,
            EntryKind::Adjustment,
            EntryKind::Expiry,
        ] {
            Effect::simple(kind, a).unwrap().check(kind, a).unwrap();
        }
        let charge = Effect {
            credited: UsdMicros::ZERO,
            charged: a,
            held: usd(-4),
        };
        assert!(charge.check(EntryKind::Charge, a).is_ok());
        let bad = Effect {
            credited: UsdMicros::ZERO,
            charged: a,
            held: usd(-11),
        };
        assert!(bad.check(EntryKind::Charge, a).is_err());
        assert!(Effect::simple(EntryKind::Credit, a)
            .unwrap()
            .check(EntryKind::Hold, a)
            .is_err());
        let neg = usd(-5);
        assert!(Effect::simple(EntryKind::Adjustment, neg)
            .unwrap()
            .check(EntryKind::Adjustment, neg)
            .is_ok());
        assert!(Effect::simple(EntryKind::Credit, neg)
            .unwrap()
            .check(EntryKind::Credit, neg)
            .is_err());
    }

    fn fields<'a>(prev: &'a str, reason: &'a str) -> ChainFields<'a> {
        ChainFields {
            account: "acct",
            seq: 1,
            kind: EntryKind::Credit,
            amount: usd(5),
            effect: Effect::simple(EntryKind::Credit, usd(5)).unwrap(),
            hold_id: None,
            job_id: None,
            cluster: None,
            partition: None,
            user_name: None,
            actor: "admin",
            reason,
            flags: "",
            idempotency_key: "k1",
            effective_at: mid(),
            recorded_at: mid(),
            prev_hash: prev,
        }
    }

    #[test]
    fn hash_chain_detects_any_change() {
        let g = genesis_hash("acct");
        assert_ne!(g, genesis_hash("acct2"));
        let h1 = entry_hash(&fields(&g, "deposit"));
        assert_eq!(h1, entry_hash(&fields(&g, "deposit")), "deterministic");
        assert_ne!(h1, entry_hash(&fields(&g, "deposit!")), "reason is covered");
        assert_ne!(
            h1,
            entry_hash(&fields(&genesis_hash("x"), "deposit")),
            "previous hash is covered"
        );
        let mut f = fields(&g, "deposit");
        f.amount = usd(6);
        assert_ne!(h1, entry_hash(&f), "amount is covered");
        let mut f = fields(&g, "deposit");
        f.job_id = Some("");
        assert_ne!(h1, entry_hash(&f), "an empty job id differs from none");
        assert_eq!(h1.len(), 64);
    }

    #[test]
    fn request_digest_is_unambiguous() {
        assert_ne!(request_digest(&["ab", "c"]), request_digest(&["a", "bc"]));
    }

    #[test]
    fn kinds_parse() {
        assert_eq!("deposit".parse::<EntryKind>().unwrap(), EntryKind::Credit);
        assert_eq!("HOLD".parse::<EntryKind>().unwrap(), EntryKind::Hold);
        assert!("bogus"
            .parse::<EntryKind>()
            .unwrap_err()
            .contains("expected one of"));
        assert_eq!("pending".parse::<HoldState>().unwrap(), HoldState::Open);
    }
}
