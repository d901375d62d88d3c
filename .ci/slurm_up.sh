#!/usr/bin/env bash
# Start a private one-node SLURM (munged + slurmctld + slurmd) as root, everything under RUNDIR.
#
# Usage: .ci/slurm_up.sh RUNDIR      then: export SLURM_CONF=RUNDIR/slurm.conf; sbatch ...; .ci/slurm_down.sh RUNDIR
#
# munged gets its own key and socket inside RUNDIR (slurm.conf points at it with AuthInfo), so a system munge is
# neither needed nor touched. Every daemon writes its PID file into RUNDIR; slurm_down.sh stops exactly those PIDs.
# The node is described from `slurmd -C`: declaring more CPUs or memory than slurmd detects would drain the node.
set -euo pipefail

RUN=${1:?usage: slurm_up.sh RUNDIR}
WAIT_S=${SLURM_UP_WAIT_S:-30}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() {
    echo "slurm_up: $*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root (slurmd needs it to start jobs as any user)"
for tool in munged mungekey munge slurmctld slurmd sinfo; do
    command -v "$tool" >/dev/null || die "$tool not found; install: apt-get install munge slurmctld slurmd slurm-client"
done
# A daemon left from an earlier run (or someone else's cluster) would answer on these ports instead of ours.
for port in 6817 6818; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is in use (another slurmctld/slurmd?); stop it first, e.g. .ci/slurm_down.sh OLD_RUNDIR"
    fi
done

mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)
mkdir -p "$RUN/munge" "$RUN/state" "$RUN/spool" "$RUN/log"
# munged refuses a socket directory that others cannot traverse, and a key that others can read.
chmod 755 "$RUN" "$RUN/munge"

# If anything below fails, stop what was already started so no daemon outlives a failed CI step.
started=0
on_exit() {
    local rc=$?
    if [ "$rc" != 0 ] && [ "$started" = 1 ]; then
        echo "slurm_up: failed; last log lines:" >&2
        for f in "$RUN"/log/*.log; do
            [ -f "$f" ] && { echo "--- $f" >&2; tail -n 25 "$f" >&2; }
        done
        "$HERE/slurm_down.sh" "$RUN" >&2 || true
    fi
}
trap on_exit EXIT

# ---------------------------------------------------------------------------------------------------- munge
sock="$RUN/munge/munge.socket"
[ -s "$RUN/munge/munge.key" ] || mungekey --create --keyfile="$RUN/munge/munge.key"
chmod 600 "$RUN/munge/munge.key"
started=1
munged --socket="$sock" --key-file="$RUN/munge/munge.key" --pid-file="$RUN/munged.pid" \
    --log-file="$RUN/log/munged.log" --seed-file="$RUN/munge/munged.seed"
munge -S "$sock" -n | unmunge -S "$sock" >/dev/null || die "munged started but a credential round trip failed"

# ---------------------------------------------------------------------------------------------------- slurm.conf
host=$(hostname -s)
# `slurmd -C` prints e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1
# RealMemory=24105"; reuse its hardware fields verbatim so the declared node always matches the detected one.
fields='^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)='
hw=$(slurmd -C | head -n 1 | tr ' ' '\n' | grep -E "$fields" | tr '\n' ' ')
[ -n "$hw" ] || die "could not read the hardware description from 'slurmd -C'"

cat > "$RUN/slurm.conf" <<EOF
# Written by .ci/slurm_up.sh: a private single-node cluster for tests. Not for production.
ClusterName=distland-ci
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${sock}
# distland's srun path relies on PMIx; make it the default as on most clusters.
MpiDefault=pmix
# No cgroups in containers and CI runners: track processes by /proc and skip task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# A node that was down comes back by itself when its slurmd registers with a valid config.
ReturnToService=2
MailProg=/bin/true
# sbatch --wait polls after 2 s, then every 8 s, and only goes on to 32 s while that is below MinJobAge/2.
# 16 keeps test jobs from idling up to 30 s after they end, and still keeps each finished job's record for twice
# the polling interval (a purged job makes sbatch --wait fail).
MinJobAge=16
StateSaveLocation=${RUN}/state
SlurmdSpoolDir=${RUN}/spool
SlurmctldPidFile=${RUN}/slurmctld.pid
SlurmdPidFile=${RUN}/slurmd.pid
SlurmctldLogFile=${RUN}/log/slurmctld.log
SlurmdLogFile=${RUN}/log/slurmd.log
NodeName=${host} NodeAddr=127.0.0.1 ${hw}State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$RUN/slurm.conf"

# ---------------------------------------------------------------------------------------------------- daemons
# Both daemonize and write their PID files. -c: start from empty state, not from jobs of a previous run.
slurmctld -c -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"

deadline=$((SECONDS + WAIT_S))
state=""
while [ "$SECONDS" -lt "$deadline" ]; do
    state=$(sinfo -h -N -o %t 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 0.5
done
[ "$state" = idle ] || die "node not idle after ${WAIT_S}s (sinfo state: '${state:-no answer}')"

sinfo
echo "slurm_up: ready; export SLURM_CONF=$SLURM_CONF"
