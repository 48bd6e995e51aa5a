//! How busy the machine's cores were while something ran, from Linux's
//! /proc/stat: whether a measured operation was bound by the cores or
//! waited on something else (the disk, a pipeline that did not fill).

/// The machine's CPU time so far, in clock ticks, from the `cpu` line of
/// /proc/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Ticks spent running something: user, nice, system, irq, softirq
    /// and steal.
    pub busy: u64,
    /// Ticks idle, including waiting on I/O.
    pub idle: u64,
}

/// What the cores did between two readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuUse {
    /// CPU-seconds spent running something, by every process.
    pub busy_seconds: f64,
    /// The share of the cores' time that was busy, 0 to 1.
    pub busy_share: f64,
}

/// Parses the aggregate `cpu` line of /proc/stat. Pure.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is
    // already inside user and nice).
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
    if ticks.len() < 4 {
        return None;
    }
    Some(CpuTimes {
        busy: at(0) + at(1) + at(2) + at(5) + at(6) + at(7),
        idle: at(3) + at(4),
    })
}

/// The use between readings `before` and `after`, with `ticks_per_second`
/// clock ticks per second. Pure.
pub fn use_between(before: CpuTimes, after: CpuTimes, ticks_per_second: f64) -> CpuUse {
    let busy = after.busy.saturating_sub(before.busy);
    let idle = after.idle.saturating_sub(before.idle);
    CpuUse {
        busy_seconds: busy as f64 / ticks_per_second,
        busy_share: if busy + idle == 0 {
            0.0
        } else {
            busy as f64 / (busy + idle) as f64
        },
    }
}

/// The machine's CPU times now; `None` off Linux.
pub fn now() -> Option<CpuTimes> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Clock ticks per second of /proc/stat.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Runs `work` and measures the machine's CPU use meanwhile (`None` off
/// Linux).
pub async fn measured<T>(work: impl std::future::Future<Output = T>) -> (T, Option<CpuUse>) {
    let before = now();
    let result = work.await;
    let used = before
        .zip(now())
        .map(|(b, a)| use_between(b, a, ticks_per_second()));
    (result, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 50 800 40 3 2 1 0 0\n\
                        cpu0 50 2 25 400 20 1 1 0 0 0\n\
                        intr 12345\n";

    #[test]
    fn busy_counts_everything_but_idle_and_io_wait() {
        assert_eq!(
            parse_proc_stat(STAT),
            Some(CpuTimes {
                busy: 100 + 5 + 50 + 3 + 2 + 1,
                idle: 800 + 40
            })
        );
    }

    #[test]
    fn a_stat_without_the_aggregate_line_or_with_garbage_gives_nothing() {
        assert_eq!(parse_proc_stat("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 x 3 4\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 2\n"), None);
    }

    #[test]
    fn use_between_readings_is_the_busy_time_and_its_share() {
        let before = CpuTimes {
            busy: 100,
            idle: 100,
        };
        let after = CpuTimes {
            busy: 250,
            idle: 150,
        };
        let used = use_between(before, after, 100.0);
        assert_eq!(used.busy_seconds, 1.5);
        assert_eq!(used.busy_share, 0.75);
        assert_eq!(use_between(after, after, 100.0).busy_share, 0.0);
    }

    #[test]
    fn this_machine_reports_its_cpu_times_when_it_is_linux() {
        if cfg!(target_os = "linux") {
            let first = now().expect("/proc/stat parses");
            let second = now().unwrap();
            assert!(second.busy >= first.busy && second.idle >= first.idle);
        }
    }
}
