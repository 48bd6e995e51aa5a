//! Which keys hold the bytes of some blobs: a scan of every object record,
//! for the few blobs the fleet lost (the index counts references per blob
//! but keeps no list of the keys behind them, which every write would
//! have to maintain for a question asked only after a loss).

use std::collections::BTreeSet;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{decode, object_key, Index, IndexError};
use crate::s3::kv::Table;
use crate::s3::records::BlobPart;

/// Object records read per read transaction, so a scan of a large index
/// never holds one snapshot (or one PostgreSQL statement) for long.
const SCAN_PAGE: usize = 1000;

/// One key whose object holds bytes of an asked blob.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectOfBlob {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// The asked blob it holds (the first of its parts that was asked).
    pub blob: String,
}

/// Only the parts of an object record (the rest is not read).
#[derive(Deserialize)]
struct PartsOf {
    parts: Vec<BlobPart>,
}

/// The keys found, in bucket and key order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ObjectsOfBlobs {
    /// Up to the limit asked.
    pub objects: Vec<ObjectOfBlob>,
    /// More keys hold asked blobs than were returned.
    pub truncated: bool,
    /// The scan stopped at its bound after this record (`bucket/key`),
    /// short of the index's end: ask again after it for the rest. None
    /// when every record after the start was read (or `truncated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_after: Option<String>,
}

/// How far one scan may go before it stops and says where to resume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanBound {
    /// Object records read at most.
    pub most_records: Option<usize>,
    /// The scan stops once this instant passed.
    pub until: Option<Instant>,
}

impl ScanBound {
    /// Whether a scan that read `records` stops here.
    fn reached(&self, records: usize) -> bool {
        self.most_records.is_some_and(|most| records >= most)
            || self.until.is_some_and(|until| Instant::now() >= until)
    }
}

impl Index {
    /// Up to `limit` keys, in every bucket, whose object has a part in
    /// `blobs`, after the key `after` (bucket, key) when given. Reads every
    /// object record (in pages, each its own snapshot: keys written behind
    /// the scan meanwhile are missed), so it is for rare questions: which
    /// objects a lost blob takes with it; `bound` stops it short, saying
    /// where to resume. Parts of multipart uploads in progress are not
    /// looked at.
    pub fn objects_of_blobs(
        &self,
        blobs: &BTreeSet<String>,
        after: Option<(&str, &str)>,
        limit: usize,
        bound: ScanBound,
    ) -> Result<ObjectsOfBlobs, IndexError> {
        let mut found = ObjectsOfBlobs::default();
        let mut after: Option<Vec<u8>> = after.map(|(bucket, key)| object_key(bucket, key));
        let mut records = 0;
        loop {
            let page =
                self.read(|txn| txn.scan(Table::Objects, b"", after.as_deref(), SCAN_PAGE))?;
            let Some((last, _)) = page.last() else {
                return Ok(found);
            };
            after = Some(last.clone());
            let full = page.len() == SCAN_PAGE;
            for (name, value) in page {
                records += 1;
                let record: PartsOf = decode(&value)?;
                if let Some(part) = record.parts.iter().find(|p| blobs.contains(&p.blob)) {
                    if found.objects.len() == limit {
                        found.truncated = true;
                        return Ok(found);
                    }
                    let (bucket, key) = split_object_key(&name)?;
                    found.objects.push(ObjectOfBlob {
                        bucket,
                        key,
                        blob: part.blob.clone(),
                    });
                }
                if bound.reached(records) {
                    let (bucket, key) = split_object_key(&name)?;
                    found.resume_after = Some(format!("{bucket}/{key}"));
                    return Ok(found);
                }
            }
            if !full {
                return Ok(found);
            }
        }
    }
}

/// Bucket and key of an object's row key (`bucket \0 key`; bucket names
/// hold no NUL).
fn split_object_key(name: &[u8]) -> Result<(String, String), IndexError> {
    let at = name
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| IndexError::store("an object row without a bucket"))?;
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(IndexError::store);
    Ok((text(&name[..at])?, text(&name[at + 1..])?))
}
