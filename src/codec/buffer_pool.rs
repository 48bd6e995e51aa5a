//! The encoder's large output buffers (a segment's parity rows and its
//! secondary slivers), reused from one segment to the next.
//!
//! Freed, a buffer that size goes back to the operating system, and the
//! next segment's is faulted in again page by page, each page zeroed by
//! the kernel and then once more by a zeroing allocation: a tenth of a
//! PUT's cycles. Here a buffer whose every slice was dropped waits for the
//! next segment instead. At most [`SPARES_KEPT`] wait, holding at most
//! [`SPARE_BYTES_KEPT`], and a watcher thread frees them once none was
//! taken or given back for [`IDLE`].

use std::ops::{Deref, DerefMut};
use std::sync::Once;
use std::time::Duration;

use bytes::Bytes;

use crate::spare_pool::SparePool;

/// Spares kept: two per segment of an upload's four in flight.
pub const SPARES_KEPT: usize = 8;

/// At most this many bytes of spares are kept (a 64 MiB segment's two
/// buffers are about 180 MiB at n = 7 and 235 MiB at n = 1000).
pub const SPARE_BYTES_KEPT: usize = 1 << 30;

/// Spares unused this long are freed.
pub const IDLE: Duration = Duration::from_secs(10);

static SPARES: SparePool<Vec<u8>> = SparePool::new();

static WATCHER: Once = Once::new();

/// A buffer of exactly `len` bytes from the pool, holding whatever its last
/// user left (or zeroes): the caller overwrites every byte it exposes.
/// A spare is chosen by its capacity, so one cut short for a short last
/// segment serves a full segment again.
pub fn take(len: usize) -> PooledBuffer {
    // A hash-only encode takes an empty buffer: no spare is lent for it.
    let spare = (len > 0)
        .then(|| {
            let mut spares = SPARES.lend();
            spares
                .buffers
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(at, _)| at)
                .map(|at| spares.buffers.swap_remove(at))
        })
        .flatten();
    let buffer = match spare {
        Some(mut buffer) => {
            // Within the capacity: no allocation, and only the bytes past
            // the last user's length are written.
            buffer.resize(len, 0);
            buffer
        }
        None => vec![0u8; len],
    };
    PooledBuffer {
        buffer: Some(buffer),
    }
}

/// Frees the spares when none was taken or given back for `idle`; returns
/// the bytes freed.
pub fn release_idle(idle: Duration) -> usize {
    SPARES.release_idle(idle)
}

/// Bytes the spares hold now.
pub fn spare_bytes() -> usize {
    SPARES.held_bytes()
}

fn give_back(buffer: Vec<u8>) {
    // An empty buffer (a hash-only encode takes one) would take a spare's place.
    if buffer.capacity() == 0 {
        return;
    }
    WATCHER.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("encoder-spares".into())
            .spawn(|| loop {
                std::thread::sleep(IDLE / 2);
                release_idle(IDLE);
            });
    });
    SPARES.give_back(buffer, SPARES_KEPT, SPARE_BYTES_KEPT);
}

/// A buffer from [`take`]; back to the pool when dropped, or once every
/// slice of it is dropped after [`PooledBuffer::share`].
pub struct PooledBuffer {
    buffer: Option<Vec<u8>>,
}

impl PooledBuffer {
    /// The buffer as `Bytes`; it returns to the pool once every slice of
    /// them is dropped.
    pub fn share(mut self) -> Bytes {
        Bytes::from_owner(Shared(self.buffer.take().expect("held until dropped")))
    }
}

impl Deref for PooledBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buffer.as_deref().expect("held until dropped")
    }
}

impl DerefMut for PooledBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.buffer.as_deref_mut().expect("held until dropped")
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            give_back(buffer);
        }
    }
}

/// The owner behind shared `Bytes`.
struct Shared(Vec<u8>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The pool is one per process: these tests use lengths no other test
    // takes, and find their buffers by address.
    fn spare_at(address: *const u8) -> bool {
        let spares = SPARES.lend();
        spares.buffers.iter().any(|b| b.as_ptr() == address)
    }

    #[test]
    fn a_shared_buffer_returns_to_the_pool_only_once_every_slice_is_dropped() {
        let mut buffer = take(3 * 4096 + 17);
        buffer.fill(9);
        let address = buffer.as_ptr();
        let shared = buffer.share();
        let slice = shared.slice(10..20);
        drop(shared);
        assert!(!spare_at(address), "a slice still holds it");
        assert_eq!(&slice[..], &[9u8; 10]);
        drop(slice);
        assert!(spare_at(address));
    }

    #[test]
    fn a_spare_serves_the_next_buffer_of_its_length_or_shorter() {
        let len = 5 * 4096 + 3;
        let buffer = take(len);
        let address = buffer.as_ptr();
        drop(buffer);
        assert!(spare_at(address));
        let again = take(len - 1);
        assert_eq!(again.len(), len - 1);
        assert_eq!(again.as_ptr(), address, "the spare is reused");
    }

    #[test]
    fn a_spare_cut_short_for_a_short_segment_serves_a_full_one_again() {
        let len = 6 * 4096 + 5;
        let buffer = take(len);
        let address = buffer.as_ptr();
        drop(buffer);
        let short = take(len / 3);
        assert_eq!(short.as_ptr(), address, "the spare serves the short one");
        drop(short);
        let full = take(len);
        assert_eq!(full.len(), len);
        assert_eq!(full.as_ptr(), address, "and the full one after it");
    }

    #[test]
    fn an_empty_buffer_takes_no_spare() {
        let len = 9 * 4096 + 7;
        let buffer = take(len);
        let address = buffer.as_ptr();
        drop(buffer);
        let empty = take(0);
        assert!(spare_at(address), "the spare stays in the pool");
        drop(empty);
    }

    #[test]
    fn an_empty_buffer_is_never_kept_as_a_spare() {
        drop(take(0));
        assert!(!SPARES.lend().buffers.iter().any(|b| b.capacity() == 0));
    }

    #[test]
    fn spares_are_freed_once_the_pool_is_idle_and_kept_while_it_is_not() {
        let len = 7 * 4096 + 1;
        drop(take(len));
        assert_eq!(release_idle(Duration::from_secs(3600)), 0, "just used");
        assert!(spare_bytes() >= len);
        assert!(release_idle(Duration::ZERO) >= len);
        assert_eq!(spare_bytes(), 0);
    }
}
