"""The storage contract, over every registered scheme (the registry is iterated, so a new scheme
cannot escape): pack → load is bit-exact, the report's bytes are the file's bytes and the
scheme's own storage, masks are kept, every tensor's dtype is kept, and tied weights stay tied."""
import pytest
import torch
import torch.nn as nn

import tests.toy_scheme  # noqa: F401  (a scheme from outside dnncompress/ is covered too)
from dnncompress.pack import checkpoint_from_packed, load_packed, save_packed
from dnncompress.pack.layers import storage_bytes
from dnncompress.prune.magnitude import prune
from dnncompress.quant import SCHEMES
from dnncompress.quantize_model import quantize
from dnncompress.report import report_packed
from dnncompress.surgery import compression_of, effective_state_dict, shadow_weight


class OddNet(nn.Module):
    """A user's own module: two compressible layers, buffers of every odd dtype, and a tied pair."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(64, 5)
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.b.weight = self.a.weight
        self.register_buffer("flag", torch.tensor([True, False, True]))
        self.register_buffer("count", torch.tensor([3, -7], dtype=torch.int32))
        self.register_buffer("halfbuf", torch.tensor([0.1, 2.5, -3.0], dtype=torch.float16))
        self.register_buffer("brain", torch.tensor([0.1, 1e30, -3.0], dtype=torch.bfloat16))
        self.register_buffer("wide", torch.tensor([1 / 3, 1e-300], dtype=torch.float64))

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def _model(scheme: str) -> OddNet:
    torch.manual_seed(0)
    m = OddNet()
    prune(m, 0.4, include=["conv", "fc"])
    quantize(m, scheme=scheme, include=["conv", "fc"])
    return m.eval()


@pytest.mark.parametrize("entropy", ["none", "huffman"])
@pytest.mark.parametrize("scheme", SCHEMES.names())
def test_every_scheme_keeps_its_contract(tmp_path, scheme, entropy):
    model = _model(scheme)
    path = tmp_path / "m.dnc"
    info = save_packed(model, path, entropy=entropy)
    want = effective_state_dict(model)
    # loads bit-exact into the user's own module, with its dtypes and its tie
    fresh = OddNet()
    loaded = load_packed(path, model=fresh)
    got = loaded.state_dict()
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    assert loaded.b.weight is loaded.a.weight
    x = torch.randn(2, 2, 6, 6)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # without a model: the file alone restores every dtype, the masks and the tie
    ckpt = checkpoint_from_packed(path)
    for key, value in want.items():
        assert ckpt["state_dict"][key].dtype == value.dtype, key
    assert ckpt["state_dict"]["b.weight"] is ckpt["state_dict"]["a.weight"]
    for name in ("conv", "fc"):
        assert torch.equal(ckpt["masks"][name], compression_of(getattr(model, name)).mask)
        assert ckpt["quant"][name]["scheme"] == scheme
    # the report counts the file's bytes, and each layer costs what its scheme's storage says
    rep = report_packed(path)
    assert rep["packed_bytes"] == info["bytes"] == path.stat().st_size
    assert sum(r["bytes"] for r in rep["layers"]) + rep["container_bytes"] == path.stat().st_size
    rows = {r["layer"]: r for r in rep["layers"]}
    for name in ("conv", "fc"):
        module = getattr(model, name)
        comp = compression_of(module)
        st = comp.quantizer.storage(shadow_weight(module).detach(), comp.mask)
        if entropy == "none":
            assert rows[name]["codes"] + rows[name]["tables"] == storage_bytes(st)
        else:
            assert rows[name]["tables"] == sum(t.numel() * t.element_size() for t in st.tables.values())
    assert rows["a"]["fp"] > 0 and rows["b"]["fp"] == 4 * 6  # the tied weight is stored once (b keeps only its bias)


def test_fp16_and_bf16_models_come_back_in_their_dtype(tmp_path):
    for dtype in (torch.float16, torch.bfloat16):
        model = _model("fourval").to(dtype)
        path = tmp_path / f"{dtype}.dnc"
        save_packed(model, path)
        want = effective_state_dict(model)
        got = checkpoint_from_packed(path)["state_dict"]
        for key, value in want.items():
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), (dtype, key)
