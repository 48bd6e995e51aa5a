//! Which bytes of an object a GET or HEAD answers with (pure): all of
//! them, a Range, or one part of a multipart object (`partNumber`, which
//! transfer managers use to fetch an object as it was uploaded).

use std::ops::Range;

use s3s::{s3_error, S3Error, S3ErrorCode, S3Result};

use super::records::ObjectRecord;

/// The bytes answered, and how the answer describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The bytes, as offsets into the object.
    pub bytes: Range<u64>,
    /// Content-Range, when not the whole object (206 for a GET).
    pub content_range: Option<String>,
    /// The object's part count, for a `partNumber` of a multipart object.
    pub parts_count: Option<i32>,
}

/// Whether `record` was written by a multipart upload (its ETag is the
/// parts' `MD5-N`): its parts are then the uploaded parts.
fn is_multipart(record: &ObjectRecord) -> bool {
    record.etag.contains('-')
}

fn content_range(bytes: &Range<u64>, len: u64) -> String {
    format!("bytes {}-{}/{len}", bytes.start, bytes.end - 1)
}

/// The span of `record` a request with `range` and `part_number` asks for.
pub fn served_span(
    record: &ObjectRecord,
    range: Option<&s3s::dto::Range>,
    part_number: Option<i32>,
) -> S3Result<Span> {
    let len = record.size;
    match (range, part_number) {
        (Some(_), Some(_)) => Err(s3_error!(
            InvalidRequest,
            "a request names either a Range or a partNumber, not both"
        )),
        (Some(range), None) => {
            // An empty object has no byte to range over.
            let bytes = range
                .check(len)
                .ok()
                .filter(|b| b.start < b.end)
                .ok_or_else(|| {
                    s3_error!(
                        InvalidRange,
                        "the range is outside the object's {len} bytes"
                    )
                })?;
            Ok(Span {
                content_range: Some(content_range(&bytes, len)),
                bytes,
                parts_count: None,
            })
        }
        (None, Some(number)) => {
            let count = if is_multipart(record) {
                record.parts.len()
            } else {
                1
            };
            let index = usize::try_from(number)
                .ok()
                .filter(|n| (1..=count).contains(n))
                .ok_or_else(|| {
                    let mut e = S3Error::with_message(
                        S3ErrorCode::Custom("InvalidPartNumber".into()),
                        format!("part {number} does not exist: the object has {count}"),
                    );
                    e.set_status_code(http::StatusCode::RANGE_NOT_SATISFIABLE);
                    e
                })?;
            if !is_multipart(record) {
                return Ok(Span {
                    bytes: 0..len,
                    content_range: None,
                    parts_count: None,
                });
            }
            let start: u64 = record.parts[..index - 1].iter().map(|p| p.size).sum();
            let bytes = start..start + record.parts[index - 1].size;
            Ok(Span {
                content_range: (bytes.start < bytes.end).then(|| content_range(&bytes, len)),
                bytes,
                parts_count: Some(count as i32),
            })
        }
        (None, None) => Ok(Span {
            bytes: 0..len,
            content_range: None,
            parts_count: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::records::BlobPart;

    fn object(sizes: &[u64], etag: &str) -> ObjectRecord {
        ObjectRecord {
            parts: sizes
                .iter()
                .map(|&size| BlobPart {
                    blob: "b".into(),
                    size,
                })
                .collect(),
            size: sizes.iter().sum(),
            etag: etag.into(),
            checksums: Default::default(),
            content_type: None,
            metadata: Default::default(),
            headers: Default::default(),
            tags: Default::default(),
            modified_ms: 0,
        }
    }

    fn range(text: &str) -> s3s::dto::Range {
        s3s::dto::Range::parse(text).unwrap()
    }

    #[test]
    fn a_part_of_a_multipart_object_is_the_bytes_that_part_uploaded() {
        let mp = object(&[10, 10, 3], "abc-3");
        let second = served_span(&mp, None, Some(2)).unwrap();
        assert_eq!(second.bytes, 10..20);
        assert_eq!(second.content_range.as_deref(), Some("bytes 10-19/23"));
        assert_eq!(second.parts_count, Some(3));
        assert_eq!(served_span(&mp, None, Some(3)).unwrap().bytes, 20..23);
        for missing in [0, 4, -1] {
            let e = served_span(&mp, None, Some(missing)).unwrap_err();
            assert_eq!(e.code().as_str(), "InvalidPartNumber");
            assert_eq!(
                e.status_code(),
                Some(http::StatusCode::RANGE_NOT_SATISFIABLE)
            );
        }
    }

    #[test]
    fn part_one_of_an_object_put_whole_is_all_of_it() {
        let put = object(&[7], "abc");
        let whole = served_span(&put, None, Some(1)).unwrap();
        assert_eq!(
            (whole.bytes, whole.content_range, whole.parts_count),
            (0..7, None, None)
        );
        assert!(served_span(&put, None, Some(2)).is_err());
    }

    #[test]
    fn ranges_are_answered_within_the_object_and_never_on_an_empty_one() {
        let put = object(&[7], "abc");
        let tail = served_span(&put, Some(&range("bytes=-3")), None).unwrap();
        assert_eq!(tail.bytes, 4..7);
        assert_eq!(tail.content_range.as_deref(), Some("bytes 4-6/7"));
        let empty = object(&[0], "d41d8cd98f00b204e9800998ecf8427e");
        for asked in ["bytes=-3", "bytes=0-", "bytes=0-5"] {
            let e = served_span(&empty, Some(&range(asked)), None).unwrap_err();
            assert_eq!(*e.code(), S3ErrorCode::InvalidRange, "{asked}");
        }
        assert_eq!(served_span(&empty, None, None).unwrap().bytes, 0..0);
        assert!(served_span(&put, Some(&range("bytes=9-")), None).is_err());
        assert_eq!(
            *served_span(&put, Some(&range("bytes=0-1")), Some(1))
                .unwrap_err()
                .code(),
            S3ErrorCode::InvalidRequest
        );
    }
}
