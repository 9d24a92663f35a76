//! The grant summary page in a real browser: headless Chromium renders it, takes a screenshot,
//! and the screenshot must show the burn-down chart — both of its lines in their colours — and
//! the page's text. The same check run on the page without its chart must fail, so the test
//! can fail.
//!
//! Chromium comes from Debian's `chromium` package (scripts/test installs it as root);
//! `ASBB_TEST_CHROMIUM` names another binary. Without one the test fails, unless
//! `ASBB_TEST_NO_BROWSER=1` says to skip it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use asbb::report::chart::{ACTUAL_COLOUR, EXPECTED_COLOUR};

/// How long one screenshot may take before the browser is killed (a hung browser must not
/// hang the suite; this is a guard, not a timing assertion).
const BROWSER_LIMIT: Duration = Duration::from_secs(120);

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ASBB_TEST_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn asbb(dir: &Path, args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_asbb"))
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("ASBB_CONFIG", dir.join("asbb.toml"))
        .env("ASBB_DATABASE_URL", dir.join("asbb.db"))
        .env("USER", "tester")
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "asbb {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn screenshot(browser: &Path, page: &Path, png: &Path, profile: &Path) {
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1000,1400",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", browser.display()));
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium exited with {status}");
            break;
        }
        if start.elapsed() > BROWSER_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish a screenshot within {BROWSER_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(png.exists(), "chromium wrote no screenshot");
}

/// What a screenshot shows: pixels close to each chart colour, non-white pixels, colours.
#[derive(Debug)]
struct Seen {
    actual: usize,
    expected: usize,
    ink: usize,
    colours: usize,
}

fn rgb(hex: &str) -> [i32; 3] {
    let v = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap();
    [
        (v >> 16) as i32 & 255,
        (v >> 8) as i32 & 255,
        v as i32 & 255,
    ]
}

fn look(png_path: &Path) -> Seen {
    let decoder = png::Decoder::new(std::fs::File::open(png_path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let (a, e) = (rgb(ACTUAL_COLOUR), rgb(EXPECTED_COLOUR));
    let near =
        |p: &[u8], c: [i32; 3]| (0..3).map(|i| (i32::from(p[i]) - c[i]).abs()).sum::<i32>() <= 60;
    let mut seen = Seen {
        actual: 0,
        expected: 0,
        ink: 0,
        colours: 0,
    };
    let mut colours = std::collections::HashSet::new();
    for p in buf[..info.buffer_size()].chunks_exact(channels) {
        colours.insert([p[0], p[1], p[2]]);
        if p[..3] != [255, 255, 255] {
            seen.ink += 1;
        }
        if near(p, a) {
            seen.actual += 1;
        }
        if near(p, e) {
            seen.expected += 1;
        }
    }
    seen.colours = colours.len();
    seen
}

/// The page shows a chart with both lines, and text.
fn shows_the_chart(s: &Seen) -> bool {
    s.actual >= 300 && s.expected >= 150 && s.ink >= 5_000 && s.colours >= 16
}

#[test]
fn the_grant_summary_shows_its_burn_down_chart_in_a_browser() {
    let Some(browser) = chromium() else {
        if std::env::var("ASBB_TEST_NO_BROWSER").as_deref() == Ok("1") {
            eprintln!("ASBB_TEST_NO_BROWSER=1: browser test skipped");
            return;
        }
        panic!("no chromium found: install Debian's chromium (scripts/test does as root), set ASBB_TEST_CHROMIUM, or ASBB_TEST_NO_BROWSER=1 to skip");
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("asbb.toml"), "").unwrap();
    let run = |a: &[&str]| asbb(dir, a);
    run(&["database", "migrate"]);
    run(&[
        "account",
        "create",
        "--account",
        "lab",
        "--name",
        "Lab",
        "--budget",
        "0",
        "--start",
        "2025-01-01",
        "--end",
        "2027-12-31",
        "--as-of",
        "2025-01-01",
    ]);
    run(&[
        "grant",
        "create",
        "--number",
        "NSF-1",
        "--agency",
        "NSF",
        "--pi",
        "Dr. P",
        "--amount",
        "30000",
        "--start",
        "2025-01-01",
        "--end",
        "2027-12-31",
        "--periods",
        "12",
        "--indirect",
        "0.30",
        "--as-of",
        "2025-01-01",
    ]);
    run(&["grant", "link", "NSF-1", "lab", "--as-of", "2025-01-01"]);
    for (i, (amount, day)) in [
        ("2500", "2025-02-10"),
        ("4000", "2025-05-20"),
        ("1500", "2025-09-01"),
        ("3000", "2026-01-15"),
    ]
    .iter()
    .enumerate()
    {
        run(&[
            "charge",
            "--account",
            "lab",
            "--amount",
            amount,
            "--job",
            &format!("{}", 100 + i),
            "--as-of",
            day,
        ]);
    }
    run(&["allocations", "process", "--as-of", "2026-02-01"]);
    let out = dir.join("out");
    run(&[
        "report",
        "grant-statement",
        "--grant",
        "NSF-1",
        "--format",
        "html",
        "--out",
        out.to_str().unwrap(),
    ]);
    let page = out.join("grant-statement-NSF-1.html");
    let png = dir.join("with-chart.png");
    screenshot(&browser, &page, &png, &dir.join("profile-1"));
    let seen = look(&png);
    assert!(
        shows_the_chart(&seen),
        "the screenshot does not show the chart: {seen:?}"
    );

    // The same page without its chart (a site template that leaves it out) fails the check.
    let site = dir.join("site");
    std::fs::create_dir(&site).unwrap();
    let shipped = include_str!("../reports/templates/summary.html");
    assert!(shipped.contains("{{ chart }}"));
    std::fs::write(
        site.join("summary.html"),
        shipped.replace("{{ chart }}", ""),
    )
    .unwrap();
    let out2 = dir.join("out-no-chart");
    run(&[
        "report",
        "grant-statement",
        "--grant",
        "NSF-1",
        "--format",
        "html",
        "--templates",
        site.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
    ]);
    let png2 = dir.join("without-chart.png");
    screenshot(
        &browser,
        &out2.join("grant-statement-NSF-1.html"),
        &png2,
        &dir.join("profile-2"),
    );
    let seen2 = look(&png2);
    assert!(
        !shows_the_chart(&seen2),
        "the check passes without a chart: {seen2:?}"
    );
    assert!(
        seen2.ink >= 5_000,
        "the page without a chart still has its text: {seen2:?}"
    );
    eprintln!("with the chart: {seen:?}; without: {seen2:?}");
}
