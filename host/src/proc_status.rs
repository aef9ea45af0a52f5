//! A process's memory figures from Linux's `/proc/PID/status` (`VmRSS:`, `VmHWM:`, ...):
//! given there in KiB whatever the page size. One reader for the metrics, the benchmarks and
//! the tests.

/// The figure `field` (e.g. `"VmRSS:"`) of process `pid` (this process if `None`), in bytes;
/// `None` where `/proc` or the field is missing.
pub fn status_bytes(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = pid.map_or_else(
        || "/proc/self/status".to_string(),
        |pid| format!("/proc/{pid}/status"),
    );
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident memory of process `pid` (this process if `None`), in bytes.
pub fn resident_bytes(pid: Option<u32>) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_resident_memory() {
        let rss = super::resident_bytes(None).unwrap();
        assert!(rss > 1 << 20, "{rss}");
        assert_eq!(super::status_bytes(None, "NoSuchField:"), None);
    }
}
