"""bench/paper_claims.py's verdict rule: a comparison that involves a net that did not train is inconclusive."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import paper_claims as pc  # noqa: E402


def _models(noshort56_acc: float):
    base = {"test_acc": 1.0, "center_loss": 0.1, "loss_max": 1.0, "mean_inc_025": 0.1, "basin_area": 0.1,
            "basin_open": 0, "quad_resid": 0.07, "extra_minima": 0}
    rows = {"resnet20": (1.0, 0.0025, 0.05), "resnet20_noshort": (1.0, 0.15, 0.34), "resnet56": (1.0, 0.033, 0.17),
            "resnet56_noshort": (noshort56_acc, 0.078, 0.53)}
    return {n: {**base, "train_acc": a, "rho_mean": r, "nonconvex_frac": f} for n, (a, r, f) in rows.items()}


def test_an_untrained_net_makes_its_comparisons_inconclusive():
    _, verdicts = pc.report_skip({"models": _models(0.559)}, (20, 56))
    by_claim = {v["claim"]: v for v in verdicts}
    deep = by_claim["2: resnet56 without skips is rougher than with them"]
    assert deep["verdict"] == "inconclusive" and "would be: agrees" in deep["detail"]
    assert "resnet56_noshort 0.559" in deep["detail"]
    assert by_claim["2: roughness without skips grows with depth (20 -> 56)"]["verdict"] == "inconclusive"
    info = [v for v in verdicts if v["claim"].startswith("2 (info")][0]
    assert info["verdict"] == "yes"   # the depth-20 pair both trained: judged as before
    assert any(v["verdict"] == "note" for v in verdicts)


def test_trained_nets_are_judged():
    _, verdicts = pc.report_skip({"models": _models(0.95)}, (20, 56))
    curvature = [v for v in verdicts if not v["claim"].endswith("(topology)")]
    assert [v["verdict"] for v in curvature[:2]] == ["agrees", "disagrees"]
    # No topology numbers in these rows: the topology verdicts say so rather than guess.
    assert all(v["verdict"] == "n/a" for v in verdicts if v["claim"].endswith("(topology)"))
    assert not any(v["verdict"] in ("inconclusive", "note") for v in verdicts)
