//! The burn-down chart of a grant (or account) summary: money left over time against the
//! money expected to be left if the budget were spent evenly through each budget period, as an
//! inline SVG drawn on the server (no script, so it prints and archives as it is).
//!
//! Coordinates are pixels computed with integer arithmetic from exact micro-dollar amounts
//! (`i128`, no floating point); they are positions on the page, never money. The amounts
//! printed on the chart are the same cents-rounded figures as the tables.

use chrono::NaiveDate;

use crate::domain::UsdMicros;

/// The colour of the actual line (a test looks for it in a screenshot).
pub const ACTUAL_COLOUR: &str = "#1f6fd1";
/// The colour of the expected line.
pub const EXPECTED_COLOUR: &str = "#e07b00";

const WIDTH: i128 = 760;
const HEIGHT: i128 = 320;
const LEFT: i128 = 96;
const RIGHT: i128 = 24;
const TOP: i128 = 20;
const BOTTOM: i128 = 44;

/// What the chart shows.
#[derive(Debug, Clone)]
pub struct BurnDown {
    /// First day.
    pub start: NaiveDate,
    /// Day after the last.
    pub end: NaiveDate,
    /// The money at the start (the award, or the credited budget).
    pub budget: i64,
    /// Expected money left at instants where the plan bends (period boundaries), in order.
    pub expected: Vec<(NaiveDate, i64)>,
    /// Actual money left at the end of each day with spending, in order, through `through`.
    pub actual: Vec<(NaiveDate, i64)>,
    /// The last day the ledger covers (the line stops there).
    pub through: NaiveDate,
}

fn days(a: NaiveDate, b: NaiveDate) -> i128 {
    i128::from((b - a).num_days())
}

/// The chart as an `<svg>` element.
pub fn svg(b: &BurnDown) -> String {
    let span = days(b.start, b.end).max(1);
    let values = b
        .expected
        .iter()
        .chain(b.actual.iter())
        .map(|(_, v)| i128::from(*v));
    let hi = values
        .clone()
        .max()
        .unwrap_or(0)
        .max(i128::from(b.budget))
        .max(1);
    let lo = values.min().unwrap_or(0).min(0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |d: NaiveDate| LEFT + days(b.start, d).clamp(0, span) * plot_w / span;
    let y = |v: i64| TOP + (hi - i128::from(v)) * plot_h / (hi - lo);
    let mut s = String::new();
    s.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"Burn-down: money left against expected\">"
    ));
    s.push_str(&format!(
        "<rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"#ffffff\"/>"
    ));
    // Horizontal grid: the budget, half of it, zero (and the lowest value when overspent).
    let mut marks = vec![b.budget, b.budget / 2, 0];
    if lo < 0 {
        marks.push(i64::try_from(lo).unwrap_or(0));
    }
    for m in marks {
        let yy = y(m);
        s.push_str(&format!(
            "<line x1=\"{LEFT}\" y1=\"{yy}\" x2=\"{}\" y2=\"{yy}\" stroke=\"#dddddd\" stroke-width=\"1\"/>",
            WIDTH - RIGHT
        ));
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\" fill=\"#444444\">${}</text>",
            LEFT - 6,
            yy + 4,
            UsdMicros::from_stored(m).to_cents_string()
        ));
    }
    // Axes.
    s.push_str(&format!(
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{}\" stroke=\"#333333\" stroke-width=\"1\"/>",
        HEIGHT - BOTTOM
    ));
    s.push_str(&format!(
        "<line x1=\"{LEFT}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#333333\" stroke-width=\"1\"/>",
        y(0),
        WIDTH - RIGHT,
        y(0)
    ));
    // Labelled with the first and the last day (the end itself is the day after).
    let last = b.end.pred_opt().unwrap_or(b.end);
    for (d, label, anchor) in [(b.start, b.start, "start"), (b.end, last, "end")] {
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"{anchor}\" fill=\"#444444\">{}</text>",
            x(d),
            HEIGHT - BOTTOM + 16,
            label.format("%Y-%m-%d")
        ));
    }
    let poly = |pts: &[(NaiveDate, i64)]| -> String {
        pts.iter()
            .map(|(d, v)| format!("{},{}", x(*d), y(*v)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if !b.expected.is_empty() {
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{EXPECTED_COLOUR}\" stroke-width=\"3\" stroke-dasharray=\"8 5\" points=\"{}\"/>",
            poly(&b.expected)
        ));
    }
    // The actual line: flat until the first spending, then step by step to the last day.
    let mut pts = vec![(b.start, b.budget)];
    let mut last = b.budget;
    for (d, v) in &b.actual {
        pts.push((*d, last));
        pts.push((*d, *v));
        last = *v;
    }
    pts.push((b.through.max(b.start), last));
    s.push_str(&format!(
        "<polyline fill=\"none\" stroke=\"{ACTUAL_COLOUR}\" stroke-width=\"4\" points=\"{}\"/>",
        poly(&pts)
    ));
    // Legend.
    let ly = HEIGHT - 12;
    s.push_str(&format!(
        "<line x1=\"{LEFT}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{ACTUAL_COLOUR}\" stroke-width=\"4\"/><text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"#222222\">money left (actual)</text>",
        LEFT + 28,
        LEFT + 34,
        ly + 4
    ));
    s.push_str(&format!(
        "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{EXPECTED_COLOUR}\" stroke-width=\"3\" stroke-dasharray=\"8 5\"/><text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"#222222\">expected if spent evenly per budget period</text>",
        LEFT + 200,
        LEFT + 228,
        LEFT + 234,
        ly + 4
    ));
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn the_chart_has_both_lines_inside_the_plot() {
        let b = BurnDown {
            start: d(2026, 1, 1),
            end: d(2027, 1, 1),
            budget: 1_000_000_000,
            expected: vec![(d(2026, 1, 1), 1_000_000_000), (d(2027, 1, 1), 0)],
            actual: vec![(d(2026, 3, 1), 900_000_000), (d(2026, 6, 1), 400_000_000)],
            through: d(2026, 7, 1),
        };
        let s = svg(&b);
        assert!(s.contains(ACTUAL_COLOUR) && s.contains(EXPECTED_COLOUR));
        assert!(s.contains("$1000.00"), "{s}");
        assert!(s.contains("2026-12-31") && !s.contains("2027-01-01"), "{s}");
        // Overspent: the axis extends below zero instead of drawing off the chart.
        let over = BurnDown {
            actual: vec![(d(2026, 3, 1), -500_000_000)],
            ..b
        };
        assert!(svg(&over).contains("$-500.00"));
    }
}
