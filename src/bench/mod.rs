//! Benchmarks run by `redstuff bench`.

pub mod codec;
