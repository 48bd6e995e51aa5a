//! Conditional requests (pure): `If-Match`, `If-None-Match`,
//! `If-Modified-Since` and `If-Unmodified-Since` against an object's ETag
//! and modification time, in the order RFC 9110 gives them.

use s3s::dto::{ETagCondition, Timestamp};

/// What a read's conditions decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadDecision {
    /// Serve the object.
    Serve,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

/// The `x-amz-copy-source-if-*` conditions of a copy's input
/// (CopyObject, UploadPartCopy: their fields share names).
macro_rules! copy_source_conditions {
    ($input:expr) => {
        $crate::s3::conditions::ReadConditions {
            if_match: $input.copy_source_if_match.as_ref(),
            if_none_match: $input.copy_source_if_none_match.as_ref(),
            if_modified_since: $input.copy_source_if_modified_since.as_ref(),
            if_unmodified_since: $input.copy_source_if_unmodified_since.as_ref(),
        }
    };
}
pub(crate) use copy_source_conditions;

/// The conditions of a GET or HEAD.
#[derive(Debug, Default)]
pub struct ReadConditions<'a> {
    /// `If-Match`.
    pub if_match: Option<&'a ETagCondition>,
    /// `If-None-Match`.
    pub if_none_match: Option<&'a ETagCondition>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<&'a Timestamp>,
    /// `If-Unmodified-Since`.
    pub if_unmodified_since: Option<&'a Timestamp>,
}

fn matches(condition: &ETagCondition, etag: &str) -> bool {
    match condition {
        ETagCondition::Any => true,
        ETagCondition::ETag(tag) => tag.value() == etag,
    }
}

/// Decides a read of an object with `etag`, last modified at `modified`.
pub fn decide_read(
    conditions: &ReadConditions<'_>,
    etag: &str,
    modified: &Timestamp,
) -> ReadDecision {
    if let Some(condition) = conditions.if_match {
        if !matches(condition, etag) {
            return ReadDecision::Failed;
        }
    } else if let Some(since) = conditions.if_unmodified_since {
        if modified > since {
            return ReadDecision::Failed;
        }
    }
    if let Some(condition) = conditions.if_none_match {
        if matches(condition, etag) {
            return ReadDecision::NotModified;
        }
    } else if let Some(since) = conditions.if_modified_since {
        if modified <= since {
            return ReadDecision::NotModified;
        }
    }
    ReadDecision::Serve
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3s::dto::ETag;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: u64) -> Timestamp {
        Timestamp::from(UNIX_EPOCH + Duration::from_secs(secs))
    }

    fn tag(value: &str) -> ETagCondition {
        ETagCondition::ETag(ETag::Strong(value.into()))
    }

    #[test]
    fn if_match_fails_on_another_etag_and_wins_over_if_unmodified_since() {
        let (other, same, old) = (tag("b"), tag("a"), at(5));
        let failed = ReadConditions {
            if_match: Some(&other),
            ..Default::default()
        };
        assert_eq!(decide_read(&failed, "a", &at(10)), ReadDecision::Failed);
        let both = ReadConditions {
            if_match: Some(&same),
            if_unmodified_since: Some(&old),
            ..Default::default()
        };
        assert_eq!(decide_read(&both, "a", &at(10)), ReadDecision::Serve);
    }

    #[test]
    fn if_none_match_on_the_same_etag_is_not_modified_and_wins_over_if_modified_since() {
        let (same, any, other, old) = (tag("a"), ETagCondition::Any, tag("b"), at(5));
        for condition in [&same, &any] {
            let c = ReadConditions {
                if_none_match: Some(condition),
                ..Default::default()
            };
            assert_eq!(decide_read(&c, "a", &at(10)), ReadDecision::NotModified);
        }
        let c = ReadConditions {
            if_none_match: Some(&other),
            if_modified_since: Some(&old),
            ..Default::default()
        };
        assert_eq!(decide_read(&c, "a", &at(1)), ReadDecision::Serve);
    }

    #[test]
    fn modification_times_compare_by_the_second() {
        let since = at(10);
        let c = ReadConditions {
            if_modified_since: Some(&since),
            ..Default::default()
        };
        assert_eq!(decide_read(&c, "a", &at(10)), ReadDecision::NotModified);
        assert_eq!(decide_read(&c, "a", &at(11)), ReadDecision::Serve);
        let c = ReadConditions {
            if_unmodified_since: Some(&since),
            ..Default::default()
        };
        assert_eq!(decide_read(&c, "a", &at(11)), ReadDecision::Failed);
        assert_eq!(decide_read(&c, "a", &at(10)), ReadDecision::Serve);
    }
}
