"""The command line: ``surface`` prints a summary, ``info`` reports completion, ``models`` lists the zoo."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import distland
from distland import cli
from distland.surfacefile import read

from conftest import small_config_dict, write_yaml


@pytest.fixture
def job(tmp_path):
    out = tmp_path / "cli.h5"
    return write_yaml(tmp_path / "job.yaml", small_config_dict(out)), out


def test_surface_prints_a_summary_and_writes_the_file(job, capsys):
    path, out = job
    code = cli.main(["surface", str(path), "--set", "grid.x=[-1, 1, 4]", "--set", "grid.y=[0, 1, 2]"])
    captured = capsys.readouterr()
    assert code == 0
    data = read(str(out))
    assert data.shape == (4, 2) and data.complete
    assert f"distland surface: {out}" in captured.out
    assert "grid 4×2 (8 points)" in captured.out
    assert "computed 8 point(s)" in captured.out
    loss = data.metrics["train_loss"]
    i, j = np.unravel_index(np.argmin(loss), loss.shape)
    assert f"min train_loss = {loss[i, j]:.6g} at (x={data.x[i]:+.4g}, y={data.y[j]:+.4g})" in captured.out
    assert "NaN/inf" not in captured.out

    # rerun: resumes a finished file, computes nothing
    assert cli.main(["surface", str(path), "--set", "grid.x=[-1, 1, 4]", "--set", "grid.y=[0, 1, 2]"]) == 0
    assert "computed 0 point(s)" in capsys.readouterr().out


def test_surface_overwrite_flag(job, capsys):
    path, out = job
    assert cli.main(["surface", str(path)]) == 0
    capsys.readouterr()
    assert cli.main(["surface", str(path), "--set", "directions.seed=4"]) == 2
    assert "holds a different job" in capsys.readouterr().err
    assert cli.main(["surface", str(path), "--set", "directions.seed=4", "--overwrite"]) == 0
    assert "computed 9 point(s)" in capsys.readouterr().out
    assert read(str(out)).attrs["seed"] == 4


def test_info_reports_completion(job, capsys):
    path, out = job
    assert cli.main(["surface", str(path), "--set", "grid.y=null", "--set", "grid.x=[-1, 1, 5]"]) == 0
    capsys.readouterr()
    assert cli.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "5/5 points done (100.0%)" in text
    assert "distland layout" in text and "model democnn" in text
    assert f"distland {distland.__version__}" in text
    with h5py.File(out, "r+") as f:  # two points not done
        f["done"][1] = 0
        f["done"][3] = 0
    assert cli.main(["info", str(out)]) == 0
    assert "3/5 points done (60.0%)" in capsys.readouterr().out


def test_info_on_the_authors_layout(tmp_path, capsys):
    path = tmp_path / "theirs.h5"
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = np.linspace(-1, 1, 3)
        f["ycoordinates"] = np.linspace(-1, 1, 3)
        f["train_loss"] = np.array([[1.0, 2.0, -1.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    assert cli.main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "loss-landscape layout" in text and "8/9 points done" in text


def test_info_on_a_missing_file(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path / "nope.h5")]) == 2
    assert capsys.readouterr().err.startswith("distland: error: surface file")


def test_models_lists_the_zoo(capsys):
    assert cli.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    for name in ("democnn", "resnet20", "resnet56", "resnet56_noshort", "vgg9", "densenet121", "wrn56_2"):
        assert name in names
    resnet56 = next(line for line in lines if line.split()[0] == "resnet56")
    assert "M parameters" in resnet56 and "loss-landscape layout" in resnet56 and "ResNet56" in resnet56
    assert "loss-landscape" not in next(line for line in lines if line.split()[0] == "democnn")
    assert 0.8 < float(resnet56.split()[1]) < 0.9  # ResNet-56 has ~0.86 M parameters


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "usage: distland" in capsys.readouterr().out


def test_console_script_version():
    exe = Path(sys.executable).with_name("distland")
    if not exe.exists():
        exe = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "distland"
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"distland {distland.__version__}"


def test_import_and_serial_run_without_mpi4py(tmp_path):
    """`import distland` and a serial job must work where mpi4py cannot be imported at all."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['mpi4py'] = None\n"   # any `import mpi4py` now raises ImportError
        "import distland\n"
        "from distland.cli import main\n"
        f"rc = main(['surface', '--set', 'output={tmp_path / 's.h5'}', '--set', 'data.max_samples=50', "
        "'--set', 'grid.x=[-1,1,3]', '--set', 'grid.y=[-1,1,2]', '--set', 'sweep.progress=false', "
        f"'{tmp_path / 'c.yaml'}'])\n"
        "sys.exit(rc)\n")
    (tmp_path / "c.yaml").write_text("model: mlp\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert "3×2 (6 points)" in r.stdout


def test_repo_demo_configs_equal_the_packaged_presets():
    """`distland demo` (packaged preset) and `distland surface configs/demo.yaml` must be the same job."""
    from pathlib import Path

    from distland.presets import demo_config_path, demo_train_config_path

    root = Path(__file__).resolve().parent.parent
    assert (root / "configs" / "demo.yaml").read_text() == demo_config_path().read_text()
    assert (root / "configs" / "demo_train.yaml").read_text() == demo_train_config_path().read_text()
