//! Money as integer micro-dollars.
//!
//! Every amount in asbb is a signed count of micro-dollars (1 USD = 1,000,000) held in an `i64`.
//! SQL `SUM` over such columns is exact on both backends, and no amount ever passes through a
//! binary float. `rust_decimal` is used only to parse and print.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

/// Micro-dollars per dollar.
pub const MICROS_PER_USD: i64 = 1_000_000;

/// The largest magnitude asbb accepts: one trillion dollars.
///
/// Far beyond any research budget, and far enough below `i64::MAX` (about 9.2 trillion dollars)
/// that sums of many maximal amounts are still caught by checked arithmetic, not wrapped.
pub const MAX_ABS_USD: i64 = 1_000_000_000_000;

const MAX_ABS_MICROS: i64 = MAX_ABS_USD * MICROS_PER_USD;

/// A signed amount of US dollars, exact to the micro-dollar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsdMicros(i64);

/// Why a string or number is not an amount of money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The text is empty.
    #[error("amount is empty")]
    Empty,
    /// The text is not a plain decimal number.
    #[error("'{0}' is not a decimal amount (write it like 118.50)")]
    NotANumber(String),
    /// More than six decimals were given; asbb never rounds input.
    #[error("'{0}' has more than 6 decimals; amounts are exact to the micro-dollar and are never rounded")]
    TooPrecise(String),
    /// The magnitude is larger than [`MAX_ABS_USD`].
    #[error("'{0}' is out of range (at most {MAX_ABS_USD} dollars)")]
    OutOfRange(String),
    /// An amount that must not be negative was negative.
    #[error("'{0}' is negative; a positive amount is needed here")]
    Negative(String),
    /// An amount that must be positive was zero.
    #[error("amount must be greater than zero")]
    Zero,
    /// Checked arithmetic overflowed.
    #[error("amount arithmetic overflowed")]
    Overflow,
}

impl UsdMicros {
    /// Zero dollars.
    pub const ZERO: UsdMicros = UsdMicros(0);

    /// Wraps a count of micro-dollars, refusing magnitudes beyond [`MAX_ABS_USD`].
    pub fn from_micros(micros: i64) -> Result<Self, MoneyError> {
        if micros.checked_abs().is_none_or(|m| m > MAX_ABS_MICROS) {
            return Err(MoneyError::OutOfRange(micros.to_string()));
        }
        Ok(UsdMicros(micros))
    }

    /// Wraps a count of micro-dollars read back from the database.
    ///
    /// Stored values were range-checked when written; sums of them may exceed the input range,
    /// so this accepts any `i64`.
    pub const fn from_stored(micros: i64) -> Self {
        UsdMicros(micros)
    }

    /// Whole dollars, for tests and constants.
    pub fn from_usd(usd: i64) -> Result<Self, MoneyError> {
        usd.checked_mul(MICROS_PER_USD)
            .ok_or(MoneyError::Overflow)
            .and_then(Self::from_micros)
    }

    /// The amount in micro-dollars.
    pub const fn micros(self) -> i64 {
        self.0
    }

    /// Whether the amount is below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// Whether the amount is exactly zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `self + other`, or an error on overflow.
    pub fn checked_add(self, other: UsdMicros) -> Result<UsdMicros, MoneyError> {
        self.0
            .checked_add(other.0)
            .map(UsdMicros)
            .ok_or(MoneyError::Overflow)
    }

    /// `self - other`, or an error on overflow.
    pub fn checked_sub(self, other: UsdMicros) -> Result<UsdMicros, MoneyError> {
        self.0
            .checked_sub(other.0)
            .map(UsdMicros)
            .ok_or(MoneyError::Overflow)
    }

    /// `-self`, or an error on overflow.
    pub fn checked_neg(self) -> Result<UsdMicros, MoneyError> {
        self.0
            .checked_neg()
            .map(UsdMicros)
            .ok_or(MoneyError::Overflow)
    }

    /// The smaller of two amounts.
    pub fn min(self, other: UsdMicros) -> UsdMicros {
        UsdMicros(self.0.min(other.0))
    }

    /// The larger of two amounts.
    pub fn max(self, other: UsdMicros) -> UsdMicros {
        UsdMicros(self.0.max(other.0))
    }

    /// Multiplies by an exact decimal factor (e.g. a hold buffer of 1.2), rounding half away
    /// from zero to the micro-dollar. This is the one place where asbb rounds: a computed
    /// amount, never an input.
    pub fn mul_decimal(self, factor: Decimal) -> Result<UsdMicros, MoneyError> {
        let product = Decimal::from(self.0)
            .checked_mul(factor)
            .ok_or(MoneyError::Overflow)?
            .round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
        let micros: i64 = product.try_into().map_err(|_| MoneyError::Overflow)?;
        UsdMicros::from_micros(micros)
    }

    /// Parses a decimal amount such as `118.50`, `-3`, `0.000001`.
    ///
    /// Accepts an optional sign, digits, and up to six decimals. Refuses thousands separators,
    /// currency symbols, exponents, and anything more precise than a micro-dollar.
    pub fn parse(text: &str) -> Result<UsdMicros, MoneyError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(MoneyError::Empty);
        }
        let unsigned = t.strip_prefix(['-', '+']).unwrap_or(t);
        let (int_part, frac_part) = match unsigned.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (unsigned, None),
        };
        let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        let int_ok = digits_ok(int_part);
        let frac_ok = frac_part.is_none_or(|f| !f.is_empty() && digits_ok(f));
        if !int_ok || !frac_ok || (int_part.is_empty() && frac_part.is_none()) {
            return Err(MoneyError::NotANumber(t.to_string()));
        }
        let decimal =
            Decimal::from_str_exact(t).map_err(|_| MoneyError::OutOfRange(t.to_string()))?;
        Self::from_decimal_exact(decimal, t)
    }

    /// Parses a JSON number or decimal string exactly, including exponent forms such as `5e-07`
    /// that Go writers produce. Never goes through a binary float.
    pub fn parse_json_number(text: &str) -> Result<UsdMicros, MoneyError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(MoneyError::Empty);
        }
        if t.contains(['e', 'E']) {
            let decimal =
                Decimal::from_scientific(t).map_err(|_| MoneyError::NotANumber(t.to_string()))?;
            return Self::from_decimal_exact(decimal, t);
        }
        Self::parse(t)
    }

    /// Converts an exact decimal; refuses more than six significant decimals.
    pub fn from_decimal(decimal: Decimal) -> Result<UsdMicros, MoneyError> {
        Self::from_decimal_exact(decimal, &decimal.to_string())
    }

    fn from_decimal_exact(decimal: Decimal, original: &str) -> Result<UsdMicros, MoneyError> {
        let normalized = decimal.normalize();
        if normalized.scale() > 6 {
            return Err(MoneyError::TooPrecise(original.to_string()));
        }
        let micros = normalized
            .checked_mul(Decimal::from(MICROS_PER_USD))
            .ok_or_else(|| MoneyError::OutOfRange(original.to_string()))?;
        let micros: i64 = micros
            .try_into()
            .map_err(|_| MoneyError::OutOfRange(original.to_string()))?;
        UsdMicros::from_micros(micros).map_err(|_| MoneyError::OutOfRange(original.to_string()))
    }

    /// The exact decimal value.
    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.0, 6)
    }

    /// Refuses negative amounts, naming the amount.
    pub fn non_negative(self) -> Result<UsdMicros, MoneyError> {
        if self.is_negative() {
            Err(MoneyError::Negative(self.to_string()))
        } else {
            Ok(self)
        }
    }

    /// Refuses zero and negative amounts.
    pub fn positive(self) -> Result<UsdMicros, MoneyError> {
        if self.is_zero() {
            Err(MoneyError::Zero)
        } else {
            self.non_negative()
        }
    }

    /// The amount rounded to whole cents, half away from zero, as a decimal with exactly two
    /// places. This is the rounding rule of every report.
    pub fn to_cents_string(self) -> String {
        let d = self
            .to_decimal()
            .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
        format!("{d:.2}")
    }
}

/// Prints at least two decimals and as many more as needed to be exact: `118.50`, `0.000001`,
/// `-3.00`.
impl fmt::Display for UsdMicros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / MICROS_PER_USD as u64;
        let frac = abs % MICROS_PER_USD as u64;
        let mut frac_text = format!("{frac:06}");
        while frac_text.len() > 2 && frac_text.ends_with('0') {
            frac_text.pop();
        }
        write!(f, "{sign}{whole}.{frac_text}")
    }
}

impl FromStr for UsdMicros {
    type Err = MoneyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UsdMicros::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> i64 {
        UsdMicros::parse(s).unwrap().micros()
    }

    #[test]
    fn parses_plain_decimals() {
        assert_eq!(m("118.50"), 118_500_000);
        assert_eq!(m("0.000001"), 1);
        assert_eq!(m("-3"), -3_000_000);
        assert_eq!(m("+7.1"), 7_100_000);
        assert_eq!(m(".5"), 500_000);
        assert_eq!(m("  12.25 "), 12_250_000);
        assert_eq!(
            m("1.230000000"),
            1_230_000,
            "trailing zeros beyond 6 are not precision"
        );
    }

    #[test]
    fn refuses_excess_precision_instead_of_rounding() {
        assert_eq!(
            UsdMicros::parse("12.3456789"),
            Err(MoneyError::TooPrecise("12.3456789".into()))
        );
        assert!(matches!(
            UsdMicros::parse("0.0000001"),
            Err(MoneyError::TooPrecise(_))
        ));
    }

    #[test]
    fn refuses_malformed_text() {
        for bad in [
            "", " ", "abc", "1,000", "$5", "1e3", "--1", "1.2.3", "NaN", "inf", ".", "-", "1 000",
            "0x10", "5.-1", "5.",
        ] {
            assert!(UsdMicros::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn refuses_out_of_range() {
        assert!(matches!(
            UsdMicros::parse("1000000000001"),
            Err(MoneyError::OutOfRange(_))
        ));
        assert!(UsdMicros::parse("1000000000000").is_ok());
        assert!(matches!(
            UsdMicros::parse("99999999999999999999999999999"),
            Err(MoneyError::OutOfRange(_))
        ));
        assert!(UsdMicros::from_micros(i64::MIN).is_err());
    }

    #[test]
    fn json_numbers_in_exponent_form_are_exact() {
        assert_eq!(
            UsdMicros::parse_json_number("5e-07").map(|m| m.micros()),
            Err(MoneyError::TooPrecise("5e-07".into())).map(|m: UsdMicros| m.micros())
        );
        assert_eq!(UsdMicros::parse_json_number("5e-06").unwrap().micros(), 5);
        assert_eq!(
            UsdMicros::parse_json_number("1.5E2").unwrap().micros(),
            150_000_000
        );
        assert_eq!(
            UsdMicros::parse_json_number("2").unwrap().micros(),
            2_000_000
        );
    }

    #[test]
    fn prints_two_or_more_decimals() {
        let p = |micros| UsdMicros::from_micros(micros).unwrap().to_string();
        assert_eq!(p(118_500_000), "118.50");
        assert_eq!(p(1), "0.000001");
        assert_eq!(p(-3_000_000), "-3.00");
        assert_eq!(p(0), "0.00");
        assert_eq!(p(1_234_500), "1.2345");
        assert_eq!(p(-1), "-0.000001");
    }

    #[test]
    fn printing_round_trips() {
        for micros in [0, 1, -1, 999_999, 1_000_000, 123_456_789, -987_654_321_000] {
            let v = UsdMicros::from_micros(micros).unwrap();
            assert_eq!(UsdMicros::parse(&v.to_string()).unwrap(), v);
        }
    }

    #[test]
    fn checked_arithmetic_catches_overflow() {
        let big = UsdMicros::from_stored(i64::MAX);
        assert_eq!(
            big.checked_add(UsdMicros::from_stored(1)),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            UsdMicros::from_stored(i64::MIN).checked_neg(),
            Err(MoneyError::Overflow)
        );
        let a = UsdMicros::from_usd(5).unwrap();
        assert_eq!(
            a.checked_sub(UsdMicros::from_usd(7).unwrap())
                .unwrap()
                .micros(),
            -2_000_000
        );
    }

    #[test]
    fn buffer_multiplication_rounds_half_away_from_zero() {
        let v = UsdMicros::from_micros(5).unwrap();
        assert_eq!(v.mul_decimal(Decimal::new(15, 1)).unwrap().micros(), 8); // 7.5 -> 8
        let v = UsdMicros::from_usd(100).unwrap();
        assert_eq!(
            v.mul_decimal(Decimal::new(12, 1)).unwrap().micros(),
            120_000_000
        );
    }

    #[test]
    fn cents_rounding_rule() {
        let c = |micros| UsdMicros::from_micros(micros).unwrap().to_cents_string();
        assert_eq!(c(1_005_000), "1.01");
        assert_eq!(c(1_004_999), "1.00");
        assert_eq!(c(-1_005_000), "-1.01");
        assert_eq!(c(0), "0.00");
    }

    #[test]
    fn sign_checks_name_the_problem() {
        assert!(matches!(
            UsdMicros::parse("-1").unwrap().non_negative(),
            Err(MoneyError::Negative(_))
        ));
        assert_eq!(UsdMicros::ZERO.positive(), Err(MoneyError::Zero));
    }
}
