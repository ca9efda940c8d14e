//! Sizes as Kubernetes and humans write them, for the driver's flags and inline-volume
//! attributes and for the operator's validation of the same values.

/// Sizes as Kubernetes and humans write them: `1073741824`, `1Gi`, `1GiB`, `500M`, `2G`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 1GiB, 512Mi, 1073741824)"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "KB" => 1000,
        "Ki" | "KiB" => 1 << 10,
        "M" | "MB" => 1000_u64.pow(2),
        "Mi" | "MiB" => 1 << 20,
        "G" | "GB" => 1000_u64.pow(3),
        "Gi" | "GiB" => 1 << 30,
        "T" | "TB" => 1000_u64.pow(4),
        "Ti" | "TiB" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?}")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} does not fit in 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        assert_eq!(parse_size("512M"), Ok(512_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1XB").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }
}
