"""CliRunner tests for the foundation commands: success paths and bad input (exit 2, one line, no file)."""
import json

import pytest
from click.testing import CliRunner

from dnncompress.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0]


def test_train_eval_finetune_and_optional_checkpoint(in_tmp):
    r = invoke("train", "lenet300", "--data", "synthetic", "--epochs", "1", "-o", "base.pt")
    assert r.exit_code == 0, r.output
    r = invoke("eval", "base.pt", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)  # exactly one JSON object on stdout
    assert data["accuracy"] > 50 and data["n"] == 256
    r = invoke("finetune", "--epochs", "1", "--json")  # no checkpoint: newest output of this directory
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["output"].endswith("base.ft.pt")
    assert (in_tmp / "base.ft.pt").exists() and (in_tmp / "base.pt").exists()


def test_list_and_validate(in_tmp):
    r = invoke("list", "--json")
    info = json.loads(r.stdout)
    assert "lenet5" in info["architectures"] and "mnist" in info["datasets"] and "finetune" in info["stages"]
    (in_tmp / "c.yaml").write_text("model: {arch: lenet300}\ndata: {name: synthetic}\nstages:\n  - train: {epochs: 1}\n")
    r = invoke("validate", "c.yaml")
    assert r.exit_code == 0 and "ok" in r.output


def test_run_config(in_tmp):
    (in_tmp / "c.yaml").write_text(
        "model: {arch: lenet300}\ndata: {name: synthetic}\noutput_dir: out\n"
        "stages:\n  - train: {epochs: 1}\n  - finetune: {epochs: 1}\n"
    )
    r = invoke("run", "c.yaml", "--json")
    assert r.exit_code == 0, r.output
    stages = json.loads(r.stdout)["stages"]
    assert [s["stage"] for s in stages] == ["train", "finetune"]
    assert (in_tmp / "out" / "01-finetune.pt").exists()


@pytest.mark.parametrize(
    "args,needles",
    [
        (["eval", "missing.pt"], ["missing.pt", "not found"]),
        (["finetune", "missing.pt"], ["missing.pt"]),
        (["train", "lenet6", "--data", "synthetic"], ["did you mean 'lenet5'"]),
        (["train", "lenet5", "--data", "cifar10", "--data-dir", "nowhere"], ["cifar-10-batches-py"]),
        (["train", "lenet5", "--data", "mnits"], ["did you mean 'mnist'"]),
        (["validate", "nope.yaml"], ["nope.yaml"]),
        (["eval"], ["pass a checkpoint"]),
    ],
)
def test_bad_input_is_one_line_exit_2_no_output(in_tmp, args, needles):
    r = invoke(*args)
    assert_clean_error(r, *needles)
    assert not [p for p in in_tmp.iterdir() if p.suffix in (".pt", ".dnc", ".tmp")]


def test_bad_config_key_exit_2(in_tmp):
    (in_tmp / "c.yaml").write_text("model: {arch: lenet300}\nstages:\n  - train: {epoch: 1}\n")
    for cmd in ("run", "validate"):
        assert_clean_error(invoke(cmd, "c.yaml"), "c.yaml:3", "did you mean 'epochs'")
    assert not (in_tmp / "runs").exists()


def test_stage_never_overwrites_input(in_tmp, tiny_ckpt):
    import shutil

    shutil.copy(tiny_ckpt, in_tmp / "m.pt")
    before = (in_tmp / "m.pt").read_bytes()
    assert_clean_error(invoke("finetune", "m.pt", "-o", "m.pt", "--epochs", "1"), "input")
    assert (in_tmp / "m.pt").read_bytes() == before


def test_a_device_this_machine_lacks_is_one_line_and_exit_2(in_tmp, tiny_ckpt):
    import torch

    runner = CliRunner()
    for device in ("tpu", "nonsense:x", *(() if torch.cuda.is_available() else ("cuda",))):
        r = runner.invoke(main, ["eval", str(tiny_ckpt), "--device", device])
        assert r.exit_code == 2, r.output
        assert len(r.output.strip().splitlines()) == 1 and ("--device cpu" in r.output or "use cpu" in r.output), r.output
        r = runner.invoke(main, ["train", "--arch", "lenet300", "--data", "synthetic", "--epochs", "1", "--device", device, "-o", "t.pt"])
        assert r.exit_code == 2 and not (in_tmp / "t.pt").exists(), r.output
