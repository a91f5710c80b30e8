//! Formatting for people: byte counts, times, metadata, and plain-text tables.

use std::time::{SystemTime, UNIX_EPOCH};

use ckpt::Metadata;

/// `n` bytes in binary units: `812 B`, `1.3 KiB`, `48.2 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A time as UTC with milliseconds: `2025-11-25 14:06:07.123`.
pub fn utc(t: SystemTime) -> String {
    let Ok(since) = t.duration_since(UNIX_EPOCH) else {
        return "before 1970".into();
    };
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Year, month, day of the `days`-th day after 1970-01-01 (proleptic Gregorian calendar;
/// Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Checkpoint headers as a table: version, id, node, time, metadata (in the order given).
pub fn headers_table(headers: &[ckpt::CheckpointHeader]) -> Table {
    let mut table = Table::new(&[">VERSION", "ID", "NODE", "TIME (UTC)", "METADATA"]);
    for h in headers {
        table.row(vec![
            h.version.to_string(),
            h.id.to_string(),
            h.node_name.clone(),
            utc(h.timestamp),
            metadata(&h.metadata),
        ]);
    }
    table
}

/// Metadata as `key=value` pairs; strings unquoted, other values as JSON.
pub fn metadata(m: &Metadata) -> String {
    m.iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A plain-text table: a header row, then rows, columns padded to their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    /// A table with these column titles; a title starting with `>` is right-aligned (numbers).
    pub fn new(titles: &[&str]) -> Self {
        Table {
            right: titles.iter().map(|t| t.starts_with('>')).collect(),
            rows: vec![titles
                .iter()
                .map(|t| t.trim_start_matches('>').to_owned())
                .collect()],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines (no trailing newline), indented by `indent`.
    pub fn lines(&self, indent: &str) -> Vec<String> {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        self.rows
            .iter()
            .map(|row| {
                let cells: Vec<String> = row
                    .iter()
                    .enumerate()
                    .map(|(c, cell)| {
                        let w = widths[c];
                        if self.right.get(c).copied().unwrap_or(false) {
                            format!("{cell:>w$}")
                        } else {
                            format!("{cell:<w$}")
                        }
                    })
                    .collect();
                format!("{indent}{}", cells.join("  ").trim_end())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_times_and_bytes() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00:00.000");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789); // leap day 2024
        assert_eq!(utc(t), "2024-02-29 12:34:56.789");
        assert_eq!(bytes(812), "812 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 20), "5.0 MiB");
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&[">N", "NAME"]);
        t.row(vec!["10".into(), "a".into()]);
        assert_eq!(t.lines(""), [" N  NAME", "10  a"]);
    }
}
