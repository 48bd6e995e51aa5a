//! Parsing and printing byte sizes and durations for the command line.

/// Parses a byte size such as `1000`, `64MiB`, `4GiB` or `1.5GB`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    parse_size::parse_size(text.trim())
        .map_err(|e| format!("invalid size {text:?}: {e} (examples: 1000, 64KiB, 64MiB, 4GiB)"))
}

/// Parses a duration given in seconds, such as `10` or `0.5`; zero is
/// allowed, a negative or endless one is not.
pub fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    let invalid = || format!("invalid number of seconds {text:?} (examples: 0, 0.5, 10)");
    let value: f64 = text.trim().parse().map_err(|_| invalid())?;
    std::time::Duration::try_from_secs_f64(value).map_err(|_| invalid())
}

/// Parses a number of seconds that must be more than 0 (a bound that
/// would end everything at once).
pub fn parse_positive_seconds(text: &str) -> Result<std::time::Duration, String> {
    match parse_seconds(text)? {
        std::time::Duration::ZERO => Err(format!("{text:?} seconds: must be more than 0")),
        seconds => Ok(seconds),
    }
}

/// Formats a byte count with a binary unit, e.g. `64.0 MiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubernetes_quantity_such_as_the_charts_spool_size_limit_parses_as_bytes() {
        assert_eq!(parse_bytes("70Gi"), Ok(70 << 30));
        assert_eq!(parse_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(parse_bytes("500M"), Ok(500_000_000));
        assert_eq!(parse_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_bytes("64k"), Ok(64_000));
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_suffixes() {
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_bytes("1 KiB").unwrap(), 1024);
        assert_eq!(parse_bytes("1MB").unwrap(), 1_000_000);
        assert!(parse_bytes("lots").unwrap_err().contains("invalid size"));
        assert!(parse_bytes("-5").is_err());
    }

    #[test]
    fn seconds_parse_as_whole_or_fractional_and_never_negative() {
        use std::time::Duration;
        assert_eq!(parse_seconds("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_seconds("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_seconds("0").unwrap(), Duration::ZERO);
        for bad in ["-1", "soon", "inf", "NaN", ""] {
            assert!(
                parse_seconds(bad)
                    .unwrap_err()
                    .contains("invalid number of seconds"),
                "{bad}"
            );
        }
    }

    #[test]
    fn positive_seconds_refuse_zero_and_take_the_rest() {
        use std::time::Duration;
        assert_eq!(
            parse_positive_seconds("60").unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(
            parse_positive_seconds("0.5").unwrap(),
            Duration::from_millis(500)
        );
        let zero = parse_positive_seconds("0").unwrap_err();
        assert!(zero.contains("more than 0"), "{zero}");
        assert!(parse_positive_seconds("-1").is_err());
    }

    #[test]
    fn sizes_print_with_binary_units() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(64 << 20), "64.0 MiB");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
    }
}
