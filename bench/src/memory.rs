//! Resident memory of the driver process, from `/proc/<pid>/status`.

use std::io;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MemorySample {
    /// Resident set size now.
    pub vm_rss_kib: u64,
    /// Peak resident set size since the process started.
    pub vm_hwm_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` (both reported in kB by the kernel).
pub fn parse_status(status: &str) -> Option<MemorySample> {
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let mut words = rest.split_whitespace();
            let value = words.next()?.parse().ok()?;
            (words.next()? == "kB").then_some(value)
        })
    };
    Some(MemorySample {
        vm_rss_kib: field("VmRSS")?,
        vm_hwm_kib: field("VmHWM")?,
    })
}

pub fn sample(pid: u32) -> io::Result<MemorySample> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)?;
    parse_status(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path} has no VmRSS/VmHWM (a kernel thread or a zombie?)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tplinth-driver\nState:\tS (sleeping)\nVmPeak:\t   20000 kB\n\
        VmHWM:\t    7012 kB\nVmRSS:\t    6144 kB\nRssAnon:\t    1000 kB\nThreads:\t3\n";

    #[test]
    fn reads_rss_and_hwm() {
        assert_eq!(
            parse_status(STATUS),
            Some(MemorySample {
                vm_rss_kib: 6144,
                vm_hwm_kib: 7012
            })
        );
    }

    #[test]
    fn missing_or_odd_fields_are_none() {
        assert_eq!(parse_status("Name:\tkthreadd\nState:\tS\n"), None);
        assert_eq!(parse_status("VmRSS:\t12 MB\nVmHWM:\t13 kB\n"), None);
        // VmRSSx must not be taken for VmRSS.
        assert_eq!(parse_status("VmRSSx:\t1 kB\nVmHWM:\t2 kB\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let own = sample(std::process::id()).expect("own /proc status");
        assert!(own.vm_rss_kib > 0);
        assert!(own.vm_hwm_kib >= own.vm_rss_kib);
    }
}
