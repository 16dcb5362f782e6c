"""The level-table contract of every scalar scheme, masks over every registered scheme, and exactness
of the sorted-prefix fits. (The storage contract of every scheme is tests/test_storage_contract.py.)"""
import pytest
import torch

from dnncompress.errors import UserError
from dnncompress.quant import SCHEMES, ScalarQuantizer, make_quantizer, quantizer_from_state

SCALAR = [s for s in SCHEMES.names() if issubclass(SCHEMES.get(s), ScalarQuantizer)]
CASES = [(s, {}) for s in SCALAR] + [
    ("ternary", {"rule": "exact"}),
    ("fourval", {"per_channel": True}),
    ("asym-quaternary", {"per_channel": True}),
    ("codebook", {"bits": 2}),
    ("codebook", {"bits": 3, "zero": True}),
    ("codebook", {"bits": 5, "mode": "dynamic"}),
    ("codebook", {"bits": 8, "init": "linear"}),
    ("codebook", {"bits": 4, "init": "pow2", "zero": True}),
    ("codebook", {"bits": 4, "per_channel": True}),
    ("codebook", {"bits": 3, "per_channel": True, "zero": True}),
    ("codebook", {"bits": 4, "group_size": 24}),
]


def _max_levels(q) -> int:
    return q.num_levels


@pytest.mark.parametrize("scheme,opts", CASES, ids=str)
def test_contract(scheme, opts):
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3, requires_grad=True)
    q = make_quantizer(scheme, **opts).fit(w.detach())
    codes = q.encode(w)
    assert codes.min() >= 0 and codes.max() < q.num_levels <= 2**q.bits
    wq = q(w)
    per_row = wq.detach().reshape(q.levels.shape[0], -1)
    assert max(torch.unique(r).numel() for r in per_row) <= _max_levels(q)
    assert torch.equal(q.decode(codes, w.shape), wq.detach())  # decode(encode(w)) == fake_quantize(w), bit for bit
    (wq * torch.randn_like(wq)).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0  # gradients reach the shadow weights (STE)
    q2 = quantizer_from_state(q.export_state())
    assert torch.equal(q2.decode(q2.encode(w), w.shape), wq.detach())  # state round-trips


def test_level_counts_of_the_fixed_schemes():
    w = torch.randn(1000)
    assert torch.unique(make_quantizer("fourval").fit(w)(w)).numel() == 4
    assert torch.unique(make_quantizer("ternary").fit(w)(w)).numel() == 3
    assert torch.unique(make_quantizer("asym-ternary").fit(w)(w)).numel() == 3


def test_masked_weights_stay_zero_and_do_not_shape_the_fit():
    torch.manual_seed(1)
    w = torch.randn(50, 40)
    mask = torch.rand_like(w) > 0.7
    for scheme in SCHEMES.names():
        q = make_quantizer(scheme).fit(w, mask).eval()
        w2 = torch.where(mask, w, torch.full_like(w, 100.0))  # huge pruned weights must not move the fit
        q2 = make_quantizer(scheme).fit(w2, mask).eval()
        assert torch.equal(q2(w2 * mask, mask), q(w * mask, mask)), scheme
        out = q(w2, mask)
        assert torch.all(out[~mask] == 0)


def _brute_error(w: torch.Tensor, level_fn, n_alpha: int = 4001) -> float:
    """Dense search over α with nearest-level assignment: the best any α on the grid can do."""
    w = w.double().flatten()
    top = max(float(w.abs().max()), 1e-12)
    alphas = torch.linspace(0, top, n_alpha, dtype=torch.float64)
    best = float("inf")
    for chunk in alphas.split(500):
        levels = level_fn(chunk.unsqueeze(1))  # (A, L)
        err = ((w.unsqueeze(0).unsqueeze(2) - levels.unsqueeze(1)) ** 2).min(2).values.sum(1)
        best = min(best, float(err.min()))
    return best


def _tensors():
    g = torch.Generator().manual_seed(3)
    return {
        "normal": torch.randn(300, generator=g),
        "uniform": torch.rand(257, generator=g) * 2 - 1,
        "heavy": torch.distributions.StudentT(1.5).sample((300,)),
        "tiny1": torch.tensor([0.7]),
        "tiny2": torch.tensor([-0.3, 1.1]),
        "tiny5": torch.randn(5, generator=g),
        "equal": torch.full((64,), 0.25),
        "zero": torch.zeros(32),
    }


@pytest.mark.parametrize("name", list(_tensors()))
def test_fourval_is_never_beaten_by_brute_force(name):
    w = _tensors()[name]
    q = make_quantizer("fourval").fit(w)
    ours = float(((q(w).double() - w.double()) ** 2).sum())
    brute = _brute_error(w, lambda a: torch.cat([-2 * a, -a, a, 2 * a], 1))
    assert ours <= brute + 1e-9 * max(1.0, brute)


@pytest.mark.parametrize("name", list(_tensors()))
def test_exact_ternary_is_never_beaten_by_brute_force(name):
    w = _tensors()[name]
    q = make_quantizer("ternary", rule="exact").fit(w)
    ours = float(((q(w).double() - w.double()) ** 2).sum())
    brute = _brute_error(w, lambda a: torch.cat([-a, torch.zeros_like(a), a], 1))
    assert ours <= brute + 1e-9 * max(1.0, brute)
    twn = make_quantizer("ternary", rule="twn").fit(w)
    assert ours <= float(((twn(w).double() - w.double()) ** 2).sum()) + 1e-9


@pytest.mark.parametrize("scheme,pair", [("asym-ternary", lambda a: torch.cat([torch.zeros_like(a), a], 1)),
                                          ("asym-quaternary", lambda a: torch.cat([a, 2 * a], 1))], ids=["ternary", "quaternary"])
@pytest.mark.parametrize("name", list(_tensors()) + ["with_zeros"])
def test_asym_is_never_beaten_by_brute_force(name, scheme, pair):
    """Each half is fitted exactly under the scheme's sign rule (w ≥ 0 takes a positive-half level, exact
    zeros included): no (αp, αn) on a dense grid does better with the same rule."""
    w = _tensors()["normal"].clone() if name == "with_zeros" else _tensors()[name]
    if name == "with_zeros":
        w[::4] = 0.0
    q = make_quantizer(scheme).fit(w)
    ours = float(((q(w).double() - w.double()) ** 2).sum())
    pos, neg = w[w >= 0], -w[w < 0]
    brute = (_brute_error(pos, pair) if pos.numel() else 0.0) + (_brute_error(neg, pair) if neg.numel() else 0.0)
    assert ours <= brute + 1e-9 * max(1.0, brute)
    assert torch.all(q(w)[w == 0] >= 0)  # an exact zero is encoded on the side it was fitted on


def test_fourval_gaussian_shape_matches_the_design_notes():
    w = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    q = make_quantizer("fourval").fit(w)
    alpha = float(q.levels[0, 2])
    assert 0.80 < alpha / float(w.abs().mean()) < 0.84
    assert 0.30 < float((q.encode(w) % 3 == 0).float().mean()) < 0.36  # codes 0 and 3 are ±2α
    rel = float(((q(w) - w) ** 2).sum() / (w**2).sum())
    tern = make_quantizer("ternary", rule="exact").fit(w)
    rel_t = float(((tern(w) - w) ** 2).sum() / (w**2).sum())
    assert rel < 0.17 and rel_t > 0.18  # ≈ 0.16 vs ≈ 0.19 in DESIGN §2


def test_fast_refine_tracks_the_exact_fit():
    torch.manual_seed(5)
    w = torch.randn(400, 300)
    q = make_quantizer("fourval").fit(w)
    w2 = w * 1.01 + 0.001 * torch.randn_like(w)  # weights drift a little between steps
    q.train()
    q(w2)
    exact = make_quantizer("fourval").fit(w2).levels
    assert torch.allclose(q.levels, exact, rtol=5e-3)  # one cheap step lands close
    for _ in range(5):
        q(w2)
    assert torch.allclose(q.levels, exact, rtol=1e-3)  # the alternating fixed point sits at (or next to) the exact fit
    w3 = w * 1.3  # a large jump converges over a few steps
    for _ in range(30):
        q(w3)
    assert torch.allclose(q.levels, make_quantizer("fourval").fit(w3).levels, rtol=1e-3)


@pytest.mark.parametrize(
    "scheme,opts,needle",
    [
        ("fourvla", {}, "did you mean 'fourval'"),
        ("codebook", {"bits": 9}, "2–8 bits"),
        ("codebook", {"bits": 1}, "2–8 bits"),
        ("fourval", {"bits": 3}, "takes 2 bits"),
        ("fourval", {"zero": True}, "no zero option"),
        ("codebook", {"per_channel": True, "mode": "dynamic"}, "per layer"),
        ("ternary", {"rule": "best"}, "twn"),
    ],
)
def test_bad_options(scheme, opts, needle):
    with pytest.raises(UserError, match=needle):
        make_quantizer(scheme, **opts)


def test_per_channel_rows_follow_the_weights_first_dimension():
    """docs/format.md: one level row per slice of dim 0 (output channels of Conv/Linear, input channels of ConvTranspose)."""
    import torch

    from dnncompress.quantize_model import quantize
    from dnncompress.surgery import compression_of

    for layer in (torch.nn.Conv2d(3, 5, 3), torch.nn.Linear(4, 6), torch.nn.ConvTranspose2d(3, 5, 3)):
        m = torch.nn.Sequential(layer)
        quantize(m, "fourval", per_channel=True)
        assert compression_of(m[0]).quantizer.levels.shape[0] == m[0].parametrizations["weight"].original.shape[0]


def test_a_scaled_codebook_serves_rows_of_very_different_sizes():
    """Per channel, a codebook is one shared table times a scale per row: filters 100× apart in size each
    keep their shape, where one table for the layer rounds the small ones to a few values."""
    torch.manual_seed(2)
    w = torch.randn(32, 72) * torch.logspace(-2, 0, 32).unsqueeze(1)
    per_layer = make_quantizer("codebook", bits=3).fit(w)
    per_row = make_quantizer("codebook", bits=3, per_channel=True).fit(w)

    def worst_row_error(q):
        return float(((q(w) - w).norm(dim=1) / w.norm(dim=1)).max())

    assert worst_row_error(per_row) < 0.5 * worst_row_error(per_layer)
    st = per_row.storage(w)
    assert set(st.tables) == {"levels", "scale"} and st.tables["levels"].shape == (1, 8) and st.tables["scale"].shape == (32, 1)
    assert torch.equal(per_row.scale * per_row.shared, per_row.levels)
