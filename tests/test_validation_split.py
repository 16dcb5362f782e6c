"""Searches choose on the validation split held out of the training data; the test split only reports."""
import json

from click.testing import CliRunner

from dnncompress.cli import main


def test_auto_prune_chooses_on_validation_and_needs_one(in_tmp, tiny_ckpt):
    runner = CliRunner()
    r = runner.invoke(main, ["prune", str(tiny_ckpt), "--sparsity", "auto", "--max-drop", "5", "--json", "-o", "a.pt"])
    assert r.exit_code == 0, r.output
    auto = json.loads(next(line for line in r.output.splitlines() if line.startswith("{")))["auto"]
    assert auto["chosen_on"].startswith("validation")
    r = runner.invoke(main, ["prune", str(tiny_ckpt), "--sparsity", "auto", "--val-split", "0", "-o", "b.pt"])
    assert r.exit_code == 2 and "validation split" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (in_tmp / "b.pt").exists()
    r = runner.invoke(main, ["prune", str(tiny_ckpt), "--sparsity", "0.5", "--val-split", "0.9", "-o", "c.pt"])
    assert r.exit_code == 2 and "val_split" in r.output
