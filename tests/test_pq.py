"""Product quantization (seed 004) and the block pruning / block index that suit it."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from dnncompress.errors import UserError
from dnncompress.pack import checkpoint_from_packed, save_packed
from dnncompress.pack.sparse import best_layout, decode_positions
from dnncompress.prune.magnitude import prune
from dnncompress.quant import make_quantizer, quantizer_from_state
from dnncompress.quant.pq import assign, masked_kmeans
from dnncompress.quantize_model import quantize
from dnncompress.surgery import compression_of, effective_state_dict, masks_of


def test_default_units_are_kernels_for_convs_and_four_inputs_for_linears():
    torch.manual_seed(0)
    conv = make_quantizer("pq").fit(torch.randn(6, 3, 3, 3))
    assert conv.options["d"] == 9 and conv.centroids.shape == (18, 9)  # 18 kernels: each its own centroid
    lin = make_quantizer("pq", bits=4).fit(torch.randn(8, 10))  # 10 inputs per row: units of 4, the last padded
    assert lin.options["d"] == 4 and lin.centroids.shape == (16, 4)
    st = lin.storage(torch.randn(8, 10))
    assert st.units == 8 * 3 and st.code_bits == 4 and st.tables["centroids"].dtype == torch.float16
    assert make_quantizer("pq", d=2).fit(torch.randn(4, 1, 1, 1)).options["d"] == 2


def test_decode_of_storage_is_what_the_forward_pass_sees():
    torch.manual_seed(1)
    w = torch.randn(12, 40)
    mask = torch.rand_like(w) > 0.6
    for table in ("fp16", "fp32"):
        q = make_quantizer("pq", bits=5, table=table).fit(w, mask).eval()
        wq = q(w * mask, mask)
        st = q.storage(w, mask)
        q2 = quantizer_from_state(q.export_state())
        assert torch.equal(q2.decode_storage(st.codes, w.shape, mask), wq.detach())
        assert torch.all(wq[~mask] == 0)
        if table == "fp16":
            c = st.tables["centroids"]
            assert torch.equal(c.float().half().float(), c.float())


def test_units_without_kept_weights_are_not_stored():
    w = torch.randn(4, 16)
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[:, :4] = True  # one unit of 4 per row kept, three pruned whole
    q = make_quantizer("pq", d=4).fit(w, mask)
    assert q.storage(w, mask).units == 4


def test_fit_sees_kept_entries_only():
    torch.manual_seed(2)
    w = torch.randn(30, 8)
    mask = torch.rand_like(w) > 0.3
    huge = torch.where(mask, w, torch.full_like(w, 1e4))
    a = make_quantizer("pq", bits=3, d=4).fit(w, mask).export_state()["centroids"]
    b = make_quantizer("pq", bits=3, d=4).fit(huge, mask).export_state()["centroids"]
    assert torch.equal(a, b)


def test_masked_lloyd_improves_on_the_library_start():
    torch.manual_seed(3)
    x = torch.randn(2000, 4)
    valid = torch.rand(2000, 4) > 0.25
    valid[:, 0] = True

    def sse(c):
        codes = assign(x, valid, c)
        return float((((x - c[codes]) * valid) ** 2).sum())

    from sklearn.cluster import KMeans

    start = torch.from_numpy(KMeans(32, n_init=1, random_state=0, max_iter=50).fit((x * valid).double().numpy()).cluster_centers_).float()
    assert sse(masked_kmeans(x, valid, 32)) < sse(start)


def test_centroid_gradient_is_the_mean_of_its_units():
    w = torch.tensor([[1.0, 1.0, 5.0, 5.0, 1.1, 0.9]])
    q = make_quantizer("pq", bits=1, d=2, table="fp32").fit(w)  # two centroids: ≈(1,1) and (5,5)
    q.train()
    w = w.clone().requires_grad_(True)
    out = q(w)
    g = torch.tensor([[1.0, 2.0, 10.0, 20.0, 3.0, 4.0]])
    (out * g).sum().backward()
    small = int(q.centroids.detach()[:, 0].argmin())
    assert torch.allclose(q.centroids.grad[small], torch.tensor([2.0, 3.0]))  # mean of (1,2) and (3,4)
    assert torch.allclose(q.centroids.grad[1 - small], torch.tensor([10.0, 20.0]))
    assert torch.equal(w.grad, g)  # and the weights get the straight-through gradient


@pytest.mark.parametrize("d", [4, 8])
@pytest.mark.parametrize("grad", ["mean", "sum"])
@pytest.mark.parametrize("pruned", [False, True])
def test_one_node_forward_matches_the_gather_reference(grad, pruned, d):
    """The one-node QAT forward (every unit stored, none padded; compiled centroid sums on a large layer): the
    same values as gathering the rounded centroids times the mask, the weight's gradient straight through, and
    per centroid the summed (or mean) gradient of its units' kept entries."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(256, 64, generator=g) * 0.05
    mask = (torch.rand(w.shape, generator=g) > 0.3) if pruned else None
    q = make_quantizer("pq", bits=6, d=d, grad=grad).fit(w * mask if pruned else w, mask).train()
    wm = (w * mask if pruned else w).clone().requires_grad_(True)
    up = torch.randn(w.shape, generator=g)
    out = q(wm, mask)
    (out * up).sum().backward()
    codes = assign(wm.detach().reshape(-1, d), (mask if pruned else torch.ones_like(w, dtype=torch.bool)).reshape(-1, d), q._rounded())
    keep = mask.float() if pruned else torch.ones_like(w)
    assert torch.equal(out.detach(), q._rounded()[codes].reshape(w.shape) * keep)
    assert torch.equal(wm.grad, up)
    want = torch.zeros_like(q._rounded()).index_add_(0, codes, (up * keep).reshape(-1, d))
    if grad == "mean":
        want = want / torch.zeros_like(want).index_add_(0, codes, keep.reshape(-1, d)).clamp_min(1)
    assert torch.allclose(q.centroids.grad, want, rtol=1e-5, atol=1e-6)


def test_assignments_are_recomputed_every_n_training_forwards():
    torch.manual_seed(4)
    w = torch.randn(8, 8)
    q = make_quantizer("pq", bits=2, d=4, reassign_every=3).fit(w).train()
    q(w)
    first = q._train_codes
    moved = -w  # every unit now sits nearest another centroid
    for _ in range(2):  # forwards 2 and 3 of the interval: the old assignment, whatever the weights do
        assert q(moved).detach().equal(q.decode_storage(first, w.shape, None))
    q(moved)  # forward 4 starts a new interval
    assert not torch.equal(q._train_codes, first)
    q.eval()
    assert q(moved).detach().equal(q.decode_storage(q.storage(moved).codes, w.shape, None))  # evaluation: always nearest


def test_bad_options():
    for opts, needle in (({"d": -1}, "d must"), ({"table": "int8"}, "fp16 or fp32"), ({"reassign_every": 0}, "reassign_every"),
                         ({"bits": 9}, "1–8"), ({"per_channel": True}, "per layer")):
        with pytest.raises(UserError, match=needle):
            make_quantizer("pq", **opts)


def test_block_pruning_keeps_whole_runs_and_the_index_is_written_per_block(tmp_path):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 6))
    rows = prune(model, 0.75, scope="layer", block={"0": 4})
    assert rows[0]["kept"] == 32 and rows[1]["kept"] == 12  # exact counts: 75 % of 128 and of 48
    m0 = masks_of(model)["0"].reshape(8, 4, 4)
    assert torch.equal(m0.all(2), m0.any(2))  # runs of 4 are kept or pruned whole
    kind, g, entries, bits, block = best_layout(masks_of(model)["0"].reshape(-1).numpy())
    assert block == 4 and entries.size <= 32 // 4 * 2
    assert np.array_equal(decode_positions({"layout": kind, "index_bits": g, "block": block}, entries, 128),
                          np.flatnonzero(masks_of(model)["0"].reshape(-1).numpy()))
    quantize(model, scheme="pq", bits=3, d=4)
    save_packed(model, tmp_path / "m.dnc")
    ckpt = checkpoint_from_packed(tmp_path / "m.dnc", model=nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 6)))
    want = effective_state_dict(model)
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in want.items())
    assert torch.equal(ckpt["masks"]["0"], compression_of(model[0]).mask)


def test_block_pruning_in_global_scope_reaches_the_count():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(20, 10), nn.Linear(10, 10))
    rows = prune(model, 0.5, scope="global", block=5)
    assert sum(r["kept"] for r in rows) == 150  # 300 weights, 30 runs of 5 pruned... exactly half
    for m in masks_of(model).values():
        runs = m.reshape(m.shape[0], -1, 5)
        assert torch.equal(runs.all(2), runs.any(2))


def test_block_length_is_checked():
    with pytest.raises(UserError, match="block length"):
        prune(nn.Linear(4, 4), 0.5, block=0)


def test_same_input_same_seed_same_bytes(tmp_path):
    paths = []
    for i in range(2):
        torch.manual_seed(7)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
        prune(model, 0.5, block={"2": 4})
        quantize(model, scheme="pq", bits=4)
        paths.append(tmp_path / f"{i}.dnc")
        save_packed(model, paths[-1], entropy="huffman")
    assert paths[0].read_bytes() == paths[1].read_bytes()
