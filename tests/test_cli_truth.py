"""Issue 13's 'a CLI that tells the truth': each mistake a new user made is one line, exit 2, no output."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dnncompress.cli import main


def one_line_error(r, *words):
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    for w in words:
        assert w in r.output, r.output


@pytest.mark.parametrize("args, words", [
    (["quantize", "{ck}", "--exclude", "nope*", "-o", "out.pt"], ["exclude pattern 'nope*'", "layers are: 1, 3, 5"]),
    (["quantize", "{ck}", "--override", "nope:skip=true", "-o", "out.pt"], ["override pattern 'nope'", "1, 3, 5"]),
    (["prune", "{ck}", "--sparsity", "0.5", "--override", "fc9=0.3", "-o", "out.pt"], ["override pattern 'fc9'", "1, 3, 5"]),
    (["prune", "{ck}", "--sparsity", "0.5", "--exclude", "conv*", "-o", "out.pt"], ["exclude pattern 'conv*'"]),
    (["quantize", "{ck}", "--scheme", "int8", "-o", "out.pt"], ["--scheme codebook --bits 8"]),
    (["quantize", "{ck}", "--scheme", "int4", "-o", "out.pt"], ["--scheme codebook --bits 4"]),
    (["train", "lenet300", "--data", "synthetic", "--epochs", "0", "-o", "out.pt"], ["epochs must be at least 1", "untrained"]),
    (["unpack", "{ck}", "-o", "out.pt"], ["is a PyTorch checkpoint, not a packed .dnc", "dnncompress eval"]),
    (["validate", "{ck}"], ["is a PyTorch checkpoint, not a YAML config", "pack"]),
    (["run", "{ck}"], ["is a PyTorch checkpoint, not a YAML config"]),
    (["eval", "{cfg}"], ["is a YAML config, not a PyTorch checkpoint", "dnncompress run or validate"]),
    (["pack", "{cfg}", "-o", "out.pt"], ["is a YAML config"]),
    (["run", "no_such_config"], ["no shipped config of that name", "seed000_fourval"]),
])
def test_mistakes_are_one_line_exit_2_and_leave_no_file(in_tmp, tiny_ckpt, args, words):
    cfg = in_tmp / "c.yaml"
    cfg.write_text((Path(__file__).parent.parent / "dnncompress" / "configs" / "demo.yaml").read_text())
    args = [a.format(ck=tiny_ckpt, cfg=cfg) for a in args]
    one_line_error(CliRunner().invoke(main, args), *words)
    assert not (in_tmp / "out.pt").exists()


def test_a_renamed_dnc_is_read_by_content(in_tmp, tiny_ckpt):
    runner = CliRunner()
    assert runner.invoke(main, ["pack", str(tiny_ckpt), "-o", "m.dnc"]).exit_code == 0
    (in_tmp / "m.pt").write_bytes((in_tmp / "m.dnc").read_bytes())
    r = runner.invoke(main, ["eval", "m.pt", "--json"])
    assert r.exit_code == 0 and "accuracy" in json.loads(r.stdout), r.output


def test_pack_prints_its_size_and_ratio(in_tmp, tiny_ckpt):
    runner = CliRunner()
    assert runner.invoke(main, ["quantize", str(tiny_ckpt), "--scheme", "ternary", "-o", "q.pt"]).exit_code == 0
    r = runner.invoke(main, ["pack", "q.pt", "-o", "q.dnc"])
    size = (in_tmp / "q.dnc").stat().st_size
    assert r.exit_code == 0 and f"{size:,} bytes" in r.output and "× smaller than fp32" in r.output, r.output
    info = json.loads(runner.invoke(main, ["pack", "q.pt", "-o", "q2.dnc", "--json"]).stdout)
    assert info["bytes"] == size and info["fp32_bytes"] > 10 * size and info["ratio"] == round(info["fp32_bytes"] / size, 2)


def test_finetune_of_a_dnc_says_it_has_no_shadow_weights(in_tmp, tiny_ckpt):
    runner = CliRunner()
    assert runner.invoke(main, ["quantize", str(tiny_ckpt), "--scheme", "ternary", "-o", "q.pt"]).exit_code == 0
    assert runner.invoke(main, ["pack", "q.pt", "-o", "q.dnc"]).exit_code == 0
    r = runner.invoke(main, ["finetune", "q.dnc", "--epochs", "1", "-o", "t.pt"])
    assert r.exit_code == 0 and "no fp32 shadow weights" in r.stderr, r.output
    r = runner.invoke(main, ["finetune", "q.pt", "--epochs", "1", "-o", "t2.pt"])
    assert r.exit_code == 0 and "shadow" not in r.stderr


def test_outputs_honour_the_umask(in_tmp, tiny_ckpt):
    old = os.umask(0o022)
    try:
        runner = CliRunner()
        assert runner.invoke(main, ["quantize", str(tiny_ckpt), "--scheme", "ternary", "-o", "q.pt"]).exit_code == 0
        assert runner.invoke(main, ["pack", "q.pt", "-o", "q.dnc"]).exit_code == 0
        for name in ("q.pt", "q.dnc", ".dnncompress-state.json"):
            assert stat.S_IMODE((in_tmp / name).stat().st_mode) == 0o644, name
        os.umask(0o077)
        assert runner.invoke(main, ["pack", "q.pt", "-o", "private.dnc"]).exit_code == 0
        assert stat.S_IMODE((in_tmp / "private.dnc").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_bare_command_prints_the_command_list():
    r = CliRunner().invoke(main, [])
    assert r.exit_code == 0 and "Commands:" in r.output and "export" in r.output and "quantize" in r.output


def test_help_and_list_do_not_import_torch():
    code = ("import sys; from click.testing import CliRunner; from dnncompress.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
            "r = CliRunner().invoke(main, ['list', '--json']); assert r.exit_code == 0, r.output; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_the_static_catalog_and_command_table_match_the_real_ones():
    from dnncompress.catalog import builtin
    from dnncompress.cli import COMMANDS

    code = "import json, dnncompress; print(json.dumps(dnncompress.available()))"  # a fresh process: no test's own registrations
    real = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    for key in ("architectures", "datasets", "stages", "schemes", "configs"):
        assert sorted(builtin()[key]) == sorted(real[key]), key
    for name, (_module, _attr, short) in COMMANDS.items():
        command = main.get_command(None, name)
        assert command.name == name and command.callback is not None and short


def test_a_shipped_config_runs_by_name_from_any_directory(in_tmp):
    r = CliRunner().invoke(main, ["validate", "seed000_fourval"])
    assert r.exit_code == 0 and "ok" in r.output, r.output
    r = CliRunner().invoke(main, ["list"])
    assert "configs:" in r.output and "seed000_fourval" in r.output and "lenet5_smallest" in r.output


def test_the_licence_is_an_spdx_string_so_setuptools_does_not_warn():
    import tomllib

    meta = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    assert isinstance(meta["license"], str) and not any(c.startswith("License ::") for c in meta.get("classifiers", []))


def test_each_stage_gets_its_own_bar_and_result_lines_stay_off_the_bars(monkeypatch):
    """The events a `run` sends (training steps, a sensitivity scan, a second training stage) in a real
    terminal: one bar per stage and kind of work, and a result line printed between them starts its own line."""
    import io
    import re

    from rich.console import Console

    from dnncompress.cli import common

    buf = io.StringIO()
    monkeypatch.setattr(common, "stderr_console", lambda: Console(file=buf, force_terminal=True, width=100))
    with common.ProgressBar("run") as bar:
        bar({"kind": "start", "total": 3, "stage": "train"})
        for _ in range(3):
            bar({"kind": "step", "epoch": 1, "loss": 0.5, "accuracy": 90.0, "stage": "train"})
        common.echo("[0] train: wrote a.pt — test accuracy 97.00%")
        bar({"kind": "scan", "done": 1, "total": 2, "info": "fc1 @ 0.5", "stage": "prune"})
        bar({"kind": "scan", "done": 2, "total": 2, "info": "fc1 @ 0.9", "stage": "prune"})
        bar({"kind": "start", "total": 2, "stage": "finetune"})
        bar({"kind": "step", "epoch": 1, "loss": 0.4, "accuracy": 91.0, "stage": "finetune"})
        bar({"kind": "start", "total": 2, "stage": "finetune"})  # a second fine-tune: a bar of its own
        labels = [t.description for t in bar.progress.tasks]
        done = [(t.completed, t.total) for t in bar.progress.tasks]
    assert labels == ["train", "prune scan", "finetune", "finetune (2)"]  # the scan has its own bar; no single 'run' bar
    assert done == [(3, 3), (2, 2), (1, 2), (0, 2)]
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    lines = [seg for line in text.split("\n") for seg in line.split("\r")]
    result = [line for line in lines if "[0] train: wrote" in line]
    assert result and all(line.startswith("[0] train: wrote") and "━" not in line for line in result), result
    assert common.ProgressBar.active is None  # after the run, lines print plainly again
