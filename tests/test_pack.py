"""Pack → unpack is bit-exact for every scheme, bit width, odd size, mask and entropy setting."""
import json
import os
import signal
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open

from dnncompress.checkpoint import new_checkpoint
from dnncompress.errors import UserError
from dnncompress.models import build_model
from dnncompress.pack import bitpack, checkpoint_from_packed, load_packed, save_packed
from dnncompress.quant import SCHEMES as REGISTRY
from dnncompress.quant import make_quantizer
from dnncompress.surgery import effective_state_dict, model_from_checkpoint


def linear_ckpt(n_in: int, scheme=None, mask_keep=None, seed=0, **qopts):
    """A Linear(n_in, 1) checkpoint (n_in weights), optionally quantized and/or pruned."""
    g = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(n_in, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(1, n_in, generator=g))
    ckpt = new_checkpoint("test-linear", {"in_features": n_in, "out_features": 1}, layer.state_dict())
    mask = None
    if mask_keep is not None:
        mask = torch.rand(1, n_in, generator=g) < mask_keep
        ckpt["masks"][""] = mask
    if scheme:
        q = make_quantizer(scheme, **qopts).fit(ckpt["state_dict"]["weight"], mask)
        ckpt["quant"][""] = q.export_state()
    return ckpt


def assert_roundtrip(ckpt, tmp_path, entropy="none"):
    path = tmp_path / "m.dnc"
    save_packed(ckpt, path, entropy=entropy)
    restored = checkpoint_from_packed(path)
    expected = effective_state_dict(model_from_checkpoint(ckpt))
    for k, v in expected.items():
        assert torch.equal(restored["state_dict"][k], v), k
    assert restored["masks"].keys() == ckpt["masks"].keys()
    for k in ckpt["masks"]:
        assert torch.equal(restored["masks"][k], ckpt["masks"][k].bool())
    # the restored checkpoint evaluates with exactly the same weights again
    again = effective_state_dict(model_from_checkpoint(restored))
    assert all(torch.equal(again[k], expected[k]) for k in expected)
    return path


SCHEMES = [(s, {}) for s in REGISTRY.names()] + [("ternary", {"rule": "exact"}), ("codebook", {"bits": 3, "zero": True})] + [
    ("codebook", {"bits": b}) for b in (2, 3, 5, 6, 7, 8)
]  # every registered scheme with its defaults, then the option variants


@pytest.mark.parametrize("scheme,opts", SCHEMES, ids=str)
@pytest.mark.parametrize("n", [1, 15, 17])
@pytest.mark.parametrize("keep", [None, 0.3])
@pytest.mark.parametrize("entropy", ["none", "huffman"])
def test_roundtrip_small(tmp_path, scheme, opts, n, keep, entropy):
    assert_roundtrip(linear_ckpt(n, scheme, keep, **opts), tmp_path, entropy)


@pytest.mark.parametrize("scheme,opts,keep,entropy", [
    ("fourval", {}, None, "none"), ("codebook", {"bits": 5}, 0.1, "huffman"), ("codebook", {"bits": 7}, None, "huffman"),
    ("ternary", {}, 0.5, "none"), (None, {}, 0.05, "huffman"),
])
def test_roundtrip_million(tmp_path, scheme, opts, keep, entropy):
    assert_roundtrip(linear_ckpt(1_000_003, scheme, keep, **opts), tmp_path, entropy)


def test_pruned_only_and_per_channel(tmp_path):
    assert_roundtrip(linear_ckpt(257, None, 0.2), tmp_path)
    model = build_model("lenet5")
    ckpt = new_checkpoint("lenet5", {}, model.state_dict())
    for name in ("conv1", "conv2", "fc1", "fc2"):
        w = ckpt["state_dict"][f"{name}.weight"]
        ckpt["quant"][name] = make_quantizer("asym-quaternary", per_channel=True).fit(w).export_state()
    ckpt["masks"]["fc1"] = ckpt["state_dict"]["fc1.weight"].abs() > 0.02
    assert_roundtrip(ckpt, tmp_path, "huffman")


def test_bitpack_all_widths_and_bit_order():
    rng = np.random.default_rng(0)
    for bits in range(1, 9):
        for n in (1, 15, 17, 1000):
            codes = rng.integers(0, 1 << bits, n)
            assert np.array_equal(bitpack.unpack(bitpack.pack(codes, bits), bits, n), codes)
    assert bitpack.pack(np.array([1, 2, 3] + [0] * 13), 2)[0] == 0b111001  # code i in bits 2i, 2i+1
    assert bitpack.pack(np.arange(16) % 4, 2).size == 1  # 16 two-bit codes per uint32


def test_fourval_lenet5_is_at_most_6_5_percent_and_loads_to_the_same_outputs(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = build_model("lenet5")
    ckpt = new_checkpoint("lenet5", {}, model.state_dict())
    qmodel = model_from_checkpoint(ckpt)
    import dnncompress

    dnncompress.quantize(qmodel, scheme="fourval")
    from dnncompress.surgery import update_checkpoint

    update_checkpoint(ckpt, qmodel)
    save_packed(ckpt, tmp_path / "m.dnc")
    save_file(ckpt["state_dict"], str(tmp_path / "fp32.safetensors"))
    ratio = os.path.getsize(tmp_path / "m.dnc") / os.path.getsize(tmp_path / "fp32.safetensors")
    assert ratio <= 0.065
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_packed(tmp_path / "m.dnc")(x), qmodel.eval()(x))


def test_official_safetensors_reads_it(tmp_path):
    from dnncompress.pack.container import inflate_spec

    path = assert_roundtrip(linear_ckpt(100, "fourval", 0.5), tmp_path)
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
        assert meta["format"] == "dnncompress-packed" and meta["version"] == "4" and len(meta["sha256"]) == 43
        blob = f.get_tensor("dnc")
        assert blob.dtype == np.uint8 and list(f.keys()) == ["dnc"]
    spec = json.loads(inflate_spec(blob[blob.size - int(meta["spec"]) :].tobytes()))  # the spec: the blob's tail
    assert spec["layers"][0]["q"]["scheme"] == "fourval"


def test_version_3_files_still_read(tmp_path):
    """A version-3 file (one tensor per blob kind, the spec as JSON in the metadata, hex digest) loads the same weights."""
    import struct

    from dnncompress.pack.container import ST_NAMES, _header_digest, canonical_json, read_packed

    path = assert_roundtrip(linear_ckpt(300, "codebook", 0.5, bits=3), tmp_path)
    spec, blobs = read_packed(path)
    header, offset, pieces = {}, 0, []
    for name in sorted(blobs.arrays):
        arr = np.ascontiguousarray(blobs.arrays[name])
        header[name] = {"dtype": ST_NAMES[arr.dtype.newbyteorder("=")], "shape": [arr.size], "data_offsets": [offset, offset + arr.nbytes]}
        pieces.append(arr.view(np.uint8))
        offset += arr.nbytes
    header["__metadata__"] = {"format": "dnncompress-packed", "version": "3", "spec": canonical_json(spec)}
    header["__metadata__"]["sha256"] = _header_digest(header, pieces, b64=False)
    text = canonical_json(header).encode()
    text += b" " * (-len(text) % 8)
    (tmp_path / "v3.dnc").write_bytes(struct.pack("<Q", len(text)) + text + b"".join(p.tobytes() for p in pieces))
    a, b = checkpoint_from_packed(path), checkpoint_from_packed(tmp_path / "v3.dnc")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_no_pickle_inside(tmp_path):
    """The file is exactly: 8-byte length, a JSON header, then raw numeric tensors end to end."""
    import struct

    path = assert_roundtrip(linear_ckpt(64, "codebook", None, bits=4), tmp_path)
    data = path.read_bytes()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + hlen])
    header.pop("__metadata__")
    assert {info["dtype"] for info in header.values()} <= {"U8", "U32", "F32", "F16", "I64"}
    assert sum(i["data_offsets"][1] - i["data_offsets"][0] for i in header.values()) == len(data) - 8 - hlen


def test_load_packed_needs_model_when_no_arch(tmp_path):
    layer = torch.nn.Linear(6, 2)
    import dnncompress

    dnncompress.quantize(layer, scheme="fourval")
    save_packed(layer, tmp_path / "l.dnc")
    with pytest.raises(UserError, match="model="):
        load_packed(tmp_path / "l.dnc")
    restored = load_packed(tmp_path / "l.dnc", model=torch.nn.Linear(6, 2))
    assert torch.equal(restored.weight, layer.eval().weight.detach())  # eval: no QAT re-fit on access


@pytest.mark.parametrize("arch,scheme,sparsity", [("lenet5", "fourval", 0.0), ("lenet5", "codebook", 0.9), ("lenet300", "ternary", 0.95),
                                                  ("resnet20", "fourval", 0.9), ("user", "asym-quaternary", 0.8),
                                                  ("lenet5-structured", "codebook", 0.99)])
def test_container_overhead_is_within_its_budget(tmp_path, arch, scheme, sparsity):
    """Everything that is not a weight, bias or index byte (header, digest, deflated spec, alignment) costs at most
    300 bytes + 40 per compressed layer (issue 12), also for a model the spec's dictionary never saw."""
    import dnncompress
    from dnncompress.report import report_packed
    from dnncompress.surgery import masks_of, plain_state_dict, quant_state_of

    torch.manual_seed(7)
    if arch == "user":
        model = torch.nn.Sequential(torch.nn.Conv1d(3, 24, 5), torch.nn.GELU(), torch.nn.Flatten(), torch.nn.Linear(24 * 60, 48),
                                    torch.nn.LayerNorm(48), torch.nn.Linear(48, 7))
    else:
        model = build_model(arch.removesuffix("-structured"))
    if arch.endswith("-structured"):  # the smallest-file pipeline: structured pruning, then masks and 2 bits
        from dnncompress.prune.structured import structured_prune

        structured_prune(model, torch.randn(2, 1, 28, 28), amount=0.4)
    if sparsity:
        dnncompress.prune_model(model, sparsity)
    dnncompress.quantize(model, scheme=scheme, **({"bits": 4} if scheme == "codebook" else {}))
    ckpt = {"arch": None if arch == "user" else arch.removesuffix("-structured"), "state_dict": plain_state_dict(model),
            "masks": masks_of(model), "quant": quant_state_of(model), "metrics": {"accuracy": 98.76, "loss": 0.1198506965637207},
            "dataset": {"name": "mnist", "input_shape": [1, 28, 28], "num_classes": 10, "options": {}, "val_split": 0.1, "data_dir": None},
            **({"structure": model._dnncompress_structure} if arch.endswith("-structured") else {})}
    import importlib.util

    for entropy in ("none", "huffman", *(["ans"] if importlib.util.find_spec("constriction") else [])):
        save_packed(ckpt, tmp_path / "m.dnc", entropy=entropy)
        rep = report_packed(tmp_path / "m.dnc")
        layers = len(ckpt["quant"])
        assert rep["container_bytes"] <= 300 + 40 * layers, (entropy, rep["container_bytes"], layers)


def test_the_spec_dictionary_is_frozen():
    """Every version-4 file's spec is deflated with it: a changed dictionary needs a new format version."""
    import hashlib

    from dnncompress.pack.spec_dict import SPEC_DICT, SPEC_DICT_SHA256

    assert hashlib.sha256(SPEC_DICT).hexdigest() == SPEC_DICT_SHA256 == "60737ccabef0a47fe9407b6af72e5500fb7f9670a94328af407538f146320b60"


@pytest.mark.parametrize("scheme,opts,keep", [("fourval", {}, None), ("fourval", {}, 0.1), ("codebook", {"bits": 5}, 0.3), ("ternary", {}, 0.05)])
def test_ans_streams_round_trip_and_are_never_larger_than_huffman(tmp_path, scheme, opts, keep):
    """entropy 'ans' keeps, per stream, the smallest of plain, Huffman and rANS: bit-exact, deterministic, ≤ Huffman."""
    pytest.importorskip("constriction")
    from dnncompress.pack.container import read_packed

    ckpt = linear_ckpt(20_000, scheme, keep, **opts)
    path = assert_roundtrip(ckpt, tmp_path, entropy="ans")
    ans = path.read_bytes()
    assert save_packed(ckpt, tmp_path / "again.dnc", entropy="ans") and (tmp_path / "again.dnc").read_bytes() == ans
    save_packed(ckpt, tmp_path / "h.dnc", entropy="huffman")
    from dnncompress.report import report_packed

    a, h = report_packed(path), report_packed(tmp_path / "h.dnc")
    assert a["packed_bytes"] - a["container_bytes"] <= h["packed_bytes"] - h["container_bytes"]  # every stream ≤ its Huffman
    assert a["container_bytes"] <= h["container_bytes"] + 32  # an 'a' fragment is not in the spec's dictionary
    spec, _ = read_packed(path)
    if scheme == "fourval" and keep is None:  # 2-bit codes with a skewed distribution: below Huffman's 1 bit per symbol
        assert "a" in spec["layers"][0]["c"] and len(ans) < h["packed_bytes"]


def test_ans_without_constriction_is_a_one_line_error(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_constriction(name, *a, **k):
        if name == "constriction":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_constriction)
    with pytest.raises(UserError, match=r"pip install 'dnncompress\[ans\]'"):
        save_packed(linear_ckpt(500, "fourval"), tmp_path / "x.dnc", entropy="ans")
    assert not (tmp_path / "x.dnc").exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_hashes_on_its_own_worker(tmp_path):
    """The hashing thread lives as long as the process; a forked child (a DataLoader worker, say) does not inherit
    it, so it must start its own rather than wait forever on a thread that does not exist there."""
    path = tmp_path / "m.dnc"
    save_packed(linear_ckpt(64, "fourval"), path)  # the parent's worker now exists
    want = checkpoint_from_packed(path)["state_dict"]["weight"]
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if it reads the same weights, and a damaged copy is still refused
        ok = False
        try:
            ok = torch.equal(checkpoint_from_packed(path)["state_dict"]["weight"], want)
            bad = tmp_path / "bad.dnc"
            data = bytearray(path.read_bytes())
            data[-1] ^= 1
            bad.write_bytes(bytes(data))
            try:
                checkpoint_from_packed(bad)
                ok = False
            except UserError as e:
                ok = ok and "SHA-256" in str(e)
        finally:
            os._exit(0 if ok else 1)
    for _ in range(600):  # a child stuck on the parent's thread would wait forever: give it 60 s
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child never finished reading the file")
    assert os.waitstatus_to_exitcode(status) == 0


def _adopted(model):
    return [(k, type(t).__name__, t.data_ptr(), t.requires_grad, t.dtype) for k, t in [*model.named_parameters(), *model.named_buffers()]]


@pytest.mark.parametrize("arch", ["lenet5", "resnet20", "vgg16", "mobilenet"])
def test_adopting_a_vetted_state_is_load_state_dict_with_assign(arch, monkeypatch):
    """pack._adopt skips torch's pass over every key for every module; it must leave the model exactly as
    load_state_dict(assign=True) does: the same tensors (not copies) under the same names, Parameters where the model
    had them, the same requires_grad (a frozen one stays frozen)."""
    from dnncompress.pack import _adopt
    from dnncompress.validate import skeleton

    state = build_model(arch).state_dict()
    ours, torchs = skeleton(arch, {}, "x"), skeleton(arch, {}, "x")
    for m in (ours, torchs):
        next(m.parameters()).requires_grad_(False)
    torchs.load_state_dict(dict(state), assign=True)
    with monkeypatch.context() as patch:  # the zoo's modules all load plainly: torch's loader must not run
        patch.setattr(torch.nn.Module, "load_state_dict", lambda *a, **k: pytest.fail("fell back to load_state_dict"))
        _adopt(ours, dict(state))
    assert _adopted(ours) == _adopted(torchs)
    assert not any(t.is_meta for t in [*ours.parameters(), *ours.buffers()])


def test_a_module_that_loads_its_own_way_is_loaded_by_torch():
    from dnncompress.pack import _adopt

    class Renaming(torch.nn.Linear):
        seen = []

        def _load_from_state_dict(self, state_dict, prefix, *args):
            Renaming.seen.append(prefix)
            super()._load_from_state_dict(state_dict, prefix, *args)

    model = torch.nn.Sequential(torch.nn.Linear(2, 2, device="meta"), Renaming(2, 2, device="meta"))
    state = {k: torch.ones(t.shape) for k, t in model.state_dict().items()}
    _adopt(model, state)
    assert Renaming.seen == ["1."] and torch.equal(model[1].weight, torch.ones(2, 2))
    with pytest.raises(RuntimeError, match="Missing key"):  # keys that are not the model's: torch's own error
        _adopt(torch.nn.Linear(2, 2, device="meta"), {"weight": torch.ones(2, 2)})


def test_blob_pieces_are_the_kinds_back_to_back_with_large_parts_uncopied():
    from dnncompress.pack.layers import COALESCE, Blobs

    blobs = Blobs()
    big = np.arange(COALESCE, dtype=np.uint32)  # 4 × COALESCE bytes: its own piece
    blobs.add("fp32", np.ones(3, np.float32))
    blobs.add("codes", big)
    blobs.add("fp32", np.full(2, 7, np.float32))
    blobs.add("codes", np.arange(5, dtype=np.uint32))
    blobs.add("u8", np.zeros(0, np.uint8))  # nothing to write
    order = ["codes", "fp32", "u8"]
    pieces = blobs.pieces(order)
    want = b"".join(np.concatenate(blobs.parts[k]).astype(np.dtype(Blobs.DTYPES[k]).newbyteorder("<")).tobytes() for k in order)
    assert b"".join(p.tobytes() for p in pieces) == want
    assert len(pieces) == 2 and np.shares_memory(pieces[0], blobs.parts["codes"][0])  # the large part as is, the rest joined


def test_a_write_that_fails_on_the_helper_thread_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """The data section is written on the helper thread while this one hashes: a disk that fills up there must still
    give the usual one-line error, and no file and no temp file."""
    import errno

    from dnncompress.pack import container

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(container, "_start_writeback", full)
    with pytest.raises(UserError, match="No space left on device"):
        save_packed(linear_ckpt(4096, "fourval"), tmp_path / "m.dnc")
    assert list(tmp_path.iterdir()) == []


def _bn_model():
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 36, 5))
    m.train()(torch.randn(4, 3, 8, 8))  # running stats and num_batches_tracked (an int64 leftover) away from their defaults
    return m


def test_a_file_read_in_many_chunks_verifies_and_a_flipped_byte_in_a_late_chunk_does_not(tmp_path, monkeypatch):
    """The digest is fed chunk by chunk as the data comes in: with chunks far smaller than the file it still matches,
    and a byte changed near the end is still caught."""
    import dnncompress
    from dnncompress.pack import container

    model = _bn_model()
    dnncompress.quantize(model, scheme="fourval")
    path = tmp_path / "m.dnc"
    save_packed(model, path)
    monkeypatch.setattr(container, "READ_CHUNK", 97)
    want = checkpoint_from_packed(path, model=_bn_model())["state_dict"]
    raw = bytearray(path.read_bytes())
    raw[-40] ^= 1  # inside the spec, the last chunk
    bad = tmp_path / "bad.dnc"
    bad.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="SHA-256 mismatch"):
        checkpoint_from_packed(bad, model=_bn_model())
    monkeypatch.setattr(container, "READ_CHUNK", 1 << 20)
    got = checkpoint_from_packed(path, model=_bn_model())["state_dict"]
    assert all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.parametrize("extra, error", [(1, "grew while it was read"), (-1, "truncated while it was read")])
def test_a_file_that_changes_size_while_it_is_read_is_refused(tmp_path, extra, error):
    from dnncompress.pack import container

    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(200)))
    header = {"__metadata__": {"sha256": "x"}}
    with open(path, "rb") as f, pytest.raises(UserError, match=error):
        container._read_hashed(f, path, 200 - extra, container.Digest(path, header, b64=True))


def test_load_packed_into_a_built_model_fills_every_tensor_in_place(tmp_path):
    """Buffers and biases (leftovers, int64 num_batches_tracked included) are copied straight into the model's own
    tensors, the same values checkpoint_from_packed gives; no tensor is replaced."""
    import dnncompress
    from dnncompress.surgery import plain_state_dict

    model = _bn_model()
    dnncompress.quantize(model, scheme="fourval")
    path = tmp_path / "m.dnc"
    save_packed(model, path)
    want = checkpoint_from_packed(path, model=_bn_model())["state_dict"]
    target = _bn_model()
    with torch.no_grad():
        for t in target.state_dict().values():
            t.zero_()
    before = {k: t.data_ptr() for k, t in target.state_dict().items()}
    load_packed(path, model=target)
    own = plain_state_dict(target, clone=False)
    assert {k: t.data_ptr() for k, t in target.state_dict().items()} == before
    assert own.keys() == want.keys() and all(torch.equal(own[k], want[k]) for k in want)
    assert int(own["1.num_batches_tracked"]) == 1


def test_restore_without_states_gives_the_same_weights_and_no_quantizer_states(tmp_path):
    from dnncompress.pack import read_packed
    from dnncompress.pack.container import restore

    ckpt = linear_ckpt(5000, "fourval")
    save_packed(ckpt, tmp_path / "m.dnc")
    spec, blobs = read_packed(tmp_path / "m.dnc")
    full, _, quant = restore(spec, blobs)
    lean, _, none = restore(spec, blobs, states=False)
    assert quant.keys() == {""} and none == {}
    assert full.keys() == lean.keys() and all(torch.equal(full[k], lean[k]) for k in full)
