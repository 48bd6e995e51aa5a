//! Benchmarks run by `redstuff bench`: each measures the project's code
//! against a baseline in the same run and reports ratios.

pub mod codec;
pub mod faults;
pub mod fleet;
pub mod memory;
pub mod plan;
pub mod s3;
