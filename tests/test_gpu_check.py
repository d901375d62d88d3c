"""bench/gpu_check.py runs end to end on a CPU (--smoke: a tiny ResNet on 64 images), so the script the first
GPU runs has run before; and when its time runs out it still prints its summary and writes its JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, *args):
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--out", str(out), *args],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, json.loads(out.read_text())


def test_gpu_check_smoke_measures_the_default_path_and_checks_every_row(tmp_path):
    stdout, report = _run(tmp_path)
    assert "== gpu_check summary ==" in stdout and not report["cut"]
    rows = {r["label"]: r for r in report["rows"]}
    default = rows["DEFAULT (what `distland surface` runs)"]
    # the engine the sweep would choose, through the same code path, in effect
    assert default["effective"]["channels_last"] and default["effective"]["fold_bn"]
    assert default["effective"]["stream_data"] == "off" and not default["effective"]["compiled"]
    assert default["effective"]["batch_size"] == report["info"]["default_engine"]["batch_size"]
    assert rows["reference: NCHW, unfolded, bs 1024, fp32"]["effective"]["fold_bn"] is False
    assert rows["streamed data (must equal resident bit for bit)"]["bitwise_equal_to_default"] is True
    measured = [r for r in report["rows"] if "seconds_per_point" in r]
    assert len(measured) >= 8
    for r in measured:   # every row checked at θ* and off it, on loss and accuracy, against its own tolerance
        assert r["within_tolerance"], r
        assert len(r["check"]) == 2 and "acc_diff_points" in r
    assert rows["default + bf16"]["tolerance"]["precision"] == "bf16"
    assert rows["default + bf16"]["rel_loss_error"] > 0   # bf16 is not exact, and the check sees it
    assert rows["default + tf32"]["status"].startswith("skipped")
    theta = report["info"]["theta"]
    assert theta["loss"] < 0.5 and theta["acc"] > 80   # a trained-like θ*, not ln 10
    fp32 = next(line for line in report["summary"] if line.startswith("fp32 "))
    assert "no variant" not in fp32   # the per-precision table has a measured exact row
    hessian = rows["Hessian-map point (λmax/λmin, tol 1e-2)"]["hessian"]   # the last row ran, within the budget
    assert hessian["hvps"] > 0 and hessian["lmin"] < hessian["lmax"] and hessian["images"] == 64


def test_gpu_check_prints_its_summary_when_cut(tmp_path):
    stdout, report = _run(tmp_path, "--hard", "0.01")
    assert report["cut"] and "CUT by the time budget" in stdout
    assert all(r["status"].startswith(("not run", "skipped", "cut")) for r in report["rows"])
