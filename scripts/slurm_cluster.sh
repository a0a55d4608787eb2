#!/usr/bin/env bash
# A throwaway one-node Slurm cluster in a folder, for trying hydra/launcher=slurm on one machine (and for the
# tests, which start theirs with this script). Needs Debian's slurmctld, slurmd, slurm-client and munge, and root:
#
#   sudo scripts/slurm_cluster.sh start /tmp/slurm     # prints: export SLURM_CONF=/tmp/slurm/slurm.conf
#   sudo scripts/slurm_cluster.sh stop /tmp/slurm
#   sudo scripts/slurm_cluster.sh munge /tmp/slurm     # starts munged again if something on the host stopped it
#
# The node is this machine (hostname -s) with its CPUs and memory (slurmd -C), in one partition, "debug", which
# is not a default: jobs name it (hydra.launcher.partition=debug), as on most real clusters. No systemd, no
# cgroups (proctrack/linuxproc, task/none), no accounting (sacct fails; backproplab reads job states from squeue).
# AuthInfo=cred_expire=10: Slurm holds a requeued job for cred_expire seconds (120 by default) before it may start
# again; KillWait=5: a cancelled job has 5 s between SIGTERM and SIGKILL to close its run.
set -euo pipefail
usage="usage: $0 start|stop|munge FOLDER"
cmd=${1:?$usage}
dir=$(realpath -m "${2:?$usage}")
conf=$dir/slurm.conf

# munge authenticates every Slurm message; Debian's package made its key (/etc/munge/munge.key). Started here when
# no munged answers, and then stopped with the cluster.
munge_up() {
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- munged
    touch "$dir/munged.started"
    echo "started munged" >&2
  fi
}

start() {
  for program in slurmctld slurmd sbatch munged; do
    command -v "$program" >/dev/null || { echo "$program is not installed: apt-get install slurmctld slurmd slurm-client munge" >&2; exit 1; }
  done
  [ "$(id -u)" = 0 ] || { echo "slurmd runs as root: sudo $0 start $2" >&2; exit 1; }
  mkdir -p "$dir/state" "$dir/spool"
  munge_up
  local host ports
  host=$(hostname -s)
  # two free ports for slurmctld and slurmd, so that this cluster never meets another one's
  ports=$(python3 -c 'import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
  read -r ctld_port slurmd_port <<<"$ports"
  cat >"$conf" <<CONF
ClusterName=backproplab
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=5
# schedule at once: a requeued job starts when its hold ends, not at the next 30-60 s scheduling pass
SchedulerParameters=bf_interval=1,sched_interval=1
$(slurmd -C | head -1) State=UNKNOWN
PartitionName=debug Nodes=$host MaxTime=INFINITE State=UP
CONF
  slurmctld -f "$conf"
  SLURM_CONF=$conf slurmd -f "$conf"
  local state=""
  for _ in $(seq 150); do
    state=$(SLURM_CONF=$conf sinfo -h -o %t 2>/dev/null || true)
    if [ "$state" = idle ]; then
      echo "export SLURM_CONF=$conf"
      return
    fi
    sleep 0.2
  done
  echo "the node did not come up in 30 s (state: ${state:-none}): see $dir/slurmctld.log and $dir/slurmd.log" >&2
  exit 1
}

# the daemon of a pid file runs (a zombie has ended: its parent, init here, has not reaped it yet)
alive() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

stop() {
  [ -f "$conf" ] || { echo "no cluster in $dir" >&2; exit 1; }
  SLURM_CONF=$conf scancel --quiet --full --state=RUNNING,PENDING --user="$(id -un)" 2>/dev/null || true
  SLURM_CONF=$conf scontrol shutdown >/dev/null 2>&1 || true
  # a daemon that did not hear the shutdown (munge gone, slurmctld unreachable) is stopped by its pid file
  for pidfile in "$dir/slurmctld.pid" "$dir/slurmd.pid"; do
    for signal in 0 TERM KILL; do
      [ "$signal" = 0 ] || kill -s "$signal" "$(cat "$pidfile")" 2>/dev/null || true
      for _ in $(seq 100); do
        alive "$pidfile" || continue 3
        sleep 0.1
      done
    done
  done
  if [ -f "$dir/munged.started" ]; then
    kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
    rm -f "$dir/munged.started"
  fi
}

case $cmd in
  start) start ;;
  stop) stop ;;
  munge) [ -f "$conf" ] || { echo "no cluster in $dir" >&2; exit 1; }; munge_up ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
