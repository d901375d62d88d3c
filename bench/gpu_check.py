"""GPU check (for a lent GPU machine, under 5 minutes): what `distland surface` really runs, and what is around it.

ResNet-56 on 50,000 CIFAR-shaped images at a trained-like θ* (BatchNorm calibrated on the data, labels that the
calibrated net's own features can explain, its last layer fitted to them: a low loss, a high accuracy). The
variants, in the order a user needs them:

 1. the fp32 reference: plain NCHW, BN unfolded, batch 1,024, TF32 off — every other row's error is against it;
 2. the default: exactly what `distland surface` runs (``engine.choose`` with the default config, the process
    settings, ``SurfaceEvaluator``, data resident through ``feed``; cudnn.benchmark off, as in real runs);
 3. TF32 and 4. bf16 (opt-in, not exact: their measured error against a tolerance suited to each);
 5. streamed data (must equal resident bit for bit), cudnn.benchmark on, NCHW + folded, batches 512 and 256,
    4 and 16 points per pass (vmap): each a few seconds;
 6. the default with torch.compile (what ``compile: auto`` switches to when a rank has enough work) and the
    break-even work that sets ``engine.COMPILE_WORTH_S["cuda"]``, CUDA graphs, bf16 + compile: cold compiles of a
    minute or more each, last so that they cannot crowd out the cheap rows.
 7. one point of a Hessian map (``quantities: [hessian]``: λmax and λmin at the authors' tolerance 1e-2, one
    Lanczos run, on the first 1,024 images), extrapolated to the paper's 51×51 convexity map on 50,000 images; it
    may start up to HESSIAN_GRACE_S past ``--budget`` (it takes seconds), within ``--hard``.

Every row records the state that took effect (compiled or fell back, BN folded or not, TF32 flags, stream).
``--budget`` seconds: no new timed point starts after it (a variant stops where it is); ``--hard`` seconds: the
run is interrupted wherever it is (say, inside a compile). Either way the summary is printed and the JSON written.
The summary extrapolates the paper's 51×51 sweep (2,601 points, ≈ 32.7 PFLOP) to 1 and 8 GPUs with the per-rank
fixed costs, and gives per precision: s/point, fraction of the card's peak, wall time, measured error.

Usage: ``python bench/gpu_check.py [--images 50000] [--points 3] [--budget 170] [--hard 200] [--out F.json]``;
``--smoke``: a tiny model and data on the CPU, to test the script itself (tests/test_gpu_check.py).
"""
from __future__ import annotations

import time

T_START = time.perf_counter()   # before torch is imported: the start-up every rank pays is measured below

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple  # noqa: E402

import torch  # noqa: E402

T_IMPORT = time.perf_counter() - T_START

from distland import directions as D  # noqa: E402
from distland import engine as engines  # noqa: E402
from distland.config import EngineConfig  # noqa: E402
from distland.engine import Engine  # noqa: E402
from distland.evaluate import SurfaceEvaluator  # noqa: E402
from distland.models import build_model  # noqa: E402

PAPER_POINTS = 51 * 51
PAPER_FLOP = 32.7e15
RANKS = 8
HESSIAN_IMAGES = 1024   # the Hessian-map row's data (the first images)
HESSIAN_LABEL = "Hessian-map point (λmax/λmin, tol 1e-2)"
HESSIAN_GRACE_S = 15.0  # the last row (a few seconds) may start this far past --budget, inside --hard's margin
CHECK_POINTS = ((0.0, 0.0), (0.3, -0.2))   # θ* and an off-centre point (stale weights would be exact only at θ*)
# Tolerances against the fp32 reference: (relative loss, accuracy in percentage points, accuracy in samples; the
# larger accuracy bound applies). fp32 variants only reorder float32 sums: ~1e-7 relative, and a prediction
# flips only on an exact tie. TF32 rounds conv inputs to 10 bits of mantissa (~5e-4 per product, averaged over
# thousands of terms), bf16 to 7 bits (~4e-3): a loss-landscape plot resolves ~1% at best.
TOLERANCE = {"fp32": (1e-5, 0.0, 2), "tf32": (2e-3, 0.1, 2), "bf16": (1e-2, 0.5, 2)}
# Dense peak FLOP/s (fp32 non-tensor, TF32 tensor, bf16 tensor) from the vendors' data sheets, by device name.
PEAKS = (("H100 PCIe", 51.2e12, 378e12, 756e12), ("H100", 66.9e12, 494.7e12, 989.4e12),
         ("H200", 66.9e12, 494.7e12, 989.4e12), ("A100", 19.5e12, 156e12, 312e12))


class Cut(BaseException):
    """The hard budget ran out (a BaseException, so that no `except Exception` fallback swallows it)."""


def peaks(name: str) -> Optional[Dict[str, float]]:
    for key, fp32, tf32, bf16 in PEAKS:
        if key in name:
            return {"fp32": fp32, "tf32": tf32, "bf16": bf16}
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flop_per_image(model: torch.nn.Module, sample: torch.Tensor) -> float:
    """2 × the multiply-adds of the model's convolutions and linear layers for one image."""
    macs = [0]

    def hook(mod: torch.nn.Module, _inp: Any, out: torch.Tensor) -> None:
        if isinstance(mod, torch.nn.Conv2d):
            macs[0] += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, torch.nn.Linear):
            macs[0] += out.numel() * mod.in_features

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    with torch.no_grad():
        model.eval()(sample[:1])
    for h in handles:
        h.remove()
    return 2.0 * macs[0]


def trained_like(model: torch.nn.Module, x: torch.Tensor, device: torch.device, classes: int = 10,
                 seed: int = 0, labels: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Make ``model`` a trained-like θ* for ``x``, in place, and return the labels: BatchNorm statistics measured
    on the data, labels (``labels``, or from a random linear teacher on the calibrated net's penultimate
    features plus noise, so the fit is not perfect), and the last linear layer fitted to them by L-BFGS."""
    g = torch.Generator().manual_seed(seed)
    model.to(device)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None   # a cumulative average over the calibration batches
        model.train()
        for start in range(0, min(len(x), 8192), 512):
            model(x[start:start + 512].to(device))
    model.eval()
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    feats: List[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, inp, _o: feats.append(inp[0].detach().float()))
    with torch.inference_mode():
        for start in range(0, len(x), 1024):
            model(x[start:start + 1024].to(device))
    handle.remove()
    f = torch.cat(feats).clone()
    z = (f - f.mean(0)) / (f.std(0) + 1e-6)
    teacher = torch.randn(z.shape[1], classes, generator=g).to(device)
    logits = z @ teacher
    noise = torch.randn(logits.shape, generator=g).to(device) * logits.std() * 0.5
    y = (logits + noise).argmax(1) if labels is None else labels.to(device)
    w = torch.zeros(classes, f.shape[1], device=device, requires_grad=True)
    b = torch.zeros(classes, device=device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(f @ w.T + b, y) + 1e-4 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(b)
        out = f @ w.T + b
        stats = {"loss": float(torch.nn.functional.cross_entropy(out, y)),
                 "acc": float((out.argmax(1) == y).float().mean() * 100)}
    model.cpu()
    return y.cpu(), stats


def vmapped(ev: SurfaceEvaluator) -> Callable[[Sequence[Tuple[float, float]]], List[Dict[str, float]]]:
    """Loss and accuracy at K grid points from one pass per batch: the evaluator's model through
    ``torch.func.functional_call`` under ``vmap`` over K stacked copies of the moving weights."""
    state = ev._eager.state_dict(keep_vars=True)
    by_ptr = {v.data_ptr(): k for k, v in state.items()}
    moving = [(by_ptr[live.data_ptr()], base, ds) for live, base, ds in zip(ev._live, ev._base, ev._dirs)]
    static = {k: v.detach() for k, v in state.items() if k not in {m[0] for m in moving}}
    split = ev.data["train"]

    def call(params: Dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(ev._eager, {**params, **static}, (xb,))

    batched = torch.func.vmap(call, in_dims=(0, None))

    def run(points: Sequence[Tuple[float, float]]) -> List[Dict[str, float]]:
        k = len(points)
        with torch.inference_mode():
            params = {name: torch.stack([base + sum(c * d for c, d in zip(p, ds)) for p in points])
                      for name, base, ds in moving}
            total = torch.zeros(k, dtype=torch.float64, device=ev.device)
            correct = torch.zeros(k, dtype=torch.int64, device=ev.device)
            for xb, yb in split.batches(ev.engine.batch_size):
                out = batched(params, xb).float()                   # [K, B, classes]
                total += torch.nn.functional.cross_entropy(
                    out.flatten(0, 1), yb.repeat(k), reduction="none").view(k, -1).sum(1).double()
                correct += (out.argmax(2) == yb).sum(1)
        return [{"train_loss": float(t) / split.n, "train_acc": 100.0 * int(c) / split.n}
                for t, c in zip(total.tolist(), correct.tolist())]

    return run


# ------------------------------------------------------------------------------------------------- variants
def variants(on_gpu: bool, smoke: bool) -> List[Dict[str, Any]]:
    """(label, engine overrides of the default, extras), in the order a user needs them."""
    cuda_only = None if on_gpu else "needs CUDA"
    no_compile = "no compile in --smoke (minutes on a CPU)" if smoke else None
    return [
        dict(label="reference: NCHW, unfolded, bs 1024, fp32", eng=dict(channels_last=False, fold_bn=False,
                                                                       batch_size=1024, compile="off")),
        dict(label="DEFAULT (what `distland surface` runs)", eng={}, default=True),
        dict(label="default + tf32", eng=dict(precision="tf32"), skip=cuda_only),
        dict(label="default + bf16", eng=dict(precision="bf16")),
        dict(label="streamed data (must equal resident bit for bit)", eng=dict(stream_data="on"), bitwise=True),
        dict(label="default + cudnn.benchmark", eng={}, benchmark=True, skip=cuda_only),
        dict(label="NCHW + folded", eng=dict(channels_last=False)),
        dict(label="batch 512", eng=dict(batch_size=512)),
        dict(label="batch 256", eng=dict(batch_size=256)),
        dict(label="4 points per pass (vmap)", eng={}, per_pass=4),
        dict(label="16 points per pass (vmap), batch 256", eng=dict(batch_size=256), per_pass=16),
        dict(label="default + compile (compile: auto on long sweeps)", eng=dict(compile="on"), skip=no_compile),
        dict(label="CUDA graphs (compile reduce-overhead)", eng={}, graphs=True, skip=cuda_only or no_compile),
        dict(label="bf16 + compile", eng=dict(precision="bf16", compile="on"), skip=no_compile),
        dict(label=HESSIAN_LABEL, hessian=True),
    ]


def hessian_row(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One point of a Hessian map (``quantities: [hessian]``) as the sweep computes it: λmax and λmin of the
    ≥ 2-dim weights' Hessian from one Lanczos run at the authors' tolerance, on the first HESSIAN_IMAGES images
    (a product costs ~4-5 forward passes, so the full set would not fit the budget; time scales with the images)."""
    import copy

    from distland.hessian import HessianOperator, extreme_eigenvalues, make_batches, probe_seed

    row: Dict[str, Any] = dict(label=HESSIAN_LABEL, status="cut by the hard budget")
    rows.append(row)
    cuda = device.type == "cuda"
    net = copy.deepcopy(model).to(device).eval()
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    n = min(HESSIAN_IMAGES, len(x))
    op = HessianOperator(net, make_batches(x[:n], y[:n], 512 if cuda else 128, device, cuda), "cross_entropy")
    t0 = time.perf_counter()
    ext = extreme_eigenvalues(op.matvec, op.dim, 1e-2, 200, probe_seed(0, "extremes", 0), like=op.params[0].detach())
    sync(device)
    dt = time.perf_counter() - t0
    full = dt * 50_000 / n * PAPER_POINTS / 3600
    row.update(hessian=dict(lmax=ext.lmax, lmin=ext.lmin, hvps=ext.hvps, converged=ext.converged, seconds=dt,
                            images=n, paper_map_gpu_hours=full),
               status=f"λmax {ext.lmax:.4g}, λmin {ext.lmin:.4g}, {ext.hvps} products"
                      f"{'' if ext.converged else ' (NOT converged)'} on {n} images: {dt:.2f} s/point, "
                      f"{dt / ext.hvps:.3f} s/product; 51×51 map on 50,000 images ≈ {full:.1f} device-hours")
    return row


class Clock:
    def __init__(self, budget: float) -> None:
        self.budget = budget

    def left(self) -> float:
        return self.budget - (time.perf_counter() - T_START)


def run_variant(spec: Dict[str, Any], default: Any, model: torch.nn.Module, ref: Any, dirs: Any,
                data: Dict[str, Tuple[torch.Tensor, torch.Tensor]], points: int, clock: Clock,
                rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One row, appended to ``rows`` first (a run cut inside it keeps what it measured): the variant built
    through the real code path, checked at CHECK_POINTS, then timed until ``points`` passes or the soft budget."""
    eng = dataclasses.replace(default, **spec["eng"])
    if spec.get("default"):
        eng = dataclasses.replace(eng, compile="off")   # `auto` runs eagerly until the sweep decides; the compile
        # row measures the switch
    per_pass = spec.get("per_pass", 1)
    row: Dict[str, Any] = dict(label=spec["label"], requested=dataclasses.asdict(eng), points_per_pass=per_pass,
                               status="running", timed_points=0)
    rows.append(row)
    engines.apply_process_settings(eng)   # TF32 flags from the precision, as in a sweep
    cuda = eng.device.startswith("cuda")
    if cuda:
        torch.backends.cudnn.benchmark = bool(spec.get("benchmark", False))
    device = torch.device(eng.device)
    ev: Optional[SurfaceEvaluator] = None
    try:
        t0 = time.perf_counter()
        ev = SurfaceEvaluator(model, ref, dirs, data, eng)
        sync(device)
        row["setup_s"] = time.perf_counter() - t0
        if eng.compile == "on":
            t0 = time.perf_counter()
            ev.compile_model()
            sync(device)
            row["compile_s"] = time.perf_counter() - t0
        if spec.get("graphs"):
            from torch._dynamo.utils import counters
            # The weights are rewritten in place, at the addresses the graphs captured, so replays see them.
            ev.model, ev.compiled = torch.compile(ev._eager, mode="reduce-overhead"), True
        if per_pass == 1:
            def run(pts: Sequence[Tuple[float, float]]) -> List[Dict[str, float]]:
                return [ev.evaluate(p) for p in pts]
        else:
            run = vmapped(ev)
        checks = []
        for i, p in enumerate(CHECK_POINTS):
            t0 = time.perf_counter()
            checks.append(run([p] * per_pass)[0])
            sync(device)
            row["first_point_s" if i == 0 else "second_point_s"] = \
                (time.perf_counter() - t0) / (1 if i == 0 else per_pass)
        if spec.get("graphs"):
            row["compile_s"] = row["first_point_s"]
            row["cudagraph_counters"] = {k: v for k, v in counters["inductor"].items() if "cudagraph" in k}
        row["check"] = checks
        times = []
        for k in range(points):
            if clock.left() <= 0:
                row["status"] = "cut by the budget"
                break
            t0 = time.perf_counter()
            run([(0.1 * (k + 1) + 0.01 * j, -0.05 * (k + 1)) for j in range(per_pass)])
            sync(device)
            times.append((time.perf_counter() - t0) / per_pass)
        row["timed_points"] = len(times) * per_pass
        row["effective"] = dict(compiled=ev.compiled, fold_bn=ev.engine.fold_bn, channels_last=ev.engine.channels_last,
                                stream_data=ev.engine.stream_data, batch_size=ev.engine.batch_size,
                                precision=ev.engine.precision, ranks_on_device=ev.engine.ranks_on_device,
                                tf32=bool(cuda and torch.backends.cudnn.allow_tf32),
                                cudnn_benchmark=bool(cuda and torch.backends.cudnn.benchmark))
        row["seconds_per_point"] = min(times) if times else row["second_point_s"]
        if row["status"] == "running":
            row["status"] = "ok"
    except Cut:
        row["status"] = "cut by the hard budget"
        raise
    except Exception as e:  # noqa: BLE001 - report the variant as failed, keep going
        row["status"] = f"failed: {type(e).__name__}: {str(e)[:160]}"
    finally:
        if cuda:
            torch.backends.cudnn.benchmark = False
        del ev
        if cuda:
            torch.cuda.empty_cache()
    return row


def judge(row: Dict[str, Any], reference: Optional[Dict[str, Any]], n: int) -> None:
    """Errors at the check points against the reference row, and whether they are within the precision's
    tolerance (TF32 counts as TF32 only when its flags took effect)."""
    if reference is None or "check" not in row or "check" not in reference or "effective" not in row:
        return
    loss_err = max(abs(g["train_loss"] - w["train_loss"]) / abs(w["train_loss"])
                   for g, w in zip(row["check"], reference["check"]))
    acc_diff = max(abs(g["train_acc"] - w["train_acc"]) for g, w in zip(row["check"], reference["check"]))
    precision = row["requested"]["precision"]
    if precision == "tf32" and not row["effective"]["tf32"]:
        precision = "fp32"
    tol_loss, tol_points, tol_samples = TOLERANCE[precision]
    row.update(rel_loss_error=loss_err, acc_diff_points=acc_diff, acc_diff_samples=round(acc_diff * n / 100),
               tolerance=dict(precision=precision, rel_loss=tol_loss,
                              acc_points=max(tol_points, 100.0 * tol_samples / n)))
    row["within_tolerance"] = loss_err <= tol_loss and acc_diff <= row["tolerance"]["acc_points"]


# ------------------------------------------------------------------------------------------------- summary
def sweep_wall(row: Dict[str, Any], fixed: Dict[str, float], ranks: int) -> Tuple[float, float]:
    """(wall seconds, of which fixed) for the 51×51 sweep on ``ranks`` GPUs: per rank the fixed costs (start-up,
    data to the device, evaluator set-up, the first point's extra, compile) then its share of the points."""
    extra_first = max(0.0, row.get("first_point_s", 0.0) - row["seconds_per_point"])
    fixed_s = fixed["startup_s"] + fixed["data_to_device_s"] + row.get("setup_s", 0.0) + extra_first + \
        (row.get("compile_s", 0.0) if row["effective"]["compiled"] else 0.0)
    return fixed_s + math.ceil(PAPER_POINTS / ranks) * row["seconds_per_point"], fixed_s


def summarize(info: Dict[str, Any], rows: List[Dict[str, Any]], cut: bool) -> List[str]:
    lines = [f"== gpu_check summary{' (CUT by the time budget: later variants not run)' if cut else ''} ==",
             f"{info['device_name']}, torch {info['torch']}, {info['model']} on {info['images']} images, "
             f"{info['flop_per_point'] / 1e12:.2f} TFLOP per point; θ*: "
             + (f"loss {info['theta']['loss']:.3f}, accuracy {info['theta']['acc']:.1f}%" if info["theta"] else
                "not reached"),
             f"fixed costs per rank: start-up {info['fixed']['startup_s']:.1f} s (import {T_IMPORT:.1f} s + device "
             f"init), data to device {info['fixed']['data_to_device_s']:.2f} s",
             f"{'variant':52s} {'s/point':>8s} {'1st pt':>7s} {'setup':>6s} {'compile':>7s} {'rel.err':>8s} "
             f"{'Δacc':>5s} ok  effective"]
    for r in rows:
        if "seconds_per_point" not in r:
            lines.append(f"{r['label']:52s} {r['status']}"
                         + (f" (first point {r['first_point_s']:.2f} s)" if "first_point_s" in r else ""))
            continue
        e = r["effective"]
        state = (f"bs {e['batch_size']} {'CL' if e['channels_last'] else 'NCHW'} fold {int(e['fold_bn'])} "
                 f"{e['precision']}{' tf32-on' if e['tf32'] else ''} compiled {int(e['compiled'])} "
                 f"stream {e['stream_data']}{' bench' if e['cudnn_benchmark'] else ''}")
        if r.get("bitwise_equal_to_default") is not None:
            state += f" bitwise==default {r['bitwise_equal_to_default']}"
        if r["status"] != "ok":
            state += f" [{r['status']}, {r['timed_points']} timed]"
        lines.append(f"{r['label']:52s} {r['seconds_per_point']:8.3f} {r.get('first_point_s', 0):7.2f} "
                     f"{r.get('setup_s', 0):6.1f} {r.get('compile_s', 0):7.1f} "
                     f"{r.get('rel_loss_error', float('nan')):8.1e} "
                     f"{r.get('acc_diff_samples', -1):5d} {'yes' if r.get('within_tolerance') else 'NO '} {state}")
    timed = [r for r in rows if "seconds_per_point" in r]
    default = next((r for r in timed if r["label"].startswith("DEFAULT")), None)
    if default is not None:
        lines.append(f"the default path: {default['seconds_per_point']:.3f} s/point")
    comp = next((r for r in timed if r["label"].startswith("default + compile")), None)
    if default is not None and comp is not None and comp["effective"]["compiled"]:
        gain = 1 - comp["seconds_per_point"] / default["seconds_per_point"]
        line = f"compile: {comp.get('compile_s', 0):.0f} s to compile and check, {100 * gain:.0f}% faster per point"
        if gain > 0:
            line += (f"; worth it above {comp.get('compile_s', 0) / gain:.0f} s of eager work per rank "
                     f"(engine.COMPILE_WORTH_S['cuda'] = {engines.COMPILE_WORTH_S['cuda']:.0f} s)")
        lines.append(line)
    if default is not None:
        for ranks in (1, RANKS):
            work = default["seconds_per_point"] * (math.ceil(PAPER_POINTS / ranks) - engines.AUTO_COMPILE_POINTS)
            decide = engines.worth_compiling(default["seconds_per_point"],
                                             math.ceil(PAPER_POINTS / ranks) - engines.AUTO_COMPILE_POINTS,
                                             info["device"])
            lines.append(f"compile: auto on {ranks} GPU(s) for 51×51: {work:.0f} s of eager work per rank -> "
                         f"{'compiles' if decide else 'stays eager'}")
    pk = peaks(info["device_name"])
    fp32_peak_s = PAPER_FLOP / pk["fp32"] if pk else None
    lines.append("paper target: 51×51 ResNet-56 on 50k ≈ 32.7 PFLOP"
                 + (f" = {fp32_peak_s / 60:.1f} min at 100% of this card's fp32 peak ({pk['fp32'] / 1e12:.1f} TFLOP/s)"
                    if pk else " (peak of this device unknown)"))
    lines.append(f"{'precision':9s} {'best variant':52s} {'s/point':>8s} {'TFLOP/s':>8s} {'%fp32pk':>7s} "
                 f"{'%ownpk':>6s} {'1 GPU':>8s} {f'{RANKS} GPUs':>8s} {'fixed/rank':>16s} {'rel.err':>8s} "
                 f"{'Δacc':>6s}")
    for precision in ("fp32", "tf32", "bf16"):
        cands = [r for r in timed if r.get("tolerance", {}).get("precision") == precision and r.get("within_tolerance")]
        if not cands:
            lines.append(f"{precision:9s} (no variant within its tolerance was measured)")
            continue
        best = min(cands, key=lambda r: r["seconds_per_point"])
        rate = info["flop_per_point"] / best["seconds_per_point"]
        one, _ = sweep_wall(best, info["fixed"], 1)
        many, fixed = sweep_wall(best, info["fixed"], RANKS)
        frac = f"{100 * rate / pk['fp32']:6.1f}%" if pk else "   n/a"
        own = f"{100 * rate / pk[precision]:5.1f}%" if pk else "  n/a"
        lines.append(f"{precision:9s} {best['label']:52s} {best['seconds_per_point']:8.3f} {rate / 1e12:8.2f} {frac} "
                     f"{own} {one / 60:5.1f}min {many / 60:5.1f}min "
                     f"{fixed:5.0f}s={fixed / best['seconds_per_point']:5.0f} pts "
                     f"{best['rel_loss_error']:8.1e} "
                     f"{best['acc_diff_points']:6.3f}")
    lines.append(f"{RANKS} GPUs: each rank pays its fixed costs (fixed/rank, also in points' worth: start-up, data to "
                 "the device, set-up, first point, compile if it compiles) before its "
                 f"{math.ceil(PAPER_POINTS / RANKS)} "
                 "points, so 8 GPUs are not 8x one GPU; not "
                 "included: mpirun's launch, reading the real data set from disk, HDF5 writes (small)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=32, help="image side")
    ap.add_argument("--points", type=int, default=3, help="timed passes per variant, after the two check points")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget", type=float, default=170.0, help="seconds after which no timed point starts")
    ap.add_argument("--hard", type=float, default=0.0, help="seconds after which the run is interrupted wherever "
                    "it is (default: budget + 30)")
    ap.add_argument("--only", default="", help="comma-separated variant numbers (1-based) to run")
    ap.add_argument("--smoke", action="store_true", help="tiny model and data on the CPU: tests the script")
    ap.add_argument("--out", default="gpu_check.json")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.images, args.size, args.points, args.device = "resnet20", 64, 8, 1, "cpu"
    hard = args.hard or args.budget + 30.0
    clock = Clock(args.budget)
    rows: List[Dict[str, Any]] = []
    info: Dict[str, Any] = dict(model=args.model, images=args.images, torch=torch.__version__, theta={},
                                fixed=dict(startup_s=0.0, data_to_device_s=0.0), flop_per_point=0.0)
    cut = False

    def interrupt(signum: int, _frame: Any) -> None:
        raise Cut(f"signal {signum}")

    signal.signal(signal.SIGALRM, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, max(0.01, hard - (time.perf_counter() - T_START)))
    try:
        device = torch.device(args.device)
        t0 = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.init()
            torch.zeros(1, device=device)
            sync(device)
        info["fixed"]["startup_s"] = T_IMPORT + time.perf_counter() - t0
        info["device"] = args.device
        info["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        if device.type == "cuda":
            info["cuda"], info["cudnn"] = torch.version.cuda, torch.backends.cudnn.version()
        print(f"{args.model} on {args.images} images, {info['device_name']}, torch {torch.__version__}", flush=True)
        torch.manual_seed(0)
        model = build_model(args.model)
        x = torch.randn(args.images, 3, args.size, args.size)
        info["flop_per_point"] = flop_per_image(model, x) * args.images
        t0 = time.perf_counter()
        y, info["theta"] = trained_like(model, x, device)
        print(f"θ*: loss {info['theta']['loss']:.3f}, accuracy {info['theta']['acc']:.1f}% "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        t0 = time.perf_counter()
        from distland import feed
        placed = feed.ResidentSplit(x, y, device, True)
        sync(device)
        info["fixed"]["data_to_device_s"] = time.perf_counter() - t0
        del placed
        # The default engine exactly as the sweep builds it (the batch, when not configured, from the model).
        activations = engines.largest_activation(model, x)
        default = engines.choose(EngineConfig(device=args.device), 0, 1, 0, x.dim(), activation_bytes=activations)
        info["default_engine"] = dataclasses.asdict(default)
        ref = D.reference_weights(model)
        dirs = D.make_random(ref, 0, "filter", "biasbn", 2)
        data = {"train": (x, y)}
        specs = variants(device.type == "cuda", args.smoke)
        only = {int(s) for s in args.only.split(",") if s}
        reference = None
        for i, spec in enumerate(specs, 1):
            if only and i not in only and i != 1:
                continue
            if spec.get("skip"):
                rows.append(dict(label=spec["label"], status=f"skipped: {spec['skip']}"))
                continue
            if clock.left() <= (-HESSIAN_GRACE_S if spec.get("hessian") else 0):
                rows.append(dict(label=spec["label"], status="not run: budget spent"))
                continue
            if spec.get("hessian"):
                row = hessian_row(model, x, y, device, rows)
                print(f"  {row['label']}: {row['status']}", flush=True)
                continue
            row = run_variant(spec, default, model, ref, dirs, data, args.points, clock, rows)
            if reference is None and i == 1:
                reference = row
            judge(row, reference, args.images)
            if spec.get("bitwise") and "check" in row:
                base = next((r for r in rows if r["label"].startswith("DEFAULT") and "check" in r), None)
                row["bitwise_equal_to_default"] = None if base is None else row["check"] == base["check"]
            print(f"  {row['label']}: {row['status']}"
                  + (f", {row['seconds_per_point']:.3f} s/point, rel. err {row.get('rel_loss_error', 0):.1e}"
                     if "seconds_per_point" in row else ""), flush=True)
    except Cut:
        cut = True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # the summary is short: let it finish
    if cut:
        done = {r["label"] for r in rows}
        rows += [dict(label=s["label"], status="not run: cut") for s in variants(args.device != "cpu", args.smoke)
                 if s["label"] not in done] if "device_name" in info else []
    info.setdefault("device_name", args.device)
    lines = summarize(info, rows, cut)
    print("\n".join(lines), flush=True)
    with open(args.out, "w") as f:
        json.dump(dict(info=info, rows=rows, cut=cut, summary=lines, total_s=time.perf_counter() - T_START), f,
                  indent=1, default=str)
    print(f"wrote {args.out}; total {time.perf_counter() - T_START:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
