"""The paper's two landscape claims (Li et al., NeurIPS 2018), measured as numbers on small nets trained here.

Claim 1 (§5, Fig. 3/4): with filter-normalized directions, the minimizer found with a LARGE batch is SHARPER than
the one found with a SMALL batch, and it generalizes worse (higher test error); the 1-D linear interpolation between
the two minimizers rises between them.
Claim 2 (§6, Fig. 5/7): a deep net WITHOUT skip connections has a rougher, more non-convex surface than the same net
WITH them, and the roughness of the no-skip net grows with depth.

Everything uses seed 0 (training, data split, directions), fixed before any result was seen; see
bench/PAPER_CLAIMS.md for the settings, the definitions of every number and the measured values.

Usage:  OMP_NUM_THREADS=1 python bench/paper_claims.py [--out DIR] [--threads 1] [--no-deep] [--smoke]
        (--smoke: 2 epochs and tiny grids, to check the pipeline; its numbers mean nothing)
Writes under DIR (a fresh temporary folder if not given): train/<run>/ (checkpoints, metrics), surfaces/*.h5,
logs/*.log and claims.json; prints the tables and one verdict line per claim.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from distland.analysis.compare import roughness as surface_roughness
from distland.analysis.sharpness import sharpness_report
from distland.checkpoint import load_state_dict
from distland.config import Config, DataConfig, DirectionsConfig, EngineConfig, GridConfig, SweepConfig
from distland.models import build_model
from distland.surfacefile import SurfaceData, read
from distland.sweep import run_surface
from distland.config import DataSource
from distland.train import TrainConfig, train

SEED = 0
TAU = 0.1                 # basin threshold τ: loss increase that bounds the basin
RADII = (0.25, 0.5)       # radii r of the mean / max loss increase
PRIMARY_RADIUS = 0.25     # the primary sharpness number is the 2-D mean increase within this radius
BARRIER_MIN = TAU         # interpolation: "the loss rises between the minimizers" when the barrier exceeds τ
TRAINED_MIN = 0.9         # train accuracy a net must reach to count as a trained minimizer; a comparison that
                          # involves a net below it is "inconclusive", whatever its numbers say (the paper compares
                          # trained minimizers)
# Claim 2, topology (docs/topology.md), rule fixed before any run: surface a is topologically rougher than b when it
# has more minima whose persistence exceeds 5% of its own loss range; on a tie, when its total persistence (in
# units of its loss range) is larger. Scored on its own line, next to the curvature verdict, not mixed into it.
TOPO_ROWS = [("topo_n_minima_5pct", "minima with persistence > 5% of range (TOPOLOGY PRIMARY)"),
             ("topo_total_persistence_rel", "total persistence / loss range (tie-break)"),
             ("topo_n_minima_1pct", "minima with persistence > 1% of range"),
             ("topo_centre_barrier", "barrier out of the centre's basin")]

# Claim 1: democnn on digits. At 30 epochs batch 1024 reaches only ~87% train accuracy, so both batches get 100
# epochs (the paper's 300-epoch schedule, milestones at 1/2, 3/4, 0.9, shrunk 3x), as configs/small/train now does.
BATCH_EPOCHS = 100
BATCH_MILESTONES = [50, 75, 90]
SMALL_BATCH, LARGE_BATCH = 16, 1024
WEIGHT_DECAYS = (0.0, 5e-4)
GRID_1D = [-1.0, 1.0, 41]
GRID_2D = [-1.0, 1.0, 21]
GRID_INTERP = [-0.5, 1.5, 41]

# Claim 2: ResNets on digits (1 input channel), the recipe of configs/small/train/resnet*.yaml.
SKIP_EPOCHS = 30
SKIP_MILESTONES = [15, 22, 27]
SKIP_GRID = [-1.0, 1.0, 15]
SKIP_SAMPLES = 512        # surfaces of all four ResNets on the first 512 training images (same data for all)


# ------------------------------------------------------------------------------------------------ helpers
def log_to(path: Path):
    """Send stdout (training's per-epoch lines) to a log file; stderr stays on the console."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return contextlib.redirect_stdout(path.open("a"))


def train_run(out: Path, name: str, model: str, model_args: Dict[str, Any], batch: int, wd: float, epochs: int,
              milestones: List[int], threads: int, device: str) -> Dict[str, Any]:
    cfg = TrainConfig(model=model, model_args=dict(model_args), data=DataSource(name="digits"),
                      optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=wd, batch_size=batch,
                      epochs=epochs, lr_milestones=list(milestones), lr_gamma=0.1, augment=False, seed=SEED,
                      save_every=0, out_dir=str(out / "train" / name), device=device, num_threads=threads)
    t0 = time.monotonic()
    with log_to(out / "logs" / f"train_{name}.log"):
        run_dir = train(cfg)
    seconds = time.monotonic() - t0
    last = json.loads((run_dir / "metrics.json").read_text())[-1]
    ckpt = run_dir / "final.pt"
    net = build_model(model, **model_args)
    net.load_state_dict(load_state_dict(str(ckpt)))
    # ‖θ‖ over the weights that filter normalization perturbs (conv / linear weights; biases and BN excluded).
    wnorm = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in net.parameters() if p.dim() > 1))
    row = {"name": name, "model": model, "batch_size": batch, "weight_decay": wd, "epochs": epochs,
           "checkpoint": str(ckpt), "train_loss": last["train_loss"], "train_acc": last["train_acc"],
           "test_loss": last["test_loss"], "test_acc": last["test_acc"], "test_error": 1.0 - last["test_acc"],
           "weight_norm": wnorm, "seconds": seconds}
    print(f"  trained {name:<22} {seconds:6.1f} s  train acc {row['train_acc']:.4f}  test acc {row['test_acc']:.4f}",
          flush=True)
    return row


def surface(out: Path, name: str, model: str, model_args: Dict[str, Any], ckpt: str, x: Sequence[float],
            y: Optional[Sequence[float]], threads: int, device: str, max_samples: int = 0,
            target: str = "") -> Tuple[SurfaceData, float]:
    directions = (DirectionsConfig(kind="interp", target=target, type="states", seed=SEED) if target else
                  DirectionsConfig(kind="random", norm="filter", ignore="biasbn", type="weights", seed=SEED))
    cfg = Config(model=model, model_args=dict(model_args), checkpoint=ckpt,
                 data=DataConfig(name="digits", split="train", max_samples=max_samples),
                 directions=directions, grid=GridConfig(x=list(x), y=None if y is None else list(y)),
                 output=str(out / "surfaces" / f"{name}.h5"),
                 engine=EngineConfig(device=device, threads=threads),
                 sweep=SweepConfig(mpi="off", progress=False)).validate()
    t0 = time.monotonic()
    with log_to(out / "logs" / f"surface_{name}.log"):
        summary = run_surface(cfg, overwrite=True)
        print(summary.text())
    seconds = time.monotonic() - t0
    n = int(np.prod(summary.grid))
    print(f"  surface {name:<22} {seconds:6.1f} s  {'x'.join(map(str, summary.grid))} = {n} points", flush=True)
    return read(cfg.output), seconds


def roughness(data: SurfaceData, metric: str = "train_loss") -> Dict[str, float]:
    """Roughness / non-convexity numbers of a 2-D surface: :func:`distland.analysis.compare.roughness` (where the
    definitions live; `distland info` and `distland reproduce` print the same numbers) plus the grid's loss range."""
    L = np.asarray(data.metrics[metric], float)
    ok = np.isfinite(L) & np.asarray(data.done, bool)
    out = {"nonfinite_points": float((~ok).sum()), **surface_roughness(data.x, data.y, L, data.done)}
    out["loss_min"] = float(L[ok].min()) if ok.any() else math.nan
    out["loss_max"] = float(L[ok].max()) if ok.any() else math.nan
    return out


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(map(str, header))] + [[r[0]] + [fmt(v) for v in r[1:]] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become the strings 'nan' / 'inf' / '-inf'."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else ("nan" if math.isnan(f) else ("inf" if f > 0 else "-inf"))
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


# ------------------------------------------------------------------------------------------------ claim 1
# (key in the per-model record, label, "sharper" direction: +1 larger is sharper, -1 smaller is sharper)
SHARPNESS_ROWS: List[Tuple[str, str, int]] = [
    ("d1_curvature", "1-D  L'' (quadratic fit, r=0.25)", +1),
    ("d1_mean_inc_0.25", "1-D  mean ΔL, r=0.25", +1),
    ("d1_max_inc_0.25", "1-D  max ΔL, r=0.25", +1),
    ("d1_mean_inc_0.5", "1-D  mean ΔL, r=0.5", +1),
    ("d1_max_inc_0.5", "1-D  max ΔL, r=0.5", +1),
    ("d1_width_x", "1-D  basin width, τ=0.1", -1),
    ("d2_mean_curvature", "2-D  mean curvature tr(H)/2", +1),
    ("d2_eig_min", "2-D  λ_min(H)", +1),
    ("d2_eig_max", "2-D  λ_max(H)", +1),
    ("d2_mean_inc_0.25", "2-D  mean ΔL, r=0.25 (PRIMARY)", +1),
    ("d2_max_inc_0.25", "2-D  max ΔL, r=0.25", +1),
    ("d2_mean_inc_0.5", "2-D  mean ΔL, r=0.5", +1),
    ("d2_max_inc_0.5", "2-D  max ΔL, r=0.5", +1),
    ("d2_width_x", "2-D  basin width x, τ=0.1", -1),
    ("d2_width_y", "2-D  basin width y, τ=0.1", -1),
    ("d2_basin_area", "2-D  basin area, τ=0.1", -1),
]


def sharpness_numbers(d1: SurfaceData, d2: SurfaceData) -> Tuple[Dict[str, float], Dict[str, Any]]:
    reports = {f"{dim}_r{r}": sharpness_report(data, "train_loss", radius=r, threshold=TAU)
               for dim, data in (("1d", d1), ("2d", d2)) for r in RADII}
    a1, b1 = reports["1d_r0.25"], reports["1d_r0.5"]
    a2, b2 = reports["2d_r0.25"], reports["2d_r0.5"]
    nums = {
        "d1_center_loss": a1["center_loss"], "d1_curvature": a1["curvature"],
        "d1_mean_inc_0.25": a1["mean_increase"], "d1_max_inc_0.25": a1["max_increase"],
        "d1_mean_inc_0.5": b1["mean_increase"], "d1_max_inc_0.5": b1["max_increase"],
        "d1_width_x": a1["width_x"], "d1_width_x_open": a1["width_x_open"],
        "d2_center_loss": a2["center_loss"], "d2_mean_curvature": a2["mean_curvature"],
        "d2_eig_min": a2["hess_eig_min"], "d2_eig_max": a2["hess_eig_max"],
        "d2_mean_inc_0.25": a2["mean_increase"], "d2_max_inc_0.25": a2["max_increase"],
        "d2_mean_inc_0.5": b2["mean_increase"], "d2_max_inc_0.5": b2["max_increase"],
        "d2_width_x": a2["width_x"], "d2_width_x_open": a2["width_x_open"],
        "d2_width_y": a2["width_y"], "d2_width_y_open": a2["width_y_open"],
        "d2_basin_area": a2["basin_area"], "d2_basin_open": a2["basin_open"],
    }
    return nums, reports


def claim_batch(out: Path, args: argparse.Namespace, epochs: int, milestones: List[int], g1: List[float],
                g2: List[float], gi: List[float]) -> Dict[str, Any]:
    print(f"claim 1: democnn on digits, batch {SMALL_BATCH} vs {LARGE_BATCH}, {epochs} epochs", flush=True)
    result: Dict[str, Any] = {"models": {}, "interp": {}, "pairs": {}}
    for wd in WEIGHT_DECAYS:
        tag = f"wd{wd:g}"
        runs = {}
        for kind, batch in (("SB", SMALL_BATCH), ("LB", LARGE_BATCH)):
            name = f"democnn_{kind.lower()}_{tag}"
            row = train_run(out, name, "democnn", {}, batch, wd, epochs, milestones, args.threads, args.device)
            d1, s1 = surface(out, f"{name}_1d", "democnn", {}, row["checkpoint"], g1, None, args.threads, args.device)
            d2, s2 = surface(out, f"{name}_2d", "democnn", {}, row["checkpoint"], g2, g2, args.threads, args.device)
            nums, reports = sharpness_numbers(d1, d2)
            row.update(nums)
            row["surface_seconds"] = s1 + s2
            row["reports"] = reports
            result["models"][name] = row
            runs[kind] = row
        di, _ = surface(out, f"democnn_interp_{tag}", "democnn", {}, runs["SB"]["checkpoint"], gi, None,
                        args.threads, args.device, target=runs["LB"]["checkpoint"])
        rep = sharpness_report(di, "train_loss", radius=PRIMARY_RADIUS, threshold=TAU)
        alpha = np.asarray(di.x, float)
        curve = np.asarray(di.metrics["train_loss"], float)
        mid = int(np.argmin(np.abs(alpha - 0.5)))
        result["interp"][tag] = {"barrier": rep.get("barrier"), "barrier_alpha": rep.get("barrier_alpha"),
                                 "loss_0": rep.get("barrier_loss_0"), "loss_1": rep.get("barrier_loss_1"),
                                 "loss_mid": float(curve[mid]), "alpha": alpha.tolist(),
                                 "train_loss": curve.tolist(),
                                 "train_acc": np.asarray(di.metrics["train_acc"], float).tolist()}
        sb, lb = runs["SB"], runs["LB"]
        votes = {}
        for key, _, sign in SHARPNESS_ROWS:
            a, b = sb.get(key, math.nan), lb.get(key, math.nan)
            votes[key] = bool(sign * (b - a) > 0) if math.isfinite(a) and math.isfinite(b) else None
        primary = votes["d2_mean_inc_0.25"]
        gen = lb["test_error"] > sb["test_error"]
        result["pairs"][tag] = {
            "lb_sharper": votes, "lb_sharper_count": sum(1 for v in votes.values() if v),
            "numbers_compared": sum(1 for v in votes.values() if v is not None),
            "primary_lb_sharper": primary, "lb_higher_test_error": gen,
            "barrier_above_tau": bool(result["interp"][tag]["barrier"] is not None
                                      and result["interp"][tag]["barrier"] > BARRIER_MIN),
        }
    return result


# ------------------------------------------------------------------------------------------------ claim 2
def claim_skip(out: Path, args: argparse.Namespace, epochs: int, milestones: List[int], grid: List[float],
               samples: int, depths: Sequence[int]) -> Dict[str, Any]:
    print(f"claim 2: ResNets on digits with / without skip connections, depths {list(depths)}, {epochs} epochs",
          flush=True)
    result: Dict[str, Any] = {"models": {}, "verdicts": {}}
    for depth in depths:
        for short in (True, False):
            model = f"resnet{depth}" + ("" if short else "_noshort")
            margs = {"in_channels": 1}
            row = train_run(out, model, model, margs, 128, 5e-4, epochs, milestones, args.threads, args.device)
            d2, secs = surface(out, f"{model}_2d", model, margs, row["checkpoint"], grid, grid, args.threads,
                               args.device, max_samples=samples)
            row.update(roughness(d2))
            rep = sharpness_report(d2, "train_loss", radius=PRIMARY_RADIUS, threshold=TAU)
            row.update(center_loss=rep["center_loss"], mean_inc_025=rep["mean_increase"],
                       basin_area=rep.get("basin_area"), basin_open=rep.get("basin_open"),
                       surface_seconds=secs, report=rep)
            row.update({key: rep.get("topology." + key[len("topo_"):], math.nan) for key, _ in TOPO_ROWS})
            result["models"][model] = row
    return result


# ------------------------------------------------------------------------------------------------ report
def gated(verdict: Dict[str, str], models: Dict[str, Dict[str, Any]], names: Sequence[str]) -> Dict[str, str]:
    """``verdict``, or "inconclusive" when one of ``names`` did not reach ``TRAINED_MIN`` train accuracy."""
    untrained = [n for n in names if not models[n]["train_acc"] >= TRAINED_MIN]
    if not untrained or verdict["verdict"] == "note":
        return verdict
    accs = ", ".join(f"{n} {models[n]['train_acc']:.3f}" for n in untrained)
    return {**verdict, "verdict": "inconclusive",
            "detail": f"{verdict['detail']} (would be: {verdict['verdict']}); not trained to {TRAINED_MIN} train "
                      f"accuracy: {accs}"}


def report_batch(res: Dict[str, Any]) -> Tuple[str, List[Dict[str, str]]]:
    m = res["models"]
    cols = [(f"democnn_sb_{t}", f"democnn_lb_{t}", t) for t in (f"wd{w:g}" for w in WEIGHT_DECAYS)]
    header = ["number (train split)"]
    for sb, lb, t in cols:
        header += [f"SB {t}", f"LB {t}", "LB sharper?"]
    rows: List[List[Any]] = []

    def info(label: str, key: str) -> None:
        row: List[Any] = [label]
        for sb, lb, _ in cols:
            row += [m[sb][key], m[lb][key], "-"]
        rows.append(row)

    info("train accuracy", "train_acc")
    info("test accuracy", "test_acc")
    info("test error", "test_error")
    info("‖θ‖ (conv/linear weights)", "weight_norm")
    info("1-D  centre loss", "d1_center_loss")
    info("2-D  centre loss", "d2_center_loss")
    for key, label, _ in SHARPNESS_ROWS:
        row = [label]
        for sb, lb, t in cols:
            vals = []
            for name in (sb, lb):
                v = m[name][key]
                opened = m[name].get(f"{key}_open") or (key == "d2_basin_area" and m[name].get("d2_basin_open"))
                vals.append((">" + fmt(v)) if opened else v)
            vote = res["pairs"][t]["lb_sharper"][key]
            row += vals + ["-" if vote is None else ("yes" if vote else "NO")]
        rows.append(row)
    text = table(header, rows)
    interp_rows = []
    for t, iv in res["interp"].items():
        interp_rows.append([t, iv["loss_0"], iv["loss_mid"], iv["loss_1"], iv["barrier"], iv["barrier_alpha"]])
    text += "\n\n1-D linear interpolation θ(α) = (1−α)·θ_SB + α·θ_LB (BN running stats included), train loss:\n"
    text += table(["pair", "L(α=0) SB", "L(α=0.5)", "L(α=1) LB", "barrier", "at α"], interp_rows)
    verdicts = []
    for sb, lb, t in cols:
        p = res["pairs"][t]
        start = len(verdicts)
        verdicts.append({"claim": f"1 ({t}): large-batch minimum sharper (2-D mean ΔL within r={PRIMARY_RADIUS})",
                         "verdict": "agrees" if p["primary_lb_sharper"] else "disagrees",
                         "detail": f"{p['lb_sharper_count']}/{p['numbers_compared']} sharpness numbers say LB is "
                                   "sharper"})
        verdicts.append({"claim": f"1 ({t}): large-batch minimum generalizes worse (higher test error)",
                         "verdict": "agrees" if p["lb_higher_test_error"] else "disagrees",
                         "detail": f"test error SB {m[f'democnn_sb_{t}']['test_error']:.4f}, "
                                   f"LB {m[f'democnn_lb_{t}']['test_error']:.4f} (359 test images)"})
        verdicts.append({"claim": f"1 ({t}): loss rises between the SB and LB minimizers (barrier > τ={BARRIER_MIN})",
                         "verdict": "agrees" if p["barrier_above_tau"] else "disagrees",
                         "detail": f"barrier {fmt(res['interp'][t]['barrier'])}"})
        verdicts[start:] = [gated(v, m, (sb, lb)) for v in verdicts[start:]]
    return text, verdicts


ROUGH_ROWS = [("rho_mean", "mean ρ = max(0,−λmin)/max|λ| (PRIMARY)"),
              ("nonconvex_frac", "fraction of points with λmin < 0"),
              ("quad_resid", "quadratic-fit RMS residual / loss range"),
              ("extra_minima", "extra strict local minima")]


def report_skip(res: Dict[str, Any], depths: Sequence[int]) -> Tuple[str, List[Dict[str, str]]]:
    m = res["models"]
    names = [f"resnet{d}{s}" for d in depths for s in ("", "_noshort")]
    header = ["number (2-D train surface)"] + names
    rows: List[List[Any]] = []
    for key, label in [("train_acc", "train accuracy"), ("test_acc", "test accuracy"),
                       ("center_loss", "centre loss"), ("loss_max", "max loss on the grid"),
                       ("mean_inc_025", "mean ΔL, r=0.25"), ("basin_area", "basin area, τ=0.1")]:
        row: List[Any] = [label]
        for n in names:
            v = m[n][key]
            row.append((">" + fmt(v)) if key == "basin_area" and m[n].get("basin_open") else v)
        rows.append(row)
    for key, label in ROUGH_ROWS + TOPO_ROWS:
        rows.append([label] + [m[n].get(key, math.nan) for n in names])
    text = table(header, rows)

    def topo_rougher(a: str, b: str) -> Optional[bool]:
        # The rule fixed above TOPO_ROWS; None when a surface has no topology numbers.
        ka, kb = (m[n].get("topo_n_minima_5pct", math.nan) for n in (a, b))
        ta, tb = (m[n].get("topo_total_persistence_rel", math.nan) for n in (a, b))
        if not all(math.isfinite(v) for v in (ka, kb, ta, tb)):
            return None
        return ka > kb if ka != kb else ta > tb

    def rougher(a: str, b: str) -> Tuple[Optional[bool], int, int]:
        # (a rougher than b on the primary number, how many of the 4 numbers agree, how many were comparable)
        votes = []
        for key, _ in ROUGH_ROWS:
            x, y = m[a][key], m[b][key]
            if math.isfinite(x) and math.isfinite(y):
                votes.append(x > y)
        p = m[a]["rho_mean"] > m[b]["rho_mean"] if math.isfinite(m[a]["rho_mean"]) and \
            math.isfinite(m[b]["rho_mean"]) else None
        return p, sum(votes), len(votes)

    verdicts = []
    deep = max(depths)
    pairs = [(f"resnet{deep}_noshort", f"resnet{deep}", f"2: resnet{deep} without skips is rougher than with them")]
    if len(depths) > 1:
        shallow = min(depths)
        pairs.append((f"resnet{deep}_noshort", f"resnet{shallow}_noshort",
                      f"2: roughness without skips grows with depth ({shallow} -> {deep})"))
    for a, b, label in pairs:
        p, k, n = rougher(a, b)
        verdicts.append(gated({"claim": label, "verdict": "n/a" if p is None else ("agrees" if p else "disagrees"),
                               "detail": f"mean ρ {fmt(m[a]['rho_mean'])} vs {fmt(m[b]['rho_mean'])}; {k}/{n} "
                                         "roughness numbers agree"}, m, (a, b)))
        t = topo_rougher(a, b)
        verdicts.append(gated({"claim": label + " (topology)",
                               "verdict": "n/a" if t is None else ("agrees" if t else "disagrees"),
                         "detail": f"minima > 5% of range {fmt(m[a].get('topo_n_minima_5pct'))} vs "
                                   f"{fmt(m[b].get('topo_n_minima_5pct'))}; total persistence / range "
                                   f"{fmt(m[a].get('topo_total_persistence_rel'))} vs "
                                   f"{fmt(m[b].get('topo_total_persistence_rel'))}"}, m, (a, b)))
    if len(depths) > 1:
        shallow = min(depths)
        p, k, n = rougher(f"resnet{shallow}_noshort", f"resnet{shallow}")
        verdicts.append(gated({"claim": f"2 (info, not scored; the paper sees little difference at depth {shallow}): "
                                        f"resnet{shallow}_noshort rougher than resnet{shallow}",
                               "verdict": "n/a" if p is None else ("yes" if p else "no"),
                               "detail": f"mean ρ {fmt(m[f'resnet{shallow}_noshort']['rho_mean'])} vs "
                                         f"{fmt(m[f'resnet{shallow}']['rho_mean'])}; {k}/{n} roughness numbers say "
                                         "rougher"}, m, (f"resnet{shallow}_noshort", f"resnet{shallow}")))
    for n in names:
        if m[n]["train_acc"] < TRAINED_MIN:
            verdicts.append({"claim": f"warning: {n} reached only {m[n]['train_acc']:.3f} train accuracy",
                             "verdict": "note", "detail": "its surface is not that of a well-trained minimizer"})
    res["verdicts"] = verdicts
    return text, verdicts


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="", help="output folder (default: a new temporary folder)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads for training and surfaces (default 1: the trained weights, hence every "
                         "number, change slightly with the thread count; 1 thread reproduces on any machine)")
    ap.add_argument("--device", default="cpu", help="cpu (default; the measured numbers are CPU runs) or cuda")
    ap.add_argument("--no-deep", action="store_true", help="skip the resnet56 pair (claim 2 then uses depth 20)")
    ap.add_argument("--smoke", action="store_true", help="2 epochs, tiny grids: a pipeline check, not a result")
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="paper_claims_"))
    out.mkdir(parents=True, exist_ok=True)
    depths = (20,) if args.no_deep else (20, 56)
    if args.smoke:
        b_ep, b_ms, s_ep, s_ms = 2, [1], 2, [1]
        g1, g2, gi, gs, samples = [-1.0, 1.0, 5], [-1.0, 1.0, 5], [-0.5, 1.5, 5], [-1.0, 1.0, 5], 64
    else:
        b_ep, b_ms, s_ep, s_ms = BATCH_EPOCHS, BATCH_MILESTONES, SKIP_EPOCHS, SKIP_MILESTONES
        g1, g2, gi, gs, samples = GRID_1D, GRID_2D, GRID_INTERP, SKIP_GRID, SKIP_SAMPLES
    print(f"paper_claims: output in {out} ({args.threads} thread(s), device {args.device}"
          f"{', SMOKE MODE: numbers mean nothing' if args.smoke else ''})", flush=True)

    t0 = time.monotonic()
    batch = claim_batch(out, args, b_ep, b_ms, g1, g2, gi)
    t_batch = time.monotonic() - t0
    t0 = time.monotonic()
    skip = claim_skip(out, args, s_ep, s_ms, gs, samples, depths)
    t_skip = time.monotonic() - t0

    text1, v1 = report_batch(batch)
    text2, v2 = report_skip(skip, depths)
    runtime = time.monotonic() - t_start
    settings = {
        "seed": SEED, "smoke": args.smoke, "threads": args.threads, "device": args.device,
        "claim1": {"model": "democnn", "data": "digits train split (1438) / test split (359)",
                   "batches": [SMALL_BATCH, LARGE_BATCH], "weight_decays": list(WEIGHT_DECAYS),
                   "epochs": b_ep, "lr": 0.1, "lr_milestones": b_ms, "optimizer": "SGD Nesterov 0.9",
                   "grid_1d": g1, "grid_2d": g2, "grid_interp": gi, "radii": list(RADII), "tau": TAU,
                   "directions": "random, filter-normalized, biases/BN zeroed (ignore biasbn), seed 0"},
        "trained_min_train_acc": TRAINED_MIN,
        "claim2": {"models": [f"resnet{d}{s}" for d in depths for s in ("", "_noshort")], "epochs": s_ep,
                   "lr_milestones": s_ms, "batch_size": 128, "weight_decay": 5e-4, "grid_2d": gs,
                   "surface_samples": samples, "data": "digits, model_args in_channels 1"},
    }
    sep = "=" * 100
    lines = [sep, f"CLAIM 1 — small vs large batch (democnn, digits, {b_ep} epochs, seed {SEED}); "
             "sharpness numbers of the filter-normalized train-loss surfaces", sep, text1, "",
             sep, f"CLAIM 2 — skip connections (ResNets on digits, {s_ep} epochs, 2-D "
             f"{gs[2]}x{gs[2]} surface over [-1,1]² on {samples} train images, seed {SEED})", sep, text2, "",
             sep, "VERDICTS" + ("  (SMOKE MODE: meaningless)" if args.smoke else ""), sep]
    for v in v1 + v2:
        lines.append(f"[{v['verdict']:>12}] {'' if v['verdict'] == 'note' else 'claim '}{v['claim']} — {v['detail']}")
    lines.append(f"runtime {runtime:.0f} s (claim 1 {t_batch:.0f} s, claim 2 {t_skip:.0f} s); output {out}")
    print("\n".join(lines), flush=True)
    payload = {"settings": settings, "claim1": batch, "claim2": skip, "verdicts": v1 + v2,
               "tables": {"claim1": text1, "claim2": text2}, "runtime_seconds": runtime,
               "runtime_claim1_seconds": t_batch, "runtime_claim2_seconds": t_skip,
               "versions": {"python": platform.python_version(), "torch": torch.__version__,
                            "numpy": np.__version__}, "command": sys.argv}
    (out / "claims.json").write_text(json.dumps(clean(payload), indent=1) + "\n")
    (out / "claims.txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'claims.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
