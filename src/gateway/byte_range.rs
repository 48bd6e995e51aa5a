//! The `Range` header of a GET (RFC 9110, one byte range), pure.

use std::ops::Range;

/// What a `Range` header asks of a representation of `len` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range (absent, another unit, several ranges, malformed):
    /// the whole representation, 200.
    Whole,
    /// These bytes, 206 with `Content-Range`.
    Part(Range<u64>),
    /// A well-formed range outside the representation: 416 with
    /// `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Reads `header` (the value of `Range`) for a representation of `len`
/// bytes: `bytes=A-B`, `bytes=A-` or `bytes=-N`.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if len == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Part(len.saturating_sub(n)..len),
            None => RangeRequest::Whole,
        },
        (start, "") => match number(start) {
            Some(start) if start < len => RangeRequest::Part(start..len),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Whole,
        },
        (start, end) => match (number(start), number(end)) {
            (Some(start), Some(end)) if start > end => RangeRequest::Whole,
            (Some(start), Some(_)) if start >= len => RangeRequest::Unsatisfiable,
            (Some(start), Some(end)) => RangeRequest::Part(start..end.min(len - 1) + 1),
            _ => RangeRequest::Whole,
        },
    }
}

/// The `Content-Range` value of a part of a representation of `len` bytes.
pub fn content_range(range: &Range<u64>, len: u64) -> String {
    format!("bytes {}-{}/{len}", range.start, range.end - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms_of_a_byte_range_select_the_bytes_they_name() {
        assert_eq!(
            parse_range(Some("bytes=0-99"), 1000),
            RangeRequest::Part(0..100)
        );
        assert_eq!(
            parse_range(Some("bytes=900-"), 1000),
            RangeRequest::Part(900..1000)
        );
        assert_eq!(
            parse_range(Some("bytes=-100"), 1000),
            RangeRequest::Part(900..1000)
        );
        // A last byte past the end is clamped; a suffix longer than the
        // representation is all of it.
        assert_eq!(
            parse_range(Some("bytes=990-5000"), 1000),
            RangeRequest::Part(990..1000)
        );
        assert_eq!(
            parse_range(Some("bytes=-5000"), 1000),
            RangeRequest::Part(0..1000)
        );
    }

    #[test]
    fn a_range_starting_past_the_end_is_unsatisfiable() {
        assert_eq!(
            parse_range(Some("bytes=1000-"), 1000),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=1000-1001"), 1000),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=-0"), 1000),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=0-"), 0),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=-1"), 0),
            RangeRequest::Unsatisfiable
        );
    }

    #[test]
    fn anything_else_asks_for_the_whole_representation() {
        for header in [
            None,
            Some("items=0-1"),
            Some("bytes=0-1,5-6"),
            Some("bytes=5-1"),
            Some("bytes=a-b"),
            Some("bytes=-"),
            Some("bytes=+1-2"),
        ] {
            assert_eq!(parse_range(header, 1000), RangeRequest::Whole, "{header:?}");
        }
    }

    #[test]
    fn content_range_names_the_first_and_last_byte_and_the_length() {
        assert_eq!(content_range(&(0..100), 1000), "bytes 0-99/1000");
    }
}
