//! Byte sizes as people type them: `1GiB`, `512Mi`, `10G`, `1.5GiB`, `1073741824`.
//!
//! Binary suffixes (`Ki`, `Mi`, `Gi`, `Ti`, with or without a trailing `B`) are powers
//! of 1024; bare SI suffixes (`k`, `M`, `G`, `T`, optionally `B`) are powers of 1000, as
//! in Kubernetes quantities.

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("empty size")]
    Empty,
    #[error(
        "{0:?} is not a number followed by an optional unit (B, KiB, MiB, GiB, TiB, k, M, G, T)"
    )]
    Malformed(String),
    #[error("unknown size unit {0:?}")]
    UnknownUnit(String),
    #[error("{0:?} is not a whole number of bytes")]
    Fractional(String),
    #[error("{0:?} is too large")]
    Overflow(String),
    #[error("a volume size must be greater than zero")]
    Zero,
}

fn unit_multiplier(unit: &str) -> Option<u64> {
    let unit = unit.to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    Some(match unit {
        "" => 1,
        "ki" => 1 << 10,
        "mi" => 1 << 20,
        "gi" => 1 << 30,
        "ti" => 1 << 40,
        "k" => 1_000,
        "m" => 1_000_000,
        "g" => 1_000_000_000,
        "t" => 1_000_000_000_000,
        _ => return None,
    })
}

/// Parses a positive byte count.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SizeError::Empty);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(SizeError::Malformed(text.into()));
    }
    let multiplier =
        unit_multiplier(unit.trim()).ok_or_else(|| SizeError::UnknownUnit(unit.trim().into()))?;

    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if number == "." || fraction.contains('.') {
        return Err(SizeError::Malformed(text.into()));
    }
    let overflow = || SizeError::Overflow(text.into());
    let malformed = || SizeError::Malformed(text.into());
    // Integer arithmetic throughout, so `1.5GiB` is exact and nothing is rounded.
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| malformed())?
    };
    let mut bytes = whole
        .checked_mul(u128::from(multiplier))
        .ok_or_else(overflow)?;
    if !fraction.is_empty() {
        let digits = u32::try_from(fraction.len()).map_err(|_| malformed())?;
        let scale = 10u128.checked_pow(digits).ok_or_else(overflow)?;
        let numerator: u128 = fraction.parse().map_err(|_| malformed())?;
        let scaled = numerator
            .checked_mul(u128::from(multiplier))
            .ok_or_else(overflow)?;
        if scaled % scale != 0 {
            return Err(SizeError::Fractional(text.into()));
        }
        bytes = bytes.checked_add(scaled / scale).ok_or_else(overflow)?;
    }
    let bytes = u64::try_from(bytes).map_err(|_| overflow())?;
    // CSI sizes travel as int64.
    if bytes > i64::MAX as u64 {
        return Err(overflow());
    }
    if bytes == 0 {
        return Err(SizeError::Zero);
    }
    Ok(bytes)
}

/// Formats a byte count with the largest binary unit that keeps it readable.
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, size) in UNITS {
            if self.0 >= size {
                #[allow(clippy::cast_precision_loss)] // display only
                return write!(f, "{:.1} {name}", self.0 as f64 / size as f64);
            }
        }
        write!(f, "{} B", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_units() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        assert_eq!(parse_size("1gib"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4 KiB"), Ok(4096));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("10k"), Ok(10_000));
        assert_eq!(parse_size("1073741824"), Ok(1 << 30));
        assert_eq!(parse_size("123B"), Ok(123));
    }

    #[test]
    fn exact_fractions() {
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size(".5Ki"), Ok(512));
        assert_eq!(parse_size("0.25MiB"), Ok(256 << 10));
        assert_eq!(
            parse_size("1.5B"),
            Err(SizeError::Fractional("1.5B".into()))
        );
        assert_eq!(
            parse_size("1.0000000001Ki"),
            Err(SizeError::Fractional("1.0000000001Ki".into()))
        );
    }

    #[test]
    fn bad_input_is_rejected() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("   "), Err(SizeError::Empty));
        assert_eq!(parse_size("GiB"), Err(SizeError::Malformed("GiB".into())));
        assert_eq!(parse_size("."), Err(SizeError::Malformed(".".into())));
        assert_eq!(
            parse_size("1.2.3G"),
            Err(SizeError::Malformed("1.2.3G".into()))
        );
        assert_eq!(
            parse_size("1 parsec"),
            Err(SizeError::UnknownUnit("parsec".into()))
        );
        assert_eq!(
            parse_size("1XiB"),
            Err(SizeError::UnknownUnit("XiB".into()))
        );
        assert_eq!(parse_size("-1G"), Err(SizeError::Malformed("-1G".into())));
        assert_eq!(parse_size("0"), Err(SizeError::Zero));
        assert_eq!(parse_size("0GiB"), Err(SizeError::Zero));
        assert_eq!(
            parse_size("8EiB"),
            Err(SizeError::UnknownUnit("EiB".into()))
        );
        assert_eq!(
            parse_size("9000000TiB"),
            Err(SizeError::Overflow("9000000TiB".into()))
        );
        assert_eq!(
            parse_size("99999999999999999999999999999999999999999"),
            Err(SizeError::Malformed(
                "99999999999999999999999999999999999999999".into()
            ))
        );
    }

    #[test]
    fn display_picks_a_readable_unit() {
        assert_eq!(Bytes(1 << 30).to_string(), "1.0 GiB");
        assert_eq!(Bytes(3 << 29).to_string(), "1.5 GiB");
        assert_eq!(Bytes(5 << 20).to_string(), "5.0 MiB");
        assert_eq!(Bytes(100).to_string(), "100 B");
    }
}
