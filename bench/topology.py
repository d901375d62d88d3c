"""Speed and agreement of the topology of a surface: distland's union-find merge tree vs gudhi vs cripser.

For each grid (a 51×51 surface, a 21³ volume, a 201×201 surface), on a rough random field and on a Rastrigin-like
one, times: the full ``topology_numbers`` (merge tree + centre basin, pure Python), gudhi's 0-dim cubical
persistence (vertex filtration), and cripser's (if installed; it is not a distland dependency), and checks that the
three 0-dim diagrams are equal. Best of ``--repeat`` runs. Usage: python bench/topology.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from distland.analysis import topology as T


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def rastrigin(shape):
    grids = np.meshgrid(*[np.linspace(-2, 2, n) for n in shape], indexing="ij")
    return sum(1 - np.cos(2 * np.pi * g) + 0.1 * g ** 2 for g in grids)


def sort_pairs(d):
    d = np.asarray(d, float).reshape(-1, 2)
    d = np.where(d > 1e300, np.inf, d)   # cripser writes essential deaths as the largest double
    return d[np.lexsort((d[:, 1], d[:, 0]))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    try:
        import cripser
    except ImportError:
        cripser = None
    import gudhi

    version = getattr(cripser, "__version__", "installed") if cripser else "not installed"
    print(f"gudhi {gudhi.__version__}, cripser {version}")
    head = f"{'grid':>10} {'field':>9} {'minima':>7} {'distland numbers':>17} {'gudhi 0-dim':>12} " \
           f"{'cripser 0-dim':>14} {'numbers/gudhi':>14} {'equal':>6}"
    print(head)
    rng = np.random.default_rng(0)
    for shape in [(51, 51), (21, 21, 21), (201, 201)]:
        for name, v in (("random", rng.random(shape)), ("rastrigin", rastrigin(shape))):
            axes = [np.linspace(-1, 1, n) for n in shape]
            t_num, _ = best(lambda: T.topology_numbers(v, axes), args.repeat)
            mine = sort_pairs(T.merge_tree(v).diagram())
            t_g, g = best(lambda: T.persistence_diagram(v), args.repeat)
            equal = np.array_equal(mine, sort_pairs(g))
            t_c = float("nan")
            if cripser is not None:
                t_c, c = best(lambda: cripser.computePH(v, maxdim=0), args.repeat)
                equal = equal and np.array_equal(mine, sort_pairs(c[c[:, 0] == 0][:, 1:3]))
            grid = "×".join(map(str, shape))
            print(f"{grid:>10} {name:>9} {len(mine):>7} {t_num * 1e3:>14.1f} ms {t_g * 1e3:>9.1f} ms "
                  f"{t_c * 1e3:>11.1f} ms {t_num / t_g:>13.1f}x {str(equal):>6}")


if __name__ == "__main__":
    main()
