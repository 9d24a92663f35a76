//! `slurm/jobcomp.sh`, the job-end hook slurmctld runs, outside SLURM: bash runs it with the
//! environment `jobcomp/script` gives it and a stand-in `scontrol`, and the record it leaves in
//! the jobs spool must be what the intake reads (its name and its content) and what the schema
//! allows. The end-to-end test in `slurm/e2e/run` runs it inside a real slurmctld.

use std::path::PathBuf;
use std::process::Command;

use asbb::spool::files::{classify, Name, NameFacts};
use asbb::spool::{jobend, Kind, Parsed};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    /// A jobs spool, a settings file (with `cluster` if given) and an `scontrol` that prints
    /// `show_job` for `show job` and a ClusterName of `cfg-cluster` for `show config`.
    fn new(cluster: Option<&str>, show_job: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("jobs")).unwrap();
        std::fs::write(d.join("show-job.txt"), show_job).unwrap();
        let scontrol = d.join("scontrol");
        std::fs::write(
            &scontrol,
            format!(
                "#!/bin/sh\ncase \"$1 $2\" in\n  'show job') while IFS= read -r l; do echo \"$l\"; done < '{}' ;;\n  'show config') \
                 printf 'Configuration data as of now\\nClusterName             = cfg-cluster\\n' ;;\n\
                 esac\n",
                d.join("show-job.txt").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&scontrol, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut conf = format!(
            "# asbb_submit.conf\nmethod = http\njobs_dir = {}\nscontrol = {}\njobcomp_log = {}\n",
            d.join("jobs").display(),
            scontrol.display(),
            d.join("jobcomp.log").display()
        );
        if let Some(c) = cluster {
            conf.push_str(&format!("cluster = {c}\n"));
        }
        std::fs::write(d.join("asbb_submit.conf"), conf).unwrap();
        Site { dir }
    }

    /// Runs the hook with exactly `env` (plus PATH and the settings file); it must exit 0.
    fn run(&self, env: &[(&str, &str)]) {
        let mut c = Command::new("bash");
        c.arg(root().join("slurm/jobcomp.sh"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ASBB_SUBMIT_CONF", self.dir.path().join("asbb_submit.conf"));
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "jobcomp.sh exited {:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The files in the jobs spool (hidden temporary ones included).
    fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("jobs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    /// The one record in the spool: its file name, its JSON, and the intake's reading of it.
    fn record(&self) -> (String, Value, jobend::JobEndRecord) {
        let files = self.files();
        assert_eq!(files.len(), 1, "expected one file in the spool: {files:?}");
        let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&files[0]).unwrap();
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{name} is not JSON ({e}): {text}"));
        schema_check(&json);
        let (cluster, job) = match classify(Kind::JobEnd, &name) {
            Name::Expected(NameFacts::JobEnd { cluster, job }) => (cluster, job),
            other => panic!("{name}: the intake does not take this name: {other:?}"),
        };
        match jobend::read(Some((&cluster, &job)), &text) {
            Parsed::Record(r) => (name, json, r),
            Parsed::NotReady(r) | Parsed::Rejected(r) => {
                panic!("{name}: the intake refuses it: {r:?}\n{text}")
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("jobcomp.log")).unwrap_or_default()
    }
}

fn schema_check(v: &Value) {
    let text = std::fs::read_to_string(root().join("spool-schemas/job-end.v1.schema.json"))
        .expect("the job-end schema");
    let schema: Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "the record breaks the schema: {errors:?}\n{v}"
    );
}

/// What slurmctld 22.05's jobcomp/script sets for a job cancelled while pending.
fn cancelled_pending() -> Vec<(&'static str, &'static str)> {
    vec![
        ("JOBID", "1234"),
        ("ACCOUNT", "Proj-OK"),
        ("PARTITION", "aws"),
        ("JOBSTATE", "CANCELLED"),
        ("SUBMIT", "1764600000"),
        ("START", "1764600100"),
        ("END", "1764600100"),
        ("NODECNT", "0"),
        ("PROCS", "1"),
        ("USERNAME", "alice"),
        ("UID", "1000"),
        ("JOBNAME", "wrap"),
        ("QOS", "normal"),
        ("ARRAYJOBID", "0"),
        ("ARRAYTASKID", "4294967294"),
        ("EXITCODE", "0:0"),
        ("DERIVED_EC", "0:0"),
        ("LIMIT", "5"),
    ]
}

/// `base` with the variables of `over` set (or replaced).
fn with<'a>(base: Vec<(&'a str, &'a str)>, over: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v: Vec<_> = base
        .into_iter()
        .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
        .collect();
    v.extend_from_slice(over);
    v
}

#[test]
fn a_job_cancelled_while_pending_leaves_a_record_with_its_hold() {
    // The AdminComment holds more than the hold, with spaces; the hold is the asbb:hold word.
    let site = Site::new(
        Some("c1"),
        "JobId=1234 JobName=wrap UserId=alice(1000) GroupId=alice(1000) \
         AdminComment=site note asbb:hold-42 Priority=1 Account=proj-ok\n",
    );
    site.run(&cancelled_pending());
    let (name, json, r) = site.record();
    assert_eq!(name, "jobend.c1.1234.1764600100.json");
    assert_eq!(r.cluster, "c1");
    assert_eq!(r.job.to_string(), "1234");
    assert_eq!(r.raw_job_id, Some(1234));
    assert_eq!(r.account, "proj-ok", "the account is folded to lower case");
    assert_eq!(r.partition.as_deref(), Some("aws"));
    assert_eq!(r.user.as_deref(), Some("alice"));
    assert_eq!(r.state, "CANCELLED");
    assert_eq!(r.hold_id.as_deref(), Some("hold-42"));
    assert!(
        r.never_started(),
        "START = END and no nodes: it never started"
    );
    assert_eq!(r.started_at, None);
    assert_eq!(r.ended_at.timestamp(), 1_764_600_100);
    assert_eq!(r.submitted_at.timestamp(), 1_764_600_000);
    assert_eq!(r.time_limit.as_deref(), Some("5"));
    assert_eq!((r.nodes, r.cpus), (Some(0), Some(1)));
    // The job owner's uid comes from the environment slurmctld gave it (bash resets UID).
    assert_eq!(json["uid"], 1000);
    assert_eq!(json["array_job_id"], Value::Null);
    assert_eq!(json["exit_code"], "0:0");
    let written = json["written_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(written).is_ok() && written.ends_with('Z'),
        "written_at {written}"
    );
    assert_eq!(site.log(), "", "nothing to log");
}

#[test]
fn a_job_that_ran_keeps_its_start_and_odd_names_are_escaped() {
    let site = Site::new(Some("c1"), "JobId=77 AdminComment=asbb:hold-9 Account=p\n");
    site.run(&with(
        cancelled_pending(),
        &[
            ("JOBID", "77"),
            ("JOBSTATE", "COMPLETED"),
            ("START", "1764600200"),
            ("END", "1764600500"),
            ("NODECNT", "1"),
            ("PROCS", "4"),
            ("JOBNAME", "say \"hi\"\\now\ttab\u{1}"),
        ],
    ));
    let (_, json, r) = site.record();
    assert_eq!(r.state, "COMPLETED");
    assert_eq!(r.started_at.map(|t| t.timestamp()), Some(1_764_600_200));
    assert!(!r.never_started());
    assert_eq!(
        json["job_name"], "say \"hi\"\\nowtab",
        "quotes and backslashes kept, control characters dropped"
    );
    assert_eq!(json["cpus"], 4);
    // NO_VAL and INFINITE mean "not set"; a number JSON cannot spell is not passed on.
    for (procs, want) in [
        ("4294967294", Value::Null),
        ("4294967295", Value::Null),
        ("007", Value::Null),
        ("0", Value::from(0)),
    ] {
        let site = Site::new(Some("c1"), "JobId=77\n");
        site.run(&with(cancelled_pending(), &[("PROCS", procs)]));
        assert_eq!(site.record().1["cpus"], want, "PROCS={procs}");
    }
}

#[test]
fn an_array_task_is_named_by_its_array_job_and_task() {
    let site = Site::new(
        Some("c1"),
        "JobId=51 ArrayJobId=50 ArrayTaskId=3 AdminComment=asbb:hold-7\n",
    );
    site.run(&with(
        cancelled_pending(),
        &[("JOBID", "51"), ("ARRAYJOBID", "50"), ("ARRAYTASKID", "3")],
    ));
    let (name, json, r) = site.record();
    assert_eq!(name, "jobend.c1.50_3.1764600100.json");
    assert_eq!(r.job.to_string(), "50_3");
    assert_eq!(r.raw_job_id, Some(51));
    assert_eq!(
        (json["array_job_id"].clone(), json["array_task_id"].clone()),
        (Value::from(50), Value::from(3))
    );
    assert_eq!(r.hold_id.as_deref(), Some("hold-7"));
}

#[test]
fn a_heterogeneous_component_is_named_by_its_job_and_offset_and_keeps_its_own_hold() {
    // scontrol prints the component asked for first; a line after it is another component's.
    let site = Site::new(
        Some("c1"),
        "JobId=71 HetJobId=70 HetJobOffset=1 AdminComment=asbb:hold-12 Account=p\n\
         JobId=70 HetJobId=70 HetJobOffset=0 AdminComment=asbb:hold-11 Account=p\n",
    );
    site.run(&with(cancelled_pending(), &[("JOBID", "71")]));
    let (name, _, r) = site.record();
    assert_eq!(name, "jobend.c1.70+1.1764600100.json");
    assert_eq!(r.job.to_string(), "70+1");
    assert_eq!(r.hold_id.as_deref(), Some("hold-12"));
}

#[test]
fn the_cluster_comes_from_slurm_when_neither_slurmctld_nor_the_settings_name_it() {
    let site = Site::new(None, "JobId=1234 Account=p\n");
    site.run(&cancelled_pending());
    let (name, _, r) = site.record();
    assert_eq!(name, "jobend.cfg-cluster.1234.1764600100.json");
    assert_eq!(r.hold_id, None, "no AdminComment: no hold");
    // CLUSTER, when slurmctld sets it (with accounting storage), wins over both.
    let site = Site::new(Some("c1"), "JobId=1234 Account=p\n");
    site.run(&with(cancelled_pending(), &[("CLUSTER", "acct-cluster")]));
    assert_eq!(site.record().0, "jobend.acct-cluster.1234.1764600100.json");
}

#[test]
fn what_cannot_be_recorded_is_logged_and_nothing_is_left_behind() {
    for (over, why) in [
        (("ACCOUNT", "bad account!"), "is not a SLURM account name"),
        (("JOBID", "12x"), "no JOBID"),
        (("SUBMIT", ""), "no SUBMIT time"),
    ] {
        let site = Site::new(Some("c1"), "JobId=1234\n");
        site.run(&with(cancelled_pending(), &[over]));
        assert_eq!(site.files(), Vec::<PathBuf>::new(), "{over:?}: no file");
        let log = site.log();
        assert!(
            log.contains("asbb jobcomp: job ") && log.contains(why),
            "{over:?}: log {log:?}"
        );
    }
    let site = Site::new(Some("bad/name"), "JobId=1234\n");
    site.run(&cancelled_pending());
    assert!(site.files().is_empty());
    assert!(
        site.log().contains("is not usable in a file name"),
        "{}",
        site.log()
    );
}

#[test]
fn the_hook_runs_no_more_programs_than_it_must() {
    // slurmctld runs the hook for one job at a time: its speed bounds how fast job ends are
    // recorded. Every program it starts is counted by wrapping PATH: only scontrol (the hold),
    // sync and mv (the atomic write) may run.
    let site = Site::new(Some("c1"), "JobId=1234 AdminComment=asbb:hold-42\n");
    let bin = site.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let calls = site.dir.path().join("calls");
    let path = std::env::var("PATH").unwrap_or_default();
    for prog in [
        "tr", "sed", "grep", "head", "cut", "date", "cat", "awk", "sync", "mv", "printf", "env",
    ] {
        let Some(real) = std::env::split_paths(&path)
            .map(|d| d.join(prog))
            .find(|p| p.is_file())
        else {
            continue;
        };
        let w = bin.join(prog);
        std::fs::write(
            &w,
            format!(
                "#!/bin/sh\necho {prog} >> '{}'\nexec '{}' \"$@\"\n",
                calls.display(),
                real.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let wrapped = format!("{}:{path}", bin.display());
    site.run(&with(cancelled_pending(), &[("PATH", wrapped.as_str())]));
    assert_eq!(site.record().2.hold_id.as_deref(), Some("hold-42"));
    let ran = std::fs::read_to_string(&calls).unwrap_or_default();
    assert_eq!(
        ran.lines().collect::<Vec<_>>(),
        ["sync", "mv"],
        "programs started besides scontrol"
    );
}

#[test]
fn a_record_is_never_seen_half_written() {
    // The file appears under its final name only whole: no temporary file is left, and the
    // temporary name is one the intake skips.
    let site = Site::new(Some("c1"), "JobId=1234\n");
    site.run(&cancelled_pending());
    let files = site.files();
    assert_eq!(files.len(), 1);
    assert!(!files[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with('.'));
    assert!(!matches!(
        classify(Kind::JobEnd, ".jobend.c1.1234.1764600100.json.tmp"),
        Name::Expected(_)
    ));
}
