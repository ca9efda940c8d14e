//! Kubernetes resource quantities (`2Gi`, `1073741824`, `1.5G`) as byte counts, so the
//! suite compares capacities by value: the API server may print the same size in another
//! form than the one the test requested.

/// The value of `quantity` in bytes, rounded up as Kubernetes does (`Quantity.Value()`);
/// `None` for anything that is not a non-negative quantity or does not fit a `u64`.
pub fn bytes(quantity: &str) -> Option<u64> {
    let quantity = quantity.trim();
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return None;
    }
    // value = mantissa / 10^fraction_len * numerator / denominator
    let mantissa: u128 = format!("{whole}{fraction}").parse().ok()?;
    let mut denominator = 10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    let (numerator, divisor) = multiplier(suffix)?;
    denominator = denominator.checked_mul(divisor)?;
    let scaled = mantissa.checked_mul(numerator)?;
    u64::try_from(scaled.div_ceil(denominator)).ok()
}

/// The suffix as a fraction `numerator / denominator`.
fn multiplier(suffix: &str) -> Option<(u128, u128)> {
    let binary = |power: u32| Some((1u128 << (10 * power), 1));
    let decimal = |power: u32| Some((10u128.pow(power), 1));
    match suffix {
        "" => decimal(0),
        "m" => Some((1, 1000)),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        exponent => {
            let power: i32 = exponent
                .strip_prefix(['e', 'E'])?
                .parse()
                .ok()
                .filter(|p: &i32| (-18..=18).contains(p))?;
            let scale = 10u128.pow(power.unsigned_abs());
            Some(if power >= 0 { (scale, 1) } else { (1, scale) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bytes;

    const GI: u64 = 1 << 30;

    #[test]
    fn binary_decimal_and_plain_forms_have_their_values() {
        assert_eq!(bytes("2Gi"), Some(2 * GI));
        assert_eq!(bytes("1073741824"), Some(GI));
        assert_eq!(bytes("1536Mi"), Some(GI + GI / 2));
        assert_eq!(bytes("1.5Gi"), Some(GI + GI / 2));
        assert_eq!(bytes("2G"), Some(2_000_000_000));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(bytes("+5k"), Some(5000));
    }

    #[test]
    fn fractions_of_a_byte_round_up() {
        assert_eq!(bytes("1500m"), Some(2));
        assert_eq!(bytes("0.1"), Some(1));
        assert_eq!(bytes("0"), Some(0));
    }

    #[test]
    fn malformed_or_negative_quantities_are_refused() {
        for bad in [
            "",
            "Gi",
            "-1Gi",
            "1.2.3",
            "2gi",
            "1Zi",
            "1e40",
            "99999999Ei",
        ] {
            assert_eq!(bytes(bad), None, "{bad}");
        }
    }
}
