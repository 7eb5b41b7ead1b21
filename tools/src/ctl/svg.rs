//! A small hand-written SVG line plot of the bench results (no plotting crate).

use super::bench::BenchReport;
use super::size_str;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Bandwidth (GB/s, linear) against transfer size (log2 axis): DMA and CPU lines, and the
/// crossover marked.
pub fn render(rep: &BenchReport) -> String {
    let (w, h) = (760.0f64, 440.0f64);
    let (l, r, t, b) = (70.0, 20.0, 50.0, 60.0);
    let pw = w - l - r;
    let ph = h - t - b;
    let rs = &rep.results;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
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
    s.push_str(&format!(
        "<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        w / 2.0,
        esc(&title)
    ));
    if rs.is_empty() {
        s.push_str("</svg>\n");
        return s;
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
    s.push_str(&format!(
        "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>\n",
        t + ph,
        l + pw,
        t + ph,
        t + ph
    ));
    for i in 0..=5 {
        let v = ymax / 1.1 * i as f64 / 5.0;
        let y = py(v);
        s.push_str(&format!(
            "<line x1=\"{l}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2}</text>\n",
            l + pw,
            l - 6.0,
            y + 4.0
        ));
    }
    for r in rs {
        let x = px(r.size);
        s.push_str(&format!(
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"black\"/>\n<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"end\" transform=\"rotate(-35 {x:.1} {})\">{}</text>\n",
            t + ph,
            t + ph + 4.0,
            t + ph + 16.0,
            t + ph + 16.0,
            esc(&size_str(r.size))
        ));
    }
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">transfer size</text>\n<text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">bandwidth (GB/s)</text>\n",
        l + pw / 2.0,
        h - 8.0,
        t + ph / 2.0,
        t + ph / 2.0
    ));
    // Crossover marker.
    if let Some(c) = rep.crossover_bytes {
        let x = px(c);
        s.push_str(&format!(
            "<line x1=\"{x:.1}\" y1=\"{t}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>\n<text x=\"{:.1}\" y=\"{}\" fill=\"#555\">crossover {}</text>\n",
            t + ph,
            x + 4.0,
            t + 12.0,
            esc(&size_str(c))
        ));
    }
    for (name, color, f) in [
        (
            "DMA",
            "#d62728",
            (|r: &super::bench::SizeResult| r.dma_gbps) as fn(&_) -> f64,
        ),
        ("CPU memcpy", "#1f77b4", |r: &super::bench::SizeResult| {
            r.cpu_gbps
        }),
    ] {
        let pts: Vec<String> = rs
            .iter()
            .map(|r| format!("{:.1},{:.1}", px(r.size), py(f(r))))
            .collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            pts.join(" ")
        ));
        for r in rs {
            s.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{color}\"/>\n",
                px(r.size),
                py(f(r))
            ));
        }
        let ly = if name == "DMA" { t + 8.0 } else { t + 24.0 };
        s.push_str(&format!(
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/>\n<text x=\"{}\" y=\"{}\">{}</text>\n",
            l + pw - 130.0,
            l + pw - 110.0,
            l + pw - 104.0,
            ly + 4.0,
            esc(name)
        ));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::super::bench::{BenchReport, SizeResult};
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
