//! Parsing of dates and spans given by admins. The clock is never read here: callers pass
//! "now" in.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// Why a date or span was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Not `YYYY-MM-DD` nor RFC 3339.
    #[error("'{0}' is not a date (use YYYY-MM-DD or RFC 3339 like 2025-01-31T12:00:00Z)")]
    BadDate(String),
    /// Not a span like `30d`.
    #[error("'{0}' is not a time span (use a number and a unit: 90m, 12h, 30d, 8w)")]
    BadSpan(String),
}

/// A point in time as a user wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateInput {
    /// A calendar day, `YYYY-MM-DD`, taken in UTC.
    Day(NaiveDate),
    /// An exact instant, RFC 3339.
    Instant(DateTime<Utc>),
}

impl DateInput {
    /// Parses `YYYY-MM-DD` or RFC 3339.
    pub fn parse(text: &str) -> Result<DateInput, TimeError> {
        let t = text.trim();
        if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
            return Ok(DateInput::Day(d));
        }
        DateTime::parse_from_rfc3339(t)
            .map(|d| DateInput::Instant(truncate_micros(d.with_timezone(&Utc))))
            .map_err(|_| TimeError::BadDate(t.to_string()))
    }

    /// The instant at which this date starts: midnight UTC for a day.
    pub fn start(self) -> DateTime<Utc> {
        match self {
            DateInput::Day(d) => {
                Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists"))
            }
            DateInput::Instant(i) => i,
        }
    }

    /// The exclusive end of this date when used as an inclusive end: the midnight after a day
    /// (so `--end 2025-12-31` covers all of Dec 31), or the instant itself.
    pub fn end_exclusive(self) -> DateTime<Utc> {
        match self {
            DateInput::Day(d) => {
                let next = d.succ_opt().unwrap_or(d);
                Utc.from_utc_datetime(&next.and_hms_opt(0, 0, 0).expect("midnight exists"))
            }
            DateInput::Instant(i) => i,
        }
    }
}

/// Parses a span such as `90m`, `12h`, `30d`, `8w`.
pub fn parse_span(text: &str) -> Result<Duration, TimeError> {
    let t = text.trim();
    let bad = || TimeError::BadSpan(t.to_string());
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    let n: i64 = num.parse().map_err(|_| bad())?;
    if n <= 0 || n > 100_000 {
        return Err(bad());
    }
    match unit {
        "s" => Ok(Duration::seconds(n)),
        "m" | "min" => Ok(Duration::minutes(n)),
        "h" => Ok(Duration::hours(n)),
        "d" => Ok(Duration::days(n)),
        "w" => Ok(Duration::weeks(n)),
        _ => Err(bad()),
    }
}

/// Truncates to whole microseconds, the precision both databases store.
pub fn truncate_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// The naive UTC form stored in the database.
pub fn to_naive(t: DateTime<Utc>) -> NaiveDateTime {
    truncate_micros(t).naive_utc()
}

/// Back from the stored naive UTC form.
pub fn from_naive(t: NaiveDateTime) -> DateTime<Utc> {
    Utc.from_utc_datetime(&t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_both_spellings() {
        let d = DateInput::parse("2025-12-31").unwrap();
        assert_eq!(d.start().to_rfc3339(), "2025-12-31T00:00:00+00:00");
        assert_eq!(d.end_exclusive().to_rfc3339(), "2026-01-01T00:00:00+00:00");
        let i = DateInput::parse("2025-09-15T10:04:05-07:00").unwrap();
        assert_eq!(i.start().to_rfc3339(), "2025-09-15T17:04:05+00:00");
        assert_eq!(i.end_exclusive(), i.start());
        for bad in ["2025-13-01", "31/12/2025", "", "2025-02-30", "yesterday"] {
            assert!(DateInput::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spans() {
        assert_eq!(parse_span("30d").unwrap(), Duration::days(30));
        assert_eq!(parse_span("90m").unwrap(), Duration::minutes(90));
        assert_eq!(parse_span("2w").unwrap(), Duration::weeks(2));
        for bad in ["", "d", "30", "-3d", "0d", "3x", "1.5d"] {
            assert!(parse_span(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn truncation_to_micros() {
        let t = DateTime::parse_from_rfc3339("2025-01-01T00:00:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(truncate_micros(t).timestamp_subsec_nanos(), 123_456_000);
    }
}
