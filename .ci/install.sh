#!/usr/bin/env bash
# Install everything distland needs on a fresh Debian bookworm machine (root): OpenMPI + parallel HDF5 (apt),
# a venv with torch (CPU), mpi4py, h5py built from source against parallel HDF5, and the test extras.
# Usage: bash .ci/install.sh [VENV]   (default .venv). Idempotent: a second run only checks.
set -euo pipefail
VENV=${1:-${VENV:-.venv}}
export DEBIAN_FRONTEND=noninteractive
WITH_SLURM=${WITH_SLURM:-1}

apt_pkgs=(libopenmpi-dev openmpi-bin libhdf5-openmpi-dev pkg-config)
[ "$WITH_SLURM" = 1 ] && apt_pkgs+=(slurmd slurmctld slurm-client munge)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip 'setuptools>=77.0.1' wheel
# torch is pinned: an unpinned torch pulls a multi-GB CUDA build.
python -m pip install -q 'torch==2.13.0'
python -m pip install -q 'Cython>=3,<4' 'numpy>=1.25,<3' pkgconfig packaging 'mpi4py>=4.1'

if ! python -c 'import h5py, sys; sys.exit(0 if h5py.get_config().mpi else 1)' 2>/dev/null; then
    # h5py from source against Debian's parallel HDF5. --no-build-isolation: otherwise pip rebuilds mpi4py from
    # source (~30 min). --no-cache-dir: pip's wheel cache key ignores HDF5_MPI and may hand back a serial build.
    cfg=$(mktemp); printf '[build_ext]\nparallel = %s\n' "$(nproc)" > "$cfg"
    CC=mpicc HDF5_MPI=ON HDF5_DIR=/usr/lib/x86_64-linux-gnu/hdf5/openmpi DIST_EXTRA_CONFIG="$cfg" \
        python -m pip install -q --no-cache-dir --no-binary=h5py --no-build-isolation --force-reinstall --no-deps 'h5py==3.16.0'
    rm -f "$cfg"
fi
python -c 'import h5py; assert h5py.get_config().mpi, "h5py was built without MPI"'

python -m pip install -q --no-build-isolation -e '.[test,plot,mpi]'
python -c 'import distland, h5py, mpi4py, torch; print("distland", distland.__version__, "| torch", torch.__version__, "| h5py", h5py.__version__, "mpi:", h5py.get_config().mpi, "| mpi4py", mpi4py.__version__)'
