"""Issue 14: every fast path gives the reference's result bit for bit (searchsorted codes, the levels'
gather), for every scheme and every bit width it takes, in training (with the per-step re-fit) and in eval."""
import copy
import os

import numpy as np
import pytest
import torch

import dnncompress
from dnncompress.models import build_model
from dnncompress.quant import fastcode, make_quantizer
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


def test_ternary_fast_path_keeps_the_straight_through_gradient(monkeypatch):
    from dnncompress.quant import fastcode

    monkeypatch.setattr(fastcode, "USE_COMPILED", False)  # torch's closed form (the compiled one: test_compiled_closed_form_training_step)
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
    """numba's kernels write and read the very bitstream the numpy kernels do, tails included."""
    import numpy as np

    from dnncompress.pack import bitpack

    if bitpack.compiled(bitpack.COMPILED_FROM) is None:
        pytest.skip("numba not installed: pip install 'dnncompress[fast]'")
    for n in (bitpack.COMPILED_FROM, bitpack.COMPILED_FROM + 13, 8 * 8192 * 3 + 7):  # whole and partial groups and blocks
        codes = np.random.default_rng(bits + n).integers(0, 1 << bits, n).astype(np.uint8)
        fast = bitpack.pack(codes, bits)
        fast_back = bitpack.unpack(fast, bits, n)
        with monkeypatch.context() as m:
            m.setattr(bitpack, "USE_COMPILED", False)  # the numpy reference
            slow = bitpack.pack(codes, bits)
            slow_back = bitpack.unpack(slow, bits, n)
        assert np.array_equal(fast, slow) and np.array_equal(fast_back, codes) and np.array_equal(slow_back, codes), n


needs_numba = pytest.mark.skipif(__import__("importlib").util.find_spec("numba") is None
                                 or __import__("os").environ.get("DNNCOMPRESS_NO_NUMBA") == "1",
                                 reason="numba not installed (pip install 'dnncompress[fast]') or turned off (DNNCOMPRESS_NO_NUMBA=1)")


@needs_numba
@pytest.mark.parametrize("t, per_row, spacing", [(1, True, "random"), (2, False, "random"), (3, True, "random"), (3, False, "random"),
                                                 (7, True, "random"), (15, False, "near-duplicate"), (15, True, "random"),
                                                 (63, False, "random"), (255, False, "uniform"), (31, True, "random")])
def test_compiled_codes_are_searchsorted(t, per_row, spacing):
    """The compiled counts (3 comparisons, passes, grid) give searchsorted's codes at the thresholds,
    beside them, at ±0 and far out, for per-row and shared tables."""
    from dnncompress.quant import fastcode

    g = torch.Generator().manual_seed(t)
    rows = 48 if per_row else 1
    th = torch.sort(torch.randn(rows, t, generator=g) * 0.05, dim=1).values
    if spacing == "uniform":
        th = torch.linspace(-1, 1, t).unsqueeze(0) * 0.05
    if spacing == "near-duplicate":
        th[:, 1] = th[:, 0].nextafter(torch.ones(rows))
    v = torch.cat([tricky_values(th[r], (fastcode.COMPILED_FROM * 2) // rows, r) for r in range(rows)])
    assert v.numel() >= fastcode.COMPILED_FROM and fastcode.compiled(v.numel(), v, th) is not None
    assert torch.equal(count_below(v, th), torch.searchsorted(th, v))


def _with_and_without_compiled(monkeypatch, fn):
    from dnncompress.pack import bitpack
    from dnncompress.quant import fastcode

    fast = fn()
    with monkeypatch.context() as m:
        m.setattr(fastcode, "USE_COMPILED", False)
        m.setattr(bitpack, "USE_COMPILED", False)
        slow = fn()
    return fast, slow


@needs_numba
@pytest.mark.parametrize("scheme, bits, options", SCHEMES, ids=str)
@pytest.mark.parametrize("pruned", [False, True])
def test_compiled_storage_equals_torch(scheme, bits, options, pruned, monkeypatch):
    """Large layers (the compiled kernels run): the same codes, fake-quantized weights and decoded storage
    as the torch paths, bit for bit; weights on the thresholds and at ±0 included."""
    g = torch.Generator().manual_seed(bits + 100)
    w = torch.randn(64, 1024, generator=g) * 0.05
    mask = (torch.rand(w.shape, generator=g) > 0.4) if pruned else None
    qz = make_quantizer(scheme, bits=bits, **options).fit(w * mask if pruned else w, mask)
    if isinstance(qz, ScalarQuantizer):  # put weights exactly on the thresholds, and -0.0
        th = qz.thresholds.expand(qz.levels.shape[0], -1) if qz.thresholds.shape[0] == 1 else qz.thresholds
        rows = w.reshape(th.shape[0], -1)
        rows[:, : th.shape[1]] = th
        rows[:, th.shape[1]] = -0.0
    wm = w * mask if pruned else w
    qz.eval()

    def run():
        st = qz.storage(wm, mask)
        return st.codes.clone(), qz(wm, mask).detach(), qz.decode_storage(st.codes, tuple(w.shape), mask)

    (fc, fq, fd), (sc, sq, sd) = _with_and_without_compiled(monkeypatch, run)
    assert torch.equal(fc, sc) and torch.equal(fq, sq) and torch.equal(fd, sd), (scheme, bits, options)
    assert torch.equal(fd, fq)


@needs_numba
def test_compiled_decode_refuses_bad_codes():
    from dnncompress.quant import fastcode

    levels = torch.randn(8, 4)
    codes = torch.randint(0, 4, (8, fastcode.COMPILED_FROM // 8), dtype=torch.uint8)
    assert torch.equal(fastcode.gather_levels(levels, codes), torch.gather(levels, 1, codes.long()))
    codes[3, 5] = 4
    with pytest.raises(ValueError, match="out of range"):
        fastcode.gather_levels(levels, codes)
    keep = torch.rand(8, fastcode.COMPILED_FROM // 8) > 0.5
    kept = torch.randint(0, 4, (int(keep.sum()),), dtype=torch.uint8)
    dense = fastcode.scatter_levels(levels, kept, keep)
    want = torch.zeros(keep.shape)
    want[keep] = levels[torch.arange(8).unsqueeze(1).expand_as(keep)[keep], kept.long()]
    assert torch.equal(dense, want)
    with pytest.raises(ValueError, match="count"):
        fastcode.scatter_levels(levels, kept[:-1], keep)
    kept[0] = 9
    with pytest.raises(ValueError, match="out of range"):
        fastcode.scatter_levels(levels, kept, keep)


@needs_numba
@pytest.mark.parametrize("pruned", [False, True])
@pytest.mark.parametrize("scheme, options", [("fourval", {}), ("ternary", {"rule": "twn"}), ("ternary", {"rule": "exact"}),
                                             ("asym-ternary", {}), ("asym-quaternary", {})], ids=str)
def test_compiled_closed_form_training_step(scheme, options, pruned, monkeypatch):
    """The compiled QAT forward of a four-value, ternary or asymmetric layer: its update matches torch's within
    float32 rounding, its output is exactly what the stored table decodes to, and the gradient passes straight."""
    from dnncompress.quant import fastcode

    g = torch.Generator().manual_seed(7)
    w = torch.randn(64, 1024, generator=g) * 0.05
    mask = (torch.rand(w.shape, generator=g) > 0.5) if pruned else None
    wm = (w * mask if pruned else w).requires_grad_()
    qz = make_quantizer(scheme, **options).fit(wm.detach(), mask)
    qz.levels.mul_(1.2)  # a stale table, as after an optimizer step: the update must move it
    qz.thresholds.mul_(1.2)
    qz.train()
    fast_qz, slow_qz = copy.deepcopy(qz), copy.deepcopy(qz)
    got = fast_qz(wm, mask)
    with monkeypatch.context() as m:
        m.setattr(fastcode, "USE_COMPILED", False)
        want = slow_qz(wm, mask).detach()
    assert not torch.equal(fast_qz.levels, qz.levels)
    assert torch.allclose(fast_qz.levels, slow_qz.levels, rtol=1e-6, atol=0)
    _, decoded = reference(fast_qz, wm.detach(), mask, monkeypatch)
    assert torch.equal(got.detach(), decoded)
    steps_fast = torch.round(got.detach() / fast_qz.levels[:, 2:3])  # ±1, ±2 (0 where pruned)
    steps_slow = torch.round(want / slow_qz.levels[:, 2:3])
    assert float((steps_fast != steps_slow).float().mean()) < 1e-3  # only weights within rounding of the moved threshold
    got.sum().backward()
    assert torch.equal(wm.grad, torch.ones_like(w))


@needs_numba
def test_compiled_huffman_decode_equals_numpy_and_refuses_what_numpy_refuses(monkeypatch):
    """The compiled block walk decodes what the numpy walk decodes, and every corruption the numpy walk
    refuses (flipped payload bytes, a cut payload, a moved block offset) is refused too."""
    import numpy as np

    from dnncompress.pack import bitpack, huffman

    rng = np.random.default_rng(3)
    n = bitpack.COMPILED_FROM + 4096 * 3 + 77  # several blocks and a partial last one
    p = 0.5 ** np.arange(1, 17)
    symbols = rng.choice(16, n, p=p / p.sum())
    lengths, offsets, payload = huffman.encode(symbols, 16)

    def both(lengths, offsets, payload):
        out = []
        for use in (True, False):
            with monkeypatch.context() as m:
                m.setattr(bitpack, "USE_COMPILED", use)
                try:
                    out.append(huffman.decode(lengths, offsets, payload, n))
                except ValueError:
                    out.append(None)
        return out

    fast, slow = both(lengths, offsets, payload)
    assert np.array_equal(fast, symbols) and np.array_equal(slow, symbols)
    cases = []
    for at in rng.integers(0, payload.size - 3, 12):
        bad = payload.copy()
        bad[at] ^= 0xFF
        cases.append((lengths, offsets, bad))
    cases.append((lengths, offsets, payload[: payload.size // 2]))
    moved = offsets.copy()
    moved[2] += 1
    cases.append((lengths, moved, payload))
    for case in cases:
        fast, slow = both(*case)
        assert (fast is None) == (slow is None)
        if fast is not None:
            assert np.array_equal(fast, slow)
    assert sum(both(*c)[0] is None for c in cases) >= 2  # the cut and the moved offset at least


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("pruned", [False, True])
def test_dynamic_codebook_lookup_gives_torch_gather_gradients(pruned, bits):
    """The one-node forward of a trained table: the same values as gather, the weight's gradient straight
    through, and per value the summed gradient of the kept weights coded to it (gather's backward)."""
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(300, 200, generator=g) * 0.05).requires_grad_()
    mask = (torch.rand(w.shape, generator=g) > 0.4) if pruned else None
    qz = make_quantizer("codebook", bits=bits, mode="dynamic", zero=False).fit(w.detach(), mask)
    qz.train()
    up = torch.randn(w.shape, generator=g)
    out = qz(w, mask)
    (out * up).sum().backward()
    codes = qz.encode(w.detach())
    levels = qz.levels.detach().clone().requires_grad_()
    ref = torch.gather(levels.expand(w.shape[0], -1), 1, codes.reshape(w.shape[0], -1)).reshape(w.shape)
    ref = ref * mask if pruned else ref
    assert torch.equal(out.detach(), ref.detach())
    (ref * up).sum().backward()
    assert torch.equal(w.grad, up)
    assert torch.allclose(qz.levels.grad, levels.grad, rtol=1e-5, atol=1e-5)


@needs_numba
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [100_003, 65_536 * 4 + 3, 4_096])
def test_decoding_still_packed_codes_equals_unpack_then_gather(bits, n):
    """gather_packed reads the codes straight from bitpack's bytes: the same floats as unpacking them and
    gathering, for the widths it takes (2, 4, 8 bits: whole codes per byte; the others say no), lengths that
    end inside a byte; a code beyond the table is refused."""
    import numpy as np

    from dnncompress.pack import bitpack
    from dnncompress.quant import fastcode

    g = torch.Generator().manual_seed(bits * 100 + n % 97)
    width = 1 << bits
    codes = torch.randint(0, width, (n,), generator=g, dtype=torch.uint8).numpy()
    data = bitpack.pack(codes, bits).view(np.uint8)
    levels = torch.randn(1, width, generator=g)
    out = torch.full((n,), float("nan"))
    dense = fastcode.gather_packed(levels, data, bits, n, out)
    assert (dense is not None) == (bits in (2, 4, 8))
    if dense is None:
        return
    assert dense.data_ptr() == out.data_ptr()  # into the caller's tensor
    assert torch.equal(out, levels[0][torch.from_numpy(codes).long()])
    assert fastcode.gather_packed(torch.randn(2, width), data, bits, n, torch.empty(n)) is None  # a table per row: not this path
    if bits > 1:
        short = torch.randn(1, width - 1, generator=g)  # the last code has no value
        codes[n // 2] = width - 1
        with pytest.raises(ValueError, match="out of range"):
            fastcode.gather_packed(short, bitpack.pack(codes, bits).view(np.uint8), bits, n, torch.empty(n))
        codes[:] = 0
        codes[-1] = width - 1  # in the last, partial byte
        if n % (8 // bits):
            with pytest.raises(ValueError, match="out of range"):
                fastcode.gather_packed(short, bitpack.pack(codes, bits).view(np.uint8), bits, n, torch.empty(n))


@needs_numba
@pytest.mark.parametrize("rows, cols, per_channel", [(64, 1024, False), (64, 1024, True), (3, 5461, False), (7, 9001, True), (1, 4099, True)])
def test_fourval_packed_storage_is_the_codes_then_bitpack(rows, cols, per_channel):
    """storage_packed's words are storage()'s codes through bitpack.pack, bit for bit: weights on ±1.5α, at ±0 and
    far out, a last byte of 1–3 codes, and a table per row (rows of whole bytes; others take the plain path)."""
    from dnncompress.pack import bitpack

    g = torch.Generator().manual_seed(rows + cols)
    w = torch.randn(rows, cols, generator=g) * 0.05
    qz = make_quantizer("fourval", per_channel=per_channel).fit(w).eval()
    big = qz.thresholds[:, 2:3].expand(rows, 1)
    w[:, :6] = torch.cat([big, -big, big.nextafter(torch.zeros_like(big)), -big.nextafter(torch.zeros_like(big)),
                          torch.full_like(big, -0.0), torch.full_like(big, 1e30)], 1)
    st = qz.storage_packed(w)
    if per_channel and cols % 4 and rows > 1:
        assert st is None
        return
    ref = qz.storage(w)
    assert st.codes is None and st.units == ref.units == w.numel() and st.meta == ref.meta
    assert st.tables.keys() == ref.tables.keys() and all(torch.equal(st.tables[k], ref.tables[k]) for k in st.tables)
    assert np.array_equal(st.words, bitpack.pack(ref.codes.numpy(), 2))


@needs_numba
@pytest.mark.parametrize("scheme, options", [("fourval", {}), ("fourval", {"per_channel": True})], ids=str)
def test_a_scheme_packing_its_own_codes_writes_the_same_file(scheme, options, tmp_path, monkeypatch):
    """save_packed through storage_packed writes the very bytes it writes through storage() and bitpack."""
    from dnncompress.pack import save_packed
    from dnncompress.quant.base import ScalarQuantizer

    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(300, 80), torch.nn.ReLU(), torch.nn.Linear(80, 10))
    dnncompress.quantize(model, scheme=scheme, **options)
    packed = []
    original = ScalarQuantizer.storage_packed
    with monkeypatch.context() as m:
        m.setattr(ScalarQuantizer, "storage_packed", lambda self, w: packed.append(original(self, w)) or packed[-1])
        save_packed(model, tmp_path / "fast.dnc")
    assert len(packed) == 2 and packed[0] is not None  # the first layer (24,000 weights) took the packed path
    with monkeypatch.context() as m:
        m.setattr(ScalarQuantizer, "storage_packed", lambda self, w: None)
        save_packed(model, tmp_path / "slow.dnc")
    assert (tmp_path / "fast.dnc").read_bytes() == (tmp_path / "slow.dnc").read_bytes()


@needs_numba
@pytest.mark.parametrize("scheme, bits, options", [s for s in SCHEMES if s[0] != "pq"]
                         + [("codebook", 5, {"group_size": 64}), ("fourval", 2, {"per_channel": True}), ("ternary", 2, {"per_channel": True})], ids=str)
def test_packed_file_decodes_still_packed_codes_bit_for_bit(scheme, bits, options, tmp_path, monkeypatch):
    """A layer read from a .dnc through the still-packed path equals the path that unpacks the codes first, into
    new tensors and into a model's own, and the quantized model's forward."""
    from dnncompress.pack import checkpoint_from_packed, save_packed
    from dnncompress.quant.base import Quantizer
    from dnncompress.quantize_model import quantize

    torch.manual_seed(bits)
    model = torch.nn.Sequential(torch.nn.Linear(301, 67), torch.nn.ReLU(), torch.nn.Linear(67, 10))
    quantize(model, scheme=scheme, bits=bits, **options)
    path = tmp_path / "m.dnc"
    save_packed(model, path)
    fast = checkpoint_from_packed(path)["state_dict"]
    with monkeypatch.context() as m:
        m.setattr(Quantizer, "decode_packed", lambda self, *a, **k: None)
        m.setattr(ScalarQuantizer, "decode_packed", lambda self, *a, **k: None)
        slow = checkpoint_from_packed(path)["state_dict"]
    assert fast.keys() == slow.keys() and all(torch.equal(fast[k], slow[k]) for k in fast)
    model.eval()
    assert torch.equal(fast["0.weight"], model[0].weight.detach())
    from dnncompress import load_packed

    target = torch.nn.Sequential(torch.nn.Linear(301, 67), torch.nn.ReLU(), torch.nn.Linear(67, 10))
    own = target[0].weight.data_ptr()
    load_packed(path, model=target)  # decoded into the model's own tensor
    assert target[0].weight.data_ptr() == own and torch.equal(target[0].weight.detach(), fast["0.weight"])


@needs_numba
@pytest.mark.parametrize("units, d, k", [(20_000, 4, 256), (3_000, 9, 64), (700, 25, 16)])
def test_compiled_nearest_centroid_is_a_nearest_centroid(units, d, k):
    """pq's compiled assignment against torch's: the same centroid for every unit, or one exactly as near (the
    two sum the scores in another order); duplicated centroids go to the lowest index, as torch's argmin does."""
    from dnncompress.quant import fastcode, pq

    g = torch.Generator().manual_seed(units + d)
    x = torch.randn(units, d, generator=g)
    c = torch.randn(k, d, generator=g)
    c[k // 2] = c[1]  # a tie everywhere: index 1 must win
    valid = torch.ones(units, d, dtype=torch.bool)
    fast = fastcode.nearest_centroids(x, c)
    assert fast is not None and fast.dtype == torch.long
    assert not bool((fast == k // 2).any())
    fastcode.USE_COMPILED = False
    try:
        slow = pq.assign(x, valid, c)
    finally:
        fastcode.USE_COMPILED = True
    dist = ((x.double()[:, None, :] - c.double()[None]) ** 2).sum(-1)
    nearest = dist.min(1).values
    assert torch.allclose(dist.gather(1, fast[:, None]).squeeze(1), nearest, rtol=0, atol=1e-5)
    differ = fast != slow
    assert int(differ.sum()) <= units // 1000  # only near-ties may part
    assert torch.equal(pq.assign(x, valid, c), fast)  # assign takes the compiled path when every coordinate is kept


@needs_numba
@pytest.mark.parametrize("d", [1, 3, 4, 5, 8, 9, 25])
def test_compiled_nearest_centroid_sums_one_coordinate_at_a_time(d):
    """The kernel adds four coordinates a pass; its scores must still be c_norm, then + (−2·c_j)·x_j for j = 0, 1, …
    rounded to float32 after each step, so its codes equal that sum's argmin (lowest index on a tie) bit for bit,
    whatever d's remainder by four."""
    from dnncompress.quant import fastcode

    g = torch.Generator().manual_seed(d)
    x = torch.randn(700, d, generator=g) * 0.05
    base = torch.randn(8, d, generator=g) * 0.05  # clusters of centroids a few ulps apart: rounding picks among them
    c = (base.repeat_interleave(5, 0) * (1 + 1e-6 * torch.randn(40, d, generator=g)))[:37]
    c[6], c[4] = c[5], c[3]  # exact ties inside one group of four centroids a pass and across two: the lower index wins
    xn, cn = x.numpy(), c.numpy()
    score = np.broadcast_to((c * c).sum(1).numpy(), (700, 37)).astype(np.float32)  # |c|² as fastcode passes it
    for j in range(d):
        score = score + np.float32(-2.0) * cn[None, :, j] * xn[:, j : j + 1]
    fast = fastcode.nearest_centroids(x, c)
    assert fast is not None
    assert np.array_equal(fast.numpy(), score.argmin(1))


@needs_numba
@pytest.mark.parametrize("d", [4, 9])
def test_compiled_unit_gather_and_sums_equal_torch(d):
    """pq's compiled forward gather (times the mask) and centroid sums, with byte or int64 codes, against index_select
    and index_add: the same values bit for bit, signs of masked zeros included; a code beyond the table is refused."""
    g = torch.Generator().manual_seed(d)
    n = fastcode.UNITS_COMPILED_FROM + 5
    table = torch.randn(200, d, generator=g)
    codes = torch.randint(0, 200, (n,), generator=g)
    mask = torch.rand(n * d, generator=g) > 0.4
    grad = torch.randn(n, d, generator=g)
    want = table.index_select(0, codes) * mask.reshape(n, d).view(torch.uint8)
    sums = torch.zeros(200, d, dtype=torch.float64).index_add_(0, codes, grad.double()).float()
    for c in (codes, codes.to(torch.uint8)):
        got = fastcode.gather_units(table, c, mask)
        assert got is not None and torch.equal(got, want) and torch.equal(got.signbit(), want.signbit())
        assert torch.equal(fastcode.gather_units(table, c, None), table.index_select(0, codes))
        assert torch.allclose(fastcode.unit_sums(c, grad, 200), sums, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        fastcode.gather_units(table[:100], codes, None)
    assert fastcode.gather_units(table, codes[: fastcode.UNITS_COMPILED_FROM - 1], None) is None  # few units: torch's gather


@pytest.mark.parametrize("mode", ["static", "dynamic"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_codebook_forward_follows_its_values_however_they_change(bits, mode):
    """A codebook's one-pass forward keeps the order check and thresholds of its last table while the values are
    the same (static), or makes them in the pass (a trained table); values changed in place through .data (which
    leaves the version counter alone), or out of order, must still give decode(encode(w))."""
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(64, 300, generator=g) * 0.05
    qz = make_quantizer("codebook", bits=bits, mode=mode).fit(w)
    qz.train()

    def reference():
        with torch.no_grad():
            return qz.decode(qz.encode_bytes(w), w.shape)

    assert torch.equal(qz(w).detach(), reference())
    qz.levels.data[0, 1] = (qz.levels[0, 0] + qz.levels[0, 1]) / 2  # still ascending, new thresholds
    assert torch.equal(qz(w).detach(), reference())
    qz.levels.data[0, 0], qz.levels.data[0, -1] = qz.levels[0, -1].item(), qz.levels[0, 0].item()  # out of order
    assert torch.equal(qz(w).detach(), reference())


def test_codebook_table_memo_survives_a_move_of_the_module():
    """The kept table was made for the values where they were: after .double() (or .to(device)) the forward
    compares like with like, and gives what decode(encode(w)) gives there."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(32, 200, generator=g) * 0.05
    qz = make_quantizer("codebook", bits=4).fit(w)
    qz.train()
    qz(w)
    qz.double()
    wd = w.double()
    assert torch.equal(qz(wd), qz.decode(qz.encode_bytes(wd), wd.shape).to(wd.dtype))


def test_one_off_work_earns_numba_before_it_is_loaded(monkeypatch):
    """Packing, unpacking and reports run in numpy/torch until ONE_OFF_BUDGET values of such work have run, then
    load the kernels; a QAT step's kernel (per_step) or kernels already loaded are used at once. Loading numba
    costs about half a second cold, more than a whole small one-off job."""
    from dnncompress import compiled

    if compiled._import("numba") is None or os.environ.get("DNNCOMPRESS_NO_NUMBA") == "1":
        pytest.skip("numba not installed or turned off")
    monkeypatch.setattr(compiled, "ONE_OFF_BUDGET", 1000)
    monkeypatch.setattr(compiled._Budget, "spent", 0)
    monkeypatch.setattr(compiled._Budget, "loaded", False)
    name = "dnncompress.pack._bitpack_numba"
    assert compiled.kernels(name, 600) is None  # 600 of 1,000 spent without the kernels
    assert compiled._Budget.spent == 600 and not compiled._Budget.loaded
    assert compiled.kernels(name, 600) is not None  # the budget is spent: load them
    assert compiled._Budget.loaded
    monkeypatch.setattr(compiled._Budget, "spent", 0)
    assert compiled.kernels(name, 10) is not None  # loaded already: no reason to wait
    monkeypatch.setattr(compiled._Budget, "loaded", False)
    assert compiled.kernels(name, 10_000) is not None  # one job larger than the budget pays for the load alone
    monkeypatch.setattr(compiled._Budget, "loaded", False)
    monkeypatch.setattr(compiled._Budget, "spent", 0)
    monkeypatch.setattr(compiled, "ONE_OFF_BUDGET", 1 << 20)
    assert fastcode.compiled(1 << 12, torch.zeros(1)) is None  # a one-off job of 4,096 values: not yet
    assert fastcode.compiled(1 << 12, torch.zeros(1), least=fastcode.QAT_COMPILED_FROM, per_step=True) is not None


def test_a_first_unpack_gives_the_same_tensors_with_or_without_the_kernels(tmp_path, monkeypatch):
    """What the budget changes is only which path decodes: the bytes decoded agree bit for bit."""
    from dnncompress import compiled
    from dnncompress.pack import checkpoint_from_packed, save_packed

    torch.manual_seed(0)
    model = build_model("lenet5")
    dnncompress.quantize(model, scheme="codebook", bits=3)
    path = tmp_path / "m.dnc"
    save_packed(model, path, arch="lenet5")
    monkeypatch.setattr(compiled._Budget, "loaded", False)
    monkeypatch.setattr(compiled._Budget, "spent", 0)
    monkeypatch.setattr(compiled, "ONE_OFF_BUDGET", 1 << 40)  # never earned: numpy/torch all the way
    slow = checkpoint_from_packed(path)["state_dict"]
    assert not compiled._Budget.loaded
    monkeypatch.setattr(compiled, "ONE_OFF_BUDGET", 0)
    fast = checkpoint_from_packed(path)["state_dict"]
    assert compiled._Budget.loaded or compiled._import("numba") is None
    assert all(torch.equal(slow[k], fast[k]) for k in slow)


@pytest.mark.parametrize("rows,cols", [(1, 50_000), (7, 9_000), (3, 5)])
def test_the_torch_gather_in_chunks_is_the_plain_lookup(rows, cols, monkeypatch):
    """gather_levels' torch path works in chunks of GATHER_CHUNK values (a whole layer's int64 index stayed resident):
    the same values as one lookup, into a new tensor or the caller's, for one table or one per row."""
    monkeypatch.setattr(fastcode, "USE_COMPILED", False)
    g = torch.Generator().manual_seed(rows)
    for table_rows in {1, rows}:
        levels = torch.randn(table_rows, 16, generator=g)
        codes = torch.randint(0, 16, (rows, cols), generator=g, dtype=torch.uint8)
        want = levels.expand(rows, -1).gather(1, codes.long())
        assert torch.equal(fastcode.gather_levels(levels, codes), want)
        out = torch.empty(rows, cols)
        assert fastcode.gather_levels(levels, codes, out) is out and torch.equal(out, want)
