"""Summary numbers of a Hessian map (``max_eig``, ``min_eig`` from ``quantities: [..., hessian]``): λmax and λmin at
θ* and how much of the grid is nearly convex, |λmin/λmax| < :data:`CONVEX_RATIO` (the paper's Fig. 7 reading:
small ratios = convex-looking; numpy only). Stored with the sharpness report under the ``hessian.`` prefix."""
from __future__ import annotations

import math
from typing import Any, Dict, List

import numpy as np

PREFIX = "hessian."
CONVEX_RATIO = 0.1        # |λmin/λmax| below this counts as (nearly) convex; the plots' colour scale stops at 0.5


def convexity_numbers(data: Any) -> Dict[str, float]:
    """``lambda_max``/``lambda_min`` at θ* (NaN when the origin is not a grid point or not done), the number of done
    finite points, the fraction of them with |λmin/λmax| < CONVEX_RATIO, and the median ratio. Empty without a map."""
    if "max_eig" not in data.metrics or "min_eig" not in data.metrics:
        return {}
    lmax = np.asarray(data.metrics["max_eig"], dtype=np.float64)
    lmin = np.asarray(data.metrics["min_eig"], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(lmin / lmax)
    ok = np.isfinite(ratio)
    out: Dict[str, float] = {"map_points": float(ok.sum()), "convex_ratio": CONVEX_RATIO}
    out["convex_fraction"] = float((ratio[ok] < CONVEX_RATIO).mean()) if ok.any() else math.nan
    out["ratio_median"] = float(np.median(ratio[ok])) if ok.any() else math.nan
    axes = [np.asarray(data.x)] + ([] if data.y is None else [np.asarray(data.y)])
    origin = [np.flatnonzero(np.isclose(a, 0.0, atol=1e-12)) for a in axes]
    at = tuple(int(i[0]) for i in origin) if all(i.size for i in origin) else None
    out["lambda_max"] = float(lmax[at]) if at is not None else math.nan
    out["lambda_min"] = float(lmin[at]) if at is not None else math.nan
    return out


def format_convexity(report: Dict[str, float], prefix: str = PREFIX) -> List[str]:
    """The report's Hessian-map lines (none without one)."""
    if prefix + "map_points" not in report:
        return []
    r = {k[len(prefix):]: v for k, v in report.items() if k.startswith(prefix)}
    centre = (f"λmax {r['lambda_max']:.6g}, λmin {r['lambda_min']:.6g} at θ*"
              if not math.isnan(r.get("lambda_max", math.nan)) else "θ* is not a grid point")
    return [f"  hessian     {centre}; |λmin/λmax| < {r['convex_ratio']:g} on {100 * r['convex_fraction']:.3g}% of "
            f"{int(r['map_points'])} points (median ratio {r['ratio_median']:.3g})"]
