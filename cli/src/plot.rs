//! A self-contained SVG of an adapt job's online error along the stream: one line per method,
//! domain boundaries marked and labelled. No fonts or scripts from anywhere else.

use attune_engine::jobs::{AdaptResult, SampleResult};
use std::fmt::Write;

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// Moving average over `w` batches (centered, shrinking at the ends), to make trends readable.
fn smooth(v: &[f64], w: usize) -> Vec<f64> {
    let h = w / 2;
    (0..v.len())
        .map(|i| {
            let (a, b) = (i.saturating_sub(h), (i + h + 1).min(v.len()));
            v[a..b].iter().sum::<f64>() / (b - a) as f64
        })
        .collect()
}

pub fn error_svg(r: &AdaptResult) -> String {
    let (w, h) = (1000.0, 420.0);
    let (left, right, top, bottom) = (60.0, 150.0, 40.0, 90.0);
    let steps = r
        .methods
        .first()
        .map(|m| m.batches.len())
        .unwrap_or(0)
        .max(1);
    let ymax = r
        .methods
        .iter()
        .flat_map(|m| m.batches.iter().map(|b| b.error))
        .fold(0.1f64, f64::max)
        .min(1.0);
    let ymax = (ymax * 10.0).ceil() / 10.0;
    let x = |s: f64| left + (w - left - right) * s / steps as f64;
    let y = |e: f64| top + (h - top - bottom) * (1.0 - e / ymax);
    let mut s = String::new();
    writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    )
    .ok();
    writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#).ok();
    writeln!(
        s,
        r#"<text x="{left}" y="22" font-size="14">Online error per batch ({} batches of {}, severity {}, {:?}; 5-batch moving average within each domain)</text>"#,
        steps, r.stream.batch_size, r.stream.severity, r.stream.setting
    )
    .ok();
    // Axes and horizontal grid.
    for k in 0..=5 {
        let e = ymax * k as f64 / 5.0;
        writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{:.0}%</text>"##,
            w - right,
            left - 6.0,
            y(e) + 4.0,
            100.0 * e,
            y = y(e)
        )
        .ok();
    }
    // Segment (domain) boundaries.
    let mut start = 0usize;
    for d in &r.stream.segments {
        let n = d.batches;
        let (x0, x1) = (x(start as f64), x((start + n) as f64));
        writeln!(s, r##"<line x1="{x0:.1}" x2="{x0:.1}" y1="{top}" y2="{}" stroke="#999" stroke-dasharray="3,3"/>"##, h - bottom).ok();
        let xm = (x0 + x1) / 2.0;
        writeln!(
            s,
            r#"<text x="{xm:.1}" y="{:.1}" transform="rotate(45 {xm:.1} {:.1})">{}</text>"#,
            h - bottom + 12.0,
            h - bottom + 12.0,
            d.name
        )
        .ok();
        start += n;
    }
    // One line per method.
    for (mi, m) in r.methods.iter().enumerate() {
        let color = COLORS[mi % COLORS.len()];
        // Smooth within each domain only, so a shift shows as a step, not a ramp.
        let mut smoothed = Vec::with_capacity(m.batches.len());
        for si in 0..r.stream.segments.len() {
            let errs: Vec<f64> = m
                .batches
                .iter()
                .filter(|b| b.segment == si)
                .map(|b| b.error)
                .collect();
            smoothed.extend(smooth(&errs, 5));
        }
        let pts: Vec<String> = smoothed
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{:.1},{:.1}", x(i as f64 + 0.5), y(*e)))
            .collect();
        writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            pts.join(" ")
        )
        .ok();
        let ly = top + 16.0 * mi as f64;
        writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{} ({:.1}%)</text>"#,
            w - right + 10.0,
            w - right + 30.0,
            w - right + 35.0,
            ly + 4.0,
            m.name,
            100.0 * m.mean.error
        )
        .ok();
    }
    s.push_str("</svg>\n");
    s
}

/// A self-contained SVG of a sample job's pass@k curve (k on a log2 axis): all problems, each
/// difficulty level, and the selection strategies' accuracies as dashed levels.
pub fn pass_at_k_svg(r: &SampleResult) -> String {
    let (w, h) = (760.0, 420.0);
    let (left, right, top, bottom) = (60.0, 200.0, 40.0, 50.0);
    let kmax = r.n.max(2) as f64;
    let x = |k: f64| left + (w - left - right) * k.log2() / kmax.log2();
    let y = |v: f64| top + (h - top - bottom) * (1.0 - v);
    let mut s = String::new();
    writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    )
    .ok();
    writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#).ok();
    writeln!(
        s,
        r#"<text x="{left}" y="22" font-size="14">pass@k, {} problems ({}), N = {}, {}</text>"#,
        r.problems, r.source, r.n, r.model.path
    )
    .ok();
    for i in 0..=5 {
        let v = i as f64 / 5.0;
        writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{:.0}%</text>"##,
            w - right, y(v), y(v), left - 6.0, y(v) + 4.0, 100.0 * v
        )
        .ok();
    }
    let mut k = 1usize;
    while k <= r.n {
        writeln!(
            s,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{top}" y2="{}" stroke="#eee"/><text x="{:.1}" y="{}" text-anchor="middle">{k}</text>"##,
            x(k as f64), x(k as f64), h - bottom, x(k as f64), h - bottom + 16.0
        )
        .ok();
        k *= 2;
    }
    writeln!(
        s,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">k (samples)</text>"#,
        (left + w - right) / 2.0,
        h - 12.0
    )
    .ok();
    let mut series: Vec<(String, Vec<f64>)> =
        vec![("all".into(), r.pass_at_k.iter().map(|p| p.value).collect())];
    if r.by_difficulty.len() > 1 {
        for d in &r.by_difficulty {
            series.push((
                format!("difficulty {}", d.difficulty),
                d.pass_at_k.iter().map(|p| p.value).collect(),
            ));
        }
    }
    let mut ly = top + 6.0;
    for (i, (name, v)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<String> = v
            .iter()
            .enumerate()
            .map(|(j, p)| format!("{:.1},{:.1}", x((j + 1) as f64), y(*p)))
            .collect();
        let width = if i == 0 { 2.5 } else { 1.2 };
        writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="{width}" points="{}"/>"#,
            pts.join(" ")
        )
        .ok();
        writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly:.1}" y2="{ly:.1}" stroke="{c}" stroke-width="{width}"/><text x="{}" y="{:.1}">{name}</text>"#,
            w - right + 12.0, w - right + 32.0, w - right + 38.0, ly + 4.0
        )
        .ok();
        ly += 16.0;
    }
    ly += 8.0;
    for (i, sel) in r.selection.iter().enumerate() {
        let c = COLORS[(i + 4) % COLORS.len()];
        writeln!(
            s,
            r#"<line x1="{left}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="{c}" stroke-dasharray="5,4"/>"#,
            w - right, y(sel.accuracy), y(sel.accuracy)
        )
        .ok();
        writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly:.1}" y2="{ly:.1}" stroke="{c}" stroke-dasharray="5,4"/><text x="{}" y="{:.1}">{} {:.1}%</text>"#,
            w - right + 12.0, w - right + 32.0, w - right + 38.0, ly + 4.0, sel.strategy, 100.0 * sel.accuracy
        )
        .ok();
        ly += 16.0;
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_by_hand() {
        assert_eq!(smooth(&[0.0, 3.0, 6.0, 9.0], 3), vec![1.5, 3.0, 6.0, 7.5]);
    }
}
