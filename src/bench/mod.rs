//! Benchmarks run by `redstuff bench`: each measures the project's code
//! against a baseline in the same run and reports ratios.

pub mod codec;
pub mod concurrent;
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

/// Fills `buffer` with pseudo-random bytes that follow `seed` (xorshift):
/// distinct blobs for distinct seeds, at memory speed.
pub(crate) fn fill(buffer: &mut [u8], seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for word in buffer.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
    }
}
