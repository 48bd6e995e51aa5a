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

/// The peak resident memory of this process (a bench's gateway runs in
/// it) over one phase: the kernel's high-water mark, reset as the phase
/// starts, and where it cannot be reset the sampled peak alone.
pub struct PhasePeak {
    kernel_counts: bool,
}

impl PhasePeak {
    /// Starts a phase now.
    pub fn start() -> Self {
        Self {
            kernel_counts: reset_peak(),
        }
    }

    /// The phase's peak, given the peak sampled meanwhile.
    pub fn end(&mut self, sampled: u64) -> u64 {
        let kernel = if self.kernel_counts {
            peak_rss_bytes().unwrap_or(0)
        } else {
            0
        };
        sampled.max(kernel)
    }
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
    fn a_phases_peak_sees_memory_freed_before_anything_sampled_it() {
        let Some(before) = current_rss_bytes() else {
            return; // not Linux
        };
        let mut phase = PhasePeak::start();
        let block = vec![1u8; 8 << 20];
        std::hint::black_box(&block);
        drop(block);
        // Sampled before and after only: the kernel saw the 8 MiB.
        let sampled = current_rss_bytes().unwrap().max(before);
        if !phase.kernel_counts {
            return; // the kernel does not reset its high-water mark here
        }
        assert!(phase.end(sampled) >= before + (7 << 20));
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
