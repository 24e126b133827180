#!/usr/bin/env bash
# A one-node SLURM on this machine (Debian slurm-wlm + munge), for trying the sbatch scripts and for
# the SLURM tests (tests/launch/test_slurm.py, run by .ci/run). Idempotent: starts what is not
# running. Needs root (the daemons run as root, as in the sandbox of environment.md §9).
#
#   launch/slurm/local_cluster.sh           # start (install with --install if missing)
#   launch/slurm/local_cluster.sh --install # apt-get install slurm-wlm munge first when needed
#   launch/slurm/local_cluster.sh --stop
#
# Never touches a slurm.conf it did not write (first line: the marker below), so on a machine with
# a real SLURM it only checks that the daemons answer.
set -euo pipefail

MARKER="# written by mmtrain launch/slurm/local_cluster.sh"
CONF=/etc/slurm/slurm.conf

die() { echo "local_cluster: $*" >&2; exit 1; }

if [[ "${1:-}" == "--stop" ]]; then
  for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
    [[ -f $pidfile ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  exit 0
fi

HOST=$(hostname -s)
node_up() {
  local state
  state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
  [[ $state == idle* || $state == mix* || $state == alloc* ]]
}
# Already running (started by CI with sudo, or by hand): nothing to do, no root needed.
if command -v sinfo >/dev/null && munge -n >/dev/null 2>&1 \
    && scontrol ping 2>/dev/null | grep -q "is UP" && node_up; then
  echo "local_cluster: $HOST already up"
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  [[ "${1:-}" == "--install" ]] || die "slurmctld/munged not installed (rerun with --install)"
  [[ $(id -u) == 0 ]] || die "installing needs root"
  command -v apt-get >/dev/null || die "no apt-get: install slurm-wlm and munge by hand"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi
[[ $(id -u) == 0 ]] || die "starting the daemons needs root"

if [[ ! -f $CONF ]] || head -1 "$CONF" | grep -qF "$MARKER"; then
  CPUS=$(nproc)
  # Leave the OS some memory; slurmd refuses to register if RealMemory exceeds what it detects.
  MEM=$(( $(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p') * 8 / 10 ))
  mkdir -p /etc/slurm /var/spool/slurmd /var/spool/slurmctld /var/log/slurm
  # environment.md §9: MpiDefault=none (no PMIx here), no accounting (sacct is not needed), cons_tres
  # so --ntasks-per-node/--cpus-per-task are honoured, ReturnToService=2 so a restarted slurmd
  # comes back idle. JobRequeue=1: jobs are requeueable unless they say --no-requeue.
  cat >"$CONF" <<EOF
$MARKER
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=3600
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
fi

# `pgrep munged` also matches zombies (environment.md §9): ask munge itself.
if ! munge -n >/dev/null 2>&1; then
  mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
  su -s /bin/sh munge -c /usr/sbin/munged
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n >/dev/null 2>&1 || die "munged did not start"
fi
scontrol ping 2>/dev/null | grep -q "is UP" || /usr/sbin/slurmctld
for _ in $(seq 50); do scontrol ping 2>/dev/null | grep -q "is UP" && break; sleep 0.2; done
if ! [[ -f /run/slurmd.pid ]] || ! kill -0 "$(cat /run/slurmd.pid)" 2>/dev/null; then
  /usr/sbin/slurmd
fi
for _ in $(seq 100); do
  node_up && break
  state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
  if [[ $state == down* || $state == drain* || $state == inval* ]]; then
    scontrol update nodename="$HOST" state=resume 2>/dev/null || true
  fi
  sleep 0.2
done
node_up || die "node $HOST is '$(sinfo -h -n "$HOST" -o %T 2>/dev/null)' (see /var/log/slurm/)"
echo "local_cluster: $HOST up"
