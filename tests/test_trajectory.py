"""PCA trajectory directions on synthetic checkpoints whose path lies on a known plane."""
from __future__ import annotations

import argparse
import warnings

import h5py
import numpy as np
import pytest
import torch

from distland.analysis import trajectory as tr
from distland.checkpoint import CheckpointError
from distland.models import build_model

MLP_ARGS = {"in_features": 8, "hidden": 6, "num_classes": 3}


def flat_weights(state, keys):
    return np.concatenate([state[k].double().reshape(-1).numpy() for k in keys])


def set_flat(state, keys, vec):
    out, pos = dict(state), 0
    for k in keys:
        n = state[k].numel()
        out[k] = torch.from_numpy(vec[pos:pos + n].reshape(tuple(state[k].shape))).to(state[k].dtype)
        pos += n
    return out


def make_run(tmp_path, coords, noise=0.0, epochs=None, seed=0):
    """Checkpoints θ_k = θ_final + c_k1·a + c_k2·b (+ noise) over the 2-D weights of a tiny MLP."""
    torch.manual_seed(seed)
    final = build_model("mlp", **MLP_ARGS).state_dict()
    keys = [k for k, v in final.items() if v.dim() > 1]
    P = sum(final[k].numel() for k in keys)
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((P, 2)))
    torch.save(final, tmp_path / "final.pt")
    base = flat_weights(final, keys)
    epochs = epochs or list(range(1, len(coords) + 1))
    for e, c in zip(epochs, coords):
        state = set_flat(final, keys, base + basis @ c + noise * rng.standard_normal(P))
        for k in final:   # biases move too; under ignore=biasbn they must not matter
            if final[k].dim() == 1:
                state[k] = final[k] + torch.randn(final[k].shape)
        torch.save(state, tmp_path / f"ckpt_{e}.pt")
    return tmp_path / "final.pt", keys, basis


def path_coords(K=15):
    t = np.linspace(0, 1, K)
    return np.stack([3 * (1 - t) ** 2, 0.8 * np.sin(3 * np.pi * t) * (1 - t)], axis=1)


def test_recovers_the_plane(tmp_path):
    C = path_coords()
    epochs = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 20, 100, 150]   # numeric, not lexical, order
    final, keys, basis = make_run(tmp_path, C, noise=1e-4, epochs=epochs)
    traj = tr.compute(str(tmp_path / "ckpt_*.pt"), str(final), ignore="biasbn", center=False, lr_drops=[10, 100])
    assert traj.labels == epochs
    V = np.stack([np.concatenate([traj.directions[a][k].reshape(-1) for k in keys]) for a in "xy"], axis=1)
    assert np.allclose(V.T @ V, np.eye(2), atol=1e-6)
    cosines = np.linalg.svd(V.T @ basis, compute_uv=False)   # cosines of the principal angles
    assert cosines.min() > 1 - 1e-6
    assert all(not traj.directions[a][k].any() for a in "xy" for k in traj.directions[a] if k not in keys)
    lam = np.sort(np.linalg.eigvalsh(C.T @ C))[::-1]
    assert traj.pca.ratio == pytest.approx(lam / (C ** 2).sum(), abs=1e-4)
    # Coordinates agree up to a rotation/reflection: compare distances and norms.
    dist = lambda X: np.linalg.norm(X[:, None] - X[None], axis=2)
    assert np.allclose(dist(traj.coords), dist(C), atol=2e-3)
    assert np.allclose(np.linalg.norm(traj.coords, axis=1), np.linalg.norm(C, axis=1), atol=2e-3)
    assert traj.residual.max() < 3e-3 and traj.residual.max() > 0
    assert traj.coords[0, 0] > 0 and traj.coords[0, 1] > 0   # the sign convention


def test_cli_writes_a_direction_file(tmp_path, capsys):
    final, keys, _ = make_run(tmp_path, path_coords(8), noise=1e-4)
    parser = argparse.ArgumentParser(prog="distland")
    tr.add_subcommand(parser.add_subparsers())
    out = tmp_path / "traj.h5"
    args = parser.parse_args(["trajectory", str(tmp_path), "--final", str(final), "--out", str(out),
                              "--model", "mlp", "--model-args", "{in_features: 8, hidden: 6, num_classes: 3}",
                              "--lr-drops", "3,6", "--ignore", "biasbn"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "explained variance" in text and "directions.file=" + str(out) in text and "distland surface" in text
    model = build_model("mlp", **MLP_ARGS)
    names = [k for k, _ in model.named_parameters()]
    with h5py.File(out, "r") as f:
        assert list(f["directions/x"]) == names   # model order is kept
        assert f.attrs["direction_type"] == "weights" and len(f.attrs["explained_variance_ratio"]) == 2
        assert list(f.attrs["checkpoints"]) == [str(tmp_path / f"ckpt_{e}.pt") for e in range(1, 9)]
        assert f["trajectory/coords"].shape == (8, 2) and f["trajectory/residual"].shape == (8,)
        assert list(f["trajectory/labels"][()]) == list(range(1, 9)) and list(f["trajectory/lr_drops"][()]) == [3, 6]
        assert f["directions/y/net.1.weight"].dtype == np.float32 and not f["directions/y/net.1.bias"][()].any()
    # The surface side reads it back.
    from distland import directions

    ref = directions.reference_weights(model, "weights")
    dx, dy = directions.load_file(out, ref, 2)
    assert set(dx) == set(names) and float(dx["net.1.weight"].norm() ** 2 + dx["net.3.weight"].norm() ** 2) == \
        pytest.approx(1.0, abs=1e-5)


def test_the_output_never_clobbers_other_files_and_a_failed_write_keeps_the_old_one(tmp_path, capsys, monkeypatch):
    final, _, _ = make_run(tmp_path, path_coords(6), noise=1e-4)
    parser = argparse.ArgumentParser(prog="distland")
    tr.add_subcommand(parser.add_subparsers())

    def run(out, *extra):
        args = parser.parse_args(["trajectory", str(tmp_path), "--final", str(final), "--out", str(out), *extra])
        return args.func(args)

    surface = tmp_path / "surface.h5"          # a finished result must not be replaced by mistake
    with h5py.File(surface, "w") as f:
        f["train_loss"] = np.arange(4.0)
    before = surface.read_bytes()
    assert run(surface) == 2
    assert "exists and is not a distland trajectory file" in capsys.readouterr().err
    assert surface.read_bytes() == before
    assert run(surface, "--overwrite") == 0 and tr.is_trajectory_file(surface)
    out = tmp_path / "traj.h5"
    assert run(out) == 0 and run(out) == 0          # an earlier trajectory output is simply replaced
    kept = out.read_bytes()

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(tr, "_fill", lambda f, traj: (f.attrs.__setitem__("partial", 1), broken()))
    assert run(out) == 2 and "disk full" in capsys.readouterr().err
    assert out.read_bytes() == kept and not list(tmp_path.glob(".traj.h5.*"))   # old file intact, no temp left


def test_line_trajectory_has_no_second_variance(tmp_path):
    t = np.linspace(1, 0, 6)
    final, keys, basis = make_run(tmp_path, np.stack([2 * t, 0 * t], axis=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no division by zero, no invalid values
        traj = tr.compute(str(tmp_path / "ckpt_*.pt"), str(final), ignore="biasbn", center=False)
    assert traj.pca.ratio[0] == pytest.approx(1.0) and traj.pca.ratio[1] == 0.0 and traj.pca.random_axes == [1]
    V = np.stack([np.concatenate([traj.directions[a][k].reshape(-1) for k in keys]) for a in "xy"], axis=1)
    assert np.isfinite(V).all() and np.allclose(V.T @ V, np.eye(2), atol=1e-6)
    assert abs(V[:, 0] @ basis[:, 0]) == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(traj.coords[:, 1], 0, atol=1e-6) and np.allclose(traj.coords[:, 0], 2 * t, atol=1e-6)
    assert "random" in tr.summary(traj, "traj.h5")
    spilled = tr.compute(str(tmp_path / "ckpt_*.pt"), str(final), ignore="biasbn", center=False, memory_limit=0,
                         tmpdir=str(tmp_path))
    assert np.allclose(spilled.coords, traj.coords) and list(tmp_path.glob("tmp*")) == []   # memmap, cleaned up


@pytest.mark.parametrize("center", [False, True])
def test_gram_pca_matches_dense_svd(center):
    rng = np.random.default_rng(3)
    D = rng.standard_normal((7, 50)) * np.array([5, 3, 1, 1, 1, 1, 1])[:, None]
    pca = tr.pca_directions(D, 2, center=center)
    X = D - D.mean(axis=0) if center else D
    _, s, Vt = np.linalg.svd(X, full_matrices=False)
    assert pca.eigenvalues == pytest.approx(s[:2] ** 2, rel=1e-10)
    assert pca.ratio == pytest.approx(s[:2] ** 2 / (s ** 2).sum(), rel=1e-10)
    assert np.allclose(np.abs(pca.directions @ Vt[:2].T), np.eye(2), atol=1e-10)
    coords, residual = tr.project(D, pca.directions)
    assert np.allclose(coords, D @ pca.directions.T, atol=1e-10)   # orthonormal basis: plain projections
    assert np.allclose(residual, np.linalg.norm(D - coords @ pca.directions, axis=1), atol=1e-10)


def test_project_in_a_skewed_basis():
    rng = np.random.default_rng(1)
    V = np.array([[1.0, 0, 0, 0], [1.0, 2.0, 0, 0]])
    c = rng.standard_normal((5, 2))
    coords, residual = tr.project(c @ V, V)
    assert np.allclose(coords, c) and np.allclose(residual, 0, atol=1e-12)


def test_states_with_batchnorm(tmp_path):
    torch.manual_seed(0)
    model = build_model("democnn", width=2)
    final = model.state_dict()
    torch.save(final, tmp_path / "final.pt")
    for e in range(1, 5):
        torch.save({k: (v + e * torch.randn(v.shape) if v.is_floating_point() else v + e) for k, v in final.items()},
                   tmp_path / f"model_{e}.pt")
    traj = tr.compute(str(tmp_path), str(tmp_path / "final.pt"), kind="states", ignore="none", model=model)
    assert list(traj.directions["x"]) == list(final)
    assert traj.labels == [1, 2, 3, 4]   # final.pt has no number: skipped
    assert traj.skipped == [str(tmp_path / "final.pt")]
    assert not traj.directions["x"]["features.1.num_batches_tracked"].any()
    assert traj.directions["x"]["features.1.running_mean"].any()   # 1-D floats take part under ignore=none
    biasbn = tr.compute(str(tmp_path / "model_*.pt"), str(tmp_path / "final.pt"), kind="states", ignore="biasbn")
    assert not biasbn.directions["x"]["features.1.running_mean"].any()
    weights = tr.compute(str(tmp_path / "model_*.pt"), str(tmp_path / "final.pt"))   # no model: told by name
    assert list(weights.directions["x"]) == [k for k, _ in model.named_parameters()]


def test_epoch_numbers():
    assert tr.epoch_of("run/model_10.t7") == 10
    assert tr.epoch_of("model_10.pth.tar") == 10
    assert tr.epoch_of("epoch=3-step=1200.ckpt") == 3
    assert tr.epoch_of("final.pt") is None


def test_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints found"):
        tr.find_checkpoints(str(tmp_path / "nothing_*.pt"))
    with pytest.raises(CheckpointError, match="no checkpoints found"):
        tr.find_checkpoints(str(tmp_path))
    final, _, _ = make_run(tmp_path, path_coords(4))
    torch.save(build_model("mlp", in_features=8, hidden=5, num_classes=3).state_dict(), tmp_path / "ckpt_9.pt")
    with pytest.raises(CheckpointError, match="ckpt_9.pt.*does not match"):
        tr.compute(str(tmp_path / "ckpt_*.pt"), str(final))
    (tmp_path / "ckpt_9.pt").unlink()
    torch.save(torch.load(final), tmp_path / "same_1.pt")
    with pytest.raises(ValueError, match="all checkpoints equal the final one"):
        tr.compute(str(tmp_path / "same_1.pt"), str(final), center=False)
    with pytest.raises(ValueError, match="every offset equals the mean offset"):
        tr.compute(str(tmp_path / "same_1.pt"), str(final))   # centered: one checkpoint has no spread
    with pytest.raises(CheckpointError, match="does not match the model"):
        tr.compute(str(tmp_path / "ckpt_*.pt"), str(final), model=build_model("democnn", width=2))
    parser = argparse.ArgumentParser()
    tr.add_subcommand(parser.add_subparsers())
    args = parser.parse_args(["trajectory", str(tmp_path / "none_*.pt"), "--final", str(final)])
    assert args.func(args) == 2


def test_defaults_match_the_authors_sklearn_pca(tmp_path, capsys):
    """The authors' plot_trajectory.py: scikit-learn PCA (centered) of the offsets, 1-D tensors included (its
    --ignore is empty by default); coordinates are the raw offsets projected on the components."""
    from sklearn.decomposition import PCA as SkPCA

    final, _, _ = make_run(tmp_path, path_coords(9), noise=1e-3)
    traj = tr.compute(str(tmp_path / "ckpt_*.pt"), str(final))
    assert traj.center and traj.ignore == "none"
    ref = torch.load(final, weights_only=True)
    keys = list(ref)   # biases included
    rows = []
    for e in range(1, 10):
        state = torch.load(tmp_path / f"ckpt_{e}.pt", weights_only=True)
        rows.append(np.concatenate([(state[k] - ref[k]).double().reshape(-1).numpy() for k in keys]))
    D = np.stack(rows)
    sk = SkPCA(n_components=2).fit(D)
    assert traj.pca.ratio == pytest.approx(sk.explained_variance_ratio_, rel=1e-6)
    V = np.stack([np.concatenate([traj.directions[a][k].reshape(-1) for k in keys]) for a in "xy"])
    assert np.abs(np.abs(V @ sk.components_.T) - np.eye(2)).max() < 1e-5   # same axes up to sign
    np.testing.assert_allclose(np.abs(traj.coords), np.abs(D @ sk.components_.T), atol=1e-5)
    assert "centered, as the authors" in tr.summary(traj, "t.h5")
    uncentered = tr.compute(str(tmp_path / "ckpt_*.pt"), str(final), center=False)
    assert not np.allclose(uncentered.pca.ratio, sk.explained_variance_ratio_, rtol=1e-3)
    assert "uncentered, not comparable" in tr.summary(uncentered, "t.h5")
