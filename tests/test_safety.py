"""Files that cannot hurt: empty and zip-bomb checkpoints, outputs that would name an input, unwritable
places, temp files left by a killed writer, and the same input giving the same bytes."""
import os
import subprocess
import sys
import zipfile

import pytest
import torch
from click.testing import CliRunner

from dnncompress.checkpoint import load_checkpoint
from dnncompress.cli import main
from dnncompress.errors import UserError
from dnncompress.fileio import atomic_write_bytes


def _one_line_exit_2(r):
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.output
    return lines[0]


@pytest.mark.parametrize("cmd", [["eval"], ["finetune"], ["quantize", "--scheme", "fourval"], ["prune"], ["pack"], ["report"]])
def test_zero_byte_checkpoint(in_tmp, cmd):
    (in_tmp / "empty.pt").write_bytes(b"")
    line = _one_line_exit_2(CliRunner().invoke(main, [cmd[0], "empty.pt", *cmd[1:]]))
    assert "empty" in line and "empty.pt" in line


def test_zip_bomb_is_refused_before_inflating(tmp_path):
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * (64 << 20))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(UserError, match="zip bomb"):
        load_checkpoint(path)


def test_garbage_and_truncated_checkpoints(tmp_path, tiny_ckpt):
    data = tiny_ckpt.read_bytes()
    for i, bad in enumerate([b"not a checkpoint at all", data[: len(data) // 2], data[:100], os.urandom(4096)]):
        p = tmp_path / f"bad{i}.pt"
        p.write_bytes(bad)
        with pytest.raises(UserError, match="bad|not a readable|empty|damaged"):
            load_checkpoint(p)


def test_no_output_may_name_an_input(in_tmp, tiny_ckpt):
    import shutil

    shutil.copy(tiny_ckpt, in_tmp / "m.pt")
    before = (in_tmp / "m.pt").read_bytes()
    runner = CliRunner()
    assert runner.invoke(main, ["pack", "m.pt", "-o", "m.dnc"]).exit_code == 0
    dnc = (in_tmp / "m.dnc").read_bytes()
    for cmd in (["report", "m.dnc", "--plot", "m.dnc"], ["report", "m.pt", "--plot", "m.pt"], ["report", "m.pt", "--plot", "./m.pt"],
                ["quantize", "m.pt", "--scheme", "fourval", "-o", "m.pt"], ["unpack", "m.dnc", "-o", "m.dnc"],
                ["prune", "m.pt", "--sparsity", "auto", "--plot", "m.pt", "-o", "p.pt"]):
        line = _one_line_exit_2(runner.invoke(main, cmd))
        assert "input" in line or "name a .png" in line
    assert (in_tmp / "m.pt").read_bytes() == before and (in_tmp / "m.dnc").read_bytes() == dnc
    assert not (in_tmp / "p.pt").exists()


def test_unwritable_output_is_one_line_and_leaves_nothing(in_tmp, tiny_ckpt, monkeypatch):
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # what a read-only directory does (tests run as root)
    line = _one_line_exit_2(CliRunner().invoke(main, ["quantize", str(tiny_ckpt), "--scheme", "fourval", "-o", "out/q.pt"]))
    assert "cannot write" in line and "Permission denied" in line and "q.pt" in line
    assert not list(in_tmp.rglob("*.pt"))


def test_no_output_without_its_state_record(in_tmp, tiny_ckpt, monkeypatch):
    from dnncompress import runstate

    def refuse(path, data):
        raise UserError(f"cannot write {path}: Read-only file system; choose a writable output path (-o) or directory")

    monkeypatch.setattr(runstate, "atomic_write_bytes", refuse)
    line = _one_line_exit_2(CliRunner().invoke(main, ["quantize", str(tiny_ckpt), "--scheme", "fourval", "-o", "q.pt"]))
    assert "Read-only" in line and not (in_tmp / "q.pt").exists()


def test_temp_files_of_a_killed_writer_are_cleaned(tmp_path):
    target = tmp_path / "model.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".model.pt.{dead}.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    mine = tmp_path / f".model.pt.{os.getpid()}.zzz999.tmp"  # a live writer's temp file is left alone
    mine.write_bytes(b"in progress")
    atomic_write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole" and not stale.exists() and mine.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.pt", mine.name])


def test_checkpoint_bytes_do_not_depend_on_the_file_name(tmp_path):
    from dnncompress.checkpoint import new_checkpoint, save_checkpoint

    ckpt = new_checkpoint("test-linear", {"in_features": 3, "out_features": 1}, torch.nn.Linear(3, 1).state_dict())
    save_checkpoint(ckpt, tmp_path / "a.pt")
    save_checkpoint(ckpt, tmp_path / "other_name.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "other_name.pt").read_bytes()


def test_same_config_twice_gives_the_same_bytes(tmp_path):
    """Two separate processes, same config and seed: identical .pt files and an identical .dnc."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {arch: lenet300}\ndata: {name: synthetic}\nstages:\n  - train: {epochs: 1}\n"
                   "  - quantize: {scheme: codebook, bits: 3}\n  - finetune: {epochs: 1}\n  - pack: {entropy: huffman}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for run in ("a", "b"):
        r = subprocess.run([sys.executable, "-m", "dnncompress", "run", str(cfg), f"output_dir={tmp_path / run}", "--device", "cpu"],
                           check=False, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
        assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["00-train.pt", "01-quantize.pt", "02-finetune.pt", "03-pack.dnc"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_dnc_is_a_standard_safetensors_file(tmp_path, tiny_ckpt):
    from safetensors.numpy import load_file

    from dnncompress.pack import save_packed

    save_packed(load_checkpoint(tiny_ckpt), tmp_path / "m.dnc")
    arrays = load_file(str(tmp_path / "m.dnc"))
    assert set(arrays) == {"dnc"}  # one U8 tensor: the blobs back to back, then the deflated spec
    with open(tmp_path / "m.dnc", "rb") as f:
        assert int.from_bytes(f.read(8), "little") % 8 == 0


def test_fp32_size_is_the_real_safetensors_size(tmp_path):
    from safetensors.torch import save_file

    from dnncompress.models import build_model
    from dnncompress.report import fp32_file_bytes

    for arch in ("lenet5", "resnet20"):
        state = build_model(arch).state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "x.safetensors"))
        assert fp32_file_bytes(state) == (tmp_path / "x.safetensors").stat().st_size


def test_a_flipped_bit_in_a_checkpoint_tensor_is_refused(tmp_path, tiny_ckpt):
    """torch does not check the zip CRCs; we do, so damaged weights never load as other weights."""
    import zipfile

    with zipfile.ZipFile(tiny_ckpt) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(tiny_ckpt.read_bytes())
    h = info.header_offset  # the local header: 30 bytes, then the name and its own extra field, then the data
    start = h + 30 + int.from_bytes(data[h + 26 : h + 28], "little") + int.from_bytes(data[h + 28 : h + 30], "little")
    data[start + 100] ^= 0x10  # inside the tensor's bytes
    (tmp_path / "flip.pt").write_bytes(bytes(data))
    with pytest.raises(UserError, match="CRC"):
        load_checkpoint(tmp_path / "flip.pt")


def test_legacy_torch_format_still_loads(tmp_path, tiny_ckpt):
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    torch.save(ckpt, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert load_checkpoint(tmp_path / "legacy.pt")["arch"] == ckpt["arch"]
    (tmp_path / "cut.pt").write_bytes(tiny_ckpt.read_bytes()[:-200])  # no central directory: not handed to torch at all
    with pytest.raises(UserError, match="neither a zip archive"):
        load_checkpoint(tmp_path / "cut.pt")
