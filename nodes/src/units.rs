//! Byte sizes as users write them on the command line and in labels
//! (`32GiB`, `512MiB`), the same units the expression language accepts.

/// A byte size that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number followed by an optional unit.
    #[error("`{0}` is not a size (examples: 4096, 512MiB, 32GiB)")]
    NotASize(String),
    /// A number with a unit this parser does not know.
    #[error("unknown size unit `{unit}` in `{input}` (use KiB, MiB, GiB, TiB, KB, MB, GB, TB)")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The whole input.
        input: String,
    },
    /// Negative, or more bytes than a `u64` holds.
    #[error("size `{0}` is out of range")]
    OutOfRange(String),
}

/// Parses a byte size: a plain number of bytes or a number with one of
/// `B`, `KB`, `MB`, `GB`, `TB` (powers of 1000) or `KiB`, `MiB`, `GiB`,
/// `TiB` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| SizeError::NotASize(s.to_owned()))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(SizeError::UnknownUnit {
                unit: u.to_owned(),
                input: s.to_owned(),
            })
        }
    };
    let v = n * mult;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(SizeError::OutOfRange(s.to_owned()));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("32GiB"), Ok(32 << 30));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert!(parse_size("12 parsecs")
            .unwrap_err()
            .to_string()
            .contains("unknown size unit `parsecs`"));
        assert!(parse_size("lots")
            .unwrap_err()
            .to_string()
            .contains("is not a size"));
    }
}
