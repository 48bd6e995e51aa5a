//! Bucket operations and listings: ListBuckets, CreateBucket, HeadBucket,
//! DeleteBucket, GetBucketLocation, ListObjectsV2 and V1, and the
//! versioning stubs (objects have one version, "null").

use base64::Engine as _;
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Result};

use super::front::{blocking, etag, now_ms, timestamp, Front};
use super::listing::{Entry, ListQuery, Page};
use super::records::ObjectSummary;

/// The most keys a listing page holds.
const MAX_KEYS: usize = 1000;

/// Percent-encodes `text` as S3 does for `encoding-type=url`.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn encode_token(name: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name)
}

fn decode_token(token: &str) -> S3Result<String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            s3_error!(
                InvalidArgument,
                "the continuation token is not one this gateway gave"
            )
        })
}

fn max_keys(asked: Option<i32>) -> S3Result<usize> {
    match asked {
        None => Ok(MAX_KEYS),
        Some(n) if n < 0 => Err(s3_error!(InvalidArgument, "max-keys must not be negative")),
        Some(n) => Ok((n as usize).min(MAX_KEYS)),
    }
}

/// A page as S3's contents and common prefixes, names encoded if asked.
fn contents(page: &Page<ObjectSummary>, encode: bool) -> (Vec<Object>, Vec<CommonPrefix>) {
    let name = |n: &str| if encode { url_encode(n) } else { n.to_string() };
    let mut objects = Vec::new();
    let mut prefixes = Vec::new();
    for entry in &page.entries {
        match entry {
            Entry::Key(key, summary) => objects.push(Object {
                key: Some(name(key)),
                size: Some(summary.size as i64),
                e_tag: Some(etag(&summary.etag)),
                last_modified: Some(timestamp(summary.modified_ms)),
                storage_class: Some(ObjectStorageClass::from_static(
                    ObjectStorageClass::STANDARD,
                )),
                ..Default::default()
            }),
            Entry::Prefix(prefix) => prefixes.push(CommonPrefix {
                prefix: Some(name(prefix)),
            }),
        }
    }
    (objects, prefixes)
}

/// The listing a request asks for (empty prefixes, delimiters and markers
/// are none).
fn list_query(
    prefix: &Option<String>,
    delimiter: &Option<String>,
    after: Option<String>,
    max_keys: usize,
) -> ListQuery {
    ListQuery {
        prefix: prefix.clone().unwrap_or_default(),
        delimiter: delimiter.clone().filter(|d| !d.is_empty()),
        after: after.filter(|a| !a.is_empty()),
        max_keys,
    }
}

fn wants_url(encoding: Option<&EncodingType>) -> bool {
    encoding.is_some_and(|e| e.as_str() == EncodingType::URL)
}

impl Front {
    async fn list_page(&self, bucket: String, query: ListQuery) -> S3Result<Page<ObjectSummary>> {
        let index = self.index.clone();
        blocking(move || index.list(&bucket, &query)).await
    }

    /// ListBuckets.
    pub async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<ListBucketsOutput> {
        let index = self.index.clone();
        let buckets = blocking(move || index.buckets()).await?;
        Ok(ListBucketsOutput {
            buckets: Some(
                buckets
                    .into_iter()
                    .map(|(name, record)| Bucket {
                        name: Some(name),
                        creation_date: Some(timestamp(record.created_ms)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            owner: Some(Owner {
                display_name: Some("redstuff".into()),
                id: Some("redstuff".into()),
            }),
            ..Default::default()
        })
    }

    /// CreateBucket.
    pub async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<CreateBucketOutput> {
        let (index, bucket) = (self.index.clone(), req.input.bucket);
        let location = format!("/{bucket}");
        let now = now_ms();
        blocking(move || index.create_bucket(&bucket, now)).await?;
        Ok(CreateBucketOutput {
            location: Some(location),
        })
    }

    /// HeadBucket.
    pub async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<HeadBucketOutput> {
        self.require_bucket(req.input.bucket).await?;
        Ok(HeadBucketOutput::default())
    }

    /// NoSuchBucket unless `bucket` exists.
    async fn require_bucket(&self, bucket: String) -> S3Result<()> {
        let (index, name) = (self.index.clone(), bucket.clone());
        if !blocking(move || index.bucket_exists(&bucket)).await? {
            return Err(s3_error!(NoSuchBucket, "the bucket {name} does not exist"));
        }
        Ok(())
    }

    /// DeleteBucket: only when it holds no object; its unfinished uploads
    /// are aborted.
    pub async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<DeleteBucketOutput> {
        let (index, bucket) = (self.index.clone(), req.input.bucket);
        let now = now_ms();
        blocking(move || index.delete_bucket(&bucket, now)).await?;
        Ok(DeleteBucketOutput::default())
    }

    /// GetBucketLocation: every bucket is in the default region.
    pub async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<GetBucketLocationOutput> {
        self.require_bucket(req.input.bucket).await?;
        Ok(GetBucketLocationOutput::default())
    }

    /// GetBucketVersioning: never enabled.
    pub async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<GetBucketVersioningOutput> {
        self.require_bucket(req.input.bucket).await?;
        Ok(GetBucketVersioningOutput::default())
    }

    /// ListObjectsV2.
    pub async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<ListObjectsV2Output> {
        let input = req.input;
        let max = max_keys(input.max_keys)?;
        let after = match (&input.continuation_token, &input.start_after) {
            (Some(token), _) => Some(decode_token(token)?),
            (None, start_after) => start_after.clone().filter(|s| !s.is_empty()),
        };
        let query = list_query(&input.prefix, &input.delimiter, after, max);
        let page = self.list_page(input.bucket.clone(), query).await?;
        let encode = wants_url(input.encoding_type.as_ref());
        let (objects, prefixes) = contents(&page, encode);
        let next = page
            .truncated
            .then(|| page.entries.last().map(|e| encode_token(e.name())))
            .flatten();
        let shown = |text: Option<String>| text.map(|t| if encode { url_encode(&t) } else { t });
        Ok(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: shown(Some(input.prefix.unwrap_or_default())),
            delimiter: shown(input.delimiter),
            max_keys: Some(max as i32),
            key_count: Some(page.entries.len() as i32),
            continuation_token: input.continuation_token,
            next_continuation_token: next,
            start_after: shown(input.start_after),
            is_truncated: Some(page.truncated),
            contents: Some(objects),
            common_prefixes: Some(prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        })
    }

    /// ListObjects (V1, markers).
    pub async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<ListObjectsOutput> {
        let input = req.input;
        let max = max_keys(input.max_keys)?;
        let query = list_query(&input.prefix, &input.delimiter, input.marker.clone(), max);
        let page = self.list_page(input.bucket.clone(), query).await?;
        let encode = wants_url(input.encoding_type.as_ref());
        let (objects, prefixes) = contents(&page, encode);
        // NextMarker is sent when a delimiter is given (S3's rule); clients
        // use the last key otherwise.
        let next_marker = (page.truncated && input.delimiter.is_some())
            .then(|| page.entries.last().map(|e| e.name().to_string()))
            .flatten();
        let shown = |text: Option<String>| text.map(|t| if encode { url_encode(&t) } else { t });
        Ok(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: shown(Some(input.prefix.unwrap_or_default())),
            marker: shown(Some(input.marker.unwrap_or_default())),
            next_marker: shown(next_marker),
            delimiter: shown(input.delimiter),
            max_keys: Some(max as i32),
            is_truncated: Some(page.truncated),
            contents: Some(objects),
            common_prefixes: Some(prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        })
    }

    /// ListObjectVersions: every object as its one version, "null".
    pub async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<ListObjectVersionsOutput> {
        let input = req.input;
        let max = max_keys(input.max_keys)?;
        let query = list_query(
            &input.prefix,
            &input.delimiter,
            input.key_marker.clone(),
            max,
        );
        let page = self.list_page(input.bucket.clone(), query).await?;
        let encode = wants_url(input.encoding_type.as_ref());
        let (objects, prefixes) = contents(&page, encode);
        let next = page
            .truncated
            .then(|| page.entries.last().map(|e| e.name().to_string()))
            .flatten();
        // With encoding-type=url every name is encoded, markers too
        // (botocore decodes them all).
        let shown = |text: Option<String>| text.map(|t| if encode { url_encode(&t) } else { t });
        Ok(ListObjectVersionsOutput {
            name: Some(input.bucket),
            prefix: shown(input.prefix),
            delimiter: shown(input.delimiter),
            key_marker: shown(input.key_marker),
            max_keys: Some(max as i32),
            is_truncated: Some(page.truncated),
            next_version_id_marker: next.as_ref().map(|_| "null".to_string()),
            next_key_marker: shown(next),
            versions: Some(
                objects
                    .into_iter()
                    .map(|o| ObjectVersion {
                        key: o.key,
                        size: o.size,
                        e_tag: o.e_tag,
                        last_modified: o.last_modified,
                        is_latest: Some(true),
                        version_id: Some("null".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            common_prefixes: Some(prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_keeps_unreserved_characters_and_slashes() {
        assert_eq!(url_encode("a/b c+&=ü~"), "a/b%20c%2B%26%3D%C3%BC~");
    }

    #[test]
    fn a_continuation_token_carries_any_key_back() {
        for key in ["", "a/b", "key with spaces +&= ü"] {
            assert_eq!(decode_token(&encode_token(key)).unwrap(), key);
        }
        assert!(decode_token("!!").is_err());
    }
}
