//! Field readers shared by the three formats. Each reads one field in every spelling the
//! producers use and records every problem it finds in a [`Check`], so that a file is refused
//! with all its reasons, not just the first.

use chrono::{DateTime, TimeZone, Utc};

use super::json::{Fields, J};
use super::{Code, Limits, Reason};
use crate::domain::names::JobId;
use crate::domain::time::truncate_micros;
use crate::domain::UsdMicros;

/// Collects the reasons found while reading one file.
#[derive(Debug, Default)]
pub struct Check {
    /// Everything wrong so far.
    pub reasons: Vec<Reason>,
}

/// The Go zero time, which producers write for "unset".
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl Check {
    fn add(&mut self, code: Code, field: &str, message: impl Into<String>) {
        self.reasons.push(Reason::field(code, field, message));
    }

    /// Finds a field under its canonical name or an alias. `null` counts as absent. When two
    /// spellings carry different values the file is ambiguous and refused.
    pub fn lookup<'a>(&mut self, f: &Fields<'a>, names: &[&str]) -> Option<(String, &'a J)> {
        let mut found: Option<(String, &'a J)> = None;
        for name in names {
            let Some(v) = f.get(name) else { continue };
            if *v == J::Null {
                continue;
            }
            match &found {
                None => found = Some((name.to_string(), v)),
                Some((first, fv)) => {
                    if !same_value(fv, v) {
                        self.add(
                            Code::ConflictingFields,
                            name,
                            format!("{name} = {v} disagrees with {first} = {fv}; send only one"),
                        );
                    }
                }
            }
        }
        found
    }

    /// Records a missing required field.
    pub fn missing(&mut self, f: &Fields<'_>, names: &[&str]) {
        let present_null = names.iter().any(|n| f.get(n) == Some(&J::Null));
        let spelled = names.join(" or ");
        let msg = if present_null {
            format!("{spelled} is null; it is required")
        } else {
            format!("{spelled} is required")
        };
        self.add(Code::MissingField, names[0], msg);
    }

    /// A required string field.
    pub fn req_str(&mut self, f: &Fields<'_>, names: &[&str]) -> Option<String> {
        match self.lookup(f, names) {
            None => {
                self.missing(f, names);
                None
            }
            Some((name, v)) => self.as_str(&name, v),
        }
    }

    /// An optional string field.
    pub fn opt_str(&mut self, f: &Fields<'_>, names: &[&str]) -> Option<String> {
        let (name, v) = self.lookup(f, names)?;
        self.as_str(&name, v)
    }

    fn as_str(&mut self, name: &str, v: &J) -> Option<String> {
        match v {
            J::Str(s) => Some(s.clone()),
            other => {
                self.add(
                    Code::WrongType,
                    name,
                    format!("expected a string, found {}", other.type_name()),
                );
                None
            }
        }
    }

    /// An optional non-negative integer.
    pub fn opt_uint(&mut self, f: &Fields<'_>, names: &[&str]) -> Option<u64> {
        let (name, v) = self.lookup(f, names)?;
        match v {
            J::Num(n) => match n.parse::<u64>() {
                Ok(x) => Some(x),
                Err(_) => {
                    self.add(
                        Code::WrongType,
                        &name,
                        format!("expected a non-negative whole number, found {n}"),
                    );
                    None
                }
            },
            other => {
                self.add(
                    Code::WrongType,
                    &name,
                    format!("expected a whole number, found {}", other.type_name()),
                );
                None
            }
        }
    }

    /// An optional exit code: a whole number or SLURM's `"N:S"` (code and signal).
    pub fn opt_exit_code(&mut self, f: &Fields<'_>, key: &str) -> Option<String> {
        let (name, v) = self.lookup(f, &[key])?;
        match v {
            J::Num(n) if n.parse::<i64>().is_ok() => Some(n.clone()),
            J::Str(s) if is_exit_code(s) => Some(s.clone()),
            other => {
                self.add(
                    Code::WrongType,
                    &name,
                    format!("expected a whole number or \"N:S\", found {other}"),
                );
                None
            }
        }
    }

    /// An optional boolean.
    pub fn opt_bool(&mut self, f: &Fields<'_>, names: &[&str]) -> Option<bool> {
        let (name, v) = self.lookup(f, names)?;
        match v {
            J::Bool(b) => Some(*b),
            other => {
                self.add(
                    Code::WrongType,
                    &name,
                    format!("expected true or false, found {}", other.type_name()),
                );
                None
            }
        }
    }

    /// An optional array of strings (`null` = empty).
    pub fn opt_str_array(&mut self, f: &Fields<'_>, names: &[&str]) -> Vec<String> {
        let Some((name, v)) = self.lookup(f, names) else {
            return Vec::new();
        };
        match v {
            J::Arr(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        J::Str(s) => out.push(s.clone()),
                        other => {
                            self.add(
                                Code::WrongType,
                                &name,
                                format!(
                                    "expected strings in the list, found {}",
                                    other.type_name()
                                ),
                            );
                            return Vec::new();
                        }
                    }
                }
                out
            }
            other => {
                self.add(
                    Code::WrongType,
                    &name,
                    format!("expected a list of strings, found {}", other.type_name()),
                );
                Vec::new()
            }
        }
    }

    /// An optional object (`null` = absent); duplicated keys inside it are refused.
    pub fn opt_object<'a>(&mut self, f: &Fields<'a>, names: &[&str]) -> Option<Fields<'a>> {
        let (name, v) = self.lookup(f, names)?;
        match v {
            J::Obj(pairs) => {
                let inner = Fields::new(pairs);
                for d in inner.duplicates() {
                    self.add(
                        Code::DuplicateKey,
                        &format!("{name}.{d}"),
                        "the key occurs more than once (keys are compared case-insensitively)",
                    );
                }
                Some(inner)
            }
            other => {
                self.add(
                    Code::WrongType,
                    &name,
                    format!("expected an object, found {}", other.type_name()),
                );
                None
            }
        }
    }

    /// A required amount of money.
    pub fn req_money(&mut self, f: &Fields<'_>, names: &[&str], lim: &Limits) -> Option<UsdMicros> {
        match self.lookup(f, names) {
            None => {
                self.missing(f, names);
                None
            }
            Some((name, v)) => self.money(&name, v, lim),
        }
    }

    /// An optional amount of money.
    pub fn opt_money(&mut self, f: &Fields<'_>, names: &[&str], lim: &Limits) -> Option<UsdMicros> {
        let (name, v) = self.lookup(f, names)?;
        self.money(&name, v, lim)
    }

    /// Reads money from a JSON number or a decimal string, exactly.
    pub fn money(&mut self, name: &str, v: &J, lim: &Limits) -> Option<UsdMicros> {
        let parsed = match v {
            J::Num(n) => UsdMicros::parse_json_number(n).map_err(|e| match e {
                // The JSON parser already checked the spelling: a number that still does not
                // convert is beyond what a decimal holds, far too large or too small.
                crate::domain::money::MoneyError::NotANumber(_) => {
                    let exp_negative = n
                        .split(['e', 'E'])
                        .nth(1)
                        .is_some_and(|x| x.starts_with('-'));
                    if exp_negative {
                        (
                            n.clone(),
                            crate::domain::money::MoneyError::TooPrecise(n.clone()),
                        )
                    } else {
                        (
                            n.clone(),
                            crate::domain::money::MoneyError::OutOfRange(n.clone()),
                        )
                    }
                }
                e => (n.clone(), e),
            }),
            J::Str(s) if is_plain_decimal(s) => UsdMicros::parse(s).map_err(|e| (s.clone(), e)),
            J::Str(s) => {
                self.add(
                    Code::BadAmount,
                    name,
                    format!("'{s}' is not a decimal amount (write a number like 118.50)"),
                );
                return None;
            }
            other => {
                self.add(
                    Code::BadAmount,
                    name,
                    format!(
                        "expected a number or a decimal string, found {}",
                        other.type_name()
                    ),
                );
                return None;
            }
        };
        use crate::domain::money::MoneyError;
        match parsed {
            Ok(m) if m.is_negative() => {
                self.add(Code::NegativeAmount, name, format!("${m} is negative"));
                None
            }
            Ok(m) if m > lim.max_cost => {
                self.add(
                    Code::AmountTooLarge,
                    name,
                    format!(
                        "${m} is above the limit of ${} (spool.max_cost)",
                        lim.max_cost
                    ),
                );
                None
            }
            Ok(m) => Some(m),
            Err((t, MoneyError::TooPrecise(_))) => {
                self.add(
                    Code::TooPrecise,
                    name,
                    format!(
                        "{t} has more than 6 decimals; write costs rounded to the micro-dollar"
                    ),
                );
                None
            }
            Err((t, MoneyError::OutOfRange(_))) => {
                let code = if t.starts_with('-') {
                    Code::NegativeAmount
                } else {
                    Code::AmountTooLarge
                };
                self.add(code, name, format!("{t} is out of range"));
                None
            }
            Err((t, e)) => {
                self.add(Code::BadAmount, name, format!("{t}: {e}"));
                None
            }
        }
    }

    /// A required job id.
    pub fn req_job(&mut self, f: &Fields<'_>, names: &[&str]) -> Option<JobId> {
        match self.lookup(f, names) {
            None => {
                self.missing(f, names);
                None
            }
            Some((name, v)) => self.job(&name, v),
        }
    }

    /// Reads a job id from a string or an integer.
    pub fn job(&mut self, name: &str, v: &J) -> Option<JobId> {
        let text = match v {
            J::Str(s) => s.clone(),
            J::Num(n) if n.bytes().all(|b| b.is_ascii_digit()) => n.clone(),
            J::Num(n) => {
                self.add(
                    Code::BadJobId,
                    name,
                    format!("{n} is not a SLURM job id (1234, 1234_5 or 1234+1)"),
                );
                return None;
            }
            other => {
                self.add(
                    Code::BadJobId,
                    name,
                    format!("expected a job id, found {}", other.type_name()),
                );
                return None;
            }
        };
        match parse_job_id(&text) {
            Ok(j) => Some(j),
            Err(code) => {
                let msg = if code == Code::StepId {
                    format!("'{text}' is a job step, not a job; report the job's id")
                } else {
                    format!("'{text}' is not a SLURM job id (1234, 1234_5 or 1234+1)")
                };
                self.add(code, name, msg);
                None
            }
        }
    }

    /// An optional timestamp (RFC 3339 or Unix seconds; the Go zero time and 0 are absent).
    pub fn opt_time(&mut self, f: &Fields<'_>, names: &[&str]) -> Option<DateTime<Utc>> {
        let (name, v) = self.lookup(f, names)?;
        self.time(&name, v)
    }

    /// A required timestamp.
    pub fn req_time(&mut self, f: &Fields<'_>, names: &[&str]) -> Option<DateTime<Utc>> {
        match self.lookup(f, names) {
            None => {
                self.missing(f, names);
                None
            }
            Some((name, v)) => {
                let t = self.time(&name, v);
                if t.is_none()
                    && !self
                        .reasons
                        .iter()
                        .any(|r| r.field.as_deref() == Some(&name))
                {
                    self.add(
                        Code::MissingField,
                        &name,
                        format!("{name} is unset; it is required"),
                    );
                }
                t
            }
        }
    }

    fn time(&mut self, name: &str, v: &J) -> Option<DateTime<Utc>> {
        match parse_time(v) {
            Ok(t) => t,
            Err(()) => {
                self.add(
                    Code::BadTime,
                    name,
                    format!("{v} is not a time (RFC 3339 like 2025-09-15T10:04:05-07:00, or Unix seconds)"),
                );
                None
            }
        }
    }

    /// An optional duration in seconds: a Go duration, a SLURM `[D-]HH:MM:SS`, or (for fields
    /// in hours) a number of hours. Returned as whole microseconds.
    pub fn opt_duration(&mut self, f: &Fields<'_>, names: &[&str], hours: bool) -> Option<i64> {
        let (name, v) = self.lookup(f, names)?;
        let parsed = match v {
            J::Str(s) => parse_duration_text(s),
            J::Num(n) if hours => parse_hours(n),
            _ => None,
        };
        if parsed.is_none() {
            self.add(
                Code::BadDuration,
                &name,
                format!("{v} is not a duration (write 2h0m0s, 1-02:03:04, or a number of hours)"),
            );
        }
        parsed
    }

    /// Unknown-key policy: ignore them (callers may log them).
    pub fn is_ok(&self) -> bool {
        self.reasons.is_empty()
    }
}

/// Whether two values are the same fact: numbers and decimal strings by exact value, job ids
/// by the job they name (`slurm_12` = `12`), anything else exactly.
fn same_value(a: &J, b: &J) -> bool {
    use rust_decimal::Decimal;
    fn scalar(v: &J) -> Option<&str> {
        match v {
            J::Num(n) => Some(n),
            J::Str(s) => Some(s),
            _ => None,
        }
    }
    let (Some(x), Some(y)) = (scalar(a), scalar(b)) else {
        return a == b;
    };
    if x == y {
        return true;
    }
    let dec = |t: &str| -> Option<Decimal> {
        if t.contains(['e', 'E']) {
            Decimal::from_scientific(t).ok()
        } else if is_plain_decimal(t) {
            t.parse().ok()
        } else {
            None
        }
    };
    if let (Some(p), Some(q)) = (dec(x), dec(y)) {
        return p == q;
    }
    matches!((JobId::parse(x), JobId::parse(y)), (Ok(p), Ok(q)) if p == q)
}

/// `N` or `N:S` (SLURM's exit code and signal).
fn is_exit_code(s: &str) -> bool {
    let num = |x: &str| !x.is_empty() && x.len() <= 10 && x.bytes().all(|b| b.is_ascii_digit());
    match s.split_once(':') {
        Some((a, b)) => num(a) && num(b),
        None => num(s),
    }
}

/// `^-?[0-9]+(\.[0-9]+)?$`: the only decimal strings accepted for money.
fn is_plain_decimal(s: &str) -> bool {
    let t = s.strip_prefix('-').unwrap_or(s);
    let (i, f) = match t.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (t, None),
    };
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    digits(i) && f.is_none_or(digits)
}

/// Parses a job id, telling step ids (`1234.batch`) apart from garbage.
pub fn parse_job_id(text: &str) -> Result<JobId, Code> {
    let t = text.trim();
    if t != text || t.is_empty() {
        return Err(Code::BadJobId);
    }
    if let Some((job, step)) = t.split_once('.') {
        let step_name = step.split_once('+').map_or(step, |(s, _)| s);
        let step_ok = matches!(step_name, "batch" | "extern" | "interactive")
            || (!step_name.is_empty() && step_name.bytes().all(|b| b.is_ascii_digit()));
        if step_ok && JobId::parse(job).is_ok() {
            return Err(Code::StepId);
        }
        return Err(Code::BadJobId);
    }
    JobId::parse(t).map_err(|_| Code::BadJobId)
}

/// Parses a timestamp value; `Ok(None)` for the "unset" spellings.
fn parse_time(v: &J) -> Result<Option<DateTime<Utc>>, ()> {
    match v {
        J::Str(s) if s == GO_ZERO_TIME => Ok(None),
        J::Str(s) => DateTime::parse_from_rfc3339(s)
            .map(|d| {
                let t = d.with_timezone(&Utc);
                // Year 1 in any offset is the Go zero time too.
                if t.timestamp() < 0 {
                    None
                } else {
                    Some(truncate_micros(t))
                }
            })
            .map_err(|_| ()),
        J::Num(n) => {
            let secs: i64 = n.parse().map_err(|_| ())?;
            if secs == 0 {
                return Ok(None);
            }
            if !(0..=253_402_300_799).contains(&secs) {
                return Err(());
            }
            Utc.timestamp_opt(secs, 0).single().map(Some).ok_or(())
        }
        _ => Err(()),
    }
}

/// Parses a duration string: Go (`2h0m0s`, `1h30m0.5s`, `250ms`, `1.5µs`) or SLURM
/// (`[D-]HH:MM:SS`, `MM:SS`). Returns microseconds (sub-microsecond parts are dropped: they are
/// informational).
pub fn parse_duration_text(s: &str) -> Option<i64> {
    if s.contains(':') {
        return parse_slurm_clock(s);
    }
    parse_go_duration(s)
}

fn parse_slurm_clock(s: &str) -> Option<i64> {
    let (days, clock) = match s.split_once('-') {
        Some((d, c)) => (d.parse::<i64>().ok()?, c),
        None => (0, s),
    };
    let parts: Vec<&str> = clock.split(':').collect();
    let nums: Option<Vec<i64>> = parts
        .iter()
        .map(|p| {
            if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                p.parse().ok()
            }
        })
        .collect();
    let nums = nums?;
    let (h, m, sec) = match nums.as_slice() {
        [h, m, s] => (*h, *m, *s),
        [m, s] if days == 0 => (0, *m, *s),
        _ => return None,
    };
    if m >= 60 || sec >= 60 || (days > 0 && h >= 24) {
        return None;
    }
    Some((((days * 24 + h) * 60 + m) * 60 + sec) * 1_000_000)
}

fn parse_go_duration(s: &str) -> Option<i64> {
    use rust_decimal::Decimal;
    let body = s.strip_prefix('-').map_or(s, |b| b);
    if body.is_empty() || body.len() != s.len() {
        // Negative durations describe no run.
        return None;
    }
    if body == "0" {
        return Some(0);
    }
    let mut total = Decimal::ZERO;
    let mut rest = body;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let num: Decimal = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let (unit_micros, unit_len) = [
            ("ns", Decimal::new(1, 3)),
            ("us", Decimal::ONE),
            ("µs", Decimal::ONE),
            ("μs", Decimal::ONE),
            ("ms", Decimal::from(1_000)),
            ("s", Decimal::from(1_000_000)),
            ("m", Decimal::from(60_000_000)),
            ("h", Decimal::from(3_600_000_000i64)),
        ]
        .iter()
        .find(|(u, _)| rest.starts_with(u))
        .map(|(u, m)| (*m, u.len()))?;
        total = total.checked_add(num.checked_mul(unit_micros)?)?;
        rest = &rest[unit_len..];
    }
    i64::try_from(total.trunc()).ok()
}

fn parse_hours(n: &str) -> Option<i64> {
    use rust_decimal::Decimal;
    let d = Decimal::from_scientific(n)
        .ok()
        .or_else(|| n.parse().ok())?;
    if d.is_sign_negative() {
        return None;
    }
    i64::try_from(d.checked_mul(Decimal::from(3_600_000_000i64))?.trunc()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_and_slurm_durations() {
        assert_eq!(parse_duration_text("2h0m0s"), Some(7_200_000_000));
        assert_eq!(parse_duration_text("1h30m0.5s"), Some(5_400_500_000));
        assert_eq!(parse_duration_text("250ms"), Some(250_000));
        assert_eq!(parse_duration_text("1.5µs"), Some(1));
        assert_eq!(parse_duration_text("1.5us"), Some(1));
        assert_eq!(parse_duration_text("0s"), Some(0));
        assert_eq!(parse_duration_text("1-02:03:04"), Some(93_784_000_000));
        assert_eq!(parse_duration_text("02:03:04"), Some(7_384_000_000));
        assert_eq!(parse_duration_text("03:04"), Some(184_000_000));
        for bad in [
            "2 hours",
            "",
            "h",
            "1x",
            "-1h",
            "1:60:00",
            "1-25:00:00",
            "a:b:c",
        ] {
            assert_eq!(parse_duration_text(bad), None, "{bad}");
        }
        assert_eq!(parse_hours("1.5"), Some(5_400_000_000));
        assert_eq!(parse_hours("2"), Some(7_200_000_000));
        assert_eq!(parse_hours("-1"), None);
    }

    #[test]
    fn times_in_every_spelling() {
        let t = |s: &str| parse_time(&J::Str(s.into()));
        assert_eq!(
            t("2025-09-15T10:04:05.123456789-07:00")
                .unwrap()
                .unwrap()
                .to_rfc3339(),
            "2025-09-15T17:04:05.123456+00:00"
        );
        assert_eq!(t(GO_ZERO_TIME), Ok(None));
        assert_eq!(t("0001-01-01T00:00:00-07:00"), Ok(None));
        assert!(t("yesterday").is_err());
        assert_eq!(parse_time(&J::Num("0".into())), Ok(None));
        assert_eq!(
            parse_time(&J::Num("1757955845".into()))
                .unwrap()
                .unwrap()
                .to_rfc3339(),
            "2025-09-15T17:04:05+00:00"
        );
        assert!(parse_time(&J::Num("1.5".into())).is_err());
        assert!(parse_time(&J::Num("-5".into())).is_err());
        assert!(parse_time(&J::Bool(true)).is_err());
    }

    #[test]
    fn job_ids_and_step_ids() {
        assert_eq!(parse_job_id("1234").unwrap().to_string(), "1234");
        assert_eq!(parse_job_id("slurm_67890").unwrap().to_string(), "67890");
        assert_eq!(parse_job_id("job_12345").unwrap().to_string(), "12345");
        assert_eq!(parse_job_id("1234_5").unwrap().to_string(), "1234_5");
        assert_eq!(parse_job_id("1234+1").unwrap().to_string(), "1234+1");
        assert_eq!(parse_job_id("1234.batch"), Err(Code::StepId));
        assert_eq!(parse_job_id("1234.0"), Err(Code::StepId));
        for bad in ["12a", "-5", "", " 12", "0", "1.2.3x"] {
            assert_eq!(parse_job_id(bad), Err(Code::BadJobId), "{bad}");
        }
    }

    #[test]
    fn money_spellings() {
        let lim = Limits::default();
        let mut c = Check::default();
        let m = |c: &mut Check, v: J| c.money("x", &v, &lim);
        assert_eq!(
            m(&mut c, J::Num("2".into())),
            Some(UsdMicros::from_usd(2).unwrap())
        );
        assert_eq!(
            m(&mut c, J::Num("1.5e2".into())),
            Some(UsdMicros::from_usd(150).unwrap())
        );
        assert_eq!(
            m(&mut c, J::Str("118.50".into())).unwrap().to_string(),
            "118.50"
        );
        assert!(c.is_ok());
        let codes = |v: J| {
            let mut c = Check::default();
            assert_eq!(c.money("x", &v, &lim), None);
            c.reasons.iter().map(|r| r.code).collect::<Vec<_>>()
        };
        assert_eq!(codes(J::Num("5e-07".into())), vec![Code::TooPrecise]);
        assert_eq!(codes(J::Num("12.3456789".into())), vec![Code::TooPrecise]);
        assert_eq!(codes(J::Num("-1".into())), vec![Code::NegativeAmount]);
        assert_eq!(codes(J::Num("1e12".into())), vec![Code::AmountTooLarge]);
        assert_eq!(codes(J::Num("1e30".into())), vec![Code::AmountTooLarge]);
        for bad in ["abc", "NaN", "0x10", "+5", " 5", "5.", ".5", "1,000.00", ""] {
            assert_eq!(codes(J::Str(bad.into())), vec![Code::BadAmount], "{bad}");
        }
        assert_eq!(codes(J::Bool(true)), vec![Code::BadAmount]);
    }
}
