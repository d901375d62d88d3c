"""GPU check (for a lent GPU machine, under 5 minutes): ResNet-56 on 50,000 CIFAR-shaped images.

Measures seconds per grid point for each candidate engine configuration (batch size, memory format, BN folding,
torch.compile, TF32 / bf16), checks every variant's loss against the plain float32 evaluation, and extrapolates
the paper's 51×51 sweep (2,601 points) for one GPU and for N GPUs. Writes a JSON with everything next to the
printout. Runs on a CPU too (``--device cpu --images 1024``) to check the script itself.

Usage: ``python bench/gpu_check.py [--images 50000] [--points 3] [--budget 240] [--out gpu_check.json]``
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Callable, Dict, List, Tuple

import torch

from distland import directions as D
from distland.engine import Engine
from distland.evaluate import SurfaceEvaluator
from distland.models import build_model

PAPER_POINTS = 51 * 51
PROBE = (0.3, -0.2)   # an off-centre point every variant is checked at


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def vmapped(ev: SurfaceEvaluator) -> Callable[[List[Tuple[float, float]]], List[float]]:
    """Loss at K grid points from one pass per batch: the evaluator's model called through
    ``torch.func.functional_call`` under ``vmap`` over K stacked copies of the moving weights."""
    state = ev._eager.state_dict(keep_vars=True)
    by_ptr = {v.data_ptr(): k for k, v in state.items()}
    moving = [(by_ptr[live.data_ptr()], base, ds) for live, base, ds in zip(ev._live, ev._base, ev._dirs)]
    static = {k: v.detach() for k, v in state.items() if k not in {m[0] for m in moving}}
    split = ev.data["train"]

    def call(params: Dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(ev._eager, {**params, **static}, (xb,))

    batched = torch.func.vmap(call, in_dims=(0, None))

    def run(points: List[Tuple[float, float]]) -> List[float]:
        with torch.inference_mode():
            params = {name: torch.stack([base + sum(c * d for c, d in zip(p, ds)) for p in points])
                      for name, base, ds in moving}
            total = torch.zeros(len(points), dtype=torch.float64, device=ev.device)
            for xb, yb in split.batches(ev.engine.batch_size):
                out = batched(params, xb).float()                   # [K, B, classes]
                total += torch.nn.functional.cross_entropy(
                    out.flatten(0, 1), yb.repeat(len(points)), reduction="none").view(len(points), -1).sum(1).double()
        return (total / split.n).tolist()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--points", type=int, default=3, help="timed points per variant (after one warm-up point)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget", type=float, default=240.0, help="stop trying new variants after this many seconds")
    ap.add_argument("--out", default="gpu_check.json")
    args = ap.parse_args()
    t_start = time.monotonic()
    dev = args.device
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else "CPU"
    torch.manual_seed(0)
    model = build_model(args.model)
    x = torch.randn(args.images, 3, 32, 32)
    y = torch.randint(0, 10, (args.images,))
    # BN statistics measured on the data, as after training: a loss of order 1, where relative errors mean
    # something (random statistics blow a deep net's logits up to losses in the thousands, where float32
    # rounding hides every difference), and non-trivial statistics for the folding to fold.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for start in range(0, min(args.images, 2048), 256):
            model(x[start:start + 256])
    model.eval()
    ref = D.reference_weights(model)
    dirs = D.make_random(ref, 0, "filter", "biasbn", 2)
    print(f"{args.model} on {args.images} CIFAR-shaped images, device {dev} ({name}), torch {torch.__version__}")

    candidates: List[Dict] = [dict(batch_size=1024, channels_last=False, fold_bn=False, precision="fp32")]
    for bs in (512, 1024, 2048, 4096):
        candidates.append(dict(batch_size=bs, channels_last=True, fold_bn=True, precision="fp32"))
    candidates += [dict(batch_size=2048, channels_last=True, fold_bn=True, precision="tf32"),
                   dict(batch_size=2048, channels_last=True, fold_bn=True, precision="fp32", compile="on"),
                   dict(batch_size=2048, channels_last=True, fold_bn=True, precision="bf16"),
                   dict(batch_size=2048, channels_last=True, fold_bn=True, precision="bf16", compile="on"),
                   # data that would not fit: host-resident, streamed in pinned chunks on a side stream
                   dict(batch_size=2048, channels_last=True, fold_bn=True, precision="fp32", stream_data="on")]
    # CUDA graphs (torch.compile's reduce-overhead mode) replay each batch's kernels with one launch
    candidates.append(dict(batch_size=2048, channels_last=True, fold_bn=True, precision="fp32", cuda_graphs=True))
    # several grid points per pass (vmap over stacked weights): slower on CPUs, maybe not on a GPU
    candidates += [dict(batch_size=bs, channels_last=True, fold_bn=True, precision="fp32", points_per_pass=k)
                   for bs, k in ((1024, 4), (512, 16))]
    results = []
    reference = None
    for cand in candidates:
        if time.monotonic() - t_start > args.budget:
            print(f"budget of {args.budget:.0f} s reached; skipping the remaining variants")
            break
        per_pass = cand.pop("points_per_pass", 1)
        graphs = cand.pop("cuda_graphs", False)
        eng = Engine(device=dev, compile=cand.pop("compile", "off"), **cand)
        if dev.startswith("cuda"):
            allow = eng.precision == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = allow
            torch.backends.cudnn.allow_tf32 = allow
            torch.backends.cudnn.benchmark = True
        try:
            t0 = time.perf_counter()
            ev = SurfaceEvaluator(model, ref, dirs, {"train": (x, y)}, eng)
            if graphs:
                # The weights are rewritten in place, at the addresses the graphs captured, so replays see them.
                ev.model, ev.compiled = torch.compile(ev._eager, mode="reduce-overhead"), True
            if per_pass == 1:
                def run(points: List[Tuple[float, float]]) -> List[float]:
                    return [ev.evaluate(p)["train_loss"] for p in points]
            else:
                run = vmapped(ev)
            first = run([(0.0, 0.0)] * per_pass)[0]
            sync(dev)
            setup = time.perf_counter() - t0
            t0 = time.perf_counter()
            for k in range(args.points):
                run([(0.1 * (k + 1) + 0.01 * j, -0.05 * k) for j in range(per_pass)])
            sync(dev)
            per_point = (time.perf_counter() - t0) / (args.points * per_pass)
            # Off θ* too: a variant that kept stale weights (say, captured as constants) is exact only at θ*.
            probe = run([PROBE] * per_pass)[0]
        except Exception as e:  # noqa: BLE001 - report the variant as failed, keep going
            print(f"  {eng} x{per_pass}: failed ({type(e).__name__}: {str(e)[:120]})")
            continue
        if reference is None:
            reference = (first, probe)
        rel = max(abs(first - reference[0]) / abs(reference[0]), abs(probe - reference[1]) / abs(reference[1]))
        row = dict(engine=eng.__dict__, points_per_pass=per_pass, cuda_graphs=graphs, seconds_per_point=per_point,
                   setup_seconds=setup, loss_at_center=first, loss_at_probe=probe, rel_error_vs_fp32=rel,
                   sweep_51x51_minutes_1gpu=per_point * PAPER_POINTS / 60)
        results.append(row)
        print(f"  bs {eng.batch_size:5d} {'CL  ' if eng.channels_last else 'NCHW'} fold {int(eng.fold_bn)} "
              f"{eng.precision:4s} compile {eng.compile:3s} stream {eng.stream_data:3s} x{per_pass:<2d}"
              f"{' graphs' if graphs else ''}: {per_point:7.3f} s/point (setup {setup:5.1f} s), "
              f"rel. err {rel:.1e}, 51×51 on 1 GPU ≈ {row['sweep_51x51_minutes_1gpu']:.1f} min")
        del ev
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
    exact = [r for r in results if r["engine"]["precision"] in ("fp32", "tf32") and r["rel_error_vs_fp32"] < 1e-4]
    if exact:
        best = min(exact, key=lambda r: r["seconds_per_point"])
        base = results[0]["seconds_per_point"]
        print(f"fastest exact: {best['engine']}, {best['points_per_pass']} point(s) per pass"
              f"{', CUDA graphs' if best['cuda_graphs'] else ''} — {best['seconds_per_point']:.3f} s/point, "
              f"{base / best['seconds_per_point']:.2f}x the plain NCHW fp32 evaluation; the paper's 51×51 sweep ≈ "
              f"{best['sweep_51x51_minutes_1gpu']:.1f} min on 1 GPU, {best['sweep_51x51_minutes_1gpu'] / 8:.1f} "
              "min on 8 (target ≤ 10 min on one H100)")
    with open(args.out, "w") as f:
        json.dump(dict(device=name, model=args.model, images=args.images, results=results), f, indent=1)
    print(f"wrote {args.out}; total {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    main()
