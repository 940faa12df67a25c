//! Plain tables rendered two ways: aligned text for the terminal and Markdown for the report.

/// A table of strings with a header row; numeric-looking cells are right-aligned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

fn is_numeric(s: &str) -> bool {
    let t = s.trim_end_matches('%').trim_start_matches(['+', '-']);
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | ',' | ' ' | '±'))
}

impl Table {
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push<S: Into<String>>(&mut self, row: impl IntoIterator<Item = S>) {
        self.rows.push(row.into_iter().map(Into::into).collect());
    }

    /// Columns (after the first) whose cells are all numbers, blanks or dashes: right-aligned.
    fn numeric_columns(&self) -> Vec<bool> {
        (0..self.header.len())
            .map(|i| {
                i > 0
                    && !self.rows.is_empty()
                    && self.rows.iter().all(|r| {
                        r.get(i)
                            .is_none_or(|c| c.is_empty() || c == "-" || is_numeric(c))
                    })
            })
            .collect()
    }

    fn widths(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < w.len() {
                    w[i] = w[i].max(cell.chars().count());
                }
            }
        }
        w
    }

    /// Aligned text, two spaces between columns.
    pub fn render(&self) -> String {
        let w = self.widths();
        let numeric = self.numeric_columns();
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let pad = " ".repeat(w[i].saturating_sub(c.chars().count()));
                    if numeric[i] {
                        format!("{pad}{c}")
                    } else {
                        format!("{c}{pad}")
                    }
                })
                .collect();
            parts.join("  ").trim_end().to_string()
        };
        let mut out = line(&self.header);
        out.push('\n');
        out.push_str(
            &w.iter()
                .map(|&n| "-".repeat(n))
                .collect::<Vec<_>>()
                .join("  "),
        );
        for row in &self.rows {
            out.push('\n');
            out.push_str(&line(row));
        }
        out.push('\n');
        out
    }

    /// A GitHub-flavoured Markdown table.
    pub fn markdown(&self) -> String {
        let esc = |s: &String| s.replace('|', "\\|");
        let mut out = format!(
            "| {} |\n",
            self.header.iter().map(esc).collect::<Vec<_>>().join(" | ")
        );
        let align: Vec<&str> = self
            .numeric_columns()
            .iter()
            .map(|&n| if n { "---:" } else { "---" })
            .collect();
        out.push_str(&format!("|{}|\n", align.join("|")));
        for row in &self.rows {
            out.push_str(&format!(
                "| {} |\n",
                row.iter().map(esc).collect::<Vec<_>>().join(" | ")
            ));
        }
        out
    }
}

/// `0.8812` as `88.12%`.
pub fn pct(v: f64) -> String {
    format!("{:.2}%", 100.0 * v)
}

/// `12345.6` as `12,346`.
pub fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0.0 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_markdown() {
        let mut t = Table::new(["class", "acc"]);
        t.push(["Shirt", "61.20%"]);
        t.push(["T-shirt/top", "85.00%"]);
        assert_eq!(
            t.render(),
            "class           acc\n-----------  ------\nShirt        61.20%\nT-shirt/top  85.00%\n"
        );
        assert_eq!(
            t.markdown(),
            "| class | acc |\n|---|---:|\n| Shirt | 61.20% |\n| T-shirt/top | 85.00% |\n"
        );
    }

    #[test]
    fn number_formats() {
        assert_eq!(pct(0.88123), "88.12%");
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
