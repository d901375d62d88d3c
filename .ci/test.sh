#!/usr/bin/env bash
# Run the whole test suite: the fast serial tier, the MPI tier (real mpirun -np 2/3) and the SLURM test.
# Usage: bash .ci/test.sh [pytest args]   (after .ci/install.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export OMP_NUM_THREADS=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl=self,vader
exec python -m pytest -q -p no:cacheprovider --durations=15 "$@"
