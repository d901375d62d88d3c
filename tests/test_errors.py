"""Bad inputs: each gives one clear error that names the problem, through the Python API and through the CLI
(exit status 2, ``distland: error:`` on stderr), and leaves no half-written output — no file where there was
none, an existing file byte-for-byte unchanged."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Type

import numpy as np
import pytest
import torch

from distland import cli
from distland.checkpoint import CheckpointError, load_state_dict
from distland.config import ConfigError, load_config
from distland.directions import DirectionError
from distland.sweep import run_surface

from conftest import fingerprint, make_model, save_checkpoint, small_config, small_config_dict, write_yaml


@dataclass
class Case:
    """A bad job: what to write (a config mapping, or raw text), extra --set items, the error and its words."""

    id: str
    exc: Type[BaseException]
    words: Tuple[str, ...]
    setup: Callable[[Path], dict] = lambda tmp: {}     # returns top-level keys to put into the config
    text: Optional[str] = None                          # raw YAML instead of a mapping
    sets: List[str] = field(default_factory=list)
    late: bool = False  # may be found after the existing output was compared (then refused as another job)


def _ckpt_bytes(name: str, blob: bytes) -> Callable[[Path], dict]:
    def setup(tmp: Path) -> dict:
        (tmp / name).write_bytes(blob)
        return {"checkpoint": str(tmp / name)}
    return setup


def _random_bytes(seed: int, n: int = 512) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _other_model(tmp: Path) -> dict:
    torch.save(make_model("mlp", seed=0).state_dict(), tmp / "mlp.pt")
    return {"checkpoint": str(tmp / "mlp.pt")}


def _nan_weights(tmp: Path) -> dict:
    state = make_model("democnn", seed=0).state_dict()
    state["fc.weight"][3, 1] = float("nan")
    torch.save(state, tmp / "nan.pt")
    return {"checkpoint": str(tmp / "nan.pt")}


def _truncated(tmp: Path) -> dict:
    good = save_checkpoint(tmp / "good.pt")
    blob = good.read_bytes()
    (tmp / "cut.pt").write_bytes(blob[: len(blob) // 2])
    return {"checkpoint": str(tmp / "cut.pt")}


def _bad_direction_file(tmp: Path) -> dict:
    import h5py

    with h5py.File(tmp / "dirs.h5", "w") as f:
        for name in ("xdirection", "ydirection"):
            for i in range(3):  # democnn has 8 parameter tensors
                f.create_dataset(f"{name}/{i}", data=np.zeros((2, 2), np.float32))
    return {"directions": {"file": str(tmp / "dirs.h5")}}


CASES = [
    Case("unknown-model", ValueError, ("unknown model 'nosuchnet'", "valid names", "democnn", "resnet56"),
         sets=["model=nosuchnet"]),
    Case("missing-checkpoint", CheckpointError, ("not found", "nowhere.pt"),
         setup=lambda tmp: {"checkpoint": str(tmp / "nowhere.pt")}),
    Case("corrupt-checkpoint-random", CheckpointError, ("cannot be read", "junk.pt"),
         setup=_ckpt_bytes("junk.pt", _random_bytes(0))),
    # random bytes that happen to start with a pickle opcode which pops/peeks an empty stack or a missing memo
    # (about 8% of random files do): torch raises IndexError / KeyError for these
    Case("corrupt-checkpoint-empty-stack", CheckpointError, ("cannot be read", "stack.pt"),
         setup=_ckpt_bytes("stack.pt", b"q\x00" + _random_bytes(1, 256))),
    Case("corrupt-checkpoint-bad-memo", CheckpointError, ("cannot be read", "memo.pt"),
         setup=_ckpt_bytes("memo.pt", b"h\x05" + _random_bytes(2, 256))),
    Case("truncated-checkpoint", CheckpointError, ("cannot be read", "cut.pt"), setup=_truncated),
    Case("checkpoint-of-another-model", CheckpointError,
         ("does not match the model", "missing keys", "unexpected keys", "features.0.weight", "net.1.weight"),
         setup=_other_model),
    Case("nan-weights", CheckpointError, ("NaN/inf", "fc.weight"), setup=_nan_weights),
    Case("unknown-key", ConfigError, ("unknown config key modle", "valid keys", "model", "grid", "output"),
         setup=lambda tmp: {"modle": "democnn"}),
    Case("unknown-nested-key", ConfigError, ("unknown config key grid.w", "valid keys in grid: x, y"),
         sets=["grid.w=[0, 1, 2]"]),
    Case("grid-num-zero", ConfigError, ("grid.x", "num must be an integer >= 1"), sets=["grid.x=[-1, 1, 0]"]),
    Case("grid-min-above-max", ConfigError, ("grid.y", "min 2.0 is greater than max -2.0"),
         sets=["grid.y=[2, -2, 5]"]),
    Case("grid-not-a-list", ConfigError, ("grid.x must be a list",), sets=["grid.x=abc"]),
    Case("yaml-syntax-error", ConfigError, ("is not valid YAML", "job.yaml"),
         text="model: democnn\ngrid: {x: [-1, 1, 3]\noutput: OUT\n"),
    Case("yaml-is-a-list", ConfigError, ("must hold a mapping", "list"), text="- model: democnn\n- output: OUT\n"),
    Case("set-without-equals", ConfigError, ("--set 'grid.x'", "expected key=value"), sets=["grid.x"]),
    Case("max-samples-not-integer", ConfigError, ("data.max_samples must be an integer",),
         sets=["data.max_samples=1.5"]),
    Case("unknown-data-set", ValueError, ("unknown data set 'mnist'", "digits"), sets=["data.name=mnist"]),
    Case("mismatched-direction-file", DirectionError, ("dirs.h5", "has 3 tensors, the model has 8"),
         setup=_bad_direction_file, late=True),
    Case("missing-interp-target", CheckpointError, ("not found", "b.pt"),
         setup=lambda tmp: {"directions": {"kind": "interp", "target": str(tmp / "b.pt")}, "grid": {"x": [0, 1, 3],
                                                                                                   "y": None}}),
    # no machine has a hundred GPUs: a clear error, whatever the machine
    Case("unknown-cuda-device", (RuntimeError, ValueError), ("cuda:99",), sets=["engine.device=cuda:99"]),
    # the model cannot run on this data: found out before any file is written, not after creating it
    Case("model-does-not-fit-the-data", (RuntimeError, ValueError), ("channels",), sets=["model=resnet20"],
         late=True),
]


def _write_job(tmp: Path, case: Case, output: Path) -> Path:
    path = tmp / "job.yaml"
    if case.text is not None:
        path.write_text(case.text.replace("OUT", str(output)))
        return path
    data = small_config_dict(output)
    for key, value in case.setup(tmp).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}  # type: ignore[dict-item]
        else:
            data[key] = value
    return write_yaml(path, data)


@pytest.fixture(scope="module")
def valid_surface(tmp_path_factory):
    out = tmp_path_factory.mktemp("valid") / "valid.h5"
    run_surface(small_config(out))
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_api_error_and_no_output_file(tmp_path, case):
    out = tmp_path / "out" / "surface.h5"
    job = _write_job(tmp_path, case, out)
    with pytest.raises(case.exc) as info:
        run_surface(load_config(job, case.sets))
    msg = str(info.value)
    for word in case.words:
        assert word in msg, f"{word!r} not in {msg!r}"
    assert not out.exists(), "a failed job left an output file behind"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_error_and_existing_output_unchanged(tmp_path, capsys, case, valid_surface):
    out = tmp_path / "surface.h5"
    out.write_bytes(valid_surface.read_bytes())
    before = fingerprint(out)
    job = _write_job(tmp_path, case, out)
    argv = ["surface", str(job)]
    for item in case.sets:
        argv += ["--set", item]
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("distland: error: ")
    assert "Traceback" not in captured.err
    named = all(word in captured.err for word in case.words)
    if case.late:  # may be checked after the existing file refused the job: either message is clear
        assert named or "holds a different job" in captured.err, captured.err
    else:
        assert named, f"{case.words!r} not all in {captured.err!r}"
    assert fingerprint(out) == before


def test_cli_error_leaves_no_new_file(tmp_path, capsys):
    out = tmp_path / "fresh.h5"
    job = write_yaml(tmp_path / "job.yaml", small_config_dict(out, checkpoint=str(tmp_path / "none.pt")))
    assert cli.main(["surface", str(job)]) == 2
    assert "distland: error: checkpoint" in capsys.readouterr().err
    assert not out.exists()


def test_cli_missing_config_file(tmp_path, capsys):
    assert cli.main(["surface", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distland: error: config file") and "not found" in err


def test_checkpoint_wrappers_and_prefixes_are_accepted(tmp_path):
    state = make_model("democnn", seed=0).state_dict()
    torch.save({"epoch": 3, "state_dict": {f"module._orig_mod.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
    loaded = load_state_dict(tmp_path / "w.pt")
    assert list(loaded) == list(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        load_state_dict(tmp_path / "list.pt")


def test_overwrite_keeps_the_existing_file_when_the_job_cannot_start(tmp_path, valid_surface):
    out = tmp_path / "surface.h5"
    out.write_bytes(valid_surface.read_bytes())
    before = fingerprint(out)
    with pytest.raises((RuntimeError, ValueError), match="cuda:99"):
        run_surface(small_config(out, "engine.device=cuda:99", "directions.seed=3"), overwrite=True)
    assert out.exists(), "--overwrite deleted the old file although the new job never started"
    assert fingerprint(out) == before


def test_nan_at_the_minimizer_is_a_clear_error(tmp_path, monkeypatch):
    """A loss that is NaN at θ* itself (NaN inputs) is refused before any file is written."""
    from distland.config import load_config
    from distland.sweep import run_surface

    monkeypatch.chdir(tmp_path)
    (tmp_path / "nandata.py").write_text(
        "import torch\n"
        "def load(split):\n"
        "    x = torch.randn(20, 1, 8, 8); x[3, 0, 2, 2] = float('nan')\n"
        "    return x, torch.zeros(20, dtype=torch.long)\n")
    cfg = load_config(None, ["data.name=nandata:load", "plugins=[nandata]", f"output={tmp_path / 'o.h5'}",
                             "grid.x=[-1,1,3]"])
    with pytest.raises(ValueError, match="train split holds 1 NaN/inf input"):
        run_surface(cfg)
    assert not (tmp_path / "o.h5").exists()


def test_a_missing_checkpoint_with_a_training_config_names_the_training_command(tmp_path, capsys):
    # `distland hessian` builds θ* without training on demand: the fix it suggests is the config's own training
    # run, not an empty checkpoint path (which would evaluate an untrained net).
    train_cfg = "configs/small/train/democnn_sb_wd0.yaml"
    path = write_yaml(tmp_path / "job.yaml", small_config_dict(tmp_path / "out.h5", checkpoint=str(tmp_path / "no.pt"),
                                                               train=train_cfg))
    assert cli.main(["hessian", str(path), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert f"distland train {train_cfg}" in err and "no.pt" in err and "initial weights" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]
    # Without `train:` the message still offers the other fix.
    with pytest.raises(CheckpointError, match="initial weights"):
        from distland.sweep import build_reference_model
        build_reference_model(load_config(path, ["train=''"]))
