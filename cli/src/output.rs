//! How results are printed: virsh's layouts for people, proto3 JSON for scripts.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn print_error(message: &str) {
    eprintln!("error: {message}");
}

/// Prints a gRPC failure as virsh prints errors.
pub fn print_status(status: &tonic::Status) {
    print_error(status.message());
}

pub fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(err) => print_error(&format!("cannot encode JSON: {err}")),
    }
}

/// `label:` padded to virsh's 21 columns, then the value (nodeinfo, pool-info ...).
pub fn print_fields(fields: &[(&str, String)]) {
    print_fields_at(21, fields);
}

/// `label:` padded to `width` columns (dominfo uses 16, vcpuinfo 15), then the value.
pub fn print_fields_at(width: usize, fields: &[(&str, String)]) {
    for (label, value) in fields {
        println!("{:<width$}{value}", format!("{label}:"));
    }
}

/// XML as it is for people, the whole message as JSON for scripts (dumpxml and friends).
pub fn print_xml<T: Serialize>(format: Format, message: &T, xml: &str) {
    match format {
        Format::Json => print_json(message),
        Format::Table => print!("{xml}"),
    }
}

/// A table as virsh draws one: a header, a rule of dashes, the rows, then an empty line.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", format_table(headers, rows));
}

/// The text `print_table` prints.
pub fn format_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(column, header)| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .fold(header.len(), usize::max)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!(" {}", padded.join("   ")).trim_end().to_string()
    };
    let mut text = line(headers.to_vec());
    text.push('\n');
    text.push_str(&"-".repeat(widths.iter().map(|width| width + 3).sum()));
    text.push('\n');
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
        text.push('\n');
    }
    text.push('\n');
    text
}

/// A byte count as virsh shows sizes: two decimals in the largest binary unit below it
/// ("512.00 B", "9.78 GiB").
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// One progress line: `label: [ 45 %] 450.00 MiB of 1.00 GiB, 120.3 MiB/s`; without a known
/// total only the bytes and the rate.
pub fn progress_text(label: &str, done_bytes: u64, total_bytes: u64, elapsed_s: f64) -> String {
    let rate = if elapsed_s > 0.0 {
        done_bytes as f64 / elapsed_s / (1024.0 * 1024.0)
    } else {
        0.0
    };
    if total_bytes == 0 {
        return format!("{label}: {}, {rate:.1} MiB/s", human_size(done_bytes));
    }
    let percent = (done_bytes as f64 / total_bytes as f64 * 100.0).min(100.0);
    format!(
        "{label}: [{percent:3.0} %] {} of {}, {rate:.1} MiB/s",
        human_size(done_bytes),
        human_size(total_bytes)
    )
}

/// Progress of a long operation on stderr, one line redrawn with '\r', only when stderr is a
/// terminal: scripts read stdout and must see nothing extra.
pub struct ProgressLine {
    label: String,
    enabled: bool,
    started: std::time::Instant,
    last_drawn: Option<std::time::Instant>,
    open: bool,
}

impl ProgressLine {
    /// Redraws at most this often; a terminal needs no more.
    const INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

    pub fn new(label: &str) -> ProgressLine {
        ProgressLine {
            label: label.to_string(),
            enabled: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            started: std::time::Instant::now(),
            last_drawn: None,
            open: false,
        }
    }

    pub fn update(&mut self, done_bytes: u64, total_bytes: u64) {
        if !self.enabled
            || self
                .last_drawn
                .is_some_and(|at| at.elapsed() < Self::INTERVAL)
        {
            return;
        }
        self.draw(done_bytes, total_bytes);
    }

    /// Draws the final state and ends the line.
    pub fn finish(&mut self, done_bytes: u64, total_bytes: u64) {
        if self.enabled {
            self.draw(done_bytes, total_bytes);
            self.end_line();
        }
    }

    fn draw(&mut self, done_bytes: u64, total_bytes: u64) {
        let text = progress_text(
            &self.label,
            done_bytes,
            total_bytes,
            self.started.elapsed().as_secs_f64(),
        );
        // \x1b[K clears what a longer earlier line left behind.
        eprint!("\r{text}\x1b[K");
        self.last_drawn = Some(std::time::Instant::now());
        self.open = true;
    }

    fn end_line(&mut self) {
        if self.open {
            eprintln!();
            self.open = false;
        }
    }
}

impl Drop for ProgressLine {
    /// An error message after an interrupted operation starts on its own line.
    fn drop(&mut self) {
        self.end_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_virsh() {
        assert_eq!(human_size(0), "0.00 B");
        assert_eq!(human_size(1023), "1023.00 B");
        assert_eq!(human_size(1024), "1.00 KiB");
        assert_eq!(human_size(10_501_771_264), "9.78 GiB");
        assert_eq!(human_size(8 << 40), "8.00 TiB");
        assert_eq!(human_size(u64::MAX), "16.00 EiB");
    }

    #[test]
    fn tables_pad_columns() {
        let rows = vec![
            vec![
                "default".to_string(),
                "active".to_string(),
                "yes".to_string(),
            ],
            vec!["p".to_string(), "inactive".to_string(), "no".to_string()],
        ];
        assert_eq!(
            format_table(&["Name", "State", "Autostart"], &rows),
            " Name      State      Autostart\n\
             ---------------------------------\n\
             \x20default   active     yes\n\
             \x20p         inactive   no\n\n"
        );
    }

    #[test]
    fn progress_lines() {
        assert_eq!(
            progress_text("Upload", 512 << 20, 1 << 30, 2.0),
            "Upload: [ 50 %] 512.00 MiB of 1.00 GiB, 256.0 MiB/s"
        );
        assert_eq!(
            progress_text("Wipe", 1 << 20, 0, 0.0),
            "Wipe: 1.00 MiB, 0.0 MiB/s"
        );
    }
}
