"""Issue 14: every fast path gives the reference's result bit for bit (searchsorted codes, the levels'
gather), for every scheme and every bit width it takes, in training (with the per-step re-fit) and in eval."""
import copy

import pytest
import torch

from dnncompress.quant import make_quantizer
from dnncompress.quant.base import ScalarQuantizer
from dnncompress.quant.fastcode import MIN_VALUES, count_below


def tricky_values(th: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Random weights plus every threshold, its float neighbours on both sides, and far-out values."""
    g = torch.Generator().manual_seed(seed)
    spread = float(th.abs().max()) if th.numel() else 1.0
    v = torch.randn(n, generator=g) * spread
    edges = torch.cat([th, th.nextafter(torch.full_like(th, float("inf"))), th.nextafter(torch.full_like(th, -float("inf"))),
                       torch.tensor([0.0, -0.0, 1e30, -1e30, 1e-30])])
    return torch.cat([edges, v]).unsqueeze(0)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 8, 16, 33, 64, 128, 256])
@pytest.mark.parametrize("spacing", ["random", "uniform", "near-duplicate"])
def test_count_below_is_searchsorted(k, spacing):
    g = torch.Generator().manual_seed(k)
    if spacing == "uniform":
        levels = torch.linspace(-1, 1, k) * 0.05
    else:
        levels = torch.sort(torch.randn(k, generator=g) * 0.05).values
        if spacing == "near-duplicate" and k > 2:
            levels[1] = levels[0].nextafter(torch.tensor(1.0))  # a gap no grid can resolve: the search runs
    th = ((levels[1:] + levels[:-1]) / 2).unsqueeze(0)
    v = tricky_values(th[0], 2 * MIN_VALUES, k)
    assert torch.equal(count_below(v, th), torch.searchsorted(th, v))


def test_count_below_per_row_tables_and_small_inputs():
    g = torch.Generator().manual_seed(1)
    th = torch.sort(torch.randn(6, 3, generator=g), dim=1).values  # one 2-bit table per row
    v = torch.randn(6, 5000, generator=g)
    v[:, :3] = th
    assert torch.equal(count_below(v, th), torch.searchsorted(th, v))
    th1 = torch.sort(torch.randn(1, 15, generator=g), dim=1).values
    small = torch.randn(1, 10, generator=g)  # too few values for the grid: the plain search
    assert torch.equal(count_below(small, th1), torch.searchsorted(th1, small))


SCHEMES = ([("fourval", 2, {}), ("ternary", 2, {"rule": "twn"}), ("ternary", 2, {"rule": "exact"}),
            ("asym-ternary", 2, {}), ("asym-quaternary", 2, {})]
           + [("codebook", b, {"mode": m}) for b in range(2, 9) for m in ("static", "dynamic")]
           + [("codebook", b, {"per_channel": True}) for b in (2, 4, 8)]
           + [("pq", b, {}) for b in range(1, 9)])


def reference(qz, w, mask, monkeypatch):
    """(codes, decoded weights) by the scheme's own encode with torch.searchsorted in place of the fast
    count, and decode(codes) in place of any closed-form fake-quantize: the slow, obvious way."""
    import dnncompress.quant.base as base
    import dnncompress.quant.codebook as codebook

    def search(values, thresholds):
        return torch.searchsorted(thresholds.contiguous(), values.contiguous())

    with monkeypatch.context() as m:
        m.setattr(base, "count_below", search)
        m.setattr(codebook, "count_below", search)
        codes = qz.encode(w)
    q = qz.decode(codes, w.shape).detach()
    return codes, (q * mask if mask is not None else q)


@pytest.mark.parametrize("scheme, bits, options", SCHEMES, ids=str)
@pytest.mark.parametrize("pruned", [False, True])
def test_fast_fake_quantize_equals_the_reference(scheme, bits, options, pruned, monkeypatch):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(40, 160, generator=g) * 0.05  # 6,400 weights: the grid path runs
    mask = (torch.rand(w.shape, generator=g) > 0.5) if pruned else None
    wm = w * mask if pruned else w
    qz = make_quantizer(scheme, bits=bits, **options).fit(wm, mask)
    for training in (True, False):  # training: the step's re-fit first, then the codes from the new table
        qz.train(training)
        for _ in range(2):
            got = qz(wm, mask).detach()
            if isinstance(qz, ScalarQuantizer):
                codes, want = reference(qz, wm, mask, monkeypatch)
                assert torch.equal(got, want), (scheme, bits, options, training)
                assert torch.equal(qz.encode(wm), codes)
            if not training and isinstance(qz, ScalarQuantizer):  # weights exactly on a threshold, and beside it
                th = qz.thresholds.expand(qz.levels.shape[0] if qz.thresholds.shape[0] == 1 else -1, -1)
                rows = wm.clone().reshape(th.shape[0], -1)
                t = min(th.shape[1], rows.shape[1] // 2)
                th = th[:, :t]
                rows[:, :t], rows[:, t:2 * t] = th, th.nextafter(torch.full_like(th, -1.0))
                edge_mask = None if mask is None else mask.clone().reshape(rows.shape)
                if edge_mask is not None:
                    edge_mask[:, :2 * t] = True
                    edge_mask = edge_mask.reshape(w.shape)
                edge = rows.reshape(w.shape) * (edge_mask if edge_mask is not None else 1)
                codes, want = reference(qz, edge, edge_mask, monkeypatch)
                assert torch.equal(qz(edge, edge_mask).detach(), want) and torch.equal(qz.encode(edge), codes)
            if not training:  # every scheme: what the forward gives is what the packed codes decode to
                stored = qz.storage(wm, mask)
                assert torch.equal(got, qz.decode_storage(stored.codes, tuple(w.shape), mask).to(got.dtype)), (scheme, bits, options)


def test_ternary_fast_path_keeps_the_straight_through_gradient():
    w = (torch.randn(30, 200) * 0.05).requires_grad_()
    qz = make_quantizer("ternary", rule="exact").fit(w.detach())
    qz.train()
    reference_qz = copy.deepcopy(qz)
    out = qz(w)
    out.backward(torch.ones_like(out))
    assert torch.equal(w.grad, torch.ones_like(w))  # STE: the gradient passes unchanged
    assert torch.equal(out.detach(), ScalarQuantizer.fake_quantize(reference_qz, w.detach()).detach())  # the generic path


@pytest.mark.parametrize("bits", range(1, 9))
def test_compiled_bit_packing_equals_numpy(bits, monkeypatch):
    """numba's kernels (3/5/6/7 bits) write and read the very bitstream the numpy kernels do."""
    import numpy as np

    from dnncompress.pack import bitpack

    if bits in (3, 5, 6, 7) and bitpack.compiled() is None:
        pytest.skip("numba not installed: pip install 'dnncompress[fast]'")
    n = bitpack.COMPILED_FROM + 13  # not a multiple of 8: the last group is padded
    codes = np.random.default_rng(bits).integers(0, 1 << bits, n).astype(np.uint8)
    fast = bitpack.pack(codes, bits)
    fast_back = bitpack.unpack(fast, bits, n)
    monkeypatch.setattr(bitpack, "USE_COMPILED", False)  # the numpy reference
    slow = bitpack.pack(codes, bits)
    assert np.array_equal(fast, slow) and np.array_equal(fast_back, codes) and np.array_equal(bitpack.unpack(slow, bits, n), codes)
