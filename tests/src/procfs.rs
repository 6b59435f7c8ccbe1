//! What `/proc` says about a process: CPU time spent and memory held (the benches'
//! figures), glibc's heap arenas, and
//! which process owns a TCP connection (the fault suite kills the agent whose check is
//! caught mid-flight).

use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};

/// Clock ticks per second (`getconf CLK_TCK`; 100 where that does not answer).
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// utime + stime of a `/proc/.../stat` file, in seconds.
fn stat_cpu_seconds(path: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("{path}: no ')'"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .ok_or_else(|| anyhow!("{path}: too few fields"))?
            .parse::<f64>()
            .with_context(|| format!("{path}: field {}", i + 3))
    };
    Ok((ticks(11)? + ticks(12)?) / ticks_per_second())
}

/// CPU seconds (user + system) a process has used so far.
pub fn process_cpu_seconds(pid: u32) -> Result<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// CPU seconds (user + system) the calling thread has used so far.
pub fn thread_cpu_seconds() -> Result<f64> {
    stat_cpu_seconds("/proc/thread-self/stat")
}

/// A `VmRSS:`/`VmHWM:`-style value of `/proc/<pid>/status`, in KiB.
pub fn process_status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

/// Whether process `pid` holds the TCP socket whose local port is `port` (loopback).
pub fn owns_tcp_port(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = cols
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port)
                && let Some(inode) = cols.get(9)
            {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

/// glibc heap arenas besides the main heap of process `pid`: each is an anonymous
/// mapping starting on a 64 MiB boundary (glibc's `HEAP_MAX_SIZE` on 64-bit).
pub fn extra_malloc_arenas(pid: u32) -> Result<usize> {
    const HEAP_MAX_SIZE: u64 = 64 << 20;
    let path = format!("/proc/{pid}/maps");
    let maps = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(maps
        .lines()
        .filter(|line| line.split_whitespace().count() == 5) // no path: anonymous
        .filter_map(|line| line.split('-').next())
        .filter_map(|start| u64::from_str_radix(start, 16).ok())
        .filter(|start| start % HEAP_MAX_SIZE == 0)
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let before = thread_cpu_seconds().unwrap();
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_seconds().unwrap() > before);
        assert!(process_cpu_seconds(std::process::id()).unwrap() > 0.0);
        assert!(process_status_kib(std::process::id(), "VmRSS:").unwrap() > 0);
        assert!(process_status_kib(std::process::id(), "NoSuchField:").is_err());
    }

    #[test]
    fn finds_the_owner_of_a_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let port = stream.local_addr().unwrap().port();
        assert!(owns_tcp_port(std::process::id(), port));
        assert!(!owns_tcp_port(1, port));
    }
}
