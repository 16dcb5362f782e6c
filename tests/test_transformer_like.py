"""A user's own transformer-like module (Embedding, attention, Conv1d, a head tied to the embedding)
through the Python API: prune, quantize (calibrated), pack, and load_packed into a module the user
built, with no architecture registry."""
import torch
import torch.nn as nn

from dnncompress import load_packed, quantize, save_packed
from dnncompress.prune.magnitude import prune
from dnncompress.report import report_packed


class TinyLM(nn.Module):
    def __init__(self, vocab=50, dim=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.mix = nn.Conv1d(dim, dim, 3, padding=1)
        self.norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight  # tied, as in most language models

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = h + self.mix(h.transpose(1, 2)).transpose(1, 2)
        h = self.norm(h + self.ff(h))
        return self.head(h)


def test_transformer_like_module_round_trips(tmp_path):
    torch.manual_seed(0)
    model = TinyLM().eval()
    ids = torch.randint(0, 50, (16, 12))
    prune(model, 0.5, include=["ff.*", "mix"])
    rows = quantize(model, scheme="fourval", exclude=["emb", "head"], calibration=[ids[:8], ids[8:]])
    assert {r["layer"] for r in rows} == {"attn.out_proj", "mix", "ff.0", "ff.2"}
    assert any("output_error_calibrated" in r for r in rows)
    # the tied embedding/head stays fp32 here (compressing one side of a tie is not supported yet); it is stored once
    path = tmp_path / "lm.dnc"
    save_packed(model, path, entropy="huffman")
    fresh = TinyLM()
    loaded = load_packed(path, model=fresh)
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    assert loaded.head.weight is loaded.emb.weight
    rep = report_packed(path)
    assert rep["packed_bytes"] == path.stat().st_size
    rows = {r["layer"]: r for r in rep["layers"]}
    assert rows["emb"]["fp"] == 50 * 32 * 4 and rows["head"]["fp"] == 0


def test_compressing_one_side_of_a_tie_is_refused():
    import pytest

    from dnncompress.errors import UserError

    model = TinyLM()
    with pytest.raises(UserError, match="tied to"):
        quantize(model, scheme="fourval", include=["emb"])
    ids = torch.randint(0, 50, (4, 6))
    quantize(model, scheme="fourval", include=["emb", "head"])  # both sides: one shadow, the same quantized values
    model.eval()
    assert torch.equal(model.emb.weight, model.head.weight)
    with torch.no_grad():
        model(ids)


def test_a_tied_pair_compressed_together_is_stored_once(tmp_path):
    from dnncompress.pack import checkpoint_from_packed

    torch.manual_seed(0)
    model = TinyLM().eval()
    quantize(model, scheme="codebook", bits=4, include=["emb", "head"])
    path = tmp_path / "tied.dnc"
    save_packed(model, path)
    rows = {r["layer"]: r for r in report_packed(path)["layers"]}
    assert rows["head"]["scheme"] == "tied to emb" and rows["head"]["bytes"] == 0 and rows["emb"]["codes"] > 0
    ids = torch.randint(0, 50, (3, 7))
    loaded = load_packed(path, model=TinyLM())
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    ckpt = checkpoint_from_packed(path)
    assert ckpt["state_dict"]["head.weight"] is ckpt["state_dict"]["emb.weight"]
    assert ckpt["quant"]["head"]["scheme"] == ckpt["quant"]["emb"]["scheme"] == "codebook"
