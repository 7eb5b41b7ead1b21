//! A small hand-written SVG writer (no plotting crate), shared by `ioat-ctl bench --svg` (a line
//! plot) and `netrxd demo --svg` (bar charts).

use std::fmt::Write;

/// Escapes text for SVG content and attribute values.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An SVG document being written: a white canvas of `w` x `h` pixels, 12 px sans-serif text.
pub struct Svg {
    out: String,
}

impl Svg {
    pub fn new(w: f64, h: f64) -> Svg {
        Svg {
            out: format!(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
            ),
        }
    }

    /// Text at (x, y); `anchor` is start, middle or end; `attrs` are extra attributes
    /// (e.g. `font-size="15"`). The text is escaped.
    pub fn text(&mut self, x: f64, y: f64, anchor: &str, attrs: &str, text: &str) {
        let _ = writeln!(
            self.out,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{anchor}\" {attrs}>{}</text>",
            esc(text)
        );
    }

    /// A line; `attrs` are extra attributes (e.g. `stroke-width="2"`).
    pub fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str, attrs: &str) {
        let _ = writeln!(
            self.out,
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"{stroke}\" {attrs}/>"
        );
    }

    /// A filled rectangle.
    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str) {
        let _ = writeln!(
            self.out,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\"/>",
            w.max(0.0),
            h.max(0.0)
        );
    }

    /// A polyline through `pts`.
    pub fn polyline(&mut self, pts: &[(f64, f64)], stroke: &str, width: f64) {
        let p: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            self.out,
            "<polyline fill=\"none\" stroke=\"{stroke}\" stroke-width=\"{width}\" points=\"{}\"/>",
            p.join(" ")
        );
    }

    /// A dot.
    pub fn circle(&mut self, x: f64, y: f64, r: f64, fill: &str) {
        let _ = writeln!(
            self.out,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{r}\" fill=\"{fill}\"/>"
        );
    }

    /// Closes the document.
    pub fn finish(mut self) -> String {
        self.out.push_str("</svg>\n");
        self.out
    }
}

/// A "nice" axis maximum at or above `v` (1, 2, 2.5 or 5 times a power of ten) and its tick step.
pub fn nice_max(v: f64) -> (f64, f64) {
    let v = if v.is_finite() && v > 0.0 { v } else { 1.0 };
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v - 1e-12 {
            let max = m * p;
            let step = if m == 2.5 { 0.5 * p } else { max / 5.0 };
            return (max, step);
        }
    }
    (10.0 * p, 2.0 * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_closes() {
        let mut s = Svg::new(10.0, 10.0);
        s.text(1.0, 2.0, "start", "", "a<b & \"c\"");
        let out = s.finish();
        assert!(out.contains("a&lt;b &amp; &quot;c&quot;"), "{out}");
        assert!(out.starts_with("<svg") && out.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn nice_axis() {
        assert_eq!(nice_max(6.23), (10.0, 2.0));
        assert_eq!(nice_max(1.9), (2.0, 0.4));
        assert_eq!(nice_max(2.2), (2.5, 0.5));
        assert_eq!(nice_max(100.0), (100.0, 20.0));
        assert_eq!(nice_max(0.0), (1.0, 0.2));
    }
}
