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

/// A table as virsh draws one: a header, a rule of dashes, the rows, then an empty line.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
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
    println!("{}", line(headers.to_vec()));
    println!("{}", "-".repeat(widths.iter().map(|width| width + 3).sum()));
    for row in rows {
        println!("{}", line(row.iter().map(String::as_str).collect()));
    }
    println!();
}
