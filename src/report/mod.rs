//! Finance reports: CSV files a grants office opens in a spreadsheet, the same rows as JSON,
//! and HTML summaries (a grant's with its burn-down chart), written into a directory with a
//! manifest of SHA-256 checksums.
//!
//! - **What**: [`Kind`] — journal, grant statement, account statement, usage, outstanding
//!   holds, refunds register, estimate vs actual, alerts. The data comes from `db::report`;
//!   the columns from the column specs in `reports/templates/` ([`templates`]).
//! - **Rules**: money is summed exactly in micro-dollars and printed with two decimals,
//!   rounded half away from zero ([`ROUNDING_RULE`], [`TOTALS_RULE`]); text cells are
//!   neutralised against formula injection ([`NEUTRALISING_RULE`]); files are written
//!   atomically ([`write`](mod@write)); the same ledger and the same request give byte-identical files
//!   (no clock reading goes into a report file, only into the manifest).
//! - **Bounded memory**: the journal is read in pages and every CSV and JSON row is written
//!   as it comes; HTML pages (meant for people) show at most [`HTML_ROWS_MAX`] rows.

pub mod chart;
pub mod fields;
pub mod html;
pub mod scheduled;
pub mod templates;
pub mod write;

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde::Serialize;

use crate::db::ledger::LedgerError;
use crate::db::report::{
    self as data, GrantIndex, JournalFilter, LedgerMark, Statement, StatementRow,
};
use crate::db::DbConn;
use crate::domain::UsdMicros;
use fields::{cell_html, cell_json, cell_text, Cell, Field, Ty};
use html::{Detail, Heading, HtmlRow, HtmlTable, PageInfo};
use templates::{ColumnSpec, TemplateError, Templates};
use write::{AtomicFile, FileInfo};

/// The rounding rule, as stated in every manifest, README and HTML page.
pub const ROUNDING_RULE: &str = "Money is kept exact, in micro-dollars (millionths of a dollar). Money columns show whole cents, rounded half away from zero (0.005 becomes 0.01 and -0.005 becomes -0.01); columns marked (micro-USD) give the exact amount as a whole number of micro-dollars.";

/// How totals are computed.
pub const TOTALS_RULE: &str = "Totals (Total rows, opening and closing balances) are computed from the exact amounts and rounded once, so a total can differ by a few cents from the sum of the rounded cells above it. To re-total exactly, sum a (micro-USD) column and divide by 1,000,000; rounded to cents, that is the printed total. The journal export has a (micro-USD) column for every amount.";

/// How text cells are protected.
pub const NEUTRALISING_RULE: &str = "Text cells that begin with =, +, -, @, a tab or a carriage return are written with a leading apostrophe (') so that no spreadsheet runs them as a formula. Money and number cells are never changed: a negative amount stays a number.";

/// The most rows an HTML page shows (the CSV and JSON files have all of them).
pub const HTML_ROWS_MAX: usize = 5_000;

/// What went wrong writing a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A request or ledger problem.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A template is bad.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// Writing failed.
    #[error("failed to write {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl From<diesel::result::Error> for ReportError {
    fn from(e: diesel::result::Error) -> Self {
        ReportError::Ledger(e.into())
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(flag: &'static str, message: impl Into<String>) -> ReportError {
    ReportError::Ledger(LedgerError::invalid(flag, message))
}

/// A report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Every ledger entry.
    Journal,
    /// A grant's budget periods.
    GrantStatement,
    /// An account's months and allocations.
    AccountStatement,
    /// Charges by account, user, partition, instance type.
    Usage,
    /// Money held for running jobs.
    Holds,
    /// Refunds with reasons.
    Refunds,
    /// Estimate vs actual.
    Accuracy,
    /// Budget alerts.
    Alerts,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Kind::Journal,
        Kind::GrantStatement,
        Kind::AccountStatement,
        Kind::Usage,
        Kind::Holds,
        Kind::Refunds,
        Kind::Accuracy,
        Kind::Alerts,
    ];

    /// The name on the command line and in file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Journal => "journal",
            Kind::GrantStatement => "grant-statement",
            Kind::AccountStatement => "account-statement",
            Kind::Usage => "usage",
            Kind::Holds => "holds",
            Kind::Refunds => "refunds",
            Kind::Accuracy => "accuracy",
            Kind::Alerts => "alerts",
        }
    }

    /// Parses a name or one of its aliases.
    pub fn parse(s: &str) -> Option<Kind> {
        let t = s.trim().to_ascii_lowercase().replace('_', "-");
        Some(match t.as_str() {
            "journal" => Kind::Journal,
            "grant-statement" | "grant" => Kind::GrantStatement,
            "account-statement" | "account" => Kind::AccountStatement,
            "usage" => Kind::Usage,
            "holds" | "outstanding-holds" => Kind::Holds,
            "refunds" | "refunds-register" => Kind::Refunds,
            "accuracy" | "estimate-vs-actual" => Kind::Accuracy,
            "alerts" => Kind::Alerts,
            _ => return None,
        })
    }
}

/// A table of rows (a report has one, an account statement two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Journal.
    Journal,
    /// Grant statement.
    GrantStatement,
    /// Account statement.
    AccountStatement,
    /// The allocations beside an account statement.
    AccountAllocations,
    /// Usage.
    Usage,
    /// Outstanding holds.
    Holds,
    /// Refunds register.
    Refunds,
    /// Estimate vs actual.
    Accuracy,
    /// Alerts.
    Alerts,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 9] = [
        Table::Journal,
        Table::GrantStatement,
        Table::AccountStatement,
        Table::AccountAllocations,
        Table::Usage,
        Table::Holds,
        Table::Refunds,
        Table::Accuracy,
        Table::Alerts,
    ];

    /// Its column spec's file name.
    pub fn spec_file(self) -> &'static str {
        match self {
            Table::Journal => "journal.columns.toml",
            Table::GrantStatement => "grant-statement.columns.toml",
            Table::AccountStatement => "account-statement.columns.toml",
            Table::AccountAllocations => "account-allocations.columns.toml",
            Table::Usage => "usage.columns.toml",
            Table::Holds => "holds.columns.toml",
            Table::Refunds => "refunds.columns.toml",
            Table::Accuracy => "accuracy.columns.toml",
            Table::Alerts => "alerts.columns.toml",
        }
    }

    /// Its fields.
    pub fn fields(self) -> &'static [Field] {
        match self {
            Table::Journal => fields::JOURNAL,
            Table::GrantStatement | Table::AccountStatement => fields::STATEMENT,
            Table::AccountAllocations => fields::ALLOCATIONS,
            Table::Usage => fields::USAGE,
            Table::Holds => fields::HOLDS,
            Table::Refunds => fields::REFUNDS,
            Table::Accuracy => fields::ACCURACY,
            Table::Alerts => fields::ALERTS,
        }
    }

    /// How its files are named in the README.
    fn file_pattern(self) -> &'static str {
        match self {
            Table::Journal => "journal*.csv",
            Table::GrantStatement => "grant-statement-GRANT*.csv (and .html)",
            Table::AccountStatement => "account-statement-ACCOUNT*.csv (and .html)",
            Table::AccountAllocations => "account-statement-ACCOUNT*-allocations.csv",
            Table::Usage => "usage*.csv",
            Table::Holds => "holds*.csv",
            Table::Refunds => "refunds*.csv",
            Table::Accuracy => "accuracy*.csv",
            Table::Alerts => "alerts*.csv",
        }
    }
}

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma-separated values for spreadsheets.
    Csv,
    /// A page for people.
    Html,
    /// The rows for programs.
    Json,
}

impl Format {
    /// Parses `csv`, `html` or `json`.
    pub fn parse(s: &str) -> Option<Format> {
        match s.trim().to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "html" => Some(Format::Html),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    /// Parses a comma-separated list (`csv,html`).
    pub fn parse_list(s: &str) -> Result<Vec<Format>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let f = Format::parse(part)
                .ok_or_else(|| format!("'{part}' is not a format (csv, html, json)"))?;
            if !out.contains(&f) {
                out.push(f);
            }
        }
        if out.is_empty() {
            return Err("name at least one format (csv, html, json)".into());
        }
        out.sort();
        Ok(out)
    }
}

/// A range of effective times: (from, before).
type Range = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// What to report.
#[derive(Debug, Clone)]
pub struct Request {
    /// Which report.
    pub kind: Kind,
    /// Only this grant's money (its linked accounts while linked).
    pub grant: Option<String>,
    /// Only this account.
    pub account: Option<String>,
    /// Only this budget period of the grant (or of the account's grant).
    pub period: Option<i64>,
    /// Effective at or after.
    pub from: Option<DateTime<Utc>>,
    /// Effective before (the day after `--to`).
    pub to: Option<DateTime<Utc>>,
    /// The ledger as of this instant (entries effective before it); `None`: every entry.
    pub as_of: Option<DateTime<Utc>>,
    /// Formats to write.
    pub formats: Vec<Format>,
}

/// How files are written.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Start CSV files with a UTF-8 byte order mark (Excel needs it to read UTF-8).
    pub csv_bom: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { csv_bom: true }
    }
}

/// One report written.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    /// Which.
    pub kind: Kind,
    /// Grant or account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<i64>,
    /// Range start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Range end (exclusive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The base of the file names.
    pub base: String,
    /// Its files.
    pub files: Vec<FileInfo>,
}

/// What the reports of one run share: the connection, the templates, the loaded indexes.
pub struct Session<'a> {
    conn: &'a mut DbConn,
    templates: &'a Templates,
    opts: Options,
    grants: GrantIndex,
    names: std::collections::HashMap<i64, String>,
}

/// File-name form of a grant number or account (`/` and other unsafe characters become `_`).
pub fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn date_of(t: DateTime<Utc>) -> NaiveDate {
    t.date_naive()
}

/// The last day of `[_, end)`, for "to" dates people read.
fn last_day(end: DateTime<Utc>) -> NaiveDate {
    date_of(end - Duration::microseconds(1))
}

fn month_start(y: i32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .expect("the first of a month exists")
}

fn next_month(t: DateTime<Utc>) -> DateTime<Utc> {
    let (y, m) = (t.year(), t.month());
    if m == 12 {
        month_start(y + 1, 1)
    } else {
        month_start(y, m + 1)
    }
}

/// Calendar months overlapping `[a, b)`, each clipped to it: (YYYY-MM, start, end).
pub fn months(a: DateTime<Utc>, b: DateTime<Utc>) -> Vec<(String, DateTime<Utc>, DateTime<Utc>)> {
    let mut out = Vec::new();
    let mut m = month_start(a.year(), a.month());
    while m < b {
        let n = next_month(m);
        out.push((m.format("%Y-%m").to_string(), m.max(a), n.min(b)));
        m = n;
    }
    out
}

/// A table being written in every format asked for.
struct TableOut<'t> {
    spec: &'t ColumnSpec,
    fields: &'static [Field],
    csv: Option<csv::Writer<AtomicFile>>,
    csv_path: PathBuf,
    json_path: PathBuf,
    json: Option<AtomicFile>,
    html: Option<Vec<HtmlRow>>,
    rows: u64,
    html_rows: usize,
}

impl<'t> TableOut<'t> {
    fn open(
        dir: &Path,
        base: &str,
        table: Table,
        templates: &'t Templates,
        formats: &[Format],
        opts: Options,
        kind: Kind,
    ) -> Result<TableOut<'t>, ReportError> {
        let spec = templates.spec(table);
        let fields = table.fields();
        let csv = if formats.contains(&Format::Csv) {
            let name = format!("{base}.csv");
            let mut f = AtomicFile::create(dir, &name).map_err(io_err(&dir.join(&name)))?;
            if opts.csv_bom {
                f.write_all("\u{feff}".as_bytes())
                    .map_err(io_err(&dir.join(&name)))?;
            }
            let mut w = csv::WriterBuilder::new()
                .terminator(csv::Terminator::CRLF)
                .from_writer(f);
            w.write_record(spec.columns.iter().map(|c| c.header.as_str()))
                .map_err(|e| csv_err(dir, &name, e))?;
            Some(w)
        } else {
            None
        };
        let json = if formats.contains(&Format::Json) {
            let name = format!("{base}.json");
            let mut f = AtomicFile::create(dir, &name).map_err(io_err(&dir.join(&name)))?;
            let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
            write!(
                f,
                "{{\"report\":{},\"table\":{},\"fields\":{},\"rows\":[",
                serde_json::to_string(kind.as_str()).unwrap_or_default(),
                serde_json::to_string(&spec.title).unwrap_or_default(),
                serde_json::to_string(&names).unwrap_or_default()
            )
            .map_err(io_err(&dir.join(&name)))?;
            Some(f)
        } else {
            None
        };
        Ok(TableOut {
            spec,
            fields,
            csv,
            csv_path: dir.join(format!("{base}.csv")),
            json_path: dir.join(format!("{base}.json")),
            json,
            html: formats.contains(&Format::Html).then(Vec::new),
            rows: 0,
            html_rows: 0,
        })
    }

    fn row(&mut self, cells: &[Cell], total: bool) -> Result<(), ReportError> {
        debug_assert_eq!(cells.len(), self.fields.len());
        if let Some(w) = &mut self.csv {
            let path = &self.csv_path;
            let err = |e: csv::Error| ReportError::Io {
                path: path.clone(),
                source: std::io::Error::other(e),
            };
            for c in &self.spec.columns {
                w.write_field(cell_text(&cells[c.field], c.render).as_bytes())
                    .map_err(err)?;
            }
            w.write_record(None::<&[u8]>).map_err(err)?;
        }
        if let Some(f) = &mut self.json {
            let mut obj = serde_json::Map::with_capacity(self.fields.len() + 1);
            for (field, cell) in self.fields.iter().zip(cells) {
                obj.insert(field.name.to_string(), cell_json(cell));
            }
            obj.insert("total".into(), serde_json::Value::Bool(total));
            let sep = if self.rows == 0 { "" } else { "," };
            write!(f, "{sep}{}", serde_json::Value::Object(obj))
                .map_err(io_err(&self.json_path))?;
        }
        if let Some(h) = &mut self.html {
            if total || self.html_rows < HTML_ROWS_MAX {
                h.push(HtmlRow {
                    cells: self
                        .spec
                        .columns
                        .iter()
                        .map(|c| cell_html(&cells[c.field], c.render))
                        .collect(),
                    total,
                });
                if !total {
                    self.html_rows += 1;
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    fn headings(&self) -> Vec<Heading> {
        self.spec
            .columns
            .iter()
            .map(|c| Heading {
                header: c.header.clone(),
                numeric: matches!(self.fields[c.field].ty, Ty::Money | Ty::Int),
            })
            .collect()
    }

    /// Commits the CSV and JSON files; returns them and the HTML table (if asked for).
    fn finish(self) -> Result<(Vec<FileInfo>, Option<HtmlTable>), ReportError> {
        let mut files = Vec::new();
        let headings = self.headings();
        let rows = self.rows;
        if let Some(w) = self.csv {
            let f = w.into_inner().map_err(|e| ReportError::Io {
                path: PathBuf::from("csv"),
                source: std::io::Error::other(e.to_string()),
            })?;
            let dest = f.dest().to_path_buf();
            files.push(f.commit(Some(rows)).map_err(io_err(&dest))?);
        }
        if let Some(mut f) = self.json {
            let dest = f.dest().to_path_buf();
            f.write_all(b"]}\n").map_err(io_err(&dest))?;
            files.push(f.commit(Some(rows)).map_err(io_err(&dest))?);
        }
        let html = self.html.map(|mut rows_html| {
            if self.html_rows >= HTML_ROWS_MAX && (rows as usize) > self.html_rows {
                let mut cells = vec![String::new(); headings.len()];
                if let Some(c) = cells.first_mut() {
                    *c = format!(
                        "… the first {HTML_ROWS_MAX} of {rows} rows; the CSV and JSON files have all of them"
                    );
                }
                rows_html.push(HtmlRow {
                    cells,
                    total: false,
                });
            }
            HtmlTable {
                title: self.spec.title.clone(),
                about: self.spec.about.clone(),
                columns: headings,
                rows: rows_html,
            }
        });
        Ok((files, html))
    }
}

fn csv_err(dir: &Path, name: &str, e: csv::Error) -> ReportError {
    ReportError::Io {
        path: dir.join(name),
        source: std::io::Error::other(e),
    }
}

impl<'a> Session<'a> {
    /// Loads what every report of a run needs.
    pub fn new(
        conn: &'a mut DbConn,
        templates: &'a Templates,
        opts: Options,
    ) -> Result<Session<'a>, ReportError> {
        let grants = GrantIndex::load(conn)?;
        let names = data::account_names(conn)?;
        Ok(Session {
            conn,
            templates,
            opts,
            grants,
            names,
        })
    }

    /// The connection (for callers that need to look something up between reports).
    pub fn conn(&mut self) -> &mut DbConn {
        self.conn
    }

    /// The ledger's extent at a cut.
    pub fn mark(&mut self, cut: Option<DateTime<Utc>>) -> Result<LedgerMark, ReportError> {
        Ok(data::ledger_mark(self.conn, cut)?)
    }

    fn grant_id(&self, number: &str) -> Result<i64, ReportError> {
        self.grants
            .by_number(number)
            .map(|g| g.grant.id)
            .ok_or_else(|| {
                invalid(
                    "--grant",
                    format!("no grant '{number}' (see `asbb grant list`)"),
                )
            })
    }

    fn account_id(&mut self, name: &str) -> Result<i64, ReportError> {
        Ok(data::account_id(self.conn, name)?)
    }

    /// The range a request covers: (from, to) from `--from/--to`, or the budget period.
    fn range(&mut self, req: &Request) -> Result<Range, ReportError> {
        if let Some(n) = req.period {
            let gid = match (&req.grant, &req.account) {
                (Some(g), _) => self.grant_id(g)?,
                (None, Some(a)) => {
                    let id = self.account_id(a)?;
                    crate::db::grants::grant_of_account(self.conn, id)?.ok_or_else(|| {
                        invalid(
                            "--period",
                            format!("account '{a}' is not linked to a grant; use --from/--to"),
                        )
                    })?
                }
                (None, None) => {
                    return Err(invalid(
                        "--period",
                        "a budget period needs --grant (or an --account linked to a grant)",
                    ))
                }
            };
            let g = &self.grants.grants[&gid];
            let p = g.periods.iter().find(|p| p.number == n).ok_or_else(|| {
                invalid(
                    "--period",
                    format!(
                        "grant '{}' has periods 1 to {}",
                        g.grant.number,
                        g.periods.len()
                    ),
                )
            })?;
            return Ok((Some(p.start()), Some(p.end())));
        }
        Ok((req.from, req.to))
    }

    fn page_info(
        &mut self,
        title: &str,
        subject: &str,
        about: &str,
        cut: Option<DateTime<Utc>>,
    ) -> Result<PageInfo, ReportError> {
        let m = self.mark(cut)?;
        Ok(PageInfo {
            title: title.to_string(),
            subject: subject.to_string(),
            about: about.to_string(),
            as_of: match cut {
                Some(c) => fields::time_text(c),
                None => "the latest entry".to_string(),
            },
            ledger: ledger_text(&m),
            rounding: ROUNDING_RULE.into(),
            totals: TOTALS_RULE.into(),
        })
    }

    /// Writes one report into `dir`; returns what it wrote.
    pub fn write(
        &mut self,
        req: &Request,
        dir: &Path,
        base_override: Option<&str>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Written, ReportError> {
        if req.grant.is_some() && req.account.is_some() {
            return Err(invalid("--grant", "give --grant or --account, not both"));
        }
        if req.period.is_some() && (req.from.is_some() || req.to.is_some()) {
            return Err(invalid(
                "--period",
                "give --period or --from/--to, not both",
            ));
        }
        if let (Some(a), Some(b)) = (req.from, req.to) {
            if b <= a {
                return Err(invalid("--to", "the range ends before it starts"));
            }
        }
        let (from, to) = self.range(req)?;
        let subject = req.grant.clone().or_else(|| req.account.clone());
        let mut base = req.kind.as_str().to_string();
        if let Some(s) = &subject {
            base.push('-');
            base.push_str(&file_safe(s));
        }
        if let Some(n) = req.period {
            base.push_str(&format!("-p{n}"));
        } else if from.is_some() || to.is_some() {
            base.push_str(&format!(
                "-{}_{}",
                from.map(|t| date_of(t).to_string())
                    .unwrap_or_else(|| "start".into()),
                to.map(|t| last_day(t).to_string())
                    .unwrap_or_else(|| "end".into())
            ));
        }
        let base = base_override.map(str::to_string).unwrap_or(base);
        let files = match req.kind {
            Kind::Journal => self.journal(req, from, to, dir, &base, progress)?,
            Kind::GrantStatement => self.grant_statement(req, from, to, dir, &base, progress)?,
            Kind::AccountStatement => {
                self.account_statement(req, from, to, dir, &base, progress)?
            }
            Kind::Usage => self.usage(req, from, to, dir, &base, progress)?,
            Kind::Holds => self.holds(req, to, dir, &base)?,
            Kind::Refunds => self.refunds(req, from, to, dir, &base, progress)?,
            Kind::Accuracy => self.accuracy(req, from, to, dir, &base)?,
            Kind::Alerts => self.alerts(req, from, to, dir, &base)?,
        };
        Ok(Written {
            kind: req.kind,
            subject,
            period: req.period,
            from: from.map(fields::time_text),
            to: to.map(fields::time_text),
            base,
            files,
        })
    }

    /// Accounts a request is about (`None`: all), and the grant id when by grant.
    fn scope(&mut self, req: &Request) -> Result<(Option<Vec<i64>>, Option<i64>), ReportError> {
        match (&req.grant, &req.account) {
            (Some(g), _) => {
                let gid = self.grant_id(g)?;
                Ok((Some(self.grants.linked_accounts(gid)), Some(gid)))
            }
            (None, Some(a)) => Ok((Some(vec![self.account_id(a)?]), None)),
            _ => Ok((None, None)),
        }
    }

    fn cut_to(to: Option<DateTime<Utc>>, cut: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        match (to, cut) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn finish_simple(
        &mut self,
        out: TableOut<'_>,
        req: &Request,
        dir: &Path,
        base: &str,
        cut: Option<DateTime<Utc>>,
    ) -> Result<Vec<FileInfo>, ReportError> {
        let title = out.spec.title.clone();
        let about = out.spec.about.clone();
        let (mut files, html) = out.finish()?;
        if let Some(t) = html {
            let subject = req
                .grant
                .clone()
                .or_else(|| req.account.clone())
                .unwrap_or_default();
            let info = self.page_info(&title, &subject, &about, cut)?;
            let page = self
                .templates
                .render("table.html", html::page(&info, &[], None, &t, &[]))?;
            let name = format!("{base}.html");
            files.push(
                write::write_whole(dir, &name, page.as_bytes())
                    .map_err(io_err(&dir.join(&name)))?,
            );
        }
        Ok(files)
    }

    fn open(
        &self,
        dir: &Path,
        base: &str,
        table: Table,
        req: &Request,
    ) -> Result<TableOut<'a>, ReportError> {
        TableOut::open(
            dir,
            base,
            table,
            self.templates,
            &req.formats,
            self.opts,
            req.kind,
        )
    }

    fn journal(
        &mut self,
        req: &Request,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        dir: &Path,
        base: &str,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Vec<FileInfo>, ReportError> {
        let (accounts, grant) = self.scope(req)?;
        // A grant's budget period is the entries attributed to it, its end-of-period expiry
        // (effective at the period's end) included: by attribution, not by date.
        let (from, to) = if grant.is_some() && req.period.is_some() {
            (None, None)
        } else {
            (from, to)
        };
        let cut = Self::cut_to(to, req.as_of);
        let mut out = self.open(dir, base, Table::Journal, req)?;
        let filter = JournalFilter {
            accounts,
            from,
            to: cut,
            ..Default::default()
        };
        let (grants, names) = (&self.grants, &self.names);
        let period = req.period;
        data::journal_pages(self.conn, &filter, |_, page| -> Result<(), ReportError> {
            for r in page {
                let t = crate::domain::time::from_naive(r.effective_at);
                let a = grants.attribute(r.account_id, r.id, t);
                if let Some(g) = grant {
                    if a.is_none_or(|a| a.grant_id != g || period.is_some_and(|p| p != a.period)) {
                        continue;
                    }
                }
                let (direct, indirect) = if r.charged_delta_micros != 0 {
                    let (d, i) = grants.split(a, r.charged_delta_micros, t);
                    (Cell::Money(d), Cell::Money(i))
                } else {
                    (Cell::Empty, Cell::Empty)
                };
                let cells = [
                    Cell::Date(date_of(t)),
                    Cell::Time(t),
                    Cell::Time(crate::domain::time::from_naive(r.recorded_at)),
                    Cell::Int(r.id),
                    Cell::text(names.get(&r.account_id).cloned().unwrap_or_default()),
                    Cell::Int(r.seq),
                    Cell::text(r.kind.clone()),
                    a.and_then(|a| grants.grants.get(&a.grant_id))
                        .map_or(Cell::Empty, |g| Cell::text(g.grant.number.clone())),
                    a.map_or(Cell::Empty, |a| Cell::Int(a.period)),
                    Cell::opt_text(r.job_id.as_deref()),
                    Cell::opt_text(r.user_name.as_deref()),
                    Cell::opt_text(r.partition.as_deref()),
                    Cell::opt_text(r.cluster.as_deref()),
                    r.hold_id.map_or(Cell::Empty, |h| {
                        Cell::Text(crate::db::models::hold_reference(h))
                    }),
                    Cell::Money(r.amount_micros),
                    Cell::Money(r.credited_delta_micros),
                    Cell::Money(r.charged_delta_micros),
                    Cell::Money(r.held_delta_micros),
                    Cell::Money(r.credited_delta_micros - r.charged_delta_micros),
                    direct,
                    indirect,
                    Cell::text(r.flags.clone()),
                    Cell::text(r.reason.clone()),
                    Cell::text(r.actor.clone()),
                    Cell::text(r.idempotency_key.clone()),
                    Cell::text(r.prev_hash.clone()),
                    Cell::text(r.hash.clone()),
                ];
                out.row(&cells, false)?;
            }
            progress(page.len() as u64);
            Ok(())
        })?;
        self.finish_simple(out, req, dir, base, cut)
    }

    fn statement_cells(subject: &str, r: &StatementRow, total: bool) -> Vec<Cell> {
        vec![
            Cell::text(subject),
            Cell::text(r.label.clone()),
            r.start.map_or(Cell::Empty, |t| Cell::Date(date_of(t))),
            r.end.map_or(Cell::Empty, |t| Cell::Date(last_day(t))),
            if total {
                Cell::Empty
            } else {
                Cell::text(r.status.clone())
            },
            Cell::opt_money(r.budget),
            Cell::Money(r.opening),
            Cell::Money(r.transfers),
            Cell::Money(r.credits),
            Cell::Money(r.direct),
            Cell::Money(r.indirect),
            Cell::Money(r.direct + r.indirect),
            Cell::Money(r.refunds),
            Cell::Money(r.adjustments),
            Cell::Money(r.expired),
            Cell::Money(r.closing),
            Cell::Money(r.holds),
            Cell::Money(r.remaining()),
        ]
    }

    /// A grant's statement, computed (for callers and tests that check the figures).
    pub fn grant_figures(
        &mut self,
        number: &str,
        cut: Option<DateTime<Utc>>,
        select: &dyn Fn(&crate::db::grants::PeriodRow) -> bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Statement, ReportError> {
        let gid = self.grant_id(number)?;
        Ok(data::grant_statement(
            self.conn,
            &self.grants,
            gid,
            cut,
            select,
            progress,
        )?)
    }

    fn grant_statement(
        &mut self,
        req: &Request,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        dir: &Path,
        base: &str,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Vec<FileInfo>, ReportError> {
        let Some(number) = req.grant.clone() else {
            return Err(invalid(
                "--grant",
                "a grant statement needs --grant GRANT (see `asbb grant list`)",
            ));
        };
        let period = req.period;
        let select = move |p: &crate::db::grants::PeriodRow| match period {
            Some(n) => p.number == n,
            None => from.is_none_or(|a| p.end() > a) && to.is_none_or(|b| p.start() < b),
        };
        let st = self.grant_figures(&number, req.as_of, &select, progress)?;
        let gid = self.grant_id(&number)?;
        let mut out = self.open(dir, base, Table::GrantStatement, req)?;
        for r in &st.rows {
            out.row(&Self::statement_cells(&number, r, false), false)?;
        }
        out.row(&Self::statement_cells(&number, &st.total, true), true)?;
        let title = out.spec.title.clone();
        let about = out.spec.about.clone();
        let (mut files, html) = out.finish()?;
        if let Some(t) = html {
            let g = self.grants.grants[&gid].clone();
            let info = self.page_info(&title, &number, &about, req.as_of)?;
            let gr = &g.grant;
            let mut details = vec![
                ("Agency", gr.agency.clone()),
                ("Program", gr.program.clone()),
                ("Principal investigator", gr.pi.clone()),
                ("Co-investigators", gr.co_pis.join("; ")),
                ("Institution", gr.institution.clone()),
                ("Department", gr.department.clone()),
                ("Federal award id (ALN)", gr.federal_award_id.clone()),
                ("Project code", gr.project_code.clone()),
                ("Cost center", gr.cost_center.clone()),
                (
                    "Award (direct + indirect)",
                    format!("${}", gr.amount.to_cents_string()),
                ),
                (
                    "Award period",
                    format!("{} to {}", date_of(gr.start), last_day(gr.end)),
                ),
                (
                    "Budget periods",
                    format!("{} of {} months", g.periods.len(), gr.period_months),
                ),
                (
                    "Indirect (F&A) rate",
                    format!(
                        "{}%",
                        (gr.indirect_rate * rust_decimal::Decimal::ONE_HUNDRED).normalize()
                    ),
                ),
                ("Carry-over", gr.carry_over.to_string()),
                ("Status", gr.status.clone()),
                (
                    "Linked accounts",
                    g.links
                        .iter()
                        .map(|l| {
                            format!(
                                "{} ({}% from {}{})",
                                l.account,
                                l.share.normalize(),
                                date_of(l.linked_at),
                                l.unlinked_at
                                    .map(|u| format!(" to {}", date_of(u)))
                                    .unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
            ];
            details.retain(|(_, v)| !v.is_empty());
            let details: Vec<Detail> = details
                .into_iter()
                .map(|(l, v)| Detail {
                    label: l.into(),
                    value: v,
                })
                .collect();
            let chart = self.grant_chart(&g, &st, req.as_of)?;
            let page = self.templates.render(
                "summary.html",
                html::page(&info, &details, Some(chart), &t, &[]),
            )?;
            let name = format!("{base}.html");
            files.push(
                write::write_whole(dir, &name, page.as_bytes())
                    .map_err(io_err(&dir.join(&name)))?,
            );
        }
        Ok(files)
    }

    fn grant_chart(
        &mut self,
        g: &data::GrantInfo,
        st: &Statement,
        cut: Option<DateTime<Utc>>,
    ) -> Result<String, ReportError> {
        let start = date_of(g.grant.start);
        let end = date_of(g.grant.end);
        let budget = g.grant.amount.micros();
        let mut expected: Vec<(NaiveDate, i64)> = vec![(start, budget)];
        for p in &g.periods {
            expected.push((date_of(p.end()), budget - data::grant_expected(g, p.end())));
        }
        let mut left = budget;
        let mut actual = Vec::with_capacity(st.daily_spend.len());
        for (d, spent) in &st.daily_spend {
            left -= spent;
            actual.push((*d + Duration::days(1), left));
        }
        let m = self.mark(cut)?;
        let through = match cut {
            Some(c) => date_of(c),
            None => m
                .last_effective
                .map(|t| date_of(t) + Duration::days(1))
                .unwrap_or(start),
        }
        .min(end);
        Ok(chart::svg(&chart::BurnDown {
            start,
            end,
            budget,
            expected,
            actual,
            through,
        }))
    }

    fn account_statement(
        &mut self,
        req: &Request,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        dir: &Path,
        base: &str,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Vec<FileInfo>, ReportError> {
        let Some(name) = req.account.clone() else {
            return Err(invalid(
                "--account",
                "an account statement needs --account ACCOUNT",
            ));
        };
        let id = self.account_id(&name)?;
        let acct = crate::db::queries::account(self.conn, &name)?;
        let extent = data::account_extent(self.conn, id, req.as_of)?;
        let a = from.unwrap_or_else(|| {
            extent.map_or(acct.starts_at, |(first, _)| first.min(acct.starts_at))
        });
        let b = match Self::cut_to(to, req.as_of) {
            Some(b) => b,
            None => extent.map_or(next_month(a), |(_, last)| next_month(last)),
        };
        let windows = months(a, b.max(a + Duration::microseconds(1)));
        let st = data::account_statement(self.conn, &self.grants, id, &windows, progress)?;
        let mut out = self.open(dir, base, Table::AccountStatement, req)?;
        for r in &st.rows {
            out.row(&Self::statement_cells(&name, r, false), false)?;
        }
        out.row(&Self::statement_cells(&name, &st.total, true), true)?;
        // The allocations beside it.
        let mut alloc = self.open(
            dir,
            &format!("{base}-allocations"),
            Table::AccountAllocations,
            req,
        )?;
        for s in crate::db::allocations::list(self.conn, Some(&name))? {
            for p in crate::db::allocations::periods(self.conn, s.id)? {
                let inside = p.effective_at >= windows.first().map_or(a, |w| w.1)
                    && windows.last().is_none_or(|w| p.effective_at < w.2);
                if !inside {
                    continue;
                }
                alloc.row(
                    &[
                        Cell::text(name.clone()),
                        Cell::Int(s.id),
                        Cell::text(s.terms.frequency.as_str()),
                        Cell::Int(p.period),
                        Cell::Date(date_of(p.due_at)),
                        Cell::text(p.outcome.clone()),
                        Cell::Money(p.amount.micros()),
                        Cell::Date(date_of(p.effective_at)),
                        p.entry_id.map_or(Cell::Empty, Cell::Int),
                        Cell::text(p.reason.clone()),
                    ],
                    false,
                )?;
            }
        }
        let title = out.spec.title.clone();
        let about = out.spec.about.clone();
        let (mut files, html) = out.finish()?;
        let (alloc_files, alloc_html) = alloc.finish()?;
        files.extend(alloc_files);
        if let Some(t) = html {
            let info = self.page_info(&title, &name, &about, req.as_of)?;
            let details = vec![
                Detail {
                    label: "Name".into(),
                    value: acct.display_name.clone(),
                },
                Detail {
                    label: "Active".into(),
                    value: format!("{} to {}", date_of(acct.starts_at), last_day(acct.ends_at)),
                },
                Detail {
                    label: "Status".into(),
                    value: acct.status.as_str().to_string(),
                },
            ];
            let page = self.templates.render(
                "summary.html",
                html::page(
                    &info,
                    &details,
                    None,
                    &t,
                    &alloc_html.into_iter().collect::<Vec<_>>(),
                ),
            )?;
            let fname = format!("{base}.html");
            files.push(
                write::write_whole(dir, &fname, page.as_bytes())
                    .map_err(io_err(&dir.join(&fname)))?,
            );
        }
        Ok(files)
    }

    fn usage(
        &mut self,
        req: &Request,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        dir: &Path,
        base: &str,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Vec<FileInfo>, ReportError> {
        #[derive(Default)]
        struct Agg {
            jobs: HashSet<String>,
            charges: i64,
            charged: i64,
            refunded: i64,
        }
        let (accounts, grant) = self.scope(req)?;
        let cut = Self::cut_to(to, req.as_of);
        let filter = JournalFilter {
            accounts,
            from,
            to: cut,
            charged_only: true,
            ..Default::default()
        };
        let mut groups: BTreeMap<(String, String, String, String), Agg> = BTreeMap::new();
        let mut all_jobs: HashSet<String> = HashSet::new();
        let (grants, names) = (&self.grants, &self.names);
        data::journal_pages(
            self.conn,
            &filter,
            |conn, page| -> Result<(), ReportError> {
                let charge_ids: Vec<i64> = page
                    .iter()
                    .filter(|r| r.kind == "charge")
                    .map(|r| r.id)
                    .collect();
                let refund_ids: Vec<i64> = page
                    .iter()
                    .filter(|r| r.kind == "refund")
                    .map(|r| r.id)
                    .collect();
                let charges = data::cost_records_of(conn, &charge_ids, false)?;
                let refunds = data::cost_records_of(conn, &refund_ids, true)?;
                for r in page {
                    if let Some(g) = grant {
                        let t = crate::domain::time::from_naive(r.effective_at);
                        if grants
                            .attribute(r.account_id, r.id, t)
                            .is_none_or(|a| a.grant_id != g)
                        {
                            continue;
                        }
                    }
                    let rec = if r.kind == "charge" {
                        charges.get(&r.id)
                    } else {
                        refunds.get(&r.id)
                    };
                    // A run's refund is grouped with its charge: user and partition of the run.
                    let key = (
                        names.get(&r.account_id).cloned().unwrap_or_default(),
                        r.user_name
                            .clone()
                            .or_else(|| rec.and_then(|c| c.user.clone()))
                            .unwrap_or_default(),
                        r.partition
                            .clone()
                            .or_else(|| rec.and_then(|c| c.partition.clone()))
                            .unwrap_or_default(),
                        rec.map(|c| c.instance_types.clone()).unwrap_or_default(),
                    );
                    let g = groups.entry(key).or_default();
                    if r.kind == "charge" {
                        g.charges += 1;
                        g.charged += r.charged_delta_micros;
                        if let Some(j) = &r.job_id {
                            g.jobs.insert(j.clone());
                            all_jobs.insert(format!("{}\u{0}{j}", r.account_id));
                        }
                    } else {
                        g.refunded -= r.charged_delta_micros;
                    }
                }
                progress(page.len() as u64);
                Ok(())
            },
        )?;
        let mut out = self.open(dir, base, Table::Usage, req)?;
        let (mut charges, mut charged, mut refunded) = (0i64, 0i64, 0i64);
        for ((a, u, p, i), g) in &groups {
            out.row(
                &[
                    Cell::text(a.clone()),
                    Cell::text(u.clone()),
                    Cell::text(p.clone()),
                    Cell::text(i.clone()),
                    Cell::Int(g.jobs.len() as i64),
                    Cell::Int(g.charges),
                    Cell::Money(g.charged),
                    Cell::Money(g.refunded),
                    Cell::Money(g.charged - g.refunded),
                ],
                false,
            )?;
            charges += g.charges;
            charged += g.charged;
            refunded += g.refunded;
        }
        out.row(
            &[
                Cell::text("Total"),
                Cell::Empty,
                Cell::Empty,
                Cell::Empty,
                Cell::Int(all_jobs.len() as i64),
                Cell::Int(charges),
                Cell::Money(charged),
                Cell::Money(refunded),
                Cell::Money(charged - refunded),
            ],
            true,
        )?;
        self.finish_simple(out, req, dir, base, cut)
    }

    fn holds(
        &mut self,
        req: &Request,
        to: Option<DateTime<Utc>>,
        dir: &Path,
        base: &str,
    ) -> Result<Vec<FileInfo>, ReportError> {
        let (accounts, _) = self.scope(req)?;
        let cut = Self::cut_to(to, req.as_of);
        let holds = data::outstanding_holds(self.conn, accounts.as_deref(), cut)?;
        let mut out = self.open(dir, base, Table::Holds, req)?;
        let (mut amount, mut outstanding, mut estimate, mut charged) = (0i64, 0i64, 0i64, 0i64);
        for h in &holds {
            let x = &h.hold;
            out.row(
                &[
                    Cell::Text(x.reference()),
                    Cell::text(x.account.clone()),
                    Cell::opt_text(x.job_id.as_deref()),
                    Cell::opt_text(x.user_name.as_deref()),
                    Cell::opt_text(x.partition.as_deref()),
                    Cell::opt_text(x.cluster.as_deref()),
                    Cell::Time(x.created_at),
                    x.expires_at.map_or(Cell::Empty, Cell::Time),
                    Cell::Money(x.estimate.micros()),
                    Cell::Money(x.amount.micros()),
                    Cell::Money(x.amount.micros() - h.outstanding.min(x.amount.micros())),
                    Cell::Money(h.outstanding),
                    x.tasks.map_or(Cell::Empty, Cell::Int),
                    if x.tasks.is_some() {
                        Cell::Int(x.tasks_charged)
                    } else {
                        Cell::Empty
                    },
                ],
                false,
            )?;
            amount += x.amount.micros();
            outstanding += h.outstanding;
            estimate += x.estimate.micros();
            charged += x.amount.micros() - h.outstanding.min(x.amount.micros());
        }
        out.row(
            &[
                Cell::text("Total"),
                Cell::Empty,
                Cell::Empty,
                Cell::Empty,
                Cell::Empty,
                Cell::Empty,
                Cell::Empty,
                Cell::Empty,
                Cell::Money(estimate),
                Cell::Money(amount),
                Cell::Money(charged),
                Cell::Money(outstanding),
                Cell::Empty,
                Cell::Empty,
            ],
            true,
        )?;
        self.finish_simple(out, req, dir, base, cut)
    }

    fn refunds(
        &mut self,
        req: &Request,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        dir: &Path,
        base: &str,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Vec<FileInfo>, ReportError> {
        let (accounts, grant) = self.scope(req)?;
        let cut = Self::cut_to(to, req.as_of);
        let filter = JournalFilter {
            accounts,
            from,
            to: cut,
            kind: Some("refund"),
            ..Default::default()
        };
        let mut out = self.open(dir, base, Table::Refunds, req)?;
        let mut total = 0i64;
        let (grants, names) = (&self.grants, &self.names);
        data::journal_pages(
            self.conn,
            &filter,
            |conn, page| -> Result<(), ReportError> {
                let ids: Vec<i64> = page.iter().map(|r| r.id).collect();
                let recs = data::cost_records_of(conn, &ids, true)?;
                for r in page {
                    let t = crate::domain::time::from_naive(r.effective_at);
                    let a = grants.attribute(r.account_id, r.id, t);
                    if grant.is_some_and(|g| a.is_none_or(|a| a.grant_id != g)) {
                        continue;
                    }
                    let rec = recs.get(&r.id);
                    out.row(
                        &[
                            Cell::Date(date_of(t)),
                            Cell::Time(t),
                            Cell::Int(r.id),
                            Cell::text(names.get(&r.account_id).cloned().unwrap_or_default()),
                            a.and_then(|a| grants.grants.get(&a.grant_id))
                                .map_or(Cell::Empty, |g| Cell::text(g.grant.number.clone())),
                            a.map_or(Cell::Empty, |a| Cell::Int(a.period)),
                            Cell::opt_text(r.job_id.as_deref()),
                            Cell::opt_text(r.user_name.as_deref()),
                            Cell::opt_text(r.partition.as_deref()),
                            Cell::Money(r.amount_micros),
                            Cell::text(if r.idempotency_key.starts_with("refund:run:") {
                                "policy"
                            } else {
                                "manual"
                            }),
                            Cell::opt_text(rec.and_then(|c| c.job_state.as_deref())),
                            rec.and_then(|c| c.charge_entry)
                                .map_or(Cell::Empty, Cell::Int),
                            Cell::text(r.reason.clone()),
                            Cell::text(r.actor.clone()),
                        ],
                        false,
                    )?;
                    total += r.amount_micros;
                }
                progress(page.len() as u64);
                Ok(())
            },
        )?;
        let mut cells = vec![Cell::Empty; fields::REFUNDS.len()];
        cells[3] = Cell::text("Total");
        cells[9] = Cell::Money(total);
        out.row(&cells, true)?;
        self.finish_simple(out, req, dir, base, cut)
    }

    fn accuracy(
        &mut self,
        req: &Request,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        dir: &Path,
        base: &str,
    ) -> Result<Vec<FileInfo>, ReportError> {
        let (accounts, _) = self.scope(req)?;
        let keep: Option<HashSet<String>> = accounts.map(|ids| {
            ids.iter()
                .filter_map(|i| self.names.get(i).cloned())
                .collect()
        });
        let cut = Self::cut_to(to, req.as_of);
        let rows = crate::db::reconcile::accuracy(
            self.conn,
            from.unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
            cut.unwrap_or_else(data::far_future),
        )?;
        let mut out = self.open(dir, base, Table::Accuracy, req)?;
        let money = |s: &str| UsdMicros::parse(s).map_or(Cell::Empty, |m| Cell::Money(m.micros()));
        for r in &rows {
            let total = r.account == "*";
            // A total over some accounts cannot be recomputed from per-group means: with a
            // filter, only the groups are shown.
            if (total && keep.is_some())
                || (!total && keep.as_ref().is_some_and(|k| !k.contains(&r.account)))
            {
                continue;
            }
            out.row(
                &[
                    Cell::text(if total {
                        "Total".to_string()
                    } else {
                        r.account.clone()
                    }),
                    Cell::text(if total {
                        String::new()
                    } else {
                        r.partition.clone()
                    }),
                    Cell::Int(r.runs as i64),
                    Cell::Int(r.within_10pct as i64),
                    Cell::text(r.within_10pct_share.clone()),
                    money(&r.mean_estimate),
                    money(&r.mean_actual),
                    money(&r.mean_abs_error),
                    Cell::text(r.bias.clone()),
                ],
                total,
            )?;
        }
        self.finish_simple(out, req, dir, base, cut)
    }

    fn alerts(
        &mut self,
        req: &Request,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        dir: &Path,
        base: &str,
    ) -> Result<Vec<FileInfo>, ReportError> {
        let cut = Self::cut_to(to, req.as_of);
        let mut rows = crate::db::alerts::list(
            self.conn,
            &crate::db::alerts::AlertFilter {
                grant: req.grant.clone(),
                account: req.account.clone(),
                severity: None,
                all: true,
                limit: None,
            },
        )?;
        rows.reverse();
        let mut out = self.open(dir, base, Table::Alerts, req)?;
        let t = crate::domain::time::from_naive;
        for a in rows {
            let raised = a.raised();
            if from.is_some_and(|f| raised < f) || cut.is_some_and(|c| raised >= c) {
                continue;
            }
            // As of the cut: a resolution or acknowledgement after it has not happened yet.
            let before =
                |x: Option<chrono::NaiveDateTime>| x.map(t).filter(|x| cut.is_none_or(|c| *x < c));
            let resolved = before(a.resolved_at);
            let acked = before(a.acknowledged_at);
            let state = match (resolved, acked) {
                (Some(_), _) => "resolved",
                (None, Some(_)) => "acknowledged",
                _ => "open",
            };
            out.row(
                &[
                    Cell::Int(a.id),
                    Cell::text(a.kind.clone()),
                    Cell::text(a.severity.clone()),
                    Cell::text(state),
                    Cell::text(a.subject_kind.clone()),
                    Cell::text(a.subject.clone()),
                    Cell::text(a.message.clone()),
                    Cell::text(a.value.clone()),
                    Cell::text(a.threshold.clone()),
                    Cell::Time(raised),
                    Cell::Time(t(a.last_seen_at)),
                    resolved.map_or(Cell::Empty, Cell::Time),
                    acked.map_or(Cell::Empty, Cell::Time),
                    if acked.is_some() {
                        Cell::opt_text(a.acknowledged_by.as_deref())
                    } else {
                        Cell::Empty
                    },
                    if acked.is_some() {
                        Cell::text(a.ack_notes.clone())
                    } else {
                        Cell::Empty
                    },
                ],
                false,
            )?;
        }
        self.finish_simple(out, req, dir, base, cut)
    }
}

/// "entry 1234 (effective 2026-03-20T…)" or "no entries".
pub fn ledger_text(m: &LedgerMark) -> String {
    match m.last_effective {
        Some(t) => format!(
            "{} entries, the last effective {}",
            m.entries,
            fields::time_text(t)
        ),
        None => "no entries".to_string(),
    }
}

/// The manifest of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// Format marker.
    pub format: &'static str,
    /// asbb's version.
    pub asbb_version: &'static str,
    /// The wall clock when the run finished: the only clock reading in a report set.
    pub generated_at: String,
    /// The cut, if one was given.
    pub as_of: Option<String>,
    /// The ledger's extent at the cut.
    pub ledger: ManifestLedger,
    /// The rounding rule.
    pub rounding: &'static str,
    /// How totals are computed.
    pub totals: &'static str,
    /// Formula neutralisation.
    pub neutralising: &'static str,
    /// Where each template came from.
    pub templates: BTreeMap<String, String>,
    /// The reports written.
    pub reports: Vec<Written>,
    /// Every file, with its checksum (the manifest itself excluded).
    pub files: Vec<FileInfo>,
}

/// The ledger in a manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestLedger {
    /// Entries.
    pub entries: i64,
    /// Highest entry id.
    pub last_entry_id: i64,
    /// Latest effective time.
    pub last_effective_at: Option<String>,
}

impl Manifest {
    /// A manifest of `reports` (plus `extra` files such as the README).
    pub fn new(
        generated_at: DateTime<Utc>,
        as_of: Option<DateTime<Utc>>,
        mark: &LedgerMark,
        templates: &Templates,
        reports: Vec<Written>,
        extra: Vec<FileInfo>,
    ) -> Manifest {
        let mut files: Vec<FileInfo> = reports.iter().flat_map(|r| r.files.clone()).collect();
        files.extend(extra);
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Manifest {
            format: "asbb-report-manifest/1",
            asbb_version: env!("CARGO_PKG_VERSION"),
            generated_at: fields::time_text(generated_at),
            as_of: as_of.map(fields::time_text),
            ledger: ManifestLedger {
                entries: mark.entries,
                last_entry_id: mark.last_id,
                last_effective_at: mark.last_effective.map(fields::time_text),
            },
            rounding: ROUNDING_RULE,
            totals: TOTALS_RULE,
            neutralising: NEUTRALISING_RULE,
            templates: templates.sources.clone(),
            reports,
            files,
        }
    }

    /// Writes it atomically as `dir/name`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<FileInfo, ReportError> {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        write::write_whole(dir, name, text.as_bytes()).map_err(io_err(&dir.join(name)))
    }
}

/// Writes `README.txt` (what every file and column is) into `dir`.
pub fn write_readme(dir: &Path, templates: &Templates) -> Result<FileInfo, ReportError> {
    let files: Vec<html::ReadmeFile> = Table::ALL
        .iter()
        .map(|t| {
            let spec = templates.spec(*t);
            html::ReadmeFile {
                name: t.file_pattern().to_string(),
                title: spec.title.clone(),
                about: spec.about.clone(),
                columns: spec
                    .columns
                    .iter()
                    .map(|c| html::ReadmeColumn {
                        header: c.header.clone(),
                        about: {
                            let f = &t.fields()[c.field];
                            if c.render == fields::Render::Micros {
                                format!("{} — exact, in micro-dollars", f.about)
                            } else {
                                f.about.to_string()
                            }
                        },
                    })
                    .collect(),
            }
        })
        .collect();
    let text = templates.render("readme.txt", html::readme(&files))?;
    write::write_whole(dir, "README.txt", text.as_bytes()).map_err(io_err(&dir.join("README.txt")))
}

/// Creates the output directory if needed.
pub fn ensure_dir(dir: &Path) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))
}
