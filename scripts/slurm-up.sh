#!/usr/bin/env bash
# Bring up a real one-node SLURM cluster on this machine (Debian/Ubuntu, run as root, no systemd
# needed) so that `snakemake --profile slurm` can be tried without a cluster.
#
#   scripts/slurm-up.sh [STATE_DIR]        # or: BRAINLATENT_SLURM_STATE=DIR scripts/slurm-up.sh
#   scripts/slurm-down.sh [STATE_DIR]      # stops exactly the daemons this script started
#
# STATE_DIR (default ./slurm-state) holds the controller state, spool, logs and pid files.
# The node gets all CPUs, the memory minus 1 GiB and one fake GPU (GRES `gpu:1` backed by an
# empty file), in one partition `main` (the partition `slurm/config.yaml` names).
# Idempotent: a second call with the same STATE_DIR only starts what is not running.
# Packages `slurmctld slurmd slurm-client munge` are installed with apt-get only when missing.
# Exit status: 0 up, 1 failed to start, 3 cannot run here (not root, no apt, install failed),
# 4 a cluster started by this script with another STATE_DIR is running (it is left as it is).
set -euo pipefail

STATE=${1:-${BRAINLATENT_SLURM_STATE:-./slurm-state}}
PARTITION=${BRAINLATENT_SLURM_PARTITION:-main}
MARK="# written by brainlatent scripts/slurm-up.sh"
CONF=/etc/slurm/slurm.conf

say() { echo "slurm-up: $*" >&2; }
die() { say "error: $2"; exit "$1"; }
alive() {  # alive PIDFILE: the pid in it runs the program the file is named after
    [[ -s $1 ]] && [[ $(cat "/proc/$(cat "$1")/comm" 2>/dev/null) == "$(basename "$1" .pid)" ]]
}

[[ $(id -u) -eq 0 ]] || die 3 "must run as root (it installs packages and starts daemons)"
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)

# --- packages (only when a binary is missing) --------------------------------------------------
missing=0
for bin in slurmctld slurmd sbatch squeue sinfo scontrol munged; do
    command -v "$bin" >/dev/null 2>&1 || [[ -x /usr/sbin/$bin ]] || missing=1
done
if [[ $missing -eq 1 ]]; then
    command -v apt-get >/dev/null || die 3 "SLURM is not installed and apt-get is not available"
    say "installing slurmctld slurmd slurm-client munge"
    # keep the packages' init scripts from starting daemons we would not own
    policy_created=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        policy_created=1
    fi
    rc=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        slurmctld slurmd slurm-client munge; } > "$STATE/apt.log" 2>&1 || rc=$?
    [[ $policy_created -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
    [[ $rc -eq 0 ]] || die 3 "apt-get install failed (rc=$rc), see $STATE/apt.log"
fi
export PATH=$PATH:/usr/sbin:/sbin

# --- layout and config ------------------------------------------------------------------------
mkdir -p "$STATE"/{ctld,spool,log,run} /etc/slurm
if [[ -e $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    die 1 "$CONF exists and was not written by this script; refusing to overwrite it"
fi
if alive "$STATE/run/slurmctld.pid" || alive "$STATE/run/slurmd.pid"; then
    :  # ours and running: keep its config
elif [[ -e $CONF ]] && pgrep -x slurmctld >/dev/null; then
    other=$(sed -n 's/^StateSaveLocation=\(.*\)\/ctld$/\1/p' "$CONF")
    die 4 "SLURM is already running with state ${other:-unknown}; use it, or stop it first: scripts/slurm-down.sh ${other:-}"
fi

HOST=$(hostname -s)
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys OMP_NUM_THREADS otherwise
MEM=$(( $(awk '/^MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
touch "$STATE/fakegpu0"
cat > "$CONF.tmp" <<EOF
$MARK (state: $STATE)
ClusterName=brainlatent
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# finished jobs stay visible to squeue for 10 min (Snakemake polls with squeue)
MinJobAge=600
ReturnToService=2
KillWait=10
JobRequeue=1
GresTypes=gpu
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
echo "NodeName=$HOST Name=gpu File=$STATE/fakegpu0" > /etc/slurm/gres.conf.tmp
if ! alive "$STATE/run/slurmctld.pid"; then
    mv /etc/slurm/gres.conf.tmp /etc/slurm/gres.conf
    mv "$CONF.tmp" "$CONF"
else
    rm -f "$CONF.tmp" /etc/slurm/gres.conf.tmp
fi

# --- munge (authentication) -------------------------------------------------------------------
mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 700 /etc/munge
chmod 400 /etc/munge/munge.key
if alive "$STATE/run/munged.pid"; then
    :
elif pgrep -x munged >/dev/null; then
    say "munged already running (not started by this script; it will be left alone)"
else
    rm -f /run/munge/munged.pid
    runuser -u munge -- munged
    for _ in $(seq 50); do [[ -s /run/munge/munged.pid ]] && break; sleep 0.1; done
    [[ -s /run/munge/munged.pid ]] || die 1 "munged did not start (see /var/log/munge/munged.log)"
    cp /run/munge/munged.pid "$STATE/run/munged.pid"
fi
munge -n | unmunge >/dev/null || die 1 "munge authentication does not work"

# --- SLURM daemons ----------------------------------------------------------------------------
if ! alive "$STATE/run/slurmctld.pid"; then
    slurmctld -i 2>>"$STATE/log/start.log" || die 1 "slurmctld failed, see $STATE/log/"
fi
for _ in $(seq 50); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
if ! alive "$STATE/run/slurmd.pid"; then
    slurmd 2>>"$STATE/log/start.log" || die 1 "slurmd failed, see $STATE/log/"
fi
for _ in $(seq 60); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1)
    [[ $state == idle* || $state == mix* || $state == alloc* ]] && break
    [[ $state == drain* || $state == down* ]] && scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true
    sleep 0.5
done
if [[ ! ${state:-} =~ ^(idle|mix|alloc) ]]; then
    tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
    die 1 "node $HOST did not become idle (state: ${state:-none})"
fi
say "up: partition $PARTITION, node $HOST ($CPUS CPUs, $MEM MB, gpu:1), state in $STATE"
sinfo
