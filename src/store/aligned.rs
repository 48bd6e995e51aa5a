//! Memory aligned for direct I/O.
//!
//! [`AlignedBuffer`] is the raw block-aligned allocation the direct reads
//! and writes use. [`BlockParts`] lets a caller receive several parts (a
//! pair's two slivers) into one pooled buffer with each part starting on a
//! block boundary, so the store writes each part past the page cache
//! straight from where it arrived, without copying it into a write buffer.
//! Whole-file reads take their buffers from the same pool, so a node
//! serving reads reuses memory instead of faulting in fresh pages.

use std::alloc::{self, Layout};
use std::time::Duration;

use bytes::Bytes;

use crate::spare_pool::{Spare, SparePool};

/// Alignment of direct I/O buffers, offsets and lengths: the largest
/// logical block size in use (4 KiB), so it holds on any device.
pub(super) const ALIGN: usize = 4096;

/// A heap buffer of a multiple of `ALIGN` bytes, aligned to `ALIGN`.
pub(super) struct AlignedBuffer {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is plain owned memory; shared references only read it.
unsafe impl Send for AlignedBuffer {}
// SAFETY: as above.
unsafe impl Sync for AlignedBuffer {}

impl AlignedBuffer {
    /// A zeroed buffer of `len` bytes rounded up to `ALIGN` (at least one block).
    pub(super) fn new(len: usize) -> Self {
        Self::allocate(len, true)
    }

    /// The same, not zeroed: only writes into it (or a read into it that
    /// the kernel reports) make its bytes readable.
    pub(super) fn uninit(len: usize) -> Self {
        Self::allocate(len, false)
    }

    fn allocate(len: usize, zeroed: bool) -> Self {
        let len = len.max(1).next_multiple_of(ALIGN);
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe {
            if zeroed {
                alloc::alloc_zeroed(layout)
            } else {
                alloc::alloc(layout)
            }
        };
        let ptr = std::ptr::NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        Self { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, ALIGN).expect("valid layout")
    }

    /// Its size in bytes (a multiple of `ALIGN`).
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The start of the buffer.
    pub(super) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The whole buffer; only for buffers from [`AlignedBuffer::new`]
    /// (every byte initialized).
    pub(super) fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `len` bytes owned by self, zeroed when allocated.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The first `len` bytes, which the caller has initialized.
    ///
    /// # Safety
    /// Every byte below `len` was written since the allocation.
    pub(super) unsafe fn filled(&self, len: usize) -> &[u8] {
        assert!(len <= self.len);
        // SAFETY: in bounds; initialized by the caller's promise.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), len) }
    }

    /// Copies `bytes` to offset `at`.
    fn write_at(&mut self, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= self.len);
        // SAFETY: in bounds (checked above); `bytes` cannot overlap memory
        // this buffer owns exclusively.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(at), bytes.len())
        }
    }
}

impl Spare for AlignedBuffer {
    fn held_bytes(&self) -> usize {
        self.len
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated by `allocate` with the same layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

/// Buffers of [`BlockParts`] and of whole-file reads kept for the next
/// one: a pair is as long as a few symbols of a segment (about 40 MiB at
/// n = 7 and 64 MiB segments), and a fresh buffer of that size costs the
/// kernel zeroing every page of it again. They go once the pool is idle ([`release_idle_spares`]).
static SPARE_PARTS: SparePool<AlignedBuffer> = SparePool::new();

/// Frees the spare buffers of [`BlockParts`] when none was lent or taken
/// back for `idle`, so an idle node gives their memory back; returns the
/// bytes freed.
pub fn release_idle_spares(idle: Duration) -> usize {
    SPARE_PARTS.release_idle(idle)
}

/// Bytes the spare buffers hold now.
#[cfg(test)]
pub(super) fn spare_bytes() -> usize {
    SPARE_PARTS.held_bytes()
}

/// At most this many are kept: one per segment a writer has in flight.
const SPARE_PARTS_KEPT: usize = 4;

/// A spare is lent for at most this many times fewer bytes than it holds
/// (a read of one sliver fits in a pair's buffer; a small file read must
/// not hold a large spare meanwhile).
const SPARE_WASTE: usize = 4;

/// A buffer of at least `len` bytes (not zeroed): the smallest spare of
/// the pool that large and at most [`SPARE_WASTE`] times larger, else a
/// fresh one.
pub(super) fn spare_or_fresh(len: usize) -> AlignedBuffer {
    let mut spares = SPARE_PARTS.lend();
    let fitting = spares
        .buffers
        .iter()
        .enumerate()
        .filter(|(_, b)| b.len() >= len && b.len() / SPARE_WASTE <= len)
        .min_by_key(|(_, b)| b.len())
        .map(|(at, _)| at);
    match fitting {
        Some(at) => spares.buffers.swap_remove(at),
        None => AlignedBuffer::uninit(len),
    }
}

/// The first `len` bytes of `buffer` as `Bytes`; the buffer goes back to
/// the pool once they are dropped.
///
/// # Safety
/// Every byte below `len` was written (or read into by the kernel) since
/// the buffer was allocated or taken from the pool.
pub(super) unsafe fn pooled_bytes(buffer: AlignedBuffer, len: usize) -> Bytes {
    assert!(len <= buffer.len());
    Bytes::from_owner(PooledFilled {
        buffer: Some(buffer),
        len,
    })
}

/// Parts of known lengths received into one aligned buffer, each starting
/// on a block boundary (the gaps zeroed); [`BlockParts::freeze`] makes
/// them `Bytes` that share the buffer, which goes back to a pool once
/// every one of them is dropped.
pub struct BlockParts {
    buffer: Option<AlignedBuffer>,
    /// Each part's start and length.
    parts: Vec<(usize, usize)>,
    /// The part being filled, and how much of it is.
    current: usize,
    filled: usize,
}

impl BlockParts {
    /// Room for parts of these lengths, in a spare buffer when one fits.
    pub fn new(lengths: &[usize]) -> Self {
        let mut parts = Vec::with_capacity(lengths.len());
        let mut end = 0usize;
        for &len in lengths {
            let start = end.next_multiple_of(ALIGN);
            parts.push((start, len));
            end = start + len;
        }
        let buffer = spare_or_fresh(end);
        Self {
            buffer: Some(buffer),
            parts,
            current: 0,
            filled: 0,
        }
    }

    /// Bytes still missing.
    pub fn missing(&self) -> usize {
        let total: usize = self.parts.iter().map(|&(_, len)| len).sum();
        let done: usize = self.parts[..self.current.min(self.parts.len())]
            .iter()
            .map(|&(_, len)| len)
            .sum::<usize>()
            + self.filled;
        total - done
    }

    /// Appends `bytes`, across parts as they fill up; an error (and
    /// nothing appended) when they would overflow the last part.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<(), Overflow> {
        if bytes.len() > self.missing() {
            return Err(Overflow);
        }
        while !bytes.is_empty() {
            let (start, len) = self.parts[self.current];
            let take = (len - self.filled).min(bytes.len());
            let buffer = self.buffer.as_mut().expect("held until dropped");
            buffer.write_at(start + self.filled, &bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == len {
                self.next_part();
            }
        }
        Ok(())
    }

    /// Zeroes the gap before the next part's start and moves to it.
    fn next_part(&mut self) {
        let buffer = self.buffer.as_mut().expect("held until dropped");
        let (start, len) = self.parts[self.current];
        let end = start + len;
        self.current += 1;
        self.filled = 0;
        if let Some(&(next, _)) = self.parts.get(self.current) {
            buffer.write_at(end, &[0; ALIGN][..next - end]);
        }
    }

    /// The parts, once every byte of them arrived (`None` before).
    pub fn freeze(mut self) -> Option<Vec<Bytes>> {
        while self.current < self.parts.len() && self.parts[self.current].1 == 0 {
            self.next_part();
        }
        if self.current < self.parts.len() {
            return None;
        }
        let end = self.parts.last().map_or(0, |&(start, len)| start + len);
        let parts = std::mem::take(&mut self.parts);
        let buffer = self.buffer.take().expect("held until dropped");
        // SAFETY: every part was written and every gap zeroed, up to `end`.
        let whole = unsafe { pooled_bytes(buffer, end) };
        Some(
            parts
                .into_iter()
                .map(|(start, len)| whole.slice(start..start + len))
                .collect(),
        )
    }
}

impl Drop for BlockParts {
    fn drop(&mut self) {
        give_back(self.buffer.take());
    }
}

/// More bytes than the parts hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// A pooled buffer's first `len` bytes, all written, as a `Bytes` owner.
struct PooledFilled {
    buffer: Option<AlignedBuffer>,
    len: usize,
}

impl AsRef<[u8]> for PooledFilled {
    fn as_ref(&self) -> &[u8] {
        let buffer = self.buffer.as_ref().expect("held until dropped");
        // SAFETY: `pooled_bytes` is only called with `len` bytes written.
        unsafe { buffer.filled(self.len) }
    }
}

impl Drop for PooledFilled {
    fn drop(&mut self) {
        give_back(self.buffer.take());
    }
}

fn give_back(buffer: Option<AlignedBuffer>) {
    if let Some(buffer) = buffer {
        SPARE_PARTS.give_back(buffer, SPARE_PARTS_KEPT, usize::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
    }

    #[test]
    fn parts_come_back_exactly_as_pushed_each_starting_on_a_block_boundary() {
        for lengths in [
            vec![5000, 3000],
            vec![4096, 1],
            vec![1, 4096, 0, 9000],
            vec![0, 0],
        ] {
            let contents: Vec<Vec<u8>> = lengths
                .iter()
                .enumerate()
                .map(|(i, &len)| pattern(len, i as u8))
                .collect();
            let all: Vec<u8> = contents.concat();
            for chunk in [1, 7, 4096, 100_000] {
                let mut parts = BlockParts::new(&lengths);
                for piece in all.chunks(chunk) {
                    parts.push(piece).expect("fits");
                }
                assert_eq!(parts.missing(), 0);
                let frozen = parts.freeze().expect("complete");
                assert_eq!(frozen.len(), lengths.len());
                for (got, want) in frozen.iter().zip(&contents) {
                    assert_eq!(
                        got.as_ref(),
                        want.as_slice(),
                        "{lengths:?} in chunks of {chunk}"
                    );
                    if !got.is_empty() {
                        assert_eq!(got.as_ptr() as usize % ALIGN, 0, "{lengths:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn bytes_past_the_last_part_are_refused_and_an_incomplete_buffer_does_not_freeze() {
        let mut parts = BlockParts::new(&[10, 10]);
        parts.push(&[1; 15]).expect("fits");
        assert_eq!(parts.push(&[2; 6]), Err(Overflow));
        assert_eq!(parts.missing(), 5);
        assert!(parts.freeze().is_none());
    }

    #[test]
    fn a_buffer_serves_the_next_parts_only_once_every_part_of_it_is_dropped() {
        let lengths = [3 << 20, 1 << 20];
        let frozen = {
            let mut parts = BlockParts::new(&lengths);
            parts.push(&vec![9; 4 << 20]).expect("fits");
            parts.freeze().expect("complete")
        };
        let first = frozen[0].as_ptr();
        let held = frozen[1].clone();
        drop(frozen);
        let other = BlockParts::new(&lengths);
        let other_start = other.buffer.as_ref().map(|b| b.ptr.as_ptr().cast_const());
        assert_ne!(other_start, Some(first), "the buffer is still in use");
        assert_eq!(held[0], 9);
        drop(other);
        drop(held);
        let taken: Vec<BlockParts> = (0..SPARE_PARTS_KEPT)
            .map(|_| BlockParts::new(&lengths))
            .collect();
        let reused = taken
            .iter()
            .any(|parts| parts.buffer.as_ref().map(|b| b.ptr.as_ptr().cast_const()) == Some(first));
        assert!(reused, "the buffer went back to the spares");
    }

    #[test]
    fn spares_stay_while_the_pool_is_in_use_and_go_once_it_is_idle() {
        drop(BlockParts::new(&[1 << 20]));
        assert_eq!(release_idle_spares(Duration::from_secs(3600)), 0);
        assert!(SPARE_PARTS
            .lend()
            .buffers
            .iter()
            .any(|b| b.len() >= 1 << 20));
        assert!(release_idle_spares(Duration::ZERO) >= 1 << 20);
        assert!(SPARE_PARTS.lend().buffers.is_empty());
    }
}
