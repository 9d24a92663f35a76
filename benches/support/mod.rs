//! Helpers the benchmarks share: number overrides from the environment, the process's own
//! memory and CPU figures, and running a measured step in a child process of its own.
//!
//! Included by each benchmark with `#[path = "support/mod.rs"] mod support;`; not every
//! benchmark uses every helper.
#![allow(dead_code)]

use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A number from the environment variable `name` (`_` allowed as a digit separator), or
/// `default` when it is unset or blank.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .replace('_', "")
            .parse()
            .map_err(|_| anyhow!("{name}={v} is not a number")),
        _ => Ok(default),
    }
}

/// A `kB` field of `/proc/self/status` (`VmHWM`, `VmRSS`).
pub fn proc_status_kb(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/self/status"))
}

/// CPU time of this (single-threaded) process so far, in microseconds: the scheduler's
/// `/proc/self/schedstat` (nanoseconds), else user + system ticks of `/proc/self/stat`.
pub fn cpu_us() -> u64 {
    if let Some(ns) = std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
    {
        return ns / 1000;
    }
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime, in ticks of 10 ms.
    (tick(11) + tick(12)) * 10_000
}

/// Runs this benchmark's executable again with `env` set to `spec` as JSON, and reads the
/// child's `RESULT <json>` line. `what` names the step in errors ("run", "step 'x'").
pub fn run_child<S: Serialize, O: DeserializeOwned>(env: &str, spec: &S, what: &str) -> Result<O> {
    let exe = std::env::current_exe().context("find this benchmark's executable")?;
    let out = Command::new(&exe)
        .env(env, serde_json::to_string(spec)?)
        .output()
        .with_context(|| format!("run {}", exe.display()))?;
    if !out.status.success() {
        bail!(
            "the measured {what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| anyhow!("no RESULT line from the measured {what}: {text}"))?;
    Ok(serde_json::from_str(line)?)
}
