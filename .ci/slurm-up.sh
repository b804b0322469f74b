#!/usr/bin/env bash
# A one-node SLURM on this machine, for the cluster tests (tests/cluster/) and `--executor slurm` by hand.
#
#   eval "$(.ci/slurm-up.sh)"        # prints `export SLURM_CONF=...` on stdout, progress on stderr
#
# Installs Debian's slurm-wlm and munge with apt-get when missing (as root), writes a one-node configuration for
# this machine into $SLURM_LOCAL_DIR (default /tmp/recyclelora-slurm, which it owns), makes a munge key, starts
# munged, slurmctld and slurmd, and waits until the node is idle. Idempotent: a second run finds it up and only
# prints the export. Root only (SlurmUser=root): it is for CI machines and containers, not a real cluster.
set -euo pipefail

dir="${SLURM_LOCAL_DIR:-/tmp/recyclelora-slurm}"
conf="$dir/slurm.conf"
say() { echo "slurm-up: $*" >&2; }
fail() { echo "error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "slurm-up.sh runs SLURM as root (SlurmUser=root): run it as root, or use your cluster's SLURM"
export SLURM_CONF="$conf"
node="$(hostname -s)"

node_state() { sinfo -h -n "$node" -o %T 2>/dev/null | head -n1 | tr -d '*~#'; }
if [ -f "$conf" ] && [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; then
    say "already up ($conf)"
    echo "export SLURM_CONF=$conf"
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || fail "slurm-wlm and munge are missing and there is no apt-get: install them"
    say "installing slurm-wlm and munge"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } >&2
fi

mkdir -p "$dir/spool" "$dir/state" "$dir/log"
# cred_expire: also how long a requeued job waits before it may start again (default 120 s; the preemption test
# waits for it). RealMemory below the machine's, so the node is not drained for having less than it claims; a job that asks
# for no memory gets its CPUs' share (SLURM's default, all of it, would run one job at a time).
memory_mib=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
cat >"$conf.tmp" <<EOF
ClusterName=local
SlurmctldHost=$node
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
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmdSpoolDir=$dir/spool
StateSaveLocation=$dir/state
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
KillWait=30
DefMemPerCPU=$(( memory_mib / $(nproc) ))
NodeName=$node CPUs=$(nproc) RealMemory=$memory_mib State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
mv "$conf.tmp" "$conf"

key=/etc/munge/munge.key
if [ ! -s "$key" ]; then
    say "making a munge key"
    dd if=/dev/urandom bs=1 count=1024 of="$key" status=none
fi
chown munge:munge "$key"
chmod 400 "$key"
mkdir -p /run/munge && chown munge:munge /run/munge
if ! munge -n >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- munged --force 2>/dev/null || munged --force
fi

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# -c: a fresh controller forgets the jobs of an earlier boot (this machine's /tmp may outlive its daemons),
# which would otherwise run again beside the tests.
running "$dir/slurmctld.pid" || { say "starting slurmctld"; slurmctld -c -f "$conf"; }
running "$dir/slurmd.pid" || { say "starting slurmd"; slurmd -f "$conf"; }

for _ in $(seq 60); do
    state="$(node_state)"
    if [[ "$state" == idle ]]; then
        say "node $node idle"
        echo "export SLURM_CONF=$conf"
        exit 0
    fi
    sleep 1
done
fail "node $node is ${state:-unknown} after 60 s, not idle: see $dir/log/slurmctld.log and $dir/log/slurmd.log"
