//! The S3 index, embedded: buckets, object records, multipart uploads and
//! blob reference counts in one redb file. Every change is one ACID
//! transaction, committed durably (fsync) before the caller answers: a
//! crash never leaves a key pointing at a blob its write did not commit
//! (records are written only after the blob's write committed), and never
//! loses an acknowledged record.
//!
//! Blobs are content-addressed, so several keys and parts may share one:
//! each record and part counts as one reference. A blob whose count drops
//! to zero is collected after a grace period (`claim_unreferenced`), and a
//! new reference to a blob being collected is refused (`Collecting`): the
//! writer stores the bytes again once the collection is over.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::assemble::{assemble, AssembleError};
use super::listing::{self, Entry, KeyScan, ListQuery, Page};
use super::records::{
    BlobRefs, BucketRecord, ChosenPart, ObjectRecord, ObjectSummary, PartRecord, UploadRecord,
};

const BUCKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("buckets");
/// Key: bucket, a zero byte, object key.
const OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("objects");
const UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("uploads");
/// Key: upload id, a zero byte, the part number (4 bytes, big-endian).
const PARTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("parts");
const REFS: TableDefinition<&str, &[u8]> = TableDefinition::new("blob_refs");

/// A failed index operation.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The bucket does not exist.
    #[error("the bucket {0} does not exist")]
    NoSuchBucket(String),
    /// The bucket exists already.
    #[error("the bucket {0} exists already")]
    BucketExists(String),
    /// The bucket still holds objects.
    #[error("the bucket {0} is not empty")]
    BucketNotEmpty(String),
    /// The upload does not exist (never, completed or aborted).
    #[error("the multipart upload {0} does not exist")]
    NoSuchUpload(String),
    /// A condition of the write does not hold.
    #[error("{0}")]
    PreconditionFailed(String),
    /// The parts named cannot make the object.
    #[error(transparent)]
    Assemble(#[from] AssembleError),
    /// A blob to refer to is being collected: store its bytes again.
    #[error("blob {0} is being collected; its bytes must be stored again")]
    Collecting(String),
    /// The store failed.
    #[error("index store: {0}")]
    Store(String),
}

impl IndexError {
    fn store(e: impl std::fmt::Display) -> Self {
        IndexError::Store(e.to_string())
    }
}

/// A condition on the current value of a key, checked in the transaction
/// that writes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteCondition {
    /// `If-None-Match: *`: only if the key has no object.
    pub if_absent: bool,
    /// `If-Match: ETAG`: only if the key's object has this ETag.
    pub if_etag: Option<String>,
}

impl WriteCondition {
    fn check(&self, current: Option<&ObjectRecord>) -> Result<(), IndexError> {
        if self.if_absent && current.is_some() {
            return Err(IndexError::PreconditionFailed(
                "the key has an object (If-None-Match: *)".into(),
            ));
        }
        if let Some(etag) = &self.if_etag {
            if current.is_none_or(|c| &c.etag != etag) {
                return Err(IndexError::PreconditionFailed(
                    "the key's object has another ETag (If-Match)".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The embedded index.
pub struct Index {
    db: Database,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("serializable")
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, IndexError> {
    serde_json::from_slice(bytes).map_err(IndexError::store)
}

fn object_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + 1 + key.len());
    k.extend_from_slice(bucket.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn part_key(upload: &str, number: u32) -> Vec<u8> {
    let mut k = upload.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&number.to_be_bytes());
    k
}

fn get<T: DeserializeOwned, K: redb::Key + 'static>(
    table: &impl ReadableTable<K, &'static [u8]>,
    key: K::SelfType<'_>,
) -> Result<Option<T>, IndexError> {
    table
        .get(key)
        .map_err(IndexError::store)?
        .map(|v| decode(v.value()))
        .transpose()
}

/// Adds one reference to `blob`; refused while it is being collected.
fn add_ref(refs: &mut Table<&str, &[u8]>, blob: &str) -> Result<(), IndexError> {
    let mut count: BlobRefs = get(refs, blob)?.unwrap_or_default();
    if count.collecting {
        return Err(IndexError::Collecting(blob.to_string()));
    }
    count.count += 1;
    count.unreferenced_since_ms = None;
    refs.insert(blob, encode(&count).as_slice())
        .map_err(IndexError::store)?;
    Ok(())
}

/// Drops one reference to `blob`, noting when it reached zero.
fn drop_ref(refs: &mut Table<&str, &[u8]>, blob: &str, now_ms: u64) -> Result<(), IndexError> {
    let mut count: BlobRefs = get(refs, blob)?.unwrap_or_default();
    count.count = count.count.saturating_sub(1);
    if count.count == 0 && count.unreferenced_since_ms.is_none() {
        count.unreferenced_since_ms = Some(now_ms);
    }
    refs.insert(blob, encode(&count).as_slice())
        .map_err(IndexError::store)?;
    Ok(())
}

impl Index {
    /// Opens (or creates) the index file at `path`.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(IndexError::store)?;
        }
        let db = Database::create(path).map_err(IndexError::store)?;
        let txn = db.begin_write().map_err(IndexError::store)?;
        for table in [BUCKETS, UPLOADS, REFS] {
            txn.open_table(table).map_err(IndexError::store)?;
        }
        txn.open_table(OBJECTS).map_err(IndexError::store)?;
        txn.open_table(PARTS).map_err(IndexError::store)?;
        txn.commit().map_err(IndexError::store)?;
        Ok(Self { db })
    }

    fn write<T>(
        &self,
        body: impl FnOnce(&redb::WriteTransaction) -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        let txn = self.db.begin_write().map_err(IndexError::store)?;
        let value = body(&txn)?;
        txn.commit().map_err(IndexError::store)?;
        Ok(value)
    }

    fn read(&self) -> Result<redb::ReadTransaction, IndexError> {
        self.db.begin_read().map_err(IndexError::store)
    }

    fn require_bucket(txn: &redb::WriteTransaction, bucket: &str) -> Result<(), IndexError> {
        let buckets = txn.open_table(BUCKETS).map_err(IndexError::store)?;
        let exists = buckets.get(bucket).map_err(IndexError::store)?.is_some();
        if exists {
            Ok(())
        } else {
            Err(IndexError::NoSuchBucket(bucket.to_string()))
        }
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, bucket: &str, now_ms: u64) -> Result<(), IndexError> {
        self.write(|txn| {
            let mut buckets = txn.open_table(BUCKETS).map_err(IndexError::store)?;
            if buckets.get(bucket).map_err(IndexError::store)?.is_some() {
                return Err(IndexError::BucketExists(bucket.to_string()));
            }
            let record = encode(&BucketRecord { created_ms: now_ms });
            buckets
                .insert(bucket, record.as_slice())
                .map_err(IndexError::store)?;
            Ok(())
        })
    }

    /// Deletes an empty bucket; its unfinished uploads are aborted.
    pub fn delete_bucket(&self, bucket: &str, now_ms: u64) -> Result<(), IndexError> {
        self.write(|txn| {
            Self::require_bucket(txn, bucket)?;
            let objects = txn.open_table(OBJECTS).map_err(IndexError::store)?;
            let start = object_key(bucket, "");
            let first = objects
                .range(start.as_slice()..)
                .map_err(IndexError::store)?
                .next()
                .transpose()
                .map_err(IndexError::store)?;
            if first.is_some_and(|(k, _)| k.value().starts_with(&start)) {
                return Err(IndexError::BucketNotEmpty(bucket.to_string()));
            }
            let uploads: Vec<String> = Self::uploads_in(txn, bucket)?
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            for upload in uploads {
                Self::remove_upload(txn, &upload, now_ms)?;
            }
            let mut buckets = txn.open_table(BUCKETS).map_err(IndexError::store)?;
            buckets.remove(bucket).map_err(IndexError::store)?;
            Ok(())
        })
    }

    /// Whether the bucket exists.
    pub fn bucket_exists(&self, bucket: &str) -> Result<bool, IndexError> {
        let txn = self.read()?;
        let buckets = txn.open_table(BUCKETS).map_err(IndexError::store)?;
        Ok(buckets.get(bucket).map_err(IndexError::store)?.is_some())
    }

    /// Every bucket with its creation time, by name.
    pub fn buckets(&self) -> Result<Vec<(String, BucketRecord)>, IndexError> {
        let txn = self.read()?;
        let buckets = txn.open_table(BUCKETS).map_err(IndexError::store)?;
        buckets
            .iter()
            .map_err(IndexError::store)?
            .map(|row| {
                let (k, v) = row.map_err(IndexError::store)?;
                Ok((k.value().to_string(), decode(v.value())?))
            })
            .collect()
    }

    /// The object at `key`, if any.
    pub fn object(&self, bucket: &str, key: &str) -> Result<Option<ObjectRecord>, IndexError> {
        let txn = self.read()?;
        let buckets = txn.open_table(BUCKETS).map_err(IndexError::store)?;
        if buckets.get(bucket).map_err(IndexError::store)?.is_none() {
            return Err(IndexError::NoSuchBucket(bucket.to_string()));
        }
        let objects = txn.open_table(OBJECTS).map_err(IndexError::store)?;
        get(&objects, object_key(bucket, key).as_slice())
    }

    /// Writes the object at `key` if `condition` holds, replacing what was
    /// there (whose blobs lose a reference).
    pub fn put_object(
        &self,
        bucket: &str,
        key: &str,
        record: &ObjectRecord,
        condition: &WriteCondition,
        now_ms: u64,
    ) -> Result<(), IndexError> {
        self.write(|txn| {
            Self::require_bucket(txn, bucket)?;
            Self::replace_object(txn, bucket, key, Some(record), condition, now_ms)
        })
    }

    /// Writes (or with `None` removes) a key's object, moving references.
    fn replace_object(
        txn: &redb::WriteTransaction,
        bucket: &str,
        key: &str,
        record: Option<&ObjectRecord>,
        condition: &WriteCondition,
        now_ms: u64,
    ) -> Result<(), IndexError> {
        let mut objects = txn.open_table(OBJECTS).map_err(IndexError::store)?;
        let mut refs = txn.open_table(REFS).map_err(IndexError::store)?;
        let k = object_key(bucket, key);
        let current: Option<ObjectRecord> = get(&objects, k.as_slice())?;
        condition.check(current.as_ref())?;
        if let Some(record) = record {
            for blob in record.blobs() {
                add_ref(&mut refs, blob)?;
            }
            objects
                .insert(k.as_slice(), encode(record).as_slice())
                .map_err(IndexError::store)?;
        } else {
            objects.remove(k.as_slice()).map_err(IndexError::store)?;
        }
        for blob in current.iter().flat_map(ObjectRecord::blobs) {
            drop_ref(&mut refs, blob, now_ms)?;
        }
        Ok(())
    }

    /// Writes `record` at every key of `keys` in one transaction (bulk
    /// loads: benchmarks, imports). Keys holding an object are replaced.
    pub fn put_many(
        &self,
        bucket: &str,
        keys: impl Iterator<Item = String>,
        record: &ObjectRecord,
    ) -> Result<(), IndexError> {
        self.write(|txn| {
            Self::require_bucket(txn, bucket)?;
            for key in keys {
                Self::replace_object(
                    txn,
                    bucket,
                    &key,
                    Some(record),
                    &WriteCondition::default(),
                    record.modified_ms,
                )?;
            }
            Ok(())
        })
    }

    /// Removes the object at `key`; true when there was one.
    pub fn delete_object(&self, bucket: &str, key: &str, now_ms: u64) -> Result<bool, IndexError> {
        self.write(|txn| {
            Self::require_bucket(txn, bucket)?;
            let existed = {
                let objects = txn.open_table(OBJECTS).map_err(IndexError::store)?;
                get::<ObjectRecord, _>(&objects, object_key(bucket, key).as_slice())?.is_some()
            };
            if existed {
                Self::replace_object(txn, bucket, key, None, &WriteCondition::default(), now_ms)?;
            }
            Ok(existed)
        })
    }

    /// Copies the object at `from` to `to` in one transaction (no bytes
    /// move: the copy refers to the same blobs); `edit` may change the
    /// copy's metadata. Returns the copy.
    pub fn copy_object(
        &self,
        from: (&str, &str),
        to: (&str, &str),
        edit: impl FnOnce(ObjectRecord) -> ObjectRecord,
        now_ms: u64,
    ) -> Result<Option<ObjectRecord>, IndexError> {
        self.write(|txn| {
            Self::require_bucket(txn, from.0)?;
            Self::require_bucket(txn, to.0)?;
            let source: Option<ObjectRecord> = {
                let objects = txn.open_table(OBJECTS).map_err(IndexError::store)?;
                get(&objects, object_key(from.0, from.1).as_slice())?
            };
            let Some(source) = source else {
                return Ok(None);
            };
            let copy = edit(source);
            Self::replace_object(
                txn,
                to.0,
                to.1,
                Some(&copy),
                &WriteCondition::default(),
                now_ms,
            )?;
            Ok(Some(copy))
        })
    }

    /// A page of the bucket's keys.
    pub fn list(&self, bucket: &str, query: &ListQuery) -> Result<Page<ObjectSummary>, IndexError> {
        let txn = self.read()?;
        let buckets = txn.open_table(BUCKETS).map_err(IndexError::store)?;
        if buckets.get(bucket).map_err(IndexError::store)?.is_none() {
            return Err(IndexError::NoSuchBucket(bucket.to_string()));
        }
        let objects = txn.open_table(OBJECTS).map_err(IndexError::store)?;
        let mut scan = ObjectScan {
            table: &objects,
            bucket,
        };
        listing::list(&mut scan, query)
    }

    /// Starts a multipart upload; returns its id.
    pub fn create_upload(&self, upload: &UploadRecord) -> Result<String, IndexError> {
        let id = new_upload_id();
        self.write(|txn| {
            Self::require_bucket(txn, &upload.bucket)?;
            let mut uploads = txn.open_table(UPLOADS).map_err(IndexError::store)?;
            uploads
                .insert(id.as_str(), encode(upload).as_slice())
                .map_err(IndexError::store)?;
            Ok(())
        })?;
        Ok(id)
    }

    /// The upload `id` of `bucket`/`key`.
    pub fn upload(&self, bucket: &str, key: &str, id: &str) -> Result<UploadRecord, IndexError> {
        let txn = self.read()?;
        let uploads = txn.open_table(UPLOADS).map_err(IndexError::store)?;
        get::<UploadRecord, _>(&uploads, id)?
            .filter(|u| u.bucket == bucket && u.key == key)
            .ok_or_else(|| IndexError::NoSuchUpload(id.to_string()))
    }

    /// Records part `number` of upload `id` (replacing an earlier upload
    /// of the same number).
    pub fn put_part(
        &self,
        (bucket, key, id): (&str, &str, &str),
        number: u32,
        part: &PartRecord,
        now_ms: u64,
    ) -> Result<(), IndexError> {
        self.write(|txn| {
            {
                let uploads = txn.open_table(UPLOADS).map_err(IndexError::store)?;
                get::<UploadRecord, _>(&uploads, id)?
                    .filter(|u| u.bucket == bucket && u.key == key)
                    .ok_or_else(|| IndexError::NoSuchUpload(id.to_string()))?;
            }
            let mut parts = txn.open_table(PARTS).map_err(IndexError::store)?;
            let mut refs = txn.open_table(REFS).map_err(IndexError::store)?;
            let k = part_key(id, number);
            add_ref(&mut refs, &part.blob)?;
            if let Some(old) = get::<PartRecord, _>(&parts, k.as_slice())? {
                drop_ref(&mut refs, &old.blob, now_ms)?;
            }
            parts
                .insert(k.as_slice(), encode(part).as_slice())
                .map_err(IndexError::store)?;
            Ok(())
        })
    }

    /// The parts of upload `id`, by number, from `after` on (exclusive).
    pub fn parts(
        &self,
        id: &str,
        after: u32,
        max: usize,
    ) -> Result<Vec<(u32, PartRecord)>, IndexError> {
        let txn = self.read()?;
        let parts = txn.open_table(PARTS).map_err(IndexError::store)?;
        Self::parts_of(&parts, id, after, max)
    }

    fn parts_of(
        parts: &impl ReadableTable<&'static [u8], &'static [u8]>,
        id: &str,
        after: u32,
        max: usize,
    ) -> Result<Vec<(u32, PartRecord)>, IndexError> {
        let start = part_key(id, after.saturating_add(1));
        let end = part_key(id, u32::MAX);
        let mut found = Vec::new();
        for row in parts
            .range(start.as_slice()..=end.as_slice())
            .map_err(IndexError::store)?
            .take(max)
        {
            let (k, v) = row.map_err(IndexError::store)?;
            let k = k.value();
            let number = u32::from_be_bytes(k[k.len() - 4..].try_into().expect("4 bytes"));
            found.push((number, decode(v.value())?));
        }
        Ok(found)
    }

    /// Completes upload `id`: the chosen parts become the object at its
    /// key (if `condition` holds), the upload and its other parts go.
    pub fn complete_upload(
        &self,
        (bucket, key, id): (&str, &str, &str),
        chosen: &[ChosenPart],
        condition: &WriteCondition,
        now_ms: u64,
    ) -> Result<ObjectRecord, IndexError> {
        self.write(|txn| {
            let upload: UploadRecord = {
                let uploads = txn.open_table(UPLOADS).map_err(IndexError::store)?;
                get::<UploadRecord, _>(&uploads, id)?
                    .filter(|u| u.bucket == bucket && u.key == key)
                    .ok_or_else(|| IndexError::NoSuchUpload(id.to_string()))?
            };
            let uploaded: BTreeMap<u32, PartRecord> = {
                let parts = txn.open_table(PARTS).map_err(IndexError::store)?;
                Self::parts_of(&parts, id, 0, usize::MAX)?
                    .into_iter()
                    .collect()
            };
            let object = assemble(&uploaded, chosen)?;
            let record = ObjectRecord {
                parts: object.parts,
                size: object.size,
                etag: object.etag,
                checksums: BTreeMap::new(),
                content_type: upload.content_type,
                metadata: upload.metadata,
                modified_ms: now_ms,
            };
            Self::require_bucket(txn, bucket)?;
            Self::replace_object(txn, bucket, key, Some(&record), condition, now_ms)?;
            Self::remove_upload(txn, id, now_ms)?;
            Ok(record)
        })
    }

    /// Aborts upload `id`: its parts lose their references.
    pub fn abort_upload(
        &self,
        (bucket, key, id): (&str, &str, &str),
        now_ms: u64,
    ) -> Result<(), IndexError> {
        self.write(|txn| {
            {
                let uploads = txn.open_table(UPLOADS).map_err(IndexError::store)?;
                get::<UploadRecord, _>(&uploads, id)?
                    .filter(|u| u.bucket == bucket && u.key == key)
                    .ok_or_else(|| IndexError::NoSuchUpload(id.to_string()))?;
            }
            Self::remove_upload(txn, id, now_ms)
        })
    }

    fn remove_upload(
        txn: &redb::WriteTransaction,
        id: &str,
        now_ms: u64,
    ) -> Result<(), IndexError> {
        let mut uploads = txn.open_table(UPLOADS).map_err(IndexError::store)?;
        let mut parts = txn.open_table(PARTS).map_err(IndexError::store)?;
        let mut refs = txn.open_table(REFS).map_err(IndexError::store)?;
        for (number, part) in Self::parts_of(&parts, id, 0, usize::MAX)? {
            drop_ref(&mut refs, &part.blob, now_ms)?;
            parts
                .remove(part_key(id, number).as_slice())
                .map_err(IndexError::store)?;
        }
        uploads.remove(id).map_err(IndexError::store)?;
        Ok(())
    }

    fn uploads_in(
        txn: &redb::WriteTransaction,
        bucket: &str,
    ) -> Result<Vec<(String, UploadRecord)>, IndexError> {
        let uploads = txn.open_table(UPLOADS).map_err(IndexError::store)?;
        let mut found = Vec::new();
        for row in uploads.iter().map_err(IndexError::store)? {
            let (k, v) = row.map_err(IndexError::store)?;
            let upload: UploadRecord = decode(v.value())?;
            if upload.bucket == bucket {
                found.push((k.value().to_string(), upload));
            }
        }
        Ok(found)
    }

    /// The bucket's uploads in progress, by key then id.
    pub fn uploads(&self, bucket: &str) -> Result<Vec<(String, UploadRecord)>, IndexError> {
        let txn = self.read()?;
        let uploads = txn.open_table(UPLOADS).map_err(IndexError::store)?;
        let mut found = Vec::new();
        for row in uploads.iter().map_err(IndexError::store)? {
            let (k, v) = row.map_err(IndexError::store)?;
            let upload: UploadRecord = decode(v.value())?;
            if upload.bucket == bucket {
                found.push((k.value().to_string(), upload));
            }
        }
        found.sort_by(|a, b| (&a.1.key, &a.0).cmp(&(&b.1.key, &b.0)));
        Ok(found)
    }

    /// Uploads (of any bucket) created before `before_ms`: abandoned.
    pub fn uploads_older_than(
        &self,
        before_ms: u64,
    ) -> Result<Vec<(String, UploadRecord)>, IndexError> {
        let txn = self.read()?;
        let uploads = txn.open_table(UPLOADS).map_err(IndexError::store)?;
        let mut found = Vec::new();
        for row in uploads.iter().map_err(IndexError::store)? {
            let (k, v) = row.map_err(IndexError::store)?;
            let upload: UploadRecord = decode(v.value())?;
            if upload.created_ms < before_ms {
                found.push((k.value().to_string(), upload));
            }
        }
        Ok(found)
    }

    /// Claims for collection the blobs unreferenced since before
    /// `before_ms`: from now on a new reference to them is refused until
    /// `collected` says they are gone.
    pub fn claim_unreferenced(&self, before_ms: u64) -> Result<Vec<String>, IndexError> {
        self.write(|txn| {
            let mut refs = txn.open_table(REFS).map_err(IndexError::store)?;
            let mut claimed = Vec::new();
            for row in refs.iter().map_err(IndexError::store)? {
                let (k, v) = row.map_err(IndexError::store)?;
                let count: BlobRefs = decode(v.value())?;
                if count.count == 0
                    && (count.collecting
                        || count.unreferenced_since_ms.is_some_and(|t| t < before_ms))
                {
                    claimed.push(k.value().to_string());
                }
            }
            for blob in &claimed {
                let count = BlobRefs {
                    collecting: true,
                    ..BlobRefs::default()
                };
                refs.insert(blob.as_str(), encode(&count).as_slice())
                    .map_err(IndexError::store)?;
            }
            Ok(claimed)
        })
    }

    /// A blob was stored but nothing came to refer to it (the index write
    /// failed): unless something does, the collector removes it after the
    /// grace period.
    pub fn note_unreferenced(&self, blob: &str, now_ms: u64) -> Result<(), IndexError> {
        self.write(|txn| {
            let mut refs = txn.open_table(REFS).map_err(IndexError::store)?;
            if get::<BlobRefs, _>(&refs, blob)?.is_none() {
                let count = BlobRefs {
                    unreferenced_since_ms: Some(now_ms),
                    ..BlobRefs::default()
                };
                refs.insert(blob, encode(&count).as_slice())
                    .map_err(IndexError::store)?;
            }
            Ok(())
        })
    }

    /// The collector deleted `blob`: it is forgotten, and may be referred
    /// to again (after its bytes are stored again).
    pub fn collected(&self, blob: &str) -> Result<(), IndexError> {
        self.write(|txn| {
            let mut refs = txn.open_table(REFS).map_err(IndexError::store)?;
            refs.remove(blob).map_err(IndexError::store)?;
            Ok(())
        })
    }

    /// The references of `blob` (for tests and diagnostics).
    pub fn refs(&self, blob: &str) -> Result<BlobRefs, IndexError> {
        let txn = self.read()?;
        let refs = txn.open_table(REFS).map_err(IndexError::store)?;
        Ok(get(&refs, blob)?.unwrap_or_default())
    }
}

/// Upload ids: 128 random bits in hex (never starting with `-`, which
/// command lines would take for an option).
fn new_upload_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom(&mut bytes);
    super::assemble::hex(&bytes)
}

fn getrandom(bytes: &mut [u8]) {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(bytes))
        .expect("the system's random source");
}

/// A listing scan over the objects table of one bucket.
struct ObjectScan<'a, T: ReadableTable<&'static [u8], &'static [u8]>> {
    table: &'a T,
    bucket: &'a str,
}

impl<T: ReadableTable<&'static [u8], &'static [u8]>> KeyScan<ObjectSummary> for ObjectScan<'_, T> {
    type Error = IndexError;

    fn scan(
        &mut self,
        prefix: &str,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<(String, ObjectSummary)>, IndexError> {
        let base = object_key(self.bucket, "");
        let start = object_key(self.bucket, prefix);
        let mut from = base.clone();
        from.extend_from_slice(after);
        let lower = if after.is_empty() || from < start {
            std::ops::Bound::Included(start.clone())
        } else {
            std::ops::Bound::Excluded(from)
        };
        let range = (
            lower.as_ref().map(Vec::as_slice),
            std::ops::Bound::Unbounded::<&[u8]>,
        );
        let mut found = Vec::new();
        for row in self
            .table
            .range::<&[u8]>(range)
            .map_err(IndexError::store)?
        {
            let (k, v) = row.map_err(IndexError::store)?;
            let k = k.value();
            if !k.starts_with(&start) {
                break;
            }
            let key = String::from_utf8(k[base.len()..].to_vec()).map_err(IndexError::store)?;
            let record: ObjectRecord = decode(v.value())?;
            found.push((key, ObjectSummary::from(&record)));
            if found.len() == limit {
                break;
            }
        }
        Ok(found)
    }
}

/// Lists keys and common prefixes as strings (for tests).
pub fn names(page: &Page<ObjectSummary>) -> Vec<&str> {
    page.entries.iter().map(Entry::name).collect()
}

#[cfg(test)]
mod tests;
