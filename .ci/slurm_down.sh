#!/usr/bin/env bash
# Stop the cluster that .ci/slurm_up.sh started in RUNDIR: cancel its jobs, then stop its daemons by PID.
#
# Usage: .ci/slurm_down.sh RUNDIR
#
# Only the PIDs recorded in RUNDIR are signalled, and only if /proc still shows the expected program under that
# PID (a recycled PID must not be killed). Safe to run twice or after a failed start. RUNDIR itself is kept: its
# log/ folder is what you want to read when something went wrong.
set -euo pipefail

RUN=${1:?usage: slurm_down.sh RUNDIR}
[ -d "$RUN" ] || { echo "slurm_down: $RUN does not exist; nothing to stop"; exit 0; }

# Jobs still running would leave slurmstepd and their tasks behind once slurmd is gone.
if [ -f "$RUN/slurm.conf" ] && [ -s "$RUN/slurmctld.pid" ] && command -v squeue >/dev/null; then
    jobs=$(SLURM_CONF="$RUN/slurm.conf" timeout 5 squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        # shellcheck disable=SC2086  # one job id per word
        SLURM_CONF="$RUN/slurm.conf" timeout 5 scancel $jobs 2>/dev/null || true
        sleep 1
    fi
fi

# pid_of NAME PIDFILE: print the PID if that process is alive and is NAME.
pid_of() {
    local name=$1 file=$2 pid
    [ -s "$file" ] || return 1
    pid=$(tr -dc '0-9' < "$file")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm")" = "$name" ] || return 1
    echo "$pid"
}

pids=()
for entry in slurmd:slurmd.pid slurmctld:slurmctld.pid munged:munged.pid; do
    name=${entry%%:*}
    if pid=$(pid_of "$name" "$RUN/${entry#*:}"); then
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid")
        echo "slurm_down: TERM $name ($pid)"
    fi
done

for _ in $(seq 40); do
    alive=()
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null && alive+=("$pid")
    done
    [ ${#alive[@]} = 0 ] && break
    sleep 0.25
done
for pid in "${alive[@]}"; do
    echo "slurm_down: $pid ignored TERM for 10 s; sending KILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
done
rm -f "$RUN/slurmd.pid" "$RUN/slurmctld.pid" "$RUN/munged.pid"
echo "slurm_down: stopped"
