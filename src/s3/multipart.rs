//! Multipart uploads: each part is a blob; completing writes the object's
//! record (no bytes move); aborting releases the parts. UploadPartCopy of
//! a whole one-blob object refers to its blob; other copies move bytes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt as _;
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Result};

use super::assemble::{bare_etag, MAX_PARTS};
use super::body::{receive, trailer_of, BodyFrom, Declared, Received};
use super::conditions::copy_source_conditions;
use super::front::{blocking, etag, now_ms, timestamp, Front};
use super::objects::{body_len, checksum_fields, with_checksums, write_condition};
use super::records::{ChosenPart, PartRecord, UploadRecord};
use super::representation::{refuse_encryption, sent_headers, tags_of_header};

/// The uploads under `prefix` after the markers, in key and id order:
/// with `key_marker` alone, those of later keys only; with an
/// `upload_id_marker` too, the marker key's later uploads as well.
fn uploads_after(
    mut all: Vec<(String, UploadRecord)>,
    prefix: &str,
    key_marker: &str,
    upload_id_marker: &str,
) -> Vec<(String, UploadRecord)> {
    all.sort_by(|(a_id, a), (b_id, b)| (&a.key, a_id).cmp(&(&b.key, b_id)));
    all.retain(|(id, u)| {
        u.key.starts_with(prefix)
            && (key_marker.is_empty()
                || u.key.as_str() > key_marker
                || (!upload_id_marker.is_empty()
                    && u.key == key_marker
                    && id.as_str() > upload_id_marker))
    });
    all
}

/// The bytes an `x-amz-copy-source-range` names: `bytes=FIRST-LAST`,
/// wholly inside the source (S3 neither clamps nor takes suffixes here).
fn copy_range(text: &str, size: u64) -> S3Result<std::ops::Range<u64>> {
    match Range::parse(text) {
        Ok(Range::Int {
            first,
            last: Some(last),
        }) if first <= last && last < size => Ok(first..last + 1),
        Ok(Range::Int { .. }) => Err(s3_error!(
            InvalidArgument,
            "Range specified is not valid for source object of size: {size}"
        )),
        _ => Err(s3_error!(
            InvalidArgument,
            "x-amz-copy-source-range {text:?} is not bytes=FIRST-LAST"
        )),
    }
}

fn part_number(number: i32) -> S3Result<u32> {
    u32::try_from(number)
        .ok()
        .filter(|n| (1..=MAX_PARTS).contains(n))
        .ok_or_else(|| s3_error!(InvalidArgument, "part numbers run from 1 to {MAX_PARTS}"))
}

impl Front {
    /// CreateMultipartUpload.
    pub async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<CreateMultipartUploadOutput> {
        let input = req.input;
        refuse_encryption(
            input.server_side_encryption.as_ref(),
            input.sse_customer_algorithm.as_ref(),
            input.ssekms_key_id.as_ref(),
        )?;
        let upload = UploadRecord {
            bucket: input.bucket.clone(),
            key: input.key.clone(),
            created_ms: now_ms(),
            content_type: input.content_type,
            metadata: input
                .metadata
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            tags: tags_of_header(input.tagging.as_deref())?,
            last_part_ms: None,
            headers: sent_headers!(input).kept(),
        };
        let index = self.index.clone();
        let id = blocking(move || index.create_upload(&upload)).await?;
        Ok(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            ..Default::default()
        })
    }

    async fn require_upload(&self, bucket: &str, key: &str, id: &str) -> S3Result<UploadRecord> {
        let (index, b, k, u) = (
            self.index.clone(),
            bucket.to_string(),
            key.to_string(),
            id.to_string(),
        );
        blocking(move || index.upload(&b, &k, &u)).await
    }

    /// UploadPart.
    pub async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<UploadPartOutput> {
        let S3Request {
            input,
            headers,
            trailing_headers,
            ..
        } = req;
        let number = part_number(input.part_number)?;
        self.require_upload(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let _slot = self.upload_slot().await?;
        let checksums = Checksum {
            checksum_crc32: input.checksum_crc32,
            checksum_crc32c: input.checksum_crc32c,
            checksum_crc64nvme: input.checksum_crc64nvme,
            checksum_sha1: input.checksum_sha1,
            checksum_sha256: input.checksum_sha256,
            checksum_type: None,
        };
        let declared = Declared {
            len: body_len(input.content_length, &headers, input.body.as_ref())
                .and_then(|l| u64::try_from(l).ok()),
            content_md5: input.content_md5,
            checksums,
            algorithm: input.checksum_algorithm,
            trailer: trailer_of(&headers),
        };
        let mut received = receive(
            &self.door,
            input.body,
            BodyFrom::Client,
            declared,
            trailing_headers,
        )
        .await?;
        let sums = received.checksums.clone();
        let at = (input.bucket, input.key, input.upload_id);
        let part = self.store_part(&mut received, at, number, sums).await?;
        Ok(with_checksums!(
            &part.checksums,
            UploadPartOutput {
                e_tag: Some(etag(&part.etag)),
            }
        ))
    }

    /// UploadPartCopy.
    pub async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<UploadPartCopyOutput> {
        let input = req.input;
        let number = part_number(input.part_number)?;
        self.require_upload(&input.bucket, &input.key, &input.upload_id)
            .await?;
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
        let source = self
            .version(from_bucket, from_key, version_id.as_deref())
            .await?;
        // The bytes copied are those of this record: its blobs never
        // change, whatever is written to the key meanwhile.
        Self::check_copy_source(&source, copy_source_conditions!(input))?;
        let range = match &input.copy_source_range {
            Some(text) => copy_range(text, source.size)?,
            None => 0..source.size,
        };
        let whole_blob = range == (0..source.size) && source.parts.len() == 1;
        let now = now_ms();
        let part = if whole_blob {
            // The part refers to the source's blob: no bytes move.
            let part = PartRecord {
                blob: source.parts[0].blob.clone(),
                size: source.size,
                etag: bare_etag(&source.etag).to_string(),
                checksums: source.checksums.clone(),
                modified_ms: now,
            };
            let md5_etag = !part.etag.contains('-');
            if md5_etag {
                let (index, at, p) = (
                    self.index.clone(),
                    (
                        input.bucket.clone(),
                        input.key.clone(),
                        input.upload_id.clone(),
                    ),
                    part.clone(),
                );
                blocking(move || index.put_part((&at.0, &at.1, &at.2), number, &p, now)).await?;
                Some(part)
            } else {
                None
            }
        } else {
            None
        };
        let part = match part {
            Some(part) => part,
            None => {
                self.copy_bytes_into_part(&input, &source, range, number)
                    .await?
            }
        };
        Ok(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(etag(&part.etag)),
                last_modified: Some(timestamp(part.modified_ms)),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Stores received bytes as part `number` of upload `at` (bucket, key,
    /// id) carrying `checksums`, its ETag their MD5.
    async fn store_part(
        &self,
        received: &mut Received,
        at: (String, String, String),
        number: u32,
        checksums: BTreeMap<String, String>,
    ) -> S3Result<PartRecord> {
        let md5 = received.md5.clone();
        let index = self.index.clone();
        self.store_and_refer(received, move |blob, ticket| {
            let part = PartRecord {
                blob: blob.blob,
                size: blob.size,
                etag: md5.clone(),
                checksums: checksums.clone(),
                modified_ms: now_ms(),
            };
            index.put_part_stored(
                (&at.0, &at.1, &at.2),
                number,
                &part,
                ticket,
                part.modified_ms,
            )?;
            Ok(part)
        })
        .await
    }

    /// Reads a range of an object and stores it as a new part.
    async fn copy_bytes_into_part(
        &self,
        input: &UploadPartCopyInput,
        source: &super::records::ObjectRecord,
        range: std::ops::Range<u64>,
        number: u32,
    ) -> S3Result<PartRecord> {
        let _slot = self.upload_slot().await?;
        let stream = self.read(source, range.clone()).await?;
        let declared = Declared {
            len: Some(range.end - range.start),
            ..Declared::default()
        };
        // A read of the source that fails midway is the fleet's failure
        // (5xx, retried by clients), not a body the client cut (400).
        let source_failed: Arc<Mutex<Option<String>>> = Arc::default();
        let noted = source_failed.clone();
        let stream = stream.inspect(move |item| {
            if let Err(e) = item {
                *noted.lock().expect("not poisoned") = Some(e.to_string());
            }
        });
        let body = StreamingBlob::wrap(stream);
        let received = receive(&self.door, Some(body), BodyFrom::Fleet, declared, None).await;
        if let Some(why) = source_failed.lock().expect("not poisoned").take() {
            return Err(s3_error!(
                ServiceUnavailable,
                "reading the copy's source failed: {why}"
            ));
        }
        let mut received = received?;
        let at = (
            input.bucket.clone(),
            input.key.clone(),
            input.upload_id.clone(),
        );
        self.store_part(&mut received, at, number, Default::default())
            .await
    }

    /// CompleteMultipartUpload.
    pub async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<CompleteMultipartUploadOutput> {
        let input = req.input;
        let condition = write_condition(input.if_match.as_ref(), input.if_none_match.as_ref())?;
        let chosen: Vec<ChosenPart> = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                Ok(ChosenPart {
                    number: part_number(p.part_number.unwrap_or(0))?,
                    etag: p.e_tag.map(|e| e.value().to_string()).unwrap_or_default(),
                })
            })
            .collect::<S3Result<_>>()?;
        let (index, at) = (
            self.index.clone(),
            (input.bucket.clone(), input.key.clone(), input.upload_id),
        );
        let now = now_ms();
        let record = blocking(move || {
            index.complete_upload((&at.0, &at.1, &at.2), &chosen, &condition, now)
        })
        .await?;
        Ok(CompleteMultipartUploadOutput {
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(etag(&record.etag)),
            ..Default::default()
        })
    }

    /// AbortMultipartUpload.
    pub async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<AbortMultipartUploadOutput> {
        let input = req.input;
        let (index, at) = (
            self.index.clone(),
            (input.bucket, input.key, input.upload_id),
        );
        let now = now_ms();
        blocking(move || index.abort_upload((&at.0, &at.1, &at.2), now)).await?;
        Ok(AbortMultipartUploadOutput::default())
    }

    /// ListParts.
    pub async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<ListPartsOutput> {
        let input = req.input;
        self.require_upload(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let max = input.max_parts.unwrap_or(1000).clamp(0, 1000) as usize;
        let after = input.part_number_marker.unwrap_or(0).max(0) as u32;
        let (index, id) = (self.index.clone(), input.upload_id.clone());
        let mut parts = blocking(move || index.parts(&id, after, max + 1)).await?;
        let truncated = parts.len() > max;
        parts.truncate(max);
        let next = truncated
            .then(|| parts.last().map(|(n, _)| *n as i32))
            .flatten();
        Ok(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max as i32),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: next,
            is_truncated: Some(truncated),
            parts: Some(
                parts
                    .into_iter()
                    .map(|(number, part)| {
                        let [crc32, crc32c, crc64nvme, sha1, sha256] =
                            checksum_fields(&part.checksums);
                        Part {
                            part_number: Some(number as i32),
                            size: Some(part.size as i64),
                            e_tag: Some(etag(&part.etag)),
                            last_modified: Some(timestamp(part.modified_ms)),
                            checksum_crc32: crc32,
                            checksum_crc32c: crc32c,
                            checksum_crc64nvme: crc64nvme,
                            checksum_sha1: sha1,
                            checksum_sha256: sha256,
                        }
                    })
                    .collect(),
            ),
            ..Default::default()
        })
    }

    /// ListMultipartUploads (prefix and a page of at most 1,000).
    pub async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<ListMultipartUploadsOutput> {
        let input = req.input;
        let (index, bucket) = (self.index.clone(), input.bucket.clone());
        let prefix = input.prefix.clone().unwrap_or_default();
        let max = input.max_uploads.unwrap_or(1000).clamp(0, 1000) as usize;
        let after = (
            input.key_marker.clone().unwrap_or_default(),
            input.upload_id_marker.clone().unwrap_or_default(),
        );
        let all = blocking(move || {
            if !index.bucket_exists(&bucket)? {
                return Err(super::index::IndexError::NoSuchBucket(bucket));
            }
            index.uploads(&bucket)
        })
        .await?;
        let mut uploads = uploads_after(all, &prefix, &after.0, &after.1);
        let truncated = uploads.len() > max;
        uploads.truncate(max);
        let last = uploads.last().cloned();
        Ok(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: Some(max as i32),
            is_truncated: Some(truncated),
            next_key_marker: truncated
                .then(|| last.as_ref().map(|(_, u)| u.key.clone()))
                .flatten(),
            next_upload_id_marker: truncated.then(|| last.map(|(id, _)| id)).flatten(),
            uploads: Some(
                uploads
                    .into_iter()
                    .map(|(id, u)| MultipartUpload {
                        key: Some(u.key),
                        upload_id: Some(id),
                        initiated: Some(timestamp(u.created_ms)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(key: &str) -> UploadRecord {
        UploadRecord {
            bucket: "b".into(),
            key: key.into(),
            created_ms: 0,
            content_type: None,
            metadata: Default::default(),
            headers: Default::default(),
            tags: Default::default(),
            last_part_ms: None,
        }
    }

    #[test]
    fn uploads_are_listed_after_their_markers_as_s3_lists_them() {
        let all = || {
            vec![
                ("2".to_string(), upload("b")),
                ("1".to_string(), upload("a")),
                ("1".to_string(), upload("b")),
                ("3".to_string(), upload("c")),
            ]
        };
        let listed = |k: &str, u: &str| -> Vec<(String, String)> {
            uploads_after(all(), "", k, u)
                .into_iter()
                .map(|(id, r)| (r.key, id))
                .collect()
        };
        let pair = |k: &str, id: &str| (k.to_string(), id.to_string());
        assert_eq!(listed("", "").len(), 4);
        assert_eq!(listed("", "")[0], pair("a", "1"));
        assert_eq!(
            listed("b", ""),
            [pair("c", "3")],
            "a key marker alone skips its key"
        );
        assert_eq!(listed("b", "1"), [pair("b", "2"), pair("c", "3")]);
        assert_eq!(uploads_after(all(), "c", "", "").len(), 1);
    }

    #[test]
    fn a_copied_range_lies_wholly_inside_its_source() {
        assert_eq!(copy_range("bytes=0-9", 10).unwrap(), 0..10);
        assert_eq!(copy_range("bytes=5-5", 10).unwrap(), 5..6);
        for bad in [
            "bytes=0-10",
            "bytes=10-12",
            "bytes=-3",
            "bytes=2-",
            "nonsense",
        ] {
            assert!(copy_range(bad, 10).is_err(), "{bad}");
        }
    }
}
