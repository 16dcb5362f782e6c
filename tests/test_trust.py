"""No code named inside a file runs: a weights-only checkpoint or a .dnc whose architecture is a
`module:factory` is refused by every command and by load_packed, before anything is imported."""
import sys

import pytest
import torch
from click.testing import CliRunner

from dnncompress import load_checkpoint, load_packed
from dnncompress.checkpoint import new_checkpoint, save_checkpoint
from dnncompress.cli import main
from dnncompress.errors import UserError
from dnncompress.pack import checkpoint_from_packed, write_packed

EVIL = "tests.evil_factory:build"


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("DNNCOMPRESS_EVIL_MARKER", str(marker))
    sys.modules.pop("tests.evil_factory", None)
    state = torch.nn.Linear(4, 2).state_dict()
    ckpt = new_checkpoint(EVIL, {"path": str(marker)}, state, {"name": "synthetic", "input_shape": [1, 1, 4]})
    save_checkpoint(ckpt, tmp_path / "evil.pt")
    write_packed(ckpt, tmp_path / "evil.dnc")
    return tmp_path, marker


def _untouched(marker):
    assert not marker.exists(), "the factory was called"
    assert not marker.with_name(marker.name + ".imported").exists(), "the module was imported"
    assert "tests.evil_factory" not in sys.modules


COMMANDS = [
    ["eval", "evil.pt"], ["eval", "evil.dnc"], ["finetune", "evil.pt", "--epochs", "1"], ["quantize", "evil.pt", "--scheme", "fourval"],
    ["prune", "evil.pt", "--sparsity", "0.5"], ["pack", "evil.pt", "-o", "out.dnc"], ["unpack", "evil.dnc", "-o", "out.pt"],
    ["report", "evil.dnc"], ["report", "evil.pt"], ["finetune", "evil.dnc", "--epochs", "1"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_command_refuses_code_named_by_a_file(hostile, cmd):
    tmp_path, marker = hostile
    r = CliRunner().invoke(main, cmd)
    assert r.exit_code == 2, r.output
    assert "import and run code" in r.output and f"--arch {EVIL}" in r.output and len(r.output.strip().splitlines()) == 1
    _untouched(marker)
    assert not (tmp_path / "out.dnc").exists() and not (tmp_path / "out.pt").exists()


def test_library_loaders_refuse_it_too(hostile):
    tmp_path, marker = hostile
    for load in (lambda: load_checkpoint(tmp_path / "evil.pt"), lambda: load_packed(tmp_path / "evil.dnc"),
                 lambda: checkpoint_from_packed(tmp_path / "evil.dnc")):
        with pytest.raises(UserError, match="import and run code"):
            load()
    _untouched(marker)


def test_a_config_naming_it_needs_trust(hostile):
    tmp_path, marker = hostile
    (tmp_path / "c.yaml").write_text(f"model: {{arch: '{EVIL}', checkpoint: evil.pt}}\nstages:\n  - pack: {{}}\n")
    r = CliRunner().invoke(main, ["run", "c.yaml"])
    assert r.exit_code == 2 and "--trust" in r.output, r.output
    _untouched(marker)


def test_named_on_the_command_line_it_runs(hostile):
    """The gate is a gate, not a wall: naming the factory (or --trust) is the user's informed choice."""
    tmp_path, marker = hostile
    r = CliRunner().invoke(main, ["unpack", "evil.dnc", "-o", "out.pt", "--arch", EVIL])
    assert r.exit_code == 0, r.output
    assert marker.read_text() == "called"
    marker.unlink()
    assert load_packed(tmp_path / "evil.dnc", trust=True)(torch.ones(1, 4)).shape == (1, 2)


def test_a_shape_that_does_not_fit_the_named_architecture(tmp_path):
    state = torch.nn.Linear(4, 2).state_dict()
    ckpt = new_checkpoint("lenet5", {}, state)
    save_checkpoint(ckpt, tmp_path / "wrong.pt")
    with pytest.raises(UserError, match="missing|not part"):
        load_checkpoint(tmp_path / "wrong.pt")
    ckpt = new_checkpoint("test-linear", {"in_features": 4, "out_features": 2}, {**state, "bias": state["bias"].long()})
    save_checkpoint(ckpt, tmp_path / "int_bias.pt")
    with pytest.raises(UserError, match="bias.*torch.int64.*needs torch.float32"):
        load_checkpoint(tmp_path / "int_bias.pt")
    ckpt = new_checkpoint("test-linear", {"in_features": 4, "out_features": 2}, {**state, "extra": torch.zeros(1)})
    save_checkpoint(ckpt, tmp_path / "extra.pt")
    with pytest.raises(UserError, match="'extra', which test-linear does not"):
        load_checkpoint(tmp_path / "extra.pt")
