"""The 1-D k-means dynamic program of `kmeans.optimal_weighted`, compiled by numba (imported only when
numba is installed; `kmeans.py` falls back to numpy otherwise). Same recurrence, same tie rule (the
first best split), so the same answer as the numpy version."""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _layer(prev, out, best, W, S, Q, lo, hi, olo, ohi):  # pragma: no cover - compiled
    """out[i] = min_{l<i} prev[l] + cost(l, i) for i in [lo, hi], with best l in [olo, ohi] (monotone)."""
    stack = np.empty((256, 4), dtype=np.int64)
    stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = lo, hi, olo, ohi
    top = 1
    while top > 0:
        top -= 1
        lo, hi, olo, ohi = stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3]
        if lo > hi:
            continue
        mid = (lo + hi) // 2
        value, at = np.inf, olo
        for split in range(olo, min(ohi, mid - 1) + 1):
            s = S[mid] - S[split]
            v = prev[split] + ((Q[mid] - Q[split]) - s * s / (W[mid] - W[split]))
            if v < value:
                value, at = v, split
        out[mid], best[mid] = value, at
        stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = lo, mid - 1, olo, at
        stack[top + 1, 0], stack[top + 1, 1], stack[top + 1, 2], stack[top + 1, 3] = mid + 1, hi, at, ohi
        top += 2


@njit(cache=True)
def optimal(mu, w, k, shift):  # pragma: no cover - compiled
    """k optimal centroids of ascending points mu with weights w (k ≤ mu.size), centred on `shift`."""
    m = mu.size
    W, S, Q = np.zeros(m + 1), np.zeros(m + 1), np.zeros(m + 1)
    for i in range(m):
        c = mu[i] - shift  # centred: the prefix sums lose less to cancellation
        W[i + 1], S[i + 1], Q[i + 1] = W[i] + w[i], S[i] + w[i] * c, Q[i] + w[i] * c * c
    D = np.full(m + 1, np.inf)
    for i in range(1, m + 1):
        D[i] = Q[i] - S[i] * S[i] / W[i]
    splits = np.zeros((k + 1, m + 1), dtype=np.int64)
    for j in range(2, k + 1):
        nxt = np.full(m + 1, np.inf)
        _layer(D, nxt, splits[j], W, S, Q, j, m, j - 1, m - 1)
        D = nxt
    bounds = np.zeros(k + 1, dtype=np.int64)
    bounds[k] = m
    for j in range(k, 1, -1):
        bounds[j - 1] = splits[j, bounds[j]]
    out = np.empty(k)
    for j in range(k):
        a, b = bounds[j], bounds[j + 1]
        out[j] = (S[b] - S[a]) / (W[b] - W[a]) + shift
    return out
