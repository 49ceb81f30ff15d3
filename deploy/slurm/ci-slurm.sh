#!/usr/bin/env bash
# A single-node Slurm for tests: `ci-slurm.sh start` writes a configuration
# under a state directory, creates a munge key, starts munged, slurmctld
# and slurmd as daemons (no systemd needed) and waits until the node is
# idle; `ci-slurm.sh stop` stops them by the process ids in their pid
# files and removes the directory. Run as root (SlurmUser=root).
#
# The state directory is $ALLOT_SLURM_DIR (default /tmp/allot-slurm); its
# `env` file holds SLURM_CONF for the shells that use this Slurm.
#
# The node offers 2 CPUs and the features gpu_none and ssd (tests check
# them as worker labels). Process tracking is proctrack/linuxproc and
# tasks run without cgroups (task/none): containers seldom let slurmd
# manage cgroups.
set -euo pipefail

dir="${ALLOT_SLURM_DIR:-/tmp/allot-slurm}"
cmd="${1:-}"

stop_pid() { # name pidfile
  local f="$2" pid
  [ -f "$f" ] || return 0
  pid="$(cat "$f" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "ci-slurm: $1 ($pid) did not stop on TERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$f"
}

stop() {
  export SLURM_CONF="$dir/etc/slurm.conf"
  # Jobs still queued would otherwise be left to the next start.
  if [ -f "$dir/run/slurmctld.pid" ]; then
    scancel --full --quiet --user=root 2>/dev/null || true
  fi
  stop_pid slurmd "$dir/run/slurmd.pid"
  stop_pid slurmctld "$dir/run/slurmctld.pid"
  stop_pid munged "$dir/run/munged.pid"
  rm -rf "$dir"
}

start() {
  if [ -f "$dir/run/slurmctld.pid" ]; then
    echo "ci-slurm: already started in $dir (stop it first)" >&2
    exit 1
  fi
  local host mem
  host="$(hostname -s)"
  # Slurm refuses a node whose RealMemory is above what it finds: ask for
  # a little less than the machine has.
  mem="$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)"
  mkdir -p "$dir"/{etc,run,state,spool,log,munge}
  chmod 700 "$dir/munge"
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
  cat >"$dir/etc/slurm.conf" <<CONF
ClusterName=allotci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
SlurmctldPort=16817
SlurmdPort=16818
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=2
KillWait=5
Waittime=0
SchedulerParameters=sched_interval=1
NodeName=$host CPUs=2 RealMemory=$mem Feature=gpu_none,ssd State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  echo "export SLURM_CONF=$dir/etc/slurm.conf" >"$dir/env"
  export SLURM_CONF="$dir/etc/slurm.conf"
  munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/munge.seed" --force
  # Slurm's munge plugin finds the socket through the configuration.
  echo "AuthInfo=socket=$dir/munge/munge.socket" >>"$dir/etc/slurm.conf"
  slurmctld -i
  slurmd
  for _ in $(seq 150); do
    if sinfo -h -n "$host" -o %T 2>/dev/null | grep -qx idle; then
      echo "ci-slurm: node $host idle (SLURM_CONF=$SLURM_CONF)"
      return 0
    fi
    sleep 0.2
  done
  echo "ci-slurm: node $host not idle after 30 s:" >&2
  sinfo -N -l >&2 || true
  tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
  stop
  exit 1
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
