//! Object operations: PUT, GET (ranges, conditions), HEAD, DELETE,
//! DeleteObjects and CopyObject (a record write: no bytes move).

use std::collections::{BTreeMap, HashMap};

use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Result};

use super::body::{receive, trailer_of, BodyFrom, Declared};
use super::conditions::copy_source_conditions;
use super::conditions::{decide_read, ReadConditions, ReadDecision};
use super::front::{blocking, etag, now_ms, timestamp, Front};
use super::index::WriteCondition;
use super::records::ObjectRecord;
use super::representation::{expires, refuse_encryption, sent_headers, tags_of_header};
use super::span::{served_span, Span};

/// No checksums: a part of an object has none of its own.
static NO_SUMS: BTreeMap<String, String> = BTreeMap::new();

/// Refuses any version but `null`, the one version of every object here
/// (versioning is never enabled).
pub fn only_null_version(version: Option<&str>) -> S3Result<()> {
    if version.is_some_and(|v| v != "null") {
        return Err(s3_error!(
            NoSuchVersion,
            "objects here have one version, \"null\""
        ));
    }
    Ok(())
}

/// The checksums of a record as S3's five fields.
pub fn checksum_fields(sums: &BTreeMap<String, String>) -> [Option<String>; 5] {
    ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"].map(|name| sums.get(name).cloned())
}

/// An S3 output struct with the five checksum fields set from `sums`, the
/// fields given, and defaults for the rest.
macro_rules! with_checksums {
    ($sums:expr, $ty:ident { $($field:ident: $value:expr),* $(,)? }) => {{
        let [crc32, crc32c, crc64nvme, sha1, sha256] = $crate::s3::objects::checksum_fields($sums);
        $ty {
            checksum_crc32: crc32,
            checksum_crc32c: crc32c,
            checksum_crc64nvme: crc64nvme,
            checksum_sha1: sha1,
            checksum_sha256: sha256,
            $($field: $value,)*
            ..Default::default()
        }
    }};
}
pub(crate) use with_checksums;

/// The write condition of `If-None-Match: *` / `If-Match: ETAG`.
pub fn write_condition(
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<WriteCondition> {
    let if_absent = match if_none_match {
        None => false,
        Some(ETagCondition::Any) => true,
        Some(ETagCondition::ETag(_)) => {
            return Err(s3_error!(
                NotImplemented,
                "If-None-Match on a write takes only *"
            ))
        }
    };
    let if_etag = match if_match {
        None => None,
        Some(ETagCondition::ETag(tag)) => Some(tag.value().to_string()),
        Some(ETagCondition::Any) => {
            return Err(s3_error!(
                NotImplemented,
                "If-Match on a write takes an ETag"
            ))
        }
    };
    Ok(WriteCondition { if_absent, if_etag })
}

fn declared(
    len: Option<i64>,
    content_md5: Option<String>,
    checksums: Checksum,
    algorithm: Option<ChecksumAlgorithm>,
    headers: &http::HeaderMap,
) -> Declared {
    Declared {
        len: len.and_then(|l| u64::try_from(l).ok()),
        content_md5,
        checksums,
        algorithm,
        trailer: trailer_of(headers),
    }
}

fn to_btree(metadata: Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    metadata
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

fn to_map(metadata: &BTreeMap<String, String>) -> Option<HashMap<String, String>> {
    (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    })
}

/// The length of an aws-chunked body (decoded), else Content-Length.
pub fn body_len(
    content_length: Option<i64>,
    headers: &http::HeaderMap,
    body: Option<&StreamingBlob>,
) -> Option<i64> {
    use s3s::stream::ByteStream as _;
    content_length
        .or_else(|| {
            headers
                .get("x-amz-decoded-content-length")
                .and_then(|v| v.to_str().ok()?.parse().ok())
        })
        .or_else(|| body.and_then(|b| b.remaining_length().exact().map(|n| n as i64)))
}

impl Front {
    /// PutObject.
    pub async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<PutObjectOutput> {
        let S3Request {
            input,
            headers,
            trailing_headers,
            ..
        } = req;
        let condition = write_condition(input.if_match.as_ref(), input.if_none_match.as_ref())?;
        refuse_encryption(
            input.server_side_encryption.as_ref(),
            input.sse_customer_algorithm.as_ref(),
            input.ssekms_key_id.as_ref(),
        )?;
        let tags = tags_of_header(input.tagging.as_deref())?;
        let headers_kept = sent_headers!(input).kept();
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        // Refuse early what the index would refuse: no bytes are stored then.
        let current = {
            let (index, b, k) = (self.index.clone(), bucket.clone(), key.clone());
            blocking(move || index.object(&b, &k)).await?
        };
        if condition.if_absent && current.is_some() {
            return Err(s3_error!(
                PreconditionFailed,
                "the key has an object (If-None-Match: *)"
            ));
        }
        let _slot = self.upload_slot().await?;
        let checksums = Checksum {
            checksum_crc32: input.checksum_crc32,
            checksum_crc32c: input.checksum_crc32c,
            checksum_crc64nvme: input.checksum_crc64nvme,
            checksum_sha1: input.checksum_sha1,
            checksum_sha256: input.checksum_sha256,
            checksum_type: None,
        };
        let len = body_len(input.content_length, &headers, input.body.as_ref());
        let declared = declared(
            len,
            input.content_md5,
            checksums,
            input.checksum_algorithm,
            &headers,
        );
        let mut received = receive(
            &self.door,
            input.body,
            BodyFrom::Client,
            declared,
            trailing_headers,
        )
        .await?;
        let record = ObjectRecord {
            parts: Vec::new(),
            size: received.len,
            etag: received.md5.clone(),
            checksums: received.checksums.clone(),
            content_type: input.content_type,
            metadata: to_btree(input.metadata),
            headers: headers_kept,
            tags,
            modified_ms: now_ms(),
        };
        let index = self.index.clone();
        let stored = self
            .store_and_refer(&mut received, move |part, ticket| {
                // Dated when it lands, not when its upload began: of two
                // PUTs of one key, the one that stays is the newest.
                let record = ObjectRecord {
                    parts: vec![part],
                    modified_ms: now_ms(),
                    ..record.clone()
                };
                index.put_object_stored(
                    (&bucket, &key),
                    &record,
                    &condition,
                    ticket,
                    record.modified_ms,
                )?;
                Ok(record)
            })
            .await?;
        Ok(with_checksums!(
            &stored.checksums,
            PutObjectOutput {
                e_tag: Some(etag(&stored.etag)),
                size: Some(stored.size as i64),
            }
        ))
    }

    /// The record at `key`, as version `version` (objects here have one,
    /// `null`).
    pub(super) async fn version(
        &self,
        bucket: &str,
        key: &str,
        version: Option<&str>,
    ) -> S3Result<ObjectRecord> {
        only_null_version(version)?;
        self.record(bucket, key).await
    }

    async fn record(&self, bucket: &str, key: &str) -> S3Result<ObjectRecord> {
        let (index, b, k) = (self.index.clone(), bucket.to_string(), key.to_string());
        blocking(move || index.object(&b, &k))
            .await?
            .ok_or_else(|| s3_error!(NoSuchKey, "no object at {key} in {bucket}"))
    }

    fn check_read(record: &ObjectRecord, conditions: ReadConditions<'_>) -> S3Result<()> {
        match decide_read(&conditions, &record.etag, &timestamp(record.modified_ms)) {
            ReadDecision::Serve => Ok(()),
            ReadDecision::NotModified => {
                let mut error = s3_error!(NotModified);
                let mut headers = http::HeaderMap::new();
                if let Ok(value) = format!("\"{}\"", record.etag).parse() {
                    headers.insert(http::header::ETAG, value);
                }
                let mut modified = Vec::new();
                if timestamp(record.modified_ms)
                    .format(TimestampFormat::HttpDate, &mut modified)
                    .is_ok()
                {
                    if let Ok(value) = http::HeaderValue::from_bytes(&modified) {
                        headers.insert(http::header::LAST_MODIFIED, value);
                    }
                }
                error.set_headers(headers);
                Err(error)
            }
            ReadDecision::Failed => Err(s3_error!(
                PreconditionFailed,
                "the object does not meet the request's conditions"
            )),
        }
    }

    /// Checks a copy's source against the copy's `x-amz-copy-source-if-*`
    /// conditions: a copy answers 412 for every failed one.
    pub(super) fn check_copy_source(
        source: &ObjectRecord,
        conditions: ReadConditions<'_>,
    ) -> S3Result<()> {
        Self::check_read(source, conditions).map_err(|e| {
            if *e.code() == s3s::S3ErrorCode::NotModified {
                s3_error!(
                    PreconditionFailed,
                    "the source does not meet the copy's conditions"
                )
            } else {
                e
            }
        })
    }

    /// GetObject.
    pub async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<GetObjectOutput> {
        let input = req.input;
        let record = self
            .version(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
        Self::check_read(
            &record,
            ReadConditions {
                if_match: input.if_match.as_ref(),
                if_none_match: input.if_none_match.as_ref(),
                if_modified_since: input.if_modified_since.as_ref(),
                if_unmodified_since: input.if_unmodified_since.as_ref(),
            },
        )?;
        let Span {
            bytes: range,
            content_range,
            parts_count,
        } = served_span(&record, input.range.as_ref(), input.part_number)?;
        let body = self.read(&record, range.clone()).await?;
        let [crc32, crc32c, crc64nvme, sha1, sha256] = if content_range.is_none() {
            checksum_fields(&record.checksums)
        } else {
            Default::default()
        };
        Ok(GetObjectOutput {
            body: Some(StreamingBlob::wrap(body)),
            content_length: Some((range.end - range.start) as i64),
            content_range,
            accept_ranges: Some("bytes".into()),
            e_tag: Some(etag(&record.etag)),
            last_modified: Some(timestamp(record.modified_ms)),
            content_type: record.content_type.clone(),
            metadata: to_map(&record.metadata),
            cache_control: record.headers.cache_control.clone(),
            content_disposition: record.headers.content_disposition.clone(),
            content_encoding: record.headers.content_encoding.clone(),
            content_language: record.headers.content_language.clone(),
            expires: expires(&record.headers),
            tag_count: (!record.tags.is_empty()).then_some(record.tags.len() as i32),
            parts_count,
            checksum_crc32: crc32,
            checksum_crc32c: crc32c,
            checksum_crc64nvme: crc64nvme,
            checksum_sha1: sha1,
            checksum_sha256: sha256,
            ..Default::default()
        })
    }

    /// HeadObject.
    pub async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<HeadObjectOutput> {
        let input = req.input;
        let record = self
            .version(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
        Self::check_read(
            &record,
            ReadConditions {
                if_match: input.if_match.as_ref(),
                if_none_match: input.if_none_match.as_ref(),
                if_modified_since: input.if_modified_since.as_ref(),
                if_unmodified_since: input.if_unmodified_since.as_ref(),
            },
        )?;
        // The span a GET of the same would answer (s3s answers a HEAD 200).
        let span = served_span(&record, input.range.as_ref(), input.part_number)?;
        let whole = span.content_range.is_none();
        let mut output = with_checksums!(
            if whole { &record.checksums } else { &NO_SUMS },
            HeadObjectOutput {
                content_length: Some((span.bytes.end - span.bytes.start) as i64),
                content_range: span.content_range,
                parts_count: span.parts_count,
                accept_ranges: Some("bytes".into()),
                e_tag: Some(etag(&record.etag)),
                last_modified: Some(timestamp(record.modified_ms)),
                content_type: record.content_type.clone(),
                metadata: to_map(&record.metadata),
                expires: expires(&record.headers),
            }
        );
        let headers = record.headers;
        output.cache_control = headers.cache_control;
        output.content_disposition = headers.content_disposition;
        output.content_encoding = headers.content_encoding;
        output.content_language = headers.content_language;
        Ok(output)
    }

    /// DeleteObject: 204 whether or not the key had an object.
    pub async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<DeleteObjectOutput> {
        let input = req.input;
        only_null_version(input.version_id.as_deref())?;
        let condition = write_condition(input.if_match.as_ref(), None)?;
        let (index, bucket, key) = (self.index.clone(), input.bucket, input.key);
        let now = now_ms();
        blocking(move || index.delete_object_if(&bucket, &key, &condition, now)).await?;
        Ok(DeleteObjectOutput::default())
    }

    /// DeleteObjects: each key as DeleteObject would.
    pub async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<DeleteObjectsOutput> {
        let input = req.input;
        let quiet = input.delete.quiet.unwrap_or(false);
        let exists = {
            let (index, bucket) = (self.index.clone(), input.bucket.clone());
            blocking(move || index.bucket_exists(&bucket)).await?
        };
        if !exists {
            return Err(s3_error!(
                NoSuchBucket,
                "the bucket {} does not exist",
                input.bucket
            ));
        }
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for object in input.delete.objects {
            let (index, bucket, key) =
                (self.index.clone(), input.bucket.clone(), object.key.clone());
            let now = now_ms();
            let asked = only_null_version(object.version_id.as_deref()).and_then(|()| {
                write_condition(
                    object
                        .e_tag
                        .as_ref()
                        .map(|t| ETagCondition::ETag(t.clone()))
                        .as_ref(),
                    None,
                )
            });
            let outcome = match asked {
                Ok(condition) => {
                    blocking(move || index.delete_object_if(&bucket, &key, &condition, now)).await
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(_) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(object.key),
                            ..Default::default()
                        });
                    }
                }
                Err(e) => errors.push(s3s::dto::Error {
                    code: Some(e.code().as_str().to_string()),
                    key: Some(object.key),
                    message: e.message().map(str::to_string),
                    version_id: None,
                }),
            }
        }
        Ok(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        })
    }

    /// CopyObject: the copy refers to the source's blobs.
    pub async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<CopyObjectOutput> {
        let input = req.input;
        let CopySource::Bucket {
            bucket: from_bucket,
            key: from_key,
            version_id,
        } = &input.copy_source
        else {
            return Err(s3_error!(
                NotImplemented,
                "copies from access points are not supported"
            ));
        };
        only_null_version(version_id.as_deref())?;
        refuse_encryption(
            input.server_side_encryption.as_ref(),
            input.sse_customer_algorithm.as_ref(),
            input.ssekms_key_id.as_ref(),
        )?;
        let replace_tags = input
            .tagging_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == TaggingDirective::REPLACE);
        let tags = tags_of_header(input.tagging.as_deref())?;
        let source = self.record(from_bucket, from_key).await?;
        Self::check_copy_source(&source, copy_source_conditions!(input))?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        if !replace && from_bucket.as_ref() == input.bucket && from_key.as_ref() == input.key {
            return Err(s3_error!(
                InvalidRequest,
                "copying an object onto itself changes nothing; use the metadata directive REPLACE"
            ));
        }
        let (metadata, content_type) = (to_btree(input.metadata), input.content_type);
        let headers = sent_headers!(input).kept();
        let now = now_ms();
        let (index, from, to) = (
            self.index.clone(),
            (from_bucket.to_string(), from_key.to_string()),
            (input.bucket, input.key),
        );
        let copy = blocking(move || {
            index.copy_object(
                (&from.0, &from.1),
                (&to.0, &to.1),
                |mut record| {
                    if replace {
                        record.metadata = metadata.clone();
                        record.content_type = content_type.clone();
                        record.headers = headers.clone();
                    }
                    if replace_tags {
                        record.tags = tags.clone();
                    }
                    record.modified_ms = now;
                    record
                },
                now,
            )
        })
        .await?
        .ok_or_else(|| s3_error!(NoSuchKey, "the copy's source is gone"))?;
        Ok(CopyObjectOutput {
            copy_object_result: Some(with_checksums!(
                &copy.checksums,
                CopyObjectResult {
                    e_tag: Some(etag(&copy.etag)),
                    last_modified: Some(timestamp(copy.modified_ms)),
                }
            )),
            ..Default::default()
        })
    }
}
