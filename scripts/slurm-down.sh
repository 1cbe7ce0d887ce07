#!/usr/bin/env bash
# Stop the one-node SLURM that scripts/slurm-up.sh started: slurmd, then slurmctld, then munged,
# each by the PID in STATE_DIR/run/*.pid and only if that file exists (a munged this project did
# not start is left running). Idempotent; the state folder is kept (delete it for a clean slate).
#
#   scripts/slurm-down.sh [STATE_DIR]      # or: BRAINLATENT_SLURM_STATE=DIR; default ./slurm-state
set -uo pipefail

STATE=${1:-${BRAINLATENT_SLURM_STATE:-./slurm-state}}
say() { echo "slurm-down: $*" >&2; }
[[ -d $STATE/run ]] || { say "nothing to stop ($STATE/run does not exist)"; exit 0; }

stop() {  # stop NAME: TERM the pid from NAME.pid, wait up to 10 s, then KILL
    local file=$STATE/run/$1.pid pid comm
    [[ -s $file ]] || return 0
    pid=$(cat "$file")
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    if [[ $comm == "$1" ]]; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            say "$1 ($pid) ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null
        fi
        say "stopped $1 ($pid)"
    elif [[ -n $comm ]]; then
        say "pid $pid in $file is now '$comm', not $1; left alone"
    fi
    rm -f "$file"
}

# cancel the jobs still queued or running on this cluster (it is ours), so no job step outlives it
if [[ -s $STATE/run/slurmctld.pid ]] && kill -0 "$(cat "$STATE/run/slurmctld.pid")" 2>/dev/null; then
    jobs=$(squeue -h -t PENDING,RUNNING,SUSPENDED,REQUEUED -o %i 2>/dev/null | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
        say "cancelling jobs: $jobs"
        scancel $jobs 2>/dev/null
        for _ in $(seq 50); do
            [[ -z $(squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null) ]] && break
            sleep 0.2
        done
    fi
fi
stop slurmd
stop slurmctld
stop munged
exit 0
