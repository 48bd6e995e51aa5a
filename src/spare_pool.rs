//! A pool of large spare buffers kept for the next user while the pool is
//! busy and freed once it sat idle: the encoder's output buffers
//! (`codec::buffer_pool`) and the aligned buffers a node receives pairs
//! into (`store::BlockParts`). A fresh buffer that size costs the kernel
//! faulting in and zeroing every page again.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A buffer a pool can keep: its size counts toward the pool's bytes.
pub trait Spare {
    /// Bytes of memory it holds.
    fn held_bytes(&self) -> usize;
}

impl Spare for Vec<u8> {
    fn held_bytes(&self) -> usize {
        self.capacity()
    }
}

/// The pool: spare buffers and when one was last lent or taken back.
pub struct SparePool<T> {
    spares: Mutex<Spares<T>>,
}

/// The pool's contents, while locked.
pub struct Spares<T> {
    /// The spare buffers, in no order.
    pub buffers: Vec<T>,
    last_used: Option<Instant>,
}

impl<T: Spare> SparePool<T> {
    /// An empty pool (for a `static`).
    pub const fn new() -> Self {
        Self {
            spares: Mutex::new(Spares {
                buffers: Vec::new(),
                last_used: None,
            }),
        }
    }

    /// The spares, locked and marked used now (so they are not freed as idle).
    pub fn lend(&self) -> MutexGuard<'_, Spares<T>> {
        let mut spares = self.lock();
        spares.last_used = Some(Instant::now());
        spares
    }

    /// Keeps `buffer` for the next user: while fewer than `kept` are held
    /// and the spares stay within `max_bytes`; with `kept` held, in place
    /// of the smallest when it is larger.
    pub fn give_back(&self, buffer: T, kept: usize, max_bytes: usize) {
        let mut spares = self.lend();
        let held = spares.held_bytes();
        if held + buffer.held_bytes() > max_bytes {
            return;
        }
        if spares.buffers.len() < kept {
            spares.buffers.push(buffer);
        } else if let Some(smallest) = spares.buffers.iter_mut().min_by_key(|b| b.held_bytes()) {
            if smallest.held_bytes() < buffer.held_bytes() {
                *smallest = buffer;
            }
        }
    }

    /// Frees the spares when none was lent or taken back for `idle`;
    /// returns the bytes freed.
    pub fn release_idle(&self, idle: Duration) -> usize {
        let mut spares = self.lock();
        if spares.last_used.is_some_and(|at| at.elapsed() < idle) {
            return 0;
        }
        spares.buffers.drain(..).map(|b| b.held_bytes()).sum()
    }

    /// Bytes the spares hold now.
    pub fn held_bytes(&self) -> usize {
        self.lock().held_bytes()
    }

    fn lock(&self) -> MutexGuard<'_, Spares<T>> {
        self.spares.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T: Spare> Default for SparePool<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Spare> Spares<T> {
    fn held_bytes(&self) -> usize {
        self.buffers.iter().map(Spare::held_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_pool_keeps_the_larger_buffer_and_never_passes_its_byte_limit() {
        let pool = SparePool::<Vec<u8>>::new();
        pool.give_back(Vec::with_capacity(10), 2, 100);
        pool.give_back(Vec::with_capacity(20), 2, 100);
        pool.give_back(Vec::with_capacity(30), 2, 100);
        let mut held: Vec<usize> = pool.lend().buffers.iter().map(|b| b.capacity()).collect();
        held.sort();
        assert_eq!(held, [20, 30]);
        pool.give_back(Vec::with_capacity(60), 2, 100);
        assert_eq!(pool.held_bytes(), 50, "60 more would pass 100 bytes");
    }

    #[test]
    fn spares_stay_while_the_pool_is_used_and_go_once_it_is_idle() {
        let pool = SparePool::<Vec<u8>>::new();
        pool.give_back(Vec::with_capacity(64), 4, usize::MAX);
        assert_eq!(pool.release_idle(Duration::from_secs(3600)), 0);
        assert_eq!(pool.release_idle(Duration::ZERO), 64);
        assert_eq!(pool.held_bytes(), 0);
    }
}
