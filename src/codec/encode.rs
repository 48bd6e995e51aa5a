//! The Red Stuff encoder: a segment into n sliver pairs and 2n sliver
//! hashes; a blob, streamed segment by segment, into its metadata.
//!
//! Per segment of S bytes (message matrix M, p x q symbols):
//! 1. columns: each column of M is extended from p to n symbols, giving the
//!    n primary slivers (rows of E restricted to the first q columns);
//! 2. rows: each primary sliver is extended from q to n symbols (row i of
//!    E); its n symbols are hashed once, giving the leaf row i; the
//!    extension symbols of the first p rows are written straight into the
//!    secondary slivers (the columns of those rows);
//! 3. roots: the Merkle root of leaf row i is primary hash i, the root of
//!    leaf column j is secondary hash j: every leaf serves both trees.
//!
//! Rows and columns are spread over all threads of the rayon pool. Memory
//! is the segment's slivers (about 4.5 S at large n), its n^2 leaf hashes,
//! and one row extension per thread; it does not grow with the blob.

use std::borrow::Cow;
use std::io::{self, Read};

use bytes::Bytes;

use rayon::prelude::*;

use crate::codec::buffer_pool;
use crate::codec::config::{BlobLayout, EncodingConfig, SegmentLayout};
use crate::codec::error::ConfigError;
use crate::codec::line;
use crate::codec::merkle::{self, Hash};
use crate::codec::metadata::{BlobMetadata, SegmentHashes};
use crate::codec::rs;
use crate::codec::sliver::{PrimarySliver, SecondarySliver};

/// One segment, encoded.
#[derive(Debug, Clone)]
pub struct EncodedSegment {
    /// Index of the segment in its blob.
    pub index: u32,
    /// Its size arithmetic.
    pub layout: SegmentLayout,
    /// Its 2n sliver hashes.
    pub hashes: SegmentHashes,
    /// The n primary slivers, by pair index.
    pub primary: Vec<PrimarySliver>,
    /// The n secondary slivers, by pair index.
    pub secondary: Vec<SecondarySliver>,
}

/// Encodes one segment (`data` is the whole segment, unpadded), copying it.
pub fn encode_segment(config: EncodingConfig, index: u32, data: &[u8]) -> EncodedSegment {
    encode_segment_shared(config, index, Bytes::copy_from_slice(data))
}

/// Encodes one segment held in `data`: the systematic primary slivers are
/// slices of it (no copy) wherever a whole row of the message matrix lies
/// inside it.
pub fn encode_segment_shared(config: EncodingConfig, index: u32, data: Bytes) -> EncodedSegment {
    let layout = config.segment_layout(data.len() as u64);
    let rows = message_rows(&layout, &data, |whole| data.slice_ref(whole), Bytes::from);
    drop(data);
    let expanded = expand_segment(&layout, &rows, true);
    let s = layout.symbol_size();
    let primary = rows
        .into_iter()
        .chain(expanded.parity)
        .enumerate()
        .map(|(i, row)| {
            PrimarySliver::new(config, i as u16, index, s, row)
                .expect("encoder builds exact slivers")
        })
        .collect();
    let secondary = expanded
        .secondary
        .into_iter()
        .enumerate()
        .map(|(j, column)| {
            SecondarySliver::new(config, j as u16, index, s, column)
                .expect("encoder builds exact slivers")
        })
        .collect();
    EncodedSegment {
        index,
        layout,
        hashes: expanded.hashes,
        primary,
        secondary,
    }
}

/// The 2n sliver hashes `data` encodes to, without keeping the slivers.
pub fn segment_hashes(config: EncodingConfig, data: &[u8]) -> SegmentHashes {
    let layout = config.segment_layout(data.len() as u64);
    let rows = message_rows(&layout, data, Cow::Borrowed, Cow::Owned);
    expand_segment(&layout, &rows, false).hashes
}

/// The p rows of the zero-padded message matrix (the systematic primary
/// slivers): `whole` for a row that lies inside `data`, `padded` for the
/// zero-padded copy of one that does not.
fn message_rows<'a, R>(
    layout: &SegmentLayout,
    data: &'a [u8],
    whole: impl Fn(&'a [u8]) -> R,
    padded: impl Fn(Vec<u8>) -> R,
) -> Vec<R> {
    let row_len = layout.config().q() * layout.symbol_size();
    (0..layout.config().p())
        .map(|r| {
            let start = (r * row_len).min(data.len());
            let end = ((r + 1) * row_len).min(data.len());
            if end - start == row_len {
                whole(&data[start..end])
            } else {
                let mut row = vec![0u8; row_len];
                row[..end - start].copy_from_slice(&data[start..end]);
                padded(row)
            }
        })
        .collect()
}

/// Rows of E whose leaves are held at once (a power of two).
const ROW_BATCH: usize = 64;

struct ExpandedSegment {
    hashes: SegmentHashes,
    /// Primary slivers p..n.
    parity: Vec<Bytes>,
    secondary: Vec<Bytes>,
}

fn expand_segment<R: AsRef<[u8]> + Sync>(
    layout: &SegmentLayout,
    message: &[R],
    keep_slivers: bool,
) -> ExpandedSegment {
    let config = layout.config();
    let (n, p, q, s) = (config.n(), config.p(), config.q(), layout.symbol_size());
    let row_len = q * s;

    // 1. Columns: extend each column of M from p to n symbols, writing the
    //    n - p new symbols of column c straight into the parity rows.
    // Every byte of the pooled buffers is written below (RS fills each
    // parity symbol, and each secondary symbol is copied in), so what a
    // spare held before never shows.
    let mut parity_buffer = buffer_pool::take((n - p) * row_len);
    let columns_per_task = q.div_ceil(rayon::current_num_threads() * 4).max(1);
    let mut tasks: Vec<Vec<&mut [u8]>> = (0..q.div_ceil(columns_per_task))
        .map(|_| Vec::with_capacity(n - p))
        .collect();
    for row in parity_buffer.chunks_mut(row_len) {
        for (task, part) in tasks.iter_mut().zip(row.chunks_mut(columns_per_task * s)) {
            task.push(part);
        }
    }
    tasks
        .into_par_iter()
        .enumerate()
        .for_each(|(t, mut parts)| {
            let first = t * columns_per_task;
            for (offset, c) in (first..(first + columns_per_task).min(q)).enumerate() {
                let originals: Vec<&[u8]> = message
                    .iter()
                    .map(|row| &row.as_ref()[c * s..(c + 1) * s])
                    .collect();
                let mut outs: Vec<&mut [u8]> = parts
                    .iter_mut()
                    .map(|part| &mut part[offset * s..(offset + 1) * s])
                    .collect();
                rs::encode_recovery_into(&originals, &mut outs);
            }
        });
    let rows: Vec<&[u8]> = message
        .iter()
        .map(AsRef::as_ref)
        .chain(parity_buffer.chunks(row_len))
        .collect();

    // 2. Rows: extend every primary sliver to n symbols and hash each symbol
    //    once. The secondary slivers are the first p rows of E read down
    //    its columns: the extension symbols of rows below p go straight
    //    into their columns, which exist from here on.
    let mut secondary_buffer = buffer_pool::take(if keep_slivers { n * p * s } else { 0 });
    let mut secondary: Vec<&mut [u8]> = secondary_buffer.chunks_mut(p * s).collect();
    let mut row_targets: Vec<Option<Vec<&mut [u8]>>> = (0..n).map(|_| None).collect();
    if keep_slivers {
        for targets in &mut row_targets[..p] {
            *targets = Some(Vec::with_capacity(n - q));
        }
        for column in &mut secondary[q..] {
            for (targets, symbol) in row_targets.iter_mut().zip(column.chunks_mut(s)) {
                targets.as_mut().expect("a row below p").push(symbol);
            }
        }
    }
    //    Rows go in batches of `batch` (a power of two): a batch's leaves
    //    are the leaves of one aligned subtree of every column's tree, so
    //    each column keeps only that subtree's root, and the n^2 leaves
    //    are never held at once (32 MiB at n = 1000).
    let width = n.next_power_of_two();
    let batch = ROW_BATCH.min(width);
    let batches = width / batch;
    let empty = merkle::empty_hash();
    let mut leaves: Vec<Hash> = vec![[0u8; 32]; batch * n];
    let mut primary_hashes: Vec<Hash> = Vec::with_capacity(n);
    // Column-major: the subtree roots of column j at j * batches ...
    let mut column_subtrees: Vec<Hash> = vec![[0u8; 32]; n * batches];
    let mut row_targets = row_targets.into_iter();
    for b in 0..batches {
        let first = (b * batch).min(n);
        let count = (n - first).min(batch);
        let targets: Vec<Option<Vec<&mut [u8]>>> = row_targets.by_ref().take(count).collect();
        let hashes: Vec<Hash> = leaves[..count * n]
            .par_chunks_mut(n)
            .zip(rows[first..first + count].par_iter())
            .zip(targets.into_par_iter())
            .map_init(
                || vec![0u8; (n - q) * s],
                |extension, ((leaf_row, row), targets)| {
                    line::extend_into(row, s, extension);
                    line::leaves_into(row, extension, s, leaf_row);
                    for (target, symbol) in targets.into_iter().flatten().zip(extension.chunks(s)) {
                        target.copy_from_slice(symbol);
                    }
                    merkle::root(leaf_row)
                },
            )
            .collect();
        primary_hashes.extend(hashes);
        // 3. The column subtrees over this batch's rows, padded with the
        //    empty leaf past row n.
        let leaves = &leaves;
        column_subtrees
            .par_chunks_mut(batches)
            .enumerate()
            .for_each_init(
                || Vec::with_capacity(batch),
                |column, (j, subtrees)| {
                    column.clear();
                    column.extend((0..count).map(|r| leaves[r * n + j]));
                    column.resize(batch, empty);
                    subtrees[b] = merkle::root(column);
                },
            );
    }
    drop(leaves);
    let secondary_hashes: Vec<Hash> = column_subtrees
        .par_chunks(batches)
        .map(merkle::root)
        .collect();

    // The systematic part of the secondary slivers: the first q columns of
    // the message rows.
    let systematic_columns = secondary.len().min(q);
    secondary[..systematic_columns]
        .par_iter_mut()
        .enumerate()
        .for_each(|(j, column)| {
            for (r, symbol) in column.chunks_mut(s).enumerate() {
                symbol.copy_from_slice(&message[r].as_ref()[j * s..(j + 1) * s]);
            }
        });
    drop(secondary);
    let slices = |buffer: buffer_pool::PooledBuffer, len: usize| -> Vec<Bytes> {
        let shared = buffer.share();
        (0..shared.len() / len)
            .map(|i| shared.slice(i * len..(i + 1) * len))
            .collect()
    };
    ExpandedSegment {
        hashes: SegmentHashes::new(primary_hashes, secondary_hashes),
        parity: if keep_slivers {
            slices(parity_buffer, row_len)
        } else {
            Vec::new()
        },
        secondary: if keep_slivers {
            slices(secondary_buffer, p * s)
        } else {
            Vec::new()
        },
    }
}

/// An error while encoding a blob from a stream.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// Reading the input or handing a segment on failed.
    #[error("i/o error while encoding: {0}")]
    Io(#[from] io::Error),
    /// The parameters or the blob size are not supported.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Encodes blobs segment by segment with fixed parameters.
#[derive(Debug, Clone, Copy)]
pub struct BlobEncoder {
    config: EncodingConfig,
    segment_size: u64,
}

impl BlobEncoder {
    /// An encoder for `config` that cuts blobs into segments of `segment_size`.
    pub fn new(config: EncodingConfig, segment_size: u64) -> Result<Self, ConfigError> {
        crate::codec::config::check_segment_size(segment_size)?;
        Ok(Self {
            config,
            segment_size,
        })
    }

    /// The encoding parameters.
    pub fn config(&self) -> EncodingConfig {
        self.config
    }

    /// The segment size.
    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// Encodes everything `reader` yields, handing each encoded segment to
    /// `sink` as soon as it is ready, and returns the blob metadata. At most
    /// one segment is held at a time.
    pub fn encode_reader<R: Read>(
        &self,
        reader: R,
        sink: impl FnMut(EncodedSegment) -> io::Result<()>,
    ) -> Result<BlobMetadata, EncodeError> {
        self.encode_reader_keeping(reader, |_| true, sink)
    }

    /// The metadata of everything `reader` yields, keeping the slivers only
    /// of the segments `keep` names (handed to `sink`); the others cost
    /// their hashes alone, not copies into slivers.
    pub fn encode_reader_keeping<R: Read>(
        &self,
        mut reader: R,
        keep: impl Fn(u32) -> bool,
        mut sink: impl FnMut(EncodedSegment) -> io::Result<()>,
    ) -> Result<BlobMetadata, EncodeError> {
        let mut hashes = Vec::new();
        let mut total: u64 = 0;
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            let read = (&mut reader)
                .take(self.segment_size)
                .read_to_end(&mut buffer)?;
            if read == 0 && !hashes.is_empty() {
                break;
            }
            // Reject a too-large blob before spending work on its segment.
            BlobLayout::new(self.config, self.segment_size, total + read as u64)?;
            let index = u32::try_from(hashes.len()).map_err(|_| ConfigError::BlobTooLarge {
                len: total,
                segment_size: self.segment_size,
            })?;
            total += read as u64;
            if keep(index) {
                let segment = encode_segment_shared(
                    self.config,
                    index,
                    Bytes::from(std::mem::take(&mut buffer)),
                );
                hashes.push(segment.hashes.clone());
                sink(segment)?;
            } else {
                hashes.push(segment_hashes(self.config, &buffer));
            }
            if (read as u64) < self.segment_size {
                break;
            }
        }
        let layout = BlobLayout::new(self.config, self.segment_size, total)?;
        Ok(BlobMetadata::new(layout, hashes).expect("encoder builds consistent metadata"))
    }

    /// Encodes a blob held in memory, returning its metadata and all segments.
    pub fn encode(&self, data: &[u8]) -> Result<(BlobMetadata, Vec<EncodedSegment>), EncodeError> {
        let mut segments = Vec::new();
        let metadata = self.encode_reader(data, |segment| {
            segments.push(segment);
            Ok(())
        })?;
        Ok((metadata, segments))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::line::sliver_hash;

    #[test]
    fn slivers_in_reused_buffers_hold_nothing_of_the_segment_before() {
        let config = EncodingConfig::new(7).unwrap();
        let noise: Vec<u8> = (0..300_000u32).map(|i| (i * 131 % 251) as u8 | 1).collect();
        let shared = |segment: &EncodedSegment| segment.primary[6].data().as_ptr();
        let first = encode_segment(config, 0, &noise);
        let first_parity = shared(&first);
        drop(first);
        // Zeroes, then a shorter segment: each takes the noisy buffers back.
        for (round, data) in [vec![0u8; 300_000], vec![5u8; 200_000]].iter().enumerate() {
            let segment = encode_segment(config, 0, data);
            if round == 0 {
                assert_eq!(shared(&segment), first_parity, "the spare is reused");
            }
            let data = &data[..];
            let fresh = segment_hashes(config, data);
            assert_eq!(segment.hashes, fresh);
            for i in 0..7 {
                assert_eq!(sliver_hash(&segment.primary[i]), *fresh.primary(i));
                assert_eq!(sliver_hash(&segment.secondary[i]), *fresh.secondary(i));
            }
        }
    }

    #[test]
    fn every_sliver_hash_is_the_root_over_its_own_expanded_line_whatever_n() {
        // n = 65, 100 and 513 span several row batches, 513 also whole
        // batches of padding rows past n.
        for n in [4u16, 7, 64, 65, 100, 513] {
            let config = EncodingConfig::new(n).unwrap();
            let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + u32::from(n)) as u8).collect();
            let segment = encode_segment_shared(config, 0, Bytes::from(data.clone()));
            for (i, sliver) in segment.primary.iter().enumerate() {
                assert_eq!(
                    sliver_hash(sliver),
                    *segment.hashes.primary(i),
                    "n {n}: primary {i}"
                );
            }
            for (j, sliver) in segment.secondary.iter().enumerate() {
                assert_eq!(
                    sliver_hash(sliver),
                    *segment.hashes.secondary(j),
                    "n {n}: secondary {j}"
                );
            }
            assert_eq!(segment_hashes(config, &data), segment.hashes, "n {n}");
        }
    }
}
