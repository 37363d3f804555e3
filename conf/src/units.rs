//! libvirt's scaled integers: the `unit` attribute of sizes in XML and virsh's size arguments
//! (`8G`, `512MiB`, `100KB`). One parser for both, so a size means the same everywhere.

use crate::ConfError;

/// Parses `text` as a number with an optional unit suffix; a bare number is in units of
/// `default_scale` bytes (1 for virsh's volume sizes, 1024 for KiB fields).
/// `k`/`KiB` = 1024, `KB` = 1000, and likewise M, G, T, P, E; `b`/`bytes` = 1.
pub fn parse_scaled(text: &str, default_scale: u64, field: &str) -> Result<u64, ConfError> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(ConfError::new(field, format!("'{text}' is not a size")));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| ConfError::new(field, format!("'{text}' is too large")))?;
    let scale = scale_of(suffix.trim(), default_scale)
        .ok_or_else(|| ConfError::new(field, format!("unknown unit '{suffix}' in '{text}'")))?;
    number
        .checked_mul(scale)
        .ok_or_else(|| ConfError::new(field, format!("'{text}' overflows 64 bits")))
}

/// The multiplier of a unit suffix as libvirt spells them (case-insensitive letter, then nothing
/// or `iB` for powers of 1024, `B` for powers of 1000).
pub fn scale_of(unit: &str, default_scale: u64) -> Option<u64> {
    if unit.is_empty() {
        return Some(default_scale);
    }
    let lower = unit.to_ascii_lowercase();
    if lower == "b" || lower == "byte" || lower == "bytes" {
        return Some(1);
    }
    let mut chars = lower.chars();
    let power = match chars.next()? {
        'k' => 1,
        'm' => 2,
        'g' => 3,
        't' => 4,
        'p' => 5,
        'e' => 6,
        _ => return None,
    };
    let base: u64 = match chars.as_str() {
        "" | "ib" => 1024,
        "b" => 1000,
        _ => return None,
    };
    Some(base.pow(power))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_follow_libvirt() {
        assert_eq!(parse_scaled("8G", 1, "f").unwrap(), 8 << 30);
        assert_eq!(parse_scaled("512MiB", 1, "f").unwrap(), 512 << 20);
        assert_eq!(parse_scaled("100KB", 1, "f").unwrap(), 100_000);
        assert_eq!(parse_scaled("100k", 1, "f").unwrap(), 102_400);
        assert_eq!(parse_scaled("4096", 1, "f").unwrap(), 4096);
        assert_eq!(parse_scaled("4", 1024, "f").unwrap(), 4096);
        assert_eq!(parse_scaled("7 bytes", 1024, "f").unwrap(), 7);
    }

    #[test]
    fn bad_sizes_name_the_field() {
        let err = parse_scaled("16E", 1, "capacity").unwrap_err();
        assert_eq!(err.field, "capacity");
        assert!(parse_scaled("12Q", 1, "capacity").is_err());
        assert!(parse_scaled("-1", 1, "capacity").is_err());
        assert!(parse_scaled("", 1, "capacity").is_err());
    }
}
