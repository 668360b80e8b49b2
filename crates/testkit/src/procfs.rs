//! A process's resident memory and CPU time, read from Linux's /proc: the one reader
//! the benchmark's memory and CPU figures and `cargo xtask load` use.

/// `USER_HZ`: the unit of the CPU times in `/proc/<pid>/stat` (100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// Current resident set size of `pid` in KiB (`VmRSS`); `None` once it has exited.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident set size of `pid` in KiB since it started (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What `/proc/<pid>/stat` says of a process's CPU use.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTime {
    /// The executable's name (`comm`, at most 15 bytes).
    pub comm: String,
    /// User plus system CPU seconds since it started.
    pub seconds: f64,
}

/// CPU time of `pid` so far; `None` once it has exited.
pub fn cpu_time(pid: u32) -> Option<CpuTime> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process id in /proc now.
pub fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn parse_stat(stat: &str) -> Option<CpuTime> {
    // comm is in parentheses and may contain spaces and ')': split after the last ')'.
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(').map_or("", |(_, comm)| comm);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After comm: state is field 3 of the man page, utime 14 and stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(CpuTime {
        comm: comm.to_owned(),
        seconds: (utime + stime) / TICKS_PER_SECOND,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1 1 1";
        assert_eq!(
            parse_stat(line),
            Some(CpuTime {
                comm: "a) b (c)".into(),
                seconds: 3.0
            })
        );
        assert_eq!(parse_stat("42 (x) S 1"), None);
    }

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let me = std::process::id();
        let rss = rss_kib(me).expect("VmRSS");
        assert!(rss > 0);
        assert!(peak_rss_kib(me).expect("VmHWM") >= rss);
        assert!(cpu_time(me).expect("stat").seconds >= 0.0);
        assert!(pids().contains(&me));
    }
}
