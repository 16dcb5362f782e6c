"""Truncated, bit-flipped, wrong-version and maliciously sized .dnc files: a clean one-line error, never a crash or a hang."""
import json
import struct

import pytest
from click.testing import CliRunner

from dnncompress.cli import main
from dnncompress.errors import UserError
from dnncompress.pack import checkpoint_from_packed, save_packed
from dnncompress.pack.container import VERSION
from tests.test_pack import linear_ckpt


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    ckpt = linear_ckpt(3000, "codebook", 0.4, bits=5)
    path = d / "ok.dnc"
    save_packed(ckpt, path, entropy="huffman")
    return path, checkpoint_from_packed(path)["state_dict"]


def _forge(path, spec_edit, out):
    """Re-sign a modified (compact) spec so the digest matches: an attacker can always do this."""
    from tests.fuzzing import _dnc_parts, _signed, _spec_of, _with_spec

    header, body = _dnc_parts(path.read_bytes())
    blobs, spec = _spec_of(header, body)
    spec_edit(spec)
    out.write_bytes(_signed(header, _with_spec(header, blobs, json.dumps(spec))))
    return out


def test_malicious_shape_is_refused_without_allocating(packed, tmp_path):
    path, _ = packed

    def huge(spec):
        spec["layers"][0]["s"] = [1_000_000, 1_000_000]

    with pytest.raises(UserError, match="shape"):
        checkpoint_from_packed(_forge(path, huge, tmp_path / "huge.dnc"))

    def huge_model(spec):
        spec["arch"] = "lenet300"
        spec["arch_kwargs"] = {"image_size": 1_000_000}

    with pytest.raises(UserError, match="parameters|shape"):
        checkpoint_from_packed(_forge(path, huge_model, tmp_path / "huge_model.dnc"))

    def lying_counts(spec):  # the one count a version-4 spec writes: a Huffman payload's length
        layer = spec["layers"][0]
        frag = layer["c"] if "h" in layer["c"] else layer["x"]
        frag["h"] = 10**12

    with pytest.raises(UserError, match="does not fit"):
        checkpoint_from_packed(_forge(path, lying_counts, tmp_path / "counts.dnc"))

    def offsets_again(spec):  # a version-3 style [offset, count] where version 4 implies both
        table = next(iter(spec["layers"][0]["t"].values()))
        table.insert(1, [0, 32])

    with pytest.raises(UserError, match="not a valid .dnc"):
        checkpoint_from_packed(_forge(path, offsets_again, tmp_path / "offsets.dnc"))


def test_wrong_version_and_wrong_format(packed, tmp_path):
    path, _ = packed
    data = path.read_bytes()
    (hlen,) = struct.unpack("<Q", data[:8])
    for old, needle in ((b"9", "version 9.*upgrade dnncompress"), (b"2", "version 2 .*dnncompress pack CKPT -o v2.dnc")):
        header = data[8 : 8 + hlen].replace(f'"version":"{VERSION}"'.encode(), b'"version":"' + old + b'"')
        name = f"v{old.decode()}.dnc"
        (tmp_path / name).write_bytes(data[:8] + header + data[8 + hlen :])
        with pytest.raises(UserError, match=needle):  # a newer file, and an older one (with the command that re-creates it)
            checkpoint_from_packed(tmp_path / name)
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(UserError, match="format tag"):
        checkpoint_from_packed(tmp_path / "plain.safetensors")


def test_cli_pack_unpack_report_and_bad_file(in_tmp, tiny_ckpt):
    runner = CliRunner()
    r = runner.invoke(main, ["quantize", str(tiny_ckpt), "--scheme", "codebook", "--bits", "4", "-o", "q.pt"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["pack", "q.pt", "-o", "m.dnc", "--entropy", "huffman", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["bytes"] == (in_tmp / "m.dnc").stat().st_size
    r = runner.invoke(main, ["report", "--json", "--plot", "sizes.png"])  # newest output: m.dnc
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["packed_bytes"] == (in_tmp / "m.dnc").stat().st_size and rep["ratio"] > 5
    assert (in_tmp / "sizes.png").read_bytes()[:4] == b"\x89PNG"
    r = runner.invoke(main, ["report", "q.pt", "--json", "--entropy", "huffman"])
    assert json.loads(r.stdout)["packed_bytes"] == rep["packed_bytes"]  # a checkpoint reports what it packs to
    r = runner.invoke(main, ["unpack", "m.dnc", "-o", "r.pt"])
    assert r.exit_code == 0, r.output
    a = json.loads(runner.invoke(main, ["eval", "q.pt", "--json"]).stdout)
    b = json.loads(runner.invoke(main, ["eval", "r.pt", "--json"]).stdout)
    c = json.loads(runner.invoke(main, ["eval", "m.dnc", "--json"]).stdout)
    assert a["accuracy"] == b["accuracy"] == c["accuracy"] and a["loss"] == b["loss"] == c["loss"]
    data = (in_tmp / "m.dnc").read_bytes()
    (in_tmp / "cut.dnc").write_bytes(data[: len(data) // 2])
    for cmd in (["eval", "cut.dnc"], ["report", "cut.dnc"], ["unpack", "cut.dnc", "-o", "x.pt"]):
        r = runner.invoke(main, cmd)
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
    assert not (in_tmp / "x.pt").exists()
    r = runner.invoke(main, ["pack", "m.dnc"])
    assert r.exit_code == 2 and "already packed" in r.output


def test_a_forged_structure_cannot_grow_the_model(tmp_path):
    """A re-signed spec whose structure makes a layer larger than the architecture (or names a module that is not
    there) is refused before anything is allocated."""
    from dnncompress.models import build_model

    save_packed(build_model("lenet300"), tmp_path / "ok.dnc", arch="lenet300")
    for i, structure in enumerate(({"1": {"out_features": 10**6}}, {"nope": {"out_features": 3}}, {"1": {"out_features": 0}}, {"1": []})):
        def edit(spec, structure=structure):
            spec["structure"] = structure

        with pytest.raises(UserError, match="structure|between|not a valid"):
            checkpoint_from_packed(_forge(tmp_path / "ok.dnc", edit, tmp_path / f"s{i}.dnc"))


@pytest.mark.parametrize("where", ["spec", "codes", "tables"])
def test_damaged_bytes_are_called_damaged_and_a_model_is_left_untouched(where, tmp_path):
    """The digest is checked on a thread while the file is vetted: a flipped byte anywhere (in the deflated spec,
    which then fails to parse first, or in the codes) is still reported as a SHA-256 mismatch, and
    load_packed into a built model writes nothing into it."""
    import torch

    from dnncompress import load_packed, quantize
    from dnncompress.models import build_model

    torch.manual_seed(0)
    model = build_model("lenet300")
    quantize(model, scheme="codebook", bits=4)
    path = tmp_path / "ok.dnc"
    save_packed(model, path, arch="lenet300")
    data = bytearray(path.read_bytes())
    (hlen,) = struct.unpack("<Q", data[:8])
    body = 8 + hlen
    at = {"spec": len(data) - 5, "codes": body + (len(data) - body) // 2, "tables": body + 3}[where]
    data[at] ^= 0x5A
    bad = tmp_path / "bad.dnc"
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match="SHA-256 mismatch"):
        checkpoint_from_packed(bad)
    target = build_model("lenet300")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(UserError, match="SHA-256 mismatch"):
        load_packed(bad, model=target)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
