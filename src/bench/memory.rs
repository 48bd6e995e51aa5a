//! Peak resident memory of this process, from Linux's /proc.

use std::fs;

/// Peak resident set size so far (VmHWM), in bytes; `None` off Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    status_field("VmHWM:")
}

/// Current resident set size (VmRSS), in bytes; `None` off Linux.
pub fn current_rss_bytes() -> Option<u64> {
    status_field("VmRSS:")
}

/// Resets the peak to the current size, so the next reading covers only
/// what follows. Returns false where the kernel does not allow it.
pub fn reset_peak() -> bool {
    fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Memory the system can give without swapping (MemAvailable), in bytes;
/// `None` off Linux.
pub fn available_bytes() -> Option<u64> {
    parse_mem_available(&fs::read_to_string("/proc/meminfo").ok()?)
}

/// The MemAvailable line of /proc/meminfo, in bytes. Pure.
fn parse_mem_available(meminfo: &str) -> Option<u64> {
    kib_field(meminfo, "MemAvailable:")
}

fn status_field(name: &str) -> Option<u64> {
    kib_field(&fs::read_to_string("/proc/self/status").ok()?, name)
}

/// Field `name` of a /proc file, given in kB, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_available_is_read_from_meminfo_in_bytes() {
        let meminfo = "MemTotal:        8040516 kB\nMemFree:          255188 kB\nMemAvailable:    4194304 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(4 << 30));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn peak_covers_an_allocation_made_after_a_reset() {
        let Some(before) = current_rss_bytes() else {
            return; // not Linux
        };
        if !reset_peak() {
            return;
        }
        let block = vec![1u8; 64 << 20];
        std::hint::black_box(&block);
        let peak = peak_rss_bytes().unwrap();
        assert!(peak >= before + (60 << 20), "peak {peak} before {before}");
    }
}
