//! The golden-file harness every XML kind shares: each `<kind>/*.in.xml` goes through `render`
//! (parse, defaults, validate, format) and must equal its `*.out.xml`; with VIREO_BLESS=1 the
//! expected files are rewritten instead. `reparse` checks that the output reads back the same.

#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};

pub fn golden_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(kind)
}

/// Compares `output` with the expected file `name` of `kind` (or writes it when blessing).
pub fn check_golden(kind: &str, name: &str, output: &str) {
    let path = golden_dir(kind).join(name);
    if std::env::var_os("VIREO_BLESS").is_some() {
        std::fs::write(&path, output).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    assert_eq!(output, expected, "{kind}/{name}: formatted XML differs");
}

/// Runs every golden input of `kind` through `render` (stem, input → definition, output) and
/// `reparse` (stem, output → definition); returns the stems, sorted.
pub fn round_trip<D: PartialEq + std::fmt::Debug>(
    kind: &str,
    render: impl Fn(&str, &str) -> (D, String),
    reparse: impl Fn(&str, &str) -> D,
) -> Vec<String> {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(golden_dir(kind)).unwrap() {
        let path = entry.unwrap().path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".in.xml"))
        else {
            continue;
        };
        let input = std::fs::read_to_string(&path).unwrap();
        let (def, output) = render(stem, &input);
        check_golden(kind, &format!("{stem}.out.xml"), &output);
        assert_eq!(
            reparse(stem, &output),
            def,
            "{stem}: the output does not parse back the same"
        );
        seen.push(stem.to_string());
    }
    seen.sort();
    seen
}
