//! Completing a multipart upload (pure): the parts a client names must be
//! uploaded parts with their ETags, in ascending order, each but the last
//! at least 5 MiB; the object's ETag is the MD5 of the parts' MD5s with
//! `-N`.

use std::collections::BTreeMap;

use md5::{Digest, Md5};

use super::records::{BlobPart, ChosenPart, PartRecord};

/// The smallest part but the last (S3's limit).
pub const MIN_PART_SIZE: u64 = 5 << 20;

/// The most parts an upload may have.
pub const MAX_PARTS: u32 = 10_000;

/// Why the named parts cannot make an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    /// No parts were named.
    #[error("a multipart upload needs at least one part")]
    NoParts,
    /// Part numbers are not strictly ascending.
    #[error("part {0} is out of order: parts must be listed in ascending order")]
    Order(u32),
    /// A part was not uploaded, or its ETag differs.
    #[error("part {0} was not uploaded with that ETag")]
    Part(u32),
    /// A part but the last is under 5 MiB.
    #[error("part {number} is {size} bytes; every part but the last must be at least 5 MiB")]
    TooSmall {
        /// The part.
        number: u32,
        /// Its size.
        size: u64,
    },
}

/// An object assembled from parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    /// Its blobs, in order.
    pub parts: Vec<BlobPart>,
    /// Its length.
    pub size: u64,
    /// Its ETag without quotes.
    pub etag: String,
}

/// Strips the quotes a client may send around an ETag.
pub fn bare_etag(etag: &str) -> &str {
    etag.trim().trim_start_matches("W/").trim_matches('"')
}

/// Assembles the object the chosen parts make of the uploaded ones.
pub fn assemble(
    uploaded: &BTreeMap<u32, PartRecord>,
    chosen: &[ChosenPart],
) -> Result<Assembled, AssembleError> {
    if chosen.is_empty() {
        return Err(AssembleError::NoParts);
    }
    // S3's order of complaints: order first, then unknown parts, then sizes.
    if let Some(pair) = chosen
        .windows(2)
        .find(|pair| pair[1].number <= pair[0].number)
    {
        return Err(AssembleError::Order(pair[1].number));
    }
    let records = chosen
        .iter()
        .map(|part| {
            uploaded
                .get(&part.number)
                .filter(|r| r.etag == bare_etag(&part.etag))
                .ok_or(AssembleError::Part(part.number))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut digests = Md5::new();
    let mut parts = Vec::with_capacity(chosen.len());
    let mut size = 0;
    for (i, (part, record)) in chosen.iter().zip(records).enumerate() {
        if i + 1 < chosen.len() && record.size < MIN_PART_SIZE {
            return Err(AssembleError::TooSmall {
                number: part.number,
                size: record.size,
            });
        }
        let md5 = crate::hex::decode(&record.etag).ok_or(AssembleError::Part(part.number))?;
        digests.update(&md5);
        size += record.size;
        parts.push(BlobPart {
            blob: record.blob.clone(),
            size: record.size,
        });
    }
    Ok(Assembled {
        parts,
        size,
        etag: format!(
            "{}-{}",
            crate::hex::encode(&digests.finalize()),
            chosen.len()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(blob: &str, data: &[u8]) -> PartRecord {
        PartRecord {
            blob: blob.into(),
            size: data.len() as u64,
            etag: crate::hex::encode(&Md5::digest(data)),
            checksums: BTreeMap::new(),
            modified_ms: 0,
        }
    }

    fn chosen(number: u32, record: &PartRecord) -> ChosenPart {
        ChosenPart {
            number,
            etag: format!("\"{}\"", record.etag),
        }
    }

    #[test]
    fn the_etag_of_a_multipart_object_is_the_md5_of_its_parts_md5s_and_their_count() {
        let big = vec![7u8; MIN_PART_SIZE as usize];
        let uploaded = BTreeMap::from([(1, part("a", &big)), (2, part("b", b"tail"))]);
        let object = assemble(
            &uploaded,
            &[chosen(1, &uploaded[&1]), chosen(2, &uploaded[&2])],
        )
        .unwrap();
        let mut expected = Md5::new();
        expected.update(Md5::digest(&big));
        expected.update(Md5::digest(b"tail"));
        assert_eq!(
            object.etag,
            format!("{}-2", crate::hex::encode(&expected.finalize()))
        );
        assert_eq!(object.size, MIN_PART_SIZE + 4);
        assert_eq!(
            object
                .parts
                .iter()
                .map(|p| p.blob.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn a_subset_of_the_uploaded_parts_may_be_chosen() {
        let big = vec![1u8; MIN_PART_SIZE as usize];
        let uploaded = BTreeMap::from([
            (1, part("a", &big)),
            (2, part("b", b"x")),
            (3, part("c", b"y")),
        ]);
        let object = assemble(
            &uploaded,
            &[chosen(1, &uploaded[&1]), chosen(3, &uploaded[&3])],
        )
        .unwrap();
        assert_eq!(object.size, MIN_PART_SIZE + 1);
    }

    #[test]
    fn parts_out_of_order_unknown_or_with_another_etag_are_refused() {
        let big = vec![1u8; MIN_PART_SIZE as usize];
        let uploaded = BTreeMap::from([(1, part("a", &big)), (2, part("b", &big))]);
        assert_eq!(
            assemble(
                &uploaded,
                &[chosen(2, &uploaded[&2]), chosen(1, &uploaded[&1])]
            ),
            Err(AssembleError::Order(1))
        );
        assert_eq!(
            assemble(
                &uploaded,
                &[chosen(1, &uploaded[&1]), chosen(1, &uploaded[&1])]
            ),
            Err(AssembleError::Order(1))
        );
        assert_eq!(
            assemble(
                &uploaded,
                &[ChosenPart {
                    number: 3,
                    etag: uploaded[&1].etag.clone()
                }]
            ),
            Err(AssembleError::Part(3))
        );
        assert_eq!(
            assemble(
                &uploaded,
                &[ChosenPart {
                    number: 1,
                    etag: "\"00\"".into()
                }]
            ),
            Err(AssembleError::Part(1))
        );
        assert_eq!(assemble(&uploaded, &[]), Err(AssembleError::NoParts));
    }

    #[test]
    fn every_part_but_the_last_must_be_at_least_5_mib() {
        let uploaded = BTreeMap::from([(1, part("a", b"small")), (2, part("b", b"last"))]);
        assert_eq!(
            assemble(
                &uploaded,
                &[chosen(1, &uploaded[&1]), chosen(2, &uploaded[&2])]
            ),
            Err(AssembleError::TooSmall { number: 1, size: 5 })
        );
        // A single small part is fine: it is the last.
        assert!(assemble(&uploaded, &[chosen(1, &uploaded[&1])]).is_ok());
    }
}
