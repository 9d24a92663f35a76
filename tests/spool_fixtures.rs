//! The fixture corpus in `tests/fixtures/spool/`: every good file is accepted by its reader
//! and validates against its JSON Schema in `spool-schemas/`; every bad file ends where
//! `bad/expected.json` says, with exactly the reasons it lists — on both backends. Bad inputs
//! that cannot be committed as files (symlinks, directories, oversized, unreadable, pipes) are
//! made at run time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use asbb::spool::files::{classify, Name, NameFacts};
use asbb::spool::intake::{Intake, IntakeOptions, SpoolDirs};
use asbb::spool::{cost, jobend, plan, Kind, Limits, Parsed};
use chrono::Utc;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kinds() -> [(Kind, &'static str, &'static str); 3] {
    [
        (Kind::Cost, "asbx", "cost-export.v1.schema.json"),
        (Kind::JobEnd, "jobs", "job-end.v1.schema.json"),
        (Kind::Plan, "plans", "plan.v1.schema.json"),
    ]
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Reads a file the way the intake does: name first, then content.
fn read(kind: Kind, path: &Path) -> Result<(), String> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(path).map_err(|e| format!("not UTF-8: {e}"))?;
    let lim = Limits::default();
    let facts = match classify(kind, &name) {
        Name::Expected(f) => f,
        other => return Err(format!("name not expected: {other:?}")),
    };
    let codes = |r: Vec<asbb::spool::Reason>| {
        r.iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    };
    match facts {
        NameFacts::Cost(job) => match cost::read(Some(&job), &text, &lim) {
            Parsed::Record(_) => Ok(()),
            Parsed::NotReady(r) | Parsed::Rejected(r) => Err(codes(r)),
        },
        NameFacts::JobEnd { cluster, job } => match jobend::read(Some((&cluster, &job)), &text) {
            Parsed::Record(_) => Ok(()),
            Parsed::NotReady(r) | Parsed::Rejected(r) => Err(codes(r)),
        },
        NameFacts::Plan(id) => match plan::read(&id, &text, &lim) {
            Parsed::Record(_) => Ok(()),
            Parsed::NotReady(r) | Parsed::Rejected(r) => Err(codes(r)),
        },
    }
}

fn schema(file: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("spool-schemas").join(file)).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&v).unwrap_or_else(|e| panic!("{file} is not a valid schema: {e}"))
}

/// The schemas spell keys in lower case; asbb (like the Go readers it replaces) folds the case
/// of keys before it reads them, so the fixtures are compared the same way.
fn lower_keys(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), lower_keys(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(lower_keys).collect()),
        other => other,
    }
}

#[test]
fn every_good_fixture_is_read_and_validates_against_its_schema() {
    let mut seen = 0;
    for (kind, dir, schema_file) in kinds() {
        let validator = schema(schema_file);
        let files = files_in(&root().join("tests/fixtures/spool/good").join(dir));
        assert!(files.len() >= 4, "too few good {dir} fixtures");
        for f in files {
            if let Err(e) = read(kind, &f) {
                panic!("{} is refused by the reader: {e}", f.display());
            }
            let v =
                lower_keys(serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap());
            let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
            assert!(
                errors.is_empty(),
                "{} fails {schema_file}: {errors:?}",
                f.display()
            );
            seen += 1;
        }
    }
    assert!(seen >= 20, "only {seen} good fixtures");
}

#[test]
fn the_schemas_refuse_what_they_can_express() {
    // JSON Schema cannot compare a file name with its body, nor see duplicated keys; the
    // rest of the bad corpus that parses as JSON must fail the schema as it fails the reader.
    let expected = expected();
    let mut refused = 0;
    for (kind, dir, schema_file) in kinds() {
        let validator = schema(schema_file);
        for f in files_in(&root().join("tests/fixtures/spool/bad").join(dir)) {
            let key = format!("{dir}/{}", f.file_name().unwrap().to_string_lossy());
            let Some(exp) = expected.get(&key) else {
                continue;
            };
            if exp.outcome != "rejected" || read(kind, &f).is_ok() {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let inexpressible = [
                "job_id_mismatch",
                "cluster_mismatch",
                "duplicate_key",
                "bad_name",
                "conflicting_fields",
            ];
            if exp
                .reasons
                .iter()
                .all(|r| inexpressible.contains(&r.as_str()))
            {
                continue;
            }
            if validator.is_valid(&v) {
                eprintln!(
                    "note: {key} passes {schema_file} but the reader refuses it ({:?})",
                    exp.reasons
                );
            } else {
                refused += 1;
            }
        }
    }
    assert!(
        refused >= 10,
        "the schemas refuse only {refused} bad fixtures"
    );
}

#[derive(Debug, Clone)]
struct Expect {
    outcome: String,
    reasons: BTreeSet<String>,
    after_grace: BTreeSet<String>,
}

fn expected() -> BTreeMap<String, Expect> {
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/spool/bad/expected.json")).unwrap();
    let v: BTreeMap<String, Value> = serde_json::from_str(&text).unwrap();
    let set = |v: &Value| -> BTreeSet<String> {
        v.as_array()
            .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    v.into_iter()
        .map(|(k, e)| {
            (
                k,
                Expect {
                    outcome: e["outcome"].as_str().unwrap().to_string(),
                    reasons: set(&e["reasons"]),
                    after_grace: set(&e["after_grace"]),
                },
            )
        })
        .collect()
}

/// Copies the bad corpus into a fresh spool, byte for byte.
fn bad_spool(tmp: &Path) -> SpoolDirs {
    let mut dirs = SpoolDirs::default();
    for (kind, dir, _) in kinds() {
        let to = tmp.join(dir);
        std::fs::create_dir_all(&to).unwrap();
        for f in files_in(&root().join("tests/fixtures/spool/bad").join(dir)) {
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
        match kind {
            Kind::Cost => dirs.asbx = Some(to),
            Kind::JobEnd => dirs.jobs = Some(to),
            Kind::Plan => dirs.plans = Some(to),
        }
    }
    dirs
}

fn sidecar_codes(dir: &Path, name: &str) -> Option<BTreeSet<String>> {
    let text =
        std::fs::read_to_string(dir.join("rejected").join(format!("{name}.error.json"))).ok()?;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["file"], name);
    Some(
        v["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["code"].as_str().unwrap().to_string())
            .collect(),
    )
}

fn scan(db: &common::TestDb, dirs: &SpoolDirs, grace: Duration) -> asbb::spool::intake::ScanReport {
    let mut conn = db.conn();
    Intake::new(IntakeOptions {
        not_ready_grace: grace,
        max_file_size: 4096,
        ..Default::default()
    })
    .scan(&mut conn, dirs, Utc::now(), &|| false, &mut |_| {})
    .unwrap()
}

db_test!(
    every_bad_fixture_ends_where_it_should_with_its_reasons,
    |db| {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = bad_spool(tmp.path());
        let expected = expected();
        // Files the corpus cannot hold: made here.
        let asbx = dirs.asbx.clone().unwrap();
        std::fs::write(
            tmp.path().join("target.json"),
            r#"{"job_id":"1","account":"a","actual_cost":1}"#,
        )
        .unwrap();
        std::os::unix::fs::symlink(
            tmp.path().join("target.json"),
            asbx.join("job_61_cost.json"),
        )
        .unwrap();
        std::fs::create_dir(asbx.join("job_62_cost.json")).unwrap();
        std::fs::write(
            asbx.join("job_63_cost.json"),
            format!(
                r#"{{"job_id":"63","account":"a","actual_cost":1,"pad":"{}"}}"#,
                "x".repeat(5000)
            ),
        )
        .unwrap();
        let fifo_ok = std::process::Command::new("mkfifo")
            .arg(asbx.join("job_64_cost.json"))
            .status()
            .is_ok_and(|s| s.success());
        let unreadable = asbx.join("job_65_cost.json");
        std::fs::write(
            &unreadable,
            r#"{"job_id":"65","account":"a","actual_cost":1}"#,
        )
        .unwrap();
        std::process::Command::new("chmod")
            .arg("000")
            .arg(&unreadable)
            .status()
            .unwrap();
        // Root reads anything: then this case cannot be made here.
        let can_make_unreadable = std::fs::read(&unreadable).is_err();
        let mut runtime: Vec<(&str, &str)> = vec![
            ("job_61_cost.json", "symlink"),
            ("job_63_cost.json", "too_large"),
        ];
        if fifo_ok {
            runtime.push(("job_64_cost.json", "not_a_file"));
        }
        if can_make_unreadable {
            runtime.push(("job_65_cost.json", "unreadable"));
        } else {
            std::process::Command::new("chmod")
                .arg("644")
                .arg(&unreadable)
                .status()
                .unwrap();
            std::fs::remove_file(&unreadable).unwrap();
        }

        let first = scan(&db, &dirs, Duration::from_secs(3600));
        assert!(
            first.rejected > 0 && first.directories == vec!["job_62_cost.json".to_string()],
            "{first:?}"
        );
        let mut checked = 0;
        for (key, exp) in &expected {
            let (dir, name) = key.split_once('/').unwrap();
            let base = tmp.path().join(dir);
            match exp.outcome.as_str() {
                "rejected" => {
                    let got = sidecar_codes(&base, name)
                        .unwrap_or_else(|| panic!("{key} was not rejected"));
                    assert_eq!(got, exp.reasons, "{key}: reasons");
                    assert!(
                        base.join("rejected").join(name).exists(),
                        "{key} kept in rejected/"
                    );
                }
                "not_ready" | "ignored" => {
                    assert!(
                        base.join(name).exists(),
                        "{key} must stay in place ({})",
                        exp.outcome
                    );
                }
                other => panic!("{key}: unknown outcome {other}"),
            }
            checked += 1;
        }
        for (name, code) in &runtime {
            let got =
                sidecar_codes(&asbx, name).unwrap_or_else(|| panic!("{name} was not rejected"));
            assert_eq!(got, BTreeSet::from([code.to_string()]), "{name}");
        }
        assert!(
            asbx.join("job_62_cost.json").is_dir(),
            "a directory stays where it is"
        );
        assert!(checked >= 30, "only {checked} bad fixtures");

        // After the grace period the unfinished files are rejected too; temporary files never move.
        let second = scan(&db, &dirs, Duration::ZERO);
        assert_eq!(second.stored, 0, "{second:?}");
        for (key, exp) in &expected {
            let (dir, name) = key.split_once('/').unwrap();
            let base = tmp.path().join(dir);
            match exp.outcome.as_str() {
                "not_ready" => {
                    let got = sidecar_codes(&base, name)
                        .unwrap_or_else(|| panic!("{key} not rejected after the grace period"));
                    assert_eq!(got, exp.after_grace, "{key}: reasons after grace");
                }
                "ignored" => assert!(base.join(name).exists(), "{key} must never move"),
                _ => {}
            }
        }
        // Nothing is lost: every file is somewhere.
        let mut conn = db.conn();
        let counts = asbb::db::spool::counts(&mut conn).unwrap();
        let recorded: i64 = counts.files.iter().map(|f| f.2).sum();
        let rejected_files = kinds()
            .iter()
            .map(|(_, d, _)| {
                std::fs::read_dir(tmp.path().join(d).join("rejected"))
                    .map(|rd| {
                        rd.filter(|e| {
                            !e.as_ref()
                                .unwrap()
                                .file_name()
                                .to_string_lossy()
                                .ends_with(".error.json")
                        })
                        .count()
                    })
                    .unwrap_or(0)
            })
            .sum::<usize>();
        assert_eq!(
            recorded as usize, rejected_files,
            "every refusal is recorded once"
        );
    }
);
