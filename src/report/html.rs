//! The variables the HTML pages and the README get.

use minijinja::Value;
use serde::Serialize;

/// Heading figures of a page.
#[derive(Debug, Clone, Serialize)]
pub struct PageInfo {
    /// Report title.
    pub title: String,
    /// Grant number, account, or empty.
    pub subject: String,
    /// What the report is.
    pub about: String,
    /// The cut, or the latest entry's time.
    pub as_of: String,
    /// The last entry included.
    pub ledger: String,
    /// The rounding rule.
    pub rounding: String,
    /// How totals are computed.
    pub totals: String,
}

/// A column heading.
#[derive(Debug, Clone, Serialize)]
pub struct Heading {
    /// The header.
    pub header: String,
    /// Right-aligned (money, numbers).
    pub numeric: bool,
}

/// A table row as text.
#[derive(Debug, Clone, Serialize)]
pub struct HtmlRow {
    /// Cells.
    pub cells: Vec<String>,
    /// A total row.
    pub total: bool,
}

/// A further table on a page.
#[derive(Debug, Clone, Serialize)]
pub struct HtmlTable {
    /// Title.
    pub title: String,
    /// What it is.
    pub about: String,
    /// Headings.
    pub columns: Vec<Heading>,
    /// Rows.
    pub rows: Vec<HtmlRow>,
}

/// A label and its value (grant terms).
#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    /// Label.
    pub label: String,
    /// Value.
    pub value: String,
}

/// The variables of `summary.html` and `table.html`.
pub fn page(
    info: &PageInfo,
    details: &[Detail],
    chart: Option<String>,
    main: &HtmlTable,
    extra: &[HtmlTable],
) -> Value {
    minijinja::context! {
        report => Value::from_serialize(info),
        details => Value::from_serialize(details),
        chart => chart.map(Value::from_safe_string).unwrap_or(Value::from(())),
        columns => Value::from_serialize(&main.columns),
        rows => Value::from_serialize(&main.rows),
        extra => Value::from_serialize(extra),
    }
}

/// A column of the README.
#[derive(Debug, Clone, Serialize)]
pub struct ReadmeColumn {
    /// Header.
    pub header: String,
    /// Meaning.
    pub about: String,
}

/// A file kind of the README.
#[derive(Debug, Clone, Serialize)]
pub struct ReadmeFile {
    /// The file names.
    pub name: String,
    /// Title.
    pub title: String,
    /// What it is.
    pub about: String,
    /// Its columns.
    pub columns: Vec<ReadmeColumn>,
}

/// The variables of `readme.txt`.
pub fn readme(files: &[ReadmeFile]) -> Value {
    minijinja::context! {
        rounding => super::ROUNDING_RULE,
        totals => super::TOTALS_RULE,
        neutralising => super::NEUTRALISING_RULE,
        files => Value::from_serialize(files),
    }
}

/// Every variable a template can use, with sample values: templates are rendered with it
/// when loaded, so a site template that names a variable that does not exist is refused then.
pub fn sample_context(name: &str) -> Value {
    if name == "readme.txt" {
        return readme(&[ReadmeFile {
            name: "journal*.csv".into(),
            title: "Journal".into(),
            about: "sample".into(),
            columns: vec![ReadmeColumn {
                header: "Date".into(),
                about: "sample".into(),
            }],
        }]);
    }
    let info = PageInfo {
        title: "Grant statement".into(),
        subject: "NSF-0001".into(),
        about: "sample".into(),
        as_of: "2026-01-01T00:00:00Z".into(),
        ledger: "entry 1".into(),
        rounding: super::ROUNDING_RULE.into(),
        totals: super::TOTALS_RULE.into(),
    };
    let table = HtmlTable {
        title: "Allocations".into(),
        about: "sample".into(),
        columns: vec![Heading {
            header: "Amount".into(),
            numeric: true,
        }],
        rows: vec![HtmlRow {
            cells: vec!["1.00".into()],
            total: true,
        }],
    };
    page(
        &info,
        &[Detail {
            label: "Agency".into(),
            value: "sample".into(),
        }],
        Some("<svg></svg>".into()),
        &table,
        std::slice::from_ref(&table),
    )
}
