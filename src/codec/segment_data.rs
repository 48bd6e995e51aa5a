//! A decoded segment's bytes, held as the buffers they came in, back to
//! back: a read from systematic slivers returns the slivers' own bytes
//! (rows of the message matrix) without copying them into one buffer, and
//! a byte range of it is a few shared slices.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;

/// Bytes as a sequence of shared buffers (none empty).
#[derive(Clone, Default)]
pub struct SegmentData {
    parts: Vec<Bytes>,
    len: usize,
}

impl SegmentData {
    /// The parts back to back (empty parts are left out).
    pub fn from_parts(parts: impl IntoIterator<Item = Bytes>) -> Self {
        let parts: Vec<Bytes> = parts.into_iter().filter(|p| !p.is_empty()).collect();
        let len = parts.iter().map(Bytes::len).sum();
        Self { parts, len }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffers, in order.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// Bytes `range` (clamped to the length), sharing the buffers.
    pub fn slice(&self, range: Range<usize>) -> SegmentData {
        let (start, end) = (range.start.min(self.len), range.end.min(self.len));
        let mut parts = Vec::new();
        let mut offset = 0;
        for part in &self.parts {
            let (from, to) = (offset, offset + part.len());
            offset = to;
            if to <= start {
                continue;
            }
            if from >= end {
                break;
            }
            parts.push(part.slice(start.max(from) - from..end.min(to) - from));
        }
        Self::from_parts(parts)
    }

    /// Keeps the first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            *self = self.slice(0..len);
        }
    }

    /// The bytes copied into one vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut all = Vec::with_capacity(self.len);
        for part in &self.parts {
            all.extend_from_slice(part);
        }
        all
    }
}

impl From<Vec<u8>> for SegmentData {
    fn from(bytes: Vec<u8>) -> Self {
        Self::from_parts([Bytes::from(bytes)])
    }
}

impl PartialEq for SegmentData {
    /// Equal bytes, however they are split into parts.
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.to_vec() == other.to_vec()
    }
}

impl Eq for SegmentData {}

impl PartialEq<[u8]> for SegmentData {
    /// The same bytes, compared part by part (no copy).
    fn eq(&self, other: &[u8]) -> bool {
        let mut rest = other;
        self.len == other.len()
            && self.parts.iter().all(|part| {
                let (head, tail) = rest.split_at(part.len());
                rest = tail;
                head == &part[..]
            })
    }
}

impl PartialEq<&[u8]> for SegmentData {
    fn eq(&self, other: &&[u8]) -> bool {
        *self == **other
    }
}

impl fmt::Debug for SegmentData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentData")
            .field("len", &self.len)
            .field("parts", &self.parts.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(bytes: &[u8], at: &[usize]) -> SegmentData {
        let mut parts = Vec::new();
        let mut from = 0;
        for &to in at.iter().chain([&bytes.len()]) {
            parts.push(Bytes::copy_from_slice(&bytes[from..to]));
            from = to;
        }
        SegmentData::from_parts(parts)
    }

    #[test]
    fn every_slice_holds_exactly_the_bytes_of_that_range_however_the_parts_split() {
        let bytes: Vec<u8> = (0..100u8).collect();
        for cuts in [vec![], vec![10], vec![1, 2, 3, 50, 99], vec![0, 0, 100]] {
            let data = split(&bytes, &cuts);
            assert_eq!(data.len(), 100);
            assert_eq!(data.to_vec(), bytes);
            for (start, end) in [
                (0, 100),
                (0, 0),
                (5, 6),
                (9, 11),
                (10, 50),
                (49, 100),
                (99, 200),
            ] {
                let slice = data.slice(start..end);
                let end = end.min(100);
                assert_eq!(slice.to_vec(), bytes[start..end], "{cuts:?} {start}..{end}");
                assert_eq!(slice.len(), end - start);
                assert!(slice.parts().iter().all(|p| !p.is_empty()));
            }
        }
    }

    #[test]
    fn slices_share_the_buffers_instead_of_copying() {
        let data = split(&[7u8; 64], &[32]);
        let slice = data.slice(40..50);
        assert_eq!(slice.parts().len(), 1);
        assert_eq!(
            slice.parts()[0].as_ptr(),
            data.parts()[1][8..].as_ptr(),
            "a slice points into the part it came from"
        );
    }

    #[test]
    fn truncating_keeps_the_first_bytes_and_equality_ignores_how_parts_split() {
        let bytes: Vec<u8> = (0..40u8).collect();
        let mut data = split(&bytes, &[13, 27]);
        data.truncate(20);
        assert_eq!(data, SegmentData::from(bytes[..20].to_vec()));
        assert_ne!(data, SegmentData::from(bytes[..21].to_vec()));
        assert!(data == bytes[..20] && data != bytes[..19] && data != bytes[1..21]);
        data.truncate(30);
        assert_eq!(data.len(), 20, "truncating never grows");
    }
}
