#!/usr/bin/env bash
# Run `distland surface` under mpirun with sane defaults, outside any batch system.
#
# Usage: launch/mpirun.sh -np N [--host H1:S1,H2:S2 | --hostfile FILE] CONFIG [--set key=value ...]
#
#   launch/mpirun.sh -np 4 configs/demo.yaml --set grid.x=[-1,1,21]
#
# What it sets, unless you already exported it yourself:
#   OMP_NUM_THREADS        cores / ranks (at least 1), so N ranks do not each start one thread per core;
#   OMPI_MCA_btl           self,vader (shared memory) when all ranks are on this node;
#   oversubscription       allowed when N is larger than the cores here (Open MPI refuses it by default);
#   OMPI_ALLOW_RUN_AS_ROOT (+ _CONFIRM) only when running as root, e.g. in containers and CI.
# Python: $PYTHON, else the active virtualenv's python, else this checkout's .venv, else python3. On several
# nodes it must exist at the same path everywhere.
set -euo pipefail

usage() {
    sed -n '4,6p' "${BASH_SOURCE[0]}" | sed 's/^# //' >&2
    exit 2
}

np=""
hosts=()
multi_node=0
while [ $# -gt 0 ] && [[ $1 == -* ]]; do
    case $1 in
        -np | -n | --np)
            [ $# -ge 2 ] || usage
            np=$2
            shift 2
            ;;
        --host | -H | --hostfile | --machinefile)
            [ $# -ge 2 ] || usage
            hosts+=("$1" "$2")
            multi_node=1
            shift 2
            ;;
        -h | --help) usage ;;
        *)
            echo "mpirun.sh: unknown option $1 (supported: -np N, --host, --hostfile);" \
                "for anything else call mpirun directly" >&2
            exit 2
            ;;
    esac
done
[ $# -ge 1 ] || usage
[[ $np =~ ^[1-9][0-9]*$ ]] || { echo "mpirun.sh: -np N is required, N >= 1" >&2; exit 2; }
config=$1
shift

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ]; then
        PYTHON=$VIRTUAL_ENV/bin/python
    elif [ -x "$here/.venv/bin/python" ]; then
        PYTHON=$here/.venv/bin/python
    else
        PYTHON=$(command -v python3)
    fi
fi

cores=$(nproc)
threads=$((cores / np))
[ "$threads" -ge 1 ] || threads=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads}

extra=()
if [ "$multi_node" = 0 ]; then
    # One node: shared memory only. Without this Open MPI also probes TCP and other transports, which is
    # slower to start and prints warnings in containers.
    export OMPI_MCA_btl=${OMPI_MCA_btl:-self,vader}
    if [ "$np" -gt "$cores" ]; then
        extra+=(--oversubscribe)
    fi
fi
if [ "$(id -u)" = 0 ]; then
    # Open MPI refuses to run as root unless told twice; containers and CI runners often are root.
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

cmd=(mpirun -np "$np" "${hosts[@]}" "${extra[@]}" "$PYTHON" -m distland surface "$config" "$@")
echo "mpirun.sh: OMP_NUM_THREADS=$OMP_NUM_THREADS $(printf '%q ' "${cmd[@]}")" >&2
exec "${cmd[@]}"
