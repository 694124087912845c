//! The report's charts, drawn with plotters: one SVG per chart for the HTML
//! page and a single PNG that holds them all, with the run's headline figures.

use std::ops::Range;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::{Point, Report};

/// Bundled so that the PNG's text needs no system font library and looks the
/// same on every machine (SVG text is left to the browser's sans-serif).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// One chart, in the page and in a cell of the PNG's grid.
pub const PANEL: (u32, u32) = (800, 400);
/// The PNG's headline above the grid.
const HEADLINE: u32 = 48;
/// Text sizes in plotters' units, which draw at about 0.8 of that in pixels.
const CAPTION: u32 = 24;
const TICKS: u32 = 16;

const INK_BLUE: RGBColor = RGBColor(31, 119, 180);
const INK_ORANGE: RGBColor = RGBColor(230, 120, 20);
const INK_GREEN: RGBColor = RGBColor(44, 150, 44);
const INK_PURPLE: RGBColor = RGBColor(130, 80, 170);
const GRID: RGBColor = RGBColor(225, 225, 225);

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("the bundled font could not be loaded")]
    Font,
    #[error("drawing a chart: {0}")]
    Draw(String),
    #[error("encoding the PNG: {0}")]
    Png(#[from] png::EncodingError),
}

// plotters' error is generic over the backend; its text is all a caller can use.
impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for ChartError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        ChartError::Draw(e.to_string())
    }
}

/// The charts a report has data for, in the order they are shown.
enum Chart {
    /// (nines, µs) steps, see [`percentile_curve`].
    Latency(Vec<(f64, f64)>),
    /// (s, replies/s) and (s, open sockets).
    Rate(Vec<(f64, f64)>, Vec<(f64, f64)>),
    /// (s, % of one core).
    ServerCpu(Vec<(f64, f64)>),
    /// (s, MB).
    ServerRss(Vec<(f64, f64)>),
}

fn charts(r: &Report) -> Vec<Chart> {
    let mut out = Vec::new();
    let curve = percentile_curve(&r.rtt_histogram);
    if !curve.is_empty() {
        out.push(Chart::Latency(curve));
    }
    if r.series.len() > 1 {
        let along = |f: &dyn Fn(&Point) -> Option<f64>| -> Vec<(f64, f64)> {
            r.series
                .iter()
                .filter_map(|p| Some((p.t_s, f(p)?)))
                .collect()
        };
        out.push(Chart::Rate(
            along(&|p| Some(p.msgs_per_s)),
            along(&|p| Some(p.live as f64)),
        ));
        let cpu = along(&|p| p.server_cpu_pct);
        if cpu.len() > 1 {
            out.push(Chart::ServerCpu(cpu));
        }
        let rss = along(&|p| p.server_rss_bytes.map(|b| b as f64 / 1e6));
        if rss.len() > 1 {
            out.push(Chart::ServerRss(rss));
        }
    }
    out
}

/// One standalone SVG document per chart the report has data for.
pub fn svgs(r: &Report) -> Result<Vec<String>, ChartError> {
    load_font()?;
    charts(r)
        .iter()
        .map(|c| {
            let mut s = String::new();
            {
                let root = SVGBackend::with_string(&mut s, PANEL).into_drawing_area();
                draw(c, &root)?;
                root.present()?;
            }
            Ok(s)
        })
        .collect()
}

/// Every chart in one PNG, two to a row, under a line with the run's figures.
pub fn png(r: &Report) -> Result<Vec<u8>, ChartError> {
    load_font()?;
    let list = charts(r);
    let cols = list.len().clamp(1, 2);
    let rows = list.len().div_ceil(cols).max(1);
    let (w, h) = (PANEL.0 * cols as u32, HEADLINE + PANEL.1 * rows as u32);
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, body) = root.split_vertically(HEADLINE);
        top.draw_text(
            &headline(r),
            &(FAMILY, 22).into_font().color(&BLACK),
            (16, 14),
        )?;
        if list.is_empty() {
            body.draw_text(
                "no replies and no time series to chart",
                &(FAMILY, 18).into_font().color(&BLACK),
                (16, 16),
            )?;
        }
        for (c, cell) in list.iter().zip(body.split_evenly((rows, cols))) {
            draw(c, &cell)?;
        }
        root.present()?;
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(&rgb)?;
    writer.finish()?;
    Ok(out)
}

fn load_font() -> Result<(), ChartError> {
    static LOADED: OnceLock<bool> = OnceLock::new();
    let ok = *LOADED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    ok.then_some(()).ok_or(ChartError::Font)
}

/// What the PNG says on top, so a pasted image still names its run.
fn headline(r: &Report) -> String {
    let mut s = format!(
        "shardcast-bench {}: {} sockets, {} replies/s",
        r.mode.name(),
        r.sockets,
        count_label(r.msgs_per_s)
    );
    if let Some(q) = &r.rtt_us {
        s += &format!(
            ", RTT p50 {} p99 {} max {}",
            us_label(q.p50),
            us_label(q.p99),
            us_label(q.max)
        );
    }
    s += &format!(", {} errors", r.fault_total);
    s
}

fn draw<DB: DrawingBackend>(c: &Chart, area: &DrawingArea<DB, Shift>) -> Result<(), ChartError> {
    area.fill(&WHITE)?;
    match c {
        Chart::Latency(curve) => latency(area, curve),
        Chart::Rate(rate, live) => rate_and_sockets(area, rate, live),
        Chart::ServerCpu(cpu) => over_time(
            area,
            "Server CPU",
            "CPU (% of one core)",
            cpu,
            INK_ORANGE,
            &|v| format!("{}%", trim(*v)),
        ),
        Chart::ServerRss(rss) => over_time(
            area,
            "Server memory (RSS)",
            "resident memory (MB)",
            rss,
            INK_PURPLE,
            &|v| trim(*v),
        ),
    }
}

/// How many nines the quantile `q` has: 0.9 is 1, 0.99 is 2. The percentile
/// axis is linear in this, which is the log of 1/(1-q).
pub fn nines(q: f64) -> f64 {
    -(1.0 - q).log10()
}

/// The tick label for a whole number of nines: 0%, 90%, 99%, 99.9%, …
pub fn percentile_label(nines: f64) -> String {
    let q = 100.0 * (1.0 - 10f64.powf(-nines));
    let decimals = (nines.round() as usize).saturating_sub(2);
    format!("{q:.decimals$}%")
}

/// The latency at every percentile, from (ns, count) pairs: for each recorded
/// value a flat step, in (nines, µs), from the share of replies below it to
/// the share at or below it. The last reply's quantile is 1, which has no
/// nines, so the curve ends at 1 - 1/count, where the data runs out.
pub fn percentile_curve(pairs: &[(u64, u64)]) -> Vec<(f64, f64)> {
    let total: u64 = pairs.iter().map(|p| p.1).sum();
    if total == 0 {
        return Vec::new();
    }
    let mut sorted = pairs.to_vec();
    sorted.sort_unstable();
    let end = (total as f64).log10();
    let at = |seen: u64| {
        if seen >= total {
            end
        } else {
            nines(seen as f64 / total as f64).min(end)
        }
    };
    let mut out = Vec::with_capacity(sorted.len() * 2);
    let mut seen = 0;
    for (ns, n) in sorted.into_iter().filter(|p| p.1 > 0) {
        // A log axis has no place for 0 ns, which only a stalled clock gives.
        let us = (ns as f64 / 1e3).max(1e-3);
        out.push((at(seen), us));
        seen += n;
        out.push((at(seen), us));
    }
    out
}

fn latency<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    curve: &[(f64, f64)],
) -> Result<(), ChartError> {
    let last = curve.last().map_or(0.0, |p| p.0);
    // Up to the next whole nine; 3.0000000001 nines of rounding is still 3.
    let x_max = (last - 1e-9).ceil().max(1.0);
    let lo = curve.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = curve.iter().map(|p| p.1).fold(0.0, f64::max);
    let ticks = log_ticks(lo, hi);
    let (y0, y1) = (
        ticks.first().copied().unwrap_or(lo).log10(),
        ticks.last().copied().unwrap_or(hi).log10(),
    );
    let x_keys: Vec<f64> = (0..=x_max as u32).map(f64::from).collect();
    let mut chart = ChartBuilder::on(area)
        .caption("Reply round trip by percentile", (FAMILY, CAPTION))
        .margin(12)
        .margin_right(28)
        .x_label_area_size(52)
        .y_label_area_size(86)
        .build_cartesian_2d(
            Ticked::new(0.0..x_max, x_keys),
            Ticked::new(y0..y1, ticks.iter().map(|t| t.log10()).collect()),
        )?;
    chart
        .configure_mesh()
        .bold_line_style(GRID)
        .x_desc("percentile (log scale of 1/(1 − q))")
        .y_desc("round-trip latency (log scale)")
        .x_label_formatter(&|n| percentile_label(*n))
        .y_label_formatter(&|l| us_label(10f64.powf(*l)))
        .label_style((FAMILY, TICKS))
        .axis_desc_style((FAMILY, TICKS))
        .draw()?;
    chart.draw_series(LineSeries::new(
        curve.iter().map(|&(n, us)| (n, us.log10())),
        INK_BLUE.stroke_width(2),
    ))?;
    Ok(())
}

/// A linear axis with the ticks given: whole nines on the percentile axis,
/// the 1-2-5 ladder on the log latency axis. (plotters' `with_key_points`
/// wraps an f64 axis in a type its mesh cannot label.)
struct Ticked {
    line: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ticked {
    fn new(range: Range<f64>, ticks: Vec<f64>) -> Ticked {
        Ticked {
            line: range.into(),
            ticks,
        }
    }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        self.line.map(v, limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.line.range()
    }
}

fn rate_and_sockets<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    rate: &[(f64, f64)],
    live: &[(f64, f64)],
) -> Result<(), ChartError> {
    let t_max = time_span(rate);
    let mut chart = ChartBuilder::on(area)
        .caption("Replies per second and open sockets", (FAMILY, CAPTION))
        .margin(12)
        .x_label_area_size(52)
        .y_label_area_size(86)
        .right_y_label_area_size(86)
        .build_cartesian_2d(0.0..t_max, 0.0..headroom(rate))?
        .set_secondary_coord(0.0..t_max, 0.0..headroom(live));
    chart
        .configure_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .x_desc("time since start (s)")
        .y_desc("replies per second")
        .x_label_formatter(&|t| trim(*t))
        .y_label_formatter(&|v| count_label(*v))
        .label_style((FAMILY, TICKS))
        .axis_desc_style((FAMILY, TICKS))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("open sockets")
        .y_label_formatter(&|v| count_label(*v))
        .label_style((FAMILY, TICKS))
        .axis_desc_style((FAMILY, TICKS))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            rate.iter().copied(),
            INK_BLUE.stroke_width(2),
        ))?
        .label("replies/s (left)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], INK_BLUE.stroke_width(2)));
    chart
        .draw_secondary_series(LineSeries::new(
            live.iter().copied(),
            INK_GREEN.stroke_width(2),
        ))?
        .label("open sockets (right)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], INK_GREEN.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(GRID)
        .label_font((FAMILY, TICKS))
        .draw()?;
    Ok(())
}

fn over_time<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    y_desc: &str,
    points: &[(f64, f64)],
    color: RGBColor,
    y_label: &dyn Fn(&f64) -> String,
) -> Result<(), ChartError> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FAMILY, CAPTION))
        .margin(12)
        .margin_right(28)
        .x_label_area_size(52)
        .y_label_area_size(86)
        .build_cartesian_2d(0.0..time_span(points), 0.0..headroom(points))?;
    chart
        .configure_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .x_desc("time since start (s)")
        .y_desc(y_desc)
        .x_label_formatter(&|t| trim(*t))
        .y_label_formatter(y_label)
        .label_style((FAMILY, TICKS))
        .axis_desc_style((FAMILY, TICKS))
        .draw()?;
    chart.draw_series(LineSeries::new(
        points.iter().copied(),
        color.stroke_width(2),
    ))?;
    Ok(())
}

fn time_span(points: &[(f64, f64)]) -> f64 {
    points.iter().map(|p| p.0).fold(0.0, f64::max).max(1.0)
}

/// A y range that starts at zero and leaves the top line clear of the frame.
fn headroom(points: &[(f64, f64)]) -> f64 {
    let top = points.iter().map(|p| p.1).fold(0.0, f64::max);
    if top > 0.0 {
        top * 1.12
    } else {
        1.0
    }
}

/// Latency ticks on the 1-2-5 ladder, from the step at or below `lo` to the
/// one at or above `hi`; only powers of ten when that would crowd the axis.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo / 2.0, lo * 2.0)
    };
    let ladder: Vec<f64> = (lo.log10().floor() as i32..=hi.log10().ceil() as i32)
        .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
        .collect();
    let close = |a: f64, b: f64| (a - b).abs() <= b * 1e-9;
    let first = ladder
        .iter()
        .rposition(|&v| v < lo || close(v, lo))
        .unwrap_or(0);
    let last = ladder
        .iter()
        .position(|&v| v > hi || close(v, hi))
        .unwrap_or(ladder.len() - 1);
    let steps = &ladder[first..=last];
    if steps.len() <= 10 {
        return steps.to_vec();
    }
    let decades: Vec<f64> = steps
        .iter()
        .copied()
        .filter(|v| close(10f64.powf(v.log10().round()), *v))
        .collect();
    let mut out = vec![steps[0]];
    out.extend(decades.into_iter().filter(|&v| v > steps[0]));
    if out.last() != steps.last() {
        out.push(steps[steps.len() - 1]);
    }
    out
}

/// Microseconds with the unit that keeps the number short: 250 µs, 1.5 ms, 2 s.
pub fn us_label(us: f64) -> String {
    if us >= 1e6 {
        format!("{} s", trim(us / 1e6))
    } else if us >= 1e3 {
        format!("{} ms", trim(us / 1e3))
    } else {
        format!("{} µs", trim(us))
    }
}

/// Counts as 950, 12k, 1.5M.
fn count_label(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

/// At most three significant digits, without trailing zeros.
fn trim(v: f64) -> String {
    let a = v.abs();
    let s = if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::example;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// Every SVG text element: its text and its opening tag.
    fn texts(svg: &str) -> Vec<(String, &str)> {
        svg.split("<text")
            .skip(1)
            .map(|t| {
                let (tag, rest) = t.split_once('>').unwrap();
                let text = rest.split("</text>").next().unwrap();
                (text.trim().to_string(), tag)
            })
            .collect()
    }

    fn has_text(svg: &str, label: &str) -> bool {
        texts(svg).iter().any(|(t, _)| t == label)
    }

    /// Where the text element that says exactly `label` is drawn (`x` or `y`).
    fn text_at(svg: &str, label: &str, attr: &str) -> f64 {
        let all = texts(svg);
        let (_, tag) = all
            .iter()
            .find(|(t, _)| t == label)
            .unwrap_or_else(|| panic!("no text {label:?}"));
        let key = format!(" {attr}=\"");
        let from = tag.find(&key).unwrap() + key.len();
        let len = tag[from..].find('"').unwrap();
        tag[from..from + len].parse().unwrap()
    }

    /// How many points the polylines drawn in `color` have, together.
    fn line_points(svg: &str, color: RGBColor) -> usize {
        let stroke = format!("stroke=\"#{:02X}{:02X}{:02X}\"", color.0, color.1, color.2);
        svg.split("<polyline")
            .skip(1)
            .filter(|l| l.split("/>").next().unwrap().contains(&stroke))
            .map(|l| {
                let from = l.find("points=\"").unwrap() + 8;
                l[from..]
                    .split('"')
                    .next()
                    .unwrap()
                    .split_whitespace()
                    .count()
            })
            .sum()
    }

    #[test]
    fn nines_count_the_nines_of_a_quantile() {
        assert!(close(nines(0.0), 0.0));
        assert!((nines(0.9) - 1.0).abs() < 1e-9);
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
        let labels: Vec<String> = (0..=5).map(|n| percentile_label(f64::from(n))).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
    }

    #[test]
    fn the_curve_steps_at_each_value_and_ends_where_the_data_does() {
        // 100 replies: 90 at 1 µs, 9 at 2 µs, 1 at 5 µs; unsorted on purpose.
        let curve = percentile_curve(&[(5_000, 1), (1_000, 90), (2_000, 9), (3_000, 0)]);
        let want = [
            (0.0, 1.0),
            (1.0, 1.0),
            (1.0, 2.0),
            (2.0, 2.0),
            (2.0, 5.0),
            (2.0, 5.0),
        ];
        assert_eq!(curve.len(), want.len(), "{curve:?}");
        for (got, want) in curve.iter().zip(want) {
            assert!(
                (got.0 - want.0).abs() < 1e-9 && close(got.1, want.1),
                "{got:?} != {want:?}"
            );
        }
        assert!(percentile_curve(&[]).is_empty());
        assert!(percentile_curve(&[(1_000, 0)]).is_empty());
    }

    #[test]
    fn the_percentile_axis_puts_99_percent_two_thirds_of_the_way_to_99_9() {
        let mut r = example();
        // 1000 replies: the curve ends at 99.9%, the axis' right end.
        r.rtt_histogram = (1..=1000u64).map(|k| (k * 10_000, 1)).collect();
        let svg = &svgs(&r).unwrap()[0];
        let x = |l: &str| text_at(svg, l, "x");
        let (x0, x2, x3) = (x("0%"), x("99%"), x("99.9%"));
        assert!(x0 < x2 && x2 < x3);
        assert!(((x2 - x0) / (x3 - x0) - 2.0 / 3.0).abs() < 0.01);
        assert!(((x("90%") - x0) / (x3 - x0) - 1.0 / 3.0).abs() < 0.01);
        assert!(!has_text(svg, "99.99%"), "no empty decade past the data");
        // 10 µs to 10 ms on a log axis: each decade is as tall as the next.
        let y = |l: &str| text_at(svg, l, "y");
        let (a, b, c) = (y("100 µs") - y("1 ms"), y("1 ms") - y("10 ms"), y("10 µs"));
        assert!(a > 0.0 && (a - b).abs() <= 1.0, "{a} {b}");
        assert!((c - y("100 µs") - a).abs() <= 1.0);
    }

    #[test]
    fn every_svg_has_a_title_axis_labels_and_a_line() {
        let all = svgs(&example()).unwrap();
        assert_eq!(all.len(), 4);
        let descs = [
            (
                "Reply round trip by percentile",
                "round-trip latency (log scale)",
            ),
            ("Replies per second and open sockets", "replies per second"),
            ("Server CPU", "CPU (% of one core)"),
            ("Server memory (RSS)", "resident memory (MB)"),
        ];
        let lines = [INK_BLUE, INK_BLUE, INK_ORANGE, INK_PURPLE];
        for ((svg, (title, y_desc)), color) in all.iter().zip(descs).zip(lines) {
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            assert!(has_text(svg, title), "{title}");
            assert!(has_text(svg, y_desc), "{title}: {y_desc}");
            assert!(
                has_text(svg, "percentile (log scale of 1/(1 − q))")
                    || has_text(svg, "time since start (s)"),
                "{title}: x axis"
            );
            assert!(line_points(svg, color) >= 19, "{title}: no line");
        }
        // Open sockets share the rate chart, on a second y axis.
        assert!(line_points(&all[1], INK_GREEN) >= 20);
        assert!(has_text(&all[1], "open sockets"));
        assert!(has_text(&all[2], "30%"), "CPU ticks are percent");
    }

    #[test]
    fn the_png_encodes_all_charts_in_a_grid() {
        let bytes = png(&example()).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let mut reader = ::png::Decoder::new(std::io::Cursor::new(&bytes))
            .read_info()
            .unwrap();
        let mut rgb = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut rgb).unwrap();
        assert_eq!(
            (info.width, info.height),
            (2 * PANEL.0, HEADLINE + 2 * PANEL.1)
        );
        assert_eq!(info.color_type, ::png::ColorType::Rgb);
        let pixels: Vec<&[u8]> = rgb.chunks(3).collect();
        let ink = pixels.iter().filter(|p| **p != [255, 255, 255]).count();
        assert!(ink > pixels.len() / 100, "blank: {ink} pixels of ink");
        // Each chart's line is drawn in its own colour.
        for (name, c) in [
            ("latency/rate", INK_BLUE),
            ("sockets", INK_GREEN),
            ("cpu", INK_ORANGE),
            ("rss", INK_PURPLE),
        ] {
            let n = pixels.iter().filter(|p| **p == [c.0, c.1, c.2]).count();
            assert!(n > 300, "{name}: {n} pixels");
        }
    }

    #[test]
    fn a_report_with_nothing_to_chart_still_makes_a_png() {
        let mut r = example();
        r.rtt_histogram.clear();
        r.series.truncate(1);
        assert!(svgs(&r).unwrap().is_empty());
        let bytes = png(&r).unwrap();
        assert_eq!(&bytes[..4], b"\x89PNG");
    }

    #[test]
    fn latency_ticks_follow_the_1_2_5_ladder() {
        assert_eq!(
            log_ticks(60.0, 3_000.0),
            [50.0, 100.0, 200.0, 500.0, 1e3, 2e3, 5e3]
        );
        assert_eq!(log_ticks(100.0, 1_000.0), [100.0, 200.0, 500.0, 1e3]);
        // Six decades: only powers of ten, ends included.
        let wide = log_ticks(3.0, 2e6);
        assert_eq!(wide, [2.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 2e6]);
        // One value: a range around it.
        assert_eq!(log_ticks(70.0, 70.0), [20.0, 50.0, 100.0, 200.0]);
    }

    #[test]
    fn labels_read_short() {
        assert_eq!(us_label(250.0), "250 µs");
        assert_eq!(us_label(0.5), "0.5 µs");
        assert_eq!(us_label(1_500.0), "1.5 ms");
        assert_eq!(us_label(20_000.0), "20 ms");
        assert_eq!(us_label(2e6), "2 s");
        assert_eq!(count_label(950.0), "950");
        assert_eq!(count_label(12_000.0), "12k");
        assert_eq!(count_label(1_500_000.0), "1.5M");
        assert_eq!(trim(2.50), "2.5");
        assert_eq!(trim(40.0), "40");
    }
}
