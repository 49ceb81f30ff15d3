//! What a worker has to offer when it is not told: cores and memory found
//! on the machine, as a batch system would give them.
//!
//! Cores are the CPUs this process may run on (its affinity mask), capped
//! by the cgroup's CPU quota (`cpu.max` in cgroup v2, `cpu.cfs_quota_us` in
//! v1) rounded up. Memory is the cgroup's limit (`memory.max`, or v1's
//! `memory.limit_in_bytes`) when there is one below the machine's total,
//! else the machine's total (`MemTotal`). Inside a Slurm job
//! (`SLURM_JOB_ID` set) the job's allocation wins: `SLURM_CPUS_ON_NODE`,
//! and `SLURM_MEM_PER_NODE` (or `SLURM_MEM_PER_CPU` times the cores), both
//! in MiB as Slurm gives them; the worker then also gets the labels
//! `slurm_job` and `host`.
//!
//! [`detect`] reads the real sources; [`detect_from`] takes them as
//! arguments, so the rules are tested without the machine's own values.

use std::path::{Path, PathBuf};

/// What was found, and where each figure came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// Cores to offer.
    pub cores: u32,
    /// Where `cores` came from.
    pub cores_from: String,
    /// Memory to offer, in bytes.
    pub mem: u64,
    /// Where `mem` came from.
    pub mem_from: String,
    /// Labels the environment gives (`slurm_job`, `host` in a Slurm job).
    pub labels: Vec<(String, String)>,
}

/// Where [`detect_from`] reads.
pub struct Sources<'a> {
    /// An environment variable's value.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// A file's text.
    pub read: &'a dyn Fn(&Path) -> Option<String>,
    /// CPUs in this process's affinity mask, if known.
    pub affinity: Option<u32>,
}

/// Detects cores and memory from this machine and process.
pub fn detect() -> Detected {
    let env = |k: &str| std::env::var(k).ok();
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    detect_from(&Sources {
        env: &env,
        read: &read,
        affinity: affinity(),
    })
}

/// Detects cores and memory from `src` (see the module docs for the
/// rules).
pub fn detect_from(src: &Sources<'_>) -> Detected {
    let env = |k: &str| (src.env)(k).filter(|v| !v.trim().is_empty());
    let cgroup = cgroup_dir(src);
    // Cores: affinity, capped by the cgroup's quota.
    let machine = src.affinity.map(|n| (n.max(1), "CPU affinity".to_owned()));
    let quota = cgroup.as_ref().and_then(|d| cpu_quota(src, d));
    let (mut cores, mut cores_from) = match (machine, quota) {
        (Some((a, _)), Some((q, qfrom))) if q < a => (q, qfrom),
        (Some((a, from)), _) => (a, from),
        (None, Some((q, qfrom))) => (q, qfrom),
        (None, None) => (1, "nothing readable (1 assumed)".to_owned()),
    };
    // Memory: the cgroup's limit if below the machine's total.
    let total = (src.read)(Path::new("/proc/meminfo")).and_then(|t| meminfo_total(&t));
    let limit = cgroup.as_ref().and_then(|d| mem_limit(src, d));
    let (mut mem, mut mem_from) = match (total, limit) {
        (Some(t), Some((l, lfrom))) if l < t => (l, lfrom),
        (Some(t), _) => (t, "/proc/meminfo MemTotal".to_owned()),
        (None, Some((l, lfrom))) => (l, lfrom),
        (None, None) => (0, "nothing readable (0 assumed)".to_owned()),
    };
    let mut labels = Vec::new();
    if let Some(job) = env("SLURM_JOB_ID") {
        if let Some(n) = env("SLURM_CPUS_ON_NODE").and_then(|v| v.trim().parse::<u32>().ok()) {
            cores = n.max(1);
            cores_from = "SLURM_CPUS_ON_NODE".into();
        }
        let mib = |v: String| v.trim().trim_end_matches('M').parse::<u64>().ok();
        if let Some(m) = env("SLURM_MEM_PER_NODE").and_then(mib) {
            mem = m << 20;
            mem_from = "SLURM_MEM_PER_NODE".into();
        } else if let Some(m) = env("SLURM_MEM_PER_CPU").and_then(mib) {
            mem = (m << 20).saturating_mul(u64::from(cores));
            mem_from = "SLURM_MEM_PER_CPU x cores".into();
        }
        labels.push(("slurm_job".to_owned(), job.trim().to_owned()));
        let host = env("SLURMD_NODENAME")
            .or_else(|| (src.read)(Path::new("/proc/sys/kernel/hostname")))
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty());
        if let Some(h) = host {
            labels.push(("host".to_owned(), h));
        }
    }
    Detected {
        cores,
        cores_from,
        mem,
        mem_from,
        labels,
    }
}

/// This process's cgroup directory: v2's unified path from
/// `/proc/self/cgroup` (`0::/PATH`), or `None` (v1 is read at its usual
/// controller paths).
fn cgroup_dir(src: &Sources<'_>) -> Option<Cgroup> {
    let text = (src.read)(Path::new("/proc/self/cgroup"))?;
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("0::") {
            return Some(Cgroup::V2(
                Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')),
            ));
        }
    }
    Some(Cgroup::V1)
}

enum Cgroup {
    V2(PathBuf),
    V1,
}

/// The cgroup's CPU quota in whole cores (rounded up), if it has one.
fn cpu_quota(src: &Sources<'_>, cg: &Cgroup) -> Option<(u32, String)> {
    let (quota, period, from) = match cg {
        Cgroup::V2(dir) => {
            let p = dir.join("cpu.max");
            let text = (src.read)(&p)?;
            let mut it = text.split_whitespace();
            let q = it.next()?;
            if q == "max" {
                return None;
            }
            (q.parse::<u64>().ok()?, it.next()?.parse::<u64>().ok()?, p)
        }
        Cgroup::V1 => {
            let d = Path::new("/sys/fs/cgroup/cpu,cpuacct");
            let q = (src.read)(&d.join("cpu.cfs_quota_us"))?
                .trim()
                .parse::<i64>()
                .ok()?;
            let p = (src.read)(&d.join("cpu.cfs_period_us"))?
                .trim()
                .parse::<u64>()
                .ok()?;
            (u64::try_from(q).ok()?, p, d.join("cpu.cfs_quota_us"))
        }
    };
    if period == 0 || quota == 0 {
        return None;
    }
    let cores = quota.div_ceil(period).clamp(1, u64::from(u32::MAX)) as u32;
    Some((cores, format!("cgroup quota {}", from.display())))
}

/// The cgroup's memory limit in bytes, if it has one.
fn mem_limit(src: &Sources<'_>, cg: &Cgroup) -> Option<(u64, String)> {
    let p = match cg {
        Cgroup::V2(dir) => dir.join("memory.max"),
        Cgroup::V1 => PathBuf::from("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
    };
    let text = (src.read)(&p)?;
    let v = text.trim().parse::<u64>().ok()?;
    Some((v, format!("cgroup limit {}", p.display())))
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPUs in this process's affinity mask.
fn affinity() -> Option<u32> {
    // SAFETY: `set` is a plain bitmask the call fills; its size is passed
    // with it, and nothing else is touched.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        u32::try_from(libc::CPU_COUNT(&set)).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::{detect, detect_from, Sources};

    fn with(
        env: &[(&str, &str)],
        files: &[(&str, &str)],
        affinity: Option<u32>,
    ) -> super::Detected {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let files: HashMap<String, String> = files
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let e = |k: &str| env.get(k).cloned();
        let r = |p: &Path| files.get(p.to_str()?).cloned();
        detect_from(&Sources {
            env: &e,
            read: &r,
            affinity,
        })
    }

    const MEMINFO: (&str, &str) = (
        "/proc/meminfo",
        "MemTotal:       16384000 kB\nMemFree: 1 kB\n",
    );
    const CG: (&str, &str) = ("/proc/self/cgroup", "0::/user.slice/job\n");

    #[test]
    fn the_cgroup_caps_affinity_and_memory() {
        let d = with(
            &[],
            &[
                MEMINFO,
                CG,
                ("/sys/fs/cgroup/user.slice/job/cpu.max", "250000 100000\n"),
                ("/sys/fs/cgroup/user.slice/job/memory.max", "4294967296\n"),
            ],
            Some(8),
        );
        assert_eq!(d.cores, 3, "2.5 cores of quota round up");
        assert!(d.cores_from.contains("cpu.max"), "{}", d.cores_from);
        assert_eq!(d.mem, 4 << 30);
        assert!(d.mem_from.contains("memory.max"), "{}", d.mem_from);
        assert!(d.labels.is_empty());
    }

    #[test]
    fn no_limit_means_affinity_and_the_machines_memory() {
        let d = with(
            &[],
            &[
                MEMINFO,
                CG,
                ("/sys/fs/cgroup/user.slice/job/cpu.max", "max 100000\n"),
                ("/sys/fs/cgroup/user.slice/job/memory.max", "max\n"),
            ],
            Some(2),
        );
        assert_eq!((d.cores, d.cores_from.as_str()), (2, "CPU affinity"));
        assert_eq!(d.mem, 16_384_000 * 1024);
        assert_eq!(d.mem_from, "/proc/meminfo MemTotal");
    }

    #[test]
    fn a_slurm_job_gives_its_allocation_and_labels() {
        let env = [
            ("SLURM_JOB_ID", "4242"),
            ("SLURM_CPUS_ON_NODE", "6"),
            ("SLURM_MEM_PER_NODE", "2048"),
            ("SLURMD_NODENAME", "node17"),
        ];
        let d = with(&env, &[MEMINFO, CG], Some(32));
        assert_eq!((d.cores, d.cores_from.as_str()), (6, "SLURM_CPUS_ON_NODE"));
        assert_eq!(
            (d.mem, d.mem_from.as_str()),
            (2048 << 20, "SLURM_MEM_PER_NODE")
        );
        assert_eq!(
            d.labels,
            [
                ("slurm_job".to_owned(), "4242".to_owned()),
                ("host".to_owned(), "node17".to_owned())
            ]
        );
        let per_cpu = [
            ("SLURM_JOB_ID", "7"),
            ("SLURM_CPUS_ON_NODE", "4"),
            ("SLURM_MEM_PER_CPU", "1000"),
        ];
        let d = with(&per_cpu, &[MEMINFO, CG], Some(32));
        assert_eq!(d.mem, 4000 << 20);
    }

    #[test]
    fn unreadable_sources_give_safe_figures_that_say_so() {
        let d = with(&[], &[], None);
        assert_eq!(d.cores, 1);
        assert!(d.cores_from.contains("assumed"));
        assert_eq!(d.mem, 0);
        assert!(d.mem_from.contains("assumed"));
    }

    /// This machine: at least one core and some memory.
    #[test]
    fn this_machine_has_cores_and_memory() {
        let d = detect();
        assert!(d.cores >= 1 && d.mem > 0, "{d:?}");
    }
}
