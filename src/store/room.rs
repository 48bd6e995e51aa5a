//! The bytes a store holds and the room left under its capacity.
//!
//! A write reserves its room before its content goes to disk and holds
//! the reservation until the file is counted (or given up), so writes
//! running at once cannot each see the same free room and together pass
//! the capacity.

use std::sync::atomic::{AtomicU64, Ordering};

use super::StoreError;

/// Bytes held and reserved, and the cap on both.
#[derive(Debug)]
pub(super) struct Room {
    capacity: Option<u64>,
    used: AtomicU64,
    reserved: AtomicU64,
}

impl Room {
    /// `used` bytes held, at most `capacity` (if any).
    pub fn new(capacity: Option<u64>, used: u64) -> Self {
        Self {
            capacity,
            used: AtomicU64::new(used),
            reserved: AtomicU64::new(0),
        }
    }

    /// The configured capacity, if any.
    pub fn capacity(&self) -> Option<u64> {
        self.capacity
    }

    /// Bytes held in counted files.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Counts `amount` more bytes held.
    pub fn add(&self, amount: u64) {
        self.used.fetch_add(amount, Ordering::Relaxed);
    }

    /// Counts `amount` fewer bytes held (never below zero).
    pub fn sub(&self, amount: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(amount))
            });
    }

    /// Reserves room for a file of `size` bytes that replaces one of
    /// `previous` bytes; refused with [`StoreError::Full`] when the bytes
    /// held and reserved would pass the capacity.
    pub fn reserve(&self, size: u64, previous: u64) -> Result<Reservation<'_>, StoreError> {
        let Some(capacity) = self.capacity else {
            return Ok(Reservation {
                room: self,
                size: 0,
            });
        };
        let mut reserved = self.reserved.load(Ordering::Relaxed);
        loop {
            let taken = (self.used() + reserved).saturating_sub(previous);
            if taken + size > capacity {
                return Err(StoreError::Full {
                    needed: size,
                    available: capacity.saturating_sub(taken),
                });
            }
            match self.reserved.compare_exchange_weak(
                reserved,
                reserved + size,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(Reservation { room: self, size }),
                Err(now) => reserved = now,
            }
        }
    }
}

impl Room {
    /// Reserves room for a file of `size` bytes even past the capacity:
    /// for a file whose write frees far more than it takes (a tombstone,
    /// which the delete's data removal follows), so a full store can
    /// still be emptied.
    pub fn reserve_past_capacity(&self, size: u64) -> Reservation<'_> {
        let size = if self.capacity.is_some() { size } else { 0 };
        self.reserved.fetch_add(size, Ordering::AcqRel);
        Reservation { room: self, size }
    }
}

/// Room reserved for one file; given back when dropped (after the file
/// is counted in the bytes held, or given up).
#[derive(Debug)]
pub(super) struct Reservation<'a> {
    room: &'a Room,
    size: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.room.reserved.fetch_sub(self.size, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_holds_its_room_until_dropped() {
        let room = Room::new(Some(100), 40);
        let first = room.reserve(50, 0).unwrap();
        assert!(matches!(
            room.reserve(20, 0),
            Err(StoreError::Full {
                needed: 20,
                available: 10
            })
        ));
        drop(first);
        room.reserve(60, 0).unwrap();
    }

    #[test]
    fn a_file_replacing_another_needs_only_the_difference() {
        let room = Room::new(Some(100), 90);
        room.reserve(30, 25).unwrap();
        assert!(room.reserve(30, 15).is_err());
    }

    #[test]
    fn without_a_capacity_everything_fits_and_used_never_goes_below_zero() {
        let room = Room::new(None, 0);
        room.reserve(u64::MAX / 2, 0).unwrap();
        room.sub(5);
        assert_eq!(room.used(), 0);
    }
}
