//! What an object carries besides its bytes, type and metadata: the
//! headers it is served with (Cache-Control, Content-Disposition,
//! Content-Encoding, Content-Language, Expires) and its tags, as a PUT,
//! a multipart upload, a copy or the tagging calls set them; and the
//! server-side encryption requests refused (the fleet stores bytes as
//! sent: answering success would be a wrong success).

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use s3s::dto::{ServerSideEncryption, Tag, Tagging, Timestamp};
use s3s::{s3_error, S3Result};

use super::records::ObjectHeaders;

/// Tags an object may have at most.
pub const MOST_TAGS: usize = 10;

/// The `SentHeaders` of an S3 input (PutObject, CreateMultipartUpload,
/// CopyObject: their fields share names), moving them out of it.
macro_rules! sent_headers {
    ($input:expr) => {
        $crate::s3::representation::SentHeaders {
            cache_control: $input.cache_control,
            content_disposition: $input.content_disposition,
            content_encoding: $input.content_encoding,
            content_language: $input.content_language,
            expires: $input.expires,
        }
    };
}
pub(crate) use sent_headers;

/// The headers a write sent, as the index keeps them.
pub struct SentHeaders {
    /// Cache-Control.
    pub cache_control: Option<String>,
    /// Content-Disposition.
    pub content_disposition: Option<String>,
    /// Content-Encoding as sent (with `aws-chunked` when the body is).
    pub content_encoding: Option<String>,
    /// Content-Language.
    pub content_language: Option<String>,
    /// Expires.
    pub expires: Option<Timestamp>,
}

impl SentHeaders {
    /// The headers to keep: `aws-chunked` describes the transfer, not the
    /// object, and goes.
    pub fn kept(self) -> ObjectHeaders {
        ObjectHeaders {
            cache_control: self.cache_control,
            content_disposition: self.content_disposition,
            content_encoding: self.content_encoding.and_then(|e| without_aws_chunked(&e)),
            content_language: self.content_language,
            expires_ms: self.expires.map(|t| {
                let at = time::OffsetDateTime::from(t);
                (at.unix_timestamp_nanos() / 1_000_000) as i64
            }),
        }
    }
}

/// A Content-Encoding without its `aws-chunked` codings; none if nothing
/// else is left.
fn without_aws_chunked(encoding: &str) -> Option<String> {
    let kept: Vec<&str> = encoding
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("aws-chunked"))
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

/// Expires as S3 answers it.
pub fn expires(headers: &ObjectHeaders) -> Option<Timestamp> {
    let ms = headers.expires_ms?;
    let at = if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    };
    Some(Timestamp::from(at))
}

/// Refuses server-side encryption: neither keys of the client's (SSE-C)
/// nor of a key service (SSE-KMS) nor S3-managed ones exist here.
pub fn refuse_encryption(
    sse: Option<&ServerSideEncryption>,
    customer_algorithm: Option<&String>,
    kms_key: Option<&String>,
) -> S3Result<()> {
    if sse.is_some() || customer_algorithm.is_some() || kms_key.is_some() {
        return Err(s3_error!(
            NotImplemented,
            "server-side encryption is not supported: the fleet keeps the bytes as sent (encrypt them before sending, or encrypt the node volumes)"
        ));
    }
    Ok(())
}

/// Checks a tag set as S3 does: at most 10 tags, keys of 1 to 128
/// characters, values of at most 256, no key twice.
fn checked(pairs: Vec<(String, String)>) -> S3Result<BTreeMap<String, String>> {
    if pairs.len() > MOST_TAGS {
        return Err(s3_error!(
            InvalidTag,
            "{} tags: an object has at most {MOST_TAGS}",
            pairs.len()
        ));
    }
    let mut tags = BTreeMap::new();
    for (key, value) in pairs {
        let key_len = key.chars().count();
        if key_len == 0 || key_len > 128 {
            return Err(s3_error!(
                InvalidTag,
                "a tag key has 1 to 128 characters: {key:?}"
            ));
        }
        if value.chars().count() > 256 {
            return Err(s3_error!(
                InvalidTag,
                "the value of tag {key:?} is longer than 256 characters"
            ));
        }
        if tags.insert(key.clone(), value).is_some() {
            return Err(s3_error!(InvalidTag, "tag {key:?} is given twice"));
        }
    }
    Ok(tags)
}

/// The tags of an `x-amz-tagging` header (`k1=v1&k2=v2`, URL-encoded).
pub fn tags_of_header(header: Option<&str>) -> S3Result<BTreeMap<String, String>> {
    let Some(header) = header.filter(|h| !h.is_empty()) else {
        return Ok(BTreeMap::new());
    };
    checked(
        form_urlencoded::parse(header.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    )
}

/// The tags of a PutObjectTagging body.
pub fn tags_of_tagging(tagging: Tagging) -> S3Result<BTreeMap<String, String>> {
    checked(
        tagging
            .tag_set
            .into_iter()
            .map(|t| (t.key.unwrap_or_default(), t.value.unwrap_or_default()))
            .collect(),
    )
}

/// Tags as S3 answers them.
pub fn tag_set(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag {
            key: Some(k.clone()),
            value: Some(v.clone()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(encoding: Option<&str>) -> SentHeaders {
        SentHeaders {
            cache_control: None,
            content_disposition: None,
            content_encoding: encoding.map(String::from),
            content_language: None,
            expires: None,
        }
    }

    #[test]
    fn the_transfers_aws_chunked_is_not_the_objects_encoding() {
        assert_eq!(sent(Some("aws-chunked")).kept().content_encoding, None);
        assert_eq!(
            sent(Some("aws-chunked,gzip")).kept().content_encoding,
            Some("gzip".into())
        );
        assert_eq!(
            sent(Some("gzip, br")).kept().content_encoding,
            Some("gzip, br".into())
        );
        assert!(sent(None).kept().is_empty());
    }

    #[test]
    fn expires_comes_back_as_it_was_sent_to_the_second() {
        let at = Timestamp::from(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let kept = SentHeaders {
            expires: Some(at.clone()),
            ..sent(None)
        }
        .kept();
        assert_eq!(expires(&kept), Some(at));
    }

    #[test]
    fn tags_are_checked_as_s3_checks_them() {
        let tags = tags_of_header(Some("project=red%20stuff&team=storage")).unwrap();
        assert_eq!(tags["project"], "red stuff");
        assert_eq!(tags.len(), 2);
        assert!(tags_of_header(None).unwrap().is_empty());
        let eleven: Vec<String> = (0..11).map(|i| format!("k{i}=v")).collect();
        assert!(tags_of_header(Some(&eleven.join("&"))).is_err());
        assert!(tags_of_header(Some("a=1&a=2")).is_err());
        assert!(tags_of_header(Some("=v")).is_err());
        assert!(tags_of_header(Some(&format!("k={}", "v".repeat(257)))).is_err());
    }

    #[test]
    fn no_kind_of_server_side_encryption_is_pretended() {
        assert!(refuse_encryption(None, None, None).is_ok());
        let aes = ServerSideEncryption::from_static(ServerSideEncryption::AES256);
        assert!(refuse_encryption(Some(&aes), None, None).is_err());
        assert!(refuse_encryption(None, Some(&"AES256".to_string()), None).is_err());
        assert!(refuse_encryption(None, None, Some(&"key".to_string())).is_err());
    }
}
