//! The units in `systemd/`: `systemd-analyze verify` accepts them (with the paths pointing at
//! this build), and they keep the rules the README promises: a dedicated user, hardening, a
//! timer with `Persistent=true` for every batch command.
//!
//! Where `systemd-analyze` is not installed the verify step is skipped, and says so.

use std::path::{Path, PathBuf};
use std::process::Command;

fn units() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("service" | "socket" | "timer")
            )
        })
        .collect();
    v.sort();
    v
}

fn text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn every_service_is_hardened_and_runs_as_asbb() {
    let services: Vec<_> = units()
        .into_iter()
        .filter(|p| p.extension().unwrap() == "service")
        .collect();
    assert!(services.len() >= 5, "{services:?}");
    for s in &services {
        let t = text(s);
        for want in [
            "User=asbb",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/asbb",
        ] {
            assert!(t.contains(want), "{} lacks {want}", s.display());
        }
        if t.contains("Type=simple") {
            assert!(
                t.contains("Restart="),
                "{} has no restart policy",
                s.display()
            );
        }
    }
}

#[test]
fn every_batch_command_has_a_persistent_timer() {
    let all = units();
    let names: Vec<String> = all
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    for cmd in [
        "spool-scan",
        "reconcile",
        "recover",
        "allocations",
        "burn-rate",
        "report",
        "checks-prune",
    ] {
        let timer = format!("asbb-{cmd}.timer");
        assert!(names.contains(&timer), "no {timer}");
        assert!(
            names.contains(&format!("asbb-{cmd}.service")),
            "no service for {timer}"
        );
    }
    for p in all.iter().filter(|p| p.extension().unwrap() == "timer") {
        let t = text(p);
        assert!(
            t.contains("Persistent=true"),
            "{} is not persistent",
            p.display()
        );
        let unit = t
            .lines()
            .find_map(|l| l.strip_prefix("Unit="))
            .unwrap_or_else(|| panic!("{} names no unit", p.display()));
        assert!(
            names.iter().any(|n| n == unit),
            "{} starts a missing {unit}",
            p.display()
        );
        let service = text(&p.with_file_name(unit));
        assert!(service.contains("Type=oneshot"), "{unit} is not a oneshot");
    }
}

#[test]
fn systemd_analyze_verifies_the_units() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not found: unit verification skipped");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let bin = |name: &str| match name {
        "asbb" => env!("CARGO_BIN_EXE_asbb"),
        "asbb-checkd" => env!("CARGO_BIN_EXE_asbb-checkd"),
        _ => env!("CARGO_BIN_EXE_asbb-spoold"),
    };
    let mut copies = Vec::new();
    for u in units() {
        let t = text(&u)
            .replace("/usr/local/bin/asbb-checkd", bin("asbb-checkd"))
            .replace("/usr/local/bin/asbb-spoold", bin("asbb-spoold"))
            .replace("/usr/local/bin/asbb ", &format!("{} ", bin("asbb")));
        let p = dir.path().join(u.file_name().unwrap());
        std::fs::write(&p, t).unwrap();
        copies.push(p);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&copies)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
