//! The S3 index: buckets, object records, multipart uploads and blob
//! reference counts, on an ordered key-value store (`kv`: one redb file, or
//! PostgreSQL). Every change is one ACID transaction, committed durably
//! before the caller answers: a
//! crash never leaves a key pointing at a blob its write did not commit
//! (records are written only after the blob's write committed), and never
//! loses an acknowledged record.
//!
//! Blobs are content-addressed, so several keys and parts may share one:
//! each record and part counts as one reference. A blob whose count drops
//! to zero is collected after a grace period (`claim_unreferenced`), and a
//! new reference to a blob being collected, or by a write that a
//! collection overtook, is refused (`Collecting`): the writer stores the
//! bytes again once the collection is over (see `refs`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::assemble::{assemble, AssembleError};
use super::kv::{KvStore, RedbKv, Table, Txn};
use super::listing::{self, Entry, KeyScan, ListQuery, Page};
use super::records::{
    BucketRecord, ChosenPart, ObjectRecord, ObjectSummary, PartRecord, UploadRecord,
};

/// Whether a blob may be deleted outside S3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteClaim {
    /// No S3 key or upload refers to it; it is claimed for the delete
    /// (the claim's token, for [`Index::collected`]).
    Claimed {
        /// The claim's token.
        token: u64,
    },
    /// This many S3 object records and upload parts refer to it.
    Referenced(u64),
}

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
    pub(super) fn store(e: impl std::fmt::Display) -> Self {
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

/// The index, on an embedded or a PostgreSQL store.
pub struct Index {
    kv: Box<dyn KvStore>,
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

fn get<T: DeserializeOwned>(
    txn: &mut dyn Txn,
    table: Table,
    key: &[u8],
) -> Result<Option<T>, IndexError> {
    txn.get(table, key)?.map(|v| decode(&v)).transpose()
}

fn put<T: Serialize>(
    txn: &mut dyn Txn,
    table: Table,
    key: &[u8],
    value: &T,
) -> Result<(), IndexError> {
    txn.put(table, key, &encode(value))
}

fn require_bucket(txn: &mut dyn Txn, bucket: &str) -> Result<(), IndexError> {
    match txn.get(Table::Buckets, bucket.as_bytes())? {
        Some(_) => Ok(()),
        None => Err(IndexError::NoSuchBucket(bucket.to_string())),
    }
}

fn require_upload(
    txn: &mut dyn Txn,
    bucket: &str,
    key: &str,
    id: &str,
) -> Result<UploadRecord, IndexError> {
    get::<UploadRecord>(txn, Table::Uploads, id.as_bytes())?
        .filter(|u| u.bucket == bucket && u.key == key)
        .ok_or_else(|| IndexError::NoSuchUpload(id.to_string()))
}

/// Writes (or with `None` removes) a key's object, moving references.
fn replace_object(
    txn: &mut dyn Txn,
    bucket: &str,
    key: &str,
    record: Option<&ObjectRecord>,
    condition: &WriteCondition,
    now_ms: u64,
) -> Result<(), IndexError> {
    let k = object_key(bucket, key);
    let current: Option<ObjectRecord> = get(txn, Table::Objects, &k)?;
    condition.check(current.as_ref())?;
    if let Some(record) = record {
        for blob in record.blobs() {
            add_ref(txn, blob)?;
        }
        put(txn, Table::Objects, &k, record)?;
    } else {
        txn.delete(Table::Objects, &k)?;
    }
    for blob in current.iter().flat_map(ObjectRecord::blobs) {
        drop_ref(txn, blob, now_ms)?;
    }
    Ok(())
}

fn parts_of(
    txn: &mut dyn Txn,
    id: &str,
    after: u32,
    max: usize,
) -> Result<Vec<(u32, PartRecord)>, IndexError> {
    let mut prefix = id.as_bytes().to_vec();
    prefix.push(0);
    let from = part_key(id, after);
    let after = (after > 0).then_some(from.as_slice());
    txn.scan(Table::Parts, &prefix, after, max)?
        .into_iter()
        .map(|(k, v)| {
            let number = u32::from_be_bytes(k[k.len() - 4..].try_into().expect("4 bytes"));
            Ok((number, decode(&v)?))
        })
        .collect()
}

/// Records part `number` of upload `id`, moving references.
fn put_part(
    txn: &mut dyn Txn,
    (bucket, key, id): (&str, &str, &str),
    number: u32,
    part: &PartRecord,
    now_ms: u64,
) -> Result<(), IndexError> {
    let mut upload = require_upload(txn, bucket, key, id)?;
    let k = part_key(id, number);
    add_ref(txn, &part.blob)?;
    if let Some(old) = get::<PartRecord>(txn, Table::Parts, &k)? {
        drop_ref(txn, &old.blob, now_ms)?;
    }
    upload.last_part_ms = Some(now_ms);
    put(txn, Table::Uploads, id.as_bytes(), &upload)?;
    put(txn, Table::Parts, &k, part)
}

fn remove_upload(txn: &mut dyn Txn, id: &str, now_ms: u64) -> Result<(), IndexError> {
    for (number, part) in parts_of(txn, id, 0, usize::MAX)? {
        drop_ref(txn, &part.blob, now_ms)?;
        txn.delete(Table::Parts, &part_key(id, number))?;
    }
    txn.delete(Table::Uploads, id.as_bytes())
}

fn all_uploads(txn: &mut dyn Txn) -> Result<Vec<(String, UploadRecord)>, IndexError> {
    txn.scan(Table::Uploads, b"", None, usize::MAX)?
        .into_iter()
        .map(|(k, v)| {
            Ok((
                String::from_utf8(k).map_err(IndexError::store)?,
                decode(&v)?,
            ))
        })
        .collect()
}

impl Index {
    /// The embedded index in the file at `path` (created if missing).
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        Ok(Self::on(Box::new(RedbKv::open(path)?)))
    }

    /// The index in PostgreSQL at `url` (the table is created if missing).
    pub fn postgres(url: &str) -> Result<Self, IndexError> {
        Ok(Self::on(Box::new(super::postgres_kv::PostgresKv::connect(
            url,
        )?)))
    }

    /// Opens the index where `location` says.
    pub fn at(location: &super::server::IndexLocation) -> Result<Self, IndexError> {
        match location {
            super::server::IndexLocation::File(path) => Self::open(path),
            super::server::IndexLocation::Postgres(url) => Self::postgres(url),
        }
    }

    /// The index on `kv`.
    pub fn on(kv: Box<dyn KvStore>) -> Self {
        Self { kv }
    }

    fn write<T>(
        &self,
        mut body: impl FnMut(&mut dyn Txn) -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        let mut out = None;
        self.kv.transact(true, &mut |txn| {
            out = Some(body(txn)?);
            Ok(())
        })?;
        Ok(out.expect("the body ran"))
    }

    fn read<T>(
        &self,
        mut body: impl FnMut(&mut dyn Txn) -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        let mut out = None;
        self.kv.transact(false, &mut |txn| {
            out = Some(body(txn)?);
            Ok(())
        })?;
        Ok(out.expect("the body ran"))
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, bucket: &str, now_ms: u64) -> Result<(), IndexError> {
        self.write(|txn| {
            if txn.get(Table::Buckets, bucket.as_bytes())?.is_some() {
                return Err(IndexError::BucketExists(bucket.to_string()));
            }
            put(
                txn,
                Table::Buckets,
                bucket.as_bytes(),
                &BucketRecord { created_ms: now_ms },
            )
        })
    }

    /// Deletes an empty bucket; its unfinished uploads are aborted.
    pub fn delete_bucket(&self, bucket: &str, now_ms: u64) -> Result<(), IndexError> {
        self.write(|txn| {
            require_bucket(txn, bucket)?;
            if !txn
                .scan(Table::Objects, &object_key(bucket, ""), None, 1)?
                .is_empty()
            {
                return Err(IndexError::BucketNotEmpty(bucket.to_string()));
            }
            for (id, upload) in all_uploads(txn)? {
                if upload.bucket == bucket {
                    remove_upload(txn, &id, now_ms)?;
                }
            }
            txn.delete(Table::Buckets, bucket.as_bytes())
        })
    }

    /// Whether the bucket exists.
    pub fn bucket_exists(&self, bucket: &str) -> Result<bool, IndexError> {
        self.read(|txn| Ok(txn.get(Table::Buckets, bucket.as_bytes())?.is_some()))
    }

    /// Every bucket with its creation time, by name.
    pub fn buckets(&self) -> Result<Vec<(String, BucketRecord)>, IndexError> {
        self.read(|txn| {
            txn.scan(Table::Buckets, b"", None, usize::MAX)?
                .into_iter()
                .map(|(k, v)| {
                    Ok((
                        String::from_utf8(k).map_err(IndexError::store)?,
                        decode(&v)?,
                    ))
                })
                .collect()
        })
    }

    /// The object at `key`, if any.
    pub fn object(&self, bucket: &str, key: &str) -> Result<Option<ObjectRecord>, IndexError> {
        self.read(|txn| {
            require_bucket(txn, bucket)?;
            get(txn, Table::Objects, &object_key(bucket, key))
        })
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
            require_bucket(txn, bucket)?;
            replace_object(txn, bucket, key, Some(record), condition, now_ms)
        })
    }

    /// [`Index::put_object`] of a record whose blob S3 just stored:
    /// refused (`Collecting`) when the blob was claimed or collected since
    /// `ticket` was given (the bytes written may be gone).
    pub fn put_object_stored(
        &self,
        (bucket, key): (&str, &str),
        record: &ObjectRecord,
        condition: &WriteCondition,
        ticket: &WriteTicket,
        now_ms: u64,
    ) -> Result<(), IndexError> {
        self.write(|txn| {
            require_bucket(txn, bucket)?;
            ticket.check(txn)?;
            replace_object(txn, bucket, key, Some(record), condition, now_ms)
        })
    }

    /// Writes `record` at every key of `keys` in one transaction (bulk
    /// loads: benchmarks, imports). Keys holding an object are replaced.
    pub fn put_many(
        &self,
        bucket: &str,
        keys: impl Iterator<Item = String>,
        record: &ObjectRecord,
    ) -> Result<(), IndexError> {
        let keys: Vec<String> = keys.collect();
        self.write(|txn| {
            require_bucket(txn, bucket)?;
            for key in &keys {
                replace_object(
                    txn,
                    bucket,
                    key,
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
        self.delete_object_if(bucket, key, &WriteCondition::default(), now_ms)
    }

    /// Deletes the object at `key` if `condition` holds (`If-Match`: the
    /// key has that ETag); whether there was one.
    pub fn delete_object_if(
        &self,
        bucket: &str,
        key: &str,
        condition: &WriteCondition,
        now_ms: u64,
    ) -> Result<bool, IndexError> {
        self.write(|txn| {
            require_bucket(txn, bucket)?;
            let current: Option<ObjectRecord> = get(txn, Table::Objects, &object_key(bucket, key))?;
            condition.check(current.as_ref())?;
            if current.is_some() {
                replace_object(txn, bucket, key, None, condition, now_ms)?;
            }
            Ok(current.is_some())
        })
    }

    /// Sets the tags of the object at `key` (its bytes, ETag and
    /// modification time stay); whether there is one.
    pub fn set_tags(
        &self,
        bucket: &str,
        key: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<bool, IndexError> {
        self.write(|txn| {
            require_bucket(txn, bucket)?;
            let k = object_key(bucket, key);
            let Some(mut record): Option<ObjectRecord> = get(txn, Table::Objects, &k)? else {
                return Ok(false);
            };
            record.tags = tags.clone();
            put(txn, Table::Objects, &k, &record)?;
            Ok(true)
        })
    }

    /// Copies the object at `from` to `to` in one transaction (no bytes
    /// move: the copy refers to the same blobs); `edit` may change the
    /// copy's metadata. Returns the copy.
    pub fn copy_object(
        &self,
        from: (&str, &str),
        to: (&str, &str),
        edit: impl Fn(ObjectRecord) -> ObjectRecord,
        now_ms: u64,
    ) -> Result<Option<ObjectRecord>, IndexError> {
        self.write(|txn| {
            require_bucket(txn, from.0)?;
            require_bucket(txn, to.0)?;
            let Some(source) =
                get::<ObjectRecord>(txn, Table::Objects, &object_key(from.0, from.1))?
            else {
                return Ok(None);
            };
            let copy = edit(source);
            replace_object(
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
        self.read(|txn| {
            require_bucket(txn, bucket)?;
            listing::list(&mut ObjectScan { txn, bucket }, query)
        })
    }

    /// Starts a multipart upload; returns its id.
    pub fn create_upload(&self, upload: &UploadRecord) -> Result<String, IndexError> {
        let id = new_upload_id();
        self.write(|txn| {
            require_bucket(txn, &upload.bucket)?;
            put(txn, Table::Uploads, id.as_bytes(), upload)
        })?;
        Ok(id)
    }

    /// The upload `id` of `bucket`/`key`.
    pub fn upload(&self, bucket: &str, key: &str, id: &str) -> Result<UploadRecord, IndexError> {
        self.read(|txn| require_upload(txn, bucket, key, id))
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
        self.write(|txn| put_part(txn, (bucket, key, id), number, part, now_ms))
    }

    /// [`Index::put_part`] of a part whose blob S3 just stored: refused
    /// (`Collecting`) when the blob was claimed or collected since
    /// `ticket` was given.
    pub fn put_part_stored(
        &self,
        (bucket, key, id): (&str, &str, &str),
        number: u32,
        part: &PartRecord,
        ticket: &WriteTicket,
        now_ms: u64,
    ) -> Result<(), IndexError> {
        self.write(|txn| {
            ticket.check(txn)?;
            put_part(txn, (bucket, key, id), number, part, now_ms)
        })
    }

    /// The parts of upload `id`, by number, from `after` on (exclusive).
    pub fn parts(
        &self,
        id: &str,
        after: u32,
        max: usize,
    ) -> Result<Vec<(u32, PartRecord)>, IndexError> {
        self.read(|txn| parts_of(txn, id, after, max))
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
            let upload = require_upload(txn, bucket, key, id)?;
            let uploaded: BTreeMap<u32, PartRecord> =
                parts_of(txn, id, 0, usize::MAX)?.into_iter().collect();
            let object = assemble(&uploaded, chosen)?;
            let record = ObjectRecord {
                parts: object.parts,
                size: object.size,
                etag: object.etag,
                checksums: BTreeMap::new(),
                content_type: upload.content_type,
                metadata: upload.metadata,
                headers: upload.headers,
                tags: upload.tags,
                modified_ms: now_ms,
            };
            require_bucket(txn, bucket)?;
            replace_object(txn, bucket, key, Some(&record), condition, now_ms)?;
            remove_upload(txn, id, now_ms)?;
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
            require_upload(txn, bucket, key, id)?;
            remove_upload(txn, id, now_ms)
        })
    }

    /// The bucket's uploads in progress, by key then id.
    pub fn uploads(&self, bucket: &str) -> Result<Vec<(String, UploadRecord)>, IndexError> {
        let mut found: Vec<(String, UploadRecord)> = self
            .read(all_uploads)?
            .into_iter()
            .filter(|(_, u)| u.bucket == bucket)
            .collect();
        found.sort_by(|a, b| (&a.1.key, &a.0).cmp(&(&b.1.key, &b.0)));
        Ok(found)
    }

    /// Uploads (of any bucket) last active (created, or sent a part)
    /// before `before_ms`: abandoned.
    pub fn uploads_idle_since(
        &self,
        before_ms: u64,
    ) -> Result<Vec<(String, UploadRecord)>, IndexError> {
        Ok(self
            .read(all_uploads)?
            .into_iter()
            .filter(|(_, u)| u.last_active_ms() < before_ms)
            .collect())
    }
}

/// Upload ids: 128 random bits in hex (never starting with `-`, which
/// command lines would take for an option).
fn new_upload_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom(&mut bytes);
    crate::hex::encode(&bytes)
}

fn getrandom(bytes: &mut [u8]) {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(bytes))
        .expect("the system's random source");
}

/// A listing scan over the objects of one bucket.
struct ObjectScan<'a> {
    txn: &'a mut dyn Txn,
    bucket: &'a str,
}

impl KeyScan<ObjectSummary> for ObjectScan<'_> {
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
        let after = (!after.is_empty()).then_some(from.as_slice());
        self.txn
            .scan(Table::Objects, &start, after, limit)?
            .into_iter()
            .map(|(k, v)| {
                let key = String::from_utf8(k[base.len()..].to_vec()).map_err(IndexError::store)?;
                let record: ObjectRecord = decode(&v)?;
                Ok((key, ObjectSummary::from(&record)))
            })
            .collect()
    }
}

/// Lists keys and common prefixes as strings (for tests).
pub fn names(page: &Page<ObjectSummary>) -> Vec<&str> {
    page.entries.iter().map(Entry::name).collect()
}

pub mod conformance;
mod objects_of_blobs;
mod refs;
pub use objects_of_blobs::{ObjectOfBlob, ObjectsOfBlobs, ScanBound};
use refs::{add_ref, drop_ref};
pub use refs::{Claim, ClaimMark, WriteTicket, CLAIMS_PER_ROUND, CLAIM_LEASE_MS};
#[cfg(test)]
mod tests;
