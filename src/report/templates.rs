//! Report templates: the CSV column specs (`<table>.columns.toml`), the HTML pages
//! (`summary.html` for statements, `table.html` for the other reports) and the README written
//! beside every report set (`readme.txt`).
//!
//! The shipped templates live in `reports/templates/` and are compiled into the binary. A site
//! directory (`reports.templates_dir`) may hold its own version of any of these files; each one
//! found replaces the shipped one, so a grants office can rename, drop or reorder columns
//! without a rebuild. Every site file is checked when loaded — unknown file names, unknown
//! fields, duplicate headers, template syntax, and a trial render of each HTML template — and a
//! problem is reported with the file's path and what to fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::fields::{Field, Render, Ty};
use super::Table;

/// The shipped templates: (file name, text).
const SHIPPED: &[(&str, &str)] = &[
    (
        "journal.columns.toml",
        include_str!("../../reports/templates/journal.columns.toml"),
    ),
    (
        "grant-statement.columns.toml",
        include_str!("../../reports/templates/grant-statement.columns.toml"),
    ),
    (
        "account-statement.columns.toml",
        include_str!("../../reports/templates/account-statement.columns.toml"),
    ),
    (
        "account-allocations.columns.toml",
        include_str!("../../reports/templates/account-allocations.columns.toml"),
    ),
    (
        "usage.columns.toml",
        include_str!("../../reports/templates/usage.columns.toml"),
    ),
    (
        "holds.columns.toml",
        include_str!("../../reports/templates/holds.columns.toml"),
    ),
    (
        "refunds.columns.toml",
        include_str!("../../reports/templates/refunds.columns.toml"),
    ),
    (
        "accuracy.columns.toml",
        include_str!("../../reports/templates/accuracy.columns.toml"),
    ),
    (
        "alerts.columns.toml",
        include_str!("../../reports/templates/alerts.columns.toml"),
    ),
    (
        "summary.html",
        include_str!("../../reports/templates/summary.html"),
    ),
    (
        "table.html",
        include_str!("../../reports/templates/table.html"),
    ),
    (
        "readme.txt",
        include_str!("../../reports/templates/readme.txt"),
    ),
];

/// The most columns a spec may have.
const COLUMNS_MAX: usize = 200;

/// The largest template file read from a site directory.
const FILE_BYTES_MAX: u64 = 1 << 20;

/// A template that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("report template {path}: {message}")]
pub struct TemplateError {
    /// The file (a site file's path, or `reports/templates/NAME` for a shipped one).
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// One column of a CSV (and HTML) table.
#[derive(Debug, Clone)]
pub struct Column {
    /// The header.
    pub header: String,
    /// Index into the table's fields.
    pub field: usize,
    /// How the field is written.
    pub render: Render,
    /// The field name as written in the spec.
    pub name: String,
}

/// The columns of one table.
#[derive(Debug, Clone)]
pub struct ColumnSpec {
    /// A title (HTML heading, README).
    pub title: String,
    /// A sentence or two saying what the file is.
    pub about: String,
    /// The columns, in order.
    pub columns: Vec<Column>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    title: String,
    #[serde(default)]
    about: String,
    #[serde(default)]
    column: Vec<ColumnFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnFile {
    header: String,
    field: String,
}

/// Loaded, checked templates.
pub struct Templates {
    specs: BTreeMap<&'static str, ColumnSpec>,
    env: minijinja::Environment<'static>,
    /// Where each file came from (for the manifest): `shipped` or the site path.
    pub sources: BTreeMap<String, String>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("sources", &self.sources)
            .finish()
    }
}

fn parse_spec(path: &str, text: &str, fields: &[Field]) -> Result<ColumnSpec, TemplateError> {
    let err = |message: String| TemplateError {
        path: path.to_string(),
        message,
    };
    let file: SpecFile = toml::from_str(text).map_err(|e| err(e.to_string()))?;
    if file.column.is_empty() {
        return Err(err(
            "no [[column]] blocks: a table needs at least one column".into(),
        ));
    }
    if file.column.len() > COLUMNS_MAX {
        return Err(err(format!("more than {COLUMNS_MAX} columns")));
    }
    let mut columns = Vec::with_capacity(file.column.len());
    let mut seen = std::collections::HashSet::new();
    for (i, c) in file.column.iter().enumerate() {
        let n = i + 1;
        let header = c.header.trim();
        if header.is_empty() {
            return Err(err(format!(
                "column {n} (field '{}'): header is empty",
                c.field
            )));
        }
        if header.chars().any(char::is_control) {
            return Err(err(format!(
                "column {n} ('{header}'): header has a control character"
            )));
        }
        if !seen.insert(header.to_string()) {
            return Err(err(format!(
                "column {n}: header '{header}' is used twice; a spreadsheet needs distinct headers"
            )));
        }
        let name = c.field.trim();
        let found = fields
            .iter()
            .position(|f| f.name == name)
            .map(|i| (i, Render::Plain))
            .or_else(|| {
                let base = name.strip_suffix("_micros")?;
                fields
                    .iter()
                    .position(|f| f.name == base && f.ty == Ty::Money)
                    .map(|i| (i, Render::Micros))
            });
        let Some((field, render)) = found else {
            let known: Vec<String> = fields
                .iter()
                .flat_map(|f| {
                    let mut v = vec![f.name.to_string()];
                    if f.ty == Ty::Money {
                        v.push(format!("{}_micros", f.name));
                    }
                    v
                })
                .collect();
            return Err(err(format!(
                "column {n} ('{header}'): unknown field '{name}' (this table's fields: {})",
                known.join(", ")
            )));
        };
        columns.push(Column {
            header: header.to_string(),
            field,
            render,
            name: name.to_string(),
        });
    }
    Ok(ColumnSpec {
        title: file.title.trim().to_string(),
        about: file.about.trim().to_string(),
        columns,
    })
}

fn is_html(name: &str) -> bool {
    name.ends_with(".html")
}

impl Templates {
    /// The shipped templates only.
    pub fn shipped() -> Templates {
        Templates::load(None).expect("the shipped templates are valid (a unit test checks)")
    }

    /// The shipped templates, with any found in `site` in their place.
    pub fn load(site: Option<&Path>) -> Result<Templates, TemplateError> {
        let mut texts: BTreeMap<&'static str, (String, String)> = SHIPPED
            .iter()
            .map(|(n, t)| (*n, (format!("reports/templates/{n}"), (*t).to_string())))
            .collect();
        let mut sources: BTreeMap<String, String> = SHIPPED
            .iter()
            .map(|(n, _)| (n.to_string(), "shipped".to_string()))
            .collect();
        if let Some(dir) = site {
            let entries = std::fs::read_dir(dir).map_err(|e| TemplateError {
                path: dir.display().to_string(),
                message: format!("cannot read the site template directory: {e}"),
            })?;
            let mut names: Vec<PathBuf> = Vec::new();
            for e in entries {
                let e = e.map_err(|e| TemplateError {
                    path: dir.display().to_string(),
                    message: e.to_string(),
                })?;
                names.push(e.path());
            }
            names.sort();
            for path in names {
                let shown = path.display().to_string();
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if name.starts_with('.') || name.ends_with('~') {
                    continue;
                }
                let Some((known, _)) = SHIPPED.iter().find(|(n, _)| *n == name) else {
                    let list: Vec<&str> = SHIPPED.iter().map(|(n, _)| *n).collect();
                    return Err(TemplateError {
                        path: shown,
                        message: format!(
                            "not a report template; the files a site may override are: {}",
                            list.join(", ")
                        ),
                    });
                };
                let meta = std::fs::metadata(&path).map_err(|e| TemplateError {
                    path: shown.clone(),
                    message: e.to_string(),
                })?;
                if !meta.is_file() || meta.len() > FILE_BYTES_MAX {
                    return Err(TemplateError {
                        path: shown,
                        message: format!(
                            "must be a regular file of at most {FILE_BYTES_MAX} bytes"
                        ),
                    });
                }
                let text = std::fs::read_to_string(&path).map_err(|e| TemplateError {
                    path: shown.clone(),
                    message: format!("cannot read it as UTF-8 text: {e}"),
                })?;
                sources.insert(known.to_string(), shown.clone());
                texts.insert(known, (shown, text));
            }
        }
        let mut specs = BTreeMap::new();
        for table in Table::ALL {
            let file = table.spec_file();
            let (path, text) = &texts[file];
            specs.insert(file, parse_spec(path, text, table.fields())?);
        }
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|name| {
            if is_html(name) {
                minijinja::AutoEscape::Html
            } else {
                minijinja::AutoEscape::None
            }
        });
        for name in ["summary.html", "table.html", "readme.txt"] {
            let (path, text) = &texts[name];
            env.add_template_owned(name, text.clone())
                .map_err(|e| TemplateError {
                    path: path.clone(),
                    message: describe(&e),
                })?;
        }
        let t = Templates {
            specs,
            env,
            sources,
        };
        // A trial render with every variable the pages get, so a misspelt variable is found
        // now and not in the middle of the night's report run.
        for name in ["summary.html", "table.html", "readme.txt"] {
            let (path, _) = &texts[name];
            t.env
                .get_template(name)
                .and_then(|tpl| tpl.render(super::html::sample_context(name)))
                .map_err(|e| TemplateError {
                    path: path.clone(),
                    message: describe(&e),
                })?;
        }
        Ok(t)
    }

    /// The column spec of a table.
    pub fn spec(&self, table: Table) -> &ColumnSpec {
        &self.specs[table.spec_file()]
    }

    /// Renders one of the page templates.
    pub fn render(&self, name: &str, ctx: minijinja::Value) -> Result<String, TemplateError> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| TemplateError {
                path: self
                    .sources
                    .get(name)
                    .filter(|s| *s != "shipped")
                    .cloned()
                    .unwrap_or_else(|| format!("reports/templates/{name}")),
                message: describe(&e),
            })
    }
}

fn describe(e: &minijinja::Error) -> String {
    let mut s = match e.line() {
        Some(l) => format!("line {l}: {e}"),
        None => e.to_string(),
    };
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_templates_load() {
        let t = Templates::load(None).unwrap();
        assert!(!t.spec(Table::Journal).columns.is_empty());
    }

    #[test]
    fn site_problems_name_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.columns.toml");
        std::fs::write(
            &p,
            "title = \"J\"\n[[column]]\nheader = \"Amount\"\nfield = \"amout\"\n",
        )
        .unwrap();
        let e = Templates::load(Some(dir.path())).unwrap_err();
        assert_eq!(e.path, p.display().to_string());
        assert!(e.message.contains("unknown field 'amout'"), "{e}");
        assert!(e.message.contains("amount_micros"), "{e}");

        std::fs::write(
            &p,
            "title = \"J\"\n[[column]]\nheader = \"A\"\nfield = \"amount\"\n[[column]]\nheader = \"A\"\nfield = \"kind\"\n",
        )
        .unwrap();
        let e = Templates::load(Some(dir.path())).unwrap_err();
        assert!(e.message.contains("used twice"), "{e}");

        std::fs::remove_file(&p).unwrap();
        std::fs::write(dir.path().join("summary.html"), "<p>{{ report.titel }}</p>").unwrap();
        let e = Templates::load(Some(dir.path())).unwrap_err();
        assert!(e.path.ends_with("summary.html"), "{e}");

        std::fs::write(dir.path().join("summary.html"), "<p>{% if %}</p>").unwrap();
        let e = Templates::load(Some(dir.path())).unwrap_err();
        assert!(e.message.contains("line 1"), "{e}");

        std::fs::remove_file(dir.path().join("summary.html")).unwrap();
        std::fs::write(dir.path().join("jounral.columns.toml"), "").unwrap();
        let e = Templates::load(Some(dir.path())).unwrap_err();
        assert!(e.message.contains("not a report template"), "{e}");
    }

    #[test]
    fn a_site_spec_renames_and_reorders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("usage.columns.toml"),
            "title = \"Use\"\n[[column]]\nheader = \"Net USD\"\nfield = \"net\"\n[[column]]\nheader = \"Project\"\nfield = \"account\"\n[[column]]\nheader = \"Net micro-USD\"\nfield = \"net_micros\"\n",
        )
        .unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let s = t.spec(Table::Usage);
        let h: Vec<&str> = s.columns.iter().map(|c| c.header.as_str()).collect();
        assert_eq!(h, ["Net USD", "Project", "Net micro-USD"]);
        assert_eq!(s.columns[2].render, Render::Micros);
    }
}
