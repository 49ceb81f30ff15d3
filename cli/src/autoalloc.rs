//! `allot distributor --autoalloc slurm`: the flags turned into the
//! distributor's [`AutoallocConfig`]. What a worker started by a job
//! offers (the template the distributor judges tasks with) comes from the
//! worker flags the jobs pass (`--autoalloc-worker-args`) and, for what
//! they leave to `auto`, from the partition's nodes as `sinfo` lists
//! them: the least CPUs and memory of any node, and the features every
//! node has (as `feature_NAME` labels, as the job's script gives them),
//! so that a task judged to fit fits whichever node the job lands on.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use allot::distributor::autoalloc::{self, slurm, AutoallocConfig, PolicyConfig};
use allot_engine::{LabelValue, ServerRecord};
use allot_wire::AttrValue;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

/// The batch systems `--autoalloc` knows.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub(crate) enum Backend {
    /// Slurm: sbatch, squeue, scancel, sinfo on PATH.
    Slurm,
}

/// The automatic allocation's flags of `allot distributor`.
#[derive(Args, Debug)]
pub(crate) struct AutoallocArgs {
    /// Submit batch jobs that start workers joining this distributor when
    /// tasks wait that no live worker can take but such a worker could.
    #[arg(long, value_enum)]
    autoalloc: Option<Backend>,
    /// Jobs pending or running at most.
    #[arg(long, default_value_t = 4, requires = "autoalloc",
          value_parser = clap::value_parser!(u32).range(1..))]
    autoalloc_max_jobs: u32,
    /// A job's worker exits after this many seconds without a task (its
    /// job then ends); a job still pending is cancelled once no task has
    /// waited for it this long.
    #[arg(long, value_name = "SECS", default_value = "60", requires = "autoalloc",
          value_parser = crate::values::parse_secs)]
    autoalloc_idle: Duration,
    /// More sbatch arguments, split as a shell would (e.g. "--partition
    /// debug --time 1:00:00"); they win over the script's own.
    #[arg(
        long,
        value_name = "ARGS",
        default_value = "",
        requires = "autoalloc",
        allow_hyphen_values = true
    )]
    autoalloc_args: String,
    /// Flags of the jobs' workers, split as a shell would (e.g. "--apps
    /// echo,render --app-cmd 'render=render.sh'"); they also say what the
    /// distributor expects such a worker to offer.
    #[arg(
        long,
        value_name = "ARGS",
        default_value = "",
        requires = "autoalloc",
        allow_hyphen_values = true
    )]
    autoalloc_worker_args: String,
    /// The address the jobs' workers join (default: the listen address,
    /// or this host's name and the port when it listens on all).
    #[arg(long, value_name = "HOST:PORT", requires = "autoalloc")]
    autoalloc_join: Option<allot::HostPort>,
    /// The worker certificate every job's worker presents (a pool
    /// certificate in the PKI directory, `allot cert issue --role
    /// worker`). Without it each job issues one of its own name with the
    /// CA's key, which must then be in the PKI directory.
    #[arg(long, value_name = "NAME", requires = "autoalloc")]
    autoalloc_cert: Option<String>,
}

fn split(flag: &str, s: &str) -> Result<Vec<String>> {
    shlex::split(s).with_context(|| format!("--{flag}: unbalanced quotes in {s:?}"))
}

/// Whether sbatch argument `a` sets the job's name (`-J`, `--job-name`).
fn names_the_job(a: &str) -> bool {
    a == "--job-name" || a.starts_with("--job-name=") || a.starts_with("-J")
}

/// The partition named in sbatch arguments (`-p P`, `--partition P`,
/// `--partition=P`), if any.
fn partition(args: &[String]) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-p" || a == "--partition" {
            return it.next().cloned();
        }
        if let Some(p) = a.strip_prefix("--partition=") {
            return Some(p.to_owned());
        }
        if let Some(p) = a.strip_prefix("-p").filter(|p| !p.is_empty()) {
            return Some(p.to_owned());
        }
    }
    None
}

/// The nodes `sinfo` lists (of `partition`, if given).
fn sinfo(partition: Option<&str>) -> Result<Vec<slurm::NodeOffer>> {
    let mut c = std::process::Command::new("sinfo");
    c.args(["-h", "-N", "-o", "%c|%m|%f"]);
    if let Some(p) = partition {
        c.args(["-p", p]);
    }
    let out = c
        .output()
        .context("--autoalloc slurm: cannot run sinfo (is Slurm's client installed?)")?;
    if !out.status.success() {
        bail!(
            "--autoalloc slurm: sinfo failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(slurm::parse_sinfo(&String::from_utf8_lossy(&out.stdout)))
}

/// The address of this host for workers on other nodes: the listen
/// address, or where it is unspecified this host's name and the port
/// (workers look it up at each dial).
fn join_addr(listen: SocketAddr) -> String {
    if !listen.ip().is_unspecified() {
        return listen.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", listen.port())
}

/// What the worker flags of `--autoalloc-worker-args` say a worker
/// offers (`None`: detected on its node).
pub(crate) struct WorkerOffer {
    pub apps: Vec<String>,
    pub app_cmds: Vec<(String, String)>,
    pub slots: u32,
    pub power: f64,
    pub labels: Vec<allot_wire::Attr>,
    pub cores: Option<u32>,
    pub mem: Option<u64>,
}

impl AutoallocArgs {
    /// The distributor's automatic allocation, if `--autoalloc` is given.
    /// `parse_worker` reads worker flags as `allot worker` does (the CLI
    /// owns those flags, so it passes its parser in).
    pub(crate) fn config(
        &self,
        name: &str,
        listen: SocketAddr,
        pki: &Path,
        data_dir: &Path,
        parse_worker: impl Fn(&[String]) -> Result<WorkerOffer>,
    ) -> Result<Option<AutoallocConfig>> {
        let Some(Backend::Slurm) = self.autoalloc else {
            return Ok(None);
        };
        let submit_args = split("autoalloc-args", &self.autoalloc_args)?;
        if let Some(a) = submit_args.iter().find(|a| names_the_job(a)) {
            bail!(
                "--autoalloc-args: {a:?}: the distributor names its jobs itself, so that a restart finds them again"
            );
        }
        if let Some(c) = &self.autoalloc_cert {
            let (pem, key) = (pki.join(format!("{c}.pem")), pki.join(format!("{c}.key")));
            if !pem.exists() || !key.exists() {
                bail!(
                    "--autoalloc-cert {c}: no {} and {} (issue it with `allot cert issue --dir {} --name {c} --role worker`)",
                    pem.display(),
                    key.display(),
                    pki.display()
                );
            }
        }
        let worker_args = split("autoalloc-worker-args", &self.autoalloc_worker_args)?;
        let worker = parse_worker(&worker_args).context("--autoalloc-worker-args")?;
        let part = partition(&submit_args);
        let mut nodes = sinfo(part.as_deref())?;
        if nodes.is_empty() && part.is_some() {
            tracing::warn!(
                partition = part.as_deref().unwrap_or(""),
                "autoalloc: sinfo lists no node of the partition; judging tasks by every node"
            );
            nodes = sinfo(None)?;
        }
        if nodes.is_empty() {
            bail!("--autoalloc slurm: sinfo lists no node");
        }
        let cpus = nodes.iter().map(|n| n.cpus).min().unwrap_or(1);
        let mem = nodes.iter().map(|n| n.mem).min().unwrap_or(0);
        let mut features: Vec<String> = nodes[0].features.clone();
        features.retain(|f| nodes.iter().all(|n| n.features.contains(f)));
        let mut labels: Vec<(String, LabelValue)> = worker
            .labels
            .iter()
            .filter_map(|a| match &a.value {
                AttrValue::Num(n) => Some((a.key.clone(), LabelValue::Num(*n))),
                AttrValue::Bool(b) => {
                    Some((a.key.clone(), LabelValue::Num(f64::from(u8::from(*b)))))
                }
                AttrValue::Str(s) => Some((a.key.clone(), LabelValue::Str(s.clone()))),
                _ => None,
            })
            .collect();
        for f in &features {
            let key = slurm::feature_label(f);
            if !labels.iter().any(|(k, _)| *k == key) {
                labels.push((key, LabelValue::Num(1.0)));
            }
        }
        let mut apps: Vec<String> = worker.app_cmds.iter().map(|(n, _)| n.clone()).collect();
        for a in &worker.apps {
            if !apps.contains(a) {
                apps.push(a.clone());
            }
        }
        let template = ServerRecord {
            name: "autoalloc-template".into(),
            slots: worker.slots.max(1),
            slots_free: worker.slots.max(1),
            cores: worker.cores.unwrap_or(cpus),
            power: worker.power,
            idle_power: worker.power,
            mem: worker.mem.unwrap_or(mem),
            mem_free: worker.mem.unwrap_or(mem),
            load: 0.0,
            apps,
            labels,
        };
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let out_dir = abs(data_dir).join("autoalloc");
        std::fs::create_dir_all(&out_dir)
            .with_context(|| format!("creating {}", out_dir.display()))?;
        let allot = std::env::current_exe().context("finding the allot binary")?;
        let join = match &self.autoalloc_join {
            Some(j) => j.to_string(),
            None => join_addr(listen),
        };
        // The real path: the same directory reached another way (a link,
        // `..`) names the same jobs.
        let out_dir = std::fs::canonicalize(&out_dir).unwrap_or(out_dir);
        let job_name = slurm::job_name(name, &out_dir);
        let script = slurm::script(&slurm::ScriptParams {
            allot: allot.display().to_string(),
            pki: abs(pki).display().to_string(),
            join,
            cert: self.autoalloc_cert.clone(),
            idle_secs: self.autoalloc_idle.as_secs().max(1),
            worker_args,
            job_name: job_name.clone(),
        });
        tracing::info!(
            cores = template.cores,
            mem = template.mem,
            apps = ?template.apps,
            labels = ?template.labels.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            "autoalloc: a Slurm worker would offer this"
        );
        Ok(Some(AutoallocConfig {
            backend: "slurm".into(),
            policy: PolicyConfig {
                max_jobs: self.autoalloc_max_jobs,
                idle: self.autoalloc_idle,
                poll: autoalloc::DEFAULT_POLL,
                backoff: autoalloc::DEFAULT_BACKOFF,
                slots: template.slots,
                job_name: job_name.clone(),
            },
            script,
            submit_args: [
                "--output".to_owned(),
                out_dir.join("slurm-%j.out").display().to_string(),
            ]
            .into_iter()
            .chain(submit_args)
            .collect(),
            template,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_name_in_the_sbatch_arguments_is_spotted() {
        for a in ["-J", "-Jx", "--job-name", "--job-name=x"] {
            assert!(names_the_job(a), "{a}");
        }
        for a in ["--partition", "-p", "--jobname", "--time=1"] {
            assert!(!names_the_job(a), "{a}");
        }
    }

    #[test]
    fn the_partition_is_found_in_sbatch_arguments() {
        let v = |s: &str| shlex::split(s).unwrap();
        assert_eq!(
            partition(&v("--time 5 --partition gpu")),
            Some("gpu".into())
        );
        assert_eq!(partition(&v("--partition=big -N 1")), Some("big".into()));
        assert_eq!(partition(&v("-p debug")), Some("debug".into()));
        assert_eq!(partition(&v("-pshort")), Some("short".into()));
        assert_eq!(partition(&v("--time 5")), None);
    }
}
