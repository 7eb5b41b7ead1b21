//! `ioat-ctl bench --svg`: bandwidth against transfer size, drawn with the shared SVG writer
//! (`crate::svg`).

use super::bench::{BenchReport, SizeResult};
use super::size_str;
use crate::svg::Svg;

/// Bandwidth (GB/s, linear) against transfer size (log2 axis): DMA and CPU lines, and the
/// crossover marked.
pub fn render(rep: &BenchReport) -> String {
    let (w, h) = (760.0f64, 440.0f64);
    let (l, r, t, b) = (70.0, 20.0, 50.0, 60.0);
    let pw = w - l - r;
    let ph = h - t - b;
    let rs = &rep.results;
    let mut s = Svg::new(w, h);
    let title = format!(
        "ioat-ctl bench {} (channel {}){}",
        rep.device,
        rep.channel,
        if rep.simulated {
            " \u{2014} SIMULATED timing"
        } else {
            ""
        }
    );
    s.text(w / 2.0, 22.0, "middle", "font-size=\"15\"", &title);
    if rs.is_empty() {
        return s.finish();
    }
    let x0 = (rs[0].size as f64).log2();
    let x1 = (rs[rs.len() - 1].size as f64).log2().max(x0 + 1.0);
    let ymax = rs
        .iter()
        .flat_map(|r| [r.dma_gbps, r.cpu_gbps])
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.1;
    let px = |size: u64| l + ((size as f64).log2() - x0) / (x1 - x0) * pw;
    let py = |v: f64| t + ph - v / ymax * ph;
    // Axes and grid.
    s.line((l, t + ph), (l + pw, t + ph), "black", "");
    s.line((l, t), (l, t + ph), "black", "");
    for i in 0..=5 {
        let v = ymax / 1.1 * i as f64 / 5.0;
        let y = py(v);
        s.line((l, y), (l + pw, y), "#ddd", "");
        s.text(l - 6.0, y + 4.0, "end", "", &format!("{v:.2}"));
    }
    for r in rs {
        let x = px(r.size);
        s.line((x, t + ph), (x, t + ph + 4.0), "black", "");
        let ty = t + ph + 16.0;
        s.text(
            x,
            ty,
            "end",
            &format!("transform=\"rotate(-35 {x:.1} {ty:.1})\""),
            &size_str(r.size),
        );
    }
    s.text(l + pw / 2.0, h - 8.0, "middle", "", "transfer size");
    let my = t + ph / 2.0;
    s.text(
        16.0,
        my,
        "middle",
        &format!("transform=\"rotate(-90 16 {my:.1})\""),
        "bandwidth (GB/s)",
    );
    // Crossover marker.
    if let Some(c) = rep.crossover_bytes {
        let x = px(c);
        s.line((x, t), (x, t + ph), "#888", "stroke-dasharray=\"4 3\"");
        s.text(
            x + 4.0,
            t + 12.0,
            "start",
            "fill=\"#555\"",
            &format!("crossover {}", size_str(c)),
        );
    }
    type Get = fn(&SizeResult) -> f64;
    let series: [(&str, &str, Get); 2] = [
        ("DMA", "#d62728", |r| r.dma_gbps),
        ("CPU memcpy", "#1f77b4", |r| r.cpu_gbps),
    ];
    for (name, color, f) in series {
        let pts: Vec<(f64, f64)> = rs.iter().map(|r| (px(r.size), py(f(r)))).collect();
        s.polyline(&pts, color, 2.0);
        for &(x, y) in &pts {
            s.circle(x, y, 2.5, color);
        }
        let ly = if name == "DMA" { t + 8.0 } else { t + 24.0 };
        s.line(
            (l + pw - 130.0, ly),
            (l + pw - 110.0, ly),
            color,
            "stroke-width=\"2\"",
        );
        s.text(l + pw - 104.0, ly + 4.0, "start", "", name);
    }
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_lines_and_the_crossover() {
        let results = (6..=10)
            .map(|k| SizeResult {
                size: 1 << k,
                batch: 1,
                dma_gbps: k as f64,
                cpu_gbps: 8.0,
                dma_latency_us: 1.0,
                cpu_latency_us: 1.0,
                dma_submit_ns: 100.0,
                ratio: k as f64 / 8.0,
            })
            .collect();
        let rep = BenchReport {
            device: "model <skx>".into(),
            channel: 0,
            simulated: true,
            model_timing: None,
            results,
            crossover_bytes: Some(256),
            crossover_cpu_cost_bytes: Some(64),
            cold: false,
        };
        let s = render(&rep);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("crossover 256 B"));
        assert!(s.contains("model &lt;skx&gt;"), "title is escaped");
        assert!(s.contains("SIMULATED"));
    }
}
