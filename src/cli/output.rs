//! How records are printed: human tables, and JSON for scripts. Money in JSON is a decimal
//! string with at least two decimals (`"118.50"`), never a float.

use std::io::Write;

use chrono::{DateTime, Utc};
use comfy_table::{Cell, CellAlignment, ContentArrangement, Table};
use serde_json::{json, Value};

use super::CliError;
use crate::db::models::{hold_reference, Account, Entry, Hold, PartitionUsage};
use crate::domain::UsdMicros;

/// Plain columns with one rule under the header: easy to read, easy to `grep`.
const HEADER_RULE_ONLY: &str = "     ──            ";

/// A table with the project's look.
pub fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(HEADER_RULE_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(headers.iter().map(Cell::new));
    t
}

/// A right-aligned money cell.
pub fn money_cell(m: UsdMicros) -> Cell {
    Cell::new(m.to_string()).set_alignment(CellAlignment::Right)
}

/// Prints a table.
pub fn print_table(out: &mut dyn Write, t: &Table) -> Result<(), CliError> {
    writeln!(out, "{t}")?;
    Ok(())
}

/// Prints JSON, pretty.
pub fn print_json(out: &mut dyn Write, v: &Value) -> Result<(), CliError> {
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(v).expect("json values serialise")
    )?;
    Ok(())
}

/// RFC 3339 with a Z.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// A short human date-time.
pub fn ts_short(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

/// Money as a JSON decimal string.
pub fn m(v: UsdMicros) -> Value {
    Value::String(v.to_string())
}

/// An account in JSON, with the seed's field names.
pub fn account_json(a: &Account, partitions: Option<&[PartitionUsage]>) -> Value {
    let mut v = json!({
        "account": a.name,
        "name": a.display_name,
        "description": a.description,
        "status": a.status.as_str(),
        "start": ts(a.starts_at),
        "end": ts(a.ends_at),
        "overdraft_limit": m(a.overdraft),
        "budget_limit": m(a.balances.credited),
        "budget_used": m(a.balances.charged),
        "budget_held": m(a.balances.held),
        "budget_available": m(a.available()),
        "entry_count": a.entry_count,
        "created_at": ts(a.created_at),
        "updated_at": ts(a.updated_at),
    });
    if let Some(parts) = partitions {
        v["partitions"] = parts
            .iter()
            .map(|p| {
                json!({
                    "partition": p.partition,
                    "limit": p.limit.map(m),
                    "charged": m(p.charged),
                    "held": m(p.held),
                })
            })
            .collect();
    }
    v
}

/// A journal entry in JSON.
pub fn entry_json(e: &Entry) -> Value {
    json!({
        "id": e.id,
        "account": e.account,
        "seq": e.seq,
        "type": e.kind.as_str(),
        "amount": m(e.amount),
        "credited_delta": m(e.effect.credited),
        "charged_delta": m(e.effect.charged),
        "held_delta": m(e.effect.held),
        "hold_id": e.hold_id.map(hold_reference),
        "hold_status": e.hold_state.map(|s| s.as_str()),
        "cluster": e.cluster,
        "job_id": e.job_id,
        "partition": e.partition,
        "user": e.user_name,
        "actor": e.actor,
        "reason": e.reason,
        "flags": e.flags,
        "idempotency_key": e.idempotency_key,
        "effective_at": ts(e.effective_at),
        "recorded_at": ts(e.recorded_at),
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    })
}

/// A hold in JSON.
pub fn hold_json(h: &Hold) -> Value {
    json!({
        "hold_id": h.reference(),
        "transaction_id": h.reference(),
        "account": h.account,
        "partition": h.partition,
        "cluster": h.cluster,
        "job_id": h.job_id,
        "user": h.user_name,
        "estimate": m(h.estimate),
        "buffer": h.buffer,
        "amount": m(h.amount),
        "remaining": m(h.remaining),
        "charged": m(h.charged),
        "status": h.state.as_str(),
        "flags": h.flags,
        "expires_at": h.expires_at.map(ts),
        "created_at": ts(h.created_at),
        "resolved_at": h.resolved_at.map(ts),
    })
}

/// Entries as a table.
pub fn entries_table(entries: &[Entry]) -> Table {
    let mut t = table(&[
        "ID",
        "EFFECTIVE",
        "ACCOUNT",
        "TYPE",
        "AMOUNT",
        "HOLD",
        "JOB",
        "PARTITION",
        "FLAGS",
        "REASON",
    ]);
    for e in entries {
        let hold = match (e.hold_id, e.hold_state) {
            (Some(id), Some(s)) => format!("{} ({s})", hold_reference(id)),
            (Some(id), None) => hold_reference(id),
            _ => String::new(),
        };
        t.add_row(vec![
            Cell::new(e.id),
            Cell::new(ts_short(e.effective_at)),
            Cell::new(&e.account),
            Cell::new(e.kind.as_str()),
            money_cell(e.amount),
            Cell::new(hold),
            Cell::new(e.job_id.as_deref().unwrap_or("")),
            Cell::new(e.partition.as_deref().unwrap_or("")),
            Cell::new(&e.flags),
            Cell::new(&e.reason),
        ]);
    }
    t
}

/// Holds as a table.
pub fn holds_table(holds: &[Hold]) -> Table {
    let mut t = table(&[
        "HOLD",
        "ACCOUNT",
        "PARTITION",
        "JOB",
        "AMOUNT",
        "REMAINING",
        "CHARGED",
        "STATUS",
        "EXPIRES",
        "CREATED",
    ]);
    for h in holds {
        t.add_row(vec![
            Cell::new(h.reference()),
            Cell::new(&h.account),
            Cell::new(h.partition.as_deref().unwrap_or("")),
            Cell::new(h.job_id.as_deref().unwrap_or("")),
            money_cell(h.amount),
            money_cell(h.remaining),
            money_cell(h.charged),
            Cell::new(format!(
                "{}{}",
                h.state,
                if h.flags.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", h.flags)
                }
            )),
            Cell::new(h.expires_at.map(ts_short).unwrap_or_default()),
            Cell::new(ts_short(h.created_at)),
        ]);
    }
    t
}

/// Key/value lines for a single record.
pub fn kv(out: &mut dyn Write, rows: &[(&str, String)]) -> Result<(), CliError> {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        writeln!(out, "{k:<width$}  {v}")?;
    }
    Ok(())
}
