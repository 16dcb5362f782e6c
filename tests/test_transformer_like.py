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


def test_load_packed_decodes_into_the_users_tensors_and_into_a_meta_module(tmp_path, monkeypatch):
    """A built module receives the decoded values in its own storage (no second copy of the model); a
    module built on the meta device (no memory for weights) adopts the decoded tensors, ties kept."""
    torch.manual_seed(0)
    model = TinyLM().eval()
    prune(model, 0.5, include=["ff.2"])
    quantize(model, scheme="fourval", exclude=["emb", "head"])
    path = tmp_path / "lm.dnc"
    save_packed(model, path)
    ids = torch.randint(0, 50, (4, 9))
    with torch.no_grad():
        want = model(ids)
    fresh = TinyLM()
    before = {k: t.data_ptr() for k, t in fresh.state_dict().items()}
    with monkeypatch.context() as m:  # decoded in place: no state_dict copy at the end
        m.setattr(torch.nn.Module, "load_state_dict", lambda *a, **k: (_ for _ in ()).throw(AssertionError("copied")))
        loaded = load_packed(path, model=fresh)
    assert loaded is fresh and {k: t.data_ptr() for k, t in loaded.state_dict().items()} == before
    with torch.no_grad():
        assert torch.equal(loaded(ids), want)
    with torch.device("meta"):
        ghost = TinyLM()
    loaded = load_packed(path, model=ghost)
    assert not any(t.is_meta for t in loaded.state_dict().values())
    assert loaded.head.weight is loaded.emb.weight
    with torch.no_grad():
        assert torch.equal(loaded(ids), want)
