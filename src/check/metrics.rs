//! Counters for `GET /metrics`, in the Prometheus text format. Durations are counted in whole
//! microseconds and printed as seconds with six decimals: no floating point anywhere.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::db::checkpoint::WalStats;

/// Upper bounds of the latency histogram, microseconds.
const BUCKETS_US: [u64; 13] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000,
];

/// What the endpoint counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Checks by (outcome, reason).
    checks: Mutex<BTreeMap<(&'static str, String), u64>>,
    /// Latency histogram counts per bucket (the last is +Inf).
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    /// Sum of latencies, microseconds.
    sum_us: AtomicU64,
    /// Number of latencies observed.
    count: AtomicU64,
    /// Write transactions committed by the writer.
    pub commits: AtomicU64,
    /// Checks written in them.
    pub committed: AtomicU64,
    /// Syncs of the SQLite WAL by the syncer (each for one or more commits).
    pub syncs: AtomicU64,
    /// Requests by status code.
    requests: Mutex<BTreeMap<u16, u64>>,
    /// What the checkpointer of the SQLite WAL did, when there is one.
    pub wal: OnceLock<Arc<WalStats>>,
    /// Restarts of the SQLite WAL the writer did itself between two commits, asked by the
    /// checkpointer that never found it pausing.
    pub writer_restarts: AtomicU64,
}

fn seconds(us: u64) -> String {
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

impl Metrics {
    /// Counts one check answered with `outcome` (`allowed`, `denied`, `rejected`, `error`).
    pub fn check(&self, outcome: &'static str, reason: &str, took: Duration) {
        if let Ok(mut m) = self.checks.lock() {
            *m.entry((outcome, reason.to_string())).or_default() += 1;
        }
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one answered request.
    pub fn request(&self, code: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry(code).or_default() += 1;
        }
    }

    /// The text exposition. `holds` is (open holds, USD they still hold), when the database
    /// answered.
    pub fn render(&self, holds: Option<(i64, String)>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP asbb_checks_total Budget checks answered, by outcome (allowed, denied, rejected, error) and reason code.\n# TYPE asbb_checks_total counter"
        );
        if let Ok(m) = self.checks.lock() {
            for ((outcome, reason), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "asbb_checks_total{{outcome=\"{outcome}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP asbb_check_duration_seconds Time from a check request read to its answer.\n# TYPE asbb_check_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, b) in BUCKETS_US.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "asbb_check_duration_seconds_bucket{{le=\"{}\"}} {cumulative}",
                seconds(*b)
            );
        }
        cumulative += self.buckets[BUCKETS_US.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "asbb_check_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "asbb_check_duration_seconds_sum {}\nasbb_check_duration_seconds_count {}",
            seconds(self.sum_us.load(Ordering::Relaxed)),
            self.count.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP asbb_check_commits_total Write transactions of the check writer (group commits).\n# TYPE asbb_check_commits_total counter\nasbb_check_commits_total {}",
            self.commits.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP asbb_check_committed_total Checks written by those transactions.\n# TYPE asbb_check_committed_total counter\nasbb_check_committed_total {}",
            self.committed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP asbb_check_syncs_total Syncs of the SQLite WAL by the syncer thread, each making one or more of the writer's commits durable (0 where each commit syncs itself).\n# TYPE asbb_check_syncs_total counter\nasbb_check_syncs_total {}",
            self.syncs.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP asbb_http_requests_total HTTP requests answered, by status code.\n# TYPE asbb_http_requests_total counter"
        );
        if let Ok(m) = self.requests.lock() {
            for (code, n) in m.iter() {
                let _ = writeln!(out, "asbb_http_requests_total{{code=\"{code}\"}} {n}");
            }
        }
        if let Some(w) = self.wal.get() {
            let _ = writeln!(
                out,
                "# HELP asbb_check_wal_checkpoints_total Checkpoints of the SQLite WAL run beside the writer.\n# TYPE asbb_check_wal_checkpoints_total counter\nasbb_check_wal_checkpoints_total {}\n# HELP asbb_check_wal_restarts_total Of those, checkpoints that made the WAL start over.\n# TYPE asbb_check_wal_restarts_total counter\nasbb_check_wal_restarts_total {}\n# HELP asbb_check_wal_frames Frames in the WAL at the last checkpoint.\n# TYPE asbb_check_wal_frames gauge\nasbb_check_wal_frames {}\n# HELP asbb_check_wal_writer_restarts_total Restarts of the WAL the writer did itself between two commits, because the checkpointer never found it pausing (each holds the next commit up).\n# TYPE asbb_check_wal_writer_restarts_total counter\nasbb_check_wal_writer_restarts_total {}",
                w.checkpoints.load(Ordering::Relaxed),
                w.restarts.load(Ordering::Relaxed),
                w.frames.load(Ordering::Relaxed),
                self.writer_restarts.load(Ordering::Relaxed)
            );
        }
        match holds {
            Some((n, usd)) => {
                let _ = writeln!(
                    out,
                    "# HELP asbb_holds_outstanding Open holds in the ledger.\n# TYPE asbb_holds_outstanding gauge\nasbb_holds_outstanding {n}\n# HELP asbb_holds_outstanding_usd USD still held by open holds.\n# TYPE asbb_holds_outstanding_usd gauge\nasbb_holds_outstanding_usd {usd}"
                );
            }
            None => {
                let _ = writeln!(out, "# asbb_holds_outstanding: the database did not answer");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_counts_and_buckets() {
        let m = Metrics::default();
        m.check("allowed", "ok", Duration::from_micros(700));
        m.check("denied", "insufficient_funds", Duration::from_millis(3));
        m.check("allowed", "ok", Duration::from_secs(9));
        let t = m.render(Some((2, "12.50".into())));
        assert!(
            t.contains("asbb_checks_total{outcome=\"allowed\",reason=\"ok\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("asbb_check_duration_seconds_bucket{le=\"0.001000\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("asbb_check_duration_seconds_bucket{le=\"0.005000\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("asbb_check_duration_seconds_bucket{le=\"+Inf\"} 3"),
            "{t}"
        );
        assert!(
            t.contains("asbb_check_duration_seconds_sum 9.003700"),
            "{t}"
        );
        assert!(t.contains("asbb_holds_outstanding 2"), "{t}");
        assert!(t.contains("asbb_holds_outstanding_usd 12.50"), "{t}");
        assert!(
            !t.contains("asbb_check_wal"),
            "no checkpointer, no WAL lines: {t}"
        );
        let w = Arc::new(WalStats::default());
        w.checkpoints.fetch_add(3, Ordering::Relaxed);
        w.frames.store(120, Ordering::Relaxed);
        m.wal.set(w).unwrap();
        m.writer_restarts.fetch_add(2, Ordering::Relaxed);
        let t = m.render(None);
        assert!(t.contains("asbb_check_wal_writer_restarts_total 2"), "{t}");
        assert!(t.contains("asbb_check_wal_checkpoints_total 3"), "{t}");
        assert!(t.contains("asbb_check_wal_restarts_total 0"), "{t}");
        assert!(t.contains("asbb_check_wal_frames 120"), "{t}");
    }
}
