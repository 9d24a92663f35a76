//! What each report can put in a column: the fields of its rows, their types, and how a cell
//! is written in CSV, JSON and HTML.
//!
//! A row is a `Vec<Cell>` in the order of its kind's [`Field`] list. The column specs in
//! `reports/templates/*.columns.toml` choose, name and order the columns from these fields;
//! every money field `F` also offers `F_micros`, the exact amount in micro-dollars.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

use crate::domain::UsdMicros;

/// The type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// Free text (neutralised against formula injection in CSV).
    Text,
    /// Money: two decimals in CSV and HTML (rounded half away from zero), exact in JSON.
    Money,
    /// A whole number.
    Int,
    /// A day, `YYYY-MM-DD`.
    Date,
    /// An instant, RFC 3339 in UTC (`2026-03-03T17:04:05Z`).
    Time,
}

/// One field of a report's rows.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The name column specs use.
    pub name: &'static str,
    /// Its type.
    pub ty: Ty,
    /// What it means, for the README written beside the reports.
    pub about: &'static str,
}

const fn f(name: &'static str, ty: Ty, about: &'static str) -> Field {
    Field { name, ty, about }
}

/// One cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// Nothing (an empty cell; `null` in JSON).
    Empty,
    /// Text.
    Text(String),
    /// Micro-dollars.
    Money(i64),
    /// A whole number.
    Int(i64),
    /// A day.
    Date(NaiveDate),
    /// An instant.
    Time(DateTime<Utc>),
}

impl Cell {
    /// Text, or empty when `None`.
    pub fn opt_text(s: Option<&str>) -> Cell {
        match s {
            Some(t) if !t.is_empty() => Cell::Text(t.to_string()),
            _ => Cell::Empty,
        }
    }

    /// Text (empty string → empty cell).
    pub fn text(s: impl Into<String>) -> Cell {
        let s = s.into();
        if s.is_empty() {
            Cell::Empty
        } else {
            Cell::Text(s)
        }
    }

    /// Money, or empty when `None`.
    pub fn opt_money(m: Option<i64>) -> Cell {
        m.map_or(Cell::Empty, Cell::Money)
    }
}

/// How a column renders its field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Render {
    /// As the field's type says.
    Plain,
    /// A money field as exact micro-dollars (an integer).
    Micros,
}

/// Characters that make a spreadsheet read a cell as a formula (OWASP's list).
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// Neutralises a text cell a spreadsheet would run as a formula: one that begins with `=`,
/// `+`, `-`, `@`, a tab or a carriage return gets a leading apostrophe, which spreadsheets
/// show as text and do not evaluate. Only text cells: money and numbers are never prefixed,
/// so a negative amount stays a number.
pub fn neutralise(text: &str) -> std::borrow::Cow<'_, str> {
    if text.starts_with(FORMULA_STARTS) {
        std::borrow::Cow::Owned(format!("'{text}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// An instant as written in every report: RFC 3339 in UTC, microseconds only when present.
pub fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A cell as CSV (and HTML) text.
pub fn cell_text(cell: &Cell, render: Render) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    match (cell, render) {
        (Cell::Empty, _) => Cow::Borrowed(""),
        (Cell::Text(t), _) => neutralise(t),
        (Cell::Money(m), Render::Micros) => Cow::Owned(m.to_string()),
        (Cell::Money(m), Render::Plain) => Cow::Owned(UsdMicros::from_stored(*m).to_cents_string()),
        (Cell::Int(i), _) => Cow::Owned(i.to_string()),
        (Cell::Date(d), _) => Cow::Owned(d.format("%Y-%m-%d").to_string()),
        (Cell::Time(t), _) => Cow::Owned(time_text(*t)),
    }
}

/// A cell as HTML text (not neutralised: HTML escaping is the template engine's).
pub fn cell_html(cell: &Cell, render: Render) -> String {
    match cell {
        Cell::Text(t) => t.clone(),
        other => cell_text(other, render).into_owned(),
    }
}

/// A cell as JSON: money as an exact decimal string (`"118.50"`, `"0.000001"`), numbers as
/// numbers, times as RFC 3339.
pub fn cell_json(cell: &Cell) -> serde_json::Value {
    use serde_json::Value;
    match cell {
        Cell::Empty => Value::Null,
        Cell::Text(t) => Value::String(t.clone()),
        Cell::Money(m) => Value::String(UsdMicros::from_stored(*m).to_string()),
        Cell::Int(i) => Value::from(*i),
        Cell::Date(d) => Value::String(d.format("%Y-%m-%d").to_string()),
        Cell::Time(t) => Value::String(time_text(*t)),
    }
}

/// Fields of the journal export: one row per ledger entry.
pub const JOURNAL: &[Field] = &[
    f("date", Ty::Date, "day the entry takes effect (UTC)"),
    f(
        "effective_at",
        Ty::Time,
        "instant the entry takes effect (UTC)",
    ),
    f("recorded_at", Ty::Time, "instant the entry was written"),
    f(
        "entry_id",
        Ty::Int,
        "the entry's number in the journal (`asbb transactions show N`)",
    ),
    f("account", Ty::Text, "SLURM budget account"),
    f(
        "seq",
        Ty::Int,
        "position in the account's hash chain (1, 2, 3, … with no gaps)",
    ),
    f(
        "kind",
        Ty::Text,
        "credit, hold, release, charge, refund, adjustment or expiry",
    ),
    f(
        "grant",
        Ty::Text,
        "grant the entry counts against (the account's grant when it was booked)",
    ),
    f("period", Ty::Int, "budget period of that grant"),
    f("job", Ty::Text, "SLURM job id"),
    f("user", Ty::Text, "SLURM user"),
    f("partition", Ty::Text, "SLURM partition"),
    f("cluster", Ty::Text, "cluster"),
    f("hold", Ty::Text, "the hold the entry belongs to (hold-N)"),
    f(
        "amount",
        Ty::Money,
        "the entry's amount (an adjustment is signed; every other kind is positive)",
    ),
    f(
        "credited_change",
        Ty::Money,
        "change of the account's credited money (credits and adjustments)",
    ),
    f(
        "charged_change",
        Ty::Money,
        "change of the account's charged money (charges +, refunds −)",
    ),
    f(
        "held_change",
        Ty::Money,
        "change of the account's held money (holds +, releases, expiries and charges −)",
    ),
    f(
        "balance_change",
        Ty::Money,
        "credited_change − charged_change: the change of the account's balance",
    ),
    f(
        "direct",
        Ty::Money,
        "direct cost part of charged_change (all of it without a grant)",
    ),
    f(
        "indirect",
        Ty::Money,
        "indirect (F&A) part of charged_change at the grant's rate",
    ),
    f(
        "flags",
        Ty::Text,
        "overrun (cost above its hold), unmatched (charge without a hold)",
    ),
    f(
        "reason",
        Ty::Text,
        "why, as written when the entry was booked",
    ),
    f("actor", Ty::Text, "who booked it"),
    f("idempotency_key", Ty::Text, "the entry's unique key"),
    f(
        "prev_hash",
        Ty::Text,
        "hash of the account's previous entry",
    ),
    f(
        "hash",
        Ty::Text,
        "SHA-256 of this entry and prev_hash (`asbb audit verify` recomputes it)",
    ),
];

/// Fields of grant and account statements: one row per budget period (grant) or month
/// (account), then a total.
pub const STATEMENT: &[Field] = &[
    f("subject", Ty::Text, "grant number or account"),
    f(
        "row",
        Ty::Text,
        "budget period number, month (YYYY-MM), or Total",
    ),
    f("start", Ty::Date, "first day of the row"),
    f("end", Ty::Date, "last day of the row (inclusive)"),
    f(
        "status",
        Ty::Text,
        "period status: pending, active, closed, cancelled",
    ),
    f(
        "budget",
        Ty::Money,
        "the period's budget (direct + indirect) as awarded",
    ),
    f(
        "opening",
        Ty::Money,
        "balance (credited − charged) at the start of the row",
    ),
    f(
        "transfers",
        Ty::Money,
        "money accounts brought when linked to the grant (+) or took when unlinked (−)",
    ),
    f(
        "credits",
        Ty::Money,
        "money credited: the grant's period budget, allocations, deposits",
    ),
    f("direct_charges", Ty::Money, "charges, direct cost part"),
    f(
        "indirect_charges",
        Ty::Money,
        "charges, indirect (F&A) part at the grant's rate",
    ),
    f("charges", Ty::Money, "charges, direct + indirect"),
    f("refunds", Ty::Money, "charged money given back"),
    f(
        "adjustments",
        Ty::Money,
        "signed corrections (without period-end expiries)",
    ),
    f(
        "expired",
        Ty::Money,
        "unspent period money taken back at the period's end",
    ),
    f(
        "closing",
        Ty::Money,
        "opening + transfers + credits − charges + refunds + adjustments − expired",
    ),
    f(
        "holds",
        Ty::Money,
        "money held for running jobs at the end of the row",
    ),
    f(
        "remaining",
        Ty::Money,
        "closing − holds: what is left to spend",
    ),
];

/// Fields of an account statement's allocations file.
pub const ALLOCATIONS: &[Field] = &[
    f("account", Ty::Text, "account"),
    f(
        "schedule",
        Ty::Int,
        "allocation schedule id (`asbb allocations show N`)",
    ),
    f(
        "frequency",
        Ty::Text,
        "daily, weekly, monthly, quarterly or yearly",
    ),
    f("period", Ty::Int, "allocation period number"),
    f("due", Ty::Date, "day the allocation was due"),
    f("outcome", Ty::Text, "credited, or skipped (while paused)"),
    f("amount", Ty::Money, "amount credited"),
    f("effective", Ty::Date, "day the credit took effect"),
    f("entry_id", Ty::Int, "its journal entry"),
    f("reason", Ty::Text, "why a period was skipped or caught up"),
];

/// Fields of the usage report.
pub const USAGE: &[Field] = &[
    f("account", Ty::Text, "account (Total for the last row)"),
    f("user", Ty::Text, "SLURM user"),
    f("partition", Ty::Text, "SLURM partition"),
    f(
        "instance_type",
        Ty::Text,
        "AWS instance types of the runs, as ASBX reported them",
    ),
    f("jobs", Ty::Int, "distinct jobs charged"),
    f("charges", Ty::Int, "charge entries"),
    f("charged", Ty::Money, "money charged"),
    f("refunded", Ty::Money, "money refunded"),
    f("net", Ty::Money, "charged − refunded"),
];

/// Fields of the outstanding holds report.
pub const HOLDS: &[Field] = &[
    f("hold", Ty::Text, "hold-N (`asbb hold show N`)"),
    f("account", Ty::Text, "account"),
    f("job", Ty::Text, "SLURM job id"),
    f("user", Ty::Text, "SLURM user"),
    f("partition", Ty::Text, "SLURM partition"),
    f("cluster", Ty::Text, "cluster"),
    f("placed", Ty::Time, "when the hold was placed"),
    f(
        "expires",
        Ty::Time,
        "when it may be expired if nothing resolves it",
    ),
    f(
        "estimate",
        Ty::Money,
        "the job's estimate before the buffer",
    ),
    f("amount", Ty::Money, "amount held at placement"),
    f(
        "charged",
        Ty::Money,
        "charged against it so far (job arrays)",
    ),
    f("outstanding", Ty::Money, "still held"),
    f("tasks", Ty::Int, "job array tasks covered"),
    f("tasks_charged", Ty::Int, "tasks charged so far"),
];

/// Fields of the refunds register.
pub const REFUNDS: &[Field] = &[
    f("date", Ty::Date, "day the refund takes effect"),
    f("effective_at", Ty::Time, "instant it takes effect"),
    f("entry_id", Ty::Int, "its journal entry"),
    f("account", Ty::Text, "account"),
    f("grant", Ty::Text, "grant it counts against"),
    f("period", Ty::Int, "budget period"),
    f("job", Ty::Text, "SLURM job id"),
    f("user", Ty::Text, "SLURM user"),
    f("partition", Ty::Text, "SLURM partition"),
    f("amount", Ty::Money, "money given back"),
    f(
        "source",
        Ty::Text,
        "policy (by reconcile.refund_states) or manual (`asbb refund`)",
    ),
    f(
        "job_state",
        Ty::Text,
        "the run's final SLURM state, for policy refunds",
    ),
    f(
        "charge_entry_id",
        Ty::Int,
        "the charge it gives money back for",
    ),
    f("reason", Ty::Text, "why"),
    f("actor", Ty::Text, "who booked it"),
];

/// Fields of the estimate-vs-actual report.
pub const ACCURACY: &[Field] = &[
    f("account", Ty::Text, "account (Total for the last row)"),
    f("partition", Ty::Text, "partition"),
    f("runs", Ty::Int, "reconciled runs with an estimate"),
    f(
        "within_10pct",
        Ty::Int,
        "runs whose estimate was within ±10 % of the actual cost",
    ),
    f("within_10pct_share", Ty::Text, "that share, percent"),
    f("mean_estimate", Ty::Money, "mean estimate per run"),
    f("mean_actual", Ty::Money, "mean actual cost per run"),
    f("mean_abs_error", Ty::Money, "mean absolute difference"),
    f(
        "bias",
        Ty::Text,
        "sum of estimates ÷ sum of actual costs (above 1: overestimated)",
    ),
];

/// Fields of the alerts report.
pub const ALERTS: &[Field] = &[
    f("id", Ty::Int, "alert id (`asbb alerts acknowledge N`)"),
    f("kind", Ty::Text, "what was detected"),
    f("severity", Ty::Text, "info, warning or critical"),
    f("state", Ty::Text, "open, acknowledged or resolved"),
    f("subject_kind", Ty::Text, "account, grant or schedule"),
    f("subject", Ty::Text, "which one"),
    f("message", Ty::Text, "the alert"),
    f("value", Ty::Text, "the measured value"),
    f("threshold", Ty::Text, "the threshold it crossed"),
    f("raised", Ty::Time, "when first raised"),
    f("last_seen", Ty::Time, "last evaluation that found it"),
    f("resolved", Ty::Time, "when its condition cleared"),
    f("acknowledged", Ty::Time, "when acknowledged"),
    f("acknowledged_by", Ty::Text, "by whom"),
    f("notes", Ty::Text, "their notes"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_starts_are_neutralised_in_text_only() {
        for bad in ["=SUM(A1)", "+1", "-2+3", "@cmd", "\tx", "\rx"] {
            assert!(neutralise(bad).starts_with('\''), "{bad:?}");
        }
        assert_eq!(neutralise("ml-proj"), "ml-proj");
        assert_eq!(
            cell_text(&Cell::Money(-12_404_999), Render::Plain),
            "-12.40"
        );
        assert_eq!(
            cell_text(&Cell::Money(-12_405_000), Render::Plain),
            "-12.41"
        );
        assert_eq!(
            cell_text(&Cell::Money(-12_405_000), Render::Micros),
            "-12405000"
        );
        assert_eq!(
            cell_text(&Cell::Text("-5 fix".into()), Render::Plain),
            "'-5 fix"
        );
    }

    #[test]
    fn field_names_are_unique_per_kind() {
        for fields in [
            JOURNAL,
            STATEMENT,
            ALLOCATIONS,
            USAGE,
            HOLDS,
            REFUNDS,
            ACCURACY,
            ALERTS,
        ] {
            let mut names: Vec<&str> = fields.iter().map(|f| f.name).collect();
            names.sort_unstable();
            let n = names.len();
            names.dedup();
            assert_eq!(n, names.len());
        }
    }
}
