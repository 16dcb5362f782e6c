"""1-D k-means: within 0.1 % of the optimal SSE (`kmeans1d`, exact) at small and large k, on light- and
heavy-tailed data; the weighted dynamic program is exact on its own points."""
import kmeans1d
import numpy as np
import pytest
import torch

from dnncompress.quant.kmeans import kmeans_1d, optimal_weighted, sse


def _data(name: str, n: int = 20_000) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if name == "gaussian":
        return torch.randn(n, generator=g)
    if name == "laplace":
        u = torch.rand(n, generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        return (-torch.sign(u - 0.5) * torch.log1p(-2 * (u - 0.5).abs())).float()
    return (torch.randn(n, generator=g) / torch.sqrt(torch.distributions.Chi2(2.0).sample((n,)) / 2)).float()


@pytest.mark.parametrize("k", [4, 32, 256])
@pytest.mark.parametrize("name", ["gaussian", "laplace", "student-t2"])
def test_within_a_tenth_of_a_percent_of_optimal(name, k):
    torch.manual_seed(1)
    x = _data(name)
    _, opt = kmeans1d.cluster(x.double().numpy(), k)
    ours = kmeans_1d(x, k)
    assert ours.numel() == k
    assert sse(x, ours) <= 1.001 * sse(x, torch.tensor(opt))


def test_weighted_program_is_exact_on_small_inputs():
    rng = np.random.default_rng(0)
    mu = np.sort(rng.normal(size=200))
    _, opt = kmeans1d.cluster(mu, 7)
    ours = optimal_weighted(mu, np.ones(200), 7)
    assert sse(torch.from_numpy(mu), torch.from_numpy(ours)) == pytest.approx(sse(torch.from_numpy(mu), torch.tensor(opt)), rel=1e-12)


def test_few_values_and_pinned_zero():
    assert kmeans_1d(torch.tensor([1.0, 1.0, 2.0]), 8).numel() == 8  # more centroids than values: duplicates
    c = kmeans_1d(torch.randn(1000) + 3, 4, pin_zero=True)
    assert (c == 0).sum() == 1


def test_compiled_and_numpy_programs_agree_bit_for_bit(monkeypatch):
    pytest.importorskip("numba")
    if __import__("os").environ.get("DNNCOMPRESS_NO_NUMBA") == "1":
        pytest.skip("compiled kernels turned off (DNNCOMPRESS_NO_NUMBA=1)")
    from dnncompress.quant import kmeans as K

    rng = np.random.default_rng(2)
    x = np.sort(rng.standard_t(2, size=30_000))
    mu, w = K._bins(x, 2048)
    assert K._numba_program() is not None
    for k in (4, 17, 64, 130, 256):
        assert np.array_equal(K.optimal_weighted(mu, w, k), K._optimal_numpy(mu, w, k))
