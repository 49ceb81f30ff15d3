//! Slurm for the automatic allocation: the batch script a job runs, the
//! commands the distributor's shell runs for the [`Action`]s of the
//! policy (`sbatch --parsable`, `squeue`, `scancel`), and what a
//! partition's nodes offer (`sinfo`), read into a worker template.
//!
//! Every command has [`COMMAND_TIMEOUT`] to answer; its error is its
//! stderr (what Slurm said), so it can be shown as it is.
//!
//! [`Action`]: super::Action

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// How long a Slurm command may take before it counts as failed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The most of a command's stderr kept as its error.
const MAX_ERROR: usize = 1024;

/// Runs `prog args`, `stdin` on its standard input; its stdout, or its
/// stderr (or how it failed) as the error.
async fn run(prog: &str, args: &[String], stdin: Option<&str>) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {prog}: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| format!("writing to {prog}: {e}"))?;
    }
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "{prog} did not answer within {} s",
                COMMAND_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let mut err = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if err.is_empty() {
        err = format!("{prog} failed ({})", out.status);
    }
    if err.len() > MAX_ERROR {
        let mut cut = MAX_ERROR;
        while !err.is_char_boundary(cut) {
            cut -= 1;
        }
        err.truncate(cut);
    }
    Err(err)
}

/// Submits `script` with `sbatch --parsable ARGS`; the job's id, or what
/// sbatch said.
pub async fn submit(script: &str, args: &[String]) -> Result<String, String> {
    let mut a = vec!["--parsable".to_owned()];
    a.extend(args.iter().cloned());
    let out = run("sbatch", &a, Some(script)).await?;
    parse_parsable(&out).ok_or_else(|| format!("sbatch printed no job id: {:?}", out.trim()))
}

/// The job id in `sbatch --parsable`'s output (`ID` or `ID;CLUSTER`).
pub fn parse_parsable(out: &str) -> Option<String> {
    let id = out.trim().split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit() || c == '_')).then(|| id.to_owned())
}

/// The states of jobs `ids` that Slurm still lists (`squeue`); those it
/// does not list have left the queue.
pub async fn states(ids: &[String]) -> Result<Vec<(String, String)>, String> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let args = vec![
        "-h".to_owned(),
        "-o".to_owned(),
        "%i %T".to_owned(),
        "-j".to_owned(),
        ids.join(","),
    ];
    match run("squeue", &args, None).await {
        Ok(out) => Ok(parse_squeue(&out)),
        // squeue says so when it knows none of them: all have ended.
        Err(e) if e.contains("Invalid job id") => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// `squeue -h -o "%i %T"` lines: (id, state).
pub fn parse_squeue(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .collect()
}

/// The name of the jobs of distributor `name` whose data directory's
/// allocation files are in `dir` (absolute): `allot-NAME-HASH`, the hash
/// (FNV-1a) of `dir`, so that a restart of the same distributor finds its
/// jobs again ([`find`]) and two distributors that share a name but not a
/// data directory never take each other's.
pub fn job_name(name: &str, dir: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut h: u32 = 0x811c_9dc5;
    for b in dir.as_os_str().as_bytes() {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    format!("allot-{name}-{h:08x}")
}

/// This user's jobs named `name` that Slurm still lists (`squeue -u UID
/// --name`, which Slurm releases before 20.11 know too): (id, state).
pub async fn find(name: &str) -> Result<Vec<(String, String)>, String> {
    // SAFETY: getuid(2) cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() }.to_string();
    let args = ["-h", "-u", &uid, "--name", name, "-o", "%i %T"].map(str::to_owned);
    run("squeue", &args, None)
        .await
        .map(|out| parse_squeue(&out))
}

/// Cancels job `id`.
pub async fn cancel(id: &str) -> Result<(), String> {
    run("scancel", &[id.to_owned()], None).await.map(|_| ())
}

/// A node as `sinfo -h -N -o "%c|%m|%f"` shows it: CPUs, memory in MiB,
/// features.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeOffer {
    /// CPUs.
    pub cpus: u32,
    /// Memory, in bytes.
    pub mem: u64,
    /// Features (`(null)` is none).
    pub features: Vec<String>,
}

/// Reads `sinfo -h -N -o "%c|%m|%f"` output; lines it cannot read are
/// skipped.
pub fn parse_sinfo(out: &str) -> Vec<NodeOffer> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.trim().split('|');
            let cpus = f.next()?.trim().parse().ok()?;
            let mib: u64 = f.next()?.trim().trim_end_matches('+').parse().ok()?;
            let features = f
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty() && *s != "(null)")
                .map(str::to_owned)
                .collect();
            Some(NodeOffer {
                cpus,
                mem: mib << 20,
                features,
            })
        })
        .collect()
}

/// The label a node feature becomes: `feature_` and its name, each
/// character that may not be in an attribute name made `_`.
pub fn feature_label(feature: &str) -> String {
    let clean: String = feature
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("feature_{clean}")
}

/// What the batch script of an allocation needs to know.
#[derive(Debug, Clone)]
pub struct ScriptParams {
    /// The `allot` binary the job runs.
    pub allot: String,
    /// The PKI directory (shared with the nodes).
    pub pki: String,
    /// The distributor's address for workers (`host:port`).
    pub join: String,
    /// A worker certificate every job's worker uses (`--cert`), or none:
    /// the job issues one of its own name with the CA in `pki`.
    pub cert: Option<String>,
    /// `--idle-exit` of the worker, in seconds.
    pub idle_secs: u64,
    /// More worker flags, each one argument.
    pub worker_args: Vec<String>,
    /// The job's name.
    pub job_name: String,
}

/// `s` quoted for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The batch script of an allocation (the job's output file is an
/// `sbatch` argument, free of the script's quoting): one worker on the job's node,
/// named `auto-JOBID`, with the node's features as labels, joining the
/// distributor and exiting after the idle time (which ends the job).
pub fn script(p: &ScriptParams) -> String {
    let allot = sh_quote(&p.allot);
    let pki = sh_quote(&p.pki);
    let mut s = String::new();
    s.push_str("#!/bin/sh\n");
    s.push_str(&format!("#SBATCH --job-name={}\n", p.job_name));
    s.push_str("#SBATCH --nodes=1\n#SBATCH --ntasks=1\n#SBATCH --exclusive\n");
    s.push_str("# Written by allot distributor --autoalloc slurm: one worker on this node.\n");
    s.push_str("set -e\nname=\"auto-$SLURM_JOB_ID\"\n");
    let cert = match &p.cert {
        Some(c) => format!("--cert {}", sh_quote(c)),
        None => {
            s.push_str(&format!(
                "{allot} cert issue --dir {pki} --name \"$name\" --role worker >/dev/null\n"
            ));
            String::new()
        }
    };
    s.push_str(
        "labels=\"\"\n\
         for f in $(scontrol show node \"${SLURMD_NODENAME:-$(hostname -s)}\" | sed -n 's/.*ActiveFeatures=\\([^ ]*\\).*/\\1/p' | tr ',' ' '); do\n\
         \x20 [ \"$f\" = \"(null)\" ] && continue\n\
         \x20 labels=\"$labels --label feature_$(printf %s \"$f\" | tr -c 'A-Za-z0-9_' _)=true\"\n\
         done\n",
    );
    let extra: Vec<String> = p.worker_args.iter().map(|a| sh_quote(a)).collect();
    s.push_str(&format!(
        "# shellcheck disable=SC2086 # labels: one flag a word\n\
         exec {allot} worker --name \"$name\" {cert} --pki {pki} --join {} --idle-exit {} --drain-timeout 5 $labels {}\n",
        sh_quote(&p.join),
        p.idle_secs,
        extra.join(" ")
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_outputs_are_read_and_junk_is_skipped() {
        assert_eq!(parse_parsable("1234\n"), Some("1234".into()));
        assert_eq!(parse_parsable("1234;cluster\n"), Some("1234".into()));
        assert_eq!(parse_parsable("Submitted batch job 3"), None);
        assert_eq!(parse_parsable(""), None);
        assert_eq!(
            parse_squeue("12 PENDING\n13 RUNNING\n\nbad\n"),
            [
                ("12".to_owned(), "PENDING".to_owned()),
                ("13".to_owned(), "RUNNING".to_owned())
            ]
        );
        assert_eq!(
            parse_sinfo("2|21694|gpu_none,ssd\n64|512000+|(null)\nx|y|z\n"),
            [
                NodeOffer {
                    cpus: 2,
                    mem: 21694 << 20,
                    features: vec!["gpu_none".into(), "ssd".into()]
                },
                NodeOffer {
                    cpus: 64,
                    mem: 512000 << 20,
                    features: vec![]
                }
            ]
        );
        assert_eq!(feature_label("nvme-2.0"), "feature_nvme_2_0");
        let a = job_name("d1", std::path::Path::new("/data/a/autoalloc"));
        assert!(
            a.starts_with("allot-d1-") && a.len() == "allot-d1-".len() + 8,
            "{a}"
        );
        assert_eq!(a, job_name("d1", std::path::Path::new("/data/a/autoalloc")));
        assert_ne!(a, job_name("d1", std::path::Path::new("/data/b/autoalloc")));
    }

    #[test]
    fn the_script_starts_one_idle_exiting_worker_joining_the_distributor() {
        let mut p = ScriptParams {
            allot: "/opt/allot bin/allot".into(),
            pki: "/shared/pki".into(),
            join: "head:7001".into(),
            cert: None,
            idle_secs: 30,
            worker_args: vec!["--apps".into(), "echo,sleep".into()],
            job_name: "allot-d1".into(),
        };
        let s = script(&p);
        assert!(
            s.starts_with("#!/bin/sh\n#SBATCH --job-name=allot-d1\n"),
            "{s}"
        );
        assert!(!s.contains("--output"), "an sbatch argument: {s}");
        assert!(
            s.contains("'/opt/allot bin/allot' cert issue --dir '/shared/pki' --name \"$name\" --role worker"),
            "{s}"
        );
        assert!(
            s.contains(
                "--join 'head:7001' --idle-exit 30 --drain-timeout 5 $labels '--apps' 'echo,sleep'"
            ),
            "{s}"
        );
        p.cert = Some("workers".into());
        let s = script(&p);
        assert!(!s.contains("cert issue"), "{s}");
        assert!(s.contains("--cert 'workers' --pki"), "{s}");
    }
}
