//! Rendering: aligned tables, JSON, YAML.

use serde::Serialize;

use super::OutputFormat;

/// Aligns `rows` under `headers` (two spaces between columns, no trailing blanks).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&header).chain(rows.iter()) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let pad = widths[i] - c.chars().count();
                line.push_str(c);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Renders `value` as JSON or YAML, or with `table_fn` for tables.
pub fn render<T: Serialize>(
    format: OutputFormat,
    value: &T,
    table_fn: impl FnOnce(&T) -> String,
) -> anyhow::Result<String> {
    Ok(match format {
        OutputFormat::Table => table_fn(value),
        OutputFormat::Json => serde_json::to_string_pretty(value)? + "\n",
        OutputFormat::Yaml => serde_saphyr::to_string(value)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let t = table(
            &["NAME", "IP"],
            &[
                vec!["a".into(), "10.0.0.1".into()],
                vec!["longer".into(), "10.0.0.22".into()],
            ],
        );
        assert_eq!(t, "NAME    IP\na       10.0.0.1\nlonger  10.0.0.22\n");
    }

    #[test]
    fn json_and_yaml_render() {
        #[derive(Serialize)]
        struct X {
            a: u32,
        }
        let j = render(OutputFormat::Json, &X { a: 1 }, |_| unreachable!()).unwrap();
        assert!(j.contains("\"a\": 1"));
        let y = render(OutputFormat::Yaml, &X { a: 1 }, |_| unreachable!()).unwrap();
        assert!(y.contains("a: 1"));
    }
}
