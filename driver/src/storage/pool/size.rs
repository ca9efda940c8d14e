//! Turning a CSI capacity range into an image size.

/// Size of a volume whose request names no size.
pub const DEFAULT_SIZE: u64 = 1 << 30;
/// Sizes are rounded up to whole MiB: filesystems and loop devices align to it, and
/// it keeps capacity accounting readable.
pub const GRANULARITY: u64 = 1 << 20;
/// Loop devices work in 512-byte sectors: an exact size must be a multiple of it.
pub const SECTOR: u64 = 512;

/// A CSI capacity range; 0 means "not set".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapacityRange {
    pub required_bytes: u64,
    pub limit_bytes: u64,
}

impl CapacityRange {
    pub fn new(required_bytes: u64, limit_bytes: u64) -> Self {
        Self {
            required_bytes,
            limit_bytes,
        }
    }

    /// Whether an existing volume of `size` satisfies this range (idempotent create).
    pub fn is_satisfied_by(&self, size: u64) -> bool {
        size >= self.required_bytes && (self.limit_bytes == 0 || size <= self.limit_bytes)
    }
}

/// Why a range cannot be met.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("limit_bytes {limit} is below required_bytes {required}")]
    LimitBelowRequired { required: u64, limit: u64 },
    #[error(
        "no size of at least {minimum} bytes in whole 512-byte sectors fits limit_bytes {limit}"
    )]
    NoFit { minimum: u64, limit: u64 },
    #[error("required_bytes {0} is too large")]
    TooLarge(u64),
}

/// The image size for `range`, with `min_size` the smallest size the filesystem accepts.
///
/// Rules: nothing set -> [`DEFAULT_SIZE`]; only a limit -> the default capped at the
/// limit; the size is at least `max(required, min_size)`, rounded up to
/// [`GRANULARITY`]; when rounding would pass a nonzero limit, the limit itself (in whole
/// sectors) is used if it still covers the minimum — so `required == limit` yields
/// exactly that size.
pub fn image_size(range: CapacityRange, min_size: u64) -> Result<u64, SizeError> {
    let CapacityRange {
        required_bytes: required,
        limit_bytes: limit,
    } = range;
    if limit != 0 && limit < required {
        return Err(SizeError::LimitBelowRequired { required, limit });
    }
    let wanted = match (required, limit) {
        (0, 0) => DEFAULT_SIZE,
        (0, limit) => DEFAULT_SIZE.min(limit),
        (required, _) => required,
    };
    let minimum = wanted.max(min_size).max(SECTOR);
    let rounded = minimum
        .checked_next_multiple_of(GRANULARITY)
        .ok_or(SizeError::TooLarge(required))?;
    if limit == 0 || rounded <= limit {
        return Ok(rounded);
    }
    let capped = limit - limit % SECTOR;
    // `wanted` may have been capped below the fs minimum by the limit: then no fit.
    if capped >= minimum {
        Ok(capped)
    } else {
        Err(SizeError::NoFit { minimum, limit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn size(required: u64, limit: u64) -> Result<u64, SizeError> {
        image_size(CapacityRange::new(required, limit), MIB)
    }

    #[test]
    fn defaults_and_rounding() {
        assert_eq!(size(0, 0).unwrap(), DEFAULT_SIZE);
        assert_eq!(size(1, 0).unwrap(), MIB);
        assert_eq!(size(MIB + 1, 0).unwrap(), 2 * MIB);
        assert_eq!(size(0, 10 * MIB).unwrap(), 10 * MIB);
        assert_eq!(size(0, 4 * DEFAULT_SIZE).unwrap(), DEFAULT_SIZE);
    }

    #[test]
    fn rounding_never_exceeds_limit() {
        // Rounding up to 2 MiB would pass the limit; the limit (sector-aligned) is used.
        assert_eq!(size(MIB + 1, MIB + 4096).unwrap(), MIB + 4096);
        assert_eq!(size(MIB + 1, MIB + 1000).unwrap(), MIB + 512);
        // No sector-aligned size between required and limit.
        assert!(matches!(
            size(MIB + 1, MIB + 100),
            Err(SizeError::NoFit { .. })
        ));
    }

    #[test]
    fn exact_size_when_required_equals_limit() {
        assert_eq!(size(1_000_000_000, 1_000_000_000).unwrap(), 1_000_000_000);
        assert_eq!(size(5 * MIB, 5 * MIB).unwrap(), 5 * MIB);
    }

    #[test]
    fn out_of_range() {
        assert!(matches!(
            size(10, 5),
            Err(SizeError::LimitBelowRequired { .. })
        ));
        assert!(matches!(size(u64::MAX, 0), Err(SizeError::TooLarge(_))));
        // Filesystem minimum above the limit.
        assert!(matches!(
            image_size(CapacityRange::new(0, 100 * MIB), 300 * MIB),
            Err(SizeError::NoFit { .. })
        ));
        assert_eq!(
            image_size(CapacityRange::new(10 * MIB, 0), 300 * MIB).unwrap(),
            300 * MIB
        );
    }
}
