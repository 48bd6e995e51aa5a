//! Benchmarks run by `redstuff bench`: each measures the project's code
//! against a baseline in the same run and reports ratios.

pub mod codec;
pub mod cpu;
pub mod faults;
pub mod fleet;
pub mod hung_node;
pub mod memory;
pub mod plan;
pub mod s3;

/// Writes a benchmark's input file and fsyncs it: its pages would
/// otherwise be written back during whatever is measured next, competing
/// with the writes measured (the kernel starts writeback up to 30 s
/// later).
pub(crate) fn write_input(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
