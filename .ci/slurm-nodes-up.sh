#!/usr/bin/env bash
# A two-node SLURM on this one machine, for trying multi-node launches (`--nodes=2`): nodes n1 and n2, one CPU
# each, are two slurmd daemons on this host (slurmd -N n1 / -N n2) on their own ports, so a job's tasks really get
# SLURM_NODEID 0 and 1 and SLURM_JOB_NODELIST=n[1-2].
#
#   eval "$(.ci/slurm-nodes-up.sh)"   # prints `export SLURM_CONF=...` on stdout, progress on stderr
#
# It lives beside the one-node SLURM of slurm-up.sh and leaves it alone: its own directory ($SLURM_NODES_DIR,
# default /tmp/recyclelora-slurm2), cluster name (local2), ports ($SLURM_NODES_PORT, default 6920 for slurmctld
# and the next two for the slurmds), pid files, spool, state and logs; munged is shared. Appends
# "127.0.0.1 n1 n2" to /etc/hosts when the node names do not resolve (a launcher uses the first node's name as its
# rendezvous host). Idempotent: a second run finds it up and only prints the export. Root only (SlurmUser=root).
#
# Shut down (only this cluster's daemons, by their pid files; then the directory may go):
#   d=/tmp/recyclelora-slurm2
#   for p in "$d"/slurmd.n1.pid "$d"/slurmd.n2.pid "$d"/slurmctld.pid; do [ -f "$p" ] && kill "$(cat "$p")"; done
#   sleep 3 && rm -rf "$d"
set -euo pipefail

dir="$(realpath -m "${SLURM_NODES_DIR:-/tmp/recyclelora-slurm2}")"  # absolute: the daemons chdir away
port="${SLURM_NODES_PORT:-6920}"
conf="$dir/slurm.conf"
nodes=(n1 n2)
say() { echo "slurm-nodes-up: $*" >&2; }
fail() { echo "error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "slurm-nodes-up.sh runs SLURM as root (SlurmUser=root): run it as root"
command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    || fail "slurmctld, slurmd and munged are needed: run .ci/slurm-up.sh once (it installs them), or apt-get install slurm-wlm munge"
export SLURM_CONF="$conf"

# Prints the number of nodes of this cluster in the given states (an extended regex).
nodes_in() { sinfo -h -N -p two -o '%N %T' 2>/dev/null | tr -d '*~#' | awk -v s="^($1)\$" '$2 ~ s' | sort -u | wc -l; }
if [ -f "$conf" ] && [ "$(nodes_in 'idle|mixed|allocated|completing')" = "${#nodes[@]}" ]; then
    say "already up ($conf)"
    echo "export SLURM_CONF=$conf"
    exit 0
fi

mkdir -p "$dir/state" "$dir/log" "$dir/spool"
# Memory is only bookkeeping here (the one-node cluster counts the same memory): half of 9/10 per node.
memory_mib=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 / ${#nodes[@]} ))
host="$(hostname -s)"
{
    cat <<EOF
ClusterName=local2
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
AuthInfo=cred_expire=30
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmUser=root
SlurmdParameters=config_overrides
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.%n.pid
SlurmdSpoolDir=$dir/spool/%n
StateSaveLocation=$dir/state
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.%n.log
KillWait=30
DefMemPerCPU=$memory_mib
EOF
    i=1
    for n in "${nodes[@]}"; do
        echo "NodeName=$n NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port + i)) CPUs=1 RealMemory=$memory_mib State=UNKNOWN"
        i=$((i + 1))
    done
    echo "PartitionName=two Nodes=$(IFS=,; echo "${nodes[*]}") Default=YES MaxTime=INFINITE State=UP"
} >"$conf.tmp"
mv "$conf.tmp" "$conf"

missing=()
for n in "${nodes[@]}"; do getent hosts "$n" >/dev/null || missing+=("$n"); done
if [ "${#missing[@]}" -gt 0 ]; then
    say "adding ${missing[*]} to /etc/hosts"
    echo "127.0.0.1 ${missing[*]}" >>/etc/hosts
fi

if ! munge -n >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || fail "munged is not running and there is no /etc/munge/munge.key: run .ci/slurm-up.sh first"
    say "starting munged"
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- munged --force 2>/dev/null || munged --force
fi

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# -c: a fresh controller forgets the jobs of an earlier boot.
running "$dir/slurmctld.pid" || { say "starting slurmctld"; slurmctld -c -f "$conf"; }
for n in "${nodes[@]}"; do
    running "$dir/slurmd.$n.pid" || { say "starting slurmd $n"; slurmd -f "$conf" -N "$n"; }
done

for _ in $(seq 60); do
    if [ "$(nodes_in idle)" = "${#nodes[@]}" ]; then
        say "nodes ${nodes[*]} idle"
        echo "export SLURM_CONF=$conf"
        exit 0
    fi
    sleep 1
done
fail "nodes ${nodes[*]} are not all idle after 60 s ($(sinfo -h -N -p two -o '%N=%T' 2>/dev/null | tr '\n' ' ')): see $dir/log/"
