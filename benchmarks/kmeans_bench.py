"""1-D k-means quality and speed (issue 11): dnncompress's codebook fit against the optimal SSE
(`kmeans1d`) and scikit-learn's time, at k = 4..256 on Gaussian, Laplace and heavy-tailed data.
Targets: within 0.1 % of the optimal SSE, in at most 1/5 of scikit-learn's time. Writes
docs/results/quant_5_kmeans1d.md.

    pip install kmeans1d   (the bench extra)
    python benchmarks/kmeans_bench.py [--n 100000]
"""
from __future__ import annotations

import argparse
import time

import torch
from common import table, write_section
from sklearn.cluster import KMeans

from dnncompress.quant.kmeans import kmeans_1d, sse

CMD = "python benchmarks/kmeans_bench.py"
KS = (4, 16, 32, 64, 128, 256)


def data(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # the chi-square draw below uses the global generator
    u = torch.rand(n, generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return {"Gaussian": torch.randn(n, generator=g),
            "Laplace": (-torch.sign(u - 0.5) * torch.log1p(-2 * (u - 0.5).abs())).float(),
            "Student-t (2 dof, heavy tails)": (torch.randn(n, generator=g) / torch.sqrt(torch.distributions.Chi2(2.0).sample((n,)) / 2)).float()}


def main():
    import kmeans1d

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows, worst_gap, worst_time = [], 0.0, 0.0
    t = time.perf_counter()
    kmeans_1d(torch.randn(1000), 64)  # once per process: numba's import and its cached compiled code
    warmup = time.perf_counter() - t

    def best_of(fn, repeat=3):
        """The fastest of a few runs (the machine's other load only ever slows a run down)."""
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        return out, min(times)

    for name, x in data(args.n).items():
        xs = x.double().numpy()
        for k in KS:
            ours, t_ours = best_of(lambda: kmeans_1d(x, k))
            t = time.perf_counter()
            _, opt = kmeans1d.cluster(xs, k)
            t_opt = time.perf_counter() - t
            _, t_sk = best_of(lambda: KMeans(k, n_init=1, random_state=0).fit(xs.reshape(-1, 1)))
            gap = 100 * (sse(x, ours) / sse(x, torch.tensor(opt)) - 1)
            worst_gap, worst_time = max(worst_gap, gap), max(worst_time, t_ours / t_sk)
            rows.append([name, k, f"{gap:.4f} %", f"{t_ours:.3f}", f"{t_opt:.3f}", f"{t_sk:.3f}", f"1/{t_sk / t_ours:.1f}"])
            print(rows[-1], flush=True)
    body = (f"{args.n:,} values per distribution (seed 0). 'gap' = our SSE / the optimal SSE (`kmeans1d`, exact) − 1. "
            "Ours: the exact dynamic program on ≤ ~16·k weighted bins (equal-count, equal-width in asinh(x/IQR), the extreme "
            "values alone; compiled with numba when installed), then Lloyd on every value (numpy: sorted values and "
            "prefix sums, so a step costs k binary searches, not a pass over n). The values are sorted by numpy "
            "(3× faster than torch on float32 here; at k ≤ 32 the sort is most of our time). scikit-learn: "
            "`KMeans(k, n_init=1)`. Times: the best of 3 runs for ours and scikit-learn's, one run for kmeans1d. "
            f"Once per process the first call also loads numba and its cached compiled code: {warmup:.2f} s here "
            "(not in the table).\n\n")
    body += table(["data", "k", "gap to optimal", "ours s", "kmeans1d s", "scikit-learn s", "ours / scikit-learn"], rows)
    body += (f"\n\nWorst gap {worst_gap:.4f} % (target ≤ 0.1 %: {'met' if worst_gap <= 0.1 else 'MISSED'}); worst time "
             f"{worst_time:.2f}× scikit-learn's (target ≤ 0.20×: {'met' if worst_time <= 0.2 else 'MISSED'}). Before this change "
             "(Lloyd from quantiles, 100 iterations) the gap was 12 % at k = 32 and 445 % at k = 256 on Gaussian data; "
             "before the numpy sort and Lloyd (2026-12-02) the worst time was 0.33× scikit-learn's, at k = 16.")
    write_section("quant_5_kmeans1d", "1-D k-means: gap to the optimal SSE and time (issue 11)", body, CMD)


if __name__ == "__main__":
    main()
